//! The seam between the pool's decisions and the operating system.
//!
//! Everything the pool does to or learns from a process goes through
//! [`ProcessTable`]: spawning a worker (fork/exec into its own cgroup, reaper
//! registration, the guard's `+pgid`, output and notify forwarding), signalling it,
//! killing its process group and its cgroup, releasing it from the guard (and
//! removing its cgroup), and the figures triggers read (`/proc` memory and CPU,
//! the HTTP probe, a connection on an idle socket). [`OsProcessTable`] is the real
//! one, over `spawn.rs`, `reaper.rs`, `guard.rs`, `notify.rs` and `probe.rs`; the
//! pool's unit tests use a fake that records what it was asked and lets the test
//! deliver READY, notify messages and exits. The clock is tokio's `Instant`, so those
//! tests run under paused time.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use appvisor_config::{ListenAddress, ProcessConfig};
use nix::unistd::Pid;
use tokio::sync::mpsc;

use crate::guard::Guard;
use crate::output::AppLog;
use crate::reaper::{Exit, Reaper};
use crate::sd_notify::{NotifyMessage, NotifySocket};
use crate::spawn::{spawn, SpawnSpec};
use crate::trigger::memory::{self, MemorySample};

/// A future the pool awaits off its own task (a probe, a wake-up).
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The last lines of a worker's stderr, shared with its output reader.
pub type StderrTail = Arc<Mutex<VecDeque<String>>>;

/// One worker to start.
pub struct SpawnRequest<'a> {
    /// Unique per spawn in this pool (`app.slot.seq`): names the notify socket.
    pub name: &'a str,
    /// The worker's slot and generation: each line of its output in the app's log
    /// carries them (`appvisor logs --worker`).
    pub slot: u32,
    pub generation: u64,
    pub argv: &'a [String],
    pub cwd: &'a Path,
    /// The environment, except `NOTIFY_SOCKET`, which the table adds for the
    /// socket it binds.
    pub env: Vec<(String, String)>,
    /// Listening sockets, passed as fds 3, 4, …
    pub listen_fds: &'a [RawFd],
    pub watchdog: bool,
    /// Credentials, limits and umask of the worker.
    pub process: &'a ProcessConfig,
    /// Where the worker's exit goes (registered before the spawn returns).
    pub exits: mpsc::UnboundedSender<Exit>,
    /// Where its sd_notify messages go, tagged with its pid.
    pub notify: mpsc::UnboundedSender<(i32, NotifyMessage)>,
}

/// A started worker.
pub struct SpawnedWorker {
    pub pid: i32,
    pub tail: StderrTail,
    /// Kept as long as the worker lives (its notify socket; dropping it removes the
    /// socket file).
    pub resources: Box<dyn Send>,
    /// Its cgroup (a directory), shown by `appvisor status`.
    pub cgroup: Option<String>,
}

/// What the pool may do to processes and learn about them. See the module docs.
pub trait ProcessTable: Send + 'static {
    /// Starts a worker in its own process group. Its exit must reach
    /// `request.exits` even if it exits at once: register before returning.
    fn spawn(&mut self, request: SpawnRequest<'_>) -> Result<SpawnedWorker, String>;
    /// Sends `signal` (a Linux signal number) to `pid`.
    fn signal(&mut self, pid: i32, signal: crate::signal::Signal);
    /// SIGKILL to the whole process group `pgid` and to the cgroup of the worker
    /// `pgid` (daemons that left the group with `setsid` included).
    fn kill_group(&mut self, pgid: i32);
    /// The group `pgid` is gone: the guard need not kill it any more, and its
    /// cgroup is removed. Returns the pids of processes it started that escaped
    /// its group and outlive it — found only where it had no cgroup (with one,
    /// they were killed with it).
    fn release(&mut self, pgid: i32) -> Vec<i32>;
    /// Whether `pid` still runs (an escaped process, for `status`).
    fn alive(&self, pid: i32) -> bool;
    /// Memory of `pid`'s process tree; `None` if it cannot be read.
    fn memory(&mut self, pid: i32) -> Option<MemorySample>;
    /// CPU time of `pid` in clock ticks.
    fn cpu_ticks(&mut self, pid: i32) -> Option<u64>;
    /// The history sampler's figures of `pid`'s tree: memory and CPU ticks. `exact`:
    /// the private figure a memory limit is checked against (what [`Self::memory`]
    /// reads); otherwise the real table may estimate it from cheaper files.
    fn sample(&mut self, pid: i32, exact: bool) -> Option<(MemorySample, Option<u64>)> {
        let _ = exact;
        let memory = self.memory(pid)?;
        Some((memory, self.cpu_ticks(pid)))
    }
    fn ticks_per_second(&self) -> f64;
    /// Resident memory of `pid`, for `appvisor status`.
    fn rss(&self, pid: i32) -> Option<u64>;
    /// GET `path` on `address`: did it answer 2xx within `timeout`?
    fn http_ok(&self, address: ListenAddress, path: String, timeout: Duration) -> BoxFuture<bool>;
    /// Resolves once GET `path` on `address` answers 2xx (`ready = "http:…"`),
    /// trying every 25 ms.
    fn wait_http_ready(&self, address: ListenAddress, path: String) -> BoxFuture<()>;
    /// Resolves when a connection waits on any of `fds` (not accepted).
    fn wait_for_connection(&self, fds: Vec<RawFd>) -> BoxFuture<()>;
    /// The worker `pid` died of SIGKILL: the kernel's record that its OOM killer
    /// did it, in words, or `None`. Asked before `kill_group` and `release`.
    fn oom_kill(&mut self, _pid: i32) -> Option<String> {
        None
    }
}

/// The real process table.
#[derive(Debug, Clone)]
pub struct OsProcessTable {
    pub run_dir: PathBuf,
    pub reaper: Reaper,
    pub guard: Guard,
    pub log: AppLog,
    /// Each live worker's cgroup, by pid.
    pub cgroups: Arc<Mutex<HashMap<i32, PathBuf>>>,
    /// Without a cgroup: each live worker's `NOTIFY_SOCKET` value, unique to it and
    /// inherited by everything it starts, to find what escaped its group.
    pub markers: Arc<Mutex<HashMap<i32, String>>>,
    /// What each live worker's OOM verdict compares with (see [`crate::oom`]).
    pub oom: Arc<Mutex<HashMap<i32, crate::oom::OomWatch>>>,
}

impl ProcessTable for OsProcessTable {
    fn spawn(&mut self, request: SpawnRequest<'_>) -> Result<SpawnedWorker, String> {
        // A worker that drops to another user cannot reach the owner-only state
        // dir: its notify socket is an abstract one.
        let other_user = crate::spawn::drops_privileges(request.process);
        let bind = if other_user {
            NotifySocket::bind_abstract
        } else {
            NotifySocket::bind
        };
        let mut notify = bind(&self.run_dir, request.name).map_err(|e| {
            format!(
                "cannot create the notify socket in {}: {e}",
                self.run_dir.display()
            )
        })?;
        let mut env = request.env;
        env.push((
            appvisor_contract::env::NOTIFY_SOCKET.into(),
            notify.env_value.clone(),
        ));
        let cgroup = self.guard.cgroups().and_then(|c| {
            c.worker(request.name)
                .and_then(|dir| {
                    if other_user {
                        // Delegated to the worker's user, as systemd does: it may
                        // manage processes inside (sub-cgroups included).
                        let (uid, gid) = (
                            request.process.user.as_ref().map(|u| u.1),
                            request.process.group.as_ref().map(|g| g.1),
                        );
                        crate::cgroup::chown(&dir, uid, gid)?;
                    }
                    Ok(dir)
                })
                .map_err(|e| {
                    tracing::warn!(worker = request.name, "Cannot create the worker's cgroup ({e}); only its process group will be killed.");
                })
                .ok()
        });
        let spec = SpawnSpec {
            argv: request.argv,
            cwd: request.cwd,
            env,
            listen_fds: request.listen_fds,
            watchdog: request.watchdog,
            cgroup: cgroup.as_deref(),
            process: request.process,
        };
        let spawned = match spawn(&spec) {
            Ok(s) => s,
            Err(e) => {
                if let Some(dir) = cgroup {
                    crate::cgroup::remove_when_empty(dir);
                }
                return Err(e.to_string());
            }
        };
        let pid = spawned.pid;
        let cgroup = match (cgroup, spawned.cgroup_error) {
            (Some(dir), None) => Some(dir),
            (Some(dir), Some(e)) => {
                tracing::warn!(pid, cgroup = %dir.display(), "Cannot place the worker in its cgroup ({e}); only its process group will be killed.");
                crate::cgroup::remove_when_empty(dir);
                None
            }
            (None, _) => None,
        };
        if let Some(dir) = &cgroup {
            self.cgroups.lock().unwrap().insert(pid, dir.clone());
        } else {
            let marker = format!("NOTIFY_SOCKET={}", notify.env_value);
            self.markers.lock().unwrap().insert(pid, marker);
        }
        self.oom
            .lock()
            .unwrap()
            .insert(pid, crate::oom::OomWatch::at_spawn(pid, cgroup.as_deref()));
        // Register before yielding (see reaper's invariant).
        self.reaper.watch(pid, request.exits);
        self.guard.protect(pid);
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let worker = crate::output::WorkerTag {
            pid,
            slot: request.slot,
            generation: request.generation,
        };
        self.log
            .attach(worker, spawned.stdout, spawned.stderr, tail.clone());
        notify.forward(pid, pid, request.notify);
        Ok(SpawnedWorker {
            pid,
            tail,
            resources: Box::new(notify),
            cgroup: cgroup.map(|d| d.display().to_string()),
        })
    }

    fn signal(&mut self, pid: i32, signal: crate::signal::Signal) {
        // A failed `kill` means the process is already gone.
        let _ = crate::signal::send(Pid::from_raw(pid), signal);
    }

    fn kill_group(&mut self, pgid: i32) {
        let _ = crate::signal::kill_group(Pid::from_raw(pgid));
        if let Some(dir) = self.cgroups.lock().unwrap().get(&pgid) {
            crate::cgroup::kill(dir);
        }
    }

    fn release(&mut self, pgid: i32) -> Vec<i32> {
        self.guard.release(pgid);
        self.oom.lock().unwrap().remove(&pgid);
        if let Some(dir) = self.cgroups.lock().unwrap().remove(&pgid) {
            crate::cgroup::remove_when_empty(dir);
        }
        let Some(marker) = self.markers.lock().unwrap().remove(&pgid) else {
            return Vec::new();
        };
        let escaped = crate::cgroup::escaped(pgid, &marker);
        if !escaped.is_empty() {
            tracing::warn!(
                worker = pgid,
                escaped = ?escaped,
                "Processes started by worker {pgid} left its process group and outlive it (no cgroup to kill them): pids {escaped:?}."
            );
        }
        escaped
    }

    fn alive(&self, pid: i32) -> bool {
        // A zombie is gone for this purpose: it holds no port and no file.
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            let state = stat.rsplit_once(')').map(|(_, r)| r.trim_start());
            !matches!(state.and_then(|s| s.chars().next()), Some('Z' | 'X'))
        })
    }

    fn memory(&mut self, pid: i32) -> Option<MemorySample> {
        memory::sample_tree(pid as u32).ok()
    }

    fn cpu_ticks(&mut self, pid: i32) -> Option<u64> {
        crate::probe::cpu_ticks(pid)
    }

    fn oom_kill(&mut self, pid: i32) -> Option<String> {
        let watch = self.oom.lock().unwrap().get(&pid).cloned()?;
        watch.verdict(pid)
    }

    fn sample(&mut self, pid: i32, exact: bool) -> Option<(MemorySample, Option<u64>)> {
        if exact {
            return Some((self.memory(pid)?, self.cpu_ticks(pid)));
        }
        // The worker's cgroup lists its whole tree in one small file.
        let procs: Option<Vec<Pid>> = self.cgroups.lock().unwrap().get(&pid).and_then(|dir| {
            let mut buf = [0u8; 1024];
            let path = dir.join("cgroup.procs");
            let text = crate::procfs::read_small(path.to_str()?, &mut buf).ok()?;
            Some(
                text.split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .map(Pid::from_raw)
                    .collect(),
            )
        });
        let (memory, ticks) =
            crate::procfs::sample_tree_light(Pid::from_raw(pid), procs.as_deref()).ok()?;
        Some((memory, Some(ticks)))
    }

    fn ticks_per_second(&self) -> f64 {
        crate::probe::ticks_per_second()
    }

    fn rss(&self, pid: i32) -> Option<u64> {
        crate::probe::rss_bytes(pid)
    }

    fn http_ok(&self, address: ListenAddress, path: String, timeout: Duration) -> BoxFuture<bool> {
        Box::pin(async move { crate::probe::http_ok(&address, &path, timeout).await })
    }

    fn wait_http_ready(&self, address: ListenAddress, path: String) -> BoxFuture<()> {
        Box::pin(async move {
            while !crate::probe::http_ok(&address, &path, Duration::from_secs(2)).await {
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
    }

    fn wait_for_connection(&self, fds: Vec<RawFd>) -> BoxFuture<()> {
        Box::pin(async move {
            let _ = crate::sockets::wait_for_connection(&fds).await;
        })
    }
}
