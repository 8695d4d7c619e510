//! HTTP load with a count of every failure: the figure that must stay 0.
//!
//! Each client is a thread with its own connection, sending `GET /` in a loop —
//! with keep-alive (one connection reused, reopened when the server says
//! `Connection: close`) or without (a new connection per request). A request
//! fails if the connection is refused or reset, or the answer is not a complete
//! 200 response. No retries: a retry would hide exactly what we measure.
//! A request not answered within the read timeout ([`READ_TIMEOUT`] unless
//! [`Load::start_with`] says otherwise) fails too; [`Load::finish_within`] can
//! end sooner a request the server lost.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::recovery::pid_of;

#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    pub ok: u64,
    pub failed: u64,
    pub max_latency: Duration,
    /// The first few failures, for the assertion message.
    pub errors: Vec<String>,
    /// Distinct server pids seen in responses (`pid=…`).
    pub pids: std::collections::BTreeSet<i32>,
}

/// How long a request waits for its answer's next bytes, by default.
pub const READ_TIMEOUT: Duration = Duration::from_secs(15);

pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<LoadReport>>,
    /// Per client, the socket of the request in flight (a clone, for
    /// [`Load::finish_within`] to shut down); cleared by the client once answered.
    in_flight: Vec<InFlight>,
    /// Disconnected once every client thread has ended (each holds a sender).
    ended: std::sync::mpsc::Receiver<()>,
    pub ok_so_far: Arc<AtomicU64>,
}

type InFlight = Arc<Mutex<Option<TcpStream>>>;

struct Conn {
    reader: BufReader<TcpStream>,
}

fn connect(port: u16, timeout: Duration) -> std::io::Result<Conn> {
    let s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(timeout))?;
    Ok(Conn {
        reader: BufReader::new(s),
    })
}

/// One request on `conn`; returns (body, server wants close).
fn request(conn: &mut Conn, path: &str, keep_alive: bool) -> Result<(String, bool), String> {
    let req = if keep_alive {
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n")
    } else {
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    };
    conn.reader
        .get_mut()
        .write_all(req.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut status = String::new();
    let n = conn
        .reader
        .read_line(&mut status)
        .map_err(|e| format!("read status: {e}"))?;
    if n == 0 {
        return Err("connection closed before a response".into());
    }
    if !status.starts_with("HTTP/1.1 200") && !status.starts_with("HTTP/1.0 200") {
        return Err(format!("status line {status:?}"));
    }
    let http10 = status.starts_with("HTTP/1.0");
    let mut len: Option<usize> = None;
    let mut close = !keep_alive || http10;
    loop {
        let mut line = String::new();
        conn.reader
            .read_line(&mut line)
            .map_err(|e| format!("read header: {e}"))?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let lower = l.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            len = v.trim().parse().ok();
        } else if lower.starts_with("connection:") && lower.contains("close") {
            close = true;
        } else if lower.starts_with("connection:") && lower.contains("keep-alive") && http10 {
            close = false;
        }
    }
    let mut body = Vec::new();
    match len {
        Some(n) => {
            body.resize(n, 0);
            conn.reader
                .read_exact(&mut body)
                .map_err(|e| format!("read body: {e}"))?;
        }
        None => {
            conn.reader
                .read_to_end(&mut body)
                .map_err(|e| format!("read body: {e}"))?;
            close = true;
        }
    }
    Ok((String::from_utf8_lossy(&body).into_owned(), close))
}

impl Load {
    /// Starts `clients` threads hammering `GET path` on `port`.
    pub fn start(port: u16, clients: usize, keep_alive: bool, path: &str) -> Load {
        Load::start_paced(port, clients, keep_alive, path, Duration::ZERO)
    }

    /// [`Load::start`], each client pausing `pause` after every request: a
    /// steady load that leaves the machine room (the soak runs for half an
    /// hour on a shared machine).
    pub fn start_paced(
        port: u16,
        clients: usize,
        keep_alive: bool,
        path: &str,
        pause: Duration,
    ) -> Load {
        Load::start_with(port, clients, keep_alive, path, pause, READ_TIMEOUT)
    }

    /// [`Load::start_paced`] with a read timeout of `timeout`.
    pub fn start_with(
        port: u16,
        clients: usize,
        keep_alive: bool,
        path: &str,
        pause: Duration,
        timeout: Duration,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok_so_far = Arc::new(AtomicU64::new(0));
        let in_flight: Vec<InFlight> = (0..clients).map(|_| Arc::default()).collect();
        let (ending, ended) = std::sync::mpsc::channel::<()>();
        let threads = in_flight
            .iter()
            .map(|slot| {
                let slot = slot.clone();
                let stop = stop.clone();
                let ok_so_far = ok_so_far.clone();
                let path = path.to_string();
                let ending = ending.clone();
                std::thread::spawn(move || {
                    let _ending = ending; // dropped when the client ends
                    let mut r = LoadReport::default();
                    let mut conn: Option<Conn> = None;
                    let errors = Mutex::new(Vec::new());
                    while !stop.load(Ordering::Relaxed) {
                        let t0 = Instant::now();
                        let c = match conn.take() {
                            Some(c) => Ok(c),
                            None => connect(port, timeout).map_err(|e| format!("connect: {e}")),
                        };
                        let result = c.and_then(|mut c| {
                            *slot.lock().unwrap() = c.reader.get_ref().try_clone().ok();
                            let answer = request(&mut c, &path, keep_alive);
                            // None: finish_within() gave up on it and shut it down.
                            let lost = slot.lock().unwrap().take().is_none();
                            match answer {
                                Err(e) if lost => Err(format!(
                                    "lost: no answer {:.1} s after it was sent, and none \
                                     when the load had ended ({e})",
                                    t0.elapsed().as_secs_f64()
                                )),
                                answer => answer.map(|x| (c, x)),
                            }
                        });
                        let took = t0.elapsed();
                        if !pause.is_zero() {
                            std::thread::sleep(pause);
                        }
                        match result {
                            Ok((c, (body, close))) => {
                                r.ok += 1;
                                ok_so_far.fetch_add(1, Ordering::Relaxed);
                                r.max_latency = r.max_latency.max(took);
                                if let Some(pid) = pid_of(&body) {
                                    r.pids.insert(pid);
                                }
                                if keep_alive && !close {
                                    conn = Some(c);
                                }
                            }
                            Err(e) => {
                                r.failed += 1;
                                let mut errs = errors.lock().unwrap();
                                if errs.len() < 5 {
                                    // When, to match it with events.jsonl.
                                    let at = std::time::SystemTime::now()
                                        .duration_since(std::time::UNIX_EPOCH)
                                        .unwrap_or_default()
                                        .as_millis();
                                    errs.push(format!("{e} (at unix ms {at})"));
                                }
                            }
                        }
                    }
                    r.errors = errors.into_inner().unwrap();
                    r
                })
            })
            .collect();
        Load {
            stop,
            threads,
            in_flight,
            ended,
            ok_so_far,
        }
    }

    /// Whether `n` more requests succeed within `deadline`.
    pub fn wait_for_more(&self, n: u64, deadline: Duration) -> bool {
        let start = self.ok_so_far.load(Ordering::Relaxed);
        crate::poll_until(deadline, || {
            (self.ok_so_far.load(Ordering::Relaxed) >= start + n).then_some(())
        })
        .is_some()
    }

    /// Waits until at least `n` requests succeeded in total (deadline 30 s).
    pub fn wait_for_requests(&self, n: u64) {
        let start = self.ok_so_far.load(Ordering::Relaxed);
        crate::wait_until(
            Duration::from_secs(30),
            &format!("{n} more successful requests"),
            || (self.ok_so_far.load(Ordering::Relaxed) >= start + n).then_some(()),
        );
    }

    pub fn finish(self) -> LoadReport {
        self.finish_within(None)
    }

    /// [`Load::finish`]; with `Some(grace)`, a request still unanswered `grace`
    /// after the load ended (the other clients done with theirs) is given up:
    /// its connection is shut down and it fails as "lost". A slow server answers
    /// it once the others are done; one that lost it never would, and the read
    /// timeout would hold the end for that long.
    pub fn finish_within(self, grace: Option<Duration>) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(grace) = grace {
            // Disconnected: every client ended within the grace. Timeout: the
            // requests still in flight are given up (their reads end at once).
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = self.ended.recv_timeout(grace)
            {
                for slot in &self.in_flight {
                    if let Some(socket) = slot.lock().unwrap().take() {
                        let _ = socket.shutdown(std::net::Shutdown::Both);
                    }
                }
            }
        }
        let mut total = LoadReport::default();
        for t in self.threads {
            let r = t.join().expect("load thread");
            total.ok += r.ok;
            total.failed += r.failed;
            total.max_latency = total.max_latency.max(r.max_latency);
            total.errors.extend(r.errors);
            total.pids.extend(r.pids);
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::sync::mpsc;

    /// A server that reads a request and never answers: `finish_within` gives
    /// it up as lost once the grace is over, instead of waiting out the read
    /// timeout.
    #[test]
    fn a_request_unanswered_after_the_grace_is_lost() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (got_request, request_seen) = mpsc::channel();
        let server = std::thread::spawn(move || {
            let (socket, _) = listener.accept().unwrap();
            let mut line = String::new();
            BufReader::new(&socket).read_line(&mut line).unwrap();
            got_request.send(()).unwrap();
            // Held open, unanswered, until the client gives up on it.
            let mut rest = Vec::new();
            let _ = (&socket).read_to_end(&mut rest);
        });
        let load = Load::start(port, 1, true, "/");
        request_seen
            .recv_timeout(Duration::from_secs(30))
            .expect("the request reached the server");
        let report = load.finish_within(Some(Duration::from_millis(200)));
        assert_eq!((report.ok, report.failed), (0, 1), "{report:?}");
        assert!(
            report.errors[0].starts_with("lost: "),
            "{:?}",
            report.errors
        );
        server.join().unwrap();
    }
}
