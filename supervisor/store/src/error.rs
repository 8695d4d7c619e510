//! What can stop a store from starting or changing its apps.

use std::net::SocketAddr;
use std::path::PathBuf;

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
