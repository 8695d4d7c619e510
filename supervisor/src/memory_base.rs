//! How much memory this supervisor may use, and how much of it is left.
//!
//! Percentage limits (`private_memory = "25%"`) are shares of the *memory base*: the
//! tightest memory limit of the supervisor's cgroup and its ancestors — cgroup v2
//! `memory.max`, or v1 `memory.limit_in_bytes` where the memory controller is still
//! mounted as v1 (hybrid systems) — or, when none is set, physical memory
//! (`MemTotal`). A limit above physical memory is no limit. The cgroup paths come
//! from `/proc/self/cgroup` and the mount points from `/proc/self/mountinfo`, as in
//! [`crate::cgroup`]; reading the mount's root alone (what `sysinfo`'s
//! `cgroup_limits` does) would miss a limit set on the supervisor's own cgroup below
//! it, which is exactly what a systemd unit's `MemoryMax=` or a test's cgroup sets.
//!
//! [`MemoryView::available`] is what `[supervisor] memory_pressure` compares with
//! `min_available`: for each limited cgroup, its limit minus what it uses that the
//! kernel cannot simply drop (usage minus inactive page cache, as `kubectl top`'s
//! "working set"); for the machine, `MemAvailable`. The smallest wins.
//! [`MemoryView::psi_some_avg10`] reads PSI: the cgroup's `memory.pressure` (v2)
//! where the kernel has it, else `/proc/pressure/memory`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use appvisor_config::{MemoryBase, MemorySource};

/// Limits at or above this are "unlimited" (v1 writes `PAGE_COUNTER_MAX` pages,
/// 9223372036854771712 on x86-64).
const UNLIMITED: u64 = 1 << 62;

/// Said once per process, whatever the number of reloads.
static NO_CGROUP_SAID: AtomicBool = AtomicBool::new(false);

/// One cgroup with a memory limit, up the supervisor's path.
#[derive(Debug, Clone, PartialEq)]
struct Limited {
    dir: PathBuf,
    v2: bool,
    limit: u64,
}

/// The memory base, with what is needed to read what is left of it.
#[derive(Debug, Clone)]
pub struct MemoryView {
    pub base: MemoryBase,
    /// Every limited cgroup up the path (the tightest decides the base).
    limited: Vec<Limited>,
    /// The PSI file read by [`MemoryView::psi_some_avg10`].
    pub psi: Option<PathBuf>,
}

/// Available memory, and of what.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Available {
    pub bytes: u64,
    /// True if a cgroup limit (not the machine) is the tightest.
    pub cgroup: bool,
}

impl MemoryView {
    /// Reads the system as it is now.
    pub fn detect() -> MemoryView {
        let physical = meminfo_field(
            &std::fs::read_to_string("/proc/meminfo").unwrap_or_default(),
            "MemTotal",
        )
        .unwrap_or(0);
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let own = std::fs::read_to_string("/proc/self/cgroup");
        let (limited, v2_dir) = match &own {
            Ok(own) => (limited_cgroups(&mountinfo, own), v2_dir(&mountinfo, own)),
            Err(e) => {
                if !NO_CGROUP_SAID.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "Cannot read /proc/self/cgroup ({e}): memory percentages and memory pressure use physical memory ({}).",
                        appvisor_config::human_bytes(physical)
                    );
                }
                (Vec::new(), None)
            }
        };
        if own.is_ok() && mountinfo.is_empty() && !NO_CGROUP_SAID.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "Cannot read /proc/self/mountinfo: no cgroup limit can be found; memory percentages use physical memory ({}).",
                appvisor_config::human_bytes(physical)
            );
        }
        let tightest = limited
            .iter()
            .filter(|l| physical == 0 || l.limit < physical)
            .min_by_key(|l| l.limit);
        let base = match tightest {
            Some(l) => MemoryBase {
                bytes: l.limit,
                source: if l.v2 {
                    MemorySource::CgroupV2 {
                        path: l.dir.clone(),
                    }
                } else {
                    MemorySource::CgroupV1 {
                        path: l.dir.clone(),
                    }
                },
            },
            None => MemoryBase {
                bytes: physical,
                source: MemorySource::Physical,
            },
        };
        let psi = v2_dir
            .map(|d| d.join("memory.pressure"))
            .filter(|p| p.exists())
            .or_else(|| Some(PathBuf::from("/proc/pressure/memory")).filter(|p| p.exists()));
        MemoryView { base, limited, psi }
    }

    /// Where the base came from, for logs and `check`: "512 MiB, cgroup limit
    /// (/sys/fs/cgroup/memory/x/memory.limit_in_bytes)".
    pub fn describe(&self) -> String {
        match &self.base.source {
            MemorySource::CgroupV2 { path } => format!(
                "{} ({})",
                self.base.describe(),
                path.join("memory.max").display()
            ),
            MemorySource::CgroupV1 { path } => format!(
                "{} ({})",
                self.base.describe(),
                path.join("memory.limit_in_bytes").display()
            ),
            MemorySource::Physical => format!("{} (no cgroup memory limit)", self.base.describe()),
        }
    }

    /// What is left: the least of every limited cgroup's headroom and the machine's
    /// `MemAvailable`. `None` if nothing could be read.
    pub fn available(&self) -> Option<Available> {
        self.available_below(u64::MAX)
    }

    /// [`MemoryView::available`], exact only where it is below `threshold`: a
    /// cgroup whose limit minus its whole usage is already at or above it is not
    /// short whatever its page cache, so its `memory.stat` (the costly read,
    /// notably on v1) is skipped. What the monitor reads every second.
    pub fn available_below(&self, threshold: u64) -> Option<Available> {
        let mut best: Option<Available> = meminfo_field(
            &std::fs::read_to_string("/proc/meminfo").ok()?,
            "MemAvailable",
        )
        .map(|bytes| Available {
            bytes,
            cgroup: false,
        });
        for l in &self.limited {
            let (usage, stat_key) = if l.v2 {
                (read_u64(&l.dir.join("memory.current")), "inactive_file")
            } else {
                (
                    read_u64(&l.dir.join("memory.usage_in_bytes")),
                    "total_inactive_file",
                )
            };
            let Some(usage) = usage else { continue };
            let inactive = if l.limit.saturating_sub(usage) >= threshold {
                0
            } else {
                std::fs::read_to_string(l.dir.join("memory.stat"))
                    .ok()
                    .and_then(|s| stat_field(&s, stat_key))
                    .unwrap_or(0)
            };
            let bytes = l.limit.saturating_sub(usage.saturating_sub(inactive));
            if best.is_none_or(|b| bytes < b.bytes) {
                best = Some(Available {
                    bytes,
                    cgroup: true,
                });
            }
        }
        best
    }

    /// PSI memory `some avg10`: the share (percent) of the last 10 s in which some
    /// task stalled on memory.
    pub fn psi_some_avg10(&self) -> Option<f64> {
        let text = std::fs::read_to_string(self.psi.as_ref()?).ok()?;
        psi_some_avg10(&text)
    }
}

/// Every cgroup with a memory limit, from the supervisor's own up to the mount's
/// root: v2 `memory.max` on the unified mount, v1 `memory.limit_in_bytes` on the
/// mount with the `memory` option.
fn limited_cgroups(mountinfo: &str, own: &str) -> Vec<Limited> {
    let mut out = Vec::new();
    for (v2, root, point, path) in memory_mounts(mountinfo, own) {
        let relative = path
            .strip_prefix(root.as_str())
            .unwrap_or(&path)
            .trim_start_matches('/');
        let top = PathBuf::from(&point);
        let mut dir = top.join(relative);
        loop {
            let file = if v2 {
                "memory.max"
            } else {
                "memory.limit_in_bytes"
            };
            if let Some(limit) = std::fs::read_to_string(dir.join(file))
                .ok()
                .and_then(|s| parse_limit(&s))
            {
                out.push(Limited {
                    dir: dir.clone(),
                    v2,
                    limit,
                });
            }
            if dir == top || !dir.pop() || !dir.starts_with(&top) {
                break;
            }
        }
    }
    out
}

/// The supervisor's directory in the unified (v2) hierarchy.
fn v2_dir(mountinfo: &str, own: &str) -> Option<PathBuf> {
    memory_mounts(mountinfo, own)
        .into_iter()
        .find(|m| m.0)
        .map(|(_, root, point, path)| {
            let relative = path
                .strip_prefix(root.as_str())
                .unwrap_or(&path)
                .trim_start_matches('/')
                .to_owned();
            PathBuf::from(point).join(relative)
        })
}

/// The v1 memory cgroup directory of process `pid` (hybrid systems), if any.
pub(crate) fn v1_memory_dir_of(pid: i32) -> Option<PathBuf> {
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    memory_mounts(&mountinfo, &own)
        .into_iter()
        .find(|m| !m.0)
        .map(|(_, root, point, path)| {
            let relative = path
                .strip_prefix(root.as_str())
                .unwrap_or(&path)
                .trim_start_matches('/')
                .to_owned();
            PathBuf::from(point).join(relative)
        })
}

/// `(is_v2, mount root, mount point, own path)` for the unified mount and the v1
/// memory mount, where `/proc/self/cgroup` names a path in them.
fn memory_mounts(mountinfo: &str, own: &str) -> Vec<(bool, String, String, String)> {
    let mut out = Vec::new();
    let v2_path = own.lines().find_map(|l| l.strip_prefix("0::"));
    let v1_path = own.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
        controllers
            .split(',')
            .any(|c| c == "memory")
            .then_some(path)
    });
    for line in mountinfo.lines() {
        let Some((fields, rest)) = line.split_once(" - ") else {
            continue;
        };
        let mut r = rest.split_whitespace();
        let (fstype, _source, options) = (r.next(), r.next(), r.next().unwrap_or(""));
        let mut f = fields.split_whitespace();
        let (Some(root), Some(point)) = (f.nth(3), f.next()) else {
            continue;
        };
        let (root, point) = (
            crate::cgroup::unescape(root),
            crate::cgroup::unescape(point),
        );
        match fstype {
            Some("cgroup2") => {
                if let Some(p) = v2_path {
                    out.push((true, root, point, p.to_owned()));
                }
            }
            Some("cgroup") if options.split(',').any(|o| o == "memory") => {
                if let Some(p) = v1_path {
                    out.push((false, root, point, p.to_owned()));
                }
            }
            _ => {}
        }
    }
    out
}

/// `max`, `9223372036854771712` → `None`; `536870912` → 512 MiB.
fn parse_limit(s: &str) -> Option<u64> {
    s.trim().parse::<u64>().ok().filter(|n| *n < UNLIMITED)
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// `MemTotal:  24684360 kB` → bytes.
fn meminfo_field(meminfo: &str, key: &str) -> Option<u64> {
    meminfo.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?.strip_prefix(':')?;
        let kib: u64 = rest.split_whitespace().next()?.parse().ok()?;
        Some(kib * 1024)
    })
}

/// `inactive_file 1234` in a `memory.stat`.
fn stat_field(stat: &str, key: &str) -> Option<u64> {
    stat.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// `some avg10=1.53 avg60=…` → 1.53.
fn psi_some_avg10(text: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.starts_with("some "))?;
    line.split_whitespace()
        .find_map(|f| f.strip_prefix("avg10="))?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_figures_parse() {
        assert_eq!(parse_limit("max\n"), None);
        assert_eq!(parse_limit("9223372036854771712\n"), None);
        assert_eq!(parse_limit("536870912\n"), Some(512 << 20));
        assert_eq!(
            meminfo_field(
                "MemTotal:       2048 kB\nMemAvailable:   1024 kB\n",
                "MemAvailable"
            ),
            Some(1 << 20)
        );
        assert_eq!(
            stat_field("cache 5\ntotal_inactive_file 4096\n", "total_inactive_file"),
            Some(4096)
        );
        assert_eq!(
            psi_some_avg10(
                "some avg10=12.50 avg60=0.10 avg300=0.13 total=1\nfull avg10=0.00 avg60=0.00 avg300=0.04 total=2\n"
            ),
            Some(12.5)
        );
    }

    #[test]
    fn finds_v1_memory_and_v2_mounts_with_the_own_paths() {
        let mountinfo =
            "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
                         32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n\
                         41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        let own = "4:memory:/a/b\n1:cpu:/\n0::/c\n";
        let m = memory_mounts(mountinfo, own);
        assert_eq!(
            m,
            vec![
                (
                    false,
                    "/".into(),
                    "/sys/fs/cgroup/memory".into(),
                    "/a/b".into()
                ),
                (
                    true,
                    "/".into(),
                    "/sys/fs/cgroup/unified".into(),
                    "/c".into()
                ),
            ]
        );
        assert_eq!(
            v2_dir(mountinfo, own),
            Some(PathBuf::from("/sys/fs/cgroup/unified/c"))
        );
    }
}
