//! `appvisor run`: the supervisor in the foreground.
//!
//! Start-up order matters: the config is validated and every listening socket is
//! bound *before* any worker starts, so a typo or a port in use fails the whole
//! start with a clear message instead of leaving half an app running. Then the
//! event log, the reaper, the guard, the pools and the control socket come up, and
//! the supervisor tells its own parent (if it runs under systemd `Type=notify`)
//! that it is ready.
//!
//! SIGTERM / SIGINT (or `{"cmd":"shutdown"}`) stop every worker gracefully and
//! exit.
//!
//! # Config reload
//! Saving `appvisor.toml` (its content, not its timestamp), SIGHUP, or
//! `appvisor reload` re-read it. An invalid file is rejected — the error is logged
//! as `config_rejected` and everything keeps running on the old settings. A valid
//! one gets the next config generation: apps whose settings changed are recycled
//! (reason `config_change`), added apps started, removed apps stopped, the others
//! untouched. Sockets whose address stays are kept, backlog and all.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context};
use appvisor_config::{Compare, Config, WatchConfig};
use appvisor_contract as contract;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use crate::backend::Backend;
use crate::control::{self, ControlState, DaemonRequest};
use crate::events::{Event, EventKind, EventLog};
use crate::guard::Guard;
use crate::output::AppLog;
use crate::pool::{start_pool, PoolContext, PoolHandle};
use crate::reaper::Reaper;
use crate::sockets::{bind_all, BoundSocket};
use crate::trigger::watch::{AppWatcher, WatchDecision};

/// Paths inside the state dir.
#[derive(Debug, Clone)]
pub struct StatePaths {
    pub dir: PathBuf,
}

impl StatePaths {
    pub fn new(config: &Config) -> StatePaths {
        StatePaths {
            dir: config.supervisor.state_dir.clone(),
        }
    }
    pub fn control(&self) -> PathBuf {
        self.dir.join("control.sock")
    }
    pub fn events(&self) -> PathBuf {
        self.dir.join("events.jsonl")
    }
    pub fn logs(&self) -> PathBuf {
        self.dir.join("logs")
    }
    pub fn run(&self) -> PathBuf {
        self.dir.join("run")
    }
}

/// Binds every app's sockets, or says which app and address failed.
pub fn bind_sockets(config: &Config) -> anyhow::Result<BTreeMap<String, Vec<BoundSocket>>> {
    let mut out = BTreeMap::new();
    for app in &config.apps {
        let sockets = bind_all(&app.name, &app.listen)
            .with_context(|| format!("{}", config.path.display()))?;
        out.insert(app.name.clone(), sockets);
    }
    Ok(out)
}

use appvisor_config::MAX_UNIX_PATH as SUN_PATH_MAX;

/// Every check `appvisor run` makes before it starts anything, except binding the
/// listen addresses (which `run` does for real and `check` tries and releases):
/// shared by both, so `check` never passes a config that `run` refuses.
pub fn preflight(config: &Config) -> anyhow::Result<()> {
    let file = config.path.display();
    let paths = StatePaths::new(config);
    let mut sockets = vec![paths.control()];
    if matches!(
        config.store.backend,
        appvisor_config::StoreBackend::Embedded(_)
    ) {
        sockets.push(paths.dir.join("store.sock"));
    }
    for s in sockets {
        let len = s.as_os_str().len();
        if len > SUN_PATH_MAX {
            bail!(
                "{file}: [supervisor] state_dir: {} is too long for the unix sockets the supervisor makes in it ({} would be {len} bytes; the limit is {SUN_PATH_MAX}); choose a shorter `state_dir`",
                paths.dir.display(),
                s.display()
            );
        }
    }
    let trusted = config.path.parent().unwrap_or(Path::new("/"));
    crate::state_dir::check_parents(&paths.dir, trusted)
        .with_context(|| format!("{file}: [supervisor] state_dir"))?;
    if paths.dir.exists() && !paths.dir.is_dir() {
        bail!(
            "{file}: [supervisor] state_dir: {} is not a directory; remove it or choose another `state_dir`",
            paths.dir.display()
        );
    }
    for app in &config.apps {
        for l in &app.listen {
            let appvisor_config::ListenAddress::Unix(path) = &l.address else {
                continue;
            };
            let Some(dir) = path.parent() else { continue };
            if !dir.is_dir() {
                bail!(
                    "{file}: app {:?}: listen \"{}\": the directory {} does not exist; create it (mkdir -p {}) or choose another path in `listen`",
                    app.name,
                    l.address,
                    dir.display(),
                    dir.display()
                );
            }
        }
    }
    Ok(())
}

pub async fn run(config_path: &Path) -> anyhow::Result<()> {
    let memory = crate::memory_base::MemoryView::detect();
    let config = appvisor_config::load_with(config_path, Some(memory.base.clone()))?;
    preflight(&config)?;
    crate::fd_limit::raise();
    crate::spawn::warn_about_privileges(&config.apps);
    let paths = StatePaths::new(&config);
    // Before anything else touches the state dir: make it safe and lock it, so a
    // second supervisor on the same dir refuses here, having harmed nothing.
    let trusted = config.path.parent().unwrap_or(Path::new("/")).to_path_buf();
    let mode_warning = crate::state_dir::prepare(&paths.dir, &trusted)?;
    let mut state_lock = crate::state_dir::lock(&paths.dir)?;
    if let Some(w) = mode_warning {
        tracing::warn!("{w}");
    }
    for dir in [&paths.logs(), &paths.run()] {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the state directory {}", dir.display()))?;
    }
    let control_path = paths.control();
    // A supervisor of a version without the lock may still hold the dir.
    if std::os::unix::net::UnixStream::connect(&control_path).is_ok() {
        bail!(
            "a supervisor is already running for {} (its control socket {} answers); use `appvisor status`, or `appvisor stop`/`recycle` an app",
            config.path.display(),
            control_path.display()
        );
    }
    let mut sockets = bind_sockets(&config)?;
    let held_sockets = sockets.clone();
    // Like the apps' addresses: a metrics address in use refuses the start, before
    // any worker runs (see `metrics::http::bind`).
    let metrics_listener = config
        .supervisor
        .metrics
        .map(crate::metrics::http::bind)
        .transpose()
        .with_context(|| format!("{}", config.path.display()))?;
    let rotation = crate::events::Rotation {
        max_size: config.supervisor.events_max_size,
        keep: config.supervisor.events_keep,
    };
    let events = EventLog::open_with(&paths.events(), rotation)
        .with_context(|| format!("cannot open the event log {}", paths.events().display()))?;
    // Subscribed before any pool starts, so the counters miss no event.
    let metrics = metrics_listener.as_ref().map(|_| {
        let m = Arc::new(crate::metrics::Metrics::new());
        m.follow(&events);
        m
    });
    let reaper = Reaper::start().context("cannot install the SIGCHLD handler")?;
    let guard = Guard::start().context("cannot start the guard process (`appvisor __guard`)")?;
    let backend = Arc::new(Mutex::new(
        Backend::start(&config)
            .await
            .context("cannot start the session store")?,
    ));

    let shared = Shared {
        paths: paths.clone(),
        events: events.clone(),
        reaper: reaper.clone(),
        guard: guard.clone(),
    };
    prune_removed_histories(&paths.dir, &config, &[]);
    let pools: Arc<Mutex<BTreeMap<String, PoolHandle>>> = Arc::default();
    for app in &config.apps {
        let env = backend.lock().unwrap().env_for(&app.name);
        let ctx = shared.pool_context(&config, app, 1, env)?;
        let handle = start_pool(
            app.clone(),
            sockets.remove(&app.name).unwrap_or_default(),
            ctx,
        );
        pools.lock().unwrap().insert(app.name.clone(), handle);
    }

    let (dtx, mut drx) = mpsc::unbounded_channel();
    let state_generation = Arc::new(Mutex::new(1u64));
    let listener = control::bind(&control_path)
        .with_context(|| format!("cannot bind the control socket {}", control_path.display()))?;
    let state = ControlState {
        pools: pools.clone(),
        events: events.clone(),
        config_path: config.path.clone(),
        config_generation: state_generation.clone(),
        started: tokio::time::Instant::now(),
        store: backend.clone(),
        daemon: dtx,
    };
    let mut control_task = tokio::spawn(control::serve(listener, state.clone()));
    if let (Some(listener), Some(metrics)) = (metrics_listener, metrics) {
        let sources = crate::metrics::Sources {
            pools: pools.clone(),
            store: backend.clone(),
            state_dir: paths.dir.clone(),
            events: paths.events(),
        };
        tokio::spawn(crate::metrics::http::serve(listener, metrics, sources));
    }
    crate::sd_notify::notify_own_parent(&format!(
        "{}\n{}=supervising",
        contract::notify::READY,
        contract::notify::STATUS
    ));
    tracing::info!("Memory percentages are shares of {}.", memory.describe());
    let names: Vec<&str> = config.apps.iter().map(|a| a.name.as_str()).collect();
    tracing::info!(
        "Supervising {} app{} ({}) from {}; state and logs in {}.",
        names.len(),
        if names.len() == 1 { "" } else { "s" },
        names.join(", "),
        config.path.display(),
        paths.dir.display()
    );

    let mut live = Live {
        config,
        sockets: held_sockets,
        generation: 1,
        pools: pools.clone(),
        shared,
        generation_shared: state_generation,
        backend: backend.clone(),
        memory,
        pressure: None,
    };
    live.start_pressure_monitor();
    let (ctx_tx, mut config_changed) = mpsc::unbounded_channel();
    let _config_watch = watch_config_file(&live.config.path, ctx_tx).await;

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    // A deleted state dir (an `rm -rf` of the project's dot-dirs, a tmp cleaner) is
    // noticed by inotify on the directory itself, and rebuilt; only while rebuilding
    // fails is it retried every second (no timer otherwise: 0 wake-ups at rest).
    let mut removal = watch_removal(&paths.dir, state_lock.path());
    let mut retry: Option<tokio::time::Instant> = None;
    loop {
        let removed = async {
            match removal.as_mut() {
                Some(w) => w.removed().await,
                None => std::future::pending().await,
            }
        };
        let retry_due = async {
            match retry {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = removed => retry = Some(tokio::time::Instant::now()),
            _ = retry_due => {
                retry = None;
                if !state_lock.path().exists() {
                    match restore_state_dir(&paths, &trusted, &events, &state) {
                        Ok((lock, task)) => {
                            state_lock = lock;
                            control_task.abort();
                            control_task = task;
                        }
                        Err(e) => {
                            tracing::error!("The state dir {} was deleted and cannot be made again: {e:#}; retrying in a second", paths.dir.display());
                            retry = Some(tokio::time::Instant::now() + std::time::Duration::from_secs(1));
                        }
                    }
                }
                // Watch the directory that is there now (the new one, or the old
                // one if only its lock was missing for a moment).
                removal = watch_removal(&paths.dir, state_lock.path());
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                let _ = live.reload("SIGHUP");
            }
            Some(decision) = config_changed.recv() => match decision {
                WatchDecision::Recycle(_) => {
                    let _ = live.reload("the config file changed");
                }
                WatchDecision::Warning { detail } => tracing::warn!("{detail}"),
                WatchDecision::Soft { .. } | WatchDecision::Ignored { .. } => {}
            },
            req = drx.recv() => match req {
                Some(DaemonRequest::Shutdown) | None => break,
                Some(DaemonRequest::Reload(reply)) => {
                    let _ = reply.send(live.reload("appvisor reload"));
                }
            },
        }
    }

    if let Some(t) = live.pressure.take() {
        t.abort();
    }
    tracing::info!("Stopping every app.");
    crate::sd_notify::notify_own_parent(contract::notify::STOPPING);
    let handles: Vec<PoolHandle> = pools.lock().unwrap().values().cloned().collect();
    let mut stops = tokio::task::JoinSet::new();
    for h in handles {
        stops.spawn(async move { h.shutdown().await });
    }
    while stops.join_next().await.is_some() {}
    // Only now: draining workers have handed their sessions to the store.
    control_task.abort();
    let store = backend.lock().unwrap().begin_shutdown();
    if let Some(store) = store {
        store.closed().await;
    }
    let _ = std::fs::remove_file(&control_path);
    guard.finish();
    tracing::info!("Stopped.");
    Ok(())
}

/// The inotify watch that says when the state dir itself goes; `None` (with a
/// warning) if inotify cannot watch it: a deleted state dir then goes unnoticed.
fn watch_removal(dir: &Path, lock: &Path) -> Option<crate::state_dir::RemovalWatch> {
    crate::state_dir::RemovalWatch::new(dir, lock)
        .map_err(|e| {
            tracing::warn!(
                "Cannot watch the state dir {} for removal ({e}); if it is deleted, restart the supervisor.",
                dir.display()
            )
        })
        .ok()
}

/// Makes the state dir again after it was deleted under a running supervisor: the
/// directory (0700) with `logs/` and `run/`, the lock, the event log and the
/// control socket (re-bound; the old server task is replaced by the caller), the
/// embedded store's sockets and log (rewritten from memory), and the running
/// workers' notify sockets (bound again at the paths they were started with).
/// Then a `state_dir_recreated` warning event, the first line of the new event log.
fn restore_state_dir(
    paths: &StatePaths,
    trusted: &Path,
    events: &EventLog,
    control_state: &ControlState,
) -> anyhow::Result<(crate::state_dir::StateLock, tokio::task::JoinHandle<()>)> {
    crate::state_dir::prepare(&paths.dir, trusted)?;
    let lock = crate::state_dir::lock(&paths.dir)?;
    for dir in [paths.logs(), paths.run()] {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create the state directory {}", dir.display()))?;
    }
    events
        .reopen()
        .with_context(|| format!("cannot open the event log {}", paths.events().display()))?;
    let control_path = paths.control();
    let listener = control::bind(&control_path)
        .with_context(|| format!("cannot bind the control socket {}", control_path.display()))?;
    let task = tokio::spawn(control::serve(listener, control_state.clone()));
    // The store keeps every key in memory: its log is written again from there.
    let mut restored = control_state.store.lock().unwrap().restore_files();
    let notify = crate::sd_notify::rebind_missing();
    if notify > 0 {
        restored.push(format!("{notify} running workers' notify sockets"));
    }
    let restored = if restored.is_empty() {
        String::new()
    } else {
        format!(", and {}", restored.join(", "))
    };
    events.emit(Event::new("-", EventKind::StateDirRecreated).detail(format!(
        "the state dir {} was deleted while the supervisor ran; made again (0700) with its lock, event log and control socket{restored}. Earlier events and the apps' log files that were in it are gone",
        paths.dir.display()
    )));
    Ok((lock, task))
}

/// What every pool shares: the state dir, the event log, the reaper, the guard.
#[derive(Clone)]
struct Shared {
    paths: StatePaths,
    events: EventLog,
    reaper: Reaper,
    guard: Guard,
}

impl Shared {
    fn pool_context(
        &self,
        config: &Config,
        app: &appvisor_config::AppConfig,
        config_generation: u64,
        extra_env: Vec<(String, String)>,
    ) -> anyhow::Result<PoolContext> {
        let log = AppLog::open(
            &self.paths.logs(),
            &app.name,
            config.supervisor.log_max_size,
            config.supervisor.log_keep,
            true,
        )
        .with_context(|| format!("cannot open the log of app {:?}", app.name))?
        .with_events(self.events.clone());
        let sv = &config.supervisor;
        let history = crate::history::recorder::app_dir(&self.paths.dir, &app.name);
        let bounds = crate::history::recorder::Bounds {
            max_bytes: sv.history_max_size,
            retention: sv.history_retention,
        };
        let history = crate::history::recorder::RecorderSpec {
            app: app.name.clone(),
            dir: history,
            bounds,
        };
        Ok(PoolContext {
            run_dir: self.paths.run(),
            events: self.events.clone(),
            reaper: self.reaper.clone(),
            guard: self.guard.clone(),
            log,
            extra_env,
            config_generation,
            sample_interval: sv.sample_interval,
            history: Some(history),
        })
    }
}

/// What a reload needs: the config in force and everything pools are made of.
struct Live {
    config: Config,
    sockets: BTreeMap<String, Vec<BoundSocket>>,
    generation: u64,
    pools: Arc<Mutex<BTreeMap<String, PoolHandle>>>,
    shared: Shared,
    generation_shared: Arc<Mutex<u64>>,
    backend: Arc<Mutex<Backend>>,
    /// What memory percentages are of; read again at each reload.
    memory: crate::memory_base::MemoryView,
    /// The `memory_pressure` monitor's task, if configured.
    pressure: Option<tokio::task::JoinHandle<()>>,
}

impl Live {
    /// (Re)starts the `[supervisor] memory_pressure` monitor for the config in force.
    fn start_pressure_monitor(&mut self) {
        if let Some(t) = self.pressure.take() {
            t.abort();
        }
        let Some(cfg) = self.config.supervisor.memory_pressure.clone() else {
            return;
        };
        let view = self.memory.clone();
        tracing::info!(
            "Memory pressure: watching {}{}{} every {}; cooldown {}.",
            match (cfg.min_available, &cfg.min_available_share) {
                (Some(_), Some(share)) => format!("available memory against min_available {}", share.describe()),
                (Some(m), None) => format!("available memory against min_available {}", appvisor_config::human_bytes(m)),
                (None, _) => String::new(),
            },
            if cfg.min_available.is_some() && cfg.psi_some_avg10.is_some() { " and " } else { "" },
            match (cfg.psi_some_avg10, &view.psi) {
                (Some(t), Some(p)) => format!("PSI some avg10 against {t} ({})", p.display()),
                (Some(t), None) => format!("PSI some avg10 against {t} (no PSI file on this kernel: this threshold never fires)"),
                (None, _) => String::new(),
            },
            crate::pool::humanize(cfg.interval),
            crate::pool::humanize(cfg.cooldown),
        );
        let read_cfg = cfg.clone();
        let reading = move || crate::trigger::pressure::read(&view, &read_cfg);
        self.pressure = Some(tokio::spawn(crate::trigger::pressure::monitor(
            cfg,
            reading,
            self.pools.clone(),
        )));
    }

    /// Applies the config file as it is now, or rejects it and keeps the old one.
    fn reload(&mut self, why: &str) -> crate::pool::Reply {
        match self.try_reload() {
            Ok(Some(summary)) => {
                let detail = format!("{why}: config generation {}: {summary}", self.generation);
                self.shared
                    .events
                    .emit(Event::new("-", EventKind::ConfigReloaded).detail(detail.clone()));
                Ok(detail)
            }
            Ok(None) => Ok(format!(
                "{why}: no setting changed (config generation {})",
                self.generation
            )),
            Err(e) => {
                let detail = format!(
                    "{why}: {e:#} — the running config (generation {}) stays in force; fix the file and save it again",
                    self.generation
                );
                self.shared
                    .events
                    .emit(Event::new("-", EventKind::ConfigRejected).detail(detail.clone()));
                Err(detail)
            }
        }
    }

    fn try_reload(&mut self) -> anyhow::Result<Option<String>> {
        // The cgroup limit may have changed since: percentages are resolved again.
        let memory = crate::memory_base::MemoryView::detect();
        let new = appvisor_config::load_with(&self.config.path, Some(memory.base.clone()))?;
        let base_changed = memory.base != self.memory.base;
        if base_changed {
            tracing::info!(
                "Memory percentages are now shares of {}.",
                memory.describe()
            );
        }
        if new == self.config {
            return Ok(None);
        }
        // Bind every new or changed address first: a port in use rejects the whole
        // reload before anything changed.
        let mut new_sockets = BTreeMap::new();
        for app in &new.apps {
            let held = self
                .sockets
                .get(&app.name)
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            let s = crate::sockets::rebind_all(&app.name, &app.listen, held)?;
            new_sockets.insert(app.name.clone(), s);
        }
        self.backend.lock().unwrap().set_apps(&new)?;
        self.generation += 1;
        *self.generation_shared.lock().unwrap() = self.generation;
        let (mut changed, mut added, mut removed) = (Vec::new(), Vec::new(), Vec::new());
        let mut pools = self.pools.lock().unwrap();
        for app in &new.apps {
            let sockets = new_sockets.get(&app.name).cloned().unwrap_or_default();
            match self.config.app(&app.name) {
                None => {
                    let env = self.backend.lock().unwrap().env_for(&app.name);
                    let ctx = self.shared.pool_context(&new, app, self.generation, env)?;
                    pools.insert(app.name.clone(), start_pool(app.clone(), sockets, ctx));
                    added.push(app.name.clone());
                }
                Some(old) if old != app => {
                    let listen_changed = old.listen != app.listen;
                    if let Some(h) = pools.get(&app.name) {
                        h.send(crate::pool::PoolCommand::Reconfigure {
                            app: Box::new(app.clone()),
                            sockets: listen_changed.then_some(sockets),
                            config_generation: self.generation,
                        });
                    }
                    changed.push(app.name.clone());
                }
                Some(_) => {}
            }
        }
        for old in &self.config.apps {
            if new.app(&old.name).is_none() {
                if let Some(h) = pools.remove(&old.name) {
                    tokio::spawn(async move { h.shutdown().await });
                }
                removed.push(old.name.clone());
            }
        }
        drop(pools);
        let mut notes = Vec::new();
        let pressure_changed =
            new.supervisor.memory_pressure != self.config.supervisor.memory_pressure;
        let mut other_supervisor = new.supervisor.clone();
        other_supervisor.memory_pressure = self.config.supervisor.memory_pressure.clone();
        if pressure_changed {
            notes.push("[supervisor] memory_pressure applied".to_string());
        }
        if other_supervisor != self.config.supervisor || new.store != self.config.store {
            notes.push(
                "[supervisor] and [store] changes take effect at the next start of the supervisor"
                    .to_string(),
            );
        }
        self.config = new;
        if !removed.is_empty() {
            // Not the apps just removed: their pools may still be writing.
            prune_removed_histories(&self.shared.paths.dir, &self.config, &removed);
        }
        self.memory = memory;
        self.sockets = new_sockets;
        if pressure_changed || base_changed {
            // A new base is also a new set of cgroups to read.
            self.start_pressure_monitor();
        }
        let list = |v: &[String]| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.join(", ")
            }
        };
        let mut summary = format!(
            "recycled {}; started {}; stopped {}",
            list(&changed),
            list(&added),
            list(&removed)
        );
        for n in notes {
            summary.push_str("; ");
            summary.push_str(&n);
        }
        Ok(Some(summary))
    }
}

/// [`crate::history::recorder::prune_unconfigured`] on a thread of its own (it
/// reads directories and may delete files).
fn prune_removed_histories(state_dir: &Path, config: &Config, also_keep: &[String]) {
    let apps: Vec<String> = config
        .apps
        .iter()
        .map(|a| a.name.clone())
        .chain(also_keep.iter().cloned())
        .collect();
    let bounds = crate::history::recorder::Bounds {
        max_bytes: config.supervisor.history_max_size,
        retention: config.supervisor.history_retention,
    };
    let dir = state_dir.to_path_buf();
    let spawned = std::thread::Builder::new()
        .name("history-prune".into())
        .spawn(move || {
            let names: Vec<&str> = apps.iter().map(String::as_str).collect();
            crate::history::recorder::prune_unconfigured(
                &dir,
                &names,
                bounds,
                crate::history::now_ms(),
            );
        });
    if let Err(e) = spawned {
        tracing::warn!("Cannot prune the history of removed apps ({e}).");
    }
}

/// Watches the config file with the same inotify watcher the apps use
/// ([`AppWatcher`]): its directory is watched (an editor's atomic save replaces the
/// file's inode), events are debounced (200 ms quiet, 2 s at most), and only a change
/// of *content* against the baseline becomes a decision — a touch, or our own reads,
/// are not.
async fn watch_config_file(
    path: &Path,
    tx: mpsc::UnboundedSender<WatchDecision>,
) -> Option<AppWatcher> {
    let dir = path.parent()?;
    let name = path.file_name()?.to_str()?;
    let cfg = WatchConfig {
        enabled: true,
        paths: vec![globset::escape(name)],
        code_dir: String::new(),
        ignore: Vec::new(),
        debounce: std::time::Duration::from_millis(200),
        max_wait: std::time::Duration::from_secs(2),
        compare: Compare::Content,
        soft: Vec::new(),
        soft_signal: appvisor_config::Signal::HUP,
        soft_changes_before_recycle: 0,
        poll: None,
    };
    match AppWatcher::start(CONFIG_WATCHER, dir, &cfg, tx).await {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(
                "Cannot watch {} for changes ({e}); reload with `appvisor reload` or SIGHUP.",
                path.display()
            );
            None
        }
    }
}

/// The config watcher's name in the watcher's own messages and debug lines.
const CONFIG_WATCHER: &str = "(config file)";
