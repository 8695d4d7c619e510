//! The control socket: `<state_dir>/control.sock`, mode 0600, JSON lines.
//!
//! The CLI speaks only this. A client writes one [`Request`] line and reads one
//! [`Response`] line — except `events --follow`, which then keeps reading one event
//! line per lifecycle event until it hangs up.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

use crate::events::EventLog;
use crate::pool::{AppStatus, PoolHandle, Reply};
use crate::reason::RecycleReason;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    Ping,
    Status {
        #[serde(default)]
        app: Option<String>,
    },
    Recycle {
        app: String,
        #[serde(default = "yes")]
        wait: bool,
    },
    Start {
        app: String,
    },
    Stop {
        app: String,
    },
    /// Recorded samples of an app's workers, with the restart log's marks:
    /// `{"cmd":"history","app":"site","since_s":3600,"max_points":240}`.
    History {
        app: String,
        /// How far back, seconds (default one hour).
        #[serde(default)]
        since_s: Option<u64>,
        /// At most this many points per worker generation (default 240).
        #[serde(default)]
        max_points: Option<u32>,
    },
    /// Stream events as they happen.
    Follow,
    /// Re-read the config file now (as SIGHUP does).
    Reload,
    /// Stop every app and exit.
    Shutdown,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<SupervisorStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<crate::history::wire::HistoryReply>,
}

impl Response {
    fn from_reply(r: Reply) -> Response {
        match r {
            Ok(m) => Response {
                ok: true,
                message: Some(m),
                ..Default::default()
            },
            Err(e) => Response::error(e),
        }
    }

    pub fn error(e: impl Into<String>) -> Response {
        Response {
            ok: false,
            error: Some(e.into()),
            ..Default::default()
        }
    }
}

/// `appvisor status` as data.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SupervisorStatus {
    pub pid: u32,
    pub config: String,
    pub config_generation: u64,
    pub uptime_ms: u64,
    pub rss: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    pub apps: Vec<AppStatus>,
}

/// What the control server needs from the daemon.
#[derive(Debug, Clone)]
pub struct ControlState {
    pub pools: Arc<Mutex<BTreeMap<String, PoolHandle>>>,
    pub events: EventLog,
    pub config_path: PathBuf,
    pub config_generation: Arc<Mutex<u64>>,
    pub started: tokio::time::Instant,
    pub store: Arc<Mutex<crate::backend::Backend>>,
    /// Asks the daemon to reload (`true`) or shut down (`false`).
    pub daemon: mpsc::UnboundedSender<DaemonRequest>,
}

#[derive(Debug)]
pub enum DaemonRequest {
    Reload(tokio::sync::oneshot::Sender<Reply>),
    Shutdown,
}

/// Binds the control socket with mode 0600.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Longest request line: a request is a small JSON object; anything longer is a
/// confused or hostile client, answered with an error and hung up on, so one
/// connection cannot make the supervisor buffer without bound.
pub const MAX_LINE: usize = 64 * 1024;

/// The key of the line a `follow` stream sends in place of events it had to skip:
/// `{"skipped":N}` (the follower fell more than the event channel's 1,024 lines
/// behind; the events are in `events.jsonl`).
pub const SKIPPED: &str = "skipped";

/// Connections served at once. `events --follow` holds one for as long as it runs;
/// past the cap a new connection gets an error line and is closed, so a flood of
/// clients cannot use up the supervisor's fds.
pub const MAX_CONNECTIONS: usize = 128;

/// How long a connection may take to send a whole request line (from the connect,
/// or from the previous reply). A client that connects and sends nothing, or
/// trickles a line byte by byte, would otherwise hold one of the
/// [`MAX_CONNECTIONS`] slots for ever; past this it gets an error line and is
/// hung up on. `events --follow` is not bound by it once its request is read: it
/// then only listens.
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pub async fn serve(listener: UnixListener, state: ControlState) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // EMFILE and the like: do not spin on an error that persists.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        if let Err(refusal) = peer_allowed(&stream) {
            tracing::warn!("control socket: {refusal}");
            tokio::spawn(refuse(stream, refusal));
            continue;
        }
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tokio::spawn(refuse(
                stream,
                format!(
                    "too many control connections ({MAX_CONNECTIONS} at once); try again when some have closed"
                ),
            ));
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let _ = handle(stream, state).await;
            drop(slot);
        });
    }
}

/// Answers `why` as an error and hangs up.
async fn refuse(stream: UnixStream, why: String) {
    let (mut r, mut w) = stream.into_split();
    if write_line(&mut w, &Response::error(why)).await.is_ok() {
        let _ = w.shutdown().await;
        drain(&mut r).await;
    }
}

/// Closing a unix socket with unread input resets it, and the client would read
/// ECONNRESET instead of the reply (or, refused before it wrote, fail to write its
/// request): discard what it still sends until it hangs up, for a second at most.
async fn drain<R: tokio::io::AsyncRead + Unpin>(r: &mut R) {
    use tokio::io::AsyncReadExt;
    let mut sink = [0u8; 16 * 1024];
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
        while matches!(r.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// Only the supervisor's own user, or root, may command it (`SO_PEERCRED`): the
/// socket's mode already says so, this holds even if someone loosens it.
fn peer_allowed(stream: &UnixStream) -> Result<(), String> {
    let cred = stream
        .peer_cred()
        .map_err(|e| format!("cannot read the credentials of a client: {e}; refused"))?;
    let me = nix::unistd::geteuid().as_raw();
    if cred.uid() == me || cred.uid() == 0 {
        return Ok(());
    }
    Err(format!(
        "a client of uid {} (pid {}) was refused: only uid {me} (the supervisor's user) or root may use the control socket",
        cred.uid(),
        cred.pid().map(|p| p.to_string()).unwrap_or_else(|| "?".into())
    ))
}

/// One request line, at most [`MAX_LINE`] bytes (newline excluded; a `\r` before
/// it is dropped too). `Ok(None)` at the end of the stream; `Err(())` for a line
/// that is too long.
pub(crate) async fn read_request<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
) -> io::Result<Result<Option<String>, ()>> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let n = r
        .take(MAX_LINE as u64 + 2)
        .read_until(b'\n', &mut buf)
        .await?;
    if n == 0 {
        return Ok(Ok(None));
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
    }
    if buf.len() > MAX_LINE {
        return Ok(Err(()));
    }
    Ok(Ok(Some(String::from_utf8_lossy(&buf).into_owned())))
}

async fn handle(stream: UnixStream, state: ControlState) -> io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut reader = BufReader::new(r);
    loop {
        let Ok(read) = tokio::time::timeout(REQUEST_TIMEOUT, read_request(&mut reader)).await
        else {
            let refusal = Response::error(format!(
                "no request line within {} s; closing the connection",
                REQUEST_TIMEOUT.as_secs()
            ));
            write_line(&mut w, &refusal).await?;
            w.shutdown().await?;
            drain(&mut reader).await;
            return Ok(());
        };
        let line = match read? {
            Ok(Some(line)) => line,
            Ok(None) => return Ok(()),
            Err(()) => {
                let refusal = Response::error(format!(
                    "request line longer than {MAX_LINE} bytes; closing the connection"
                ));
                write_line(&mut w, &refusal).await?;
                w.shutdown().await?;
                drain(&mut reader).await;
                return Ok(());
            }
        };
        let response = match serde_json::from_str::<Request>(&line) {
            Err(e) => Response::error(format!("bad request: {e}")),
            Ok(Request::Follow) => {
                let mut rx = state.events.subscribe();
                write_line(
                    &mut w,
                    &Response {
                        ok: true,
                        ..Default::default()
                    },
                )
                .await?;
                loop {
                    match rx.recv().await {
                        Ok(line) => {
                            w.write_all(line.as_bytes()).await?;
                            w.write_all(b"\n").await?;
                        }
                        // A follower that reads slower than events come (a
                        // paused terminal) misses the oldest ones: it is told
                        // how many, in a line of its own, instead of a silent gap.
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                            w.write_all(format!("{{\"{SKIPPED}\":{n}}}\n").as_bytes())
                                .await?;
                        }
                        Err(_) => return Ok(()),
                    }
                }
            }
            Ok(req) => dispatch(req, &state).await,
        };
        write_line(&mut w, &response).await?;
    }
}

async fn write_line<W: AsyncWriteExt + Unpin>(w: &mut W, r: &Response) -> io::Result<()> {
    let mut s = serde_json::to_string(r).expect("responses serialize");
    s.push('\n');
    w.write_all(s.as_bytes()).await
}

fn pool(state: &ControlState, app: &str) -> Result<PoolHandle, Box<Response>> {
    let pools = state.pools.lock().unwrap();
    pools.get(app).cloned().ok_or_else(|| {
        let names: Vec<&String> = pools.keys().collect();
        Box::new(Response::error(format!(
            "no app named {app:?} in {}; configured apps: {names:?}",
            state.config_path.display()
        )))
    })
}

async fn dispatch(req: Request, state: &ControlState) -> Response {
    match req {
        Request::Ping => Response {
            ok: true,
            message: Some(format!(
                "appvisor {} pid {}",
                env!("CARGO_PKG_VERSION"),
                std::process::id()
            )),
            ..Default::default()
        },
        Request::Status { app } => {
            let handles: Vec<PoolHandle> = {
                let pools = state.pools.lock().unwrap();
                match &app {
                    Some(a) => match pools.get(a) {
                        Some(h) => vec![h.clone()],
                        None => {
                            drop(pools);
                            return pool(state, a).err().map(|b| *b).unwrap_or_default();
                        }
                    },
                    None => pools.values().cloned().collect(),
                }
            };
            let mut apps = Vec::new();
            for h in handles {
                if let Some(s) = h.status().await {
                    apps.push(s);
                }
            }
            Response {
                ok: true,
                status: Some(SupervisorStatus {
                    pid: std::process::id(),
                    config: state.config_path.display().to_string(),
                    config_generation: *state.config_generation.lock().unwrap(),
                    uptime_ms: state.started.elapsed().as_millis() as u64,
                    rss: crate::procfs::rss_bytes(crate::procfs::Pid::this()),
                    store: Some(state.store.lock().unwrap().describe()),
                    apps,
                }),
                ..Default::default()
            }
        }
        Request::Recycle { app, wait } => match pool(state, &app) {
            Err(r) => *r,
            Ok(h) if wait => Response::from_reply(h.recycle(RecycleReason::Manual).await),
            Ok(h) => {
                h.request_recycle(RecycleReason::Manual);
                Response::from_reply(Ok(format!("{app}: recycle queued")))
            }
        },
        Request::Start { app } => match pool(state, &app) {
            Err(r) => *r,
            Ok(h) => Response::from_reply(h.start().await),
        },
        Request::Stop { app } => match pool(state, &app) {
            Err(r) => *r,
            Ok(h) => Response::from_reply(h.stop().await),
        },
        Request::Reload => {
            let (tx, rx) = tokio::sync::oneshot::channel();
            if state.daemon.send(DaemonRequest::Reload(tx)).is_err() {
                return Response::error("the supervisor is shutting down");
            }
            Response::from_reply(
                rx.await
                    .unwrap_or_else(|_| Err("the supervisor is shutting down".into())),
            )
        }
        Request::History {
            app,
            since_s,
            max_points,
        } => match pool(state, &app) {
            Err(r) => *r,
            Ok(h) => history(state, h, app, since_s, max_points).await,
        },
        Request::Shutdown => {
            let _ = state.daemon.send(DaemonRequest::Shutdown);
            Response::from_reply(Ok("shutting down".into()))
        }
        Request::Follow => unreachable!("handled by the caller"),
    }
}

/// Longest window a `history` request may ask for (the longest retention is
/// whatever the config says; a year is past any of them).
const MAX_HISTORY_S: u64 = 366 * 86_400;
/// Most points per worker generation in one `history` reply.
const MAX_HISTORY_POINTS: u32 = 10_000;

/// Reads the app's history off the runtime thread (the files may be megabytes).
async fn history(
    state: &ControlState,
    pool: PoolHandle,
    app: String,
    since_s: Option<u64>,
    max_points: Option<u32>,
) -> Response {
    let Some(info) = pool.history_info().await else {
        return Response::error(format!("{app}: the app is being removed"));
    };
    let Some(dir) = info.dir else {
        return Response::error(format!(
            "{app}: no history is recorded (its directory could not be made; the supervisor's log says why)"
        ));
    };
    let since_s = since_s.unwrap_or(3600).clamp(1, MAX_HISTORY_S);
    let max_points = max_points.unwrap_or(240).clamp(1, MAX_HISTORY_POINTS);
    let ask = crate::history::query::Ask {
        app: app.clone(),
        dir,
        events: state.events.path().to_path_buf(),
        limits: info.limits,
        sample_interval_s: info.sample_interval.as_secs_f64(),
        since_s,
        max_points,
    };
    let read = tokio::task::spawn_blocking(move || {
        crate::history::query::answer(ask, crate::history::now_ms())
    })
    .await;
    match read {
        Ok(Ok(reply)) => Response {
            ok: true,
            history: Some(reply),
            ..Default::default()
        },
        Ok(Err(e)) => Response::error(format!("{app}: cannot read its history: {e}")),
        Err(e) => Response::error(format!("{app}: reading its history failed: {e}")),
    }
}

/// The client side, for the CLI.
pub mod client {
    use super::*;
    use std::io::{BufRead, Write};

    #[derive(Debug, thiserror::Error)]
    pub enum ClientError {
        #[error("no supervisor is running for {config} (nothing answers at {socket}); start one with `appvisor run {config}`")]
        NotRunning { config: String, socket: String },
        #[error("the supervisor at {socket} answered something unreadable: {detail}")]
        Protocol { socket: String, detail: String },
        #[error("talking to the supervisor at {socket}: {source}")]
        Io {
            socket: String,
            #[source]
            source: io::Error,
        },
    }

    pub struct Client {
        stream: std::os::unix::net::UnixStream,
        reader: std::io::BufReader<std::os::unix::net::UnixStream>,
        socket: String,
    }

    impl Client {
        pub fn connect(socket: &Path, config: &Path) -> Result<Client, ClientError> {
            let stream = std::os::unix::net::UnixStream::connect(socket).map_err(|_| {
                ClientError::NotRunning {
                    config: config.display().to_string(),
                    socket: socket.display().to_string(),
                }
            })?;
            let reader =
                std::io::BufReader::new(stream.try_clone().map_err(|source| ClientError::Io {
                    socket: socket.display().to_string(),
                    source,
                })?);
            Ok(Client {
                stream,
                reader,
                socket: socket.display().to_string(),
            })
        }

        pub fn call(&mut self, req: &Request) -> Result<Response, ClientError> {
            let mut line = serde_json::to_string(req).expect("requests serialize");
            line.push('\n');
            if let Err(source) = self.stream.write_all(line.as_bytes()) {
                // The server may have refused the connection (and said why) before
                // the request was written: its reply is the better error.
                return match self.read_line() {
                    Ok(reply) => serde_json::from_str(&reply).map_err(|_| self.io(source)),
                    Err(_) => Err(self.io(source)),
                };
            }
            let reply = self.read_line()?;
            serde_json::from_str(&reply).map_err(|e| ClientError::Protocol {
                socket: self.socket.clone(),
                detail: format!("{e}: {reply}"),
            })
        }

        /// Sends any request line (one this build's [`Request`] may not know, such
        /// as `history` to an older or newer supervisor) and reads the reply as `R`.
        pub fn call_as<Q: Serialize, R: serde::de::DeserializeOwned>(
            &mut self,
            req: &Q,
        ) -> Result<R, ClientError> {
            let mut line = serde_json::to_string(req).map_err(|e| ClientError::Protocol {
                socket: self.socket.clone(),
                detail: e.to_string(),
            })?;
            line.push('\n');
            self.stream
                .write_all(line.as_bytes())
                .map_err(|source| self.io(source))?;
            let reply = self.read_line()?;
            serde_json::from_str(&reply).map_err(|e| ClientError::Protocol {
                socket: self.socket.clone(),
                detail: format!("{e}: {reply}"),
            })
        }

        /// The next raw line (for `events --follow`).
        pub fn read_line(&mut self) -> Result<String, ClientError> {
            let mut reply = String::new();
            let n = self
                .reader
                .read_line(&mut reply)
                .map_err(|source| ClientError::Io {
                    socket: self.socket.clone(),
                    source,
                })?;
            if n == 0 {
                return Err(ClientError::Protocol {
                    socket: self.socket.clone(),
                    detail: "connection closed".into(),
                });
            }
            Ok(reply.trim_end().to_string())
        }

        fn io(&self, source: io::Error) -> ClientError {
            ClientError::Io {
                socket: self.socket.clone(),
                source,
            }
        }
    }
}
