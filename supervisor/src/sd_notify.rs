//! The sd_notify protocol, both ways: one `NOTIFY_SOCKET` per worker that the
//! supervisor reads ([`NotifySocket`]), and the supervisor's own messages to systemd
//! when it runs as a `Type=notify` service ([`notify_own_parent`]).
//!
//! (Named for the protocol: `notify` alone would also fit inotify, which the file
//! watchers in [`crate::trigger::watch`] use.)
//!
//! A worker (or anything it spawns) sends datagrams of `KEY=VALUE` lines. We read
//! the sender's credentials (`SO_PASSCRED`) and accept messages only from the
//! worker's own process group — systemd's `NotifyAccess=` idea — so a stray child
//! that inherited the variable cannot declare a generation ready.
//!
//! A datagram is at most [`MAX_DATAGRAM`] bytes (4096, as systemd's
//! `NOTIFY_BUFFER_MAX`); a longer one is refused whole — never parsed from its
//! truncated first 4 KiB, where a `READY=1` could hide in front of garbage.
//!
//! Understood keys: `READY=1`, `STOPPING=1`, `WATCHDOG=1`, `STATUS=…`, and
//! appvisor's own `X_APPVISOR_REQUESTS=<cumulative count>` and
//! `X_APPVISOR_SESSIONS=<sessions handed off while draining>`. Others are ignored.
//!
//! A worker keeps the `NOTIFY_SOCKET` path it was started with, so when the state
//! dir is deleted under a running supervisor, [`rebind_missing`] binds every
//! forwarding socket whose file is gone again at the same path: running workers'
//! `WATCHDOG=1`, request counts and `STOPPING=1` keep arriving (without it a
//! watchdog app would be recycled for silence, and request limits would stop
//! counting). Datagrams sent between the deletion and the rebind are lost.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use nix::sys::socket::{recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags};
use std::path::{Path, PathBuf};

use appvisor_contract::notify as key;
use tokio::io::Interest;
use tokio::net::UnixDatagram;
use tokio::sync::mpsc;

use crate::procfs::Pid;

/// One parsed datagram.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct NotifyMessage {
    pub ready: bool,
    pub stopping: bool,
    pub watchdog: bool,
    pub status: Option<String>,
    pub requests: Option<u64>,
    /// `X_APPVISOR_SESSIONS=<n>`: sessions handed to the store while draining.
    pub sessions: Option<u64>,
}

impl NotifyMessage {
    pub fn parse(data: &[u8]) -> NotifyMessage {
        let mut m = NotifyMessage::default();
        for line in String::from_utf8_lossy(data).lines() {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            match k {
                key::READY_KEY => m.ready = v == key::ON,
                key::STOPPING_KEY => m.stopping = v == key::ON,
                key::WATCHDOG_KEY => m.watchdog = v == key::ON,
                key::STATUS => m.status = Some(v.to_string()),
                key::X_APPVISOR_REQUESTS => m.requests = v.trim().parse().ok(),
                key::X_APPVISOR_SESSIONS => m.sessions = v.trim().parse().ok(),
                _ => {}
            }
        }
        m
    }
}

/// The longest notify datagram accepted (see the module docs).
pub const MAX_DATAGRAM: usize = 4096;

/// A bound notify socket. Dropping it removes the socket file.
#[derive(Debug)]
pub struct NotifySocket {
    /// What goes in `NOTIFY_SOCKET` (a path, or `@name` for an abstract socket).
    pub env_value: String,
    path: Option<PathBuf>,
    socket: Option<UnixDatagram>,
    /// Its entry in [`FORWARDING`], once [`NotifySocket::forward`] runs.
    registered: Option<u64>,
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        // The forwarding task holds the socket: it ends with its worker (the
        // pool's receiver outlives every worker, so it would not end by itself).
        if let Some(id) = self.registered.take() {
            if let Some(f) = forwarding().remove(&id) {
                f.task.abort();
            }
        }
        if let Some(p) = &self.path {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Starts forwarding from one more socket to the same receiver.
type Respawn = Box<dyn Fn(UnixDatagram) -> tokio::task::AbortHandle + Send>;

/// A socket being forwarded: its task, and (bound to a path) what
/// [`rebind_missing`] needs to bind it again and forward from the new one.
struct Forwarder {
    path: Option<PathBuf>,
    respawn: Respawn,
    task: tokio::task::AbortHandle,
}

static FORWARDING: std::sync::Mutex<std::collections::BTreeMap<u64, Forwarder>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());
static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn forwarding() -> std::sync::MutexGuard<'static, std::collections::BTreeMap<u64, Forwarder>> {
    FORWARDING.lock().unwrap_or_else(|e| e.into_inner())
}

/// Binds again, at the same path, every forwarded notify socket whose file is
/// gone (the state dir was deleted and made again; its `run/` must exist).
/// Returns how many were bound again; a failure is logged and the rest go on.
pub fn rebind_missing() -> usize {
    let mut rebound = 0;
    for f in forwarding().values_mut() {
        let Some(path) = f.path.as_ref().filter(|p| !p.exists()) else {
            continue;
        };
        match bind_path(path).and_then(UnixDatagram::from_std) {
            Ok(socket) => {
                // The old socket has no name any more: nothing reaches it.
                f.task.abort();
                f.task = (f.respawn)(socket);
                rebound += 1;
            }
            Err(e) => tracing::warn!(
                "Cannot bind the notify socket {} again ({e}); its worker's messages are lost until it is replaced.",
                path.display()
            ),
        }
    }
    rebound
}

/// A datagram socket bound at `path` (a stale file there replaced), owner-only,
/// passing credentials, non-blocking.
fn bind_path(path: &Path) -> io::Result<std::os::unix::net::UnixDatagram> {
    let _ = std::fs::remove_file(path);
    let s = std::os::unix::net::UnixDatagram::bind(path)?;
    // Owner only, as every socket in the state dir: the worker runs as the
    // supervisor's user. (Under `bind` the mode came from the umask: 0755.)
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    set_passcred(&s)?;
    s.set_nonblocking(true)?;
    Ok(s)
}

use appvisor_config::MAX_UNIX_PATH as SUN_PATH_MAX;

impl NotifySocket {
    /// Binds `dir/name.sock`; if that path is too long for a unix socket, an
    /// abstract socket `@appvisor/<pid>/<name>` instead.
    pub fn bind(dir: &Path, name: &str) -> io::Result<NotifySocket> {
        Self::bind_in(dir, name, false)
    }

    /// Binds an abstract socket `@appvisor/<pid>/<name>`: for a worker that runs
    /// as another user, who cannot reach a path inside the owner-only state dir.
    /// Anyone may send to it, but messages are accepted only from the worker's
    /// process group (credentials are checked), as for a path.
    pub fn bind_abstract(dir: &Path, name: &str) -> io::Result<NotifySocket> {
        Self::bind_in(dir, name, true)
    }

    fn bind_in(dir: &Path, name: &str, force_abstract: bool) -> io::Result<NotifySocket> {
        let path = dir.join(format!("{name}.sock"));
        let (socket, env_value, path) = if !force_abstract && path.as_os_str().len() <= SUN_PATH_MAX
        {
            let s = bind_path(&path)?;
            (s, path.display().to_string(), Some(path))
        } else {
            use std::os::linux::net::SocketAddrExt;
            let abstract_name = format!("appvisor/{}/{name}", std::process::id());
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(&abstract_name)?;
            let s = std::os::unix::net::UnixDatagram::bind_addr(&addr)?;
            set_passcred(&s)?;
            s.set_nonblocking(true)?;
            (s, format!("@{abstract_name}"), None)
        };
        Ok(NotifySocket {
            env_value,
            path,
            socket: Some(UnixDatagram::from_std(socket)?),
            registered: None,
        })
    }

    /// Forwards every accepted message to `tx` as `(tag, message)` until the
    /// receiver is gone. Messages whose sender is outside process group `pgid`
    /// are dropped.
    pub fn forward<T: Clone + Send + 'static>(
        &mut self,
        pgid: i32,
        tag: T,
        tx: mpsc::UnboundedSender<(T, NotifyMessage)>,
    ) {
        let Some(socket) = self.socket.take() else {
            return;
        };
        let task = forward_from(socket, pgid, tag.clone(), tx.clone());
        let respawn: Respawn =
            Box::new(move |socket| forward_from(socket, pgid, tag.clone(), tx.clone()));
        let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = self.path.clone();
        forwarding().insert(
            id,
            Forwarder {
                path,
                respawn,
                task,
            },
        );
        self.registered = Some(id);
    }
}

/// The forwarding loop of one socket (see [`NotifySocket::forward`]).
fn forward_from<T: Clone + Send + 'static>(
    socket: UnixDatagram,
    pgid: i32,
    tag: T,
    tx: mpsc::UnboundedSender<(T, NotifyMessage)>,
) -> tokio::task::AbortHandle {
    {
        tokio::spawn(async move {
            let mut buf = vec![0u8; MAX_DATAGRAM];
            let mut cmsg = cmsg_buffer();
            loop {
                let got = tokio::select! {
                    r = recv_with_pid(&socket, &mut buf, &mut cmsg) => r,
                    _ = tx.closed() => return,
                };
                let Ok((len, pid)) = got else {
                    return;
                };
                // Too long (truncated): refused whole, as a stranger's is.
                let Some(len) = len else {
                    continue;
                };
                if !sender_allowed(pid, pgid) {
                    continue;
                }
                if tx
                    .send((tag.clone(), NotifyMessage::parse(&buf[..len])))
                    .is_err()
                {
                    return;
                }
            }
        })
        .abort_handle()
    }
}

fn sender_allowed(pid: Option<i32>, pgid: i32) -> bool {
    match pid {
        Some(pid) if pid == pgid => true,
        Some(pid) => {
            nix::unistd::getpgid(Some(Pid::from_raw(pid))).is_ok_and(|group| group.as_raw() == pgid)
        }
        // No credentials (should not happen with SO_PASSCRED): refuse.
        None => false,
    }
}

fn set_passcred(s: &std::os::unix::net::UnixDatagram) -> io::Result<()> {
    Ok(setsockopt(s, sockopt::PassCred, &true)?)
}

/// Receives one datagram and the sender's pid from `SCM_CREDENTIALS`; the length is
/// `None` if the datagram did not fit in `buf` (or its control data did not).
async fn recv_with_pid(
    socket: &UnixDatagram,
    buf: &mut [u8],
    cmsg: &mut [u8],
) -> io::Result<(Option<usize>, Option<i32>)> {
    socket
        .async_io(Interest::READABLE, || {
            recvmsg_creds(socket.as_raw_fd(), buf, cmsg)
        })
        .await
}

/// Room for the credentials and a few descriptors: a sender passing more gets its
/// message refused (the control data is truncated), and the kernel closes the rest.
fn cmsg_buffer() -> Vec<u8> {
    nix::cmsg_space!(nix::sys::socket::UnixCredentials, [RawFd; 16])
}

fn recvmsg_creds(
    fd: RawFd,
    buf: &mut [u8],
    cmsg: &mut [u8],
) -> io::Result<(Option<usize>, Option<i32>)> {
    let mut iov = [io::IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(
        fd,
        &mut iov,
        Some(cmsg),
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut pid = None;
    for c in msg.cmsgs()? {
        match c {
            ControlMessageOwned::ScmCredentials(cred) => pid = Some(cred.pid()),
            // Somebody passed fds (FDSTORE=1): close them, we don't keep any.
            ControlMessageOwned::ScmRights(fds) => {
                for fd in fds {
                    let _ = nix::unistd::close(fd);
                }
            }
            _ => {}
        }
    }
    let whole = !msg
        .flags
        .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
    Ok((whole.then_some(msg.bytes), pid))
}

/// sd_notify to whoever started the supervisor (systemd `Type=notify`); nothing
/// without `NOTIFY_SOCKET`. Best effort: systemd not listening is no reason to stop.
pub fn notify_own_parent(msg: &str) {
    let Ok(path) = std::env::var(appvisor_contract::env::NOTIFY_SOCKET) else {
        return;
    };
    let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() else {
        return;
    };
    if let Some(name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        if let Ok(addr) = std::os::unix::net::SocketAddr::from_abstract_name(name) {
            let _ = sock.send_to_addr(msg.as_bytes(), &addr);
        }
    } else {
        let _ = sock.send_to(msg.as_bytes(), path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_several_assignments() {
        let m =
            NotifyMessage::parse(b"READY=1\nSTATUS=serving 4 clients\nX_APPVISOR_REQUESTS=42\n");
        assert!(m.ready);
        assert_eq!(m.status.as_deref(), Some("serving 4 clients"));
        assert_eq!(m.requests, Some(42));
        assert!(!m.stopping);
        let m = NotifyMessage::parse(b"STOPPING=1\nWATCHDOG=1\nBOGUS\n");
        assert!(m.stopping && m.watchdog && !m.ready);
    }

    /// Through a real socket: the kernel's credentials name our pid, so a socket
    /// forwarding for our own process group passes the message on, and one for
    /// another group drops it.
    #[tokio::test]
    async fn forwards_only_messages_from_the_workers_group() {
        let dir = std::env::temp_dir().join(format!("appvisor-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let own = nix::unistd::getpgrp().as_raw();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut ours = NotifySocket::bind(&dir, "ours").unwrap();
        ours.forward(own, "ours", tx.clone());
        let mut theirs = NotifySocket::bind(&dir, "theirs").unwrap();
        theirs.forward(own + 1_000_000, "theirs", tx);
        let client = std::os::unix::net::UnixDatagram::unbound().unwrap();
        client
            .send_to(b"READY=1\nX_APPVISOR_REQUESTS=3\n", &theirs.env_value)
            .unwrap();
        client
            .send_to(b"READY=1\nX_APPVISOR_REQUESTS=3\n", &ours.env_value)
            .unwrap();
        let (tag, m) = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
            .await
            .expect("a message within 5 s")
            .unwrap();
        assert_eq!(tag, "ours", "the other group's message was dropped");
        assert!(m.ready);
        assert_eq!(m.requests, Some(3));
        drop((ours, theirs));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A datagram longer than [`MAX_DATAGRAM`] is refused whole, even from the
    /// worker's own group and with `READY=1` in its first bytes; one of exactly
    /// the limit is taken.
    #[tokio::test]
    async fn a_datagram_over_the_limit_is_refused_whole() {
        let dir = std::env::temp_dir().join(format!("appvisor-notify-big-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let own = nix::unistd::getpgrp().as_raw();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut sock = NotifySocket::bind(&dir, "w").unwrap();
        sock.forward(own, "w", tx);
        let client = std::os::unix::net::UnixDatagram::unbound().unwrap();
        let padded = |total: usize, head: &str| {
            let mut d = head.as_bytes().to_vec();
            d.resize(total, b'x');
            d
        };
        client
            .send_to(&padded(MAX_DATAGRAM + 1, "READY=1\n"), &sock.env_value)
            .unwrap();
        client
            .send_to(&padded(MAX_DATAGRAM, "STATUS=fits\n"), &sock.env_value)
            .unwrap();
        let (_, m) = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
            .await
            .expect("a message within 5 s")
            .unwrap();
        assert!(!m.ready, "the oversized READY=1 was parsed");
        assert_eq!(m.status.as_deref(), Some("fits"));
        drop(sock);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
