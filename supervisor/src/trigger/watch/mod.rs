//! The file-change trigger of one app: watch, debounce, compare, decide.
//!
//! # Layout
//!
//! - [`plan`] — globs → the directories to watch and which paths count.
//! - [`watches`] — the inotify instance: one watch per directory, events in.
//! - [`snapshot`] — the baseline (size, mtime, inode, content hash per file) and the
//!   comparison of the disk against it.
//! - this file — [`AppWatcher`], the watch thread, the debounce ([`Burst`]) and the
//!   decision.
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
    matcher: Matcher,
    compare: Compare,
    debounce: Duration,
    max_wait: Duration,
    poll: Option<Duration>,
    soft_limit: u32,
    soft_count: u32,
    /// `None` under `poll`.
    watches: Option<Watches>,
    snapshot: Option<Snapshot>,
    decisions: UnboundedSender<WatchDecision>,
    stats: Arc<Mutex<WatchStats>>,
    control: mpsc::Receiver<Control>,
    /// Readable when the handle has sent a [`Control`] or was dropped.
    waker: UnixStream,
    /// Fingerprint of what the previous poll saw differ from the baseline.
    poll_fingerprint: u64,
    /// Ignored paths already named in a debug line. Each is named once: the
    /// supervisor's own log is often written inside the app's directory, and a line
    /// per event on it would write the file again, and so on forever.
    ignored_logged: std::collections::HashSet<PathBuf>,
}

/// At most this many ignored paths are remembered (and named) per app.
const IGNORED_LOGGED: usize = 256;

/// What woke the thread up.
#[derive(Debug, Default)]
struct Woken {
    events: bool,
    control: bool,
}

impl WatchThread {
    fn run(mut self, ready: oneshot::Sender<Result<(), WatchError>>, begun: Instant) {
        if let Err(e) = self.set_up() {
            let _ = ready.send(Err(e));
            return;
        }
        if let Ok(mut s) = self.stats.lock() {
            s.setup = begun.elapsed();
        }
        if ready.send(Ok(())).is_err() {
            return;
        }
        self.event_loop();
    }

    /// Watches first, then the baseline: what changes while hashing is already queued
    /// as an event.
    fn set_up(&mut self) -> Result<(), WatchError> {
        let t = Instant::now();
        let mut directories = 0;
        if self.poll.is_none() {
            let mut watches = Watches::new(&self.app, &self.matcher.cwd)?;
            watches.sync(self.wanted_dirs(snapshot::plan_dirs(&self.matcher)))?;
            directories = watches.len();
            self.watches = Some(watches);
        }
        let watching = t.elapsed();
        let t = Instant::now();
        let (snapshot, built) = Snapshot::build(&self.matcher, self.compare);
        self.snapshot = Some(snapshot);
        if let Ok(mut s) = self.stats.lock() {
            s.backend = if self.poll.is_some() {
                "poll"
            } else {
                "inotify"
            };
            s.directories = if self.poll.is_some() {
                built.dirs.len()
            } else {
                directories
            };
            s.files = built.files;
            s.bytes = built.bytes;
            s.phases = SetupPhases {
                watches: watching,
                baseline: t.elapsed(),
            };
        }
        Ok(())
    }

    /// `dirs` (every existing directory of the plan) plus, for each planned directory
    /// that does not exist yet, its nearest existing ancestor inside the cwd, to see it
    /// being created.
    fn wanted_dirs(&self, mut dirs: Vec<PathBuf>) -> Vec<PathBuf> {
        let cwd = &self.matcher.cwd;
        for d in &self.matcher.dirs {
            if !cwd.join(&d.rel).is_dir() {
                if let Some(existing) = d.rel.ancestors().skip(1).find(|a| cwd.join(a).is_dir()) {
                    dirs.push(existing.to_path_buf());
                }
            }
        }
        dirs
    }

    fn event_loop(&mut self) {
        let mut burst: Option<Burst> = None;
        // Under `poll`, a change must be followed by one quiet poll before acting.
        let debounce = self.debounce + self.poll.unwrap_or_default();
        let mut next_poll = self.poll.map(|p| Instant::now() + p);
        let mut raw = Vec::new();
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
                    let b = burst.take().expect("a deadline implies a burst");
                    tracing::debug!(
                        app = %self.app,
                        paths = b.dirty.len(),
                        events = b.events,
                        overflow = b.overflow,
                        after_first_ms = now.duration_since(b.first).as_millis() as u64,
                        quiet_ms = now.duration_since(b.last).as_millis() as u64,
                        "debounce fired: comparing the burst's paths with the baseline"
                    );
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
            let woken = self.wait(wake.map(|w| w.saturating_duration_since(now)));
            if woken.control && !self.take_control() {
                return;
            }
            if woken.events {
                let Some(watches) = self.watches.as_mut() else {
                    continue;
                };
                if let Err(e) = watches.read(&mut raw) {
                    let detail = format!("app `{}`: reading inotify events: {e}", self.app);
                    if !self.send(WatchDecision::Warning { detail }) {
                        return;
                    }
                }
                let at = Instant::now();
                // Once per batch: even a disabled `debug!` costs a little per event.
                let debug = tracing::enabled!(tracing::Level::DEBUG);
                for r in raw.drain(..) {
                    match r {
                        Raw::Overflow => {
                            tracing::debug!(app = %self.app, "inotify queue overflowed: a full rescan follows");
                            burst.get_or_insert_with(|| Burst::new(at)).overflowed(at)
                        }
                        Raw::Seen { rel, flags } => {
                            if rel.as_os_str().is_empty()
                                || !self.matcher.is_relevant(&rel, flags.structural())
                            {
                                if debug
                                    && self.ignored_logged.len() < IGNORED_LOGGED
                                    && self.ignored_logged.insert(rel.clone())
                                {
                                    tracing::debug!(
                                        app = %self.app,
                                        path = %rel.display(),
                                        "ignored path: no watch glob matches it, or an ignore \
                                         glob does (its further events are not logged)"
                                    );
                                }
                                continue;
                            }
                            if debug {
                                tracing::debug!(
                                    app = %self.app,
                                    path = %rel.display(),
                                    event = %flags,
                                    "changed"
                                );
                            }
                            if flags.structural() {
                                self.follow_structure(&rel, flags);
                            }
                            burst
                                .get_or_insert_with(|| Burst::new(at))
                                .add(rel, flags, at);
                        }
                    }
                }
            }
        }
    }

    /// Sleeps until inotify has events, the handle has something to say, or `timeout`
    /// passes (forever if `None`).
    fn wait(&self, timeout: Option<Duration>) -> Woken {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        // Round up: waking a little late is fine, spinning until the deadline is not.
        let timeout = match timeout {
            Some(t) => {
                PollTimeout::try_from(t.as_nanos().div_ceil(1_000_000)).unwrap_or(PollTimeout::MAX)
            }
            None => PollTimeout::NONE,
        };
        let waker = PollFd::new(self.waker.as_fd(), PollFlags::POLLIN);
        let (mut one, mut both);
        let fds: &mut [PollFd<'_>] = match &self.watches {
            Some(w) => {
                both = [waker, PollFd::new(w.fd(), PollFlags::POLLIN)];
                &mut both
            }
            // Polling mode has no inotify descriptor.
            None => {
                one = [waker];
                &mut one
            }
        };
        match poll(fds, timeout) {
            Ok(n) if n > 0 => {}
            // Timeout, or EINTR: the loop re-checks its deadlines either way.
            _ => return Woken::default(),
        }
        let ready = |fd: Option<&PollFd<'_>>| fd.and_then(PollFd::any).unwrap_or(false);
        Woken {
            control: ready(fds.first()),
            events: ready(fds.get(1)),
        }
    }

    /// Applies what the handle sent. Returns false when the thread must stop (asked to,
    /// or the handle is gone).
    fn take_control(&mut self) -> bool {
        let mut buf = [0u8; 64];
        loop {
            match (&self.waker).read(&mut buf) {
                Ok(0) => return false,
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        loop {
            match self.control.try_recv() {
                Ok(Control::Recycled) => self.soft_count = 0,
                Ok(Control::Stop) | Err(mpsc::TryRecvError::Disconnected) => return false,
                Err(mpsc::TryRecvError::Empty) => return true,
            }
        }
    }

    /// One poll: what differs from the baseline now, compared with the previous poll.
    fn poll_once(&mut self, burst: &mut Option<Burst>, now: Instant) {
        let matcher = &self.matcher;
        let Some(snapshot) = self.snapshot.as_mut() else {
            return;
        };
        let diff = snapshot.stat_diff(matcher);
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
        let debug = tracing::enabled!(tracing::Level::DEBUG);
        for (rel, flags, _) in diff {
            if debug {
                tracing::debug!(app = %self.app, path = %rel.display(), event = %flags, "changed (seen by a poll)");
            }
            burst
                .get_or_insert_with(|| Burst::new(now))
                .add(rel, flags, now);
        }
    }

    /// A structural event on `rel`: keep the watches in step (appvisor does the
    /// recursion itself, one watch per directory):
    /// - a planned directory or an ancestor of one changed: recompute the whole set;
    /// - a directory inside a recursive one appeared: watch it and its subdirectories;
    ///   one vanished or moved: forget its watches.
    fn follow_structure(&mut self, rel: &Path, flags: Flags) {
        let Some(watches) = self.watches.as_mut() else {
            return;
        };
        let result = if self.matcher.touches_plan(rel) {
            watches.forget(rel);
            let dirs = snapshot::plan_dirs(&self.matcher);
            let dirs = self.wanted_dirs(dirs);
            self.watches.as_mut().map_or(Ok(()), |w| w.sync(dirs))
        } else if self.matcher.in_recursive(rel) && (flags.folder() || flags.renamed()) {
            watches.forget(rel);
            if self.matcher.cwd.join(rel).is_dir() {
                snapshot::subdirs(&self.matcher, rel)
                    .into_iter()
                    .try_for_each(|d| watches.watch_dir(d))
            } else {
                Ok(())
            }
        } else {
            Ok(())
        };
        if let Err(e) = result {
            self.send(WatchDecision::Warning {
                detail: e.to_string(),
            });
        }
    }

    /// Ends a burst: compare, decide, send. Returns false once nobody listens.
    fn decide(&mut self, burst: Burst) -> bool {
        let outcome = if burst.overflow {
            // Events were lost, possibly including directory creations that needed
            // watches: install a fresh set of watches, then compare everything.
            let dirs = self.wanted_dirs(snapshot::plan_dirs(&self.matcher));
            if let Some(watches) = self.watches.as_mut() {
                watches.forget_all();
                if let Err(e) = watches.sync(dirs) {
                    self.send(WatchDecision::Warning {
                        detail: e.to_string(),
                    });
                }
            }
            let matcher = &self.matcher;
            self.snapshot.as_mut().expect("built").rescan(matcher)
        } else {
            let matcher = &self.matcher;
            self.snapshot
                .as_mut()
                .expect("built")
                .reconcile(matcher, &burst.dirty)
        };
        let decided = Instant::now();
        let Some(decision) = self.judge(outcome, burst.overflow) else {
            tracing::debug!(app = %self.app, "nothing to decide: no watched file differs");
            return true;
        };
        tracing::debug!(app = %self.app, ?decision, "decided");
        if let Ok(mut s) = self.stats.lock() {
            s.decisions += 1;
            s.last_burst = Some(BurstTiming {
                first_event: burst.first,
                last_event: burst.last,
                decided,
                events: burst.events,
            });
            if let Some(w) = &self.watches {
                s.directories = w.len();
            }
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
