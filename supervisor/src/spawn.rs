//! Spawning one worker process: fork + exec, with the sockets at fd 3….
//!
//! Why not `std::process::Command`: `LISTEN_PID` must equal the worker's own pid,
//! which only exists after fork, and nothing may allocate between fork and exec in a
//! multi-threaded parent. So every byte the child needs — argv, envp, a
//! `LISTEN_PID=` slot wide enough for any pid — is prepared before fork, and the
//! child only writes digits into its own copy of that slot and calls
//! async-signal-safe functions.
//!
//! The child, in order: resets signal mask and dispositions (the supervisor ignores
//! SIGPIPE; a worker must not inherit that), becomes leader of its own process group
//! (so the whole tree can be signalled at once), asks for SIGKILL when its parent
//! thread dies (the supervisor forks from its single, long-lived runtime thread) and
//! re-checks `getppid()` to close the race, waits until the parent has placed it in
//! its cgroup (a byte on a pipe; a child born in its cgroup through `clone3` gets
//! the byte at once), wires stdio, places the listening sockets
//! at 3…, sets its resource limits and umask, drops to the app's user and groups
//! (only when appvisor runs as root: `setgroups`, `setgid`, then `setuid`, with
//! ids resolved when the config was loaded), changes directory and execs. Any failure is reported through a
//! close-on-exec pipe as an errno, so `spawn` returns a precise error instead of a
//! worker that "exited 127".

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use appvisor_config::ProcessConfig;

/// What to start.
#[derive(Debug)]
pub struct SpawnSpec<'a> {
    /// argv; `argv[0]` is resolved through `PATH` (from `env`) when it has no slash.
    pub argv: &'a [String],
    pub cwd: &'a Path,
    /// The complete environment, without `LISTEN_PID`/`WATCHDOG_PID` (added here).
    pub env: Vec<(String, String)>,
    /// Listening fds, placed at 3, 4, … in order. All must be ≥ 3 + len.
    pub listen_fds: &'a [RawFd],
    /// Also set `WATCHDOG_PID` to the child's pid.
    pub watchdog: bool,
    /// The cgroup (v2 directory) to place the child in before it runs anything.
    pub cgroup: Option<&'a Path>,
    /// User, groups, rlimits, umask.
    pub process: &'a ProcessConfig,
}

/// Names, once at start, every app whose workers will run as root (appvisor is
/// root and the app sets no `user`), as uWSGI does — a warning, never a refusal,
/// so existing setups keep working — and every app whose `user`/`group` cannot be
/// applied because appvisor is not root.
pub fn warn_about_privileges(apps: &[appvisor_config::AppConfig]) {
    let root = nix::unistd::geteuid().is_root();
    for app in apps {
        let p = &app.process;
        let sets_ids = p.user.is_some() || p.group.is_some() || p.groups.is_some();
        if root && p.user.is_none() {
            tracing::warn!(
                app = %app.name,
                "The workers of app {:?} run as root; set `user` (and `group`) in its [[app]] to drop privileges.",
                app.name
            );
        } else if !root && sets_ids {
            tracing::warn!(
                app = %app.name,
                "App {:?} sets user/group, but appvisor does not run as root: its workers keep appvisor's user.",
                app.name
            );
        }
    }
}

/// Whether a worker with `process` runs as another user than appvisor: it sets a
/// user or group and appvisor runs as root (otherwise they are not applied: a
/// non-root process cannot change its ids).
pub fn drops_privileges(process: &ProcessConfig) -> bool {
    (process.user.is_some() || process.group.is_some() || process.groups.is_some())
        && nix::unistd::geteuid().is_root()
}

/// A started worker: its pid (also its process group id) and its output pipes.
#[derive(Debug)]
pub struct Spawned {
    pub pid: i32,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    /// Why the child is not in `SpawnSpec::cgroup` (it runs anyway).
    pub cgroup_error: Option<io::Error>,
}

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("command {program:?} not found in PATH ({path}); give an absolute path in `command` or fix PATH in `env`")]
    NotFound { program: String, path: String },
    #[error(
        "cannot run {program:?}: {} (cwd {cwd})",
        crate::fd_limit::explain(source)
    )]
    Exec {
        program: String,
        cwd: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "cannot start {program:?}: {step}: {}",
        crate::fd_limit::explain(source)
    )]
    Setup {
        program: String,
        step: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("argument or environment contains a NUL byte: {0:?}")]
    Nul(String),
}

/// Which step failed in the child; sent with the errno through the error pipe.
#[repr(u8)]
#[derive(Clone, Copy)]
enum Step {
    Pgid = 1,
    Pdeathsig,
    Stdio,
    Sockets,
    Chdir,
    Exec,
    Placement,
    Rlimit,
    Groups,
    Setgid,
    Setuid,
}

fn step_name(code: u8) -> &'static str {
    match code {
        1 => "setpgid",
        2 => "prctl(PR_SET_PDEATHSIG)",
        3 => "redirecting stdio",
        4 => "placing listening sockets at fd 3…",
        5 => "chdir",
        7 => "waiting for the parent to place it in its cgroup",
        8 => "setrlimit",
        9 => "setgroups",
        10 => "setgid",
        11 => "setuid",
        _ => "exec",
    }
}

const PID_WIDTH: usize = 20;

/// Starts the process. Must be called from the supervisor's long-lived runtime
/// thread (see `PR_SET_PDEATHSIG` in the module docs).
pub fn spawn(spec: &SpawnSpec<'_>) -> Result<Spawned, SpawnError> {
    let program_name = spec.argv.first().cloned().unwrap_or_default();
    let program = resolve_program(&program_name, spec.cwd, &spec.env)?;
    let setup = |step: &'static str| {
        let program = program_name.clone();
        move |source: io::Error| SpawnError::Setup {
            program,
            step,
            source,
        }
    };

    // Everything the child needs, allocated now.
    let c_program = cstring(program.as_os_str().as_bytes())?;
    let c_argv: Vec<CString> = spec
        .argv
        .iter()
        .map(|a| cstring(a.as_bytes()))
        .collect::<Result<_, _>>()?;
    let mut c_env: Vec<Vec<u8>> = Vec::with_capacity(spec.env.len() + 2);
    for (k, v) in &spec.env {
        let mut e = Vec::with_capacity(k.len() + v.len() + 2);
        e.extend_from_slice(k.as_bytes());
        e.push(b'=');
        e.extend_from_slice(v.as_bytes());
        if e.contains(&0) {
            return Err(SpawnError::Nul(k.clone()));
        }
        e.push(0);
        c_env.push(e);
    }
    // Slots the child fills with its own pid.
    let mut pid_slots = Vec::new();
    if !spec.listen_fds.is_empty() {
        pid_slots.push(c_env.len());
        c_env.push(pid_slot(appvisor_contract::env::LISTEN_PID));
    }
    if spec.watchdog {
        pid_slots.push(c_env.len());
        c_env.push(pid_slot(appvisor_contract::env::WATCHDOG_PID));
    }
    let c_cwd = cstring(spec.cwd.as_os_str().as_bytes())?;
    let mut argv_ptrs: Vec<*const libc::c_char> = c_argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    // The child sees the same addresses in its copy of memory, so the pointer array
    // can be built now; the child only rewrites the digits inside the pid slots.
    let mut envp: Vec<*const libc::c_char> = c_env.iter().map(|e| e.as_ptr().cast()).collect();
    envp.push(std::ptr::null());

    let devnull = std::fs::File::open("/dev/null").map_err(setup("opening /dev/null"))?;
    let (out_r, out_w) = pipe().map_err(setup("creating the stdout pipe"))?;
    let (err_r, err_w) = pipe().map_err(setup("creating the stderr pipe"))?;
    let (report_r, report_w) = pipe().map_err(setup("creating the error pipe"))?;
    // The parent's "go": one byte once the child is in its cgroup.
    let (go_r, go_w) = pipe().map_err(setup("creating the placement pipe"))?;
    // Sources of dup2 must not sit where targets go (0..3+n).
    let floor = 3 + spec.listen_fds.len() as RawFd;
    let devnull = crate::sockets::raise_fd(OwnedFd::from(devnull)).map_err(setup("fd"))?;
    let out_w = crate::sockets::raise_fd(out_w).map_err(setup("fd"))?;
    let err_w = crate::sockets::raise_fd(err_w).map_err(setup("fd"))?;
    let report_w = crate::sockets::raise_fd(report_w).map_err(setup("fd"))?;
    let go_r = crate::sockets::raise_fd(go_r).map_err(setup("fd"))?;
    for fd in spec.listen_fds {
        assert!(*fd >= floor, "listening fd {fd} below the floor {floor}");
    }
    let listen_fds: Vec<RawFd> = spec.listen_fds.to_vec();
    let nofile = crate::fd_limit::for_workers();
    let p = spec.process;
    let rlimits: Vec<(libc::__rlimit_resource_t, libc::rlim_t)> = [
        (libc::RLIMIT_NOFILE, p.nofile),
        (libc::RLIMIT_CORE, p.core),
        (libc::RLIMIT_NPROC, p.nproc),
    ]
    .into_iter()
    .filter_map(|(r, v)| v.map(|v| (r, v as libc::rlim_t)))
    .collect();
    let ids = if drops_privileges(p) {
        Ids {
            uid: p.user.as_ref().map(|u| u.1),
            gid: p.group.as_ref().map(|g| g.1),
            groups: p.groups.clone(),
        }
    } else {
        Ids::default()
    };
    let parent = nix::unistd::getpid().as_raw();
    // The child is born in its cgroup when the kernel can (`clone3` with
    // `CLONE_INTO_CGROUP`): moving a running process instead (a write to
    // `cgroup.procs`) takes the cgroup core's global write lock, which waits for an
    // RCU grace period — measured here at 2–14 ms on an idle machine, more under
    // load, on the path of every restart after a crash. Not when the child drops
    // privileges: glibc's `setuid`/`setgroups` signal every thread glibc believes
    // the process has, and only `fork` tells glibc the child has one.
    let cgroup_dir = match spec.cgroup {
        Some(dir) if ids.uid.is_none() && ids.gid.is_none() && ids.groups.is_none() => {
            std::fs::File::open(dir).ok().map(OwnedFd::from)
        }
        _ => None,
    };
    let clone_args = cgroup_dir
        .as_ref()
        .map(|d| CloneArgs::into_cgroup(d.as_raw_fd()));

    // Raw `libc` from here to `execve` on purpose: between fork and exec the child of
    // a multi-threaded parent may only call async-signal-safe functions and must not
    // allocate (another thread may have held the allocator's lock at the fork). Safe
    // wrappers give no such promise (`nix` builds `Vec`s and `CString`s, std's
    // `io::Error` may box), so the child uses libc with buffers prepared above.
    //
    // SAFETY: fork (or clone3 as a fork, with `clone_args` alive across the call
    // and its size passed with it) in a possibly multi-threaded process. The child branch only calls
    // async-signal-safe functions and writes into memory allocated before the fork
    // (its own copy-on-write pages); it never returns, it execs or `_exit`s. The
    // parent branch just gets the pid.
    let (pid, born_inside) = unsafe {
        let mut born_inside = false;
        let mut pid = -1;
        if let Some(args) = &clone_args {
            // Returns as `fork` does. glibc's fork handlers do not run: the child
            // must not rely on glibc's idea of the process's threads (hence no
            // privilege drop on this path, see above).
            pid = libc::syscall(
                libc::SYS_clone3,
                args as *const CloneArgs,
                std::mem::size_of::<CloneArgs>(),
            ) as libc::pid_t;
            born_inside = pid >= 0;
        }
        if pid < 0 {
            // No `clone3` (ENOSYS before Linux 5.3), no `CLONE_INTO_CGROUP` (5.7),
            // or the cgroup refused it: fork, and move the child below.
            pid = libc::fork();
        }
        if pid == 0 {
            child_after_fork(ChildPlan {
                parent,
                devnull: devnull.as_raw_fd(),
                out: out_w.as_raw_fd(),
                err: err_w.as_raw_fd(),
                report: report_w.as_raw_fd(),
                rlimits: &rlimits,
                umask: p.umask,
                ids: &ids,
                go: go_r.as_raw_fd(),
                go_w: go_w.as_raw_fd(),
                listen_fds: &listen_fds,
                cwd: &c_cwd,
                program: &c_program,
                argv: &argv_ptrs,
                env: &mut c_env,
                envp: &envp,
                pid_slots: &pid_slots,
                nofile,
            })
        }
        (pid, born_inside)
    };
    if pid < 0 {
        return Err(setup("fork")(io::Error::last_os_error()));
    }
    drop(go_r);
    drop(cgroup_dir);
    // Into the cgroup before the child may run anything (it waits for the byte).
    // A failure does not stop the worker: it runs as it would without cgroups.
    let cgroup_error = spec
        .cgroup
        .filter(|_| !born_inside)
        .and_then(|dir| crate::cgroup::place(dir, pid).err());
    // If the write fails the child is gone (it reads EOF and exits): the error
    // pipe reports it below.
    let _ = nix::unistd::write(&go_w, &[1u8]);
    drop(go_w);
    drop(report_w);
    drop(out_w);
    drop(err_w);
    drop(devnull);

    // The child execs (closing the pipe: EOF) or writes [step, errno × 4].
    let mut buf = [0u8; 5];
    let mut got = 0;
    loop {
        match nix::unistd::read(&report_r, &mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(setup("reading the error pipe")(e.into())),
        }
        if got == buf.len() {
            break;
        }
    }
    if got == 0 {
        return Ok(Spawned {
            pid,
            stdout: out_r,
            stderr: err_r,
            cgroup_error,
        });
    }
    // The child failed before exec and `_exit`ed; reap it here so no zombie remains
    // (the reaper may race us to it, which is harmless).
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
    let errno = i32::from_ne_bytes([buf[1], buf[2], buf[3], buf[4]]);
    let source = io::Error::from_raw_os_error(errno);
    if buf[0] == Step::Exec as u8 || buf[0] == Step::Chdir as u8 {
        Err(SpawnError::Exec {
            program: program_name,
            cwd: spec.cwd.display().to_string(),
            source,
        })
    } else {
        Err(SpawnError::Setup {
            program: program_name,
            step: step_name(buf[0]),
            source,
        })
    }
}

/// The ids a worker drops to; all `None` keeps appvisor's.
#[derive(Default)]
struct Ids {
    uid: Option<u32>,
    gid: Option<u32>,
    groups: Option<Vec<u32>>,
}

struct ChildPlan<'a> {
    parent: libc::pid_t,
    rlimits: &'a [(libc::__rlimit_resource_t, libc::rlim_t)],
    umask: Option<u32>,
    ids: &'a Ids,
    devnull: RawFd,
    out: RawFd,
    err: RawFd,
    report: RawFd,
    /// Read end of the placement pipe; `go_w` is the child's copy of the write end.
    go: RawFd,
    go_w: RawFd,
    listen_fds: &'a [RawFd],
    cwd: &'a CString,
    program: &'a CString,
    argv: &'a [*const libc::c_char],
    env: &'a mut [Vec<u8>],
    envp: &'a [*const libc::c_char],
    pid_slots: &'a [usize],
    /// The open-file limit the supervisor was started with (see `fd_limit`).
    nofile: Option<libc::rlimit>,
}

/// The kernel's `struct clone_args` up to `cgroup` (`CLONE_ARGS_SIZE_VER2`), for
/// `clone3(CLONE_INTO_CGROUP)`: a `fork` whose child starts in the cgroup open at
/// `cgroup`. Neither `nix` nor `libc` wraps `clone3`, and `libc` declares this
/// struct only on some architectures, so it is written out here.
#[repr(C)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

impl CloneArgs {
    fn into_cgroup(cgroup: RawFd) -> CloneArgs {
        const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
        CloneArgs {
            flags: CLONE_INTO_CGROUP,
            pidfd: 0,
            child_tid: 0,
            parent_tid: 0,
            // As fork: the parent hears of the child's end through SIGCHLD.
            exit_signal: libc::SIGCHLD as u64,
            // No new stack: without CLONE_VM the child runs on its copy of ours.
            stack: 0,
            stack_size: 0,
            tls: 0,
            set_tid: 0,
            set_tid_size: 0,
            cgroup: cgroup as u64,
        }
    }
}

/// Runs in the forked child. Only async-signal-safe calls; no allocation.
///
/// # Safety
/// Must be called only in the child right after `fork`.
unsafe fn child_after_fork(plan: ChildPlan<'_>) -> ! {
    // SAFETY (whole function): every call is async-signal-safe and every pointer
    // refers to memory prepared before fork.
    unsafe {
        let fail = |step: Step| -> ! {
            let errno = *libc::__errno_location();
            let e = errno.to_ne_bytes();
            let msg = [step as u8, e[0], e[1], e[2], e[3]];
            libc::write(plan.report, msg.as_ptr().cast(), msg.len());
            libc::_exit(127);
        };

        // Signals: empty mask, default dispositions (Rust ignores SIGPIPE).
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        for sig in 1..32 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }

        if libc::setpgid(0, 0) != 0 {
            fail(Step::Pgid);
        }
        // Lowering the soft limit always succeeds; a failure would leave the
        // supervisor's higher one, which is harmless.
        if let Some(l) = &plan.nofile {
            libc::setrlimit(libc::RLIMIT_NOFILE, l);
        }
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
            fail(Step::Pdeathsig);
        }
        // The parent may have died between fork and prctl.
        if libc::getppid() != plan.parent {
            libc::_exit(1);
        }
        // Wait to be placed in the cgroup. Our copy of the write end is closed
        // first, so a parent that dies before writing gives EOF, not a hang.
        libc::close(plan.go_w);
        let mut go = 0u8;
        loop {
            let n = libc::read(plan.go, (&mut go as *mut u8).cast(), 1);
            if n == 1 {
                break;
            }
            if n < 0 && *libc::__errno_location() == libc::EINTR {
                continue;
            }
            fail(Step::Placement);
        }
        libc::close(plan.go);

        if libc::dup2(plan.devnull, 0) < 0
            || libc::dup2(plan.out, 1) < 0
            || libc::dup2(plan.err, 2) < 0
        {
            fail(Step::Stdio);
        }
        for (i, &fd) in plan.listen_fds.iter().enumerate() {
            let target = 3 + i as RawFd;
            // Sources are ≥ 64 (see sockets::raise_fd), so `fd != target` always and
            // dup2 yields a descriptor without FD_CLOEXEC. Clear it anyway, should
            // the two ever coincide (dup2(fd, fd) would keep the flag).
            if libc::dup2(fd, target) < 0 {
                fail(Step::Sockets);
            }
            let flags = libc::fcntl(target, libc::F_GETFD);
            if flags < 0 || libc::fcntl(target, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                fail(Step::Sockets);
            }
        }

        // Our own pid into the pre-allocated `LISTEN_PID=` / `WATCHDOG_PID=` slots.
        let pid = libc::getpid();
        for &slot in plan.pid_slots {
            let entry = &mut plan.env[slot];
            let eq = entry.iter().position(|&b| b == b'=').unwrap_or(0) + 1;
            write_decimal(&mut entry[eq..], pid as u64);
        }
        // Limits first: raising a hard limit needs the privileges we drop below.
        for &(resource, value) in plan.rlimits {
            let lim = libc::rlimit {
                rlim_cur: value,
                rlim_max: value,
            };
            if libc::setrlimit(resource, &lim) != 0 {
                fail(Step::Rlimit);
            }
        }
        if let Some(mask) = plan.umask {
            libc::umask(mask as libc::mode_t);
        }
        // Groups, then gid, then uid: after setuid nothing else may change.
        if let Some(groups) = &plan.ids.groups {
            if libc::setgroups(groups.len(), groups.as_ptr()) != 0 {
                fail(Step::Groups);
            }
        }
        if let Some(gid) = plan.ids.gid {
            if libc::setgid(gid) != 0 {
                fail(Step::Setgid);
            }
        }
        if let Some(uid) = plan.ids.uid {
            if libc::setuid(uid) != 0 {
                fail(Step::Setuid);
            }
        }
        if libc::chdir(plan.cwd.as_ptr()) != 0 {
            fail(Step::Chdir);
        }
        libc::execve(
            plan.program.as_ptr(),
            plan.argv.as_ptr(),
            plan.envp.as_ptr(),
        );
        fail(Step::Exec);
    }
}

/// Writes `n` in decimal followed by NUL into `out` (which holds ≥ 21 bytes).
fn write_decimal(out: &mut [u8], mut n: u64) {
    let mut digits = [0u8; PID_WIDTH];
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        out[i] = digits[len - 1 - i];
    }
    out[len] = 0;
}

/// `NAME=` followed by room for the pid's digits and the terminating NUL.
fn pid_slot(name: &str) -> Vec<u8> {
    let prefix = name.len() + 1;
    let mut v = Vec::with_capacity(prefix + PID_WIDTH + 1);
    v.extend_from_slice(name.as_bytes());
    v.push(b'=');
    v.resize(prefix + PID_WIDTH + 1, 0);
    v
}

fn cstring(bytes: &[u8]) -> Result<CString, SpawnError> {
    CString::new(bytes).map_err(|_| SpawnError::Nul(String::from_utf8_lossy(bytes).into_owned()))
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?)
}

/// `argv[0]` with a slash is taken relative to `cwd`; without one it is looked up in
/// the `PATH` the worker will see.
fn resolve_program(
    program: &str,
    cwd: &Path,
    env: &[(String, String)],
) -> Result<PathBuf, SpawnError> {
    if program.contains('/') {
        return Ok(cwd.join(program));
    }
    let path = env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let candidate = Path::new(dir).join(OsStr::new(program));
        let candidate = if candidate.is_relative() {
            cwd.join(candidate)
        } else {
            candidate
        };
        if is_executable(&candidate) {
            return Ok(candidate);
        }
    }
    Err(SpawnError::NotFound {
        program: program.to_string(),
        path,
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_slot_holds_any_pid() {
        let mut slot = pid_slot("LISTEN_PID");
        let eq = 11;
        write_decimal(&mut slot[eq..], 4_194_304);
        let s = std::ffi::CStr::from_bytes_until_nul(&slot).unwrap();
        assert_eq!(s.to_str().unwrap(), "LISTEN_PID=4194304");
        write_decimal(&mut slot[eq..], u64::MAX);
        let s = std::ffi::CStr::from_bytes_until_nul(&slot).unwrap();
        assert_eq!(s.to_str().unwrap(), format!("LISTEN_PID={}", u64::MAX));
    }

    /// The child execs inside its cgroup on both paths: born there (`clone3`, a
    /// worker keeping appvisor's ids) and moved before exec (`fork`, a worker that
    /// sets `user`/`group` — here our own ids — when the test runs as root).
    #[test]
    fn the_child_starts_inside_its_cgroup() {
        let Ok(cgroups) = crate::cgroup::Cgroups::create() else {
            eprintln!("skipped: no writable cgroup v2 hierarchy here");
            return;
        };
        let uid = nix::unistd::getuid().as_raw();
        let gid = nix::unistd::getgid().as_raw();
        let plain = ProcessConfig::default();
        let dropping = ProcessConfig {
            user: Some(("me".into(), uid)),
            group: Some(("me".into(), gid)),
            ..ProcessConfig::default()
        };
        for process in [&plain, &dropping] {
            let dir = cgroups.worker("spawn-test").unwrap();
            let argv = [
                "sh".to_string(),
                "-c".into(),
                "cat /proc/self/cgroup".into(),
            ];
            let spawned = spawn(&SpawnSpec {
                argv: &argv,
                cwd: Path::new("/"),
                env: vec![("PATH".into(), "/usr/bin:/bin".into())],
                listen_fds: &[],
                watchdog: false,
                cgroup: Some(&dir),
                process,
            })
            .unwrap();
            assert!(spawned.cgroup_error.is_none(), "{:?}", spawned.cgroup_error);
            let mut out = String::new();
            std::io::Read::read_to_string(&mut std::fs::File::from(spawned.stdout), &mut out)
                .unwrap();
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(spawned.pid), None);
            let name = dir.file_name().unwrap().to_str().unwrap();
            let own = out.lines().find(|l| l.starts_with("0::")).unwrap_or("");
            assert!(own.ends_with(&format!("/{name}")), "{out}");
            let _ = std::fs::remove_dir(&dir);
        }
        let _ = std::fs::remove_dir(cgroups.base());
    }

    #[test]
    fn program_lookup_names_the_path() {
        let env = vec![("PATH".to_string(), "/nonexistent".to_string())];
        let err = resolve_program("no-such-prog", Path::new("/"), &env).unwrap_err();
        assert!(err.to_string().contains("/nonexistent"), "{err}");
        let env = vec![("PATH".to_string(), "/usr/bin:/bin".to_string())];
        assert!(resolve_program("sh", Path::new("/"), &env).is_ok());
    }
}
