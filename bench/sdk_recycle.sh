#!/usr/bin/env bash
# The worker SDK's drain under repeated generation replacement, without appvisor:
# worker/examples/recycle_bench.rs plays a minimal supervisor (one socket at fd 3,
# NOTIFY_SOCKET, READY=1 then SIGTERM to the previous generation) around the
# `demo` example while wrk loads the socket, with and without keep-alive.
# Prints a markdown table. Needs wrk (apt-get install -y wrk).
#
#   bench/sdk_recycle.sh     # BENCH_RECYCLES=5 BENCH_EVERY_MS=700 BENCH_CONNECTIONS=4
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { echo "bench/sdk_recycle.sh: wrk is not installed (apt-get install -y wrk)" >&2; exit 1; }
cargo build --release --quiet -p appvisor-worker --example demo --example recycle_bench
exec ./target/release/examples/recycle_bench "$@"
