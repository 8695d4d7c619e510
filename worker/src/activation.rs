//! Socket activation: the listening sockets the supervisor passes at fd 3 and up.
//!
//! The protocol is systemd's (`sd_listen_fds(3)`): `LISTEN_PID` names the
//! process the fds are meant for, `LISTEN_FDS` says how many there are
//! (starting at fd 3), and `LISTEN_FDNAMES` optionally names them, colon
//! separated. The parsing is split in two so that it can be tested without
//! touching the process: [`ListenVars::parse`] is a pure function of the three
//! values and our pid; [`take_inherited`] reads the real environment, checks
//! each fd with the kernel and takes ownership of it.
//!
//! Decisions, each following libsystemd:
//! - a `LISTEN_PID` that is not ours means "not for us": no fds, no error
//!   (a child that inherited the variables from a parent must not grab fds
//!   that are not its own);
//! - a missing `LISTEN_PID` or `LISTEN_FDS` means no fds;
//! - the variables are removed from the environment once read, so a process
//!   the worker spawns does not think the sockets are its own, and the fds are
//!   marked close-on-exec for the same reason;
//! - the fds are taken at most once per process, even if two threads race.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use appvisor_contract as contract;

use crate::error::WorkerError;

/// The first fd number the supervisor passes, as in systemd.
pub const LISTEN_FDS_START: RawFd = contract::LISTEN_FDS_START;

/// The raw values of the three socket-activation variables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListenVars {
    /// `LISTEN_PID`: the pid the fds are meant for.
    pub pid: Option<String>,
    /// `LISTEN_FDS`: how many fds, starting at 3.
    pub fds: Option<String>,
    /// `LISTEN_FDNAMES`: colon-separated names, one per fd.
    pub names: Option<String>,
}

/// One fd that the environment says was passed to us, not yet checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassedFd {
    /// The descriptor number (3, 4, …).
    pub fd: RawFd,
    /// Its name from `LISTEN_FDNAMES`, if the supervisor named it.
    pub name: Option<String>,
}

impl ListenVars {
    /// Reads the three variables from the process environment.
    pub fn from_env() -> ListenVars {
        ListenVars {
            pid: std::env::var(contract::env::LISTEN_PID).ok(),
            fds: std::env::var(contract::env::LISTEN_FDS).ok(),
            names: std::env::var(contract::env::LISTEN_FDNAMES).ok(),
        }
    }

    /// Decides which fds are ours, given our pid. Pure: touches no fd.
    pub fn parse(&self, our_pid: u32) -> Result<Vec<PassedFd>, WorkerError> {
        let Some(pid) = self.pid.as_deref() else {
            return Ok(Vec::new());
        };
        let pid: u32 = match pid.trim().parse() {
            Ok(0) | Err(_) => {
                return Err(WorkerError::InvalidEnv {
                    var: contract::env::LISTEN_PID,
                    value: pid.to_owned(),
                    reason: "not a positive process id",
                })
            }
            Ok(pid) => pid,
        };
        if pid != our_pid {
            return Ok(Vec::new());
        }
        let Some(fds) = self.fds.as_deref() else {
            return Ok(Vec::new());
        };
        let count: usize = fds.trim().parse().map_err(|_| WorkerError::InvalidEnv {
            var: contract::env::LISTEN_FDS,
            value: fds.to_owned(),
            reason: "not a non-negative number",
        })?;
        // fd numbers are c_int; refuse a count that would overflow them.
        let last = RawFd::try_from(count)
            .ok()
            .and_then(|n| n.checked_add(LISTEN_FDS_START));
        if last.is_none() {
            return Err(WorkerError::InvalidEnv {
                var: contract::env::LISTEN_FDS,
                value: fds.to_owned(),
                reason: "too many fds",
            });
        }
        let names: Vec<Option<String>> = match self.names.as_deref() {
            None => vec![None; count],
            // An empty value names zero fds, not one empty name.
            Some("") if count == 0 => Vec::new(),
            Some(list) => {
                let names: Vec<Option<String>> = list
                    .split(':')
                    .map(|n| (!n.is_empty()).then(|| n.to_owned()))
                    .collect();
                if names.len() != count {
                    return Err(WorkerError::FdNamesMismatch {
                        names: names.len(),
                        fds: count,
                    });
                }
                names
            }
        };
        Ok(names
            .into_iter()
            .zip(LISTEN_FDS_START..)
            .map(|(name, fd)| PassedFd { fd, name })
            .collect())
    }
}

/// The address family of an inherited listening socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// IPv4 or IPv6 TCP.
    Tcp,
    /// A unix-domain stream socket.
    Unix,
}

/// A listening socket inherited from the supervisor, checked and owned.
///
/// It is plain (blocking, not registered with any runtime); turn it into an
/// async [`Listener`](crate::Listener) with
/// [`into_listener`](InheritedSocket::into_listener) inside a tokio runtime,
/// or take the raw fd with [`into_fd`](InheritedSocket::into_fd) for another
/// event loop.
#[derive(Debug)]
pub struct InheritedSocket {
    fd: OwnedFd,
    name: Option<String>,
    family: Family,
}

impl InheritedSocket {
    /// The name from `LISTEN_FDNAMES`, if any.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// TCP or unix.
    pub fn family(&self) -> Family {
        self.family
    }

    /// The descriptor number it had when inherited.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Gives up the typed view and returns the fd.
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }

    /// Registers the socket with the current tokio runtime.
    pub fn into_listener(self) -> Result<crate::Listener, WorkerError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(WorkerError::NoRuntime {
                what: "InheritedSocket::into_listener",
            });
        }
        let fd_no = self.fd.as_raw_fd();
        let register = |source| WorkerError::Register {
            what: format!("inherited fd {fd_no}"),
            source,
        };
        let listener = match self.family {
            Family::Tcp => {
                let std = std::net::TcpListener::from(self.fd);
                std.set_nonblocking(true).map_err(register)?;
                crate::Listener::from_tcp(tokio::net::TcpListener::from_std(std).map_err(register)?)
            }
            Family::Unix => {
                let std = std::os::unix::net::UnixListener::from(self.fd);
                std.set_nonblocking(true).map_err(register)?;
                crate::Listener::from_unix(
                    tokio::net::UnixListener::from_std(std).map_err(register)?,
                )
            }
        };
        Ok(listener.with_name(self.name))
    }
}

/// Set once the process has taken its fds: they are taken at most once.
static TAKEN: AtomicBool = AtomicBool::new(false);

/// Takes the sockets passed by the supervisor, once per process.
///
/// Reads `LISTEN_PID`/`LISTEN_FDS`/`LISTEN_FDNAMES`, removes them from the
/// environment (even when they are invalid, as libsystemd does), checks that
/// every fd is an open, listening TCP or unix stream socket, marks it
/// close-on-exec and takes ownership of it. A second call returns no sockets.
///
/// Removing variables from the environment races with C code reading it in
/// another thread, so call this early, before starting threads: that is why
/// [`Worker::from_env`](crate::Worker::from_env) is not async.
pub fn take_inherited() -> Result<Vec<InheritedSocket>, WorkerError> {
    if TAKEN.swap(true, Ordering::SeqCst) {
        return Ok(Vec::new());
    }
    let vars = ListenVars::from_env();
    for var in [
        contract::env::LISTEN_PID,
        contract::env::LISTEN_FDS,
        contract::env::LISTEN_FDNAMES,
    ] {
        std::env::remove_var(var);
    }
    let passed = vars.parse(std::process::id())?;
    let mut sockets = Vec::with_capacity(passed.len());
    for PassedFd { fd, name } in passed {
        // SAFETY: `fd` was passed to this process by its supervisor (LISTEN_PID is
        // our pid) and is only borrowed here, for the checks. Nothing closes it while
        // borrowed: this runs before the app starts threads, and the TAKEN guard makes
        // it the only code looking at inherited fds. A number that is not open makes
        // the first `fcntl` fail with EBADF, reported before anything else uses it.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let family = check_listening_socket(fd, borrowed)?;
        // SAFETY: `check_listening_socket` has just confirmed `fd` is open, and the
        // TAKEN guard ensures it is wrapped exactly once, so this OwnedFd is its
        // only owner.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        sockets.push(InheritedSocket { fd, name, family });
    }
    Ok(sockets)
}

/// Confirms `fd` is an open listening stream socket, marks it close-on-exec
/// and says which family it is.
fn check_listening_socket(fd: RawFd, borrowed: BorrowedFd<'_>) -> Result<Family, WorkerError> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    let bad = |source: std::io::Error| WorkerError::BadFd { fd, source };
    let flags = fcntl(borrowed, FcntlArg::F_GETFD).map_err(|e| bad(e.into()))?;
    let flags = FdFlag::from_bits_truncate(flags);
    if !flags.contains(FdFlag::FD_CLOEXEC) {
        fcntl(borrowed, FcntlArg::F_SETFD(flags | FdFlag::FD_CLOEXEC))
            .map_err(|e| bad(e.into()))?;
    }
    let socket = socket2::SockRef::from(&borrowed);
    let sock_type = match socket.r#type() {
        Ok(t) => t,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSOCK) => {
            return Err(WorkerError::NotAListener {
                fd,
                what: "not a socket".into(),
            })
        }
        Err(source) => return Err(bad(source)),
    };
    if sock_type != socket2::Type::STREAM {
        return Err(WorkerError::NotAListener {
            fd,
            what: format!(
                "socket type {}, not SOCK_STREAM",
                libc::c_int::from(sock_type)
            ),
        });
    }
    if !socket.is_listener().map_err(bad)? {
        return Err(WorkerError::NotAListener {
            fd,
            what: "listen() was not called on it".into(),
        });
    }
    let domain = socket.domain().map_err(bad)?;
    if domain == socket2::Domain::IPV4 || domain == socket2::Domain::IPV6 {
        Ok(Family::Tcp)
    } else if domain == socket2::Domain::UNIX {
        Ok(Family::Unix)
    } else {
        Err(WorkerError::NotAListener {
            fd,
            what: format!(
                "address family {}, not TCP or unix",
                libc::c_int::from(domain)
            ),
        })
    }
}
