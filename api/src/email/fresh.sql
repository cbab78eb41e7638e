-- The notifications after the cursor ($1), in log order: those at the
-- positions of the first $2 of them, and every other one at the last of those
-- positions, so that a batch never ends halfway through a position and the
-- cursor can move to the last one. The projection commits notifications in
-- position order, so none can appear later behind them.
SELECT id, position, user_id, kind, email
  FROM rm_notifications
 WHERE position > $1
   AND position <= (SELECT max(position)
                      FROM (SELECT position FROM rm_notifications
                             WHERE position > $1
                             ORDER BY position
                             LIMIT $2) AS first)
 ORDER BY position, user_id
