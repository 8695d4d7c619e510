#!/bin/sh
# File-watch benchmark: 100,000 files under bin/, one app watcher.
# Usage: bench/watch/run.sh [FILES]      (default 100000)
set -eu
cd "$(dirname "$0")/../.."
echo "fs.inotify.max_user_watches = $(cat /proc/sys/fs/inotify/max_user_watches)"
echo "fs.inotify.max_queued_events = $(cat /proc/sys/fs/inotify/max_queued_events)"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
cargo build --release -q -p appvisor --example watch_bench
exec ./target/release/examples/watch_bench "$@"
