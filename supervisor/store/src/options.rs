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
