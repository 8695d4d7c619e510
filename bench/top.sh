#!/usr/bin/env bash
# What a watching `appvisor top` costs the supervisor: its CPU time (utime+stime
# from /proc/PID/stat, all threads, and the same from schedstat in ns) over SECS
# seconds (default 60) without a client, then with `appvisor top` refreshing every
# second in a tmux pane of 80x24, alternating ROUNDS times (default 2) so a drift
# of the machine falls on both sides. Goal: top adds <= 0.1 % of one core.
# The supervisor runs 2 apps x 2 `demo` workers (one with an rss limit, so it is
# sampled every second either way; no leak, so that cost does not drift).
# Also: the CPU one `status` request costs it (1000 of them on one connection).
# Knobs: SECS, ROUNDS, APPVISOR_BIN (default target/release/appvisor), DEMO_BIN
# (default target/release/examples/demo). Needs tmux and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${APPVISOR_BIN:-target/release/appvisor}
demo=${DEMO_BIN:-target/release/examples/demo}
secs=${SECS:-60}
rounds=${ROUNDS:-2}
[ -x "$bin" ] && [ -x "$demo" ] || {
  echo "build first: cargo build --release -p appvisor --bins && cargo build --release -p appvisor-worker --examples" >&2
  exit 2
}
command -v tmux >/dev/null || { echo "needs tmux (apt-get install tmux)" >&2; exit 2; }
bin=$(realpath "$bin")
demo=$(realpath "$demo")
dir=$(mktemp -d /tmp/av-topbench.XXXXXX)
p1=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
p2=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$dir/appvisor.toml" <<EOF
[[app]]
name = "site"
command = ["$demo"]
processes = 2
listen = ["tcp://127.0.0.1:$p1"]
[app.recycle]
rss = "2GiB"
requests = 100000
interval = "24h"
[app.watch]
enabled = false

[[app]]
name = "api"
command = ["$demo"]
processes = 2
listen = ["tcp://127.0.0.1:$p2"]
[app.watch]
enabled = false
EOF
"$bin" run "$dir/appvisor.toml" >"$dir/supervisor.out" 2>"$dir/supervisor.err" &
pid=$!
tmux_() { tmux -S "$dir/tmux.sock" "$@"; }
cleanup() {
  tmux_ kill-server 2>/dev/null || true
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
for _ in $(seq 200); do
  "$bin" -c "$dir/appvisor.toml" status 2>/dev/null | grep -q "^api  running" && break
  sleep 0.1
done
sleep 3 # let the workers' start-up settle

ticks() { # utime + stime of the whole process (all threads), in clock ticks
  awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"
}
ns() { # schedstat run time summed over the threads, ns
  local c=0
  for t in /proc/"$1"/task/*; do c=$((c + $(awk '{print $1}' "$t/schedstat"))); done
  echo "$c"
}
hz=$(getconf CLK_TCK)
measure() { # prints: ticks ns over $secs
  local t0 n0 t1 n1
  t0=$(ticks "$pid"); n0=$(ns "$pid")
  sleep "$secs"
  t1=$(ticks "$pid"); n1=$(ns "$pid")
  echo "$((t1 - t0)) $((n1 - n0))"
}

t_off=0 n_off=0 t_on=0 n_on=0 top_ticks=0
for _ in $(seq "$rounds"); do
  read -r t n < <(measure)
  t_off=$((t_off + t)) n_off=$((n_off + n))
  tmux_ new-session -d -x 80 -y 24 -s top "exec $bin -c $dir/appvisor.toml top"
  for _ in $(seq 200); do
    tmux_ capture-pane -p -t top 2>/dev/null | grep -q "memory of" && break
    sleep 0.1
  done
  top_pid=$(tmux_ list-panes -t top -F '#{pane_pid}')
  top_t0=$(ticks "$top_pid")
  read -r t n < <(measure)
  t_on=$((t_on + t)) n_on=$((n_on + n))
  top_ticks=$((top_ticks + $(ticks "$top_pid") - top_t0))
  tmux_ kill-session -t top
done
# One status request's cost: 1000 on one connection, CPU time of the supervisor.
per_status=$(python3 - "$dir/.appvisor/control.sock" "$pid" <<'PY'
import socket, sys
sock, pid = sys.argv[1], sys.argv[2]
def ns():
    import glob
    return sum(int(open(t + "/schedstat").read().split()[0]) for t in glob.glob(f"/proc/{pid}/task/*"))
s = socket.socket(socket.AF_UNIX); s.connect(sock); r = s.makefile("rb")
n0 = ns()
for _ in range(1000):
    s.sendall(b'{"cmd":"status"}\n'); r.readline()
print(f"{(ns() - n0) / 1000 / 1e6:.3f}")
PY
)
secs=$((secs * rounds))
pct() { awk -v v="$1" -v d="$2" 'BEGIN { printf "%.3f", v / d * 100 }'; }
echo "| supervisor CPU over ${secs} s each ($rounds alternating rounds; 2 apps x 2 workers) | utime+stime | schedstat | % of one core |"
echo "|---|---|---|---|"
echo "| without a client | $((t_off * 1000 / hz)) ms | $((n_off / 1000000)) ms | $(pct "$n_off" "$((secs * 1000000000))") % |"
echo "| with \`appvisor top\` (1 s refresh, 80x24 tmux) | $((t_on * 1000 / hz)) ms | $((n_on / 1000000)) ms | $(pct "$n_on" "$((secs * 1000000000))") % |"
echo "| **added by top** | $(((t_on - t_off) * 1000 / hz)) ms | $(((n_on - n_off) / 1000000)) ms | **$(pct "$((n_on - n_off))" "$((secs * 1000000000))") %** |"
echo "| the top client itself | $((top_ticks * 1000 / hz)) ms | | $(pct "$((top_ticks * 1000 / hz))" "$((secs * 1000))") % |"
echo "| one \`status\` request (mean of 1000) | | $per_status ms | |"
