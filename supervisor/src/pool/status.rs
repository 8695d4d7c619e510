//! What `appvisor status` shows: the pool's state in the words the CLI prints.

use super::*;

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

impl Pool {
    // ---- status ---------------------------------------------------------------

    pub(super) fn state_name(&self) -> &'static str {
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

    pub(super) fn status(&self) -> AppStatus {
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
