#!/usr/bin/env bash
# Herald's benchmarks, in one run on fresh databases: the machine's limit
# (pgbench), the plain cqrs-es app (its mix, and opening accounts), Herald's
# commands with its pipeline running (the mix, then new bookings, messages
# spread over 100 chats and messages into one long chat, each on its own
# database), end-to-end lag at half load, reads (at a fixed rate, and as fast as
# they are answered beside the plain app's, full and polled with ETags),
# memory, replay and audit verification of a million-event log. Writes its
# sections of BENCHMARKS.md.
#
#   bash bench/run.sh
#
# Settings (environment): BENCH_DURATION_S (30) seconds per command run,
# BENCH_CONCURRENCY (32), BENCH_READ_RATE (200) reads/s, BENCH_READ_DURATION_S
# (10) seconds per run of reads as fast as answered, BENCH_SIGN_IN_BOOKINGS_RATE
# (200) new bookings/s beside sign-ins, BENCH_REPLAY_EVENTS
# (1000000), BENCH_HOT_CHAT_MESSAGES (100000) messages in the long chat,
# BENCH_NATS_PORT (14222) for the private NATS, BENCH_HTTP_PORT (18080).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

DURATION=${BENCH_DURATION_S:-30}
CONCURRENCY=${BENCH_CONCURRENCY:-32}
READ_RATE=${BENCH_READ_RATE:-200}
READ_DURATION=${BENCH_READ_DURATION_S:-10}
SIGN_IN_BOOKINGS_RATE=${BENCH_SIGN_IN_BOOKINGS_RATE:-200}
REPLAY_EVENTS=${BENCH_REPLAY_EVENTS:-1000000}
HOT_CHAT_MESSAGES=${BENCH_HOT_CHAT_MESSAGES:-100000}
NATS_PORT=${BENCH_NATS_PORT:-14222}
HTTP_PORT=${BENCH_HTTP_PORT:-18080}
PLAIN_PORT=$((HTTP_PORT + 10))
WORK=$(mktemp -d /tmp/herald-bench.XXXXXX)
trap 'cleanup; rm -rf "$WORK/nats"' EXIT
RUN_STARTED=$(date +%s)
URL="http://127.0.0.1:$HTTP_PORT"

# start_plain: the plain app on a fresh database; sets PLAIN_PID once it listens.
start_plain() {
    fresh_db herald_bench_plain
    "${PSQL[@]}" -d postgres -c "CREATE DATABASE herald_bench_plain"
    "${PSQL[@]}" -d herald_bench_plain -f bench/plain_cqrs.sql
    start plain "$BIN/plain-cqrs" --database-url "$PG_SERVER/herald_bench_plain" --listen "127.0.0.1:$PLAIN_PORT"
    PLAIN_PID=$STARTED_PID
    wait_for_port "$PLAIN_PORT"
}

# plain_run OUT WORKLOAD: the plain app on a fresh database, driven with WORKLOAD
# at full speed; the results go to $WORK/OUT.json.
plain_run() {
    log "plain cqrs-es app, $2: $CONCURRENCY clients, ${DURATION}s"
    start_plain
    "$BIN/herald-load" commands --target plain --workload "$2" --url "http://127.0.0.1:$PLAIN_PORT" \
        --concurrency "$CONCURRENCY" --duration-s "$DURATION" --pid "$PLAIN_PID" >"$WORK/$1.json"
    stop "$PLAIN_PID"
    log "plain $2: $(jq -r .throughput "$WORK/$1.json") commands/s"
}

# read_run OUT URL ARGS...: one endpoint read from $CONCURRENCY clients as fast as
# it answers; the results go to $WORK/OUT.json.
read_run() {
    local out=$1 url=$2
    shift 2
    log "reads, $*: $CONCURRENCY clients, ${READ_DURATION}s"
    "$BIN/herald-load" read-load --url "$url" --concurrency "$CONCURRENCY" \
        --duration-s "$READ_DURATION" "$@" >"$WORK/$out.json"
    log "reads, $*: $(jq -r .throughput "$WORK/$out.json")/s"
}

# fresh_herald DATABASE PREFIX: points Herald at a fresh database and a NATS
# stream of its own.
fresh_herald() {
    fresh_db "$1"
    export HERALD_DATABASE_URL="$PG_SERVER/$1" HERALD_NATS_PREFIX="$2"
}

# start_herald: API, relay, projection workers, process manager and live hub
# in one process; sets HERALD_PID once it listens.
start_herald() {
    start herald "$BIN/herald" up
    HERALD_PID=$STARTED_PID
    wait_for_port "$HTTP_PORT"
}

# herald_run OUT WORKLOAD [ARGS...]: Herald driven with WORKLOAD at full speed,
# following its pipeline and timing its catch-up after the load; the results
# go to $WORK/OUT.json.
herald_run() {
    local out=$1 workload=$2
    shift 2
    log "Herald, $workload: $CONCURRENCY clients, ${DURATION}s, pipeline running"
    "$BIN/herald-load" commands --workload "$workload" --url "$URL" --concurrency "$CONCURRENCY" \
        --duration-s "$DURATION" --pid "$HERALD_PID" --database-url "$HERALD_DATABASE_URL" "$@" \
        >"$WORK/$out.json"
    log "Herald $workload: $(jq -r .throughput "$WORK/$out.json") commands/s," \
        "all applied $(jq -r .pipeline.catch_up_s "$WORK/$out.json")s after the load"
}

log "building release binaries (once)"
cargo build --release -p api --bin herald -p bench --bins

start_nats "$NATS_PORT" "$WORK/nats"
export HERALD_NATS_URL="nats://127.0.0.1:$NATS_PORT"
fresh_secrets
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

# 2. The plain cqrs-es app: its mix, and every command opening an account.
plain_run plain mix
plain_run plain-open open

# 3. Herald's mix, with its whole pipeline running.
export HERALD_LISTEN="127.0.0.1:$HTTP_PORT"
fresh_herald herald_bench "bench$RUN_STARTED"
start_herald
herald_run herald mix
MAX_RATE=$(jq -r .throughput "$WORK/herald.json")

# 4. End-to-end lag at half of that rate.
HALF=$(awk -v r="$MAX_RATE" 'BEGIN { printf "%.0f", r / 2 }')
log "lag at $HALF commands/s"
"$BIN/herald-load" commands --url "$URL" --concurrency "$CONCURRENCY" --duration-s "$DURATION" \
    --rate "$HALF" --lag --database-url "$HERALD_DATABASE_URL" >"$WORK/lag.json"

# 5. Reads at a fixed rate, then as fast as they are answered: each endpoint
#    read whole, then polled with the ETag of its first answer; then the plain
#    app's one read, on its own fresh database.
log "reads at $READ_RATE/s"
"$BIN/herald-load" reads --url "$URL" --rate "$READ_RATE" --duration-s "$DURATION" >"$WORK/reads.json"
for read in booking messages bookings; do
    read_run "read-$read" "$URL" --read "$read"
    read_run "poll-$read" "$URL" --read "$read" --poll
done

# 5b. Signing in (an argon2id check each, slow by design) as fast as it is
#     answered; then new bookings at a fixed rate, alone and while sign-ins
#     run at full speed beside them.
read_run sign-in "$URL" --read sign-in
bookings_at() {
    "$BIN/herald-load" commands --workload bookings --url "$URL" --concurrency "$CONCURRENCY" \
        --duration-s "$READ_DURATION" --rate "$SIGN_IN_BOOKINGS_RATE" >"$WORK/$1.json"
}
log "bookings at $SIGN_IN_BOOKINGS_RATE/s, alone"
bookings_at bookings-alone
log "bookings at $SIGN_IN_BOOKINGS_RATE/s, while signing in at full speed"
"$BIN/herald-load" read-load --url "$URL" --read sign-in --concurrency "$CONCURRENCY" \
    --duration-s "$READ_DURATION" >"$WORK/sign-in-beside.json" &
SIGNING_IN=$!
bookings_at bookings-beside-sign-ins
wait "$SIGNING_IN"
stop "$HERALD_PID"
start_plain
read_run read-plain "http://127.0.0.1:$PLAIN_PORT" --read account
stop "$PLAIN_PID"

# 6. Herald, one kind of command at a time, each on a fresh database: new
#    bookings, messages spread over 100 chats, messages into one long chat.
fresh_herald herald_bench_bookings "bookings$RUN_STARTED"
start_herald
herald_run herald-bookings bookings
stop "$HERALD_PID"

fresh_herald herald_bench_messages "messages$RUN_STARTED"
start_herald
herald_run herald-messages messages
stop "$HERALD_PID"

log "hot chat: seeding one chat of $HOT_CHAT_MESSAGES messages"
fresh_herald herald_bench_hot "hot$RUN_STARTED"
"$BIN/herald" migrate >/dev/null
"$BIN/herald-load" seed-chat --messages "$HOT_CHAT_MESSAGES" >"$WORK/hot-chat-seed.json"
start_herald
log "hot chat: the pipeline numbers, publishes and applies the seeded chat"
"$BIN/herald-load" catch-up --timeout-s 1200 >"$WORK/hot-chat-warm.json"
herald_run herald-hot-chat hot-chat --chat "$WORK/hot-chat-seed.json"
stop "$HERALD_PID"

# 7. Replay and audit verification of a large log.
log "replay: seeding $REPLAY_EVENTS events; the relay numbers, hashes and publishes them"
seed_log herald_bench_replay "$REPLAY_EVENTS"
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
READ_DURATION=$READ_DURATION
SIGN_IN_BOOKINGS_RATE=$SIGN_IN_BOOKINGS_RATE
ENV
WORK="$WORK" bash bench/report.sh
log "done in $(( $(date +%s) - RUN_STARTED ))s; raw results in $WORK"
