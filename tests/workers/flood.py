#!/usr/bin/env python3
"""A worker that floods its stdout: the output-hardening tests' worker.

Usage: flood.py LINES [RATE]
  Prints LINES numbered lines ("flood <generation> <n> xxx…", 128 bytes each) to
  stdout — RATE lines a second, or as fast as the pipe takes them when RATE is 0
  or absent — then idles until SIGTERM. It needs `ready = "delay:…"` (it sends no
  READY=1) and no listening socket.
"""

import os
import signal
import sys
import time

signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

lines = int(sys.argv[1])
rate = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
gen = os.environ.get("APPVISOR_GENERATION", "?")
out = sys.stdout
start = time.monotonic()
for n in range(lines):
    head = f"flood {gen} {n:08d} "
    out.write(head + "x" * (127 - len(head)) + "\n")
    if rate > 0 and n % 100 == 99:
        out.flush()
        ahead = (n + 1) / rate - (time.monotonic() - start)
        if ahead > 0:
            time.sleep(ahead)
out.flush()
while True:
    signal.pause()
