//! Print a resolved [`Config`] as TOML with every default written out, for
//! `appvisor check`. The output is itself a valid config that resolves to the same
//! [`Config`] (the tests check this round trip), so a user can copy it as a start.

use std::fmt::{self, Write};

use crate::duration::format_duration;
use crate::resolved::*;
use crate::size::format_size;

/// What `check` prints instead of a secret env value.
pub const REDACTED: &str = "(redacted)";

impl Config {
    /// The whole config, defaults included, as TOML.
    pub fn to_toml_string(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = self.write_toml(&mut out);
        out
    }

    fn write_toml(&self, o: &mut String) -> fmt::Result {
        writeln!(
            o,
            "# {} (resolved: every default filled in)",
            self.path.display()
        )?;
        writeln!(o)?;
        let s = &self.supervisor;
        writeln!(o, "[supervisor]")?;
        writeln!(o, "state_dir = {}", q(&s.state_dir.to_string_lossy()))?;
        writeln!(o, "log_max_size = {}", q(&format_size(s.log_max_size)))?;
        writeln!(o, "log_keep = {}", s.log_keep)?;
        writeln!(
            o,
            "events_max_size = {}",
            q(&format_size(s.events_max_size))
        )?;
        writeln!(o, "events_keep = {}", s.events_keep)?;
        match &s.memory_pressure {
            None => writeln!(o, "# memory_pressure = (off)")?,
            Some(p) => {
                let mut keys = Vec::new();
                if let Some(m) = p.min_available {
                    keys.push(match &p.min_available_share {
                        Some(share) => {
                            format!("min_available = {}", q(&format!("{}%", share.percent)))
                        }
                        None => format!("min_available = {}", q(&format_size(m))),
                    });
                }
                if let Some(v) = p.psi_some_avg10 {
                    keys.push(format!("psi_some_avg10 = {v:?}"));
                }
                keys.push(format!("cooldown = {}", dur(p.cooldown)));
                keys.push(format!("interval = {}", dur(p.interval)));
                writeln!(o, "memory_pressure = {{ {} }}", keys.join(", "))?;
                if let (Some(m), Some(share)) = (p.min_available, &p.min_available_share) {
                    writeln!(
                        o,
                        "# min_available: {} = {}",
                        share.describe(),
                        format_size(m)
                    )?;
                }
            }
        }
        if let Some(m) = s.metrics {
            writeln!(o, "metrics = {}", q(&m.to_string()))?;
        }
        if s.metrics_public {
            writeln!(o, "metrics_public = true")?;
        }
        writeln!(
            o,
            "sample_interval = {}",
            q(&format_duration(s.sample_interval))
        )?;
        writeln!(
            o,
            "history_max_size = {}",
            q(&format_size(s.history_max_size))
        )?;
        writeln!(
            o,
            "history_retention = {}",
            q(&format_duration(s.history_retention))
        )?;
        writeln!(o)?;
        writeln!(o, "[store]")?;
        match &self.store.backend {
            StoreBackend::Redis { url } => {
                writeln!(o, "backend = \"redis\"")?;
                writeln!(o, "url = {}", q(&redact_url(url)))?;
            }
            StoreBackend::Embedded(e) => {
                writeln!(o, "backend = \"embedded\"")?;
                if let Some(tcp) = e.tcp {
                    writeln!(o, "tcp = {}", q(&tcp.to_string()))?;
                }
                let persist = match e.persist {
                    Persist::EverySec => "everysec",
                    Persist::Always => "always",
                    Persist::No => "no",
                };
                writeln!(o, "persist = {}", q(persist))?;
                if let Some(m) = e.max_memory {
                    writeln!(o, "max_memory = {}", q(&format_size(m)))?;
                }
                writeln!(o, "max_value_size = {}", q(&format_size(e.max_value_size)))?;
                writeln!(o, "max_clients = {}", e.max_clients)?;
            }
        }
        for app in &self.apps {
            writeln!(o)?;
            app.write_toml(o)?;
        }
        Ok(())
    }
}

impl AppConfig {
    fn write_toml(&self, o: &mut String) -> fmt::Result {
        writeln!(o, "[[app]]")?;
        writeln!(o, "name = {}", q(&self.name))?;
        writeln!(o, "command = {}", list(&self.command))?;
        writeln!(o, "cwd = {}", q(&self.cwd.to_string_lossy()))?;
        writeln!(o, "processes = {}", self.processes)?;
        let listen: Vec<String> = self
            .listen
            .iter()
            .map(|l| {
                format!(
                    "{{ address = {}, name = {} }}",
                    q(&l.address.to_string()),
                    q(&l.name)
                )
            })
            .collect();
        writeln!(o, "listen = [{}]", listen.join(", "))?;
        let ready = match &self.ready {
            ReadyCheck::Notify => "notify".to_owned(),
            ReadyCheck::Http { path } => format!("http:{path}"),
            ReadyCheck::Delay(d) => format!("delay:{}", format_duration(*d)),
        };
        writeln!(o, "ready = {}", q(&ready))?;
        let env: Vec<String> = self
            .env
            .iter()
            .map(|(k, v)| {
                if self.secret_env.contains(k) {
                    format!("{} = {}", key(k), q(REDACTED))
                } else {
                    format!("{} = {}", key(k), q(v))
                }
            })
            .collect();
        if env.is_empty() {
            writeln!(o, "env = {{}}")?;
        } else {
            writeln!(o, "env = {{ {} }}", env.join(", "))?;
        }
        if !self.secret_env.is_empty() {
            writeln!(o, "secret_env = {}", list(&self.secret_env))?;
        }
        let p = &self.process;
        if let Some((name, _)) = &p.user {
            writeln!(o, "user = {}", q(name))?;
        }
        if let Some((name, _)) = &p.group {
            writeln!(o, "group = {}", q(name))?;
        }
        if let Some(groups) = &p.groups {
            let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
            writeln!(o, "groups = {}", list(&groups))?;
        }
        if let Some(m) = p.umask {
            writeln!(o, "umask = \"{m:03o}\"")?;
        }
        if p.nofile.is_some() || p.core.is_some() || p.nproc.is_some() {
            writeln!(o, "\n[app.rlimits]")?;
            for (k, v) in [("nofile", p.nofile), ("core", p.core), ("nproc", p.nproc)] {
                if let Some(v) = v {
                    writeln!(o, "{k} = {v}")?;
                }
            }
        }

        let r = &self.recycle;
        writeln!(o, "\n[app.recycle]")?;
        writeln!(o, "overlapped = {}", r.overlapped)?;
        match r.batch {
            RecycleBatch::Workers(n) => writeln!(o, "batch = {n}")?,
            RecycleBatch::Share(p) => writeln!(o, "batch = {}", q(&format!("{p}%")))?,
        }
        writeln!(o, "startup_timeout = {}", dur(r.startup_timeout))?;
        writeln!(o, "shutdown_timeout = {}", dur(r.shutdown_timeout))?;
        writeln!(o, "stop_signal = {}", q(r.stop_signal.name))?;
        memory(o, r, "private_memory", r.private_memory)?;
        opt_size(o, "virtual_memory", r.virtual_memory)?;
        memory(o, r, "rss", r.rss)?;
        writeln!(
            o,
            "memory_check_interval = {}",
            dur(r.memory_check_interval)
        )?;
        memory(o, r, "memory_hard_limit", r.memory_hard_limit)?;
        memory(o, r, "app_memory", r.app_memory)?;
        writeln!(o, "pressure_candidate = {}", r.pressure_candidate)?;
        match r.requests {
            Some(n) => writeln!(o, "requests = {n}")?,
            None => writeln!(o, "# requests = (off)")?,
        }
        writeln!(o, "requests_jitter = {}", r.requests_jitter)?;
        opt_dur(o, "interval", r.interval)?;
        writeln!(o, "interval_jitter = {}", dur(r.interval_jitter))?;
        let schedule: Vec<String> = r.schedule.iter().map(|t| t.to_string()).collect();
        writeln!(o, "schedule = {}", list(&schedule))?;
        opt_dur(o, "idle_timeout", r.idle_timeout)?;

        let f = &self.failure;
        writeln!(o, "\n[app.failure]")?;
        writeln!(o, "rapid_fail_max_crashes = {}", f.rapid_fail_max_crashes)?;
        writeln!(o, "rapid_fail_interval = {}", dur(f.rapid_fail_interval))?;
        writeln!(o, "backoff_initial = {}", dur(f.backoff_initial))?;
        writeln!(o, "backoff_max = {}", dur(f.backoff_max))?;
        writeln!(o, "stable_uptime = {}", dur(f.stable_uptime))?;

        let w = &self.watch;
        writeln!(o, "\n[app.watch]")?;
        writeln!(o, "enabled = {}", w.enabled)?;
        writeln!(o, "code_dir = {}", q(&w.code_dir))?;
        writeln!(o, "paths = {}", list(&w.paths))?;
        // Only the user's additions: the built-in ignores are merged back in on load.
        let extra: Vec<String> = w
            .ignore
            .iter()
            .filter(|g| !crate::resolve::DEFAULT_WATCH_IGNORE.contains(&g.as_str()))
            .cloned()
            .collect();
        writeln!(
            o,
            "# always ignored as well: {}",
            crate::resolve::DEFAULT_WATCH_IGNORE.join(" ")
        )?;
        writeln!(o, "ignore = {}", list(&extra))?;
        writeln!(o, "debounce = {}", dur(w.debounce))?;
        writeln!(o, "max_wait = {}", dur(w.max_wait))?;
        let compare = match w.compare {
            Compare::Content => "content",
            Compare::Mtime => "mtime",
        };
        writeln!(o, "compare = {}", q(compare))?;
        writeln!(o, "soft = {}", list(&w.soft))?;
        writeln!(o, "soft_signal = {}", q(w.soft_signal.name))?;
        writeln!(
            o,
            "soft_changes_before_recycle = {}",
            w.soft_changes_before_recycle
        )?;
        opt_dur(o, "poll", w.poll)?;

        let h = &self.health;
        writeln!(o, "\n[app.health]")?;
        opt_dur(o, "watchdog", h.watchdog)?;
        if h.http_probe.is_none() {
            writeln!(o, "# http_probe = (off)")?;
        }
        if let Some(p) = &h.http_probe {
            writeln!(
                o,
                "http_probe = {{ path = {}, interval = {}, timeout = {}, failures = {} }}",
                q(&p.path),
                dur(p.interval),
                dur(p.timeout),
                p.failures
            )?;
        }

        let s = &self.sessions;
        writeln!(o, "\n[app.sessions]")?;
        writeln!(o, "mode = {}", q(s.mode.as_str()))?;
        writeln!(o, "timeout = {}", dur(s.timeout))?;
        Ok(())
    }
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_toml_string())
    }
}

/// A TOML basic string, escaped by the toml crate itself.
fn q(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn key(k: &str) -> String {
    if !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        k.to_owned()
    } else {
        q(k)
    }
}

/// `redis://user:secret@host` → `redis://user:(redacted)@host`: `check` output is
/// pasted into tickets and chats.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => match url[s + 3..at].split_once(':') {
            Some((user, _)) => format!("{}{user}:{REDACTED}{}", &url[..s + 3], &url[at..]),
            None => url.to_string(),
        },
        _ => url.to_string(),
    }
}

fn list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| q(s)).collect();
    format!("[{}]", quoted.join(", "))
}

fn dur(d: std::time::Duration) -> String {
    q(&format_duration(d))
}

fn opt_dur(o: &mut String, name: &str, d: Option<std::time::Duration>) -> fmt::Result {
    match d {
        Some(d) => writeln!(o, "{name} = {}", dur(d)),
        None => writeln!(o, "# {name} = (off)"),
    }
}

/// A memory limit as written: a percentage keeps its form (so the output resolves
/// the same way again) with what it resolved to beside it.
fn memory(o: &mut String, r: &RecycleConfig, name: &str, n: Option<u64>) -> fmt::Result {
    match (n, r.share(name)) {
        (Some(n), Some(share)) => writeln!(
            o,
            "{name} = {}  # {} = {}",
            q(&format!("{}%", share.percent)),
            share.describe(),
            format_size(n)
        ),
        _ => opt_size(o, name, n),
    }
}

fn opt_size(o: &mut String, name: &str, n: Option<u64>) -> fmt::Result {
    match n {
        Some(n) => writeln!(o, "{name} = {}", q(&format_size(n))),
        None => writeln!(o, "# {name} = (off)"),
    }
}
