#!/usr/bin/env bash
# Reads of two Herald builds side by side, and the plain cqrs-es app's:
#   bash bench/compare_reads.sh BASE_HERALD NEW_HERALD [ROUNDS]
# For each round, build and read (a booking, a page of messages, a page of
# bookings): `herald up` on a fresh database and `herald-load read-load` from
# 32 clients for 10 s; then the plain app's `GET /account/{id}` the same way.
# Prints one JSON line per run. Needs the release `herald-load` and
# `plain-cqrs` (`cargo build --release -p bench --bins`).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

BASE=$1 NEW=$2 ROUNDS=${3:-2}
WORK=$(mktemp -d /tmp/herald-compare-reads.XXXXXX)
PORT=18600
trap cleanup EXIT
export HERALD_NATS_URL=${HERALD_NATS_URL:-nats://127.0.0.1:4222}
fresh_secrets
export HERALD_SANDBOX=true HERALD_RATE_LIMIT_PER_SECOND=0 HERALD_LISTEN="127.0.0.1:$PORT" RUST_LOG=warn

# read_load NAME URL READ: one read from 32 clients for 10 s, as a JSON line.
read_load() {
    "$BIN/herald-load" read-load --url "$2" --read "$3" --concurrency 32 --duration-s 10 \
        >"$WORK/run.json"
    jq -c --arg run "$1" --arg read "$3" \
        '{run: $run, read: $read, rate: .throughput, p50_ms: .latency.p50_ms, p99_ms: .latency.p99_ms, statuses}' \
        "$WORK/run.json"
}

for round in $(seq 1 "$ROUNDS"); do
    for build in base new; do
        binary=$BASE
        [ "$build" = new ] && binary=$NEW
        for read in booking messages bookings; do
            fresh_db herald_compare_reads
            export HERALD_DATABASE_URL="$PG_SERVER/herald_compare_reads"
            export HERALD_NATS_PREFIX="compare$round$build$read$$"
            start "herald-$build" "$binary" up
            wait_for_port "$PORT"
            read_load "$build" "http://127.0.0.1:$PORT" "$read"
            stop "$STARTED_PID"
        done
    done
    fresh_db herald_compare_plain
    "${PSQL[@]}" -d postgres -c "CREATE DATABASE herald_compare_plain"
    "${PSQL[@]}" -d herald_compare_plain -f bench/plain_cqrs.sql >/dev/null
    start plain "$BIN/plain-cqrs" --database-url "$PG_SERVER/herald_compare_plain" \
        --listen "127.0.0.1:$((PORT + 1))"
    wait_for_port "$((PORT + 1))"
    read_load plain "http://127.0.0.1:$((PORT + 1))" account
    stop "$STARTED_PID"
done
