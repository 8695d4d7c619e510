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
//! `shutdown_timeout` (event `killed`). Candidates start `batch` at a time (by
//! default a quarter of the slots, rounded up: one at a time up to 4 workers), each
//! beside the worker it replaces, so capacity never drops. A candidate that exits or
//! misses `startup_timeout` is killed, the rest of its batch is stopped, the old
//! workers keep serving, and `startup_failed` is logged with its last stderr lines.
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
//! The first crash of a serving worker since the backoff last reset is restarted at
//! once; each further failure in a row waits a backoff that starts at
//! `backoff_initial` and doubles up to `backoff_max`; a worker that stays up
//! `stable_uptime` resets it. A startup failure always waits the backoff. `rapid_fail_max_crashes` crashes (or
//! startup failures) within `rapid_fail_interval` stop the app:
//! `stopped (rapid-fail)`, until `appvisor start APP`.
//!
//! # Layout
//! - `mod.rs` — [`PoolCommand`], [`start_pool`], the pool's state and its command
//!   loop (one `select!`, one timer on the nearest deadline); start, stop, reconfigure.
//! - `handle.rs` — [`PoolHandle`]. `job.rs` — the recycle job and coalescing.
//! - `worker.rs` — a worker's phase (`Starting`, `Serving`, `Retiring`, each with
//!   only its own deadlines): spawn, ready, notify messages, retire, exit.
//! - `crash.rs` — backoff and rapid-fail. `deadlines.rs` — what each deadline does.
//! - `app_memory.rs` — `app_memory`, each worker's private bytes at ready, and the
//!   candidates offered to `[supervisor] memory_pressure`.
//! - `triggers.rs` — reactions to watch decisions, memory, probes, schedule, idle.
//! - `status.rs` — [`AppStatus`]. `process.rs` — [`ProcessTable`], the seam every
//!   side effect on a process goes through, and [`OsProcessTable`], the real one.
//! - `tests/` — the state machine under a fake process table and paused time.

mod app_memory;
mod crash;
mod deadlines;
mod handle;
mod job;
mod process;
mod sample;
mod status;
#[cfg(test)]
mod tests;
mod triggers;
mod worker;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::PathBuf;
use std::time::Duration;

use appvisor_config::{AppConfig, ListenAddress, ReadyCheck};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::events::{Event, EventKind, EventLog};
use crate::guard::Guard;
use crate::output::AppLog;
use crate::reaper::{signal_name, Exit, ExitStatus, Reaper};
use crate::reason::RecycleReason;
use crate::sd_notify::NotifyMessage;
use crate::sockets::BoundSocket;
use crate::trigger::memory::{self, MemoryVerdict};
use crate::trigger::schedule::{self, JitterRng, ScheduleTimer};
use crate::trigger::watch::{AppWatcher, WatchDecision};

pub use app_memory::{PressureCandidate, PressureOffer};
use crash::Failure;
use deadlines::sleep_until_opt;
pub use handle::{PoolHandle, Reply};
use job::{Pending, RecycleJob};
pub use process::{OsProcessTable, ProcessTable, SpawnRequest, SpawnedWorker};
pub use sample::HistoryInfo;
pub use status::{AppRunState, AppStatus, LastRecycle, WorkerRunState, WorkerStatus};
use worker::{Entry, Phase, Retire, Slot, Worker};

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
    /// Where the app's history is and the limits in force (`history` requests).
    HistoryInfo {
        reply: oneshot::Sender<sample::HistoryInfo>,
    },
    /// Stop every worker and end the pool's task.
    Shutdown {
        done: oneshot::Sender<()>,
    },
    /// The workers `[supervisor] memory_pressure` may recycle, with their growth.
    PressureCandidates {
        reply: oneshot::Sender<PressureOffer>,
    },
    /// Recycle the worker `pid` (if it still serves) gracefully.
    RecycleWorker {
        pid: i32,
        reason: RecycleReason,
    },
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
    /// `[supervisor] sample_interval`, and where the app's history is recorded.
    pub sample_interval: Duration,
    pub history: Option<crate::history::recorder::RecorderSpec>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AppState {
    Running,
    /// Stopped by `idle_timeout`; the next connection starts it.
    Idle,
    /// Workers were told to stop; when the last is gone the state follows the cause.
    Stopping(StopCause),
    Stopped,
    RapidFailStopped,
}

/// Why the app's workers are being stopped: decides the state it ends in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopCause {
    /// `appvisor stop`, or the supervisor shutting down → `Stopped`.
    Asked,
    /// Too many crashes in `rapid_fail_interval` → `RapidFailStopped`.
    RapidFail,
    /// `idle_timeout` passed → `Idle`, sockets kept for an on-demand start.
    Idle,
}

/// Messages from tasks the pool started (probes, the watcher's setup, the idle wake).
enum Internal {
    ProbeOk(i32),
    HealthProbe(bool),
    Watcher(Result<AppWatcher, String>),
    /// A connection arrived while idle.
    Wake,
}

/// Starts the pool's task for `app` on `sockets` and returns its handle. The
/// workers are started at once.
pub fn start_pool(app: AppConfig, sockets: Vec<BoundSocket>, ctx: PoolContext) -> PoolHandle {
    let table = OsProcessTable {
        run_dir: ctx.run_dir,
        reaper: ctx.reaper,
        guard: ctx.guard,
        log: ctx.log,
        cgroups: Default::default(),
        markers: Default::default(),
        oom: Default::default(),
    };
    let (mut pool, inbox, handle) = Pool::new(
        app,
        sockets,
        ctx.events,
        ctx.extra_env,
        ctx.config_generation,
        Box::new(table),
    );
    let recorder = ctx.history.and_then(|spec| {
        spec.open(crate::history::now_ms())
            .and_then(crate::history::recorder::RecorderThread::start)
            .map_err(|e| {
                tracing::warn!(
                    "Cannot open the history of app {:?} in {} ({e}); its workers are sampled for `status` but nothing is recorded.",
                    spec.app,
                    spec.dir.display()
                )
            })
            .ok()
    });
    pool.sampler = sample::Sampler::new(ctx.sample_interval, recorder, sample::shared_origin());
    tokio::spawn(pool.run(inbox));
    handle
}

/// What a pool's task receives, besides its own deadlines.
struct Inbox {
    commands: mpsc::UnboundedReceiver<PoolCommand>,
    internal: mpsc::UnboundedReceiver<Internal>,
    notify: mpsc::UnboundedReceiver<(i32, NotifyMessage)>,
    watch: mpsc::UnboundedReceiver<WatchDecision>,
    exits: mpsc::UnboundedReceiver<Exit>,
}

impl Pool {
    /// A pool over any process table (the unit tests pass a fake one), not yet
    /// running: [`Pool::run`] starts its workers.
    fn new(
        app: AppConfig,
        sockets: Vec<BoundSocket>,
        events: EventLog,
        extra_env: Vec<(String, String)>,
        config_generation: u64,
        table: Box<dyn ProcessTable>,
    ) -> (Pool, Inbox, PoolHandle) {
        let (tx, rx) = mpsc::unbounded_channel();
        let handle = PoolHandle {
            name: app.name.clone(),
            tx,
        };
        let (itx, irx) = mpsc::unbounded_channel();
        let (ntx, nrx) = mpsc::unbounded_channel();
        let (wtx, wrx) = mpsc::unbounded_channel();
        let (etx, erx) = mpsc::unbounded_channel();
        let slots = (0..app.processes).map(|_| Slot::default()).collect();
        let pool = Pool {
            app,
            sockets,
            events,
            extra_env,
            table,
            slots,
            workers: HashMap::new(),
            job: None,
            pending: None,
            state: AppState::Running,
            generation: 0,
            spawn_seq: 0,
            crashes: VecDeque::new(),
            total_crashes: 0,
            escaped: BTreeSet::new(),
            recycles: 0,
            last_recycle: None,
            start_waiters: Vec::new(),
            stop_waiters: Vec::new(),
            shutdown_waiter: None,
            internal_tx: itx,
            notify_tx: ntx,
            watch_tx: wtx,
            exit_tx: etx,
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
            memory_start: HashMap::new(),
            sampler: sample::Sampler::new(
                appvisor_config::DEFAULT_SAMPLE_INTERVAL,
                None,
                Instant::now(),
            ),
        };
        let inbox = Inbox {
            commands: rx,
            internal: irx,
            notify: nrx,
            watch: wrx,
            exits: erx,
        };
        (pool, inbox, handle)
    }
}

struct Pool {
    app: AppConfig,
    sockets: Vec<BoundSocket>,
    events: EventLog,
    /// Extra environment for workers (the store URL, session settings).
    extra_env: Vec<(String, String)>,
    /// Every side effect on a process goes through here.
    table: Box<dyn ProcessTable>,
    slots: Vec<Slot>,
    workers: HashMap<i32, Worker>,
    job: Option<RecycleJob>,
    pending: Option<Pending>,
    state: AppState,
    generation: u64,
    spawn_seq: u64,
    crashes: VecDeque<Instant>,
    total_crashes: u64,
    /// Pids that escaped a worker without a cgroup (issue 12), shown by `status`
    /// while they run.
    escaped: BTreeSet<i32>,
    recycles: u64,
    last_recycle: Option<LastRecycle>,
    start_waiters: Vec<oneshot::Sender<Reply>>,
    stop_waiters: Vec<oneshot::Sender<Reply>>,
    shutdown_waiter: Option<oneshot::Sender<()>>,
    internal_tx: mpsc::UnboundedSender<Internal>,
    notify_tx: mpsc::UnboundedSender<(i32, NotifyMessage)>,
    watch_tx: mpsc::UnboundedSender<WatchDecision>,
    /// Every worker's exit, from the reaper.
    exit_tx: mpsc::UnboundedSender<Exit>,
    watcher: Option<AppWatcher>,
    /// Bumped on reconfigure, so a watcher started for old settings is dropped.
    watcher_epoch: u64,
    rng: JitterRng,
    /// `schedule`: `None` when the app has no times of day.
    next_schedule: Option<ScheduleTimer>,
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
    /// Each worker's private bytes when it became ready (`app_memory` and memory
    /// pressure recycle the one that grew most since).
    memory_start: HashMap<i32, u64>,
    /// Every worker sampled each `sample_interval` into the app's history.
    sampler: sample::Sampler,
}

impl Pool {
    async fn run(mut self, inbox: Inbox) {
        let Inbox {
            mut commands,
            mut internal,
            mut notify,
            mut watch,
            mut exits,
        } = inbox;
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
                    Internal::ProbeOk(pid) => self.on_ready(pid),
                    Internal::HealthProbe(ok) => self.on_health_probe(ok),
                    Internal::Watcher(w) => self.on_watcher(w),
                    Internal::Wake => self.on_wake(),
                },
                Some(exit) = exits.recv() => self.on_exit(exit),
                Some((pid, m)) = notify.recv() => self.on_notify(pid, m),
                Some(d) = watch.recv() => self.on_watch(d),
                _ = sleep_until_opt(deadline) => self.on_deadlines(),
            }
        }
    }

    fn event(&self, kind: EventKind) -> Event {
        Event::new(&self.app.name, kind)
    }

    fn emit(&self, e: Event) {
        self.events.emit(e);
    }

    fn running(&self) -> bool {
        self.state == AppState::Running && self.shutdown_waiter.is_none()
    }

    // ---- commands -------------------------------------------------------------

    fn on_command(&mut self, cmd: PoolCommand) {
        match cmd {
            PoolCommand::PressureCandidates { reply } => {
                let _ = reply.send(self.pressure_candidates());
            }
            PoolCommand::RecycleWorker { pid, reason } => self.recycle_worker(pid, reason),
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
                AppState::Stopping(_) => {
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
                    self.stop_all(StopCause::Asked);
                }
            },
            PoolCommand::Status { reply } => {
                let _ = reply.send(self.status());
            }
            PoolCommand::HistoryInfo { reply } => {
                let _ = reply.send(self.history_info());
            }
            PoolCommand::Shutdown { done } => {
                self.shutdown_waiter = Some(done);
                self.watcher = None;
                if !matches!(
                    self.state,
                    AppState::Stopped | AppState::RapidFailStopped | AppState::Idle
                ) {
                    self.stop_all(StopCause::Asked);
                }
            }
        }
    }

    fn start_all(&mut self) {
        self.generation += 1;
        self.last_activity = Instant::now();
        let generation = self.generation;
        for slot in 0..self.slots.len() {
            if self.slots[slot].current.is_none() && self.slots[slot].candidate.is_none() {
                if let Err(msg) = self.spawn_worker(slot as u32, generation, Entry::Fill) {
                    self.emit(self.event(EventKind::StartupFailed).detail(msg));
                    self.on_crash_of_slot(slot as u32, Failure::Startup);
                }
            }
        }
    }

    /// Stops every worker (graceful, then SIGKILL after `shutdown_timeout`).
    fn stop_all(&mut self, cause: StopCause) {
        self.abort_job(if cause == StopCause::RapidFail {
            "rapid-fail protection stopped the app"
        } else {
            "the app is stopping"
        });
        self.state = AppState::Stopping(cause);
        for slot in &mut self.slots {
            slot.restart_at = None;
        }
        let pids: Vec<i32> = self
            .workers
            .values()
            .filter(|w| !w.is_retiring())
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
        if let AppState::Stopping(cause) = self.state {
            if self.workers.is_empty() {
                self.state = match cause {
                    StopCause::RapidFail => AppState::RapidFailStopped,
                    StopCause::Idle if self.shutdown_waiter.is_none() => AppState::Idle,
                    StopCause::Idle | StopCause::Asked => AppState::Stopped,
                };
                match self.state {
                    AppState::Idle => self.arm_wake(),
                    // Rapid-fail wrote its own event when it stopped the app.
                    AppState::RapidFailStopped => {}
                    _ => self.emit(self.event(EventKind::Stopped)),
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
}

/// `90 s`, `5 min`, `250 ms`.
pub fn humanize(d: Duration) -> String {
    crate::events::human_ms(d.as_millis() as u64)
}
