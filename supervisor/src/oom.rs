//! Was a worker killed by the kernel's OOM killer? Asked when a serving worker dies
//! of SIGKILL that the supervisor did not send; answered from the kernel's own
//! records, never guessed from the signal alone (an operator's `kill -9` is a
//! SIGKILL too).
//!
//! In order of precision:
//! 1. The worker's own cgroup v2 `memory.events`: `oom_kill` counts kills inside
//!    that cgroup, which held only this worker (present where the memory controller
//!    is enabled on the unified hierarchy).
//! 2. The kernel log (`/dev/kmsg`, readable by root or with `CAP_SYSLOG`): the OOM
//!    killer writes `Killed process <pid> (<name>)` and `oom-kill:…,pid=<pid>,…`.
//! 3. The v1 memory cgroup the worker ran in (`memory.oom_control`, `oom_kill N`,
//!    Linux 4.13): the counter rose during the worker's life. The cgroup may hold
//!    other workers too, so this one is named only when the first two cannot say.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// What to compare with when a worker dies, taken when it starts.
#[derive(Debug, Clone, Default)]
pub struct OomWatch {
    v2_events: Option<PathBuf>,
    v1_control: Option<PathBuf>,
    v1_kills_at_spawn: u64,
}

impl OomWatch {
    /// For the worker `pid`, just placed in `cgroup` (its own v2 directory, if any).
    pub fn at_spawn(pid: i32, cgroup: Option<&Path>) -> OomWatch {
        let v2_events = cgroup
            .map(|d| d.join("memory.events"))
            .filter(|p| p.exists());
        let v1_control = crate::memory_base::v1_memory_dir_of(pid)
            .map(|d| d.join("memory.oom_control"))
            .filter(|p| p.exists());
        let v1_kills_at_spawn = v1_control.as_deref().and_then(oom_kills).unwrap_or(0);
        OomWatch {
            v2_events,
            v1_control,
            v1_kills_at_spawn,
        }
    }

    /// Why the dead worker `pid` is known to have been OOM-killed, in words; `None`
    /// if no record says so. Call before its cgroup is removed.
    pub fn verdict(&self, pid: i32) -> Option<String> {
        if let Some(events) = &self.v2_events {
            if let Some(n) = oom_kills(events).filter(|n| *n > 0) {
                return Some(format!("{} counts oom_kill {n}", events.display()));
            }
        }
        if let Some(line) = kernel_log_kill(pid) {
            return Some(format!("kernel log: {line}"));
        }
        let control = self.v1_control.as_ref()?;
        let now = oom_kills(control)?;
        (now > self.v1_kills_at_spawn).then(|| {
            format!(
                "{} oom_kill rose from {} to {now} while it ran",
                control.display(),
                self.v1_kills_at_spawn
            )
        })
    }
}

/// `oom_kill N` in `memory.events` (v2) or `memory.oom_control` (v1).
fn oom_kills(path: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| {
        let v = l.strip_prefix("oom_kill ")?;
        v.trim().parse().ok()
    })
}

/// The kernel log's record of the OOM killer killing `pid`, if it is still in the
/// ring buffer and readable.
fn kernel_log_kill(pid: i32) -> Option<String> {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")
        .ok()?;
    let mut buf = vec![0u8; 8192];
    let mut found = None;
    // One record per read; stop at the end of the buffer (EAGAIN). EPIPE means
    // records were overwritten while reading: go on with the next.
    for _ in 0..200_000 {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let record = String::from_utf8_lossy(&buf[..n]);
                let message = record.split_once(';').map_or(&*record, |(_, m)| m);
                let message = message.lines().next().unwrap_or("");
                if names_kill(message, pid) {
                    found = Some(message.trim().to_owned());
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(_) => break,
        }
    }
    found
}

/// `Memory cgroup out of memory: Killed process 4321 (demo) total-vm:…`, or
/// `oom-kill:constraint=…,task=demo,pid=4321,uid=0`.
fn names_kill(message: &str, pid: i32) -> bool {
    message.contains(&format!("Killed process {pid} ("))
        || (message.starts_with("oom-kill:") && message.contains(&format!(",pid={pid},")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_log_lines_name_the_pid() {
        assert!(names_kill(
            "Memory cgroup out of memory: Killed process 4321 (demo) total-vm:1kB, anon-rss:2kB",
            4321
        ));
        assert!(names_kill(
            "oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),task=demo,pid=4321,uid=0",
            4321
        ));
        assert!(!names_kill("Killed process 43210 (demo)", 4321));
        assert!(!names_kill("oom-kill:task=demo,pid=43210,uid=0", 4321));
    }

    #[test]
    fn counters_read_from_both_files() {
        let dir = std::env::temp_dir().join(format!("appvisor-oom-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let v1 = dir.join("memory.oom_control");
        std::fs::write(&v1, "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n").unwrap();
        let v2 = dir.join("memory.events");
        std::fs::write(
            &v2,
            "low 0\nhigh 0\nmax 5\noom 1\noom_kill 1\noom_group_kill 0\n",
        )
        .unwrap();
        assert_eq!(oom_kills(&v1), Some(3));
        assert_eq!(oom_kills(&v2), Some(1));
        let w = OomWatch {
            v2_events: None,
            v1_control: Some(v1.clone()),
            v1_kills_at_spawn: 3,
        };
        // A pid no kernel log names: the v1 counter alone decides.
        assert_eq!(w.verdict(i32::MAX), None);
        std::fs::write(&v1, "oom_kill_disable 0\nunder_oom 0\noom_kill 4\n").unwrap();
        assert!(w.verdict(i32::MAX).unwrap().contains("from 3 to 4"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
