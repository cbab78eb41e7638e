-- Moves a follower's checkpoint past entries it does not follow, in one
-- statement and without waiting for the disk (entries a crash takes it back
-- over change nothing), but only where the checkpoint already stands at
-- `after` or later: entries before them that it follows are applied first.
-- True when the checkpoint now stands at `upto` or later.
CREATE FUNCTION skip_checkpoint(follower text, after bigint, upto bigint) RETURNS boolean
    LANGUAGE plpgsql VOLATILE
AS $$
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    PERFORM declare_no_event_writes();
    UPDATE projection_checkpoints SET position = upto
     WHERE projection = follower AND position >= after AND position < upto;
    RETURN EXISTS (SELECT 1 FROM projection_checkpoints
                    WHERE projection = follower AND position >= upto);
END
$$;
