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
//! exit; SIGHUP re-reads the config.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context};
use appvisor_config::Config;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use crate::control::{self, ControlState, DaemonRequest};
use crate::events::{Event, EventLog};
use crate::guard::Guard;
use crate::output::AppLog;
use crate::pool::{start_pool, PoolContext, PoolHandle};
use crate::reaper::Reaper;
use crate::sockets::{bind_all, BoundSocket};

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

pub async fn run(config_path: &Path) -> anyhow::Result<()> {
    let config = appvisor_config::load(config_path)?;
    let paths = StatePaths::new(&config);
    for dir in [&paths.dir, &paths.logs(), &paths.run()] {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the state directory {}", dir.display()))?;
    }
    let control_path = paths.control();
    if std::os::unix::net::UnixStream::connect(&control_path).is_ok() {
        bail!(
            "a supervisor is already running for {} (its control socket {} answers); use `appvisor status`, or `appvisor stop`/`recycle` an app",
            config.path.display(),
            control_path.display()
        );
    }
    let mut sockets = bind_sockets(&config)?;
    let events = EventLog::open(&paths.events())
        .with_context(|| format!("cannot open the event log {}", paths.events().display()))?;
    let reaper = Reaper::start().context("cannot install the SIGCHLD handler")?;
    let guard = Guard::start().context("cannot start the guard process (`appvisor __guard`)")?;

    let pools: Arc<Mutex<BTreeMap<String, PoolHandle>>> = Arc::default();
    for app in &config.apps {
        let log = AppLog::open(
            &paths.logs(),
            &app.name,
            config.supervisor.log_max_size,
            config.supervisor.log_keep,
            true,
        )
        .with_context(|| format!("cannot open the log of app {:?}", app.name))?;
        let ctx = PoolContext {
            run_dir: paths.run(),
            events: events.clone(),
            reaper: reaper.clone(),
            guard: guard.clone(),
            log,
            extra_env: Vec::new(),
        };
        let handle = start_pool(
            app.clone(),
            sockets.remove(&app.name).unwrap_or_default(),
            ctx,
        );
        pools.lock().unwrap().insert(app.name.clone(), handle);
    }

    let (dtx, mut drx) = mpsc::unbounded_channel();
    let listener = control::bind(&control_path)
        .with_context(|| format!("cannot bind the control socket {}", control_path.display()))?;
    let state = ControlState {
        pools: pools.clone(),
        events: events.clone(),
        config_path: config.path.clone(),
        config_generation: Arc::new(Mutex::new(1)),
        started: tokio::time::Instant::now(),
        store: Arc::default(),
        daemon: dtx,
    };
    let control_task = tokio::spawn(control::serve(listener, state));
    notify_own_parent("READY=1\nSTATUS=supervising");
    eprintln!(
        "appvisor: supervising {} app(s) from {}; state in {}",
        config.apps.len(),
        config.path.display(),
        paths.dir.display()
    );

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                events.emit(Event::new("-", "config_rejected").detail("SIGHUP: reloading the config is not supported by this build; restart the supervisor"));
            }
            req = drx.recv() => match req {
                Some(DaemonRequest::Shutdown) | None => break,
                Some(DaemonRequest::Reload(reply)) => {
                    let _ = reply.send(Err("reloading the config is not supported by this build; restart the supervisor".into()));
                }
            },
        }
    }

    eprintln!("appvisor: stopping every app");
    notify_own_parent("STOPPING=1");
    let handles: Vec<PoolHandle> = pools.lock().unwrap().values().cloned().collect();
    let mut stops = tokio::task::JoinSet::new();
    for h in handles {
        stops.spawn(async move { h.shutdown().await });
    }
    while stops.join_next().await.is_some() {}
    control_task.abort();
    let _ = std::fs::remove_file(&control_path);
    guard.finish();
    eprintln!("appvisor: stopped");
    Ok(())
}

/// sd_notify to whoever started the supervisor (systemd `Type=notify`).
fn notify_own_parent(msg: &str) {
    let Ok(path) = std::env::var("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() else {
        return;
    };
    if let Some(name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        if let Ok(addr) = std::os::unix::net::SocketAddr::from_abstract_name(name) {
            let _ = sock.send_to_addr(msg.as_bytes(), &addr);
        }
    } else {
        let _ = sock.send_to(msg.as_bytes(), path);
    }
}
