//! One worker process and its slot: spawn, ready, notify messages, retire, exit.

use super::process::StderrTail;
use super::*;
use appvisor_contract::env;

/// How a new worker enters its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Entry {
    /// The slot is empty (first start, crash restart): it is the slot's worker
    /// from the start.
    Fill,
    /// A candidate of the next generation: it takes the slot from the current
    /// worker once ready.
    Replace,
}

/// The limits a serving worker is recycled at, drawn (with jitter) when it is
/// spawned: its age counts from its start.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// This worker's `requests` limit, jitter included.
    pub(super) requests: Option<u64>,
    /// This worker's `interval` deadline, jitter included.
    pub(super) age_deadline: Option<Instant>,
}

/// Where a worker is in its life. Each phase carries only its own deadlines, so
/// leaving a phase drops them: nothing to clear by hand.
#[derive(Debug)]
pub(super) enum Phase {
    /// Spawned, not ready yet.
    Starting {
        entry: Entry,
        /// Killed as a startup failure if not ready by then.
        startup_deadline: Instant,
        /// `ready = "delay:…"`: ready at this instant.
        ready_after: Option<Instant>,
        limits: Limits,
    },
    /// Ready and the slot's current worker.
    Serving {
        limits: Limits,
        /// `WATCHDOG=1` expected before this instant.
        watchdog_deadline: Option<Instant>,
        /// A trigger already asked for this worker's replacement.
        recycle_requested: bool,
    },
    /// Out of its slot; its exit is expected.
    Retiring(Retire),
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Retire {
    /// Sent `stop_signal`: it drains, and its group is SIGKILLed at `kill_at`.
    Draining { since: Instant, kill_at: Instant },
    /// Its group was SIGKILLed (drain too long, memory hard limit, never ready):
    /// the event was written then; its exit writes none.
    Killed,
}

pub(super) struct Worker {
    pub(super) pid: i32,
    pub(super) slot: u32,
    pub(super) generation: u64,
    pub(super) started: Instant,
    pub(super) phase: Phase,
    pub(super) status: Option<String>,
    pub(super) requests: u64,
    /// Sessions it handed to the store while draining (`X_APPVISOR_SESSIONS`).
    pub(super) sessions: Option<u64>,
    pub(super) tail: StderrTail,
    /// Its notify socket, kept open while it lives.
    pub(super) _resources: Box<dyn Send>,
    /// Its cgroup, for `appvisor status`.
    pub(super) cgroup: Option<String>,
}

impl Worker {
    pub(super) fn is_ready(&self) -> bool {
        matches!(self.phase, Phase::Serving { .. })
    }

    pub(super) fn is_retiring(&self) -> bool {
        matches!(self.phase, Phase::Retiring(_))
    }

    /// The slot's worker (serving, or filling an empty slot), not a candidate and
    /// not retiring.
    pub(super) fn is_current(&self) -> bool {
        matches!(
            self.phase,
            Phase::Serving { .. }
                | Phase::Starting {
                    entry: Entry::Fill,
                    ..
                }
        )
    }

    /// Serving and not yet marked for replacement: a trigger may fire for it.
    pub(super) fn triggerable(&self) -> bool {
        matches!(
            self.phase,
            Phase::Serving {
                recycle_requested: false,
                ..
            }
        )
    }

    pub(super) fn stderr_tail(&self) -> Vec<String> {
        self.tail.lock().unwrap().iter().cloned().collect()
    }
}

#[derive(Debug, Default)]
pub(super) struct Slot {
    pub(super) current: Option<i32>,
    pub(super) candidate: Option<i32>,
    /// A crashed worker is restarted at this instant.
    pub(super) restart_at: Option<Instant>,
    /// The delay before the last restart since the backoff last reset (`None`: no
    /// failure since — at the slot's start, or after a worker stayed up
    /// `stable_uptime`). See `crash.rs`.
    pub(super) backoff: Option<Duration>,
}

impl Pool {
    pub(super) fn spawn_worker(
        &mut self,
        slot: u32,
        generation: u64,
        entry: Entry,
    ) -> Result<i32, String> {
        self.spawn_seq += 1;
        let notify_name = format!("{}.{}.{}", self.app.name, slot, self.spawn_seq);
        let watchdog = self.app.health.watchdog;
        let mut env: Vec<(String, String)> = std::env::vars()
            // The supervisor's own systemd variables describe its sockets, not the
            // worker's: never inherited.
            .filter(|(k, _)| !env::SYSTEMD.contains(&k.as_str()))
            .collect();
        env.extend(self.app.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        env.extend(self.extra_env.iter().cloned());
        env.push((
            env::APPVISOR_SESSION_MODE.into(),
            self.app.sessions.mode.as_str().into(),
        ));
        env.push((
            env::APPVISOR_SESSION_TIMEOUT_MS.into(),
            self.app.sessions.timeout.as_millis().to_string(),
        ));
        if !self.sockets.is_empty() {
            env.push((env::LISTEN_FDS.into(), self.sockets.len().to_string()));
            let names: Vec<&str> = self
                .sockets
                .iter()
                .map(|s| s.listen.name.as_str())
                .collect();
            env.push((env::LISTEN_FDNAMES.into(), names.join(":")));
        }
        // Workers still alive (the ones this one replaces, or still draining): a
        // `handoff` worker waits for their sessions before loading from the store.
        let predecessors: Vec<String> = self.workers.keys().map(|p| p.to_string()).collect();
        env.push((env::APPVISOR_PREDECESSORS.into(), predecessors.join(",")));
        env.push((env::APPVISOR_APP.into(), self.app.name.clone()));
        env.push((env::APPVISOR_GENERATION.into(), generation.to_string()));
        env.push((env::APPVISOR_WORKER.into(), slot.to_string()));
        if let Some(w) = watchdog {
            env.push((env::WATCHDOG_USEC.into(), w.as_micros().to_string()));
        }
        let fds: Vec<i32> = self.sockets.iter().map(|s| s.raw_fd()).collect();
        let spawned = self.table.spawn(SpawnRequest {
            name: &notify_name,
            slot,
            generation,
            argv: &self.app.command,
            cwd: &self.app.cwd,
            env,
            listen_fds: &fds,
            watchdog: watchdog.is_some(),
            process: &self.app.process,
            exits: self.exit_tx.clone(),
            notify: self.notify_tx.clone(),
        })?;
        let pid = spawned.pid;

        let now = Instant::now();
        let ready_after = match &self.app.ready {
            ReadyCheck::Delay(d) => Some(now + *d),
            ReadyCheck::Http { path } => {
                self.spawn_ready_probe(pid, path.clone());
                None
            }
            ReadyCheck::Notify => None,
        };
        let rc = &self.app.recycle;
        let limits = Limits {
            requests: rc
                .requests
                .map(|l| schedule::requests_limit(l, rc.requests_jitter, &mut self.rng)),
            age_deadline: rc.interval.map(|i| {
                Instant::from_std(schedule::interval_deadline(
                    now.into_std(),
                    i,
                    rc.interval_jitter,
                    &mut self.rng,
                ))
            }),
        };
        let worker = Worker {
            pid,
            slot,
            generation,
            started: now,
            phase: Phase::Starting {
                entry,
                startup_deadline: now + self.app.recycle.startup_timeout,
                ready_after,
                limits,
            },
            status: None,
            requests: 0,
            sessions: None,
            tail: spawned.tail,
            _resources: spawned.resources,
            cgroup: spawned.cgroup,
        };
        self.workers.insert(pid, worker);
        let s = &mut self.slots[slot as usize];
        match entry {
            Entry::Replace => s.candidate = Some(pid),
            Entry::Fill => s.current = Some(pid),
        }
        let mut e = self.event(EventKind::Started);
        e = e.of_worker(slot, generation, pid);
        self.emit(e);
        Ok(pid)
    }

    /// `ready = "http:/path"`: GET the path on the first listen address until 2xx.
    fn spawn_ready_probe(&self, pid: i32, path: String) {
        let Some(address) = self.sockets.first().map(|s| s.listen.address.clone()) else {
            return;
        };
        let ready = self.table.wait_http_ready(address, path);
        let tx = self.internal_tx.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = ready => {
                    let _ = tx.send(Internal::ProbeOk(pid));
                }
                // The pool is gone: stop probing.
                () = tx.closed() => {}
            }
        });
    }

    /// Tells a worker to stop: `stop_signal` now, SIGKILL of its group later.
    pub(super) fn retire(&mut self, pid: i32) {
        let timeout = self.app.recycle.shutdown_timeout;
        let sig = self.app.recycle.stop_signal;
        let Some(w) = self.workers.get_mut(&pid) else {
            return;
        };
        if w.is_retiring() {
            // Already out of its slot: told to stop, or killed.
            return;
        }
        if let Some(slot) = self.slots.get_mut(w.slot as usize) {
            if slot.current == Some(pid) {
                slot.current = None;
            }
            if slot.candidate == Some(pid) {
                slot.candidate = None;
            }
        }
        let now = Instant::now();
        w.phase = Phase::Retiring(Retire::Draining {
            since: now,
            kill_at: now + timeout,
        });
        self.table.signal(pid, sig);
    }

    pub(super) fn on_ready(&mut self, pid: i32) {
        let watchdog = self.app.health.watchdog;
        let Some(w) = self.workers.get_mut(&pid) else {
            return;
        };
        let Phase::Starting { entry, limits, .. } = w.phase else {
            // Already ready, or retiring: nothing to do.
            return;
        };
        let now = Instant::now();
        w.phase = Phase::Serving {
            limits,
            watchdog_deadline: watchdog.map(|d| now + d),
            recycle_requested: false,
        };
        let startup_ms = (now - w.started).as_millis() as u64;
        let (slot, generation) = (w.slot, w.generation);
        self.note_memory_start(pid);
        match entry {
            Entry::Fill => {
                let mut e = self.event(EventKind::Ready);
                e = e.of_worker(slot, generation, pid);
                e.startup_ms = Some(startup_ms);
                self.emit(e);
                self.check_started();
            }
            Entry::Replace => {
                let s = &mut self.slots[slot as usize];
                let old = s.current.take();
                s.candidate = None;
                s.current = Some(pid);
                let Some(job) = self.job.as_mut() else { return };
                job.swaps.push((old, pid));
                let reason = job.reason.clone();
                let mut e = self.event(EventKind::Recycle).because(&reason);
                e.worker = Some(slot);
                e.generation = Some(generation);
                e.old_pid = old;
                e.new_pid = Some(pid);
                e.startup_ms = Some(startup_ms);
                self.recycles += 1;
                self.last_recycle = Some(LastRecycle {
                    time: e.time.clone(),
                    reason: reason.name().to_string(),
                    detail: reason.describe(),
                });
                self.emit(e);
                if let Some(old) = old {
                    if self.workers.get(&old).is_some_and(|w| !w.is_retiring()) {
                        self.retire(old);
                    }
                }
                self.advance_job();
            }
        }
    }

    pub(super) fn check_started(&mut self) {
        if self.start_waiters.is_empty() {
            return;
        }
        let all_ready = self.slots.iter().all(|s| {
            s.current
                .and_then(|p| self.workers.get(&p))
                .is_some_and(Worker::is_ready)
        });
        if all_ready {
            let pids: Vec<String> = self
                .slots
                .iter()
                .filter_map(|s| s.current)
                .map(|p| p.to_string())
                .collect();
            for w in self.start_waiters.drain(..) {
                let _ = w.send(Ok(format!(
                    "{}: started, pid {}",
                    self.app.name,
                    pids.join(", ")
                )));
            }
        }
    }

    pub(super) fn on_notify(&mut self, pid: i32, m: NotifyMessage) {
        let ready_by_notify = self.app.ready == ReadyCheck::Notify;
        let watchdog = self.app.health.watchdog;
        let Some(w) = self.workers.get_mut(&pid) else {
            return;
        };
        if let Some(s) = m.status {
            w.status = Some(s);
        }
        if m.sessions.is_some() {
            w.sessions = m.sessions;
        }
        let mut limit_hit = None;
        if let Some(n) = m.requests {
            if n != w.requests {
                self.last_activity = Instant::now();
            }
            w.requests = n;
            if let Phase::Serving {
                limits:
                    Limits {
                        requests: Some(limit),
                        ..
                    },
                recycle_requested: false,
                ..
            } = w.phase
            {
                limit_hit = schedule::requests_reached(n, limit);
            }
        }
        if m.watchdog {
            if let Phase::Serving {
                watchdog_deadline, ..
            } = &mut w.phase
            {
                *watchdog_deadline = watchdog.map(|d| Instant::now() + d);
            }
        }
        if m.stopping && !w.is_retiring() {
            w.status = Some("stopping".into());
        }
        if m.ready && ready_by_notify {
            self.on_ready(pid);
        }
        if let Some(reason) = limit_hit {
            self.recycle_worker(pid, reason);
        }
    }

    /// Processes started by worker `pid` left its group and outlive it, and with no
    /// cgroup nothing can kill them: an `escaped` event names them, and `status`
    /// lists them while they run.
    pub(super) fn on_escaped(&mut self, pid: i32, escaped: Vec<i32>) {
        let pids = escaped
            .iter()
            .map(i32::to_string)
            .collect::<Vec<_>>()
            .join(" ");
        let mut e = self.event(EventKind::Escaped);
        if let Some(w) = self.workers.get(&pid) {
            e = e.of_worker(w.slot, w.generation, pid);
        }
        e.detail = Some(format!(
            "pids {pids} started by worker {pid} left its process group and outlive it; \
             workers have no cgroup here, so nothing kills them: stop them yourself (`kill {pids}`)"
        ));
        self.emit(e);
        let table = &self.table;
        self.escaped.retain(|&p| table.alive(p));
        self.escaped.extend(escaped);
    }

    pub(super) fn on_exit(&mut self, exit: Exit) {
        let pid = exit.pid;
        // Before its cgroup goes: a SIGKILL nobody here sent may be the OOM killer's.
        let oom = match exit.status {
            ExitStatus::Signal(9) => self.table.oom_kill(pid),
            _ => None,
        };
        // Whatever the worker left in its group goes with it: an orphaned child
        // must not keep the port or the files busy.
        self.table.kill_group(pid);
        let escaped = self.table.release(pid);
        if !escaped.is_empty() {
            self.on_escaped(pid, escaped);
        }
        let Some(w) = self.workers.remove(&pid) else {
            return;
        };
        let now = Instant::now();
        let uptime_ms = (now - w.started).as_millis() as u64;
        let kind = match w.phase {
            Phase::Retiring(_) => EventKind::Retired,
            Phase::Serving { .. } => EventKind::Crashed,
            Phase::Starting { .. } => EventKind::StartupFailed,
        };
        let mut e = Event::new(&self.app.name, kind);
        e = e.of_worker(w.slot, w.generation, pid);
        e.uptime_ms = Some(uptime_ms);
        match exit.status {
            ExitStatus::Code(c) => e.exit_code = Some(c),
            ExitStatus::Signal(s) => e.signal = Some(signal_name(s)),
        }
        match w.phase {
            Phase::Retiring(retire) => {
                if let Retire::Draining { since, .. } = retire {
                    e.sessions = w.sessions;
                    e.drain_ms = Some((now - since).as_millis() as u64);
                    e.detail = Some(format!("exited after drain ({})", exit.status));
                    self.emit(e);
                }
                if self.job.as_ref().and_then(|j| j.waiting_for_stop) == Some(pid) {
                    self.on_old_worker_gone(w.slot);
                }
                self.check_stopped();
            }
            Phase::Starting {
                entry: Entry::Replace,
                ..
            } => {
                let why = format!(
                    "the new worker exited before it was ready ({})",
                    exit.status
                );
                e.detail = Some(why.clone());
                e.stderr_tail = Some(w.stderr_tail());
                self.emit(e);
                if let Some(s) = self.slots.get_mut(w.slot as usize) {
                    s.candidate = None;
                }
                if !self.count_crash() {
                    self.finish_job(Err(why));
                    if self
                        .slots
                        .get(w.slot as usize)
                        .is_some_and(|s| s.current.is_none())
                    {
                        self.schedule_restart(w.slot, Failure::Startup);
                    }
                }
            }
            Phase::Serving { .. }
            | Phase::Starting {
                entry: Entry::Fill, ..
            } => {
                e.detail = Some(format!("exited unexpectedly ({})", exit.status));
                if let Some(record) = oom {
                    e.reason = Some("oom_killed".into());
                    e.detail = Some(format!(
                        "oom_killed: the kernel's OOM killer killed it (SIGKILL; {record})"
                    ));
                }
                e.stderr_tail = Some(w.stderr_tail());
                self.emit(e);
                let stable = Duration::from_millis(uptime_ms) >= self.app.failure.stable_uptime;
                if let Some(slot) = self.slots.get_mut(w.slot as usize) {
                    slot.current = None;
                    if stable {
                        slot.backoff = None;
                    }
                }
                let failure = if matches!(w.phase, Phase::Serving { .. }) {
                    Failure::Crash
                } else {
                    Failure::Startup
                };
                self.on_crash_of_slot(w.slot, failure);
            }
        }
    }
}
