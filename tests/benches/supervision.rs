//! Supervision figures, printed as a table (run: `bench/supervision.sh`).
//!
//! - failed requests and the slowest request during 100 recycles under load, with
//!   and without keep-alive, against the app's own slowest request under the same
//!   load with no recycle;
//! - recycle overhead: `recycle` request → new generation ready, minus the app's
//!   own startup (fork → READY=1), p50 and p95;
//! - kill -9 of a worker → its slot answers again, minus the new worker's own
//!   startup, and the supervisor's own part (its `crashed` event → the next
//!   `started`), p50 and p95 of 30 kills;
//! - throughput through appvisor ÷ the app alone (wrk, 4 connections);
//! - supervisor RSS with one app of 4 workers, and its idle CPU over 10 s.
//!
//! Absolute numbers drift on shared machines; the ratios are what to compare.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use appvisor_e2e::load::{Load, LoadReport};
use appvisor_e2e::*;

const RECYCLES: usize = 100;

fn config(port: u16, processes: u32) -> String {
    format!(
        "[[app]]\nname = \"web\"\ncommand = [\"{}\"]\nprocesses = {processes}\nlisten = [\"tcp://127.0.0.1:{port}\"]\n[app.watch]\nenabled = false\n",
        example_bin("demo").display()
    )
}

fn control(sv: &Supervisor, req: &str) -> serde_json::Value {
    let mut s = UnixStream::connect(sv.dir.join(".appvisor/control.sock")).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(b"\n").unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap()
}

fn recycle_under_load(keep_alive: bool) -> (LoadReport, LoadReport) {
    let sb = Sandbox::new("bench");
    let port = free_port();
    sb.config(&config(port, 2));
    let sv = sb.start();
    sv.wait_running("web", 2);
    // The app's own slowest request under the same load, no recycle.
    let base = Load::start(port, 4, keep_alive, "/");
    base.wait_for_requests(20_000);
    let base = base.finish();
    let load = Load::start(port, 4, keep_alive, "/");
    load.wait_for_requests(200);
    for _ in 0..RECYCLES {
        let r = control(&sv, r#"{"cmd":"recycle","app":"web"}"#);
        assert_eq!(r["ok"], true, "{r}");
        load.wait_for_requests(100);
    }
    let report = load.finish();
    sv.stop();
    (base, report)
}

fn recycle_overhead() -> (f64, f64) {
    let sb = Sandbox::new("bench-ovh");
    let port = free_port();
    sb.config(&config(port, 1));
    let sv = sb.start();
    sv.wait_running("web", 1);
    let mut overhead = Vec::new();
    for _ in 0..50 {
        let before = sv.events_of("recycle").len();
        let t0 = Instant::now();
        let r = control(&sv, r#"{"cmd":"recycle","app":"web"}"#);
        let total = t0.elapsed().as_secs_f64() * 1000.0;
        assert_eq!(r["ok"], true, "{r}");
        let events = sv.events_of("recycle");
        assert_eq!(events.len(), before + 1);
        let startup = events.last().unwrap()["startup_ms"].as_f64().unwrap();
        overhead.push((total - startup).max(0.0));
    }
    sv.stop();
    overhead.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (
        overhead[overhead.len() / 2],
        overhead[overhead.len() * 95 / 100],
    )
}

const KILLS: usize = 30;

/// `KILLS` kill -9s of a one-worker app, each past `stable_uptime` (so the slot
/// restarts at once, as after a lone crash in production): p50 and p95 of the
/// time to serve again minus the new worker's startup, and of the supervisor's
/// own part.
fn crash_recovery() -> ((f64, f64), (f64, f64)) {
    let sb = Sandbox::new("bench-kill");
    let port = free_port();
    sb.config(&format!(
        "{}[app.failure]\nstable_uptime = \"500ms\"\nrapid_fail_max_crashes = 1000\n",
        config(port, 1)
    ));
    let sv = sb.start();
    sv.wait_running("web", 1);
    let mut over = Vec::new();
    let mut own = Vec::new();
    for _ in 0..KILLS {
        // Past stable_uptime since the last start: pacing, not synchronisation.
        std::thread::sleep(Duration::from_millis(700));
        let r = appvisor_e2e::recovery::crash_and_recover(&sv, "web", port)
            .expect("the slot answers again");
        over.push((r.total - r.startup).max(0.0));
        own.push(r.reaction);
    }
    sv.stop();
    let p = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[v.len() * 95 / 100])
    };
    (p(over), p(own))
}

fn wrk(port: u16) -> Option<f64> {
    let out = Command::new("wrk")
        .args(["-t2", "-c4", "-d5s", &format!("http://127.0.0.1:{port}/")])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.starts_with("Requests/sec:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// wrk against the demo alone and under appvisor, alternated three times; the
/// medians (a shared machine's noise hits both sides alike).
fn throughput() -> Option<(f64, f64)> {
    // The app alone: the demo binds the port itself.
    let port_alone = free_port();
    let mut alone = Command::new(example_bin("demo"))
        .env("DEMO_ADDR", format!("127.0.0.1:{port_alone}"))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(10), "the demo alone", || {
        http_get(port_alone, "/").ok()
    });
    let sb = Sandbox::new("bench-wrk");
    let port = free_port();
    sb.config(&config(port, 1));
    let sv = sb.start();
    sv.wait_running("web", 1);
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        a.extend(wrk(port_alone));
        b.extend(wrk(port));
    }
    alone.kill().unwrap();
    alone.wait().unwrap();
    sv.stop();
    if a.is_empty() || b.is_empty() {
        return None;
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|x, y| x.partial_cmp(y).unwrap());
        v[v.len() / 2]
    };
    Some((median(&mut a), median(&mut b)))
}

/// CPU time of each thread of `pid` by thread id, in nanoseconds (schedstat: exact,
/// unlike clock ticks of 10 ms).
fn cpu_ns(pid: i32) -> std::collections::HashMap<String, u64> {
    let mut out = std::collections::HashMap::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        if let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) {
            let ns = s
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            out.insert(t.file_name().to_string_lossy().into_owned(), ns);
        }
    }
    out
}

/// CPU used between two [`cpu_ns`] readings, thread by thread: a thread that
/// exited in between (tokio's blocking pool lets an idle thread go after 10 s) must
/// not make the sum go down.
fn cpu_used(
    before: &std::collections::HashMap<String, u64>,
    after: &std::collections::HashMap<String, u64>,
) -> u64 {
    after
        .iter()
        .map(|(tid, ns)| ns.saturating_sub(before.get(tid).copied().unwrap_or(0)))
        .sum()
}

fn footprint() -> (f64, f64) {
    let sb = Sandbox::new("bench-rss");
    let port = free_port();
    sb.config(&config(port, 4));
    let sv = sb.start();
    sv.wait_running("web", 4);
    let pid = sv.pid();
    // Let start-up work (watch set-up, first reports) settle first.
    std::thread::sleep(Duration::from_secs(2));
    let t0 = cpu_ns(pid);
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(20)); // measuring idleness: nothing to wait for
    let ns = cpu_used(&t0, &cpu_ns(pid));
    let cpu = ns as f64 / 1e9 / start.elapsed().as_secs_f64() * 100.0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap();
    sv.stop();
    (rss_kib / 1024.0, cpu)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    println!(
        "appvisor supervision benchmark ({} build)",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    println!();
    println!("| figure | measured | goal | peers |");
    println!("|---|---|---|---|");
    for keep_alive in [true, false] {
        let (base, r) = recycle_under_load(keep_alive);
        let mode = if keep_alive {
            "keep-alive"
        } else {
            "no keep-alive"
        };
        println!(
            "| failed requests, {RECYCLES} recycles × 2 workers, 4 clients, {mode} | {} of {} | 0 | PM2 fork ≈ 270/restart; uWSGI chain 0 |",
            r.failed,
            r.ok + r.failed
        );
        println!(
            "| slowest request during recycles vs app alone, {mode} | {:.1} ms vs {:.1} ms (+{:.1} ms) | ≤ +10 ms | uWSGI touch-reload stalls 1.34 s |",
            r.max_latency.as_secs_f64() * 1000.0,
            base.max_latency.as_secs_f64() * 1000.0,
            (r.max_latency.as_secs_f64() - base.max_latency.as_secs_f64()) * 1000.0
        );
    }
    let (p50, p95) = recycle_overhead();
    println!("| recycle overhead (request → ready, minus app startup), p50 / p95 | {p50:.2} ms / {p95:.2} ms | p50 ≤ 5 ms | PM2 ≈ 140 ms over startup |");
    let ((over50, over95), (own50, own95)) = crash_recovery();
    println!("| kill -9 → slot serving again, minus the new worker's startup, p50 / p95 ({KILLS} kills) | {over50:.1} ms / {over95:.1} ms | ≤ 10 ms | gunicorn ≈ 36 ms, uWSGI ≈ 400 ms, PM2 ≈ 870 ms (bench/run) |");
    println!("| … of which the supervisor's own part (`crashed` → `started` event), p50 / p95 | {own50:.1} ms / {own95:.1} ms | | |");
    match throughput() {
        Some((alone, through)) => println!(
            "| throughput under appvisor ÷ app alone (wrk -c4) | {:.3} ({through:.0} vs {alone:.0} req/s) | ≥ 0.98 | no proxy hop |",
            through / alone
        ),
        None => println!("| throughput under appvisor ÷ app alone | wrk not installed (apt-get install wrk) | ≥ 0.98 | |"),
    }
    let (rss, cpu) = footprint();
    println!("| supervisor RSS, 1 app × 4 workers | {rss:.1} MiB | ≤ 8 MiB | PM2 55, supervisord 19, uWSGI 14, watchexec 10 MiB |");
    println!("| supervisor idle CPU over 20 s (all threads) | {cpu:.4} % | ≤ 0.02 % | uWSGI 0.01 %, watchexec 0.12 % |");
}
