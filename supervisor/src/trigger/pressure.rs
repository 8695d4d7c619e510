//! The memory-pressure trigger: `[supervisor] memory_pressure`.
//!
//! When the memory available to the supervisor's cgroup (or the machine) falls
//! below `min_available`, or PSI memory `some avg10` passes `psi_some_avg10`, one
//! worker — of all apps — is recycled gracefully: the one whose private memory grew
//! most since it became ready (the leak, not the big-by-design). Then nothing more
//! while any recycle is under way, and for `cooldown` from the choice: the old worker needs time to drain and its memory to come back,
//! and recycling a second worker for the same shortage would cost capacity for
//! nothing. Only apps with `pressure_candidate` (by default: `overlapped`, so the
//! recycle costs no capacity) offer candidates.
//!
//! Why not kill like earlyoom or systemd-oomd: a recycle drains. The kernel's OOM
//! killer SIGKILLs a worker mid-request; acting earlier, with a margin, lets the
//! next generation take over without a failed request.
//!
//! Cost at rest: one tick per `interval` reads `/proc/meminfo`, each limited
//! cgroup's usage (its `memory.stat` only near the threshold) and the PSI file; the
//! pools (and `/proc` of every worker) are asked only while memory is short and no
//! cooldown runs.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use appvisor_config::MemoryPressureConfig;
use tokio::time::Instant;

use crate::memory_base::MemoryView;
use crate::pool::{PoolCommand, PoolHandle, PressureCandidate};
use crate::reason::RecycleReason;

/// Growth below this is noise (allocator arenas, caches warming up), not a leak.
pub const MIN_GROWTH: u64 = 1 << 20;

/// One look at memory: what is available, and PSI.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Reading {
    pub available: Option<u64>,
    pub psi_some_avg10: Option<f64>,
}

/// Decides, from readings and candidates, which worker to recycle and when.
#[derive(Debug, Clone)]
pub struct PressureDecider {
    cfg: MemoryPressureConfig,
    quiet_until: Option<Instant>,
}

impl PressureDecider {
    pub fn new(cfg: MemoryPressureConfig) -> PressureDecider {
        PressureDecider {
            cfg,
            quiet_until: None,
        }
    }

    /// Is memory short by this reading? A threshold whose figure could not be read
    /// says nothing.
    pub fn short(&self, r: &Reading) -> bool {
        let low = matches!((r.available, self.cfg.min_available), (Some(a), Some(m)) if a < m);
        let stalled =
            matches!((r.psi_some_avg10, self.cfg.psi_some_avg10), (Some(p), Some(t)) if p > t);
        low || stalled
    }

    /// Inside the cooldown after the last pressure recycle?
    pub fn cooling(&self, now: Instant) -> bool {
        self.quiet_until.is_some_and(|t| now < t)
    }

    /// Under pressure and out of cooldown: the candidate that grew most (ties: the
    /// larger), with the reason to give; the cooldown starts. A worker that grew
    /// less than [`MIN_GROWTH`] is never chosen: recycling it would give nothing
    /// back.
    pub fn choose(
        &mut self,
        now: Instant,
        r: &Reading,
        candidates: &[PressureCandidate],
    ) -> Option<(PressureCandidate, RecycleReason)> {
        if self.cooling(now) || !self.short(r) {
            return None;
        }
        let best = candidates
            .iter()
            .filter(|c| c.growth >= MIN_GROWTH)
            .max_by_key(|c| (c.growth, c.private))?
            .clone();
        self.quiet_until = Some(now + self.cfg.cooldown);
        let reason = RecycleReason::MemoryPressure {
            available: r.available.filter(|_| self.cfg.min_available.is_some()),
            min_available: self.cfg.min_available,
            psi_some_avg10: r
                .psi_some_avg10
                .filter(|_| self.cfg.psi_some_avg10.is_some()),
            psi_threshold: self.cfg.psi_some_avg10,
            growth: best.growth,
        };
        Some((best, reason))
    }
}

/// Reads what `cfg` needs from `view`: available memory only if `min_available`
/// is set, PSI only if `psi_some_avg10` is.
pub fn read(view: &MemoryView, cfg: &MemoryPressureConfig) -> Reading {
    Reading {
        available: cfg
            .min_available
            .and_then(|m| view.available_below(m))
            .map(|a| a.bytes),
        psi_some_avg10: cfg.psi_some_avg10.and_then(|_| view.psi_some_avg10()),
    }
}

/// The monitor's task: every `interval`, `reading()`; when memory is short and no
/// cooldown runs, asks every pool for its candidates and recycles the one chosen.
pub async fn monitor(
    cfg: MemoryPressureConfig,
    mut reading: impl FnMut() -> Reading + Send,
    pools: Arc<Mutex<BTreeMap<String, PoolHandle>>>,
) {
    let mut decider = PressureDecider::new(cfg.clone());
    let mut tick = tokio::time::interval(cfg.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Say "no candidate" once per shortage, not every second.
    let mut said_none = false;
    loop {
        tick.tick().await;
        if decider.cooling(Instant::now()) {
            continue;
        }
        let r = reading();
        if !decider.short(&r) {
            said_none = false;
            continue;
        }
        let handles: Vec<PoolHandle> = pools.lock().unwrap().values().cloned().collect();
        let mut candidates = Vec::new();
        let mut recycling = false;
        for h in &handles {
            let (tx, rx) = tokio::sync::oneshot::channel();
            if !h.send(PoolCommand::PressureCandidates { reply: tx }) {
                continue;
            }
            if let Ok(Ok(offer)) = tokio::time::timeout(Duration::from_secs(1), rx).await {
                recycling |= offer.recycling;
                candidates.extend(offer.candidates);
            }
        }
        if recycling {
            // A recycle is under way (maybe ours, slow to start): its memory is
            // about to come back; choosing another now would recycle for the same
            // shortage twice.
            continue;
        }
        match decider.choose(Instant::now(), &r, &candidates) {
            Some((c, reason)) => {
                said_none = false;
                tracing::info!(
                    app = %c.app,
                    pid = c.pid,
                    "Memory is short ({}): recycling worker {} of {}, the one that grew most; next choice after {}.",
                    reason.describe(),
                    c.pid,
                    c.app,
                    crate::pool::humanize(cfg.cooldown)
                );
                if let Some(h) = handles.iter().find(|h| h.name == c.app) {
                    h.send(PoolCommand::RecycleWorker { pid: c.pid, reason });
                }
            }
            None if !said_none => {
                said_none = true;
                tracing::warn!(
                    "Memory is short (available {:?} bytes, PSI some avg10 {:?}) but no worker can be recycled for it: none grew since it started, or no app is a pressure candidate (`overlapped = true` or `pressure_candidate = true`), or each is recycling already.",
                    r.available,
                    r.psi_some_avg10
                );
            }
            None => {}
        }
    }
}
