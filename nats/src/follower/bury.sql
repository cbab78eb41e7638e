-- Records an entry a follower gave up on, or counts the attempts again when
-- it was given up on before (after a retry of its dead letters failed).
INSERT INTO projection_dead_letters (projection, position, event_id, error, attempts)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (projection, position) DO UPDATE
   SET error = EXCLUDED.error,
       attempts = projection_dead_letters.attempts + EXCLUDED.attempts,
       failed_at = EXCLUDED.failed_at
