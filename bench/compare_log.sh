#!/usr/bin/env bash
# Audit verification (and, with BENCH_REPLAY=1, replay) of two Herald builds
# side by side, over logs of each size in BENCH_LOG_EVENTS (default
# "1000000 10000000"):
#   bash bench/compare_log.sh BASE_HERALD NEW_HERALD [ROUNDS]
# (BENCH_NATS_PORT, 14222 by default, for the run's own NATS.)
# Each log is seeded once (`seed_log` in bench/lib.sh); then, each round,
# `herald audit verify` of one build and then the other, and `herald replay`
# likewise. Prints one JSON line per run: wall seconds, events/s, the
# build's CPU seconds and peak RSS (/usr/bin/time), and the whole machine's
# busy CPU seconds (Postgres's share is the difference). Needs the release
# `herald` and `herald-load` (`cargo build --release -p api -p bench --bins`).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

BASE=$1 NEW=$2 ROUNDS=${3:-2}
SIZES=${BENCH_LOG_EVENTS:-1000000 10000000}
NATS_PORT=${BENCH_NATS_PORT:-14222}
WORK=$(mktemp -d /tmp/herald-compare-log.XXXXXX)
trap 'cleanup; rm -rf "$WORK/nats"' EXIT
# The relay publishes every log to a NATS of the run's own, dropped with it.
start_nats "$NATS_PORT" "$WORK/nats"
export HERALD_NATS_URL="nats://127.0.0.1:$NATS_PORT" RUST_LOG=warn

busy() { awk '/^cpu /{ print $2 + $3 + $4 + $7 + $8 }' /proc/stat; }

# timed BUILD WHAT EVENTS CMD...: runs CMD, printing its JSON line.
timed() {
    local build=$1 what=$2 events=$3
    shift 3
    local before started
    before=$(busy)
    started=$(date +%s.%N)
    /usr/bin/time -o "$WORK/time" -f '%U %S %M' "$@" >"$WORK/out" 2>"$WORK/err" ||
        { log "$build $what failed: $(tail -3 "$WORK/err")"; return 1; }
    awk -v build="$build" -v what="$what" -v events="$events" \
        -v started="$started" -v ended="$(date +%s.%N)" -v before="$before" -v after="$(busy)" \
        '{ wall = ended - started
           printf "{\"run\":\"%s\",\"what\":\"%s\",\"events\":%d,\"seconds\":%.2f,\"events_per_s\":%.0f,\"cpu_s\":%.2f,\"machine_cpu_s\":%.2f,\"peak_rss_mb\":%.0f}\n",
                  build, what, events, wall, events / wall, $1 + $2, (after - before) / 100, $3 / 1024 }' \
        "$WORK/time"
}

for events in $SIZES; do
    log "seeding a log of $events events"
    seed_log herald_compare_log "$events"
    for round in $(seq 1 "$ROUNDS"); do
        for build in base new; do
            binary=$BASE
            [ "$build" = new ] && binary=$NEW
            timed "$build" verify "$events" "$binary" audit verify
            if [ "${BENCH_REPLAY:-0}" = 1 ]; then
                timed "$build" replay "$events" "$binary" replay
            fi
        done
    done
done
fresh_db herald_compare_log
