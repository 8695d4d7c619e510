//! Looking at a worker from outside: an HTTP GET for `ready = "http:…"` and the
//! `[app.health]` probe. (Its memory and CPU time come from [`crate::procfs`]; the
//! `rss_bytes`/`cpu_ticks` here forward to it by raw pid.)

use std::time::Duration;

use appvisor_config::ListenAddress;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// True if `GET path` on `address` answers with a 2xx status within `timeout`.
pub async fn http_ok(address: &ListenAddress, path: &str, timeout: Duration) -> bool {
    tokio::time::timeout(timeout, get_status(address, path))
        .await
        .ok()
        .flatten()
        .is_some_and(|code| (200..300).contains(&code))
}

async fn get_status(address: &ListenAddress, path: &str) -> Option<u16> {
    let request =
        format!("GET {path} HTTP/1.0\r\nHost: localhost\r\nUser-Agent: appvisor-probe\r\n\r\n");
    let mut head = [0u8; 32];
    let n = match address {
        ListenAddress::Tcp(addr) => {
            let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
            s.write_all(request.as_bytes()).await.ok()?;
            read_some(&mut s, &mut head).await?
        }
        ListenAddress::Unix(path) => {
            let mut s = tokio::net::UnixStream::connect(path).await.ok()?;
            s.write_all(request.as_bytes()).await.ok()?;
            read_some(&mut s, &mut head).await?
        }
    };
    // "HTTP/1.1 200 OK"
    let line = std::str::from_utf8(&head[..n]).ok()?;
    line.split_whitespace().nth(1)?.parse().ok()
}

async fn read_some<S: AsyncReadExt + Unpin>(s: &mut S, buf: &mut [u8]) -> Option<usize> {
    let mut got = 0;
    while got < 12 {
        let n = s.read(&mut buf[got..]).await.ok()?;
        if n == 0 {
            break;
        }
        got += n;
    }
    (got >= 12).then_some(got)
}

// The pool reads these through `probe` by raw pid; `/proc` itself is `procfs`'s.

/// `VmRSS` of one process, in bytes ([`crate::procfs::rss_bytes`]).
pub fn rss_bytes(pid: i32) -> Option<u64> {
    crate::procfs::rss_bytes(crate::procfs::Pid::from_raw(pid))
}

/// User + system CPU time of one process, in clock ticks ([`crate::procfs::cpu_ticks`]).
pub fn cpu_ticks(pid: i32) -> Option<u64> {
    crate::procfs::cpu_ticks(crate::procfs::Pid::from_raw(pid))
}

/// Clock ticks per second ([`crate::procfs::ticks_per_second`]).
pub fn ticks_per_second() -> f64 {
    crate::procfs::ticks_per_second()
}
