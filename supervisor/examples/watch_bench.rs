//! Benchmark of the file-change trigger on a large tree (see `bench/watch/README.md`).
//!
//! Creates 100,000 files under `bin/` in a temporary directory, then measures:
//! watch set-up time (baseline hashing + inotify watches + verification), the process
//! RSS after set-up, idle CPU over 10 s, change → decision latency beyond the debounce
//! (50 single-file edits), and what a 10,000-file burst produces.
//!
//! Usage: `cargo run --release -p appvisor --example watch_bench [-- FILES]`

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use appvisor::trigger::watch::{AppWatcher, WatchDecision};
use appvisor_config::{Compare, Signal, WatchConfig, DEFAULT_WATCH_IGNORE, DEFAULT_WATCH_PATHS};
use tokio::sync::mpsc::unbounded_channel;

const DIRS_TOP: usize = 10;
const CHANGES: usize = 50;
const BURST: usize = 10_000;

fn config(compare: Compare) -> WatchConfig {
    WatchConfig {
        enabled: true,
        paths: DEFAULT_WATCH_PATHS
            .iter()
            .map(|s| s.to_string())
            .chain(["App_Code/**".to_owned()])
            .collect(),
        code_dir: "App_Code".into(),
        ignore: DEFAULT_WATCH_IGNORE.iter().map(|s| s.to_string()).collect(),
        debounce: Duration::from_millis(200),
        // Long enough that the 10,000-file burst ends on quiet, not on the cap, even on a
        // loaded machine: the burst row measures coalescing.
        max_wait: Duration::from_secs(30),
        compare,
        soft: Vec::new(),
        soft_signal: Signal {
            name: "SIGHUP",
            number: 1,
        },
        soft_changes_before_recycle: 15,
        poll: None,
    }
}

/// `bin/dX/eYY/fNNNNNN.dll`, 100 files per leaf directory, 64–1,023 bytes each.
fn make_tree(root: &Path, files: usize) -> usize {
    let per_dir = 100;
    let leaves = files.div_ceil(per_dir);
    let mut dirs = 1;
    for leaf in 0..leaves {
        let dir = root.join(format!("bin/d{}/e{:03}", leaf % DIRS_TOP, leaf / DIRS_TOP));
        fs::create_dir_all(&dir).unwrap();
        dirs += 1;
        for j in 0..per_dir.min(files - leaf * per_dir) {
            let i = leaf * per_dir + j;
            let size = 64 + (i * 7919) % 960;
            let line = format!("file {i} ");
            let body: String = line.repeat(size / line.len() + 1)[..size].to_owned();
            fs::write(dir.join(format!("f{i:06}.dll")), body).unwrap();
        }
    }
    fs::write(root.join("web.config"), "<configuration/>").unwrap();
    dirs + DIRS_TOP
}

fn rss_kib() -> u64 {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// CPU time of every thread of this process, in ns (`/proc/self/task/*/schedstat`).
fn cpu_ns() -> u64 {
    let mut total = 0;
    for t in fs::read_dir("/proc/self/task").unwrap().flatten() {
        if let Ok(s) = fs::read_to_string(t.path().join("schedstat")) {
            total += s
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    total
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let files: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("FILES must be a number"))
        .unwrap_or(100_000);
    let root: PathBuf =
        std::env::temp_dir().join(format!("appvisor-watch-bench-{}", std::process::id()));
    let _ = fs::remove_dir_all(&root);
    fs::create_dir_all(&root).unwrap();

    let t = Instant::now();
    let dirs = make_tree(&root, files);
    eprintln!(
        "created {files} files in {dirs} directories in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let limit: u64 = fs::read_to_string("/proc/sys/fs/inotify/max_user_watches")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    if (limit as usize) < dirs {
        eprintln!(
            "fs.inotify.max_user_watches = {limit} < {dirs} directories: \
             raise it with `sysctl fs.inotify.max_user_watches={}`",
            (dirs * 2).next_power_of_two()
        );
        std::process::exit(1);
    }

    let mut rows: Vec<(String, String, String)> = Vec::new();
    let rss_before = rss_kib();

    let (tx, mut rx) = unbounded_channel();
    let t = Instant::now();
    let w = AppWatcher::start("bench", &root, &config(Compare::Content), tx)
        .await
        .unwrap();
    let setup = t.elapsed();
    let stats = w.stats();
    let p = stats.phases;
    rows.push((
        format!(
            "set-up, compare = content ({} files, {:.1} MiB hashed)",
            stats.files,
            stats.bytes as f64 / 1048576.0
        ),
        ms(setup),
        "≤ 2 s".into(),
    ));
    rows.push((
        "  of which: inotify watches / baseline walk + hash".into(),
        format!("{} / {}", ms(p.watches), ms(p.baseline)),
        "—".into(),
    ));
    let rss_after = rss_kib();
    rows.push((
        format!(
            "process RSS after set-up (before: {:.1} MiB)",
            rss_before as f64 / 1024.0
        ),
        format!("{:.1} MiB", rss_after as f64 / 1024.0),
        "≤ 64 MiB".into(),
    ));

    let idle = Duration::from_secs(10);
    let c0 = cpu_ns();
    tokio::time::sleep(idle).await;
    let busy = cpu_ns() - c0;
    rows.push((
        "idle CPU over 10 s (all threads)".into(),
        format!("{:.4} %", busy as f64 / idle.as_nanos() as f64 * 100.0),
        "≤ 0.5 %".into(),
    ));

    let debounce = config(Compare::Content).debounce;
    let mut end_to_end = Vec::new();
    let mut processing = Vec::new();
    for i in 0..CHANGES {
        let leaf = (i * 37) % files.div_ceil(100);
        let idx = leaf * 100;
        let path = root.join(format!(
            "bin/d{}/e{:03}/f{idx:06}.dll",
            leaf % DIRS_TOP,
            leaf / DIRS_TOP
        ));
        let written = Instant::now();
        fs::write(&path, format!("changed {i}")).unwrap();
        let d = rx.recv().await.unwrap();
        let got = Instant::now();
        assert!(matches!(d, WatchDecision::Recycle(_)), "{d:?}");
        end_to_end.push(
            got.saturating_duration_since(written)
                .saturating_sub(debounce),
        );
        let b = w.stats().last_burst.unwrap();
        processing.push(
            b.decided
                .saturating_duration_since(b.last_event)
                .saturating_sub(debounce),
        );
    }
    end_to_end.sort();
    processing.sort();
    rows.push((
        format!("change → decision − debounce, p50 ({CHANGES} edits)"),
        ms(percentile(&end_to_end, 0.5)),
        "≤ 10 ms".into(),
    ));
    rows.push((
        "change → decision − debounce, p90 / max".into(),
        format!(
            "{} / {}",
            ms(percentile(&end_to_end, 0.9)),
            ms(percentile(&end_to_end, 1.0))
        ),
        "—".into(),
    ));
    rows.push((
        "last event → decided − debounce, p50 (watch thread only)".into(),
        ms(percentile(&processing, 0.5)),
        "—".into(),
    ));

    // A deploy: 10,000 new files in one go.
    let burst_dir = root.join("bin/deploy");
    fs::create_dir_all(&burst_dir).unwrap();
    let t = Instant::now();
    for i in 0..BURST {
        fs::write(burst_dir.join(format!("n{i:05}.dll")), format!("new {i}")).unwrap();
    }
    let wrote = t.elapsed();
    let first = rx.recv().await.unwrap();
    let after = Instant::now().saturating_duration_since(t + wrote);
    let quiet = tokio::time::timeout(debounce * 5, rx.recv()).await.is_err();
    let what = match &first {
        WatchDecision::Recycle(r) => r.describe(),
        other => format!("{other:?}"),
    };
    rows.push((
        format!(
            "{BURST}-file burst ({:.0} ms of writes): decisions",
            wrote.as_secs_f64() * 1000.0
        ),
        if quiet {
            "1".into()
        } else {
            "more than 1".into()
        },
        "1".into(),
    ));
    rows.push((
        "  burst: last write → decision".into(),
        ms(after),
        what.chars().take(40).collect::<String>(),
    ));

    drop(w);
    // Set-up with compare = "mtime" (stat only, nothing hashed), for comparison.
    {
        let (tx, _rx) = unbounded_channel();
        let t = Instant::now();
        let w = AppWatcher::start("bench", &root, &config(Compare::Mtime), tx)
            .await
            .unwrap();
        let took = t.elapsed();
        rows.push((
            format!(
                "set-up, compare = mtime ({} files, {} dirs)",
                w.stats().files,
                w.stats().directories
            ),
            ms(took),
            "—".into(),
        ));
    }

    let _ = fs::remove_dir_all(&root);

    let w0 = rows.iter().map(|r| r.0.chars().count()).max().unwrap_or(0);
    let w1 = rows.iter().map(|r| r.1.chars().count()).max().unwrap_or(0);
    println!("| {:w0$} | {:>w1$} | target |", "measure", "value");
    println!("|{}|{}|---|", "-".repeat(w0 + 2), "-".repeat(w1 + 2));
    for (a, b, c) in rows {
        println!("| {a:w0$} | {b:>w1$} | {c} |");
    }
    println!("\nfs.inotify.max_user_watches = {limit}; tree: {files} files, {dirs} directories");
}
