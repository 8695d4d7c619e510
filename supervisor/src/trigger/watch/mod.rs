//! The file-change trigger of one app: watch, debounce, compare, decide.
//!
//! # Layout
//!
//! - [`plan`] — globs → the directories to watch and which paths count.
//! - [`snapshot`] — the baseline (size, mtime, inode, content hash per file) and the
//!   comparison of the disk against it.
//! - this file — [`AppWatcher`], the debounce ([`Burst`]) and the decision.
//!
//! # Theory of operation
//!
//! ```text
//! inotify ──► notify's thread ──(relevant paths only)──► watch thread ──► decisions
//!             drops opens/reads,                          debounce, hash,   (tokio mpsc,
//!             ignored and unrelated paths                 compare, decide   to the pool)
//! ```
//!
//! [`AppWatcher::start`] builds the baseline on the watch thread *before* installing
//! the inotify watches (reading 100,000 files under a watch would flood the inotify
//! queue with open/close events), then installs the watches and re-stats the tree once
//! to catch anything that changed in between. Only then does `start` return.
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
//! An inotify queue overflow loses events; the burst then ends in a full rescan, and
//! one [`RecycleReason::WatchOverflow`] if anything differs.
//!
//! With `poll`, no inotify is used: the watch thread stat-walks the plan every `poll`
//! interval and feeds what differs from the baseline into the same burst logic.
//! (notify's `PollWatcher` compares mtimes in whole seconds, so a second save within
//! the same second — or any save in the second the baseline was taken — would be
//! missed; the baseline here has nanosecond mtime, ctime, size and inode.) A polled
//! change is acted on only after one more poll found nothing new, so a copy that
//! spans several polls is still one decision.

mod plan;
mod snapshot;

use std::collections::BTreeMap;
use std::io;
use std::ops::BitOr;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ::notify::event::{EventKind, ModifyKind};
use ::notify::{INotifyWatcher, RecursiveMode, Watcher as _};
use appvisor_config::{Compare, WatchConfig};
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::oneshot;

use crate::reason::RecycleReason;
use plan::Matcher;
use snapshot::{Outcome, Snapshot};

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
    /// From [`AppWatcher::start`] to watching (baseline, watches, verification).
    pub setup: Duration,
    /// Directories visited by the plan (≈ inotify watches used).
    pub directories: usize,
    /// Files (and their bytes) in the baseline.
    pub files: usize,
    pub bytes: u64,
    /// Decisions sent so far.
    pub decisions: u64,
    pub last_burst: Option<BurstTiming>,
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
    #[error("app `{app}`: cannot watch {}: {source}", path.display())]
    Watch {
        app: String,
        path: PathBuf,
        #[source]
        source: ::notify::Error,
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
    fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Modified => "modified",
            ChangeKind::Created => "created",
            ChangeKind::Removed => "removed",
            ChangeKind::Renamed => "renamed",
        }
    }
}

/// Maps a notify event kind to flags; `None` for events that never mean a change
/// (opens, reads, closes: inotify reports every open of a watched file).
fn flags_of(kind: &EventKind) -> Option<Flags> {
    Some(match kind {
        EventKind::Create(_) => Flags::CREATED,
        EventKind::Remove(_) => Flags::REMOVED,
        EventKind::Modify(ModifyKind::Name(_)) => Flags::RENAMED,
        EventKind::Modify(ModifyKind::Metadata(_)) => Flags::METADATA,
        EventKind::Modify(_) => Flags::MODIFIED,
        EventKind::Access(_) | EventKind::Any | EventKind::Other => return None,
    })
}

/// Messages into the watch thread.
enum Msg {
    Seen {
        rel: PathBuf,
        flags: Flags,
        at: Instant,
    },
    Overflow {
        at: Instant,
    },
    Trouble {
        detail: String,
    },
    /// The pool recycled for another reason: the soft-change count starts over.
    Recycled,
    Stop,
}

/// Watches one app's files and sends [`WatchDecision`]s. Dropping it stops watching.
#[derive(Debug)]
pub struct AppWatcher {
    tx: mpsc::Sender<Msg>,
    stats: Arc<Mutex<WatchStats>>,
}

impl AppWatcher {
    /// Builds the baseline of `cwd` under `cfg`, installs the watches, and returns once
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
        let (tx, rx) = mpsc::channel();
        let stats = Arc::new(Mutex::new(WatchStats {
            backend: "off",
            ..Default::default()
        }));
        if !cfg.enabled || (cfg.paths.is_empty() && cfg.soft.is_empty()) {
            return Ok(AppWatcher { tx, stats });
        }
        let matcher = Arc::new(Matcher::new(app, cwd, cfg)?);
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
            inotify: None,
            installed: BTreeMap::new(),
            snapshot: None,
            needed_dirs: 0,
            decisions,
            stats: stats.clone(),
            tx: tx.clone(),
            poll_fingerprint: 0,
        };
        std::thread::Builder::new()
            .name(format!("watch {app}"))
            .spawn(move || thread.run(rx, ready_tx, begun))
            .map_err(|source| WatchError::Thread {
                app: app.to_owned(),
                source,
            })?;
        ready_rx.await.map_err(|_| WatchError::Lost {
            app: app.to_owned(),
        })??;
        Ok(AppWatcher { tx, stats })
    }

    /// Tells the watcher the pool recycled for another reason (manual, memory, …), so
    /// the soft-change count starts over.
    pub fn recycled(&self) {
        let _ = self.tx.send(Msg::Recycled);
    }

    /// A copy of the watcher's figures.
    pub fn stats(&self) -> WatchStats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Drop for AppWatcher {
    fn drop(&mut self) {
        // The thread drops the inotify watcher (closing its fd and thread) on its way out.
        let _ = self.tx.send(Msg::Stop);
    }
}

/// Events collected since the last decision.
#[derive(Debug)]
struct Burst {
    first: Instant,
    last: Instant,
    events: usize,
    dirty: BTreeMap<PathBuf, Flags>,
    overflow: bool,
}

impl Burst {
    fn new(at: Instant) -> Burst {
        Burst {
            first: at,
            last: at,
            events: 0,
            dirty: BTreeMap::new(),
            overflow: false,
        }
    }

    fn add(&mut self, rel: PathBuf, flags: Flags, at: Instant) {
        self.last = self.last.max(at);
        self.events += 1;
        if !self.overflow {
            let f = self.dirty.entry(rel).or_default();
            *f = *f | flags;
        }
    }

    fn overflowed(&mut self, at: Instant) {
        self.last = self.last.max(at);
        self.events += 1;
        self.overflow = true;
        // A full rescan follows; the paths no longer matter.
        self.dirty.clear();
    }

    /// Quiet for `debounce`, or `max_wait` after the first event, whichever is first.
    fn deadline(&self, debounce: Duration, max_wait: Duration) -> Instant {
        (self.last + debounce).min(self.first + max_wait)
    }
}

struct WatchThread {
    app: String,
    matcher: Arc<Matcher>,
    compare: Compare,
    debounce: Duration,
    max_wait: Duration,
    poll: Option<Duration>,
    soft_limit: u32,
    soft_count: u32,
    inotify: Option<INotifyWatcher>,
    /// Directories watched now (absolute) → recursive.
    installed: BTreeMap<PathBuf, bool>,
    snapshot: Option<Snapshot>,
    needed_dirs: usize,
    decisions: UnboundedSender<WatchDecision>,
    stats: Arc<Mutex<WatchStats>>,
    /// For the inotify callback, which runs on notify's thread.
    tx: mpsc::Sender<Msg>,
    /// Fingerprint of what the previous poll saw differ from the baseline.
    poll_fingerprint: u64,
}

impl WatchThread {
    fn run(
        mut self,
        rx: mpsc::Receiver<Msg>,
        ready: oneshot::Sender<Result<(), WatchError>>,
        begun: Instant,
    ) {
        let verified = match self.set_up() {
            Ok(outcome) => outcome,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        if let Ok(mut s) = self.stats.lock() {
            s.setup = begun.elapsed();
        }
        if ready.send(Ok(())).is_err() {
            return;
        }
        // Something changed between hashing and watching: decide on it now.
        if !verified.changes.is_empty() || !verified.ignored.is_empty() {
            let now = Instant::now();
            let mut burst = Burst::new(now);
            burst.events = verified.changes.len();
            self.emit(verified, &burst, now);
        }
        self.event_loop(rx);
    }

    /// Baseline first, then watches, then one stat pass to catch what changed between
    /// the two.
    fn set_up(&mut self) -> Result<Outcome, WatchError> {
        let (snapshot, figures) = Snapshot::build(&self.matcher, self.compare);
        self.needed_dirs = figures.dirs;
        if let Ok(mut s) = self.stats.lock() {
            s.backend = if self.poll.is_some() {
                "poll"
            } else {
                "inotify"
            };
            s.directories = figures.dirs;
            s.files = figures.files;
            s.bytes = figures.bytes;
        }
        self.snapshot = Some(snapshot);
        if self.poll.is_some() {
            return Ok(Outcome::default());
        }
        let tx = self.tx.clone();
        let matcher = self.matcher.clone();
        let app = self.app.clone();
        let handler = move |res: ::notify::Result<::notify::Event>| {
            let at = Instant::now();
            match res {
                Ok(ev) if ev.need_rescan() => {
                    let _ = tx.send(Msg::Overflow { at });
                }
                Ok(ev) => {
                    let Some(flags) = flags_of(&ev.kind) else {
                        return;
                    };
                    for path in &ev.paths {
                        let Some(rel) = matcher.relative(path) else {
                            continue;
                        };
                        if matcher.is_relevant(rel, flags.structural()) {
                            let _ = tx.send(Msg::Seen {
                                rel: rel.to_path_buf(),
                                flags,
                                at,
                            });
                        }
                    }
                }
                Err(e) => {
                    let detail = match e.kind {
                        ::notify::ErrorKind::MaxFilesWatch => WatchError::WatchLimit {
                            app: app.clone(),
                            needed: 0,
                            limit: read_proc_limit("max_user_watches"),
                        }
                        .to_string(),
                        _ => format!("app `{app}`: file watch error: {e}"),
                    };
                    let _ = tx.send(Msg::Trouble { detail });
                }
            }
        };
        let config = ::notify::Config::default().with_follow_symlinks(false);
        let watcher = INotifyWatcher::new(handler, config).map_err(|e| match &e.kind {
            ::notify::ErrorKind::Io(io) if io.raw_os_error() == Some(libc::EMFILE) => {
                WatchError::InstanceLimit {
                    app: self.app.clone(),
                    limit: read_proc_limit("max_user_instances"),
                }
            }
            _ => WatchError::Watch {
                app: self.app.clone(),
                path: self.matcher.cwd.clone(),
                source: e,
            },
        })?;
        self.inotify = Some(watcher);
        self.ensure_watches()?;
        let matcher = self.matcher.clone();
        Ok(self.snapshot_mut().rescan(&matcher))
    }

    fn snapshot_mut(&mut self) -> &mut Snapshot {
        self.snapshot.as_mut().expect("built in set_up")
    }

    fn event_loop(&mut self, rx: mpsc::Receiver<Msg>) {
        let mut burst: Option<Burst> = None;
        // Under `poll`, a change must be followed by one quiet poll before acting.
        let debounce = self.debounce + self.poll.unwrap_or_default();
        let mut next_poll = self.poll.map(|p| Instant::now() + p);
        loop {
            let now = Instant::now();
            if let (Some(at), Some(p)) = (next_poll, self.poll) {
                if now >= at {
                    self.poll_once(&mut burst, now);
                    next_poll = Some(now + p);
                    continue;
                }
            }
            let deadline = burst.as_ref().map(|b| b.deadline(debounce, self.max_wait));
            if let Some(d) = deadline {
                if now >= d {
                    let b = burst.take().expect("deadline implies a burst");
                    if !self.decide(b) {
                        return;
                    }
                    continue;
                }
            }
            let wake = match (deadline, next_poll) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let msg = match wake {
                Some(at) => rx.recv_timeout(at.saturating_duration_since(now)),
                None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            match msg {
                Ok(Msg::Seen { rel, flags, at }) => {
                    if flags.structural() && self.matcher.touches_plan(&rel) {
                        self.replan(&rel);
                    }
                    burst
                        .get_or_insert_with(|| Burst::new(at))
                        .add(rel, flags, at);
                }
                Ok(Msg::Overflow { at }) => {
                    burst.get_or_insert_with(|| Burst::new(at)).overflowed(at);
                }
                Ok(Msg::Trouble { detail }) => {
                    if !self.send(WatchDecision::Warning { detail }) {
                        return;
                    }
                }
                Ok(Msg::Recycled) => self.soft_count = 0,
                Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }

    /// One poll: what differs from the baseline now, compared with the previous poll.
    fn poll_once(&mut self, burst: &mut Option<Burst>, now: Instant) {
        let matcher = self.matcher.clone();
        let diff = self.snapshot_mut().stat_diff(&matcher);
        let mut h = std::hash::DefaultHasher::new();
        for (rel, flags, seen) in &diff {
            std::hash::Hash::hash(rel, &mut h);
            std::hash::Hasher::write_u8(&mut h, flags.0);
            std::hash::Hasher::write_u64(&mut h, *seen);
        }
        let fingerprint = std::hash::Hasher::finish(&h);
        if fingerprint == self.poll_fingerprint {
            return;
        }
        self.poll_fingerprint = fingerprint;
        for (rel, flags, _) in diff {
            burst
                .get_or_insert_with(|| Burst::new(now))
                .add(rel, flags, now);
        }
    }

    /// A planned directory (or one of its ancestors) was created, removed or renamed:
    /// inotify watches follow inodes, so drop the watches at or below it and install
    /// what the plan needs now.
    fn replan(&mut self, rel: &Path) {
        let Some(inotify) = self.inotify.as_mut() else {
            return;
        };
        let abs = self.matcher.cwd.join(rel);
        let stale: Vec<PathBuf> = self
            .installed
            .keys()
            .filter(|p| p.starts_with(&abs))
            .cloned()
            .collect();
        for p in stale {
            // notify may already have dropped it (deleted, moved away): not an error.
            let _ = inotify.unwatch(&p);
            self.installed.remove(&p);
        }
        if let Err(e) = self.ensure_watches() {
            self.send(WatchDecision::Warning {
                detail: e.to_string(),
            });
        }
    }

    /// Installs a watch on every planned directory that exists (on its nearest existing
    /// ancestor, non-recursively, when it does not yet), and removes watches no longer
    /// needed.
    fn ensure_watches(&mut self) -> Result<(), WatchError> {
        let Some(inotify) = self.inotify.as_mut() else {
            return Ok(());
        };
        let cwd = &self.matcher.cwd;
        let mut want: BTreeMap<PathBuf, bool> = BTreeMap::new();
        for d in &self.matcher.dirs {
            let abs = cwd.join(&d.rel);
            if abs.is_dir() {
                *want.entry(abs).or_default() |= d.recursive;
            } else if let Some(existing) = abs
                .ancestors()
                .skip(1)
                .take_while(|a| a.starts_with(cwd))
                .find(|a| a.is_dir())
            {
                want.entry(existing.to_path_buf()).or_default();
            }
        }
        let recursive: Vec<PathBuf> = want
            .iter()
            .filter(|(_, r)| **r)
            .map(|(p, _)| p.clone())
            .collect();
        want.retain(|p, _| !recursive.iter().any(|r| p != r && p.starts_with(r)));
        let obsolete: Vec<PathBuf> = self
            .installed
            .iter()
            .filter(|(p, r)| want.get(*p) != Some(r))
            .map(|(p, _)| p.clone())
            .collect();
        for p in obsolete {
            let _ = inotify.unwatch(&p);
            self.installed.remove(&p);
        }
        for (path, recursive) in want {
            if self.installed.contains_key(&path) {
                continue;
            }
            let mode = if recursive {
                RecursiveMode::Recursive
            } else {
                RecursiveMode::NonRecursive
            };
            match inotify.watch(&path, mode) {
                Ok(()) => {
                    self.installed.insert(path, recursive);
                }
                Err(e) if matches!(e.kind, ::notify::ErrorKind::PathNotFound) => {}
                Err(e) if matches!(e.kind, ::notify::ErrorKind::MaxFilesWatch) => {
                    return Err(WatchError::WatchLimit {
                        app: self.app.clone(),
                        needed: self.needed_dirs,
                        limit: read_proc_limit("max_user_watches"),
                    });
                }
                Err(source) => {
                    return Err(WatchError::Watch {
                        app: self.app.clone(),
                        path,
                        source,
                    })
                }
            }
        }
        Ok(())
    }

    /// Ends a burst: compare, decide, send. Returns false once nobody listens.
    fn decide(&mut self, burst: Burst) -> bool {
        let matcher = self.matcher.clone();
        let outcome = if burst.overflow {
            // Events were lost, possibly including directory creations notify needed to
            // add watches for: re-install the recursive watches, then compare it all.
            let roots: Vec<PathBuf> = self.installed.keys().cloned().collect();
            if let Some(inotify) = self.inotify.as_mut() {
                for p in roots {
                    let _ = inotify.unwatch(&p);
                }
            }
            self.installed.clear();
            if let Err(e) = self.ensure_watches() {
                self.send(WatchDecision::Warning {
                    detail: e.to_string(),
                });
            }
            self.snapshot_mut().rescan(&matcher)
        } else {
            self.snapshot_mut().reconcile(&matcher, &burst.dirty)
        };
        let decided = Instant::now();
        self.emit(outcome, &burst, decided)
    }

    fn emit(&mut self, outcome: Outcome, burst: &Burst, decided: Instant) -> bool {
        let Some(decision) = self.judge(outcome, burst.overflow) else {
            return true;
        };
        if let Ok(mut s) = self.stats.lock() {
            s.decisions += 1;
            s.last_burst = Some(BurstTiming {
                first_event: burst.first,
                last_event: burst.last,
                decided,
                events: burst.events,
            });
        }
        self.send(decision)
    }

    fn send(&self, decision: WatchDecision) -> bool {
        self.decisions.send(decision).is_ok()
    }

    /// The one decision for a compared burst.
    fn judge(&mut self, outcome: Outcome, overflow: bool) -> Option<WatchDecision> {
        let Outcome { changes, ignored } = outcome;
        let rel_str = |p: &PathBuf| p.display().to_string();
        if overflow {
            if changes.is_empty() {
                return Some(WatchDecision::Warning {
                    detail: format!(
                        "app `{}`: the inotify event queue overflowed \
                         (fs.inotify.max_queued_events); a full rescan found no change",
                        self.app
                    ),
                });
            }
            self.soft_count = 0;
            return Some(WatchDecision::Recycle(RecycleReason::WatchOverflow));
        }
        let (soft, hard): (Vec<_>, Vec<_>) = changes
            .into_iter()
            .partition(|(p, _)| self.matcher.is_soft(p));
        if !hard.is_empty() {
            self.soft_count = 0;
            let count = hard.len() + soft.len();
            let first = hard[0].1;
            let change = if hard.iter().chain(&soft).all(|(_, k)| *k == first) {
                first.as_str()
            } else {
                "mixed"
            };
            let paths = hard
                .iter()
                .chain(&soft)
                .take(NAMED_PATHS)
                .map(|(p, _)| rel_str(p))
                .collect();
            return Some(WatchDecision::Recycle(RecycleReason::FileChange {
                paths,
                count,
                change: change.to_owned(),
            }));
        }
        if !soft.is_empty() {
            self.soft_count += 1;
            if self.soft_count > self.soft_limit {
                let changes = self.soft_count;
                self.soft_count = 0;
                return Some(WatchDecision::Recycle(RecycleReason::SoftChangeLimit {
                    changes,
                    limit: self.soft_limit,
                }));
            }
            return Some(WatchDecision::Soft {
                paths: soft
                    .iter()
                    .take(NAMED_PATHS)
                    .map(|(p, _)| rel_str(p))
                    .collect(),
                count: soft.len(),
            });
        }
        if !ignored.is_empty() {
            return Some(WatchDecision::Ignored {
                paths: ignored.iter().take(NAMED_PATHS).map(rel_str).collect(),
                count: ignored.len(),
            });
        }
        None
    }
}

#[cfg(test)]
mod tests;
