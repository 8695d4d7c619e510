//! The state every task of a running store shares (as mini-redis's `db.rs`): the
//! keyspace behind its lock, the settings and counters commands read, the frame
//! limits, and the log's writer.
//!
//! The connection tasks ([`connection`](super::connection)) and the purge task
//! ([`expiry`](super::expiry)) hold an `Arc<Shared>`; the accept loops and the
//! lifecycle in [`server`](super::server) create it. Nothing here knows about
//! sockets or tasks, so the modules that serve form a tree, not a cycle.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use appvisor_config::Persist;

use super::aof::{LogStatus, LogWriter};
use super::keyspace::Keyspace;
use super::resp::FrameLimits;
use super::seat::Seats;

/// Settings and counters that commands read.
#[derive(Debug)]
pub(crate) struct ServerState {
    pub max_memory: Option<u64>,
    pub max_value_size: u64,
    /// Logged-in and anonymous connection counts (see [`seat`](super::seat)).
    pub seats: Arc<Seats>,
    /// How long a connection may stay anonymous.
    pub auth_timeout: Duration,
    pub persist: Persist,
    /// Whether a log is kept at all.
    pub logging: bool,
    pub log: Arc<LogStatus>,
    /// Open connections, with or without a seat (shutdown waits for 0).
    pub clients: AtomicU32,
    pub next_client_id: AtomicU64,
    pub started: Instant,
    pub tcp: Option<SocketAddr>,
    /// The most reply bytes one client may have queued (see
    /// [`StoreOptions::max_output`](super::options::StoreOptions)).
    pub max_output: usize,
    /// Reply bytes queued for clients that have not read them yet: memory as
    /// much as the data is, so it counts against max_memory.
    pub output: AtomicU64,
    /// Request bytes read ahead and not run yet (a pipeline written before its
    /// replies are read): memory too, so they count against max_memory.
    pub input: AtomicU64,
}

impl ServerState {
    pub fn over_memory(&self, ks: &Keyspace) -> bool {
        let Some(max) = self.max_memory else {
            return false;
        };
        let output = self.output.load(Ordering::Relaxed);
        let input = self.input.load(Ordering::Relaxed);
        let over = ks.memory() as u64 + output + input > max;
        if over {
            tracing::debug!(
                "refused a write: data holds {} bytes, {output} bytes of replies wait for their readers and {input} bytes of requests wait to run, over max_memory {max}",
                ks.memory(),
            );
        }
        over
    }
}

/// What the connection and purge tasks share.
pub(crate) struct Shared {
    pub keyspace: Mutex<Keyspace>,
    pub state: ServerState,
    pub limits: FrameLimits,
    pub writer: Option<LogWriter>,
    /// See [`StoreOptions::rewrite_min_size`](super::options::StoreOptions).
    pub rewrite_min_size: u64,
}

/// Unix time in milliseconds.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, Keyspace> {
        // Handlers do not panic on client input; if one ever did, the keyspace is
        // still structurally sound, so keep serving rather than poison every client.
        self.keyspace.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a log rewrite if one is due or was asked for (purge task, locked).
    /// If none is due, sets the log size at which one may be
    /// ([`LogStatus::check_size`](super::aof::LogStatus)): the log's writer
    /// wakes the purge task then, so an idle store has no reason to wake up.
    pub fn maybe_rewrite(&self, ks: &mut Keyspace, now: u64) {
        let Some(writer) = &self.writer else { return };
        let log = &self.state.log;
        let size = log.size.load(Ordering::Relaxed);
        if log.rewriting.load(Ordering::Relaxed) {
            // The writer wakes this task again when the rewrite is over.
            return;
        }
        let requested = log.rewrite_requested.swap(false, Ordering::Relaxed);
        let live = ks.memory() as u64;
        let due_at = self.rewrite_min_size.max(2 * live);
        if !requested && size < due_at {
            // Deletions that make it due sooner grow the log too, and expiries
            // run this task anyway. SeqCst, with the writer's store of the size
            // and load of the mark: if it appended past `due_at` before seeing
            // the new mark, this load sees its size.
            log.check_size.store(due_at, Ordering::SeqCst);
            if log.size.load(Ordering::SeqCst) < due_at {
                return;
            }
        }
        if requested {
            tracing::debug!("log rewrite asked for (BGREWRITEAOF): the log is {size} bytes");
        } else {
            tracing::debug!(
                "log rewrite due: the log is {size} bytes, over {due_at} (the larger of the minimum and twice the {live} bytes of live data)"
            );
        }
        // Records of the current batch must precede the snapshot in the queue.
        if !ks.log.is_empty() {
            writer.submit(&mut ks.log);
        }
        let mut snapshot = Vec::with_capacity(ks.keys());
        for db in &ks.dbs {
            db.snapshot(now, &mut snapshot);
        }
        writer.rewrite(snapshot);
    }
}
