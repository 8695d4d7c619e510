//! The inotify watch set of one app: one non-recursive watch per directory.
//!
//! appvisor talks to inotify directly (through the `inotify` crate) rather than through
//! `notify`, for three reasons measured or seen on real trees:
//!
//! - **The event mask.** `notify` always asks for `IN_OPEN` and `IN_CLOSE_NOWRITE`, so
//!   every *read* of a watched file — the app loading its 10,000 DLLs at start-up, or
//!   the baseline hashing 100,000 files — queues two events, wakes two threads, and can
//!   overflow the kernel queue (16,384 events by default), which forces a full rescan.
//!   Here only changes are asked for: create, delete, move, modify, close-after-write,
//!   attributes.
//! - **No self-inflicted events**, hence watches can go in *before* the baseline is
//!   hashed: anything that changes while hashing arrives as an event, and no second
//!   stat pass over the tree is needed to close that window.
//! - **Recursion under our control**: ignored directories (`node_modules`, `.git`, …)
//!   under a watched tree get no watch at all, and new directories are watched by the
//!   same thread that decides, so there is one thread per app, not two.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};

use super::{read_proc_limit, Flags, WatchError};

/// What a watched directory reports. Opens, reads and closes without writing are
/// deliberately absent (see the module docs).
fn mask() -> WatchMask {
    WatchMask::CREATE
        | WatchMask::DELETE
        | WatchMask::MOVED_FROM
        | WatchMask::MOVED_TO
        | WatchMask::MODIFY
        | WatchMask::CLOSE_WRITE
        | WatchMask::ATTRIB
        | WatchMask::DELETE_SELF
        | WatchMask::MOVE_SELF
        | WatchMask::ONLYDIR
        | WatchMask::EXCL_UNLINK
}

/// One event, reduced to what the watcher needs.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Raw {
    Seen {
        rel: PathBuf,
        flags: Flags,
    },
    /// The kernel queue overflowed: events were lost.
    Overflow,
}

pub(crate) struct Watches {
    inotify: Inotify,
    app: String,
    cwd: PathBuf,
    /// Watch → the directory it watches, relative to the cwd.
    by_wd: HashMap<WatchDescriptor, PathBuf>,
    by_dir: BTreeMap<PathBuf, WatchDescriptor>,
    /// Directories the plan needs (for the watch-limit message).
    needed: usize,
    buf: Vec<u8>,
}

/// Names why `inotify_init` failed. EMFILE means two things there: this user's
/// `fs.inotify.max_user_instances` is reached, or this process has no fd left
/// (`RLIMIT_NOFILE`). Blaming the first for the second sends the user to raise the
/// wrong limit, so the process's own fds are counted to tell them apart.
pub(crate) fn init_failure(app: &str, cwd: &Path, e: io::Error) -> WatchError {
    match e.raw_os_error() {
        Some(libc::EMFILE) if fds_exhausted(open_fds(), soft_fd_limit()) => {
            WatchError::Descriptors {
                app: app.to_owned(),
                detail: crate::fd_limit::explain(&e),
            }
        }
        Some(libc::EMFILE) => WatchError::InstanceLimit {
            app: app.to_owned(),
            limit: read_proc_limit("max_user_instances"),
        },
        Some(libc::ENFILE) => WatchError::Descriptors {
            app: app.to_owned(),
            detail: crate::fd_limit::explain(&e),
        },
        _ => WatchError::Inotify {
            app: app.to_owned(),
            path: cwd.to_path_buf(),
            source: e,
        },
    }
}

/// This process's open fds (`None` when even listing them fails for want of one).
fn open_fds() -> Option<usize> {
    // The listing holds one fd itself; it is not counted.
    std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|d| d.count().saturating_sub(1))
}

fn soft_fd_limit() -> u64 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(u64::MAX, |(soft, _)| soft)
}

/// Whether an EMFILE from `inotify_init` is this process's fd limit: no fd left to
/// list them, or (allowing for fds another thread closed meanwhile) within a few of
/// the soft limit.
pub(crate) fn fds_exhausted(open: Option<usize>, soft_limit: u64) -> bool {
    open.is_none_or(|n| n as u64 + 4 >= soft_limit)
}

impl Watches {
    pub fn new(app: &str, cwd: &Path) -> Result<Watches, WatchError> {
        let inotify = Inotify::init().map_err(|e| init_failure(app, cwd, e))?;
        Ok(Watches {
            inotify,
            app: app.to_owned(),
            cwd: cwd.to_path_buf(),
            by_wd: HashMap::new(),
            by_dir: BTreeMap::new(),
            needed: 0,
            buf: vec![0; 64 * 1024],
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.inotify.as_fd()
    }

    /// Directories watched now.
    pub fn len(&self) -> usize {
        self.by_dir.len()
    }

    /// Makes the watch set exactly `dirs` (relative to the cwd).
    pub fn sync(&mut self, dirs: Vec<PathBuf>) -> Result<(), WatchError> {
        self.needed = dirs.len();
        let want: std::collections::BTreeSet<PathBuf> = dirs.into_iter().collect();
        let obsolete: Vec<PathBuf> = self
            .by_dir
            .keys()
            .filter(|d| !want.contains(*d))
            .cloned()
            .collect();
        for d in obsolete {
            self.unwatch(&d);
        }
        for d in want {
            if !self.by_dir.contains_key(&d) {
                self.watch_dir(d)?;
            }
        }
        Ok(())
    }

    /// Drops the watches at or below `rel`. The kernel may already have dropped them (the
    /// directory was deleted): not an error.
    pub fn forget(&mut self, rel: &Path) {
        let stale: Vec<PathBuf> = self
            .by_dir
            .range(rel.to_path_buf()..)
            .take_while(|(d, _)| d.starts_with(rel))
            .map(|(d, _)| d.clone())
            .collect();
        for d in stale {
            self.unwatch(&d);
        }
    }

    pub fn forget_all(&mut self) {
        let all: Vec<PathBuf> = self.by_dir.keys().cloned().collect();
        for d in all {
            self.unwatch(&d);
        }
    }

    fn unwatch(&mut self, rel: &Path) {
        if let Some(wd) = self.by_dir.remove(rel) {
            if self.by_wd.get(&wd).is_some_and(|d| d == rel) {
                self.by_wd.remove(&wd);
            }
            let _ = self.inotify.watches().remove(wd);
        }
    }

    /// One non-recursive watch on `rel`. A directory that vanished before we got to it
    /// is skipped: its removal is an event of its own.
    pub fn watch_dir(&mut self, rel: PathBuf) -> Result<(), WatchError> {
        let abs = self.cwd.join(&rel);
        match self.inotify.watches().add(&abs, mask()) {
            Ok(wd) => {
                // The same inode under a new name (a renamed directory) keeps its watch.
                if let Some(old) = self.by_wd.insert(wd.clone(), rel.clone()) {
                    if old != rel && self.by_dir.get(&old) == Some(&wd) {
                        self.by_dir.remove(&old);
                    }
                }
                self.by_dir.insert(rel, wd);
                Ok(())
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => Err(WatchError::WatchLimit {
                app: self.app.clone(),
                needed: self.needed.max(self.by_dir.len() + 1),
                limit: read_proc_limit("max_user_watches"),
            }),
            Err(source) => Err(WatchError::Inotify {
                app: self.app.clone(),
                path: abs,
                source,
            }),
        }
    }

    /// Reads every event available now (without blocking) into `out`.
    pub fn read(&mut self, out: &mut Vec<Raw>) -> io::Result<()> {
        loop {
            let events = match self.inotify.read_events(&mut self.buf) {
                Ok(events) => events,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let mut n = 0;
            for ev in events {
                n += 1;
                if ev.mask.contains(EventMask::Q_OVERFLOW) {
                    out.push(Raw::Overflow);
                    continue;
                }
                if ev.mask.contains(EventMask::IGNORED) {
                    // The watch is gone (rm_watch, or its directory was deleted).
                    if let Some(rel) = self.by_wd.remove(&ev.wd) {
                        if self.by_dir.get(&rel) == Some(&ev.wd) {
                            self.by_dir.remove(&rel);
                        }
                    }
                    continue;
                }
                let Some(dir) = self.by_wd.get(&ev.wd) else {
                    continue;
                };
                if ev
                    .mask
                    .intersects(EventMask::DELETE_SELF | EventMask::MOVE_SELF)
                {
                    out.push(Raw::Seen {
                        rel: dir.clone(),
                        flags: Flags::REMOVED | Flags::FOLDER,
                    });
                    continue;
                }
                let Some(name) = ev.name else {
                    continue;
                };
                out.push(Raw::Seen {
                    rel: dir.join(name),
                    flags: flags_of(ev.mask),
                });
            }
            if n == 0 {
                return Ok(());
            }
        }
    }
}

fn flags_of(mask: EventMask) -> Flags {
    let mut f = Flags::default();
    if mask.contains(EventMask::CREATE) {
        f = f | Flags::CREATED;
    }
    if mask.contains(EventMask::DELETE) {
        f = f | Flags::REMOVED;
    }
    if mask.intersects(EventMask::MOVED_FROM | EventMask::MOVED_TO) {
        f = f | Flags::RENAMED;
    }
    if mask.intersects(EventMask::MODIFY | EventMask::CLOSE_WRITE) {
        f = f | Flags::MODIFIED;
    }
    if mask.contains(EventMask::ATTRIB) {
        f = f | Flags::METADATA;
    }
    if mask.contains(EventMask::ISDIR) {
        f = f | Flags::FOLDER;
    }
    f
}
