#!/usr/bin/env python3
"""A worker with no SDK: Python 3 standard library only.

It shows that any program that speaks systemd's socket activation and
sd_notify protocols runs under appvisor unmodified, and it is the non-Rust
worker of appvisor's tests.

Contract, as a worker sees it:
  - the listening socket is fd 3; LISTEN_PID must equal our pid and
    LISTEN_FDS must be at least 1, otherwise the fd is not ours;
  - READY=1 goes to the unix datagram socket named by NOTIFY_SOCKET (a leading
    '@' means an abstract socket);
  - SIGTERM means: stop accepting, finish what is in flight, exit 0.

Endpoints:
  GET /          "pid=<pid> generation=<APPVISOR_GENERATION> worker=<APPVISOR_WORKER>"
  GET /healthz   "ok"
  GET /slow?ms=N answers after N milliseconds (drain tests)

Keep-alive: responses are HTTP/1.0 and the connection closes after each one.
That makes the drain trivially clean: after SIGTERM there is never an idle
keep-alive connection that a client might be reusing at the moment it is
closed, so no client sees a reset. The cost is one TCP handshake per request,
which on loopback is tens of microseconds.

Drain order on SIGTERM: STOPPING=1 is sent first (systemd's meaning: "shutdown
has begun"), then the accept loop stops and our copy of the listening socket is
closed (the supervisor keeps the socket open and the next generation accepts
the backlog), then the threads of in-flight requests are joined, then exit 0.
"""

import os
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

LISTEN_FDS_START = 3


def log(message):
    print(f"py_http: {message}", flush=True)


def inherited_socket():
    """Takes fd 3 if the supervisor passed it to this very process."""
    listen_pid = os.environ.get("LISTEN_PID", "")
    listen_fds = os.environ.get("LISTEN_FDS", "0")
    # Like sd_listen_fds(unset_environment=1): children must not claim the fd.
    for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(var, None)
    if listen_pid != str(os.getpid()):
        sys.exit(f"py_http: LISTEN_PID={listen_pid!r} is not our pid {os.getpid()}; run me under appvisor or systemd")
    try:
        count = int(listen_fds)
    except ValueError:
        sys.exit(f"py_http: LISTEN_FDS={listen_fds!r} is not a number")
    if count < 1:
        sys.exit("py_http: LISTEN_FDS is 0: no listening socket was passed")
    # socket(fileno=) asks the kernel for the family and type of the fd.
    sock = socket.socket(fileno=LISTEN_FDS_START)
    os.set_inheritable(LISTEN_FDS_START, False)
    return sock


def notify(message):
    """Sends one sd_notify datagram; a no-op without NOTIFY_SOCKET."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(message.encode(), path)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    server_version = "py_http"

    def do_GET(self):
        url = urlsplit(self.path)
        if url.path == "/":
            body = "pid={} generation={} worker={}\n".format(
                os.getpid(),
                os.environ.get("APPVISOR_GENERATION", "-"),
                os.environ.get("APPVISOR_WORKER", "-"),
            )
        elif url.path == "/healthz":
            body = "ok\n"
        elif url.path == "/slow":
            ms = int(parse_qs(url.query).get("ms", ["1000"])[0])
            # Tests wait for this line to know the request is in flight.
            log(f"slow request started ({ms} ms)")
            time.sleep(ms / 1000)
            body = f"slept {ms} ms pid={os.getpid()}\n"
        else:
            self.send_error(404)
            return
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args):
        # One line per request would drown the supervisor's log under load.
        pass


class Server(ThreadingHTTPServer):
    # Non-daemon threads that server_close() joins: in-flight requests finish
    # before the process exits.
    daemon_threads = False
    block_on_close = True


def main():
    sock = inherited_socket()
    server = Server(sock.getsockname(), Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = sock
    if sock.family == socket.AF_UNIX:
        # BaseHTTPRequestHandler wants (host, port) for client_address.
        server.get_request = lambda: (sock.accept()[0], ("unix", 0))

    # Block the stop signals in every thread and take them with sigwait() in
    # the main thread: no Python code runs inside a signal handler.
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)

    # A short poll interval: shutdown() waits for the loop's next poll.
    serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    serving.start()
    log(f"listening on {sock.getsockname()} pid {os.getpid()} generation {os.environ.get('APPVISOR_GENERATION', '-')}")
    notify("READY=1")

    signo = signal.sigwait(stop_signals)
    log(f"draining on {signal.Signals(signo).name}")
    notify("STOPPING=1")
    server.shutdown()  # the accept loop has ended when this returns
    serving.join()
    server.server_close()  # closes our copy of the socket, joins request threads
    log("drained, exiting")
    return 0


if __name__ == "__main__":
    sys.exit(main())
