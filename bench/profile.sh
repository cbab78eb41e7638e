#!/usr/bin/env bash
# Where a Herald command or read run spends its time, in one run on a fresh database:
# who uses the machine's CPU (Herald, Postgres, NATS, the load generator),
# where Herald's own CPU goes (perf, by symbol), and what Postgres backends do
# (pg_stat_activity sampled every 10 ms: average sessions per state, wait and
# statement), and what one command or read costs: CPU by process, Postgres transactions,
# WAL flushes (fsyncs) and, when Postgres preloads pg_stat_statements,
# statements (round trips). Writes the "Profile" section of BENCHMARKS.md (for
# reads, the "Profile of a read run" section).
#
#   bash bench/profile.sh
#
# Settings (environment): BENCH_DURATION_S (30), BENCH_CONCURRENCY (32),
# BENCH_WORKLOAD (mix; or bookings, messages; or a read as `herald-load read-load`
# names it, read whole or polled: read-booking, read-messages, read-bookings,
# poll-booking, poll-messages, poll-bookings), BENCH_NATS_PORT (14222),
# BENCH_HTTP_PORT (18080), BENCH_HERALD (the herald binary to profile, by default
# the one just built; another build's, to set two side by side).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

DURATION=${BENCH_DURATION_S:-30}
CONCURRENCY=${BENCH_CONCURRENCY:-32}
WORKLOAD=${BENCH_WORKLOAD:-mix}
NATS_PORT=${BENCH_NATS_PORT:-14222}
HTTP_PORT=${BENCH_HTTP_PORT:-18080}
case $WORKLOAD in
    read-* | poll-*)
        UNIT=read
        LOAD=(read-load --read "${WORKLOAD#*-}")
        [[ $WORKLOAD == poll-* ]] && LOAD+=(--poll)
        SECTION_NAME="bench/profile.sh reads"
        # Reads answered: the setup's few hundred commands before them are counted in
        # the totals but not in the divisor.
        ANSWERED='[.statuses[]] | add'
        ;;
    *)
        UNIT=command
        LOAD=(commands --workload "$WORKLOAD")
        SECTION_NAME="bench/profile.sh"
        ANSWERED='.commands_ok'
        ;;
esac
WORK=$(mktemp -d /tmp/herald-profile.XXXXXX)
trap 'cleanup; rm -rf "$WORK/nats"' EXIT
DB=herald_profile

log "building release binaries (once)"
cargo build --release -p api --bin herald -p bench --bins

start_nats "$NATS_PORT" "$WORK/nats"
export HERALD_NATS_URL="nats://127.0.0.1:$NATS_PORT" HERALD_NATS_PREFIX="profile$(date +%s)"
fresh_secrets
export HERALD_SANDBOX=true   # payments go through the built-in sandbox provider
export HERALD_RATE_LIMIT_PER_SECOND=0
export HERALD_DATABASE_URL="$PG_SERVER/$DB" HERALD_LISTEN="127.0.0.1:$HTTP_PORT"
fresh_db "$DB"
start herald "${BENCH_HERALD:-$BIN/herald}" up
HERALD_PID=$STARTED_PID
wait_for_port "$HTTP_PORT"

# CPU seconds used so far: by one process, by every Postgres process (the
# postmaster's reaped children included), by the whole machine.
ticks_of() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
postgres_ticks() {
    local master total=0 pid
    master=$(head -n1 "$(ls -d /var/lib/postgresql/*/main | head -n1)/postmaster.pid")
    total=$(awk '{ print $16 + $17 }' "/proc/$master/stat")
    for pid in $(pgrep -u postgres); do
        total=$((total + $(ticks_of "$pid" 2>/dev/null || echo 0)))
    done
    echo "$total"
}
machine_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 }' /proc/stat; }
snapshot() { echo "$(ticks_of "$HERALD_PID") $(postgres_ticks) $(ticks_of "$NATS_PID") $(machine_ticks)"; }

# Transactions of Herald's database, WAL flushes of the server and, when
# pg_stat_statements is preloaded, statements run in Herald's database.
if "${PSQL[@]}" -d postgres -c "SHOW shared_preload_libraries" | grep -q pg_stat_statements; then
    "${PSQL[@]}" -d "$DB" -c "CREATE EXTENSION IF NOT EXISTS pg_stat_statements"
    STATEMENTS="(SELECT sum(calls) FROM pg_stat_statements
                  WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()))"
else
    STATEMENTS="NULL"
fi
# The statements that took Postgres longest since the counters were read
# before the run: calls and execution time per command or read answered.
top_statements() {
    "${PSQL[@]}" -d "$DB" -F ' | ' -c "SELECT round(calls::numeric / $1, 2),
            round((total_exec_time * 1000 / $1)::numeric, 1),
            left(regexp_replace(query, '\s+', ' ', 'g'), 90)
       FROM pg_stat_statements
      WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
      ORDER BY total_exec_time DESC LIMIT 15"
}
counters() {
    sleep 1 # the statistics collector publishes at most once a second
    "${PSQL[@]}" -d "$DB" -F ' ' -c "SELECT
        (SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()),
        (SELECT wal_sync FROM pg_stat_wal), coalesce($STATEMENTS, -1)"
}

"${PSQL[@]}" -d postgres -c "
    CREATE OR REPLACE FUNCTION public.herald_profile_sample(db text, seconds float)
        RETURNS TABLE (activity text, sessions float) LANGUAGE plpgsql AS \$\$
    DECLARE
        counts jsonb := '{}';
        rounds bigint := 0;
        key text;
        until timestamptz := clock_timestamp() + seconds * interval '1 second';
    BEGIN
        WHILE clock_timestamp() < until LOOP
            PERFORM pg_stat_clear_snapshot();
            FOR key IN
                SELECT state || ' | ' || coalesce(wait_event_type || ':' || wait_event, 'on CPU')
                       || ' | ' || left(regexp_replace(query, '\s+', ' ', 'g'), 90)
                  FROM pg_stat_activity
                 WHERE datname = db AND state <> 'idle' AND pid <> pg_backend_pid()
            LOOP
                counts := jsonb_set(counts, ARRAY[key],
                                    to_jsonb(coalesce((counts ->> key)::bigint, 0) + 1));
            END LOOP;
            rounds := rounds + 1;
            PERFORM pg_sleep(0.01);
        END LOOP;
        RETURN QUERY SELECT c.key, c.value::bigint::float / rounds
                       FROM jsonb_each_text(counts) AS c
                      ORDER BY 2 DESC;
    END \$\$"

log "profiling $DURATION s of the $WORKLOAD workload at $CONCURRENCY clients"
STARTED_AT=$(date +%s.%N)
[ "$STATEMENTS" = NULL ] || "${PSQL[@]}" -d "$DB" -c "SELECT pg_stat_statements_reset(0,
    (SELECT oid FROM pg_database WHERE datname = current_database()), 0)" >/dev/null
COUNTERS_BEFORE=$(counters)
BEFORE=$(snapshot)
"${PSQL[@]}" -d postgres -F ' | ' -c "SELECT round(sessions::numeric, 2), activity
    FROM public.herald_profile_sample('$DB', $DURATION) LIMIT 25" >"$WORK/sessions.txt" &
SAMPLER=$!
perf record -F 499 -p "$HERALD_PID" -o "$WORK/perf.data" -- sleep "$DURATION" 2>"$WORK/perf.log" &
PERF=$!
TIMEFORMAT='%U %S'
{ time "$BIN/herald-load" "${LOAD[@]}" --url "http://127.0.0.1:$HTTP_PORT" \
    --concurrency "$CONCURRENCY" --duration-s "$DURATION" \
    >"$WORK/load.json" 2>"$WORK/load.log"; } 2>"$WORK/load.time"
AFTER=$(snapshot)
ELAPSED=$(awk -v a="$STARTED_AT" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')
COUNTERS_AFTER=$(counters)
wait "$SAMPLER" "$PERF"
"${PSQL[@]}" -d postgres -c "DROP FUNCTION public.herald_profile_sample(text, float)"
stop "$HERALD_PID"

HZ=$(getconf CLK_TCK)
read -r H0 P0 N0 M0 <<<"$BEFORE"
read -r H1 P1 N1 M1 <<<"$AFTER"
read -r LU LS <"$WORK/load.time"
cpu() { awk -v t="$1" -v hz="$HZ" -v s="$ELAPSED" 'BEGIN { printf "%.2f", t / hz / s }'; }
HERALD_CPU=$(cpu $((H1 - H0)))
POSTGRES_CPU=$(cpu $((P1 - P0)))
NATS_CPU=$(cpu $((N1 - N0)))
MACHINE_CPU=$(cpu $((M1 - M0)))
LOAD_CPU=$(awk -v u="$LU" -v s="$LS" -v d="$ELAPSED" 'BEGIN { printf "%.2f", (u + s) / d }')
OTHER_CPU=$(awk -v m="$MACHINE_CPU" -v a="$HERALD_CPU" -v b="$POSTGRES_CPU" -v c="$NATS_CPU" -v d="$LOAD_CPU" \
    'BEGIN { o = m - a - b - c - d; printf "%.2f", o < 0 ? 0 : o }')
RATE=$(jq -r '.throughput | round' "$WORK/load.json")
COMMANDS=$(jq -r "$ANSWERED" "$WORK/load.json")
read -r X0 W0 S0 <<<"$COUNTERS_BEFORE"
read -r X1 W1 S1 <<<"$COUNTERS_AFTER"
# Milliseconds of CPU per command or read, from cores busy over the run.
per_command_ms() { awk -v c="$1" -v d="$ELAPSED" -v n="$COMMANDS" 'BEGIN { printf "%.3f", c * d * 1000 / n }'; }
per_command() { awk -v n="$1" -v c="$COMMANDS" 'BEGIN { printf "%.2f", n / c }'; }
if [ "$S0" -ge 0 ]; then
    STATEMENTS_PER_COMMAND=$(per_command $((S1 - S0)))
    top_statements "$COMMANDS" >"$WORK/statements.txt"
else
    STATEMENTS_PER_COMMAND="not measured: Postgres does not preload pg_stat_statements"
fi
perf report -i "$WORK/perf.data" --stdio --no-children --sort dso,symbol --percent-limit 0.7 2>/dev/null |
    grep -v '^#' | grep -v '^$' | sed -E 's/[[:space:]]+(-[[:space:]]+)*$//' | head -30 >"$WORK/symbols.txt"

SECTION=$(
    echo "<!-- $SECTION_NAME: begin -->"
    echo "## Profile of a $UNIT run"
    echo
    echo "Measured by \`BENCH_WORKLOAD=$WORKLOAD BENCH_DURATION_S=$DURATION bash bench/profile.sh\` ($CONCURRENCY clients) on"
    echo "$(date -u +%Y-%m-%d) at commit \`$(git rev-parse --short HEAD)\`$(git diff --quiet HEAD -- . ':!BENCHMARKS.md' || echo ' (with uncommitted changes)'):"
    echo "\`herald up\` under the benchmark's \`$WORKLOAD\` workload, $RATE ${UNIT}s/s."
    echo
    echo "### Who uses the CPU (cores busy, averaged over the run; the machine has $(nproc))"
    echo
    echo "| process | cores |"
    echo "| --- | ---: |"
    echo "| Herald (API, relay, projections, process manager) | $HERALD_CPU |"
    echo "| Postgres (all backends) | $POSTGRES_CPU |"
    echo "| NATS | $NATS_CPU |"
    echo "| load generator | $LOAD_CPU |"
    echo "| anything else on the machine | $OTHER_CPU |"
    echo "| **all** | **$MACHINE_CPU** |"
    echo
    echo "### What one $UNIT costs (the whole pipeline's work, divided by ${UNIT}s answered)"
    echo
    echo "| what | per $UNIT |"
    echo "| --- | ---: |"
    echo "| CPU of Herald, ms | $(per_command_ms "$HERALD_CPU") |"
    echo "| CPU of Postgres, ms | $(per_command_ms "$POSTGRES_CPU") |"
    echo "| CPU of NATS, ms | $(per_command_ms "$NATS_CPU") |"
    echo "| CPU of the load generator, ms | $(per_command_ms "$LOAD_CPU") |"
    echo "| CPU of the whole machine, ms | $(per_command_ms "$MACHINE_CPU") |"
    echo "| Postgres transactions in Herald's database | $(per_command $((X1 - X0))) |"
    echo "| statements sent to Postgres (round trips) | $STATEMENTS_PER_COMMAND |"
    echo "| WAL flushes (fsync) | $(per_command $((W1 - W0))) |"
    echo
    if [ -s "$WORK/statements.txt" ]; then
        echo "### Where Postgres's time goes (pg_stat_statements, the 15 longest in total)"
        echo
        echo "| calls per $UNIT | µs of execution per $UNIT | statement |"
        echo "| ---: | ---: | --- |"
        sed -E 's/^([^|]*) \| ([^|]*) \| (.*)$/| \1 | \2 | `\3` |/' "$WORK/statements.txt"
        echo
    fi
    echo "### What Postgres sessions of Herald's database do (average sessions at once)"
    echo
    echo "\"idle in transaction | Client:ClientRead\" is a transaction waiting for Herald to send"
    echo "its next statement; \"on CPU\" is a backend working."
    echo
    echo "| sessions | state, wait, statement |"
    echo "| ---: | --- |"
    sed -E 's/^([^|]*) \| (.*)$/| \1 | `\2` |/' "$WORK/sessions.txt"
    echo
    echo "### Where Herald's own CPU goes (perf, self time by symbol, ≥ 0.7 %)"
    echo
    echo '```'
    cat "$WORK/symbols.txt"
    echo '```'
    echo "<!-- $SECTION_NAME: end -->"
)
replace_section "$SECTION_NAME" "$SECTION"
log "profile written to BENCHMARKS.md; raw results in $WORK"
