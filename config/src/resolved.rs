//! Resolved configuration: every default filled, every duration, size and path
//! already parsed and absolute. The supervisor only ever sees these types.
//!
//! This file is the interface between `appvisor-config` and the rest of the
//! workspace: change it only in agreement with its users.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A whole, validated `appvisor.toml`.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Absolute path of the file this was read from (the control socket and the
    /// CLI find the running supervisor through it).
    pub path: PathBuf,
    pub supervisor: SupervisorConfig,
    pub store: StoreConfig,
    pub apps: Vec<AppConfig>,
    /// What percentage limits (`"25%"`) were resolved against, if the caller gave it
    /// (see [`crate::parse_with`]).
    pub memory_base: Option<MemoryBase>,
}

impl Config {
    /// The app named `name`, if configured.
    pub fn app(&self, name: &str) -> Option<&AppConfig> {
        self.apps.iter().find(|a| a.name == name)
    }
}

/// `[supervisor]`
#[derive(Debug, Clone, PartialEq)]
pub struct SupervisorConfig {
    /// Where the control socket, `events.jsonl`, logs and the store live.
    /// Default: `.appvisor` beside the config file. Always absolute.
    pub state_dir: PathBuf,
    /// A worker log file is rotated once it passes this many bytes (`log_max_size`,
    /// default `"10MiB"`).
    pub log_max_size: u64,
    /// Rotated log files kept per app (`log_keep`, default 5).
    pub log_keep: u32,
    /// `events.jsonl` is rotated (between two lines) before it would pass this many
    /// bytes (`events_max_size`, default `"16MiB"`, at least `"4KiB"`): about
    /// 60,000 events per file.
    pub events_max_size: u64,
    /// Rotated event logs kept, `events.jsonl.1` (newest) … (`events_keep`,
    /// default 5): with the default size, 96 MiB of restart history at most.
    pub events_keep: u32,
    /// `memory_pressure = { … }`: recycle the worker that grew most when memory runs
    /// short. Off (`None`) unless written.
    pub memory_pressure: Option<MemoryPressureConfig>,
    /// `metrics = "127.0.0.1:9464"`: serve Prometheus / OpenMetrics text at
    /// `http://ADDRESS/metrics`. Off (None) by default. A loopback address unless
    /// `metrics_public = true`: the page has no authentication and names every app.
    pub metrics: Option<SocketAddr>,
    /// `metrics_public = true`: a non-loopback `metrics` address is allowed.
    pub metrics_public: bool,
    /// Every worker's memory, CPU time and requests are sampled this often into the
    /// app's history (`sample_interval`, default 1 s; 100 ms to 1 h).
    pub sample_interval: Duration,
    /// The history files of one app never take more than this on disk: past it the
    /// oldest are deleted (`history_max_size`, default `"64MiB"`, at least 1 MiB).
    pub history_max_size: u64,
    /// History older than this is deleted (`history_retention`, default 7 days,
    /// at least 1 h).
    pub history_retention: Duration,
}

/// `[supervisor] memory_pressure`: graceful recycling before the kernel's OOM killer
/// has to act. At least one of the two thresholds is set.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryPressureConfig {
    /// Recycle when the memory available to the supervisor's cgroup (or the machine)
    /// falls below this many bytes.
    pub min_available: Option<u64>,
    /// Set when `min_available` was written as a percentage.
    pub min_available_share: Option<MemoryShare>,
    /// Recycle when PSI `some avg10` of memory passes this (percent of time stalled).
    pub psi_some_avg10: Option<f64>,
    /// After a pressure recycle, wait this long before choosing another (default 30 s):
    /// the freed memory needs a moment to show.
    pub cooldown: Duration,
    /// How often available memory and PSI are read (default 1 s).
    pub interval: Duration,
}

/// The memory this supervisor may use: what percentage limits are shares of.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryBase {
    pub bytes: u64,
    pub source: MemorySource,
}

/// Where a [`MemoryBase`] came from.
#[derive(Debug, Clone, PartialEq)]
pub enum MemorySource {
    /// The tightest `memory.max` (cgroup v2) up the supervisor's cgroup path.
    CgroupV2 { path: PathBuf },
    /// The tightest `memory.limit_in_bytes` (cgroup v1) up the supervisor's path.
    CgroupV1 { path: PathBuf },
    /// No cgroup limit: the machine's physical memory.
    Physical,
}

impl MemoryBase {
    /// `512 MiB, cgroup limit` / `23.5 GiB, physical memory`.
    pub fn describe(&self) -> String {
        let what = match self.source {
            MemorySource::CgroupV2 { .. } | MemorySource::CgroupV1 { .. } => "cgroup limit",
            MemorySource::Physical => "physical memory",
        };
        format!("{}, {what}", human_bytes(self.bytes))
    }
}

/// A limit written as a percentage, with what it resolved to.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryShare {
    /// The key it was written for: `private_memory`, `rss`, `memory_hard_limit`,
    /// `app_memory`, `min_available`.
    pub key: &'static str,
    pub percent: f64,
    pub bytes: u64,
    /// [`MemoryBase::describe`] of what it is a share of.
    pub of: String,
}

impl MemoryShare {
    /// `25 % of 512 MiB, cgroup limit`.
    pub fn describe(&self) -> String {
        format!("{} % of {}", self.percent, self.of)
    }
}

/// `512 MiB`, `1.5 GiB`, `300 KiB`: for people, not for parsing.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: &[(&str, u64)] = &[
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (unit, scale) in UNITS {
        if bytes >= *scale {
            let v = bytes as f64 / *scale as f64;
            return if (v - v.round()).abs() < 0.05 {
                format!("{} {unit}", v.round())
            } else {
                format!("{v:.1} {unit}")
            };
        }
    }
    format!("{bytes} B")
}

/// `[store]`: where session state lives.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreConfig {
    pub backend: StoreBackend,
}

#[derive(Debug, Clone, PartialEq)]
pub enum StoreBackend {
    /// `backend = "embedded"` (default): the supervisor serves the Redis protocol on
    /// `<state_dir>/store.sock`.
    Embedded(EmbeddedStore),
    /// `backend = "redis"`, `url = "redis://…"`: workers get this URL instead.
    Redis { url: String },
}

#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddedStore {
    /// `tcp = "127.0.0.1:6390"`: also listen on TCP (AUTH is then mandatory).
    pub tcp: Option<SocketAddr>,
    /// `persist = "everysec" | "always" | "no"`.
    pub persist: Persist,
    /// `max_memory = "1GiB"`: past it writes are refused (Redis `noeviction`).
    /// Replies queued for clients that have not read them count too. None (not
    /// set) is the embedded store's default, resolved by the store, not here:
    /// a quarter of the machine's memory, at most 1 GiB
    /// (`appvisor_store::default_max_memory`). `check` shows None as unset.
    pub max_memory: Option<u64>,
    /// `max_value_size`, default `"1MiB"`.
    pub max_value_size: u64,
    /// `max_clients`, default 10000.
    pub max_clients: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persist {
    EverySec,
    Always,
    No,
}

/// One `[[app]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct AppConfig {
    pub name: String,
    /// argv, never run through a shell. `command[0]` is looked up in `PATH` if it has
    /// no slash, otherwise resolved against `cwd`.
    pub command: Vec<String>,
    /// Absolute working directory (default: the config file's directory).
    pub cwd: PathBuf,
    /// Extra environment for every worker. Never holds a name appvisor sets itself
    /// ([`appvisor_contract::env::is_reserved`]): validation refuses those.
    pub env: BTreeMap<String, String>,
    /// Worker processes (default 1).
    pub processes: u32,
    pub listen: Vec<Listen>,
    pub ready: ReadyCheck,
    pub recycle: RecycleConfig,
    pub failure: FailureConfig,
    pub watch: WatchConfig,
    pub health: HealthConfig,
    pub sessions: SessionsConfig,
    /// Who the workers run as, their limits and umask.
    pub process: ProcessConfig,
    /// Names in `env` whose values are secret: `check` and `status` show
    /// `(redacted)` instead.
    pub secret_env: Vec<String>,
}

/// What a worker process is made of beyond its command: credentials (applied only
/// when appvisor runs as root), resource limits and umask, all set in the child
/// between fork and exec.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProcessConfig {
    /// `user`: the name as written and its uid.
    pub user: Option<(String, u32)>,
    /// `group` (default: the user's primary group): the name and its gid.
    pub group: Option<(String, u32)>,
    /// Supplementary groups: `groups` if given, else the user's groups from the
    /// group database (as `initgroups` does), else only `group`.
    pub groups: Option<Vec<u32>>,
    /// `umask`, e.g. `"027"`.
    pub umask: Option<u32>,
    /// `[app.rlimits]`: soft and hard limits set to these values.
    pub nofile: Option<u64>,
    pub core: Option<u64>,
    pub nproc: Option<u64>,
}

/// One entry of `listen`: `"tcp://127.0.0.1:8080"`, `"unix:/path.sock"`, or a table
/// `{ address = "tcp://…", name = "admin" }`.
#[derive(Debug, Clone, PartialEq)]
pub struct Listen {
    pub address: ListenAddress,
    /// Passed in `LISTEN_FDNAMES`; default: the app's name (as systemd uses the unit name).
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddress {
    Tcp(SocketAddr),
    /// Absolute path of a unix stream socket.
    Unix(PathBuf),
}

impl std::fmt::Display for ListenAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddress::Tcp(a) => write!(f, "tcp://{a}"),
            ListenAddress::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// `ready = "notify" | "http:/healthz" | "delay:500ms"`.
#[derive(Debug, Clone, PartialEq)]
pub enum ReadyCheck {
    /// sd_notify `READY=1` (default).
    Notify,
    /// An HTTP GET of this path on the app's first TCP listen address answers 2xx.
    Http { path: String },
    /// Ready after a fixed delay.
    Delay(Duration),
}

/// `[app.recycle] batch`: how many workers an overlapped recycle replaces at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RecycleBatch {
    /// `batch = 4`
    Workers(u32),
    /// `batch = "25%"`: a share of the app's workers, rounded up.
    Share(f64),
}

impl Default for RecycleBatch {
    /// A quarter of the workers, as a Kubernetes rolling update's default surge:
    /// one at a time up to 4 workers, 8 at a time of 32.
    fn default() -> Self {
        RecycleBatch::Share(25.0)
    }
}

impl RecycleBatch {
    /// Workers at once for an app of `processes` workers: at least 1, at most all.
    pub fn of(self, processes: usize) -> usize {
        let n = match self {
            RecycleBatch::Workers(n) => n as usize,
            RecycleBatch::Share(p) => (processes as f64 * p / 100.0).ceil() as usize,
        };
        n.clamp(1, processes.max(1))
    }
}

/// A signal by name and number, e.g. `"SIGTERM"` (15). Linux numbering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signal {
    pub name: &'static str,
    pub number: i32,
}

/// `[app.recycle]`
#[derive(Debug, Clone, PartialEq)]
pub struct RecycleConfig {
    /// Start the next generation before stopping the old one (default true).
    pub overlapped: bool,
    /// How many new workers an overlapped recycle starts at once (default 25 % of
    /// `processes`, rounded up: one at a time up to 4 workers).
    pub batch: RecycleBatch,
    /// Default 90 s (IIS startupTimeLimit).
    pub startup_timeout: Duration,
    /// Default 90 s (IIS shutdownTimeLimit); then the process group is SIGKILLed.
    pub shutdown_timeout: Duration,
    /// Default SIGTERM.
    pub stop_signal: Signal,
    /// Private bytes of the worker's process tree (Private_Clean + Private_Dirty).
    pub private_memory: Option<u64>,
    /// Virtual size of the worker's process tree.
    pub virtual_memory: Option<u64>,
    /// Resident set size of the worker's process tree.
    pub rss: Option<u64>,
    /// Default 1 s.
    pub memory_check_interval: Duration,
    /// Past this (private bytes), kill at once without a drain.
    pub memory_hard_limit: Option<u64>,
    /// Recycle after this many requests (`X_APPVISOR_REQUESTS`).
    pub requests: Option<u64>,
    /// Each worker's limit gets a random extra in `0..=requests_jitter`.
    pub requests_jitter: u64,
    /// Recycle after this age.
    pub interval: Option<Duration>,
    /// Each worker's interval gets a random extra in `0..=interval_jitter`.
    pub interval_jitter: Duration,
    /// Times of day (local) at which to recycle.
    pub schedule: Vec<TimeOfDay>,
    /// Stop workers after this long without connections; start on demand.
    pub idle_timeout: Option<Duration>,
    /// Private bytes summed over all the app's workers; over it, the worker that grew
    /// most since it started is recycled (`app_memory`).
    pub app_memory: Option<u64>,
    /// May `[supervisor] memory_pressure` recycle this app's workers? Default: only
    /// when `overlapped` (a pressure recycle must not cost capacity).
    pub pressure_candidate: bool,
    /// The memory limits above that were written as percentages.
    pub memory_shares: Vec<MemoryShare>,
}

impl RecycleConfig {
    /// How `key`'s limit was written, if as a percentage.
    pub fn share(&self, key: &str) -> Option<&MemoryShare> {
        self.memory_shares.iter().find(|s| s.key == key)
    }
}

/// `"03:00"` or `"15:30:10"`, local time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TimeOfDay {
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
}

impl std::fmt::Display for TimeOfDay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:02}:{:02}", self.hour, self.minute)?;
        if self.second != 0 {
            write!(f, ":{:02}", self.second)?;
        }
        Ok(())
    }
}

/// `[app.failure]`
#[derive(Debug, Clone, PartialEq)]
pub struct FailureConfig {
    /// Default 5 (IIS rapidFailProtectionMaxCrashes).
    pub rapid_fail_max_crashes: u32,
    /// Default 5 min (IIS rapidFailProtectionInterval).
    pub rapid_fail_interval: Duration,
    /// The delay before the restart after the second failure in a row (default
    /// 100 ms); it doubles with each further one. The first crash of a serving
    /// worker restarts at once; a startup failure waits at least this.
    pub backoff_initial: Duration,
    /// Default 30 s.
    pub backoff_max: Duration,
    /// A worker up this long resets the backoff, so its crash restarts at once
    /// (default 30 s).
    pub stable_uptime: Duration,
}

/// `[app.watch]`
#[derive(Debug, Clone, PartialEq)]
pub struct WatchConfig {
    /// `enabled` (default true).
    pub enabled: bool,
    /// Globs relative to the app's cwd. Default: the ASP.NET set (`web.config`,
    /// `*.config`, `appsettings*.json`, `.env`, `config/**`, `global.*`, `bin/**`) plus
    /// `<code_dir>/**`; a `paths` key replaces the whole list.
    pub paths: Vec<String>,
    /// `code_dir` (default `"App_Code"`), relative to cwd; only adds `<code_dir>/**`
    /// to the default `paths`.
    pub code_dir: String,
    /// Globs: the user's list merged with the defaults.
    pub ignore: Vec<String>,
    /// Quiet period before acting (default 200 ms).
    pub debounce: Duration,
    /// Cap from the first change (default 2 s).
    pub max_wait: Duration,
    pub compare: Compare,
    /// Globs whose changes send `soft_signal` instead of recycling.
    pub soft: Vec<String>,
    /// Default SIGHUP.
    pub soft_signal: Signal,
    /// Default 15 (ASP.NET numRecompilesBeforeAppRestart).
    pub soft_changes_before_recycle: u32,
    /// Poll at this interval instead of inotify (NFS).
    pub poll: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compare {
    Content,
    Mtime,
}

/// `[app.health]`
#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    /// Expect sd_notify `WATCHDOG=1` at least this often.
    pub watchdog: Option<Duration>,
    pub http_probe: Option<HttpProbe>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HttpProbe {
    pub path: String,
    /// Default 30 s.
    pub interval: Duration,
    /// Default 5 s.
    pub timeout: Duration,
    /// Consecutive failures before `unhealthy` (default 3).
    pub failures: u32,
}

/// `[app.sessions]`
#[derive(Debug, Clone, PartialEq)]
pub struct SessionsConfig {
    pub mode: SessionMode,
    /// Sliding expiry (default 20 min).
    pub timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionMode {
    Inproc,
    Handoff,
    Store,
}

impl SessionMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionMode::Inproc => "inproc",
            SessionMode::Handoff => "handoff",
            SessionMode::Store => "store",
        }
    }
}
