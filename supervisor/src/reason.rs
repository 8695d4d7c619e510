//! Why a worker was (or was not) recycled: the vocabulary every trigger speaks.
//!
//! A trigger only *decides*: it hands the pool a [`RecycleReason`], and the pool
//! performs the recycle and writes the reason, with its detail, to `events.jsonl`.

use serde::{Deserialize, Serialize};

/// The cause of a recycle, with the figures that justify it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum RecycleReason {
    /// `appvisor recycle APP` (or the control API).
    Manual,
    /// Watched files changed. `paths` holds the first few, `count` all of them.
    FileChange {
        paths: Vec<String>,
        count: usize,
        /// "modified", "created", "removed", "renamed", or "mixed".
        change: String,
    },
    /// The inotify queue overflowed: some changes were lost, so recycle once.
    WatchOverflow,
    /// `soft_changes_before_recycle` soft changes have accumulated.
    SoftChangeLimit { changes: u32, limit: u32 },
    /// A memory limit was crossed. `kind` is "private_memory", "virtual_memory" or "rss".
    Memory {
        kind: String,
        bytes: u64,
        limit: u64,
    },
    /// `requests` served.
    Requests { count: u64, limit: u64 },
    /// `interval` reached.
    Age { age_ms: u64, limit_ms: u64 },
    /// A `schedule` time of day.
    Schedule { at: String },
    /// The watchdog or the HTTP probe failed.
    Unhealthy { detail: String },
    /// The app's settings in `appvisor.toml` changed.
    ConfigChange { config_generation: u64 },
    /// `[app.recycle] app_memory`: the private memory of all the app's workers
    /// together (`bytes`) passed `limit`; this worker grew most since it started.
    AppMemory { bytes: u64, limit: u64, growth: u64 },
    /// `[supervisor] memory_pressure`: memory ran short (available below
    /// `min_available`, or PSI `some avg10` above its threshold); of every candidate
    /// worker of every app, this one grew most since it started.
    MemoryPressure {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        available: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min_available: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        psi_some_avg10: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        psi_threshold: Option<f64>,
        growth: u64,
    },
}

impl RecycleReason {
    /// Every [`RecycleReason::name`], for `appvisor events --reason` to check a name
    /// against (and list the valid ones). A new reason goes here too.
    pub const NAMES: [&'static str; 10] = [
        "manual",
        "file_change",
        "watch_overflow",
        "soft_change_limit",
        "memory",
        "requests",
        "age",
        "schedule",
        "unhealthy",
        "config_change",
    ];

    /// The short name used in the `reason` field of events and in `status`.
    pub fn name(&self) -> &'static str {
        match self {
            RecycleReason::Manual => "manual",
            RecycleReason::FileChange { .. } => "file_change",
            RecycleReason::WatchOverflow => "watch_overflow",
            RecycleReason::SoftChangeLimit { .. } => "soft_change_limit",
            RecycleReason::Memory { .. } => "memory",
            RecycleReason::Requests { .. } => "requests",
            RecycleReason::Age { .. } => "age",
            RecycleReason::Schedule { .. } => "schedule",
            RecycleReason::Unhealthy { .. } => "unhealthy",
            RecycleReason::ConfigChange { .. } => "config_change",
            RecycleReason::AppMemory { .. } => "app_memory",
            RecycleReason::MemoryPressure { .. } => "memory_pressure",
        }
    }

    /// One human line: the reason and its detail.
    pub fn describe(&self) -> String {
        match self {
            RecycleReason::Manual => "manual recycle".into(),
            RecycleReason::FileChange {
                paths,
                count,
                change,
            } => {
                let mut s = format!("{change} {}", paths.join(", "));
                if *count > paths.len() {
                    s.push_str(&format!(" (+{} more)", count - paths.len()));
                }
                s
            }
            RecycleReason::WatchOverflow => "file watch queue overflowed".into(),
            RecycleReason::SoftChangeLimit { changes, limit } => {
                format!("{changes} soft changes reached the limit of {limit}")
            }
            RecycleReason::Memory { kind, bytes, limit } => {
                format!("{kind} {} > limit {}", mib(*bytes), mib(*limit))
            }
            RecycleReason::Requests { count, limit } => {
                format!("{count} requests ≥ limit {limit}")
            }
            RecycleReason::Age { age_ms, limit_ms } => {
                format!("age {} s ≥ interval {} s", age_ms / 1000, limit_ms / 1000)
            }
            RecycleReason::Schedule { at } => format!("scheduled at {at}"),
            RecycleReason::Unhealthy { detail } => format!("unhealthy: {detail}"),
            RecycleReason::ConfigChange { config_generation } => {
                format!("settings changed (config generation {config_generation})")
            }
            RecycleReason::AppMemory {
                bytes,
                limit,
                growth,
            } => format!(
                "the app's workers use {} > app_memory {}; this worker grew {} since it started, the most",
                mib(*bytes),
                mib(*limit),
                mib(*growth)
            ),
            RecycleReason::MemoryPressure {
                available,
                min_available,
                psi_some_avg10,
                psi_threshold,
                growth,
            } => {
                let mut why = Vec::new();
                if let (Some(a), Some(m)) = (available, min_available) {
                    let cmp = if a < m { "<" } else { "≥" };
                    why.push(format!("available {} {cmp} min_available {}", mib(*a), mib(*m)));
                }
                if let (Some(p), Some(t)) = (psi_some_avg10, psi_threshold) {
                    let cmp = if p > t { ">" } else { "≤" };
                    why.push(format!("PSI memory some avg10 {p:.2} {cmp} {t}"));
                }
                format!(
                    "memory pressure: {}; this worker grew {} since it started, the most of any candidate",
                    why.join(", "),
                    mib(*growth)
                )
            }
        }
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}
