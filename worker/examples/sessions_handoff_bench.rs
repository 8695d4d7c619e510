//! How fast a worker told to stop hands its dirty sessions to the store,
//! and how soon the next generation's waiting reads go on.
//!
//! ```text
//! cargo run --release -p appvisor-worker --example sessions_handoff_bench [-- SESSIONS [ROUNDS [RUNTIME]]]
//! ```
//!
//! RUNTIME is `multi` (default: tokio multi-thread, 2 workers) or `current`
//! (one thread, like the `demo` and `sessions_demo` workers).
//!
//! Each round is one generation of a `handoff` worker holding SESSIONS
//! (default 100,000) dirty sessions of about 150 bytes each: round 1 creates
//! them, later rounds load every one from the store (the previous
//! generation's handoff) and change it, as a generation's traffic would.
//! Then a successor is started with the generation as its predecessor and
//! one of its loads left waiting, and `begin_handoff()` is timed: the
//! switch to write-through, the pipelined WATCH/MGET + MULTI/SET/EXEC flush,
//! and the marker. The waiting load's wake-up after the handoff returned is
//! the `successor` column. ROUNDS defaults to 3; from round 2 on the store
//! already holds the previous copies (the realistic case). A fresh
//! generation finally loads a sample to check nothing was lost.
//!
//! The generation's pid is played by a `sleep` child, so the successor's
//! liveness check sees a live process. The store is a `redis-server` started
//! here on a unix socket in a temp dir, or the one named by
//! `APPVISOR_TEST_STORE_URL` (e.g. appvisor's embedded store). Prints one
//! table row per round.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use appvisor_worker::sessions::{SessionId, SessionMode, Sessions, SessionsConfig};

/// Loads in flight while a generation re-reads its sessions.
const LOADERS: usize = 16;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let count: usize = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(100_000);
    let rounds: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(3);
    let flavor = args.next().unwrap_or_else(|| "multi".to_owned());
    let runtime = match flavor.as_str() {
        "multi" => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?,
        "current" => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        other => return Err(format!("RUNTIME is `multi` or `current`, not {other:?}").into()),
    };
    runtime.block_on(bench(count, rounds, &flavor))
}

async fn bench(
    count: usize,
    rounds: usize,
    flavor: &str,
) -> Result<(), Box<dyn std::error::Error>> {
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
    config.predecessor_wait = Duration::from_secs(60);
    let stand_in = StandIn::spawn()?;
    let mut generation_config = config.clone();
    generation_config.pid = stand_in.pid();
    let mut successor_config = config.clone();
    successor_config.predecessors = vec![stand_in.pid()];

    println!("store: {}", appvisor_worker::sessions::redact_url(&url));
    println!("runtime: {flavor}");
    println!();
    println!(
        "| round | dirty sessions | prepare ms | flushed | merged | handoff ms | sessions/s | successor woke (ms after) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut ids: Arc<Vec<SessionId>> = Arc::new(Vec::new());
    for round in 1..=rounds {
        let generation = Sessions::with_config(generation_config.clone()).await?;
        let prepare = Instant::now();
        if round == 1 {
            let mut fresh = Vec::with_capacity(count);
            for i in 0..count {
                let mut s = generation.new_session()?;
                s.set("user", &format!("user-{i:08}"))?;
                s.set(
                    "cart",
                    &serde_json::json!([{"sku": "A-1", "qty": 2}, {"sku": "B-7", "qty": 1}]),
                )?;
                s.incr("visits", 1)?;
                generation.commit(&mut s).await?;
                fresh.push(*s.id());
            }
            ids = Arc::new(fresh);
        } else {
            revisit(&generation, &ids).await?;
        }
        let prepare = prepare.elapsed();

        // The successor, already serving, with a returning user waiting.
        let successor = Sessions::with_config(successor_config.clone()).await?;
        let waiting = {
            let (successor, id) = (successor.clone(), ids[0]);
            tokio::spawn(async move {
                let s = successor.load(&id).await;
                (Instant::now(), s.map(|s| s.get::<i64>("visits")))
            })
        };
        // Let it reach its wait before the handoff starts.
        tokio::time::sleep(Duration::from_millis(20)).await;

        let report = generation.begin_handoff().await?;
        let returned = Instant::now();
        let (woke, seen) = waiting.await?;
        let visits = seen??;
        assert_eq!(visits, Some(round as i64), "the successor saw the handoff");
        let lag_ms = if woke >= returned {
            (woke - returned).as_secs_f64() * 1e3
        } else {
            -((returned - woke).as_secs_f64() * 1e3)
        };
        let rest = generation.drain().await?;
        assert_eq!(rest.flushed, 0, "nothing is left after the handoff");
        println!(
            "| {round} | {count} | {:.0} | {} | {} | {:.0} | {:.0} | {lag_ms:.1} |",
            prepare.as_secs_f64() * 1e3,
            report.flushed,
            report.merged,
            report.elapsed.as_secs_f64() * 1e3,
            report.flushed as f64 / report.elapsed.as_secs_f64()
        );
        assert_eq!(report.flushed, count, "every dirty session must be flushed");
    }

    // A fresh generation finds them.
    let last = Sessions::with_config(config).await?;
    let step = (count / 1000).max(1);
    for id in ids.iter().step_by(step) {
        let s = last.load(id).await?;
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

/// Loads every session into `generation` (from the store) and changes it.
async fn revisit(
    generation: &Sessions,
    ids: &Arc<Vec<SessionId>>,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut loaders = tokio::task::JoinSet::new();
    for lane in 0..LOADERS {
        let (generation, ids) = (generation.clone(), ids.clone());
        loaders.spawn(async move {
            for id in ids.iter().skip(lane).step_by(LOADERS) {
                let mut s = generation.load(id).await?;
                s.incr("visits", 1)?;
                generation.commit(&mut s).await?;
            }
            Ok::<(), appvisor_worker::sessions::SessionError>(())
        });
    }
    while let Some(done) = loaders.join_next().await {
        done??;
    }
    Ok(())
}

/// A `sleep` child whose pid stands in for the generation's.
struct StandIn(std::process::Child);

impl StandIn {
    fn spawn() -> Result<StandIn, Box<dyn std::error::Error>> {
        Ok(StandIn(
            Command::new("sleep")
                .arg("3600")
                .spawn()
                .map_err(|e| format!("cannot run `sleep`: {e}"))?,
        ))
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
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
