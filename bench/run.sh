#!/usr/bin/env bash
# Herald's benchmarks, in one run on fresh databases: the machine's limit
# (pgbench), the plain cqrs-es app, Herald's commands with its pipeline
# running, end-to-end lag at half load, reads, memory, replay and audit
# verification of a million-event log. Writes its sections of BENCHMARKS.md.
#
#   bash bench/run.sh
#
# Settings (environment): BENCH_DURATION_S (30) seconds per command run,
# BENCH_CONCURRENCY (32), BENCH_READ_RATE (200) reads/s, BENCH_REPLAY_EVENTS
# (1000000), BENCH_NATS_PORT (14222) for the private NATS, BENCH_HTTP_PORT
# (18080).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

DURATION=${BENCH_DURATION_S:-30}
CONCURRENCY=${BENCH_CONCURRENCY:-32}
READ_RATE=${BENCH_READ_RATE:-200}
REPLAY_EVENTS=${BENCH_REPLAY_EVENTS:-1000000}
NATS_PORT=${BENCH_NATS_PORT:-14222}
HTTP_PORT=${BENCH_HTTP_PORT:-18080}
PLAIN_PORT=$((HTTP_PORT + 10))
WORK=$(mktemp -d /tmp/herald-bench.XXXXXX)
trap 'cleanup; rm -rf "$WORK/nats"' EXIT
RUN_STARTED=$(date +%s)

log "building release binaries (once)"
cargo build --release -p api --bin herald -p bench --bins

start_nats "$NATS_PORT" "$WORK/nats"
export HERALD_NATS_URL="nats://127.0.0.1:$NATS_PORT"
export HERALD_JWT_SECRET
HERALD_JWT_SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
export HERALD_WEBHOOK_SECRET
HERALD_WEBHOOK_SECRET=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
export HERALD_SANDBOX=true   # payments go through the built-in sandbox provider
export HERALD_RATE_LIMIT_PER_SECOND=0   # the benchmark is the only client

# 1. The machine's limit: single-row insert transactions into Herald's own
#    events table, over TCP like Herald, at the same concurrency.
log "pgbench: $CONCURRENCY clients, ${DURATION}s"
fresh_db herald_bench_pgbench
HERALD_DATABASE_URL="$PG_SERVER/herald_bench_pgbench" "$BIN/herald" migrate >/dev/null
pgbench -h 127.0.0.1 -U postgres -n -M prepared -c "$CONCURRENCY" -j 2 -T "$DURATION" \
    -f bench/pgbench_events.sql herald_bench_pgbench >"$WORK/pgbench.txt" 2>&1
PGBENCH_TPS=$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time)/\1/p' "$WORK/pgbench.txt")
PGBENCH_LAT=$(sed -n 's/^latency average = \([0-9.]*\) ms/\1/p' "$WORK/pgbench.txt")
log "pgbench: $PGBENCH_TPS tps"

# 2. The plain cqrs-es app.
log "plain cqrs-es app: $CONCURRENCY clients, ${DURATION}s"
fresh_db herald_bench_plain
"${PSQL[@]}" -d postgres -c "CREATE DATABASE herald_bench_plain"
"${PSQL[@]}" -d herald_bench_plain -f bench/plain_cqrs.sql
start plain "$BIN/plain-cqrs" --database-url "$PG_SERVER/herald_bench_plain" --listen "127.0.0.1:$PLAIN_PORT"
PLAIN_PID=$STARTED_PID
wait_for_port "$PLAIN_PORT"
"$BIN/herald-load" commands --target plain --url "http://127.0.0.1:$PLAIN_PORT" \
    --concurrency "$CONCURRENCY" --duration-s "$DURATION" --pid "$PLAIN_PID" >"$WORK/plain.json"
stop "$PLAIN_PID"
log "plain: $(jq -r .throughput "$WORK/plain.json") commands/s"

# 3. Herald: API, relay, projection workers and process manager in one process.
log "Herald: $CONCURRENCY clients, ${DURATION}s, pipeline running"
fresh_db herald_bench
export HERALD_DATABASE_URL="$PG_SERVER/herald_bench" HERALD_NATS_PREFIX="bench$RUN_STARTED"
export HERALD_LISTEN="127.0.0.1:$HTTP_PORT"
start herald "$BIN/herald" up
HERALD_PID=$STARTED_PID
wait_for_port "$HTTP_PORT"
URL="http://127.0.0.1:$HTTP_PORT"
"$BIN/herald-load" commands --url "$URL" --concurrency "$CONCURRENCY" --duration-s "$DURATION" \
    --pid "$HERALD_PID" --database-url "$HERALD_DATABASE_URL" >"$WORK/herald.json"
MAX_RATE=$(jq -r .throughput "$WORK/herald.json")
log "Herald: $MAX_RATE commands/s"

# 4. End-to-end lag at half of that rate.
HALF=$(awk -v r="$MAX_RATE" 'BEGIN { printf "%.0f", r / 2 }')
log "lag at $HALF commands/s"
"$BIN/herald-load" commands --url "$URL" --concurrency "$CONCURRENCY" --duration-s "$DURATION" \
    --rate "$HALF" --lag --database-url "$HERALD_DATABASE_URL" >"$WORK/lag.json"

# 5. Reads at a fixed rate.
log "reads at $READ_RATE/s"
"$BIN/herald-load" reads --url "$URL" --rate "$READ_RATE" --duration-s "$DURATION" >"$WORK/reads.json"
stop "$HERALD_PID"

# 6. Replay and audit verification of a large log.
log "replay: seeding $REPLAY_EVENTS events"
fresh_db herald_bench_replay
export HERALD_DATABASE_URL="$PG_SERVER/herald_bench_replay" HERALD_NATS_PREFIX="replay$RUN_STARTED"
"$BIN/herald" migrate >/dev/null
"$BIN/herald-load" seed --events "$REPLAY_EVENTS" >"$WORK/seed.json"
log "replay: the relay numbers, hashes and publishes them"
start relay "$BIN/herald" relay
RELAY_PID=$STARTED_PID
"$BIN/herald-load" catch-up --sequenced-only --timeout-s 1200 >"$WORK/relay.json"
stop "$RELAY_PID"
# No workers ran, so the live read models are empty at checkpoint 0 and
# `herald replay` (which rebuilds up to the live checkpoint) would have
# nothing to do: declare the live models stale at the head, as after a
# projection bug, and let replay rebuild them from the whole log.
"${PSQL[@]}" -d herald_bench_replay -c "
    INSERT INTO projection_checkpoints (projection, position)
    SELECT p, (SELECT sequenced_position FROM relay_cursor)
      FROM unnest(ARRAY['chats', 'bookings', 'payments', 'summary']) AS p
    ON CONFLICT (projection) DO UPDATE SET position = EXCLUDED.position"
log "replay: herald replay (all read models)"
REPLAY_T0=$(date +%s.%N)
"$BIN/herald" replay >"$WORK/replay.txt" 2>>"$WORK/replay.log"
REPLAY_S=$(awk -v a="$REPLAY_T0" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')
log "audit: herald audit verify"
VERIFY_T0=$(date +%s.%N)
"$BIN/herald" audit verify >"$WORK/verify.json" 2>"$WORK/verify.txt"
VERIFY_S=$(awk -v a="$VERIFY_T0" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')

cat >"$WORK/timings.env" <<ENV
PGBENCH_TPS=$PGBENCH_TPS
PGBENCH_LAT=$PGBENCH_LAT
REPLAY_S=$REPLAY_S
VERIFY_S=$VERIFY_S
DURATION=$DURATION
CONCURRENCY=$CONCURRENCY
READ_RATE=$READ_RATE
ENV
WORK="$WORK" bash bench/report.sh
log "done in $(( $(date +%s) - RUN_STARTED ))s; raw results in $WORK"
