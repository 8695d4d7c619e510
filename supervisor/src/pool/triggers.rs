//! The pool's reactions to what triggers decide: file watch, memory, health,
//! schedule, idle.

use super::*;

impl Pool {
    // ---- triggers -------------------------------------------------------------

    /// (Re)starts the file watcher for the current settings, off the pool's task.
    pub(super) fn start_watcher(&mut self) {
        self.watcher = None;
        self.watcher_epoch += 1;
        if !self.app.watch.enabled {
            return;
        }
        let (name, cwd, cfg) = (
            self.app.name.clone(),
            self.app.cwd.clone(),
            self.app.watch.clone(),
        );
        let (wtx, itx) = (self.watch_tx.clone(), self.internal_tx.clone());
        tokio::spawn(async move {
            let w = AppWatcher::start(&name, &cwd, &cfg, wtx)
                .await
                .map_err(|e| e.to_string());
            let _ = itx.send(Internal::Watcher(w));
        });
    }

    pub(super) fn on_watcher(&mut self, w: Result<AppWatcher, String>) {
        match w {
            Ok(w) if self.shutdown_waiter.is_none() => {
                let stats = w.stats();
                let mut e = self.event(EventKind::Watching);
                e.detail = Some(format!(
                    "{} files in {} directories ({}), set up in {} ms",
                    stats.files,
                    stats.directories,
                    stats.backend,
                    stats.setup.as_millis()
                ));
                self.emit(e);
                self.watcher = Some(w);
            }
            Ok(_) => {}
            Err(msg) => self.emit(self.event(EventKind::WatchFailed).detail(msg)),
        }
    }

    pub(super) fn on_watch(&mut self, d: WatchDecision) {
        match d {
            WatchDecision::Recycle(reason) => self.request_recycle(reason, None, None),
            WatchDecision::Soft { paths, count } => {
                let sig = self.app.watch.soft_signal;
                let pids: Vec<i32> = self
                    .workers
                    .values()
                    .filter(|w| w.is_current())
                    .map(|w| w.pid)
                    .collect();
                for pid in &pids {
                    self.table.signal(*pid, sig);
                }
                let mut e = self.event(EventKind::SoftChange);
                e.detail = Some(format!(
                    "{} to {} worker(s): {}",
                    sig.name,
                    pids.len(),
                    list_paths(&paths, count)
                ));
                self.emit(e);
            }
            WatchDecision::Ignored { paths, count } => {
                let mut e = self.event(EventKind::IgnoredChange);
                e.detail = Some(format!("content unchanged: {}", list_paths(&paths, count)));
                self.emit(e);
            }
            WatchDecision::Warning { detail } => {
                self.emit(self.event(EventKind::WatchWarning).detail(detail))
            }
        }
    }

    /// Schedules, memory checks and the HTTP probe for the current settings.
    pub(super) fn arm_app_timers(&mut self) {
        let now = Instant::now();
        self.next_schedule = (!self.app.recycle.schedule.is_empty()).then(|| {
            ScheduleTimer::arm(
                &self.app.recycle.schedule,
                &jiff::Zoned::now(),
                now.into_std(),
            )
        });
        let rc = &self.app.recycle;
        let memory = rc.private_memory.is_some()
            || rc.virtual_memory.is_some()
            || rc.rss.is_some()
            || rc.memory_hard_limit.is_some()
            || rc.app_memory.is_some();
        let origin = self.sampler.origin;
        self.next_memory_check =
            memory.then(|| sample::next_tick(origin, now, rc.memory_check_interval));
        self.next_probe = self.probe_after(now);
    }

    /// When the next HTTP health probe is due, if one is configured.
    pub(super) fn probe_after(&self, now: Instant) -> Option<Instant> {
        self.app
            .health
            .http_probe
            .as_ref()
            .map(|p| now + p.interval)
    }

    pub(super) fn check_memory(&mut self) {
        let pids: Vec<i32> = self
            .workers
            .values()
            .filter(|w| w.triggerable())
            .map(|w| w.pid)
            .collect();
        for pid in pids {
            let Some(sample) = self.memory_for_check(pid) else {
                continue;
            };
            match memory::check(&sample, &self.app.recycle) {
                MemoryVerdict::Ok => {}
                MemoryVerdict::Recycle(reason) => self.recycle_worker(pid, reason),
                MemoryVerdict::HardKill { bytes, limit } => self.hard_kill(pid, bytes, limit),
            }
        }
        self.check_app_memory();
    }

    /// `memory_hard_limit`: no drain. The slot starts a fresh worker at once.
    pub(super) fn hard_kill(&mut self, pid: i32, bytes: u64, limit: u64) {
        let Some(w) = self.workers.get_mut(&pid) else {
            return;
        };
        let reason = RecycleReason::Memory {
            kind: "memory_hard_limit".into(),
            bytes,
            limit,
        };
        w.phase = Phase::Retiring(Retire::Killed);
        let slot = w.slot;
        let generation = w.generation;
        let mut e = self.event(EventKind::Killed).because(&reason);
        e = e.of_worker(slot, generation, pid);
        if let Some(s) = self.slots.get_mut(slot as usize) {
            if s.current == Some(pid) {
                s.current = None;
                s.restart_at = Some(Instant::now());
            }
        }
        self.emit(e);
        self.table.kill_group(pid);
    }

    pub(super) fn start_health_probe(&mut self) {
        let Some(probe) = self.app.health.http_probe.clone() else {
            return;
        };
        let Some(address) = self.sockets.first().map(|s| s.listen.address.clone()) else {
            return;
        };
        self.probe_in_flight = true;
        let tx = self.internal_tx.clone();
        let ok = self.table.http_ok(address, probe.path, probe.timeout);
        tokio::spawn(async move {
            let _ = tx.send(Internal::HealthProbe(ok.await));
        });
    }

    pub(super) fn on_health_probe(&mut self, ok: bool) {
        self.probe_in_flight = false;
        let Some(probe) = self.app.health.http_probe.clone() else {
            return;
        };
        if ok {
            self.probe_failures = 0;
            return;
        }
        self.probe_failures += 1;
        if self.probe_failures >= probe.failures && self.job.is_none() && self.running() {
            self.probe_failures = 0;
            let reason = RecycleReason::Unhealthy {
                detail: format!(
                    "HTTP probe GET {} failed {} times in a row (timeout {})",
                    probe.path,
                    probe.failures,
                    humanize(probe.timeout)
                ),
            };
            self.request_recycle(reason, None, None);
        }
    }

    /// Idle: wait for a connection on any listening socket, then start again.
    pub(super) fn arm_wake(&mut self) {
        let fds: Vec<i32> = self.sockets.iter().map(|s| s.raw_fd()).collect();
        let mut e = self.event(EventKind::IdleStop);
        e.detail = Some(format!(
            "no requests for {}; workers stopped, sockets kept: the next connection starts them",
            humanize(self.app.recycle.idle_timeout.unwrap_or_default())
        ));
        self.emit(e);
        let tx = self.internal_tx.clone();
        let connection = self.table.wait_for_connection(fds);
        self.wake_task = Some(tokio::spawn(async move {
            connection.await;
            let _ = tx.send(Internal::Wake);
        }));
    }

    pub(super) fn on_wake(&mut self) {
        self.wake_task = None;
        if self.state != AppState::Idle || self.shutdown_waiter.is_some() {
            return;
        }
        self.state = AppState::Running;
        self.emit(
            self.event(EventKind::OnDemandStart)
                .detail("a connection arrived while idle"),
        );
        self.start_all();
    }
    /// No request was reported for `idle_timeout`. Workers that do not report
    /// requests (no SDK, no `X_APPVISOR_REQUESTS`) could still be busy, so their
    /// CPU time decides: more than 1 % of the window counts as activity.
    pub(super) fn on_idle_deadline(&mut self, idle: Duration, now: Instant) {
        // Per pid: a worker started since the last check counts from zero, which
        // errs on the side of "busy".
        let now_ticks: HashMap<i32, u64> = self
            .workers
            .values()
            .filter(|w| w.is_current())
            .map(|w| w.pid)
            .collect::<Vec<_>>()
            .into_iter()
            .filter_map(|pid| Some((pid, self.table.cpu_ticks(pid)?)))
            .collect();
        let used: u64 = now_ticks
            .iter()
            .map(|(pid, t)| t.saturating_sub(self.idle_cpu_mark.get(pid).copied().unwrap_or(0)))
            .sum();
        self.idle_cpu_mark = now_ticks;
        let window_ticks = idle.as_secs_f64() * self.table.ticks_per_second();
        if used as f64 > window_ticks * 0.01 {
            self.last_activity = now;
            return;
        }
        self.stop_all(StopCause::Idle);
    }

    /// The schedule's monotonic deadline passed; `wall` and `mono` are the clocks
    /// read now (the seam a test jumps the wall clock through). [`ScheduleTimer`]
    /// decides whether a time of day is due (once, whatever the wall clock did
    /// meanwhile) and re-arms itself.
    pub(super) fn on_schedule_deadline(&mut self, wall: &jiff::Zoned, mono: Instant) {
        if let Some(at) = self
            .next_schedule
            .as_mut()
            .and_then(|timer| timer.on_deadline(wall, mono.into_std()))
        {
            self.on_schedule(at);
        }
    }

    /// A time of day `at` is due: recycle the app.
    pub(super) fn on_schedule(&mut self, at: jiff::Zoned) {
        let reason = RecycleReason::Schedule {
            at: at.strftime("%H:%M").to_string(),
        };
        self.request_recycle(reason, None, None);
    }
}

pub(super) fn list_paths(paths: &[String], count: usize) -> String {
    let mut s = paths.join(", ");
    if count > paths.len() {
        s.push_str(&format!(" (+{} more)", count - paths.len()));
    }
    s
}
