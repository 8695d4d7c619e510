//! The fake process table: records what the pool asks, delivers what a test says.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use super::super::process::{BoxFuture, StderrTail};
use super::super::*;
use super::{Signal, SIGTERM};
use crate::trigger::memory::MemorySample;

/// What the pool did, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Op {
    Spawn {
        pid: i32,
        slot: u32,
        generation: u64,
    },
    Signal {
        pid: i32,
        signal: Signal,
    },
    KillGroup {
        pid: i32,
    },
}

#[derive(Default)]
pub(super) struct FakeState {
    /// The test's scratch dir (its `events.jsonl`), removed when the last clone of
    /// the fake (the pool's or the test's) is dropped.
    pub(super) scratch: Option<tempfile::TempDir>,
    pub(super) next_pid: i32,
    pub(super) ops: Vec<Op>,
    /// When each pid was spawned (paused clock).
    pub(super) spawned_at: HashMap<i32, Instant>,
    pub(super) alive: HashSet<i32>,
    pub(super) exits: HashMap<i32, mpsc::UnboundedSender<Exit>>,
    pub(super) notify: HashMap<i32, mpsc::UnboundedSender<(i32, NotifyMessage)>>,
    /// A worker that ignores its stop signal (never drains).
    pub(super) stubborn: bool,
    /// Spawns fail (e.g. the command does not exist).
    pub(super) spawn_fails: bool,
    pub(super) memory: HashMap<i32, MemorySample>,
    /// Workers the kernel's OOM killer "killed": the record `oom_kill` answers.
    pub(super) oom: HashMap<i32, String>,
    /// How often the pool read a worker's memory (`/proc` reads, for real).
    pub(super) memory_reads: usize,
    pub(super) http_ok: bool,
    pub(super) wake: Option<tokio::sync::oneshot::Sender<()>>,
    /// What each worker leaves escaped when it exits (`release`).
    pub(super) escaped: HashMap<i32, Vec<i32>>,
    /// Escaped pids still running.
    pub(super) escaped_alive: HashSet<i32>,
}

#[derive(Clone, Default)]
pub(super) struct Fake(Arc<Mutex<FakeState>>);

impl Fake {
    pub(super) fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.0.lock().unwrap()
    }

    pub(super) fn ops(&self) -> Vec<Op> {
        self.state().ops.clone()
    }

    pub(super) fn spawned(&self) -> Vec<i32> {
        self.ops()
            .iter()
            .filter_map(|o| match o {
                Op::Spawn { pid, .. } => Some(*pid),
                _ => None,
            })
            .collect()
    }

    pub(super) fn last_spawn(&self) -> i32 {
        *self.spawned().last().expect("a spawn")
    }

    pub(super) fn signals_to(&self, pid: i32) -> Vec<Signal> {
        self.ops()
            .iter()
            .filter_map(|o| match o {
                Op::Signal { pid: p, signal } if *p == pid => Some(*signal),
                _ => None,
            })
            .collect()
    }

    pub(super) fn position(&self, op: &Op) -> Option<usize> {
        self.ops().iter().position(|o| o == op)
    }

    pub(super) fn send_notify(&self, pid: i32, m: NotifyMessage) {
        let tx = self.state().notify.get(&pid).cloned().expect("spawned");
        let _ = tx.send((pid, m));
    }

    pub(super) fn ready(&self, pid: i32) {
        self.send_notify(
            pid,
            NotifyMessage {
                ready: true,
                ..NotifyMessage::default()
            },
        );
    }

    pub(super) fn exit(&self, pid: i32, status: ExitStatus) {
        let mut st = self.state();
        if st.alive.remove(&pid) {
            let _ = st.exits[&pid].send(Exit { pid, status });
        }
    }
}

impl ProcessTable for Fake {
    fn spawn(&mut self, request: SpawnRequest<'_>) -> Result<SpawnedWorker, String> {
        let mut st = self.state();
        if st.spawn_fails {
            return Err("cannot execute the command".into());
        }
        st.next_pid += 1;
        let pid = 1000 + st.next_pid;
        let env = |k: &str| {
            request
                .env
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.parse::<u64>().unwrap())
                .unwrap()
        };
        let (slot, generation) = (env("APPVISOR_WORKER") as u32, env("APPVISOR_GENERATION"));
        st.ops.push(Op::Spawn {
            pid,
            slot,
            generation,
        });
        st.spawned_at.insert(pid, Instant::now());
        st.alive.insert(pid);
        st.exits.insert(pid, request.exits);
        st.notify.insert(pid, request.notify);
        let tail: StderrTail = Arc::default();
        tail.lock()
            .unwrap()
            .push_back(format!("worker {pid} says goodbye"));
        Ok(SpawnedWorker {
            pid,
            tail,
            resources: Box::new(()),
            cgroup: None,
        })
    }

    fn signal(&mut self, pid: i32, signal: Signal) {
        let stubborn = {
            let mut st = self.state();
            st.ops.push(Op::Signal { pid, signal });
            st.stubborn
        };
        if signal == SIGTERM && !stubborn {
            self.exit(pid, ExitStatus::Code(0));
        }
    }

    fn kill_group(&mut self, pgid: i32) {
        self.state().ops.push(Op::KillGroup { pid: pgid });
        self.exit(pgid, ExitStatus::Signal(9));
    }

    fn release(&mut self, pgid: i32) -> Vec<i32> {
        self.state().escaped.remove(&pgid).unwrap_or_default()
    }

    fn alive(&self, pid: i32) -> bool {
        self.state().escaped_alive.contains(&pid)
    }

    fn memory(&mut self, pid: i32) -> Option<MemorySample> {
        let mut st = self.state();
        st.memory_reads += 1;
        Some(st.memory.get(&pid).copied().unwrap_or_default())
    }

    fn oom_kill(&mut self, pid: i32) -> Option<String> {
        self.state().oom.get(&pid).cloned()
    }

    fn cpu_ticks(&mut self, _pid: i32) -> Option<u64> {
        Some(0)
    }

    fn ticks_per_second(&self) -> f64 {
        100.0
    }

    fn rss(&self, _pid: i32) -> Option<u64> {
        None
    }

    fn http_ok(
        &self,
        _address: ListenAddress,
        _path: String,
        _timeout: Duration,
    ) -> BoxFuture<bool> {
        let ok = self.state().http_ok;
        Box::pin(async move { ok })
    }

    fn wait_http_ready(&self, _address: ListenAddress, _path: String) -> BoxFuture<()> {
        Box::pin(std::future::pending())
    }

    fn wait_for_connection(&self, _fds: Vec<std::os::fd::RawFd>) -> BoxFuture<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.state().wake = Some(tx);
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}
