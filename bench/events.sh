#!/usr/bin/env bash
# `appvisor events` over a large restart log: generates LINES event lines (default
# 1,000,000, ~270 MB: every kind the pools write, recycles with their structured
# cause, drains, crashes, startup failures, 4 apps, one event a second ending now)
# split into rotated files of 16 MiB (`events.jsonl.N` … `events.jsonl`, as
# `events_max_size = "16MiB"` with a large `events_keep` leaves them), then times
# `events --stats` (goal: <= 1 s), `--stats --since 24h`, and a filtered listing,
# ROUNDS times each (default 5): wall time and CPU time (user + sys) of the CLI,
# the median of the rounds. Needs a release build of the binary.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release/appvisor
[ -x "$bin" ] || { echo "build first: cargo build --release -p appvisor --bin appvisor" >&2; exit 2; }
lines=${LINES:-1000000}
rounds=${ROUNDS:-5}
dir=$(mktemp -d /tmp/av-bench-events.XXXXXX)
trap 'rm -rf "$dir"' EXIT
mkdir -m 700 "$dir/state"
cat > "$dir/appvisor.toml" <<TOML
[supervisor]
state_dir = "$dir/state"
[[app]]
name = "web"
command = ["true"]
TOML
python3 - "$dir/state/events.jsonl" "$lines" <<'PY'
import json, os, random, sys, time
path, n = sys.argv[1], int(sys.argv[2])
random.seed(9)
max_size = 16 << 20
apps = ["web", "api", "admin", "jobs"]
reasons = [("manual", 0.25), ("file_change", 0.25), ("memory", 0.2), ("requests", 0.15), ("age", 0.1), ("schedule", 0.05)]
def cause(r):
    if r == "manual": return "manual recycle", {"reason": "manual"}
    if r == "file_change": return "modified bin/app.py", {"reason": "file_change", "paths": ["bin/app.py"], "count": 1, "change": "modified"}
    if r == "memory": return "private_memory 312.0 MiB > limit 300.0 MiB", {"reason": "memory", "kind": "private_memory", "bytes": 327155712, "limit": 314572800}
    if r == "requests": return "10000 requests ≥ limit 10000", {"reason": "requests", "count": 10000, "limit": 10000}
    if r == "age": return "age 29.0 h ≥ interval 29 h", {"reason": "age", "age_ms": 104400000, "limit_ms": 104400000}
    return "schedule 03:00", {"reason": "schedule", "at": "03:00"}
def pick():
    x, acc = random.random(), 0
    for r, p in reasons:
        acc += p
        if x < acc: return r
    return reasons[-1][0]
end = time.time()
t0 = end - n
pid = 1000
files, out, size = [], None, 0
def ts(i):
    t = t0 + i
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".%03dZ" % int((t % 1) * 1000)
chunks = []
def emit(e):
    global size
    line = json.dumps(e, ensure_ascii=False, separators=(",", ":")) + "\n"
    b = line.encode()
    if size + len(b) > max_size and chunks:
        files.append(b"".join(chunks)); chunks.clear(); size = 0
    chunks.append(b); size += len(b)
i = 0
gen = {a: 1 for a in apps}
while i < n:
    app = random.choice(apps)
    x = random.random()
    if x < 0.02:
        pid += 1
        emit({"time": ts(i), "app": app, "kind": "crashed", "detail": "exited with signal SIGKILL", "worker": 0, "generation": gen[app], "pid": pid, "uptime_ms": random.randint(1000, 9000000), "signal": "SIGKILL", "stderr_tail": ["killed"]}); i += 1
    elif x < 0.03:
        pid += 1
        emit({"time": ts(i), "app": app, "kind": "startup_failed", "detail": "not ready within startup_timeout 90 s; killed, the previous generation keeps serving", "worker": 0, "generation": gen[app], "pid": pid, "stderr_tail": ["Traceback (most recent call last):", "ImportError: no module named x"]}); i += 1
    else:
        r = pick(); d, c = cause(r)
        gen[app] += 1; old, new = pid, pid + 1; pid += 1
        emit({"time": ts(i), "app": app, "kind": "started", "worker": 0, "generation": gen[app], "pid": new}); i += 1
        emit({"time": ts(i), "app": app, "kind": "recycle", "reason": r, "detail": d, "cause": c, "worker": 0, "generation": gen[app], "old_pid": old, "new_pid": new, "startup_ms": random.randint(200, 600)}); i += 1
        emit({"time": ts(i), "app": app, "kind": "retired", "detail": "exited after drain (exit code 0)", "worker": 0, "generation": gen[app] - 1, "pid": old, "drain_ms": random.randint(5, 2000), "uptime_ms": random.randint(1000, 9000000), "exit_code": 0, "sessions": random.randint(0, 50)}); i += 1
files.append(b"".join(chunks))
for k, data in enumerate(files):
    rank = len(files) - 1 - k
    p = path if rank == 0 else f"{path}.{rank}"
    with open(p, "wb") as f:
        f.write(data)
    os.chmod(p, 0o600)
PY
total=$(cat "$dir"/state/events.jsonl* | wc -l)
bytes=$(cat "$dir"/state/events.jsonl* | wc -c)
nfiles=$(ls "$dir"/state/ | grep -c events.jsonl)
# Warm the page cache: the figure is the reader's, not the disk's.
cat "$dir"/state/events.jsonl* > /dev/null
measure() { # median wall s, median CPU s of ROUNDS runs of the CLI with "$@"
  local walls=() cpus=()
  for _ in $(seq "$rounds"); do
    read -r w u s < <(/usr/bin/time -f "%e %U %S" "$bin" -c "$dir/appvisor.toml" "$@" 2>&1 >/dev/null | tail -1)
    walls+=("$w"); cpus+=("$(awk "BEGIN {print $u + $s}")")
  done
  printf '%s\n' "${walls[@]}" | sort -n | awk '{a[NR]=$1} END {printf "%s ", a[int((NR+1)/2)]}'
  printf '%s\n' "${cpus[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'
}
echo "$total event lines, $(awk "BEGIN {printf \"%.0f\", $bytes/1e6}") MB in $nfiles files; load $(cut -d' ' -f1-3 /proc/loadavg); median of $rounds rounds"
echo
echo "| command | wall | CPU (user + sys) |"
echo "|---|---|---|"
for args in "events --stats" "events --stats --since 24h" "events --stats --json --app web" "events --reason memory --kind recycle -n 20"; do
  # shellcheck disable=SC2086
  read -r w c < <(measure $args)
  echo "| \`appvisor $args\` | $w s | $c s |"
done
