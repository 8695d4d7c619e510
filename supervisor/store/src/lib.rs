//! appvisor's embedded session store: a Redis-protocol server that the supervisor
//! runs on its own runtime thread, so session state outlives every worker and any
//! language's Redis client can use it. [`serve`] starts it on any tokio runtime;
//! `examples/serve.rs` runs it alone, for `redis-cli` and benchmarks.
//!
//! ```no_run
//! # async fn demo() -> Result<(), appvisor_store::StoreError> {
//! use appvisor_store::{
//!     serve, AppCredential, StoreOptions, DEFAULT_AUTH_TIMEOUT, DEFAULT_MAX_ANONYMOUS,
//!     DEFAULT_MAX_OUTPUT, DEFAULT_REWRITE_MIN_SIZE,
//! };
//! let opts = StoreOptions {
//!     unix_path: "/tmp/store.sock".into(),
//!     app_socket_dir: None,
//!     tcp: None,
//!     aof_path: None,
//!     persist: appvisor_config::Persist::No,
//!     max_memory: None,
//!     max_value_size: 1 << 20,
//!     max_clients: 1000,
//!     apps: vec![AppCredential { app: "web".into(), password: "secret".into() }],
//!     rewrite_min_size: DEFAULT_REWRITE_MIN_SIZE,
//!     max_output: DEFAULT_MAX_OUTPUT,
//!     max_anonymous: DEFAULT_MAX_ANONYMOUS,
//!     auth_timeout: DEFAULT_AUTH_TIMEOUT,
//! };
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let store = serve(opts, async { let _ = stopped.await; }).await?;
//! let url = store.url_for("web"); // what a worker gets as APPVISOR_STORE_URL
//! # drop((stop, url));
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! Modules only import downwards: `server` (accept loops, start, shutdown) uses
//! `connection` and `expiry`, which use `state` (what every task shares) and
//! `command`; `command` uses `client`, `keyspace` and `resp`. No module imports
//! this root, which only re-exports and holds the handle.
//!
//! - `resp`: request parsing (in place, no allocation) and reply encoding, RESP2
//!   and RESP3.
//! - `keyspace`: one namespace per app: a hash table of compact entries, an
//!   expiry heap, WATCH flags, pub/sub channels.
//! - `command`: the command table, the checks every request passes, and the
//!   handlers by theme.
//! - `args`: one request's words, as ranges of a buffer.
//! - `client`: per-connection state (login, protocol, MULTI, WATCH, subscriptions).
//! - `seat`: the connection counts: clients (`max_clients`) and TCP
//!   connections still to log in (`max_anonymous`, `auth_timeout`).
//! - `state`: what every task shares: the locked keyspace, settings and
//!   counters, the log's writer.
//! - `connection`: the per-connection task: read, run a batch, write.
//! - `expiry`: the task that removes keys as their time comes and starts log
//!   rewrites.
//! - `aof`: the append-only log (writer thread, rewrite, replay at start).
//! - `server`: sockets, accept loops, start and shutdown.
//! - `options`, `error`: what a caller passes in and gets back.
//! - `transport`: socket reads and writes without write-readiness wake-ups.
//! - `url`: the `APPVISOR_STORE_URL` given to workers.
//!
//! # Theory of operation
//!
//! Every connection is a tokio task. It reads into a buffer, then locks the
//! keyspace once and runs every whole request in the buffer, writing replies into
//! one output buffer that it sends with one `write`. The lock is a `std::sync::Mutex`
//! held only for that synchronous pass, never across an `.await`; on the
//! supervisor's current-thread runtime it is never contended, and on a
//! multi-threaded one the critical sections are short. Nothing in a pass blocks:
//! changes are handed to the log's own thread (see `aof`).
//!
//! *Isolation.* A connection is anonymous until `AUTH app token` (or `HELLO 3 AUTH
//! …`); it then sees only that app's namespace: keys, SCAN, FLUSHDB, channels and
//! expiry notifications. A connection to a per-app socket (`app_socket_dir`) is
//! logged in as that app from the start, because the socket's path (mode 0600, in a
//! 0700 directory) already says who it is for.
//!
//! *Logging.* The store emits `tracing` events and installs no subscriber (its
//! host does): a log that cannot be written at `error`, a cut log tail and
//! accept errors at `warn`, a finished compaction at `info`; at `debug`, its
//! decisions: log replay, a rewrite due or asked for, keys purged on expiry, a
//! client or login refused, a write refused past max_memory, app sockets, shutdown.
//!
//! *Limits.* Every bound is checked before the bytes it governs are buffered:
//!
//! | what | bound | past it |
//! |---|---|---|
//! | a length line (`*N`, `$N`) | 24 bytes, a strict decimal | protocol error, closed |
//! | one bulk string | `max_value_size` + 64 KiB, at most 512 MiB (Redis's `proto-max-bulk-len`); 4 KiB before AUTH | protocol error, closed |
//! | elements of one request | 1,048,576 (Redis's bound); 16 before AUTH | protocol error, closed |
//! | one request in all | 256 MiB or twice the bulk bound; 64 KiB before AUTH | protocol error, closed |
//! | an inline request | 64 KiB | protocol error, closed |
//! | requests read ahead while replies wait | 64 MiB; 64 KiB before AUTH | the store stops reading (the client's writes wait) |
//! | replies waiting for a client | running its requests pauses at 1 MiB; one reply may not take them past `max_output` (64 MiB, and at least twice `max_value_size`) | error `reply too large`, closed, logged |
//! | TCP connections not logged in yet | `max_anonymous` (default 64), each for `auth_timeout` (default 10 s); all others: `max_clients` | refused at accept / closed at the deadline |
//! | commands queued in one MULTI | `max_output` in all | that command refused, EXEC answers `EXECABORT` |
//! | data plus every client's waiting replies | `max_memory` (default: ¼ of RAM, at most 1 GiB) | writes refused with `OOM` |
//!
//! So a header claiming 2 GiB (`$2147483648`) or 2^31 elements is refused as
//! soon as it is read; a header within bounds reserves nothing up front (the
//! read buffer grows only with the bytes that come).
//!
//! *Expiry.* Absolute unix-millisecond deadlines, removed lazily on access and
//! actively by `expiry`; every removal publishes `__keyevent@0__:expired` (payload:
//! the key) and `__keyspace@0__:<key>` (payload: `expired`) in the app's namespace.

mod aof;
mod args;
mod client;
mod command;
mod connection;
mod error;
mod expiry;
#[cfg(test)]
mod fuzz;
mod glob;
mod keyspace;
mod options;
mod pubsub;
mod resp;
mod seat;
mod server;
mod state;
mod transport;
mod url;

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub use aof::{LoadReport, Truncation};
pub use error::StoreError;
pub use options::{
    default_max_memory, AppCredential, StoreOptions, DEFAULT_AUTH_TIMEOUT, DEFAULT_MAX_ANONYMOUS,
    DEFAULT_MAX_OUTPUT, DEFAULT_REWRITE_MIN_SIZE,
};

/// Figures for `appvisor status` and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreStats {
    pub keys: u64,
    /// Estimated bytes held by data (what max_memory is compared with).
    pub memory: u64,
    pub clients: u32,
    /// Bytes in the append-only log (0 without one).
    pub log_size: u64,
    /// Whether the log could not be written at the last attempt.
    pub log_failed: bool,
}

/// Counts since the store started, for metrics (`StoreHandle::counters`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreCounters {
    /// Commands run (every whole request of every connection, rejected ones too).
    pub commands: u64,
    /// Keys that reached their deadline: removed by the purge task or on access,
    /// or replaced by a SET after their deadline (each announced as `expired`).
    pub expired: u64,
}

/// Loads the log, binds the sockets, and serves in background tasks until
/// `shutdown` resolves; then drops every connection, writes and syncs the log, and
/// removes the socket files ([`StoreHandle::closed`] resolves after that).
///
/// Must be called within a tokio runtime with the time and net drivers enabled.
pub async fn serve(
    opts: StoreOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<StoreHandle, StoreError> {
    let inner = server::start(opts, shutdown).await?;
    Ok(StoreHandle { inner })
}

/// A running store. Cheap to clone.
#[derive(Clone)]
pub struct StoreHandle {
    inner: Arc<server::Server>,
}

impl std::fmt::Debug for StoreHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreHandle")
            .field("unix_path", &self.inner.unix_path())
            .finish_non_exhaustive()
    }
}

impl StoreHandle {
    /// Replaces the app credentials (config reload). New apps get a namespace (and
    /// a socket); removed apps can no longer log in, but their data is kept and
    /// open connections stay as they are.
    pub fn set_apps(&self, apps: &[AppCredential]) -> Result<(), StoreError> {
        self.inner.set_apps(apps)
    }

    pub fn stats(&self) -> StoreStats {
        let shared = &self.inner.shared;
        let ks = shared.lock();
        let log = &shared.state.log;
        StoreStats {
            keys: ks.keys() as u64,
            memory: ks.memory() as u64,
            clients: shared.state.clients.load(Ordering::Relaxed),
            log_size: log.size.load(Ordering::Relaxed),
            log_failed: log.failed.load(Ordering::Relaxed),
        }
    }

    /// Commands run and keys expired since start (one lock, no walk of the keys).
    pub fn counters(&self) -> StoreCounters {
        let ks = self.inner.shared.lock();
        StoreCounters {
            commands: ks.commands,
            expired: ks.dbs.iter().map(|db| db.expired).sum(),
        }
    }

    /// The `APPVISOR_STORE_URL` for `app`'s workers, or None for an unknown app.
    /// See the `url` module for the form and why.
    pub fn url_for(&self, app: &str) -> Option<String> {
        let password = self.inner.password(app)?;
        let socket = self
            .inner
            .app_socket(app)
            .unwrap_or_else(|| self.inner.unix_path().to_owned());
        Some(url::unix_url(&socket, app, &password))
    }

    /// A `redis://app:token@host:port/0` URL, when TCP is enabled.
    pub fn tcp_url_for(&self, app: &str) -> Option<String> {
        let password = self.inner.password(app)?;
        let addr = self.inner.shared.state.tcp?;
        Some(url::tcp_url(addr, app, &password))
    }

    /// The main socket (AUTH required).
    pub fn unix_path(&self) -> &Path {
        self.inner.unix_path()
    }

    /// The TCP address actually bound (port 0 in the options picks one).
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.inner.shared.state.tcp
    }

    /// What the replay of the log found at start.
    pub fn load_report(&self) -> &LoadReport {
        &self.inner.load_report
    }

    /// After its directory was deleted and made again: binds the missing
    /// sockets again and rewrites a missing log from memory (every key). Returns
    /// what was restored, in words (empty if nothing was missing).
    pub fn restore_files(&self) -> Result<Vec<&'static str>, StoreError> {
        self.inner.restore_files()
    }

    /// Resolves once the store has shut down and its log is synced.
    pub async fn closed(&self) {
        self.inner.closed().await;
    }
}
