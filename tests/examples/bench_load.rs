//! The load generator of `bench/run`: the e2e harness's [`Load`] (one thread and
//! one connection per client, `GET /` in a loop, every request counted, no
//! retries) as a process the runner can start beside any peer.
//!
//! `bench_load PORT CLIENTS keep-alive|close MAX_SECONDS` runs until its stdin
//! closes (or MAX_SECONDS pass), then prints one JSON line: `ok`, `failed`,
//! `max_ms` (the slowest request), `pids` (distinct `pid=` seen in answers) and
//! the first few `errors`.

use std::io::Read;
use std::sync::mpsc;
use std::time::Duration;

use appvisor_e2e::load::Load;

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
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
        let _ = tx.send(());
    });
    let _ = rx.recv_timeout(max);
    let r = load.finish();
    let report = serde_json::json!({
        "ok": r.ok,
        "failed": r.failed,
        "max_ms": r.max_latency.as_secs_f64() * 1000.0,
        "pids": r.pids.iter().collect::<Vec<_>>(),
        "errors": r.errors,
    });
    println!("{report}");
}
