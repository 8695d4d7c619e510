//! The handoff between two overlapping generations of a `handoff`-mode
//! worker: who may trust its memory, and when a store read may start.
//!
//! See the crate's *Theory of operation* ("Overlapped recycles") for the
//! protocol; this file holds its state:
//!
//! * the [`Phase`] of this worker, which decides where loads read and where
//!   commits write;
//! * the gate that makes "stop committing to memory" a clean cut: memory
//!   commits run under its read side, the switch takes its write side, so
//!   once the switch returns no memory commit is under way or can start, and
//!   the flush that follows sees every one of them;
//! * the predecessors (`APPVISOR_PREDECESSORS`): before its first store read
//!   a successor waits until each one has exited or written its marker, and
//!   until they have all exited it keeps no session in memory.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{watch, OnceCell};

use super::error::SessionError;
use super::outcome::FlushReport;
use super::store::Store;

/// Between two looks at the predecessors' markers. A look is one MGET of a
/// key or two plus a signal-0 `kill` per pid, so polling this often costs
/// nothing noticeable, and a waiting request resumes within about a
/// millisecond of the marker appearing.
const POLL: Duration = Duration::from_millis(1);

/// Where this worker's sessions live right now. Phases only move forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub(crate) enum Phase {
    /// Predecessors are still alive and may still serve some of our users:
    /// every load reads the store (after their markers), every commit
    /// writes it. Nothing is kept in memory.
    Joining = 0,
    /// The normal life of a handoff worker: memory is the truth, commits
    /// mark sessions dirty.
    Memory = 1,
    /// The handoff began: no more memory commits; the dirty sessions are
    /// being flushed. Memory still holds the latest state, so loads that hit
    /// it use it; commits wait for the flush, then write the store.
    Flushing = 2,
    /// Handed off: write-through, exactly like `store` mode.
    Through = 3,
}

impl Phase {
    fn from_u8(value: u8) -> Phase {
        match value {
            0 => Phase::Joining,
            1 => Phase::Memory,
            2 => Phase::Flushing,
            _ => Phase::Through,
        }
    }
}

/// How far this worker's own handoff got.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    /// Sessions written by the handoff so far (all attempts).
    pub(crate) handed: FlushReport,
    /// When the first attempt began.
    pub(crate) started: Option<Instant>,
    /// Flushed completely and marker written: later calls do nothing.
    pub(crate) done: bool,
}

pub(crate) struct Handoff {
    phase: AtomicU8,
    /// Memory commits hold it shared; the switch away from memory holds it
    /// exclusively. Never held across an await.
    gate: RwLock<()>,
    /// Becomes true when the handoff's first flush has finished (whatever
    /// its outcome): commits waiting in [`Phase::Flushing`] go on then.
    flushed: watch::Sender<bool>,
    /// Serializes `begin_handoff` / `drain`, and remembers their result.
    pub(crate) progress: tokio::sync::Mutex<Progress>,
    /// The pid our marker is written under.
    pub(crate) pid: u32,
    predecessors: Vec<u32>,
    /// Predecessors not yet seen gone ([`Phase::Joining`] ends when empty).
    alive: Mutex<Vec<u32>>,
    /// Set once every predecessor has exited or written its marker, or the
    /// wait hit its bound: from then on store reads start at once.
    settled: OnceCell<()>,
    wait_started: OnceLock<Instant>,
    wait_bound: Duration,
}

impl Handoff {
    pub(crate) fn new(pid: u32, predecessors: &[u32], wait_bound: Duration) -> Handoff {
        let mut predecessors: Vec<u32> = predecessors
            .iter()
            .copied()
            .filter(|p| *p != pid && *p != 0)
            .collect();
        predecessors.sort_unstable();
        predecessors.dedup();
        let (phase, settled) = if predecessors.is_empty() {
            (Phase::Memory, OnceCell::new_with(Some(())))
        } else {
            (Phase::Joining, OnceCell::new())
        };
        Handoff {
            phase: AtomicU8::new(phase as u8),
            gate: RwLock::new(()),
            flushed: watch::Sender::new(false),
            progress: tokio::sync::Mutex::new(Progress::default()),
            pid,
            alive: Mutex::new(predecessors.clone()),
            predecessors,
            settled,
            wait_started: OnceLock::new(),
            wait_bound,
        }
    }

    fn current(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::SeqCst))
    }

    /// The phase now. While joining, first looks whether every predecessor
    /// has exited (a signal-0 `kill` each), and if so moves to
    /// [`Phase::Memory`].
    pub(crate) fn phase(&self) -> Phase {
        let phase = self.current();
        if phase != Phase::Joining {
            return phase;
        }
        let exited = {
            let mut alive = self.alive.lock().unwrap_or_else(|p| p.into_inner());
            alive.retain(|pid| !process_gone(*pid));
            alive.is_empty()
        };
        if exited {
            // Fails only when a handoff began meanwhile: that phase stands.
            let _ = self.phase.compare_exchange(
                Phase::Joining as u8,
                Phase::Memory as u8,
                Ordering::SeqCst,
                Ordering::SeqCst,
            );
        }
        self.current()
    }

    /// Runs `commit` (a memory commit) if memory is still where commits go,
    /// under the gate so the switch cannot slip in between the check and the
    /// commit; `None` when they go to the store.
    pub(crate) fn in_memory<R>(&self, commit: impl FnOnce() -> R) -> Option<R> {
        let _open = self.gate.read().unwrap_or_else(|p| p.into_inner());
        (self.phase() == Phase::Memory).then(commit)
    }

    /// Ends memory commits. When this returns, every memory commit has
    /// either finished (and is dirty, so the next flush takes it) or will go
    /// to the store.
    pub(crate) fn stop_memory_commits(&self) {
        let _closed = self.gate.write().unwrap_or_else(|p| p.into_inner());
        self.phase
            .fetch_max(Phase::Flushing as u8, Ordering::SeqCst);
    }

    /// The handoff's flush is over: write-through from now on.
    pub(crate) fn flush_finished(&self) {
        self.phase.fetch_max(Phase::Through as u8, Ordering::SeqCst);
        self.flushed.send_replace(true);
    }

    /// Waits while the handoff's flush runs, so a store commit never lands
    /// under a flush that would then replay older changes over it.
    pub(crate) async fn until_flushed(&self) {
        if self.current() != Phase::Flushing {
            return;
        }
        let mut done = self.flushed.subscribe();
        // The sender lives in `self`: the channel cannot close while we wait.
        let _ = done.wait_for(|flushed| *flushed).await;
    }

    /// Returns once a store read may start: every predecessor has exited or
    /// marked its sessions flushed, or [`wait_bound`](Self::new) has passed
    /// since the first wait began (then it says so once, as a `tracing` warning, and lets
    /// reads go on). One waiter polls; concurrent ones wait for its answer.
    pub(crate) async fn settle(&self, store: &Store) -> Result<(), SessionError> {
        if self.settled.initialized() {
            return Ok(());
        }
        self.settled
            .get_or_try_init(|| self.wait_for_predecessors(store))
            .await
            .map(|_| ())
    }

    async fn wait_for_predecessors(&self, store: &Store) -> Result<(), SessionError> {
        let started = *self.wait_started.get_or_init(Instant::now);
        let mut pending = self.predecessors.clone();
        loop {
            pending.retain(|pid| !process_gone(*pid));
            if pending.is_empty() {
                if !self.predecessors.is_empty() {
                    tracing::debug!(
                        "every predecessor has exited after {} ms: reading the store",
                        started.elapsed().as_millis()
                    );
                }
                return Ok(());
            }
            let marked = store.handoff_marked(&pending).await?;
            let mut marked = marked.into_iter();
            pending.retain(|_| !marked.next().unwrap_or(false));
            if pending.is_empty() {
                tracing::debug!(
                    "every predecessor has exited or handed off after {} ms: reading the store",
                    started.elapsed().as_millis()
                );
                return Ok(());
            }
            if started.elapsed() >= self.wait_bound {
                let pids = pending
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(", ");
                tracing::warn!(
                    "the previous generation (pid {pids}) neither exited nor handed off its \
                     sessions within {} ms; loading from the store anyway, so sessions it still \
                     holds may look older. Does that worker call Sessions::begin_handoff (or \
                     drain) when it is told to stop?",
                    self.wait_bound.as_millis()
                );
                return Ok(());
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// True when `pid` no longer names a live process: `kill(pid, 0)` fails
/// with ESRCH, or it is a zombie (exited, waiting for its parent to reap it).
/// EPERM (alive, another user's) counts as alive.
fn process_gone(pid: u32) -> bool {
    let Ok(raw) = libc::pid_t::try_from(pid) else {
        return true;
    };
    if raw <= 0 {
        // 0 and negatives address process groups, never one worker.
        return true;
    }
    // SAFETY: signal 0 delivers nothing; kill only checks that `raw`, a
    // positive pid, names a process we could signal. No memory is involved.
    let rc = unsafe { libc::kill(raw, 0) };
    if rc != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
        return true;
    }
    is_zombie(pid)
}

/// Linux: the state letter after the `(comm)` in `/proc/<pid>/stat` is `Z`
/// (zombie) or `X` (dead). Elsewhere, or when unreadable: false.
fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // The command name may itself contain ") ", so split at the last.
            stat.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with(['Z', 'X']))
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_process_is_alive_and_nonsense_pids_are_gone() {
        assert!(!process_gone(std::process::id()));
        assert!(process_gone(0));
        assert!(process_gone(u32::MAX));
    }

    #[test]
    fn a_reaped_child_is_gone_and_an_unreaped_one_is_a_zombie() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Wait for it to exit without reaping it: poll its state.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !is_zombie(pid) {
            assert!(Instant::now() < deadline, "`true` did not exit within 10 s");
            std::thread::yield_now();
        }
        assert!(
            process_gone(pid),
            "an exited, unreaped child counts as gone"
        );
        child.wait().unwrap();
        assert!(process_gone(pid));
    }

    #[test]
    fn no_predecessors_means_memory_at_once() {
        let h = Handoff::new(7, &[7, 0], Duration::from_secs(1));
        assert_eq!(h.phase(), Phase::Memory);
        assert!(h.settled.initialized());
        let alive = Handoff::new(1, &[std::process::id()], Duration::from_secs(1));
        assert_eq!(alive.phase(), Phase::Joining);
        assert_eq!(alive.in_memory(|| ()), None);
        alive.stop_memory_commits();
        assert_eq!(alive.phase(), Phase::Flushing);
        alive.flush_finished();
        assert_eq!(alive.phase(), Phase::Through);
    }
}
