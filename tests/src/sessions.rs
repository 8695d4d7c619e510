//! Session clients: each holds a cookie and expects its counter to go up by
//! exactly one per request — any loss, repeat or reset is counted.
//!
//! Sessions are split among client threads, so one session never has two
//! requests in flight at once and the expected value is always known. One extra
//! "hot" client can hammer a single session back to back, which is what exposes a
//! stale read during a generation overlap.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// One user: the `Set-Cookie` pair to send back, and the last counter seen.
#[derive(Debug, Clone)]
pub struct User {
    pub cookie: String,
    pub counter: u64,
}

/// GET `path` with an optional cookie; returns (status, body, Set-Cookie pair).
pub fn get(
    port: u16,
    path: &str,
    cookie: Option<&str>,
) -> Result<(u16, String, Option<String>), String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let cookie_line = cookie
        .map(|c| format!("Cookie: {c}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{cookie_line}\r\n"
    )
    .map_err(|e| format!("write: {e}"))?;
    let mut r = BufReader::new(s);
    let mut status = String::new();
    r.read_line(&mut status).map_err(|e| format!("read: {e}"))?;
    let code: u16 = status
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line {status:?}"))?;
    let mut set_cookie = None;
    loop {
        let mut line = String::new();
        r.read_line(&mut line).map_err(|e| format!("read: {e}"))?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some(v) = l
            .strip_prefix("set-cookie:")
            .or_else(|| l.strip_prefix("Set-Cookie:"))
        {
            set_cookie = v.trim().split(';').next().map(str::to_string);
        }
    }
    let mut body = String::new();
    r.read_to_string(&mut body)
        .map_err(|e| format!("read body: {e}"))?;
    Ok((code, body, set_cookie))
}

pub fn counter_of(body: &str) -> Option<u64> {
    let i = body.find("counter=")?;
    body[i + 8..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Creates `n` sessions (first request of each: counter 1).
pub fn create_users(port: u16, n: usize) -> Vec<User> {
    (0..n)
        .map(|_| {
            let (code, body, cookie) = get(port, "/counter", None).expect("first request");
            assert_eq!(code, 200, "{body}");
            assert_eq!(counter_of(&body), Some(1), "{body}");
            User {
                cookie: cookie.expect("a new session gets a cookie"),
                counter: 1,
            }
        })
        .collect()
}

#[derive(Debug, Default)]
pub struct SessionReport {
    pub ok: u64,
    pub failed: u64,
    /// A counter that was not exactly previous + 1.
    pub violations: u64,
    pub examples: Vec<String>,
    pub users: Vec<User>,
}

pub struct SessionLoad {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<SessionReport>>,
    pub done: Arc<AtomicU64>,
}

impl SessionLoad {
    /// `clients` threads share `users` round-robin; with `hot`, one more thread
    /// hammers a session of its own.
    pub fn start(port: u16, users: Vec<User>, clients: usize, hot: bool) -> SessionLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let mut shares: Vec<Vec<User>> = vec![Vec::new(); clients];
        for (i, u) in users.into_iter().enumerate() {
            shares[i % clients].push(u);
        }
        if hot {
            shares.push(create_users(port, 1));
        }
        let threads = shares
            .into_iter()
            .map(|mut mine| {
                let (stop, done) = (stop.clone(), done.clone());
                std::thread::spawn(move || {
                    let mut r = SessionReport::default();
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) && !mine.is_empty() {
                        let len = mine.len();
                        let u = &mut mine[i % len];
                        i += 1;
                        match get(port, "/counter", Some(&u.cookie)) {
                            Ok((200, body, _)) => {
                                r.ok += 1;
                                done.fetch_add(1, Ordering::Relaxed);
                                let n = counter_of(&body).unwrap_or(0);
                                if n != u.counter + 1 {
                                    r.violations += 1;
                                    if r.examples.len() < 5 {
                                        r.examples.push(format!(
                                            "{}: expected {}, got {body:?}",
                                            u.cookie,
                                            u.counter + 1
                                        ));
                                    }
                                }
                                u.counter = n.max(u.counter);
                            }
                            Ok((code, body, _)) => {
                                r.failed += 1;
                                if r.examples.len() < 5 {
                                    r.examples.push(format!("HTTP {code}: {body}"));
                                }
                            }
                            Err(e) => {
                                r.failed += 1;
                                if r.examples.len() < 5 {
                                    r.examples.push(e);
                                }
                            }
                        }
                    }
                    r.users = mine;
                    r
                })
            })
            .collect();
        SessionLoad {
            stop,
            threads,
            done,
        }
    }

    pub fn wait_for_requests(&self, n: u64) {
        let start = self.done.load(Ordering::Relaxed);
        crate::wait_until(
            Duration::from_secs(60),
            &format!("{n} more session requests"),
            || (self.done.load(Ordering::Relaxed) >= start + n).then_some(()),
        );
    }

    pub fn finish(self) -> SessionReport {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = SessionReport::default();
        for t in self.threads {
            let r = t.join().expect("session client");
            total.ok += r.ok;
            total.failed += r.failed;
            total.violations += r.violations;
            total.examples.extend(r.examples);
            total.users.extend(r.users);
        }
        total
    }
}
