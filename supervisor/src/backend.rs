//! The session store as the supervisor runs it: the embedded Redis-protocol store,
//! or a remote Redis / Valkey / Redis Cluster that workers reach by URL.
//!
//! Either way a worker learns where its sessions live from one variable,
//! `APPVISOR_STORE_URL`. Embedded: a per-app URL with the app's own credentials
//! (tokens drawn from the OS CSPRNG at every start). Redis: the configured URL,
//! checked for reachability at start and shown in `status`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use appvisor_config::{Config, StoreBackend};
use appvisor_contract as contract;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

use appvisor_store::{self as store, AppCredential, StoreHandle, StoreOptions};

/// The running backend.
#[derive(Debug)]
pub enum Backend {
    Embedded {
        handle: StoreHandle,
        credentials: BTreeMap<String, String>,
        stop: Option<oneshot::Sender<()>>,
    },
    Redis {
        url: String,
        reachable: Result<RedisKind, String>,
    },
}

/// What answered at the Redis URL, as far as the supervisor can tell without
/// credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisKind {
    Standalone,
    /// `cluster_enabled:1`: workers route by hash slot.
    Cluster,
    /// It answered, but INFO needs credentials (or TLS hides it).
    Unknown,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("cannot draw a random token for the store: {0}")]
    Random(#[source] getrandom::Error),
}

/// A fresh store password for one app: 24 bytes (192 bits) from the kernel's
/// CSPRNG (`getrandom(2)`, which also works where `/dev` is not mounted, and
/// blocks only until the pool is first seeded), as 48 lowercase hex digits.
fn token() -> Result<String, BackendError> {
    use std::fmt::Write;
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).map_err(BackendError::Random)?;
    let mut hex = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(hex, "{b:02x}");
    }
    Ok(hex)
}

/// What the embedded store found at start, in words.
fn log_load_report(report: &store::LoadReport, socket: &std::path::Path) {
    let plural = |n: u64| if n == 1 { "" } else { "s" };
    tracing::info!(
        "Session store ready on {}: {} key{} loaded from {} log record{} ({} expired while it was down).",
        socket.display(),
        report.keys,
        plural(report.keys),
        report.records,
        plural(report.records),
        report.expired,
    );
    if let Some(cut) = &report.truncated {
        let saved = cut
            .saved_to
            .as_ref()
            .map(|p| format!("; the cut bytes are saved in {}", p.display()))
            .unwrap_or_default();
        tracing::warn!(
            "The session store's log was cut at byte {}: {} byte{} dropped ({}){saved}.",
            cut.at,
            cut.dropped,
            plural(cut.dropped),
            cut.reason,
        );
    }
}

impl Backend {
    pub async fn start(config: &Config) -> Result<Backend, BackendError> {
        match &config.store.backend {
            StoreBackend::Embedded(embedded) => {
                let mut credentials = BTreeMap::new();
                for app in &config.apps {
                    credentials.insert(app.name.clone(), token()?);
                }
                let creds = to_creds(&credentials);
                let opts = StoreOptions::from_config(&config.supervisor.state_dir, embedded, creds);
                let (tx, rx) = oneshot::channel::<()>();
                let handle = store::serve(opts, async move {
                    let _ = rx.await;
                })
                .await?;
                log_load_report(handle.load_report(), handle.unix_path());
                Ok(Backend::Embedded {
                    handle,
                    credentials,
                    stop: Some(tx),
                })
            }
            StoreBackend::Redis { url } => {
                let reachable = check_redis(url).await;
                match &reachable {
                    Ok(kind) => tracing::info!(
                        "Session store: {} answers PING{}.",
                        redact(url),
                        if *kind == RedisKind::Cluster {
                            " (a Redis Cluster node: workers route by slot)"
                        } else {
                            ""
                        }
                    ),
                    Err(e) => tracing::warn!(
                        "Session store {} is not reachable: {e}; workers will retry.",
                        redact(url)
                    ),
                }
                Ok(Backend::Redis {
                    url: url.clone(),
                    reachable,
                })
            }
        }
    }

    /// The state dir was deleted and made again: the embedded store's sockets are
    /// bound again and its log rewritten from memory. What came back, in words
    /// (a failure is logged, and named, and the supervisor goes on).
    pub fn restore_files(&self) -> Vec<String> {
        let Backend::Embedded { handle, .. } = self else {
            return Vec::new();
        };
        match handle.restore_files() {
            Ok(restored) => restored
                .into_iter()
                .map(|what| format!("the store's {}", what.trim_start_matches("its ")))
                .collect(),
            Err(e) => {
                tracing::error!("The session store's files cannot be made again: {e}");
                vec![format!("not the store's files ({e})")]
            }
        }
    }

    /// The environment a worker of `app` gets for its sessions.
    pub fn env_for(&self, app: &str) -> Vec<(String, String)> {
        let url = match self {
            Backend::Embedded { handle, .. } => handle.url_for(app),
            Backend::Redis { url, .. } => Some(url.clone()),
        };
        url.map(|u| vec![(contract::env::APPVISOR_STORE_URL.to_string(), u)])
            .unwrap_or_default()
    }

    /// A config reload added or removed apps.
    pub fn set_apps(&mut self, config: &Config) -> Result<(), BackendError> {
        if let Backend::Embedded {
            handle,
            credentials,
            ..
        } = self
        {
            credentials.retain(|name, _| config.app(name).is_some());
            for app in &config.apps {
                if !credentials.contains_key(&app.name) {
                    credentials.insert(app.name.clone(), token()?);
                }
            }
            handle.set_apps(&to_creds(credentials))?;
        }
        Ok(())
    }

    /// The embedded store, if that is the backend (metrics read its figures).
    pub fn embedded(&self) -> Option<&StoreHandle> {
        match self {
            Backend::Embedded { handle, .. } => Some(handle),
            Backend::Redis { .. } => None,
        }
    }

    /// One line for `status`.
    pub fn describe(&self) -> String {
        match self {
            Backend::Embedded { handle, .. } => {
                let s = handle.stats();
                format!(
                    "embedded unix:{} · {} keys · {:.1} MiB · {} clients{}",
                    handle.unix_path().display(),
                    s.keys,
                    s.memory as f64 / 1048576.0,
                    s.clients,
                    if s.log_failed {
                        " · LOG WRITE FAILING"
                    } else {
                        ""
                    }
                )
            }
            Backend::Redis { url, reachable } => match reachable {
                Ok(RedisKind::Cluster) => {
                    format!("redis cluster {} (reachable at start)", redact(url))
                }
                Ok(_) => format!("redis {} (reachable at start)", redact(url)),
                Err(e) => format!("redis {} (NOT reachable at start: {e})", redact(url)),
            },
        }
    }

    /// Tells the embedded store to stop (call once every worker has handed its
    /// sessions off); await [`StoreHandle::closed`] on the result for the log sync.
    pub fn begin_shutdown(&mut self) -> Option<StoreHandle> {
        if let Backend::Embedded { handle, stop, .. } = self {
            if let Some(tx) = stop.take() {
                let _ = tx.send(());
            }
            return Some(handle.clone());
        }
        None
    }
}

fn to_creds(map: &BTreeMap<String, String>) -> Vec<AppCredential> {
    map.iter()
        .map(|(app, password)| AppCredential {
            app: app.clone(),
            password: password.clone(),
        })
        .collect()
}

/// `redis://user:secret@host` → `redis://user:***@host`.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// Connects to the Redis named by `url` and sends PING and INFO cluster. An auth
/// error still proves the server is there.
async fn check_redis(url: &str) -> Result<RedisKind, String> {
    let (scheme, rest) = url.split_once("://").ok_or("not a URL")?;
    let rest = rest.rsplit_once('@').map(|(_, r)| r).unwrap_or(rest);
    let timeout = Duration::from_secs(3);
    let answer = match scheme {
        "unix" | "redis+unix" => {
            let path = rest.split('?').next().unwrap_or(rest);
            let path = path.strip_prefix("localhost").unwrap_or(path);
            tokio::time::timeout(timeout, ping_unix(Path::new(path))).await
        }
        _ => {
            let hostport = rest.split(['/', '?', ',']).next().unwrap_or(rest);
            let hostport = if hostport.contains(':') {
                hostport.to_string()
            } else {
                format!("{hostport}:6379")
            };
            if scheme == "rediss" || scheme == "valkeys" {
                // TLS: the supervisor speaks no TLS; an open port is what it can
                // check (workers do the handshake and verify the certificate).
                return match tokio::time::timeout(
                    timeout,
                    tokio::net::TcpStream::connect(&hostport),
                )
                .await
                {
                    Ok(Ok(_)) => Ok(RedisKind::Unknown),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!("no answer within {timeout:?}")),
                };
            }
            tokio::time::timeout(timeout, ping_tcp(&hostport)).await
        }
    };
    match answer {
        Err(_) => Err(format!("no answer within {timeout:?}")),
        Ok(Err(e)) => Err(e),
        Ok(Ok(reply))
            if reply.starts_with('+')
                || reply.contains("NOAUTH")
                || reply.contains("WRONGPASS") =>
        {
            Ok(kind_of(&reply))
        }
        Ok(Ok(reply)) => Err(format!("unexpected answer to PING: {reply:?}")),
    }
}

async fn ping_tcp(hostport: &str) -> Result<String, String> {
    let s = tokio::net::TcpStream::connect(hostport)
        .await
        .map_err(|e| e.to_string())?;
    ping(s).await
}

async fn ping_unix(path: &Path) -> Result<String, String> {
    let s = tokio::net::UnixStream::connect(path)
        .await
        .map_err(|e| e.to_string())?;
    ping(s).await
}

/// Sends inline `PING` and `INFO cluster`; returns both answers once complete
/// (or what came before the server closed the connection).
async fn ping<S: AsyncReadExt + AsyncWriteExt + Unpin>(mut s: S) -> Result<String, String> {
    s.write_all(b"PING\r\nINFO cluster\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !answers_complete(&buf) && buf.len() < 64 * 1024 {
        let n = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// Whether `buf` holds the reply to PING (one line) and the whole reply to INFO
/// (an error line, or a bulk string of the length its header says).
fn answers_complete(buf: &[u8]) -> bool {
    let line_end = |from: usize| {
        buf.get(from..)?
            .windows(2)
            .position(|w| w == b"\r\n")
            .map(|i| from + i + 2)
    };
    let Some(second) = line_end(0) else {
        return false;
    };
    let Some(header_end) = line_end(second) else {
        return false;
    };
    if buf[second] != b'$' {
        return true;
    }
    let len: usize = std::str::from_utf8(&buf[second + 1..header_end - 2])
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    buf.len() >= header_end + len + 2
}

fn kind_of(answers: &str) -> RedisKind {
    if answers.contains("cluster_enabled:1") {
        RedisKind::Cluster
    } else if answers.contains("cluster_enabled:0") {
        RedisKind::Standalone
    } else {
        RedisKind::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn ping_and_info_answers_are_read_whole() {
        use super::{answers_complete, kind_of, RedisKind};
        let info = "# Cluster\r\ncluster_enabled:1\r\n";
        let full = format!("+PONG\r\n${}\r\n{info}\r\n", info.len());
        assert!(answers_complete(full.as_bytes()));
        assert!(!answers_complete(&full.as_bytes()[..full.len() - 5]));
        assert!(!answers_complete(b"+PONG\r\n"));
        assert!(answers_complete(b"-NOAUTH x\r\n-NOAUTH x\r\n"));
        assert!(answers_complete(b"+PONG\r\n$0\r\n\r\n"));
        assert_eq!(kind_of(&full), RedisKind::Cluster);
        assert_eq!(
            kind_of("+PONG\r\n$20\r\ncluster_enabled:0"),
            RedisKind::Standalone
        );
        assert_eq!(kind_of("-NOAUTH\r\n-NOAUTH\r\n"), RedisKind::Unknown);
    }

    #[test]
    fn passwords_never_reach_logs() {
        assert_eq!(
            redact("redis://app:s3cret@db:6379/0"),
            "redis://app:***@db:6379/0"
        );
        assert_eq!(redact("redis://db:6379"), "redis://db:6379");
    }

    #[test]
    fn tokens_are_48_hex_digits_and_differ() {
        let a = super::token().unwrap();
        let b = super::token().unwrap();
        assert_eq!(a.len(), 48, "{a}");
        assert!(
            a.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')),
            "{a}"
        );
        assert_ne!(a, b);
    }
}
