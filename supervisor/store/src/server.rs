//! Listening sockets, the accept loops, and a store's start and stop. The state
//! its tasks share is in [`state`](super::state).

use std::collections::HashMap;
use std::future::Future;
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use appvisor_config::Persist;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{watch, Notify};
use tokio::task::AbortHandle;

use super::aof::{self, LoadReport, LogStatus, LogWriter};
use super::client::Client;
use super::error::StoreError;
use super::keyspace::Keyspace;
use super::options::{AppCredential, StoreOptions};
use super::resp::{FrameLimits, MAX_ARGS, MAX_BULK_HARD};
use super::seat::{SeatKind, Seats};
use super::state::{now_ms, ServerState, Shared};
use super::transport::Socket;
use super::{connection, expiry};

/// A per-app socket: connections on it are logged in as that app.
struct AppSocket {
    path: PathBuf,
    accept: AbortHandle,
}

/// A running store: the [`Shared`] state its tasks use, plus what only the accept
/// loops and start/stop need (sockets, credentials, open connections, signals).
pub(crate) struct Server {
    pub shared: Arc<Shared>,
    unix_path: PathBuf,
    app_socket_dir: Option<PathBuf>,
    app_sockets: Mutex<HashMap<String, AppSocket>>,
    credentials: Mutex<Vec<AppCredential>>,
    connections: Mutex<HashMap<u64, AbortHandle>>,
    /// Signalled when the last connection ends (shutdown waits for it).
    idle: Notify,
    stop: watch::Sender<bool>,
    closed: watch::Sender<bool>,
    pub load_report: LoadReport,
    runtime: tokio::runtime::Handle,
    /// The accept loop of `unix_path`, replaced when the socket is bound again
    /// ([`Server::restore_files`]).
    main_accept: Mutex<Option<AbortHandle>>,
    /// The log's path, when one is kept.
    aof_path: Option<PathBuf>,
}

/// Slack over max_value_size that a bulk string may claim and still be read (and
/// answered with an error) rather than cutting the connection: room for a key and
/// for a value a little too large.
const BULK_SLACK: u64 = 64 * 1024;
/// One request may not claim more than this in total.
const MAX_FRAME: usize = 256 * 1024 * 1024;

impl Server {
    fn spawn_connection<S: Socket>(
        self: &Arc<Self>,
        stream: S,
        db: Option<usize>,
        peer: Option<std::net::SocketAddr>,
    ) where
        for<'a> &'a S: Read + Write,
    {
        let shared = self.shared.clone();
        let state = &shared.state;
        // See `seat`: only TCP connections start anonymous.
        let kind = if db.is_none() && peer.is_some() {
            SeatKind::Anonymous
        } else {
            SeatKind::Client
        };
        let seat = match state.seats.take(kind) {
            Ok(seat) => seat,
            Err(refusal) => {
                tracing::debug!(
                    "refused a client ({}): {}",
                    peer.map(|p| format!("tcp {p}"))
                        .unwrap_or_else(|| "unix socket".to_owned()),
                    refusal.reply()
                );
                // A fresh connection's socket buffer always has room for this line.
                let _ = (&stream).write_all(format!("-{}\r\n", refusal.reply()).as_bytes());
                return;
            }
        };
        let id = state.next_client_id.fetch_add(1, Ordering::Relaxed);
        state.clients.fetch_add(1, Ordering::Relaxed);
        let guard = ConnectionGuard {
            server: self.clone(),
            id,
        };
        // The map is locked across the spawn so the guard (which removes the entry
        // when the task ends) cannot run before the entry exists.
        let mut conns = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        let task = tokio::spawn(async move {
            let _guard = guard;
            let mut client = Client::new(id, db, seat);
            if let Some(peer) = peer {
                client.peer = format!("tcp {peer}");
            }
            connection::serve(shared, stream, client).await;
        });
        conns.insert(id, task.abort_handle());
    }

    fn app_socket_path(&self, app: &str) -> Option<PathBuf> {
        self.app_socket_dir
            .as_ref()
            .map(|dir| dir.join(format!("{app}.sock")))
    }

    /// Opens sockets for apps that gained one, closes those of removed apps.
    fn sync_app_sockets(self: &Arc<Self>, apps: &[AppCredential]) -> Result<(), StoreError> {
        let Some(_) = &self.app_socket_dir else {
            return Ok(());
        };
        let mut sockets = self.app_sockets.lock().unwrap_or_else(|e| e.into_inner());
        sockets.retain(|app, socket| {
            let keep = apps.iter().any(|a| &a.app == app);
            if !keep {
                tracing::debug!("app {app} was removed: closing {}", socket.path.display());
                socket.accept.abort();
                let _ = std::fs::remove_file(&socket.path);
            }
            keep
        });
        for cred in apps {
            if sockets.contains_key(&cred.app) {
                continue;
            }
            check_app_name(&cred.app)?;
            let path = self.app_socket_path(&cred.app).expect("checked above");
            let listener = {
                let _rt = self.runtime.enter();
                bind_unix(&path)?
            };
            let db = self.shared.lock().db_id(&cred.app);
            let accept = self
                .runtime
                .spawn(accept_unix(self.clone(), listener, Some(db)))
                .abort_handle();
            tracing::debug!(
                "app {} logs in without AUTH on {}",
                cred.app,
                path.display()
            );
            sockets.insert(cred.app.clone(), AppSocket { path, accept });
        }
        Ok(())
    }

    pub fn set_apps(self: &Arc<Self>, apps: &[AppCredential]) -> Result<(), StoreError> {
        self.shared
            .lock()
            .set_apps(apps.iter().map(|a| (a.app.as_str(), a.password.as_str())));
        *self.credentials.lock().unwrap_or_else(|e| e.into_inner()) = apps.to_vec();
        self.sync_app_sockets(apps)
    }

    pub fn password(&self, app: &str) -> Option<String> {
        let creds = self.credentials.lock().unwrap_or_else(|e| e.into_inner());
        creds
            .iter()
            .find(|c| c.app == app)
            .map(|c| c.password.clone())
    }

    pub fn unix_path(&self) -> &Path {
        &self.unix_path
    }

    pub fn app_socket(&self, app: &str) -> Option<PathBuf> {
        let sockets = self.app_sockets.lock().unwrap_or_else(|e| e.into_inner());
        sockets.get(app).map(|s| s.path.clone())
    }

    pub async fn closed(&self) {
        let mut rx = self.closed.subscribe();
        let _ = rx.wait_for(|&closed| closed).await;
    }
}

/// Counts an open connection (shutdown waits for them) and forgets it when it
/// ends. Its seat (max_clients or max_anonymous) is the client's.
struct ConnectionGuard {
    server: Arc<Server>,
    id: u64,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.server
            .connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
        if self
            .server
            .shared
            .state
            .clients
            .fetch_sub(1, Ordering::Relaxed)
            == 1
        {
            self.server.idle.notify_waiters();
        }
    }
}

/// App names become socket file names: keep them to a safe alphabet.
fn check_app_name(app: &str) -> Result<(), StoreError> {
    let ok = !app.is_empty()
        && !app.starts_with('.')
        && app
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::AppName {
            app: app.to_owned(),
        })
    }
}

/// Binds a unix socket readable and writable by this user only. It is bound
/// under a temporary name, given mode 0600, then renamed into place, so the final
/// path never exists with looser permissions. A stale socket left by a previous
/// run is replaced; any other kind of file at the path is an error.
fn bind_unix(path: &Path) -> Result<UnixListener, StoreError> {
    let err = |source| StoreError::Bind {
        path: path.to_owned(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(StoreError::NotASocket {
                path: path.to_owned(),
            });
        }
        _ => {}
    }
    let mut tmp_name = path.file_name().unwrap_or_default().to_owned();
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let _ = std::fs::remove_file(&tmp);
    let std_listener = std::os::unix::net::UnixListener::bind(&tmp).map_err(err)?;
    let finish = || -> std::io::Result<()> {
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&tmp, path)?;
        std_listener.set_nonblocking(true)
    };
    if let Err(e) = finish() {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e));
    }
    UnixListener::from_std(std_listener).map_err(err)
}

/// Accept errors (EMFILE, ENFILE…) are waited out rather than spun on.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

async fn accept_unix(inner: Arc<Server>, listener: UnixListener, db: Option<usize>) {
    let mut stop = inner.stop.subscribe();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => match stream.into_std() {
                    Ok(stream) => inner.spawn_connection(stream, db, None),
                    Err(e) => tracing::warn!("cannot take over an accepted socket: {e}"),
                },
                Err(e) => {
                    tracing::warn!("accept on a unix socket failed: {e}; trying again in 100 ms");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            _ = stop.changed() => return,
        }
    }
}

async fn accept_tcp(inner: Arc<Server>, listener: TcpListener) {
    let mut stop = inner.stop.subscribe();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    match stream.into_std() {
                        Ok(stream) => inner.spawn_connection(stream, None, Some(peer)),
                        Err(e) => tracing::warn!("cannot take over an accepted socket: {e}"),
                    }
                }
                Err(e) => {
                    tracing::warn!("accept on TCP failed: {e}; trying again in 100 ms");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            _ = stop.changed() => return,
        }
    }
}

/// Loads the log, binds the sockets and starts serving. See [`super::serve`].
pub(crate) async fn start(
    opts: StoreOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Arc<Server>, StoreError> {
    let logging = opts.aof_path.is_some() && opts.persist != Persist::No;
    let aof_path = opts.aof_path.clone().filter(|_| logging);

    // Replay off the event loop: a large log takes a while to read.
    let (keyspace, load_report) = {
        let path = aof_path.clone();
        tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
            let mut ks = Keyspace::new(logging);
            let report = match &path {
                Some(path) => aof::replay(path, &mut ks, now_ms())?,
                None => LoadReport::default(),
            };
            Ok((ks, report))
        })
        .await
        .map_err(|e| StoreError::Internal {
            what: format!("log replay task: {e}"),
        })??
    };

    let log_status = Arc::new(LogStatus::default());
    let writer = match &aof_path {
        Some(path) => Some(LogWriter::start(path, opts.persist, log_status.clone())?),
        None => None,
    };

    let unix = bind_unix(&opts.unix_path)?;
    let tcp = match opts.tcp {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| StoreError::BindTcp { addr, source })?,
        ),
        None => None,
    };
    let tcp_addr = tcp.as_ref().and_then(|l| l.local_addr().ok());
    if let Some(dir) = &opts.app_socket_dir {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Bind {
            path: dir.clone(),
            source,
        })?;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }

    let max_bulk = opts
        .max_value_size
        .saturating_add(BULK_SLACK)
        .min(MAX_BULK_HARD as u64) as usize;
    let (stop, _) = watch::channel(false);
    let (closed, _) = watch::channel(false);
    let shared = Arc::new(Shared {
        keyspace: Mutex::new(keyspace),
        state: ServerState {
            max_memory: opts.max_memory,
            max_value_size: opts.max_value_size,
            seats: Seats::new(opts.max_clients, opts.max_anonymous),
            auth_timeout: opts.auth_timeout,
            persist: opts.persist,
            logging,
            log: log_status,
            clients: AtomicU32::new(0),
            next_client_id: AtomicU64::new(1),
            started: Instant::now(),
            tcp: tcp_addr,
            // Any single value can always be read, whatever max_value_size is.
            max_output: opts
                .max_output
                .max(2 * opts.max_value_size)
                .try_into()
                .unwrap_or(usize::MAX),
            output: AtomicU64::new(0),
            input: AtomicU64::new(0),
        },
        limits: FrameLimits {
            max_bulk,
            max_args: MAX_ARGS,
            max_frame: MAX_FRAME.max(2 * max_bulk),
        },
        writer,
        rewrite_min_size: opts.rewrite_min_size,
    });
    let inner = Arc::new(Server {
        shared: shared.clone(),
        unix_path: opts.unix_path.clone(),
        app_socket_dir: opts.app_socket_dir.clone(),
        app_sockets: Mutex::new(HashMap::new()),
        credentials: Mutex::new(Vec::new()),
        connections: Mutex::new(HashMap::new()),
        idle: Notify::new(),
        stop,
        closed,
        load_report,
        runtime: tokio::runtime::Handle::current(),
        main_accept: Mutex::new(None),
        aof_path: aof_path.clone(),
    });
    inner.set_apps(&opts.apps)?;
    tracing::debug!(
        "listening on {}{}; log: {}",
        opts.unix_path.display(),
        tcp_addr
            .map(|a| format!(" and tcp {a}"))
            .unwrap_or_default(),
        match &aof_path {
            Some(path) => format!(
                "{}, {}",
                path.display(),
                match opts.persist {
                    Persist::Always => "synced after every write",
                    _ => "synced every second",
                }
            ),
            None => "none".to_owned(),
        }
    );

    let accept = tokio::spawn(accept_unix(inner.clone(), unix, None)).abort_handle();
    *inner.main_accept.lock().unwrap_or_else(|e| e.into_inner()) = Some(accept);
    if let Some(tcp) = tcp {
        tokio::spawn(accept_tcp(inner.clone(), tcp));
    }
    tokio::spawn(expiry::run(shared.clone(), inner.stop.subscribe()));
    if shared
        .writer
        .as_ref()
        .is_some_and(|w| w.mode == Persist::Always)
    {
        let stop = inner.stop.subscribe();
        tokio::spawn(async move {
            if let Some(writer) = &shared.writer {
                writer.run_kicker(stop).await;
            }
        });
    }
    let stopping = inner.clone();
    tokio::spawn(async move {
        shutdown.await;
        stopping.shut_down().await;
    });
    Ok(inner)
}

impl Server {
    /// Puts back the files of a store whose directory was deleted under it (the
    /// supervisor made the directory again): the main socket and the per-app
    /// sockets are bound again where their files are missing (open connections
    /// are untouched), and a missing log is written again from memory — a log
    /// rewrite, which holds every key, so the next start loads them all.
    /// Returns what was restored, in words.
    pub fn restore_files(self: &Arc<Self>) -> Result<Vec<&'static str>, StoreError> {
        let mut restored = Vec::new();
        if !self.unix_path.exists() {
            let listener = {
                let _rt = self.runtime.enter();
                bind_unix(&self.unix_path)?
            };
            let accept = self
                .runtime
                .spawn(accept_unix(self.clone(), listener, None))
                .abort_handle();
            let old = self
                .main_accept
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .replace(accept);
            if let Some(old) = old {
                old.abort();
            }
            restored.push("its socket");
        }
        if let Some(dir) = &self.app_socket_dir {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Bind {
                path: dir.clone(),
                source,
            })?;
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
            let gone = {
                let mut sockets = self.app_sockets.lock().unwrap_or_else(|e| e.into_inner());
                let before = sockets.len();
                sockets.retain(|_, socket| {
                    let there = socket.path.exists();
                    if !there {
                        socket.accept.abort();
                    }
                    there
                });
                before - sockets.len()
            };
            if gone > 0 {
                let apps = self
                    .credentials
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                self.sync_app_sockets(&apps)?;
                restored.push("the apps' sockets");
            }
        }
        if self.aof_path.as_ref().is_some_and(|p| !p.exists()) && self.shared.writer.is_some() {
            // The writer appends to the unlinked file meanwhile; the rewrite
            // renames a complete log into place and appends there from then on.
            self.shared
                .state
                .log
                .rewrite_requested
                .store(true, Ordering::Relaxed);
            self.shared.lock().alarm.notify.notify_one();
            restored.push("its log (rewritten from memory)");
        }
        Ok(restored)
    }
}

/// How long shutdown waits for aborted connections to unwind.
const DRAIN_WAIT: Duration = Duration::from_secs(2);

impl Server {
    /// Stops accepting, drops every connection, flushes and syncs the log, removes
    /// the socket files.
    async fn shut_down(self: &Arc<Self>) {
        tracing::debug!(
            "shutting down: {} connections open",
            self.shared.state.clients.load(Ordering::Relaxed)
        );
        self.stop.send_replace(true);
        let sockets: Vec<AppSocket> = {
            let mut map = self.app_sockets.lock().unwrap_or_else(|e| e.into_inner());
            map.drain().map(|(_, s)| s).collect()
        };
        for socket in sockets {
            socket.accept.abort();
            let _ = std::fs::remove_file(&socket.path);
        }
        let _ = std::fs::remove_file(&self.unix_path);
        let conns: Vec<AbortHandle> = {
            let mut map = self.connections.lock().unwrap_or_else(|e| e.into_inner());
            map.drain().map(|(_, h)| h).collect()
        };
        for conn in &conns {
            conn.abort();
        }
        let _ = tokio::time::timeout(DRAIN_WAIT, async {
            loop {
                let idle = self.idle.notified();
                tokio::pin!(idle);
                idle.as_mut().enable();
                if self.shared.state.clients.load(Ordering::Relaxed) == 0 {
                    break;
                }
                idle.await;
            }
        })
        .await;
        if let Some(writer) = &self.shared.writer {
            {
                let mut ks = self.shared.lock();
                if !ks.log.is_empty() {
                    writer.submit(&mut ks.log);
                }
            }
            writer.close().await;
        }
        tracing::debug!("shut down; the log is synced");
        self.closed.send_replace(true);
    }
}
