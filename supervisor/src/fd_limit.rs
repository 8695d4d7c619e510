//! The supervisor's file-descriptor budget: `RLIMIT_NOFILE`, and naming its
//! exhaustion (`EMFILE`) as what it is.
//!
//! # Theory of operation
//! A supervisor holds a few fds per worker (stdout, stderr, a notify socket, the
//! listening sockets, inotify) plus the store's clients, so the usual soft limit of
//! 1024 runs out around a hundred apps. At start the soft limit is raised to the
//! hard one, as systemd does for itself. Workers get the soft limit the supervisor
//! was started with (restored between fork and exec by [`crate::spawn`]): a worker
//! written for `select(2)` must not meet fds above 1024 because its supervisor
//! needed many.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// The soft limit before [`raise`], for workers; `u64::MAX` until it is raised.
static INHERITED_SOFT: AtomicU64 = AtomicU64::new(u64::MAX);

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; logs the new value at debug.
/// A failure is logged and ignored: the supervisor runs with what it has.
pub fn raise() {
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!("cannot read the open-file limit (RLIMIT_NOFILE): {e}");
            return;
        }
    };
    if soft >= hard {
        tracing::debug!("open-file limit (RLIMIT_NOFILE): {soft} (already the hard limit)");
        return;
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => {
            INHERITED_SOFT.store(soft, Ordering::Relaxed);
            tracing::debug!("open-file limit (RLIMIT_NOFILE) raised from {soft} to {hard}, the hard limit; workers keep {soft}");
        }
        Err(e) => tracing::warn!(
            "cannot raise the open-file limit (RLIMIT_NOFILE) from {soft} to {hard}: {e}"
        ),
    }
}

/// The limit a worker should start with, if [`raise`] changed the supervisor's.
pub fn for_workers() -> Option<libc::rlimit> {
    let soft = INHERITED_SOFT.load(Ordering::Relaxed);
    if soft == u64::MAX {
        return None;
    }
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    Some(libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    })
}

/// `e` in words, with fd exhaustion named as such and what to do about it.
pub fn explain(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EMFILE) => {
            let limit = getrlimit(Resource::RLIMIT_NOFILE)
                .map(|(soft, _)| format!(" (limit {soft})"))
                .unwrap_or_default();
            format!(
                "too many open files (EMFILE): the supervisor has used all its file descriptors{limit}; raise `ulimit -n` (`LimitNOFILE=` under systemd) — the soft limit is raised to the hard one at start"
            )
        }
        Some(libc::ENFILE) => {
            "too many open files in the system (ENFILE): raise `fs.file-max`".into()
        }
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emfile_is_named_with_what_to_do() {
        let m = explain(&io::Error::from_raw_os_error(libc::EMFILE));
        assert!(m.contains("EMFILE") && m.contains("ulimit -n"), "{m}");
        let m = explain(&io::Error::from_raw_os_error(libc::ENOENT));
        assert!(m.contains("No such file"), "{m}");
    }
}
