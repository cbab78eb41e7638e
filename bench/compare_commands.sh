#!/usr/bin/env bash
# Commands of two Herald builds side by side:
#   bash bench/compare_commands.sh BASE_HERALD NEW_HERALD [ROUNDS]
# For each round and build in turn: `herald up` (its whole pipeline, the
# process manager and the live hub, and notifications e-mailed to an SMTP
# server that takes every message, where the build has them, unless
# BENCH_EMAIL=0) on a fresh
# database and stream, driven by `herald-load commands` from 32 clients for
# 15 s, first with the mixed workload, then with new bookings. Prints one JSON
# line per run. Needs the release
# `herald-load` (`cargo build --release -p bench --bins`).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

BASE=$1 NEW=$2 ROUNDS=${3:-2}
DURATION=${BENCH_DURATION_S:-15}
WORK=$(mktemp -d /tmp/herald-compare-commands.XXXXXX)
PORT=18700
trap cleanup EXIT
export HERALD_NATS_URL=${HERALD_NATS_URL:-nats://127.0.0.1:4222}
fresh_secrets
export HERALD_SANDBOX=true HERALD_RATE_LIMIT_PER_SECOND=0 HERALD_LISTEN="127.0.0.1:$PORT" RUST_LOG=warn
# Chat messages left unread fall due within the run, and notifications are
# e-mailed (a build without notifications ignores both).
export HERALD_NOTIFY_UNREAD_AFTER=5s
# BENCH_EMAIL=0 leaves e-mail out, and with it the SMTP server's CPU, which
# shares the machine's cores with Herald here but would not in production.
if [ "${BENCH_EMAIL:-1}" = 1 ]; then
    export HERALD_SMTP_URL="smtp://127.0.0.1:$((PORT + 1))" HERALD_SMTP_FROM="Herald <bench@herald.test>"
    start smtp python3 -m aiosmtpd -n -l "127.0.0.1:$((PORT + 1))" -c aiosmtpd.handlers.Sink
    wait_for_port "$((PORT + 1))"
fi

for round in $(seq 1 "$ROUNDS"); do
    for build in base new; do
        binary=$BASE
        [ "$build" = new ] && binary=$NEW
        for workload in mix bookings; do
            fresh_db herald_compare_commands
            export HERALD_DATABASE_URL="$PG_SERVER/herald_compare_commands"
            export HERALD_NATS_PREFIX="cmd$round$build$workload$$"
            start "herald-$build" "$binary" up
            herald_pid=$STARTED_PID
            wait_for_port "$PORT"
            "$BIN/herald-load" commands --workload "$workload" --url "http://127.0.0.1:$PORT" \
                --concurrency 32 --duration-s "$DURATION" --pid "$herald_pid" >"$WORK/run.json"
            jq -c --arg run "$build" --arg workload "$workload" \
                '{run: $run, workload: $workload, rate: .throughput, p99_ms: .latency.p99_ms,
                  rss_mb: .rss.hwm_mb}' "$WORK/run.json"
            stop "$herald_pid"
        done
    done
done
