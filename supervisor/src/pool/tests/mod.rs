//! The pool as a state machine: a fake process table, paused tokio time.
//!
//! The fake records every spawn, signal and group kill in order, and lets a test
//! deliver what the real world would: READY and other notify messages, exits,
//! memory figures, probe answers, a connection on an idle socket. By default a
//! worker exits as soon as it gets its stop signal (a well-behaved drain) and when
//! its group is SIGKILLed. Time is paused: `settle` lets every queued message be
//! handled and moves the clock by one millisecond; `advance` moves it further, and
//! the pool's deadlines fire on the way exactly as they would in real time.

mod fake;
mod lifecycle;
mod memory_pressure;
mod recycle;
mod sample;
mod triggers;

use std::sync::Arc;

use tokio::sync::broadcast;

use super::*;
use crate::signal::Signal;
use fake::{Fake, Op};

const SIGTERM: Signal = Signal::TERM;

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
    rc.stop_signal = SIGTERM;
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

/// The restart log of a test's pool, in a scratch dir the fake keeps (and removes
/// with it).
fn event_log(fake: &Fake) -> EventLog {
    let dir = tempfile::Builder::new()
        .prefix("appvisor-pool-test-")
        .tempdir()
        .unwrap();
    let log = EventLog::open(&dir.path().join("events.jsonl")).unwrap();
    fake.state().scratch = Some(dir);
    log
}

fn new_pool(app: AppConfig, sockets: Vec<BoundSocket>, fake: &Fake) -> (Pool, Inbox, PoolHandle) {
    Pool::new(
        app,
        sockets,
        event_log(fake),
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
    launch(pool, inbox, handle, fake).await
}

/// Runs the pool's task; returns its harness once the start has settled.
async fn launch(pool: Pool, inbox: Inbox, handle: PoolHandle, fake: Fake) -> Harness {
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
