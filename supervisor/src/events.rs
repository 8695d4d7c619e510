//! The restart log: `events.jsonl`, one JSON object per lifecycle event.
//!
//! Append-only, one line written (with a single `write`) as each event happens, so a
//! `tail -f` or `appvisor events --follow` sees it at once and a crash of the
//! supervisor never leaves half a line behind another. Followers on the control
//! socket get the same lines through a broadcast channel.
//!
//! The file rotates by size (`[supervisor] events_max_size`, `events_keep`;
//! `rotation.rs`): before a line would take it past the size, under the same lock
//! as the writes, so a rotation always falls between two whole lines. A write
//! that fails (a full disk) is cut back and counted; the first failure is a
//! warning and a `log_write_failed` event (to followers: the file cannot take it),
//! the recovery a `log_write_resumed` event with the count, written first in the
//! file once it takes lines again. If the file is deleted or moved away under the
//! supervisor, the next event opens it again.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::reason::RecycleReason;

/// One line of `events.jsonl`. Fields that do not apply are omitted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    /// RFC 3339, UTC, milliseconds.
    pub time: String,
    pub app: String,
    /// What happened; see [`EventKind`].
    pub kind: EventKind,
    /// Short cause: `manual`, `file_change`, `memory`, … (see `RecycleReason::name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The cause in words, with its figures: the changed path, the memory figure
    /// against its limit, the exit code, …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The structured cause, for machines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<RecycleReason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_pid: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_pid: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// Sessions handed to the store while draining.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions: Option<u64>,
    /// Last lines of the worker's stderr (startup failures, crashes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr_tail: Option<Vec<String>>,
}

/// What an event says happened. Serialized as the snake_case name (`startup_failed`),
/// the strings `events.jsonl` has always carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A worker process was spawned.
    Started,
    /// A worker that is not replacing another became ready.
    Ready,
    /// A candidate became ready and took its slot; the old worker is told to stop.
    Recycle,
    /// A recycle request arrived during a recycle: merged into one follow-up.
    RecycleQueued,
    /// A worker exited or missed `startup_timeout` before it was ready.
    StartupFailed,
    /// A serving worker exited unasked.
    Crashed,
    /// SIGKILL to a worker's process group (drain too long, memory hard limit).
    Killed,
    /// A retiring worker exited after its drain.
    Retired,
    /// Too many crashes in `rapid_fail_interval`: the app is stopped.
    RapidFailStopped,
    /// Every worker of a stopping app is gone.
    Stopped,
    /// The file watcher is set up.
    Watching,
    /// The file watcher could not be set up.
    WatchFailed,
    /// The file watcher reports a problem it worked around.
    WatchWarning,
    /// A `soft` path changed: the soft signal went to the workers.
    SoftChange,
    /// Files were touched but their content is the same.
    IgnoredChange,
    /// `idle_timeout` passed: workers stopped, sockets kept.
    IdleStop,
    /// A connection arrived while idle: the workers start again.
    OnDemandStart,
    /// `appvisor.toml` was reloaded.
    ConfigReloaded,
    /// A reload was refused; everything stays as it was.
    ConfigRejected,
    /// The state dir was deleted while running and made again.
    StateDirRecreated,
    /// A log file (`events.jsonl`, an app's worker log) cannot be written (a full
    /// disk): lines are dropped and counted until it can. Reported once.
    LogWriteFailed,
    /// The log file takes lines again; the detail says how many were dropped.
    LogWriteResumed,
    /// Without a cgroup: processes a worker started left its process group and
    /// outlive it (`detail` names their pids); nothing could kill them.
    Escaped,
}

impl EventKind {
    /// The name in `events.jsonl`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Started => "started",
            EventKind::Ready => "ready",
            EventKind::Recycle => "recycle",
            EventKind::RecycleQueued => "recycle_queued",
            EventKind::StartupFailed => "startup_failed",
            EventKind::Crashed => "crashed",
            EventKind::Killed => "killed",
            EventKind::Retired => "retired",
            EventKind::RapidFailStopped => "rapid_fail_stopped",
            EventKind::Stopped => "stopped",
            EventKind::Watching => "watching",
            EventKind::WatchFailed => "watch_failed",
            EventKind::WatchWarning => "watch_warning",
            EventKind::SoftChange => "soft_change",
            EventKind::IgnoredChange => "ignored_change",
            EventKind::IdleStop => "idle_stop",
            EventKind::OnDemandStart => "on_demand_start",
            EventKind::ConfigReloaded => "config_reloaded",
            EventKind::ConfigRejected => "config_rejected",
            EventKind::StateDirRecreated => "state_dir_recreated",
            EventKind::LogWriteFailed => "log_write_failed",
            EventKind::LogWriteResumed => "log_write_resumed",
            EventKind::Escaped => "escaped",
        }
    }

    /// Every kind, for `appvisor events --kind` to check a name against (and list
    /// the valid ones). A new kind goes here too: [`EventKind::as_str`] names it.
    pub const ALL: [EventKind; 23] = [
        EventKind::Started,
        EventKind::Ready,
        EventKind::Recycle,
        EventKind::RecycleQueued,
        EventKind::StartupFailed,
        EventKind::Crashed,
        EventKind::Killed,
        EventKind::Retired,
        EventKind::RapidFailStopped,
        EventKind::Stopped,
        EventKind::Watching,
        EventKind::WatchFailed,
        EventKind::WatchWarning,
        EventKind::SoftChange,
        EventKind::IgnoredChange,
        EventKind::IdleStop,
        EventKind::OnDemandStart,
        EventKind::ConfigReloaded,
        EventKind::ConfigRejected,
        EventKind::StateDirRecreated,
        EventKind::LogWriteFailed,
        EventKind::LogWriteResumed,
        EventKind::Escaped,
    ];

    /// The kind named `name` in `events.jsonl`.
    pub fn from_name(name: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

impl Event {
    pub fn new(app: &str, kind: EventKind) -> Event {
        Event {
            time: now_rfc3339(),
            app: app.to_string(),
            kind,
            reason: None,
            detail: None,
            cause: None,
            worker: None,
            generation: None,
            pid: None,
            old_pid: None,
            new_pid: None,
            startup_ms: None,
            drain_ms: None,
            uptime_ms: None,
            exit_code: None,
            signal: None,
            sessions: None,
            stderr_tail: None,
        }
    }

    pub fn because(mut self, reason: &RecycleReason) -> Event {
        self.reason = Some(reason.name().to_string());
        self.detail = Some(reason.describe());
        self.cause = Some(reason.clone());
        self
    }

    /// The worker the event is about: its slot, generation and pid.
    pub fn of_worker(mut self, slot: u32, generation: u64, pid: i32) -> Event {
        self.worker = Some(slot);
        self.generation = Some(generation);
        self.pid = Some(pid);
        self
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Event {
        self.detail = Some(detail.into());
        self
    }
}

pub fn now_rfc3339() -> String {
    let now = jiff::Timestamp::now();
    format!("{:.3}", now)
}

/// The event log of one supervisor. Cloneable; writes are serialized.
#[derive(Clone)]
pub struct EventLog {
    inner: Arc<Mutex<Inner>>,
    tx: broadcast::Sender<Arc<str>>,
    path: PathBuf,
}

/// How `events.jsonl` rotates: `[supervisor] events_max_size`, `events_keep`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    pub max_size: u64,
    pub keep: u32,
}

impl Default for Rotation {
    /// The config's defaults.
    fn default() -> Rotation {
        Rotation {
            max_size: 16 << 20,
            keep: 5,
        }
    }
}

struct Inner {
    file: File,
    rotation: Rotation,
    /// Events not written since the last successful write (disk full, …): the
    /// error is logged once when this leaves 0, and the recovery when it returns.
    lost: u64,
}

impl std::fmt::Debug for EventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EventLog({})", self.path.display())
    }
}

impl EventLog {
    /// Opens `path` with the default rotation.
    pub fn open(path: &Path) -> io::Result<EventLog> {
        EventLog::open_with(path, Rotation::default())
    }

    /// Opens `path`, rotated as `rotation` says.
    pub fn open_with(path: &Path, rotation: Rotation) -> io::Result<EventLog> {
        let file = crate::state_dir::open_append(path)?;
        let (tx, _) = broadcast::channel(1024);
        Ok(EventLog {
            inner: Arc::new(Mutex::new(Inner {
                file,
                rotation,
                lost: 0,
            })),
            tx,
            path: path.to_path_buf(),
        })
    }

    /// Opens the file at [`EventLog::path`] again (created if missing): after the
    /// state dir was deleted, writes would otherwise go to the unlinked old file.
    pub fn reopen(&self) -> io::Result<()> {
        let file = crate::state_dir::open_append(&self.path)?;
        let mut inner = self.inner.lock().unwrap();
        inner.file = file;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `event` and logs its readable form (a warning for the kinds that
    /// mean something went wrong).
    pub fn emit(&self, event: Event) {
        let mut line = serde_json::to_string(&event).expect("events serialize");
        let text = describe(&event);
        if is_trouble(event.kind) {
            tracing::warn!("{text}");
        } else {
            tracing::info!("{text}");
        }
        line.push('\n');
        // Lines for followers, in the order they happened.
        let mut notes: Vec<String> = Vec::new();
        {
            let mut inner = self.inner.lock().unwrap();
            self.follow_the_name(&mut inner);
            let lost = inner.lost;
            let resumed = if lost > 0 {
                // Said first, so the gap is recorded where it is.
                let mut n = serde_json::to_string(&Event::new("-", EventKind::LogWriteResumed).detail(format!(
                    "the event log {} is written again; {lost} event(s) could not be written before (followers and the supervisor's log got them)",
                    self.path.display()
                )))
                .expect("events serialize");
                n.push('\n');
                Some(n)
            } else {
                None
            };
            let mut result = Ok(());
            if let Some(r) = resumed {
                result = self.append(&mut inner, r.as_bytes());
                if result.is_ok() {
                    tracing::warn!(
                        "The event log {} is written again; {lost} event(s) could not be written before (they are in this log only)",
                        self.path.display()
                    );
                    inner.lost = 0;
                    notes.push(r);
                }
            }
            if result.is_ok() {
                result = self.append(&mut inner, line.as_bytes());
            }
            if let Err(e) = result {
                if inner.lost == 0 {
                    // Once, not once per event: a full disk would otherwise
                    // flood this log too.
                    tracing::error!(
                        "Cannot append to the event log {}: {e}; events are kept in this log until writing works again",
                        self.path.display()
                    );
                    let mut n = serde_json::to_string(&Event::new("-", EventKind::LogWriteFailed).detail(format!(
                        "cannot append to the event log {}: {e}; events are dropped from it (and counted) until writing works again",
                        self.path.display()
                    )))
                    .expect("events serialize");
                    n.push('\n');
                    notes.push(n);
                }
                inner.lost += 1;
            }
        }
        notes.push(line);
        for mut n in notes {
            n.pop();
            let _ = self.tx.send(Arc::from(n));
        }
    }

    /// Rotates first if `line` would take the file past its size, then appends it
    /// whole (or not at all).
    fn append(&self, inner: &mut Inner, line: &[u8]) -> io::Result<()> {
        let size = inner.file.metadata()?.len();
        let Rotation { max_size, keep } = inner.rotation;
        if size > 0 && size + line.len() as u64 > max_size {
            match crate::rotation::rotate(&self.path, keep)
                .and_then(|()| crate::state_dir::open_append(&self.path))
            {
                Ok(f) => inner.file = f,
                // Writing on past the size beats losing the event.
                Err(e) => tracing::debug!("cannot rotate {}: {e}", self.path.display()),
            }
        }
        append_whole(&mut inner.file, line)
    }

    /// Opens the file again if its name no longer leads to it (deleted, moved):
    /// one `stat` per event.
    fn follow_the_name(&self, inner: &mut Inner) {
        use std::os::unix::fs::MetadataExt;
        let on_disk = std::fs::symlink_metadata(&self.path).ok();
        let ours = inner.file.metadata().ok();
        let same = matches!((&on_disk, &ours), (Some(a), Some(b)) if a.dev() == b.dev() && a.ino() == b.ino());
        if !same {
            match crate::state_dir::open_append(&self.path) {
                Ok(f) => inner.file = f,
                Err(e) => tracing::debug!("cannot open {} again: {e}", self.path.display()),
            }
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<str>> {
        self.tx.subscribe()
    }
}

/// Appends `line` whole or not at all: a write that fails half-way (`ENOSPC` after
/// a partial write) is cut back to the length before it, so the next event never
/// gets glued to a torn line.
fn append_whole(file: &mut File, line: &[u8]) -> io::Result<()> {
    let before = file.metadata()?.len();
    match file.write_all(line) {
        Ok(()) => Ok(()),
        Err(e) => {
            // `O_APPEND` writes at the end whatever the offset; truncating needs no
            // space, so it works on a full disk.
            if let Err(t) = file.set_len(before) {
                tracing::debug!("cannot cut the event log back to {before} bytes: {t}");
            }
            Err(e)
        }
    }
}

/// What [`read_lines`] found: the lines that are events, and where the others are.
#[derive(Debug, Default)]
pub struct ReadEvents<'a> {
    /// Each readable line with its event.
    pub events: Vec<(&'a str, Event)>,
    /// 1-based numbers of the lines that are not an event (torn, edited, …).
    pub bad_lines: Vec<usize>,
}

/// Parses the text of `events.jsonl`, keeping track of every line that is not an
/// event instead of skipping it silently. Empty lines are not counted.
pub fn read_lines(text: &str) -> ReadEvents<'_> {
    let mut out = ReadEvents::default();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Event>(line) {
            Ok(e) => out.events.push((line, e)),
            Err(_) => out.bad_lines.push(i + 1),
        }
    }
    out
}

/// Kinds that say something went wrong, logged as warnings.
fn is_trouble(kind: EventKind) -> bool {
    matches!(
        kind,
        EventKind::StartupFailed
            | EventKind::Crashed
            | EventKind::Killed
            | EventKind::RapidFailStopped
            | EventKind::ConfigRejected
            | EventKind::StateDirRecreated
            | EventKind::LogWriteFailed
    )
}

/// One readable line: `12:03:04.120 web recycle w0 gen 3 pid 100→140 manual recycle (startup 352 ms)`.
pub fn render(e: &Event) -> String {
    let time = e.time.get(11..23).unwrap_or(&e.time);
    format!("{time} {}", describe(e))
}

/// [`render`] without the time (the log line has its own):
/// `web recycle w0 gen 3 pid 100→140 manual recycle (startup 352 ms)`.
pub fn describe(e: &Event) -> String {
    let mut s = format!("{} {}", e.app, e.kind);
    if let Some(w) = e.worker {
        s.push_str(&format!(" w{w}"));
    }
    if let Some(g) = e.generation {
        s.push_str(&format!(" gen {g}"));
    }
    match (e.old_pid, e.new_pid, e.pid) {
        (Some(o), Some(n), _) => s.push_str(&format!(" pid {o}→{n}")),
        (None, Some(n), _) => s.push_str(&format!(" pid {n}")),
        (Some(o), None, _) => s.push_str(&format!(" pid {o}")),
        (None, None, Some(p)) => s.push_str(&format!(" pid {p}")),
        _ => {}
    }
    if let Some(d) = &e.detail {
        s.push_str(&format!(": {d}"));
    }
    let mut extra = Vec::new();
    if let Some(ms) = e.startup_ms {
        extra.push(format!("startup {ms} ms"));
    }
    if let Some(ms) = e.drain_ms {
        extra.push(format!("drain {ms} ms"));
    }
    if let Some(ms) = e.uptime_ms {
        extra.push(format!("uptime {}", human_ms(ms)));
    }
    if let Some(n) = e.sessions {
        extra.push(format!(
            "{n} session{} handed off",
            if n == 1 { "" } else { "s" }
        ));
    }
    if !extra.is_empty() {
        s.push_str(&format!(" ({})", extra.join(", ")));
    }
    if let Some(tail) = &e.stderr_tail {
        if let Some(last) = tail.last() {
            s.push_str(&format!(" — stderr: {last}"));
        }
    }
    s
}

pub fn human_ms(ms: u64) -> String {
    if ms < 10_000 {
        format!("{ms} ms")
    } else if ms < 120_000 {
        format!("{} s", ms / 1000)
    } else if ms < 7_200_000 {
        format!("{} min", ms / 60_000)
    } else {
        format!("{:.1} h", ms as f64 / 3_600_000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The JSON names are the contract with `events.jsonl` readers: the enum must
    /// serialize to exactly the strings the log carried as free text.
    #[test]
    fn event_kinds_serialize_to_their_names() {
        use EventKind::*;
        for kind in [
            Started,
            Ready,
            Recycle,
            RecycleQueued,
            StartupFailed,
            Crashed,
            Killed,
            Retired,
            RapidFailStopped,
            Stopped,
            Watching,
            WatchFailed,
            WatchWarning,
            SoftChange,
            IgnoredChange,
            IdleStop,
            OnDemandStart,
            ConfigReloaded,
            ConfigRejected,
            StateDirRecreated,
            LogWriteFailed,
            LogWriteResumed,
            Escaped,
        ] {
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
            assert_eq!(serde_json::from_str::<EventKind>(&json).unwrap(), kind);
            assert!(EventKind::ALL.contains(&kind), "{kind} is missing from ALL");
            assert_eq!(EventKind::from_name(kind.as_str()), Some(kind));
        }
    }

    /// The log rotates between lines: no file passes its size, every event is in
    /// exactly one file, whole, in order.
    #[test]
    fn the_event_log_rotates_between_whole_lines() {
        let dir = std::env::temp_dir().join(format!("av-evrot-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("events.jsonl");
        let log = EventLog::open_with(
            &path,
            Rotation {
                max_size: 4096,
                keep: 100,
            },
        )
        .unwrap();
        for i in 0..500 {
            log.emit(Event::new("web", EventKind::Started).detail("x".repeat(i % 300)));
        }
        let mut details = Vec::new();
        for mut f in crate::rotation::files_oldest_first(&path).unwrap() {
            let len = f.file.metadata().unwrap().len();
            assert!(len <= 4096, "{} is {len} bytes", f.path.display());
            crate::rotation::for_each_line(&mut f.file, 4096, |l| {
                let e: Event = serde_json::from_slice(l).expect("a whole event");
                details.push(e.detail.unwrap().len());
            })
            .unwrap();
        }
        assert_eq!(details, (0..500).map(|i| i % 300).collect::<Vec<_>>());
        assert!(crate::rotation::rotated_numbers(&path).len() > 20);
        // Deleted under the supervisor: the next event makes it again.
        std::fs::remove_file(&path).unwrap();
        log.emit(Event::new("web", EventKind::Ready));
        assert!(std::fs::read_to_string(&path)
            .unwrap()
            .contains("\"ready\""));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_torn_line_is_reported_by_number() {
        let good = serde_json::to_string(&Event::new("web", EventKind::Started)).unwrap();
        let text = format!("{good}\n{{\"time\":\"2026-01-0{good}\n\n{good}\nnot json\n");
        let r = read_lines(&text);
        assert_eq!(r.events.len(), 2);
        assert_eq!(r.bad_lines, vec![2, 5]);
    }
}
