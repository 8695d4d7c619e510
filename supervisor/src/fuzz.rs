//! Bounded fuzzing of what the supervisor reads from others (issue 12): the
//! sd_notify datagram parser (a worker writes it), a control request line and
//! the control socket's line reader (any local client), and `events.jsonl`
//! (anyone who can edit the file).
//!
//! The house pattern of `appvisor-store`'s `fuzz` module: each target is a
//! proptest run of [`cases`] inputs, `APPVISOR_FUZZ_CASES=N` sets the count,
//! the plain `cargo test` runs a few thousand (about a second each,
//! unoptimised) and `.ci/run` runs 100,000 of each, optimised (`cargo test
//! --release -p appvisor --lib fuzz`: about 0.5 s, 0.5 s and 0.9 s for the
//! three targets on this 2-core machine under load, plus the build; the line
//! reader, whose cases carry 64 KiB lines read in chunks of 1 to 64 bytes, is
//! the slowest: 20,000 cases took 10 s unoptimised, under load). A failure
//! prints the shrunk input;
//! anything found becomes a named regression test here. (None so far.)
//!
//! Inputs are mostly near misses of valid ones — valid messages with bytes
//! changed, inserted or removed, or their pieces glued in any order — since
//! plain noise is rejected at the first byte.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use crate::control::{Request, Response};
use crate::events::read_lines;
use crate::sd_notify::{NotifyMessage, MAX_DATAGRAM};

/// Cases per target: `APPVISOR_FUZZ_CASES`, or the target's default.
fn cases(default: u32) -> u32 {
    std::env::var("APPVISOR_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        // Findings become regression tests in this file, not files on disk.
        failure_persistence: None,
        ..Config::default()
    })
}

/// `seeds`, one picked, then up to four bytes changed, inserted or removed.
fn mutated(seeds: &'static [&'static str]) -> impl Strategy<Value = Vec<u8>> {
    let edit = (any::<usize>(), any::<u8>(), 0u8..3);
    (
        proptest::sample::select(seeds),
        proptest::collection::vec(edit, 0..5),
    )
        .prop_map(|(seed, edits)| {
            let mut buf = seed.as_bytes().to_vec();
            for (at, byte, kind) in edits {
                if buf.is_empty() {
                    buf.push(byte);
                    continue;
                }
                let at = at % buf.len();
                match kind {
                    0 => buf[at] = byte,
                    1 => buf.insert(at, byte),
                    _ => {
                        buf.remove(at);
                    }
                }
            }
            buf
        })
}

/// Pieces glued in any order, with some raw bytes among them.
fn glued(pieces: &'static [&'static str], max: usize) -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        4 => proptest::sample::select(pieces).prop_map(|s| s.as_bytes().to_vec()),
        1 => any::<i64>().prop_map(|n| n.to_string().into_bytes()),
        1 => proptest::collection::vec(any::<u8>(), 0..6),
    ];
    proptest::collection::vec(piece, 0..max).prop_map(|p| p.concat())
}

// ---------------------------------------------------------------------------
// sd_notify datagrams
// ---------------------------------------------------------------------------

const NOTIFY_PIECES: &[&str] = &[
    "READY",
    "STOPPING",
    "WATCHDOG",
    "STATUS",
    "X_APPVISOR_REQUESTS",
    "X_APPVISOR_SESSIONS",
    "MAINPID",
    "=",
    "1",
    "0",
    "\n",
    "\r\n",
    "\r",
    " ",
    "18446744073709551615",
    "18446744073709551616",
    "-1",
    "+7",
    "\u{0}",
    "é",
    "\u{feff}",
];

const NOTIFY_SEEDS: &[&str] = &[
    "READY=1",
    "STOPPING=1",
    "WATCHDOG=1",
    "STATUS=serving 12 requests",
    "X_APPVISOR_REQUESTS=1234\n",
    "READY=1\nSTATUS=up\nX_APPVISOR_REQUESTS=7\nX_APPVISOR_SESSIONS=3\n",
    "STOPPING=1\nX_APPVISOR_SESSIONS=18446744073709551615",
];

fn notify_input() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64),
        glued(NOTIFY_PIECES, 24),
        mutated(NOTIFY_SEEDS),
        // Datagrams at and around the size the socket accepts.
        (MAX_DATAGRAM - 8..MAX_DATAGRAM + 1, any::<u8>()).prop_map(|(n, b)| vec![b; n]),
    ]
}

/// The datagram a worker would send for `m` (STATUS last, without a newline in it).
fn encode(m: &NotifyMessage) -> Vec<u8> {
    let mut lines = Vec::new();
    for (on, key) in [
        (m.ready, "READY"),
        (m.stopping, "STOPPING"),
        (m.watchdog, "WATCHDOG"),
    ] {
        if on {
            lines.push(format!("{key}=1"));
        }
    }
    if let Some(n) = m.requests {
        lines.push(format!("X_APPVISOR_REQUESTS={n}"));
    }
    if let Some(n) = m.sessions {
        lines.push(format!("X_APPVISOR_SESSIONS={n}"));
    }
    if let Some(s) = &m.status {
        lines.push(format!("STATUS={s}"));
    }
    lines.join("\n").into_bytes()
}

fn check_notify(data: &[u8]) -> Result<(), TestCaseError> {
    let m = NotifyMessage::parse(data);
    // Memory: what is kept is a piece of the datagram, at most three times its
    // bytes (each invalid byte becomes U+FFFD).
    if let Some(status) = &m.status {
        prop_assert!(status.len() <= 3 * data.len(), "status of {}", status.len());
        prop_assert!(!status.contains('\n'), "a status holds a line break");
    }
    // The parse is a fixpoint: what it found, sent again, is found again.
    prop_assert_eq!(NotifyMessage::parse(&encode(&m)), m);
    Ok(())
}

#[test]
fn fuzz_notify_parser() {
    let started = Instant::now();
    let n = cases(5_000);
    runner(n)
        .run(&notify_input(), |data| check_notify(&data))
        .unwrap();
    eprintln!("fuzz_notify_parser: {n} cases in {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------
// Control request lines
// ---------------------------------------------------------------------------

const CONTROL_PIECES: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ":",
    ",",
    "\"",
    "\"cmd\"",
    "\"app\"",
    "\"wait\"",
    "\"ping\"",
    "\"status\"",
    "\"recycle\"",
    "\"start\"",
    "\"stop\"",
    "\"follow\"",
    "\"reload\"",
    "\"shutdown\"",
    "\"web\"",
    "true",
    "false",
    "null",
    "1e999",
    "-0",
    "\\u0000",
    "\\ud800",
    "\"\\",
    " ",
    "\t",
];

const CONTROL_SEEDS: &[&str] = &[
    r#"{"cmd":"ping"}"#,
    r#"{"cmd":"status"}"#,
    r#"{"cmd":"status","app":"web"}"#,
    r#"{"cmd":"recycle","app":"web"}"#,
    r#"{"cmd":"recycle","app":"web","wait":false}"#,
    r#"{"cmd":"start","app":"web"}"#,
    r#"{"cmd":"stop","app":"wörker"}"#,
    r#"{"cmd":"follow"}"#,
    r#"{"cmd":"reload"}"#,
    r#"{"cmd":"shutdown","extra":[1,{"a":null}]}"#,
    r#"{"app":"web","cmd":"recycle","wait":true}"#,
];

fn control_input() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..48),
        glued(CONTROL_PIECES, 24),
        mutated(CONTROL_SEEDS),
        // Deep nesting inside a field the request does not know.
        (0usize..4096, any::<bool>()).prop_map(|(depth, closed)| {
            let mut s = String::from(r#"{"cmd":"ping","x":"#);
            s.push_str(&"[".repeat(depth));
            if closed {
                s.push_str(&"]".repeat(depth));
                s.push('}');
            }
            s.into_bytes()
        }),
    ]
}

/// Lines that were requests: the run reports them, so that a change of
/// strategy that stops reaching a valid request shows.
static REQUESTS: AtomicU32 = AtomicU32::new(0);

/// What the connection does with one line (`control::handle`, without the
/// socket): the line, read lossily as UTF-8, becomes a request or a refusal,
/// and either way the reply is one JSON line.
fn check_control(bytes: &[u8]) -> Result<(), TestCaseError> {
    let line = String::from_utf8_lossy(bytes);
    let reply = match serde_json::from_str::<Request>(&line) {
        Ok(req) => {
            REQUESTS.fetch_add(1, Ordering::Relaxed);
            // What the CLI would send for the same request is read back the same.
            let sent = serde_json::to_string(&req).expect("a request serializes");
            let again: Request = serde_json::from_str(&sent)
                .map_err(|e| TestCaseError::fail(format!("{sent} does not read back: {e}")))?;
            prop_assert_eq!(
                serde_json::to_value(&again).unwrap(),
                serde_json::to_value(&req).unwrap()
            );
            return Ok(());
        }
        Err(e) => Response::error(format!("bad request: {e}")),
    };
    let text = serde_json::to_string(&reply).expect("a response serializes");
    // One line, as `write_line` sends it, and bounded by the request.
    prop_assert!(!text.contains('\n'), "a reply with a line break: {text}");
    prop_assert!(
        text.len() <= 6 * line.len() + 512,
        "a reply of {} to a line of {}",
        text.len(),
        line.len()
    );
    let back: Response = serde_json::from_str(&text).expect("the CLI reads the reply");
    prop_assert!(!back.ok);
    Ok(())
}

#[test]
fn fuzz_control_request() {
    let started = Instant::now();
    let n = cases(5_000);
    runner(n)
        .run(&control_input(), |line| check_control(&line))
        .unwrap();
    eprintln!(
        "fuzz_control_request: {n} cases ({} requests) in {:?}",
        REQUESTS.load(Ordering::Relaxed),
        started.elapsed()
    );
}

/// A line of `[` as long as the socket accepts, inside a field: serde_json's
/// recursion limit refuses it (no stack overflow), and the reply says so.
#[test]
fn control_request_nested_to_the_line_limit_is_refused() {
    let mut line = String::from(r#"{"cmd":"ping","x":"#);
    line.push_str(&"[".repeat(crate::control::MAX_LINE - line.len()));
    assert!(serde_json::from_str::<Request>(&line).is_err());
    check_control(line.as_bytes()).unwrap();
}

// ---------------------------------------------------------------------------
// The control socket's line reader (`control::read_request`)
// ---------------------------------------------------------------------------

/// A connection's whole input: short lines (requests and noise, with `\n`,
/// `\r\n`, a lone `\r` or no end), and lines at the edge of
/// [`MAX_LINE`](crate::control::MAX_LINE), where the reader must refuse exactly
/// what is longer.
fn stream_input() -> impl Strategy<Value = Vec<u8>> {
    use crate::control::MAX_LINE;
    const ENDS: &[&[u8]] = &[b"\n", b"\r\n", b"\r", b"", b"\n\n"];
    let end = proptest::sample::select(ENDS);
    let short = (
        prop_oneof![
            control_input(),
            proptest::collection::vec(any::<u8>(), 0..8)
        ],
        end.clone(),
    )
        .prop_map(|(line, end)| [line, end.to_vec()].concat());
    // A filler that is no line end, ASCII or not UTF-8 at all.
    const FILLERS: &[u8] = &[b'x', b'[', 0xff];
    let filler = proptest::sample::select(FILLERS);
    let long = ((MAX_LINE - 3)..(MAX_LINE + 4), filler, end)
        .prop_map(|(len, byte, end)| [vec![byte; len], end.to_vec()].concat());
    proptest::collection::vec(prop_oneof![12 => short, 1 => long], 0..6)
        .prop_map(|lines| lines.concat())
}

/// What the reader must return, computed plainly: lines split at `\n`, one
/// `\r` before a `\n` dropped, a line longer than `MAX_LINE` a refusal that ends
/// the connection, and the end of the input its end.
fn expected_lines(input: &[u8]) -> (Vec<String>, bool) {
    use crate::control::MAX_LINE;
    let mut lines = Vec::new();
    let mut rest = input;
    while !rest.is_empty() {
        let (line, next) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => {
                let mut l = &rest[..i];
                if l.last() == Some(&b'\r') {
                    l = &l[..l.len() - 1];
                }
                (l, &rest[i + 1..])
            }
            None => (rest, &rest[rest.len()..]),
        };
        if line.len() > MAX_LINE {
            return (lines, true);
        }
        lines.push(String::from_utf8_lossy(line).into_owned());
        rest = next;
    }
    (lines, false)
}

/// Reads `input` through `read_request` as the connection does, with the bytes
/// arriving in reads of `chunk` (the `BufReader`'s capacity), until the end or a
/// refusal.
fn check_stream(input: &[u8], chunk: usize) -> Result<(), TestCaseError> {
    use crate::control::{read_request, MAX_LINE};
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let (lines, refused) = rt.block_on(async {
        let mut reader = tokio::io::BufReader::with_capacity(chunk, input);
        let mut lines = Vec::new();
        loop {
            match read_request(&mut reader).await.expect("reading a slice") {
                Ok(Some(line)) => lines.push(line),
                Ok(None) => return (lines, false),
                Err(()) => return (lines, true),
            }
        }
    });
    for line in &lines {
        prop_assert!(!line.contains('\n'));
        // Lossy UTF-8 turns each bad byte into a 3-byte U+FFFD at most.
        prop_assert!(line.len() <= 3 * MAX_LINE);
    }
    let (want, want_refused) = expected_lines(input);
    prop_assert_eq!(lines, want);
    prop_assert_eq!(refused, want_refused);
    Ok(())
}

#[test]
fn fuzz_control_line_reader() {
    let started = Instant::now();
    // Each case may carry a few 64 KiB lines: fewer cases than the parsers.
    let n = cases(2_000);
    runner(n)
        .run(
            &(stream_input(), prop_oneof![Just(8 * 1024), 1usize..64]),
            |(input, chunk)| check_stream(&input, chunk),
        )
        .unwrap();
    eprintln!(
        "fuzz_control_line_reader: {n} cases in {:?}",
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------
// events.jsonl
// ---------------------------------------------------------------------------

const EVENT_SEEDS: &[&str] = &[
    r#"{"time":"2026-01-02T03:04:05.678Z","app":"web","kind":"started","worker":0,"generation":1,"pid":100}"#,
    r#"{"time":"2026-01-02T03:04:05.678Z","app":"web","kind":"recycle","reason":"manual","detail":"manual recycle","cause":{"reason":"manual"},"worker":0,"generation":3,"old_pid":100,"new_pid":140,"startup_ms":352}"#,
    r#"{"time":"2026-01-02T03:04:05.678Z","app":"web","kind":"crashed","exit_code":-1,"signal":"SIGKILL","uptime_ms":18446744073709551615}"#,
    r#"{"time":"x","app":"","kind":"config_rejected","detail":"line\nbreak \u00e9"}"#,
    "",
    "\n",
    "   \r\n",
];

const EVENT_PIECES: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ":",
    ",",
    "\"",
    "\n",
    "\r\n",
    "\r",
    "\"time\"",
    "\"app\"",
    "\"kind\"",
    "\"started\"",
    "\"recycle\"",
    "\"cause\"",
    "\"reason\"",
    "\"manual\"",
    "\"worker\"",
    "\"2026-01-02T03:04:05.678Z\"",
    "null",
    "true",
    "-1",
    "1e400",
    "\u{0}",
    "\u{2028}",
];

fn events_input() -> impl Strategy<Value = String> {
    // Files of several lines: each one valid, mutated or glued.
    let line = prop_oneof![
        2 => mutated(EVENT_SEEDS),
        1 => glued(EVENT_PIECES, 16),
        1 => proptest::collection::vec(any::<u8>(), 0..32),
    ];
    let sep = prop_oneof![Just("\n"), Just("\r\n"), Just("")];
    proptest::collection::vec((line, sep), 0..8).prop_map(|lines| {
        let mut text = Vec::new();
        for (l, s) in lines {
            text.extend_from_slice(&l);
            text.extend_from_slice(s.as_bytes());
        }
        String::from_utf8_lossy(&text).into_owned()
    })
}

/// Events read (a count the run reports, as [`REQUESTS`]).
static EVENTS: AtomicU32 = AtomicU32::new(0);

fn check_events(text: &str) -> Result<(), TestCaseError> {
    let read = read_lines(text);
    EVENTS.fetch_add(read.events.len() as u32, Ordering::Relaxed);
    let lines = text.lines().count();
    // Every non-empty line is accounted for once: an event or a bad line number.
    let non_empty = text.lines().filter(|l| !l.trim().is_empty()).count();
    prop_assert_eq!(read.events.len() + read.bad_lines.len(), non_empty);
    prop_assert!(read.bad_lines.windows(2).all(|w| w[0] < w[1]));
    prop_assert!(read.bad_lines.iter().all(|&n| n >= 1 && n <= lines));
    for (line, event) in &read.events {
        // The line kept is the file's own (borrowed, not copied).
        let at = line.as_ptr() as usize - text.as_ptr() as usize;
        prop_assert!(at + line.len() <= text.len());
        // And its event reads back from what the supervisor would write.
        let written = serde_json::to_string(event).expect("an event serializes");
        prop_assert!(!written.contains('\n'));
        let again = read_lines(&written);
        prop_assert_eq!(again.events.len(), 1, "{} does not read back", written);
        prop_assert_eq!(&again.events[0].1, event);
    }
    // `appvisor events` filters and `--stats` read the same lines through a
    // borrowed `Brief`: every event is one, with the same fields, and any mix of
    // them folds into statistics and a window without a panic.
    let mut stats = crate::event_query::Stats::default();
    let window = crate::event_query::Filter {
        since: Some(crate::event_query::Bound::new(jiff::Timestamp::UNIX_EPOCH)),
        ..Default::default()
    };
    let mut recycles = 0u64;
    for line in text.lines() {
        if let Ok(b) = serde_json::from_str::<crate::event_query::Brief<'_>>(line) {
            let _ = window.matches(&b);
            recycles += u64::from(b.kind == crate::events::EventKind::Recycle);
            stats.add(&b);
        }
    }
    for (line, event) in &read.events {
        let b = serde_json::from_str::<crate::event_query::Brief<'_>>(line);
        prop_assert!(b.is_ok(), "{} is an event but not a Brief", line);
        let b = b.unwrap();
        prop_assert_eq!(
            (&*b.app, b.kind, &*b.time),
            (event.app.as_str(), event.kind, event.time.as_str())
        );
        // The fast path agrees with the parser whenever it reads a line at all.
        if let Some(h) = crate::event_query::Head::of(line.as_bytes()) {
            prop_assert_eq!(
                (h.app, h.kind, h.time),
                (event.app.as_str(), event.kind, event.time.as_str())
            );
        }
    }
    let rows = stats.rows(&[]);
    let counted: u64 = rows
        .iter()
        .filter(|r| r.reason == crate::event_query::ALL_REASONS)
        .map(|r| r.recycles)
        .sum();
    prop_assert_eq!(counted, recycles);
    Ok(())
}

#[test]
fn fuzz_events_reader() {
    let started = Instant::now();
    let n = cases(3_000);
    runner(n)
        .run(&events_input(), |text| check_events(&text))
        .unwrap();
    eprintln!(
        "fuzz_events_reader: {n} cases ({} events read) in {:?}",
        EVENTS.load(Ordering::Relaxed),
        started.elapsed()
    );
}
