-- A patient's bookings list is tagged with the newest version among their
-- bookings (a booking never changes patient, so every change to the list
-- moves it); this index finds it in one lookup.
CREATE INDEX rm_bookings_patient_version ON rm_bookings (patient_id, version);
