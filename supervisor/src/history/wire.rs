//! What the control socket's `history` request answers: the wire types shared by
//! the recorder (the daemon side), `appvisor tune` and `appvisor top`.
//!
//! Request line: `{"cmd":"history","app":"site","since_s":3600,"max_points":240}`.
//! `since_s` defaults to one hour; `max_points` (per worker generation) lets the
//! supervisor downsample before sending, so a client never receives more than it
//! draws. Times are unix seconds (fractional) so clients and the file agree.

use serde::{Deserialize, Serialize};

/// The answer to one `history` request (in `Response::history`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HistoryReply {
    pub app: String,
    /// Seconds between two samples at full resolution (`[supervisor] sample_interval`).
    pub sample_interval_s: f64,
    /// The window answered, unix seconds.
    pub from: f64,
    pub to: f64,
    /// The app's limits as they are now (bytes resolved), for a chart's limit lines.
    pub limits: HistoryLimits,
    /// Samples, oldest first, every worker generation interleaved.
    pub points: Vec<HistoryPoint>,
    /// Recycles, crashes and startup failures in the window (from the restart log).
    pub marks: Vec<HistoryMark>,
}

/// The app's recycle limits in force, each `None` when not set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HistoryLimits {
    pub private_memory: Option<u64>,
    pub rss: Option<u64>,
    pub virtual_memory: Option<u64>,
    pub memory_hard_limit: Option<u64>,
    pub requests: Option<u64>,
    /// `interval`, seconds.
    pub interval_s: Option<f64>,
}

/// One sample of one worker's process tree (or the mean of a downsampled bucket,
/// with its min and max kept for the memory figure a limit is checked against).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HistoryPoint {
    /// Unix seconds (the bucket's start when downsampled).
    pub t: f64,
    pub worker: u32,
    pub generation: u64,
    pub pid: i32,
    /// Private memory (USS-like: RSS minus shared), bytes; the bucket's mean.
    pub private: u64,
    pub private_min: u64,
    pub private_max: u64,
    pub rss: u64,
    pub virtual_memory: u64,
    /// CPU time used since the worker started, seconds (children included).
    pub cpu_s: f64,
    /// Requests served since the worker started.
    pub requests: u64,
    pub uptime_s: f64,
    /// The highest resident and virtual size in the bucket (what a limit on them
    /// would have seen), bytes.
    #[serde(default)]
    pub rss_max: u64,
    #[serde(default)]
    pub virtual_max: u64,
    /// Samples this point stands for (1 at full resolution).
    #[serde(default)]
    pub samples: u32,
}

/// A lifecycle event placed on the time axis.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HistoryMark {
    pub t: f64,
    /// The restart log's `kind` (`recycle_started`, `crashed`, …).
    pub kind: String,
    /// The recycle reason (`private_memory`, `manual`, …), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// The event's detail in words (`private_memory 301.2 MiB > limit 300.0 MiB`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}
