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
//! - Sends block for at most [`SEND_TIMEOUT`] when the supervisor's receive
//!   queue is full, rather than dropping `READY=1`; a supervisor that does not
//!   read for that long is itself stuck.
//! - Without `NOTIFY_SOCKET` (the worker runs by hand) the notifier is
//!   disabled and every send is a successful no-op.
//! - `NOTIFY_SOCKET` stays in the environment: processes the worker spawns
//!   may notify too, and the supervisor decides whether to listen to them.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Arc;
use std::time::Duration;

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
    socket: UnixDatagram,
}

impl Notifier {
    /// From `NOTIFY_SOCKET`; disabled when it is unset or empty.
    pub fn from_env() -> Result<Notifier, WorkerError> {
        match std::env::var("NOTIFY_SOCKET") {
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
            var: "NOTIFY_SOCKET",
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
        let socket = UnixDatagram::unbound().map_err(|source| WorkerError::Notify {
            socket: path.to_owned(),
            message: "(creating the socket)".into(),
            source,
        })?;
        socket
            .set_write_timeout(Some(SEND_TIMEOUT))
            .map_err(|source| WorkerError::Notify {
                socket: path.to_owned(),
                message: "(setting a send timeout)".into(),
                source,
            })?;
        Ok(Notifier {
            target: Some(Arc::new(Target {
                display: path.to_owned(),
                addr,
                socket,
            })),
        })
    }

    /// Whether messages go anywhere.
    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Sends one datagram of `KEY=VALUE` lines as given.
    pub fn send(&self, message: &str) -> Result<(), WorkerError> {
        let Some(target) = &self.target else {
            return Ok(());
        };
        target
            .socket
            .send_to_addr(message.as_bytes(), &target.addr)
            .map(drop)
            .map_err(|source| WorkerError::Notify {
                socket: target.display.clone(),
                message: message.to_owned(),
                source,
            })
    }

    /// `READY=1`: the worker accepts requests; the supervisor may retire the
    /// previous generation.
    pub fn ready(&self) -> Result<(), WorkerError> {
        self.send("READY=1")
    }

    /// `STOPPING=1`: the worker has begun draining.
    pub fn stopping(&self) -> Result<(), WorkerError> {
        self.send("STOPPING=1")
    }

    /// `WATCHDOG=1`: a liveness ping.
    pub fn watchdog(&self) -> Result<(), WorkerError> {
        self.send("WATCHDOG=1")
    }

    /// `STATUS=…`: a one-line human status. Newlines would start a new
    /// assignment, so they are replaced by spaces.
    pub fn status(&self, status: &str) -> Result<(), WorkerError> {
        self.send(&format!("STATUS={}", status.replace('\n', " ")))
    }

    /// `X_APPVISOR_REQUESTS=n`: the cumulative number of requests served,
    /// which the supervisor compares with the app's `requests` limit.
    pub fn requests(&self, count: u64) -> Result<(), WorkerError> {
        self.send(&format!("X_APPVISOR_REQUESTS={count}"))
    }
}
