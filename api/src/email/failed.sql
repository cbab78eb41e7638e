-- Records a failed attempt at the e-mail of notification $1 to $2 with its
-- error ($3): it falls due again $4 milliseconds from now, or, when $5, it is
-- set aside. The clock is read now, not at the start of the transaction,
-- which waited for the SMTP server.
UPDATE notification_emails
   SET attempts   = attempts + 1,
       last_error = $3,
       due_at     = CASE WHEN $5 THEN due_at
                         ELSE clock_timestamp() + $4 * interval '1 millisecond' END,
       failed_at  = CASE WHEN $5 THEN clock_timestamp() END
 WHERE notification_id = $1 AND user_id = $2
