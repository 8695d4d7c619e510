//! The demo app: a small HTTP worker on the SDK, and the test worker for
//! appvisor's end-to-end tests.
//!
//! Endpoints:
//! - `GET /` — `app=… pid=… generation=… worker=… requests=…` (one line)
//! - `GET /healthz` — `ok`
//! - `GET /slow?ms=N` — answers after N ms (drain tests)
//! - `GET /leak?mb=N` — allocates N MiB, touches every page and keeps it
//!   (private-memory limit tests); answers with the total kept
//! - `GET /hang?ms=N` — blocks the runtime thread for N ms, so nothing else,
//!   watchdog pings included, runs meanwhile (hang tests)
//! - `GET /watchdog/pause`, `GET /watchdog/resume` — stop or restart the
//!   watchdog pings while still serving
//! - `GET /env/NAME` — the value of environment variable NAME
//! - `GET /exit?code=N` — exits at once with code N (crash tests)
//! - `GET /reloads` — how many soft reloads (SIGHUP) this worker has done
//!
//! Behaviour switches, all environment variables:
//! - `DEMO_STARTUP_MS=N` — wait N ms before accepting and sending READY=1
//! - `DEMO_NEVER_READY=1` — serve but never send READY=1
//! - `DEMO_CRASH_AFTER_MS=N` — exit with `DEMO_CRASH_CODE` (default 1) N ms
//!   after start
//! - `DEMO_IGNORE_SIGTERM=1` — swallow SIGTERM (SIGINT/SIGQUIT still drain)
//!   and spawn a grandchild `sleep 1000` that ignores SIGTERM too (kill tests)
//! - `DEMO_LEAK_MB_PER_SEC=N` — grow private memory by N MiB a second
//! - `DEMO_LEAK_KB_PER_REQUEST=N` — keep N KiB more private memory per request
//!   served (a leak that follows traffic)
//! - `DEMO_NO_WATCHDOG=1` — never send watchdog pings
//! - `DEMO_THREADS=N` — use a multi-threaded runtime with N threads
//!   (default: one thread)
//! - `DEMO_IDLE_GRACE_MS=N` — how long idle keep-alive connections may still
//!   send a request once draining starts (default: the SDK's 250 ms)
//! - `DEMO_ADDR=host:port` — where to listen when no socket is inherited
//!   (default `127.0.0.1:3000`)
//!
//! It prints one line per lifecycle step on stdout, prefixed `demo:`.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use appvisor_worker::{http, Listener, Shutdown, Worker};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use tokio::signal::unix::{signal, SignalKind};

/// Memory kept by `/leak` and `DEMO_LEAK_MB_PER_SEC`, so it stays counted.
static LEAKED: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

const MIB: usize = 1024 * 1024;

/// `DEMO_LEAK_KB_PER_REQUEST`, read once.
static LEAK_PER_REQUEST: std::sync::LazyLock<Option<usize>> = std::sync::LazyLock::new(|| {
    env_number("DEMO_LEAK_KB_PER_REQUEST")
        .filter(|&k| k > 0)
        .map(|k| k as usize)
});

fn main() {
    // The SDK reports through `tracing`; an app chooses where that goes. Here:
    // stderr (captured by appvisor into logs/<app>.log), filtered by RUST_LOG.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let code = match run() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("demo: error: {e}");
            1
        }
    };
    std::process::exit(code);
}

/// Soft reloads (SIGHUP) done by this worker.
static SOFT_RELOADS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v == "1" || v == "true")
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    // Before any runtime thread exists: this edits the environment.
    let mut worker = Worker::from_env()?;
    let runtime = match env_number("DEMO_THREADS") {
        Some(n) if n > 1 => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n as usize)
            .enable_all()
            .build()?,
        _ => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
    };
    runtime.block_on(async move {
        let mut listeners = worker.take_listeners()?;
        if listeners.is_empty() {
            let addr = std::env::var("DEMO_ADDR").unwrap_or_else(|_| "127.0.0.1:3000".to_owned());
            listeners.push(Listener::bind_tcp(&addr).await?);
        }
        let pid = std::process::id();
        let app = worker.app().unwrap_or("-").to_owned();
        let generation = worker.generation().map_or_else(|| "-".to_owned(), |g| g.to_string());
        let index = worker.index().map_or_else(|| "-".to_owned(), |i| i.to_string());
        for l in &listeners {
            println!("demo: listening on {l} pid {pid} app {app} generation {generation} worker {index}");
        }

        let shutdown = if env_flag("DEMO_IGNORE_SIGTERM") {
            swallow_sigterm()?;
            spawn_stubborn_grandchild();
            Shutdown::on_signals(&[libc::SIGINT, libc::SIGQUIT])?
        } else {
            Shutdown::on_stop_signals()?
        };
        // SIGHUP is appvisor's default `soft_signal`: reload templates and the like
        // without a restart. The demo only counts them.
        let mut hups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        tokio::spawn(async move {
            while hups.recv().await.is_some() {
                let n = SOFT_RELOADS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                println!("demo: soft reload #{n} (SIGHUP)");
            }
        });
        if let Some(ms) = env_number("DEMO_CRASH_AFTER_MS") {
            let code = env_number("DEMO_CRASH_CODE").unwrap_or(1) as i32;
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                println!("demo: crashing with exit code {code}");
                std::process::exit(code);
            });
        }
        if let Some(rate) = env_number("DEMO_LEAK_MB_PER_SEC").filter(|&r| r > 0) {
            tokio::spawn(leak_steadily(rate as usize));
        }
        if let Some(ms) = env_number("DEMO_STARTUP_MS") {
            // Simulates an app that loads code and warms caches before it can
            // answer; nothing is accepted meanwhile, the backlog holds clients.
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }

        let worker = Arc::new(worker);
        if env_flag("DEMO_NEVER_READY") {
            worker.start_heartbeats()?;
            println!("demo: serving, but never sending READY=1");
        } else {
            worker.ready()?;
            worker.status(&format!("serving on {} listener(s)", listeners.len()))?;
            println!("demo: ready");
        }
        if env_flag("DEMO_NO_WATCHDOG") {
            if let Some(w) = worker.watchdog() {
                w.stop();
            }
        }

        let state = Arc::clone(&worker);
        let service = service_fn(move |req| respond(Arc::clone(&state), req));
        let mut server = http::Server::for_worker(&worker);
        if let Some(ms) = env_number("DEMO_IDLE_GRACE_MS") {
            server = server.idle_grace(Duration::from_millis(ms));
        }
        let report = server
            .serve(listeners, service, shutdown.clone())
            .await?;
        println!(
            "demo: drained after {} on {} ms: {} connection(s) open at drain, {} request(s) served, exiting",
            report.cause.map_or_else(|| "?".to_owned(), |c| c.to_string()),
            report.drain.as_millis(),
            report.open_at_drain,
            report.requests,
        );
        Ok(())
    })
}

async fn respond(
    worker: Arc<Worker>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if let Some(kib) = *LEAK_PER_REQUEST {
        leak(kib * 1024);
    }
    let path = req.uri().path();
    let query = |key: &str| -> Option<u64> {
        req.uri()
            .query()?
            .split('&')
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))?
            .parse()
            .ok()
    };
    let text = |status: StatusCode, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        Ok(response)
    };
    match path {
        "/" => text(
            StatusCode::OK,
            format!(
                "app={} pid={} generation={} worker={} requests={}\n",
                worker.app().unwrap_or("-"),
                std::process::id(),
                worker
                    .generation()
                    .map_or_else(|| "-".to_owned(), |g| g.to_string()),
                worker
                    .index()
                    .map_or_else(|| "-".to_owned(), |i| i.to_string()),
                worker.requests().get(),
            ),
        ),
        "/healthz" => text(StatusCode::OK, "ok\n".to_owned()),
        "/reloads" => text(
            StatusCode::OK,
            format!(
                "{}\n",
                SOFT_RELOADS.load(std::sync::atomic::Ordering::Relaxed)
            ),
        ),
        "/slow" => {
            let ms = query("ms").unwrap_or(1000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            text(
                StatusCode::OK,
                format!("slept {ms} ms pid={}\n", std::process::id()),
            )
        }
        "/leak" => {
            let mb = query("mb").unwrap_or(10) as usize;
            let total = leak(mb * MIB);
            text(
                StatusCode::OK,
                format!("leaked {mb} MiB, {} MiB kept\n", total / MIB),
            )
        }
        "/hang" => {
            let ms = query("ms").unwrap_or(5000);
            // Deliberately blocks the runtime thread: this is the hang.
            std::thread::sleep(Duration::from_millis(ms));
            text(StatusCode::OK, format!("hung {ms} ms\n"))
        }
        "/watchdog/pause" | "/watchdog/resume" => match worker.watchdog() {
            Some(w) => {
                if path.ends_with("pause") {
                    w.pause();
                } else {
                    w.resume();
                }
                text(StatusCode::OK, format!("{}\n", &path[1..]))
            }
            None => text(
                StatusCode::CONFLICT,
                "no watchdog was requested\n".to_owned(),
            ),
        },
        "/exit" => {
            let code = query("code").unwrap_or(1) as i32;
            println!("demo: exiting with code {code} on request");
            std::process::exit(code);
        }
        _ => match path.strip_prefix("/env/") {
            Some(name) => match std::env::var(name) {
                Ok(v) => text(StatusCode::OK, format!("{v}\n")),
                Err(_) => text(StatusCode::NOT_FOUND, format!("{name} is not set\n")),
            },
            None => text(StatusCode::NOT_FOUND, "not found\n".to_owned()),
        },
    }
}

/// Allocates `bytes`, writes to every page so it is resident private memory,
/// and keeps it. Returns the total kept.
fn leak(bytes: usize) -> usize {
    let mut block = vec![0u8; bytes];
    for page in block.iter_mut().step_by(4096) {
        *page = 1;
    }
    let mut kept = LEAKED.lock().unwrap_or_else(|p| p.into_inner());
    kept.push(block);
    kept.iter().map(Vec::len).sum()
}

async fn leak_steadily(mb_per_sec: usize) {
    let mut ticks = tokio::time::interval(Duration::from_millis(100));
    loop {
        ticks.tick().await;
        leak(mb_per_sec * MIB / 10);
    }
}

/// Consumes SIGTERM so it neither kills nor drains this process.
fn swallow_sigterm() -> std::io::Result<()> {
    let mut terms = signal(SignalKind::terminate())?;
    tokio::spawn(async move {
        while terms.recv().await.is_some() {
            println!("demo: ignoring SIGTERM");
        }
    });
    Ok(())
}

/// A grandchild in our process group that outlives a SIGTERM: `trap ""`
/// sets SIGTERM to ignored, which `exec` keeps, so only SIGKILL ends it.
fn spawn_stubborn_grandchild() {
    match std::process::Command::new("sh")
        .args(["-c", "trap '' TERM; exec sleep 1000"])
        .spawn()
    {
        Ok(child) => {
            println!("demo: grandchild pid {}", child.id());
            // Never waited for: whoever kills us must kill it too.
            std::mem::forget(child);
        }
        Err(e) => eprintln!("demo: cannot spawn the grandchild: {e}"),
    }
}
