//! What `appvisor status` shows: the pool's state in the words the CLI prints.

use super::*;

/// What `appvisor status` shows for one app.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppStatus {
    pub name: String,
    pub state: AppRunState,
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
    /// Memory limits in force, with where a percentage came from:
    /// `private_memory 128 MiB (25 % of 512 MiB, cgroup limit)`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub memory_limits: Vec<String>,
    /// Processes that escaped a worker without a cgroup and still run
    /// (`escaped` events tell which worker started them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub escaped: Vec<i32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerStatus {
    pub worker: u32,
    pub pid: i32,
    pub generation: u64,
    pub state: WorkerRunState,
    pub uptime_ms: u64,
    pub rss: Option<u64>,
    /// From the last history sample of its process tree (`[supervisor]
    /// sample_interval`): private and virtual memory, bytes; CPU seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_memory: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_s: Option<f64>,
    pub requests: u64,
    pub status: Option<String>,
    /// Its cgroup directory, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
}

/// An app's state as `appvisor status` shows it. The JSON strings are the ones the
/// control socket has always sent (`stopped (rapid-fail)` included).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AppRunState {
    /// Every slot has a ready worker.
    Running,
    /// A slot's worker is not ready yet.
    Starting,
    /// A slot has no worker (waiting for a crash restart).
    Degraded,
    /// Stopped by `idle_timeout`; the next connection starts it.
    Idle,
    /// Told to stop; workers still draining.
    Stopping,
    Stopped,
    /// Stopped by rapid-fail protection, until `appvisor start`.
    #[serde(rename = "stopped (rapid-fail)")]
    RapidFailStopped,
}

impl AppRunState {
    pub fn as_str(self) -> &'static str {
        match self {
            AppRunState::Running => "running",
            AppRunState::Starting => "starting",
            AppRunState::Degraded => "degraded",
            AppRunState::Idle => "idle",
            AppRunState::Stopping => "stopping",
            AppRunState::Stopped => "stopped",
            AppRunState::RapidFailStopped => "stopped (rapid-fail)",
        }
    }
}

impl std::fmt::Display for AppRunState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// A worker's state as `appvisor status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerRunState {
    /// Spawned, not ready yet.
    Starting,
    /// Ready and serving (or a candidate that is ready).
    Ready,
    /// Told to stop; finishing in-flight work.
    Draining,
}

impl WorkerRunState {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerRunState::Starting => "starting",
            WorkerRunState::Ready => "ready",
            WorkerRunState::Draining => "draining",
        }
    }
}

impl std::fmt::Display for WorkerRunState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `pad`, so the CLI's column widths (`{:<9}`) apply.
        f.pad(self.as_str())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LastRecycle {
    pub time: String,
    pub reason: String,
    pub detail: String,
}

impl Pool {
    /// The memory limits for `status`, each with its source if it was a percentage.
    fn memory_limits(&self) -> Vec<String> {
        let r = &self.app.recycle;
        [
            ("private_memory", r.private_memory),
            ("rss", r.rss),
            ("virtual_memory", r.virtual_memory),
            ("memory_hard_limit", r.memory_hard_limit),
            ("app_memory", r.app_memory),
        ]
        .into_iter()
        .filter_map(|(key, bytes)| {
            let bytes = bytes?;
            let human = appvisor_config::human_bytes(bytes);
            Some(match r.share(key) {
                Some(share) => format!("{key} {human} ({})", share.describe()),
                None => format!("{key} {human}"),
            })
        })
        .collect()
    }

    // ---- status ---------------------------------------------------------------

    pub(super) fn run_state(&self) -> AppRunState {
        match self.state {
            AppState::Running => {
                if self
                    .workers
                    .values()
                    .any(|w| w.is_current() && !w.is_ready())
                {
                    AppRunState::Starting
                } else if self.slots.iter().any(|s| s.current.is_none()) {
                    AppRunState::Degraded
                } else {
                    AppRunState::Running
                }
            }
            AppState::Idle => AppRunState::Idle,
            AppState::Stopping(_) => AppRunState::Stopping,
            AppState::Stopped => AppRunState::Stopped,
            AppState::RapidFailStopped => AppRunState::RapidFailStopped,
        }
    }

    pub(super) fn status(&self) -> AppStatus {
        let now = Instant::now();
        let mut workers: Vec<WorkerStatus> = self
            .workers
            .values()
            .map(|w| (w, self.last_sample(w.pid)))
            .map(|(w, last)| WorkerStatus {
                worker: w.slot,
                pid: w.pid,
                generation: w.generation,
                state: match w.phase {
                    Phase::Retiring(_) => WorkerRunState::Draining,
                    Phase::Serving { .. } => WorkerRunState::Ready,
                    Phase::Starting { .. } => WorkerRunState::Starting,
                },
                uptime_ms: (now - w.started).as_millis() as u64,
                rss: self.table.rss(w.pid),
                // The history sampler's last sample.
                private: last.and_then(|s| s.memory).map(|m| m.private),
                virtual_memory: last.and_then(|s| s.memory).map(|m| m.virtual_),
                cpu_s: last.and_then(|s| s.cpu_s),
                requests: w.requests,
                status: w.status.clone(),
                cgroup: w.cgroup.clone(),
            })
            .collect();
        workers.sort_by_key(|w| (w.worker, w.generation));
        AppStatus {
            name: self.app.name.clone(),
            state: self.run_state(),
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
                .and_then(ScheduleTimer::next_fire)
                .map(|at| at.strftime("%Y-%m-%d %H:%M").to_string()),
            escaped: self
                .escaped
                .iter()
                .copied()
                .filter(|&pid| self.table.alive(pid))
                .collect(),
            memory_limits: self.memory_limits(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_serialize_to_the_strings_the_cli_and_tests_read() {
        for s in [
            AppRunState::Running,
            AppRunState::Starting,
            AppRunState::Degraded,
            AppRunState::Idle,
            AppRunState::Stopping,
            AppRunState::Stopped,
            AppRunState::RapidFailStopped,
        ] {
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{s}\""));
            assert_eq!(serde_json::from_str::<AppRunState>(&json).unwrap(), s);
        }
        for s in [
            WorkerRunState::Starting,
            WorkerRunState::Ready,
            WorkerRunState::Draining,
        ] {
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{s}\""));
        }
        assert_eq!(format!("{:<9}|", WorkerRunState::Ready), "ready    |");
    }
}
