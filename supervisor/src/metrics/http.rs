//! The metrics listener: a minimal HTTP/1.1 responder for `GET /metrics`.
//!
//! One page, read by a scraper a few times a minute, does not need an HTTP stack
//! in the supervisor: this reads a request head (at most 8 KiB, within 10 s),
//! answers one response with `Content-Length` and `Connection: close`, and closes.
//! `Accept: application/openmetrics-text` gets the OpenMetrics format (what
//! Prometheus asks for first), anything else the Prometheus text format 0.0.4
//! (what `curl` and older scrapers read). `HEAD` gets the headers alone; `/` a
//! line pointing at `/metrics`; other paths 404, other methods 405.
//!
//! Strangers cannot take the supervisor down through it: at most
//! [`MAX_CONNECTIONS`] connections at once (more are closed at once), a deadline
//! on every connection, a bounded head, and accept errors (`EMFILE`) reported
//! once and retried after a pause instead of spinning.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::{Metrics, Sources};

/// Connections served at once; a scraper uses one.
pub const MAX_CONNECTIONS: usize = 16;
/// The longest request head read.
const MAX_HEAD: usize = 8 * 1024;
/// The whole exchange, request to last byte of the reply.
const DEADLINE: Duration = Duration::from_secs(10);

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Binds the metrics address (close-on-exec, `SO_REUSEADDR` as std sets it), or
/// says which address and what to do. Called before any worker starts.
pub fn bind(addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr).map_err(|e| {
        let hint = if e.kind() == io::ErrorKind::AddrInUse {
            "stop what uses it (`ss -ltnp`) or choose another port"
        } else {
            "choose another address"
        };
        anyhow::anyhow!("[supervisor] metrics: cannot listen on {addr}: {e}; {hint} in `metrics`")
    })?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Serves `/metrics` on `listener` until the task is dropped.
pub async fn serve(listener: std::net::TcpListener, metrics: Arc<Metrics>, sources: Sources) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("Cannot serve metrics: {e}");
            return;
        }
    };
    if let Ok(addr) = listener.local_addr() {
        tracing::info!("Metrics at http://{addr}/metrics.");
    }
    let seats = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut failing = false;
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                failing = false;
                // Over the limit: closed at once, the scraper retries next interval.
                let Ok(seat) = seats.clone().try_acquire_owned() else {
                    continue;
                };
                let (metrics, sources) = (metrics.clone(), sources.clone());
                tokio::spawn(async move {
                    let _ =
                        tokio::time::timeout(DEADLINE, answer(stream, &metrics, &sources)).await;
                    drop(seat);
                });
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(
                        "Metrics: cannot accept a connection ({e}); retrying every 100 ms."
                    );
                    failing = true;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
enum Ask {
    Metrics { head_only: bool, openmetrics: bool },
    Index { head_only: bool },
    NotFound,
    MethodNotAllowed,
    BadRequest,
}

/// Reads a request head; None if the client went away or sent more than
/// [`MAX_HEAD`] bytes without ending it.
async fn read_head(stream: &mut TcpStream) -> io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.truncate(end);
            return Ok(Some(buf));
        }
        if buf.len() > MAX_HEAD {
            return Ok(None);
        }
    }
}

fn parse(head: &[u8]) -> Ask {
    let Ok(text) = std::str::from_utf8(head) else {
        return Ask::BadRequest;
    };
    let mut lines = text.split("\r\n");
    let mut words = lines.next().unwrap_or("").split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        return Ask::BadRequest;
    };
    if !version.starts_with("HTTP/1.") {
        return Ask::BadRequest;
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Ask::MethodNotAllowed,
    };
    let path = target.split('?').next().unwrap_or("");
    match path {
        "/metrics" => {
            let openmetrics = lines.any(|l| {
                l.split_once(':').is_some_and(|(k, v)| {
                    k.trim().eq_ignore_ascii_case("accept")
                        && v.to_ascii_lowercase()
                            .contains("application/openmetrics-text")
                })
            });
            Ask::Metrics {
                head_only,
                openmetrics,
            }
        }
        "/" => Ask::Index { head_only },
        _ => Ask::NotFound,
    }
}

async fn answer(mut stream: TcpStream, metrics: &Metrics, sources: &Sources) -> io::Result<()> {
    let ask = match read_head(&mut stream).await? {
        Some(head) => parse(&head),
        None => Ask::BadRequest,
    };
    let (status, content_type, body, head_only) = match ask {
        Ask::Metrics {
            head_only,
            openmetrics,
        } => {
            let snapshot = sources.snapshot().await;
            let body = metrics.render(snapshot, openmetrics);
            let ct = if openmetrics {
                OPENMETRICS
            } else {
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE
            };
            ("200 OK", ct, body, head_only)
        }
        Ask::Index { head_only } => (
            "200 OK",
            "text/plain; charset=utf-8",
            "appvisor: the metrics are at /metrics\n".to_string(),
            head_only,
        ),
        Ask::NotFound => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "not found; the metrics are at /metrics\n".to_string(),
            false,
        ),
        Ask::MethodNotAllowed => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "only GET and HEAD\n".to_string(),
            false,
        ),
        Ask::BadRequest => (
            "400 Bad Request",
            "text/plain; charset=utf-8",
            "bad request\n".to_string(),
            false,
        ),
    };
    let allow = if status.starts_with("405") {
        "Allow: GET, HEAD\r\n"
    } else {
        ""
    };
    let mut reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        reply.extend_from_slice(body.as_bytes());
    }
    stream.write_all(&reply).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_read_as_a_scraper_and_curl_send_them() {
        assert_eq!(
            parse(b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"),
            Ask::Metrics { head_only: false, openmetrics: true }
        );
        assert_eq!(
            parse(b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*"),
            Ask::Metrics {
                head_only: false,
                openmetrics: false
            }
        );
        assert_eq!(
            parse(b"HEAD /metrics?x=1 HTTP/1.0"),
            Ask::Metrics {
                head_only: true,
                openmetrics: false
            }
        );
        assert_eq!(parse(b"GET / HTTP/1.1"), Ask::Index { head_only: false });
        assert_eq!(parse(b"GET /other HTTP/1.1"), Ask::NotFound);
        assert_eq!(parse(b"POST /metrics HTTP/1.1"), Ask::MethodNotAllowed);
        assert_eq!(parse(b"GET /metrics"), Ask::BadRequest);
        assert_eq!(parse(b"GET /metrics SPDY/3"), Ask::BadRequest);
        assert_eq!(parse(b"\xff\xfe"), Ask::BadRequest);
    }
}
