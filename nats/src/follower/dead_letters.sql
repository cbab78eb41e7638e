-- Every dead letter of every follower, oldest first within each follower.
SELECT projection, position, event_id, error, attempts, failed_at
  FROM projection_dead_letters
 ORDER BY projection, position
