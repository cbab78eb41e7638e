-- The e-mail that has been due longest, locked for the rest of the
-- transaction, which sends it; those other workers are sending are skipped.
SELECT notification_id, user_id, kind, attempts
  FROM notification_emails
 WHERE sent_at IS NULL AND failed_at IS NULL AND due_at <= now()
 ORDER BY due_at
 LIMIT 1
   FOR UPDATE SKIP LOCKED
