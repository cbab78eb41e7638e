-- Whether each person's settings let notifications of new bookings into
-- their feed, written by the projection beside the settings (the domain's
-- `NotificationSettings::feed_on`), so that reading a feed needs no rule of
-- its own about how settings are kept. Rows written before it are filled in
-- once here.
ALTER TABLE rm_notification_people ADD COLUMN feed_new_bookings boolean;
UPDATE rm_notification_people
   SET feed_new_bookings = COALESCE((settings #>> '{feed,booking_requested}')::boolean, true);
ALTER TABLE rm_notification_people ALTER COLUMN feed_new_bookings SET NOT NULL;
