#!/usr/bin/env bash
# Embedded session store vs redis-server, both on a unix socket, measured by the
# same client (redis-benchmark) in the same run (issue 11, scenario 8). Prints
# markdown tables (stdout) with the store ÷ redis-server ratios; progress on stderr.
#
#   bench/store/run.sh                    # the whole matrix, ≈ 5 min on 2 idle cores
#   QUICK=1 bench/store/run.sh            # smoke run: few requests, 1 round, no 1M-key test (≤ 60 s)
#   PERSIST=always bench/store/run.sh     # one persistence mode only
#
# The matrix: SET and GET of 1 KiB values at -c 1 and -c 50, -P 1 and -P 16, with
# persistence off (redis: --save '' --appendonly no) and everysec (--appendonly yes
# --appendfsync everysec) on both, and `always` at -c 1; then RSS with KEYS
# (1,000,000) keys of 1 KiB. Per row: throughput and p99 (redis-benchmark --csv), and
# the server's CPU per request: utime + stime of the whole process (all threads,
# the store's log threads included) from /proc/PID/stat before and after the run,
# divided by the run's requests. CPU time moves far less than throughput when other
# work shares the machine. The last column is each round's store ÷ redis-server (the
# two ran back to back), so a reader sees how far one round strays from the median.
#
# Knobs (environment):
#   PERSIST  modes to run, space- or comma-separated: no everysec always (default: all
#            three; `always` runs -c 1 -P 1 only, where each request waits for its fsync)
#   N        requests of a -c 50 -P 1 run (default 200000). Other runs scale it so
#            each lasts about a second: -P 16 ×10, -c 1 ÷10 (-c 1 -P 16 ×1), always ÷40
#   ROUNDS   alternating rounds per row (default 5); each row shows the median
#   MEMORY   1 (default) runs the 1M-key RSS test; 0 skips it
#   KEYS     keys of the memory test (default 1000000)
#   PIN      1 runs both servers on CPU 1 and redis-benchmark on CPU 0 (taskset):
#            the scheduler then cannot put client and server on one core for some
#            runs and on two for others, which swings the -c 1 rows by ±10 %. Pinned,
#            the -c 50 rows measure the client more than the server (see
#            docs/BENCHMARKS.md), so the default (0) leaves placement to the kernel.
#   BUILD    0 skips the release build of the store (bench/run has built it)
#   QUICK    1: N=20000, ROUNDS=1, MEMORY=0 unless set otherwise
#   DIR      where the sockets and logs go (default /tmp). On a tmpfs (/dev/shm)
#            fsync costs nothing, so `always` then measures the servers' own
#            work around each sync rather than a disk shared with other work
set -euo pipefail

QUICK=${QUICK:-0}
if [[ $QUICK == 1 ]]; then
    N=${N:-20000}; ROUNDS=${ROUNDS:-1}; MEMORY=${MEMORY:-0}
fi
PERSIST=${PERSIST:-no everysec always}
N=${N:-200000}
ROUNDS=${ROUNDS:-5}
MEMORY=${MEMORY:-1}
KEYS=${KEYS:-1000000}
PIN=${PIN:-0}
# Every redis-benchmark run is bounded: a server that stops answering fails the
# run instead of hanging it.
RUN_LIMIT=${RUN_LIMIT:-120}
read -r -a modes <<< "${PERSIST//,/ }"
for m in "${modes[@]}"; do
    case $m in no|everysec|always) ;; *) echo "bench/store: PERSIST: '$m' is not no, everysec or always" >&2; exit 2 ;; esac
done

server_cpu=(); client_cpu=()
if [[ $PIN == 1 ]] && (( $(nproc) >= 2 )) && command -v taskset >/dev/null; then
    server_cpu=(taskset -c 1); client_cpu=(taskset -c 0)
fi
root=$(cd "$(dirname "$0")/../.." && pwd)
DIR=${DIR:-/tmp}
work=$(mktemp -d "$DIR/appvisor-store-bench.XXXXXX")
redis_pid=; store_pid=
stop_servers() {
    for p in $redis_pid $store_pid; do
        kill "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    redis_pid=; store_pid=
}
cleanup() { stop_servers; rm -rf "$work"; }
trap cleanup EXIT

for tool in redis-server redis-benchmark redis-cli python3 timeout; do
    command -v "$tool" >/dev/null || { echo "bench/store: $tool is not installed (apt-get install redis-server redis-tools python3)" >&2; exit 1; }
done

if [[ ${BUILD:-1} == 1 ]]; then
    echo "bench/store: building the store (release)…" >&2
    cargo build --release --quiet -p appvisor-store --example serve --manifest-path "$root/Cargo.toml"
fi
store_bin="$root/target/release/examples/serve"

PASS=benchtoken
start_servers() { # persistence mode
    local mode=$1
    rm -f "$work"/*.aof "$work"/appendonlydir/* 2>/dev/null || true
    local rargs=(--port 0 --unixsocket "$work/redis.sock" --unixsocketperm 600 --save ''
                 --dir "$work" --logfile "$work/redis.log" --daemonize no)
    local sargs=(--socket "$work/store.sock" --app "bench:$PASS")
    case $mode in
        no) rargs+=(--appendonly no) ;;
        *) rargs+=(--appendonly yes --appendfsync "$mode")
           sargs+=(--aof "$work/store.aof" --persist "$mode") ;;
    esac
    "${server_cpu[@]}" redis-server "${rargs[@]}" &
    redis_pid=$!
    "${server_cpu[@]}" "$store_bin" "${sargs[@]}" > "$work/store.out" 2>&1 &
    store_pid=$!
    wait_ping "$work/redis.sock"
    wait_ping "$work/store.sock" --user bench --pass "$PASS"
}
wait_ping() { # socket [auth args]
    local sock=$1; shift
    for _ in $(seq 100); do
        [[ $(redis-cli -s "$sock" "$@" --no-auth-warning ping 2>/dev/null) == PONG ]] && return 0
        sleep 0.1
    done
    echo "bench/store: $sock did not answer PING" >&2; exit 1
}

clk_tck=$(getconf CLK_TCK)
# utime + stime of a whole process (all its threads), in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# run SERVER TEST REQUESTS ARGS… → "rps p99_ms cpu_us_per_request"
run() {
    local server=$1 test=$2 n=$3; shift 3
    local pid args
    if [[ $server == redis ]]; then
        pid=$redis_pid; args=(-s "$work/redis.sock")
    else
        pid=$store_pid; args=(-s "$work/store.sock" --user bench -a "$PASS")
    fi
    local before after line
    before=$(cpu_ticks "$pid")
    # csv: test,rps,avg,min,p50,p95,p99,max
    line=$("${client_cpu[@]}" timeout "$RUN_LIMIT" redis-benchmark "${args[@]}" "$@" -t "$test" -d 1024 -n "$n" --csv 2>/dev/null |
        awk -F, 'NR > 1 { gsub(/"/, ""); print $2, $7; exit }')
    after=$(cpu_ticks "$pid")
    [[ -n $line ]] || { echo "bench/store: redis-benchmark against $server ($test $*) failed" >&2; exit 1; }
    echo "$line $(awk -v t=$((after - before)) -v hz="$clk_tck" -v n="$n" 'BEGIN { printf "%.2f", t * 1e6 / hz / n }')"
}
calc() { awk "BEGIN { print $1 }"; }
median() { sort -g | awk '{ a[NR] = $1 } END { if (NR) print a[int((NR + 1) / 2)]; else print 0 }'; }
col() { awk -v c="$1" '{ print $c }' "$2" | median; }
fmt_int() { LC_ALL=C printf "%'.0f" "$1" 2>/dev/null || printf '%.0f' "$1"; }

echo "# Session store: embedded store vs redis-server"
echo
echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'); machine: $(nproc) CPUs, $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo); kernel $(uname -r)"
echo "- redis-server $(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p'), redis-benchmark from the same package; store: $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$root" diff --quiet 2>/dev/null || echo '+changes'), release build of supervisor/store/examples/serve.rs (current-thread runtime)"
echo "- both on a unix socket, 1 KiB values; N=$N, ROUNDS=$ROUNDS (median of alternating rounds)$([[ ${#server_cpu[@]} -gt 0 ]] && echo '; servers on CPU 1, client on CPU 0')"
echo "- logs and sockets in $DIR ($(df -T "$work" | awk 'NR == 2 { print $2 }')); load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "- CPU µs/req: server utime+stime (/proc/PID/stat, all threads) over the run ÷ requests; tick $((1000 / clk_tck)) ms"
echo

for mode in "${modes[@]}"; do
    case $mode in
        always) configs=("-c 1 -P 1") ;;
        *) configs=("-c 1 -P 1" "-c 1 -P 16" "-c 50 -P 1" "-c 50 -P 16") ;;
    esac
    echo "bench/store: persistence $mode…" >&2
    start_servers "$mode"
    for cfg in "${configs[@]}"; do
        case $cfg in
            "-c 1 -P 1") n=$((N / 10)) ;;
            "-c 1 -P 16") n=$N ;;
            "-c 50 -P 1") n=$N ;;
            "-c 50 -P 16") n=$((N * 10)) ;;
        esac
        [[ $mode == always ]] && n=$((N / 40))
        for test in set get; do
            : > "$work/$mode.$test.redis.$cfg"; : > "$work/$mode.$test.store.$cfg"
        done
    done
    for round in $(seq "$ROUNDS"); do
        # Who goes first alternates too, so a drift in load hits both alike.
        if (( round % 2 )); then order=(redis store); else order=(store redis); fi
        for cfg in "${configs[@]}"; do
            case $cfg in
                "-c 1 -P 1") n=$((N / 10)) ;;
                "-c 1 -P 16") n=$N ;;
                "-c 50 -P 1") n=$N ;;
                "-c 50 -P 16") n=$((N * 10)) ;;
            esac
            [[ $mode == always ]] && n=$((N / 40))
            for test in set get; do
                for server in "${order[@]}"; do
                    # shellcheck disable=SC2086
                    run "$server" "$test" "$n" $cfg >> "$work/$mode.$test.$server.$cfg"
                done
            done
        done
    done
    stop_servers

    redis_flags=$([[ $mode == no ]] && echo "--appendonly no" || echo "--appendonly yes --appendfsync $mode")
    echo "## persistence: $mode (store \`persist = \"$mode\"\`; redis-server \`--save '' $redis_flags\`)"
    echo
    echo "| clients | pipeline | test | redis rps | store rps | ratio | redis p99 | store p99 | redis CPU µs/req | store CPU µs/req | CPU ratio | ratio of each round |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
    for cfg in "${configs[@]}"; do
        read -r _ c _ p <<< "$cfg"
        for test in set get; do
            r=$work/$mode.$test.redis.$cfg; s=$work/$mode.$test.store.$cfg
            r_rps=$(col 1 "$r"); s_rps=$(col 1 "$s")
            r_cpu=$(col 3 "$r"); s_cpu=$(col 3 "$s")
            # Round i of both servers ran back to back: their ratio is the pair's.
            rounds=$(paste -d' ' "$s" "$r" | awk '{ printf "%s%.2f", (NR > 1 ? " " : ""), ($(NF / 2 + 1) > 0 ? $1 / $(NF / 2 + 1) : 0) }')
            printf '| %s | %s | %s | %s | %s | **%.2f×** | %.3f ms | %.3f ms | %.2f | %.2f | %s | %s |\n' \
                "$c" "$p" "${test^^}" "$(fmt_int "$r_rps")" "$(fmt_int "$s_rps")" "$(calc "$s_rps / $r_rps")" \
                "$(col 2 "$r")" "$(col 2 "$s")" "$r_cpu" "$s_cpu" \
                "$(awk -v a="$s_cpu" -v b="$r_cpu" 'BEGIN { if (b > 0) printf "%.2f×", a / b; else print "–" }')" \
                "$rounds"
        done
    done
    echo
done

rss_kib() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status"; }
if [[ $MEMORY == 1 ]]; then
    echo "bench/store: $KEYS keys…" >&2
    start_servers no
    # Exactly $KEYS distinct keys of 1 KiB, piped in by redis-cli --pipe.
    fill() { # redis-cli args…
        python3 - "$KEYS" <<'PY' | timeout "$RUN_LIMIT" redis-cli "$@" --no-auth-warning --pipe >/dev/null
import sys
n = int(sys.argv[1]); value = b"v" * 1024; out = sys.stdout.buffer; chunk = []
for i in range(n):
    key = b"key:%012d" % i
    chunk.append(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$1024\r\n%s\r\n" % (len(key), key, value))
    if len(chunk) == 10000:
        out.write(b"".join(chunk)); chunk = []
out.write(b"".join(chunk))
PY
    }
    r0=$(rss_kib "$redis_pid"); s0=$(rss_kib "$store_pid")
    fill -s "$work/redis.sock"
    fill -s "$work/store.sock" --user bench --pass "$PASS"
    rk=$(redis-cli -s "$work/redis.sock" dbsize)
    sk=$(redis-cli -s "$work/store.sock" --user bench --pass "$PASS" --no-auth-warning dbsize)
    r1=$(rss_kib "$redis_pid"); s1=$(rss_kib "$store_pid")
    stop_servers
    echo "## memory: $KEYS keys × 1 KiB values (key:%012d), persistence off, RSS from /proc/PID/status"
    echo
    echo "| server | keys | RSS MiB | bytes per key | ratio |"
    echo "|---|---|---|---|---|"
    printf '| redis-server | %s | %.1f | %.0f | |\n' "$rk" "$(calc "$r1 / 1024")" "$(calc "($r1 - $r0) * 1024 / $rk")"
    printf '| store | %s | %.1f | %.0f | **%.2f×** |\n' "$sk" "$(calc "$s1 / 1024")" "$(calc "($s1 - $s0) * 1024 / $sk")" "$(calc "$s1 / $r1")"
    echo
fi
echo "- load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
