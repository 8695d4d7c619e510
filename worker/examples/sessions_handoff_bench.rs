//! How fast a draining worker hands its dirty sessions to the store.
//!
//! ```text
//! cargo run --release -p appvisor-worker --example sessions_handoff_bench [-- SESSIONS [ROUNDS [RUNTIME]]]
//! ```
//!
//! RUNTIME is `multi` (default: tokio multi-thread, 2 workers) or `current`
//! (one thread, like the `demo` and `sessions_demo` workers).
//!
//! Fills a `handoff` [`Sessions`] with SESSIONS (default 100,000) dirty
//! sessions of about 150 bytes each, then times `drain()` — the pipelined
//! WATCH/MGET + MULTI/SET/EXEC flush — ROUNDS times (default 3), each round
//! against a store that already holds the previous round's copies (the
//! realistic case: most sessions were handed off before). A fresh generation
//! then loads a sample to check nothing was lost.
//!
//! The store is a `redis-server` started here on a unix socket in a temp
//! dir, or the one named by `APPVISOR_TEST_STORE_URL` (e.g. appvisor's
//! embedded store). Prints one table row per round.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use appvisor_worker::sessions::{SessionMode, Sessions, SessionsConfig};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let count: usize = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(100_000);
    let rounds: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(3);

    let (url, _server) = match std::env::var("APPVISOR_TEST_STORE_URL") {
        Ok(url) if !url.is_empty() => (url, None),
        _ => {
            let server = RedisServer::start()?;
            (server.url.clone(), Some(server))
        }
    };
    let mut config =
        SessionsConfig::new(Some(&url), SessionMode::Handoff, Duration::from_secs(1200));
    config.key_prefix = format!("bench{}:s:", std::process::id());

    let gen1 = Sessions::with_config(config.clone()).await?;
    let mut ids = Vec::with_capacity(count);
    let fill = Instant::now();
    for i in 0..count {
        let mut s = gen1.new_session()?;
        s.set("user", &format!("user-{i:08}"))?;
        s.set(
            "cart",
            &serde_json::json!([{"sku": "A-1", "qty": 2}, {"sku": "B-7", "qty": 1}]),
        )?;
        s.incr("visits", 1)?;
        gen1.commit(&mut s).await?;
        ids.push(*s.id());
    }
    let fill = fill.elapsed();
    let sample = gen1.load(&ids[0]).await?;
    let bytes = serde_json::to_vec(sample.data())?.len();

    println!("store: {}", appvisor_worker::sessions::redact_url(&url));
    println!(
        "filled {count} sessions (~{bytes} B of JSON each) in memory in {:.0} ms",
        fill.as_secs_f64() * 1e3
    );
    println!();
    println!("| round | dirty sessions | flushed | merged | drain ms | sessions/s |");
    println!("|---|---|---|---|---|---|");
    for round in 1..=rounds {
        if round > 1 {
            // Dirty them all again, as a generation's traffic would.
            for id in &ids {
                let mut s = gen1.load(id).await?;
                s.incr("visits", 1)?;
                gen1.commit(&mut s).await?;
            }
        }
        let report = gen1.drain().await?;
        println!(
            "| {round} | {count} | {} | {} | {:.0} | {:.0} |",
            report.flushed,
            report.merged,
            report.elapsed.as_secs_f64() * 1e3,
            report.flushed as f64 / report.elapsed.as_secs_f64()
        );
        assert_eq!(report.flushed, count, "every dirty session must be flushed");
    }

    // The next generation finds them.
    let gen2 = Sessions::with_config(config).await?;
    let step = (count / 1000).max(1);
    for id in ids.iter().step_by(step) {
        let s = gen2.load(id).await?;
        assert!(!s.is_new(), "a handed-off session is missing");
        assert_eq!(s.get::<i64>("visits")?, Some(rounds as i64));
    }
    println!();
    println!(
        "checked {} sessions from a fresh generation: all present",
        count.div_ceil(step)
    );
    Ok(())
}

struct RedisServer {
    child: std::process::Child,
    dir: std::path::PathBuf,
    url: String,
}

impl RedisServer {
    fn start() -> Result<RedisServer, Box<dyn std::error::Error>> {
        let dir =
            std::env::temp_dir().join(format!("appvisor-sessions-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let socket = dir.join("redis.sock");
        let child = Command::new("redis-server")
            .args(["--port", "0", "--unixsocket"])
            .arg(&socket)
            .args([
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start redis-server (is it installed?): {e}"))?;
        let url = format!("unix://{}", socket.display());
        let server = RedisServer { child, dir, url };
        // Ready when it answers PING; give up after 10 s.
        let deadline = Instant::now() + Duration::from_secs(10);
        let client = redis::Client::open(server.url.as_str())?;
        loop {
            if let Ok(mut conn) = client.get_connection() {
                if redis::cmd("PING").query::<String>(&mut conn).is_ok() {
                    return Ok(server);
                }
            }
            if Instant::now() > deadline {
                return Err(
                    format!("redis-server did not answer on {} within 10 s", server.url).into(),
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
