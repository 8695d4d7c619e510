//! The memory trigger: a worker's whole process tree against `[app.recycle]` limits.
//!
//! A worker that forks (a pre-fork server, a shell wrapper, a child helper) can hide
//! its memory in children, so every figure is summed over the worker and all its
//! descendants ([`crate::procfs::sample_tree`], which says how each figure is read).
//! This module only judges a sample.

use std::io;

use appvisor_config::RecycleConfig;

use crate::reason::RecycleReason;

pub use crate::procfs::MemorySample;

/// What to do about a sample.
#[derive(Debug, Clone, PartialEq)]
pub enum MemoryVerdict {
    Ok,
    /// Over a limit: recycle gracefully (overlapped, drained).
    Recycle(RecycleReason),
    /// Private bytes over `memory_hard_limit`: kill now, no drain.
    HardKill {
        bytes: u64,
        limit: u64,
    },
}

/// [`crate::procfs::sample_tree`] by a raw pid (the signature the pool calls).
pub fn sample_tree(pid: u32) -> io::Result<MemorySample> {
    let pid = i32::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::NotFound))?;
    crate::procfs::sample_tree(crate::procfs::Pid::from_raw(pid))
}

/// The verdict for `sample` under `cfg`. The hard limit wins; then private, virtual and
/// resident limits in that order. A limit is crossed when the figure is above it.
pub fn check(sample: &MemorySample, cfg: &RecycleConfig) -> MemoryVerdict {
    if let Some(limit) = cfg.memory_hard_limit {
        if sample.private > limit {
            return MemoryVerdict::HardKill {
                bytes: sample.private,
                limit,
            };
        }
    }
    let limits = [
        ("private_memory", sample.private, cfg.private_memory),
        ("virtual_memory", sample.virtual_, cfg.virtual_memory),
        ("rss", sample.rss, cfg.rss),
    ];
    for (kind, bytes, limit) in limits {
        if let Some(limit) = limit {
            if bytes > limit {
                return MemoryVerdict::Recycle(RecycleReason::Memory {
                    kind: kind.to_owned(),
                    bytes,
                    limit,
                });
            }
        }
    }
    MemoryVerdict::Ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn recycle_cfg() -> RecycleConfig {
        RecycleConfig {
            overlapped: true,
            batch: appvisor_config::RecycleBatch::default(),
            startup_timeout: Duration::from_secs(90),
            shutdown_timeout: Duration::from_secs(90),
            stop_signal: appvisor_config::Signal {
                name: "SIGTERM",
                number: 15,
            },
            private_memory: Some(100),
            virtual_memory: Some(1000),
            rss: Some(500),
            memory_check_interval: Duration::from_secs(1),
            memory_hard_limit: Some(200),
            requests: None,
            requests_jitter: 0,
            interval: None,
            interval_jitter: Duration::ZERO,
            schedule: Vec::new(),
            idle_timeout: None,
            app_memory: None,
            pressure_candidate: true,
            memory_shares: Vec::new(),
        }
    }

    #[test]
    fn verdicts() {
        let cfg = recycle_cfg();
        let s = |private, virtual_, rss| MemorySample {
            private,
            rss,
            virtual_,
            pids: 1,
        };
        assert_eq!(check(&s(100, 1000, 500), &cfg), MemoryVerdict::Ok);
        assert_eq!(
            check(&s(101, 0, 0), &cfg),
            MemoryVerdict::Recycle(RecycleReason::Memory {
                kind: "private_memory".into(),
                bytes: 101,
                limit: 100
            })
        );
        assert_eq!(
            check(&s(0, 1001, 501), &cfg),
            MemoryVerdict::Recycle(RecycleReason::Memory {
                kind: "virtual_memory".into(),
                bytes: 1001,
                limit: 1000
            })
        );
        assert_eq!(
            check(&s(0, 0, 501), &cfg),
            MemoryVerdict::Recycle(RecycleReason::Memory {
                kind: "rss".into(),
                bytes: 501,
                limit: 500
            })
        );
        assert_eq!(
            check(&s(201, 0, 0), &cfg),
            MemoryVerdict::HardKill {
                bytes: 201,
                limit: 200
            }
        );
        let off = RecycleConfig {
            private_memory: None,
            virtual_memory: None,
            rss: None,
            memory_hard_limit: None,
            ..recycle_cfg()
        };
        assert_eq!(
            check(&s(u64::MAX, u64::MAX, u64::MAX), &off),
            MemoryVerdict::Ok
        );
    }
}
