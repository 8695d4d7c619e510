//! What the log's threads tell the rest of the store ([`LogStatus`]), and how
//! each thread reports a failure and the recovery ([`Health`]). Its own module
//! so the writer (`mod.rs`) and the syncer (`syncer.rs`) share it without
//! importing each other.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::{watch, Notify};

/// What the rest of the store may read about the log.
#[derive(Debug, Default)]
pub(crate) struct LogStatus {
    /// Bytes in the current log file.
    pub size: AtomicU64,
    /// Its size right after the last load or rewrite.
    pub base_size: AtomicU64,
    /// The last write or sync failed: writes are refused until one succeeds.
    pub failed: AtomicBool,
    pub rewriting: AtomicBool,
    /// BGREWRITEAOF asked for a rewrite; the purge task starts it.
    pub rewrite_requested: AtomicBool,
    /// The log size at which the purge task wants to look at it again (a
    /// rewrite may be due); u64::MAX once it has been told.
    pub check_size: AtomicU64,
    /// Tells the purge task that the log reached `check_size`.
    pub size_reached: Notify,
}

/// Failure reporting of one thread: a write or sync failure refuses writes
/// (`LogStatus::failed`) until the same thread succeeds again.
#[derive(Default)]
pub(super) struct Health {
    /// A failure was reported; report the recovery too.
    warned: bool,
}

impl Health {
    pub(super) fn failed(&mut self, status: &LogStatus, what: &str) {
        if !status.failed.swap(true, Ordering::Relaxed) {
            tracing::error!("{what}; refusing writes until the log can be written");
        }
        self.warned = true;
    }

    pub(super) fn recovered(&mut self, status: &LogStatus, path: &Path) {
        if self.warned {
            self.warned = false;
            status.failed.store(false, Ordering::Relaxed);
            tracing::info!("{} is writable again; writes are accepted", path.display());
        }
    }
}

/// Announces that records up to `seq` are on disk (never moving backwards).
pub(super) fn publish_durable(durable: &watch::Sender<u64>, seq: u64) {
    durable.send_if_modified(|done| {
        let advanced = seq > *done;
        if advanced {
            *done = seq;
        }
        advanced
    });
}
