//! Where session state lives ([`SessionMode`]) and the resolved settings a
//! [`Sessions`](super::Sessions) is built from ([`SessionsConfig`]), read
//! from the environment appvisor gives each worker.

use std::fmt;
use std::time::Duration;

use super::error::SessionError;
use appvisor_contract as contract;

/// The variable appvisor fills from `[app.sessions] mode`.
pub const MODE_VAR: &str = contract::env::APPVISOR_SESSION_MODE;
/// The variable appvisor fills from `[app.sessions] timeout`, in milliseconds.
pub const TIMEOUT_VAR: &str = contract::env::APPVISOR_SESSION_TIMEOUT_MS;
/// The Redis URL (with this app's credentials) of the session store.
pub const STORE_URL_VAR: &str = contract::env::APPVISOR_STORE_URL;
/// The app's name; used in the key prefix so apps can share one real Redis.
pub const APP_VAR: &str = contract::env::APPVISOR_APP;
/// The pids of the app's workers still alive when this one was spawned (the
/// ones it replaces), comma-separated; a `handoff` worker waits for their
/// sessions before reading the store.
pub const PREDECESSORS_VAR: &str = contract::env::APPVISOR_PREDECESSORS;

/// How long a `handoff` worker's store reads wait at most for its
/// predecessors to hand off (see [`SessionsConfig::predecessor_wait`]).
pub const DEFAULT_PREDECESSOR_WAIT: Duration = Duration::from_secs(10);

/// ASP.NET's default, kept: 20 minutes, sliding.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// Where a session lives while requests use it, and what survives what.
///
/// | mode | during a request | survives a recycle | survives a crash |
/// |---|---|---|---|
/// | `inproc` | worker memory | no | no |
/// | `handoff` | worker memory, dirty ones flushed to the store on drain | yes | no |
/// | `store` | written through to the store when each request ends | yes | yes |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SessionMode {
    /// Memory only, like ASP.NET InProc: a recycle logs everybody out.
    Inproc,
    /// Memory while the worker lives; [`Sessions::drain`](super::Sessions::drain)
    /// hands every changed session to the store for the next generation.
    Handoff,
    /// Every successful request's changes are written to the store before it
    /// answers.
    Store,
}

impl SessionMode {
    /// The spelling used in `appvisor.toml` and `APPVISOR_SESSION_MODE`.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionMode::Inproc => "inproc",
            SessionMode::Handoff => "handoff",
            SessionMode::Store => "store",
        }
    }

    /// Parses `inproc`, `handoff` or `store` (ASCII case ignored).
    pub fn parse(value: &str) -> Result<Self, SessionError> {
        match value.trim().to_ascii_lowercase().as_str() {
            "inproc" => Ok(SessionMode::Inproc),
            "handoff" => Ok(SessionMode::Handoff),
            "store" => Ok(SessionMode::Store),
            _ => Err(SessionError::BadMode {
                value: value.to_owned(),
            }),
        }
    }

    /// Whether this mode reads or writes the store at all.
    pub fn uses_store(self) -> bool {
        !matches!(self, SessionMode::Inproc)
    }
}

impl fmt::Display for SessionMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything a [`Sessions`](super::Sessions) needs, resolved.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionsConfig {
    /// Where sessions live.
    pub mode: SessionMode,
    /// Sliding expiry: every load and every write renews it.
    pub timeout: Duration,
    /// Redis URL of the store; `None` is only valid for `inproc`.
    pub store_url: Option<String>,
    /// Prefix of every store key. Decision: `"{APPVISOR_APP}:s:"` when the app
    /// name is known, else `"s:"`. The embedded store already keeps each app
    /// in its own namespace, so the app part is redundant there; it is what
    /// keeps apps apart when several share one real Redis or Valkey, and using
    /// the same key shape everywhere means switching stores changes one URL.
    pub key_prefix: String,
    /// `handoff` mode: the workers this one replaces, from
    /// `APPVISOR_PREDECESSORS`. Until each has exited or marked its sessions
    /// flushed, a store read waits; until each has exited, this worker
    /// writes through instead of keeping sessions in memory. Ignored by the
    /// other modes.
    pub predecessors: Vec<u32>,
    /// The most a store read waits for the predecessors, counted from the
    /// first wait; then reads go on and a warning is printed once. Default
    /// [`DEFAULT_PREDECESSOR_WAIT`].
    pub predecessor_wait: Duration,
    /// The process id this worker's handoff marker is written under; its
    /// successor finds that pid in its own `APPVISOR_PREDECESSORS`. This
    /// process's id by default; a test playing two generations in one
    /// process gives the old one a stand-in pid.
    pub pid: u32,
}

impl fmt::Debug for SessionsConfig {
    // The URL carries the app's store password: never print it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionsConfig")
            .field("mode", &self.mode)
            .field("timeout", &self.timeout)
            .field("store_url", &self.store_url.as_deref().map(redact_url))
            .field("key_prefix", &self.key_prefix)
            .field("predecessors", &self.predecessors)
            .field("predecessor_wait", &self.predecessor_wait)
            .field("pid", &self.pid)
            .finish()
    }
}

impl SessionsConfig {
    /// A config with the default key prefix `s:`.
    pub fn new(store_url: Option<&str>, mode: SessionMode, timeout: Duration) -> Self {
        SessionsConfig {
            mode,
            timeout,
            store_url: store_url.map(str::to_owned),
            key_prefix: "s:".to_owned(),
            predecessors: Vec::new(),
            predecessor_wait: DEFAULT_PREDECESSOR_WAIT,
            pid: std::process::id(),
        }
    }

    /// Reads `APPVISOR_SESSION_MODE`, `APPVISOR_SESSION_TIMEOUT_MS`,
    /// `APPVISOR_STORE_URL`, `APPVISOR_APP` and `APPVISOR_PREDECESSORS`.
    ///
    /// With no mode set, the mode is `handoff` when a store URL is present
    /// (appvisor's default) and `inproc` otherwise, so the same binary also
    /// runs with `cargo run` outside appvisor.
    pub fn from_env() -> Result<Self, SessionError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// [`from_env`](Self::from_env) over any variable source (tests use a map).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, SessionError> {
        let store_url = lookup(STORE_URL_VAR).filter(|url| !url.trim().is_empty());
        let mode = match lookup(MODE_VAR).filter(|v| !v.trim().is_empty()) {
            Some(value) => SessionMode::parse(&value)?,
            None if store_url.is_some() => SessionMode::Handoff,
            None => SessionMode::Inproc,
        };
        let timeout = match lookup(TIMEOUT_VAR).filter(|v| !v.trim().is_empty()) {
            Some(value) => match value.trim().parse::<u64>() {
                Ok(ms) if ms > 0 => Duration::from_millis(ms),
                _ => {
                    return Err(SessionError::BadTimeout {
                        var: TIMEOUT_VAR,
                        value,
                    })
                }
            },
            None => DEFAULT_TIMEOUT,
        };
        let key_prefix = match lookup(APP_VAR).filter(|app| !app.is_empty()) {
            Some(app) => format!("{app}:s:"),
            None => "s:".to_owned(),
        };
        let predecessors = match lookup(PREDECESSORS_VAR) {
            Some(value) => parse_pids(&value).ok_or(SessionError::BadPredecessors { value })?,
            None => Vec::new(),
        };
        Ok(SessionsConfig {
            mode,
            timeout,
            store_url,
            key_prefix,
            predecessors,
            predecessor_wait: DEFAULT_PREDECESSOR_WAIT,
            pid: std::process::id(),
        })
    }
}

/// `4121,4122` (blanks around items allowed, empty means none) as pids;
/// `None` when any item is not a pid of 1 ..= i32::MAX (0 and negatives
/// would name process groups).
fn parse_pids(value: &str) -> Option<Vec<u32>> {
    if value.trim().is_empty() {
        return Some(Vec::new());
    }
    value
        .split(',')
        .map(|item| {
            item.trim()
                .parse::<u32>()
                .ok()
                .filter(|pid| (1..=i32::MAX as u32).contains(pid))
        })
        .collect()
}

/// The URL with its password hidden, fit for error messages and logs.
///
/// Handles both `redis://user:pass@host` and the unix form's `?pass=…` query.
pub fn redact_url(url: &str) -> String {
    let mut out = url.to_owned();
    // userinfo password: scheme://user:PASS@host
    if let Some(scheme_end) = out.find("://") {
        let rest_start = scheme_end + 3;
        let authority_end = out[rest_start..]
            .find(['/', '?', '#'])
            .map_or(out.len(), |i| rest_start + i);
        if let Some(at) = out[rest_start..authority_end].rfind('@') {
            let at = rest_start + at;
            if let Some(colon) = out[rest_start..at].find(':') {
                out.replace_range(rest_start + colon + 1..at, "***");
            }
        }
    }
    // query password: ?pass=PASS&…  /  &password=…
    if let Some(q) = out.find('?') {
        let (head, query) = out.split_at(q + 1);
        let redacted: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) if k == "pass" || k == "password" => format!("{k}=***"),
                _ => pair.to_owned(),
            })
            .collect();
        out = format!("{head}{}", redacted.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<SessionsConfig, SessionError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        SessionsConfig::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_follow_the_store_url() {
        let c = config(&[]).unwrap();
        assert_eq!(c.mode, SessionMode::Inproc);
        assert_eq!(c.timeout, DEFAULT_TIMEOUT);
        assert_eq!(c.key_prefix, "s:");
        let c = config(&[(STORE_URL_VAR, "unix:///x.sock"), (APP_VAR, "shop")]).unwrap();
        assert_eq!(c.mode, SessionMode::Handoff);
        assert_eq!(c.key_prefix, "shop:s:");
    }

    #[test]
    fn bad_values_name_the_variable() {
        let e = config(&[(MODE_VAR, "sticky")]).unwrap_err().to_string();
        assert!(e.contains("APPVISOR_SESSION_MODE=\"sticky\""), "{e}");
        let e = config(&[(TIMEOUT_VAR, "20m")]).unwrap_err().to_string();
        assert!(e.contains("APPVISOR_SESSION_TIMEOUT_MS=\"20m\""), "{e}");
        assert!(config(&[(TIMEOUT_VAR, "0")]).is_err());
        let c = config(&[(MODE_VAR, "Store"), (TIMEOUT_VAR, "1500")]).unwrap();
        assert_eq!(c.mode, SessionMode::Store);
        assert_eq!(c.timeout, Duration::from_millis(1500));
    }

    #[test]
    fn predecessors_are_pids_or_a_clear_error() {
        assert!(config(&[]).unwrap().predecessors.is_empty());
        assert!(config(&[(PREDECESSORS_VAR, "")])
            .unwrap()
            .predecessors
            .is_empty());
        let c = config(&[(PREDECESSORS_VAR, "4121, 4122")]).unwrap();
        assert_eq!(c.predecessors, vec![4121, 4122]);
        assert_eq!(c.pid, std::process::id());
        for bad in ["0", "-1", "12,", "a", "4294967295"] {
            let e = config(&[(PREDECESSORS_VAR, bad)]).unwrap_err().to_string();
            assert!(e.contains("APPVISOR_PREDECESSORS="), "{bad}: {e}");
        }
    }

    #[test]
    fn passwords_never_print() {
        assert_eq!(
            redact_url("redis://app:s3cret@127.0.0.1:6379/0"),
            "redis://app:***@127.0.0.1:6379/0"
        );
        assert_eq!(
            redact_url("unix:///run/a/store.sock?user=shop&pass=s3cret&db=0"),
            "unix:///run/a/store.sock?user=shop&pass=***&db=0"
        );
        assert_eq!(redact_url("redis://127.0.0.1"), "redis://127.0.0.1");
        let c = SessionsConfig::new(Some("redis://u:pw@h"), SessionMode::Store, DEFAULT_TIMEOUT);
        assert!(!format!("{c:?}").contains("pw"));
    }
}
