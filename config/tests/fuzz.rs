//! Bounded fuzzing of the config loader (issue 12): [`appvisor_config::parse`],
//! what `load` runs on the file's text, fed random TOML pieces and the test
//! fixtures with bytes or whole lines changed.
//!
//! As the store's and the supervisor's `fuzz` modules: a proptest run of
//! [`cases`] inputs, `APPVISOR_FUZZ_CASES=N` sets the count (the plain
//! `cargo test` runs a few hundred), and `.ci/run` runs 100,000, optimised
//! (`cargo test --release -p appvisor-config --test fuzz`: about 5 s here,
//! plus the build; some 15 % of the inputs load). Anything found
//! becomes a named regression test here. (None so far.)
//!
//! What is checked, beyond "no panic": an error has at least one problem and
//! every problem names the file (the line a user sees starts with it), its
//! place is inside the text, the annotated form renders; a config that loads
//! dumps (`appvisor check`) to TOML that loads again to the same config.

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use appvisor_config::{parse, ConfigError};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

/// Cases per target: `APPVISOR_FUZZ_CASES`, or the default.
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

const FILE: &str = "/srv/fuzz/appvisor.toml";

const SEEDS: &[&str] = &[
    include_str!("fixtures/full.toml"),
    include_str!("fixtures/minimal.toml"),
    include_str!("fixtures/no-apps.toml"),
    include_str!("fixtures/privileges.toml"),
    include_str!("fixtures/redis.toml"),
];

/// Values that reach the validators: sizes, durations, signals, paths, listen
/// addresses, numbers at their edges, and the wrong types.
const VALUES: &[&str] = &[
    "0",
    "1",
    "-1",
    "4",
    "65536",
    "9223372036854775807",
    "-9223372036854775808",
    "18446744073709551616",
    "1.5",
    "nan",
    "inf",
    "true",
    "false",
    "\"\"",
    "\"x\"",
    "\"10s\"",
    "\"0s\"",
    "\"1ms\"",
    "\"99999999999999999999h\"",
    "\"1.5m\"",
    "\"-3s\"",
    "\"512MiB\"",
    "\"1GiB\"",
    "\"18446744073709551616B\"",
    "\"0B\"",
    "\"1.5KiB\"",
    "\"SIGTERM\"",
    "\"TERM\"",
    "\"SIGKILL\"",
    "\"SIGNOPE\"",
    "\"127.0.0.1:0\"",
    "\"[::1]:8080\"",
    "\"unix:sock\"",
    "\"unix:\"",
    "\"/\"",
    "\"..\"",
    "\"../../x\"",
    "\"*.py\"",
    "\"[\"",
    "\"03:00\"",
    "\"25:61\"",
    "\"redis://a:b@h:1/0\"",
    "\"rediss://\"",
    "\"root\"",
    "\"nobody\"",
    "\"embedded\"",
    "\"redis\"",
    "\"always\"",
    "\"no\"",
    "[]",
    "[\"x\"]",
    "[1, \"x\"]",
    "{}",
    "{ a = 1 }",
    "\"é\\u0000\"",
];

const KEYS: &[&str] = &[
    "name",
    "command",
    "cwd",
    "env",
    "processes",
    "state_dir",
    "log_max_size",
    "log_keep",
    "events_max_size",
    "events_keep",
    "metrics",
    "metrics_public",
    "sample_interval",
    "history_max_size",
    "history_retention",
    "backend",
    "tcp",
    "persist",
    "max_memory",
    "max_value_size",
    "max_clients",
    "url",
    "listen",
    "user",
    "group",
    "groups",
    "umask",
    "secret_env",
    "startup_timeout",
    "stop_signal",
    "watch",
    "ignore",
    "memory_limit",
    "max_requests",
    "at",
    "nofile",
    "core",
    "nproc",
    "recycle",
    "probe",
    "nosuch",
];

const PIECES: &[&str] = &[
    "[supervisor]",
    "[store]",
    "[[app]]",
    "[app]",
    "[[app.x]]",
    "[app.recycle]",
    "\n",
    "\r\n",
    " = ",
    "=",
    ".",
    "\"",
    "'",
    "'''",
    "\"\"\"",
    "[",
    "]",
    "{",
    "}",
    ",",
    "#",
    " ",
    "\t",
    "\\",
    "\u{0}",
    "\u{feff}",
];

/// A seed, then a few lines replaced by `key = value`, removed, duplicated or
/// cut, then a few bytes changed (the text is read back lossily, as `load`
/// would refuse invalid UTF-8 before parsing).
fn mutated() -> impl Strategy<Value = String> {
    let line_edit = (
        any::<usize>(),
        0u8..4,
        proptest::sample::select(KEYS),
        proptest::sample::select(VALUES),
    );
    let byte_edit = (any::<usize>(), any::<u8>(), 0u8..3);
    (
        proptest::sample::select(SEEDS),
        proptest::collection::vec(line_edit, 0..4),
        proptest::collection::vec(byte_edit, 0..3),
    )
        .prop_map(|(seed, line_edits, byte_edits)| {
            let mut lines: Vec<String> = seed.lines().map(str::to_owned).collect();
            for (at, kind, key, value) in line_edits {
                let at = at % (lines.len() + 1);
                match kind {
                    0 => lines.insert(at, format!("{key} = {value}")),
                    1 if at < lines.len() => {
                        lines.remove(at);
                    }
                    2 if at < lines.len() => {
                        let copy = lines[at].clone();
                        lines.insert(at, copy);
                    }
                    _ if at < lines.len() => {
                        // Keep the key, change the value.
                        if let Some((k, _)) = lines[at].split_once('=') {
                            lines[at] = format!("{k}= {value}");
                        }
                    }
                    _ => {}
                }
            }
            let mut buf = lines.join("\n").into_bytes();
            for (at, byte, kind) in byte_edits {
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
            String::from_utf8_lossy(&buf).into_owned()
        })
}

/// TOML pieces, keys and values glued in any order.
fn glued() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        2 => proptest::sample::select(PIECES),
        1 => proptest::sample::select(KEYS),
        1 => proptest::sample::select(VALUES),
    ];
    proptest::collection::vec(piece, 0..32).prop_map(|p| p.concat())
}

fn input() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => proptest::collection::vec(any::<char>(), 0..48)
            .prop_map(|c| c.into_iter().collect::<String>()),
        2 => glued(),
        4 => mutated(),
    ]
}

/// Inputs that loaded: the run reports them, so that a change of strategy that
/// stops reaching the resolver shows.
static LOADED: AtomicU32 = AtomicU32::new(0);

fn check(text: &str) -> Result<(), TestCaseError> {
    let path = Path::new(FILE);
    match parse(text, path) {
        Ok(config) => {
            LOADED.fetch_add(1, Ordering::Relaxed);
            let dumped = config.to_toml_string();
            let again = parse(&dumped, path).map_err(|e| {
                TestCaseError::fail(format!(
                    "the dump does not load: {e}\n--- dump ---\n{dumped}"
                ))
            })?;
            // Secrets are redacted in the dump, so only a dump without them
            // resolves to the very same config.
            if !dumped.contains("(redacted)") {
                prop_assert_eq!(again, config, "the dump differs:\n{}", dumped);
            }
        }
        Err(e @ ConfigError::Invalid { .. }) => {
            prop_assert!(!e.problems().is_empty(), "an error without a problem");
            let lines = text.split('\n').count();
            for p in e.problems() {
                prop_assert_eq!(p.file.as_path(), path);
                if let Some(loc) = p.location {
                    prop_assert!(
                        loc.line >= 1 && loc.line <= lines,
                        "line {} of {lines}",
                        loc.line
                    );
                }
            }
            for p in e.problems() {
                let shown = p.to_string();
                prop_assert!(shown.starts_with(FILE), "{shown}");
            }
            let shown = e.to_string();
            prop_assert!(shown.starts_with(FILE), "{shown}");
            let _ = e.annotated().to_string();
        }
        Err(e) => return Err(TestCaseError::fail(format!("not an Invalid error: {e}"))),
    }
    Ok(())
}

#[test]
fn fuzz_config_loader() {
    let started = Instant::now();
    let n = cases(3_000);
    runner(n).run(&input(), |text| check(&text)).unwrap();
    eprintln!(
        "fuzz_config_loader: {n} cases ({} loaded) in {:?}",
        LOADED.load(Ordering::Relaxed),
        started.elapsed()
    );
}
