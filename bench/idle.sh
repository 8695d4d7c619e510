#!/usr/bin/env bash
# The supervisor at rest, running the README's demo (2 apps, 3 workers, the embedded
# store with its log, file watchers): its RSS, and over 20 s (from 16 s after start)
# the wake-ups (voluntary context switches) and CPU time of all its threads.
# Goal: 0 wake-ups, RSS <= 8 MiB. Needs a release build (README's first command).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release/appvisor
cfg=worker/examples/site/appvisor.toml
[ -x "$bin" ] || { echo "build first: cargo build --release --workspace --bins --examples" >&2; exit 2; }
"$bin" run "$cfg" >/dev/null 2>&1 &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
sleep 16
snap() { # voluntary switches, CPU ns (schedstat) summed over all threads
  local v=0 c=0
  for t in /proc/$pid/task/*; do
    v=$((v + $(awk '/^voluntary_ctxt_switches/ {print $2}' "$t/status")))
    c=$((c + $(awk '{print $1}' "$t/schedstat")))
  done
  echo "$v $c"
}
read -r v0 c0 < <(snap)
sleep 20
read -r v1 c1 < <(snap)
rss=$(awk '/^VmRSS/ {print $2}' /proc/$pid/status)
threads=$(ls /proc/$pid/task | wc -l)
echo "| supervisor RSS, README demo (2 apps, 3 workers, embedded store) | $(awk "BEGIN {printf \"%.1f\", $rss/1024}") MiB |"
echo "| wake-ups over 20 s idle, all $threads threads | $((v1 - v0)) |"
echo "| CPU over 20 s idle | $(awk "BEGIN {printf \"%.3f\", ($c1 - $c0) / 1e9 / 20 * 100}") % |"
