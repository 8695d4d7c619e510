//! An async listener that is either TCP or unix, and the streams it accepts.
//!
//! The supervisor may pass either kind (an app configured with
//! `listen = "/run/app.sock"` gets a unix socket), and a worker should serve
//! both with the same code, so [`Listener`] and [`Stream`] hide the
//! difference behind one type each instead of a generic parameter.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

/// A listening socket registered with the tokio runtime.
#[derive(Debug)]
pub struct Listener {
    inner: ListenerKind,
    name: Option<String>,
}

#[derive(Debug)]
enum ListenerKind {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Listener {
    /// Wraps a TCP listener (e.g. one bound by hand when running outside a supervisor).
    pub fn from_tcp(listener: TcpListener) -> Listener {
        Listener {
            inner: ListenerKind::Tcp(listener),
            name: None,
        }
    }

    /// Wraps a unix stream listener.
    pub fn from_unix(listener: UnixListener) -> Listener {
        Listener {
            inner: ListenerKind::Unix(listener),
            name: None,
        }
    }

    /// Binds a fresh TCP listener: the fallback when no socket was inherited.
    pub async fn bind_tcp(addr: &str) -> io::Result<Listener> {
        Ok(Listener::from_tcp(TcpListener::bind(addr).await?))
    }

    /// Sets the name (from `LISTEN_FDNAMES`).
    pub fn with_name(mut self, name: Option<String>) -> Listener {
        self.name = name;
        self
    }

    /// The name from `LISTEN_FDNAMES`, if any.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// Where it listens, for log lines: `127.0.0.1:8080` or `unix:/run/app.sock`.
    pub fn local_addr(&self) -> String {
        match &self.inner {
            ListenerKind::Tcp(l) => match l.local_addr() {
                Ok(a) => a.to_string(),
                Err(e) => format!("tcp:<{e}>"),
            },
            ListenerKind::Unix(l) => match l.local_addr() {
                Ok(a) => match a.as_pathname() {
                    Some(p) => format!("unix:{}", p.display()),
                    None => "unix:<unnamed or abstract>".to_owned(),
                },
                Err(e) => format!("unix:<{e}>"),
            },
        }
    }

    /// Accepts one connection. TCP connections get `TCP_NODELAY`, since
    /// HTTP responses are written whole and Nagle only adds latency.
    pub async fn accept(&self) -> io::Result<Stream> {
        match &self.inner {
            ListenerKind::Tcp(l) => {
                let (s, _) = l.accept().await?;
                // Failing to set a latency hint is not worth refusing the client.
                let _ = s.set_nodelay(true);
                Ok(Stream::Tcp(s))
            }
            ListenerKind::Unix(l) => {
                let (s, _) = l.accept().await?;
                Ok(Stream::Unix(s))
            }
        }
    }
}

impl fmt::Display for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(name) => write!(f, "{} ({name})", self.local_addr()),
            None => f.write_str(&self.local_addr()),
        }
    }
}

/// An accepted connection, TCP or unix.
#[derive(Debug)]
pub enum Stream {
    /// From a TCP listener.
    Tcp(TcpStream),
    /// From a unix listener.
    Unix(UnixStream),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(s) => s.is_write_vectored(),
            Stream::Unix(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
