#!/usr/bin/env python3
"""bench/run's runner: appvisor and its peers, side by side, in one run.

Called by `bench/run` (which installs the peers and builds appvisor first); see
bench/README.md. Python 3 standard library only: it starts processes, reads
/proc, and computes medians. The load comes from `bench_load` (the e2e harness's
Rust load generator as a process, tests/examples/bench_load.rs) and, for
throughput, from `wrk`.

Every process it starts gets a session of its own and is remembered by pid; at
exit (normal, error, Ctrl-C, SIGTERM) every one is stopped, with its process
group and the processes found below it (PM2's daemon and gunicorn's re-executed
master are not our children: they are remembered by the pid they write).

How a worker is seen under any peer: the app (bench/peers/app.py, app.js) appends
"start PID TIME" when its process starts and "ready PID TIME" when it can serve
to the file BENCH_EVENTS. Restart completion, new-worker time and recycle start
are read from there, the same way for every peer.
"""

import argparse
import atexit
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PEERS_DIR = os.path.join(ROOT, "bench", "peers")
VENV_BIN = os.path.join(ROOT, "bench", ".venv", "bin")
PY = os.path.join(VENV_BIN, "python3")
PM2 = os.path.join(ROOT, "bench", ".node", "node_modules", ".bin", "pm2")
APPVISOR = os.path.join(ROOT, "target", "release", "appvisor")
LOAD = os.path.join(ROOT, "target", "release", "examples", "bench_load")
APP_PY = os.path.join(PEERS_DIR, "app.py")
APP_JS = os.path.join(PEERS_DIR, "app.js")
SLEEP = shutil.which("sleep") or "/bin/sleep"
STARTUP_MS = 300
CLIENTS = 4
MEM_LIMIT_MB = 100
GROW_MB = 150


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- processes


class Procs:
    """Everything this run started, by pid, stopped at exit."""

    def __init__(self):
        self.popens = []
        self.pids = set()  # started by someone else on our behalf (daemons)

    def spawn(self, cmd, env=None, cwd=None, out=None, stdin=subprocess.DEVNULL, pass_fds=()):
        full_env = dict(os.environ)
        full_env.update(env or {})
        p = subprocess.Popen(
            cmd,
            env=full_env,
            cwd=cwd,
            stdin=stdin,
            stdout=out or subprocess.DEVNULL,
            stderr=subprocess.STDOUT if out else subprocess.DEVNULL,
            start_new_session=True,
            pass_fds=pass_fds,
        )
        self.popens.append(p)
        return p

    def adopt(self, pid):
        self.pids.add(pid)

    def stop_tree(self, pid, sig=signal.SIGKILL):
        for q in [pid] + descendants(pid):
            try:
                os.kill(q, sig)
            except ProcessLookupError:
                pass

    def cleanup(self):
        for p in self.popens:
            if p.poll() is None:
                kids = descendants(p.pid)
                for q in [p.pid] + kids:
                    try:
                        os.kill(q, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    pass
        for pid in list(self.pids):
            if alive(pid):
                self.stop_tree(pid)
        self.popens.clear()
        self.pids.clear()


PROCS = Procs()


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def ppid_map():
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    out[int(d)] = int(f.read().rpartition(")")[2].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    return out


def descendants(pid):
    m = ppid_map()
    kids, todo = [], [pid]
    while todo:
        p = todo.pop()
        for c, pp in m.items():
            if pp == p:
                kids.append(c)
                todo.append(c)
    return kids


def comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


_gunicorn_help = []


def gunicorn_help():
    if not _gunicorn_help:
        _gunicorn_help.append(run([os.path.join(VENV_BIN, "gunicorn"), "--help"], timeout=60).stdout)
    return _gunicorn_help[0]


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_kib(pid):
    """Proportional set size: shared pages (the guard is the same binary as the
    supervisor) counted once across processes."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_ns(pids):
    """CPU time of every thread of `pids`, by (pid, tid): schedstat, in ns."""
    out = {}
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    out[(pid, tid)] = int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                pass
    return out


def cpu_used(before, after):
    # Thread by thread: a thread that left in between must not make it negative.
    return sum(max(0, ns - before.get(k, 0)) for k, ns in after.items())


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what, timeout, cond, step=0.01):
    end = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > end:
            raise TimeoutError(f"{what}: not within {timeout:g} s")
        time.sleep(step)


def http_get(port, path="/", timeout=5.0):
    """One GET on a new connection; the body (read by Content-Length: uWSGI's
    HTTP/1.1 socket keeps the connection open even when asked to close)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed before the headers: {data!r}")
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        m = re.search(rb"(?i)content-length:\s*(\d+)", head)
        want = int(m.group(1)) if m else None
        while want is None or len(body) < want:
            chunk = s.recv(65536)
            if not chunk:
                break
            body += chunk
    return body.decode(errors="replace")


def run(cmd, env=None, timeout=120, check=True):
    full_env = dict(os.environ)
    full_env.update(env or {})
    r = subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {r.returncode}: {(r.stderr or r.stdout).strip()[-400:]}")
    return r


# ---------------------------------------------------------------- the app's own record


class Events:
    """The app's BENCH_EVENTS file: (kind, pid, time) of every worker."""

    def __init__(self, path):
        self.path = path
        open(path, "w").close()

    def read(self):
        out = []
        with open(self.path) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 3:
                    out.append((parts[0], int(parts[1]), float(parts[2])))
        return out

    def live_ready(self):
        return {pid for kind, pid, _ in self.read() if kind == "ready" and alive(pid)}

    def first_after(self, kind, t, exclude=()):
        for k, pid, when in self.read():
            if k == kind and when >= t and pid not in exclude:
                return pid, when
        return None

    def startup_of(self, pid):
        start = ready = None
        for k, p, when in self.read():
            if p == pid:
                if k == "start" and start is None:
                    start = when
                if k == "ready":
                    ready = when
        return (ready - start) if start is not None and ready is not None else None


# ---------------------------------------------------------------- peers


class Peer:
    """One supervisor running the app with `workers` workers on `port`."""

    name = "?"
    kinds = {}  # restart kind -> method name

    def __init__(self, work, workers=2, **opts):
        self.dir = tempfile.mkdtemp(prefix=self.name.replace(" ", "-") + ".", dir=work)
        self.port = free_port()
        self.workers = workers
        self.opts = opts
        self.events = Events(os.path.join(self.dir, "events"))
        self.env = {"BENCH_EVENTS": self.events.path, "BENCH_STARTUP_MS": str(STARTUP_MS), "BENCH_PORT": str(self.port)}
        self.proc = None

    def wait_serving(self, timeout=60):
        wait_for(f"{self.name}: {self.workers} workers ready", timeout, lambda: len(self.events.live_ready()) >= self.workers)

    def wait_replaced(self, old, timeout=60):
        """Until `workers` ready workers are live and none of them is in `old`."""

        def done():
            live = self.events.live_ready()
            return len(live - old) >= self.workers and not (live & old)

        wait_for(f"{self.name}: every worker replaced", timeout, done)

    def supervisor_pids(self):
        """The peer's own processes (not workers)."""
        root = self.root_pid()
        if root is None:
            return []
        workers = {pid for _, pid, _ in self.events.read()}
        return [p for p in [root] + descendants(root) if p not in workers and comm(p) != "sleep"]

    def root_pid(self):
        return self.proc.pid if self.proc else None

    def stop(self):
        if self.proc and self.proc.poll() is None:
            PROCS.stop_tree(self.proc.pid)
            self.proc.wait(10)

    def restart(self, kind):
        getattr(self, self.kinds[kind])()

    def settle(self):
        """Waits until the peer would take another restart (not timed)."""


class Appvisor(Peer):
    name = "appvisor"
    kinds = {"appvisor recycle": "recycle"}

    def config(self):
        o = self.opts
        command = o.get("command") or [PY, APP_PY]
        apps = o.get("apps", 1)
        lines = ['[supervisor]\nstate_dir = ".appvisor"\n']
        for i in range(apps):
            name = "web" if apps == 1 else f"web{i}"
            lines.append(f'[[app]]\nname = "{name}"\ncommand = {json.dumps(command)}\nprocesses = {self.workers}\n')
            if o.get("command"):
                lines.append('ready = "delay:300ms"\n')
            else:
                lines.append(f'listen = ["tcp://127.0.0.1:{self.port}"]\n')
            lines.append("env = { " + ", ".join(f'{k} = "{v}"' for k, v in self.env.items()) + " }\n")
            lines.append("[app.recycle]\nshutdown_timeout = \"30s\"\n")
            if o.get("memory"):
                lines.append(f'private_memory = "{MEM_LIMIT_MB}MiB"\n')
            if o.get("crashes_ok"):
                # kill -9 of a live supervisor's worker every round: the rapid-fail
                # guard (by default 5 crashes in 300 s stop the app) is raised, and a
                # worker counts as stable after 5 s instead of 30 s, so that each kill
                # is a first crash (restarted at once), as the rounds mean it and as
                # the peers (no backoff between crashes by default) treat it.
                lines.append("[app.failure]\nrapid_fail_max_crashes = 1000\nstable_uptime = \"5s\"\n")
            if o.get("watch"):
                lines.append(f'[app.watch]\nenabled = true\npaths = ["{os.path.basename(o["watch"])}"]\n')
            else:
                lines.append("[app.watch]\nenabled = false\n")
        return "".join(lines)

    def start(self):
        self.cfg = os.path.join(self.dir, "appvisor.toml")
        with open(self.cfg, "w") as f:
            f.write(self.config())
        out = open(os.path.join(self.dir, "out.log"), "w")
        self.proc = PROCS.spawn([APPVISOR, "run", self.cfg], cwd=self.dir, out=out)

    def status(self):
        run([APPVISOR, "-c", self.cfg, "status"], timeout=30)

    def recycle(self, app="web"):
        run([APPVISOR, "-c", self.cfg, "recycle", app], timeout=120)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                PROCS.stop_tree(self.proc.pid)


class Pm2(Peer):
    """PM2 with PM2_HOME in this run's temp dir, its version check and banner
    (which fetches from the network on a first call) turned off: see pm2_env()."""

    name = "PM2"
    kinds = {"pm2 reload (cluster)": "reload", "pm2 restart (fork)": "restart_"}

    def pm2_env(self):
        # `share`: another Pm2 peer whose daemon runs this one's app too.
        home = os.path.join((self.opts.get("share") or self).dir, "pm2home")
        os.makedirs(home, exist_ok=True)
        # lib/Client.js runs the version check (an HTTPS call) on the first call
        # unless PM2_HOME/touch exists or PM2_PROGRAMMATIC is set; lib/Worker.js
        # repeats it daily unless PM2_DISABLE_VERSION_CHECK is set; the PM2 Plus
        # agent starts only with PM2_PUBLIC_KEY/PM2_SECRET_KEY (never set here).
        open(os.path.join(home, "touch"), "w").write("bench/run")
        env = {"PM2_HOME": home, "PM2_DISABLE_VERSION_CHECK": "true", "PM2_DISCRETE_MODE": "true", "PM2_NO_INTERACTION": "true"}
        if self.opts.get("worker_interval_ms"):
            # --quick only: its memory check every 2 s instead of 30 s, or the smoke
            # test would spend half a minute waiting for it.
            env["PM2_WORKER_INTERVAL"] = str(self.opts["worker_interval_ms"])
        return env

    def pm2(self, *args, timeout=120):
        return run([PM2, *args], env=self.pm2_env_cache, timeout=timeout)

    def start(self):
        self.pm2_env_cache = self.pm2_env()
        for k in ("PM2_PUBLIC_KEY", "PM2_SECRET_KEY", "KEYMETRICS_PUBLIC", "KEYMETRICS_SECRET"):
            os.environ.pop(k, None)
        o = self.opts
        apps = o.get("apps", 1)
        eco = []
        for i in range(apps):
            app = {"name": self.app_name(i), "instances": self.workers, "env": self.env, "autorestart": True}
            if o.get("command"):
                app.update(script=o["command"][0], args=o["command"][1:], interpreter="none", exec_mode="fork")
            elif o.get("mode") == "cluster":
                app.update(script=APP_JS, exec_mode="cluster")
            else:
                app.update(script=APP_PY, interpreter=PY, exec_mode="fork")
            if o.get("memory"):
                app["max_memory_restart"] = f"{MEM_LIMIT_MB}M"
            if o.get("watch"):
                app.update(watch=[os.path.basename(o["watch"])], cwd=self.dir)
            eco.append(app)
        path = os.path.join(self.dir, "ecosystem.json")
        with open(path, "w") as f:
            json.dump({"apps": eco}, f)
        self.pm2("start", path, timeout=180)
        pidfile = os.path.join(self.pm2_env_cache["PM2_HOME"], "pm2.pid")
        self.daemon = int(wait_for("PM2's pid file", 30, lambda: os.path.exists(pidfile) and open(pidfile).read().strip()))
        PROCS.adopt(self.daemon)

    def app_name(self, i=0):
        if self.opts.get("share"):
            return "web-shared"
        return "web" if self.opts.get("apps", 1) == 1 else f"web{i}"

    def root_pid(self):
        return self.daemon

    def status(self):
        self.pm2("ls")

    def reload(self):
        self.pm2("reload", "web")

    def restart_(self):
        self.pm2("restart", "web")

    def recycle(self, app="web"):
        self.pm2("reload", self.app_name() if self.opts.get("share") else app)

    def stop(self):
        if self.opts.get("share"):
            return  # the daemon is the other peer's, stopped with it
        try:
            self.pm2("kill", timeout=60)
        except Exception as e:  # still stopped below, by pid
            log(f"pm2 kill: {e}")
        if alive(self.daemon):
            PROCS.stop_tree(self.daemon)


class Supervisord(Peer):
    name = "supervisord"
    kinds = {"supervisorctl restart": "restart_"}

    def start(self):
        o = self.opts
        self.conf = os.path.join(self.dir, "supervisord.conf")
        d = self.dir
        text = f"""[unix_http_server]
file={d}/supervisor.sock
[supervisord]
logfile={d}/supervisord.log
pidfile={d}/supervisord.pid
childlogdir={d}
nodaemon=true
[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface
[supervisorctl]
serverurl=unix://{d}/supervisor.sock
"""
        apps = o.get("apps", 1)
        env = ",".join(f'{k}="{v}"' for k, v in self.env.items())
        for i in range(apps):
            name = "web" if apps == 1 else f"web{i}"
            command = " ".join(o.get("command") or [PY, APP_PY])
            text += f"""[program:{name}]
command={command}
process_name=%(program_name)s_%(process_num)02d
numprocs={self.workers}
environment={env}
autorestart=true
stdout_logfile=NONE
stderr_logfile=NONE
"""
        if o.get("memory"):
            # superlance's memmon, on the shortest tick supervisord sends (5 s).
            text += f"""[eventlistener:memmon]
command={VENV_BIN}/memmon -g web={MEM_LIMIT_MB}MB
events=TICK_5
stdout_logfile=NONE
stderr_logfile=NONE
"""
        with open(self.conf, "w") as f:
            f.write(text)
        self.proc = PROCS.spawn([os.path.join(VENV_BIN, "supervisord"), "-c", self.conf], cwd=self.dir, out=open(os.path.join(d, "out.log"), "w"))

    def ctl(self, *args, timeout=120):
        return run([os.path.join(VENV_BIN, "supervisorctl"), "-c", self.conf, *args], timeout=timeout, check=False)

    def status(self):
        self.ctl("status")

    def restart_(self):
        self.ctl("restart", "web:*")

    def recycle(self, app="web"):
        self.ctl("restart", f"{app}:*")


class Uwsgi(Peer):
    name = "uWSGI"
    kinds = {"uWSGI chain reload": "chain", "uWSGI touch-reload": "touch"}

    def start(self):
        o = self.opts
        d = self.dir
        self.chain_file = os.path.join(d, "chain-reload")
        self.touch_file = o.get("watch") or os.path.join(d, "touch-reload")
        # uWSGI compares whole seconds of mtime: start in the past, and make each
        # touch a later second than the last (see touch_file_now).
        self.mtime = int(time.time()) - 10
        for f in (self.chain_file, self.touch_file):
            open(f, "a").close()
            os.utime(f, (self.mtime, self.mtime))
        cmd = [
            os.path.join(VENV_BIN, "uwsgi"), "--master", "--http11-socket", f"127.0.0.1:{self.port}",
            "--wsgi-file", APP_PY, "--processes", str(self.workers), "--lazy-apps",
            "--touch-chain-reload", self.chain_file, "--touch-reload", self.touch_file,
            "--disable-logging", "--die-on-term", "--pidfile", os.path.join(d, "uwsgi.pid"),
            "--listen", "1024",
        ]
        if o.get("fs_reload"):
            cmd += ["--fs-reload", o["fs_reload"]]
        if o.get("memory"):
            cmd += ["--reload-on-rss", str(MEM_LIMIT_MB)]
        self.proc = PROCS.spawn(cmd, env=self.env, cwd=d, out=open(os.path.join(d, "out.log"), "w"))

    def chain(self):
        self.chains = self.log_count("chain reloading complete")
        self.touch_file_now(self.chain_file)

    def touch_file_now(self, path):
        self.mtime = max(int(time.time()), self.mtime + 1)
        os.utime(path, (self.mtime, self.mtime))

    def log_count(self, text):
        with open(os.path.join(self.dir, "out.log"), errors="replace") as f:
            return f.read().count(text)

    def settle(self):
        # uWSGI ignores a touch that comes while a chain reload is still running.
        if getattr(self, "chains", None) is not None:
            wait_for("uWSGI's chain reload to complete", 30, lambda: self.log_count("chain reloading complete") > self.chains)
            self.chains = None

    def touch(self):
        self.touch_file_now(self.touch_file)

    def recycle(self, app="web"):
        self.chain()


class Gunicorn(Peer):
    name = "gunicorn"
    kinds = {"gunicorn HUP": "hup", "gunicorn USR2+WINCH+QUIT": "usr2"}

    def start(self):
        d = self.dir
        self.pidfile = os.path.join(d, "gunicorn.pid")
        cmd = [
            os.path.join(VENV_BIN, "gunicorn"), "-w", str(self.workers), "-b", f"127.0.0.1:{self.port}",
            "--chdir", PEERS_DIR, "--pid", self.pidfile, "--backlog", "1024", "app:application",
        ]
        if "--no-control-socket" in gunicorn_help():
            # gunicorn ≥ 24 opens a control socket in ~/.gunicorn by default: not here.
            cmd.append("--no-control-socket")
        self.log = os.path.join(d, "out.log")
        cmd += ["--error-logfile", self.log]
        if self.opts.get("daemon"):
            # The binary upgrade's WINCH works only on a daemonized master.
            cmd.append("--daemon")
        self.proc = PROCS.spawn(cmd, env=self.env, cwd=d)
        if self.opts.get("daemon"):
            self.master = wait_for("gunicorn's pid file", 30, lambda: self._pid())
            PROCS.adopt(self.master)
        else:
            self.master = self.proc.pid

    def _pid(self):
        try:
            return int(open(self.pidfile).read().strip())
        except (OSError, ValueError):
            return None

    def log_count(self, text):
        with open(self.log, errors="replace") as f:
            return f.read().count(text)

    def root_pid(self):
        return self.master

    def hup(self):
        os.kill(self.master, signal.SIGHUP)

    def recycle(self, app="web"):
        self.hup()

    def usr2(self):
        """gunicorn's binary upgrade: a new master and workers beside the old,
        then the old workers stopped gracefully, then the old master."""
        old_master = self.master
        old = self.events.live_ready()
        os.kill(old_master, signal.SIGUSR2)
        # The new master is the old one's child that is not one of its workers.
        def new_master_pid():
            workers = {pid for _, pid, _ in self.events.read()}
            m = ppid_map()
            return next((c for c, pp in m.items() if pp == old_master and c not in workers and "gunicorn" in cmdline(c)), None)

        new_master = wait_for("gunicorn's new master", 60, new_master_pid)
        PROCS.adopt(new_master)
        wait_for("gunicorn's new workers", 60, lambda: len(self.events.live_ready() - old) >= self.workers)
        # WINCH: the old master stops its workers gracefully (daemonized only, hence
        # --daemon for this kind); then QUIT ends the old master.
        self.promoted = self.log_count("Master has been promoted")
        os.kill(old_master, signal.SIGWINCH)
        wait_for("gunicorn's old workers gone", 60, lambda: not (self.events.live_ready() & old))
        os.kill(old_master, signal.SIGQUIT)
        self.master = new_master

    def settle(self):
        # The new master takes USR2 again only once it has seen its parent go.
        if getattr(self, "promoted", None) is not None:
            wait_for("gunicorn's new master promoted", 30, lambda: self.log_count("Master has been promoted") > self.promoted)
            self.promoted = None

    def stop(self):
        for pid in {self.master, self.proc.pid}:
            if alive(pid):
                PROCS.stop_tree(pid)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass


# ---------------------------------------------------------------- load


class Load:
    """bench_load: CLIENTS connections, every request counted, no retries."""

    def __init__(self, port, keep_alive, max_s=300):
        mode = "keep-alive" if keep_alive else "close"
        self.port = port
        self.stalls = 0
        self.p = PROCS.spawn([LOAD, str(port), str(CLIENTS), mode, str(max_s)], stdin=subprocess.PIPE, out=subprocess.PIPE)

    def flowing(self):
        """Until requests succeed again (8 more). If they do not within 3 s, the
        clients wait on requests the server lost (PM2's cluster reload): the
        server must then answer a fresh connection, and the run goes on."""
        self.p.stdin.write(b"flowing\n")
        self.p.stdin.flush()
        answer = self.p.stdout.readline().decode().strip()
        if answer == "stalled":
            try:
                http_get(self.port, timeout=5)
            except Exception as e:
                raise RuntimeError(f"the load stalled and a fresh request failed: {e}")
            self.stalls += 1
            return
        if answer != "flowing":
            raise RuntimeError(f"the load does not flow: bench_load says {answer or 'nothing (it ended)'}")

    def finish(self):
        out, _ = self.p.communicate(timeout=60)  # closes its stdin: the signal to stop
        return json.loads(out.decode().strip().splitlines()[-1])


def wrk(port, seconds):
    r = run(["wrk", "-t2", f"-c{CLIENTS}", f"-d{seconds}s", f"http://127.0.0.1:{port}/"], timeout=seconds + 30)
    m = re.search(r"Requests/sec:\s+([\d.]+)", r.stdout)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: .*", r.stdout)
    return float(m.group(1)) if m else None, bool(errors)


# ---------------------------------------------------------------- scenarios


class Results:
    """rows[scenario] = {(figure, peer): [values per round]} in insertion order."""

    def __init__(self):
        self.rows = {}
        self.notes = {}
        self.elapsed = {}

    def add(self, scenario, figure, peer, value):
        self.rows.setdefault(scenario, {}).setdefault((figure, peer), []).append(value)
        log(f"  {scenario}: {figure} / {peer} = {value}")

    def note(self, scenario, text):
        self.notes.setdefault(scenario, []).append(text)


def rotated(items, k):
    k %= len(items)
    return items[k:] + items[:k]


class Bench:
    def __init__(self, args):
        self.args = args
        self.quick = args.quick
        self.rounds = args.rounds or (1 if args.quick else 5)
        self.work = tempfile.mkdtemp(prefix="appvisor-bench-run.")
        self.res = Results()
        self.failures = 0

    def scenario(self, key, title, budget_s, setup, body, also=None):
        """Starts the scenario's peers once (`setup` → [(label, peer)]), then runs
        `body(r, deadline, live)` round by round with the same live peers (each
        round measures them one after the other, in a rotated order), then stops
        every one. Bounded by `budget_s`: a round that would end past it is not
        started (noted). `also`: another scenario whose figures it takes too."""
        if self.args.only and not {key, also} & set(self.args.only.split(",")):
            return
        log(f"{key}: {title}")
        self.current = key
        t0 = time.monotonic()
        deadline = t0 + budget_s
        live = []
        try:
            live = setup()
            t_rounds = time.monotonic()
            log(f"  {key}: set-up {t_rounds - t0:.1f} s")
            done = 0
            for r in range(self.rounds):
                # A round that would end past the bound (at the pace so far) is not started.
                pace = (time.monotonic() - t_rounds) / done if done else 0
                if time.monotonic() + pace > deadline:
                    self.res.note(key, f"cut after {done} of {self.rounds} rounds by its time bound ({budget_s} s)")
                    break
                mark = len(PROCS.popens)
                try:
                    body(r, deadline, live)
                except Exception as e:  # a peer that fails is reported, the run goes on
                    self.failures += 1
                    self.res.note(key, f"round {r + 1}: {type(e).__name__}: {e}")
                    log(f"  {key} round {r + 1} failed: {e}")
                finally:
                    # Whatever this round started (load generators) and left running.
                    for p in PROCS.popens[mark:]:
                        if p.poll() is None:
                            PROCS.stop_tree(p.pid)
                done += 1
        finally:
            t_stop = time.monotonic()
            for label, peer in live:
                t_peer = time.monotonic()
                try:
                    peer.stop()
                except Exception as e:
                    log(f"  stopping {peer.name}: {e}")
                if time.monotonic() - t_peer > 2:
                    log(f"  {key}: stopping {label} took {time.monotonic() - t_peer:.1f} s")
            PROCS.cleanup()
            log(f"  {key}: stopping {time.monotonic() - t_stop:.1f} s")
        self.res.elapsed[key] = self.res.elapsed.get(key, 0) + time.monotonic() - t0

    def fail(self, label, e):
        self.failures += 1
        self.res.note(self.current, f"{label}: {type(e).__name__}: {e}")
        log(f"  {self.current} {label} failed: {e}")

    def start_all(self, peers, serving=None, serving_timeout=120):
        """Starts every (label, peer) at once (PM2's start is a blocking command:
        one thread each), waits until each serves; a peer that fails is noted and
        left out of the rounds."""
        errors = {}

        def start(label, peer):
            try:
                peer.start()
            except Exception as e:
                errors[label] = e

        threads = [threading.Thread(target=start, args=lp) for lp in peers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        live = []
        for label, peer in peers:
            try:
                if label in errors:
                    raise errors[label]
                (serving or (lambda p: p.wait_serving(serving_timeout)))(peer)
                live.append((label, peer))
            except Exception as e:
                self.fail(label, e)
                try:
                    peer.stop()
                except Exception:
                    pass
        return live

    def attempt(self, label, fn):
        try:
            return fn()
        except Exception as e:
            self.fail(f"round {self.round + 1}, {label}", e)

    def each(self, r, live, fn, deadline=None):
        """fn(label, peer) for every live peer, in an order rotated by the round."""
        self.round = r
        for label, peer in rotated(live, r):
            if deadline and time.monotonic() > deadline:
                break
            t0 = time.monotonic()
            self.attempt(label, lambda: fn(label, peer))
            log(f"  {self.current} round {r + 1}, {label}: {time.monotonic() - t0:.1f} s")

    # 1. restarts under load
    S1_PER_ROUND = 2  # restarts per round and keep-alive mode: 2 × 2 modes × 5 rounds = 20 per kind

    def s1_setup(self):
        self.stalled = {}
        kinds = [(Appvisor, "appvisor recycle", {}), (Pm2, "pm2 reload (cluster)", {"mode": "cluster"}),
                 (Pm2, "pm2 restart (fork)", {}), (Supervisord, "supervisorctl restart", {}),
                 (Uwsgi, "uWSGI chain reload", {}), (Uwsgi, "uWSGI touch-reload", {}),
                 (Gunicorn, "gunicorn HUP", {}), (Gunicorn, "gunicorn USR2+WINCH+QUIT", {"daemon": True})]
        return self.start_all([(kind, cls(self.work, **opts)) for cls, kind, opts in kinds])

    def s1(self, r, deadline, live):
        n = 1 if self.quick else self.S1_PER_ROUND

        def measure(kind, peer):
            for keep_alive in ((True,) if self.quick else (True, False)):
                mode = "keep-alive" if keep_alive else "no keep-alive"
                peer.wait_serving(30)
                load = Load(peer.port, keep_alive)
                load.flowing()
                took = []
                for _ in range(n):
                    old = peer.events.live_ready()
                    t0 = time.monotonic()
                    peer.restart(kind)
                    peer.wait_replaced(old, timeout=15)
                    took.append(time.monotonic() - t0)
                    peer.settle()
                    load.flowing()  # served by the new workers before the next restart, or the end
                rep = load.finish()
                log(f"    {kind}, {mode}: failed {rep['failed']}, slowest {rep['max_ms']:.0f} ms, stalls {load.stalls}; "
                    f"{rep['errors'][:2]}")
                if load.stalls:
                    self.stalled[(kind, mode)] = self.stalled.get((kind, mode), 0) + load.stalls
                self.res.add("1", f"failed requests per restart, {mode}", kind, rep["failed"] / n)
                self.res.add("1", f"slowest request, {mode} (ms)", kind, round(rep["max_ms"], 1))
                if keep_alive:
                    self.res.add("1", "restart → every worker replaced (ms)", kind, round(statistics.median(took) * 1000))

        self.each(r, live, measure, deadline)

    # 2. file change -> new worker
    def s2_setup(self):
        kinds = [(Appvisor, "appvisor watch (default debounce 200 ms)", "watch"),
                 (Pm2, "PM2 watch", "watch"), (Uwsgi, "uWSGI touch-reload", "watch"),
                 (Uwsgi, "uWSGI fs-reload", "fs_reload")]
        peers = []
        for cls, kind, key in kinds:
            peer = cls(self.work)
            # The watched file lives in the peer's own dir (appvisor's and PM2's paths are relative there).
            watched = os.path.join(peer.dir, "watched.txt")
            with open(watched, "w") as f:
                f.write("0\n")
            peer.opts[key] = watched
            peer.watched = watched
            peers.append((kind, peer))
        return self.start_all(peers)

    def s2(self, r, deadline, live):
        def measure(kind, peer):
            peer.wait_serving(30)
            time.sleep(1.1)  # let the watchers settle (uWSGI's 1 s tick, chokidar's set-up, the last change's workers)
            old = peer.events.live_ready()
            t0 = time.time()
            with open(peer.watched, "w") as f:
                f.write(f"{t0}\n")
            pid, ready = wait_for(f"{kind}: a new worker", 20, lambda: peer.events.first_after("ready", t0, old))
            startup = peer.events.startup_of(pid) or 0
            self.res.add("2", "change → new worker serving, minus its own startup (ms)", kind, round((ready - t0 - startup) * 1000))
            self.res.add("2", "change → new worker serving (ms)", kind, round((ready - t0) * 1000))
            peer.wait_replaced(old, timeout=30)

        self.each(r, live, measure, deadline)

    # 3. memory limit crossed -> recycle started
    def s3_setup(self):
        extra = {"worker_interval_ms": 2000} if self.quick else {}
        pm2 = Pm2(self.work, memory=True, **extra)
        peers = [("appvisor private_memory (1 s check)", Appvisor(self.work, memory=True)),
                 ("PM2 max_memory_restart", pm2),
                 ("uWSGI reload-on-rss", Uwsgi(self.work, memory=True)),
                 ("supervisord + memmon (TICK_5)", Supervisord(self.work, memory=True))]
        live = self.start_all(peers)
        if not self.quick and any(p is pm2 for _, p in live):
            # PM2's own check runs every 30 s, over every app of its daemon at once:
            # its idle crossing is measured on a second app of the same daemon while
            # the first is under load, so one tick serves both (see EXPLAIN). Started
            # after the first: two `pm2 start` at once would race to start the daemon.
            idle = [("PM2 max_memory_restart (idle app)", Pm2(self.work, memory=True, share=pm2))]
            live[2:2] = self.start_all(idle)
        return live

    def s3_cross(self, kind, peer, under_load):
        """Makes one worker cross the limit; returns a function that waits for the
        recycle and records the figure."""
        # uWSGI idle never checks (it checks after a request): 8 s tells as well as 15.
        bound = {"PM2": 40, "appvisor": 8, "uWSGI": 8}.get(peer.name, 15)
        peer.wait_serving(30)
        # Without keep-alive: uWSGI's sync workers each hold one kept-alive
        # connection for as long as it lasts, and /grow would wait behind them.
        load = Load(peer.port, False) if under_load else None
        if load:
            load.flowing()
        answer = http_get(peer.port, f"/grow?mb={GROW_MB}", timeout=30)
        t_cross = time.time()
        pid = int(re.search(r"pid=(\d+)", answer).group(1))

        def finish():
            try:
                t = wait_for("recycle", bound, lambda: (not alive(pid) and time.time())
                             or ((x := peer.events.first_after("start", t_cross)) and x[1]), step=0.005)
                value = round((t - t_cross) * 1000)
            except TimeoutError:
                value = None
            if load:
                load.finish()
            label = "under load" if under_load else "idle"
            self.res.add("3", f"limit crossed → recycle started, {label} (ms)", kind.replace(" (idle app)", ""), value)
            if value is not None:
                wait_for(f"{kind}: the fat worker gone", 60, lambda: not alive(pid))
            else:
                # uWSGI idle never checks: the fat worker is made to go for the next round
                # (touch-reload: every worker at once, sooner than a chain reload).
                peer.touch()

        return finish

    def s3(self, r, deadline, live):
        self.round = r
        by = {label: peer for label, peer in live}
        pm2_idle = by.get("PM2 max_memory_restart (idle app)")
        pm2_load = by.get("PM2 max_memory_restart")
        timer_driven = [("supervisord + memmon (TICK_5)", False), ("uWSGI reload-on-rss", False)]
        if self.quick:
            pm2_sets = [("PM2 max_memory_restart", True)]
        else:
            pm2_sets = [("PM2 max_memory_restart (idle app)", False), ("PM2 max_memory_restart", True)]
        # Phase 1, at once: PM2 (idle and under load, one instance each: its 30 s
        # check dominates), and the idle crossings of supervisord + memmon (5 s tick)
        # and uWSGI (no check without a request).
        waits = []
        for label, under in pm2_sets + ([] if self.quick else timer_driven):
            if label in by:
                f = self.attempt(label, lambda label=label, under=under: self.s3_cross(label, by[label], under))
                if f:
                    waits.append((label, f))
        threads = [threading.Thread(target=self.attempt, args=(label, f)) for label, f in waits]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # Phase 2, one at a time, nothing else loaded: appvisor idle and under
        # load, supervisord and uWSGI under load.
        rest = [("appvisor private_memory (1 s check)", False), ("appvisor private_memory (1 s check)", True),
                ("supervisord + memmon (TICK_5)", True), ("uWSGI reload-on-rss", True)]
        if self.quick:
            rest = [x for x in rest if x[1]]
        for label, under in rotated(rest, r):
            if label in by and time.monotonic() < deadline:
                self.attempt(label, lambda label=label, under=under: self.s3_cross(label, by[label], under)())
        del pm2_idle, pm2_load

    # 4. kill -9 of a worker
    def s4_setup(self):
        peers = [(Appvisor, "appvisor", {"crashes_ok": True}), (Pm2, "PM2 (cluster)", {"mode": "cluster"}),
                 (Supervisord, "supervisord", {}), (Uwsgi, "uWSGI", {}), (Gunicorn, "gunicorn", {})]
        return self.start_all([(kind, cls(self.work, **opts)) for cls, kind, opts in peers])

    def s4(self, r, deadline, live):
        def measure(kind, peer):
            peer.wait_serving(30)
            load = Load(peer.port, True)
            load.flowing()
            victim = sorted(peer.events.live_ready())[0]
            t0 = time.time()
            os.kill(victim, signal.SIGKILL)
            pid, ready = wait_for("a new worker", 30, lambda: peer.events.first_after("ready", t0, {victim}), step=0.005)
            load.flowing()
            rep = load.finish()
            startup = peer.events.startup_of(pid) or 0
            self.res.add("4", "kill -9 → replacement serving (ms)", kind, round((ready - t0) * 1000))
            self.res.add("4", "… minus the app's own startup (ms)", kind, round((ready - t0 - startup) * 1000))
            self.res.add("4", "failed requests (4 clients, keep-alive)", kind, rep["failed"])

        self.each(r, live, measure, deadline)

    # 5 and 6 (its idle part): every supervisor at once, idle, measured over the same windows
    def s6_scales(self):
        return [1, 5] if self.quick else [1, 10, 50]

    def s56_setup(self):
        peers = []
        # 5. footprint: 1 app × 4 workers of the real app
        for cls, kind in [(Appvisor, "appvisor"), (Pm2, "PM2 (fork)"), (Supervisord, "supervisord"), (Uwsgi, "uWSGI"),
                          (Gunicorn, "gunicorn")]:
            p = cls(self.work, workers=4)
            p.scale = None
            peers.append((kind, p))
        # 6. cost as the work grows: N apps × 4 workers that cost nothing (`sleep`)
        for apps in self.s6_scales():
            for cls, kind in [(Appvisor, "appvisor"), (Pm2, "PM2"), (Supervisord, "supervisord")]:
                p = cls(self.work, workers=4, apps=apps, command=[SLEEP, "100000"])
                p.scale = apps
                peers.append((f"{kind} ({apps} × 4)", p))

        def serving(p):
            if p.scale is None:
                return p.wait_serving(120)
            wait_for(f"{p.name}: {p.scale * 4} workers", 180,
                     lambda: sum(1 for q in descendants(p.root_pid()) if comm(q) == "sleep") >= p.scale * 4, step=0.2)

        live = self.start_all(peers, serving=serving)
        time.sleep(2)  # start-up work settles
        return live

    def s56(self, r, deadline, live):
        self.round = r
        window = 5 if self.quick else 20
        sup = {label: p.supervisor_pids() for label, p in live}
        before = {label: cpu_ns(pids) for label, pids in sup.items()}
        t0 = time.monotonic()
        time.sleep(window)
        span = time.monotonic() - t0
        for label, p in live:
            used = cpu_used(before[label], cpu_ns(sup[label]))
            pss = round(sum(pss_kib(q) for q in sup[label]) / 1024, 1)
            cpu = round(used / 1e9 / span * 100, 4)
            if p.scale is None:
                self.res.add("5", "RSS of the main supervisor process (MiB)", label, round(rss_kib(p.root_pid()) / 1024, 1))
                self.res.add("5", "PSS of all its own processes (MiB)", label, pss)
                self.res.add("5", f"supervisor idle CPU over {window} s, all threads (%)", label, cpu)
                if r == 0:
                    names = ", ".join(f"{comm(q)} (pid {q})" for q in sup[label])
                    self.res.note("5", f"{label}: the supervisor's processes: {names}")
            else:
                kind = label.split(" (")[0]
                self.res.add("6", f"{p.scale} × 4: PSS of the supervisor's processes (MiB)", kind, pss)
                self.res.add("6", f"{p.scale} × 4: idle CPU over {window} s (%)", kind, cpu)

        def status(label, p):
            took = []
            t = time.monotonic()
            p.status()
            took.append(time.monotonic() - t)
            self.res.add("6", f"{p.scale} × 4: `status` latency (ms)", label.split(" (")[0], round(statistics.median(took) * 1000))

        self.each(r, [(label, p) for label, p in live if p.scale is not None], status)

    def s6b_setup(self):
        peers = []
        for workers in ([1, 4] if self.quick else [1, 8, 32]):
            for cls, kind, opts in [(Appvisor, "appvisor recycle", {}), (Pm2, "pm2 reload (cluster)", {"mode": "cluster"}),
                                    (Supervisord, "supervisorctl restart", {})]:
                peers.append((f"{kind} [{workers}]", cls(self.work, workers=workers, **opts)))
        return self.start_all(peers, serving_timeout=240)

    def s6b(self, r, deadline, live):
        # Recycle time of one app as its workers grow (the real app, 300 ms startup).
        def measure(label, peer):
            kind, workers = label.split(" [")[0], peer.workers
            peer.wait_serving(60)
            old = peer.events.live_ready()
            t0 = time.monotonic()
            peer.recycle()
            peer.wait_replaced(old, timeout=120)
            took = time.monotonic() - t0
            peer.settle()
            self.res.add("6", f"recycle of one app, {workers} worker{'s' if workers > 1 else ''} → all replaced (ms)", kind,
                         round(took * 1000))

        self.each(r, live, measure, deadline)

    # 7. throughput through the supervisor vs the app alone
    def s7_setup(self):
        pairs = [("appvisor (app.py, 2 workers)", Appvisor, {}, APP_PY, 2),
                 ("PM2 cluster (app.js, 1 worker)", Pm2, {"mode": "cluster"}, APP_JS, 1)]
        peers = []
        for kind, cls, opts, app, workers in pairs:
            peer = cls(self.work, workers=workers, **opts)
            peer.alone_port = free_port()
            ev = Events(os.path.join(peer.dir, "alone-events"))
            interp = PY if app.endswith(".py") else "node"
            env = {"BENCH_PORT": str(peer.alone_port), "BENCH_EVENTS": ev.path, "BENCH_STARTUP_MS": str(STARTUP_MS)}
            if app.endswith(".py"):
                # As appvisor hands it over: one listening socket, made here, shared by
                # the processes on fd 3 (LISTEN_FDS). Each binding the port itself with
                # SO_REUSEPORT would let the kernel hash wrk's 4 connections unevenly.
                listener = socket.create_server(("127.0.0.1", peer.alone_port), backlog=1024)
                peer.alone_socket = listener  # open as long as the peer (the run's end at most)
                fd = listener.fileno()
                for _ in range(workers):
                    PROCS.spawn(["sh", "-c", f'LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" "$1" 3<&{fd}', interp, app],
                                env=env, pass_fds=(fd,))
            else:
                for _ in range(workers):
                    PROCS.spawn([interp, app], env=env)  # stopped with the scenario (PROCS.cleanup)
            wait_for("the app alone", 30, lambda ev=ev, workers=workers: len(ev.live_ready()) >= workers)
            peers.append((kind, peer))
        return self.start_all(peers)

    def s7(self, r, deadline, live):
        seconds = 2

        def measure(kind, peer):
            # Alone and through the supervisor, in an order alternated by the round.
            ports = [peer.alone_port, peer.port] if r % 2 == 0 else [peer.port, peer.alone_port]
            got = {port: wrk(port, seconds)[0] for port in ports}
            a, b = got[peer.alone_port], got[peer.port]
            self.res.add("7", "app alone (req/s)", kind, round(a))
            self.res.add("7", "through the supervisor (req/s)", kind, round(b))
            self.res.add("7", "through the supervisor ÷ alone", kind, round(b / a, 3))

        self.each(r, live, measure, deadline)

    def s8(self):
        """bench/store/run.sh (the store's own benchmark, kept by its owners), once
        per persistence mode; its tables go into the document as they are."""
        if self.args.only and "8" not in self.args.only.split(","):
            return None
        script = os.path.join(ROOT, "bench", "store", "run.sh")
        if self.quick:
            runs = [{"PERSIST": "no", "ROUNDS": "1", "N": "20000", "MEMORY": "0"}]
        else:
            # N = 50,000 requests per -c 50 -P 1 run (the others scale from it: 5,000
            # at -c 1 -P 1, 500,000 at -c 50 -P 16): the two modes × 5 rounds and the
            # 1,000,000-key memory test in ≈ 2 min.
            r = str(self.rounds)
            runs = [{"PERSIST": "no", "ROUNDS": r, "N": "50000", "MEMORY": "1"},
                    {"PERSIST": "everysec", "ROUNDS": r, "N": "50000", "MEMORY": "0"}]
        log("8: the store against redis-server (bench/store/run.sh)")
        t0 = time.monotonic()
        parts = []
        for env in runs:
            command = " ".join(f"{k}={v}" for k, v in env.items()) + " bench/store/run.sh"
            try:
                # BUILD=0: bench/run has built the store's example already.
                out = run(["bash", script], env={**env, "BUILD": "0"}, timeout=900).stdout
            except Exception as e:
                self.failures += 1
                out = f"failed: {e}\n"
            parts.append(f"`{command}`:\n{out.rstrip()}\n")
        self.res.elapsed["8"] = time.monotonic() - t0
        return "\n".join(parts)


# ---------------------------------------------------------------- report

TITLES = {
    "1": "1. Failed requests and the slowest request during restarts under load",
    "2": "2. File change → new worker serving",
    "3": "3. Memory limit crossed → recycle started",
    "4": "4. kill -9 of a worker",
    "5": "5. Footprint: 1 app × 4 workers, idle",
    "6": "6. Cost as the work grows",
    "7": "7. Throughput through the supervisor vs the app alone",
}

EXPLAIN = {
    "1": "2 workers of the same app (`app.py`, 300 ms startup; PM2 cluster mode runs `app.js`), 4 clients of `bench_load` "
         "with and without keep-alive, every request counted, no retries. The eight configurations are started once and "
         "measured one at a time (the others idle on their own ports), in an order rotated each round. Each round makes {n} "
         "restart(s) of each kind per keep-alive mode, so {total} restarts per kind over the run ({half} with keep-alive, {without} "
         "without); a restart counts as done when every worker has been replaced by one that wrote its `ready` line, and "
         "the next one (or the end) waits until requests succeed again (at most 3 s, then a fresh connection must be "
         "answered: PM2's cluster reload loses requests, and their clients wait). A request fails if not answered within "
         "15 s, or if still unanswered 2 s after the load stopped: lost (a peer that is only slow answers it once the other "
         "clients are done; uWSGI's chain reload keeps a client waiting up to 6.3 s while the load runs). "
         "Lower is better; ratio = appvisor recycle ÷ the peer.",
    "2": "Each peer is started once and its watched file rewritten once per round; the figure is the moment the first new worker "
         "can serve (its own `ready` line) minus the moment of the write, minus that worker's own startup (its `start` → `ready`). "
         "Each peer with its default delay (appvisor's debounce is 200 ms, PM2's chokidar has none of its own, uWSGI's "
         "touch-reload polls once a second).",
    "3": f"A worker allocates {GROW_MB} MiB (over a limit of {MEM_LIMIT_MB} MiB) on `/grow`; the figure is the time from the "
         "answer to the first sign of a recycle: a new worker process started, or the fat worker gone. 'idle': no request to "
         "that peer; 'under load': 4 clients without keep-alive on it. Each peer is started once; per round, first at once "
         "the checks driven by a slow timer or by nothing: PM2 (checks every 30 s, every app of its daemon at once, so a "
         "crossing waits 0–30 s, 15 s on average; each round takes one of its ticks and the next round's crossing comes "
         "soon after it, so its figures sit near the top of that range; idle on a second app of the same daemon while "
         "the first is under load), supervisord + memmon idle (5 s tick) and uWSGI idle (it checks only after a request); then "
         "one at a time with nothing else loaded: appvisor idle and under load, supervisord and uWSGI under load. "
         "'—': no recycle within the bound (8 s for appvisor and uWSGI, 40 s for PM2, 15 s for supervisord + memmon; uWSGI "
         "idle is then reloaded, by its touch-reload, for the next round).",
    "4": "One of 2 workers is killed with SIGKILL under load (4 keep-alive clients), once per peer per round on the same "
         "running peers; the figure is the time until its replacement can serve, and the requests that failed meanwhile. "
         "appvisor's rapid-fail guard (by default 5 crashes within 300 s stop the app) is raised to 1,000 here, as the "
         "same app is crashed every round, and its `stable_uptime` (a worker up this long resets the crash backoff; 30 s "
         "by default) is 5 s, so each kill is a first crash, restarted at once, as every peer restarts it: the rounds "
         "come less than 30 s apart.",
    "5": "All peers at once, each with the same app × 4 workers, started once, beside the nine supervisors of "
         "scenario 6 (all idle); each round is one 20 s idle window (5 s with --quick), the same for all fourteen: RSS of the supervisor's own processes (not the workers; appvisor: the "
         "supervisor and its guard, with the embedded store inside), and their CPU time (all threads, "
         "`/proc/PID/task/*/schedstat`).",
    "6": "N apps × 4 workers, each worker `sleep` (a process that costs nothing, so the supervisor's cost is what is "
         "measured; appvisor uses `ready = \"delay:300ms\"`); the nine supervisors (three peers × 1, 10 and 50 apps) run "
         "at once, beside scenario 5's; each round is the idle window of scenario 5, the same for all (its time is "
         "counted there), then `status` of each, one at a time in a rotated order: "
         "`appvisor status`, `pm2 ls`, `supervisorctl status` (wall time of the command, as a user waits for it; one per "
         "round). Then one app of 1, 8 and 32 workers of the real app, the nine running at once, recycled one at a time: "
         "restart command → every worker replaced (PM2 replaces one worker at a time; appvisor a quarter of them at a time, "
         "its default `batch = \"25%\"`: 1, 2 and 8 at once; supervisord stops all then starts all).",
    "7": "`wrk -t2 -c4` (keep-alive), 2 s, against the app alone and under the supervisor (both running throughout; "
         "the order alternated by round). The app alone is as many processes as the supervisor runs, accepting from "
         "one listening socket made by the runner and handed over on fd 3 (`LISTEN_FDS`), as appvisor hands its "
         "socket over. PM2's cluster mode passes each connection through its master.",
}


def fmt(v):
    if v is None:
        return "—"
    if isinstance(v, float) and not v.is_integer():
        return f"{v:,.4g}" if abs(v) < 10 else f"{v:,.1f}"
    return f"{int(v):,}"


def ratio(a, b):
    if a is None or b is None:
        return "—"
    if b == 0:
        return "= (0 and 0)" if a == 0 else "∞"
    return f"{a / b:.2f}×"


class OtherWork:
    """How much CPU time the rest of the machine used while this run measured: the
    system's busy time (/proc/stat: user, nice, system) minus this run's own, which its
    cgroup counts (cpu.stat: every process the run started, daemons that left its
    process tree included, since a process cannot leave its cgroup by forking). The
    load average cannot tell this: it counts the run's own load, so it was "busy"
    whenever the benchmark ran. Interrupt time (loopback traffic) is left out of
    both. Where no cgroup can be made (not root, no cgroup v2), `share()` is None
    and the load average decides, as before."""

    def __init__(self):
        self.cgroup = None
        self.home = None
        try:
            mount = next(line.split()[4] for line in open("/proc/self/mountinfo")
                         if " - cgroup2 " in line)
            own = next(line.strip()[3:] for line in open("/proc/self/cgroup") if line.startswith("0::"))
            home = os.path.join(mount, own.lstrip("/"))
            path = os.path.join(home, f"appvisor-bench-{os.getpid()}")
            os.mkdir(path)
            try:
                with open(os.path.join(path, "cgroup.procs"), "w") as f:
                    f.write(str(os.getpid()))
            except OSError:
                os.rmdir(path)
                raise
            self.cgroup, self.home = path, home
        except (OSError, StopIteration):
            pass
        self.start = self.snap()

    def snap(self):
        fields = open("/proc/stat").readline().split()
        hz = os.sysconf("SC_CLK_TCK")
        busy = sum(int(x) for x in fields[1:4]) / hz
        own = None
        if self.cgroup:
            try:
                for line in open(os.path.join(self.cgroup, "cpu.stat")):
                    if line.startswith("usage_usec "):
                        own = int(line.split()[1]) / 1e6
            except OSError:
                pass
        return time.monotonic(), busy, own

    def share(self):
        """Other work's CPU time since the start ÷ the machine's (all cores)."""
        t1, busy1, own1 = self.snap()
        t0, busy0, own0 = self.start
        if own0 is None or own1 is None or t1 <= t0:
            return None
        other = (busy1 - busy0) - (own1 - own0)
        return max(0.0, other) / ((t1 - t0) * (os.cpu_count() or 1))

    def leave(self):
        """Moves this process back and removes the cgroup (kept while anything the
        run started still lives in it)."""
        if not self.cgroup:
            return
        try:
            with open(os.path.join(self.home, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
            os.rmdir(self.cgroup)
        except OSError:
            pass


def median(vals):
    v = [x for x in vals if x is not None]
    if not v:
        return None
    return statistics.median(v)


def render(bench, meta, store_md):
    res = bench.res
    out = []
    out.append("<!-- bench/run: begin (written by bench/run; edits inside are overwritten) -->")
    out.append("## Side by side: appvisor and its peers in one run (`bench/run`)\n")
    out.append(f"Written by `{meta['command']}` on {meta['date']}. Machine: {meta['machine']}. "
               f"Load average at start {meta['load_start']}, at end {meta['load_end']}. {meta.get('other', '')}"
               f"{bench.rounds} round(s); each scenario starts its peers once and measures them one at a time, round by round, "
               f"in an order rotated each round; each cell is min / **median** / max over the rounds; "
               f"the ratio is appvisor's median ÷ the peer's median. Whole run: {meta['elapsed']}.\n")
    if meta.get("provisional"):
        out.append(f"**Provisional**: {meta['provisional']}\n")
    out.append("Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()) + ".\n")
    for key in ("1", "2", "3", "4", "5", "6", "7"):
        rows = res.rows.get(key)
        if not rows and key not in res.notes:
            continue
        out.append(f"### {TITLES[key]}\n")
        n = 1 if bench.quick else bench.S1_PER_ROUND
        modes = 1 if bench.quick else 2
        out.append(EXPLAIN[key].format(n=n, total=n * modes * bench.rounds, half=n * bench.rounds,
                                       without=n * bench.rounds * (modes - 1))
                   + f" ({res.elapsed.get(key, 0):.0f} s)\n")
        out.append("| figure | supervisor | min | median | max | appvisor ÷ peer |")
        out.append("|---|---|---|---|---|---|")
        figures = {}
        for (figure, peer), vals in (rows or {}).items():
            figures.setdefault(figure, []).append((peer, vals))
        for figure, entries in figures.items():
            mine = next((median(v) for p, v in entries if p.startswith("appvisor")), None)
            for peer, vals in entries:
                present = [x for x in vals if x is not None]
                lo = min(present) if present else None
                hi = max(present) if present else None
                missing = len(vals) - len(present)
                med = median(vals)
                cell_med = f"**{fmt(med)}**" + (f" ({missing} of {len(vals)} —)" if missing else "")
                # Absolute req/s of different apps (app.py, app.js) are not compared.
                rt = "" if peer.startswith("appvisor") or figure.endswith("(req/s)") else ratio(mine, med)
                out.append(f"| {figure} | {peer} | {fmt(lo)} | {cell_med} | {fmt(hi)} | {rt} |")
        out.append("")
        for n in res.notes.get(key, []):
            out.append(f"- {n}")
        if res.notes.get(key):
            out.append("")
    if store_md is not None:
        out.append("### 8. Store: embedded vs redis-server\n")
        out.append(store_md.strip() + f"\n\n({res.elapsed.get('8', 0):.0f} s)\n")
    out.append("<!-- bench/run: end -->")
    return "\n".join(out) + "\n"


def write_doc(path, block):
    """Replaces the bench/run block of `path` (or appends it; or makes the file)."""
    begin, end = "<!-- bench/run: begin", "<!-- bench/run: end -->"
    text = open(path).read() if os.path.exists(path) else ""
    if begin in text and end in text:
        i = text.index(begin)
        j = text.index(end) + len(end)
        text = text[:i] + block.rstrip("\n") + text[j:]
    else:
        text = (text.rstrip("\n") + "\n\n" if text else "") + block
    with open(path, "w") as f:
        f.write(text)


def versions():
    def first_line(cmd, env=None):
        try:
            r = run(cmd, env=env, timeout=60, check=False)
            return (r.stdout.strip() or r.stderr.strip()).splitlines()[0]
        except Exception as e:
            return f"? ({e})"

    v = {
        "appvisor": first_line([APPVISOR, "--version"]).replace("appvisor ", ""),
        # From its package.json: any `pm2` command, even -v, starts a daemon.
        "PM2": json.load(open(os.path.join(ROOT, "bench", ".node", "node_modules", "pm2", "package.json")))["version"],
        "Node": first_line(["node", "--version"]),
        "supervisord": first_line([os.path.join(VENV_BIN, "supervisord"), "--version"]),
        "superlance": first_line([PY, "-c", "import importlib.metadata as m; print(m.version('superlance'))"]),
        "uWSGI": first_line([os.path.join(VENV_BIN, "uwsgi"), "--version"]),
        "gunicorn": first_line([os.path.join(VENV_BIN, "gunicorn"), "--version"]).replace("gunicorn (version ", "").rstrip(")"),
        "Python": first_line([PY, "--version"]).replace("Python ", ""),
        "redis-server": re.sub(r".*v=(\S+).*", r"\1", first_line(["redis-server", "--version"])),
        "wrk": re.sub(r"^wrk (\S+).*", r"\1", first_line(["wrk", "-v"])),
    }
    return v


def machine():
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, Linux {platform.release()}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 round, fewer requests: the smoke test (≤ 3 min)")
    ap.add_argument("--rounds", type=int, help="rounds per scenario (default 5; 1 with --quick)")
    ap.add_argument("--out", help="the document to write (default docs/BENCHMARKS.md; with --quick target/bench-run-quick.md)")
    ap.add_argument("--only", help="comma-separated scenario numbers, e.g. 1,4")
    ap.add_argument("--install-seconds", type=float, default=None)
    args = ap.parse_args()
    for tool in (APPVISOR, LOAD, PY, PM2):
        if not os.path.exists(tool):
            sys.exit(f"bench/run: {tool} is missing; run bench/run (it installs and builds) rather than this file")

    # Before anything is started, so every process of the run is in its cgroup.
    other = OtherWork()
    atexit.register(other.leave)  # atexit runs last-in first: after the cleanup
    atexit.register(PROCS.cleanup)

    def on_signal(signo, _frame):
        PROCS.cleanup()
        sys.exit(128 + signo)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    t0 = time.monotonic()
    load_start = open("/proc/loadavg").read().split()[:3]
    bench = Bench(args)
    meta = {
        "command": " ".join(["bench/run"] + [a for i, a in enumerate(sys.argv[1:], 1)
                                             if "--install-seconds" not in (a, sys.argv[i - 1])]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "load_start": " ".join(load_start),
        "versions": versions(),
    }
    q = args.quick
    # Time bounds (s), safety nets a normal run does not reach (a full run took
    # 17 min of measurements on 2 cores: scenario 1 331 s, 3 159 s, 5 and 6 136 +
    # 139 s, the store 108 s); a scenario that reaches its bound stops there with a note.
    bench.scenario("1", TITLES["1"], 120 if q else 660, bench.s1_setup, bench.s1)
    for (kind, mode), n in getattr(bench, "stalled", {}).items():
        bench.res.note("1", f"{kind}, {mode}: {n} time(s) no request succeeded within 3 s after a restart: the clients "
                            "waited on requests the peer had lost (each counted failed); "
                            "the run went on once a fresh connection was answered.")
    bench.scenario("2", TITLES["2"], 40 if q else 120, bench.s2_setup, bench.s2)
    bench.scenario("3", TITLES["3"], 90 if q else 300, bench.s3_setup, bench.s3)
    bench.scenario("4", TITLES["4"], 40 if q else 200, bench.s4_setup, bench.s4)
    bench.scenario("5", TITLES["5"], 60 if q else 300, bench.s56_setup, bench.s56, also="6")
    bench.scenario("6", TITLES["6"], 90 if q else 300, bench.s6b_setup, bench.s6b)
    bench.scenario("7", TITLES["7"], 40 if q else 120, bench.s7_setup, bench.s7)
    store_md = bench.s8()
    load_end = open("/proc/loadavg").read().split()[:3]
    meta["load_end"] = " ".join(load_end)
    elapsed = time.monotonic() - t0
    if args.install_seconds is not None:
        total = elapsed + args.install_seconds
        meta["elapsed"] = (f"{total / 60:.1f} min from the command to this document: {args.install_seconds:.0f} s "
                           f"installing the peers while appvisor builds, then {elapsed / 60:.1f} min of measurements")
    else:
        meta["elapsed"] = f"{elapsed / 60:.1f} min of measurements"
    share = other.share()
    if share is not None:
        meta["other"] = (f"Other work on the machine during the run: {share * 100:.1f} % of its CPU time "
                         f"(/proc/stat's busy time less the run's own, which its cgroup counts). ")
        if share > 0.10:
            meta["provisional"] = (f"other work used {share * 100:.0f} % of the machine's CPU time during the run: "
                                   f"absolute figures and latencies are inflated; compare ratios only.")
    elif max(float(load_start[0]), float(load_end[0])) > (os.cpu_count() or 1) * 0.75:
        meta["provisional"] = (f"the machine was busy (load average {meta['load_start']} → {meta['load_end']} on "
                               f"{os.cpu_count()} cores): absolute figures and latencies are inflated; compare ratios only.")
    block = render(bench, meta, store_md)
    out = args.out or (os.path.join(ROOT, "target", "bench-run-quick.md") if q else os.path.join(ROOT, "docs", "BENCHMARKS.md"))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    write_doc(out, block)
    print(block)
    log(f"written to {out} in {elapsed:.0f} s")
    shutil.rmtree(bench.work, ignore_errors=True)
    # The smoke test's verdict: every round ran, and every scenario asked for has
    # appvisor's figures and at least one peer's.
    missing = [k for k in TITLES if (not args.only or k in args.only.split(","))
               and len({peer for _, peer in bench.res.rows.get(k, {})}) < 2]
    if bench.failures or missing:
        log(f"bench/run: {bench.failures} round(s) failed; scenarios without figures: {', '.join(missing) or 'none'}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
