//! Crash policy: capped exponential backoff, reset after a stable uptime, and
//! rapid-fail protection.

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

    pub(super) fn on_crash_of_slot(&mut self, slot: u32) {
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
        self.schedule_restart(slot);
    }

    pub(super) fn schedule_restart(&mut self, slot: u32) {
        let f = &self.app.failure;
        let Some(s) = self.slots.get_mut(slot as usize) else {
            return;
        };
        s.backoff = if s.backoff.is_zero() {
            f.backoff_initial
        } else {
            (s.backoff * 2).min(f.backoff_max)
        };
        s.restart_at = Some(Instant::now() + s.backoff);
    }
}
