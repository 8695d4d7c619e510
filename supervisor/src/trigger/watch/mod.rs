//! The file-change trigger of one app: watch, debounce, compare, decide.
//!
//! # Layout
//!
//! - [`plan`] — globs → the directories to watch and which paths count.
//! - [`watches`] — the inotify instance: one watch per directory, events in.
//! - [`snapshot`] — the baseline (size, mtime, inode, content hash per file) and the
//!   comparison of the disk against it.
//! - [`thread`] — the watch thread: its `poll(2)` loop, the debounce (`Burst`) and
//!   the decision.
//! - this file — [`AppWatcher`], the handle the pool holds, and the decision types.
//!
//! # Theory of operation
//!
//! Each app has one watch thread. It sleeps in `poll(2)` on its inotify descriptor and
//! on a socket its [`AppWatcher`] handle uses to reach it (stop, "the pool recycled"),
//! with a timeout set to the next debounce deadline — so at rest it uses no CPU, and
//! nothing slow ever runs on the supervisor's async thread.
//!
//! [`AppWatcher::start`] installs the watches first, then builds the baseline (hashing
//! every watched file); a change made while hashing is simply an event waiting in the
//! queue. Only then does `start` return.
//!
//! Events only say *where to look*. A burst of events collects paths until nothing has
//! happened for `debounce`, or `max_wait` has passed since its first event; then the
//! named paths (and, for a created, removed or renamed directory, everything the plan
//! watches under it) are compared with the baseline, and exactly one decision comes
//! out: [`WatchDecision::Recycle`] (real changes), [`WatchDecision::Soft`] (changes
//! only under `soft` globs), or [`WatchDecision::Ignored`] (events, but identical
//! content). The baseline then holds what is on disk, which is what the next
//! generation starts with.
//!
//! An inotify queue overflow loses events; the burst then ends in a full rescan (and a
//! fresh set of watches), and one [`RecycleReason::WatchOverflow`] if anything differs.
//!
//! With `poll`, no inotify is used: the thread stat-walks the plan every `poll`
//! interval and feeds what differs from the baseline into the same burst logic.
//! (the `notify` crate's `PollWatcher` compares mtimes in whole seconds, so a second save within
//! the same second — or any save in the second the baseline was taken — would be
//! missed; the baseline here has nanosecond mtime, ctime, size and inode.) A polled
//! change is acted on only after one more poll found nothing new, so a copy that
//! spans several polls is still one decision. A same-size rewrite within one
//! filesystem timestamp tick of the previous one is invisible to any stat poller.

mod plan;
mod snapshot;
mod thread;
mod watches;

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::ops::BitOr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use appvisor_config::{Compare, WatchConfig};
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::oneshot;

use crate::reason::RecycleReason;
use plan::Matcher;
use snapshot::{Outcome, Snapshot};
use thread::WatchThread;
use watches::{Raw, Watches};

/// How many changed paths a decision names; `count` says how many there were.
const NAMED_PATHS: usize = 5;

/// What the watcher tells the pool.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchDecision {
    /// Recycle: files changed ([`RecycleReason::FileChange`]), soft changes reached
    /// their limit, or the event queue overflowed and a rescan found changes.
    Recycle(RecycleReason),
    /// Only files under `soft` globs changed: send `soft_signal`, do not recycle.
    Soft { paths: Vec<String>, count: usize },
    /// Events arrived but every file named still has its baseline content (a touch, a
    /// chmod, an identical rewrite): log `ignored_change`, do nothing.
    Ignored { paths: Vec<String>, count: usize },
    /// Watching is degraded (e.g. the inotify watch limit was hit for a directory
    /// created later, or the queue overflowed without a change): log it.
    Warning { detail: String },
}

/// When the burst behind a decision started, ended and was decided (for benchmarks and
/// `status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BurstTiming {
    pub first_event: Instant,
    pub last_event: Instant,
    pub decided: Instant,
    /// Relevant events in the burst (after filtering).
    pub events: usize,
}

/// Figures about one app's watcher.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchStats {
    /// "inotify", "poll", or "off".
    pub backend: &'static str,
    /// From [`AppWatcher::start`] to watching (watches, then baseline).
    pub setup: Duration,
    /// Directories watched (one inotify watch each).
    pub directories: usize,
    /// Files (and their bytes) in the baseline.
    pub files: usize,
    pub bytes: u64,
    /// Decisions sent so far.
    pub decisions: u64,
    pub last_burst: Option<BurstTiming>,
    pub phases: SetupPhases,
}

/// Where set-up time went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SetupPhases {
    /// Listing the directories and installing one inotify watch on each.
    pub watches: Duration,
    /// Walking the plan and hashing every file.
    pub baseline: Duration,
}

/// Why watching could not start.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("app `{app}`: [app.watch] {field}: invalid glob {glob:?}: {source}")]
    Glob {
        app: String,
        field: &'static str,
        glob: String,
        #[source]
        source: globset::Error,
    },
    #[error(
        "app `{app}`: the inotify watch limit is exhausted: watching needs {needed} directories \
         (at least), and fs.inotify.max_user_watches = {} is shared by all of this user's \
         programs. Raise it: `sysctl fs.inotify.max_user_watches={}` (persist it in \
         /etc/sysctl.d/), or watch fewer directories ([app.watch] paths / ignore), or set \
         [app.watch] poll = \"2s\"",
        show(*limit), suggest(*limit, *needed)
    )]
    WatchLimit {
        app: String,
        needed: usize,
        limit: Option<u64>,
    },
    #[error(
        "app `{app}`: cannot create an inotify instance: fs.inotify.max_user_instances = {} \
         is reached. Raise it: `sysctl fs.inotify.max_user_instances={}`, or set \
         [app.watch] poll = \"2s\"",
        show(*limit), suggest(*limit, 128)
    )]
    InstanceLimit { app: String, limit: Option<u64> },
    /// `inotify_init` failed because the supervisor (EMFILE) or the system (ENFILE)
    /// is out of file descriptors; `detail` is [`crate::fd_limit::explain`]'s words.
    #[error("app `{app}`: cannot create an inotify instance: {detail}")]
    Descriptors { app: String, detail: String },
    #[error("app `{app}`: cannot watch {}: {source}", path.display())]
    Inotify {
        app: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("app `{app}`: cannot start the watch thread: {source}")]
    Thread {
        app: String,
        #[source]
        source: io::Error,
    },
    #[error("app `{app}`: the watch thread stopped during set-up")]
    Lost { app: String },
}

fn show(limit: Option<u64>) -> String {
    limit.map_or_else(|| "(unreadable)".to_owned(), |l| l.to_string())
}

fn suggest(limit: Option<u64>, needed: usize) -> u64 {
    (limit.unwrap_or(8192) + needed as u64 * 2).next_power_of_two()
}

fn read_proc_limit(name: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/sys/fs/inotify/{name}"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// What an event said happened to a path. Several events on one path in a burst are
/// or-ed together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Flags(u8);

impl Flags {
    pub const CREATED: Flags = Flags(1);
    pub const REMOVED: Flags = Flags(2);
    pub const RENAMED: Flags = Flags(4);
    pub const MODIFIED: Flags = Flags(8);
    pub const METADATA: Flags = Flags(16);
    /// The event said the path is a directory (inotify's `IN_ISDIR`).
    pub const FOLDER: Flags = Flags(32);

    /// Created, removed or renamed: the path may be (or have been) a directory, so
    /// everything below it must be compared.
    pub fn structural(self) -> bool {
        self.0 & (Self::CREATED.0 | Self::REMOVED.0 | Self::RENAMED.0) != 0
    }
    pub fn renamed(self) -> bool {
        self.0 & Self::RENAMED.0 != 0
    }
    pub fn metadata(self) -> bool {
        self.0 & Self::METADATA.0 != 0
    }
    pub fn folder(self) -> bool {
        self.0 & Self::FOLDER.0 != 0
    }
}

/// `created|folder`: the flags by name, for debug logs.
impl std::fmt::Display for Flags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = [
            (Self::CREATED, "created"),
            (Self::REMOVED, "removed"),
            (Self::RENAMED, "renamed"),
            (Self::MODIFIED, "modified"),
            (Self::METADATA, "metadata"),
            (Self::FOLDER, "folder"),
        ];
        let mut first = true;
        for (flag, name) in names {
            if self.0 & flag.0 != 0 {
                if !first {
                    f.write_str("|")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        Ok(())
    }
}

impl BitOr for Flags {
    type Output = Flags;
    fn bitor(self, rhs: Flags) -> Flags {
        Flags(self.0 | rhs.0)
    }
}

/// What happened to one changed path, as the event log names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum ChangeKind {
    Modified,
    Created,
    Removed,
    Renamed,
}

impl ChangeKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Modified => "modified",
            ChangeKind::Created => "created",
            ChangeKind::Removed => "removed",
            ChangeKind::Renamed => "renamed",
        }
    }
}

/// Requests from the [`AppWatcher`] handle to its thread.
enum Control {
    /// The pool recycled for another reason: the soft-change count starts over.
    Recycled,
    Stop,
}

/// Watches one app's files and sends [`WatchDecision`]s. Dropping it stops watching.
#[derive(Debug)]
pub struct AppWatcher {
    control: Option<(mpsc::Sender<Control>, UnixStream)>,
    stats: Arc<Mutex<WatchStats>>,
}

impl AppWatcher {
    /// Installs the watches for `cwd` under `cfg`, builds the baseline, and returns once
    /// watching. The slow part runs on the watcher's own thread; this future only waits
    /// for it, so it is fine on a current-thread runtime. With `enabled = false` (or no
    /// globs) the watcher is inert.
    pub async fn start(
        app: &str,
        cwd: &Path,
        cfg: &WatchConfig,
        decisions: UnboundedSender<WatchDecision>,
    ) -> Result<AppWatcher, WatchError> {
        let begun = Instant::now();
        let stats = Arc::new(Mutex::new(WatchStats {
            backend: "off",
            ..Default::default()
        }));
        if !cfg.enabled || (cfg.paths.is_empty() && cfg.soft.is_empty()) {
            return Ok(AppWatcher {
                control: None,
                stats,
            });
        }
        let thread_err = |source| WatchError::Thread {
            app: app.to_owned(),
            source,
        };
        let matcher = Matcher::new(app, cwd, cfg)?;
        let (handle_end, thread_end) = UnixStream::pair().map_err(thread_err)?;
        handle_end.set_nonblocking(true).map_err(thread_err)?;
        thread_end.set_nonblocking(true).map_err(thread_err)?;
        let (control_tx, control_rx) = mpsc::channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        let thread = WatchThread {
            app: app.to_owned(),
            matcher,
            compare: cfg.compare,
            debounce: cfg.debounce,
            max_wait: cfg.max_wait.max(cfg.debounce),
            poll: cfg.poll,
            soft_limit: cfg.soft_changes_before_recycle,
            soft_count: 0,
            watches: None,
            snapshot: None,
            decisions,
            stats: stats.clone(),
            control: control_rx,
            waker: thread_end,
            poll_fingerprint: 0,
            ignored_logged: std::collections::HashSet::new(),
        };
        std::thread::Builder::new()
            .name(format!("watch {app}"))
            .spawn(move || thread.run(ready_tx, begun))
            .map_err(thread_err)?;
        ready_rx.await.map_err(|_| WatchError::Lost {
            app: app.to_owned(),
        })??;
        Ok(AppWatcher {
            control: Some((control_tx, handle_end)),
            stats,
        })
    }

    /// Tells the watcher the pool recycled for another reason (manual, memory, …), so
    /// the soft-change count starts over.
    pub fn recycled(&self) {
        self.tell(Control::Recycled);
    }

    /// A copy of the watcher's figures.
    pub fn stats(&self) -> WatchStats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn tell(&self, c: Control) {
        if let Some((tx, waker)) = &self.control {
            if tx.send(c).is_ok() {
                // Non-blocking: if the socket buffer is full, the thread is already
                // due to wake up and drain the channel.
                let _ = (&*waker).write(&[1]);
            }
        }
    }
}

impl Drop for AppWatcher {
    fn drop(&mut self) {
        // The thread closes its inotify descriptor on its way out. (Even without this
        // message it would stop: our end of the socket closing wakes it.)
        self.tell(Control::Stop);
    }
}

#[cfg(test)]
mod tests;
