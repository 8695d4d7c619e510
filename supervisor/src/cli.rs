//! The command line: `appvisor run | check | init | status | top | recycle | start | stop | events | logs | tune | reload | shutdown | completions`.
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
    #[command(
        after_help = "Examples:\n  appvisor events --app web --since 1h\n  appvisor events --kind recycle --reason memory,requests -f\n  appvisor events --stats --since 24h\n  appvisor events --since 2026-11-30T08:00:00Z --until 2026-11-30T09:00:00Z --json"
    )]
    Events {
        /// Only this app's events.
        #[arg(long)]
        app: Option<String>,
        /// Keep printing events as they happen (with the same filters).
        #[arg(short, long)]
        follow: bool,
        /// Raw JSON lines (with --stats: one JSON object).
        #[arg(long)]
        json: bool,
        /// How many past events to show (default 30; all of the window with --since
        /// or --until).
        #[arg(short = 'n', long)]
        lines: Option<usize>,
        /// Only events of these kinds (`recycle`, `crashed`, `startup_failed`, …;
        /// repeat or separate with commas).
        #[arg(long, value_name = "KIND")]
        kind: Vec<String>,
        /// Only events with these recycle reasons (`manual`, `memory`, `file_change`,
        /// …; repeat or separate with commas).
        #[arg(long, value_name = "REASON")]
        reason: Vec<String>,
        /// Events from this time on: a duration before now (`1h`, `30m`) or an
        /// RFC 3339 time (`2026-11-30T08:00:00Z`).
        #[arg(long, value_name = "WHEN")]
        since: Option<String>,
        /// Events before this time: a duration before now or an RFC 3339 time.
        #[arg(long, value_name = "WHEN")]
        until: Option<String>,
        /// Per app and reason: recycles, crashes, startup failures, mean and p95
        /// startup and drain times over the window.
        #[arg(long, conflicts_with = "follow")]
        stats: bool,
    },
    /// Worker output of an app, with time, worker slot, generation and pid per line.
    #[command(
        after_help = "Examples:\n  appvisor logs web\n  appvisor logs web -f --worker 0\n  appvisor logs web -n 200 | grep -i error"
    )]
    Logs {
        app: String,
        /// Keep printing lines as workers write them, across recycles and rotations.
        #[arg(short, long)]
        follow: bool,
        /// How many past lines to show.
        #[arg(short = 'n', long, default_value_t = 30)]
        lines: usize,
        /// Only this worker slot's lines (the W column of `appvisor status`).
        #[arg(long, value_name = "W")]
        worker: Option<u32>,
    },
    /// A live view: apps, workers, a memory chart with limits and recycles; keys to
    /// recycle, start and stop (`?` lists them). Not a terminal: the status table,
    /// refreshed every second until Ctrl-C.
    Top {
        /// Refresh interval in milliseconds.
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
    },
    /// Recycle limits recommended from an app's recorded history; `--what-if` replays
    /// a proposed limit against it.
    ///
    /// Example: `appvisor tune web --since 24h --what-if 'private_memory = "300MiB"'`
    Tune {
        app: String,
        /// How far back to look, e.g. `1h`, `24h`, `7d`.
        #[arg(long, default_value = "24h")]
        since: String,
        /// The report as JSON, for scripts.
        #[arg(long)]
        json: bool,
        /// A setting of `[app.recycle]` to replay against the history, e.g.
        /// 'private_memory = "300MiB"' (several separated by commas).
        #[arg(long, value_name = "SETTING")]
        what_if: Option<String>,
    },
    /// Re-read the config file (as SIGHUP does).
    Reload,
    /// Stop every app and the supervisor.
    Shutdown,
    /// Write a commented appvisor.toml for a command (never overwrites one).
    Init {
        /// The app's name (default: the program's file name).
        #[arg(long)]
        name: Option<String>,
        /// The address the workers inherit as fd 3.
        #[arg(long, default_value = "tcp://127.0.0.1:8080", value_name = "ADDRESS")]
        listen: String,
        /// The program and its arguments, after `--`.
        #[arg(last = true, required = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    #[command(hide = true, name = "__guard")]
    Guard,
}

/// Parses the command line, with the examples of [`crate::help`] in `--help`.
pub fn parse() -> Cli {
    use clap::FromArgMatches;
    let matches = crate::help::command().get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
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
pub(crate) fn state_dir(config: &Path) -> anyhow::Result<PathBuf> {
    match load_config(config) {
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

/// Loads the config as the supervisor would: memory percentages resolved against
/// this machine's memory base (cgroup limit or physical memory).
fn load_config(path: &Path) -> Result<appvisor_config::Config, appvisor_config::ConfigError> {
    let base = crate::memory_base::MemoryView::detect().base;
    appvisor_config::load_with(path, Some(base))
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
            let config = load_config(&path)?;
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
                if let Some(addr) = config.supervisor.metrics {
                    crate::metrics::http::bind(addr)
                        .with_context(|| config.path.display().to_string())?;
                }
            }
            writeln!(std::io::stdout(), "{}", config.to_toml_string())?;
            let _ = writeln!(
                std::io::stderr(),
                "appvisor: {} is valid ({} app(s))",
                config.path.display(),
                config.apps.len()
            );
            let _ = writeln!(
                std::io::stderr(),
                "appvisor: memory percentages are shares of {}",
                crate::memory_base::MemoryView::detect().describe()
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
        Command::Tune {
            app,
            since,
            json,
            what_if,
        } => {
            let since = appvisor_config::parse_duration(&since)
                .map_err(|e| anyhow::anyhow!("--since {since}: {e}"))?;
            if since.is_zero() {
                anyhow::bail!("--since must be longer than zero, e.g. --since 24h");
            }
            let args = crate::history::tune::TuneArgs {
                app,
                since,
                json,
                what_if,
            };
            let report = crate::history::tune::run(&config_path(&cli.config, &None), &args)?;
            write!(std::io::stdout(), "{report}")?;
            Ok(0)
        }
        Command::Reload => finish(call(&config_path(&cli.config, &None), Request::Reload)?),
        Command::Top { interval_ms } => {
            let path = config_path(&cli.config, &None);
            // A terminal gets the live UI; a pipe or a file keeps the plain table.
            if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                return crate::top::run(&path, &state_dir(&path)?, interval_ms);
            }
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
        Command::Init {
            name,
            listen,
            command,
        } => {
            let path = config_path(&cli.config, &None);
            let spec = crate::init::InitSpec {
                command,
                name,
                listen,
            };
            match crate::init::write(&path, &spec) {
                Ok(_) => {
                    writeln!(
                        std::io::stdout(),
                        "Wrote {} for `{}`. Read its comments, then `appvisor check` and `appvisor run`.",
                        path.display(),
                        crate::init::shown(&spec.command)
                    )?;
                    Ok(0)
                }
                Err(e) => {
                    let _ = writeln!(std::io::stderr(), "appvisor: {e}");
                    Ok(1)
                }
            }
        }
        Command::Completions { shell } => {
            let mut cmd = crate::help::command();
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut cmd, "appvisor", &mut out);
            std::io::stdout().write_all(&out)?;
            Ok(0)
        }
        Command::Events {
            app,
            follow,
            json,
            lines,
            kind,
            reason,
            since,
            until,
            stats,
        } => events(
            &config_path(&cli.config, &None),
            EventsArgs {
                app,
                follow,
                json,
                lines,
                kind,
                reason,
                since,
                until,
                stats,
            },
        ),
        Command::Logs {
            app,
            follow,
            lines,
            worker,
        } => logs(
            &config_path(&cli.config, &None),
            &app,
            follow,
            lines,
            worker,
        ),
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

/// `appvisor events` as given.
struct EventsArgs {
    app: Option<String>,
    follow: bool,
    json: bool,
    lines: Option<usize>,
    kind: Vec<String>,
    reason: Vec<String>,
    since: Option<String>,
    until: Option<String>,
    stats: bool,
}

/// The apps of the config file, if it can be read.
fn configured_apps(config: &Path) -> Option<Vec<String>> {
    appvisor_config::load(config)
        .ok()
        .map(|c| c.apps.into_iter().map(|a| a.name).collect())
}

/// An app that is neither configured nor found where it would leave a trace.
fn unknown_app(config: &Path, app: &str, trace: &str) -> anyhow::Error {
    let configured = configured_apps(config).unwrap_or_default();
    anyhow::anyhow!(
        "no app named {app:?}: it is not in {} (apps: {}) and {trace}",
        config.display(),
        if configured.is_empty() {
            "none".to_string()
        } else {
            configured.join(", ")
        }
    )
}

fn events(config: &Path, args: EventsArgs) -> anyhow::Result<i32> {
    use crate::event_query::{Bound, Filter};
    let now = jiff::Timestamp::now();
    let since = args
        .since
        .as_deref()
        .map(|s| Bound::parse("--since", s, now))
        .transpose()?;
    let until = args
        .until
        .as_deref()
        .map(|s| Bound::parse("--until", s, now))
        .transpose()?;
    let windowed = since.is_some() || until.is_some();
    let filter = Filter::new(args.app.clone(), &args.kind, &args.reason, since, until)?;
    let dir = state_dir(config)?;
    let file = dir.join("events.jsonl");
    let app_is_configured =
        |app: &str| configured_apps(config).is_none_or(|apps| apps.iter().any(|a| a == app));
    let warn_bad = |scan: &crate::event_query::Scan| {
        for w in scan.bad_lines_warnings() {
            let _ = writeln!(std::io::stderr(), "appvisor: warning: {w}");
        }
    };
    if args.stats {
        let (report, scan) = crate::event_query::stats(&file, &filter)
            .with_context(|| format!("cannot read {}", file.display()))?;
        warn_bad(&scan);
        if let Some(app) = &filter.app {
            if scan.of_app == 0 && !app_is_configured(app) {
                return Err(unknown_app(
                    config,
                    app,
                    "the restart log has no event of it",
                ));
            }
        }
        let mut out = std::io::stdout().lock();
        if args.json {
            writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
        } else {
            write!(out, "{}", crate::event_query::render_stats(&report))?;
        }
        out.flush()?;
        return Ok(0);
    }
    // Subscribe first, so nothing falls between history and follow.
    let mut client = if args.follow {
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
    let n = match args.lines {
        Some(n) => Some(n),
        None if windowed => None,
        None => Some(30),
    };
    let (lines, scan) = crate::event_query::last_lines(&file, &filter, n)
        .with_context(|| format!("cannot read {}", file.display()))?;
    warn_bad(&scan);
    if let Some(app) = &filter.app {
        if scan.of_app == 0 && !app_is_configured(app) {
            return Err(unknown_app(
                config,
                app,
                "the restart log has no event of it",
            ));
        }
    }
    if scan.files.is_empty() && !args.follow {
        let _ = writeln!(
            std::io::stderr(),
            "appvisor: no events yet ({} does not exist)",
            file.display()
        );
    }
    // A closed stdout (`appvisor events -f | head`) ends the command.
    let show = |line: &str| -> std::io::Result<()> {
        let mut out = std::io::stdout().lock();
        if args.json {
            writeln!(out, "{line}")?;
        } else if let Ok(e) = serde_json::from_str::<Event>(line) {
            writeln!(out, "{}", render_local(&e))?;
        }
        out.flush()
    };
    for line in &lines {
        show(line)?;
    }
    if let Some(c) = client.as_mut() {
        // Lines written after the subscription may be in both: shown once.
        let mut shown: std::collections::HashSet<String> = lines.into_iter().collect();
        loop {
            let line = c.read_line()?;
            if shown.remove(&line) {
                continue;
            }
            let Ok(e) = serde_json::from_str::<crate::event_query::Brief<'_>>(&line) else {
                if let Some(n) = skipped(&line) {
                    let _ = writeln!(
                        std::io::stderr(),
                        "appvisor: {n} events skipped: this follower fell behind (they are in {}; `appvisor events -n N` lists them)",
                        file.display()
                    );
                }
                continue;
            };
            if filter.matches(&e) {
                show(&line)?;
            }
        }
    }
    Ok(0)
}

/// `{"skipped":N}` from a `follow` stream: how many events it had to leave out.
fn skipped(line: &str) -> Option<u64> {
    serde_json::from_str::<serde_json::Value>(line).ok()?[crate::control::SKIPPED].as_u64()
}

fn logs(
    config: &Path,
    app: &str,
    follow: bool,
    lines: usize,
    worker: Option<u32>,
) -> anyhow::Result<i32> {
    let dir = state_dir(config)?;
    let file = dir.join("logs").join(format!("{app}.log"));
    let loaded = appvisor_config::load(config).ok();
    let configured = loaded.as_ref().and_then(|c| c.app(app));
    let exists = file.exists() || !crate::rotation::rotated_numbers(&file).is_empty();
    if app.contains('/') || (loaded.is_some() && configured.is_none() && !exists) {
        return Err(unknown_app(
            config,
            app,
            &format!("it has no log file ({} does not exist)", file.display()),
        ));
    }
    if let (Some(w), Some(a)) = (worker, configured) {
        if w >= a.processes {
            anyhow::bail!(
                "app {app:?} has no worker {w}: it runs {} worker{} (slots 0 to {}; see `appvisor status {app}`)",
                a.processes,
                if a.processes == 1 { "" } else { "s" },
                a.processes.saturating_sub(1)
            );
        }
    }
    if !exists && !follow {
        let _ = writeln!(
            std::io::stderr(),
            "appvisor: no output from {app:?} yet ({} does not exist)",
            file.display()
        );
        return Ok(0);
    }
    let mut out = std::io::stdout().lock();
    crate::logs::show(
        &file,
        crate::logs::LogFilter { worker },
        lines,
        follow,
        &mut out,
    )
    .with_context(|| format!("cannot read {}", file.display()))?;
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
        for limit in &app.memory_limits {
            writeln!(out, "  memory limit: {limit}")?;
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
