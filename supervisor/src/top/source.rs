//! Where `appvisor top` gets its data: the control socket (`status` every refresh,
//! `history` when the supervisor records it, `follow` for lifecycle events, and
//! the actions), and the tail of `events.jsonl` for what happened before it started.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use serde::{Deserialize, Serialize};

use crate::control::client::Client;
use crate::control::{Request, SupervisorStatus};
use crate::events::Event;
use crate::history::wire::HistoryReply;

use super::model::Action;

/// How much of `events.jsonl`'s end is read at start: the recent markers, not the
/// whole file.
const EVENTS_TAIL: u64 = 256 * 1024;

/// The control socket, one connection kept open between refreshes.
pub struct Source {
    socket: PathBuf,
    config: PathBuf,
    client: Option<Client>,
    /// Cleared when this supervisor does not know the `history` request (an older
    /// one): `top` then charts its own status polls. Set again on reconnect.
    history: bool,
}

/// What a `history` request got.
#[derive(Debug)]
pub enum HistoryAnswer {
    Reply(HistoryReply),
    /// The supervisor does not know the request.
    Unsupported,
    /// It knows it but answered an error (no samples yet, …), or the link broke.
    Failed(String),
}

/// The request line documented in `history::wire`.
#[derive(Serialize)]
struct HistoryRequest<'a> {
    cmd: &'static str,
    app: &'a str,
    since_s: u64,
    max_points: usize,
}

/// The reply's fields `top` reads (`Response` plus its `history`).
#[derive(Deserialize)]
struct HistoryResponse {
    ok: bool,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    history: Option<HistoryReply>,
}

impl Source {
    pub fn new(socket: PathBuf, config: PathBuf) -> Source {
        Source {
            socket,
            config,
            client: None,
            history: true,
        }
    }

    fn client(&mut self) -> Result<&mut Client, String> {
        if self.client.is_none() {
            let c = Client::connect(&self.socket, &self.config).map_err(|e| e.to_string())?;
            self.history = true;
            self.client = Some(c);
        }
        Ok(self.client.as_mut().expect("connected above"))
    }

    pub fn status(&mut self) -> Result<SupervisorStatus, String> {
        let reply = self.client()?.call(&Request::Status { app: None });
        match reply {
            Ok(r) if r.ok => r
                .status
                .ok_or_else(|| "the supervisor sent no status".to_string()),
            Ok(r) => Err(r.error.unwrap_or_else(|| "status failed".into())),
            Err(e) => {
                self.client = None;
                Err(e.to_string())
            }
        }
    }

    /// Whether asking for `history` is worth it on this connection.
    pub fn has_history(&self) -> bool {
        self.history
    }

    pub fn history(&mut self, app: &str, since_s: u64, max_points: usize) -> HistoryAnswer {
        let req = HistoryRequest {
            cmd: "history",
            app,
            since_s,
            max_points,
        };
        let client = match self.client() {
            Ok(c) => c,
            Err(e) => return HistoryAnswer::Failed(e),
        };
        match client.call_as::<_, HistoryResponse>(&req) {
            Ok(HistoryResponse {
                ok: true,
                history: Some(h),
                ..
            }) => HistoryAnswer::Reply(h),
            Ok(r) => {
                let error = r.error.unwrap_or_else(|| "no history in the reply".into());
                // serde's words for a `cmd` this supervisor's `Request` lacks.
                if error.contains("unknown variant") {
                    self.history = false;
                    HistoryAnswer::Unsupported
                } else {
                    HistoryAnswer::Failed(error)
                }
            }
            Err(e) => {
                self.client = None;
                HistoryAnswer::Failed(e.to_string())
            }
        }
    }

    /// Lifecycle events as they happen, read by a thread on a connection of its
    /// own; the channel closes when that connection does.
    pub fn follow(&self) -> mpsc::Receiver<Event> {
        let (tx, rx) = mpsc::channel();
        let (socket, config) = (self.socket.clone(), self.config.clone());
        std::thread::spawn(move || {
            let Ok(mut c) = Client::connect(&socket, &config) else {
                return;
            };
            if !matches!(c.call(&Request::Follow), Ok(r) if r.ok) {
                return;
            }
            while let Ok(line) = c.read_line() {
                if let Ok(e) = serde_json::from_str::<Event>(&line) {
                    if tx.send(e).is_err() {
                        return;
                    }
                }
            }
        });
        rx
    }

    /// Runs an action on a thread (a recycle waits for the new generation) and
    /// sends its outcome, in words, to `done`.
    pub fn act(&self, action: Action, app: String, done: mpsc::Sender<String>) {
        let (socket, config) = (self.socket.clone(), self.config.clone());
        std::thread::spawn(move || {
            let req = match action {
                Action::Recycle => Request::Recycle {
                    app: app.clone(),
                    wait: true,
                },
                Action::Start => Request::Start { app: app.clone() },
                Action::Stop => Request::Stop { app: app.clone() },
            };
            let outcome = Client::connect(&socket, &config).and_then(|mut c| c.call(&req));
            let text = match outcome {
                Ok(r) if r.ok => r
                    .message
                    .unwrap_or_else(|| format!("{app}: {} done", action.verb())),
                Ok(r) => format!(
                    "{app}: {} failed: {}",
                    action.verb(),
                    r.error.unwrap_or_default()
                ),
                Err(e) => format!("{app}: {} failed: {e}", action.verb()),
            };
            let _ = done.send(text);
        });
    }
}

/// The events at the end of `events.jsonl` (its last [`EVENTS_TAIL`] bytes), oldest
/// first; none when it cannot be read.
pub fn events_tail(path: &Path) -> Vec<Event> {
    let Ok(mut f) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(EVENTS_TAIL);
    if f.seek(SeekFrom::Start(start)).is_err() {
        return Vec::new();
    }
    let mut bytes = Vec::new();
    if f.read_to_end(&mut bytes).is_err() {
        return Vec::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    // A tail that starts mid-line drops that line.
    let skip = usize::from(start > 0);
    text.lines()
        .skip(skip)
        .filter_map(|l| serde_json::from_str::<Event>(l).ok())
        .collect()
}
