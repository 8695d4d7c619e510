#!/usr/bin/env bash
# Session hand-off: how fast a `handoff` worker told to stop writes its dirty
# sessions to the store, and how soon its successor's waiting load goes on.
# Builds and runs worker/examples/sessions_handoff_bench.rs; one table row per round.
#
#   bench/sessions/handoff.sh [SESSIONS [ROUNDS [RUNTIME]]]   # default 100000 3 multi
#
# The store: a redis-server the bench starts on a unix socket in a temp dir, or
# the one APPVISOR_TEST_STORE_URL names (e.g. appvisor's embedded store).
# For a Redis Cluster, use bench/sessions/cluster_handoff.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --quiet -p appvisor-worker --example sessions_handoff_bench
exec ./target/release/examples/sessions_handoff_bench "$@"
