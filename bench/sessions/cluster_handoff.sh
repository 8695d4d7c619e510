#!/usr/bin/env bash
# Session hand-off to a Redis Cluster: three redis-server masters on loopback
# (joined by redis-cli --cluster create), then the sessions_handoff_bench example
# pointed at one node's URL, as a worker would be.
#
#   bench/sessions/cluster_handoff.sh [SESSIONS [ROUNDS]]   # default 100000 3
set -euo pipefail

SESSIONS=${1:-100000}
ROUNDS=${2:-3}
root=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d /tmp/appvisor-cluster-bench.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

for tool in redis-server redis-cli python3; do
    command -v "$tool" >/dev/null || { echo "bench/sessions: $tool is not installed (apt-get install redis-server redis-tools)" >&2; exit 1; }
done
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

echo "building the bench (release)…" >&2
cargo build --release --quiet -p appvisor-worker --example sessions_handoff_bench --manifest-path "$root/Cargo.toml"

nodes=()
for _ in 1 2 3; do
    port=$(free_port); bus=$(free_port)
    mkdir -p "$work/$port"
    redis-server --port "$port" --bind 127.0.0.1 --cluster-enabled yes --cluster-port "$bus" \
        --save '' --appendonly no --dir "$work/$port" --logfile "$work/$port/redis.log" &
    pids+=($!)
    nodes+=("127.0.0.1:$port")
done
for node in "${nodes[@]}"; do
    for _ in $(seq 100); do
        [[ $(redis-cli -p "${node#*:}" ping 2>/dev/null) == PONG ]] && break
        sleep 0.1
    done
done
redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >/dev/null
for node in "${nodes[@]}"; do
    for _ in $(seq 300); do
        redis-cli -p "${node#*:}" cluster info | grep -q cluster_state:ok && break
        sleep 0.1
    done
done
echo "cluster: ${nodes[*]}" >&2
APPVISOR_TEST_STORE_URL="redis://${nodes[0]}" \
    "$root/target/release/examples/sessions_handoff_bench" "$SESSIONS" "$ROUNDS" multi
