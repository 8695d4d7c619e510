//! The load generator of `bench/run`: the e2e harness's [`Load`] (one thread and
//! one connection per client, `GET /` in a loop, every request counted, no
//! retries) as a process the runner can start beside any peer.
//!
//! `bench_load PORT CLIENTS keep-alive|close MAX_SECONDS` runs until its stdin
//! closes (or MAX_SECONDS pass), then prints one JSON line: `ok`, `failed`,
//! `max_ms` (the slowest request), `pids` (distinct `pid=` seen in answers) and
//! the first few `errors`. A request fails if not answered within 15 s, or if
//! still unanswered 2 s after the load stopped (it was lost).
//!
//! Each line `flowing` on its stdin is a question — do requests succeed now? —
//! answered with a line `flowing` once 8 more requests have succeeded, or
//! `stalled` if they have not within 3 s: the runner's way to wait until the load
//! runs (at the start, after a restart) instead of sleeping a guessed time. A
//! server that lost the clients' requests (PM2's cluster reload does) leaves them
//! waiting out their read timeout; the runner then checks the server itself
//! answers and goes on.

use std::io::BufRead;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use appvisor_e2e::load::Load;

/// Successful requests that make the load "flowing": two per client of 4.
const FLOWING: u64 = 8;
/// At the end, a request still unanswered this long after the load stopped is
/// lost (see [`Load::finish_within`]): a peer that is only slow (uWSGI keeps a
/// client waiting while its workers hold kept-alive connections) answers it
/// once the other clients are done.
const LOST_AFTER: Duration = Duration::from_secs(2);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() != 4 {
        eprintln!("usage: bench_load PORT CLIENTS keep-alive|close MAX_SECONDS");
        std::process::exit(2);
    }
    let port: u16 = args[0].parse().expect("PORT");
    let clients: usize = args[1].parse().expect("CLIENTS");
    let keep_alive = args[2] == "keep-alive";
    let max = Duration::from_secs_f64(args[3].parse().expect("MAX_SECONDS"));

    let load = Load::start(port, clients, keep_alive, "/");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if line.trim() == "flowing" && tx.send(true).is_err() {
                return;
            }
        }
        let _ = tx.send(false); // stdin closed: stop
    });
    let end = Instant::now() + max;
    while let Ok(true) = rx.recv_timeout(end.saturating_duration_since(Instant::now())) {
        let answer = match load.wait_for_more(FLOWING, Duration::from_secs(3)) {
            true => "flowing",
            false => "stalled",
        };
        println!("{answer}");
    }
    let r = load.finish_within(Some(LOST_AFTER));
    let report = serde_json::json!({
        "ok": r.ok,
        "failed": r.failed,
        "max_ms": r.max_latency.as_secs_f64() * 1000.0,
        "pids": r.pids.iter().collect::<Vec<_>>(),
        "errors": r.errors,
    });
    println!("{report}");
}
