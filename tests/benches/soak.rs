//! The soak (issue 12), printed as a table (run: `bench/soak.sh`, `DURATION`
//! seconds, default 1800).
//!
//! One supervisor, four apps of the `demo` worker, for `DURATION`:
//!
//! - `leaky` (2 workers) leaks 2 MiB a second and is recycled by its
//!   `private_memory` limit about every 10 s per worker;
//! - `touchy` (1 worker) watches `touchy/**`: a touch storm sets the mtime of 20
//!   files 25 times a second and saves 5 of them again with the same content (a
//!   new file renamed over each, as editors save) 5 times a second — no recycle:
//!   the content is the same — and one file gets new content every 10 s (a
//!   `file_change` recycle);
//! - `reloaded` (1 worker): `appvisor.toml` is rewritten every 10 s with a new
//!   value of one of its env vars (a `config_change` recycle through the config
//!   watcher);
//! - `crashy` (1 worker, no load) gets a `kill -9` every 45 s (past
//!   `stable_uptime`, so it restarts at once): the time from the kill to the
//!   slot answering again, minus the new worker's own startup, is the recovery
//!   figure (issue 12: within startup + 10 ms).
//!
//! All the while `leaky`, `touchy` and `reloaded` serve a paced load (two
//! clients each: one keep-alive, one connection per request; no retries), and
//! 1,000 keys sit in the embedded store. Checked at the end: 0 failed
//! requests; ≥ `MIN_RECYCLES` (default 150 × DURATION/1800) recycles of each
//! kind; supervisor RSS and open fds flat — the mean of the first window
//! (after a warm-up) against the last, within 5 %; every store key intact.
//! Exits 1 if a check fails.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use appvisor_e2e::load::{Load, LoadReport};
use appvisor_e2e::recovery::{crash_and_recover, Recovery};
use appvisor_e2e::*;

const KEYS: usize = 1000;
const STORM_FILES: usize = 20;

fn env_secs(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn config(demo: &Path, ports: &[u16; 4], reload: u64) -> String {
    let demo = demo.display();
    format!(
        r#"[[app]]
name = "leaky"
command = ["{demo}"]
listen = ["tcp://127.0.0.1:{p0}"]
processes = 2
env = {{ DEMO_LEAK_MB_PER_SEC = "2" }}
[app.recycle]
private_memory = "24MiB"
memory_check_interval = "1s"
[app.watch]
enabled = false

[[app]]
name = "touchy"
command = ["{demo}"]
listen = ["tcp://127.0.0.1:{p1}"]
[app.watch]
paths = ["touchy/**"]

[[app]]
name = "reloaded"
command = ["{demo}"]
listen = ["tcp://127.0.0.1:{p2}"]
env = {{ SOAK_RELOAD = "{reload}" }}
[app.watch]
enabled = false

[[app]]
name = "crashy"
command = ["{demo}"]
listen = ["tcp://127.0.0.1:{p3}"]
[app.failure]
rapid_fail_max_crashes = 100000
[app.watch]
enabled = false
"#,
        p0 = ports[0],
        p1 = ports[1],
        p2 = ports[2],
        p3 = ports[3],
    )
}

/// Writes `rel` whole at once (a temporary file renamed over it), so no watcher
/// ever reads it half-written.
fn replace(sb: &Sandbox, rel: &str, text: &str) {
    let tmp = sb.path("soak.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, sb.path(rel)).unwrap();
}

/// One RESP command on `conn`; the reply's first line (and a bulk's body).
fn resp(conn: &mut BufReader<UnixStream>, args: &[&str]) -> String {
    let mut frame = format!("*{}\r\n", args.len());
    for a in args {
        frame.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    conn.get_mut().write_all(frame.as_bytes()).unwrap();
    let mut line = String::new();
    conn.read_line(&mut line).unwrap();
    let line = line.trim_end().to_owned();
    if let Some(len) = line.strip_prefix('$') {
        let Ok(len) = len.parse::<usize>() else {
            return "(nil)".into();
        };
        let mut body = vec![0; len + 2];
        conn.read_exact(&mut body).unwrap();
        return String::from_utf8_lossy(&body[..len]).into_owned();
    }
    line
}

fn store(sb: &Sandbox) -> BufReader<UnixStream> {
    let sock = sb.path(".appvisor/store/reloaded.sock");
    let conn = wait_until(Duration::from_secs(10), "the store's app socket", || {
        UnixStream::connect(&sock).ok()
    });
    BufReader::new(conn)
}

/// (RSS bytes, open fds) of `pid`.
fn footprint(pid: i32) -> (u64, u64) {
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 1024;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    (rss, fds)
}

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        * 1000.0
}

fn mean(xs: &[u64]) -> f64 {
    xs.iter().sum::<u64>() as f64 / xs.len().max(1) as f64
}

fn pct(sorted: &[f64], p: usize) -> f64 {
    sorted
        .get((sorted.len() * p / 100).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or(f64::NAN)
}

fn main() {
    let duration = Duration::from_secs(env_secs("DURATION", 1800));
    let d = duration.as_secs();
    let window = Duration::from_secs((d / 6).min(300));
    let warmup = Duration::from_secs((d / 15).min(120));
    let min_recycles = env_secs("MIN_RECYCLES", 150 * d / 1800);

    let sb = Sandbox::new("soak");
    let ports = [free_port(), free_port(), free_port(), free_port()];
    let demo = example_bin("demo");
    for i in 0..STORM_FILES {
        sb.write(&format!("touchy/f{i}.txt"), "same\n");
    }
    sb.write("touchy/changed.txt", "0\n");
    sb.config(&config(&demo, &ports, 0));
    let sv = sb.start();
    for (app, n) in [("leaky", 2), ("touchy", 1), ("reloaded", 1), ("crashy", 1)] {
        sv.wait_running(app, n);
    }
    let mut kv = store(&sb);
    for i in 0..KEYS {
        assert_eq!(
            resp(&mut kv, &["SET", &format!("soak:{i}"), &format!("v{i}")]),
            "+OK"
        );
    }

    let loads: Vec<(&str, Load, Load)> = ["leaky", "touchy", "reloaded"]
        .iter()
        .zip(ports)
        .map(|(app, port)| {
            let pause = Duration::from_millis(2);
            (
                *app,
                Load::start_paced(port, 1, true, "/", pause),
                Load::start_paced(port, 1, false, "/", pause),
            )
        })
        .collect();

    // The touch storm: its own thread, until the end.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let storm = {
        let stop = stop.clone();
        let dir = sb.path("touchy");
        let tmp = sb.path("storm.tmp");
        std::thread::spawn(move || {
            let mut touches = 0u64;
            let mut round = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                round += 1;
                if round.is_multiple_of(5) {
                    for i in 0..5 {
                        std::fs::write(&tmp, "same\n").unwrap();
                        std::fs::rename(&tmp, dir.join(format!("f{i}.txt"))).unwrap();
                        touches += 1;
                    }
                }
                for i in 0..STORM_FILES {
                    // `touch`: a new mtime, the same content.
                    let f = std::fs::File::options()
                        .write(true)
                        .open(dir.join(format!("f{i}.txt")))
                        .unwrap();
                    f.set_modified(SystemTime::now()).unwrap();
                    touches += 1;
                }
                std::thread::sleep(Duration::from_millis(40));
            }
            touches
        })
    };

    let started = Instant::now();
    let mut samples: Vec<(Duration, u64, u64)> = Vec::new();
    let mut recoveries: Vec<Recovery> = Vec::new();
    let mut lost_recoveries = 0;
    let (mut next_sample, mut next_change, mut next_reload, mut next_crash) = (
        Duration::ZERO,
        Duration::from_secs(10),
        Duration::from_secs(15),
        Duration::from_secs(20),
    );
    let (mut changes, mut reloads) = (0u64, 0u64);
    let mut last_report = Duration::ZERO;
    // The whole machine stopping (a loop iteration takes 100 ms): counted and
    // reported, and the timers below restart from now rather than catch up
    // with a burst of changes and kills.
    let (mut stalls, mut stalled, mut last_tick) = (0u32, Duration::ZERO, Duration::ZERO);
    while started.elapsed() < duration {
        let now = started.elapsed();
        if now - last_tick > Duration::from_secs(5) {
            stalls += 1;
            stalled += now - last_tick;
            eprintln!(
                "soak: the driver did not run for {:.1} s (at {} s)",
                (now - last_tick).as_secs_f64(),
                now.as_secs()
            );
        }
        last_tick = now;
        if now >= next_sample {
            let (rss, fds) = footprint(sv.pid());
            samples.push((now, rss, fds));
            next_sample += Duration::from_secs(5);
        }
        if now >= next_change {
            changes += 1;
            replace(&sb, "touchy/changed.txt", &format!("{changes}\n"));
            next_change = (next_change + Duration::from_secs(10)).max(now);
        }
        if now >= next_reload {
            reloads += 1;
            replace(&sb, "appvisor.toml", &config(&demo, &ports, reloads));
            next_reload = (next_reload + Duration::from_secs(10)).max(now);
        }
        if now >= next_crash {
            match crash_and_recover(&sv, "crashy", ports[3]) {
                Some(r) => recoveries.push(r),
                None => lost_recoveries += 1,
            }
            // From the end of this recovery: a kill within `stable_uptime` of
            // the last would meet the crash backoff, not the first-crash restart.
            next_crash = started.elapsed() + Duration::from_secs(45);
        }
        if now - last_report >= Duration::from_secs(60) {
            last_report = now;
            let (rss, fds) = footprint(sv.pid());
            eprintln!(
                "soak: {:>4} s, supervisor RSS {:.1} MiB, {fds} fds, {changes} changes, {reloads} reloads, {} kills",
                now.as_secs(),
                rss as f64 / 1048576.0,
                recoveries.len() + lost_recoveries
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let touches = storm.join().unwrap();
    let reports: Vec<(&str, LoadReport)> = loads
        .into_iter()
        .map(|(app, a, b)| {
            let mut r = a.finish();
            let r2 = b.finish();
            r.ok += r2.ok;
            r.failed += r2.failed;
            r.max_latency = r.max_latency.max(r2.max_latency);
            r.errors.extend(r2.errors);
            (app, r)
        })
        .collect();

    // Store keys, on a fresh connection.
    let mut kv = store(&sb);
    let intact = (0..KEYS)
        .filter(|i| resp(&mut kv, &["GET", &format!("soak:{i}")]) == format!("v{i}"))
        .count();

    let events = sv.events();
    let count = |app: &str, reason: &str| {
        events
            .iter()
            .filter(|e| e["kind"] == "recycle" && e["app"] == app && e["reason"] == reason)
            .count() as u64
    };
    let kind_count = |kind: &str| events.iter().filter(|e| e["kind"] == kind).count() as u64;
    let memory = count("leaky", "memory");
    let file_change = count("touchy", "file_change");
    let config_change = count("reloaded", "config_change");
    let (ignored, reloaded, crashed) = (
        kind_count("ignored_change"),
        kind_count("config_reloaded"),
        events
            .iter()
            .filter(|e| e["kind"] == "crashed" && e["app"] == "crashy")
            .count(),
    );
    let sv_pid = sv.pid();
    let (end_rss, end_fds) = footprint(sv_pid);
    assert!(sv.stop().success(), "the supervisor exits 0");

    let in_window = |from: Duration, to: Duration| -> (Vec<u64>, Vec<u64>) {
        samples
            .iter()
            .filter(|(t, _, _)| *t >= from && *t < to)
            .map(|(_, r, f)| (*r, *f))
            .unzip()
    };
    let (rss_first, fds_first) = in_window(warmup, warmup + window);
    let (rss_last, fds_last) = in_window(duration - window, duration);
    let drift = |a: &[u64], b: &[u64]| (mean(b) - mean(a)) / mean(a) * 100.0;
    let rss_drift = drift(&rss_first, &rss_last);
    let fds_drift = drift(&fds_first, &fds_last);

    let failed: u64 = reports.iter().map(|(_, r)| r.failed).sum();
    let ok: u64 = reports.iter().map(|(_, r)| r.ok).sum();
    let sorted = |f: &dyn Fn(&Recovery) -> f64| {
        let mut v: Vec<f64> = recoveries.iter().map(f).collect();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v
    };
    let overhead = sorted(&|r| (r.total - r.startup).max(0.0));
    let total = sorted(&|r| r.total);
    let reaction = sorted(&|r| r.reaction);

    let mut checks = Vec::new();
    let mut check = |name: String, pass: bool| checks.push((name, pass));
    check(format!("0 failed requests (of {ok})"), failed == 0);
    check(
        format!("≥ {min_recycles} memory recycles"),
        memory >= min_recycles,
    );
    check(
        format!("≥ {min_recycles} file-change recycles"),
        file_change >= min_recycles,
    );
    check(
        format!("≥ {min_recycles} config-change recycles"),
        config_change >= min_recycles,
    );
    check("supervisor RSS flat (±5 %)".into(), rss_drift.abs() <= 5.0);
    check("supervisor fds flat (±5 %)".into(), fds_drift.abs() <= 5.0);
    check(format!("{KEYS} store keys intact"), intact == KEYS);
    check("every kill -9 recovered".into(), lost_recoveries == 0);

    println!(
        "\n## Soak: {} s, started {}, load average at the end {}\n",
        d,
        jiff::Timestamp::from_millisecond(now_ms() as i64 - d as i64 * 1000).unwrap(),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    println!(
        "The driver was stopped {stalls} times, {:.0} s in all (the machine, not appvisor: every process stops then).\n",
        stalled.as_secs_f64()
    );
    println!("| figure | measured |");
    println!("|---|---|");
    for (app, r) in &reports {
        println!(
            "| requests to `{app}` (ok / failed, slowest) | {} / **{}**, {:.1} ms{} |",
            r.ok,
            r.failed,
            r.max_latency.as_secs_f64() * 1000.0,
            if r.errors.is_empty() {
                String::new()
            } else {
                format!(" ({})", r.errors.join("; "))
            }
        );
    }
    println!("| memory recycles of `leaky` (2 workers) | **{memory}** |");
    println!(
        "| file-change recycles of `touchy` ({changes} content changes; touch storm: {touches} same-content touches and saves → {ignored} `ignored_change`) | **{file_change}** |"
    );
    println!(
        "| config-change recycles of `reloaded` ({reloads} config rewrites → {reloaded} `config_reloaded`) | **{config_change}** |"
    );
    println!(
        "| supervisor RSS, mean of {}–{} s vs of the last {} s | {:.2} MiB → {:.2} MiB (**{:+.1} %**); at the end {:.2} MiB |",
        warmup.as_secs(),
        (warmup + window).as_secs(),
        window.as_secs(),
        mean(&rss_first) / 1048576.0,
        mean(&rss_last) / 1048576.0,
        rss_drift,
        end_rss as f64 / 1048576.0
    );
    println!(
        "| supervisor open fds, same windows | {:.1} → {:.1} (**{:+.1} %**); at the end {end_fds} |",
        mean(&fds_first),
        mean(&fds_last),
        fds_drift
    );
    println!("| store keys intact | **{intact}** of {KEYS} |");
    println!(
        "| kill -9 → slot answers again, minus the new worker's startup, p50 / p95 / max ({} kills, {crashed} `crashed`) | **{:.1}** / {:.1} / {:.1} ms |",
        recoveries.len(),
        pct(&overhead, 50),
        pct(&overhead, 95),
        overhead.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "| kill -9 → slot answers again, p50 / p95 / max | {:.1} / {:.1} / {:.1} ms |",
        pct(&total, 50),
        pct(&total, 95),
        total.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "| the supervisor's part: `crashed` event → next worker `started`, p50 / p95 / max | {:.0} / {:.0} / {:.0} ms |",
        pct(&reaction, 50),
        pct(&reaction, 95),
        reaction.last().copied().unwrap_or(f64::NAN)
    );
    println!();
    let mut all = true;
    for (name, pass) in &checks {
        println!("- {} {name}", if *pass { "PASS" } else { "FAIL" });
        all &= pass;
    }
    if !all {
        std::process::exit(1);
    }
}
