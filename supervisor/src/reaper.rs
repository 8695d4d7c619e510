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

/// `SIGKILL` for 9, etc.; the number for unusual ones.
pub fn signal_name(sig: i32) -> String {
    let name = match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        _ => return format!("signal {sig}"),
    };
    name.to_string()
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
        // SAFETY: prctl with integer arguments.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
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
    pub fn reap_all(&self) {
        loop {
            let mut status = 0;
            // SAFETY: waitpid with a valid out-pointer.
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
