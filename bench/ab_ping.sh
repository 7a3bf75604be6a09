#!/usr/bin/env bash
# Quick A/B for GET /ping: bare h2o, then aicode from TREE (default: this checkout), ROUNDS
# times, and the ratio of their requests/s with each server's CPU per request. Shorter and
# noisier than bench/run.sh (no quiet-machine wait, no report); it is what the diagnostics in
# BENCHMARKS.md "Why /ping still misses 80%" were measured with. TREE may be a copy of the
# repository with a patched lualib/ (an experiment), built with `make`.
#
#   bench/ab_ping.sh                       # this checkout, 3 rounds of 5 s
#   TREE=/tmp/exp CONNECTIONS=256 bench/ab_ping.sh
#
# Knobs: TREE ROUNDS=3 DURATION=5s WRK_THREADS=2 CONNECTIONS=64 WORKERS=$(nproc)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TREE=${TREE:-$ROOT}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5s}
WRK_THREADS=${WRK_THREADS:-2}
CONNECTIONS=${CONNECTIONS:-64}
WORKERS=${WORKERS:-$(nproc)}
BARE=$ROOT/build/bench/bare_h2o

[[ -x $BARE && -x $TREE/bin/aicode ]] || { echo "build first: make (and make -C \$TREE)" >&2; exit 1; }
command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)" >&2; exit 1; }

DATA=$(mktemp -d)
PID=
cleanup() {
    [[ -n $PID ]] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
    rm -rf "$DATA"
}
trap cleanup EXIT

free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; } # utime + stime

wait_up() { # port
    local i
    for ((i = 0; i < 100; i++)); do
        curl -fs "http://127.0.0.1:$1/ping" >/dev/null && return 0
        sleep 0.1
    done
    echo "server on port $1 did not come up" >&2
    return 1
}

# port pid -> "requests/s server-CPU-µs-per-request"
measure() {
    local port=$1 pid=$2 t0 t1 out n hz
    hz=$(getconf CLK_TCK)
    wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d1s "http://127.0.0.1:$port/ping" >/dev/null # warm-up
    t0=$(cpu_ticks "$pid")
    out=$(wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"$DURATION" "http://127.0.0.1:$port/ping")
    t1=$(cpu_ticks "$pid")
    n=$(awk '/requests in/ {print $1}' <<<"$out")
    awk -v rps="$(awk '/Requests\/sec/ {print $2}' <<<"$out")" -v ticks=$((t1 - t0)) -v n="$n" -v hz="$hz" \
        'BEGIN {printf "%d %.1f\n", rps, ticks / hz * 1e6 / n}'
}

for ((round = 1; round <= ROUNDS; round++)); do
    port=$(free_port)
    "$BARE" "$port" "$WORKERS" 2>/dev/null &
    PID=$!
    wait_up "$port"
    read -r bare_rps bare_us < <(measure "$port" "$PID")
    kill "$PID"; wait "$PID" 2>/dev/null || true; PID=

    port=$(free_port)
    rm -rf "${DATA:?}"/*
    env -u AICODE_DEV HOST=127.0.0.1 PORT="$port" WORKERS="$WORKERS" AICODE_DATA_DIR="$DATA" \
        AICODE_ENV_FILE="$DATA/none.env" LOG_FILE="$DATA/requests.log" RATE_LIMIT_PER_MINUTE=0 \
        "$TREE/bin/aicode" serve >"$DATA/server.out" 2>&1 &
    PID=$!
    wait_up "$port"
    read -r rps us < <(measure "$port" "$PID")
    kill "$PID"; wait "$PID" 2>/dev/null || true; PID=

    awk -v r="$round" -v b="$bare_rps" -v bu="$bare_us" -v a="$rps" -v au="$us" \
        'BEGIN {printf "round %d: bare %d req/s (%.1f µs)  aicode %d req/s (%.1f µs)  ratio %.1f%%\n", r, b, bu, a, au, a * 100 / b}'
done
