//! Benchmark: does an SDK worker's drain drop anything while generations are
//! replaced under load?
//!
//! This plays a minimal supervisor, independent of appvisor's: it owns one
//! listening socket, starts a worker generation with the socket at fd 3 and a
//! `NOTIFY_SOCKET`, and every `BENCH_EVERY_MS` starts the next generation,
//! waits for its `READY=1`, then sends SIGTERM to the previous one. `wrk`
//! (which must be on PATH) loads the socket all along, once with keep-alive
//! and once with `Connection: close`, and the table shows what it saw.
//!
//! Run: `cargo run --release -p appvisor-worker --example recycle_bench`
//!
//! Environment: `BENCH_RECYCLES` (default 5), `BENCH_EVERY_MS` (default 700),
//! `BENCH_CONNECTIONS` (default 4), `BENCH_WORKER` (default: the `demo`
//! example next to this binary). Everything stays on 127.0.0.1, and each run
//! is bounded by the recycle count.

use std::io;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use appvisor_worker::contract::{env, notify};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let recycles = env_or("BENCH_RECYCLES", 5);
    let every = Duration::from_millis(env_or("BENCH_EVERY_MS", 700));
    let connections = env_or("BENCH_CONNECTIONS", 4);
    let worker = match std::env::var_os("BENCH_WORKER") {
        Some(w) => PathBuf::from(w),
        None => std::env::current_exe()?.with_file_name("demo"),
    };
    if !worker.exists() {
        return Err(format!(
            "{} not found: build it with `cargo build --release --example demo`",
            worker.display()
        )
        .into());
    }

    println!(
        "worker {}; {recycles} recycles every {every:?}; {connections} connections",
        worker.display()
    );
    println!();
    println!("| mode | requests | req/s | socket errors (connect/read/write/timeout) | non-2xx | max latency | startup ms (median) | drain ms (max) |");
    println!("|---|---|---|---|---|---|---|---|");
    for (mode, header) in [("keep-alive", None), ("close", Some("Connection: close"))] {
        let run = run_once(&worker, recycles, every, connections, header)?;
        println!(
            "| {mode} | {} | {} | {} | {} | {} | {} | {} |",
            run.requests,
            run.rate,
            run.socket_errors,
            run.non_2xx,
            run.max_latency,
            run.startup_median_ms,
            run.drain_max_ms
        );
    }
    Ok(())
}

struct Run {
    requests: String,
    rate: String,
    socket_errors: String,
    non_2xx: String,
    max_latency: String,
    startup_median_ms: u128,
    drain_max_ms: u128,
}

fn run_once(
    worker: &Path,
    recycles: u64,
    every: Duration,
    connections: u64,
    header: Option<&str>,
) -> Result<Run, Box<dyn std::error::Error>> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let dir = std::env::temp_dir().join(format!("appvisor-recycle-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let notify_path = dir.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path)?;
    // Read the socket all the time, as a supervisor does, and pass READY=1 on.
    let (ready_tx, ready) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1024];
        while let Ok(n) = notify.recv(&mut buf) {
            if buf[..n]
                .split(|&b| b == b'\n')
                .any(|line| line == notify::READY.as_bytes())
                && ready_tx.send(()).is_err()
            {
                return;
            }
        }
    });

    let mut startups = Vec::new();
    let mut drains = Vec::new();
    let mut generation = 1;
    let started = Instant::now();
    let mut current = spawn(worker, &listener, &notify_path, generation)?;
    wait_ready(&ready)?;
    startups.push(started.elapsed().as_millis());

    // Long enough to cover every recycle, plus a second on each side.
    let seconds = (every.as_millis() as u64 * (recycles + 1)) / 1000 + 2;
    let mut wrk = Command::new("wrk");
    wrk.args([
        "-t2",
        &format!("-c{connections}"),
        &format!("-d{seconds}s"),
        "--latency",
    ]);
    if let Some(h) = header {
        wrk.args(["-H", h]);
    }
    let wrk = wrk
        .arg(format!("http://{addr}/"))
        .stdout(Stdio::piped())
        .spawn()?;

    let mut retiring = Vec::new();
    std::thread::sleep(Duration::from_secs(1));
    for _ in 0..recycles {
        std::thread::sleep(every);
        generation += 1;
        let start = Instant::now();
        let next = spawn(worker, &listener, &notify_path, generation)?;
        wait_ready(&ready)?;
        startups.push(start.elapsed().as_millis());
        let old = std::mem::replace(&mut current, next);
        retiring.push(std::thread::spawn(move || drain(old)));
    }
    let out = wrk.wait_with_output()?;
    for r in retiring {
        drains.push(r.join().map_err(|_| "drain thread panicked")??);
    }
    drains.push(drain(current)?);
    let _ = std::fs::remove_dir_all(&dir);

    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let find = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(|r| r.trim().to_owned()))
    };
    startups.sort_unstable();
    Ok(Run {
        requests: text
            .lines()
            .find(|l| l.contains("requests in"))
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or("?")
            .to_owned(),
        rate: find("Requests/sec:").unwrap_or_else(|| "?".into()),
        socket_errors: find("Socket errors:").unwrap_or_else(|| "0/0/0/0".into()),
        non_2xx: find("Non-2xx or 3xx responses:").unwrap_or_else(|| "0".into()),
        max_latency: text
            .lines()
            .find(|l| l.trim_start().starts_with("Latency"))
            .and_then(|l| l.split_whitespace().nth(3))
            .unwrap_or("?")
            .to_owned(),
        startup_median_ms: startups[startups.len() / 2],
        drain_max_ms: drains.iter().copied().max().unwrap_or(0),
    })
}

fn spawn(
    worker: &Path,
    listener: &TcpListener,
    notify: &Path,
    generation: u64,
) -> io::Result<Child> {
    let fd = listener.as_raw_fd();
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(r#"LISTEN_PID=$$ exec "$0" "$@""#)
        .arg(worker)
        .env(env::LISTEN_FDS, "1")
        .env(env::NOTIFY_SOCKET, notify)
        .env(env::APPVISOR_GENERATION, generation.to_string())
        .stdout(Stdio::null())
        .process_group(0);
    // SAFETY: runs between fork and exec; dup2 and fcntl are
    // async-signal-safe and allocate nothing; `fd` is open in the parent.
    unsafe {
        command.pre_exec(move || {
            if fd == 3 {
                let flags = libc::fcntl(3, libc::F_GETFD);
                if flags < 0 || libc::fcntl(3, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(io::Error::last_os_error());
                }
            } else if libc::dup2(fd, 3) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command.spawn()
}

fn wait_ready(ready: &std::sync::mpsc::Receiver<()>) -> io::Result<()> {
    ready
        .recv_timeout(Duration::from_secs(20))
        .map_err(|_| io::Error::other("no READY=1 within 20 s"))
}

/// SIGTERMs a generation and returns how long it took to exit, in ms.
fn drain(mut child: Child) -> io::Result<u128> {
    let start = Instant::now();
    // SAFETY: kill(2) on a child we spawned and have not reaped.
    if unsafe { libc::kill(child.id() as i32, libc::SIGTERM) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let status = child.wait()?;
    if !status.success() {
        return Err(io::Error::other(format!(
            "worker {} exited with {status}",
            child.id()
        )));
    }
    Ok(start.elapsed().as_millis())
}
