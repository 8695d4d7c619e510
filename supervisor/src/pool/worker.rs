//! One worker process and its slot: spawn, ready, notify messages, retire, exit.

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    /// Serving in its slot.
    Current,
    /// The next generation for its slot, not yet ready.
    Candidate,
    /// Told to stop; draining.
    Retiring,
}

#[derive(Debug)]
pub(super) struct Worker {
    pub(super) pid: i32,
    pub(super) slot: u32,
    pub(super) generation: u64,
    pub(super) role: Role,
    pub(super) started: Instant,
    pub(super) ready_at: Option<Instant>,
    /// Must be ready by then.
    pub(super) startup_deadline: Option<Instant>,
    /// `ready = "delay:…"`: ready at this instant.
    pub(super) ready_after: Option<Instant>,
    pub(super) retire_started: Option<Instant>,
    pub(super) kill_at: Option<Instant>,
    pub(super) killed: bool,
    pub(super) status: Option<String>,
    pub(super) requests: u64,
    /// This worker's `requests` limit, jitter included.
    pub(super) request_limit: Option<u64>,
    /// This worker's `interval` deadline, jitter included.
    pub(super) age_deadline: Option<Instant>,
    /// `WATCHDOG=1` expected before this instant.
    pub(super) watchdog_deadline: Option<Instant>,
    /// A trigger already asked for this worker's replacement.
    pub(super) recycle_requested: bool,
    /// Sessions it handed to the store while draining (`X_APPVISOR_SESSIONS`).
    pub(super) sessions: Option<u64>,
    pub(super) tail: Arc<Mutex<VecDeque<String>>>,
    pub(super) _notify: NotifySocket,
}

impl Worker {
    pub(super) fn is_ready(&self) -> bool {
        self.ready_at.is_some()
    }

    /// Serving and not yet marked for replacement: a trigger may fire for it.
    pub(super) fn triggerable(&self) -> bool {
        self.role == Role::Current && self.is_ready() && !self.recycle_requested
    }
}

#[derive(Debug, Default)]
pub(super) struct Slot {
    pub(super) current: Option<i32>,
    pub(super) candidate: Option<i32>,
    /// A crashed worker is restarted at this instant.
    pub(super) restart_at: Option<Instant>,
    pub(super) backoff: Duration,
}

impl Pool {
    // ---- workers --------------------------------------------------------------

    pub(super) fn spawn_worker(
        &mut self,
        slot: u32,
        generation: u64,
        role: Role,
    ) -> Result<i32, String> {
        self.spawn_seq += 1;
        let notify_name = format!("{}.{}.{}", self.app.name, slot, self.spawn_seq);
        let mut notify = NotifySocket::bind(&self.ctx.run_dir, &notify_name).map_err(|e| {
            format!(
                "cannot create the notify socket in {}: {e}",
                self.ctx.run_dir.display()
            )
        })?;
        let watchdog = self.app.health.watchdog;
        let mut env: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| {
                !matches!(
                    k.as_str(),
                    "LISTEN_FDS"
                        | "LISTEN_PID"
                        | "LISTEN_FDNAMES"
                        | "NOTIFY_SOCKET"
                        | "WATCHDOG_USEC"
                        | "WATCHDOG_PID"
                )
            })
            .collect();
        env.extend(self.app.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        env.extend(self.ctx.extra_env.iter().cloned());
        env.push((
            "APPVISOR_SESSION_MODE".into(),
            self.app.sessions.mode.as_str().into(),
        ));
        env.push((
            "APPVISOR_SESSION_TIMEOUT_MS".into(),
            self.app.sessions.timeout.as_millis().to_string(),
        ));
        if !self.sockets.is_empty() {
            env.push(("LISTEN_FDS".into(), self.sockets.len().to_string()));
            let names: Vec<&str> = self
                .sockets
                .iter()
                .map(|s| s.listen.name.as_str())
                .collect();
            env.push(("LISTEN_FDNAMES".into(), names.join(":")));
        }
        env.push(("NOTIFY_SOCKET".into(), notify.env_value.clone()));
        // Workers still alive (the ones this one replaces, or still draining): a
        // `handoff` worker waits for their sessions before loading from the store.
        let predecessors: Vec<String> = self.workers.keys().map(|p| p.to_string()).collect();
        env.push(("APPVISOR_PREDECESSORS".into(), predecessors.join(",")));
        env.push(("APPVISOR_APP".into(), self.app.name.clone()));
        env.push(("APPVISOR_GENERATION".into(), generation.to_string()));
        env.push(("APPVISOR_WORKER".into(), slot.to_string()));
        if let Some(w) = watchdog {
            env.push(("WATCHDOG_USEC".into(), w.as_micros().to_string()));
        }
        let fds: Vec<i32> = self.sockets.iter().map(|s| s.raw_fd()).collect();
        let spec = SpawnSpec {
            argv: &self.app.command,
            cwd: &self.app.cwd,
            env,
            listen_fds: &fds,
            watchdog: watchdog.is_some(),
        };
        let spawned = spawn(&spec).map_err(|e| e.to_string())?;
        let pid = spawned.pid;
        // Register before yielding (see reaper's invariant).
        let itx = self.internal_tx.clone();
        let (etx, mut erx) = mpsc::unbounded_channel();
        self.ctx.reaper.watch(pid, etx);
        tokio::spawn(async move {
            if let Some(exit) = erx.recv().await {
                let _ = itx.send(Internal::Exit(exit));
            }
        });
        self.ctx.guard.protect(pid);
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        self.ctx
            .log
            .attach(pid, spawned.stdout, spawned.stderr, tail.clone());
        notify.forward(pid, pid, self.notify_tx.clone());

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
        let request_limit = rc
            .requests
            .map(|l| schedule::requests_limit(l, rc.requests_jitter, &mut self.rng));
        let age_deadline = rc.interval.map(|i| {
            Instant::from_std(schedule::interval_deadline(
                now.into_std(),
                i,
                rc.interval_jitter,
                &mut self.rng,
            ))
        });
        let worker = Worker {
            pid,
            slot,
            generation,
            role,
            started: now,
            ready_at: None,
            startup_deadline: Some(now + self.app.recycle.startup_timeout),
            ready_after,
            retire_started: None,
            kill_at: None,
            killed: false,
            status: None,
            requests: 0,
            request_limit,
            age_deadline,
            watchdog_deadline: None,
            recycle_requested: false,
            sessions: None,
            tail,
            _notify: notify,
        };
        self.workers.insert(pid, worker);
        let s = &mut self.slots[slot as usize];
        match role {
            Role::Candidate => s.candidate = Some(pid),
            _ => s.current = Some(pid),
        }
        let mut e = self.event(EventKind::Started);
        e = e.of_worker(slot, generation, pid);
        self.emit(e);
        Ok(pid)
    }

    /// `ready = "http:/path"`: GET the path on the first listen address until 2xx.
    pub(super) fn spawn_ready_probe(&self, pid: i32, path: String) {
        let Some(address) = self.sockets.first().map(|s| s.listen.address.clone()) else {
            return;
        };
        let tx = self.internal_tx.clone();
        tokio::spawn(async move {
            loop {
                if tx.is_closed() {
                    return;
                }
                if crate::probe::http_ok(&address, &path, Duration::from_secs(2)).await {
                    let _ = tx.send(Internal::ProbeOk(pid));
                    return;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        });
    }

    pub(super) fn signal(&self, pid: i32, sig: i32) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(pid, sig) };
    }

    pub(super) fn kill_group(&self, pgid: i32) {
        // SAFETY: as above; a negative pid names the process group.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
    }

    /// Tells a worker to stop: `stop_signal` now, SIGKILL of its group later.
    pub(super) fn retire(&mut self, pid: i32) {
        let timeout = self.app.recycle.shutdown_timeout;
        let sig = self.app.recycle.stop_signal.number;
        let Some(w) = self.workers.get_mut(&pid) else {
            return;
        };
        if let Some(slot) = self.slots.get_mut(w.slot as usize) {
            if slot.current == Some(pid) {
                slot.current = None;
            }
            if slot.candidate == Some(pid) {
                slot.candidate = None;
            }
        }
        w.role = Role::Retiring;
        let now = Instant::now();
        w.retire_started = Some(now);
        w.kill_at = Some(now + timeout);
        w.startup_deadline = None;
        w.ready_after = None;
        w.watchdog_deadline = None;
        w.age_deadline = None;
        self.signal(pid, sig);
    }

    pub(super) fn on_ready(&mut self, pid: i32) {
        let watchdog = self.app.health.watchdog;
        let Some(w) = self.workers.get_mut(&pid) else {
            return;
        };
        if w.ready_at.is_some() || w.role == Role::Retiring {
            return;
        }
        let now = Instant::now();
        w.ready_at = Some(now);
        w.startup_deadline = None;
        w.ready_after = None;
        w.watchdog_deadline = watchdog.map(|d| now + d);
        let startup_ms = (now - w.started).as_millis() as u64;
        let (slot, generation, role) = (w.slot, w.generation, w.role);
        match role {
            Role::Current => {
                let mut e = self.event(EventKind::Ready);
                e = e.of_worker(slot, generation, pid);
                e.startup_ms = Some(startup_ms);
                self.emit(e);
                self.check_started();
            }
            Role::Candidate => {
                let s = &mut self.slots[slot as usize];
                let old = s.current.take();
                s.candidate = None;
                s.current = Some(pid);
                if let Some(w) = self.workers.get_mut(&pid) {
                    w.role = Role::Current;
                }
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
                    if self
                        .workers
                        .get(&old)
                        .is_some_and(|w| w.role != Role::Retiring)
                    {
                        self.retire(old);
                    }
                }
                self.advance_job();
            }
            Role::Retiring => {}
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
            if let Some(limit) = w.request_limit {
                if w.triggerable() {
                    limit_hit = schedule::requests_reached(n, limit);
                }
            }
        }
        if m.watchdog && w.role != Role::Retiring && w.is_ready() {
            w.watchdog_deadline = watchdog.map(|d| Instant::now() + d);
        }
        if m.stopping && w.role != Role::Retiring {
            w.status = Some("stopping".into());
        }
        if m.ready && ready_by_notify {
            self.on_ready(pid);
        }
        if let Some(reason) = limit_hit {
            self.recycle_worker(pid, reason);
        }
    }

    pub(super) fn on_exit(&mut self, exit: Exit) {
        let pid = exit.pid;
        // Whatever the worker left in its group goes with it: an orphaned child
        // must not keep the port or the files busy.
        self.kill_group(pid);
        self.ctx.guard.release(pid);
        let Some(w) = self.workers.remove(&pid) else {
            return;
        };
        let now = Instant::now();
        let uptime_ms = (now - w.started).as_millis() as u64;
        let tail: Vec<String> = w.tail.lock().unwrap().iter().cloned().collect();
        let kind = match w.role {
            Role::Retiring => EventKind::Retired,
            Role::Current if w.is_ready() => EventKind::Crashed,
            Role::Current | Role::Candidate => EventKind::StartupFailed,
        };
        let mut e = Event::new(&self.app.name, kind);
        e = e.of_worker(w.slot, w.generation, pid);
        e.uptime_ms = Some(uptime_ms);
        match exit.status {
            ExitStatus::Code(c) => e.exit_code = Some(c),
            ExitStatus::Signal(s) => e.signal = Some(signal_name(s)),
        }
        match w.role {
            Role::Retiring => {
                if !w.killed {
                    e.sessions = w.sessions;
                    e.drain_ms = w.retire_started.map(|t| (now - t).as_millis() as u64);
                    e.detail = Some(format!("exited after drain ({})", exit.status));
                    self.emit(e);
                }
                if self.job.as_ref().and_then(|j| j.waiting_for_stop) == Some(pid) {
                    // Non-overlapped recycle: the old one is gone; start the new.
                    let job = self.job.as_mut().unwrap();
                    job.waiting_for_stop = None;
                    let generation = job.generation;
                    let slot = w.slot;
                    if let Err(msg) = self.spawn_worker(slot, generation, Role::Candidate) {
                        self.emit(self.event(EventKind::StartupFailed).detail(msg.clone()));
                        if !self.count_crash() {
                            self.finish_job(Err(msg));
                            self.schedule_restart(slot);
                        }
                    }
                }
                self.check_stopped();
            }
            Role::Candidate => {
                let why = format!(
                    "the new worker exited before it was ready ({})",
                    exit.status
                );
                e.detail = Some(why.clone());
                e.stderr_tail = Some(tail);
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
                        self.schedule_restart(w.slot);
                    }
                }
            }
            Role::Current => {
                e.detail = Some(format!("exited unexpectedly ({})", exit.status));
                e.stderr_tail = Some(tail);
                self.emit(e);
                let stable = Duration::from_millis(uptime_ms) >= self.app.failure.stable_uptime;
                if let Some(slot) = self.slots.get_mut(w.slot as usize) {
                    slot.current = None;
                    if stable {
                        slot.backoff = Duration::ZERO;
                    }
                }
                self.on_crash_of_slot(w.slot);
            }
        }
    }
}
