//! The embedded store on its own, on a current-thread runtime as in the
//! supervisor: for benchmarks (`bench/store/run.sh`) and for pointing `redis-cli`
//! (or any Redis client) at it.
//!
//! ```text
//! cargo run --release -p appvisor-store --example serve -- \
//!     --socket /tmp/s.sock --app bench:secret [--aof /tmp/s.aof --persist everysec] [--tcp 127.0.0.1:6390]
//! redis-cli -s /tmp/s.sock --user bench --pass secret set k v
//! RUST_LOG=debug cargo run -p appvisor-store --example serve -- …   # the store's decisions
//! ```
//!
//! It prints `ready <pid>` once listening and stops on SIGTERM or SIGINT (syncing
//! the log). Log events go to stderr, filtered by `RUST_LOG` (default `info`).

use std::path::PathBuf;

use anyhow::{bail, Context};
use appvisor_config::Persist;
use appvisor_store::{self as store, AppCredential, StoreOptions};

fn main() -> anyhow::Result<()> {
    // The store emits `tracing` events and installs nothing; a host (here this
    // example, in production the supervisor binary) decides where they go.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let mut opts = StoreOptions {
        unix_path: PathBuf::from("/tmp/appvisor-store.sock"),
        app_socket_dir: None,
        tcp: None,
        aof_path: None,
        persist: Persist::EverySec,
        max_memory: None,
        max_value_size: 1 << 20,
        max_clients: 10_000,
        apps: Vec::new(),
        rewrite_min_size: store::DEFAULT_REWRITE_MIN_SIZE,
        max_output: store::DEFAULT_MAX_OUTPUT,
        max_anonymous: store::DEFAULT_MAX_ANONYMOUS,
        auth_timeout: store::DEFAULT_AUTH_TIMEOUT,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--socket" => opts.unix_path = value()?.into(),
            "--app-socket-dir" => opts.app_socket_dir = Some(value()?.into()),
            "--tcp" => opts.tcp = Some(value()?.parse().context("--tcp wants ip:port")?),
            "--aof" => opts.aof_path = Some(value()?.into()),
            "--persist" => {
                opts.persist = match value()?.as_str() {
                    "everysec" => Persist::EverySec,
                    "always" => Persist::Always,
                    "no" => Persist::No,
                    other => bail!("--persist: '{other}' is not everysec, always or no"),
                }
            }
            "--max-memory" => {
                opts.max_memory = Some(value()?.parse().context("--max-memory wants bytes")?)
            }
            "--app" => {
                let spec = value()?;
                let (app, password) = spec.split_once(':').context("--app wants NAME:PASSWORD")?;
                opts.apps.push(AppCredential {
                    app: app.into(),
                    password: password.into(),
                });
            }
            other => bail!("unknown option {other}"),
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        };
        let handle = store::serve(opts, shutdown).await?;
        println!("ready {}", std::process::id());
        handle.closed().await;
        anyhow::Ok(())
    })
}
