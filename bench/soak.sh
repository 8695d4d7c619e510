#!/usr/bin/env bash
# The soak (issue 12): DURATION seconds (default 1800) of recycles of every kind
# under load — a leaking app recycled by its memory limit, a touch storm with a
# content change every 10 s, a config reload every 10 s, a kill -9 every 45 s —
# then checks 0 failed requests, >= MIN_RECYCLES of each kind (default
# 150 x DURATION/1800), supervisor RSS and fds flat (first vs last window after
# a warm-up, within 5 %), store keys intact. Prints a markdown table; exits 1 if
# a check fails. See tests/benches/soak.rs.
#
#   bench/soak.sh                 # 30 minutes
#   DURATION=120 bench/soak.sh    # a quick try
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p appvisor --bins -p appvisor-worker --example demo
DURATION="${DURATION:-1800}" cargo bench -p appvisor-e2e --bench soak
