//! The memory trigger: a worker's whole process tree against `[app.recycle]` limits.
//!
//! A worker that forks (a pre-fork server, a shell wrapper, a child helper) can hide
//! its memory in children, so every figure is summed over the worker and all its
//! descendants:
//!
//! - **private** = `Private_Clean + Private_Dirty` from `/proc/PID/smaps_rollup`: memory
//!   only this process maps — what recycling it would free (IIS "private bytes").
//!   Without `smaps_rollup` (kernels before 4.14) `RssAnon` from `/proc/PID/status`
//!   stands in.
//! - **rss** = `VmRSS` and **virtual** = `VmSize` from `/proc/PID/status`. Summed over a
//!   tree these count shared pages once per process, as `ps` would.
//!
//! Descendants come from `/proc/PID/task/*/children` when the kernel has it
//! (`CONFIG_PROC_CHILDREN`), else from one pass over `/proc/*/stat` parent pids.
//!
//! It runs every second per worker, so it reads a handful of small files per process
//! and allocates little; a vanished child between listing and reading is skipped.

use std::fs;
use std::io;
use std::sync::atomic::{AtomicU8, Ordering};

use appvisor_config::RecycleConfig;

use crate::reason::RecycleReason;

/// Memory of one worker's process tree, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemorySample {
    pub private: u64,
    pub rss: u64,
    pub virtual_: u64,
    /// Processes in the tree (the worker included).
    pub pids: usize,
}

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

/// Sums the memory of `pid` and all its descendants. Fails only if `pid` itself
/// cannot be read (it exited, or belongs to someone else).
pub fn sample_tree(pid: u32) -> io::Result<MemorySample> {
    let mut sample = MemorySample::default();
    add_process(pid, &mut sample)?;
    for child in descendants(pid) {
        // A child may exit between listing and reading: it then holds no memory.
        let _ = add_process(child, &mut sample);
    }
    Ok(sample)
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

fn add_process(pid: u32, sample: &mut MemorySample) -> io::Result<()> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss = kib_field(&status, "VmRSS:");
    let size = kib_field(&status, "VmSize:");
    let private = match fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) {
        Ok(rollup) => kib_field(&rollup, "Private_Clean:") + kib_field(&rollup, "Private_Dirty:"),
        Err(_) => kib_field(&status, "RssAnon:"),
    };
    sample.rss += rss;
    sample.virtual_ += size;
    sample.private += private;
    sample.pids += 1;
    Ok(())
}

/// The value of a `Name:   1234 kB` line, in bytes (0 if absent, as for kernel threads).
fn kib_field(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// Whether `/proc/PID/task/TID/children` exists: unknown (0), yes (1), no (2).
static CHILDREN_FILES: AtomicU8 = AtomicU8::new(0);

/// Every descendant of `pid` (children, grandchildren, …), in no particular order.
pub fn descendants(pid: u32) -> Vec<u32> {
    if CHILDREN_FILES.load(Ordering::Relaxed) != 2 {
        if let Some(found) = descendants_via_children_files(pid) {
            CHILDREN_FILES.store(1, Ordering::Relaxed);
            return found;
        }
        CHILDREN_FILES.store(2, Ordering::Relaxed);
    }
    descendants_via_stat(pid)
}

/// `None` if the kernel lacks the `children` files.
fn descendants_via_children_files(pid: u32) -> Option<Vec<u32>> {
    let mut out = Vec::new();
    let mut queue = vec![pid];
    let mut first = true;
    while let Some(p) = queue.pop() {
        let Ok(tasks) = fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            match fs::read_to_string(task.path().join("children")) {
                Ok(list) => {
                    for child in list.split_whitespace().filter_map(|c| c.parse().ok()) {
                        out.push(child);
                        queue.push(child);
                    }
                }
                Err(e) if first && e.kind() == io::ErrorKind::NotFound => return None,
                Err(_) => {}
            }
            first = false;
        }
    }
    Some(out)
}

/// One pass over `/proc/*/stat`, then a walk down the parent → children map.
fn descendants_via_stat(pid: u32) -> Vec<u32> {
    let mut edges: Vec<(u32, u32)> = Vec::new(); // (ppid, pid)
    if let Ok(dir) = fs::read_dir("/proc") {
        for ent in dir.flatten() {
            let Some(p) = ent.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if let Ok(stat) = fs::read_to_string(format!("/proc/{p}/stat")) {
                if let Some(ppid) = parent_of(&stat) {
                    edges.push((ppid, p));
                }
            }
        }
    }
    edges.sort_unstable();
    let mut out = Vec::new();
    let mut queue = vec![pid];
    while let Some(parent) = queue.pop() {
        let start = edges.partition_point(|(pp, _)| *pp < parent);
        for &(pp, child) in &edges[start..] {
            if pp != parent {
                break;
            }
            out.push(child);
            queue.push(child);
        }
    }
    out
}

/// The ppid field of `/proc/PID/stat`. The command name (field 2) is in parentheses and
/// may itself contain spaces and parentheses, so parse from the last `)`.
fn parent_of(stat: &str) -> Option<u32> {
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace();
    fields.next()?; // state
    fields.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    #[test]
    fn samples_this_process() {
        let s = sample_tree(std::process::id()).unwrap();
        assert!(s.pids >= 1);
        assert!(s.rss > 0 && s.virtual_ >= s.rss && s.private > 0, "{s:?}");
    }

    #[test]
    fn sums_a_process_tree() {
        let mut child = Command::new("sh")
            .args(["-c", "sleep 5 & sleep 5; wait"])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        // Wait (with a deadline) for the shell to have started both sleeps.
        let deadline = Instant::now() + Duration::from_secs(5);
        let sample = loop {
            let s = sample_tree(pid).unwrap();
            if s.pids >= 3 || Instant::now() > deadline {
                break s;
            }
            std::thread::yield_now();
        };
        let rest: Vec<String> = descendants(pid).iter().map(|p| p.to_string()).collect();
        if !rest.is_empty() {
            let _ = Command::new("kill").arg("-KILL").args(&rest).status();
        }
        let _ = child.kill();
        let _ = child.wait();
        assert!(sample.pids >= 3, "sh and two sleeps: {sample:?}");
        let own = sample_tree(pid);
        assert!(own.is_err() || own.unwrap().pids <= sample.pids);
        assert!(sample.rss > 0 && sample.private > 0, "{sample:?}");
    }

    #[test]
    fn a_gone_process_is_an_error() {
        assert!(sample_tree(u32::MAX - 1).is_err());
    }

    #[test]
    fn parses_stat_with_odd_command_names() {
        assert_eq!(parent_of("42 (a) b (c)) S 7 42 42 0"), Some(7));
        assert_eq!(parent_of("1 (init) S 0 1 1"), Some(0));
        assert_eq!(parent_of("garbage"), None);
    }

    fn recycle_cfg() -> RecycleConfig {
        RecycleConfig {
            overlapped: true,
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
