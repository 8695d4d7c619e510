//! The watch thread of one app: it sleeps in `poll(2)` on its inotify descriptor
//! (or stat-walks under `poll`) and its handle's socket, collects events into a
//! [`Burst`], and at the burst's deadline compares against the baseline and sends
//! exactly one decision. See the parent module for the theory of operation.

use super::*;

/// Events collected since the last decision.
#[derive(Debug)]
pub(super) struct Burst {
    pub(super) first: Instant,
    pub(super) last: Instant,
    pub(super) events: usize,
    pub(super) dirty: BTreeMap<PathBuf, Flags>,
    pub(super) overflow: bool,
}

impl Burst {
    pub(super) fn new(at: Instant) -> Burst {
        Burst {
            first: at,
            last: at,
            events: 0,
            dirty: BTreeMap::new(),
            overflow: false,
        }
    }

    pub(super) fn add(&mut self, rel: PathBuf, flags: Flags, at: Instant) {
        self.last = self.last.max(at);
        self.events += 1;
        if !self.overflow {
            let f = self.dirty.entry(rel).or_default();
            *f = *f | flags;
        }
    }

    pub(super) fn overflowed(&mut self, at: Instant) {
        self.last = self.last.max(at);
        self.events += 1;
        self.overflow = true;
        // A full rescan follows; the paths no longer matter.
        self.dirty.clear();
    }

    /// Quiet for `debounce`, or `max_wait` after the first event, whichever is first.
    pub(super) fn deadline(&self, debounce: Duration, max_wait: Duration) -> Instant {
        (self.last + debounce).min(self.first + max_wait)
    }
}

pub(super) struct WatchThread {
    pub(super) app: String,
    pub(super) matcher: Matcher,
    pub(super) compare: Compare,
    pub(super) debounce: Duration,
    pub(super) max_wait: Duration,
    pub(super) poll: Option<Duration>,
    pub(super) soft_limit: u32,
    pub(super) soft_count: u32,
    /// `None` under `poll`.
    pub(super) watches: Option<Watches>,
    pub(super) snapshot: Option<Snapshot>,
    pub(super) decisions: UnboundedSender<WatchDecision>,
    pub(super) stats: Arc<Mutex<WatchStats>>,
    pub(super) control: mpsc::Receiver<Control>,
    /// Readable when the handle has sent a [`Control`] or was dropped.
    pub(super) waker: UnixStream,
    /// Fingerprint of what the previous poll saw differ from the baseline.
    pub(super) poll_fingerprint: u64,
    /// Ignored paths already named in a debug line. Each is named once: the
    /// supervisor's own log is often written inside the app's directory, and a line
    /// per event on it would write the file again, and so on forever.
    pub(super) ignored_logged: std::collections::HashSet<PathBuf>,
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
    pub(super) fn run(mut self, ready: oneshot::Sender<Result<(), WatchError>>, begun: Instant) {
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
                    // Quiet means nothing queued either: a thread woken late (a busy
                    // machine) may find events that arrived before the deadline still
                    // unread. Read them first; they move the deadline.
                    let pending = self.wait(Some(Duration::ZERO));
                    if pending.control && !self.take_control() {
                        return;
                    }
                    if pending.events {
                        if !self.read_events(&mut burst, &mut raw) {
                            return;
                        }
                        let moved = burst.as_ref().map(|b| b.deadline(debounce, self.max_wait));
                        if moved.is_some_and(|m| m > d) {
                            continue;
                        }
                    }
                    let Some(b) = burst.take() else { continue };
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
            if woken.events && !self.read_events(&mut burst, &mut raw) {
                return;
            }
        }
    }

    /// Reads what inotify has queued into `burst`. Returns false when the thread must
    /// stop (the handle is gone).
    fn read_events(&mut self, burst: &mut Option<Burst>, raw: &mut Vec<Raw>) -> bool {
        let Some(watches) = self.watches.as_mut() else {
            return true;
        };
        if let Err(e) = watches.read(raw) {
            let detail = format!("app `{}`: reading inotify events: {e}", self.app);
            if !self.send(WatchDecision::Warning { detail }) {
                return false;
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
        true
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
