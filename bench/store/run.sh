#!/usr/bin/env bash
# Embedded session store vs redis-server, both on a unix socket, measured by the
# same client (redis-benchmark) in the same run. Prints a table of ratios.
#
#   bench/store/run.sh            # persistence off on both (redis: --save '' --appendonly no)
#   PERSIST=everysec bench/store/run.sh   # AOF everysec on both
#   PERSIST=always bench/store/run.sh     # AOF always on both
#   N=200000 MEMORY=0 bench/store/run.sh  # requests per test; skip the 1M-key memory test
#
# Each throughput row is the median of ROUNDS (default 3) alternating runs, so
# that load from other processes hits both servers alike. PIN=1 runs both servers
# on CPU 1 and redis-benchmark on CPU 0 (taskset): the scheduler then cannot put
# client and server on one core for some runs and on two for others, which swings
# the -c 1 rows by ±10 %. Pinned, the -c 50 rows measure the client more than the
# server (see docs/BENCHMARKS.md), so the default (PIN=0) leaves placement to the
# kernel, as a deployment would.
set -euo pipefail

PERSIST=${PERSIST:-no}
N=${N:-200000}
ROUNDS=${ROUNDS:-3}
MEMORY=${MEMORY:-1}
KEYS=${KEYS:-1000000}
PIN=${PIN:-0}
server_cpu=(); client_cpu=()
if [[ $PIN == 1 ]] && (( $(nproc) >= 2 )) && command -v taskset >/dev/null; then
    server_cpu=(taskset -c 1); client_cpu=(taskset -c 0)
fi
root=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d /tmp/appvisor-store-bench.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

for tool in redis-server redis-benchmark redis-cli python3; do
    command -v "$tool" >/dev/null || { echo "bench/store: $tool is not installed (apt-get install redis-server python3)" >&2; exit 1; }
done

echo "building the store (release)…" >&2
cargo build --release --quiet -p appvisor-store --example serve --manifest-path "$root/Cargo.toml"
store_bin="$root/target/release/examples/serve"

PASS=benchtoken
start_redis() {
    local args=(--port 0 --unixsocket "$work/redis.sock" --unixsocketperm 600 --save ''
                --dir "$work" --logfile "$work/redis.log" --daemonize no)
    case $PERSIST in
        no) args+=(--appendonly no) ;;
        everysec|always) args+=(--appendonly yes --appendfsync "$PERSIST") ;;
    esac
    "${server_cpu[@]}" redis-server "${args[@]}" &
    redis_pid=$!
    pids+=("$redis_pid")
}
start_store() {
    local args=(--socket "$work/store.sock" --app "bench:$PASS")
    if [[ $PERSIST != no ]]; then args+=(--aof "$work/store.aof" --persist "$PERSIST"); fi
    "${server_cpu[@]}" "$store_bin" "${args[@]}" > "$work/store.out" 2>&1 &
    store_pid=$!
    pids+=("$store_pid")
}
wait_ping() { # socket [auth args]
    local sock=$1; shift
    for _ in $(seq 100); do
        [[ $(redis-cli -s "$sock" "$@" --no-auth-warning ping 2>/dev/null) == PONG ]] && return 0
        sleep 0.1
    done
    echo "bench/store: $sock did not answer PING" >&2; exit 1
}
start_redis; start_store
wait_ping "$work/redis.sock"
wait_ping "$work/store.sock" --user bench --pass "$PASS"

redis_args=(-s "$work/redis.sock")
store_args=(-s "$work/store.sock" --user bench -a "$PASS")

# bench ARGS… → "SET rps p99\nGET rps p99" (csv: test,rps,avg,min,p50,p95,p99,max)
bench() { # requests ARGS…
    local n=$1; shift
    "${client_cpu[@]}" redis-benchmark "$@" -t set,get -d 1024 -n "$n" --csv 2>/dev/null |
        awk -F, 'NR > 1 { gsub(/"/, ""); print $1, $2, $7 }'
}
calc() { awk "BEGIN { print $1 }"; }
median() { sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }

printf '\nredis-benchmark -t set,get -d 1024 -n %s (x10 with -P 16), unix socket, persistence: %s (redis: %s)\n' \
    "$N" "$PERSIST" "$([[ $PERSIST == no ]] && echo "--save '' --appendonly no" || echo "--save '' --appendonly yes --appendfsync $PERSIST")"
printf 'median of %s alternating rounds%s\n\n' "$ROUNDS" "$([[ ${#server_cpu[@]} -gt 0 ]] && echo '; servers on CPU 1, client on CPU 0')"
printf '| %-14s | %-4s | %12s | %12s | %6s | %11s | %11s |\n' clients test "redis rps" "store rps" ratio "redis p99" "store p99"
printf '|%s|%s|%s|%s|%s|%s|%s|\n' ---------------- ------ -------------- -------------- -------- ------------- -------------
for mode in "-c 50" "-c 50 -P 16" "-c 1"; do
    : > "$work/r.txt"; : > "$work/s.txt"
    # About a second per run: a pipelined run of N requests would last ~0.1 s,
    # short enough for start-up and scheduling noise to swing it by ±20 %.
    case $mode in
        *-P*) n=$((N * 10)) ;;
        *) n=$N ;;
    esac
    for _ in $(seq "$ROUNDS"); do
        # shellcheck disable=SC2086
        bench "$n" "${redis_args[@]}" $mode >> "$work/r.txt"
        # shellcheck disable=SC2086
        bench "$n" "${store_args[@]}" $mode >> "$work/s.txt"
    done
    for t in SET GET; do
        r_rps=$(awk -v t=$t '$1 == t { print $2 }' "$work/r.txt" | median)
        s_rps=$(awk -v t=$t '$1 == t { print $2 }' "$work/s.txt" | median)
        r_p99=$(awk -v t=$t '$1 == t { print $3 }' "$work/r.txt" | median)
        s_p99=$(awk -v t=$t '$1 == t { print $3 }' "$work/s.txt" | median)
        printf '| %-14s | %-4s | %12.0f | %12.0f | %5.2fx | %8.3f ms | %8.3f ms |\n' \
            "$mode" "$t" "$r_rps" "$s_rps" "$(calc "$s_rps / $r_rps")" "$r_p99" "$s_p99"
    done
done

rss_kib() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status"; }
if [[ $MEMORY == 1 ]]; then
    # Exactly $KEYS distinct keys of 1 KiB, piped in by redis-cli --pipe.
    fill() { # redis-cli args…
        python3 - "$KEYS" <<'PY' | redis-cli "$@" --no-auth-warning --pipe >/dev/null
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
    redis-cli -s "$work/redis.sock" flushall >/dev/null
    redis-cli -s "$work/store.sock" --user bench --pass "$PASS" --no-auth-warning flushdb >/dev/null
    fill -s "$work/redis.sock"
    fill -s "$work/store.sock" --user bench --pass "$PASS"
    rk=$(redis-cli -s "$work/redis.sock" dbsize)
    sk=$(redis-cli -s "$work/store.sock" --user bench --pass "$PASS" --no-auth-warning dbsize)
    r1=$(rss_kib "$redis_pid"); s1=$(rss_kib "$store_pid")
    printf '\n%s keys x 1 KiB values (key:%%012d), RSS from /proc/PID/status\n\n' "$KEYS"
    printf '| %-12s | %9s | %12s | %14s |\n' server keys "RSS MiB" "bytes per key"
    printf '|%s|%s|%s|%s|\n' -------------- ----------- -------------- ----------------
    printf '| %-12s | %9s | %12.1f | %14.0f |\n' redis-server "$rk" "$(calc "$r1 / 1024")" "$(calc "($r1 - $r0) * 1024 / $rk")"
    printf '| %-12s | %9s | %12.1f | %14.0f |\n' store "$sk" "$(calc "$s1 / 1024")" "$(calc "($s1 - $s0) * 1024 / $sk")"
    printf '\nstore RSS / redis RSS = %.2fx\n' "$(calc "$s1 / $r1")"
fi
