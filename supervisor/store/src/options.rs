//! How to run a store ([`StoreOptions`]) and who may log in ([`AppCredential`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use appvisor_config::{EmbeddedStore, Persist};

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
    /// in as that app without AUTH. This is what [`StoreHandle::url_for`](crate::StoreHandle::url_for) hands
    /// out: no unix-socket URL carrying credentials is read the same way by the
    /// Rust `redis` crate and by redis-py (see the `url` module).
    pub app_socket_dir: Option<PathBuf>,
    /// Also listen on TCP (AUTH required); None by default.
    pub tcp: Option<SocketAddr>,
    /// The append-only log; None keeps nothing across restarts.
    pub aof_path: Option<PathBuf>,
    pub persist: Persist,
    /// Data plus the output queued for slow readers may not exceed this: past it
    /// writes are refused (Redis `noeviction`). None: no bound (only
    /// [`StoreOptions::from_config`] fills in [`default_max_memory`]).
    pub max_memory: Option<u64>,
    pub max_value_size: u64,
    pub max_clients: u32,
    pub apps: Vec<AppCredential>,
    /// The log is compacted once larger than this and twice the live data
    /// (default 64 MiB, as Redis's `auto-aof-rewrite-min-size`).
    pub rewrite_min_size: u64,
    /// A client whose queued replies would exceed this is sent an error and
    /// disconnected (Redis's `client-output-buffer-limit`, as a hard limit). See
    /// [`DEFAULT_MAX_OUTPUT`] for the choice.
    pub max_output: u64,
    /// TCP connections that have not logged in yet may number this many at
    /// once, apart from `max_clients` (see [`seat`](super::seat)).
    pub max_anonymous: u32,
    /// A TCP connection that has not logged in within this is closed.
    pub auth_timeout: std::time::Duration,
}

/// Default for [`StoreOptions::max_anonymous`].
///
/// Clients send AUTH (or HELLO … AUTH) as their first request, so a TCP
/// connection is anonymous for one round trip, but a burst of connections can
/// be accepted faster than their AUTH is run: 64 leaves room for a fleet of
/// workers reconnecting at once, and little for a stranger, who can no longer
/// take the apps' `max_clients` seats.
pub const DEFAULT_MAX_ANONYMOUS: u32 = 64;

/// Default for [`StoreOptions::auth_timeout`]: 10 s, long enough for a slow
/// network or a person typing AUTH into `redis-cli`, short enough that idle
/// strangers give their seat back quickly.
pub const DEFAULT_AUTH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Default for [`StoreOptions::max_output`]: 64 MiB per client.
///
/// Redis leaves normal clients unbounded and cuts pub/sub clients at 32 MiB and
/// replicas at 256 MiB. A session store's replies are a value or a few: this is
/// 64 values of the default `max_value_size` (1 MiB) in one reply, far beyond
/// any session read, while `MGET` of a 1 MiB key ×800 (831 MB before the bound)
/// now costs at most 64 MiB before the client is cut. The limit is raised to
/// twice `max_value_size` when that is larger, so any single value can still
/// be read (see `server::start`).
pub const DEFAULT_MAX_OUTPUT: u64 = 64 * 1024 * 1024;

/// The `max_memory` a store gets when `[store]` sets none: a quarter of the
/// machine's memory, at most 1 GiB (at least 64 MiB).
///
/// Redis defaults to no bound, which lets one runaway app push the supervisor
/// (and with it every app) into the OOM killer. A session store holding more
/// than 1 GiB is a deliberate choice that `max_memory` states.
pub fn default_max_memory() -> u64 {
    const CAP: u64 = 1 << 30;
    const FLOOR: u64 = 64 << 20;
    // SAFETY: sysconf reads system constants; it has no memory effects.
    let (pages, page_size) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    if pages <= 0 || page_size <= 0 {
        return CAP;
    }
    let quarter = (pages as u64).saturating_mul(page_size as u64) / 4;
    quarter.clamp(FLOOR, CAP)
}

/// Default for [`StoreOptions::rewrite_min_size`].
pub const DEFAULT_REWRITE_MIN_SIZE: u64 = 64 * 1024 * 1024;

impl StoreOptions {
    /// Options for `[store] backend = "embedded"`: the main socket at
    /// `<state_dir>/store.sock`, per-app sockets in `<state_dir>/store/`, the log at
    /// `<state_dir>/store.aof`; `max_memory` unset is [`default_max_memory`].
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
            max_memory: Some(config.max_memory.unwrap_or_else(default_max_memory)),
            max_value_size: config.max_value_size,
            max_clients: config.max_clients,
            apps,
            rewrite_min_size: DEFAULT_REWRITE_MIN_SIZE,
            max_output: DEFAULT_MAX_OUTPUT,
            max_anonymous: DEFAULT_MAX_ANONYMOUS,
            auth_timeout: DEFAULT_AUTH_TIMEOUT,
        }
    }
}
