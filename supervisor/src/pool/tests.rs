//! The pool as a state machine: a fake process table, paused tokio time.
//!
//! The fake records every spawn, signal and group kill in order, and lets a test
//! deliver what the real world would: READY and other notify messages, exits,
//! memory figures, probe answers, a connection on an idle socket. By default a
//! worker exits as soon as it gets its stop signal (a well-behaved drain) and when
//! its group is SIGKILLed. Time is paused: `settle` lets every queued message be
//! handled and moves the clock by one millisecond; `advance` moves it further, and
//! the pool's deadlines fire on the way exactly as they would in real time.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use appvisor_config::Listen;
use tokio::sync::broadcast;

use super::process::{BoxFuture, StderrTail};
use super::*;
use crate::trigger::memory::MemorySample;

const SIGTERM: i32 = 15;
const SIGHUP: i32 = 1;

/// What the pool did, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Spawn {
        pid: i32,
        slot: u32,
        generation: u64,
    },
    Signal {
        pid: i32,
        signal: i32,
    },
    KillGroup {
        pid: i32,
    },
}

#[derive(Default)]
struct FakeState {
    next_pid: i32,
    ops: Vec<Op>,
    /// When each pid was spawned (paused clock).
    spawned_at: HashMap<i32, Instant>,
    alive: HashSet<i32>,
    exits: HashMap<i32, mpsc::UnboundedSender<Exit>>,
    notify: HashMap<i32, mpsc::UnboundedSender<(i32, NotifyMessage)>>,
    /// A worker that ignores its stop signal (never drains).
    stubborn: bool,
    /// Spawns fail (e.g. the command does not exist).
    spawn_fails: bool,
    memory: HashMap<i32, MemorySample>,
    http_ok: bool,
    wake: Option<tokio::sync::oneshot::Sender<()>>,
}

#[derive(Clone, Default)]
struct Fake(Arc<Mutex<FakeState>>);

impl Fake {
    fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.0.lock().unwrap()
    }

    fn ops(&self) -> Vec<Op> {
        self.state().ops.clone()
    }

    fn spawned(&self) -> Vec<i32> {
        self.ops()
            .iter()
            .filter_map(|o| match o {
                Op::Spawn { pid, .. } => Some(*pid),
                _ => None,
            })
            .collect()
    }

    fn last_spawn(&self) -> i32 {
        *self.spawned().last().expect("a spawn")
    }

    fn signals_to(&self, pid: i32) -> Vec<i32> {
        self.ops()
            .iter()
            .filter_map(|o| match o {
                Op::Signal { pid: p, signal } if *p == pid => Some(*signal),
                _ => None,
            })
            .collect()
    }

    fn position(&self, op: &Op) -> Option<usize> {
        self.ops().iter().position(|o| o == op)
    }

    fn send_notify(&self, pid: i32, m: NotifyMessage) {
        let tx = self.state().notify.get(&pid).cloned().expect("spawned");
        let _ = tx.send((pid, m));
    }

    fn ready(&self, pid: i32) {
        self.send_notify(
            pid,
            NotifyMessage {
                ready: true,
                ..NotifyMessage::default()
            },
        );
    }

    fn exit(&self, pid: i32, status: ExitStatus) {
        let mut st = self.state();
        if st.alive.remove(&pid) {
            let _ = st.exits[&pid].send(Exit { pid, status });
        }
    }
}

impl ProcessTable for Fake {
    fn spawn(&mut self, request: SpawnRequest<'_>) -> Result<SpawnedWorker, String> {
        let mut st = self.state();
        if st.spawn_fails {
            return Err("cannot execute the command".into());
        }
        st.next_pid += 1;
        let pid = 1000 + st.next_pid;
        let env = |k: &str| {
            request
                .env
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.parse::<u64>().unwrap())
                .unwrap()
        };
        let (slot, generation) = (env("APPVISOR_WORKER") as u32, env("APPVISOR_GENERATION"));
        st.ops.push(Op::Spawn {
            pid,
            slot,
            generation,
        });
        st.spawned_at.insert(pid, Instant::now());
        st.alive.insert(pid);
        st.exits.insert(pid, request.exits);
        st.notify.insert(pid, request.notify);
        let tail: StderrTail = Arc::default();
        tail.lock()
            .unwrap()
            .push_back(format!("worker {pid} says goodbye"));
        Ok(SpawnedWorker {
            pid,
            tail,
            resources: Box::new(()),
        })
    }

    fn signal(&mut self, pid: i32, signal: i32) {
        let stubborn = {
            let mut st = self.state();
            st.ops.push(Op::Signal { pid, signal });
            st.stubborn
        };
        if signal == SIGTERM && !stubborn {
            self.exit(pid, ExitStatus::Code(0));
        }
    }

    fn kill_group(&mut self, pgid: i32) {
        self.state().ops.push(Op::KillGroup { pid: pgid });
        self.exit(pgid, ExitStatus::Signal(9));
    }

    fn release(&mut self, _pgid: i32) {}

    fn memory(&mut self, pid: i32) -> Option<MemorySample> {
        Some(self.state().memory.get(&pid).copied().unwrap_or_default())
    }

    fn cpu_ticks(&mut self, _pid: i32) -> Option<u64> {
        Some(0)
    }

    fn ticks_per_second(&self) -> f64 {
        100.0
    }

    fn rss(&self, _pid: i32) -> Option<u64> {
        None
    }

    fn http_ok(
        &self,
        _address: ListenAddress,
        _path: String,
        _timeout: Duration,
    ) -> BoxFuture<bool> {
        let ok = self.state().http_ok;
        Box::pin(async move { ok })
    }

    fn wait_http_ready(&self, _address: ListenAddress, _path: String) -> BoxFuture<()> {
        Box::pin(std::future::pending())
    }

    fn wait_for_connection(&self, _fds: Vec<std::os::fd::RawFd>) -> BoxFuture<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.state().wake = Some(tx);
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}

/// An app with one slot, `ready = "notify"`, no watcher, and round figures.
fn app(processes: u32) -> AppConfig {
    let text = "[[app]]\nname = \"web\"\ncommand = [\"worker\"]\n";
    let config = appvisor_config::parse(text, std::path::Path::new("/tmp/appvisor.toml"))
        .expect("test config");
    let mut app = config.apps[0].clone();
    app.processes = processes;
    app.ready = ReadyCheck::Notify;
    app.watch.enabled = false;
    let rc = &mut app.recycle;
    rc.overlapped = true;
    rc.startup_timeout = Duration::from_secs(10);
    rc.shutdown_timeout = Duration::from_secs(30);
    rc.stop_signal = appvisor_config::Signal {
        name: "SIGTERM",
        number: SIGTERM,
    };
    let f = &mut app.failure;
    f.rapid_fail_max_crashes = 100;
    f.rapid_fail_interval = Duration::from_secs(60);
    f.backoff_initial = Duration::from_secs(1);
    f.backoff_max = Duration::from_secs(4);
    f.stable_uptime = Duration::from_secs(60);
    app
}

struct Harness {
    handle: PoolHandle,
    fake: Fake,
    events: broadcast::Receiver<Arc<str>>,
    seen: Vec<Event>,
    watch_tx: mpsc::UnboundedSender<WatchDecision>,
}

static DIRS: AtomicU32 = AtomicU32::new(0);

fn event_log() -> EventLog {
    let dir = std::env::temp_dir().join(format!(
        "appvisor-pool-test-{}-{}",
        std::process::id(),
        DIRS.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    EventLog::open(&dir.join("events.jsonl")).unwrap()
}

fn new_pool(app: AppConfig, sockets: Vec<BoundSocket>, fake: &Fake) -> (Pool, Inbox, PoolHandle) {
    Pool::new(
        app,
        sockets,
        event_log(),
        Vec::new(),
        1,
        Box::new(fake.clone()),
    )
}

/// Starts the pool's task; every worker is spawned, none is ready yet.
async fn start(app: AppConfig) -> Harness {
    start_with(app, Vec::new(), Fake::default()).await
}

async fn start_with(app: AppConfig, sockets: Vec<BoundSocket>, fake: Fake) -> Harness {
    let (pool, inbox, handle) = new_pool(app, sockets, &fake);
    let events = pool.events.subscribe();
    let watch_tx = pool.watch_tx.clone();
    tokio::spawn(pool.run(inbox));
    let mut h = Harness {
        handle,
        fake,
        events,
        seen: Vec::new(),
        watch_tx,
    };
    h.settle().await;
    h
}

/// Starts the pool and makes every worker ready.
async fn serving(app: AppConfig) -> Harness {
    let mut h = start(app).await;
    for pid in h.fake.spawned() {
        h.fake.ready(pid);
    }
    h.settle().await;
    h
}

impl Harness {
    /// Lets every queued message be handled (the clock moves by 1 ms).
    async fn settle(&mut self) {
        tokio::time::sleep(Duration::from_millis(1)).await;
        self.collect();
    }

    async fn advance(&mut self, d: Duration) {
        tokio::time::sleep(d).await;
        self.settle().await;
    }

    fn collect(&mut self) {
        while let Ok(line) = self.events.try_recv() {
            self.seen.push(serde_json::from_str(&line).unwrap());
        }
    }

    fn kinds(&self) -> Vec<EventKind> {
        self.seen.iter().map(|e| e.kind).collect()
    }

    fn count(&self, kind: EventKind) -> usize {
        self.seen.iter().filter(|e| e.kind == kind).count()
    }

    fn last(&self, kind: EventKind) -> &Event {
        self.seen
            .iter()
            .rev()
            .find(|e| e.kind == kind)
            .unwrap_or_else(|| panic!("no {kind} event in {:?}", self.kinds()))
    }

    async fn status(&self) -> AppStatus {
        self.handle.status().await.expect("pool alive")
    }

    /// Workers that are ready and not draining.
    async fn serving_pids(&self) -> Vec<i32> {
        self.status()
            .await
            .workers
            .iter()
            .filter(|w| w.state == WorkerRunState::Ready)
            .map(|w| w.pid)
            .collect()
    }

    /// Starts `appvisor recycle` and returns its reply later.
    fn recycle(&self) -> tokio::task::JoinHandle<Reply> {
        let handle = self.handle.clone();
        tokio::spawn(async move { handle.recycle(RecycleReason::Manual).await })
    }
}

// ---- recycle ------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn overlapped_recycle_keeps_capacity_and_stops_old_only_after_new_is_ready() {
    let mut h = serving(app(2)).await;
    let old = h.fake.spawned();
    assert_eq!(h.serving_pids().await.len(), 2);

    let reply = h.recycle();
    h.settle().await;
    let new0 = h.fake.last_spawn();
    assert_eq!(h.fake.spawned().len(), 3, "one candidate at a time");
    h.advance(Duration::from_secs(5)).await;
    assert!(
        h.fake.signals_to(old[0]).is_empty(),
        "old told to stop before new ready"
    );
    assert_eq!(h.serving_pids().await.len(), 2);

    h.fake.ready(new0);
    h.settle().await;
    assert_eq!(h.fake.signals_to(old[0]), vec![SIGTERM]);
    let ready_then_stop = h.fake.position(&Op::Signal {
        pid: old[0],
        signal: SIGTERM,
    });
    assert!(
        ready_then_stop
            > h.fake.position(&Op::Spawn {
                pid: new0,
                slot: 0,
                generation: 2
            })
    );
    assert_eq!(h.serving_pids().await.len(), 2, "capacity never drops");
    assert!(h.fake.signals_to(old[1]).is_empty(), "one slot at a time");

    let new1 = h.fake.last_spawn();
    assert_ne!(new1, new0);
    h.fake.ready(new1);
    h.settle().await;
    let reply = reply.await.unwrap().expect("recycle succeeds");
    assert!(
        reply.contains("recycled 2 worker(s) to generation 2"),
        "{reply}"
    );
    let mut serving = h.serving_pids().await;
    serving.sort();
    assert_eq!(serving, vec![new0, new1]);
    assert_eq!(h.count(EventKind::Recycle), 2);
    assert_eq!(h.count(EventKind::Retired), 2);
    assert_eq!(h.last(EventKind::Recycle).old_pid, Some(old[1]));
}

#[tokio::test(start_paused = true)]
async fn non_overlapped_recycle_stops_old_first_then_starts_new() {
    let mut a = app(1);
    a.recycle.overlapped = false;
    let mut h = serving(a).await;
    h.fake.state().stubborn = true;
    let old = h.fake.spawned()[0];

    let reply = h.recycle();
    h.settle().await;
    assert_eq!(h.fake.signals_to(old), vec![SIGTERM]);
    assert_eq!(
        h.fake.spawned().len(),
        1,
        "no new worker while the old one runs"
    );

    h.fake.exit(old, ExitStatus::Code(0));
    h.settle().await;
    assert_eq!(h.fake.spawned().len(), 2);
    let new = h.fake.last_spawn();
    h.fake.ready(new);
    h.settle().await;
    assert!(reply.await.unwrap().is_ok());
    assert_eq!(h.serving_pids().await, vec![new]);
    assert_eq!(
        h.kinds()
            .iter()
            .filter(|k| **k == EventKind::Retired)
            .count(),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn recycle_requests_during_a_recycle_coalesce_into_one_follow_up() {
    let mut h = serving(app(1)).await;
    let first = h.recycle();
    h.settle().await;
    assert_eq!(h.fake.spawned().len(), 2);
    let waiting: Vec<_> = (0..5).map(|_| h.recycle()).collect();
    h.settle().await;
    assert_eq!(h.count(EventKind::RecycleQueued), 5);
    assert_eq!(h.fake.spawned().len(), 2, "nothing starts while a job runs");

    h.fake.ready(h.fake.last_spawn());
    h.settle().await;
    assert!(first.await.unwrap().is_ok());
    assert_eq!(h.fake.spawned().len(), 3, "exactly one follow-up");
    h.fake.ready(h.fake.last_spawn());
    h.settle().await;
    for w in waiting {
        assert!(w.await.unwrap().unwrap().contains("generation 3"));
    }
    h.advance(Duration::from_secs(60)).await;
    assert_eq!(h.fake.spawned().len(), 3, "and nothing after it");
    assert_eq!(h.count(EventKind::Recycle), 2);
}

// ---- startup failure ------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_candidate_not_ready_within_startup_timeout_is_killed_and_the_old_keeps_serving() {
    let mut h = serving(app(1)).await;
    let old = h.fake.spawned()[0];
    let reply = h.recycle();
    h.settle().await;
    let new = h.fake.last_spawn();

    h.advance(Duration::from_millis(9_990)).await;
    assert!(
        h.fake.position(&Op::KillGroup { pid: new }).is_none(),
        "killed early"
    );
    h.advance(Duration::from_millis(20)).await;
    assert!(h.fake.position(&Op::KillGroup { pid: new }).is_some());
    let failed = h.last(EventKind::StartupFailed);
    assert!(failed
        .detail
        .as_deref()
        .unwrap()
        .contains("startup_timeout"));
    let err = reply.await.unwrap().unwrap_err();
    assert!(err.contains("previous generation keeps serving"), "{err}");
    assert!(h.fake.signals_to(old).is_empty());
    assert_eq!(h.serving_pids().await, vec![old]);
    assert_eq!(h.status().await.workers.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_candidate_that_exits_before_ready_fails_the_recycle_and_the_old_keeps_serving() {
    let mut h = serving(app(1)).await;
    let old = h.fake.spawned()[0];
    let reply = h.recycle();
    h.settle().await;
    let new = h.fake.last_spawn();
    h.fake.exit(new, ExitStatus::Code(3));
    h.settle().await;

    let failed = h.last(EventKind::StartupFailed);
    assert_eq!(failed.exit_code, Some(3));
    assert_eq!(
        failed.stderr_tail.as_deref(),
        Some(&[format!("worker {new} says goodbye")][..])
    );
    assert!(reply.await.unwrap().is_err());
    assert!(h.fake.signals_to(old).is_empty());
    assert_eq!(h.serving_pids().await, vec![old]);
    h.advance(Duration::from_secs(30)).await;
    assert_eq!(
        h.fake.spawned().len(),
        2,
        "a failed candidate is not restarted"
    );
}

// ---- drain ----------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_worker_still_draining_at_shutdown_timeout_gets_its_group_killed() {
    let mut h = serving(app(1)).await;
    h.fake.state().stubborn = true;
    let old = h.fake.spawned()[0];
    let reply = h.recycle();
    h.settle().await;
    h.fake.ready(h.fake.last_spawn());
    h.settle().await;
    assert!(reply.await.unwrap().is_ok());
    assert_eq!(h.fake.signals_to(old), vec![SIGTERM]);

    h.advance(Duration::from_millis(29_990)).await;
    assert!(
        h.fake.position(&Op::KillGroup { pid: old }).is_none(),
        "killed early"
    );
    h.advance(Duration::from_millis(20)).await;
    assert!(h.fake.position(&Op::KillGroup { pid: old }).is_some());
    let killed = h.last(EventKind::Killed);
    assert_eq!(killed.pid, Some(old));
    assert!(killed.drain_ms.unwrap() >= 30_000);
    assert_eq!(
        h.count(EventKind::Retired),
        0,
        "a killed worker did not retire"
    );
    assert_eq!(h.status().await.workers.len(), 1);
}

// ---- crashes --------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn crash_backoff_doubles_to_its_cap_and_resets_after_a_stable_uptime() {
    let mut h = serving(app(1)).await;
    let mut delays = Vec::new();
    for _ in 0..5 {
        let pid = h.fake.last_spawn();
        h.fake.exit(pid, ExitStatus::Code(1));
        let crashed_at = Instant::now();
        h.settle().await;
        // The restart comes at the backoff deadline: wait for it.
        while h.fake.last_spawn() == pid {
            h.advance(Duration::from_millis(10)).await;
        }
        let new = h.fake.last_spawn();
        let at = h.fake.state().spawned_at[&new];
        delays.push((at - crashed_at).as_millis() / 100 * 100);
        h.fake.ready(new);
        h.settle().await;
    }
    assert_eq!(delays, vec![1000, 2000, 4000, 4000, 4000]);
    assert_eq!(h.count(EventKind::Crashed), 5);

    // Up for `stable_uptime`: the next crash restarts after the initial backoff.
    h.advance(Duration::from_secs(61)).await;
    let pid = h.fake.last_spawn();
    h.fake.exit(pid, ExitStatus::Code(1));
    h.settle().await;
    h.advance(Duration::from_millis(990)).await;
    assert_eq!(h.fake.last_spawn(), pid);
    h.advance(Duration::from_millis(20)).await;
    assert_ne!(h.fake.last_spawn(), pid);
}

#[tokio::test(start_paused = true)]
async fn rapid_fail_stops_the_app_until_start() {
    let mut a = app(1);
    a.failure.rapid_fail_max_crashes = 3;
    a.failure.rapid_fail_interval = Duration::from_secs(60);
    let mut h = serving(a).await;
    for _ in 0..3 {
        let pid = h.fake.last_spawn();
        h.fake.exit(pid, ExitStatus::Code(1));
        h.settle().await;
        h.advance(Duration::from_secs(5)).await;
    }
    assert_eq!(h.count(EventKind::RapidFailStopped), 1);
    assert_eq!(h.status().await.state, AppRunState::RapidFailStopped);
    let spawns = h.fake.spawned().len();
    assert_eq!(spawns, 3, "no restart after the third crash");
    h.advance(Duration::from_secs(120)).await;
    assert_eq!(h.fake.spawned().len(), spawns, "stays stopped");
    assert!(h.handle.recycle(RecycleReason::Manual).await.is_err());

    let handle = h.handle.clone();
    let started = tokio::spawn(async move { handle.start().await });
    h.settle().await;
    assert_eq!(h.fake.spawned().len(), spawns + 1);
    h.fake.ready(h.fake.last_spawn());
    h.settle().await;
    assert!(started.await.unwrap().unwrap().contains("started"));
    assert_eq!(h.status().await.state, AppRunState::Running);
}

#[tokio::test(start_paused = true)]
async fn stop_then_start() {
    let mut h = serving(app(2)).await;
    let old = h.fake.spawned();
    assert!(h.handle.stop().await.unwrap().contains("stopped"));
    h.collect();
    for pid in &old {
        assert_eq!(h.fake.signals_to(*pid), vec![SIGTERM]);
    }
    assert_eq!(h.status().await.state, AppRunState::Stopped);
    assert_eq!(h.count(EventKind::Stopped), 1);
    let handle = h.handle.clone();
    let started = tokio::spawn(async move { handle.start().await });
    h.settle().await;
    for pid in &h.fake.spawned()[2..] {
        h.fake.ready(*pid);
    }
    h.settle().await;
    assert!(started.await.unwrap().is_ok());
    assert_eq!(h.serving_pids().await.len(), 2);
}

// ---- idle -----------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn idle_timeout_stops_the_workers_and_a_connection_starts_them() {
    let mut a = app(1);
    a.recycle.idle_timeout = Some(Duration::from_secs(60));
    let mut h = serving(a).await;
    let old = h.fake.last_spawn();
    h.advance(Duration::from_secs(30)).await;
    h.fake.send_notify(
        old,
        NotifyMessage {
            requests: Some(1),
            ..NotifyMessage::default()
        },
    );
    h.advance(Duration::from_secs(50)).await;
    assert!(
        h.fake.signals_to(old).is_empty(),
        "a request resets the idle clock"
    );
    h.advance(Duration::from_secs(11)).await;
    assert_eq!(h.fake.signals_to(old), vec![SIGTERM]);
    assert_eq!(h.count(EventKind::IdleStop), 1);
    assert_eq!(h.status().await.state, AppRunState::Idle);
    assert_eq!(h.count(EventKind::Stopped), 0);

    let wake = h
        .fake
        .state()
        .wake
        .take()
        .expect("waiting for a connection");
    let _ = wake.send(());
    h.settle().await;
    assert_eq!(h.count(EventKind::OnDemandStart), 1);
    assert_eq!(h.fake.spawned().len(), 2);
    h.fake.ready(h.fake.last_spawn());
    h.settle().await;
    assert_eq!(h.status().await.state, AppRunState::Running);
}

// ---- triggers -------------------------------------------------------------------

/// The recycle a trigger caused: a candidate spawned for `slot`, and once it is
/// ready, a `recycle` event with `reason`.
async fn expect_recycle(h: &mut Harness, slot: u32, reason: &str) {
    let candidate = h.fake.last_spawn();
    let spawn = h
        .fake
        .ops()
        .into_iter()
        .rev()
        .find(|o| matches!(o, Op::Spawn { .. }));
    assert!(
        matches!(spawn, Some(Op::Spawn { slot: s, generation, .. }) if s == slot && generation > 1),
        "no candidate for slot {slot}: {:?}",
        h.fake.ops()
    );
    h.fake.ready(candidate);
    h.settle().await;
    let e = h.last(EventKind::Recycle);
    assert_eq!(e.reason.as_deref(), Some(reason));
    assert_eq!(e.worker, Some(slot));
}

#[tokio::test(start_paused = true)]
async fn a_watch_decision_recycles_every_slot_and_a_soft_one_signals() {
    let mut a = app(2);
    a.watch.soft_signal = appvisor_config::Signal {
        name: "SIGHUP",
        number: SIGHUP,
    };
    let mut h = serving(a).await;
    let old = h.fake.spawned();
    h.watch_tx
        .send(WatchDecision::Soft {
            paths: vec!["templates/a.html".into()],
            count: 1,
        })
        .unwrap();
    h.settle().await;
    assert_eq!(h.fake.signals_to(old[0]), vec![SIGHUP]);
    assert_eq!(h.fake.signals_to(old[1]), vec![SIGHUP]);
    assert_eq!(h.fake.spawned().len(), 2, "a soft change does not recycle");

    h.watch_tx
        .send(WatchDecision::Recycle(RecycleReason::FileChange {
            paths: vec!["app.py".into()],
            count: 1,
            change: "modified".into(),
        }))
        .unwrap();
    h.settle().await;
    expect_recycle(&mut h, 0, "file_change").await;
    expect_recycle(&mut h, 1, "file_change").await;
}

#[tokio::test(start_paused = true)]
async fn private_memory_over_its_limit_recycles_that_worker() {
    let mut a = app(2);
    a.recycle.private_memory = Some(100 << 20);
    a.recycle.memory_check_interval = Duration::from_secs(1);
    let mut h = serving(a).await;
    let old = h.fake.spawned();
    h.fake.state().memory.insert(
        old[1],
        MemorySample {
            private: 200 << 20,
            ..MemorySample::default()
        },
    );
    h.advance(Duration::from_millis(990)).await;
    assert_eq!(h.fake.spawned().len(), 2);
    h.advance(Duration::from_millis(20)).await;
    assert_eq!(h.fake.spawned().len(), 3);
    expect_recycle(&mut h, 1, "memory").await;
    assert!(h.fake.signals_to(old[0]).is_empty(), "only that worker");
}

#[tokio::test(start_paused = true)]
async fn memory_hard_limit_kills_at_once_and_restarts_the_slot() {
    let mut a = app(1);
    a.recycle.memory_hard_limit = Some(100 << 20);
    a.recycle.memory_check_interval = Duration::from_secs(1);
    let mut h = serving(a).await;
    let old = h.fake.last_spawn();
    h.fake.state().memory.insert(
        old,
        MemorySample {
            private: 200 << 20,
            ..MemorySample::default()
        },
    );
    h.advance(Duration::from_secs(1)).await;
    assert!(h.fake.position(&Op::KillGroup { pid: old }).is_some());
    assert!(h.fake.signals_to(old).is_empty(), "no drain");
    assert_eq!(h.last(EventKind::Killed).reason.as_deref(), Some("memory"));
    h.settle().await;
    assert_eq!(h.fake.spawned().len(), 2, "the slot restarts at once");
    assert_eq!(h.count(EventKind::Retired), 0);
}

#[tokio::test(start_paused = true)]
async fn the_request_count_limit_recycles_that_worker() {
    let mut a = app(1);
    a.recycle.requests = Some(10);
    a.recycle.requests_jitter = 0;
    let mut h = serving(a).await;
    let old = h.fake.last_spawn();
    let requests = |n| NotifyMessage {
        requests: Some(n),
        ..NotifyMessage::default()
    };
    h.fake.send_notify(old, requests(9));
    h.settle().await;
    assert_eq!(h.fake.spawned().len(), 1);
    h.fake.send_notify(old, requests(10));
    h.settle().await;
    assert_eq!(h.fake.spawned().len(), 2, "at the limit");
    h.fake.send_notify(old, requests(11));
    h.settle().await;
    assert_eq!(h.fake.spawned().len(), 2, "once, not per report");
    expect_recycle(&mut h, 0, "requests").await;
}

#[tokio::test(start_paused = true)]
async fn the_interval_recycles_a_worker_at_its_age() {
    let mut a = app(1);
    a.recycle.interval = Some(Duration::from_secs(3600));
    a.recycle.interval_jitter = Duration::ZERO;
    let mut h = serving(a).await;
    h.advance(Duration::from_secs(3590)).await;
    assert_eq!(h.fake.spawned().len(), 1);
    h.advance(Duration::from_secs(11)).await;
    assert_eq!(h.fake.spawned().len(), 2);
    expect_recycle(&mut h, 0, "age").await;
}

#[tokio::test(start_paused = true)]
async fn a_missing_watchdog_recycles_the_worker() {
    let mut a = app(1);
    a.health.watchdog = Some(Duration::from_secs(10));
    let mut h = serving(a).await;
    let old = h.fake.last_spawn();
    h.advance(Duration::from_secs(8)).await;
    h.fake.send_notify(
        old,
        NotifyMessage {
            watchdog: true,
            ..NotifyMessage::default()
        },
    );
    h.advance(Duration::from_secs(8)).await;
    assert_eq!(h.fake.spawned().len(), 1, "WATCHDOG=1 renews the deadline");
    h.advance(Duration::from_secs(3)).await;
    assert_eq!(h.fake.spawned().len(), 2);
    expect_recycle(&mut h, 0, "unhealthy").await;
}

#[tokio::test(start_paused = true)]
async fn failed_health_probes_recycle_the_app() {
    let mut a = app(1);
    a.health.http_probe = Some(appvisor_config::HttpProbe {
        path: "/healthz".into(),
        interval: Duration::from_secs(5),
        timeout: Duration::from_secs(1),
        failures: 2,
    });
    let listen = Listen {
        address: ListenAddress::Tcp("127.0.0.1:0".parse().unwrap()),
        name: "web".into(),
    };
    let socket = crate::sockets::bind("web", &listen).unwrap();
    let fake = Fake::default();
    fake.state().http_ok = true;
    let mut h = start_with(a, vec![socket], fake).await;
    h.fake.ready(h.fake.last_spawn());
    h.advance(Duration::from_secs(30)).await;
    assert_eq!(h.fake.spawned().len(), 1, "healthy");

    h.fake.state().http_ok = false;
    h.advance(Duration::from_secs(5)).await;
    assert_eq!(h.fake.spawned().len(), 1, "one failure is not enough");
    h.advance(Duration::from_secs(5)).await;
    assert_eq!(h.fake.spawned().len(), 2);
    expect_recycle(&mut h, 0, "unhealthy").await;
}

/// `schedule` fires from the wall clock, which paused time does not move: the
/// reaction is driven directly, with a fire time already past.
#[tokio::test(start_paused = true)]
async fn a_schedule_fire_recycles_the_app() {
    let fake = Fake::default();
    let (mut pool, _inbox, _handle) = new_pool(app(1), Vec::new(), &fake);
    let mut events = pool.events.subscribe();
    pool.start_all();
    let old = fake.last_spawn();
    pool.on_ready(old);
    let past = jiff::Zoned::now()
        .checked_sub(jiff::SignedDuration::from_secs(1))
        .unwrap();
    pool.on_schedule(past);
    assert_eq!(fake.spawned().len(), 2);
    let new = fake.last_spawn();
    pool.on_ready(new);
    assert_eq!(fake.signals_to(old), vec![SIGTERM]);
    let mut recycle = None;
    while let Ok(line) = events.try_recv() {
        let e: Event = serde_json::from_str(&line).unwrap();
        if e.kind == EventKind::Recycle {
            recycle = Some(e);
        }
    }
    assert_eq!(recycle.unwrap().reason.as_deref(), Some("schedule"));
}
