//! Raw → resolved: fill every default, parse every duration, size, signal, address and
//! time, make every path absolute, and check what serde cannot (ranges, cross-field
//! and cross-app rules).
//!
//! A bad value is reported and replaced by its default so checking goes on: one run
//! of `appvisor check` lists every problem in the file, not just the first.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::{Range, RangeInclusive};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use appvisor_contract as contract;

use crate::accounts::{lookup_group, lookup_user, user_groups};
use crate::diagnostic::{app_label, closest, field_label, ConfigError, Location, Problem};
use crate::duration::{format_duration, parse_duration};
use crate::raw::*;
use crate::resolved::*;
use crate::size::{format_size, parse_size};

/// Watched by default, mirroring what ASP.NET restarts an app for. `<code_dir>/**`
/// is added to these.
pub const DEFAULT_WATCH_PATHS: &[&str] = &[
    "web.config",
    "*.config",
    "appsettings*.json",
    ".env",
    "config/**",
    "global.*",
    "bin/**",
];

/// Always ignored, whatever the user adds: version control, editor swap and backup
/// files (vim writes and deletes `4913` to probe a directory), temporary files, logs
/// (an app writing its own log must not recycle itself) and dependency trees (huge,
/// and changed only by installs, which touch `bin/` or a config anyway).
pub const DEFAULT_WATCH_IGNORE: &[&str] = &[
    ".git/**",
    "**/.git/**",
    "**/*.swp",
    "**/*.swx",
    "**/*~",
    "**/.#*",
    "**/#*#",
    "**/*.tmp",
    "**/4913",
    "**/*.log",
    "node_modules/**",
    "**/node_modules/**",
    "**/__pycache__/**",
];

/// The longest path a unix socket can have: `sun_path` holds 108 bytes including
/// the terminating NUL. The supervisor checks its own socket paths against it too.
pub const MAX_UNIX_PATH: usize = 107;

/// `[supervisor] sample_interval` when not set.
pub const DEFAULT_SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// `[supervisor] history_max_size` when not set: 64 MiB per app.
pub const DEFAULT_HISTORY_MAX_SIZE: u64 = 64 << 20;
/// `[supervisor] history_retention` when not set: 7 days.
pub const DEFAULT_HISTORY_RETENTION: Duration = Duration::from_secs(7 * 86_400);

pub(crate) struct Resolver<'a> {
    file: &'a Path,
    text: &'a str,
    /// Absolute directory of the config file: relative paths start here.
    dir: PathBuf,
    problems: Vec<Problem>,
    /// What `"25%"` limits are shares of; `None`: percentages are refused.
    memory_base: Option<MemoryBase>,
}

/// Where a key lives, for messages: `app "web" field recycle.startup_timeout`.
#[derive(Clone)]
struct Scope {
    app: Option<String>,
    section: &'static str,
}

impl Scope {
    fn top(section: &'static str) -> Scope {
        Scope { app: None, section }
    }

    fn field(&self, key: &str) -> String {
        let path = if self.section.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.section)
        };
        field_label(self.app.as_deref(), &path)
    }

    fn within(&self, section: &'static str) -> Scope {
        Scope {
            app: self.app.clone(),
            section,
        }
    }
}

/// A listen address and where it was written, for the duplicate check.
struct Claimed {
    address: ListenAddress,
    span: Range<usize>,
    owner: String,
}

/// `[supervisor] events_max_size` when not set: ~60,000 events per file.
const DEFAULT_EVENTS_MAX_SIZE: u64 = 16 << 20;
/// The smallest `events_max_size`: a few events (a `startup_failed` with its stderr
/// tail can take 2 KiB) must fit in one file.
const MIN_EVENTS_MAX_SIZE: u64 = 4 << 10;

impl<'a> Resolver<'a> {
    pub(crate) fn new(file: &'a Path, text: &'a str, dir: PathBuf) -> Self {
        Resolver {
            file,
            text,
            dir,
            problems: Vec::new(),
            memory_base: None,
        }
    }

    pub(crate) fn with_memory_base(mut self, base: Option<MemoryBase>) -> Self {
        self.memory_base = base;
        self
    }

    pub(crate) fn resolve(mut self, raw: RawConfig, path: PathBuf) -> Result<Config, ConfigError> {
        let mut claimed = Vec::new();
        let supervisor = self.supervisor(raw.supervisor.as_ref());
        self.claim_metrics(raw.supervisor.as_ref(), &supervisor, &mut claimed);
        let store = self.store(raw.store.as_ref(), &mut claimed);
        let mut apps = Vec::new();
        let mut names: HashMap<String, Range<usize>> = HashMap::new();
        for (i, app) in raw.app.iter().enumerate() {
            apps.push(self.app(i, app, &supervisor, &mut names, &mut claimed));
        }
        self.check_listen_conflicts(&claimed);
        if self.problems.is_empty() {
            Ok(Config {
                path,
                supervisor,
                store,
                apps,
                memory_base: self.memory_base,
            })
        } else {
            let mut problems = self.problems;
            problems.sort_by_key(|p| p.location.map_or((usize::MAX, 0), |l| (l.line, l.column)));
            Err(ConfigError::Invalid { problems })
        }
    }

    fn report(&mut self, span: Option<Range<usize>>, field: String, message: String) {
        self.problems.push(Problem::new(
            self.file,
            self.text,
            span,
            Some(field),
            message,
        ));
    }

    fn line_of(&self, span: &Range<usize>) -> usize {
        Location::of(self.text, span.start).line
    }

    // ----- sections -------------------------------------------------------------

    fn supervisor(&mut self, raw: Option<&Sp<RawSupervisor>>) -> SupervisorConfig {
        let sc = Scope::top("supervisor");
        let raw = raw.map(|r| r.get_ref());
        let state_dir = self
            .path(&sc, "state_dir", raw.and_then(|r| r.state_dir.as_ref()))
            .unwrap_or_else(|| self.dir.join(".appvisor"));
        let log_max_size = self.size(
            &sc,
            "log_max_size",
            raw.and_then(|r| r.log_max_size.as_ref()),
            10 << 20,
            true,
        );
        let log_keep = self.int(
            &sc,
            "log_keep",
            raw.and_then(|r| r.log_keep.as_ref()),
            5,
            0..=1000,
        );
        let events_max_size = self.size(
            &sc,
            "events_max_size",
            raw.and_then(|r| r.events_max_size.as_ref()),
            DEFAULT_EVENTS_MAX_SIZE,
            true,
        );
        let events_max_size = if events_max_size < MIN_EVENTS_MAX_SIZE {
            let span = raw
                .and_then(|r| r.events_max_size.as_ref())
                .map(|r| r.span());
            self.report(
                span,
                sc.field("events_max_size"),
                format!(
                    "{events_max_size} bytes is too small to hold a few events; events_max_size must be at least \"4KiB\" (default \"16MiB\")"
                ),
            );
            DEFAULT_EVENTS_MAX_SIZE
        } else {
            events_max_size
        };
        let events_keep = self.int(
            &sc,
            "events_keep",
            raw.and_then(|r| r.events_keep.as_ref()),
            5,
            0..=1000,
        );
        let memory_pressure = self.memory_pressure(raw.and_then(|r| r.memory_pressure.as_ref()));
        let (metrics, metrics_public) = self.metrics(&sc, raw);
        let (sample_interval, history_max_size, history_retention) = self.history(&sc, raw);
        SupervisorConfig {
            state_dir,
            log_max_size,
            log_keep: log_keep as u32,
            events_max_size,
            events_keep: events_keep as u32,
            memory_pressure,
            metrics,
            metrics_public,
            sample_interval,
            history_max_size,
            history_retention,
        }
    }

    fn memory_pressure(
        &mut self,
        raw: Option<&Sp<RawMemoryPressure>>,
    ) -> Option<MemoryPressureConfig> {
        let sc = Scope::top("supervisor.memory_pressure");
        let span = raw?.span();
        let raw = raw?.get_ref();
        if raw.min_available.is_none() && raw.psi_some_avg10.is_none() {
            self.report(
                Some(span),
                field_label(None, "supervisor.memory_pressure"),
                "memory_pressure sets no threshold; add min_available (e.g. \"10%\") and/or \
                 psi_some_avg10 (e.g. 40), or remove it to leave pressure recycling off"
                    .into(),
            );
            return None;
        }
        let mut shares = Vec::new();
        let min_available = self.opt_memory(
            &sc,
            "min_available",
            raw.min_available.as_ref(),
            &mut shares,
        );
        if min_available == Some(0) {
            self.report(
                raw.min_available.as_ref().map(|r| r.span()),
                sc.field("min_available"),
                "min_available must be larger than zero".into(),
            );
        }
        let psi_some_avg10 = raw.psi_some_avg10.as_ref().and_then(|p| {
            let v = *p.get_ref();
            if v > 0.0 && v <= 100.0 {
                Some(v)
            } else {
                self.report(
                    Some(p.span()),
                    sc.field("psi_some_avg10"),
                    format!("{v} is out of range: psi_some_avg10 is the share of the last 10 s that tasks stalled on memory, above 0 and at most 100, e.g. 40"),
                );
                None
            }
        });
        let cooldown = self.duration(&sc, "cooldown", raw.cooldown.as_ref(), secs(30), false);
        let interval = self.duration(&sc, "interval", raw.interval.as_ref(), secs(1), true);
        Some(MemoryPressureConfig {
            min_available,
            min_available_share: shares.pop(),
            psi_some_avg10,
            cooldown,
            interval,
        })
    }

    /// A memory limit: a size, or (`"25%"`) a share of [`Self::memory_base`],
    /// recorded in `shares`.
    /// `[app.recycle] batch`: a number of workers (`4`) or a share of them
    /// (`"25%"`); only an overlapped recycle starts several at once.
    fn batch(&mut self, sc: &Scope, raw: Option<&Sp<RawBatch>>, overlapped: bool) -> RecycleBatch {
        let Some(r) = raw else {
            return if overlapped {
                RecycleBatch::default()
            } else {
                RecycleBatch::Workers(1)
            };
        };
        let batch = match &r.get_ref().value {
            Scalar::Int(n) if (1..=256).contains(n) => RecycleBatch::Workers(*n as u32),
            Scalar::Int(n) => {
                self.report(
                    Some(r.span()),
                    sc.field("batch"),
                    format!("{n} is out of range; batch is a number of workers from 1 to 256, or a share such as \"25%\""),
                );
                return RecycleBatch::default();
            }
            Scalar::Str(text) => match text
                .trim()
                .strip_suffix('%')
                .map(|p| p.trim().parse::<f64>())
            {
                Some(Ok(p)) if p.is_finite() && p > 0.0 && p <= 100.0 => RecycleBatch::Share(p),
                Some(Ok(_)) => {
                    self.report(
                        Some(r.span()),
                        sc.field("batch"),
                        format!("{text:?} is out of range: a share of the workers is above 0% and at most 100%, e.g. \"25%\""),
                    );
                    return RecycleBatch::default();
                }
                _ => {
                    self.report(
                        Some(r.span()),
                        sc.field("batch"),
                        format!("{text:?} is not a batch; write a number of workers such as 4, or a share of `processes` such as \"25%\""),
                    );
                    return RecycleBatch::default();
                }
            },
        };
        if !overlapped && batch != RecycleBatch::Workers(1) {
            self.report(
                Some(r.span()),
                sc.field("batch"),
                "batch sets how many new workers start beside the old ones, so it needs overlapped = true; \
                 with overlapped = false workers are replaced one at a time: remove batch, or set overlapped = true"
                    .into(),
            );
        }
        batch
    }

    fn opt_memory(
        &mut self,
        sc: &Scope,
        key: &'static str,
        raw: Option<&Sp<RawSize>>,
        shares: &mut Vec<MemoryShare>,
    ) -> Option<u64> {
        let r = raw?;
        let Scalar::Str(s) = &r.get_ref().value else {
            return self.opt_size(sc, key, raw);
        };
        let Some(number) = s.trim().strip_suffix('%') else {
            return self.opt_size(sc, key, raw);
        };
        let percent = match number.trim().parse::<f64>() {
            Ok(p) if p.is_finite() && p > 0.0 && p <= 100.0 => p,
            Ok(_) => {
                self.report(
                    Some(r.span()),
                    sc.field(key),
                    format!("{s:?} is out of range: a share of the supervisor's memory is above 0% and at most 100%, e.g. \"40%\""),
                );
                return None;
            }
            Err(_) => {
                self.report(
                    Some(r.span()),
                    sc.field(key),
                    format!("{s:?} is not a percentage; write e.g. \"40%\" or a size such as \"512MiB\""),
                );
                return None;
            }
        };
        let Some(base) = self.memory_base.as_ref() else {
            self.report(
                Some(r.span()),
                sc.field(key),
                format!("{s:?}: this program did not say how much memory there is, so percentages cannot be resolved; give a size such as \"512MiB\""),
            );
            return None;
        };
        let bytes = (base.bytes as f64 * percent / 100.0) as u64;
        shares.push(MemoryShare {
            key,
            percent,
            bytes,
            of: base.describe(),
        });
        Some(bytes)
    }

    /// `[supervisor] metrics` and `metrics_public`: an `IP:PORT` (or
    /// `localhost:PORT`), loopback unless `metrics_public = true` — the page has no
    /// authentication and names every app, so exposing it is a decision to write down.
    fn metrics(&mut self, sc: &Scope, raw: Option<&RawSupervisor>) -> (Option<SocketAddr>, bool) {
        let public = raw.and_then(|r| r.metrics_public.as_ref());
        let metrics_public = public.is_some_and(|p| *p.get_ref());
        let Some(m) = raw.and_then(|r| r.metrics.as_ref()) else {
            if let Some(p) = public {
                self.report(
                    Some(p.span()),
                    sc.field("metrics_public"),
                    "metrics_public applies only with metrics = \"IP:PORT\"; add metrics, or remove metrics_public"
                        .into(),
                );
            }
            return (None, metrics_public);
        };
        match parse_host_port(m.get_ref()) {
            Ok(addr) if !addr.ip().is_loopback() && !metrics_public => {
                self.report(
                    Some(m.span()),
                    sc.field("metrics"),
                    format!(
                        "{addr} is not a loopback address, and the metrics page has no authentication \
                         (it names every app); use e.g. \"127.0.0.1:{}\", or add metrics_public = true \
                         to serve it there on purpose",
                        addr.port()
                    ),
                );
                (None, metrics_public)
            }
            Ok(addr) => (Some(addr), metrics_public),
            Err(why) => {
                self.report(
                    Some(m.span()),
                    sc.field("metrics"),
                    format!(
                        "{:?} is not an address to serve metrics on ({why}); expected e.g. \"127.0.0.1:9464\"",
                        m.get_ref()
                    ),
                );
                (None, metrics_public)
            }
        }
    }

    /// The metrics address takes part in the duplicate-address check (first, so an
    /// app or the store that collides with it is the one reported).
    fn claim_metrics(
        &mut self,
        raw: Option<&Sp<RawSupervisor>>,
        supervisor: &SupervisorConfig,
        claimed: &mut Vec<Claimed>,
    ) {
        let (Some(addr), Some(span)) = (
            supervisor.metrics,
            raw.and_then(|r| r.get_ref().metrics.as_ref())
                .map(|m| m.span()),
        ) else {
            return;
        };
        claimed.push(Claimed {
            address: ListenAddress::Tcp(addr),
            span,
            owner: "the metrics endpoint ([supervisor] metrics)".into(),
        });
    }

    /// `sample_interval`, `history_max_size`, `history_retention` of `[supervisor]`.
    fn history(&mut self, sc: &Scope, raw: Option<&RawSupervisor>) -> (Duration, u64, Duration) {
        let mut interval = self.duration(
            sc,
            "sample_interval",
            raw.and_then(|r| r.sample_interval.as_ref()),
            DEFAULT_SAMPLE_INTERVAL,
            true,
        );
        let bounds = Duration::from_millis(100)..=Duration::from_secs(3600);
        if !bounds.contains(&interval) {
            let span = raw
                .and_then(|r| r.sample_interval.as_ref())
                .map(|r| r.span());
            self.report(
                span,
                sc.field("sample_interval"),
                format!(
                    "{} is out of range; sample_interval must be from 100ms to 1h (default \"1s\")",
                    format_duration(interval)
                ),
            );
            interval = DEFAULT_SAMPLE_INTERVAL;
        }
        let raw_size = raw.and_then(|r| r.history_max_size.as_ref());
        let mut max_size = self.size(
            sc,
            "history_max_size",
            raw_size,
            DEFAULT_HISTORY_MAX_SIZE,
            true,
        );
        if max_size < 1 << 20 {
            self.report(
                raw_size.map(|r| r.span()),
                sc.field("history_max_size"),
                format!(
                    "{} is too small; history_max_size must be at least \"1MiB\" (default \"64MiB\")",
                    format_size(max_size)
                ),
            );
            max_size = DEFAULT_HISTORY_MAX_SIZE;
        }
        let raw_keep = raw.and_then(|r| r.history_retention.as_ref());
        let mut keep = self.duration(
            sc,
            "history_retention",
            raw_keep,
            DEFAULT_HISTORY_RETENTION,
            true,
        );
        if keep < Duration::from_secs(3600) {
            self.report(
                raw_keep.map(|r| r.span()),
                sc.field("history_retention"),
                format!(
                    "{} is too short; history_retention must be at least 1h (default \"7d\")",
                    format_duration(keep)
                ),
            );
            keep = DEFAULT_HISTORY_RETENTION;
        }
        (interval, max_size, keep)
    }

    fn store(&mut self, raw: Option<&Sp<RawStore>>, claimed: &mut Vec<Claimed>) -> StoreConfig {
        let sc = Scope::top("store");
        #[derive(Clone, Copy, PartialEq)]
        enum Kind {
            Embedded,
            Redis,
        }
        let Some(raw) = raw else {
            return StoreConfig {
                backend: StoreBackend::Embedded(EmbeddedStore {
                    tcp: None,
                    persist: Persist::EverySec,
                    max_memory: None,
                    max_value_size: 1 << 20,
                    max_clients: 10_000,
                }),
            };
        };
        let table_span = raw.span();
        let raw = raw.get_ref();
        let kind = self.choice(
            &sc,
            "backend",
            raw.backend.as_ref(),
            Kind::Embedded,
            &[("embedded", Kind::Embedded), ("redis", Kind::Redis)],
        );
        if kind == Kind::Redis {
            let embedded_only = [
                ("tcp", raw.tcp.as_ref().map(|v| v.span())),
                ("persist", raw.persist.as_ref().map(|v| v.span())),
                ("max_memory", raw.max_memory.as_ref().map(|v| v.span())),
                (
                    "max_value_size",
                    raw.max_value_size.as_ref().map(|v| v.span()),
                ),
                ("max_clients", raw.max_clients.as_ref().map(|v| v.span())),
            ];
            for (key, span) in embedded_only {
                if let Some(span) = span {
                    self.report(
                        Some(span),
                        sc.field(key),
                        format!(
                            "\"{key}\" applies only to backend = \"embedded\"; with backend = \"redis\" \
                             configure it on the Redis server itself, and remove it here"
                        ),
                    );
                }
            }
            let url = match &raw.url {
                None => {
                    self.report(
                        Some(table_span),
                        sc.field("url"),
                        "backend = \"redis\" needs url = \"redis://HOST:PORT\" (or rediss://, \
                         redis+unix://, unix://); add it, or remove backend to use the embedded store"
                            .into(),
                    );
                    String::new()
                }
                Some(url) => {
                    if let Err(msg) = check_redis_url(url.get_ref()) {
                        self.report(Some(url.span()), sc.field("url"), msg);
                    }
                    url.get_ref().clone()
                }
            };
            return StoreConfig {
                backend: StoreBackend::Redis { url },
            };
        }
        if let Some(url) = &raw.url {
            self.report(
                Some(url.span()),
                sc.field("url"),
                "\"url\" applies only to backend = \"redis\"; add backend = \"redis\" to use an \
                 external Redis, or remove url to use the embedded store"
                    .into(),
            );
        }
        let tcp = raw
            .tcp
            .as_ref()
            .and_then(|t| match parse_host_port(t.get_ref()) {
                Ok(addr) => {
                    claimed.push(Claimed {
                        address: ListenAddress::Tcp(addr),
                        span: t.span(),
                        owner: "the embedded store ([store] tcp)".into(),
                    });
                    Some(addr)
                }
                Err(why) => {
                    self.report(
                        Some(t.span()),
                        sc.field("tcp"),
                        format!(
                            "{:?} is not a TCP address ({why}); expected e.g. \"127.0.0.1:6390\"",
                            t.get_ref()
                        ),
                    );
                    None
                }
            });
        let persist = self.choice(
            &sc,
            "persist",
            raw.persist.as_ref(),
            Persist::EverySec,
            &[
                ("everysec", Persist::EverySec),
                ("always", Persist::Always),
                ("no", Persist::No),
            ],
        );
        let max_memory = self.opt_size(&sc, "max_memory", raw.max_memory.as_ref());
        let max_value_size = self.size(
            &sc,
            "max_value_size",
            raw.max_value_size.as_ref(),
            1 << 20,
            true,
        );
        let max_clients = self.int(
            &sc,
            "max_clients",
            raw.max_clients.as_ref(),
            10_000,
            1..=1_000_000,
        );
        StoreConfig {
            backend: StoreBackend::Embedded(EmbeddedStore {
                tcp,
                persist,
                max_memory,
                max_value_size,
                max_clients: max_clients as u32,
            }),
        }
    }

    fn app(
        &mut self,
        index: usize,
        raw: &Sp<RawApp>,
        supervisor: &SupervisorConfig,
        names: &mut HashMap<String, Range<usize>>,
        claimed: &mut Vec<Claimed>,
    ) -> AppConfig {
        let app_span = raw.span();
        let raw = raw.get_ref();
        let label = app_label(raw.name.as_ref().map(|n| n.get_ref().as_str()), index);
        let sc = Scope {
            app: Some(label.clone()),
            section: "",
        };

        let name = match &raw.name {
            None => {
                self.report(
                    Some(app_span.clone()),
                    sc.field("name"),
                    "every [[app]] needs a name; add name = \"web\" (letters, digits, _ . -)"
                        .into(),
                );
                format!("app{}", index + 1)
            }
            Some(n) => {
                let name = n.get_ref().clone();
                if name.is_empty()
                    || !name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
                {
                    self.report(
                        Some(n.span()),
                        sc.field("name"),
                        format!(
                            "{name:?} is not a valid app name; use only letters, digits, '_', '.' and '-' \
                             (it names log files and appears in LISTEN_FDNAMES)"
                        ),
                    );
                } else if let Some(first) = names.get(&name).cloned() {
                    let line = self.line_of(&first);
                    self.report(
                        Some(n.span()),
                        sc.field("name"),
                        format!("app name {name:?} is already used by the app on line {line}; app names must be unique"),
                    );
                } else {
                    names.insert(name.clone(), n.span());
                }
                name
            }
        };

        let command = self.command(&sc, raw.command.as_ref(), &app_span);
        let cwd = self
            .path(&sc, "cwd", raw.cwd.as_ref())
            .unwrap_or_else(|| self.dir.clone());
        let env = self.env(&sc, raw.env.as_ref());
        let processes = self.int(&sc, "processes", raw.processes.as_ref(), 1, 1..=256) as u32;
        let listen = self.listen(&sc, &name, raw.listen.as_ref(), claimed);
        let has_tcp = listen
            .iter()
            .any(|l| matches!(l.address, ListenAddress::Tcp(_)));
        let ready = self.ready(&sc, raw.ready.as_ref(), has_tcp);
        let recycle = self.recycle(
            &sc.within("recycle"),
            raw.recycle.as_ref().map(|r| r.get_ref()),
        );
        let failure = self.failure(
            &sc.within("failure"),
            raw.failure.as_ref().map(|r| r.get_ref()),
        );
        let watch = self.watch(
            &sc.within("watch"),
            raw.watch.as_ref().map(|r| r.get_ref()),
            &cwd,
            supervisor,
        );
        let health = self.health(&sc.within("health"), raw.health.as_ref(), has_tcp);
        let sessions = self.sessions(
            &sc.within("sessions"),
            raw.sessions.as_ref().map(|r| r.get_ref()),
            processes,
        );
        let process = self.process(&sc, raw);
        let secret_env = self.secret_env(&sc, raw.secret_env.as_ref(), &env);
        AppConfig {
            name,
            command,
            cwd,
            env,
            processes,
            listen,
            ready,
            recycle,
            failure,
            watch,
            health,
            sessions,
            process,
            secret_env,
        }
    }

    /// `user`, `group`, `groups`, `umask` and `[app.rlimits]`. Names are looked up
    /// now, so an unknown user is an error of the config (with its place), and the
    /// child after fork only uses numbers.
    fn process(&mut self, sc: &Scope, raw: &RawApp) -> ProcessConfig {
        let mut p = ProcessConfig::default();
        let mut user_gid = None;
        if let Some(u) = &raw.user {
            let name = u.get_ref();
            match lookup_user(name) {
                Ok(Some((uid, gid))) => {
                    p.user = Some((name.clone(), uid));
                    user_gid = Some(gid);
                }
                Ok(None) => self.report(
                    Some(u.span()),
                    sc.field("user"),
                    format!("unknown user {name:?}: no such entry in the user database; give an existing user name or a numeric uid"),
                ),
                Err(e) => self.report(Some(u.span()), sc.field("user"), format!("cannot look up user {name:?}: {e}")),
            }
        }
        if let Some(g) = &raw.group {
            let name = g.get_ref();
            match lookup_group(name) {
                Ok(Some(gid)) => p.group = Some((name.clone(), gid)),
                Ok(None) => self.report(
                    Some(g.span()),
                    sc.field("group"),
                    format!("unknown group {name:?}: no such entry in the group database; give an existing group name or a numeric gid"),
                ),
                Err(e) => self.report(Some(g.span()), sc.field("group"), format!("cannot look up group {name:?}: {e}")),
            }
        } else if let (Some(_), Some(gid)) = (&p.user, user_gid) {
            // The user's primary group, by number: its name may differ
            // (nobody/nogroup), and the number round-trips through `check`.
            p.group = Some((gid.to_string(), gid));
        }
        if let Some(list) = &raw.groups {
            let mut gids = Vec::new();
            for g in list.get_ref() {
                match lookup_group(g.get_ref()) {
                    Ok(Some(gid)) => gids.push(gid),
                    Ok(None) => self.report(
                        Some(g.span()),
                        sc.field("groups"),
                        format!(
                            "unknown group {:?} in groups: no such entry in the group database",
                            g.get_ref()
                        ),
                    ),
                    Err(e) => self.report(
                        Some(g.span()),
                        sc.field("groups"),
                        format!("cannot look up group {:?}: {e}", g.get_ref()),
                    ),
                }
            }
            p.groups = Some(gids);
        } else if let (Some(u), Some((_, gid))) = (&raw.user, &p.group) {
            p.groups = Some(user_groups(u.get_ref(), *gid).unwrap_or_else(|| vec![*gid]));
        } else if let Some((_, gid)) = &p.group {
            p.groups = Some(vec![*gid]);
        }
        if let Some(m) = &raw.umask {
            let text = m.get_ref();
            match u32::from_str_radix(text, 8) {
                Ok(v) if v <= 0o777 && !text.is_empty() => p.umask = Some(v),
                _ => self.report(
                    Some(m.span()),
                    sc.field("umask"),
                    format!("{text:?} is not a umask; write it in octal as a string, e.g. umask = \"027\""),
                ),
            }
        }
        if let Some(r) = &raw.rlimits {
            let r = r.get_ref();
            let rsc = sc.within("rlimits");
            let mut limit = |key: &str, v: Option<&Sp<i64>>| {
                v.map(|v| self.int(&rsc, key, Some(v), 0, 0..=i64::MAX) as u64)
            };
            p.nofile = limit("nofile", r.nofile.as_ref());
            p.core = limit("core", r.core.as_ref());
            p.nproc = limit("nproc", r.nproc.as_ref());
        }
        p
    }

    /// `secret_env`: each name must be a key of `env`.
    fn secret_env(
        &mut self,
        sc: &Scope,
        raw: Option<&Sp<Vec<Sp<String>>>>,
        env: &BTreeMap<String, String>,
    ) -> Vec<String> {
        let mut out = Vec::new();
        for name in raw.map(|r| r.get_ref().iter()).into_iter().flatten() {
            let k = name.get_ref();
            if !env.contains_key(k) {
                self.report(
                    Some(name.span()),
                    sc.field("secret_env"),
                    format!("{k:?} is not set in env; secret_env names variables of this app's env to redact"),
                );
            } else {
                out.push(k.clone());
            }
        }
        out
    }

    fn command(
        &mut self,
        sc: &Scope,
        raw: Option<&Sp<RawCommand>>,
        app_span: &Range<usize>,
    ) -> Vec<String> {
        let field = sc.field("command");
        let Some(raw) = raw else {
            self.report(
                Some(app_span.clone()),
                field,
                "required key \"command\" is missing; add command = [\"program\", \"arg\", …]"
                    .into(),
            );
            return Vec::new();
        };
        match raw.get_ref() {
            RawCommand::Text(text) => {
                let words: Vec<String> =
                    text.split_whitespace().map(|w| format!("{w:?}")).collect();
                self.report(
                    Some(raw.span()),
                    field,
                    format!(
                        "command must be an array of arguments, not a string (appvisor never runs a shell); \
                         write command = [{}]",
                        words.join(", ")
                    ),
                );
                Vec::new()
            }
            RawCommand::Argv(argv) if argv.is_empty() => {
                self.report(
                    Some(raw.span()),
                    field,
                    "command is empty; give the program and its arguments, e.g. command = [\"python3\", \"app.py\"]"
                        .into(),
                );
                Vec::new()
            }
            RawCommand::Argv(argv) => {
                if argv[0].get_ref().trim().is_empty() {
                    self.report(
                        Some(argv[0].span()),
                        field.clone(),
                        "the program (command[0]) is empty; name the program to run".into(),
                    );
                }
                for arg in argv {
                    if arg.get_ref().contains('\0') {
                        self.report(
                            Some(arg.span()),
                            field.clone(),
                            "arguments cannot contain a NUL character".into(),
                        );
                    }
                }
                argv.iter().map(|a| a.get_ref().clone()).collect()
            }
        }
    }

    fn env(
        &mut self,
        sc: &Scope,
        raw: Option<&Sp<BTreeMap<Sp<String>, Sp<String>>>>,
    ) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        for (key, value) in raw.map(|r| r.get_ref().iter()).into_iter().flatten() {
            let k = key.get_ref();
            let field = sc.field(&format!("env.{k}"));
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                self.report(
                    Some(key.span()),
                    field,
                    format!("{k:?} is not a valid environment variable name; it must be non-empty and contain no '=' or NUL"),
                );
            } else if contract::env::is_reserved(k) {
                // appvisor sets these for each worker; a user value would be
                // overridden at best (a wrong `LISTEN_FDS` would make the app
                // misread its sockets), so it is refused.
                self.report(
                    Some(key.span()),
                    field,
                    format!("{k} is set by appvisor for each worker; remove it from env"),
                );
            } else if value.get_ref().contains('\0') {
                self.report(
                    Some(value.span()),
                    field,
                    "environment values cannot contain a NUL character".into(),
                );
            } else {
                env.insert(k.clone(), value.get_ref().clone());
            }
        }
        env
    }

    fn listen(
        &mut self,
        sc: &Scope,
        app_name: &str,
        raw: Option<&Sp<Vec<Sp<RawListen>>>>,
        claimed: &mut Vec<Claimed>,
    ) -> Vec<Listen> {
        let mut out = Vec::new();
        let field = sc.field("listen");
        for entry in raw.map(|r| r.get_ref().iter()).into_iter().flatten() {
            let (address, name) = match entry.get_ref() {
                RawListen::Address(a) => ((a.as_str(), entry.span()), None),
                RawListen::Table(t) => {
                    let Some(address) = &t.address else {
                        self.report(
                            Some(entry.span()),
                            field.clone(),
                            "this listen table has no address; add address = \"tcp://127.0.0.1:8080\"".into(),
                        );
                        continue;
                    };
                    (
                        (address.get_ref().as_str(), address.span()),
                        t.name.as_ref(),
                    )
                }
            };
            let parsed = match parse_listen(address.0, &self.dir) {
                Ok(a) => a,
                Err(why) => {
                    self.report(
                        Some(address.1),
                        field.clone(),
                        format!("{:?} is not a listen address: {why}", address.0),
                    );
                    continue;
                }
            };
            let name = match name {
                None => app_name.to_owned(),
                Some(n) => {
                    let s = n.get_ref();
                    if s.is_empty()
                        || s.len() > 255
                        || !s.chars().all(|c| c.is_ascii_graphic() && c != ':')
                    {
                        self.report(
                            Some(n.span()),
                            sc.field("listen.name"),
                            format!(
                                "{s:?} cannot be a socket name; LISTEN_FDNAMES takes 1–255 printable ASCII \
                                 characters without ':' or spaces"
                            ),
                        );
                    }
                    s.clone()
                }
            };
            claimed.push(Claimed {
                address: parsed.clone(),
                span: address.1,
                owner: match &sc.app {
                    Some(a) => format!("app {a}"),
                    None => "another entry".into(),
                },
            });
            out.push(Listen {
                address: parsed,
                name,
            });
        }
        out
    }

    fn ready(&mut self, sc: &Scope, raw: Option<&Sp<String>>, has_tcp: bool) -> ReadyCheck {
        let Some(raw) = raw else {
            return ReadyCheck::Notify;
        };
        let field = sc.field("ready");
        let text = raw.get_ref().trim();
        let expected = "expected \"notify\", \"http:/PATH\" (e.g. \"http:/healthz\") or \"delay:DURATION\" (e.g. \"delay:500ms\")";
        if text == "notify" {
            ReadyCheck::Notify
        } else if let Some(path) = text.strip_prefix("http:") {
            if !path.starts_with('/') || path.starts_with("//") {
                self.report(
                    Some(raw.span()),
                    field,
                    format!(
                        "{text:?}: the http ready check takes a path starting with '/', e.g. \"http:/healthz\"; \
                         it is probed on the app's first TCP listen address"
                    ),
                );
            } else if !has_tcp {
                self.report(
                    Some(raw.span()),
                    field,
                    "an http ready check needs a TCP listen address to probe; add listen = [\"tcp://127.0.0.1:PORT\"] \
                     or use ready = \"notify\" or \"delay:2s\""
                        .into(),
                );
            }
            ReadyCheck::Http {
                path: path.to_owned(),
            }
        } else if let Some(d) = text.strip_prefix("delay:") {
            match parse_duration(d) {
                Ok(d) => ReadyCheck::Delay(d),
                Err(e) => {
                    self.report(Some(raw.span()), field, format!("ready delay: {e}"));
                    ReadyCheck::Notify
                }
            }
        } else {
            let kind = text.split(':').next().unwrap_or(text);
            let hint = closest(kind, &["notify", "http", "delay"])
                .map(|k| format!("did you mean \"{k}\"? "))
                .unwrap_or_default();
            self.report(
                Some(raw.span()),
                field,
                format!("unknown ready check {text:?}; {hint}{expected}"),
            );
            ReadyCheck::Notify
        }
    }

    fn recycle(&mut self, sc: &Scope, raw: Option<&RawRecycle>) -> RecycleConfig {
        let overlapped = raw
            .and_then(|r| r.overlapped.as_ref())
            .is_none_or(|b| *b.get_ref());
        let batch = self.batch(sc, raw.and_then(|r| r.batch.as_ref()), overlapped);
        let startup_timeout = self.duration(
            sc,
            "startup_timeout",
            raw.and_then(|r| r.startup_timeout.as_ref()),
            secs(90),
            true,
        );
        let shutdown_timeout = self.duration(
            sc,
            "shutdown_timeout",
            raw.and_then(|r| r.shutdown_timeout.as_ref()),
            secs(90),
            true,
        );
        let stop_signal = self.signal(
            sc,
            "stop_signal",
            raw.and_then(|r| r.stop_signal.as_ref()),
            Signal::TERM,
            &["SIGSTOP", "SIGTSTP", "SIGTTIN", "SIGTTOU", "SIGCONT"],
        );
        let mut memory_shares = Vec::new();
        let private_memory = self.opt_memory(
            sc,
            "private_memory",
            raw.and_then(|r| r.private_memory.as_ref()),
            &mut memory_shares,
        );
        let raw_virtual = raw.and_then(|r| r.virtual_memory.as_ref());
        let virtual_memory = match raw_virtual.map(|r| (r, &r.get_ref().value)) {
            Some((r, Scalar::Str(s))) if s.trim().ends_with('%') => {
                self.report(
                    Some(r.span()),
                    sc.field("virtual_memory"),
                    format!("{s:?}: virtual_memory cannot be a percentage: virtual size counts reserved address space, \
                             not memory, and often exceeds the machine's memory; give a size such as \"4GiB\", \
                             or use a percentage on private_memory or rss"),
                );
                None
            }
            _ => self.opt_size(sc, "virtual_memory", raw_virtual),
        };
        let rss = self.opt_memory(
            sc,
            "rss",
            raw.and_then(|r| r.rss.as_ref()),
            &mut memory_shares,
        );
        let memory_check_interval = self.duration(
            sc,
            "memory_check_interval",
            raw.and_then(|r| r.memory_check_interval.as_ref()),
            secs(1),
            true,
        );
        let hard = raw.and_then(|r| r.memory_hard_limit.as_ref());
        let memory_hard_limit = self.opt_memory(sc, "memory_hard_limit", hard, &mut memory_shares);
        let app_memory = self.opt_memory(
            sc,
            "app_memory",
            raw.and_then(|r| r.app_memory.as_ref()),
            &mut memory_shares,
        );
        for (key, value, raw_value) in [
            (
                "app_memory",
                app_memory,
                raw.and_then(|r| r.app_memory.as_ref()),
            ),
            ("memory_hard_limit", memory_hard_limit, hard),
            (
                "private_memory",
                private_memory,
                raw.and_then(|r| r.private_memory.as_ref()),
            ),
            ("rss", rss, raw.and_then(|r| r.rss.as_ref())),
        ] {
            if value == Some(0) {
                self.report(
                    raw_value.map(|r| r.span()),
                    sc.field(key),
                    format!("{key} must be larger than zero; remove it to turn the limit off"),
                );
            }
        }
        let pressure_candidate = raw
            .and_then(|r| r.pressure_candidate.as_ref())
            .map_or(overlapped, |b| *b.get_ref());
        if let (Some(h), Some(p), Some(span)) =
            (memory_hard_limit, private_memory, hard.map(|h| h.span()))
        {
            if h <= p {
                self.report(
                    Some(span),
                    sc.field("memory_hard_limit"),
                    "memory_hard_limit must be above private_memory: the soft limit recycles gracefully, \
                     the hard limit kills at once; raise memory_hard_limit or lower private_memory"
                        .into(),
                );
            }
        }
        let requests = raw
            .and_then(|r| r.requests.as_ref())
            .map(|r| self.int(sc, "requests", Some(r), 1, 1..=i64::MAX) as u64);
        let requests_jitter = self.int(
            sc,
            "requests_jitter",
            raw.and_then(|r| r.requests_jitter.as_ref()),
            0,
            0..=i64::MAX,
        ) as u64;
        let interval =
            self.opt_duration(sc, "interval", raw.and_then(|r| r.interval.as_ref()), true);
        let interval_jitter = self.duration(
            sc,
            "interval_jitter",
            raw.and_then(|r| r.interval_jitter.as_ref()),
            Duration::ZERO,
            false,
        );
        let mut schedule = Vec::new();
        for t in raw
            .and_then(|r| r.schedule.as_ref())
            .map(|s| s.get_ref().iter())
            .into_iter()
            .flatten()
        {
            match parse_time_of_day(t.get_ref()) {
                Ok(tod) => schedule.push(tod),
                Err(why) => self.report(
                    Some(t.span()),
                    sc.field("schedule"),
                    format!("{:?} is not a time of day ({why}); expected \"HH:MM\" or \"HH:MM:SS\", e.g. \"03:00\"", t.get_ref()),
                ),
            }
        }
        schedule.sort();
        schedule.dedup();
        let idle_timeout = self.opt_duration(
            sc,
            "idle_timeout",
            raw.and_then(|r| r.idle_timeout.as_ref()),
            true,
        );
        RecycleConfig {
            overlapped,
            batch,
            startup_timeout,
            shutdown_timeout,
            stop_signal,
            private_memory,
            virtual_memory,
            rss,
            memory_check_interval,
            memory_hard_limit,
            requests,
            requests_jitter,
            interval,
            interval_jitter,
            schedule,
            idle_timeout,
            app_memory,
            pressure_candidate,
            memory_shares,
        }
    }

    fn failure(&mut self, sc: &Scope, raw: Option<&RawFailure>) -> FailureConfig {
        let rapid_fail_max_crashes = self.int(
            sc,
            "rapid_fail_max_crashes",
            raw.and_then(|r| r.rapid_fail_max_crashes.as_ref()),
            5,
            1..=1_000_000,
        ) as u32;
        let rapid_fail_interval = self.duration(
            sc,
            "rapid_fail_interval",
            raw.and_then(|r| r.rapid_fail_interval.as_ref()),
            secs(300),
            true,
        );
        let backoff_initial = self.duration(
            sc,
            "backoff_initial",
            raw.and_then(|r| r.backoff_initial.as_ref()),
            Duration::from_millis(100),
            false,
        );
        let max_raw = raw.and_then(|r| r.backoff_max.as_ref());
        let backoff_max = self.duration(sc, "backoff_max", max_raw, secs(30), false);
        if backoff_initial > backoff_max {
            let (key, span) = match (max_raw, raw.and_then(|r| r.backoff_initial.as_ref())) {
                (Some(m), _) => ("backoff_max", Some(m.span())),
                (None, i) => ("backoff_initial", i.map(|i| i.span())),
            };
            self.report(
                span,
                sc.field(key),
                format!(
                    "backoff_initial ({}) is longer than backoff_max ({}); the backoff starts at \
                     backoff_initial and doubles up to backoff_max, so make backoff_initial <= backoff_max",
                    format_duration(backoff_initial),
                    format_duration(backoff_max)
                ),
            );
        }
        let stable_uptime = self.duration(
            sc,
            "stable_uptime",
            raw.and_then(|r| r.stable_uptime.as_ref()),
            secs(30),
            false,
        );
        FailureConfig {
            rapid_fail_max_crashes,
            rapid_fail_interval,
            backoff_initial,
            backoff_max,
            stable_uptime,
        }
    }

    fn watch(
        &mut self,
        sc: &Scope,
        raw: Option<&RawWatch>,
        cwd: &Path,
        supervisor: &SupervisorConfig,
    ) -> WatchConfig {
        let enabled = raw
            .and_then(|r| r.enabled.as_ref())
            .is_none_or(|b| *b.get_ref());
        let code_dir = match raw.and_then(|r| r.code_dir.as_ref()) {
            None => "App_Code".to_owned(),
            Some(d) => {
                let dir = d.get_ref().trim_end_matches('/').to_owned();
                if dir.is_empty()
                    || Path::new(&dir).is_absolute()
                    || dir.split('/').any(|c| c == "..")
                {
                    self.report(
                        Some(d.span()),
                        sc.field("code_dir"),
                        format!("{:?}: code_dir is a directory relative to the app's cwd, e.g. \"App_Code\" or \"src\"", d.get_ref()),
                    );
                }
                dir
            }
        };
        let paths = match raw.and_then(|r| r.paths.as_ref()) {
            Some(list) => self.globs(sc, "paths", list),
            None => DEFAULT_WATCH_PATHS
                .iter()
                .map(|s| s.to_string())
                .chain(std::iter::once(format!("{}/**", escape_glob(&code_dir))))
                .collect(),
        };
        let mut ignore: Vec<String> = DEFAULT_WATCH_IGNORE.iter().map(|s| s.to_string()).collect();
        // The state dir holds logs and the event log: if it sits inside the app's
        // tree, every log line would otherwise look like a change.
        // Compared lexically resolved: `state_dir = ".."` is "<dir>/..", which
        // `strip_prefix` would call inside "<dir>" (as `..`), and the dump of that
        // ignore would not load again.
        if let Ok(inside) = lexical(&supervisor.state_dir).strip_prefix(lexical(cwd)) {
            if let Some(rel) = inside.to_str().filter(|r| !r.is_empty()) {
                ignore.push(format!("{}/**", escape_glob(rel)));
            }
        }
        if let Some(list) = raw.and_then(|r| r.ignore.as_ref()) {
            for g in self.globs(sc, "ignore", list) {
                if !ignore.contains(&g) {
                    ignore.push(g);
                }
            }
        }
        let debounce = self.duration(
            sc,
            "debounce",
            raw.and_then(|r| r.debounce.as_ref()),
            Duration::from_millis(200),
            false,
        );
        let max_raw = raw.and_then(|r| r.max_wait.as_ref());
        let max_wait = self.duration(sc, "max_wait", max_raw, secs(2), false);
        if max_wait < debounce {
            let (key, span) = match max_raw {
                Some(m) => ("max_wait", Some(m.span())),
                None => (
                    "debounce",
                    raw.and_then(|r| r.debounce.as_ref()).map(|d| d.span()),
                ),
            };
            self.report(
                span,
                sc.field(key),
                format!(
                    "max_wait ({}) is shorter than debounce ({}); max_wait caps the wait from the first \
                     change, so it must be >= debounce",
                    format_duration(max_wait),
                    format_duration(debounce)
                ),
            );
        }
        let compare = self.choice(
            sc,
            "compare",
            raw.and_then(|r| r.compare.as_ref()),
            Compare::Content,
            &[("content", Compare::Content), ("mtime", Compare::Mtime)],
        );
        let soft = match raw.and_then(|r| r.soft.as_ref()) {
            Some(list) => self.globs(sc, "soft", list),
            None => Vec::new(),
        };
        let soft_signal = self.signal(
            sc,
            "soft_signal",
            raw.and_then(|r| r.soft_signal.as_ref()),
            Signal::HUP,
            &["SIGKILL", "SIGSTOP"],
        );
        let soft_changes_before_recycle = self.int(
            sc,
            "soft_changes_before_recycle",
            raw.and_then(|r| r.soft_changes_before_recycle.as_ref()),
            15,
            1..=1_000_000,
        ) as u32;
        let poll = self.opt_duration(sc, "poll", raw.and_then(|r| r.poll.as_ref()), true);
        WatchConfig {
            enabled,
            paths,
            code_dir,
            ignore,
            debounce,
            max_wait,
            compare,
            soft,
            soft_signal,
            soft_changes_before_recycle,
            poll,
        }
    }

    fn health(&mut self, sc: &Scope, raw: Option<&Sp<RawHealth>>, has_tcp: bool) -> HealthConfig {
        let raw = raw.map(|r| r.get_ref());
        let watchdog =
            self.opt_duration(sc, "watchdog", raw.and_then(|r| r.watchdog.as_ref()), true);
        let http_probe = raw.and_then(|r| r.http_probe.as_ref()).map(|probe| {
            let psc = sc.within("health.http_probe");
            let span = probe.span();
            let p = probe.get_ref();
            let path = match &p.path {
                None => {
                    self.report(Some(span.clone()), psc.field("path"), "http_probe needs path = \"/healthz\" (the URL path to GET)".into());
                    "/".to_owned()
                }
                Some(path) => {
                    if !path.get_ref().starts_with('/') {
                        self.report(
                            Some(path.span()),
                            psc.field("path"),
                            format!("{:?} must be a URL path starting with '/', e.g. \"/healthz\"", path.get_ref()),
                        );
                    }
                    path.get_ref().clone()
                }
            };
            if !has_tcp {
                self.report(
                    Some(span),
                    psc.field("path"),
                    "http_probe needs a TCP listen address to probe; add listen = [\"tcp://127.0.0.1:PORT\"] or remove http_probe".into(),
                );
            }
            HttpProbe {
                path,
                interval: self.duration(&psc, "interval", p.interval.as_ref(), secs(30), true),
                timeout: self.duration(&psc, "timeout", p.timeout.as_ref(), secs(5), true),
                failures: self.int(&psc, "failures", p.failures.as_ref(), 3, 1..=1000) as u32,
            }
        });
        HealthConfig {
            watchdog,
            http_probe,
        }
    }

    fn sessions(
        &mut self,
        sc: &Scope,
        raw: Option<&RawSessions>,
        processes: u32,
    ) -> SessionsConfig {
        let mode = self.choice(
            sc,
            "mode",
            raw.and_then(|r| r.mode.as_ref()),
            SessionMode::Store,
            &[
                ("inproc", SessionMode::Inproc),
                ("handoff", SessionMode::Handoff),
                ("store", SessionMode::Store),
            ],
        );
        if mode == SessionMode::Handoff && processes > 1 {
            // A handoff session lives in the memory of the worker that served it;
            // with several workers a user's next request may land on another one
            // (ASP.NET's web-garden InProc trap). Refuse rather than lose sessions.
            let span = raw.and_then(|r| r.mode.as_ref()).map(|m| m.span());
            self.report(
                span,
                sc.field("mode"),
                format!(
                    "\"handoff\" keeps each session in the memory of one worker, but with processes = {processes} a user's requests land on any worker; use mode = \"store\" (write-through, survives crashes too) or processes = 1"
                ),
            );
        }
        let timeout = self.duration(
            sc,
            "timeout",
            raw.and_then(|r| r.timeout.as_ref()),
            secs(20 * 60),
            true,
        );
        SessionsConfig { mode, timeout }
    }

    /// Two sockets cannot bind the same address: report the later one, naming the
    /// earlier owner. A wildcard (`0.0.0.0`) collides with every address of its port.
    fn check_listen_conflicts(&mut self, claimed: &[Claimed]) {
        for (i, later) in claimed.iter().enumerate() {
            if let Some(earlier) = claimed[..i]
                .iter()
                .find(|e| collide(&e.address, &later.address))
            {
                let line = self.line_of(&earlier.span);
                let field = later
                    .owner
                    .strip_prefix("app ")
                    .map(|a| field_label(Some(a), "listen"))
                    .unwrap_or_else(|| field_label(None, "store.tcp"));
                self.report(
                    Some(later.span.clone()),
                    field,
                    format!(
                        "{} is already used by {} on line {line}; each listen address can be bound once, \
                         pick another port or path",
                        later.address, earlier.owner
                    ),
                );
            }
        }
    }

    // ----- value kinds ----------------------------------------------------------

    fn duration(
        &mut self,
        sc: &Scope,
        key: &str,
        raw: Option<&Sp<RawDuration>>,
        default: Duration,
        nonzero: bool,
    ) -> Duration {
        self.opt_duration(sc, key, raw, nonzero).unwrap_or(default)
    }

    fn opt_duration(
        &mut self,
        sc: &Scope,
        key: &str,
        raw: Option<&Sp<RawDuration>>,
        nonzero: bool,
    ) -> Option<Duration> {
        let raw = raw?;
        let result = match &raw.get_ref().value {
            Scalar::Int(0) => Ok(Duration::ZERO),
            Scalar::Int(n) => Err(format!(
                "{n} has no unit; durations are strings with a unit, e.g. \"{n}s\", \"{n}ms\" or \"{n}m\""
            )),
            Scalar::Str(s) => parse_duration(s).map_err(|e| e.to_string()),
        };
        match result {
            Ok(d) if nonzero && d.is_zero() => {
                self.report(
                    Some(raw.span()),
                    sc.field(key),
                    format!("{key} must be longer than zero"),
                );
                None
            }
            Ok(d) => Some(d),
            Err(msg) => {
                self.report(Some(raw.span()), sc.field(key), msg);
                None
            }
        }
    }

    fn size(
        &mut self,
        sc: &Scope,
        key: &str,
        raw: Option<&Sp<RawSize>>,
        default: u64,
        nonzero: bool,
    ) -> u64 {
        match self.opt_size(sc, key, raw) {
            Some(0) if nonzero => {
                let span = raw.map(|r| r.span());
                self.report(
                    span,
                    sc.field(key),
                    format!("{key} must be larger than zero"),
                );
                default
            }
            Some(n) => n,
            None => default,
        }
    }

    fn opt_size(&mut self, sc: &Scope, key: &str, raw: Option<&Sp<RawSize>>) -> Option<u64> {
        let raw = raw?;
        let result = match &raw.get_ref().value {
            Scalar::Int(n) => u64::try_from(*n).map_err(|_| {
                format!("{n} is negative; a size is a number of bytes or e.g. \"512MiB\"")
            }),
            Scalar::Str(s) => parse_size(s).map_err(|e| e.to_string()),
        };
        match result {
            Ok(n) => Some(n),
            Err(msg) => {
                self.report(Some(raw.span()), sc.field(key), msg);
                None
            }
        }
    }

    fn int(
        &mut self,
        sc: &Scope,
        key: &str,
        raw: Option<&Sp<i64>>,
        default: i64,
        range: RangeInclusive<i64>,
    ) -> i64 {
        let Some(raw) = raw else {
            return default;
        };
        let n = *raw.get_ref();
        if range.contains(&n) {
            return n;
        }
        let allowed = if *range.end() == i64::MAX {
            format!("at least {}", range.start())
        } else {
            format!("from {} to {}", range.start(), range.end())
        };
        self.report(
            Some(raw.span()),
            sc.field(key),
            format!("{n} is out of range; {key} must be {allowed}"),
        );
        default
    }

    fn choice<T: Copy>(
        &mut self,
        sc: &Scope,
        key: &str,
        raw: Option<&Sp<String>>,
        default: T,
        options: &[(&str, T)],
    ) -> T {
        let Some(raw) = raw else {
            return default;
        };
        let value = raw.get_ref();
        if let Some((_, v)) = options.iter().find(|(name, _)| name == value) {
            return *v;
        }
        let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
        let hint = closest(value, &names)
            .map(|n| format!("did you mean \"{n}\"? "))
            .unwrap_or_default();
        let list: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
        self.report(
            Some(raw.span()),
            sc.field(key),
            format!(
                "unknown {key} {value:?}; {hint}expected one of {}",
                list.join(", ")
            ),
        );
        default
    }

    fn signal(
        &mut self,
        sc: &Scope,
        key: &str,
        raw: Option<&Sp<RawSignal>>,
        default: Signal,
        forbidden: &[&str],
    ) -> Signal {
        let Some(raw) = raw else {
            return default;
        };
        let parsed = match &raw.get_ref().value {
            Scalar::Int(n) => Signal::from_number(*n).ok_or_else(|| format!("{n} is not a known signal number")),
            Scalar::Str(s) => Signal::from_name(s).ok_or_else(|| {
                let upper = s.trim().to_ascii_uppercase();
                let full = if upper.starts_with("SIG") { upper } else { format!("SIG{upper}") };
                let known: Vec<&str> = Signal::known_names().collect();
                match closest(&full, &known) {
                    Some(best) => format!("{s:?} is not a signal name; did you mean \"{best}\"?"),
                    None => format!("{s:?} is not a signal name; expected e.g. \"SIGTERM\", \"SIGHUP\", \"SIGUSR1\" or a number"),
                }
            }),
        };
        match parsed {
            Ok(sig) if forbidden.contains(&sig.name) => {
                self.report(
                    Some(raw.span()),
                    sc.field(key),
                    format!("{} cannot be used as {key}: the worker could not handle it; use e.g. \"{}\"", sig.name, default.name),
                );
                default
            }
            Ok(sig) => sig,
            Err(msg) => {
                self.report(Some(raw.span()), sc.field(key), msg);
                default
            }
        }
    }

    /// A path as written, made absolute against the config file's directory.
    fn path(&mut self, sc: &Scope, key: &str, raw: Option<&Sp<String>>) -> Option<PathBuf> {
        let raw = raw?;
        let text = raw.get_ref();
        if text.is_empty() {
            self.report(
                Some(raw.span()),
                sc.field(key),
                format!("{key} is empty; give a directory, or remove the key for the default"),
            );
            return None;
        }
        if text == "~" || text.starts_with("~/") {
            self.report(
                Some(raw.span()),
                sc.field(key),
                format!("{text:?}: '~' is not expanded; write an absolute path, or one relative to the config file"),
            );
            return None;
        }
        Some(absolute_from(&self.dir, Path::new(text)))
    }

    fn globs(&mut self, sc: &Scope, key: &str, list: &Sp<Vec<Sp<String>>>) -> Vec<String> {
        let mut out = Vec::new();
        for g in list.get_ref() {
            let text = g.get_ref();
            let why = if text.trim().is_empty() {
                Some("a glob cannot be empty".to_owned())
            } else if text.starts_with('/') {
                Some("globs are relative to the app's cwd; remove the leading '/'".to_owned())
            } else if text.split('/').any(|c| c == "..") {
                Some("globs cannot leave the app's cwd ('..'); set cwd higher or watch from inside it".to_owned())
            } else {
                globset::Glob::new(text)
                    .err()
                    .map(|e| format!("invalid glob: {}", e.kind()))
            };
            match why {
                Some(why) => self.report(Some(g.span()), sc.field(key), format!("{text:?}: {why}")),
                None => out.push(text.clone()),
            }
        }
        out
    }
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// `dir/p`, or `p` if it is absolute, with `.` components dropped. `..` is kept:
/// resolving it lexically would be wrong across symlinks.
pub(crate) fn absolute_from(dir: &Path, p: &Path) -> PathBuf {
    let joined = if p.is_absolute() {
        p.to_owned()
    } else {
        dir.join(p)
    };
    joined
        .components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect()
}

/// Escape glob metacharacters in a literal path segment.
fn escape_glob(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "*?[]{}\\".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn collide(a: &ListenAddress, b: &ListenAddress) -> bool {
    match (a, b) {
        (ListenAddress::Unix(x), ListenAddress::Unix(y)) => x == y,
        (ListenAddress::Tcp(x), ListenAddress::Tcp(y)) => {
            // Port 0 asks the kernel for a fresh port each time: never a conflict.
            x.port() != 0
                && x.port() == y.port()
                && (x.ip() == y.ip() || x.ip().is_unspecified() || y.ip().is_unspecified())
                && (x.is_ipv4() == y.is_ipv4()
                    || x.ip().is_unspecified()
                    || y.ip().is_unspecified())
        }
        _ => false,
    }
}

/// `"tcp://HOST:PORT"` or `"unix:PATH"` (`"unix:///abs.sock"` also accepted).
pub(crate) fn parse_listen(s: &str, dir: &Path) -> Result<ListenAddress, String> {
    if let Some(rest) = s.strip_prefix("tcp://") {
        return parse_host_port(rest).map(ListenAddress::Tcp).map_err(|why| {
            format!("{why}; expected \"tcp://HOST:PORT\" with an IP address, e.g. \"tcp://127.0.0.1:8080\" or \"tcp://[::1]:8080\"")
        });
    }
    if let Some(rest) = s.strip_prefix("unix:") {
        let rest = rest.strip_prefix("//").unwrap_or(rest);
        if rest.is_empty() {
            return Err("the socket path is empty; expected e.g. \"unix:app.sock\" or \"unix:/run/app.sock\"".into());
        }
        let path = absolute_from(dir, Path::new(rest));
        let len = path.as_os_str().len();
        if len > MAX_UNIX_PATH {
            return Err(format!(
                "the socket path {} is {len} bytes long; unix socket paths are limited to {MAX_UNIX_PATH} bytes, use a shorter one",
                path.display()
            ));
        }
        return Ok(ListenAddress::Unix(path));
    }
    if s.parse::<SocketAddr>().is_ok() || s.starts_with("localhost:") {
        return Err(format!("add the scheme: \"tcp://{s}\""));
    }
    if s.starts_with('/') || s.ends_with(".sock") {
        return Err(format!("add the scheme: \"unix:{s}\""));
    }
    Err("expected \"tcp://HOST:PORT\" (e.g. \"tcp://127.0.0.1:8080\") or \"unix:PATH\" (e.g. \"unix:app.sock\")".into())
}

/// `127.0.0.1:8080`, `[::1]:8080`, `0.0.0.0:80`, or `localhost:8080` (= 127.0.0.1: a
/// host name would need a DNS lookup, which this crate does not do).
fn parse_host_port(s: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err("missing \":PORT\"".into());
    };
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{port:?} is not a port number (0–65535)"))?;
    if host == "localhost" {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    if host.contains(':') && !host.starts_with('[') {
        return Err("an IPv6 address needs brackets, e.g. [::1]:8080".into());
    }
    Err(format!("{host:?} is not an IP address (host names are not resolved; use e.g. 127.0.0.1 or 0.0.0.0)"))
}

fn check_redis_url(url: &str) -> Result<(), String> {
    const SCHEMES: &[&str] = &["redis", "rediss", "redis+unix", "unix", "valkey", "valkeys"];
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(format!(
            "{url:?} is not a Redis URL; expected e.g. \"redis://127.0.0.1:6379\", \"rediss://host:6380\" or \"unix:///run/redis.sock\""
        ));
    };
    if !SCHEMES.contains(&scheme) {
        return Err(format!(
            "{url:?}: unsupported scheme \"{scheme}\"; use one of redis://, rediss:// (TLS), redis+unix://, unix://, valkey://, valkeys://"
        ));
    }
    if rest.is_empty() {
        return Err(format!(
            "{url:?} has no host or socket path after \"{scheme}://\""
        ));
    }
    Ok(())
}

/// `"HH:MM"` or `"HH:MM:SS"`, 24-hour.
pub(crate) fn parse_time_of_day(s: &str) -> Result<TimeOfDay, String> {
    let parts: Vec<&str> = s.trim().split(':').collect();
    if !(2..=3).contains(&parts.len()) {
        return Err("wrong number of ':'-separated parts".into());
    }
    let num = |p: &str, max: u8, what: &str, width: RangeInclusive<usize>| -> Result<u8, String> {
        if !width.contains(&p.len()) || !p.chars().all(|c| c.is_ascii_digit()) {
            return Err(format!("{p:?} is not a two-digit {what}"));
        }
        let n: u8 = p.parse().map_err(|_| format!("{p:?} is not a number"))?;
        if n > max {
            return Err(format!("{what} {n} is out of range 00–{max:02}"));
        }
        Ok(n)
    };
    Ok(TimeOfDay {
        hour: num(parts[0], 23, "hour", 1..=2)?,
        minute: num(parts[1], 59, "minute", 2..=2)?,
        second: match parts.get(2) {
            Some(p) => num(p, 59, "second", 2..=2)?,
            None => 0,
        },
    })
}

/// `path` with `.` and `..` components resolved by text alone (no symlinks
/// followed: the state dir may not exist yet).
fn lexical(path: &std::path::Path) -> std::path::PathBuf {
    use std::path::Component;
    let mut out = std::path::PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push(c);
                }
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_of_day() {
        assert_eq!(
            parse_time_of_day("03:00"),
            Ok(TimeOfDay {
                hour: 3,
                minute: 0,
                second: 0
            })
        );
        assert_eq!(
            parse_time_of_day("15:30:10"),
            Ok(TimeOfDay {
                hour: 15,
                minute: 30,
                second: 10
            })
        );
        assert_eq!(
            parse_time_of_day("3:05"),
            Ok(TimeOfDay {
                hour: 3,
                minute: 5,
                second: 0
            })
        );
        for bad in [
            "25:00", "12:60", "12", "12:5", "a:00", "12:00:61", "1:2:3:4",
        ] {
            assert!(parse_time_of_day(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn listen_addresses() {
        let dir = Path::new("/srv/app");
        assert_eq!(
            parse_listen("tcp://127.0.0.1:8080", dir),
            Ok(ListenAddress::Tcp("127.0.0.1:8080".parse().unwrap()))
        );
        assert_eq!(
            parse_listen("tcp://localhost:80", dir),
            Ok(ListenAddress::Tcp("127.0.0.1:80".parse().unwrap()))
        );
        assert_eq!(
            parse_listen("tcp://[::1]:80", dir),
            Ok(ListenAddress::Tcp("[::1]:80".parse().unwrap()))
        );
        assert_eq!(
            parse_listen("unix:run/a.sock", dir),
            Ok(ListenAddress::Unix("/srv/app/run/a.sock".into()))
        );
        assert_eq!(
            parse_listen("unix:///tmp/a.sock", dir),
            Ok(ListenAddress::Unix("/tmp/a.sock".into()))
        );
        assert!(parse_listen("127.0.0.1:80", dir)
            .unwrap_err()
            .contains("tcp://127.0.0.1:80"));
        assert!(parse_listen("tcp://example.com:80", dir)
            .unwrap_err()
            .contains("not an IP address"));
        assert!(parse_listen("tcp://127.0.0.1", dir).is_err());
        assert!(parse_listen("tcp://127.0.0.1:99999", dir).is_err());
        let long = format!("unix:/{}", "x".repeat(200));
        assert!(parse_listen(&long, dir).unwrap_err().contains("107 bytes"));
    }

    #[test]
    fn wildcard_collides_with_its_port_only() {
        let tcp = |s: &str| ListenAddress::Tcp(s.parse().unwrap());
        assert!(collide(&tcp("0.0.0.0:80"), &tcp("127.0.0.1:80")));
        assert!(collide(&tcp("127.0.0.1:80"), &tcp("127.0.0.1:80")));
        assert!(!collide(&tcp("127.0.0.1:80"), &tcp("127.0.0.2:80")));
        assert!(!collide(&tcp("127.0.0.1:80"), &tcp("127.0.0.1:81")));
        assert!(!collide(&tcp("127.0.0.1:0"), &tcp("127.0.0.1:0")));
    }
}
