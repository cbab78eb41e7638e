#!/usr/bin/env bash
# Writes bench/run.sh's results (the files in $WORK) as its section of
# BENCHMARKS.md, replacing only that section, so the other sections of the
# file stay as they are. Run again on a results directory to rewrite it:
#   WORK=/tmp/herald-bench.XXXXXX bash bench/report.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
# The settings and wall-clock timings run.sh measured.
source "$WORK/timings.env"

j() { jq -r "$2" "$WORK/$1"; }
num() { awk -v x="$1" "BEGIN { printf \"%.${2:-0}f\", x }"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'; }
# verdict VALUE TARGET higher|lower UNIT: "met" or how far off.
verdict() {
    awk -v v="$1" -v t="$2" -v dir="$3" -v unit="$4" 'BEGIN {
        ok = (dir == "higher") ? v >= t : v <= t
        if (ok) { print "met"; exit }
        if (dir == "higher") printf "missed: %.0f %% below (%.3g%s short)\n", (t - v) / t * 100, t - v, unit
        else printf "missed: %.0f %% over (%.3g%s over)\n", (v - t) / t * 100, v - t, unit
    }'
}

HERALD=$(j herald.json .throughput); PLAIN=$(j plain.json .throughput)
VS_PLAIN=$(ratio "$HERALD" "$PLAIN"); VS_PG=$(ratio "$HERALD" "$PGBENCH_TPS")
VS_PG_PCT=$(awk -v r="$VS_PG" 'BEGIN { printf "%.0f", r * 100 }')
RSS=$(j herald.json '.rss.hwm_mb'); PLAIN_RSS=$(j plain.json '.rss.hwm_mb')
EVENTS=$(j herald_bench_replay-seed.json .events)
REPLAY_RATE=$(awk -v n="$EVENTS" -v s="$REPLAY_S" 'BEGIN { printf "%.0f", n / s }')
VERIFY_RATE=$(awk -v n="$EVENTS" -v s="$VERIFY_S" 'BEGIN { printf "%.0f", n / s }')
RELAY_RATE=$(awk -v n="$EVENTS" -v s="$(j herald_bench_replay-relay.json .seconds)" 'BEGIN { printf "%.0f", n / s }')
LAG_WORST_P99=$(j lag.json '[.lag[].p99_ms] | max')
READ_WORST_P99=$(j reads.json '[.chat_messages.p99_ms, .bookings.p99_ms] | max')
HOT_MESSAGES=$(j hot-chat-seed.json .messages)

# The workloads measured one by one: the results file, then how the row reads.
WORKLOADS=(
    "herald.json|mixed (as above)"
    "herald-bookings.json|new bookings, a new aggregate each"
    "herald-messages.json|chat messages spread over 100 chats"
    "herald-hot-chat.json|chat messages into one chat of $(num "$HOT_MESSAGES") messages"
)

# against FILE PLAIN_FILE: Herald's ratio to a plain line and its verdict
# against 3×, or "—" where the workload is not compared with that line (the
# mix only with the plain mix).
against() {
    if [ "$1" = herald.json ] && [ "$2" != plain.json ]; then echo "—"; return; fi
    local r; r=$(ratio "$(j "$1" .throughput)" "$(j "$2" .throughput)")
    echo "${r}× $(verdict "$r" 3 higher ×)"
}

# p99_against FILE PLAIN_FILE: Herald's p99 against a plain line's, likewise.
p99_against() {
    if [ "$1" = herald.json ] && [ "$2" != plain.json ]; then echo "—"; return; fi
    verdict "$(j "$1" .latency.p99_ms)" "$(j "$2" .latency.p99_ms)" lower ' ms'
}

workload_rows() {
    local row file what
    for row in "${WORKLOADS[@]}"; do
        file=${row%%|*}; what=${row#*|}
        local open mix pg=""
        open=$(against "$file" plain-open.json | cut -d' ' -f1)
        mix=$(against "$file" plain.json | cut -d' ' -f1)
        [ "$file" = herald-bookings.json ] && pg="$(awk -v r="$(ratio "$(j "$file" .throughput)" "$PGBENCH_TPS")" 'BEGIN { printf "%.0f %%", r * 100 }')"
        echo "| **Herald**, $what | **$(num "$(j "$file" .throughput)")** | $open | $mix | $pg | $(j "$file" .latency.p50_ms) | $(j "$file" .latency.p99_ms) | $(num "$(j "$file" .pipeline.catch_up_s)" 2) | $(num "$(j "$file" .rss.hwm_mb)" 1) |"
    done
}

target_rows() {
    local row file what pg=""
    for row in "${WORKLOADS[@]}"; do
        file=${row%%|*}; what=${row#*|}
        pg=""
        if [ "$file" = herald-bookings.json ]; then
            local pct; pct=$(awk -v r="$(ratio "$(j "$file" .throughput)" "$PGBENCH_TPS")" 'BEGIN { printf "%.0f", r * 100 }')
            pg="$pct % $(verdict "$pct" 35 higher ' points')"
        fi
        local caught; caught=$(j "$file" .pipeline.catch_up_s)
        echo "| $what | $(against "$file" plain-open.json) | $(against "$file" plain.json) | $pg | $(p99_against "$file" plain-open.json) | $(p99_against "$file" plain.json) | $(num "$caught" 2) s $(verdict "$caught" 1 lower ' s') |"
    done
}

# The reads measured as fast as they are answered: the endpoint, then its file
# stem (read-STEM.json whole, poll-STEM.json polled).
READS=(
    "GET /api/v1/bookings/{id}|booking"
    "GET /api/v1/chats/{id}/messages?limit=50|messages"
    "GET /api/v1/bookings?limit=50|bookings"
)
PLAIN_READS=$(j read-plain.json .throughput)

read_rows() {
    local row what stem full polled
    for row in "${READS[@]}"; do
        what=${row%%|*}; stem=${row#*|}
        full=$(j "read-$stem.json" .throughput); polled=$(j "poll-$stem.json" .throughput)
        echo "| **Herald** \`$what\`, read whole | **$(num "$full")** | $(ratio "$full" "$PLAIN_READS")× | $(j "read-$stem.json" .latency.p50_ms) | $(j "read-$stem.json" .latency.p99_ms) | \`$(jq -c .statuses "$WORK/read-$stem.json")\` |"
        echo "| **Herald** \`$what\`, polled with \`If-None-Match\` | **$(num "$polled")** | $(ratio "$polled" "$PLAIN_READS")× | $(j "poll-$stem.json" .latency.p50_ms) | $(j "poll-$stem.json" .latency.p99_ms) | \`$(jq -c .statuses "$WORK/poll-$stem.json")\` |"
    done
}

read_target_rows() {
    local row what stem full polled p99
    for row in "${READS[@]}"; do
        what=${row%%|*}; stem=${row#*|}
        full=$(j "read-$stem.json" .throughput); polled=$(j "poll-$stem.json" .throughput)
        p99=$(j "read-$stem.json" .latency.p99_ms)
        echo "| \`$what\` | $(ratio "$full" "$PLAIN_READS")× $(verdict "$(ratio "$full" "$PLAIN_READS")" 1 higher ×) | $p99 ms $(verdict "$p99" 10 lower ' ms') | $(ratio "$polled" "$full")× $(verdict "$(ratio "$polled" "$full")" 2 higher ×) |"
    done
}

lag_rows() {
    jq -r --slurpfile f "$WORK/lag.json" -n '
        $f[0].lag | to_entries[] |
        "| \(.key) | \(.value.p50_ms) | \(.value.p99_ms) | \(.value.max_ms) | \(.value.count) | \($f[0].lag_failures[.key] // 0) |"' 
}

SECTION=$(cat <<MD
<!-- bench/run.sh: begin -->
## Commands, lag, reads, replay

Measured by \`bash bench/run.sh\` (BENCH_DURATION_S=$DURATION, $CONCURRENCY clients) on
$(date -u +%Y-%m-%d) at commit \`$(git rev-parse --short HEAD)\`$(git diff --quiet HEAD -- . ':!BENCHMARKS.md' 2>/dev/null || echo ' (with uncommitted changes)').
Machine: $(nproc) cores ($(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)),
$(free -g | awk '/^Mem:/ { print $2 }') GiB memory, shared with other work while it ran
(load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)), so the ratios, measured
side by side in one run, say more than the absolute numbers.
Postgres 15 and a private NATS 2.9 JetStream server on loopback; every database fresh.

### Commands at $CONCURRENCY concurrent clients

| line | commands/s | p50 ms | p99 ms | peak RSS MB |
| --- | ---: | ---: | ---: | ---: |
| pgbench \`-M prepared -c $CONCURRENCY -j 2\`, one-row insert transactions into Herald's \`events\` table | $(num "$PGBENCH_TPS") | $PGBENCH_LAT (mean) | | |
| plain cqrs-es + postgres-es app (bench/src/plain.rs), one command per POST | $(num "$PLAIN") | $(j plain.json .latency.p50_ms) | $(j plain.json .latency.p99_ms) | $(num "$PLAIN_RSS" 1) |
| **Herald** \`herald up\` (API, relay, projections, process manager), mixed workload | **$(num "$HERALD")** | $(j herald.json .latency.p50_ms) | $(j herald.json .latency.p99_ms) | $(num "$RSS" 1) |

Herald / plain cqrs-es: **${VS_PLAIN}×**. Herald / pgbench: **${VS_PG_PCT} %**.
Herald's mix: about 70 % chat messages, 4 % read receipts, 3 % edits, then bookings
(requested, assigned, completed, cancelled) and payments (the sandbox provider is
called in the request), plus provider confirmations on the side
($(j herald.json .side_ok) of them, not counted). Answers by status: \`$(jq -c .statuses "$WORK/herald.json")\`.
The pipeline during the run: the slowest projection was at most $(j herald.json .pipeline.max_positions_behind)
positions behind the relay (mean $(num "$(j herald.json .pipeline.mean_positions_behind)" 1)), and
$(num "$(j herald.json .pipeline.catch_up_s)" 2) s after the load every event was numbered, published and applied
by every projection (0 s would mean it kept up exactly).
RSS is the kernel's high-water mark (VmHWM) of the process over setup and run.

### Each command workload at $CONCURRENCY concurrent clients

Every line ran on a fresh database for ${DURATION} s. The plain app's two lines: its mix
(as above) and \`open\`, where every command opens a new account (a new aggregate, like a
new booking). Herald's mix is set against the plain mix only; new bookings and both kinds
of chat message are set against both plain lines, \`open\` and the mix. "Caught up" is the
time from the load's last answer until every event it stored was numbered, published and
applied by every projection. Peak RSS is Herald's VmHWM since it started.

| workload | commands/s | × plain \`open\` | × plain mix | % of pgbench | p50 ms | p99 ms | caught up, s | peak RSS MB |
| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |
| plain cqrs-es, \`open\`: a new account each | $(num "$(j plain-open.json .throughput)") | | | | $(j plain-open.json .latency.p50_ms) | $(j plain-open.json .latency.p99_ms) | | $(num "$(j plain-open.json .rss.hwm_mb)" 1) |
| plain cqrs-es, mix | $(num "$PLAIN") | | | | $(j plain.json .latency.p50_ms) | $(j plain.json .latency.p99_ms) | | $(num "$PLAIN_RSS" 1) |
$(workload_rows)

Messages spread over 100 chats: 100 group chats of a patient and a doctor, opened before the
clock starts; each message goes to the next chat in turn, as one of its two members. Messages
into one chat: all $CONCURRENCY clients post into one group chat of $(j hot-chat-seed.json '.members | length') members that
already held $(num "$HOT_MESSAGES") messages, written straight into the log by \`herald-load seed-chat\`
($(num "$(j hot-chat-seed.json .seconds)" 1) s, with the snapshot Herald keeps of a chat) before Herald started; Herald's
pipeline numbered, published and applied them in $(num "$(j hot-chat-warm.json .seconds)" 1) s before the clock started.
Answers by status: bookings \`$(jq -c .statuses "$WORK/herald-bookings.json")\`, 100 chats
\`$(jq -c .statuses "$WORK/herald-messages.json")\`, one chat \`$(jq -c .statuses "$WORK/herald-hot-chat.json")\`.

Against the targets for each workload (the plain lines as in the table above):

| workload | ≥ 3× plain \`open\` | ≥ 3× plain mix | ≥ 35 % of pgbench | p99 ≤ plain \`open\`'s | p99 ≤ plain mix's | all applied ≤ 1 s after the load |
| --- | --- | --- | --- | --- | --- | --- |
$(target_rows)

### End-to-end lag at half load ($(j lag.json '.target_rate') commands/s aimed, $(num "$(j lag.json .throughput)") achieved)

From a command's answer until the read model holds its effect: one watcher in
\`herald-load\` looks up each answered command's log position and polls the projections'
checkpoints (committed in the same transaction as their rows) every 2 ms.

| read model | p50 ms | p99 ms | max ms | commands | not seen in 30 s |
| --- | ---: | ---: | ---: | ---: | ---: |
$(lag_rows)

### Reads at $READ_RATE requests/s (on an otherwise idle Herald)

| endpoint | p50 ms | p99 ms | max ms | reads |
| --- | ---: | ---: | ---: | ---: |
| GET /api/v1/chats/{id}/messages?limit=50 | $(j reads.json .chat_messages.p50_ms) | $(j reads.json .chat_messages.p99_ms) | $(j reads.json .chat_messages.max_ms) | $(j reads.json .chat_messages.count) |
| GET /api/v1/bookings?limit=50 | $(j reads.json .bookings.p50_ms) | $(j reads.json .bookings.p99_ms) | $(j reads.json .bookings.max_ms) | $(j reads.json .bookings.count) |

### Reads at $CONCURRENCY concurrent clients, as fast as they are answered

Each line ran for $READ_DURATION s, one endpoint from $CONCURRENCY closed-loop clients (as \`wrk\` does), on the
Herald of the mixed run above (its data in place, its pipeline idle) and then on the plain
app with a fresh database. Herald's reads are a patient's own: a booking, a chat of 200
messages, a list of 60 bookings; each checks the token and the patient's right to see it.
Polled: every read sends the \`ETag\` of the first answer as \`If-None-Match\`.

| line | reads/s | × plain | p50 ms | p99 ms | answers |
| --- | ---: | ---: | ---: | ---: | --- |
| plain cqrs-es \`GET /account/{id}\` (no auth) | $(num "$PLAIN_READS") | | $(j read-plain.json .latency.p50_ms) | $(j read-plain.json .latency.p99_ms) | \`$(jq -c .statuses "$WORK/read-plain.json")\` |
$(read_rows)

| read | ≥ the plain app's rate | p99 ≤ 10 ms | polled ≥ 2× read whole |
| --- | --- | --- | --- |
$(read_target_rows)

### Signing in

On the same Herald: one patient signing in (\`POST /api/v1/auth/login\`, an argon2id check of
19 MiB and two passes each time) from $CONCURRENCY closed-loop clients for $READ_DURATION s; then new
bookings at $SIGN_IN_BOOKINGS_RATE/s for $READ_DURATION s, alone and while those sign-ins ran beside them.

| line | per second | p50 ms | p99 ms | answers |
| --- | ---: | ---: | ---: | --- |
| sign-ins, as fast as answered | $(num "$(j sign-in.json .throughput)" 1) | $(j sign-in.json .latency.p50_ms) | $(j sign-in.json .latency.p99_ms) | \`$(jq -c .statuses "$WORK/sign-in.json")\` |
| new bookings at $SIGN_IN_BOOKINGS_RATE/s, alone | $(num "$(j bookings-alone.json .throughput)") | $(j bookings-alone.json .latency.p50_ms) | $(j bookings-alone.json .latency.p99_ms) | \`$(jq -c .statuses "$WORK/bookings-alone.json")\` |
| new bookings at $SIGN_IN_BOOKINGS_RATE/s, beside sign-ins at full speed | $(num "$(j bookings-beside-sign-ins.json .throughput)") | $(j bookings-beside-sign-ins.json .latency.p50_ms) | $(j bookings-beside-sign-ins.json .latency.p99_ms) | \`$(jq -c .statuses "$WORK/bookings-beside-sign-ins.json")\` |
| … the sign-ins beside them | $(num "$(j sign-in-beside.json .throughput)" 1) | $(j sign-in-beside.json .latency.p50_ms) | $(j sign-in-beside.json .latency.p99_ms) | \`$(jq -c .statuses "$WORK/sign-in-beside.json")\` |

### Replay and audit over $EVENTS events

The log (90 % chat traffic in chats of 100 events, 10 % bookings of 3) was written by
\`herald-load seed\` with \`INSERT … SELECT generate_series\` in $(num "$(j herald_bench_replay-seed.json .seconds)" 1) s, then numbered,
hashed and published by \`herald relay\` at $RELAY_RATE events/s. No projection worker ran, so
before \`herald replay\` (which rebuilds up to each live checkpoint) the checkpoints were set to
the head, as if the live read models had gone stale there; replay then rebuilt all four from
position 1 and swapped them in.

| what | seconds | events/s |
| --- | ---: | ---: |
| \`herald replay\` of all four read models, side by side | $(num "$REPLAY_S" 1) | $REPLAY_RATE |
$(sed -n 's/^\([a-z]*\): \([0-9]*\) entries in \([0-9.]*\)s (\([0-9]*\) events\/s).*/| \&nbsp; \1 alone | \3 | \4 |/p' "$WORK/replay.txt")
| \`herald audit verify\` (both hash chains) | $(num "$VERIFY_S" 1) | $VERIFY_RATE |

### Against the targets

| target | measured | |
| --- | --- | --- |
| mixed commands ≥ 3× plain cqrs-es (each workload against its own targets above) | ${VS_PLAIN}× | $(verdict "$VS_PLAIN" 3 higher ×) |
| e2e lag p99 ≤ 20 ms at half load (worst read model) | $LAG_WORST_P99 ms | $(verdict "$LAG_WORST_P99" 20 lower ' ms') |
| replay ≥ 100 000 events/s | $REPLAY_RATE | $(verdict "$REPLAY_RATE" 100000 higher ' events/s') |
| audit verify ≥ 200 000 events/s | $VERIFY_RATE | $(verdict "$VERIFY_RATE" 200000 higher ' events/s') |
| read p99 ≤ 10 ms | $READ_WORST_P99 ms | $(verdict "$READ_WORST_P99" 10 lower ' ms') |
| Herald RSS ≤ 150 MB under load | $(num "$RSS" 1) MB | $(verdict "$RSS" 150 lower ' MB') |
<!-- bench/run.sh: end -->
MD
)

replace_section "bench/run.sh" "$SECTION"
