//! Per-worker cgroups (v2): nothing a worker starts can outlive it.
//!
//! A process group is not a fence: a worker's child that calls `setsid` leaves it,
//! and after a double fork it is not even a descendant any more. A cgroup is a
//! fence: a process cannot leave its cgroup without write access to another one,
//! and `cgroup.kill` SIGKILLs everything inside at once, whatever its session.
//!
//! # Layout
//! `<the supervisor's own cgroup>/appvisor-<supervisor pid>/<app>.<slot>.<seq>.<n>`,
//! in the unified hierarchy (found in `/proc/self/mountinfo`: `/sys/fs/cgroup` on a
//! pure v2 system, `/sys/fs/cgroup/unified` on a hybrid one).
//!
//! # The "no internal processes" rule
//! cgroup v2 forbids processes in a cgroup that distributes controllers to its
//! children (`cgroup.subtree_control` not empty). We enable no controller: we only
//! need the core files (`cgroup.procs`, `cgroup.kill`, `cgroup.events`), which
//! every cgroup has. So the supervisor stays where it was started and is *not*
//! moved into a leaf of its own (which would also surprise whoever started it,
//! e.g. systemd tracking the unit's main pid). The per-supervisor directory
//! `appvisor-<pid>` holds no process itself, only the workers' leaves, so enabling
//! controllers there later (memory/CPU accounting) stays possible.
//!
//! # Placement before exec
//! The child is born in its cgroup (`clone3` with `CLONE_INTO_CGROUP`, see
//! `spawn.rs`); where that is refused, the parent writes the child's pid into
//! `cgroup.procs` between fork and exec while the child waits on a pipe. Either way
//! the child allocates nothing, and the worker cannot fork before it is fenced in.
//!
//! # Removal
//! Killing the cgroup (`cgroup.kill`) is asynchronous: the directory can only be
//! removed once the last process in it is reaped, so [`remove_when_empty`] retries
//! `rmdir` for a while off the caller's path. The guard process kills and removes
//! the whole `appvisor-<pid>` tree if the supervisor dies.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The supervisor's directory of worker cgroups.
#[derive(Debug)]
pub struct Cgroups {
    base: PathBuf,
    next: AtomicU64,
}

impl Cgroups {
    /// Creates `appvisor-<pid>` under the supervisor's own cgroup in the unified
    /// hierarchy; an error says why none can be made (no v2 hierarchy, read-only,
    /// no permission).
    pub fn create() -> Result<Cgroups, String> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
        let (mount_root, mount_point) = unified_mount(&mountinfo)
            .ok_or_else(|| "no cgroup2 (unified) hierarchy is mounted".to_string())?;
        let own = std::fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
        let own = own_path(&own)
            .ok_or_else(|| "/proc/self/cgroup has no cgroup v2 entry (\"0::\")".to_string())?;
        let relative = own
            .strip_prefix(mount_root.as_str())
            .unwrap_or(own)
            .trim_start_matches('/');
        let base = Path::new(&mount_point)
            .join(relative)
            .join(format!("appvisor-{}", std::process::id()));
        match std::fs::create_dir(&base) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("cannot create {}: {e}", base.display())),
        }
        Ok(Cgroups {
            base,
            next: AtomicU64::new(1),
        })
    }

    /// `appvisor-<pid>`: the parent of every worker's cgroup.
    pub fn base(&self) -> &Path {
        &self.base
    }

    /// Creates the (empty) cgroup of one worker: `<name>.<n>`, `n` counting every
    /// worker of this supervisor, so two workers never share one — not even a pool
    /// started again by a reload (its spawn counter restarts) while a worker of
    /// the old one still drains: killing one must never touch the other.
    pub fn worker(&self, name: &str) -> io::Result<PathBuf> {
        loop {
            let n = self.next.fetch_add(1, Ordering::Relaxed);
            let dir = self.base.join(format!("{name}.{n}"));
            match std::fs::create_dir(&dir) {
                Ok(()) => return Ok(dir),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// Gives the cgroup `dir` to the worker's user: the directory and the files a
/// delegate may write (`cgroup.procs`, `cgroup.threads`, `cgroup.subtree_control`).
pub fn chown(dir: &Path, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
    std::os::unix::fs::chown(dir, uid, gid)?;
    for f in ["cgroup.procs", "cgroup.threads", "cgroup.subtree_control"] {
        std::os::unix::fs::chown(dir.join(f), uid, gid)?;
    }
    Ok(())
}

/// Moves `pid` into the cgroup `dir`.
pub fn place(dir: &Path, pid: i32) -> io::Result<()> {
    std::fs::write(dir.join("cgroup.procs"), pid.to_string())
}

/// SIGKILLs every process in `dir` and its descendants. `cgroup.kill` (Linux 5.14)
/// does it atomically; on older kernels each pid listed is killed (one pass per
/// cgroup: a process forking at that very moment may slip through, which is why
/// `cgroup.kill` is preferred).
pub fn kill(dir: &Path) {
    if std::fs::write(dir.join("cgroup.kill"), "1").is_ok() {
        return;
    }
    kill_listed(dir);
}

fn kill_listed(dir: &Path) {
    if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                kill_listed(&e.path());
            }
        }
    }
}

/// Removes `dir` and the cgroups below it, deepest first, retrying while they
/// still hold dying processes; gives up after `patience`. True if it is gone.
pub fn remove_tree(dir: &Path, patience: Duration) -> bool {
    let deadline = std::time::Instant::now() + patience;
    loop {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    remove_tree(&e.path(), Duration::ZERO);
                }
            }
        }
        match std::fs::remove_dir(dir) {
            Ok(()) => return true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return true,
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(_) => return false,
        }
    }
}

/// Removes the (killed) cgroup `dir` once its last process is reaped, without
/// blocking the caller: on the tokio runtime if there is one.
pub fn remove_when_empty(dir: PathBuf) {
    if std::fs::remove_dir(&dir).is_ok() {
        return;
    }
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    rt.spawn(async move {
        for _ in 0..500 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            match std::fs::remove_dir(&dir) {
                Ok(()) => return,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return,
                Err(_) => {}
            }
        }
        tracing::warn!(cgroup = %dir.display(), "A worker's cgroup still holds processes 5 s after it was killed; left in place.");
    });
}

/// Without cgroups: the live processes outside process group `pgid` whose
/// environment holds `marker` (`NAME=value`, unique to one worker and inherited by
/// what it starts) — what escaped the worker's group with `setsid`. A process that
/// rewrote its environment is missed; that is the price of having no cgroup.
pub fn escaped(pgid: i32, marker: &str) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        // `/proc/PID/stat`: after the `)` closing the name come state, ppid, pgrp.
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let mut f = stat
            .rsplit_once(')')
            .map_or("", |(_, r)| r)
            .split_whitespace();
        let (state, pgrp) = (f.next(), f.nth(1).and_then(|g| g.parse::<i32>().ok()));
        if pgrp == Some(pgid) || state == Some("Z") || state == Some("X") {
            continue;
        }
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if env.split(|&b| b == 0).any(|kv| kv == marker.as_bytes()) {
            out.push(pid);
        }
    }
    out.sort_unstable();
    out
}

/// The root and mount point of the cgroup2 hierarchy in `/proc/self/mountinfo`.
fn unified_mount(mountinfo: &str) -> Option<(String, String)> {
    mountinfo.lines().find_map(|line| {
        let (fields, rest) = line.split_once(" - ")?;
        if rest.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let mut f = fields.split_whitespace();
        let root = f.nth(3)?;
        let point = f.next()?;
        Some((unescape(root), unescape(point)))
    })
}

/// The supervisor's own cgroup v2 path (`0::/path`).
fn own_path(cgroup: &str) -> Option<&str> {
    cgroup.lines().find_map(|l| l.strip_prefix("0::"))
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
pub(crate) fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let n = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(n);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_unified_mount_on_a_hybrid_system() {
        let info = "25 30 0:22 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n\
                    26 25 0:23 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n\
                    27 25 0:24 /ns /sys/fs/cgroup/uni\\040fied rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            unified_mount(info),
            Some(("/ns".into(), "/sys/fs/cgroup/uni fied".into()))
        );
        assert_eq!(unified_mount("25 30 0:22 / /x rw - tmpfs tmpfs rw\n"), None);
    }

    #[test]
    fn own_path_is_the_v2_line() {
        assert_eq!(
            own_path("4:memory:/a\n0::/system.slice/x.service\n"),
            Some("/system.slice/x.service")
        );
        assert_eq!(own_path("4:memory:/a\n"), None);
    }
}
