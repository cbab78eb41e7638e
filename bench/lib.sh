# Helpers shared by bench/run.sh and bench/faults.sh. Every process they start
# is remembered by its pid and ended by that pid, never by name.

PG_SERVER=${BENCH_PG_SERVER:-postgres://postgres@127.0.0.1:5432}
PSQL=(psql -h 127.0.0.1 -U postgres -v ON_ERROR_STOP=1 -qAt)
# Where cargo builds: its own target directory when CARGO_TARGET_DIR says so.
BIN=${CARGO_TARGET_DIR:-target}/release
STARTED=()

log() { printf '%s  %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# start NAME CMD...: runs CMD in its own session, logging to $WORK/NAME.log;
# sets STARTED_PID.
start() {
    local name=$1; shift
    setsid "$@" >>"$WORK/$name.log" 2>&1 &
    STARTED_PID=$!
    STARTED+=("$STARTED_PID")
}

# stop PID [SIGNAL]: ends one process we started and waits for it.
stop() {
    kill "-${2:-TERM}" "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

cleanup() {
    for pid in "${STARTED[@]}"; do
        kill -KILL "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
}

# fresh_secrets: exports new random secrets for the Herald of a run, which
# herald-load mints its tokens with too.
fresh_secrets() {
    HERALD_JWT_SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
    HERALD_WEBHOOK_SECRET=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
    export HERALD_JWT_SECRET HERALD_WEBHOOK_SECRET
}

# wait_for_port PORT: until something accepts connections on 127.0.0.1:PORT.
wait_for_port() {
    for _ in $(seq 1 300); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    log "nothing listens on port $1"; return 1
}

# fresh_db NAME: drops the database if it exists; Herald creates it again.
fresh_db() {
    "${PSQL[@]}" -d postgres -c "DROP DATABASE IF EXISTS $1 WITH (FORCE)"
}

# start_nats PORT DIR: a private JetStream server with its own store.
start_nats() {
    start "nats-$1" /usr/sbin/nats-server -js -a 127.0.0.1 -p "$1" -sd "$2"
    NATS_PID=$STARTED_PID
    wait_for_port "$1"
}

# replace_section NAME TEXT: puts TEXT (which starts with `<!-- NAME: begin -->`
# and ends with `<!-- NAME: end -->`) into BENCHMARKS.md in place of the
# section of that name, or appends it; every other section is kept.
replace_section() {
    local file=BENCHMARKS.md
    [ -f "$file" ] || printf '# Benchmarks\n' >"$file"
    SECTION_NAME="$1" SECTION="$2" python3 - "$file" <<'PY'
import os, re, sys
path = sys.argv[1]
text = open(path, encoding="utf-8").read()
name = re.escape(os.environ["SECTION_NAME"])
section = os.environ["SECTION"].strip() + "\n"
pattern = re.compile(r"<!-- " + name + r": begin -->.*?<!-- " + name + r": end -->\n?", re.S)
if pattern.search(text):
    text = pattern.sub(lambda _: section, text, count=1)
else:
    text = text.rstrip("\n") + "\n\n" + section
open(path, "w", encoding="utf-8").write(text)
PY
    log "wrote the $1 section of $file"
}

# seed_log DATABASE EVENTS: a fresh database holding a log of EVENTS events
# (90 % chat traffic, 10 % bookings, written by `herald-load seed`), numbered,
# hashed and published by `herald relay` on a stream of its own. No
# projection ran, so the live read models' checkpoints are set to the head,
# as if they had gone stale there: `herald replay` (which rebuilds up to the
# live checkpoint) then rebuilds them from the whole log. Leaves
# HERALD_DATABASE_URL pointing at it; the relay's rate goes to
# $WORK/DATABASE-relay.json.
seed_log() {
    fresh_db "$1"
    export HERALD_DATABASE_URL="$PG_SERVER/$1" HERALD_NATS_PREFIX="$1$(date +%s)"
    "$BIN/herald" migrate >/dev/null
    "$BIN/herald-load" seed --events "$2" >"$WORK/$1-seed.json"
    start "relay-$1" "$BIN/herald" relay
    local relay=$STARTED_PID
    "$BIN/herald-load" catch-up --sequenced-only --timeout-s 3600 >"$WORK/$1-relay.json"
    stop "$relay"
    "${PSQL[@]}" -d "$1" -c "
        INSERT INTO projection_checkpoints (projection, position)
        SELECT p, (SELECT sequenced_position FROM relay_cursor)
          FROM unnest(ARRAY['chats', 'bookings', 'payments', 'summary']) AS p
        ON CONFLICT (projection) DO UPDATE SET position = EXCLUDED.position"
    "${PSQL[@]}" -d "$1" -c "VACUUM ANALYZE"
}
