//! The state dir as a resource owned by one supervisor: its lock, its modes, and
//! how its files are opened.
//!
//! # Theory of operation
//! `appvisor run` takes an exclusive `flock` on `<state_dir>/lock` before it binds,
//! opens or removes anything in the directory. Two supervisors started at the same
//! instant race only for that lock: the loser refuses at once, naming the winner's
//! pid (written into the lock file once the lock is held), and has touched nothing
//! of the winner's — no control socket, no notify socket, no event log. The lock is
//! released by the kernel when the process dies, however it dies, so a stale lock
//! file never blocks a restart. The fd is close-on-exec: no worker or guard holds
//! it after the supervisor is gone.
//!
//! The CLI reads the pid from the same file ([`holder_pid`]) to name the running
//! supervisor when it cannot read the config.
//!
//! Files in the state dir are opened with `O_NOFOLLOW` ([`open_append`]): a root
//! supervisor must not append to whatever a symlink planted in a pre-existing
//! state dir points at.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// The lock file's name inside the state dir.
pub const LOCK_FILE: &str = "lock";

/// Why the state dir could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum StateDirError {
    #[error(
        "another supervisor (pid {pid}) already runs on the state dir {dir} (it holds {lock}); use `appvisor status`, or `appvisor shutdown` it first"
    )]
    Locked {
        dir: PathBuf,
        lock: PathBuf,
        pid: i32,
    },
    #[error(
        "another supervisor already runs on the state dir {dir} (it holds {lock}; its pid is not written yet); use `appvisor status`"
    )]
    LockedNoPid { dir: PathBuf, lock: PathBuf },
    #[error("cannot lock {path}: {source}")]
    Lock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot create the state directory {path}: {source}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path} is writable by other users (mode {mode:o}): anyone could replace the supervisor's files in the state dir below it; `chmod go-w {path}` or choose another `[supervisor] state_dir`"
    )]
    WritableByOthers { path: PathBuf, mode: u32 },
    #[error("{path} is not a directory; remove it or choose another `[supervisor] state_dir`")]
    NotADirectory { path: PathBuf },
    #[error("cannot inspect {path}: {source}")]
    Stat {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The held lock; dropping it releases the state dir.
#[derive(Debug)]
pub struct StateLock {
    _lock: Flock<File>,
    path: PathBuf,
}

impl StateLock {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Takes the exclusive lock on `dir` (which must exist) and writes our pid into it.
/// Never blocks: a lock held by another supervisor is an error naming its pid.
pub fn lock(dir: &Path) -> Result<StateLock, StateDirError> {
    let path = dir.join(LOCK_FILE);
    let lock_err = |source| StateDirError::Lock {
        path: path.clone(),
        source,
    };
    // Not truncated on open: until we hold the lock, the pid in it is the holder's.
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(lock_err)?;
    let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(l) => l,
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
            // Started at the same instant, the winner may not have written its pid
            // yet: give it a moment (it writes right after locking).
            let mut pid = holder_pid(dir);
            for _ in 0..50 {
                if pid.is_some() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
                pid = holder_pid(dir);
            }
            return Err(match pid {
                Some(pid) => StateDirError::Locked {
                    dir: dir.to_path_buf(),
                    lock: path,
                    pid,
                },
                None => StateDirError::LockedNoPid {
                    dir: dir.to_path_buf(),
                    lock: path,
                },
            });
        }
        Err((_, e)) => return Err(lock_err(e.into())),
    };
    let write_pid = |f: &mut File| -> io::Result<()> {
        f.set_len(0)?;
        f.rewind()?;
        writeln!(f, "{}", std::process::id())?;
        f.sync_data()
    };
    write_pid(&mut lock).map_err(lock_err)?;
    Ok(StateLock { _lock: lock, path })
}

/// The pid written in `dir`'s lock file, if a live process holds the lock.
pub fn holder_pid(dir: &Path) -> Option<i32> {
    let path = dir.join(LOCK_FILE);
    let mut text = String::new();
    let mut f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .ok()?;
    f.read_to_string(&mut text).ok()?;
    let pid: i32 = text.trim().parse().ok()?;
    // A pid from a supervisor that died may be stale: ask whether the lock is held.
    // Taking a *shared* lock succeeds only when nobody holds the exclusive one.
    match Flock::lock(f, FlockArg::LockSharedNonblock) {
        Ok(_released_on_drop) => None,
        Err(_) => Some(pid),
    }
}

/// Creates the state dir (mode 0700) or makes an existing one safe: refuses it when
/// it or a parent (up to `trusted`, the config file's directory, exclusive) is
/// writable by others without the sticky bit, and tightens the mode of a state dir
/// that is readable or writable by others (returned as a warning to log).
pub fn prepare(dir: &Path, trusted: &Path) -> Result<Option<String>, StateDirError> {
    use std::os::unix::fs::DirBuilderExt;
    let stat = |p: &Path| {
        std::fs::symlink_metadata(p).map_err(|source| StateDirError::Stat {
            path: p.to_path_buf(),
            source,
        })
    };
    check_parents(dir, trusted)?;
    if !dir.exists() {
        // Logs, events and the store may hold private data: owner only.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| StateDirError::Create {
                path: dir.to_path_buf(),
                source,
            })?;
    }
    let m = stat(dir)?;
    if !m.is_dir() {
        return Err(StateDirError::NotADirectory {
            path: dir.to_path_buf(),
        });
    }
    let mode = m.permissions().mode() & 0o7777;
    if mode & 0o077 == 0 {
        return Ok(None);
    }
    // Only our own dir is ours to fix; another user's stays a refusal.
    if m.uid() != nix::unistd::geteuid().as_raw() {
        return Err(StateDirError::WritableByOthers {
            path: dir.to_path_buf(),
            mode,
        });
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|source| {
        StateDirError::Create {
            path: dir.to_path_buf(),
            source,
        }
    })?;
    Ok(Some(format!(
        "the state dir {} had mode {mode:o} (others could read or change the supervisor's files); set it to 700",
        dir.display()
    )))
}

/// Refuses a state dir whose parents (up to `trusted`, exclusive) are writable by
/// others without the sticky bit: anyone could rename the state dir away and plant
/// another. Parents that do not exist yet are skipped (they will be made 0700).
pub fn check_parents(dir: &Path, trusted: &Path) -> Result<(), StateDirError> {
    for parent in dir.ancestors().skip(1) {
        if parent.as_os_str().is_empty() || trusted.starts_with(parent) {
            break;
        }
        let m = match std::fs::symlink_metadata(parent) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(StateDirError::Stat {
                    path: parent.to_path_buf(),
                    source,
                })
            }
        };
        let mode = m.permissions().mode() & 0o7777;
        // World-writable only: group-writable project directories are common and
        // their group is trusted by whoever set them up.
        if mode & 0o002 != 0 && mode & 0o1000 == 0 {
            return Err(StateDirError::WritableByOthers {
                path: parent.to_path_buf(),
                mode,
            });
        }
    }
    Ok(())
}

/// Opens a state file for appending, creating it owner-only, never through a
/// symlink (`O_NOFOLLOW`: a link is `ELOOP`, reported as such by the caller).
pub fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                io::Error::new(
                    e.kind(),
                    format!(
                        "{} is a symbolic link; a state file is never written through one (remove the link)",
                        path.display()
                    ),
                )
            } else {
                e
            }
        })
}

/// Wakes when the state dir is removed or renamed away, so a supervisor at rest
/// notices an `rm -rf` of its state dir without polling for it (polling would cost a
/// wake-up every interval forever; the supervisor makes none when idle).
///
/// inotify, on what changes at the moment of the unlink: the lock file's link count
/// (`IN_ATTRIB` when it is unlinked; `IN_DELETE_SELF`/`IN_MOVE_SELF` besides), and
/// the state dir's entry in its parent (`IN_DELETE`, `IN_MOVED_FROM`). Not
/// `IN_DELETE_SELF` on the directory: files the supervisor keeps open inside it
/// hold its dentry, so that event comes only when they are closed.
pub struct RemovalWatch {
    events: inotify::EventStream<[u8; 1024]>,
    lock: inotify::WatchDescriptor,
    name: std::ffi::OsString,
}

impl RemovalWatch {
    pub fn new(dir: &Path, lock: &Path) -> io::Result<RemovalWatch> {
        use inotify::{Inotify, WatchMask};
        let inotify = Inotify::init()?;
        let lock = inotify.watches().add(
            lock,
            WatchMask::ATTRIB | WatchMask::DELETE_SELF | WatchMask::MOVE_SELF,
        )?;
        let name = dir.file_name().map(|n| n.to_owned()).unwrap_or_default();
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            inotify
                .watches()
                .add(parent, WatchMask::DELETE | WatchMask::MOVED_FROM)?;
        }
        Ok(RemovalWatch {
            events: inotify.into_event_stream([0u8; 1024])?,
            lock,
            name,
        })
    }

    /// Resolves at an event that may mean the state dir is gone (the caller checks
    /// whether it is). Never resolves if the inotify descriptor fails.
    pub async fn removed(&mut self) {
        use futures_core::Stream;
        loop {
            let next =
                std::future::poll_fn(|cx| std::pin::Pin::new(&mut self.events).poll_next(cx)).await;
            match next {
                Some(Ok(e)) if e.wd == self.lock => return,
                Some(Ok(e)) if e.name.as_deref() == Some(self.name.as_os_str()) => return,
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return std::future::pending().await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("av-sd-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_second_lock_names_the_first_holder() {
        let d = tmp("lock");
        let held = lock(&d).unwrap();
        assert_eq!(holder_pid(&d), Some(std::process::id() as i32));
        // flock locks belong to the open file description: a second open in the
        // same process conflicts just as another process would.
        match lock(&d) {
            Err(StateDirError::Locked { pid, .. }) => assert_eq!(pid, std::process::id() as i32),
            other => panic!("expected Locked, got {other:?}"),
        }
        drop(held);
        assert_eq!(holder_pid(&d), None, "a released lock names nobody");
        lock(&d).unwrap();
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn an_open_state_dir_is_tightened_and_symlinks_are_refused() {
        let d = tmp("mode");
        let state = d.join("state");
        std::fs::create_dir(&state).unwrap();
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).unwrap();
        let warning = prepare(&state, &d).unwrap().expect("a warning");
        assert!(warning.contains("777"), "{warning}");
        let mode = std::fs::metadata(&state).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        assert_eq!(prepare(&state, &d).unwrap(), None);

        let target = d.join("target");
        std::fs::write(&target, "x").unwrap();
        std::os::unix::fs::symlink(&target, state.join("events.jsonl")).unwrap();
        let e = open_append(&state.join("events.jsonl")).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }
}
