//! `/metrics`: the supervisor's figures as Prometheus / OpenMetrics text
//! (`[supervisor] metrics = "127.0.0.1:9464"`, off by default).
//!
//! # Layout
//! - this file — what is exported: [`Metrics`] (the `prometheus-client` registry,
//!   the counters and histograms the restart log feeds) and the scrape-time
//!   [`Snapshot`] (pools' status, the store's figures, file sizes).
//! - [`http`] — the listener: a minimal HTTP/1.1 responder on the supervisor's own
//!   runtime (no HTTP library is linked into the supervisor for one page).
//!
//! # Theory of operation
//! Two kinds of figure, two sources:
//! - **What happened** (recycles by reason, crashes, startup failures, startup and
//!   drain times) comes from the restart log: [`Metrics::follow`] subscribes to the
//!   broadcast that `appvisor events --follow` reads ([`EventLog::subscribe`]) before
//!   any pool starts, so no event is missed, and each event moves a counter or a
//!   histogram. Counters start at 0 when the supervisor starts, as Prometheus
//!   counters do; `rate()` and `increase()` handle the reset.
//! - **What is** (per worker memory, CPU, requests, uptime, generation; the store's
//!   keys, memory, clients, commands, expirations; the sizes of the history and
//!   the event log) is read when a scrape arrives — each pool answers its `status`
//!   as it does for `appvisor status` — and encoded by a `Collector`. Nothing runs
//!   between scrapes: with metrics off nothing runs at all.
//!
//! `appvisor_recycles_total{app,reason}` counts *recycles of an app* (one per
//! generation, however many workers it replaced: `appvisor recycle web` moves it by
//! one); `appvisor_worker_recycles_total` counts the worker replacements (one per
//! `recycle` line of `events.jsonl`, as `appvisor status` counts them).
//!
//! Per-worker series are labelled `{app, worker}` (the worker's slot) and show the
//! slot's current worker — the ready one, or the one starting in an empty slot; a
//! worker that drains is not shown, so no label set appears twice.

pub mod http;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use tokio::sync::broadcast::error::RecvError;

use crate::events::{Event, EventKind, EventLog};
use crate::pool::{AppStatus, PoolHandle, WorkerRunState};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AppReason {
    app: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AppLabel {
    app: String,
}

type HistogramFamily = Family<AppLabel, Histogram, fn() -> Histogram>;

/// Startup and drain times, seconds: from a worker that is ready at once to the
/// IIS defaults' 90 s limits.
const DURATION_BUCKETS: [f64; 14] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 90.0, 300.0,
];

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// The supervisor's metrics: counters from the restart log, and the registry
/// that encodes them with the scrape-time snapshot.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    recycles: Family<AppReason, Counter>,
    worker_recycles: Family<AppReason, Counter>,
    crashes: Family<AppLabel, Counter>,
    startup_failures: Family<AppLabel, Counter>,
    startup: HistogramFamily,
    drain: HistogramFamily,
    missed: Counter,
    /// The generation of each app's last counted recycle: a recycle of N workers
    /// writes N `recycle` events with the same generation.
    counted: Mutex<HashMap<String, u64>>,
    snapshot: Arc<SnapshotCollector>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("appvisor");
        let recycles = Family::<AppReason, Counter>::default();
        registry.register(
            "recycles",
            "Recycles of an app (one per new generation, whatever its number of workers), by reason",
            recycles.clone(),
        );
        let worker_recycles = Family::<AppReason, Counter>::default();
        registry.register(
            "worker_recycles",
            "Workers replaced by a recycle (one per `recycle` line of events.jsonl), by reason",
            worker_recycles.clone(),
        );
        let crashes = Family::<AppLabel, Counter>::default();
        registry.register(
            "crashes",
            "Serving workers that exited unasked",
            crashes.clone(),
        );
        let startup_failures = Family::<AppLabel, Counter>::default();
        registry.register(
            "startup_failures",
            "Workers that exited or missed startup_timeout before they were ready",
            startup_failures.clone(),
        );
        let startup: HistogramFamily = Family::new_with_constructor(duration_histogram);
        registry.register_with_unit(
            "startup_duration",
            "From spawn to ready, per worker",
            Unit::Seconds,
            startup.clone(),
        );
        let drain: HistogramFamily = Family::new_with_constructor(duration_histogram);
        registry.register_with_unit(
            "drain_duration",
            "From the stop signal to the exit (or the SIGKILL at shutdown_timeout), per worker",
            Unit::Seconds,
            drain.clone(),
        );
        let missed = Counter::default();
        registry.register(
            "metrics_missed_events",
            "Restart-log events the metrics could not count (their reader fell more than 1024 events behind)",
            missed.clone(),
        );
        let snapshot = Arc::new(SnapshotCollector::default());
        registry.register_collector(Box::new(snapshot.clone()));
        Metrics {
            registry,
            recycles,
            worker_recycles,
            crashes,
            startup_failures,
            startup,
            drain,
            missed,
            counted: Mutex::default(),
            snapshot,
        }
    }

    /// Counts every event of `events` from now on, in a task of its own. Call it
    /// before the pools start: the subscription is made here, at once.
    pub fn follow(self: &Arc<Self>, events: &EventLog) -> tokio::task::JoinHandle<()> {
        let mut rx = events.subscribe();
        let metrics = self.clone();
        tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(line) => match serde_json::from_str::<Event>(&line) {
                        Ok(e) => metrics.observe(&e),
                        Err(e) => tracing::debug!("metrics: an event line did not parse: {e}"),
                    },
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!(
                            "Metrics fell {n} restart-log events behind and did not count them (appvisor_metrics_missed_events_total)."
                        );
                        metrics.missed.inc_by(n);
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        })
    }

    /// Moves the counters and histograms one event concerns.
    pub fn observe(&self, e: &Event) {
        let app = || AppLabel { app: e.app.clone() };
        let reason = || AppReason {
            app: e.app.clone(),
            reason: e.reason.clone().unwrap_or_else(|| "unknown".into()),
        };
        match e.kind {
            EventKind::Recycle => {
                self.worker_recycles.get_or_create(&reason()).inc();
                let generation = e.generation.unwrap_or(0);
                let mut counted = self.counted.lock().unwrap_or_else(|p| p.into_inner());
                if counted.insert(e.app.clone(), generation) != Some(generation) {
                    self.recycles.get_or_create(&reason()).inc();
                }
            }
            // An app removed and added again starts at generation 1: forget its
            // last counted one when it stops (a stop ends any recycle).
            EventKind::Stopped => {
                let mut counted = self.counted.lock().unwrap_or_else(|p| p.into_inner());
                counted.remove(&e.app);
            }
            EventKind::Crashed => {
                self.crashes.get_or_create(&app()).inc();
            }
            EventKind::StartupFailed => {
                self.startup_failures.get_or_create(&app()).inc();
            }
            _ => {}
        }
        if let Some(ms) = e.startup_ms {
            self.startup
                .get_or_create(&app())
                .observe(ms as f64 / 1000.0);
        }
        if let Some(ms) = e.drain_ms {
            self.drain.get_or_create(&app()).observe(ms as f64 / 1000.0);
        }
    }

    /// The page: the counters, and `snapshot` as the current figures.
    /// `openmetrics`: the OpenMetrics text format (with `# EOF`), else the
    /// Prometheus text format 0.0.4.
    pub fn render(&self, snapshot: Snapshot, openmetrics: bool) -> String {
        *self
            .snapshot
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = snapshot;
        let mut out = String::with_capacity(16 * 1024);
        let encoded = if openmetrics {
            prometheus_client::encoding::text::encode(&mut out, &self.registry)
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        };
        // Writing into a String fails only if an encoder refuses its input (a
        // metric name it cannot write): a bug here, not the scraper's problem.
        if let Err(e) = encoded {
            tracing::error!("Cannot encode the metrics page: {e}");
        }
        out
    }
}

/// What the metrics read at each scrape.
#[derive(Clone)]
pub struct Sources {
    pub pools: Arc<Mutex<std::collections::BTreeMap<String, PoolHandle>>>,
    pub store: Arc<Mutex<crate::backend::Backend>>,
    pub state_dir: PathBuf,
    pub events: PathBuf,
}

impl Sources {
    /// Every figure of the moment: each pool's status (as `appvisor status`), the
    /// store's, the sizes of the event log (rotated files included) and the history.
    pub async fn snapshot(&self) -> Snapshot {
        let handles: Vec<PoolHandle> = self
            .pools
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        let mut apps = Vec::with_capacity(handles.len());
        for h in handles {
            if let Some(s) = h.status().await {
                apps.push(s);
            }
        }
        let store = self
            .store
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .embedded()
            .map(|h| StoreFigures {
                stats: h.stats(),
                counters: h.counters(),
            });
        Snapshot {
            apps,
            store,
            events_bytes: files_size(&self.events),
            history_bytes: dir_size(&self.state_dir.join(HISTORY_DIR)),
            supervisor_rss: crate::procfs::rss_bytes(crate::procfs::Pid::this()),
        }
    }
}

/// Where the history recorder keeps its files, inside the state dir.
pub const HISTORY_DIR: &str = "history";

/// `events.jsonl` and its rotated siblings (`events.jsonl.1`, …) together.
fn files_size(path: &Path) -> u64 {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return 0;
    };
    let name = name.to_string_lossy();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&*name))
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

/// The regular files of `dir` and of its subdirectories, one level down.
fn dir_size(dir: &Path) -> u64 {
    fn walk(dir: &Path, depth: u32) -> u64 {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return 0;
        };
        let mut total = 0;
        for e in entries.flatten() {
            let Ok(t) = e.file_type() else { continue };
            if t.is_file() {
                total += e.metadata().map(|m| m.len()).unwrap_or(0);
            } else if t.is_dir() && depth > 0 {
                total += walk(&e.path(), depth - 1);
            }
        }
        total
    }
    walk(dir, 1)
}

/// The store's figures at a scrape.
#[derive(Debug, Clone)]
pub struct StoreFigures {
    pub stats: appvisor_store::StoreStats,
    pub counters: appvisor_store::StoreCounters,
}

/// The figures of the moment, read when a scrape arrives.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub apps: Vec<AppStatus>,
    /// None with `[store] backend = "redis"`.
    pub store: Option<StoreFigures>,
    pub events_bytes: u64,
    pub history_bytes: u64,
    pub supervisor_rss: Option<u64>,
}

#[derive(Debug, Default)]
struct SnapshotCollector {
    current: Mutex<Snapshot>,
}

/// One gauge or counter family written at once; `V` is `u64` for counts and bytes
/// (written as integers), `f64` for seconds. The help text gets its full stop here,
/// as the registry adds one to the metrics registered with it.
struct Series<'a, L, V> {
    name: &'a str,
    help: &'a str,
    unit: Option<Unit>,
    rows: Vec<(L, V)>,
}

impl<L: EncodeLabelSet, V: Copy> Series<'_, L, V>
where
    ConstGauge<V>: EncodeMetric,
    ConstCounter<V>: EncodeMetric,
{
    fn gauge(self, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
        if self.rows.is_empty() {
            return Ok(());
        }
        let mut m = encoder.encode_descriptor(
            self.name,
            &format!("{}.", self.help),
            self.unit.as_ref(),
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (labels, v) in &self.rows {
            ConstGauge::new(*v).encode(m.encode_family(labels)?)?;
        }
        Ok(())
    }

    fn counter(self, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
        if self.rows.is_empty() {
            return Ok(());
        }
        let mut m = encoder.encode_descriptor(
            self.name,
            &format!("{}.", self.help),
            self.unit.as_ref(),
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (labels, v) in &self.rows {
            ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerLabels {
    app: String,
    worker: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AppStateLabels {
    app: String,
    state: String,
}

/// The states an app can be in, for `appvisor_app_state` (each state gets a series
/// so a dashboard can graph them as a state set).
const APP_STATES: [crate::pool::AppRunState; 7] = [
    crate::pool::AppRunState::Running,
    crate::pool::AppRunState::Starting,
    crate::pool::AppRunState::Degraded,
    crate::pool::AppRunState::Idle,
    crate::pool::AppRunState::Stopping,
    crate::pool::AppRunState::Stopped,
    crate::pool::AppRunState::RapidFailStopped,
];

impl Collector for SnapshotCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let s = self.current.lock().unwrap_or_else(|p| p.into_inner());
        // One worker per slot: the ready one, else the starting one; a draining
        // worker shares its slot with its successor and is left out.
        let mut shown: Vec<(&str, &crate::pool::WorkerStatus)> = Vec::new();
        for app in &s.apps {
            let mut by_slot: std::collections::BTreeMap<u32, &crate::pool::WorkerStatus> =
                Default::default();
            for w in &app.workers {
                let rank = |w: &crate::pool::WorkerStatus| match w.state {
                    WorkerRunState::Ready => 2,
                    WorkerRunState::Starting => 1,
                    WorkerRunState::Draining => 0,
                };
                if w.state == WorkerRunState::Draining {
                    continue;
                }
                match by_slot.get(&w.worker) {
                    Some(old) if rank(old) >= rank(w) => {}
                    _ => {
                        by_slot.insert(w.worker, w);
                    }
                }
            }
            shown.extend(by_slot.into_values().map(|w| (app.name.as_str(), w)));
        }
        fn per_worker<V>(
            shown: &[(&str, &crate::pool::WorkerStatus)],
            f: impl Fn(&crate::pool::WorkerStatus) -> Option<V>,
        ) -> Vec<(WorkerLabels, V)> {
            shown
                .iter()
                .filter_map(|(app, w)| {
                    f(w).map(|v| {
                        (
                            WorkerLabels {
                                app: app.to_string(),
                                worker: w.worker.to_string(),
                            },
                            v,
                        )
                    })
                })
                .collect()
        }
        Series {
            name: "worker_private_memory",
            help: "Private memory (Private_Clean + Private_Dirty) of the worker's process tree, from the last history sample",
            unit: Some(Unit::Bytes),
            rows: per_worker(&shown, |w| w.private),
        }
        .gauge(&mut encoder)?;
        Series {
            name: "worker_rss",
            help: "Resident set size of the worker process",
            unit: Some(Unit::Bytes),
            rows: per_worker(&shown, |w| w.rss),
        }
        .gauge(&mut encoder)?;
        Series {
            name: "worker_virtual_memory",
            help: "Virtual memory of the worker's process tree, from the last history sample",
            unit: Some(Unit::Bytes),
            rows: per_worker(&shown, |w| w.virtual_memory),
        }
        .gauge(&mut encoder)?;
        Series {
            name: "worker_cpu",
            help: "CPU time (user + system) of the worker's process tree, from the last history sample",
            unit: Some(Unit::Seconds),
            rows: per_worker(&shown, |w| w.cpu_s),
        }
        .counter(&mut encoder)?;
        Series {
            name: "worker_requests",
            help: "Requests the worker reported (X_APPVISOR_REQUESTS); starts again at 0 with each new worker",
            unit: None,
            rows: per_worker(&shown, |w| Some(w.requests)),
        }
        .counter(&mut encoder)?;
        Series {
            name: "worker_uptime",
            help: "Time since the worker was spawned",
            unit: Some(Unit::Seconds),
            rows: per_worker(&shown, |w| Some(w.uptime_ms as f64 / 1000.0)),
        }
        .gauge(&mut encoder)?;
        Series {
            name: "worker_generation",
            help: "The worker's generation (each recycle of the app starts the next one)",
            unit: None,
            rows: per_worker(&shown, |w| Some(w.generation)),
        }
        .gauge(&mut encoder)?;
        Series {
            name: "worker_ready",
            help: "1 when the worker is ready and serving, 0 while it starts",
            unit: None,
            rows: per_worker(&shown, |w| {
                Some(u64::from(w.state == WorkerRunState::Ready))
            }),
        }
        .gauge(&mut encoder)?;
        let mut states = Vec::new();
        for app in &s.apps {
            for st in APP_STATES {
                states.push((
                    AppStateLabels {
                        app: app.name.clone(),
                        state: st.as_str().to_string(),
                    },
                    u64::from(app.state == st),
                ));
            }
        }
        Series {
            name: "app_state",
            help: "1 for the app's current state (running, starting, degraded, idle, stopping, stopped, stopped (rapid-fail)), 0 for the others",
            unit: None,
            rows: states,
        }
        .gauge(&mut encoder)?;
        Series {
            name: "app_workers",
            help: "Worker processes of the app, draining ones included",
            unit: None,
            rows: s
                .apps
                .iter()
                .map(|a| {
                    (
                        AppLabel {
                            app: a.name.clone(),
                        },
                        a.workers.len() as u64,
                    )
                })
                .collect(),
        }
        .gauge(&mut encoder)?;
        if let Some(store) = &s.store {
            let none = || Vec::<(String, String)>::new();
            let one = |v: u64| vec![(none(), v)];
            Series {
                name: "store_keys",
                help: "Keys in the embedded session store, all apps",
                unit: None,
                rows: one(store.stats.keys),
            }
            .gauge(&mut encoder)?;
            Series {
                name: "store_memory",
                help: "Bytes held by the embedded store's data (what max_memory is compared with)",
                unit: Some(Unit::Bytes),
                rows: one(store.stats.memory),
            }
            .gauge(&mut encoder)?;
            Series {
                name: "store_clients",
                help: "Open connections to the embedded store",
                unit: None,
                rows: one(u64::from(store.stats.clients)),
            }
            .gauge(&mut encoder)?;
            Series {
                name: "store_commands",
                help: "Commands the embedded store ran",
                unit: None,
                rows: one(store.counters.commands),
            }
            .counter(&mut encoder)?;
            Series {
                name: "store_expired_keys",
                help: "Keys of the embedded store that reached their deadline",
                unit: None,
                rows: one(store.counters.expired),
            }
            .counter(&mut encoder)?;
            Series {
                name: "store_log_size",
                help: "Bytes in the embedded store's append-only log",
                unit: Some(Unit::Bytes),
                rows: one(store.stats.log_size),
            }
            .gauge(&mut encoder)?;
        }
        let none = || Vec::<(String, String)>::new();
        Series {
            name: "events_log_size",
            help: "Bytes of events.jsonl and its rotated files",
            unit: Some(Unit::Bytes),
            rows: vec![(none(), s.events_bytes)],
        }
        .gauge(&mut encoder)?;
        Series {
            name: "history_size",
            help: "Bytes of the recorded history in the state dir",
            unit: Some(Unit::Bytes),
            rows: vec![(none(), s.history_bytes)],
        }
        .gauge(&mut encoder)?;
        Series {
            name: "supervisor_resident_memory",
            help: "Resident set size of the supervisor itself",
            unit: Some(Unit::Bytes),
            rows: s
                .supervisor_rss
                .map(|b| vec![(none(), b)])
                .unwrap_or_default(),
        }
        .gauge(&mut encoder)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::{AppRunState, AppStatus, WorkerStatus};

    fn recycle(app: &str, reason: &str, generation: u64) -> Event {
        let mut e = Event::new(app, EventKind::Recycle);
        e.reason = Some(reason.into());
        e.generation = Some(generation);
        e.startup_ms = Some(120);
        e
    }

    #[test]
    fn a_recycle_of_many_workers_counts_once_per_generation() {
        let m = Metrics::new();
        for _ in 0..3 {
            m.observe(&recycle("web", "manual", 2));
        }
        m.observe(&recycle("web", "file_change", 3));
        m.observe(&recycle("api", "manual", 3));
        // Removed and added again: its generations start over.
        m.observe(&Event::new("api", EventKind::Stopped));
        m.observe(&recycle("api", "manual", 3));
        let text = m.render(Snapshot::default(), false);
        for line in [
            "appvisor_recycles_total{app=\"web\",reason=\"manual\"} 1\n",
            "appvisor_recycles_total{app=\"web\",reason=\"file_change\"} 1\n",
            "appvisor_recycles_total{app=\"api\",reason=\"manual\"} 2\n",
            "appvisor_worker_recycles_total{app=\"web\",reason=\"manual\"} 3\n",
            "appvisor_startup_duration_seconds_count{app=\"web\"} 4\n",
            "appvisor_startup_duration_seconds_bucket{app=\"web\",le=\"0.25\"} 4\n",
        ] {
            assert!(text.contains(line), "{line:?} missing from:\n{text}");
        }
    }

    #[test]
    fn crashes_startup_failures_and_drains_are_counted() {
        let m = Metrics::new();
        m.observe(&Event::new("web", EventKind::Crashed));
        m.observe(&Event::new("web", EventKind::StartupFailed));
        m.observe(&Event::new("web", EventKind::StartupFailed));
        let mut retired = Event::new("web", EventKind::Retired);
        retired.drain_ms = Some(1500);
        m.observe(&retired);
        let text = m.render(Snapshot::default(), true);
        for line in [
            "appvisor_crashes_total{app=\"web\"} 1\n",
            "appvisor_startup_failures_total{app=\"web\"} 2\n",
            "appvisor_drain_duration_seconds_sum{app=\"web\"} 1.5\n",
            "# UNIT appvisor_drain_duration_seconds seconds\n",
        ] {
            assert!(text.contains(line), "{line:?} missing from:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::new();
        m.observe(&Event::new("we\"b\\x\ny", EventKind::Crashed));
        let text = m.render(Snapshot::default(), false);
        assert!(
            text.contains("appvisor_crashes_total{app=\"we\\\"b\\\\x\\ny\"} 1\n"),
            "{text}"
        );
    }

    fn worker(slot: u32, generation: u64, state: WorkerRunState) -> WorkerStatus {
        WorkerStatus {
            worker: slot,
            pid: 100 + generation as i32,
            generation,
            state,
            uptime_ms: 1500,
            rss: Some(4096 * generation),
            private: None,
            virtual_memory: None,
            cpu_s: Some(0.25),
            requests: 7,
            status: None,
            cgroup: None,
        }
    }

    #[test]
    fn one_series_per_slot_the_successor_not_the_draining_worker() {
        let m = Metrics::new();
        let snapshot = Snapshot {
            apps: vec![AppStatus {
                name: "web".into(),
                state: AppRunState::Running,
                listen: vec![],
                workers: vec![
                    worker(0, 1, WorkerRunState::Draining),
                    worker(0, 2, WorkerRunState::Ready),
                    worker(1, 3, WorkerRunState::Starting),
                ],
                recycles: 1,
                crashes: 0,
                last_recycle: None,
                config_generation: 1,
                watch: None,
                next_schedule: None,
                memory_limits: vec![],
                escaped: vec![],
            }],
            ..Snapshot::default()
        };
        let text = m.render(snapshot, false);
        let generations: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("appvisor_worker_generation{"))
            .collect();
        assert_eq!(
            generations,
            [
                "appvisor_worker_generation{app=\"web\",worker=\"0\"} 2",
                "appvisor_worker_generation{app=\"web\",worker=\"1\"} 3"
            ]
        );
        for line in [
            "appvisor_worker_rss_bytes{app=\"web\",worker=\"0\"} 8192\n",
            "appvisor_worker_cpu_seconds_total{app=\"web\",worker=\"0\"} 0.25\n",
            "appvisor_worker_requests_total{app=\"web\",worker=\"1\"} 7\n",
            "appvisor_worker_uptime_seconds{app=\"web\",worker=\"1\"} 1.5\n",
            "appvisor_app_state{app=\"web\",state=\"running\"} 1\n",
            "appvisor_app_state{app=\"web\",state=\"idle\"} 0\n",
            "appvisor_app_workers{app=\"web\"} 3\n",
            "# HELP appvisor_worker_rss_bytes Resident set size of the worker process.\n",
        ] {
            assert!(text.contains(line), "{line:?} missing from:\n{text}");
        }
        // Not sampled yet: no series rather than a false 0.
        assert!(
            !text.contains("appvisor_worker_private_memory_bytes{"),
            "{text}"
        );
    }
}
