//! The embedded session store: a Redis-protocol server inside the supervisor, so
//! session state outlives every worker and any language's Redis client can use it.
//!
//! # Layout
//!
//! - [`resp`]: request parsing (in place, no allocation) and reply encoding, RESP2
//!   and RESP3.
//! - [`keyspace`]: one namespace per app: a hash table of compact entries, an
//!   expiry heap, WATCH flags, pub/sub channels.
//! - [`command`]: the command table, the checks every request passes, and the
//!   handlers by theme.
//! - [`client`]: per-connection state (login, protocol, MULTI, WATCH, subscriptions).
//! - [`connection`]: the per-connection task: read, run a batch, write.
//! - [`expiry`]: the task that removes keys as their time comes and starts log
//!   rewrites.
//! - [`aof`]: the append-only log (writer thread, rewrite, replay at start).
//! - [`server`]: sockets, the shared state, start and shutdown.
//! - [`transport`]: socket reads and writes without write-readiness wake-ups.
//! - [`url`]: the `APPVISOR_STORE_URL` given to workers.
//!
//! # Theory of operation
//!
//! Every connection is a tokio task. It reads into a buffer, then locks the
//! keyspace once and runs every whole request in the buffer, writing replies into
//! one output buffer that it sends with one `write`. The lock is a `std::sync::Mutex`
//! held only for that synchronous pass, never across an `.await`; on the
//! supervisor's current-thread runtime it is never contended, and on a
//! multi-threaded one the critical sections are short. Nothing in a pass blocks:
//! changes are handed to the log's own thread (see [`aof`]).
//!
//! *Isolation.* A connection is anonymous until `AUTH app token` (or `HELLO 3 AUTH
//! …`); it then sees only that app's namespace: keys, SCAN, FLUSHDB, channels and
//! expiry notifications. A connection to a per-app socket (`app_socket_dir`) is
//! logged in as that app from the start, because the socket's path (mode 0600, in a
//! 0700 directory) already says who it is for.
//!
//! *Expiry.* Absolute unix-millisecond deadlines, removed lazily on access and
//! actively by [`expiry`]; every removal publishes `__keyevent@0__:expired` (payload:
//! the key) and `__keyspace@0__:<key>` (payload: `expired`) in the app's namespace.

mod aof;
mod client;
mod command;
mod connection;
mod expiry;
mod glob;
mod keyspace;
mod pubsub;
mod resp;
mod server;
mod transport;
mod url;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use appvisor_config::{EmbeddedStore, Persist};

pub use aof::{LoadReport, Truncation};

/// An app's login: username = the app's name, password = its token.
#[derive(Clone, PartialEq, Eq)]
pub struct AppCredential {
    pub app: String,
    pub password: String,
}

impl std::fmt::Debug for AppCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token.
        f.debug_struct("AppCredential")
            .field("app", &self.app)
            .finish_non_exhaustive()
    }
}

/// How to run the store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// The main socket (mode 0600); AUTH is required on it.
    pub unix_path: PathBuf,
    /// If set, each app also gets `<dir>/<app>.sock`, whose connections are logged
    /// in as that app without AUTH. This is what [`StoreHandle::url_for`] hands
    /// out: no unix-socket URL carrying credentials is read the same way by the
    /// Rust `redis` crate and by redis-py (see [`url`]).
    pub app_socket_dir: Option<PathBuf>,
    /// Also listen on TCP (AUTH required); None by default.
    pub tcp: Option<SocketAddr>,
    /// The append-only log; None keeps nothing across restarts.
    pub aof_path: Option<PathBuf>,
    pub persist: Persist,
    pub max_memory: Option<u64>,
    pub max_value_size: u64,
    pub max_clients: u32,
    pub apps: Vec<AppCredential>,
    /// The log is compacted once larger than this and twice the live data
    /// (default 64 MiB, as Redis's `auto-aof-rewrite-min-size`).
    pub rewrite_min_size: u64,
}

/// Default for [`StoreOptions::rewrite_min_size`].
pub const DEFAULT_REWRITE_MIN_SIZE: u64 = 64 * 1024 * 1024;

impl StoreOptions {
    /// Options for `[store] backend = "embedded"`: the main socket at
    /// `<state_dir>/store.sock`, per-app sockets in `<state_dir>/store/`, the log at
    /// `<state_dir>/store.aof`.
    pub fn from_config(
        state_dir: &Path,
        config: &EmbeddedStore,
        apps: Vec<AppCredential>,
    ) -> StoreOptions {
        StoreOptions {
            unix_path: state_dir.join("store.sock"),
            app_socket_dir: Some(state_dir.join("store")),
            tcp: config.tcp,
            aof_path: Some(state_dir.join("store.aof")),
            persist: config.persist,
            max_memory: config.max_memory,
            max_value_size: config.max_value_size,
            max_clients: config.max_clients,
            apps,
            rewrite_min_size: DEFAULT_REWRITE_MIN_SIZE,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: cannot listen on {}: {source}", path.display())]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("store: {} exists and is not a socket; move it away or choose another state_dir", path.display())]
    NotASocket { path: PathBuf },
    #[error("store: cannot listen on tcp {addr}: {source} (check [store] tcp)")]
    BindTcp {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("store: append-only log {}: {source}", path.display())]
    Log {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "store: app name '{app}' cannot name a socket file (use letters, digits, '-', '_', '.')"
    )]
    AppName { app: String },
    #[error("store: {what}")]
    Internal { what: String },
}

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
    inner: Arc<server::Inner>,
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
        let ks = self.inner.lock();
        let log = &self.inner.state.log;
        StoreStats {
            keys: ks.keys() as u64,
            memory: ks.memory() as u64,
            clients: self.inner.state.clients.load(Ordering::Relaxed),
            log_size: log.size.load(Ordering::Relaxed),
            log_failed: log.failed.load(Ordering::Relaxed),
        }
    }

    /// The `APPVISOR_STORE_URL` for `app`'s workers, or None for an unknown app.
    /// See [`url`] for the form and why.
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
        let addr = self.inner.state.tcp?;
        Some(url::tcp_url(addr, app, &password))
    }

    /// The main socket (AUTH required).
    pub fn unix_path(&self) -> &Path {
        self.inner.unix_path()
    }

    /// The TCP address actually bound (port 0 in the options picks one).
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.inner.state.tcp
    }

    /// What the replay of the log found at start.
    pub fn load_report(&self) -> &LoadReport {
        &self.inner.load_report
    }

    /// Resolves once the store has shut down and its log is synced.
    pub async fn closed(&self) {
        self.inner.closed().await;
    }
}
