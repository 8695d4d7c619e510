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
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

use crate::store::{self, AppCredential, StoreHandle, StoreOptions};

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
        reachable: Result<(), String>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("cannot draw a random token for the store: {0}")]
    Random(std::io::Error),
}

fn token() -> Result<String, BackendError> {
    use std::io::Read;
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(BackendError::Random)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
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
                let report = handle.load_report();
                eprintln!("appvisor: session store: {report:?}");
                Ok(Backend::Embedded {
                    handle,
                    credentials,
                    stop: Some(tx),
                })
            }
            StoreBackend::Redis { url } => {
                let reachable = check_redis(url).await;
                match &reachable {
                    Ok(()) => eprintln!("appvisor: session store: {} answers PING", redact(url)),
                    Err(e) => eprintln!(
                        "appvisor: warning: session store {} is not reachable: {e}; workers will retry",
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

    /// The environment a worker of `app` gets for its sessions.
    pub fn env_for(&self, app: &str) -> Vec<(String, String)> {
        let url = match self {
            Backend::Embedded { handle, .. } => handle.url_for(app),
            Backend::Redis { url, .. } => Some(url.clone()),
        };
        url.map(|u| vec![("APPVISOR_STORE_URL".to_string(), u)])
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
                Ok(()) => format!("redis {} (reachable at start)", redact(url)),
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

/// Connects to the Redis named by `url` and sends PING. An auth error still proves
/// the server is there.
async fn check_redis(url: &str) -> Result<(), String> {
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
                    Ok(Ok(_)) => Ok(()),
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
            Ok(())
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

/// Sends an inline PING and returns the first bytes of the answer.
async fn ping<S: AsyncReadExt + AsyncWriteExt + Unpin>(mut s: S) -> Result<String, String> {
    s.write_all(b"PING\r\n").await.map_err(|e| e.to_string())?;
    let mut buf = [0u8; 128];
    let n = s.read(&mut buf).await.map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_never_reach_logs() {
        assert_eq!(
            redact("redis://app:s3cret@db:6379/0"),
            "redis://app:***@db:6379/0"
        );
        assert_eq!(redact("redis://db:6379"), "redis://db:6379");
    }
}
