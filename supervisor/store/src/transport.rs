//! Socket I/O for connections, registered for readability only.
//!
//! tokio's `UnixStream` registers every socket for both read and write readiness.
//! On a unix socket that is costly: each time the client reads a reply, the
//! kernel signals "writable" (`unix_write_space` has no "was it ever full?" check,
//! unlike TCP), waking the store's epoll for nothing — measured as ~45% more system
//! time per request under `redis-benchmark`. Redis itself asks for write readiness
//! only while output is pending; so does this: replies are written directly, and
//! only when the socket buffer is full is a duplicate of the descriptor registered
//! for writability until it drains.

use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// A std socket the transport can drive: unix or TCP stream.
pub(crate) trait Socket: AsFd + AsRawFd + Send + Sync + Sized + 'static
where
    for<'a> &'a Self: Read,
{
    fn duplicate(&self) -> io::Result<Self>;
}

impl Socket for std::os::unix::net::UnixStream {
    fn duplicate(&self) -> io::Result<Self> {
        self.try_clone()
    }
}

impl Socket for std::net::TcpStream {
    fn duplicate(&self) -> io::Result<Self> {
        self.try_clone()
    }
}

pub(crate) struct Transport<S: Socket>
where
    for<'a> &'a S: Read,
{
    fd: AsyncFd<S>,
}

impl<S: Socket> Transport<S>
where
    for<'a> &'a S: Read,
{
    /// Takes a non-blocking socket.
    pub fn new(socket: S) -> io::Result<Self> {
        Ok(Transport {
            fd: register(socket, Interest::READABLE)?,
        })
    }

    /// Reads what is available into `buf`, waiting if nothing is; 0 means EOF.
    pub async fn read(&self, buf: &mut ReadBuffer, need: usize) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            let spare = buf.spare(need);
            let wanted = spare.len();
            let mut socket: &S = guard.get_inner();
            match socket.read(spare) {
                Ok(n) => {
                    // A short read drained the socket: the next read would only
                    // say EWOULDBLOCK, so wait for the next edge instead.
                    if n > 0 && n < wanted {
                        guard.clear_ready();
                    }
                    buf.filled(n);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => guard.clear_ready(),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes all of `data`, waiting for buffer space when the socket is full.
    pub async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            // MSG_NOSIGNAL: a client gone mid-reply is an error here, not SIGPIPE.
            match socket2::SockRef::from(self.fd.get_ref())
                .send_with_flags(data, libc::MSG_NOSIGNAL)
            {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => data = &data[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.wait_writable().await?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Sends what the socket takes now of `data`, without waiting: the number
    /// of bytes sent, 0 when the socket buffer is full.
    pub fn write_some(&self, data: &[u8]) -> io::Result<usize> {
        loop {
            match socket2::SockRef::from(self.fd.get_ref())
                .send_with_flags(data, libc::MSG_NOSIGNAL)
            {
                Ok(0) if !data.is_empty() => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Resolves once the socket has room for more bytes.
    pub async fn writable(&self) -> io::Result<()> {
        self.wait_writable().await
    }

    async fn wait_writable(&self) -> io::Result<()> {
        // epoll will not take the same descriptor twice; a duplicate is a separate
        // registration of the same socket, dropped (deregistered) once writable.
        let writable = register(self.fd.get_ref().duplicate()?, Interest::WRITABLE)?;
        let _ready = writable.writable().await?;
        Ok(())
    }

    pub fn shutdown(&self) {
        let _ = socket2::SockRef::from(self.fd.get_ref()).shutdown(std::net::Shutdown::Both);
    }
}

fn register<S: Socket>(socket: S, interest: Interest) -> io::Result<AsyncFd<S>>
where
    for<'a> &'a S: Read,
{
    // SAFETY: the AsyncFd owns `socket` (a std stream that owns its descriptor and
    // never changes it), so the descriptor stays open and the same until the
    // AsyncFd is dropped, which deregisters it first.
    unsafe { AsyncFd::register_with_interest(socket, interest) }.map_err(|e| e.into())
}

/// A read buffer that is always initialised (so reading into it needs no unsafe):
/// `buf[start..end]` holds unparsed bytes; it grows by zero-filling, only when a
/// request is larger than it, and is compacted by moving the unparsed tail down.
pub(crate) struct ReadBuffer {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Free space offered to the next read: doubled (up to [`MAX_READ`]) each time
    /// a read fills it, so a pipelining client is read in few calls while an idle
    /// one keeps a small buffer.
    read_size: usize,
}

/// Least free space offered to a read.
const MIN_READ: usize = 4 * 1024;
/// Most free space offered to a read (a large request still gets what it needs).
const MAX_READ: usize = 64 * 1024;

impl ReadBuffer {
    pub fn new(size: usize) -> ReadBuffer {
        ReadBuffer {
            buf: vec![0; size],
            start: 0,
            end: 0,
            read_size: MIN_READ,
        }
    }

    pub fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    pub fn len(&self) -> usize {
        self.end - self.start
    }

    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    pub fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start >= self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Free space to read into, making room toward `need` unparsed bytes in all.
    /// The room grows with the bytes that actually came (at most twice what is
    /// buffered, plus one read), never straight to what a header claims: a
    /// client that sends `$268435000\r\n` and stalls costs a few KiB, not 256 MiB.
    fn spare(&mut self, need: usize) -> &mut [u8] {
        let earned = self.len().saturating_mul(2).saturating_add(MAX_READ);
        let want = need.min(earned).max(self.len() + self.read_size);
        if self.buf.len() - self.start < want {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if self.buf.len() < want {
                self.buf.resize(want.max(self.buf.len() * 2), 0);
            }
        }
        &mut self.buf[self.end..]
    }

    fn filled(&mut self, n: usize) {
        if self.end + n == self.buf.len() {
            self.read_size = (self.read_size * 2).min(MAX_READ);
        } else if n < self.read_size / 4 {
            self.read_size = (self.read_size / 2).max(MIN_READ);
        }
        self.end += n;
    }

    /// Gives back a buffer grown past `limit` for one large request, once it is
    /// empty, replacing it with one of `size` bytes.
    pub fn shrink(&mut self, limit: usize, size: usize) {
        if self.len() == 0 && self.buf.len() > limit {
            self.buf = vec![0; size];
            self.start = 0;
            self.end = 0;
            self.read_size = MIN_READ;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ReadBuffer;

    #[test]
    fn read_buffer_compacts_and_grows() {
        let mut b = ReadBuffer::new(16);
        b.read_size = 16;
        let spare = b.spare(1);
        spare[..10].copy_from_slice(b"0123456789");
        b.filled(10);
        b.consume(4);
        assert_eq!(b.data(), b"456789");
        let spare = b.spare(100);
        assert!(spare.len() >= 94);
        // A claim far past what came is not reserved up front.
        let spare = b.spare(1 << 30);
        assert!(spare.len() < 1 << 20, "{}", spare.len());
        assert_eq!(b.data(), b"456789");
        b.consume(6);
        assert_eq!(b.len(), 0);
        b.shrink(16, 16);
        assert_eq!(b.capacity(), 16);
    }
}
