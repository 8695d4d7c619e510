//! Reaping: every child exit, and the worker it belongs to.
//!
//! One task owns `waitpid(-1)`: on each SIGCHLD it reaps every exited child and
//! hands `(pid, status)` to whoever registered the pid. The supervisor is a child
//! subreaper (`PR_SET_CHILD_SUBREAPER`), so grandchildren orphaned by a worker are
//! re-parented here and reaped too: a zombie never keeps a pid (or a port) busy.
//!
//! Invariant: a worker's pid is registered with [`Reaper::watch`] right after fork,
//! before the runtime thread yields, so its exit can never be reaped unclaimed. (An
//! unclaimed exit is an orphaned grandchild and is dropped.)

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

impl ExitStatus {
    /// Decodes a `waitpid` status. Only exits are asked for (no `WUNTRACED`), so a
    /// status is either an exit code or a terminating signal. Decoded by hand rather
    /// than with `nix`'s `WaitStatus`, which refuses signal numbers outside its
    /// enum (a realtime signal) — see [`Reaper::reap_all`].
    fn from_wait(status: i32) -> Self {
        if libc::WIFSIGNALED(status) {
            ExitStatus::Signal(libc::WTERMSIG(status))
        } else {
            ExitStatus::Code(libc::WEXITSTATUS(status))
        }
    }

    pub fn success(self) -> bool {
        self == ExitStatus::Code(0)
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "exit code {c}"),
            ExitStatus::Signal(s) => write!(f, "signal {}", signal_name(*s)),
        }
    }
}

/// `SIGKILL` for 9, etc.; `signal 34` for one without a name. The names come from
/// the one signal table, the config's [`Signal`](appvisor_config::Signal).
pub fn signal_name(sig: i32) -> String {
    appvisor_config::Signal::describe(sig)
}

/// A reaped exit, delivered to the registered listener.
#[derive(Debug, Clone, Copy)]
pub struct Exit {
    pub pid: i32,
    pub status: ExitStatus,
}

#[derive(Default)]
struct Table {
    listeners: HashMap<i32, mpsc::UnboundedSender<Exit>>,
}

/// Cloneable handle to the reaper.
#[derive(Clone, Default)]
pub struct Reaper {
    table: Arc<Mutex<Table>>,
}

impl std::fmt::Debug for Reaper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reaper")
    }
}

impl Reaper {
    /// Becomes a child subreaper and starts the reaping task.
    pub fn start() -> std::io::Result<Reaper> {
        if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
            // Not fatal: workers are still reaped; only their orphaned children
            // would be re-parented to init instead of to us.
            tracing::warn!(
                "Cannot become a child subreaper ({e}): processes a worker leaves behind \
                 will not be reaped or stopped by appvisor."
            );
        }
        let reaper = Reaper::default();
        let mut sigchld = signal(SignalKind::child())?;
        let r = reaper.clone();
        tokio::spawn(async move {
            loop {
                r.reap_all();
                if sigchld.recv().await.is_none() {
                    break;
                }
            }
        });
        Ok(reaper)
    }

    /// Delivers the exit of `pid` to `tx`. Call before yielding after the fork.
    pub fn watch(&self, pid: i32, tx: mpsc::UnboundedSender<Exit>) {
        self.table.lock().unwrap().listeners.insert(pid, tx);
    }

    /// Reaps every exited child now.
    ///
    /// Raw `waitpid` on purpose: `nix::sys::wait::waitpid` reaps first and decodes
    /// after, and fails the decoding for a signal its `Signal` enum lacks (a worker
    /// killed by a realtime signal) — the child would be gone and its exit lost, and
    /// its pool would wait for it forever.
    pub fn reap_all(&self) {
        loop {
            let mut status = 0;
            // SAFETY: `status` is a live, writable int for the whole call; waitpid
            // writes only there.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                break;
            }
            let status = ExitStatus::from_wait(status);
            let listener = self.table.lock().unwrap().listeners.remove(&pid);
            if let Some(tx) = listener {
                let _ = tx.send(Exit { pid, status });
            }
        }
    }
}
