#!/usr/bin/env bash
# Benchmark for issue #2 (results go to BENCHMARKS.md by hand; raw output under
# bench/results/<timestamp>/, which is gitignored).
#
# In one run, for each round:
#   a. bare h2o C handler (bench/bare_h2o.c)  GET /ping
#   a2. (diagnostic, BARE_CHUNKED_ROW=1) the same bare handler without content-length (chunked)
#   b. aicode GET /ping
#   c. aicode authorized GET /api/projects with $PROJECTS projects (created through the API)
#   d. aicode VmRSS right after start (idle) and after the load
# All servers listen on 127.0.0.1 with WORKERS threads (default: number of cores),
# wrk runs keep-alive on the same machine. Every server started here is stopped
# on exit (trap), every step is bounded in time.
#
# Knobs (environment): ROUNDS=2 DURATION=10s WARMUP=2s WRK_THREADS=2 CONNECTIONS=64
#   WORKERS=$(nproc) PROJECTS=50 IDLE_SETTLE=2 BARE_CHUNKED_ROW=0
#   QUIET_WAIT=120 QUIET_MAX_CORES=0.15  before each measurement, wait until the rest
#                 of the machine is idle (other engineers share it); the report shows
#                 how much CPU other processes used during each run anyway;
#                 RETRY_NOISY=2: repeat a run (up to this many times) when they were busy.
#   BENCH_PERF=1  after the rounds, profile aicode with `perf record` (PERF_SECONDS=5,
#                 DWARF call graphs) under the same load (/ping and /api/projects) and
#                 write self/inclusive reports to the results (BENCH_PERF_KEEP=1 keeps perf.data).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
WRK_THREADS=${WRK_THREADS:-2}
CONNECTIONS=${CONNECTIONS:-64}
WORKERS=${WORKERS:-$(nproc)}
PROJECTS=${PROJECTS:-50}
IDLE_SETTLE=${IDLE_SETTLE:-2}
BARE_CHUNKED_ROW=${BARE_CHUNKED_ROW:-0}
BENCH_PERF=${BENCH_PERF:-0}
PERF_SECONDS=${PERF_SECONDS:-5}
QUIET_WAIT=${QUIET_WAIT:-120}
RETRY_NOISY=${RETRY_NOISY:-2}
QUIET_MAX_CORES=${QUIET_MAX_CORES:-0.15}

log() { printf '[bench] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------- processes
PIDS=()
stop_pid() { # pid: SIGTERM, wait up to 10 s, then SIGKILL
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "pid $pid did not stop after SIGTERM, sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    PIDS=()
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

forget_pid() { # remove from PIDS after a clean stop
    local p keep=()
    for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

free_port() {
    local p i
    for ((i = 0; i < 50; i++)); do
        p=$((20000 + RANDOM % 20000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return 0
        fi
    done
    die "no free port found"
}

wait_port() { # port pid: wait (max 10 s) until the port accepts connections
    local port=$1 pid=$2 i
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || die "server pid $pid exited during startup"
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    die "server pid $pid did not listen on 127.0.0.1:$port within 10 s"
}

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
hwm_kb() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }
mb() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }

# ---------------------------------------------------------------- setup
if ! command -v wrk >/dev/null 2>&1; then
    log "installing wrk (apt)"
    SUDO=""
    [[ $(id -u) -eq 0 ]] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq wrk >/dev/null
fi
command -v curl >/dev/null 2>&1 || die "curl is required"

log "building bin/aicode (make all)"
make -s all >&2

# The bare server, with the Makefile's compiler flags and pkg-config packages.
PKGS=(libh2o-evloop lua5.4 libjwt libcurl sqlite3 jansson libssl libcrypto)
BARE=build/bench/bare_h2o
mkdir -p build/bench
if [[ ! -x $BARE || bench/bare_h2o.c -nt $BARE ]]; then
    log "building $BARE"
    # shellcheck disable=SC2046
    ${CC:-gcc} -O2 -g -std=gnu11 -Wall -Wextra -Wshadow -Wno-unused-parameter -DH2O_USE_LIBUV=0 \
        $(pkg-config --cflags "${PKGS[@]}") -o "$BARE" bench/bare_h2o.c \
        -Wl,--as-needed $(pkg-config --libs "${PKGS[@]}") -lpthread -lm
fi

RUN_ID=$(date +%Y%m%d-%H%M%S)
OUT="bench/results/$RUN_ID"
mkdir -p "$OUT"
log "raw results in $OUT"

{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "nproc: $(nproc)"
    echo "cpu: $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
    echo "kernel: $(uname -r)"
    # shellcheck disable=SC1091
    echo "os: $(. /etc/os-release && echo "$PRETTY_NAME")"
    echo "wrk: $(wrk -v 2>&1 | head -1)"
    echo "h2o: $(dpkg-query -W -f='${Version}' libh2o-evloop0.13 2>/dev/null || echo '?')"
    echo "settings: ROUNDS=$ROUNDS DURATION=$DURATION WARMUP=$WARMUP WRK_THREADS=$WRK_THREADS" \
        "CONNECTIONS=$CONNECTIONS WORKERS=$WORKERS PROJECTS=$PROJECTS IDLE_SETTLE=$IDLE_SETTLE"
} >"$OUT/machine.txt"

# Other engineers edit and rebuild this tree while we run: benchmark a private
# snapshot of the binary and of the Lua/SQL files it loads, taken right after the build.
SNAP="$OUT/snapshot"
mkdir -p "$SNAP"
cp bin/aicode "$SNAP/aicode"
cp -r scripts lualib db "$SNAP/"
AICODE_BIN="$SNAP/aicode"
echo "aicode binary sha256: $(sha256sum "$AICODE_BIN" | cut -c1-16)" >>"$OUT/machine.txt"
export AICODE_SCRIPTS_DIR="$SNAP/scripts" AICODE_LUALIB_DIR="$SNAP/lualib" AICODE_DB_DIR="$SNAP/db"
cat "$OUT/machine.txt" >&2

# ---------------------------------------------------------------- wrk
ROWS=() # "round|case|rps|avg|p99|requests|non2xx|sockerr|bytes/resp|server|wrk|irq|other ticks|bad"
FAILURES=0
CLK_TCK=$(getconf CLK_TCK)
SERVER_PID="" # set while a server is under test: its CPU time is read around each wrk run

sys_busy_ticks() { # all CPUs: user + nice + system + irq + softirq + steal
    awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat
}
mapfile -t KSOFTIRQD_PIDS < <(pgrep '^ksoftirqd/' || true)
ksoftirqd_ticks() { # utime + stime of the ksoftirqd/N threads (loopback TCP work deferred to them)
    local p sum=0
    for p in "${KSOFTIRQD_PIDS[@]}"; do sum=$((sum + $(cpu_ticks "$p"))); done
    echo "$sum"
}

# The machine is shared: before each measurement wait (at most QUIET_WAIT s)
# until the other processes use less than QUIET_MAX_CORES cores.
wait_quiet() {
    local i b0 b1 used
    for ((i = 0; i < QUIET_WAIT; i++)); do
        b0=$(sys_busy_ticks)
        sleep 1
        b1=$(sys_busy_ticks)
        used=$(awk -v d=$((b1 - b0)) -v hz="$CLK_TCK" 'BEGIN {printf "%.2f", d / hz}')
        if awk -v u="$used" -v m="$QUIET_MAX_CORES" 'BEGIN {exit !(u < m)}'; then return 0; fi
        ((i % 10 == 0)) && log "machine busy (other processes use $used cores), waiting up to ${QUIET_WAIT}s"
    done
    log "machine still busy after ${QUIET_WAIT}s; measuring anyway (see the 'other' CPU column)"
}

cpu_ticks() { # utime + stime of a process (all threads), in clock ticks
    local stat
    stat=$(<"/proc/$1/stat")
    stat=${stat##*) }
    awk '{print $12 + $13}' <<<"$stat"
}

# run_wrk round case url outfile [extra wrk args...]
# A run during which other processes used more than QUIET_MAX_CORES is repeated up
# to RETRY_NOISY times (the noisy output is kept as <file>.noisy<N>); errors in any
# attempt count as failures.
run_wrk() {
    local round=$1 name=$2 url=$3 file=$4 attempt noisy
    shift 4
    for ((attempt = 0; ; attempt++)); do
        wait_quiet
        if [[ $WARMUP != 0 && $WARMUP != 0s ]]; then
            wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"$WARMUP" "$@" "$url" >"$file.warmup" 2>&1 || true
        fi
        measure_once "$round" "$name" "$url" "$file" "$@"
        noisy=$(awk -F'|' -v hz="$CLK_TCK" -v m="$QUIET_MAX_CORES" '{
            d = ($3 > 0 ? $6 / $3 : 1); print ($13 / hz / d > m) ? 1 : 0 }' <<<"$ROW")
        if [[ $noisy == 1 && $attempt -lt $RETRY_NOISY ]]; then
            log "round $round: $name: other processes were busy during the run, repeating it"
            mv "$file" "$file.noisy$((attempt + 1))"
            continue
        fi
        break
    done
    ROWS+=("$ROW")
}

measure_once() { # round case url outfile [extra wrk args...]: sets ROW
    local round=$1 name=$2 url=$3 file=$4
    shift 4
    log "round $round: $name: wrk -t$WRK_THREADS -c$CONNECTIONS -d$DURATION --latency $* $url"
    echo "# wrk -t$WRK_THREADS -c$CONNECTIONS -d$DURATION --latency $* $url" >"$file"
    local t0 t1 b0 b1 i0 i1 ticks wrk_ticks irq other
    b0=$(sys_busy_ticks)
    i0=$(ksoftirqd_ticks)
    t0=$(cpu_ticks "$SERVER_PID")
    /usr/bin/time -f '%U %S' -o "$file.time" \
        timeout 120 wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$@" "$url" >>"$file" 2>&1 ||
        { log "wrk failed, see $file"; FAILURES=$((FAILURES + 1)); }
    t1=$(cpu_ticks "$SERVER_PID")
    b1=$(sys_busy_ticks)
    i1=$(ksoftirqd_ticks)
    ticks=$((t1 - t0))
    irq=$((i1 - i0))
    wrk_ticks=$(awk -v hz="$CLK_TCK" 'END {printf "%d", ($1 + $2) * hz}' "$file.time")
    other=$((b1 - b0 - ticks - wrk_ticks - irq))
    ((other >= 0)) || other=0
    {
        echo "# CPU during the run (ticks, CLK_TCK=$CLK_TCK): server pid $SERVER_PID $ticks," \
            "wrk $wrk_ticks, ksoftirqd $irq, whole machine $((b1 - b0)), other processes $other"
    } >>"$file"
    rm -f "$file.time"
    local row
    row=$(awk -v round="$round" -v name="$name" -v ticks="$ticks" -v wrkt="$wrk_ticks" -v irq="$irq" -v other="$other" \
        '
        function bytes(s,   n, u) {
            n = s + 0; u = s; sub(/^[0-9.]+/, "", u)
            if (u == "KB") n *= 1024; else if (u == "MB") n *= 1048576; else if (u == "GB") n *= 1073741824
            return n
        }
        /^ +Latency/ && !lat { lat = $2 }
        /^ +99%/ { p99 = $2 }
        /requests in/ { reqs = $1; rd = bytes($5) }
        /^Requests\/sec:/ { rps = $2 }
        /Non-2xx or 3xx responses:/ { non2xx = $NF }
        /Socket errors:/ { c = $4; r = $6; w = $8; t = $10; gsub(/,/, "", c); gsub(/,/, "", r); gsub(/,/, "", w)
                           serr = "connect " c " read " r " write " w " timeout " t; serrsum = c + r + w + t }
        END {
            if (serr == "") { serr = "0"; serrsum = 0 }
            if (non2xx == "") non2xx = 0
            printf "%s|%s|%.0f|%s|%s|%s|%s|%s|%.0f|%s|%s|%s|%s|%d\n", round, name, rps, lat, p99, reqs,
                   non2xx, serr, (reqs > 0 ? rd / reqs : 0), ticks, wrkt, irq, other, (non2xx + serrsum > 0 || reqs == 0) }' \
        "$file")
    ROW=$row
    local bad=${row##*|}
    if [[ $bad != 0 ]]; then
        log "round $round: $name: errors (non-2xx or socket errors or no requests), see $file"
        FAILURES=$((FAILURES + 1))
    fi
    grep -E 'Requests/sec|Non-2xx|Socket errors|requests in' "$file" | sed 's/^/    /' >&2 || true
}

rps_of() { # round case
    local r
    for r in "${ROWS[@]}"; do
        IFS='|' read -r rr cc rps _ <<<"$r"
        if [[ $rr == "$1" && $cc == "$2" ]]; then echo "$rps"; return; fi
    done
    echo 0
}

RSS_ROWS=() # "round|server|idle_kb|after_kb|hwm_kb"

# ---------------------------------------------------------------- servers
start_bare() { # port outfile [env...]
    local port=$1 errf=$2
    shift 2
    env "$@" "$BARE" "$port" "$WORKERS" 2>"$errf" &
    BARE_PID=$!
    PIDS+=("$BARE_PID")
    wait_port "$port" "$BARE_PID"
}

bench_bare() { # round case chunked
    local round=$1 name=$2 chunked=$3 port idle after hwm
    port=$(free_port)
    start_bare "$port" "$OUT/r$round-$name.stderr" BARE_CHUNKED="$chunked"
    SERVER_PID=$BARE_PID
    curl -sS --max-time 5 -D - "http://127.0.0.1:$port/ping" >"$OUT/r$round-$name.sample.txt"
    sleep "$IDLE_SETTLE"
    idle=$(rss_kb "$BARE_PID")
    run_wrk "$round" "$name" "http://127.0.0.1:$port/ping" "$OUT/r$round-$name.txt"
    after=$(rss_kb "$BARE_PID")
    hwm=$(hwm_kb "$BARE_PID")
    RSS_ROWS+=("$round|$name|$idle|$after|$hwm")
    stop_pid "$BARE_PID"
    forget_pid "$BARE_PID"
}

# start_aicode round datadir port: sets AICODE_PID
start_aicode() {
    local round=$1 data=$2 port=$3
    env -u AICODE_DEV HOST=127.0.0.1 PORT="$port" WORKERS="$WORKERS" AICODE_DATA_DIR="$data" \
        AICODE_ENV_FILE="$data/no.env" LOG_FILE="$data/requests.log" RATE_LIMIT_PER_MINUTE=0 \
        "$AICODE_BIN" serve >"$data/stdout.log" 2>"$data/stderr.log" &
    AICODE_PID=$!
    PIDS+=("$AICODE_PID")
    wait_port "$port" "$AICODE_PID"
}

# make_user datadir: sets TOKEN (access token for a new user) and creates $PROJECTS projects
make_token() {
    local data=$1 user json
    user=$(cat /proc/sys/kernel/random/uuid)
    json=$(env -u AICODE_DEV AICODE_DATA_DIR="$data" AICODE_ENV_FILE="$data/no.env" \
        LOG_FILE="$data/cli.log" "$AICODE_BIN" token --user "$user")
    TOKEN=$(printf '%s' "$json" | sed -n 's/.*"access_token":"\([^"]*\)".*/\1/p')
    [[ -n $TOKEN ]] || die "bin/aicode token printed no access_token"
}

create_projects() { # port
    local port=$1 i code count
    for ((i = 1; i <= PROJECTS; i++)); do
        code=$(curl -sS --max-time 5 -o /dev/null -w '%{http_code}' -X POST \
            -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
            -d "{\"name\":\"bench project $i\",\"repo_url\":\"https://github.com/bench-org/repo-$i\",\"description\":\"Benchmark project number $i, created by bench/run.sh\"}" \
            "http://127.0.0.1:$port/api/projects")
        [[ $code == 200 || $code == 201 ]] || die "POST /api/projects #$i answered $code"
    done
    count=$(curl -sS --max-time 5 -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$port/api/projects" |
        grep -o '"repo_url":' | wc -l)
    [[ $count == "$PROJECTS" ]] || die "GET /api/projects lists $count projects, expected $PROJECTS"
}

bench_aicode() { # round
    local round=$1 port data idle after hwm
    data="$OUT/data-r$round"
    mkdir -p "$data"
    make_token "$data"
    port=$(free_port)
    start_aicode "$round" "$data" "$port"
    SERVER_PID=$AICODE_PID
    sleep "$IDLE_SETTLE"
    idle=$(rss_kb "$AICODE_PID")
    curl -sS --max-time 5 -D - "http://127.0.0.1:$port/ping" >"$OUT/r$round-aicode-ping.sample.txt"
    run_wrk "$round" aicode-ping "http://127.0.0.1:$port/ping" "$OUT/r$round-aicode-ping.txt"
    create_projects "$port"
    curl -sS --max-time 5 -D - -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$port/api/projects" \
        >"$OUT/r$round-aicode-projects.sample.txt"
    export AICODE_TOKEN=$TOKEN # read by bench/projects.lua
    run_wrk "$round" aicode-projects "http://127.0.0.1:$port/api/projects" \
        "$OUT/r$round-aicode-projects.txt" -s bench/projects.lua
    sleep 1
    after=$(rss_kb "$AICODE_PID")
    hwm=$(hwm_kb "$AICODE_PID")
    RSS_ROWS+=("$round|aicode|$idle|$after|$hwm")
    kill -0 "$AICODE_PID" 2>/dev/null || die "aicode exited during the benchmark"
    stop_pid "$AICODE_PID"
    forget_pid "$AICODE_PID"
    # The request log is large; keep its size and a few lines, not the whole file.
    if [[ -f $data/requests.log ]]; then
        {
            echo "lines: $(wc -l <"$data/requests.log")"
            echo "bytes: $(stat -c %s "$data/requests.log")"
            echo "levels other than info: $(grep -vc '"level":"info"' "$data/requests.log" || true)"
            echo "--- head"; head -3 "$data/requests.log"
            echo "--- tail"; tail -3 "$data/requests.log"
        } >"$OUT/r$round-aicode-log-summary.txt"
        rm -f "$data/requests.log"
    fi
}

export AICODE_TOKEN=""
for ((round = 1; round <= ROUNDS; round++)); do
    bench_bare "$round" bare-ping 0
    if [[ $BARE_CHUNKED_ROW == 1 ]]; then bench_bare "$round" bare-ping-chunked 1; fi
    bench_aicode "$round"
done

# ---------------------------------------------------------------- profile (optional)
if [[ $BENCH_PERF == 1 ]]; then
    if command -v perf >/dev/null 2>&1; then
        data="$OUT/data-perf"
        mkdir -p "$data"
        make_token "$data"
        port=$(free_port)
        start_aicode perf "$data" "$port"
        create_projects "$port"
        for what in ping projects; do
            if [[ $what == ping ]]; then url="http://127.0.0.1:$port/ping"; extra=(); else
                url="http://127.0.0.1:$port/api/projects"; extra=(-s bench/projects.lua); fi
            export AICODE_TOKEN=$TOKEN
            wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d2s "${extra[@]}" "$url" >/dev/null 2>&1 || true
            log "perf: profiling aicode for ${PERF_SECONDS}s under wrk $url"
            timeout 120 wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d$((PERF_SECONDS + 2))s "${extra[@]}" \
                "$url" >"$OUT/perf-$what.wrk.txt" 2>&1 &
            wrk_pid=$!
            PIDS+=("$wrk_pid")
            sleep 1
            # DWARF unwinding: liblua5.4 and libc have no frame pointers.
            perf record -q -e cpu-clock -F 499 --call-graph dwarf,32768 -p "$AICODE_PID" \
                -o "$OUT/perf-$what.data" -- sleep "$PERF_SECONDS" >/dev/null 2>&1 || true
            wait "$wrk_pid" || true
            forget_pid "$wrk_pid"
            perf report -i "$OUT/perf-$what.data" --no-children --sort dso,symbol --percent-limit 0.5 \
                --stdio -g none 2>/dev/null >"$OUT/perf-$what.self.txt" || true
            perf report -i "$OUT/perf-$what.data" --children --sort symbol --percent-limit 1 \
                --stdio -g none 2>/dev/null >"$OUT/perf-$what.inclusive.txt" || true
            perf report -i "$OUT/perf-$what.data" --no-children --sort dso --stdio -g none 2>/dev/null \
                >"$OUT/perf-$what.dso.txt" || true
            [[ ${BENCH_PERF_KEEP:-0} == 1 ]] || rm -f "$OUT/perf-$what.data"
        done
        stop_pid "$AICODE_PID"
        forget_pid "$AICODE_PID"
        rm -f "$data/requests.log"
    else
        log "BENCH_PERF=1 but perf is not installed; skipping the profile"
    fi
fi

# ---------------------------------------------------------------- report
{
    echo "## Throughput (wrk -t$WRK_THREADS -c$CONNECTIONS -d$DURATION, keep-alive, WORKERS=$WORKERS)"
    echo
    echo "| Round | Case | Requests/s | Avg latency | p99 latency | Requests | Non-2xx/3xx | Socket errors | Bytes/response | Server CPU µs/request | CPU cores: server / wrk / ksoftirqd / other |"
    echo "|---|---|---:|---:|---:|---:|---:|---|---:|---:|---|"
    for r in "${ROWS[@]}"; do
        IFS='|' read -r rr cc rps lat p99 reqs non2xx serr bpr ticks wrkt irq other _ <<<"$r"
        cpu=$(awk -v t="$ticks" -v w="$wrkt" -v q="$irq" -v o="$other" -v hz="$CLK_TCK" -v n="$reqs" \
            -v rps="$rps" 'BEGIN {
            d = (rps > 0 ? n / rps : 1)
            printf "%.1f|%.2f / %.2f / %.2f / %.2f%s", (n > 0 ? 1e6 * t / hz / n : 0), t / hz / d, w / hz / d,
                   q / hz / d, o / hz / d, (o / hz / d > 0.15 ? " (noisy)" : "") }')
        echo "| $rr | $cc | $rps | $lat | $p99 | $reqs | $non2xx | $serr | $bpr | ${cpu%%|*} | ${cpu##*|} |"
    done
    echo
    echo "CPU: utime+stime over the measured run, from /proc/<pid>/stat (server), /usr/bin/time (wrk) and"
    echo "/proc/stat (whole machine). ksoftirqd = the kernel threads that take over loopback TCP softirq"
    echo "work under load; other = the rest, i.e. other processes on this shared machine (and irq time)."
    echo "wrk runs on the same $(nproc) cores as the server. (noisy): other processes used > 0.15 cores."
    echo
    echo "## Memory (VmRSS from /proc/<pid>/status)"
    echo
    echo "| Round | Server | Idle RSS (${IDLE_SETTLE}s after start) | RSS after load | Peak (VmHWM) |"
    echo "|---|---|---:|---:|---:|"
    for r in "${RSS_ROWS[@]}"; do
        IFS='|' read -r rr ss idle after hwm <<<"$r"
        echo "| $rr | $ss | $(mb "$idle") MB | $(mb "$after") MB | $(mb "$hwm") MB |"
    done
    echo
    echo "## Targets (issue #2)"
    echo
    echo "| Round | /ping vs bare h2o (≥ 80%) | GET /api/projects (≥ 10,000 req/s) | Idle RSS (< 20 MB) |"
    echo "|---|---|---|---|"
    for ((round = 1; round <= ROUNDS; round++)); do
        bare=$(rps_of "$round" bare-ping)
        ping=$(rps_of "$round" aicode-ping)
        proj=$(rps_of "$round" aicode-projects)
        idle=0
        for r in "${RSS_ROWS[@]}"; do
            IFS='|' read -r rr ss i _ <<<"$r"
            [[ $rr == "$round" && $ss == aicode ]] && idle=$i
        done
        awk -v round="$round" -v bare="$bare" -v ping="$ping" -v proj="$proj" -v idle="$idle" 'BEGIN {
            pct = bare > 0 ? 100 * ping / bare : 0
            printf "| %s | %.1f%% (%d / %d) %s | %d %s | %.1f MB %s |\n", round, pct, ping, bare,
                   (pct >= 80 ? "**met**" : "**missed**"), proj, (proj >= 10000 ? "**met**" : "**missed**"),
                   idle / 1024, (idle / 1024 < 20 ? "**met**" : "**missed**") }'
    done
    echo
    if [[ $FAILURES -eq 0 ]]; then
        echo "All wrk runs: 0 non-2xx/3xx responses, 0 socket errors."
    else
        echo "**$FAILURES wrk run(s) had errors (non-2xx/3xx or socket errors) or failed; see the raw files.**"
    fi
} >"$OUT/summary.md"

cat "$OUT/summary.md"
log "raw results: $OUT"
[[ $FAILURES -eq 0 ]]
