//! The history sampler: every `[supervisor] sample_interval`, every worker of the
//! app — limits set or not — is sampled once (memory of its process tree, CPU time,
//! requests, uptime) and the tick goes to the app's history recorder.
//!
//! It is a deadline of the pool's own loop (one more candidate for the one
//! `sleep_until`), so it runs on the pool's task with the workers' state at hand
//! (generation, phase, requests) and costs no task or channel of its own; it sleeps
//! while the app has no worker. When the memory check has the same interval, the
//! sampler snaps onto its deadline and the check uses the tick's sample, so `/proc`
//! is read once per worker per tick. Apps without a memory limit get the cheap
//! sample (`procfs::sample_tree_light`: O(1) files, private estimated as resident
//! minus shared); apps with one get the exact figure their limit is checked against.

use super::*;
use crate::history::file::{PHASE_DRAINING, PHASE_SERVING, PHASE_STARTING};
use crate::history::recorder::{RecorderThread, Sample};

/// A sample taken by the memory check this long after the tick reuses it.
const REUSE: Duration = Duration::from_millis(20);

/// What the last tick saw of one worker.
#[derive(Debug, Clone, Copy)]
pub(super) struct LastSample {
    pub(super) at: Instant,
    pub(super) memory: Option<memory::MemorySample>,
    pub(super) cpu_s: Option<f64>,
}

/// The sampler's state in the pool.
pub(super) struct Sampler {
    pub(super) interval: Duration,
    /// Where the tick grid starts (see [`next_tick`]).
    pub(super) origin: Instant,
    pub(super) next: Option<Instant>,
    pub(super) recorder: Option<RecorderThread>,
    pub(super) last: HashMap<i32, LastSample>,
}

impl Sampler {
    pub(super) fn new(
        interval: Duration,
        recorder: Option<RecorderThread>,
        origin: Instant,
    ) -> Sampler {
        Sampler {
            interval,
            origin,
            next: Some(next_tick(origin, Instant::now(), interval)),
            recorder,
            last: HashMap::new(),
        }
    }
}

/// The first instant after `now` that is a whole number of `interval`s from
/// `origin`. The supervisor's pools share one origin ([`shared_origin`]), so their
/// ticks fall on the same instants and the runtime thread wakes once per tick for
/// all apps (50 apps: one wake-up a second, not 50). A pool in the unit tests
/// starts its grid when it is created, on its test's paused clock.
pub(super) fn next_tick(origin: Instant, now: Instant, interval: Duration) -> Instant {
    let step = interval.as_nanos().max(1);
    let ticks = now.saturating_duration_since(origin).as_nanos() / step + 1;
    origin + Duration::from_nanos((ticks * step).min(u64::MAX as u128) as u64)
}

/// The supervisor's one tick origin: the start of its first pool.
pub(super) fn shared_origin() -> Instant {
    static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    Instant::from_std(*ORIGIN.get_or_init(|| Instant::now().into_std()))
}

impl Pool {
    /// The sampler's deadline, while there is a worker to sample.
    pub(super) fn sample_deadline(&self) -> Option<Instant> {
        self.sampler.next.filter(|_| !self.workers.is_empty())
    }

    /// One tick: sample every worker, record, re-arm.
    pub(super) fn sample_tick(&mut self, now: Instant) {
        let interval = self.sampler.interval;
        let mut next = next_tick(self.sampler.origin, now, interval);
        // Snap onto the memory check when it falls in the second half of the
        // interval: with equal intervals both then fire at the same wake-up.
        if let Some(m) = self.next_memory_check {
            if m > now + interval / 2 && m <= next {
                next = m;
            }
        }
        self.sampler.next = Some(next);
        let hz = self.table.ticks_per_second();
        let mut pids: Vec<(i32, u32, u64)> = self
            .workers
            .values()
            .map(|w| (w.pid, w.slot, w.generation))
            .collect();
        pids.sort_by_key(|&(_, slot, generation)| (slot, generation));
        let mut samples = Vec::with_capacity(pids.len());
        self.sampler
            .last
            .retain(|pid, _| self.workers.contains_key(pid));
        // Exact private memory (smaps_rollup) only where a limit is checked against
        // it; else the cheap estimate (see `procfs::sample_tree_light`).
        let rc = &self.app.recycle;
        let exact = rc.private_memory.is_some()
            || rc.memory_hard_limit.is_some()
            || rc.rss.is_some()
            || rc.virtual_memory.is_some();
        for (pid, _, _) in pids {
            let (memory, ticks) = match self.table.sample(pid, exact) {
                Some((m, t)) => (Some(m), t),
                None => (None, None),
            };
            let cpu_s = ticks.map(|t| t as f64 / hz);
            self.sampler.last.insert(
                pid,
                LastSample {
                    at: now,
                    memory,
                    cpu_s,
                },
            );
            let Some(w) = self.workers.get(&pid) else {
                continue;
            };
            let Some(m) = memory else { continue };
            samples.push(Sample {
                worker: w.slot,
                generation: w.generation,
                pid,
                phase: match w.phase {
                    Phase::Starting { .. } => PHASE_STARTING,
                    Phase::Serving { .. } => PHASE_SERVING,
                    Phase::Retiring(_) => PHASE_DRAINING,
                },
                private: m.private,
                rss: m.rss,
                virtual_: m.virtual_,
                cpu_ms: cpu_s.map(|s| (s * 1000.0) as u64).unwrap_or(0),
                requests: w.requests,
                uptime_ms: (now - w.started).as_millis() as u64,
            });
        }
        if let Some(r) = self.sampler.recorder.as_mut() {
            r.record(crate::history::now_ms(), samples);
        }
    }

    /// The memory check's figure for `pid`: this tick's sample if the sampler has
    /// just taken one, else a fresh read.
    pub(super) fn memory_for_check(&mut self, pid: i32) -> Option<memory::MemorySample> {
        let now = Instant::now();
        match self.sampler.last.get(&pid) {
            Some(s) if now.saturating_duration_since(s.at) <= REUSE => s.memory,
            _ => self.table.memory(pid),
        }
    }

    /// The last sample of `pid`, for `appvisor status`.
    pub(super) fn last_sample(&self, pid: i32) -> Option<&LastSample> {
        self.sampler.last.get(&pid)
    }
}

/// What a `history` request needs from the pool; the files are then read off the
/// pool's task.
#[derive(Debug, Clone)]
pub struct HistoryInfo {
    /// The app's history directory, if it has a recorder.
    pub dir: Option<std::path::PathBuf>,
    pub limits: crate::history::wire::HistoryLimits,
    pub sample_interval: Duration,
}

impl Pool {
    pub(super) fn history_info(&self) -> HistoryInfo {
        HistoryInfo {
            dir: self
                .sampler
                .recorder
                .as_ref()
                .map(|r| r.dir().to_path_buf()),
            limits: crate::history::query::limits_of(&self.app),
            sample_interval: self.sampler.interval,
        }
    }
}
