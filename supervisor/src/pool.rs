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
//! # Triggers
//! Triggers only decide. Per worker: memory (sampled every
//! `memory_check_interval`), `requests` (from `X_APPVISOR_REQUESTS`), age
//! (`interval`), the sd_notify watchdog — each recycles just that worker. Per app:
//! file changes (the watcher), `schedule`, the HTTP probe (it reaches whichever
//! worker accepts, so it recycles the app), a config change. `idle_timeout` stops
//! the workers and keeps the sockets; the next connection starts them again.
//!
//! # Crashes
//! An unexpected exit is restarted after a capped exponential backoff that resets
//! once a worker stays up `stable_uptime`. `rapid_fail_max_crashes` crashes (or
//! startup failures) within `rapid_fail_interval` stop the app:
//! `stopped (rapid-fail)`, until `appvisor start APP`.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use appvisor_config::{AppConfig, ListenAddress, ReadyCheck};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::events::{Event, EventLog};
use crate::guard::Guard;
use crate::output::AppLog;
use crate::reaper::{signal_name, Exit, ExitStatus, Reaper};
use crate::reason::RecycleReason;
use crate::sd_notify::{NotifyMessage, NotifySocket};
use crate::sockets::BoundSocket;
use crate::spawn::{spawn, SpawnSpec};
use crate::trigger::memory::{self, MemoryVerdict};
use crate::trigger::schedule::{self, JitterRng};
use crate::trigger::watch::{AppWatcher, WatchDecision};

/// Reply to a command: a line for the user, or an error for the user.
pub type Reply = Result<String, String>;

/// What the pool can be asked to do.
#[derive(Debug)]
pub enum PoolCommand {
    /// Recycle every worker (`slot: None`) or one.
    Recycle {
        reason: RecycleReason,
        slot: Option<u32>,
        done: Option<oneshot::Sender<Reply>>,
    },
    /// New settings from a reloaded `appvisor.toml` (and new sockets if `listen`
    /// changed): the app is recycled with reason `config_change`.
    Reconfigure {
        app: Box<AppConfig>,
        sockets: Option<Vec<BoundSocket>>,
        config_generation: u64,
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

    fn gone(&self) -> Reply {
        Err(format!("app {:?} is shutting down", self.name))
    }

    pub async fn recycle(&self, reason: RecycleReason) -> Reply {
        self.ask(|done| PoolCommand::Recycle {
            reason,
            slot: None,
            done: Some(done),
        })
        .await
        .unwrap_or_else(|| self.gone())
    }

    /// Queues a recycle without waiting for it (triggers use this).
    pub fn request_recycle(&self, reason: RecycleReason) {
        self.send(PoolCommand::Recycle {
            reason,
            slot: None,
            done: None,
        });
    }

    pub async fn start(&self) -> Reply {
        self.ask(|done| PoolCommand::Start { done })
            .await
            .unwrap_or_else(|| self.gone())
    }

    pub async fn stop(&self) -> Reply {
        self.ask(|done| PoolCommand::Stop { done })
            .await
            .unwrap_or_else(|| self.gone())
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
    /// `running`, `starting`, `degraded`, `idle`, `stopping`, `stopped`,
    /// `stopped (rapid-fail)`.
    pub state: String,
    pub listen: Vec<String>,
    pub workers: Vec<WorkerStatus>,
    pub recycles: u64,
    pub crashes: u64,
    pub last_recycle: Option<LastRecycle>,
    /// The config generation whose settings this app runs.
    #[serde(default)]
    pub config_generation: u64,
    /// "inotify", "poll" or "off", and how many files are watched.
    #[serde(default)]
    pub watch: Option<String>,
    /// The next `schedule` recycle (local time).
    #[serde(default)]
    pub next_schedule: Option<String>,
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
    pub config_generation: u64,
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
    /// Must be ready by then.
    startup_deadline: Option<Instant>,
    /// `ready = "delay:…"`: ready at this instant.
    ready_after: Option<Instant>,
    retire_started: Option<Instant>,
    kill_at: Option<Instant>,
    killed: bool,
    status: Option<String>,
    requests: u64,
    /// This worker's `requests` limit, jitter included.
    request_limit: Option<u64>,
    /// This worker's `interval` deadline, jitter included.
    age_deadline: Option<Instant>,
    /// `WATCHDOG=1` expected before this instant.
    watchdog_deadline: Option<Instant>,
    /// A trigger already asked for this worker's replacement.
    recycle_requested: bool,
    /// Sessions it handed to the store while draining (`X_APPVISOR_SESSIONS`).
    sessions: Option<u64>,
    tail: Arc<Mutex<VecDeque<String>>>,
    _notify: NotifySocket,
}

impl Worker {
    fn is_ready(&self) -> bool {
        self.ready_at.is_some()
    }

    /// Serving and not yet marked for replacement: a trigger may fire for it.
    fn triggerable(&self) -> bool {
        self.role == Role::Current && self.is_ready() && !self.recycle_requested
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
    /// Slots still to recycle, in order.
    slots: VecDeque<u32>,
    /// Non-overlapped: the slot's old worker was told to stop; start the candidate
    /// when it is gone.
    waiting_for_stop: Option<i32>,
    started: Instant,
    swaps: Vec<(Option<i32>, i32)>,
    waiters: Vec<oneshot::Sender<Reply>>,
}

/// Recycle requests that arrived while a job ran: done once, after it.
#[derive(Debug)]
struct Pending {
    reason: RecycleReason,
    slots: BTreeSet<u32>,
    waiters: Vec<oneshot::Sender<Reply>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AppState {
    Running,
    /// Stopped by `idle_timeout`; the next connection starts it.
    Idle,
    Stopping {
        rapid_fail: bool,
        idle: bool,
    },
    Stopped,
    RapidFailStopped,
}

enum Internal {
    Exit(Exit),
    ProbeOk(i32),
    HealthProbe(bool),
    Watcher(Result<AppWatcher, String>),
    /// A connection arrived while idle.
    Wake,
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
    let (wtx, wrx) = mpsc::unbounded_channel();
    let slots = (0..app.processes).map(|_| Slot::default()).collect();
    let config_generation = ctx.config_generation;
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
        watch_tx: wtx,
        watcher: None,
        watcher_epoch: 0,
        rng: JitterRng::from_entropy(),
        next_schedule: None,
        next_memory_check: None,
        next_probe: None,
        probe_in_flight: false,
        probe_failures: 0,
        last_activity: Instant::now(),
        idle_cpu_mark: HashMap::new(),
        config_generation,
        wake_task: None,
    };
    tokio::spawn(pool.run(rx, irx, nrx, wrx));
    handle
}

struct Pool {
    app: AppConfig,
    sockets: Vec<BoundSocket>,
    ctx: PoolContext,
    slots: Vec<Slot>,
    workers: HashMap<i32, Worker>,
    job: Option<RecycleJob>,
    pending: Option<Pending>,
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
    watch_tx: mpsc::UnboundedSender<WatchDecision>,
    watcher: Option<AppWatcher>,
    /// Bumped on reconfigure, so a watcher started for old settings is dropped.
    watcher_epoch: u64,
    rng: JitterRng,
    next_schedule: Option<(Instant, jiff::Zoned)>,
    next_memory_check: Option<Instant>,
    next_probe: Option<Instant>,
    probe_in_flight: bool,
    probe_failures: u32,
    /// Last request or start, for `idle_timeout`.
    last_activity: Instant,
    /// Each worker's CPU ticks at the last idle check.
    idle_cpu_mark: HashMap<i32, u64>,
    config_generation: u64,
    wake_task: Option<tokio::task::JoinHandle<()>>,
}

impl Pool {
    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<PoolCommand>,
        mut internal: mpsc::UnboundedReceiver<Internal>,
        mut notify: mpsc::UnboundedReceiver<(i32, NotifyMessage)>,
        mut watch: mpsc::UnboundedReceiver<WatchDecision>,
    ) {
        self.start_watcher();
        self.arm_app_timers();
        self.start_all();
        loop {
            if self.shutdown_waiter.is_some() && self.workers.is_empty() {
                if let Some(w) = self.shutdown_waiter.take() {
                    let _ = w.send(());
                }
                if let Some(t) = self.wake_task.take() {
                    t.abort();
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
                    Internal::HealthProbe(ok) => self.on_health_probe(ok),
                    Internal::Watcher(w) => self.on_watcher(w),
                    Internal::Wake => self.on_wake(),
                },
                Some((pid, m)) = notify.recv() => self.on_notify(pid, m),
                Some(d) = watch.recv() => self.on_watch(d),
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

    fn running(&self) -> bool {
        self.state == AppState::Running && self.shutdown_waiter.is_none()
    }

    // ---- commands -------------------------------------------------------------

    fn on_command(&mut self, cmd: PoolCommand) {
        match cmd {
            PoolCommand::Recycle { reason, slot, done } => {
                let slots = slot.map(|s| vec![s]);
                self.request_recycle(reason, slots, done);
            }
            PoolCommand::Reconfigure {
                app,
                sockets,
                config_generation,
            } => self.reconfigure(*app, sockets, config_generation),
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
                AppState::Idle | AppState::Stopped | AppState::RapidFailStopped => {
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
                AppState::Idle => {
                    self.state = AppState::Stopped;
                    let _ = done.send(Ok(format!("{}: stopped", self.app.name)));
                }
                _ => {
                    self.stop_waiters.push(done);
                    self.stop_all(false, false);
                }
            },
            PoolCommand::Status { reply } => {
                let _ = reply.send(self.status());
            }
            PoolCommand::Shutdown { done } => {
                self.shutdown_waiter = Some(done);
                self.watcher = None;
                if !matches!(
                    self.state,
                    AppState::Stopped | AppState::RapidFailStopped | AppState::Idle
                ) {
                    self.stop_all(false, false);
                }
            }
        }
    }

    /// `slots: None` = every slot.
    fn request_recycle(
        &mut self,
        reason: RecycleReason,
        slots: Option<Vec<u32>>,
        done: Option<oneshot::Sender<Reply>>,
    ) {
        if self.state == AppState::Idle && self.shutdown_waiter.is_none() {
            if let Some(done) = done {
                let _ = done.send(Ok(format!(
                    "{}: idle; the next connection starts a fresh generation",
                    self.app.name
                )));
            }
            return;
        }
        if !self.running() {
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
        let slots: Vec<u32> = slots.unwrap_or_else(|| (0..self.slots.len() as u32).collect());
        if self.job.is_some() {
            // Coalesce: one follow-up recycle, whatever number of requests arrive.
            self.emit(
                self.event("recycle_queued")
                    .because(&reason)
                    .detail(format!(
                        "{} — after the recycle under way (one follow-up at most)",
                        reason.describe()
                    )),
            );
            let p = self.pending.get_or_insert_with(|| Pending {
                reason: reason.clone(),
                slots: BTreeSet::new(),
                waiters: Vec::new(),
            });
            p.slots.extend(slots);
            if let Some(done) = done {
                p.waiters.push(done);
            }
            return;
        }
        self.begin_job(reason, slots, done.into_iter().collect());
    }

    fn begin_job(
        &mut self,
        reason: RecycleReason,
        slots: Vec<u32>,
        waiters: Vec<oneshot::Sender<Reply>>,
    ) {
        if reason != RecycleReason::WatchOverflow
            && !matches!(
                reason,
                RecycleReason::FileChange { .. } | RecycleReason::SoftChangeLimit { .. }
            )
        {
            if let Some(w) = &self.watcher {
                w.recycled();
            }
        }
        self.generation += 1;
        self.job = Some(RecycleJob {
            reason,
            generation: self.generation,
            slots: slots
                .into_iter()
                .filter(|s| (*s as usize) < self.slots.len())
                .collect(),
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
        if self.slots.iter().any(|s| s.candidate.is_some()) {
            return;
        }
        let Some(slot) = job.slots.pop_front() else {
            self.finish_job(Ok(()));
            return;
        };
        let slot = slot as usize;
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
            if !self.count_crash() {
                self.finish_job(Err(msg));
            }
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
        if let Some(p) = self.pending.take() {
            if self.running() {
                self.begin_job(p.reason, p.slots.into_iter().collect(), p.waiters);
            } else {
                for w in p.waiters {
                    let _ = w.send(Err(format!("{}: not running", self.app.name)));
                }
            }
        }
    }

    fn abort_job(&mut self, why: &str) {
        let mut waiters = Vec::new();
        if let Some(job) = self.job.take() {
            waiters.extend(job.waiters);
        }
        if let Some(p) = self.pending.take() {
            waiters.extend(p.waiters);
        }
        for w in waiters {
            let _ = w.send(Err(format!("{}: recycle aborted: {why}", self.app.name)));
        }
    }

    fn start_all(&mut self) {
        self.generation += 1;
        self.last_activity = Instant::now();
        let generation = self.generation;
        for slot in 0..self.slots.len() {
            if self.slots[slot].current.is_none() && self.slots[slot].candidate.is_none() {
                if let Err(msg) = self.spawn_worker(slot as u32, generation, Role::Current) {
                    self.emit(self.event("startup_failed").detail(msg));
                    self.on_crash_of_slot(slot as u32);
                }
            }
        }
    }

    /// Stops every worker (graceful, then SIGKILL after `shutdown_timeout`).
    fn stop_all(&mut self, rapid_fail: bool, idle: bool) {
        self.abort_job(if rapid_fail {
            "rapid-fail protection stopped the app"
        } else {
            "the app is stopping"
        });
        self.state = AppState::Stopping { rapid_fail, idle };
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
        if let AppState::Stopping { rapid_fail, idle } = self.state {
            if self.workers.is_empty() {
                self.state = if rapid_fail {
                    AppState::RapidFailStopped
                } else if idle && self.shutdown_waiter.is_none() {
                    AppState::Idle
                } else {
                    AppState::Stopped
                };
                if self.state == AppState::Idle {
                    self.arm_wake();
                } else if !rapid_fail {
                    self.emit(self.event("stopped"));
                }
                for w in self.stop_waiters.drain(..) {
                    let _ = w.send(Ok(format!("{}: stopped", self.app.name)));
                }
            }
        }
    }

    // ---- config ---------------------------------------------------------------

    fn reconfigure(
        &mut self,
        app: AppConfig,
        sockets: Option<Vec<BoundSocket>>,
        config_generation: u64,
    ) {
        let old_processes = self.slots.len();
        self.app = app;
        self.config_generation = config_generation;
        if let Some(s) = sockets {
            // Workers of the old generation keep their own copies of the old
            // sockets until they exit; new workers get the new ones.
            self.sockets = s;
        }
        let new_processes = self.app.processes as usize;
        if new_processes < old_processes {
            let extra: Vec<i32> = self.slots[new_processes..]
                .iter()
                .flat_map(|s| [s.current, s.candidate])
                .flatten()
                .collect();
            for pid in extra {
                self.retire(pid);
            }
            self.slots.truncate(new_processes);
            if let Some(job) = self.job.as_mut() {
                job.slots.retain(|s| (*s as usize) < new_processes);
            }
        } else {
            self.slots.resize_with(new_processes, Slot::default);
        }
        self.start_watcher();
        self.arm_app_timers();
        self.request_recycle(
            RecycleReason::ConfigChange { config_generation },
            None,
            None,
        );
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
        env.push((
            "APPVISOR_SESSION_MODE".into(),
            self.app.sessions.mode.as_str().into(),
        ));
        env.push((
            "APPVISOR_SESSION_TIMEOUT_MS".into(),
            self.app.sessions.timeout.as_millis().to_string(),
        ));
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
        // Workers still alive (the ones this one replaces, or still draining): a
        // `handoff` worker waits for their sessions before loading from the store.
        let predecessors: Vec<String> = self.workers.keys().map(|p| p.to_string()).collect();
        env.push(("APPVISOR_PREDECESSORS".into(), predecessors.join(",")));
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
                self.spawn_ready_probe(pid, path.clone());
                None
            }
            ReadyCheck::Notify => None,
        };
        let rc = &self.app.recycle;
        let request_limit = rc
            .requests
            .map(|l| schedule::requests_limit(l, rc.requests_jitter, &mut self.rng));
        let age_deadline = rc.interval.map(|i| {
            Instant::from_std(schedule::interval_deadline(
                now.into_std(),
                i,
                rc.interval_jitter,
                &mut self.rng,
            ))
        });
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
            request_limit,
            age_deadline,
            watchdog_deadline: None,
            recycle_requested: false,
            sessions: None,
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
        e = e.of_worker(slot, generation, pid);
        self.emit(e);
        Ok(pid)
    }

    /// `ready = "http:/path"`: GET the path on the first listen address until 2xx.
    fn spawn_ready_probe(&self, pid: i32, path: String) {
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
        if let Some(slot) = self.slots.get_mut(w.slot as usize) {
            if slot.current == Some(pid) {
                slot.current = None;
            }
            if slot.candidate == Some(pid) {
                slot.candidate = None;
            }
        }
        w.role = Role::Retiring;
        let now = Instant::now();
        w.retire_started = Some(now);
        w.kill_at = Some(now + timeout);
        w.startup_deadline = None;
        w.ready_after = None;
        w.watchdog_deadline = None;
        w.age_deadline = None;
        self.signal(pid, sig);
    }

    fn on_ready(&mut self, pid: i32) {
        let watchdog = self.app.health.watchdog;
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
        w.watchdog_deadline = watchdog.map(|d| now + d);
        let startup_ms = (now - w.started).as_millis() as u64;
        let (slot, generation, role) = (w.slot, w.generation, w.role);
        match role {
            Role::Current => {
                let mut e = self.event("ready");
                e = e.of_worker(slot, generation, pid);
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
        let watchdog = self.app.health.watchdog;
        let Some(w) = self.workers.get_mut(&pid) else {
            return;
        };
        if let Some(s) = m.status {
            w.status = Some(s);
        }
        if m.sessions.is_some() {
            w.sessions = m.sessions;
        }
        let mut limit_hit = None;
        if let Some(n) = m.requests {
            if n != w.requests {
                self.last_activity = Instant::now();
            }
            w.requests = n;
            if let Some(limit) = w.request_limit {
                if w.triggerable() {
                    limit_hit = schedule::requests_reached(n, limit);
                }
            }
        }
        if m.watchdog && w.role != Role::Retiring && w.is_ready() {
            w.watchdog_deadline = watchdog.map(|d| Instant::now() + d);
        }
        if m.stopping && w.role != Role::Retiring {
            w.status = Some("stopping".into());
        }
        if m.ready && ready_by_notify {
            self.on_ready(pid);
        }
        if let Some(reason) = limit_hit {
            self.recycle_worker(pid, reason);
        }
    }

    /// A per-worker trigger fired: replace just this worker.
    fn recycle_worker(&mut self, pid: i32, reason: RecycleReason) {
        let Some(w) = self.workers.get_mut(&pid) else {
            return;
        };
        if !w.triggerable() {
            return;
        }
        w.recycle_requested = true;
        let slot = w.slot;
        self.request_recycle(reason, Some(vec![slot]), None);
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
        e = e.of_worker(w.slot, w.generation, pid);
        e.uptime_ms = Some(uptime_ms);
        match exit.status {
            ExitStatus::Code(c) => e.exit_code = Some(c),
            ExitStatus::Signal(s) => e.signal = Some(signal_name(s)),
        }
        match w.role {
            Role::Retiring => {
                if !w.killed {
                    e.kind = "retired".into();
                    e.sessions = w.sessions;
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
                    if let Err(msg) = self.spawn_worker(slot, generation, Role::Candidate) {
                        self.emit(self.event("startup_failed").detail(msg.clone()));
                        if !self.count_crash() {
                            self.finish_job(Err(msg));
                            self.schedule_restart(slot);
                        }
                    }
                }
                self.check_stopped();
            }
            Role::Candidate => {
                let why = format!(
                    "the new worker exited before it was ready ({})",
                    exit.status
                );
                e.kind = "startup_failed".into();
                e.detail = Some(why.clone());
                e.stderr_tail = Some(tail);
                self.emit(e);
                if let Some(s) = self.slots.get_mut(w.slot as usize) {
                    s.candidate = None;
                }
                if !self.count_crash() {
                    self.finish_job(Err(why));
                    if self
                        .slots
                        .get(w.slot as usize)
                        .is_some_and(|s| s.current.is_none())
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
                let stable = Duration::from_millis(uptime_ms) >= self.app.failure.stable_uptime;
                if let Some(slot) = self.slots.get_mut(w.slot as usize) {
                    slot.current = None;
                    if stable {
                        slot.backoff = Duration::ZERO;
                    }
                }
                self.on_crash_of_slot(w.slot);
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
            && self.state == AppState::Running
        {
            let mut e = self.event("rapid_fail_stopped");
            e.detail = Some(format!(
                "{} crashes within {} — the app is stopped; fix it, then `appvisor start {}`",
                self.crashes.len(),
                humanize(window),
                self.app.name
            ));
            self.emit(e);
            self.stop_all(true, false);
            return true;
        }
        false
    }

    fn on_crash_of_slot(&mut self, slot: u32) {
        if self.count_crash() || !self.running() {
            return;
        }
        if self
            .slots
            .get(slot as usize)
            .is_none_or(|s| s.candidate.is_some())
        {
            // A recycle is already bringing a new worker into this slot.
            return;
        }
        self.schedule_restart(slot);
    }

    fn schedule_restart(&mut self, slot: u32) {
        let f = &self.app.failure;
        let Some(s) = self.slots.get_mut(slot as usize) else {
            return;
        };
        s.backoff = if s.backoff.is_zero() {
            f.backoff_initial
        } else {
            (s.backoff * 2).min(f.backoff_max)
        };
        s.restart_at = Some(Instant::now() + s.backoff);
    }

    // ---- triggers -------------------------------------------------------------

    /// (Re)starts the file watcher for the current settings, off the pool's task.
    fn start_watcher(&mut self) {
        self.watcher = None;
        self.watcher_epoch += 1;
        if !self.app.watch.enabled {
            return;
        }
        let (name, cwd, cfg) = (
            self.app.name.clone(),
            self.app.cwd.clone(),
            self.app.watch.clone(),
        );
        let (wtx, itx) = (self.watch_tx.clone(), self.internal_tx.clone());
        tokio::spawn(async move {
            let w = AppWatcher::start(&name, &cwd, &cfg, wtx)
                .await
                .map_err(|e| e.to_string());
            let _ = itx.send(Internal::Watcher(w));
        });
    }

    fn on_watcher(&mut self, w: Result<AppWatcher, String>) {
        match w {
            Ok(w) if self.shutdown_waiter.is_none() => {
                let stats = w.stats();
                let mut e = self.event("watching");
                e.detail = Some(format!(
                    "{} files in {} directories ({}), set up in {} ms",
                    stats.files,
                    stats.directories,
                    stats.backend,
                    stats.setup.as_millis()
                ));
                self.emit(e);
                self.watcher = Some(w);
            }
            Ok(_) => {}
            Err(msg) => self.emit(self.event("watch_failed").detail(msg)),
        }
    }

    fn on_watch(&mut self, d: WatchDecision) {
        match d {
            WatchDecision::Recycle(reason) => self.request_recycle(reason, None, None),
            WatchDecision::Soft { paths, count } => {
                let sig = self.app.watch.soft_signal;
                let pids: Vec<i32> = self
                    .workers
                    .values()
                    .filter(|w| w.role == Role::Current)
                    .map(|w| w.pid)
                    .collect();
                for pid in &pids {
                    self.signal(*pid, sig.number);
                }
                let mut e = self.event("soft_change");
                e.detail = Some(format!(
                    "{} to {} worker(s): {}",
                    sig.name,
                    pids.len(),
                    list_paths(&paths, count)
                ));
                self.emit(e);
            }
            WatchDecision::Ignored { paths, count } => {
                let mut e = self.event("ignored_change");
                e.detail = Some(format!("content unchanged: {}", list_paths(&paths, count)));
                self.emit(e);
            }
            WatchDecision::Warning { detail } => {
                self.emit(self.event("watch_warning").detail(detail))
            }
        }
    }

    /// Schedules, memory checks and the HTTP probe for the current settings.
    fn arm_app_timers(&mut self) {
        let now = Instant::now();
        self.next_schedule = None;
        if !self.app.recycle.schedule.is_empty() {
            let wall = jiff::Zoned::now();
            if let Some(at) = schedule::next_schedule_fire(&wall, &self.app.recycle.schedule) {
                self.next_schedule = Some((now + schedule::duration_until(&wall, &at), at));
            }
        }
        let rc = &self.app.recycle;
        let memory = rc.private_memory.is_some()
            || rc.virtual_memory.is_some()
            || rc.rss.is_some()
            || rc.memory_hard_limit.is_some();
        self.next_memory_check = memory.then(|| now + rc.memory_check_interval);
        self.next_probe = self.probe_after(now);
    }

    /// When the next HTTP health probe is due, if one is configured.
    fn probe_after(&self, now: Instant) -> Option<Instant> {
        self.app
            .health
            .http_probe
            .as_ref()
            .map(|p| now + p.interval)
    }

    fn check_memory(&mut self) {
        let pids: Vec<i32> = self
            .workers
            .values()
            .filter(|w| w.triggerable())
            .map(|w| w.pid)
            .collect();
        for pid in pids {
            let Ok(sample) = memory::sample_tree(pid as u32) else {
                continue;
            };
            match memory::check(&sample, &self.app.recycle) {
                MemoryVerdict::Ok => {}
                MemoryVerdict::Recycle(reason) => self.recycle_worker(pid, reason),
                MemoryVerdict::HardKill { bytes, limit } => self.hard_kill(pid, bytes, limit),
            }
        }
    }

    /// `memory_hard_limit`: no drain. The slot starts a fresh worker at once.
    fn hard_kill(&mut self, pid: i32, bytes: u64, limit: u64) {
        let Some(w) = self.workers.get_mut(&pid) else {
            return;
        };
        let reason = RecycleReason::Memory {
            kind: "memory_hard_limit".into(),
            bytes,
            limit,
        };
        w.role = Role::Retiring;
        w.killed = true;
        w.kill_at = None;
        let slot = w.slot;
        let generation = w.generation;
        let mut e = self.event("killed").because(&reason);
        e = e.of_worker(slot, generation, pid);
        if let Some(s) = self.slots.get_mut(slot as usize) {
            if s.current == Some(pid) {
                s.current = None;
                s.restart_at = Some(Instant::now());
            }
        }
        self.emit(e);
        self.kill_group(pid);
    }

    fn start_health_probe(&mut self) {
        let Some(probe) = self.app.health.http_probe.clone() else {
            return;
        };
        let Some(address) = self.sockets.first().map(|s| s.listen.address.clone()) else {
            return;
        };
        self.probe_in_flight = true;
        let tx = self.internal_tx.clone();
        tokio::spawn(async move {
            let ok = crate::probe::http_ok(&address, &probe.path, probe.timeout).await;
            let _ = tx.send(Internal::HealthProbe(ok));
        });
    }

    fn on_health_probe(&mut self, ok: bool) {
        self.probe_in_flight = false;
        let Some(probe) = self.app.health.http_probe.clone() else {
            return;
        };
        if ok {
            self.probe_failures = 0;
            return;
        }
        self.probe_failures += 1;
        if self.probe_failures >= probe.failures && self.job.is_none() && self.running() {
            self.probe_failures = 0;
            let reason = RecycleReason::Unhealthy {
                detail: format!(
                    "HTTP probe GET {} failed {} times in a row (timeout {})",
                    probe.path,
                    probe.failures,
                    humanize(probe.timeout)
                ),
            };
            self.request_recycle(reason, None, None);
        }
    }

    /// Idle: wait for a connection on any listening socket, then start again.
    fn arm_wake(&mut self) {
        let fds: Vec<i32> = self.sockets.iter().map(|s| s.raw_fd()).collect();
        let mut e = self.event("idle_stop");
        e.detail = Some(format!(
            "no requests for {}; workers stopped, sockets kept: the next connection starts them",
            humanize(self.app.recycle.idle_timeout.unwrap_or_default())
        ));
        self.emit(e);
        let tx = self.internal_tx.clone();
        self.wake_task = Some(tokio::spawn(async move {
            let _ = crate::sockets::wait_for_connection(&fds).await;
            let _ = tx.send(Internal::Wake);
        }));
    }

    fn on_wake(&mut self) {
        self.wake_task = None;
        if self.state != AppState::Idle || self.shutdown_waiter.is_some() {
            return;
        }
        self.state = AppState::Running;
        self.emit(
            self.event("on_demand_start")
                .detail("a connection arrived while idle"),
        );
        self.start_all();
    }

    // ---- time -----------------------------------------------------------------

    fn next_deadline(&self) -> Option<Instant> {
        let workers = self.workers.values().flat_map(|w| {
            let triggers = w.triggerable();
            [
                w.startup_deadline,
                w.ready_after,
                w.kill_at,
                w.age_deadline.filter(|_| triggers),
                w.watchdog_deadline.filter(|_| triggers),
            ]
        });
        let slots = self.slots.iter().map(|s| s.restart_at);
        let running = self.running();
        let idle = self
            .app
            .recycle
            .idle_timeout
            .filter(|_| running && self.job.is_none())
            .map(|t| self.last_activity + t);
        let app = [
            self.next_schedule.as_ref().map(|(t, _)| *t),
            self.next_memory_check.filter(|_| running),
            self.next_probe.filter(|_| running && !self.probe_in_flight),
            idle,
        ];
        workers.chain(slots).chain(app).flatten().min()
    }

    fn on_deadlines(&mut self) {
        let now = Instant::now();
        let mut ready = Vec::new();
        let mut late = Vec::new();
        let mut kill = Vec::new();
        let mut aged = Vec::new();
        let mut hung = Vec::new();
        for w in self.workers.values() {
            if w.ready_after.is_some_and(|t| t <= now) {
                ready.push(w.pid);
            } else if w.startup_deadline.is_some_and(|t| t <= now) {
                late.push(w.pid);
            }
            if w.kill_at.is_some_and(|t| t <= now) {
                kill.push(w.pid);
            }
            if w.triggerable() {
                if let (Some(t), Some(limit)) = (w.age_deadline, self.app.recycle.interval) {
                    if t <= now {
                        aged.push((w.pid, now - w.started, limit.max(t - w.started)));
                    }
                }
                if let (Some(t), Some(d)) = (w.watchdog_deadline, self.app.health.watchdog) {
                    if t <= now {
                        hung.push((w.pid, d));
                    }
                }
            }
        }
        for pid in ready {
            self.on_ready(pid);
        }
        for pid in late {
            self.on_startup_timeout(pid);
        }
        for pid in kill {
            self.kill_after_timeout(pid, now);
        }
        for (pid, age, limit) in aged {
            if let Some(reason) = schedule::age_reached(age, limit) {
                self.recycle_worker(pid, reason);
            }
        }
        for (pid, d) in hung {
            let reason = RecycleReason::Unhealthy {
                detail: format!("no WATCHDOG=1 for {} (watchdog)", humanize(d)),
            };
            self.recycle_worker(pid, reason);
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
            if !self.running() || self.slots[slot as usize].current.is_some() {
                continue;
            }
            self.generation += 1;
            let generation = self.generation;
            if let Err(msg) = self.spawn_worker(slot, generation, Role::Current) {
                self.emit(self.event("startup_failed").detail(msg));
                self.on_crash_of_slot(slot);
            }
        }
        if let Some((t, at)) = self.next_schedule.clone() {
            if t <= now {
                self.on_schedule(at);
            }
        }
        if self.next_memory_check.is_some_and(|t| t <= now) {
            self.next_memory_check = Some(now + self.app.recycle.memory_check_interval);
            self.check_memory();
        }
        if self.next_probe.is_some_and(|t| t <= now) && !self.probe_in_flight {
            self.next_probe = self.probe_after(now);
            if self.running() && self.job.is_none() {
                self.start_health_probe();
            }
        }
        if let Some(idle) = self.app.recycle.idle_timeout {
            if self.running() && self.job.is_none() && self.last_activity + idle <= now {
                self.on_idle_deadline(idle, now);
            }
        }
    }

    /// No request was reported for `idle_timeout`. Workers that do not report
    /// requests (no SDK, no `X_APPVISOR_REQUESTS`) could still be busy, so their
    /// CPU time decides: more than 1 % of the window counts as activity.
    fn on_idle_deadline(&mut self, idle: Duration, now: Instant) {
        // Per pid: a worker started since the last check counts from zero, which
        // errs on the side of "busy".
        let now_ticks: HashMap<i32, u64> = self
            .workers
            .values()
            .filter(|w| w.role == Role::Current)
            .filter_map(|w| Some((w.pid, crate::probe::cpu_ticks(w.pid)?)))
            .collect();
        let used: u64 = now_ticks
            .iter()
            .map(|(pid, t)| t.saturating_sub(self.idle_cpu_mark.get(pid).copied().unwrap_or(0)))
            .sum();
        self.idle_cpu_mark = now_ticks;
        let window_ticks = idle.as_secs_f64() * crate::probe::ticks_per_second();
        if used as f64 > window_ticks * 0.01 {
            self.last_activity = now;
            return;
        }
        self.stop_all(false, true);
    }

    fn on_schedule(&mut self, at: jiff::Zoned) {
        let wall = jiff::Zoned::now();
        if wall.timestamp() < at.timestamp() {
            // The wall clock moved back while we slept: wait the rest.
            self.next_schedule = Some((Instant::now() + schedule::duration_until(&wall, &at), at));
            return;
        }
        self.next_schedule =
            schedule::next_schedule_fire(&wall, &self.app.recycle.schedule).map(|next| {
                (
                    Instant::now() + schedule::duration_until(&wall, &next),
                    next,
                )
            });
        let reason = RecycleReason::Schedule {
            at: at.strftime("%H:%M").to_string(),
        };
        self.request_recycle(reason, None, None);
    }

    fn kill_after_timeout(&mut self, pid: i32, now: Instant) {
        let Some(w) = self.workers.get_mut(&pid) else {
            return;
        };
        w.kill_at = None;
        w.killed = true;
        let mut e = Event::new(&self.app.name, "killed");
        e = e.of_worker(w.slot, w.generation, pid);
        e.drain_ms = w.retire_started.map(|t| (now - t).as_millis() as u64);
        e.detail = Some(format!(
            "still running {} after {}; SIGKILL to its process group",
            humanize(self.app.recycle.shutdown_timeout),
            self.app.recycle.stop_signal.name
        ));
        self.emit(e);
        self.kill_group(pid);
    }

    fn on_startup_timeout(&mut self, pid: i32) {
        let timeout = self.app.recycle.startup_timeout;
        let Some(w) = self.workers.get_mut(&pid) else {
            return;
        };
        w.startup_deadline = None;
        let tail: Vec<String> = w.tail.lock().unwrap().iter().cloned().collect();
        let mut e = Event::new(&self.app.name, "startup_failed");
        e = e.of_worker(w.slot, w.generation, pid);
        e.detail = Some(format!(
            "not ready within startup_timeout {}; killed, the previous generation keeps serving",
            humanize(timeout)
        ));
        e.stderr_tail = Some(tail);
        // Killed without a drain: it never served. Its exit is then expected.
        w.role = Role::Retiring;
        w.killed = true;
        let slot = w.slot;
        let mut was_candidate = false;
        if let Some(s) = self.slots.get_mut(slot as usize) {
            was_candidate = s.candidate == Some(pid);
            if was_candidate {
                s.candidate = None;
            }
            if s.current == Some(pid) {
                s.current = None;
            }
        }
        self.emit(e);
        self.kill_group(pid);
        if self.count_crash() {
            return;
        }
        if was_candidate {
            self.finish_job(Err(format!(
                "the new worker was not ready within {}",
                humanize(timeout)
            )));
        }
        if self
            .slots
            .get(slot as usize)
            .is_some_and(|s| s.current.is_none() && s.candidate.is_none())
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
            AppState::Idle => "idle",
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
            config_generation: self.config_generation,
            watch: self.watcher.as_ref().map(|w| {
                let s = w.stats();
                format!("{} ({} files)", s.backend, s.files)
            }),
            next_schedule: self
                .next_schedule
                .as_ref()
                .map(|(_, at)| at.strftime("%Y-%m-%d %H:%M").to_string()),
        }
    }
}

fn list_paths(paths: &[String], count: usize) -> String {
    let mut s = paths.join(", ");
    if count > paths.len() {
        s.push_str(&format!(" (+{} more)", count - paths.len()));
    }
    s
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
