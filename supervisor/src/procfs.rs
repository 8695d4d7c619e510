//! Reading `/proc`: the one place that knows its file formats, and the one [`Pid`]
//! type for a process.
//!
//! What the supervisor learns about a worker from outside, without asking it:
//! - its resident memory (`status` shows it) — [`rss_bytes`];
//! - its CPU time (the idle trigger compares it over a window) — [`cpu_ticks`],
//!   [`ticks_per_second`];
//! - the memory of its whole process tree (the memory trigger) — [`sample_tree`]:
//!   - **private** = `Private_Clean + Private_Dirty` from `/proc/PID/smaps_rollup`:
//!     memory only this process maps — what recycling it would free (IIS "private
//!     bytes"). Without `smaps_rollup` (kernels before 4.14) `RssAnon` from
//!     `/proc/PID/status` stands in.
//!   - **rss** = `VmRSS` and **virtual** = `VmSize` from `/proc/PID/status`. Summed
//!     over a tree these count shared pages once per process, as `ps` would.
//!
//! Descendants come from `/proc/PID/task/*/children` when the kernel has it
//! (`CONFIG_PROC_CHILDREN`), else from one pass over `/proc/*/stat` parent pids.
//!
//! The memory trigger samples every worker once a second, so this reads a handful of
//! small files per process and allocates little; a child that vanishes between
//! listing and reading is skipped.
//!
//! [`Pid`] is `nix`'s: the same type `kill`, `waitpid` and `getpgid` take, so a pid read
//! here goes to a syscall without a cast.

use std::fs;
use std::io;
use std::sync::atomic::{AtomicU8, Ordering};

pub use nix::unistd::Pid;

/// Memory of one process tree, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemorySample {
    pub private: u64,
    pub rss: u64,
    pub virtual_: u64,
    /// Processes in the tree (the root included).
    pub pids: usize,
}

/// `VmRSS` of one process, in bytes.
pub fn rss_bytes(pid: Pid) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    kib_line(&status, "VmRSS:")
}

/// User + system CPU time of one process, in clock ticks (`utime + stime` of
/// `/proc/PID/stat`).
pub fn cpu_ticks(pid: Pid) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f = StatFields::parse(&stat)?;
    Some(f.get(UTIME)?.parse::<u64>().ok()? + f.get(STIME)?.parse::<u64>().ok()?)
}

/// Clock ticks per second (`_SC_CLK_TCK`), the unit of [`cpu_ticks`].
pub fn ticks_per_second() -> f64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(hz)) if hz > 0 => hz as f64,
        // Every Linux since 2.6 says 100; the call does not fail in practice.
        _ => 100.0,
    }
}

/// Sums the memory of `pid` and all its descendants. Fails only if `pid` itself
/// cannot be read (it exited, or belongs to someone else).
pub fn sample_tree(pid: Pid) -> io::Result<MemorySample> {
    let mut sample = MemorySample::default();
    add_process(pid, &mut sample)?;
    for child in descendants(pid) {
        // A child may exit between listing and reading: it then holds no memory.
        let _ = add_process(child, &mut sample);
    }
    Ok(sample)
}

/// A cheap sample of a process tree for the history: every figure from O(1) files,
/// `/proc/PID/statm` (size, resident, shared pages) and `/proc/PID/stat` (CPU), with
/// **private** estimated as resident minus shared (`RssAnon`: anonymous memory,
/// where leaks live). `smaps_rollup` — the exact private figure a limit is checked
/// against — walks the page tables and costs many times more, so the sampler reads
/// it only for apps that have a memory limit. `pids`, if given (a worker's
/// `cgroup.procs`), is the tree; else its descendants are walked. Also returns the
/// tree's CPU time in clock ticks.
pub fn sample_tree_light(pid: Pid, pids: Option<&[Pid]>) -> io::Result<(MemorySample, u64)> {
    let mut sample = MemorySample::default();
    let mut ticks = 0;
    let page = page_size();
    add_light(pid, page, &mut sample, &mut ticks)?;
    let rest = match pids {
        Some(p) => p.iter().copied().filter(|p| *p != pid).collect(),
        None => descendants(pid),
    };
    for child in rest {
        let _ = add_light(child, page, &mut sample, &mut ticks);
    }
    Ok((sample, ticks))
}

fn page_size() -> u64 {
    static PAGE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *PAGE.get_or_init(
        || match nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE) {
            Ok(Some(n)) if n > 0 => n as u64,
            _ => 4096,
        },
    )
}

/// A small `/proc` (or cgroupfs) file, read with one `read` into `buf`: open, read,
/// close — where `fs::read_to_string` adds a `statx` and reads again until EOF. The
/// history sampler reads three of these per worker per second, so with 200 workers
/// this halves its syscalls. These files are generated whole on the first read;
/// one that fills `buf` is read again the ordinary way.
pub fn read_small<'b>(path: &str, buf: &'b mut [u8]) -> io::Result<std::borrow::Cow<'b, str>> {
    use std::io::Read;
    let n = fs::File::open(path)?.read(buf)?;
    if n == buf.len() {
        return fs::read_to_string(path).map(std::borrow::Cow::Owned);
    }
    std::str::from_utf8(&buf[..n])
        .map(std::borrow::Cow::Borrowed)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

fn add_light(pid: Pid, page: u64, sample: &mut MemorySample, ticks: &mut u64) -> io::Result<()> {
    let mut buf = [0u8; 1024];
    let statm = read_small(&format!("/proc/{pid}/statm"), &mut buf)?;
    let mut f = statm
        .split_whitespace()
        .map(|n| n.parse::<u64>().unwrap_or(0));
    let (size, resident, shared) = (
        f.next().unwrap_or(0),
        f.next().unwrap_or(0),
        f.next().unwrap_or(0),
    );
    sample.virtual_ += size * page;
    sample.rss += resident * page;
    sample.private += resident.saturating_sub(shared) * page;
    sample.pids += 1;
    drop(statm);
    if let Ok(stat) = read_small(&format!("/proc/{pid}/stat"), &mut buf) {
        if let Some(f) = StatFields::parse(&stat) {
            let n = |i| {
                f.get(i)
                    .and_then(|v: &str| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            *ticks += n(UTIME) + n(STIME);
        }
    }
    Ok(())
}

fn add_process(pid: Pid, sample: &mut MemorySample) -> io::Result<()> {
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

/// The value of a `Name:   1234 kB` line, in bytes, if the line is there.
fn kib_line(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
        .map(|kib| kib * 1024)
}

/// [`kib_line`], 0 if absent (as for kernel threads).
fn kib_field(text: &str, name: &str) -> u64 {
    kib_line(text, name).unwrap_or(0)
}

/// The fields of `/proc/PID/stat` after the command name, numbered from `state` = 0.
/// The command name (field 2) is in parentheses and may itself contain spaces and
/// parentheses, so parsing starts after the *last* `)`.
struct StatFields<'a>(Vec<&'a str>);

/// Indexes into [`StatFields`] (`proc(5)` field number minus 3).
const PPID: usize = 1;
const UTIME: usize = 11;
const STIME: usize = 12;

impl<'a> StatFields<'a> {
    fn parse(stat: &'a str) -> Option<StatFields<'a>> {
        let after = &stat[stat.rfind(')')? + 1..];
        Some(StatFields(after.split_whitespace().collect()))
    }

    fn get(&self, i: usize) -> Option<&'a str> {
        self.0.get(i).copied()
    }
}

/// The parent pid in a `/proc/PID/stat` line.
fn parent_of(stat: &str) -> Option<Pid> {
    let raw = StatFields::parse(stat)?.get(PPID)?.parse().ok()?;
    Some(Pid::from_raw(raw))
}

/// Whether `/proc/PID/task/TID/children` exists: unknown (0), yes (1), no (2).
static CHILDREN_FILES: AtomicU8 = AtomicU8::new(0);

/// Every descendant of `pid` (children, grandchildren, …), in no particular order.
pub fn descendants(pid: Pid) -> Vec<Pid> {
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
fn descendants_via_children_files(pid: Pid) -> Option<Vec<Pid>> {
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
                        let child = Pid::from_raw(child);
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
fn descendants_via_stat(pid: Pid) -> Vec<Pid> {
    let mut edges: Vec<(Pid, Pid)> = Vec::new(); // (ppid, pid)
    if let Ok(dir) = fs::read_dir("/proc") {
        for ent in dir.flatten() {
            let Some(p) = ent.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            if let Ok(stat) = fs::read_to_string(format!("/proc/{p}/stat")) {
                if let Some(ppid) = parent_of(&stat) {
                    edges.push((ppid, Pid::from_raw(p)));
                }
            }
        }
    }
    edges.sort_unstable_by_key(|&(pp, p)| (pp.as_raw(), p.as_raw()));
    let mut out = Vec::new();
    let mut queue = vec![pid];
    while let Some(parent) = queue.pop() {
        let start = edges.partition_point(|(pp, _)| pp.as_raw() < parent.as_raw());
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    #[test]
    fn samples_this_process() {
        let s = sample_tree(Pid::this()).unwrap();
        assert!(s.pids >= 1);
        assert!(s.rss > 0 && s.virtual_ >= s.rss && s.private > 0, "{s:?}");
        assert!(rss_bytes(Pid::this()).is_some_and(|b| b > 0));
        assert!(cpu_ticks(Pid::this()).is_some());
        assert!(ticks_per_second() > 0.0);
    }

    #[test]
    fn sums_a_process_tree() {
        let mut child = Command::new("sh")
            .args(["-c", "sleep 5 & sleep 5; wait"])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pid = Pid::from_raw(child.id() as i32);
        // Wait (with a deadline) for the shell to have started both sleeps.
        let deadline = Instant::now() + Duration::from_secs(5);
        let sample = loop {
            let s = sample_tree(pid).unwrap();
            if s.pids >= 3 || Instant::now() > deadline {
                break s;
            }
            std::thread::yield_now();
        };
        let rest = descendants(pid);
        // The stat-walk fallback finds the same tree as the children files.
        let mut via_stat = descendants_via_stat(pid);
        let mut found = rest.clone();
        via_stat.sort_by_key(|p| p.as_raw());
        found.sort_by_key(|p| p.as_raw());
        for p in &rest {
            let _ = nix::sys::signal::kill(*p, nix::sys::signal::Signal::SIGKILL);
        }
        let _ = child.kill();
        let _ = child.wait();
        assert!(sample.pids >= 3, "sh and two sleeps: {sample:?}");
        assert_eq!(found, via_stat);
        let own = sample_tree(pid);
        assert!(own.is_err() || own.unwrap().pids <= sample.pids);
        assert!(sample.rss > 0 && sample.private > 0, "{sample:?}");
    }

    #[test]
    fn the_light_sample_agrees_with_the_exact_one_on_this_process() {
        let exact = sample_tree(Pid::this()).unwrap();
        let (light, ticks) = sample_tree_light(Pid::this(), Some(&[Pid::this()])).unwrap();
        assert_eq!(light.pids, 1);
        // Same pages, counted from other files: within a few percent (the test
        // process allocates a little in between).
        let near =
            |a: u64, b: u64| (a as f64 - b as f64).abs() <= 0.1 * b as f64 + (1 << 20) as f64;
        assert!(near(light.rss, exact.rss), "{light:?} {exact:?}");
        assert!(near(light.virtual_, exact.virtual_), "{light:?} {exact:?}");
        assert!(light.private > 0 && light.private <= light.rss, "{light:?}");
        assert!(ticks <= cpu_ticks(Pid::this()).unwrap() + 100);
        assert!(sample_tree_light(Pid::from_raw(i32::MAX - 1), None).is_err());
    }

    #[test]
    fn a_gone_process_is_an_error() {
        assert!(sample_tree(Pid::from_raw(i32::MAX - 1)).is_err());
        assert_eq!(rss_bytes(Pid::from_raw(i32::MAX - 1)), None);
    }

    #[test]
    fn parses_stat_with_odd_command_names() {
        assert_eq!(
            parent_of("42 (a) b (c)) S 7 42 42 0"),
            Some(Pid::from_raw(7))
        );
        assert_eq!(parent_of("1 (init) S 0 1 1"), Some(Pid::from_raw(0)));
        assert_eq!(parent_of("garbage"), None);
        let stat = "9 (x) y) R 1 9 9 0 -1 4194560 10 0 0 0 30 12 0 0 20 0 1 0";
        let f = StatFields::parse(stat).unwrap();
        assert_eq!((f.get(UTIME), f.get(STIME)), (Some("30"), Some("12")));
    }
}
