//! Memory across workers: `app_memory` (the app's workers together) and the
//! candidates `[supervisor] memory_pressure` chooses from. Both pick the worker
//! whose private memory grew most since it started — the leak, not the worker
//! that is merely big by design — so each worker's private bytes are noted when
//! it becomes ready.

use super::*;

/// A pool's answer to the pressure monitor: its candidates, and whether a recycle
/// is under way in it (then memory is in flux, and the monitor waits).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PressureOffer {
    pub recycling: bool,
    pub candidates: Vec<PressureCandidate>,
}

/// A worker the pressure monitor may recycle, with its figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PressureCandidate {
    pub app: String,
    pub pid: i32,
    /// Private bytes of its process tree now.
    pub private: u64,
    /// `private` minus its private bytes when it became ready.
    pub growth: u64,
}

impl Pool {
    /// Notes `pid`'s private bytes as it becomes ready: growth counts from here.
    pub(super) fn note_memory_start(&mut self, pid: i32) {
        let workers = &self.workers;
        self.memory_start.retain(|p, _| workers.contains_key(p));
        if let Some(sample) = self.table.memory(pid) {
            self.memory_start.insert(pid, sample.private);
        }
    }

    /// Private bytes now and growth since start of each serving worker that a
    /// trigger may recycle.
    fn growth_of_serving(&mut self) -> Vec<(i32, u64, u64)> {
        let pids: Vec<i32> = self
            .workers
            .values()
            .filter(|w| w.triggerable())
            .map(|w| w.pid)
            .collect();
        let mut out = Vec::new();
        for pid in pids {
            let Some(sample) = self.table.memory(pid) else {
                continue;
            };
            let start = *self.memory_start.entry(pid).or_insert(sample.private);
            out.push((pid, sample.private, sample.private.saturating_sub(start)));
        }
        out
    }

    /// `app_memory`: over it, the worker that grew most is recycled — one at a time,
    /// so not while a recycle is running.
    pub(super) fn check_app_memory(&mut self) {
        let Some(limit) = self.app.recycle.app_memory else {
            return;
        };
        if self.job.is_some() || !self.running() {
            return;
        }
        // Every live worker counts, a starting one too: that memory is in use.
        let others: u64 = self
            .workers
            .values()
            .filter(|w| !w.triggerable() && !w.is_retiring())
            .map(|w| w.pid)
            .collect::<Vec<_>>()
            .into_iter()
            .filter_map(|pid| self.table.memory(pid).map(|s| s.private))
            .sum();
        let serving = self.growth_of_serving();
        let total = others + serving.iter().map(|(_, p, _)| p).sum::<u64>();
        if total <= limit {
            return;
        }
        let Some(&(pid, _, growth)) = serving
            .iter()
            .max_by_key(|(pid, private, growth)| (*growth, *private, -*pid))
        else {
            return;
        };
        let reason = RecycleReason::AppMemory {
            bytes: total,
            limit,
            growth,
        };
        self.recycle_worker(pid, reason);
    }

    /// The workers `memory_pressure` may recycle: none if the app is not a
    /// candidate (`pressure_candidate`, by default `overlapped`), not running, or
    /// already recycling.
    pub(super) fn pressure_candidates(&mut self) -> PressureOffer {
        let recycling = self.job.is_some();
        if !self.app.recycle.pressure_candidate || recycling || !self.running() {
            return PressureOffer {
                recycling,
                candidates: Vec::new(),
            };
        }
        let app = self.app.name.clone();
        let candidates = self
            .growth_of_serving()
            .into_iter()
            .map(|(pid, private, growth)| PressureCandidate {
                app: app.clone(),
                pid,
                private,
                growth,
            })
            .collect();
        PressureOffer {
            recycling,
            candidates,
        }
    }
}
