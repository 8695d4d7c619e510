//! Trigger figures, printed as a table (run: `bench/triggers.sh`).
//!
//! - file change → recycle started (the candidate's `started` event), minus the
//!   configured debounce: p50 / p95 over 30 changes;
//! - private memory crossing the limit → recycle started, against
//!   `memory_check_interval` + 50 ms: the crossing instant is found by sampling the
//!   worker's `/proc/PID/smaps_rollup` every 2 ms from outside.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use appvisor_e2e::*;
use serde_json::Value;

fn event_ms(e: &Value) -> f64 {
    let t: jiff::Timestamp = e["time"].as_str().unwrap().parse().unwrap();
    t.as_millisecond() as f64
}

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        * 1000.0
}

fn started_after(sv: &Supervisor, generation_min: u64) -> Value {
    wait_until(Duration::from_secs(30), "a new generation to start", || {
        sv.events().into_iter().find(|e| {
            e["kind"] == "started" && e["generation"].as_u64().unwrap_or(0) >= generation_min
        })
    })
}

fn file_change_latency() -> (f64, f64) {
    let sb = Sandbox::new("bench-watch");
    let port = free_port();
    sb.write("web.config", "v0");
    let debounce_ms = 50.0;
    sb.config(&format!(
        "[[app]]\nname = \"web\"\ncommand = [\"{}\"]\nlisten = [\"tcp://127.0.0.1:{port}\"]\n[app.watch]\ndebounce = \"{debounce_ms}ms\"\n",
        example_bin("demo").display()
    ));
    let sv = sb.start();
    sv.wait_running("web", 1);
    sv.wait_event("watching", Duration::from_secs(30), |e| {
        e["kind"] == "watching"
    });
    let mut lat = Vec::new();
    let mut generation = 1;
    for i in 1..=30 {
        let t0 = now_ms();
        std::fs::write(sb.path("web.config"), format!("v{i}")).unwrap();
        generation += 1;
        let started = started_after(&sv, generation);
        lat.push(event_ms(&started) - t0 - debounce_ms);
        sv.wait_running("web", 1);
    }
    sv.stop();
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (lat[lat.len() / 2], lat[lat.len() * 95 / 100])
}

fn private_bytes(pid: i32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let mut kib = 0;
    for l in text.lines() {
        if l.starts_with("Private_Clean:") || l.starts_with("Private_Dirty:") {
            kib += l.split_whitespace().nth(1)?.parse::<u64>().ok()?;
        }
    }
    Some(kib * 1024)
}

fn memory_latency() -> Vec<f64> {
    let sb = Sandbox::new("bench-mem");
    let port = free_port();
    let limit: u64 = 100 * 1024 * 1024;
    sb.config(&format!(
        "[[app]]\nname = \"web\"\ncommand = [\"{}\"]\nlisten = [\"tcp://127.0.0.1:{port}\"]\nenv = {{ DEMO_LEAK_MB_PER_SEC = \"20\" }}\n[app.recycle]\nprivate_memory = \"100MiB\"\nmemory_check_interval = \"1s\"\n[app.watch]\nenabled = false\n",
        example_bin("demo").display()
    ));
    let sv = sb.start();
    let mut out = Vec::new();
    let mut generation = 1;
    for _ in 0..5 {
        let pid = sv.wait_running("web", 1)[0];
        let crossed = wait_until(Duration::from_secs(60), "the limit to be crossed", || {
            let b = private_bytes(pid)?;
            std::thread::sleep(Duration::from_millis(2));
            (b > limit).then(now_ms)
        });
        generation += 1;
        let started = started_after(&sv, generation);
        out.push(event_ms(&started) - crossed);
    }
    sv.stop();
    out
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    println!("appvisor trigger benchmark");
    println!();
    println!("| figure | measured | goal | peers |");
    println!("|---|---|---|---|");
    let (p50, p95) = file_change_latency();
    println!("| file change → recycle started, minus debounce, p50 / p95 (30 edits) | {p50:.1} ms / {p95:.1} ms | p50 ≤ 10 ms | PM2 ≈ 140 ms over startup, uWSGI 1 s tick |");
    let mem = memory_latency();
    let worst = mem.iter().cloned().fold(0.0, f64::max);
    let all: Vec<String> = mem.iter().map(|m| format!("{m:.0}")).collect();
    println!("| private memory over limit → recycle started (check every 1 s), worst of 5 | {worst:.0} ms ({} ms) | ≤ 1050 ms | PM2 5–25 s (30 s check) |", all.join(", "));
}
