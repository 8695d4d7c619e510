//! The sd_notify protocol: one `NOTIFY_SOCKET` per worker.
//!
//! A worker (or anything it spawns) sends datagrams of `KEY=VALUE` lines. We read
//! the sender's credentials (`SO_PASSCRED`) and accept messages only from the
//! worker's own process group — systemd's `NotifyAccess=` idea — so a stray child
//! that inherited the variable cannot declare a generation ready.
//!
//! Understood keys: `READY=1`, `STOPPING=1`, `WATCHDOG=1`, `STATUS=…`, and
//! appvisor's own `X_APPVISOR_REQUESTS=<cumulative count>` and
//! `X_APPVISOR_SESSIONS=<sessions handed off while draining>`. Others are ignored.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use appvisor_contract::notify as key;
use tokio::io::Interest;
use tokio::net::UnixDatagram;
use tokio::sync::mpsc;

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

/// A bound notify socket. Dropping it removes the socket file.
#[derive(Debug)]
pub struct NotifySocket {
    /// What goes in `NOTIFY_SOCKET` (a path, or `@name` for an abstract socket).
    pub env_value: String,
    path: Option<PathBuf>,
    socket: Option<UnixDatagram>,
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        if let Some(p) = &self.path {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Longest path a `sockaddr_un` holds, minus the terminating NUL.
const SUN_PATH_MAX: usize = 107;

impl NotifySocket {
    /// Binds `dir/name.sock`; if that path is too long for a unix socket, an
    /// abstract socket `@appvisor/<pid>/<name>` instead.
    pub fn bind(dir: &Path, name: &str) -> io::Result<NotifySocket> {
        let path = dir.join(format!("{name}.sock"));
        let (socket, env_value, path) = if path.as_os_str().len() <= SUN_PATH_MAX {
            let _ = std::fs::remove_file(&path);
            let s = std::os::unix::net::UnixDatagram::bind(&path)?;
            (s, path.display().to_string(), Some(path))
        } else {
            use std::os::linux::net::SocketAddrExt;
            let abstract_name = format!("appvisor/{}/{name}", std::process::id());
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(&abstract_name)?;
            let s = std::os::unix::net::UnixDatagram::bind_addr(&addr)?;
            (s, format!("@{abstract_name}"), None)
        };
        set_passcred(&socket)?;
        socket.set_nonblocking(true)?;
        Ok(NotifySocket {
            env_value,
            path,
            socket: Some(UnixDatagram::from_std(socket)?),
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
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let got = tokio::select! {
                    r = recv_with_pid(&socket, &mut buf) => r,
                    _ = tx.closed() => return,
                };
                let Ok((len, pid)) = got else {
                    return;
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
        });
    }
}

fn sender_allowed(pid: Option<i32>, pgid: i32) -> bool {
    match pid {
        Some(pid) if pid == pgid => true,
        // SAFETY: getpgid has no memory-safety preconditions.
        Some(pid) => (unsafe { libc::getpgid(pid) }) == pgid,
        // No credentials (should not happen with SO_PASSCRED): refuse.
        None => false,
    }
}

fn set_passcred(s: &std::os::unix::net::UnixDatagram) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: setsockopt with a valid int option on a socket we own.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PASSCRED,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Receives one datagram and the sender's pid from `SCM_CREDENTIALS`.
async fn recv_with_pid(socket: &UnixDatagram, buf: &mut [u8]) -> io::Result<(usize, Option<i32>)> {
    socket
        .async_io(Interest::READABLE, || {
            recvmsg_creds(socket.as_raw_fd(), buf)
        })
        .await
}

fn recvmsg_creds(fd: i32, buf: &mut [u8]) -> io::Result<(usize, Option<i32>)> {
    // Room for one ucred control message.
    let mut cmsg_space = [0u64; 8];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; all pointers below point into live buffers.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg_space.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cmsg_space);
    // SAFETY: recvmsg with a properly initialised msghdr.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut pid = None;
    // SAFETY: walking the control messages the kernel wrote into our buffer.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            let hdr = &*cmsg;
            if hdr.cmsg_level == libc::SOL_SOCKET && hdr.cmsg_type == libc::SCM_CREDENTIALS {
                let cred = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const libc::ucred);
                pid = Some(cred.pid);
            } else if hdr.cmsg_level == libc::SOL_SOCKET && hdr.cmsg_type == libc::SCM_RIGHTS {
                // Somebody passed fds (FDSTORE=1): close them, we don't keep any.
                let data = libc::CMSG_DATA(cmsg) as *const i32;
                let count = (hdr.cmsg_len as usize - libc::CMSG_LEN(0) as usize) / 4;
                for i in 0..count {
                    drop(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok((n as usize, pid))
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
}
