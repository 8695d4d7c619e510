//! The pool's deadlines: startup, ready delay, kill, age, watchdog, restart, and
//! the one timer that sleeps until the nearest.

use super::*;

impl Pool {
    // ---- time -----------------------------------------------------------------

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let workers = self.workers.values().flat_map(|w| match w.phase {
            Phase::Starting {
                startup_deadline,
                ready_after,
                ..
            } => [Some(startup_deadline), ready_after],
            Phase::Serving {
                limits,
                watchdog_deadline,
                recycle_requested: false,
            } => [limits.age_deadline, watchdog_deadline],
            Phase::Serving { .. } | Phase::Retiring(Retire::Killed) => [None, None],
            Phase::Retiring(Retire::Draining { kill_at, .. }) => [Some(kill_at), None],
        });
        let slots = self.slots.iter().map(|s| s.restart_at);
        let running = self.running();
        let idle = self
            .app
            .recycle
            .idle_timeout
            .filter(|_| running && self.job.is_none())
            .map(|t| self.last_activity + t);
        let app = [
            self.next_schedule
                .as_ref()
                .and_then(ScheduleTimer::deadline)
                .map(Instant::from_std),
            self.next_memory_check.filter(|_| running),
            self.next_probe.filter(|_| running && !self.probe_in_flight),
            idle,
            self.sample_deadline(),
        ];
        workers.chain(slots).chain(app).flatten().min()
    }

    pub(super) fn on_deadlines(&mut self) {
        let now = Instant::now();
        let mut ready = Vec::new();
        let mut late = Vec::new();
        let mut kill = Vec::new();
        let mut aged = Vec::new();
        let mut hung = Vec::new();
        for w in self.workers.values() {
            match w.phase {
                Phase::Starting {
                    startup_deadline,
                    ready_after,
                    ..
                } => {
                    if ready_after.is_some_and(|t| t <= now) {
                        ready.push(w.pid);
                    } else if startup_deadline <= now {
                        late.push(w.pid);
                    }
                }
                Phase::Serving {
                    limits,
                    watchdog_deadline,
                    recycle_requested: false,
                } => {
                    if let (Some(t), Some(limit)) = (limits.age_deadline, self.app.recycle.interval)
                    {
                        if t <= now {
                            aged.push((w.pid, now - w.started, limit.max(t - w.started)));
                        }
                    }
                    if let (Some(t), Some(d)) = (watchdog_deadline, self.app.health.watchdog) {
                        if t <= now {
                            hung.push((w.pid, d));
                        }
                    }
                }
                Phase::Retiring(Retire::Draining { kill_at, .. }) if kill_at <= now => {
                    kill.push(w.pid);
                }
                Phase::Serving { .. } | Phase::Retiring(_) => {}
            }
        }
        for pid in ready {
            self.on_ready(pid);
        }
        for pid in late {
            self.on_startup_timeout(pid);
        }
        for pid in kill {
            self.kill_after_timeout(pid, now);
        }
        for (pid, age, limit) in aged {
            if let Some(reason) = schedule::age_reached(age, limit) {
                self.recycle_worker(pid, reason);
            }
        }
        for (pid, d) in hung {
            let reason = RecycleReason::Unhealthy {
                detail: format!("no WATCHDOG=1 for {} (watchdog)", humanize(d)),
            };
            self.recycle_worker(pid, reason);
        }
        let restart: Vec<u32> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.restart_at.is_some_and(|t| t <= now))
            .map(|(i, _)| i as u32)
            .collect();
        for slot in restart {
            self.slots[slot as usize].restart_at = None;
            if !self.running() || self.slots[slot as usize].current.is_some() {
                continue;
            }
            self.generation += 1;
            let generation = self.generation;
            if let Err(msg) = self.spawn_worker(slot, generation, Entry::Fill) {
                self.emit(self.event(EventKind::StartupFailed).detail(msg));
                self.on_crash_of_slot(slot, Failure::Startup);
            }
        }
        if self
            .next_schedule
            .as_ref()
            .and_then(ScheduleTimer::deadline)
            .is_some_and(|t| Instant::from_std(t) <= now)
        {
            self.on_schedule_deadline(&jiff::Zoned::now(), now);
        }
        // Before the memory check: it reuses this tick's sample.
        if self.sample_deadline().is_some_and(|t| t <= now) {
            self.sample_tick(now);
        }
        if self.next_memory_check.is_some_and(|t| t <= now) {
            self.next_memory_check = Some(sample::next_tick(
                self.sampler.origin,
                now,
                self.app.recycle.memory_check_interval,
            ));
            self.check_memory();
        }
        if self.next_probe.is_some_and(|t| t <= now) && !self.probe_in_flight {
            self.next_probe = self.probe_after(now);
            if self.running() && self.job.is_none() {
                self.start_health_probe();
            }
        }
        if let Some(idle) = self.app.recycle.idle_timeout {
            if self.running() && self.job.is_none() && self.last_activity + idle <= now {
                self.on_idle_deadline(idle, now);
            }
        }
    }
    pub(super) fn kill_after_timeout(&mut self, pid: i32, now: Instant) {
        let Some(w) = self.workers.get_mut(&pid) else {
            return;
        };
        let Phase::Retiring(Retire::Draining { since, .. }) = w.phase else {
            return;
        };
        w.phase = Phase::Retiring(Retire::Killed);
        let mut e = Event::new(&self.app.name, EventKind::Killed);
        e = e.of_worker(w.slot, w.generation, pid);
        e.drain_ms = Some((now - since).as_millis() as u64);
        e.detail = Some(format!(
            "still running {} after {}; SIGKILL to its process group",
            humanize(self.app.recycle.shutdown_timeout),
            self.app.recycle.stop_signal.name
        ));
        self.emit(e);
        self.table.kill_group(pid);
    }

    pub(super) fn on_startup_timeout(&mut self, pid: i32) {
        let timeout = self.app.recycle.startup_timeout;
        let Some(w) = self.workers.get_mut(&pid) else {
            return;
        };
        let tail = w.stderr_tail();
        let mut e = Event::new(&self.app.name, EventKind::StartupFailed);
        e = e.of_worker(w.slot, w.generation, pid);
        e.detail = Some(format!(
            "not ready within startup_timeout {}; killed, the previous generation keeps serving",
            humanize(timeout)
        ));
        e.stderr_tail = Some(tail);
        // Killed without a drain: it never served. Its exit is then expected.
        w.phase = Phase::Retiring(Retire::Killed);
        let slot = w.slot;
        let mut was_candidate = false;
        if let Some(s) = self.slots.get_mut(slot as usize) {
            was_candidate = s.candidate == Some(pid);
            if was_candidate {
                s.candidate = None;
            }
            if s.current == Some(pid) {
                s.current = None;
            }
        }
        self.emit(e);
        self.table.kill_group(pid);
        if self.count_crash() {
            return;
        }
        if was_candidate {
            self.finish_job(Err(format!(
                "the new worker was not ready within {}",
                humanize(timeout)
            )));
        }
        if self
            .slots
            .get(slot as usize)
            .is_some_and(|s| s.current.is_none() && s.candidate.is_none())
        {
            self.schedule_restart(slot, Failure::Startup);
        }
    }
}

pub(super) async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
