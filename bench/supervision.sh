#!/usr/bin/env bash
# Supervision figures (issue: supervise an app). Prints a markdown table.
# Needs wrk for the throughput row (apt-get install -y wrk).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace --bins --examples
cargo bench -p appvisor-e2e --bench supervision
