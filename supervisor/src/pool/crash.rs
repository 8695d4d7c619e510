//! Crash policy: the first crash of a serving worker restarts at once, further
//! consecutive failures back off exponentially up to a cap; the backoff resets
//! after a stable uptime; rapid-fail protection.
//!
//! Why the first crash restarts at once: a worker killed by the OOM killer or an
//! operator's `kill -9` usually says nothing about its successor, and every
//! millisecond the slot is empty is lost capacity. Waiting only pays off when the
//! failure repeats (a bad deploy, a missing dependency), so the delay starts with
//! the second failure in a row. A failure to *start* (a spawn error, an exit
//! before ready) never restarts at once: the next start would meet the same cause.

use super::*;

impl Pool {
    /// Records a crash; returns true if rapid-fail protection stopped the app.
    pub(super) fn count_crash(&mut self) -> bool {
        let now = Instant::now();
        self.total_crashes += 1;
        self.crashes.push_back(now);
        let window = self.app.failure.rapid_fail_interval;
        while self
            .crashes
            .front()
            .is_some_and(|t| now.duration_since(*t) > window)
        {
            self.crashes.pop_front();
        }
        if self.crashes.len() as u32 >= self.app.failure.rapid_fail_max_crashes
            && self.state == AppState::Running
        {
            let mut e = self.event(EventKind::RapidFailStopped);
            e.detail = Some(format!(
                "{} crashes within {} — the app is stopped; fix it, then `appvisor start {}`",
                self.crashes.len(),
                humanize(window),
                self.app.name
            ));
            self.emit(e);
            self.stop_all(StopCause::RapidFail);
            return true;
        }
        false
    }

    pub(super) fn on_crash_of_slot(&mut self, slot: u32, failure: Failure) {
        if self.count_crash() || !self.running() {
            return;
        }
        if self
            .slots
            .get(slot as usize)
            .is_none_or(|s| s.candidate.is_some())
        {
            // A recycle is already bringing a new worker into this slot.
            return;
        }
        self.schedule_restart(slot, failure);
    }

    /// Sets the slot's restart deadline after a failure.
    pub(super) fn schedule_restart(&mut self, slot: u32, failure: Failure) {
        let f = &self.app.failure;
        let Some(s) = self.slots.get_mut(slot as usize) else {
            return;
        };
        let delay = match (s.backoff, failure) {
            // The first failure since the last reset, and the worker had served.
            (None, Failure::Crash) => Duration::ZERO,
            (None | Some(Duration::ZERO), _) => f.backoff_initial,
            (Some(last), _) => (last * 2).min(f.backoff_max),
        };
        s.backoff = Some(delay);
        s.restart_at = Some(Instant::now() + delay);
    }
}

/// What failed, for the restart delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Failure {
    /// A worker that had been serving exited without being asked to.
    Crash,
    /// A worker could not be spawned, or exited (or timed out) before it was ready.
    Startup,
}
