-- Records a failed attempt at the delivery of notification $1 by channel $2
-- to $3 with its error ($4): it falls due again $5 milliseconds from now, or,
-- when $6, it is set aside. The clock is read now, not at the start of the
-- transaction, which waited for the receiver.
UPDATE notification_deliveries
   SET attempts   = attempts + 1,
       last_error = $4,
       due_at     = CASE WHEN $6 THEN due_at
                         ELSE clock_timestamp() + $5 * interval '1 millisecond' END,
       failed_at  = CASE WHEN $6 THEN clock_timestamp() END
 WHERE notification_id = $1 AND channel = $2 AND target = $3
