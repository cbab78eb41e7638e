-- The relay sequences only events below a transaction-id horizon: no
-- transaction that is still running may later commit an event behind it. The
-- plain horizon, `pg_snapshot_xmin(pg_current_snapshot())`, is the oldest
-- running transaction of the whole cluster, so a projection batch, a rebuild
-- or any other long transaction that never writes an event would hold every
-- newer event back until it ends.
--
-- Transactions that never write events declare it, before their first write,
-- by holding a shared advisory lock; the horizon looks past those, and only
-- those. Any other running transaction (unknown, in another database, or one
-- that ended between the snapshot and the look at the locks) still holds the
-- horizon, so the horizon is never later than the plain one would be for a
-- transaction that can write events.

-- Declares that the current transaction never writes to `events`. Call it
-- before the transaction's first write.
CREATE FUNCTION declare_no_event_writes() RETURNS void
    LANGUAGE sql VOLATILE
AS $$ SELECT pg_advisory_xact_lock_shared(1212502593, 2) $$;

-- The oldest transaction id that may still commit an event, as seen by the
-- current snapshot: the oldest running transaction that has not declared
-- itself a non-writer, else the snapshot's xmax.
CREATE FUNCTION event_horizon() RETURNS xid8
    LANGUAGE sql VOLATILE
AS $$
    WITH non_writers AS (
        SELECT own.transactionid
          FROM pg_locks own
          JOIN pg_locks declared ON declared.virtualtransaction = own.virtualtransaction
         WHERE own.locktype = 'transactionid' AND own.mode = 'ExclusiveLock' AND own.granted
           AND declared.locktype = 'advisory' AND declared.granted
           AND declared.database = (SELECT oid FROM pg_database WHERE datname = current_database())
           AND declared.classid = 1212502593 AND declared.objid = 2 AND declared.objsubid = 2
    )
    SELECT coalesce(min(running), pg_snapshot_xmax(pg_current_snapshot()))
      FROM pg_snapshot_xip(pg_current_snapshot()) AS running
     WHERE xid(running) NOT IN (SELECT transactionid FROM non_writers)
$$;
