#!/usr/bin/env python3
"""A worker that speaks sd_notify only when the test says so.

Usage: notify_probe.py DIR
  Waits for DIR/go, then sends STATUS=synced (a marker: once the supervisor
  shows it, every datagram sent to our NOTIFY_SOCKET before it was handled);
  waits for DIR/go2, then sends READY=1 and X_APPVISOR_REQUESTS=3; then idles
  until SIGTERM. For the test that a stranger's messages are ignored.
"""

import os
import signal
import socket
import sys
import time

signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
directory = sys.argv[1]


def notify(message):
    address = os.environ["NOTIFY_SOCKET"]
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(message.encode(), address)


def wait_for(name):
    while not os.path.exists(os.path.join(directory, name)):
        time.sleep(0.01)


wait_for("go")
notify("STATUS=synced\n")
wait_for("go2")
notify("READY=1\nX_APPVISOR_REQUESTS=3\n")
while True:
    signal.pause()
