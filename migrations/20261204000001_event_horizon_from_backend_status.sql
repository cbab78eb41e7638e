-- The event horizon is worked out from the backends' status alone, and looks
-- past the transactions of other databases on the same cluster.
--
-- A transaction belongs to its session's database and can never write this
-- one's events, yet transaction ids are shared by the whole cluster: counted,
-- any long transaction elsewhere (another Herald, another application, a
-- rebuild in another database) would hold every newer event here back until
-- it ends.
--
-- A transaction that never writes events now declares it by naming itself in
-- its session's `application_name` for as long as it runs (`set_config(…,
-- true)`, undone when it ends), instead of by a shared advisory lock: the
-- horizon then reads one list, the backends' status, in place of the whole
-- lock table, which under load is large and costly to copy.
--
-- A running transaction is looked past only while a backend is seen holding
-- it in another database or under that name. Its session's name is read
-- after the horizon's snapshot, so a name seen then was set before the
-- snapshot's transactions began or by one of them; a transaction that ended,
-- or whose session moved on, between the snapshot and that look still holds
-- the horizon.

-- The `application_name` a transaction that never writes events runs under.
CREATE FUNCTION no_event_writes_name() RETURNS text
    LANGUAGE sql IMMUTABLE
AS $$ SELECT 'herald: writes no events' $$;

CREATE OR REPLACE FUNCTION declare_no_event_writes() RETURNS void
    LANGUAGE sql VOLATILE
AS $$ SELECT set_config('application_name', no_event_writes_name(), true) $$;

CREATE OR REPLACE FUNCTION event_horizon() RETURNS xid8
    LANGUAGE sql VOLATILE
AS $$
    WITH passed AS (
        SELECT backend_xid
          FROM pg_stat_get_activity(NULL)
         WHERE backend_xid IS NOT NULL
           AND (datid <> (SELECT oid FROM pg_database WHERE datname = current_database())
                OR application_name = no_event_writes_name())
    )
    SELECT coalesce(min(running), pg_snapshot_xmax(pg_current_snapshot()))
      FROM pg_snapshot_xip(pg_current_snapshot()) AS running
     WHERE xid(running) NOT IN (SELECT backend_xid FROM passed)
$$;
