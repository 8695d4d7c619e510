//! kill -9 of a worker and the time until its slot answers again, for the
//! benchmarks (`supervision` and the soak): a figure, never an assertion.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{wait_until, Supervisor};

/// An event's time in ms since the epoch (1 ms resolution).
pub fn event_ms(e: &Value) -> Option<f64> {
    let t: jiff::Timestamp = e["time"].as_str()?.parse().ok()?;
    Some(t.as_millisecond() as f64)
}

/// The `pid=N` in a `demo` worker's answer.
pub fn pid_of(body: &str) -> Option<i32> {
    let i = body.find("pid=")?;
    body[i + 4..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// `GET /` on `port`, one connection; the pid that answered.
pub fn get_pid(port: u16) -> Option<i32> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.starts_with("HTTP/1.1 200").then_some(())?;
    pid_of(&body)
}

/// One kill -9, in ms: from the kill until the slot answers again (`total`); the
/// new worker's own startup, fork → READY=1 (its `ready` event's `startup_ms`);
/// and the supervisor's own part, from its `crashed` event to the new worker's
/// `started` event (event times, 1 ms resolution).
#[derive(Debug, Clone, Copy)]
pub struct Recovery {
    pub total: f64,
    pub startup: f64,
    pub reaction: f64,
}

/// Kills the worker of `app` (one worker, serving `demo` on `port`) with SIGKILL
/// and measures its [`Recovery`]; `None` if the slot did not answer within 10 s.
pub fn crash_and_recover(sv: &Supervisor, app: &str, port: u16) -> Option<Recovery> {
    let old = get_pid(port)?;
    let t0 = Instant::now();
    // SAFETY: kill with the pid of a worker this supervisor started.
    unsafe { libc::kill(old, libc::SIGKILL) };
    // Connections wait in the listen backlog the supervisor holds, until the
    // next worker accepts: the first answer from another pid is the slot back.
    let new = loop {
        match get_pid(port) {
            Some(pid) if pid != old => break pid,
            _ if t0.elapsed() > Duration::from_secs(10) => return None,
            _ => {}
        }
    };
    let total = t0.elapsed().as_secs_f64() * 1000.0;
    let ready = wait_until(Duration::from_secs(10), "the ready event", || {
        sv.events_of("ready")
            .into_iter()
            .find(|e| e["pid"] == new && e["app"] == app)
    });
    let events = sv.events();
    let find = |kind: &str, pid: i32| {
        events
            .iter()
            .find(|e| e["kind"] == kind && e["pid"] == pid)
            .and_then(event_ms)
    };
    Some(Recovery {
        total,
        startup: ready["startup_ms"].as_f64()?,
        reaction: find("started", new)? - find("crashed", old)?,
    })
}
