#!/usr/bin/env bash
# Property-based fuzzing of Herald's HTTP API from its own OpenAPI document.
#
# Starts `herald up --dev` on a free port against a fresh database and a fresh
# NATS prefix, then runs schemathesis (installed from PyPI into a venv under
# target/) with every check, once per role, with a bounded number of examples
# per operation and a bounded time. Fails on any 5xx and on any answer that
# breaks the document.
#
# Needs what `cargo test` needs: Postgres on 127.0.0.1:5432 (trust auth) and
# NATS with JetStream on 127.0.0.1:4222; and python3 with venv.
#
# Knobs: FUZZ_EXAMPLES (per operation, default 50), FUZZ_MAX_TIME (seconds per
# role, default 300), FUZZ_ROLES (default "patient doctor admin"), FUZZ_SEED.
#
# Writes a summary per role to BENCHMARKS.md ("Fuzzing the API").
set -euo pipefail

cd "$(dirname "$0")/.."
source bench/lib.sh
examples=${FUZZ_EXAMPLES:-50}
max_time=${FUZZ_MAX_TIME:-300}
roles=${FUZZ_ROLES:-patient doctor admin}
venv="$PWD/target/fuzz-venv"
run="fuzz_$(date +%s)_$$"
out="$PWD/target/fuzz/$run"
mkdir -p "$out"

if [[ ! -x $venv/bin/schemathesis ]]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --upgrade pip
    "$venv/bin/pip" install --quiet "schemathesis>=4.3,<5"
fi
"$venv/bin/schemathesis" --version

commit=$(git rev-parse --short HEAD)
cargo build --quiet -p api --bin herald

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
database_url="postgres://postgres@127.0.0.1:5432/herald_$run"
export HERALD_DATABASE_URL=$database_url
export HERALD_NATS_PREFIX=$run
export HERALD_LISTEN="127.0.0.1:$port"
export HERALD_PUBLIC_URL="http://127.0.0.1:$port"
# Limits stay on, so their headers are checked, but high enough that the run
# tests the API rather than the limiter.
export HERALD_RATE_LIMIT_PER_SECOND=100000
export HERALD_RATE_LIMIT_BURST=100000
export HERALD_WEBHOOK_RATE_LIMIT_PER_SECOND=100000
export HERALD_OPS_RATE_LIMIT_PER_SECOND=100000
export HERALD_LOG_FORMAT=json

target/debug/herald up --dev >"$out/herald.out" 2>"$out/herald.log" &
herald=$!
cleanup() {
    kill "$herald" 2>/dev/null || true
    wait "$herald" 2>/dev/null || true
    psql -q -h 127.0.0.1 -U postgres -d postgres \
        -c "DROP DATABASE IF EXISTS \"herald_$run\" WITH (FORCE)" >/dev/null 2>&1 || true
}
trap cleanup EXIT

for _ in $(seq 1 120); do
    if curl -fsS "http://127.0.0.1:$port/health/live" >/dev/null 2>&1; then
        break
    fi
    if ! kill -0 "$herald" 2>/dev/null; then
        echo "herald exited; see $out/herald.log" >&2
        exit 1
    fi
    sleep 0.5
done

token_of() {
    sed -n "s/^ *$1 .*token=\([^ ]*\).*/\1/p" "$out/herald.out" | head -n 1
}

# A request the schema allows may still be refused by a rule of the contract
# that JSON Schema cannot state: 422 for a blank message or a `scheduled` visit
# without a future `scheduled_at`; 400 for a consistency token Herald did not
# make, or an integer written with a fraction (`150000.0`), which JSON Schema
# counts as an integer and Herald, by contract, does not.
cat >"$out/schemathesis.toml" <<'TOML'
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "3xx", "400", "401", "403", "404", "409", "422", "429"]
TOML

status=0
rows=""
for role in $roles; do
    token=$(token_of "$role")
    if [[ -z $token ]]; then
        echo "no $role token in herald's output ($out/herald.out)" >&2
        exit 1
    fi
    echo "== fuzzing as $role =="
    # The WebSocket and the event stream are left out: they hold the
    # connection open rather than answer one response to check.
    # Run from the report directory: schemathesis keeps its cache in the
    # working directory.
    (cd "$out" && "$venv/bin/schemathesis" --config-file "$out/schemathesis.toml" \
        run "http://127.0.0.1:$port/openapi.json" \
        --header "Authorization: Bearer $token" \
        --checks all \
        --exclude-path-regex '^/api/v1/(ws|stream)$' \
        --max-examples "$examples" \
        --max-time "$max_time" \
        --request-timeout 10 \
        ${FUZZ_SEED:+--seed "$FUZZ_SEED"} \
        --report junit --report-dir "$out/$role") \
        | tee "$out/$role.out" || status=$?
    # "14441 generated, 14441 passed, 30 skipped", as schemathesis sums up.
    cases=$(grep -A1 '^Test cases:' "$out/$role.out" | tail -n 1 | sed 's/^ *//')
    operations=$(grep -o 'tests="[0-9]*"' "$out/$role"/junit-*.xml | head -n 1 | tr -dc 0-9)
    rows+="| $role | $operations | ${cases:-none} |"$'\n'
done

errors=$(grep -c '"level":"ERROR"' "$out/herald.log" || true)
if [[ $errors != 0 ]]; then
    echo "herald logged errors during the run; see $out/herald.log" >&2
    grep '"level":"ERROR"' "$out/herald.log" | head -n 20 >&2
    status=1
fi
verdict=$([[ $status == 0 ]] && echo passed || echo FAILED)
replace_section "api/fuzz.sh" "<!-- api/fuzz.sh: begin -->
## Fuzzing the API

\`bash api/fuzz.sh\` on $(date -u +%Y-%m-%d) at commit \`$commit\`, $(nproc) cores:
schemathesis $("$venv/bin/schemathesis" --version | tr -dc '0-9.'), every check, up to $examples examples per
operation and $max_time s per role, against \`herald up --dev\` with its own database and
stream. **$verdict.**

| role | operations | test cases |
| --- | ---: | --- |
${rows}
Errors Herald logged during the run: $errors.
<!-- api/fuzz.sh: end -->"
exit "$status"
