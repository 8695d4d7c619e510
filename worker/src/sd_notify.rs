//! The sd_notify protocol: state messages to the supervisor's datagram socket.
//!
//! `NOTIFY_SOCKET` holds a unix datagram socket path, or an abstract name when
//! it starts with `@`. Each datagram carries one or more `KEY=VALUE` lines.
//! The supervisor learns who sent a datagram from the kernel (`SO_PASSCRED`),
//! so nothing here needs to identify itself.
//!
//! Decisions:
//! - One unbound datagram socket is created at start and reused; every send
//!   names the destination (`sendto`), so a supervisor that re-creates its
//!   socket is still reached.
//! - Two kinds of send. [`Notifier::send`] blocks for at most
//!   [`SEND_TIMEOUT`] when the supervisor's receive queue is full, rather
//!   than dropping `READY=1`; it is for the rare state changes, sent from
//!   synchronous code. [`Notifier::try_send`] never blocks: the periodic
//!   messages (request counts, watchdog pings) come from tasks on the app's
//!   runtime, and a datagram socket's queue is short (Linux's
//!   `net.unix.max_dgram_qlen` is 10 by default), so a supervisor that is slow
//!   to read for a moment would otherwise stall every request of a
//!   single-threaded worker. A periodic message that finds the queue full is
//!   simply sent again at its next tick.
//! - `EINTR` (a signal arriving during a blocking send) is retried.
//! - Without `NOTIFY_SOCKET` (the worker runs by hand) the notifier is
//!   disabled and every send is a successful no-op.
//! - `NOTIFY_SOCKET` stays in the environment: processes the worker spawns
//!   may notify too, and the supervisor decides whether to listen to them.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Arc;
use std::time::Duration;

use appvisor_contract as contract;

use crate::error::WorkerError;

/// The longest a send waits for room in the supervisor's queue.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// A handle for sending state to the supervisor. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    target: Option<Arc<Target>>,
}

#[derive(Debug)]
struct Target {
    /// `NOTIFY_SOCKET` as given, for error messages.
    display: String,
    addr: SocketAddr,
    /// Blocking with a timeout, for [`Notifier::send`].
    blocking: UnixDatagram,
    /// Non-blocking, for [`Notifier::try_send`].
    nonblocking: UnixDatagram,
}

impl Notifier {
    /// From `NOTIFY_SOCKET`; disabled when it is unset or empty.
    pub fn from_env() -> Result<Notifier, WorkerError> {
        match std::env::var(contract::env::NOTIFY_SOCKET) {
            Ok(path) if !path.is_empty() => Notifier::to_socket(&path),
            _ => Ok(Notifier::disabled()),
        }
    }

    /// A notifier that sends nothing.
    pub fn disabled() -> Notifier {
        Notifier { target: None }
    }

    /// Sends to the given socket: a path, or `@name` for an abstract socket.
    pub fn to_socket(path: &str) -> Result<Notifier, WorkerError> {
        let invalid = |reason| WorkerError::InvalidEnv {
            var: contract::env::NOTIFY_SOCKET,
            value: path.to_owned(),
            reason,
        };
        let addr = if let Some(name) = path.strip_prefix('@') {
            SocketAddr::from_abstract_name(name.as_bytes())
                .map_err(|_| invalid("abstract name is too long"))?
        } else if path.starts_with('/') {
            SocketAddr::from_pathname(path)
                .map_err(|_| invalid("path is too long for a unix socket"))?
        } else {
            return Err(invalid("neither an absolute path nor an @abstract name"));
        };
        let setup = |what: &str, source| WorkerError::Notify {
            socket: path.to_owned(),
            message: format!("({what})"),
            source,
        };
        let blocking = UnixDatagram::unbound().map_err(|e| setup("creating a socket", e))?;
        blocking
            .set_write_timeout(Some(SEND_TIMEOUT))
            .map_err(|e| setup("setting a send timeout", e))?;
        let nonblocking = UnixDatagram::unbound().map_err(|e| setup("creating a socket", e))?;
        nonblocking
            .set_nonblocking(true)
            .map_err(|e| setup("making a socket non-blocking", e))?;
        Ok(Notifier {
            target: Some(Arc::new(Target {
                display: path.to_owned(),
                addr,
                blocking,
                nonblocking,
            })),
        })
    }

    /// Whether messages go anywhere.
    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Sends one datagram of `KEY=VALUE` lines as given, waiting up to
    /// [`SEND_TIMEOUT`] for room in the supervisor's queue.
    pub fn send(&self, message: &str) -> Result<(), WorkerError> {
        let Some(target) = &self.target else {
            return Ok(());
        };
        loop {
            match target
                .blocking
                .send_to_addr(message.as_bytes(), &target.addr)
            {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(source) => return Err(target.error(message, source)),
            }
        }
    }

    /// Sends one datagram without ever blocking: `Ok(false)` when the
    /// supervisor's queue is full and the message was not sent.
    pub fn try_send(&self, message: &str) -> Result<bool, WorkerError> {
        let Some(target) = &self.target else {
            return Ok(true);
        };
        loop {
            match target
                .nonblocking
                .send_to_addr(message.as_bytes(), &target.addr)
            {
                Ok(_) => return Ok(true),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(false),
                Err(source) => return Err(target.error(message, source)),
            }
        }
    }

    /// `READY=1`: the worker accepts requests; the supervisor may retire the
    /// previous generation.
    pub fn ready(&self) -> Result<(), WorkerError> {
        self.send(contract::notify::READY)
    }

    /// `STOPPING=1`: the worker has begun draining.
    pub fn stopping(&self) -> Result<(), WorkerError> {
        self.send(contract::notify::STOPPING)
    }

    /// `WATCHDOG=1`: a liveness ping. Never blocks; `Ok(false)` when the
    /// queue was full.
    pub fn watchdog(&self) -> Result<bool, WorkerError> {
        self.try_send(contract::notify::WATCHDOG)
    }

    /// `STATUS=…`: a one-line human status. Newlines would start a new
    /// assignment, so they are replaced by spaces.
    pub fn status(&self, status: &str) -> Result<(), WorkerError> {
        self.send(&format!(
            "{}={}",
            contract::notify::STATUS,
            status.replace('\n', " ")
        ))
    }

    /// `X_APPVISOR_REQUESTS=n`: the cumulative number of requests served,
    /// which the supervisor compares with the app's `requests` limit.
    /// Never blocks; `Ok(false)` when the queue was full (see [`try_send`](Notifier::try_send)).
    pub fn requests(&self, count: u64) -> Result<bool, WorkerError> {
        self.try_send(&format!(
            "{}={count}",
            contract::notify::X_APPVISOR_REQUESTS
        ))
    }
}

impl Target {
    fn error(&self, message: &str, source: std::io::Error) -> WorkerError {
        WorkerError::Notify {
            socket: self.display.clone(),
            message: message.to_owned(),
            source,
        }
    }
}
