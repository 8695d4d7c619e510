//! The recycle job: slot after slot, `batch` of them at once, and requests that
//! coalesce into one follow-up.

use super::*;

#[derive(Debug)]
pub(super) struct RecycleJob {
    pub(super) reason: RecycleReason,
    pub(super) generation: u64,
    /// Slots still to recycle, in order.
    pub(super) slots: VecDeque<u32>,
    /// Non-overlapped: the slot's old worker was told to stop; start the candidate
    /// when it is gone.
    pub(super) waiting_for_stop: Option<i32>,
    pub(super) started: Instant,
    pub(super) swaps: Vec<(Option<i32>, i32)>,
    pub(super) waiters: Vec<oneshot::Sender<Reply>>,
}

/// Recycle requests that arrived while a job ran: done once, after it.
#[derive(Debug)]
pub(super) struct Pending {
    pub(super) reason: RecycleReason,
    pub(super) slots: BTreeSet<u32>,
    pub(super) waiters: Vec<oneshot::Sender<Reply>>,
}

impl Pool {
    /// `slots: None` = every slot.
    pub(super) fn request_recycle(
        &mut self,
        reason: RecycleReason,
        slots: Option<Vec<u32>>,
        done: Option<oneshot::Sender<Reply>>,
    ) {
        if self.state == AppState::Idle && self.shutdown_waiter.is_none() {
            if let Some(done) = done {
                let _ = done.send(Ok(format!(
                    "{}: idle; the next connection starts a fresh generation",
                    self.app.name
                )));
            }
            return;
        }
        if !self.running() {
            if let Some(done) = done {
                let _ = done.send(Err(format!(
                    "{}: not running ({}); `appvisor start {}` first",
                    self.app.name,
                    self.run_state(),
                    self.app.name
                )));
            }
            return;
        }
        let slots: Vec<u32> = slots.unwrap_or_else(|| (0..self.slots.len() as u32).collect());
        if self.job.is_some() {
            // Coalesce: one follow-up recycle, whatever number of requests arrive.
            self.emit(
                self.event(EventKind::RecycleQueued)
                    .because(&reason)
                    .detail(format!(
                        "{} — after the recycle under way (one follow-up at most)",
                        reason.describe()
                    )),
            );
            let p = self.pending.get_or_insert_with(|| Pending {
                reason: reason.clone(),
                slots: BTreeSet::new(),
                waiters: Vec::new(),
            });
            p.slots.extend(slots);
            if let Some(done) = done {
                p.waiters.push(done);
            }
            return;
        }
        self.begin_job(reason, slots, done.into_iter().collect());
    }

    pub(super) fn begin_job(
        &mut self,
        reason: RecycleReason,
        slots: Vec<u32>,
        waiters: Vec<oneshot::Sender<Reply>>,
    ) {
        if reason != RecycleReason::WatchOverflow
            && !matches!(
                reason,
                RecycleReason::FileChange { .. } | RecycleReason::SoftChangeLimit { .. }
            )
        {
            if let Some(w) = &self.watcher {
                w.recycled();
            }
        }
        self.generation += 1;
        self.job = Some(RecycleJob {
            reason,
            generation: self.generation,
            slots: slots
                .into_iter()
                .filter(|s| (*s as usize) < self.slots.len())
                .collect(),
            waiting_for_stop: None,
            started: Instant::now(),
            swaps: Vec::new(),
            waiters,
        });
        self.advance_job();
    }

    /// Moves the recycle job on: starts candidates for the next slots, up to
    /// `batch` at once (overlapped) or one (not), or finishes.
    pub(super) fn advance_job(&mut self) {
        let batch = if self.app.recycle.overlapped {
            self.app.recycle.batch.of(self.slots.len())
        } else {
            1
        };
        loop {
            let Some(job) = self.job.as_mut() else { return };
            if job.waiting_for_stop.is_some() {
                return;
            }
            let starting = self.slots.iter().filter(|s| s.candidate.is_some()).count();
            if starting >= batch {
                return;
            }
            // The next slot without a candidate of its own (a failed or aborted
            // job retires its candidates, so this only guards the invariant).
            let next = job
                .slots
                .iter()
                .position(|&s| self.slots[s as usize].candidate.is_none());
            let Some(slot) = next.and_then(|i| job.slots.remove(i)) else {
                if job.slots.is_empty() && starting == 0 {
                    self.finish_job(Ok(()));
                }
                return;
            };
            let slot = slot as usize;
            let generation = job.generation;
            if let Some(old) = self.slots[slot].current {
                if !self.app.recycle.overlapped {
                    job.waiting_for_stop = Some(old);
                    self.retire(old);
                    return;
                }
            }
            self.slots[slot].restart_at = None;
            if let Err(msg) = self.spawn_worker(slot as u32, generation, Entry::Replace) {
                self.emit(self.event(EventKind::StartupFailed).detail(msg.clone()));
                if !self.count_crash() {
                    self.finish_job(Err(msg));
                }
                return;
            }
        }
    }

    pub(super) fn finish_job(&mut self, result: Result<(), String>) {
        let Some(job) = self.job.take() else { return };
        if result.is_err() {
            // A failed recycle stops where it is: the rest of its batch, still
            // starting, is stopped too; slots already replaced stay replaced, the
            // others keep their worker of the previous generation.
            let starting: Vec<i32> = self.slots.iter().filter_map(|s| s.candidate).collect();
            for pid in starting {
                self.retire(pid);
            }
        }
        let reply = match &result {
            Ok(()) => {
                let swaps: Vec<String> = job
                    .swaps
                    .iter()
                    .map(|(o, n)| match o {
                        Some(o) => format!("{o}→{n}"),
                        None => format!("→{n}"),
                    })
                    .collect();
                Ok(format!(
                    "{}: recycled {} worker(s) to generation {} in {} ms ({}): {}",
                    self.app.name,
                    job.swaps.len(),
                    job.generation,
                    job.started.elapsed().as_millis(),
                    job.reason.describe(),
                    swaps.join(", ")
                ))
            }
            Err(e) => Err(format!(
                "{}: recycle failed, the previous generation keeps serving: {e}",
                self.app.name
            )),
        };
        for w in job.waiters {
            let _ = w.send(reply.clone());
        }
        if let Some(p) = self.pending.take() {
            if self.running() {
                self.begin_job(p.reason, p.slots.into_iter().collect(), p.waiters);
            } else {
                for w in p.waiters {
                    let _ = w.send(Err(format!("{}: not running", self.app.name)));
                }
            }
        }
    }

    pub(super) fn abort_job(&mut self, why: &str) {
        let mut waiters = Vec::new();
        if let Some(job) = self.job.take() {
            waiters.extend(job.waiters);
        }
        if let Some(p) = self.pending.take() {
            waiters.extend(p.waiters);
        }
        for w in waiters {
            let _ = w.send(Err(format!("{}: recycle aborted: {why}", self.app.name)));
        }
    }

    /// Non-overlapped recycle: the slot's old worker is gone; start the new one.
    pub(super) fn on_old_worker_gone(&mut self, slot: u32) {
        let Some(job) = self.job.as_mut() else { return };
        job.waiting_for_stop = None;
        let generation = job.generation;
        if let Err(msg) = self.spawn_worker(slot, generation, Entry::Replace) {
            self.emit(self.event(EventKind::StartupFailed).detail(msg.clone()));
            if !self.count_crash() {
                self.finish_job(Err(msg));
                self.schedule_restart(slot, Failure::Startup);
            }
        }
    }

    /// A per-worker trigger fired: replace just this worker.
    pub(super) fn recycle_worker(&mut self, pid: i32, reason: RecycleReason) {
        let Some(w) = self.workers.get_mut(&pid) else {
            return;
        };
        let Phase::Serving {
            recycle_requested: requested @ false,
            ..
        } = &mut w.phase
        else {
            return;
        };
        *requested = true;
        let slot = w.slot;
        self.request_recycle(reason, Some(vec![slot]), None);
    }
}
