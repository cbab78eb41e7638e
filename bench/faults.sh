#!/usr/bin/env bash
# Herald's fault-injection suite: keeps a command load running while it
# SIGKILLs the relay, a projection worker and the process manager, restarts
# NATS and makes Postgres refuse connections; then checks that every command
# answered 2xx is in the log exactly once, JetStream holds each event once,
# every read model equals a fresh rebuild, and no request got a 5xx other
# than 503. Prints the counts and writes them to BENCHMARKS.md ("Faults").
#
#   bash bench/faults.sh
#
# It never touches the shared services: NATS is a private server on its own
# port and store, and Postgres is reached through a proxy the suite kills.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

DURATION=${FAULTS_DURATION_S:-75}
CONCURRENCY=${FAULTS_CONCURRENCY:-16}
NATS_PORT=${FAULTS_NATS_PORT:-14322}
PROXY_PORT=${FAULTS_PG_PROXY_PORT:-15432}
HTTP_PORT=${FAULTS_HTTP_PORT:-18180}
STANDBY_PORT=$((HTTP_PORT + 1))
WORK=$(mktemp -d /tmp/herald-faults.XXXXXX)
trap 'cleanup; rm -rf "$WORK/nats"' EXIT
SCHEDULE="$WORK/schedule.txt"
STARTED_AT=$(date +%s)
event() { log "$*"; printf '| +%ss | %s |\n' "$(( $(date +%s) - STARTED_AT ))" "$*" >>"$SCHEDULE"; }

log "building release binaries (once)"
cargo build --release -p api --bin herald -p bench --bins

start_nats "$NATS_PORT" "$WORK/nats"
start proxy "$BIN/herald-load" proxy --listen "127.0.0.1:$PROXY_PORT" --upstream 127.0.0.1:5432
PROXY_PID=$STARTED_PID
wait_for_port "$PROXY_PORT"

fresh_db herald_faults
export HERALD_DATABASE_URL="postgres://postgres@127.0.0.1:$PROXY_PORT/herald_faults"
export HERALD_NATS_URL="nats://127.0.0.1:$NATS_PORT" HERALD_NATS_PREFIX="faults$STARTED_AT"
fresh_secrets
export HERALD_SANDBOX=true   # payments go through the built-in sandbox provider
export HERALD_RATE_LIMIT_PER_SECOND=0
"$BIN/herald" migrate >/dev/null

# Started in this order so that the processes the suite kills hold the locks:
# the separate relay is the active one, the second `herald up` runs the active
# process manager, and the `herald up` serving the load stands by for both.
start relay "$BIN/herald" relay;  RELAY_PID=$STARTED_PID
sleep 2
start standby env HERALD_LISTEN="127.0.0.1:$STANDBY_PORT" "$BIN/herald" up; STANDBY_PID=$STARTED_PID
wait_for_port "$STANDBY_PORT"
sleep 2
start project "$BIN/herald" project; PROJECT_PID=$STARTED_PID
start up env HERALD_LISTEN="127.0.0.1:$HTTP_PORT" "$BIN/herald" up; UP_PID=$STARTED_PID
wait_for_port "$HTTP_PORT"

: >"$SCHEDULE"
STARTED_AT=$(date +%s)
event "load starts: $CONCURRENCY clients for ${DURATION}s, each command with an Idempotency-Key, repeated through 503s"
"$BIN/herald-load" commands --url "http://127.0.0.1:$HTTP_PORT" --concurrency "$CONCURRENCY" \
    --duration-s "$DURATION" --record "$WORK/answered.tsv" >"$WORK/load.json" &
LOAD_PID=$!

sleep 8
event "SIGKILL the active relay (\`herald relay\`)"; stop "$RELAY_PID" KILL
sleep 3
start relay "$BIN/herald" relay; RELAY_PID=$STARTED_PID; event "relay restarted (now a standby)"
sleep 4
for round in 1 2 3; do
    event "SIGKILL a projection worker (\`herald project\`, round $round)"; stop "$PROJECT_PID" KILL
    sleep 1
    start project "$BIN/herald" project; PROJECT_PID=$STARTED_PID
    sleep 3
done
event "SIGKILL the \`herald up\` running the active process manager"; stop "$STANDBY_PID" KILL
sleep 3
start standby env HERALD_LISTEN="127.0.0.1:$STANDBY_PORT" "$BIN/herald" up; STANDBY_PID=$STARTED_PID
event "second \`herald up\` restarted"
sleep 4
event "SIGKILL NATS"; stop "$NATS_PID" KILL
sleep 4
start_nats "$NATS_PORT" "$WORK/nats"; event "NATS restarted on the same store"
sleep 6
event "Postgres refuses connections (proxy killed; every connection cut)"; stop "$PROXY_PID" KILL
sleep 6
start proxy "$BIN/herald-load" proxy --listen "127.0.0.1:$PROXY_PORT" --upstream 127.0.0.1:5432
PROXY_PID=$STARTED_PID; event "Postgres reachable again"
wait "$LOAD_PID"
event "load ended"

log "checking (waits for the pipeline to catch up first)"
STATUS=0
"$BIN/herald-load" check-faults --database-url "$PG_SERVER/herald_faults" \
    --record "$WORK/answered.tsv" >"$WORK/check.json" 2>"$WORK/check.log" || STATUS=$?
cat "$WORK/check.log" >&2
[ -s "$WORK/check.json" ] || { log "the check did not run"; exit 1; }

c() { jq -r "$1" "$WORK/check.json"; }
l() { jq -r "$1" "$WORK/load.json"; }
VERDICT=$([ "$STATUS" = 0 ] && [ "$(l .server_errors_not_503)" = 0 ] && echo "passed" || echo "FAILED")
SUMMARY=$(cat <<MD
<!-- bench/faults.sh: begin -->
## Faults

\`bash bench/faults.sh\` on $(date -u +%Y-%m-%d) at commit \`$(git rev-parse --short HEAD)\`, $(nproc) cores:
$(l .commands_ok) commands accepted in $(printf '%.0f' "$(l .elapsed_s)") s by one \`herald up\`, with a separate
\`herald relay\`, a separate \`herald project\` and a second \`herald up\` beside it, through a
Postgres proxy and a private NATS. **$VERDICT.**

| after the load started | fault |
| --- | --- |
$(cat "$SCHEDULE")

| check | count |
| --- | ---: |
| commands answered 2xx (recorded with their idempotency key, aggregate and version) | $(c .answered) |
| … stored at the answered version, by exactly one transaction | $(c .stored_once) |
| … missing from the log | $(c .missing) |
| … stored twice | $(c .duplicated) |
| events in the log / positions given / positions dense | $(c .events) / $(c .positions) / $(c .positions_dense) |
| messages in the JetStream stream / published twice / never published / in position order | $(c .stream_messages) / $(c .stream_duplicates) / $(c .stream_missing) / $(c .stream_in_order) |
| rows differing from a fresh rebuild (chats, bookings, payments, summary) | $(c '[.read_model_differences[][1]] | map(tostring) | join(", ")') |
| dead letters | $(c .dead_letters) |
| answers by status, every attempt | \`$(jq -c .statuses "$WORK/load.json")\` |
| 5xx other than 503 | $(l .server_errors_not_503) |
| requests with no answer (connection refused or cut) | $(l .transport_errors) |
<!-- bench/faults.sh: end -->
MD
)
printf '%s\n' "$SUMMARY"
replace_section "bench/faults.sh" "$SUMMARY"
[ "$VERDICT" = passed ]
