-- The delivery of channel $1 that has been due longest, locked for the rest
-- of the transaction, which makes it; those other workers are making are
-- skipped.
SELECT notification_id, target, kind, attempts
  FROM notification_deliveries
 WHERE channel = $1 AND sent_at IS NULL AND failed_at IS NULL AND due_at <= now()
 ORDER BY due_at
 LIMIT 1
   FOR UPDATE SKIP LOCKED
