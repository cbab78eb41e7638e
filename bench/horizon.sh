#!/usr/bin/env bash
# What one call of the relay's `event_horizon()` costs under a live mixed load,
# set against the horizon it replaced (read from the lock table), alternately:
#   bash bench/horizon.sh [HERALD]
# HERALD is a release `herald` (by default target/release/herald); needs the
# release `herald-load` (`cargo build --release -p bench --bins`). Writes its
# section of BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

HERALD=${1:-$BIN/herald}
WORK=$(mktemp -d /tmp/herald-horizon.XXXXXX)
PORT=18790
ROUNDS=3
trap cleanup EXIT
export HERALD_NATS_URL=${HERALD_NATS_URL:-nats://127.0.0.1:4222}
fresh_secrets
export HERALD_SANDBOX=true HERALD_RATE_LIMIT_PER_SECOND=0 HERALD_LISTEN="127.0.0.1:$PORT" RUST_LOG=warn
fresh_db herald_bench_horizon
export HERALD_DATABASE_URL="$PG_SERVER/herald_bench_horizon" HERALD_NATS_PREFIX="horizon$$"
start herald "$HERALD" up
herald_pid=$STARTED_PID
wait_for_port "$PORT"

# The horizon before migration 20261204000001, as its own migration defined it
# (declared transactions found by their shared advisory lock in `pg_locks`),
# under another name. Only its cost is compared.
sed -n '/^CREATE FUNCTION event_horizon()/,/^\$\$;/p' migrations/20261121000012_event_horizon.sql |
    sed 's/event_horizon()/event_horizon_from_locks()/' |
    "${PSQL[@]}" -d herald_bench_horizon
echo "SELECT event_horizon_from_locks();" >"$WORK/locks.sql"
echo "SELECT event_horizon();" >"$WORK/status.sql"

"$BIN/herald-load" commands --workload mix --url "http://127.0.0.1:$PORT" --concurrency 32 \
    --duration-s $((ROUNDS * 10 + 10)) --pid "$herald_pid" >"$WORK/load.json" &
load_pid=$!
sleep 5
rows=""
for round in $(seq 1 "$ROUNDS"); do
    for horizon in locks status; do
        ms=$(pgbench -n -h 127.0.0.1 -U postgres -c 1 -T 4 -f "$WORK/$horizon.sql" herald_bench_horizon 2>/dev/null |
            sed -n 's/^latency average = \([0-9.]*\) ms/\1/p')
        log "round $round, $horizon: $ms ms"
        rows+="| $round | $horizon | $ms |"$'\n'
    done
done
counts=$("${PSQL[@]}" -d herald_bench_horizon -c \
    "SELECT (SELECT count(*) FROM pg_locks) || ' locks, ' || (SELECT count(*) FROM pg_stat_activity) || ' backends'")
wait "$load_pid"

SECTION=$(cat <<MD
<!-- bench/horizon.sh: begin -->
## The relay's event horizon

\`bash bench/horizon.sh\` on $(date -u +%Y-%m-%d) at commit \`$(git rev-parse --short HEAD)\`, $(nproc) cores:
one \`herald up\` under the mixed workload from 32 clients
($(jq .throughput "$WORK/load.json" | xargs printf "%.0f") commands/s), while \`pgbench -c 1\` calls one
horizon for 4 s, then the other, $ROUNDS times. \`status\` is \`event_horizon()\` as migrated,
reading the backends' status; \`locks\` is the one it replaced, reading the lock table.
At the last look Postgres held $counts.

| round | horizon | ms per call |
| ---: | --- | ---: |
${rows%$'\n'}
<!-- bench/horizon.sh: end -->
MD
)
replace_section "bench/horizon.sh" "$SECTION"
