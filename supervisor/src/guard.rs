//! The guard: makes sure no worker outlives a supervisor killed with SIGKILL.
//!
//! `PR_SET_PDEATHSIG` kills a worker when the supervisor dies, but not the worker's
//! own children: they are re-parented and live on, holding ports and files. So the
//! supervisor starts one tiny helper process — `appvisor __guard`, the same binary —
//! and tells it, over a pipe, every process group it creates (`+PGID`) and retires
//! (`-PGID`). When the pipe reaches end-of-file, the supervisor is gone, however it
//! died: the guard SIGKILLs every group it still knows, then exits. It ignores the
//! terminal's SIGINT/SIGTERM/SIGHUP so a Ctrl-C cannot take it down before the
//! supervisor has finished its own graceful stop.
//!
//! The guard also owns the last word on the workers' cgroups (`cgroup.rs`): the
//! supervisor creates its directory of worker cgroups when it starts the guard and
//! tells it (`=PATH`); at end-of-file the guard kills that whole tree with
//! `cgroup.kill` — daemons that left their process group with `setsid` included —
//! and removes it. Where no cgroup can be made, this is said once, and only the
//! process groups are killed, as before.

use std::collections::HashSet;
use std::io::{self, BufRead, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};

use crate::cgroup::Cgroups;
use crate::procfs::Pid;

/// The supervisor's side of the pipe.
#[derive(Clone)]
pub struct Guard {
    pipe: Arc<Mutex<Option<(Child, ChildStdin)>>>,
    /// The workers' cgroups; `None` where none can be made (or in pool tests).
    cgroups: Option<Arc<Cgroups>>,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Guard")
    }
}

impl Guard {
    /// Starts `appvisor __guard`.
    pub fn start() -> io::Result<Guard> {
        let exe = std::env::current_exe()?;
        let mut child = Command::new(exe)
            .arg("__guard")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()?;
        let stdin = child.stdin.take().expect("piped stdin");
        // `APPVISOR_CGROUPS=off`: for hosts where the supervisor must not touch
        // the cgroup tree (and for the tests of the fallback).
        let wanted = std::env::var_os("APPVISOR_CGROUPS").is_none_or(|v| v != "off");
        let made = if wanted {
            Cgroups::create()
        } else {
            Err("APPVISOR_CGROUPS=off".to_string())
        };
        let cgroups = match made {
            Ok(c) => Some(Arc::new(c)),
            Err(why) => {
                tracing::warn!(
                    "Workers get no cgroup of their own ({why}): a daemon a worker leaves behind with `setsid` can outlive it; only process groups are killed."
                );
                None
            }
        };
        let guard = Guard {
            pipe: Arc::new(Mutex::new(Some((child, stdin)))),
            cgroups,
        };
        if let Some(c) = &guard.cgroups {
            guard.send(&format!("={}\n", c.base().display()));
        }
        Ok(guard)
    }

    /// The workers' cgroups, if they can be made.
    pub fn cgroups(&self) -> Option<&Cgroups> {
        self.cgroups.as_deref()
    }

    /// A guard that does nothing (for tests of the pool).
    pub fn disabled() -> Guard {
        Guard {
            pipe: Arc::new(Mutex::new(None)),
            cgroups: None,
        }
    }

    pub fn protect(&self, pgid: i32) {
        self.send(&format!("+{pgid}\n"));
    }

    pub fn release(&self, pgid: i32) {
        self.send(&format!("-{pgid}\n"));
    }

    fn send(&self, line: &str) {
        let mut p = self.pipe.lock().unwrap();
        if let Some((_, stdin)) = p.as_mut() {
            if stdin.write_all(line.as_bytes()).is_err() {
                tracing::warn!(
                    "The guard process is gone; workers may outlive a crash of the supervisor."
                );
                *p = None;
            }
        }
    }

    /// Ends the guard cleanly (every group already stopped).
    pub fn finish(&self) {
        if let Some((mut child, stdin)) = self.pipe.lock().unwrap().take() {
            drop(stdin);
            let _ = child.wait();
        }
    }
}

/// `appvisor __guard`: the guard process itself.
pub fn guard_main() -> ! {
    use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow, Signal};
    // Blocked rather than ignored: the guard never unblocks them, so they are never
    // delivered — the effect of SIG_IGN, without swapping a handler (which is unsafe
    // in `nix`). The mask is the guard's own; it starts no process.
    let mut terminal = SigSet::empty();
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        terminal.add(sig);
    }
    let _ = sigprocmask(SigmaskHow::SIG_BLOCK, Some(&terminal), None);
    // Own process group: a signal sent to the supervisor's group misses us.
    let _ = nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0));
    let mut groups: HashSet<i32> = HashSet::new();
    let mut cgroups: Option<std::path::PathBuf> = None;
    let stdin = io::stdin();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let (op, num) = line.split_at(line.len().min(1));
        if op == "=" {
            cgroups = Some(num.into());
            continue;
        }
        let Ok(pgid) = num.trim().parse::<i32>() else {
            continue;
        };
        if pgid <= 1 {
            continue;
        }
        match op {
            "+" => {
                groups.insert(pgid);
            }
            "-" => {
                groups.remove(&pgid);
            }
            _ => {}
        }
    }
    for pgid in groups {
        let _ = crate::signal::kill_group(Pid::from_raw(pgid));
    }
    if let Some(dir) = cgroups {
        // Killing the parent kills every worker's cgroup below it.
        crate::cgroup::kill(&dir);
        crate::cgroup::remove_tree(&dir, std::time::Duration::from_secs(5));
    }
    std::process::exit(0)
}
