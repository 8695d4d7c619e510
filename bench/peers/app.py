#!/usr/bin/env python3
"""The tiny HTTP app every Python peer of bench/run serves (standard library only).

One module, three ways in, the same response and the same startup:
  - a WSGI callable, `application`, for gunicorn and uWSGI;
  - `python3 app.py`: its own HTTP/1.1 server (keep-alive), taking the listening
    socket from fd 3 under appvisor (LISTEN_FDS, READY=1 on NOTIFY_SOCKET), or
    binding BENCH_PORT itself with SO_REUSEPORT (supervisord, PM2 fork mode, the
    app alone), so that two instances share the port.

Importing the module sleeps BENCH_STARTUP_MS (default 300): the app's own fixed
startup. Each process appends to BENCH_EVENTS (if set) one line when it starts
("start PID TIME") and one when it can serve ("ready PID TIME"), TIME being
time.time(): that is how bench/run sees a new worker, under any peer, without
asking the peer.

Endpoints: GET / -> "hello pid=PID\\n"; GET /grow?mb=N -> allocates and touches N
MiB that stay allocated (the memory-limit scenario).

Stop (SIGTERM or SIGINT, under appvisor, supervisord and PM2 fork mode): stop
accepting and close our copy of the listening socket, answer requests still
arriving on kept-alive connections with `Connection: close`, close idle
connections after a 100 ms grace, wait for in-flight requests, exit 0.
"""

import os
import time

EVENTS = os.environ.get("BENCH_EVENTS")


def record(kind):
    if EVENTS:
        with open(EVENTS, "a") as f:
            f.write(f"{kind} {os.getpid()} {time.time():.6f}\n")


record("start")
time.sleep(int(os.environ.get("BENCH_STARTUP_MS", "300")) / 1000)

HELLO = f"hello pid={os.getpid()}\n".encode()
_held = []


def respond(path):
    """(status, body) for a request path."""
    if path == "/" or path.startswith("/?"):
        return 200, HELLO
    if path.startswith("/grow"):
        mb = int(path.partition("mb=")[2] or "100")
        # b"\x01" * n writes every byte, so the pages are resident at once.
        _held.append(b"\x01" * (mb << 20))
        return 200, f"grew {mb} MiB pid={os.getpid()}\n".encode()
    return 404, b"not found\n"


def application(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    if environ.get("QUERY_STRING"):
        path += "?" + environ["QUERY_STRING"]
    status, body = respond(path)
    start_response(
        "200 OK" if status == 200 else "404 Not Found",
        [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))],
    )
    return [body]


if __name__ != "__main__":
    # Under gunicorn/uWSGI the module is imported by the worker: it can serve now.
    record("ready")


def main():
    import select
    import signal
    import socket
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    draining = threading.Event()
    drain_r, drain_w = os.pipe()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in two writes: without TCP_NODELAY the body
        # waits for the client's delayed ACK (40 ms), capping a connection at
        # 25 requests/s.
        disable_nagle_algorithm = True

        def handle(self):
            # The base class loops on handle_one_request(); waiting for the next
            # request here instead lets a drain close an idle connection.
            self.close_connection = True
            self.handle_one_request()
            while not self.close_connection:
                ready, _, _ = select.select([self.connection, drain_r], [], [])
                if self.connection not in ready:
                    # Draining: a request already on its way still gets an answer.
                    ready, _, _ = select.select([self.connection], [], [], 0.1)
                    if not ready:
                        return
                self.handle_one_request()

        def do_GET(self):
            status, body = respond(self.path)
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            if draining.is_set():
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format, *args):
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = False  # server_close() joins in-flight requests
        block_on_close = True
        request_queue_size = 1024

        def get_request(self):
            # The listening socket is non-blocking (see below); a connection is not.
            conn, addr = self.socket.accept()
            conn.setblocking(True)
            return conn, addr

    if os.environ.get("LISTEN_PID") == str(os.getpid()):
        for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            os.environ.pop(var, None)
        sock = socket.socket(fileno=3)
        os.set_inheritable(3, False)
        # Shared with the other workers: each wakes for a new connection and one
        # takes it. A blocking accept() in the others would wait for the next
        # connection, and a drain with none coming would never end (the worker
        # was SIGKILLed at shutdown_timeout). Non-blocking, a lost race is an
        # error socketserver ignores.
        sock.setblocking(False)
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", int(os.environ["BENCH_PORT"])))
        sock.listen(1024)
    server = Server(sock.getsockname(), Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = sock

    stop = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)
    serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    serving.start()
    record("ready")
    notify = os.environ.get("NOTIFY_SOCKET")
    if notify:
        addr = "\0" + notify[1:] if notify.startswith("@") else notify
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(b"READY=1", addr)
    signal.sigwait(stop)
    draining.set()
    server.shutdown()
    serving.join()
    os.write(drain_w, b"x")
    server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
