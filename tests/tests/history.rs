//! Issue 9: the recorded history and `appvisor tune` — real workers leaking at a
//! known rate, the real binary, its files read back after a restart.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use appvisor_e2e::*;
use serde_json::Value;

const MIB: f64 = 1048576.0;

fn app(name: &str, port: u16, extra: &str) -> String {
    format!(
        "[[app]]\nname = \"{name}\"\ncommand = [\"{demo}\"]\nlisten = [\"tcp://127.0.0.1:{port}\"]\n{extra}\n[app.watch]\nenabled = false\n",
        demo = example_bin("demo").display()
    )
}

fn tune_json(sb: &Sandbox, args: &[&str]) -> Value {
    let mut all = vec!["tune"];
    all.extend_from_slice(args);
    all.push("--json");
    let out = sb.cli(&all);
    assert!(
        out.status.success(),
        "tune {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("tune --json prints JSON")
}

/// `tune --json`, or `None` while it fails (no sample recorded yet).
fn tune_try(sb: &Sandbox, args: &[&str]) -> Option<Value> {
    let mut all = vec!["tune"];
    all.extend_from_slice(args);
    all.push("--json");
    let out = sb.cli(&all);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).unwrap())
}

/// One request line on the control socket, one reply line back.
fn control(sb: &Sandbox, line: &str) -> Value {
    let mut s = UnixStream::connect(sb.path(".appvisor/control.sock")).unwrap();
    s.write_all(line.as_bytes()).unwrap();
    s.write_all(b"\n").unwrap();
    let mut reply = String::new();
    BufReader::new(s).read_line(&mut reply).unwrap();
    serde_json::from_str(&reply).unwrap()
}

/// The failure's message: one line on stderr, exit code non-zero.
fn one_line_error(sb: &Sandbox, args: &[&str]) -> String {
    let out = sb.cli(args);
    assert!(!out.status.success(), "{args:?} succeeded");
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    err
}

#[test]
fn tune_measures_leaks_finds_none_in_a_flat_worker_replays_a_limit_and_survives_a_restart() {
    let sb = Sandbox::new("tune");
    let (p1, p2, p3, p4) = (free_port(), free_port(), free_port(), free_port());
    // leaky: 1 MiB/s and no memory limit but the kill level. limited: the same leak
    // with a private_memory limit that really recycles it. perreq: 64 KiB per
    // request. flat: nothing.
    let config = [
        app(
            "leaky",
            p1,
            "env = { DEMO_LEAK_MB_PER_SEC = \"1\" }\n[app.recycle]\nmemory_hard_limit = \"400MiB\"\n",
        ),
        app(
            "limited",
            p2,
            "env = { DEMO_LEAK_MB_PER_SEC = \"1\" }\n[app.recycle]\nprivate_memory = \"24MiB\"\n",
        ),
        app("perreq", p3, "env = { DEMO_LEAK_KB_PER_REQUEST = \"64\" }\n"),
        app("flat", p4, ""),
    ]
    .concat();
    sb.config(&config);
    let sv = sb.start();
    for a in ["leaky", "limited", "perreq", "flat"] {
        sv.wait_running(a, 1);
    }
    // Steady traffic for the per-request leak (a load, not a wait).
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if http_get(p3, "/").is_ok() {
                    n += 1;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            n
        })
    };

    // 10 s in, tune says it needs more.
    wait_until(Duration::from_secs(60), "10 s of history", || {
        let r = tune_try(&sb, &["flat", "--since", "1h"])?;
        (r["samples"].as_u64().unwrap() >= 10).then_some(())
    });
    let early = sb.cli(&["tune", "flat"]);
    let text = String::from_utf8_lossy(&early.stdout);
    assert!(early.status.success());
    assert!(text.contains("Too little data"), "{text}");
    assert!(text.contains("more"), "{text}");
    let r = tune_json(&sb, &["flat"]);
    assert_eq!(r["enough_data"], false);
    assert!(r["needs_s"].as_f64().unwrap() >= 30.0, "{r}");

    // The control socket's history request (what `top` draws).
    let h = control(
        &sb,
        r#"{"cmd":"history","app":"leaky","since_s":20,"max_points":10}"#,
    );
    assert_eq!(h["ok"], true, "{h}");
    let reply = &h["history"];
    assert_eq!(reply["app"], "leaky");
    assert_eq!(reply["limits"]["memory_hard_limit"], 400u64 << 20);
    let points = reply["points"].as_array().unwrap();
    assert!((3..=10).contains(&points.len()), "{}", points.len());
    let privates: Vec<u64> = points
        .iter()
        .map(|p| p["private"].as_u64().unwrap())
        .collect();
    assert!(privates.last() > privates.first(), "{privates:?}");
    let bad = control(&sb, r#"{"cmd":"history","app":"nope"}"#);
    assert_eq!(bad["ok"], false);
    assert!(
        bad["error"]
            .as_str()
            .unwrap()
            .contains("no app named \"nope\""),
        "{bad}"
    );
    // status carries the sampler's figures.
    let w = &sv.app("leaky")["workers"][0];
    assert!(w["private"].as_u64().unwrap() > 0 && w["virtual_memory"].as_u64().unwrap() > 0);
    assert!(w["cpu_s"].as_f64().is_some());

    // Enough for a verdict: 60 s after warm-up.
    wait_until(Duration::from_secs(180), "enough history for tune", || {
        ["leaky", "perreq", "flat"]
            .iter()
            .all(|a| tune_json(&sb, &[a, "--since", "1h"])["enough_data"] == true)
            .then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    let served = load.join().unwrap();
    let limited_recycles = sv
        .events_of("recycle")
        .into_iter()
        .filter(|e| e["app"] == "limited" && e["reason"] == "memory")
        .count() as i64;
    let before = tune_json(&sb, &["leaky", "--since", "1h"]);
    let limited_life = tune_json(&sb, &["limited", "--since", "1h"]);
    assert_eq!(sv.stop().code(), Some(0));

    // The leak: 1 MiB/s = 3600 MiB/hour, within 20 %.
    let m = &before["metrics"]["private_memory"];
    let per_hour = m["growth_bytes_per_hour"].as_f64().unwrap() / MIB;
    assert!(
        (per_hour - 3600.0).abs() <= 720.0,
        "{per_hour} MiB/hour: {before}"
    );
    assert_eq!(m["leak"], true);
    // A limit that fires, and recycles gracefully, before the kill level.
    let recommended = m["recommended"].as_u64().unwrap();
    let level = m["level_bytes"].as_u64().unwrap();
    assert!(recommended > level, "{before}");
    assert!(
        recommended + (10 << 20) < 400 << 20,
        "{recommended}: {before}"
    );
    assert!(
        m["reason"]
            .as_str()
            .unwrap()
            .contains("before memory_hard_limit"),
        "{m}"
    );
    assert!(before["toml"]
        .as_str()
        .unwrap()
        .contains("private_memory = \""));
    assert!(before["interval"]["recommended"].as_f64().is_some());

    // Per request: 64 KiB a request = 62.5 MiB per 1,000, within 20 %.
    let rq = tune_json(&sb, &["perreq", "--since", "1h"]);
    let per_1000 = rq["metrics"]["private_memory"]["growth_bytes_per_1000_requests"]
        .as_f64()
        .unwrap()
        / MIB;
    assert!(served > 500, "{served} requests");
    assert!(
        (per_1000 - 62.5).abs() <= 12.5,
        "{per_1000} MiB per 1,000 requests: {rq}"
    );
    assert_eq!(rq["metrics"]["private_memory"]["leak"], true);

    // Flat: no leak.
    let flat = tune_json(&sb, &["flat", "--since", "1h"]);
    let fm = &flat["metrics"]["private_memory"];
    assert_eq!(fm["leak"], false, "{flat}");
    assert!(
        fm["reason"].as_str().unwrap().starts_with("No leak"),
        "{fm}"
    );
    assert_eq!(flat["interval"]["recommended"], Value::Null);

    // --what-if on leaky's recorded run, against what the same limit really did
    // to `limited` over the same time: within one.
    let replay = tune_json(
        &sb,
        &[
            "leaky",
            "--since",
            "1h",
            "--what-if",
            "private_memory = \"24MiB\"",
        ],
    );
    let predicted = replay["what_if"]["recycles"].as_i64().unwrap();
    assert!(
        limited_recycles >= 2,
        "{limited_recycles} real recycles: {limited_life}"
    );
    assert!(
        (predicted - limited_recycles).abs() <= 1,
        "what-if said {predicted}, the real limit recycled {limited_recycles} times"
    );
    let text = String::from_utf8_lossy(
        &sb.cli(&[
            "tune",
            "leaky",
            "--since",
            "1h",
            "--what-if",
            "private_memory = \"24MiB\"",
        ])
        .stdout,
    )
    .into_owned();
    assert!(
        text.contains("What if private_memory = \"24MiB\""),
        "{text}"
    );
    assert!(text.contains("per day"), "{text}");

    // After a restart, tune still sees the earlier data (and then some).
    let sv = sb.start();
    sv.wait_running("leaky", 1);
    let after = tune_json(&sb, &["leaky", "--since", "1h"]);
    assert!(
        after["samples"].as_u64() >= before["samples"].as_u64(),
        "{} then {}",
        before["samples"],
        after["samples"]
    );
    assert!(after["generations"].as_u64().unwrap() >= 1);
    assert_eq!(after["metrics"]["private_memory"]["leak"], true);
    assert_eq!(sv.stop().code(), Some(0));
}

#[test]
fn bad_input_gets_one_clear_line() {
    let sb = Sandbox::new("tunebad");
    sb.config(&app("web", free_port(), ""));
    let e = one_line_error(&sb, &["tune", "nope"]);
    assert!(
        e.contains("no app named \"nope\"") && e.contains("web"),
        "{e}"
    );
    let e = one_line_error(&sb, &["tune", "web", "--what-if", "private_memory 300MiB"]);
    assert!(e.contains("expected KEY = VALUE"), "{e}");
    let e = one_line_error(&sb, &["tune", "web", "--what-if", "colour = \"red\""]);
    assert!(e.contains("unknown setting"), "{e}");
    let e = one_line_error(&sb, &["tune", "web", "--since", "yesterday"]);
    assert!(e.contains("--since"), "{e}");
    // Never run: no history yet.
    let e = one_line_error(&sb, &["tune", "web"]);
    assert!(e.contains("no history of app \"web\" yet"), "{e}");
    // Garbage where the history should be.
    sb.write(
        ".appvisor/history/web/full-1700000000000.bin",
        &"x".repeat(500),
    );
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let mut garbage = b"AVHIST\x01\x01\x40\x00\x00\x00\x00\x00\x00\x00".to_vec();
    garbage.extend(std::iter::repeat_n(0xA5u8, 64 * 20));
    std::fs::write(
        sb.path(&format!(".appvisor/history/web/full-{now_ms}.bin")),
        garbage,
    )
    .unwrap();
    let e = one_line_error(&sb, &["tune", "web"]);
    assert!(e.contains("is corrupt"), "{e}");
}

/// Issue 12, disk full: the state dir on a small tmpfs filled to the last byte.
/// Recording the history fails: the supervisor says so once (not once per sample),
/// keeps serving the same worker, writes no torn record, and records again by
/// itself once space returns.
#[test]
fn a_full_disk_loses_history_samples_with_one_error_and_recording_resumes() {
    let sb = Sandbox::new("histfull");
    let port = free_port();
    sb.config(&format!(
        "[supervisor]\nsample_interval = \"100ms\"\n{}",
        app("web", port, "")
    ));
    let Some(fs) = Tmpfs::mount(&sb.path(".appvisor"), "2m") else {
        return;
    };
    let sv = sb.start();
    let pid = sv.wait_running("web", 1)[0];
    let samples = |sb: &Sandbox| -> Option<u64> {
        tune_try(sb, &["web", "--since", "1h"])?["samples"].as_u64()
    };
    wait_until(Duration::from_secs(30), "history being recorded", || {
        samples(&sb).filter(|&n| n >= 3)
    });

    let filler = fs.fill();
    let failures = |sv: &Supervisor| {
        sv.stderr()
            .matches("Cannot write the history of app \"web\"")
            .count()
    };
    wait_until(Duration::from_secs(30), "the history's write error", || {
        (failures(&sv) > 0).then_some(())
    });
    let at_full = samples(&sb).expect("the history stays readable on a full disk");
    // 30 sample intervals on the full disk: still one error, not one per sample
    // (a window for something that must not happen, not a wait for an event).
    let window = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < window {
        assert_eq!(failures(&sv), 1, "{}", sv.stderr());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        samples(&sb),
        Some(at_full),
        "a sample was recorded on a full disk"
    );
    // Still serving, by the same worker.
    assert_eq!(
        sv.app("web")["workers"][0]["pid"].as_i64(),
        Some(pid as i64)
    );
    assert!(http_get(port, "/").is_ok());

    std::fs::remove_file(filler).unwrap();
    wait_until(
        Duration::from_secs(30),
        "the history recorded again",
        || samples(&sb).filter(|&n| n >= at_full + 5),
    );
    let err = sv.stderr();
    assert!(
        err.contains("Writing the history of app \"web\" works again"),
        "{err}"
    );
    assert_eq!(failures(&sv), 1, "{err}");
    // Every record on disk is whole: `tune` reads them all without a checksum
    // warning.
    let out = sb.cli(&["tune", "web", "--since", "1h", "--json"]);
    assert!(out.status.success());
    let tune_err = String::from_utf8_lossy(&out.stderr);
    assert!(!tune_err.contains("checksum"), "{tune_err}");
    assert!(sv.stop().success());
    drop(fs);
}
