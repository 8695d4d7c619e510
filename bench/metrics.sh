#!/usr/bin/env bash
# What a Prometheus scrape of /metrics costs the supervisor: its CPU time per scrape
# (schedstat of all its threads, from /proc, so a busy machine's wall time does not
# count), with 1 app x 4 workers and with 50 apps x 1 worker (the `demo` worker,
# release build). Also the page size and the idle CPU over the same span, for
# comparison. Knobs: SCRAPES (default 300), APPS (default 50).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$PWD/target/release/appvisor
demo=$PWD/target/release/examples/demo
[ -x "$bin" ] && [ -x "$demo" ] || {
  echo "build first: cargo build --release -p appvisor --bins -p appvisor-worker --example demo" >&2
  exit 2
}
command -v curl >/dev/null || { echo "needs curl" >&2; exit 2; }
scrapes=${SCRAPES:-300}
apps=${APPS:-50}
work=$(mktemp -d /tmp/av-metrics-bench.XXXXXX)
pid=
cleanup() {
  [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

cpu_ns() { # CPU time of every thread of $pid, nanoseconds
  local c=0
  for t in /proc/$pid/task/*; do c=$((c + $(awk '{print $1}' "$t/schedstat"))); done
  echo "$c"
}

# run NAME APPS WORKERS: prints one table row.
run() {
  local name=$1 n=$2 workers=$3 dir=$work/$1 mport
  mkdir -p "$dir"
  mport=$(free_port)
  {
    echo "[supervisor]"
    echo "metrics = \"127.0.0.1:$mport\""
    for i in $(seq 1 "$n"); do
      printf '\n[[app]]\nname = "app%s"\ncommand = ["%s"]\nprocesses = %s\nlisten = ["tcp://127.0.0.1:%s"]\n[app.watch]\nenabled = false\n' \
        "$i" "$demo" "$workers" "$(free_port)"
    done
  } > "$dir/appvisor.toml"
  (cd "$dir" && exec "$bin" run >/dev/null 2>"$dir/err") &
  pid=$!
  local want=$((n * workers)) ready=0 deadline=$((SECONDS + 120))
  until [ "$ready" -eq "$want" ]; do
    [ $SECONDS -lt $deadline ] || { echo "not ready after 120 s:" >&2; cat "$dir/err" >&2; exit 1; }
    sleep 0.5
    ready=$(curl -s "http://127.0.0.1:$mport/metrics" | grep -c '^appvisor_worker_ready{.*} 1$' || true)
  done
  sleep 2 # let the start-up settle (startup events, store connections)
  local bytes i0 i1 c0 c1 t0 t1
  bytes=$(curl -s "http://127.0.0.1:$mport/metrics" | wc -c)
  # Idle over 5 s, then the scrapes.
  i0=$(cpu_ns); sleep 5; i1=$(cpu_ns)
  c0=$(cpu_ns); t0=$(date +%s%N)
  for _ in $(seq 1 "$scrapes"); do
    curl -s -o /dev/null "http://127.0.0.1:$mport/metrics"
  done
  c1=$(cpu_ns); t1=$(date +%s%N)
  local idle_rate per
  # Idle CPU (ns per ns) times the scrapes' wall span, subtracted.
  idle_rate=$(awk "BEGIN {print ($i1 - $i0) / 5e9}")
  per=$(awk "BEGIN {printf \"%.0f\", (($c1 - $c0) - $idle_rate * ($t1 - $t0)) / $scrapes / 1000}")
  echo "| $name | $bytes | $per µs | $(awk "BEGIN {printf \"%.3f\", $idle_rate * 100}") % | $(awk "BEGIN {printf \"%.3f\", $per / 15e6 * 100}") % |"
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true; pid=
}

echo "| supervisor | page | CPU per scrape (idle subtracted, mean of $scrapes) | idle CPU | one scrape every 15 s |"
echo "|---|---|---|---|---|"
run "1 app x 4 workers" 1 4
run "$apps apps x 1 worker" "$apps" 1
