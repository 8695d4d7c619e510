#!/usr/bin/env bash
# The history recorder and `appvisor tune` (issue 9):
#  1. the recorder alone, one hour of 200 workers at 1 s in compressed time: heap per
#     worker-hour (goal ≤ 4 KiB), disk per worker-hour, CPU of recording one tick;
#  2. the real supervisor with 200 `demo` workers in one app, sampled every second:
#     its CPU time (utime + stime from /proc, all threads) over $SECONDS_CPU s, against
#     the same supervisor with sample_interval = "1h" (goal: the sampling ≤ 1 % of
#     one core);
#  3. `appvisor tune` over 7 days of 1 s history of one app (4 workers, recycled
#     every 6 h), best of 3 (goal ≤ 1 s).
# Knobs: WORKERS (200), SECONDS_CPU (60). Builds in release.
set -euo pipefail
cd "$(dirname "$0")/.."
WORKERS=${WORKERS:-200}
SECONDS_CPU=${SECONDS_CPU:-60}
cargo build --release -q -p appvisor --bins --example history_bench
cargo build --release -q -p appvisor-worker --example demo
bin=$PWD/target/release/appvisor
bench=$PWD/target/release/examples/history_bench
demo=$PWD/target/release/examples/demo
hz=$(getconf CLK_TCK)
echo "load before: $(cat /proc/loadavg)"
echo
echo "| recorder alone | |"
echo "|---|---|"
"$bench" memory "$WORKERS"

work=$(mktemp -d /tmp/av-hbench-XXXXXX)
sv=
trap '[ -n "$sv" ] && kill -TERM $sv 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT

cpu_of() { # utime + stime of a process (all its threads), in ticks
  awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"
}

measure() { # $1 = sample_interval → prints CPU % of one core over SECONDS_CPU
  local dir=$work/run-$2
  mkdir -p "$dir"
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  cat > "$dir/appvisor.toml" <<TOML
[supervisor]
sample_interval = "$1"
[[app]]
name = "many"
command = ["$demo"]
listen = ["tcp://127.0.0.1:$port"]
processes = $WORKERS
[app.watch]
enabled = false
TOML
  (cd "$dir" && exec "$bin" run >/dev/null 2>"$dir/err") &
  sv=$!
  # Until every worker is ready.
  for _ in $(seq 1 600); do
    n=$(cd "$dir" && "$bin" status --json 2>/dev/null | grep -c '"state": "ready"' || true)
    [ "$n" -ge "$WORKERS" ] && break
    sleep 0.5
  done
  sleep 5
  local c0 c1
  c0=$(cpu_of $sv)
  sleep "$SECONDS_CPU"
  c1=$(cpu_of $sv)
  local rss
  rss=$(awk '/^VmRSS/ {print $2}' /proc/$sv/status)
  kill -TERM $sv; wait $sv 2>/dev/null || true
  sv=
  local hist
  hist=$(du -sk "$dir/.appvisor/history" 2>/dev/null | cut -f1)
  awk -v a="$c0" -v b="$c1" -v hz="$hz" -v s="$SECONDS_CPU" -v r="$rss" -v h="${hist:-0}" \
    'BEGIN { printf "%.3f %.1f %d\n", (b - a) / hz / s * 100, r / 1024, h }'
}

read -r on rss_on hist_on < <(measure 1s on)
read -r off rss_off _ < <(measure 1h off)
echo
echo "| supervisor, $WORKERS demo workers, over $SECONDS_CPU s | CPU (% of one core) | RSS |"
echo "|---|---|---|"
echo "| sample_interval = 1s | $on % | $rss_on MiB |"
echo "| sample_interval = 1h (no sampling in the window) | $off % | $rss_off MiB |"
echo "| the sampling itself (difference) | $(awk -v a="$on" -v b="$off" 'BEGIN { printf "%.3f", a - b }') % | |"
echo "| history written meanwhile | ${hist_on} KiB | |"

"$bench" fill-week "$work/week" site 4
best=
for _ in 1 2 3; do
  t0=$(date +%s.%N)
  "$bin" -c "$work/week/appvisor.toml" tune site --since 7d --json >/dev/null
  t1=$(date +%s.%N)
  t=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
  if [ -z "$best" ] || awk -v t="$t" -v b="$best" 'BEGIN { exit !(t < b) }'; then best=$t; fi
done
echo
echo "| tune over 7 days of 1 app (4 workers, 1 s samples) | best of 3 |"
echo "|---|---|"
echo "| \`appvisor tune site --since 7d --json\` | $best s |"
echo
echo "load after: $(cat /proc/loadavg)"
