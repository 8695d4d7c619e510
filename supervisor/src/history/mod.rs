//! Recorded history of every worker's memory, CPU and requests.
//!
//! # Layout
//! - [`file`] — the on-disk format: fixed-size binary records with a checksum, in
//!   time-named segments (full resolution, and one-minute min/max/mean buckets).
//! - [`recorder`] — the writer one pool owns: appends each sampling tick, folds
//!   buckets, enforces retention and `history_max_size`, cuts torn tails.
//! - [`query`] — reads a window back (full resolution for the last hour, buckets
//!   before), thins it to `max_points`, and joins the restart log's marks: the
//!   control socket's `history` answer ([`wire`]).
//! - [`fit`] — medians and the Theil–Sen line `tune` fits.
//! - [`tune`] — `appvisor tune`: levels, leak rates, limits fired, recommendations
//!   and `--what-if`, from the files directly (the supervisor may be stopped).
//! - [`wire`] — the `history` reply shared with `appvisor top` and metrics.
//!
//! # Theory of operation
//! Each pool samples every worker every `[supervisor] sample_interval`
//! (`pool/sample.rs`) and hands the tick to its [`recorder::Recorder`]. Nothing of
//! the history is kept in memory beyond the current minute's buckets; readers go to
//! the files, which the kernel's page cache keeps warm.

pub mod file;
pub mod fit;
pub mod query;
pub mod recorder;
pub mod tune;
pub mod wire;

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
