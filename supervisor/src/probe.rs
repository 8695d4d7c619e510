//! Looking at a worker from outside: an HTTP GET for `ready = "http:…"`, its
//! resident memory for `status`, its CPU time for `idle_timeout`.

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

/// VmRSS of one process, in bytes.
pub fn rss_bytes(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// User + system CPU time of one process, in clock ticks.
pub fn cpu_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Clock ticks per second (`_SC_CLK_TCK`).
pub fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as f64
    } else {
        100.0
    }
}
