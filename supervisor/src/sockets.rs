//! Listening sockets: created once by the supervisor, shared by every generation.
//!
//! The supervisor owns each app's listening sockets for as long as the app is
//! configured. Every worker of every generation inherits the same sockets at fd 3…,
//! so while one generation drains and the next starts, the kernel's listen backlog
//! holds new connections: nothing is refused and there is no proxy.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use appvisor_config::{Listen, ListenAddress};
use socket2::{Domain, SockAddr, Socket, Type};

/// The listen backlog: the kernel clamps it to `net.core.somaxconn`. A real backlog
/// matters: it is what holds connections while no worker is accepting.
const BACKLOG: i32 = 4096;

/// Listening fds are kept at or above this number in the supervisor, so that placing
/// them at 3, 4, … in a child can never overwrite a source fd.
const FD_FLOOR: RawFd = 64;

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("app {app:?}: cannot listen on {address}: address already in use — another process (or another app) holds it; stop it or choose another address in `listen`")]
    InUse { app: String, address: String },
    #[error("app {app:?}: cannot listen on {address}: {source}")]
    Io {
        app: String,
        address: String,
        #[source]
        source: io::Error,
    },
}

/// One bound, listening socket of an app. Clones share the socket: a config
/// reload that keeps an address keeps its socket (and its backlog).
#[derive(Debug, Clone)]
pub struct BoundSocket {
    pub listen: Listen,
    fd: std::sync::Arc<OwnedFd>,
}

impl BoundSocket {
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Binds every `listen` entry of `app`.
pub fn bind_all(app: &str, listens: &[Listen]) -> Result<Vec<BoundSocket>, SocketError> {
    listens.iter().map(|l| bind(app, l)).collect()
}

/// Like [`bind_all`], but an address already bound in `held` is reused as is.
pub fn rebind_all(
    app: &str,
    listens: &[Listen],
    held: &[BoundSocket],
) -> Result<Vec<BoundSocket>, SocketError> {
    listens
        .iter()
        .map(
            |l| match held.iter().find(|h| h.listen.address == l.address) {
                Some(h) => Ok(BoundSocket {
                    listen: l.clone(),
                    fd: h.fd.clone(),
                }),
                None => bind(app, l),
            },
        )
        .collect()
}

/// Binds one listen entry (close-on-exec, non-blocking is left to the workers).
pub fn bind(app: &str, listen: &Listen) -> Result<BoundSocket, SocketError> {
    let address = listen.address.to_string();
    let err = |source: io::Error| {
        if source.kind() == io::ErrorKind::AddrInUse {
            SocketError::InUse {
                app: app.to_string(),
                address: address.clone(),
            }
        } else {
            SocketError::Io {
                app: app.to_string(),
                address: address.clone(),
                source,
            }
        }
    };
    let socket = match &listen.address {
        ListenAddress::Tcp(addr) => {
            let s = Socket::new(Domain::for_address(*addr), Type::STREAM, None).map_err(err)?;
            // SO_REUSEADDR: a restarted supervisor can bind while old connections sit
            // in TIME_WAIT. Not SO_REUSEPORT: two supervisors must not share a port.
            s.set_reuse_address(true).map_err(err)?;
            if addr.is_ipv6() {
                s.set_only_v6(true).map_err(err)?;
            }
            s.bind(&(*addr).into()).map_err(err)?;
            s
        }
        ListenAddress::Unix(path) => {
            remove_stale_unix_socket(path).map_err(err)?;
            let s = Socket::new(Domain::UNIX, Type::STREAM, None).map_err(err)?;
            s.bind(&SockAddr::unix(path).map_err(err)?).map_err(err)?;
            s
        }
    };
    socket.listen(BACKLOG).map_err(err)?;
    let fd = raise_fd(OwnedFd::from(socket)).map_err(err)?;
    Ok(BoundSocket {
        listen: listen.clone(),
        fd: std::sync::Arc::new(fd),
    })
}

/// A unix socket file left by a dead process is removed; one that still accepts
/// connections is "in use".
fn remove_stale_unix_socket(path: &Path) -> io::Result<()> {
    if !path.exists() {
        return Ok(());
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(io::Error::from(io::ErrorKind::AddrInUse)),
        Err(_) => std::fs::remove_file(path),
    }
}

/// Moves `fd` to a number ≥ [`FD_FLOOR`], keeping it close-on-exec.
pub fn raise_fd(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() >= FD_FLOOR {
        return Ok(fd);
    }
    dup_above_floor(fd.as_fd())
}

/// A close-on-exec duplicate of `fd` numbered ≥ [`FD_FLOOR`] (`F_DUPFD_CLOEXEC`).
/// `OwnedFd::try_clone` does the same with a floor of 3, which would collide with
/// the numbers workers inherit.
fn dup_above_floor(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let new = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(FD_FLOOR))?;
    // SAFETY: `new` is the fresh descriptor F_DUPFD_CLOEXEC just returned; nothing
    // else knows its number, so this OwnedFd is its only owner.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// Waits until any of `fds` (listening sockets) has a connection waiting, without
/// accepting it: the worker started next takes it from the backlog. The fds are
/// registered as they are — never switched to non-blocking, since that flag is
/// shared with every worker that inherits them.
pub async fn wait_for_connection(fds: &[RawFd]) -> io::Result<()> {
    use tokio::io::unix::AsyncFd;
    use tokio::io::Interest;
    if fds.is_empty() {
        return std::future::pending().await;
    }
    let mut waits = Vec::new();
    for &fd in fds {
        // SAFETY: `fd` is a listening socket of a `BoundSocket` the caller holds for
        // the whole wait, so it is open while borrowed for the dup; the dup is an
        // `OwnedFd` the AsyncFd owns until dropped, and its number never changes.
        let registered = unsafe {
            let owned = dup_above_floor(BorrowedFd::borrow_raw(fd))?;
            AsyncFd::register_with_interest(owned, Interest::READABLE)
        };
        waits.push(registered.map_err(io::Error::from)?);
    }
    let futures = waits.iter().map(|a| Box::pin(a.readable()));
    let (result, _, _) = futures_select_all(futures.collect()).await;
    result.map(|_| ())
}

/// The first of several futures to finish (a tiny `select_all`).
async fn futures_select_all<F: std::future::Future + Unpin>(
    mut futures: Vec<F>,
) -> (F::Output, usize, Vec<F>) {
    std::future::poll_fn(move |cx| {
        for i in 0..futures.len() {
            if let std::task::Poll::Ready(out) = std::pin::Pin::new(&mut futures[i]).poll(cx) {
                let rest = std::mem::take(&mut futures);
                return std::task::Poll::Ready((out, i, rest));
            }
        }
        std::task::Poll::Pending
    })
    .await
}
