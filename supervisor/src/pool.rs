//! The pool: one app's workers, and the only place that starts and stops them.
//!
//! A pool is an actor. [`PoolHandle`] queues commands (recycle, start, stop,
//! status, shutdown); the pool's task owns every worker of the app and reacts to
//! commands, to worker exits (from the reaper), to sd_notify messages, and to its
//! own deadlines (startup timeouts, drain kills, crash backoff).
//!
//! # One recycle
//! For each worker slot in turn: spawn a *candidate* of the next generation on the
//! same listening sockets; when it is ready, swap it in (event `recycle`, one line
//! with the reason), send `stop_signal` to the old worker, which drains and exits
//! (event `retired`), or is SIGKILLed with its whole process group after
//! `shutdown_timeout` (event `killed`). Slots go one at a time, so capacity never
//! drops. A candidate that exits or misses `startup_timeout` is killed, the old
//! worker keeps serving, and `startup_failed` is logged with its last stderr lines.
//! Recycle requests that arrive while one is running coalesce into exactly one
//! follow-up recycle.
//!
//! With `overlapped = false` the old worker is stopped first, then the new one
//! started (apps holding exclusive resources).
//!
//! # Crashes
//! An unexpected exit is restarted after a capped exponential backoff that resets
//! once a worker stays up `stable_uptime`. `rapid_fail_max_crashes` crashes (or
//! startup failures) within `rapid_fail_interval` stop the app:
//! `stopped (rapid-fail)`, until `appvisor start APP`.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use appvisor_config::{AppConfig, ListenAddress, ReadyCheck};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::events::{Event, EventLog};
use crate::guard::Guard;
use crate::notify::{NotifyMessage, NotifySocket};
use crate::output::AppLog;
use crate::reaper::{signal_name, Exit, ExitStatus, Reaper};
use crate::reason::RecycleReason;
use crate::sockets::BoundSocket;
use crate::spawn::{spawn, SpawnSpec};

/// Reply to a command: a line for the user, or an error for the user.
pub type Reply = Result<String, String>;

/// What the pool can be asked to do.
#[derive(Debug)]
pub enum PoolCommand {
    Recycle {
        reason: RecycleReason,
        done: Option<oneshot::Sender<Reply>>,
    },
    Start {
        done: oneshot::Sender<Reply>,
    },
    Stop {
        done: oneshot::Sender<Reply>,
    },
    Status {
        reply: oneshot::Sender<AppStatus>,
    },
    /// Stop every worker and end the pool's task.
    Shutdown {
        done: oneshot::Sender<()>,
    },
}

/// The address of a pool.
#[derive(Debug, Clone)]
pub struct PoolHandle {
    pub name: String,
    tx: mpsc::UnboundedSender<PoolCommand>,
}

impl PoolHandle {
    pub fn send(&self, cmd: PoolCommand) -> bool {
        self.tx.send(cmd).is_ok()
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> PoolCommand) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        if !self.send(make(tx)) {
            return None;
        }
        rx.await.ok()
    }

    pub async fn recycle(&self, reason: RecycleReason) -> Reply {
        self.ask(|done| PoolCommand::Recycle {
            reason,
            done: Some(done),
        })
        .await
        .unwrap_or_else(|| Err(format!("app {:?} is shutting down", self.name)))
    }

    /// Queues a recycle without waiting for it (triggers use this).
    pub fn request_recycle(&self, reason: RecycleReason) {
        self.send(PoolCommand::Recycle { reason, done: None });
    }

    pub async fn start(&self) -> Reply {
        self.ask(|done| PoolCommand::Start { done })
            .await
            .unwrap_or_else(|| Err(format!("app {:?} is shutting down", self.name)))
    }

    pub async fn stop(&self) -> Reply {
        self.ask(|done| PoolCommand::Stop { done })
            .await
            .unwrap_or_else(|| Err(format!("app {:?} is shutting down", self.name)))
    }

    pub async fn status(&self) -> Option<AppStatus> {
        self.ask(|reply| PoolCommand::Status { reply }).await
    }

    pub async fn shutdown(&self) {
        let _ = self.ask(|done| PoolCommand::Shutdown { done }).await;
    }
}

/// What `appvisor status` shows for one app.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppStatus {
    pub name: String,
    /// `running`, `starting`, `stopping`, `stopped`, `stopped (rapid-fail)`.
    pub state: String,
    pub listen: Vec<String>,
    pub workers: Vec<WorkerStatus>,
    pub recycles: u64,
    pub crashes: u64,
    pub last_recycle: Option<LastRecycle>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerStatus {
    pub worker: u32,
    pub pid: i32,
    pub generation: u64,
    /// `starting`, `ready`, `draining`.
    pub state: String,
    pub uptime_ms: u64,
    pub rss: Option<u64>,
    pub requests: u64,
    pub status: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LastRecycle {
    pub time: String,
    pub reason: String,
    pub detail: String,
}

/// Everything a pool needs from the supervisor.
#[derive(Debug, Clone)]
pub struct PoolContext {
    pub run_dir: PathBuf,
    pub events: EventLog,
    pub reaper: Reaper,
    pub guard: Guard,
    pub log: AppLog,
    /// Extra environment for workers (the store URL, session settings).
    pub extra_env: Vec<(String, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Serving in its slot.
    Current,
    /// The next generation for its slot, not yet ready.
    Candidate,
    /// Told to stop; draining.
    Retiring,
}

#[derive(Debug)]
struct Worker {
    pid: i32,
    slot: u32,
    generation: u64,
    role: Role,
    started: Instant,
    ready_at: Option<Instant>,
    /// Candidate/initial start: must be ready by then.
    startup_deadline: Option<Instant>,
    /// `ready = "delay:…"`: ready at this instant.
    ready_after: Option<Instant>,
    retire_started: Option<Instant>,
    kill_at: Option<Instant>,
    killed: bool,
    status: Option<String>,
    requests: u64,
    tail: Arc<Mutex<VecDeque<String>>>,
    _notify: NotifySocket,
}

impl Worker {
    fn is_ready(&self) -> bool {
        self.ready_at.is_some()
    }
}

#[derive(Debug, Default)]
struct Slot {
    current: Option<i32>,
    candidate: Option<i32>,
    /// A crashed worker is restarted at this instant.
    restart_at: Option<Instant>,
    backoff: Duration,
}

#[derive(Debug)]
struct RecycleJob {
    reason: RecycleReason,
    generation: u64,
    next_slot: u32,
    /// Non-overlapped: the slot's old worker was told to stop; start the candidate
    /// when it is gone.
    waiting_for_stop: Option<i32>,
    started: Instant,
    swaps: Vec<(Option<i32>, i32)>,
    waiters: Vec<oneshot::Sender<Reply>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AppState {
    Running,
    Stopping { rapid_fail: bool },
    Stopped,
    RapidFailStopped,
}

enum Internal {
    Exit(Exit),
    ProbeOk(i32),
}

/// Starts the pool's task for `app` on `sockets` and returns its handle. The
/// workers are started at once.
pub fn start_pool(app: AppConfig, sockets: Vec<BoundSocket>, ctx: PoolContext) -> PoolHandle {
    let (tx, rx) = mpsc::unbounded_channel();
    let handle = PoolHandle {
        name: app.name.clone(),
        tx,
    };
    let (itx, irx) = mpsc::unbounded_channel();
    let (ntx, nrx) = mpsc::unbounded_channel();
    let slots = (0..app.processes).map(|_| Slot::default()).collect();
    let pool = Pool {
        app,
        sockets,
        ctx,
        slots,
        workers: HashMap::new(),
        job: None,
        pending: None,
        state: AppState::Running,
        generation: 0,
        spawn_seq: 0,
        crashes: VecDeque::new(),
        total_crashes: 0,
        recycles: 0,
        last_recycle: None,
        start_waiters: Vec::new(),
        stop_waiters: Vec::new(),
        shutdown_waiter: None,
        internal_tx: itx,
        notify_tx: ntx,
    };
    tokio::spawn(pool.run(rx, irx, nrx));
    handle
}

struct Pool {
    app: AppConfig,
    sockets: Vec<BoundSocket>,
    ctx: PoolContext,
    slots: Vec<Slot>,
    workers: HashMap<i32, Worker>,
    job: Option<RecycleJob>,
    /// A recycle asked for while `job` runs: done once, after it.
    pending: Option<(RecycleReason, Vec<oneshot::Sender<Reply>>)>,
    state: AppState,
    generation: u64,
    spawn_seq: u64,
    crashes: VecDeque<Instant>,
    total_crashes: u64,
    recycles: u64,
    last_recycle: Option<LastRecycle>,
    start_waiters: Vec<oneshot::Sender<Reply>>,
    stop_waiters: Vec<oneshot::Sender<Reply>>,
    shutdown_waiter: Option<oneshot::Sender<()>>,
    internal_tx: mpsc::UnboundedSender<Internal>,
    notify_tx: mpsc::UnboundedSender<(i32, NotifyMessage)>,
}

impl Pool {
    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<PoolCommand>,
        mut internal: mpsc::UnboundedReceiver<Internal>,
        mut notify: mpsc::UnboundedReceiver<(i32, NotifyMessage)>,
    ) {
        self.start_all();
        loop {
            if self.shutdown_waiter.is_some() && self.workers.is_empty() {
                if let Some(w) = self.shutdown_waiter.take() {
                    let _ = w.send(());
                }
                return;
            }
            let deadline = self.next_deadline();
            tokio::select! {
                cmd = commands.recv() => match cmd {
                    Some(cmd) => self.on_command(cmd),
                    None => {
                        // Every handle dropped: stop like a shutdown.
                        if self.shutdown_waiter.is_none() {
                            let (tx, _rx) = oneshot::channel();
                            self.on_command(PoolCommand::Shutdown { done: tx });
                        }
                    }
                },
                Some(msg) = internal.recv() => match msg {
                    Internal::Exit(exit) => self.on_exit(exit),
                    Internal::ProbeOk(pid) => self.on_ready(pid),
                },
                Some((pid, m)) = notify.recv() => self.on_notify(pid, m),
                _ = sleep_until_opt(deadline) => self.on_deadlines(),
            }
        }
    }

    fn event(&self, kind: &str) -> Event {
        Event::new(&self.app.name, kind)
    }

    fn emit(&self, e: Event) {
        self.ctx.events.emit(e);
    }

    // ---- commands -------------------------------------------------------------

    fn on_command(&mut self, cmd: PoolCommand) {
        match cmd {
            PoolCommand::Recycle { reason, done } => self.request_recycle(reason, done),
            PoolCommand::Start { done } => match self.state {
                AppState::Running => {
                    let _ = done.send(Ok(format!("{}: already running", self.app.name)));
                }
                AppState::Stopping { .. } => {
                    let _ = done.send(Err(format!(
                        "{}: still stopping; try again once `appvisor status` says stopped",
                        self.app.name
                    )));
                }
                AppState::Stopped | AppState::RapidFailStopped => {
                    self.crashes.clear();
                    self.state = AppState::Running;
                    self.start_waiters.push(done);
                    self.start_all();
                }
            },
            PoolCommand::Stop { done } => match self.state {
                AppState::Stopped | AppState::RapidFailStopped => {
                    let _ = done.send(Ok(format!("{}: already stopped", self.app.name)));
                }
                _ => {
                    self.stop_waiters.push(done);
                    self.stop_all(false);
                }
            },
            PoolCommand::Status { reply } => {
                let _ = reply.send(self.status());
            }
            PoolCommand::Shutdown { done } => {
                self.shutdown_waiter = Some(done);
                if !matches!(self.state, AppState::Stopped | AppState::RapidFailStopped) {
                    self.stop_all(false);
                }
            }
        }
    }

    fn request_recycle(&mut self, reason: RecycleReason, done: Option<oneshot::Sender<Reply>>) {
        if self.state != AppState::Running || self.shutdown_waiter.is_some() {
            if let Some(done) = done {
                let _ = done.send(Err(format!(
                    "{}: not running ({}); `appvisor start {}` first",
                    self.app.name,
                    self.state_name(),
                    self.app.name
                )));
            }
            return;
        }
        if self.job.is_some() {
            // Coalesce: one follow-up recycle, whatever number of requests arrive.
            let (_, waiters) = self
                .pending
                .get_or_insert_with(|| (reason.clone(), Vec::new()));
            if let Some(done) = done {
                waiters.push(done);
            }
            return;
        }
        self.begin_job(reason, done.into_iter().collect());
    }

    fn begin_job(&mut self, reason: RecycleReason, waiters: Vec<oneshot::Sender<Reply>>) {
        self.generation += 1;
        self.job = Some(RecycleJob {
            reason,
            generation: self.generation,
            next_slot: 0,
            waiting_for_stop: None,
            started: Instant::now(),
            swaps: Vec::new(),
            waiters,
        });
        self.advance_job();
    }

    /// Moves the recycle job on: starts the next slot's candidate, or finishes.
    fn advance_job(&mut self) {
        let Some(job) = self.job.as_mut() else { return };
        if job.waiting_for_stop.is_some() {
            return;
        }
        let slot = job.next_slot as usize;
        if slot >= self.slots.len() {
            self.finish_job(Ok(()));
            return;
        }
        if self.slots[slot].candidate.is_some() {
            return;
        }
        let generation = job.generation;
        if let Some(old) = self.slots[slot].current {
            if !self.app.recycle.overlapped {
                job.waiting_for_stop = Some(old);
                self.retire(old);
                return;
            }
        }
        self.slots[slot].restart_at = None;
        if let Err(msg) = self.spawn_worker(slot as u32, generation, Role::Candidate) {
            self.emit(self.event("startup_failed").detail(msg.clone()));
            self.count_crash();
            self.finish_job(Err(msg));
        }
    }

    fn finish_job(&mut self, result: Result<(), String>) {
        let Some(job) = self.job.take() else { return };
        let reply = match &result {
            Ok(()) => {
                let swaps: Vec<String> = job
                    .swaps
                    .iter()
                    .map(|(o, n)| match o {
                        Some(o) => format!("{o}→{n}"),
                        None => format!("→{n}"),
                    })
                    .collect();
                Ok(format!(
                    "{}: recycled {} worker(s) to generation {} in {} ms ({}): {}",
                    self.app.name,
                    job.swaps.len(),
                    job.generation,
                    job.started.elapsed().as_millis(),
                    job.reason.describe(),
                    swaps.join(", ")
                ))
            }
            Err(e) => Err(format!(
                "{}: recycle failed, the previous generation keeps serving: {e}",
                self.app.name
            )),
        };
        for w in job.waiters {
            let _ = w.send(reply.clone());
        }
        if let Some((reason, waiters)) = self.pending.take() {
            if self.state == AppState::Running && self.shutdown_waiter.is_none() {
                self.begin_job(reason, waiters);
            } else {
                for w in waiters {
                    let _ = w.send(Err(format!("{}: not running", self.app.name)));
                }
            }
        }
    }

    fn abort_job(&mut self, why: &str) {
        if let Some(job) = self.job.take() {
            for w in job.waiters {
                let _ = w.send(Err(format!("{}: recycle aborted: {why}", self.app.name)));
            }
        }
        if let Some((_, waiters)) = self.pending.take() {
            for w in waiters {
                let _ = w.send(Err(format!("{}: recycle aborted: {why}", self.app.name)));
            }
        }
    }

    fn start_all(&mut self) {
        self.generation += 1;
        let generation = self.generation;
        for slot in 0..self.slots.len() {
            if self.slots[slot].current.is_none() && self.slots[slot].candidate.is_none() {
                if let Err(msg) = self.spawn_worker(slot as u32, generation, Role::Current) {
                    self.emit(self.event("startup_failed").detail(msg));
                    self.on_crash_of_slot(slot as u32, None);
                }
            }
        }
    }

    /// Stops every worker (graceful, then SIGKILL after `shutdown_timeout`).
    fn stop_all(&mut self, rapid_fail: bool) {
        self.abort_job(if rapid_fail {
            "rapid-fail protection stopped the app"
        } else {
            "the app is stopping"
        });
        self.state = AppState::Stopping { rapid_fail };
        for slot in &mut self.slots {
            slot.restart_at = None;
        }
        let pids: Vec<i32> = self
            .workers
            .values()
            .filter(|w| w.role != Role::Retiring)
            .map(|w| w.pid)
            .collect();
        for pid in pids {
            self.retire(pid);
        }
        for w in self.start_waiters.drain(..) {
            let _ = w.send(Err(format!(
                "{}: stopped before it was ready",
                self.app.name
            )));
        }
        self.check_stopped();
    }

    fn check_stopped(&mut self) {
        if let AppState::Stopping { rapid_fail } = self.state {
            if self.workers.is_empty() {
                self.state = if rapid_fail {
                    AppState::RapidFailStopped
                } else {
                    AppState::Stopped
                };
                if !rapid_fail {
                    self.emit(self.event("stopped"));
                }
                for w in self.stop_waiters.drain(..) {
                    let _ = w.send(Ok(format!("{}: stopped", self.app.name)));
                }
            }
        }
    }

    // ---- workers --------------------------------------------------------------

    fn spawn_worker(&mut self, slot: u32, generation: u64, role: Role) -> Result<i32, String> {
        self.spawn_seq += 1;
        let notify_name = format!("{}.{}.{}", self.app.name, slot, self.spawn_seq);
        let mut notify = NotifySocket::bind(&self.ctx.run_dir, &notify_name).map_err(|e| {
            format!(
                "cannot create the notify socket in {}: {e}",
                self.ctx.run_dir.display()
            )
        })?;
        let watchdog = self.app.health.watchdog;
        let mut env: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| {
                !matches!(
                    k.as_str(),
                    "LISTEN_FDS"
                        | "LISTEN_PID"
                        | "LISTEN_FDNAMES"
                        | "NOTIFY_SOCKET"
                        | "WATCHDOG_USEC"
                        | "WATCHDOG_PID"
                )
            })
            .collect();
        env.extend(self.app.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        env.extend(self.ctx.extra_env.iter().cloned());
        if !self.sockets.is_empty() {
            env.push(("LISTEN_FDS".into(), self.sockets.len().to_string()));
            let names: Vec<&str> = self
                .sockets
                .iter()
                .map(|s| s.listen.name.as_str())
                .collect();
            env.push(("LISTEN_FDNAMES".into(), names.join(":")));
        }
        env.push(("NOTIFY_SOCKET".into(), notify.env_value.clone()));
        env.push(("APPVISOR_APP".into(), self.app.name.clone()));
        env.push(("APPVISOR_GENERATION".into(), generation.to_string()));
        env.push(("APPVISOR_WORKER".into(), slot.to_string()));
        if let Some(w) = watchdog {
            env.push(("WATCHDOG_USEC".into(), w.as_micros().to_string()));
        }
        let fds: Vec<i32> = self.sockets.iter().map(|s| s.raw_fd()).collect();
        let spec = SpawnSpec {
            argv: &self.app.command,
            cwd: &self.app.cwd,
            env,
            listen_fds: &fds,
            watchdog: watchdog.is_some(),
        };
        let spawned = spawn(&spec).map_err(|e| e.to_string())?;
        let pid = spawned.pid;
        // Register before yielding (see reaper's invariant).
        let itx = self.internal_tx.clone();
        let (etx, mut erx) = mpsc::unbounded_channel();
        self.ctx.reaper.watch(pid, etx);
        tokio::spawn(async move {
            if let Some(exit) = erx.recv().await {
                let _ = itx.send(Internal::Exit(exit));
            }
        });
        self.ctx.guard.protect(pid);
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        self.ctx
            .log
            .attach(pid, spawned.stdout, spawned.stderr, tail.clone());
        notify.forward(pid, pid, self.notify_tx.clone());

        let now = Instant::now();
        let ready_after = match &self.app.ready {
            ReadyCheck::Delay(d) => Some(now + *d),
            ReadyCheck::Http { path } => {
                self.spawn_probe(pid, path.clone());
                None
            }
            ReadyCheck::Notify => None,
        };
        let worker = Worker {
            pid,
            slot,
            generation,
            role,
            started: now,
            ready_at: None,
            startup_deadline: Some(now + self.app.recycle.startup_timeout),
            ready_after,
            retire_started: None,
            kill_at: None,
            killed: false,
            status: None,
            requests: 0,
            tail,
            _notify: notify,
        };
        self.workers.insert(pid, worker);
        let s = &mut self.slots[slot as usize];
        match role {
            Role::Candidate => s.candidate = Some(pid),
            _ => s.current = Some(pid),
        }
        let mut e = self.event("started");
        e.worker = Some(slot);
        e.generation = Some(generation);
        e.pid = Some(pid);
        self.emit(e);
        Ok(pid)
    }

    /// `ready = "http:/path"`: GET the path on the first listen address until 2xx.
    fn spawn_probe(&self, pid: i32, path: String) {
        let Some(address) = self.sockets.first().map(|s| s.listen.address.clone()) else {
            return;
        };
        let tx = self.internal_tx.clone();
        tokio::spawn(async move {
            loop {
                if tx.is_closed() {
                    return;
                }
                if crate::probe::http_ok(&address, &path, Duration::from_secs(2)).await {
                    let _ = tx.send(Internal::ProbeOk(pid));
                    return;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        });
    }

    fn signal(&self, pid: i32, sig: i32) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(pid, sig) };
    }

    fn kill_group(&self, pgid: i32) {
        // SAFETY: as above; a negative pid names the process group.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
    }

    /// Tells a worker to stop: `stop_signal` now, SIGKILL of its group later.
    fn retire(&mut self, pid: i32) {
        let timeout = self.app.recycle.shutdown_timeout;
        let sig = self.app.recycle.stop_signal.number;
        let Some(w) = self.workers.get_mut(&pid) else {
            return;
        };
        let slot = &mut self.slots[w.slot as usize];
        if slot.current == Some(pid) {
            slot.current = None;
        }
        if slot.candidate == Some(pid) {
            slot.candidate = None;
        }
        w.role = Role::Retiring;
        let now = Instant::now();
        w.retire_started = Some(now);
        w.kill_at = Some(now + timeout);
        w.startup_deadline = None;
        w.ready_after = None;
        self.signal(pid, sig);
    }

    fn on_ready(&mut self, pid: i32) {
        let Some(w) = self.workers.get_mut(&pid) else {
            return;
        };
        if w.ready_at.is_some() || w.role == Role::Retiring {
            return;
        }
        let now = Instant::now();
        w.ready_at = Some(now);
        w.startup_deadline = None;
        w.ready_after = None;
        let startup_ms = (now - w.started).as_millis() as u64;
        let (slot, generation, role) = (w.slot, w.generation, w.role);
        match role {
            Role::Current => {
                let mut e = self.event("ready");
                e.worker = Some(slot);
                e.generation = Some(generation);
                e.pid = Some(pid);
                e.startup_ms = Some(startup_ms);
                self.emit(e);
                self.check_started();
            }
            Role::Candidate => {
                let s = &mut self.slots[slot as usize];
                let old = s.current.take();
                s.candidate = None;
                s.current = Some(pid);
                if let Some(w) = self.workers.get_mut(&pid) {
                    w.role = Role::Current;
                }
                let Some(job) = self.job.as_mut() else { return };
                job.swaps.push((old, pid));
                job.next_slot = slot + 1;
                let reason = job.reason.clone();
                let mut e = self.event("recycle").because(&reason);
                e.worker = Some(slot);
                e.generation = Some(generation);
                e.old_pid = old;
                e.new_pid = Some(pid);
                e.startup_ms = Some(startup_ms);
                self.recycles += 1;
                self.last_recycle = Some(LastRecycle {
                    time: e.time.clone(),
                    reason: reason.name().to_string(),
                    detail: reason.describe(),
                });
                self.emit(e);
                if let Some(old) = old {
                    if self
                        .workers
                        .get(&old)
                        .is_some_and(|w| w.role != Role::Retiring)
                    {
                        self.retire(old);
                    }
                }
                self.advance_job();
            }
            Role::Retiring => {}
        }
    }

    fn check_started(&mut self) {
        if self.start_waiters.is_empty() {
            return;
        }
        let all_ready = self.slots.iter().all(|s| {
            s.current
                .and_then(|p| self.workers.get(&p))
                .is_some_and(Worker::is_ready)
        });
        if all_ready {
            let pids: Vec<String> = self
                .slots
                .iter()
                .filter_map(|s| s.current)
                .map(|p| p.to_string())
                .collect();
            for w in self.start_waiters.drain(..) {
                let _ = w.send(Ok(format!(
                    "{}: started, pid {}",
                    self.app.name,
                    pids.join(", ")
                )));
            }
        }
    }

    fn on_notify(&mut self, pid: i32, m: NotifyMessage) {
        let ready_by_notify = self.app.ready == ReadyCheck::Notify;
        let Some(w) = self.workers.get_mut(&pid) else {
            return;
        };
        if let Some(s) = m.status {
            w.status = Some(s);
        }
        if let Some(n) = m.requests {
            w.requests = n;
        }
        if m.stopping && w.role != Role::Retiring {
            w.status = Some("stopping".into());
        }
        if m.ready && ready_by_notify {
            self.on_ready(pid);
        }
    }

    fn on_exit(&mut self, exit: Exit) {
        let pid = exit.pid;
        // Whatever the worker left in its group goes with it: an orphaned child
        // must not keep the port or the files busy.
        self.kill_group(pid);
        self.ctx.guard.release(pid);
        let Some(w) = self.workers.remove(&pid) else {
            return;
        };
        let now = Instant::now();
        let uptime_ms = (now - w.started).as_millis() as u64;
        let tail: Vec<String> = w.tail.lock().unwrap().iter().cloned().collect();
        let mut e = Event::new(&self.app.name, "");
        e.worker = Some(w.slot);
        e.generation = Some(w.generation);
        e.pid = Some(pid);
        e.uptime_ms = Some(uptime_ms);
        match exit.status {
            ExitStatus::Code(c) => e.exit_code = Some(c),
            ExitStatus::Signal(s) => e.signal = Some(signal_name(s)),
        }
        match w.role {
            Role::Retiring => {
                if !w.killed {
                    e.kind = "retired".into();
                    e.drain_ms = w.retire_started.map(|t| (now - t).as_millis() as u64);
                    e.detail = Some(format!("exited after drain ({})", exit.status));
                    self.emit(e);
                }
                if self.job.as_ref().and_then(|j| j.waiting_for_stop) == Some(pid) {
                    // Non-overlapped recycle: the old one is gone; start the new.
                    let job = self.job.as_mut().unwrap();
                    job.waiting_for_stop = None;
                    let generation = job.generation;
                    let slot = w.slot;
                    match self.spawn_worker(slot, generation, Role::Candidate) {
                        Ok(_) => {}
                        Err(msg) => {
                            self.emit(self.event("startup_failed").detail(msg.clone()));
                            self.count_crash();
                            self.finish_job(Err(msg));
                            self.schedule_restart(slot);
                        }
                    }
                }
                self.check_stopped();
            }
            Role::Candidate => {
                e.kind = "startup_failed".into();
                e.detail = Some(format!(
                    "the new worker exited before it was ready ({})",
                    exit.status
                ));
                e.stderr_tail = Some(tail);
                self.emit(e);
                self.slots[w.slot as usize].candidate = None;
                let stopped = self.count_crash();
                if !stopped {
                    self.finish_job(Err(format!(
                        "the new worker exited before it was ready ({})",
                        exit.status
                    )));
                    if !self.app.recycle.overlapped && self.slots[w.slot as usize].current.is_none()
                    {
                        self.schedule_restart(w.slot);
                    }
                }
            }
            Role::Current => {
                e.kind = if w.is_ready() {
                    "crashed"
                } else {
                    "startup_failed"
                }
                .into();
                e.detail = Some(format!("exited unexpectedly ({})", exit.status));
                e.stderr_tail = Some(tail);
                self.emit(e);
                let slot = &mut self.slots[w.slot as usize];
                slot.current = None;
                if Duration::from_millis(uptime_ms) >= self.app.failure.stable_uptime {
                    slot.backoff = Duration::ZERO;
                }
                self.on_crash_of_slot(w.slot, Some(uptime_ms));
            }
        }
    }

    /// Records a crash; returns true if rapid-fail protection stopped the app.
    fn count_crash(&mut self) -> bool {
        let now = Instant::now();
        self.total_crashes += 1;
        self.crashes.push_back(now);
        let window = self.app.failure.rapid_fail_interval;
        while self
            .crashes
            .front()
            .is_some_and(|t| now.duration_since(*t) > window)
        {
            self.crashes.pop_front();
        }
        if self.crashes.len() as u32 >= self.app.failure.rapid_fail_max_crashes
            && matches!(self.state, AppState::Running)
        {
            let mut e = self.event("rapid_fail_stopped");
            e.detail = Some(format!(
                "{} crashes within {} — the app is stopped; fix it, then `appvisor start {}`",
                self.crashes.len(),
                humanize(window),
                self.app.name
            ));
            self.emit(e);
            self.stop_all(true);
            return true;
        }
        false
    }

    fn on_crash_of_slot(&mut self, slot: u32, _uptime_ms: Option<u64>) {
        if self.count_crash() {
            return;
        }
        if self.state != AppState::Running || self.shutdown_waiter.is_some() {
            return;
        }
        if self.slots[slot as usize].candidate.is_some() {
            // A recycle is already bringing a new worker into this slot.
            return;
        }
        self.schedule_restart(slot);
    }

    fn schedule_restart(&mut self, slot: u32) {
        let f = &self.app.failure;
        let s = &mut self.slots[slot as usize];
        s.backoff = if s.backoff.is_zero() {
            f.backoff_initial
        } else {
            (s.backoff * 2).min(f.backoff_max)
        };
        s.restart_at = Some(Instant::now() + s.backoff);
    }

    // ---- time -----------------------------------------------------------------

    fn next_deadline(&self) -> Option<Instant> {
        let workers = self
            .workers
            .values()
            .flat_map(|w| [w.startup_deadline, w.ready_after, w.kill_at]);
        let slots = self.slots.iter().map(|s| s.restart_at);
        workers.chain(slots).flatten().min()
    }

    fn on_deadlines(&mut self) {
        let now = Instant::now();
        let mut ready = Vec::new();
        let mut late = Vec::new();
        let mut kill = Vec::new();
        for w in self.workers.values() {
            if w.ready_after.is_some_and(|t| t <= now) {
                ready.push(w.pid);
            } else if w.startup_deadline.is_some_and(|t| t <= now) {
                late.push(w.pid);
            }
            if w.kill_at.is_some_and(|t| t <= now) {
                kill.push(w.pid);
            }
        }
        for pid in ready {
            self.on_ready(pid);
        }
        for pid in late {
            self.on_startup_timeout(pid);
        }
        for pid in kill {
            let Some(w) = self.workers.get_mut(&pid) else {
                continue;
            };
            w.kill_at = None;
            w.killed = true;
            let mut e = Event::new(&self.app.name, "killed");
            e.worker = Some(w.slot);
            e.generation = Some(w.generation);
            e.pid = Some(pid);
            e.drain_ms = w.retire_started.map(|t| (now - t).as_millis() as u64);
            e.detail = Some(format!(
                "still running {} after {}; SIGKILL to its process group",
                humanize(self.app.recycle.shutdown_timeout),
                self.app.recycle.stop_signal.name
            ));
            self.emit(e);
            self.kill_group(pid);
        }
        let restart: Vec<u32> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.restart_at.is_some_and(|t| t <= now))
            .map(|(i, _)| i as u32)
            .collect();
        for slot in restart {
            self.slots[slot as usize].restart_at = None;
            if self.state != AppState::Running || self.slots[slot as usize].current.is_some() {
                continue;
            }
            self.generation += 1;
            let generation = self.generation;
            match self.spawn_worker(slot, generation, Role::Current) {
                Ok(_) => {}
                Err(msg) => {
                    self.emit(self.event("startup_failed").detail(msg));
                    self.on_crash_of_slot(slot, None);
                }
            }
        }
    }

    fn on_startup_timeout(&mut self, pid: i32) {
        let timeout = self.app.recycle.startup_timeout;
        let Some(w) = self.workers.get_mut(&pid) else {
            return;
        };
        w.startup_deadline = None;
        let tail: Vec<String> = w.tail.lock().unwrap().iter().cloned().collect();
        let mut e = Event::new(&self.app.name, "startup_failed");
        e.worker = Some(w.slot);
        e.generation = Some(w.generation);
        e.pid = Some(pid);
        e.detail = Some(format!(
            "not ready within startup_timeout {}; killed, the previous generation keeps serving",
            humanize(timeout)
        ));
        e.stderr_tail = Some(tail);
        // Killed without a drain: it never served. Its exit is then expected.
        w.role = Role::Retiring;
        w.killed = true;
        let slot = w.slot;
        let s = &mut self.slots[slot as usize];
        let was_candidate = s.candidate == Some(pid);
        if was_candidate {
            s.candidate = None;
        }
        if s.current == Some(pid) {
            s.current = None;
        }
        self.emit(e);
        self.kill_group(pid);
        let stopped = self.count_crash();
        if stopped {
            return;
        }
        if was_candidate {
            self.finish_job(Err(format!(
                "the new worker was not ready within {}",
                humanize(timeout)
            )));
        }
        if self.slots[slot as usize].current.is_none()
            && self.slots[slot as usize].candidate.is_none()
        {
            self.schedule_restart(slot);
        }
    }

    // ---- status ---------------------------------------------------------------

    fn state_name(&self) -> &'static str {
        match self.state {
            AppState::Running => {
                if self
                    .workers
                    .values()
                    .any(|w| w.role == Role::Current && !w.is_ready())
                {
                    "starting"
                } else if self.slots.iter().any(|s| s.current.is_none()) {
                    "degraded"
                } else {
                    "running"
                }
            }
            AppState::Stopping { .. } => "stopping",
            AppState::Stopped => "stopped",
            AppState::RapidFailStopped => "stopped (rapid-fail)",
        }
    }

    fn status(&self) -> AppStatus {
        let now = Instant::now();
        let mut workers: Vec<WorkerStatus> = self
            .workers
            .values()
            .map(|w| WorkerStatus {
                worker: w.slot,
                pid: w.pid,
                generation: w.generation,
                state: match w.role {
                    Role::Retiring => "draining",
                    _ if w.is_ready() => "ready",
                    _ => "starting",
                }
                .into(),
                uptime_ms: (now - w.started).as_millis() as u64,
                rss: crate::probe::rss_bytes(w.pid),
                requests: w.requests,
                status: w.status.clone(),
            })
            .collect();
        workers.sort_by_key(|w| (w.worker, w.generation));
        AppStatus {
            name: self.app.name.clone(),
            state: self.state_name().into(),
            listen: self
                .sockets
                .iter()
                .map(|s| match &s.listen.address {
                    ListenAddress::Tcp(a) => format!("tcp://{a}"),
                    ListenAddress::Unix(p) => format!("unix:{}", p.display()),
                })
                .collect(),
            workers,
            recycles: self.recycles,
            crashes: self.total_crashes,
            last_recycle: self.last_recycle.clone(),
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// `90 s`, `5 min`, `250 ms`.
pub fn humanize(d: Duration) -> String {
    crate::events::human_ms(d.as_millis() as u64)
}
