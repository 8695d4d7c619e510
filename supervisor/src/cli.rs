//! The command line: `appvisor run | check | status | top | recycle | start | stop | events | reload | shutdown`.
//!
//! Every command finds the supervisor through the config file (`-c FILE`, default
//! `./appvisor.toml`): the state dir it names holds the control socket. So
//! `cd myapp && appvisor recycle web` just works.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::control::client::Client;
use crate::control::{Request, Response, SupervisorStatus};
use crate::events::{human_ms, render, Event};
use crate::logging::LogFormat;

#[derive(Debug, Parser)]
#[command(
    name = "appvisor",
    version,
    about = "Runs and recycles app workers without dropping a request or a session"
)]
pub struct Cli {
    /// The config file (default: ./appvisor.toml).
    #[arg(short = 'c', long = "config", global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The supervisor's own log on stderr: `text` (journald lines under systemd) or
    /// `json` (one object per line). `RUST_LOG` sets the level (default `info`).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the supervisor in the foreground.
    Run {
        /// The config file (default: ./appvisor.toml).
        config: Option<PathBuf>,
    },
    /// Validate a config file and print it with every default resolved.
    Check { config: Option<PathBuf> },
    /// Apps and workers: state, pid, generation, uptime, memory, requests, last recycle.
    Status {
        app: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Replace an app's workers with a new generation, one at a time, without dropping a request.
    Recycle {
        app: String,
        /// Return at once instead of waiting for the new generation to be ready.
        #[arg(long)]
        no_wait: bool,
    },
    /// Start a stopped app (also after rapid-fail protection stopped it).
    Start { app: String },
    /// Stop an app's workers gracefully (its sockets stay open).
    Stop { app: String },
    /// The restart log: why every restart happened.
    Events {
        #[arg(long)]
        app: Option<String>,
        /// Keep printing events as they happen.
        #[arg(short, long)]
        follow: bool,
        /// Raw JSON lines.
        #[arg(long)]
        json: bool,
        /// How many past events to show.
        #[arg(short = 'n', long, default_value_t = 30)]
        lines: usize,
    },
    /// Status, refreshed every second until Ctrl-C (like `top`).
    Top {
        /// Refresh interval in milliseconds.
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
    },
    /// Re-read the config file (as SIGHUP does).
    Reload,
    /// Stop every app and the supervisor.
    Shutdown,
    #[command(hide = true, name = "__guard")]
    Guard,
}

fn config_path(cli_config: &Option<PathBuf>, positional: &Option<PathBuf>) -> PathBuf {
    positional
        .clone()
        .or_else(|| cli_config.clone())
        .unwrap_or_else(|| PathBuf::from("appvisor.toml"))
}

/// The state dir, from the config file. A file that fails validation (someone is
/// editing it) still names its state dir — read leniently — so `status`, `stop`,
/// `events` keep reaching the running supervisor; the CLI says the file is invalid.
fn state_dir(config: &Path) -> anyhow::Result<PathBuf> {
    match appvisor_config::load(config) {
        Ok(c) => Ok(c.supervisor.state_dir),
        Err(e) => {
            let Ok(text) = std::fs::read_to_string(config) else {
                anyhow::bail!("{e}");
            };
            let dir = appvisor_config::state_dir_lenient(&text, config);
            let running = match crate::state_dir::holder_pid(&dir) {
                Some(pid) => format!(
                    "the supervisor running on {} (pid {pid}) keeps the config it last loaded",
                    dir.display()
                ),
                None => format!("using the state dir {}", dir.display()),
            };
            let _ = writeln!(
                std::io::stderr(),
                "appvisor: warning: the config file is invalid; {running}. Fix the file (`appvisor check` shows every problem):\n{e}"
            );
            Ok(dir)
        }
    }
}

fn connect(config: &Path) -> anyhow::Result<Client> {
    let dir = state_dir(config)?;
    Ok(Client::connect(&dir.join("control.sock"), config)?)
}

fn call(config: &Path, req: Request) -> anyhow::Result<Response> {
    let mut c = connect(config)?;
    Ok(c.call(&req)?)
}

/// Prints a reply; non-zero exit on error.
fn finish(r: Response) -> anyhow::Result<i32> {
    if r.ok {
        if let Some(m) = r.message {
            writeln!(std::io::stdout(), "{m}")?;
        }
        Ok(0)
    } else {
        let error = r.error.unwrap_or_else(|| "failed".into());
        let _ = writeln!(std::io::stderr(), "appvisor: {error}");
        Ok(1)
    }
}

/// Runs a CLI command; returns the process exit code.
pub fn main(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Guard => crate::guard::guard_main(),
        Command::Run { config } => {
            let path = config_path(&cli.config, &config);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the runtime")?;
            rt.block_on(crate::daemon::run(&path))?;
            Ok(0)
        }
        Command::Check { config } => {
            let path = config_path(&cli.config, &config);
            let config = appvisor_config::load(&path)?;
            // Every check `run` makes before it starts anything.
            crate::daemon::preflight(&config)?;
            // Ports in use are a config problem too; binding is the only honest
            // test — unless this config's own supervisor holds them right now.
            let running = std::os::unix::net::UnixStream::connect(
                config.supervisor.state_dir.join("control.sock"),
            )
            .is_ok();
            if running {
                let _ = writeln!(
                    std::io::stderr(),
                    "appvisor: a supervisor is running for this config; its ports were not re-checked"
                );
            } else {
                check_tcp_ports(&config)?;
            }
            writeln!(std::io::stdout(), "{}", config.to_toml_string())?;
            let _ = writeln!(
                std::io::stderr(),
                "appvisor: {} is valid ({} app(s))",
                config.path.display(),
                config.apps.len()
            );
            Ok(0)
        }
        Command::Status { app, json } => {
            let path = config_path(&cli.config, &None);
            let r = call(&path, Request::Status { app })?;
            if !r.ok {
                return finish(r);
            }
            let status = r.status.context("the supervisor sent no status")?;
            let mut out = std::io::stdout().lock();
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&status)?)?;
            } else {
                write_status(&mut out, &status)?;
            }
            out.flush()?;
            Ok(0)
        }
        Command::Recycle { app, no_wait } => {
            let path = config_path(&cli.config, &None);
            finish(call(
                &path,
                Request::Recycle {
                    app,
                    wait: !no_wait,
                },
            )?)
        }
        Command::Start { app } => finish(call(
            &config_path(&cli.config, &None),
            Request::Start { app },
        )?),
        Command::Stop { app } => finish(call(
            &config_path(&cli.config, &None),
            Request::Stop { app },
        )?),
        Command::Reload => finish(call(&config_path(&cli.config, &None), Request::Reload)?),
        Command::Top { interval_ms } => {
            let path = config_path(&cli.config, &None);
            let mut client = connect(&path)?;
            loop {
                let r = client.call(&Request::Status { app: None })?;
                let status = r.status.context("the supervisor sent no status")?;
                // Clear the screen and home the cursor, then draw.
                let mut out = std::io::stdout().lock();
                write!(out, "\x1b[H\x1b[2J")?;
                write_status(&mut out, &status)?;
                out.flush()?;
                std::thread::sleep(std::time::Duration::from_millis(interval_ms.max(100)));
            }
        }
        Command::Shutdown => finish(call(&config_path(&cli.config, &None), Request::Shutdown)?),
        Command::Events {
            app,
            follow,
            json,
            lines,
        } => events(&config_path(&cli.config, &None), app, follow, json, lines),
    }
}

/// Binds (and releases) every TCP listen address, naming the app on failure.
/// Unix sockets are not tried: binding one leaves a file behind.
fn check_tcp_ports(config: &appvisor_config::Config) -> anyhow::Result<()> {
    for app in &config.apps {
        for l in &app.listen {
            if matches!(l.address, appvisor_config::ListenAddress::Tcp(_)) {
                crate::sockets::bind(&app.name, l)
                    .with_context(|| config.path.display().to_string())?;
            }
        }
    }
    Ok(())
}

fn events(
    config: &Path,
    app: Option<String>,
    follow: bool,
    json: bool,
    lines: usize,
) -> anyhow::Result<i32> {
    let dir = state_dir(config)?;
    let file = dir.join("events.jsonl");
    let keep = |e: &Event| app.as_ref().is_none_or(|a| &e.app == a);
    // A closed stdout (`appvisor events -f | head`) ends the command.
    let show = |line: &str| -> std::io::Result<()> {
        let Ok(e) = serde_json::from_str::<Event>(line) else {
            return Ok(());
        };
        if !keep(&e) {
            return Ok(());
        }
        let mut out = std::io::stdout().lock();
        if json {
            writeln!(out, "{line}")?;
        } else {
            writeln!(out, "{}", render_local(&e))?;
        }
        out.flush()
    };
    // Subscribe first, so nothing falls between history and follow.
    let mut client = if follow {
        // Not `connect`: it would read the config (and warn about it) a second time.
        let mut c = Client::connect(&dir.join("control.sock"), config)?;
        let r = c.call(&Request::Follow)?;
        if !r.ok {
            return finish(r);
        }
        Some(c)
    } else {
        None
    };
    match std::fs::read_to_string(&file) {
        Ok(text) => {
            let read = crate::events::read_lines(&text);
            if !read.bad_lines.is_empty() {
                let n = read.bad_lines.len();
                let mut numbers: Vec<String> = read
                    .bad_lines
                    .iter()
                    .take(10)
                    .map(|l| l.to_string())
                    .collect();
                if n > 10 {
                    numbers.push("…".into());
                }
                let _ = writeln!(
                    std::io::stderr(),
                    "appvisor: warning: {n} line{} of {} {} not an event and {} skipped (line{} {})",
                    if n == 1 { "" } else { "s" },
                    file.display(),
                    if n == 1 { "is" } else { "are" },
                    if n == 1 { "is" } else { "are" },
                    if n == 1 { "" } else { "s" },
                    numbers.join(", ")
                );
            }
            let all: Vec<&str> = read
                .events
                .iter()
                .filter(|(_, e)| keep(e))
                .map(|(l, _)| *l)
                .collect();
            for line in &all[all.len().saturating_sub(lines)..] {
                show(line)?;
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && follow => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let _ = writeln!(
                std::io::stderr(),
                "appvisor: no events yet ({} does not exist)",
                file.display()
            );
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", file.display())),
    }
    if let Some(c) = client.as_mut() {
        loop {
            let line = c.read_line()?;
            show(&line)?;
        }
    }
    Ok(0)
}

/// The event line with its time in local time, date included.
fn render_local(e: &Event) -> String {
    let local = e
        .time
        .parse::<jiff::Timestamp>()
        .map(|t| {
            t.to_zoned(jiff::tz::TimeZone::system())
                .strftime("%Y-%m-%d %H:%M:%S%.3f")
                .to_string()
        })
        .unwrap_or_else(|_| e.time.clone());
    let line = render(e);
    // `render` starts with the UTC time of day; replace it.
    match line.split_once(' ') {
        Some((_, rest)) => format!("{local} {rest}"),
        None => line,
    }
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / 1048576.0)
}

fn write_status(out: &mut impl Write, s: &SupervisorStatus) -> std::io::Result<()> {
    writeln!(
        out,
        "supervisor pid {} · up {} · {} · config {} (generation {}){}",
        s.pid,
        human_ms(s.uptime_ms),
        s.rss.map(mib).unwrap_or_else(|| "-".into()),
        s.config,
        s.config_generation,
        s.store
            .as_ref()
            .map(|st| format!(" · store {st}"))
            .unwrap_or_default()
    )?;
    for app in &s.apps {
        writeln!(out)?;
        writeln!(
            out,
            "{}  {}  {}  recycles {}  crashes {}",
            app.name,
            app.state,
            app.listen.join(" "),
            app.recycles,
            app.crashes
        )?;
        if let Some(l) = &app.last_recycle {
            writeln!(
                out,
                "  last recycle: {} ({}) at {}",
                l.reason, l.detail, l.time
            )?;
        }
        if !app.escaped.is_empty() {
            let pids: Vec<String> = app.escaped.iter().map(i32::to_string).collect();
            writeln!(
                out,
                "  escaped: pids {} left their workers' process groups and still run (no cgroup to kill them)",
                pids.join(" ")
            )?;
        }
        if app.workers.is_empty() {
            continue;
        }
        writeln!(
            out,
            "  {:<3} {:<8} {:<5} {:<9} {:<8} {:<10} {:<9} STATUS",
            "W", "PID", "GEN", "STATE", "UPTIME", "RSS", "REQUESTS"
        )?;
        for w in &app.workers {
            writeln!(
                out,
                "  {:<3} {:<8} {:<5} {:<9} {:<8} {:<10} {:<9} {}",
                w.worker,
                w.pid,
                w.generation,
                w.state,
                human_ms(w.uptime_ms),
                w.rss.map(mib).unwrap_or_else(|| "-".into()),
                w.requests,
                w.status.as_deref().unwrap_or("")
            )?;
        }
    }
    Ok(())
}
