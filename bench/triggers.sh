#!/usr/bin/env bash
# Trigger figures (issue: recycle triggers). Prints a markdown table.
# The watcher's own figures (100,000 files) come from bench/watch/.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace --bins --examples
cargo bench -p appvisor-e2e --bench triggers
