//! The history recorder's figures, for `bench/history.sh`.
//!
//! ```text
//! history_bench memory WORKERS     one hour at 1 s through one recorder (compressed
//!                                  time): heap and disk per worker-hour, CPU per tick
//! history_bench fill-week DIR APP WORKERS
//!                                  writes DIR/appvisor.toml and 7 days of 1 s samples
//!                                  of APP's WORKERS (a slow leak, recycled every 6 h)
//!                                  into DIR/.appvisor/history/APP, ending now
//! ```

use std::path::Path;
use std::time::{Duration, Instant};

use appvisor::history::now_ms;
use appvisor::history::recorder::{app_dir, Bounds, Recorder, Sample};

fn cpu_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let rest = stat.rsplit_once(')').unwrap().1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime, stime are fields 14 and 15 (1-based), i.e. 11 and 12 after the name.
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
}

fn sample(w: u32, generation: u64, age_s: u64) -> Sample {
    let mib = 1u64 << 20;
    Sample {
        worker: w,
        generation,
        pid: 10_000 + (generation as i32) * 64 + w as i32,
        phase: 1,
        private: 100 * mib + age_s * 5 * mib / 3600 + (age_s * 7919 % 13) * (mib / 8),
        rss: 120 * mib + age_s * 5 * mib / 3600,
        virtual_: 900 * mib,
        cpu_ms: age_s * 20,
        requests: age_s * 10,
        uptime_ms: age_s * 1000,
    }
}

fn memory(workers: u32) {
    let dir = std::env::temp_dir().join(format!("history-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let bounds = Bounds {
        max_bytes: 1 << 30,
        retention: Duration::from_secs(7 * 86_400),
    };
    let start = now_ms() - 3_600_000;
    let mut r = Recorder::open("bench", &dir, bounds, start).unwrap();
    let ticks: Vec<Sample> = (0..workers).map(|w| sample(w, 1, 0)).collect();
    let mut heap_1min = 0;
    let (c0, t0) = (cpu_s(), Instant::now());
    for s in 0..3600u64 {
        let tick: Vec<Sample> = ticks.iter().map(|x| sample(x.worker, 1, s)).collect();
        r.record(start + s * 1000, &tick);
        if s == 60 {
            heap_1min = r.heap_bytes();
        }
    }
    let (cpu, wall) = (cpu_s() - c0, t0.elapsed().as_secs_f64());
    let heap = r.heap_bytes();
    let disk = r.disk_bytes();
    println!("| workers | {workers} |");
    println!(
        "| recorder heap after 1 min / after 1 h | {heap_1min} B / {heap} B ({:.0} B per worker) |",
        heap as f64 / workers as f64
    );
    println!(
        "| heap growth per worker-hour at full resolution | {:.1} B |",
        (heap as f64 - heap_1min as f64).max(0.0) / workers as f64 * 60.0 / 59.0
    );
    println!(
        "| disk per worker-hour (full resolution + 1-min buckets) | {:.1} KiB |",
        disk as f64 / workers as f64 / 1024.0
    );
    println!(
        "| recording one tick of {workers} workers (encode + write + buckets), CPU | {:.1} µs (wall {:.1} µs) |",
        cpu / 3600.0 * 1e6,
        wall / 3600.0 * 1e6
    );
    drop(r);
    let _ = std::fs::remove_dir_all(&dir);
}

fn fill_week(dir: &Path, app: &str, workers: u32) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("appvisor.toml"),
        format!(
            "[[app]]\nname = \"{app}\"\ncommand = [\"true\"]\nprocesses = {workers}\n[app.recycle]\nmemory_hard_limit = \"1GiB\"\ninterval = \"6h\"\n"
        ),
    )
    .unwrap();
    let hist = app_dir(&dir.join(".appvisor"), app);
    let _ = std::fs::remove_dir_all(&hist);
    let bounds = Bounds {
        max_bytes: 64 << 20,
        retention: Duration::from_secs(7 * 86_400),
    };
    let end = now_ms();
    let start = end - 7 * 86_400_000;
    let mut r = Recorder::open(app, &hist, bounds, start).unwrap();
    let life = 6 * 3600u64;
    let t0 = Instant::now();
    let mut s = 0u64;
    while start + s * 1000 < end {
        let generation = s / life + 1;
        let age = s % life;
        let tick: Vec<Sample> = (0..workers).map(|w| sample(w, generation, age)).collect();
        r.record(start + s * 1000, &tick);
        s += 1;
    }
    drop(r);
    eprintln!(
        "wrote {s} ticks of {workers} workers ({:.1} MiB on disk) in {:.1} s",
        dir_size(&hist) as f64 / 1048576.0,
        t0.elapsed().as_secs_f64()
    );
}

fn dir_size(d: &Path) -> u64 {
    std::fs::read_dir(d)
        .map(|e| {
            e.flatten()
                .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
                .sum()
        })
        .unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["memory", n] => memory(n.parse().expect("WORKERS")),
        ["fill-week", dir, app, n] => fill_week(Path::new(dir), app, n.parse().expect("WORKERS")),
        _ => {
            eprintln!("usage: history_bench memory WORKERS | fill-week DIR APP WORKERS");
            std::process::exit(2);
        }
    }
}
