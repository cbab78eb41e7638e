#!/usr/bin/env bash
# Attachments: where the bytes of a 10 MB file go when it is sent as an
# attachment in S3 mode (an s3s-fs server; counted by the client, curl, per
# request and port), and how Herald's memory behaves while it streams uploads
# of 10 MB files into a local directory. Prints a Markdown section for
# BENCHMARKS.md.
#
#   bash bench/attachments.sh            # UPLOADS=20 by default
#
# Runs the release `herald` (built here unless BENCH_HERALD names one).
# Needs Postgres and NATS as for the tests, curl, jq and s3s-fs.
set -euo pipefail
cd "$(dirname "$0")/.."

UPLOADS=${UPLOADS:-20}
SIZE=$((10 * 1024 * 1024))
if [ -z "${BENCH_HERALD:-}" ]; then
    cargo build --release -q -p api --bin herald
fi
HERALD=${BENCH_HERALD:-${CARGO_TARGET_DIR:-target}/release/herald}
WORK=$(mktemp -d)
PIDS=()
DBS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    for db in "${DBS[@]}"; do
        psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# Bytes curl sent to each port, summed over the requests of one step.
declare -A SENT
count() { # count <curl args…>: runs curl, adds what it uploaded to SENT[port]
    local out
    out=$(curl -sf -o "$WORK/answer" -w '%{remote_port} %{size_upload}' "$@")
    SENT[${out% *}]=$(( ${SENT[${out% *}]:-0} + ${out#* } ))
}
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
hwm_kb() { awk '/^VmHWM/ {print $2}' "/proc/$1/status"; }

# Starts `herald up --dev` with the extra environment given; sets PID, API, TOKEN.
start_herald() {
    local name=$1; shift
    local port db
    port=$(free_port)
    db="herald_bench_attachments_${name}_$$"
    DBS+=("$db")
    env "$@" HERALD_DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db" \
        HERALD_NATS_PREFIX="bench_attachments_${name}_$$" HERALD_LISTEN="127.0.0.1:$port" \
        HERALD_RATE_LIMIT_PER_SECOND=0 RUST_LOG=warn \
        "$HERALD" up --dev >"$WORK/$name.out" 2>"$WORK/$name.err" &
    PID=$!
    PIDS+=("$PID")
    API="http://127.0.0.1:$port/api/v1"
    for _ in $(seq 1 120); do
        grep -q 'token=' "$WORK/$name.out" 2>/dev/null && break
        sleep 0.5
    done
    TOKEN=$(grep -m1 '^  patient ' "$WORK/$name.out" | sed 's/.*token=//')
}

# Announces $WORK/file in a new chat; sets CHAT, AID, UPLOAD_URL, UPLOAD_HEADERS.
announce() {
    count -X POST "$API/chats" -H "Authorization: Bearer $TOKEN" \
        -H 'Content-Type: application/json' -d '{"kind":"group","members":[]}'
    CHAT=$(jq -r .id "$WORK/answer")
    count -X POST "$API/chats/$CHAT/attachments" -H "Authorization: Bearer $TOKEN" \
        -H 'Content-Type: application/json' \
        -d "{\"filename\":\"file.pdf\",\"content_type\":\"application/pdf\",\"size\":$SIZE,\"sha256\":\"$SHA\"}"
    AID=$(jq -r .attachment_id "$WORK/answer")
    UPLOAD_URL=$(jq -r .upload_url "$WORK/answer")
    UPLOAD_HEADERS=()
    while read -r header; do UPLOAD_HEADERS+=(-H "$header"); done \
        < <(jq -r '.upload_headers | to_entries[] | "\(.key): \(.value)"' "$WORK/answer")
}

upload() {
    count -X PUT --data-binary @"$WORK/file" "${UPLOAD_HEADERS[@]}" "$UPLOAD_URL"
}

send() {
    count -X POST "$API/chats/$CHAT/messages" -H "Authorization: Bearer $TOKEN" \
        -H 'Content-Type: application/json' -d "{\"attachments\":[\"$AID\"]}"
}

head -c "$SIZE" /dev/urandom >"$WORK/file"
SHA=$(sha256sum "$WORK/file" | cut -d' ' -f1)

# --- S3 mode: the bytes go to s3s-fs, not to Herald.
S3_PORT=$(free_port)
mkdir -p "$WORK/s3/bench"
s3s-fs --host 127.0.0.1 --port "$S3_PORT" --access-key bench --secret-key bench-secret "$WORK/s3" \
    >/dev/null 2>&1 &
PIDS+=("$!")
start_herald s3 HERALD_OBJECT_STORE_URL=s3://bench HERALD_S3_ENDPOINT="http://127.0.0.1:$S3_PORT" \
    HERALD_S3_ACCESS_KEY_ID=bench HERALD_S3_SECRET_ACCESS_KEY=bench-secret
HERALD_PORT=${API#http://127.0.0.1:}
HERALD_PORT=${HERALD_PORT%%/*}
s3_rss_before=$(rss_kb "$PID")
announce
upload
send
stored=$(stat -c %s "$WORK/s3/bench/chats/$CHAT/$AID")
to_herald=${SENT[$HERALD_PORT]:-0}
to_store=${SENT[$S3_PORT]:-0}
s3_rss_after=$(rss_kb "$PID")

# --- Local mode: Herald streams the uploads to its directory.
start_herald local HERALD_ATTACHMENTS_DIR="$WORK/local"
rss_before=$(rss_kb "$PID")
hwm_before=$(hwm_kb "$PID")
rss_max=$rss_before
series=""
started=$(date +%s.%N)
for _ in $(seq 1 "$UPLOADS"); do
    announce
    upload
    send
    rss=$(rss_kb "$PID")
    series="$series $(( rss / 1024 ))"
    [ "$rss" -gt "$rss_max" ] && rss_max=$rss
done
elapsed=$(echo "$(date +%s.%N) - $started" | bc)
rss_after=$(rss_kb "$PID")
hwm_after=$(hwm_kb "$PID")
mb() { echo "scale=1; $1 / 1024" | bc; }

cat <<EOF
## Attachments

Measured by \`bash bench/attachments.sh\` (UPLOADS=$UPLOADS) on $(date -u +%F) at commit
\`$(git rev-parse --short HEAD)\`, with a release build of \`herald up --dev\`, on a 2-core
machine shared with other work. One file of $SIZE bytes (10 MiB) of random data.

### S3 mode: a 10 MB upload does not pass through Herald

The client's requests of one attachment (open a chat, announce the file, \`PUT\` it to
the presigned URL, send a message carrying it), and the bytes it sent to each
server, as curl counts them (\`%{size_upload}\` by \`%{remote_port}\`):

| to | bytes the client sent |
| --- | ---: |
| Herald (port $HERALD_PORT): three JSON requests | $to_herald |
| s3s-fs (port $S3_PORT): the \`PUT\` of the file (stored there: $stored bytes) | $to_store |

Herald's RSS: $(mb "$s3_rss_before") MB before, $(mb "$s3_rss_after") MB after. When the message is
sent, Herald reads the object back from the store once, streaming, to check its
size and SHA-256 before the chat accepts it.

### Local mode: memory during uploads

$UPLOADS uploads of 10 MiB each ($((UPLOADS * 10)) MiB in all) through Herald's own signed URL,
each followed by a message carrying it (Herald reads the file once more to check it),
one after the other, in $(printf '%.1f' "$elapsed") s:

| Herald's memory | MB |
| --- | ---: |
| RSS before the uploads | $(mb "$rss_before") |
| highest RSS seen after each upload | $(mb "$rss_max") |
| RSS after the uploads | $(mb "$rss_after") |
| peak RSS (VmHWM) before → after | $(mb "$hwm_before") → $(mb "$hwm_after") |

RSS in MB after each upload:$series
EOF
