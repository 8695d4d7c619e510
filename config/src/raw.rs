//! The file as written: serde types that keep every value's span and reject unknown
//! keys. Nothing here is interpreted; the resolver does that, so it can report every
//! bad value with its place, field and a suggestion.
//!
//! Values that have several accepted spellings (a duration, a size, a signal, a
//! command, a listen entry) get small visitor types so a wrong TOML type is reported
//! as "expected a duration such as "90s"" rather than with Rust type names.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use toml::Spanned;

pub(crate) type Sp<T> = Spanned<T>;

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub supervisor: Option<Sp<RawSupervisor>>,
    pub store: Option<Sp<RawStore>>,
    #[serde(default)]
    pub app: Vec<Sp<RawApp>>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSupervisor {
    pub state_dir: Option<Sp<String>>,
    pub log_max_size: Option<Sp<RawSize>>,
    pub log_keep: Option<Sp<i64>>,
    pub events_max_size: Option<Sp<RawSize>>,
    pub events_keep: Option<Sp<i64>>,
    pub memory_pressure: Option<Sp<RawMemoryPressure>>,
    pub metrics: Option<Sp<String>>,
    pub metrics_public: Option<Sp<bool>>,
    pub sample_interval: Option<Sp<RawDuration>>,
    pub history_max_size: Option<Sp<RawSize>>,
    pub history_retention: Option<Sp<RawDuration>>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMemoryPressure {
    pub min_available: Option<Sp<RawSize>>,
    pub psi_some_avg10: Option<Sp<f64>>,
    pub cooldown: Option<Sp<RawDuration>>,
    pub interval: Option<Sp<RawDuration>>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStore {
    pub backend: Option<Sp<String>>,
    pub url: Option<Sp<String>>,
    pub tcp: Option<Sp<String>>,
    pub persist: Option<Sp<String>>,
    pub max_memory: Option<Sp<RawSize>>,
    pub max_value_size: Option<Sp<RawSize>>,
    pub max_clients: Option<Sp<i64>>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawApp {
    pub name: Option<Sp<String>>,
    pub command: Option<Sp<RawCommand>>,
    pub cwd: Option<Sp<String>>,
    pub env: Option<Sp<BTreeMap<Sp<String>, Sp<String>>>>,
    pub processes: Option<Sp<i64>>,
    pub listen: Option<Sp<Vec<Sp<RawListen>>>>,
    pub ready: Option<Sp<String>>,
    pub recycle: Option<Sp<RawRecycle>>,
    pub failure: Option<Sp<RawFailure>>,
    pub watch: Option<Sp<RawWatch>>,
    pub health: Option<Sp<RawHealth>>,
    pub sessions: Option<Sp<RawSessions>>,
    pub user: Option<Sp<String>>,
    pub group: Option<Sp<String>>,
    pub groups: Option<Sp<Vec<Sp<String>>>>,
    pub umask: Option<Sp<String>>,
    pub rlimits: Option<Sp<RawRlimits>>,
    pub secret_env: Option<Sp<Vec<Sp<String>>>>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRlimits {
    pub nofile: Option<Sp<i64>>,
    pub core: Option<Sp<i64>>,
    pub nproc: Option<Sp<i64>>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRecycle {
    pub overlapped: Option<Sp<bool>>,
    pub batch: Option<Sp<RawBatch>>,
    pub startup_timeout: Option<Sp<RawDuration>>,
    pub shutdown_timeout: Option<Sp<RawDuration>>,
    pub stop_signal: Option<Sp<RawSignal>>,
    pub private_memory: Option<Sp<RawSize>>,
    pub virtual_memory: Option<Sp<RawSize>>,
    pub rss: Option<Sp<RawSize>>,
    pub memory_check_interval: Option<Sp<RawDuration>>,
    pub memory_hard_limit: Option<Sp<RawSize>>,
    pub requests: Option<Sp<i64>>,
    pub requests_jitter: Option<Sp<i64>>,
    pub interval: Option<Sp<RawDuration>>,
    pub interval_jitter: Option<Sp<RawDuration>>,
    pub schedule: Option<Sp<Vec<Sp<String>>>>,
    pub idle_timeout: Option<Sp<RawDuration>>,
    pub app_memory: Option<Sp<RawSize>>,
    pub pressure_candidate: Option<Sp<bool>>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFailure {
    pub rapid_fail_max_crashes: Option<Sp<i64>>,
    pub rapid_fail_interval: Option<Sp<RawDuration>>,
    pub backoff_initial: Option<Sp<RawDuration>>,
    pub backoff_max: Option<Sp<RawDuration>>,
    pub stable_uptime: Option<Sp<RawDuration>>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWatch {
    pub enabled: Option<Sp<bool>>,
    pub paths: Option<Sp<Vec<Sp<String>>>>,
    pub code_dir: Option<Sp<String>>,
    pub ignore: Option<Sp<Vec<Sp<String>>>>,
    pub debounce: Option<Sp<RawDuration>>,
    pub max_wait: Option<Sp<RawDuration>>,
    pub compare: Option<Sp<String>>,
    pub soft: Option<Sp<Vec<Sp<String>>>>,
    pub soft_signal: Option<Sp<RawSignal>>,
    pub soft_changes_before_recycle: Option<Sp<i64>>,
    pub poll: Option<Sp<RawDuration>>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHealth {
    pub watchdog: Option<Sp<RawDuration>>,
    pub http_probe: Option<Sp<RawHttpProbe>>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHttpProbe {
    pub path: Option<Sp<String>>,
    pub interval: Option<Sp<RawDuration>>,
    pub timeout: Option<Sp<RawDuration>>,
    pub failures: Option<Sp<i64>>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSessions {
    pub mode: Option<Sp<String>>,
    pub timeout: Option<Sp<RawDuration>>,
}

/// A value written either as a string or as an integer; `K` says what it is for, so
/// a wrong type reads "expected a duration such as "90s"".
#[derive(Debug)]
pub(crate) struct StrOrInt<K> {
    pub value: Scalar,
    kind: PhantomData<K>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Scalar {
    Str(String),
    Int(i64),
}

impl<K> StrOrInt<K> {
    fn new(value: Scalar) -> Self {
        StrOrInt {
            value,
            kind: PhantomData,
        }
    }
}

pub(crate) trait Kind {
    const EXPECTING: &'static str;
}

#[derive(Debug)]
pub(crate) struct DurationKind;
impl Kind for DurationKind {
    const EXPECTING: &'static str = "a duration string such as \"90s\", \"5m\" or \"500ms\"";
}

#[derive(Debug)]
pub(crate) struct SizeKind;
impl Kind for SizeKind {
    const EXPECTING: &'static str = "a size such as \"512MiB\" or a number of bytes";
}

#[derive(Debug)]
pub(crate) struct SignalKind;
impl Kind for SignalKind {
    const EXPECTING: &'static str = "a signal name such as \"SIGTERM\" or a signal number";
}

#[derive(Debug)]
pub(crate) struct BatchKind;
impl Kind for BatchKind {
    const EXPECTING: &'static str =
        "a number of workers such as 4, or a share of `processes` such as \"25%\"";
}

pub(crate) type RawDuration = StrOrInt<DurationKind>;
pub(crate) type RawBatch = StrOrInt<BatchKind>;
pub(crate) type RawSize = StrOrInt<SizeKind>;
pub(crate) type RawSignal = StrOrInt<SignalKind>;

impl<'de, K: Kind> Deserialize<'de> for StrOrInt<K> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<K>(PhantomData<K>);
        impl<K: Kind> Visitor<'_> for V<K> {
            type Value = StrOrInt<K>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(K::EXPECTING)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(StrOrInt::new(Scalar::Str(v.to_owned())))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(StrOrInt::new(Scalar::Int(v)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                i64::try_from(v)
                    .map(|v| StrOrInt::new(Scalar::Int(v)))
                    .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// `command = ["prog", "arg"]`, or (wrongly) `command = "prog arg"`, kept so the
/// resolver can suggest the array form.
#[derive(Debug)]
pub(crate) enum RawCommand {
    Argv(Vec<Sp<String>>),
    Text(String),
}

impl<'de> Deserialize<'de> for RawCommand {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawCommand;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of strings such as [\"python3\", \"app.py\"]")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(RawCommand::Text(v.to_owned()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut argv = Vec::new();
                while let Some(arg) = seq.next_element()? {
                    argv.push(arg);
                }
                Ok(RawCommand::Argv(argv))
            }
        }
        d.deserialize_any(V)
    }
}

/// `"tcp://127.0.0.1:8080"` or `{ address = "…", name = "admin" }`.
#[derive(Debug)]
pub(crate) enum RawListen {
    Address(String),
    Table(RawListenTable),
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawListenTable {
    pub address: Option<Sp<String>>,
    pub name: Option<Sp<String>>,
}

impl<'de> Deserialize<'de> for RawListen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawListen;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "an address such as \"tcp://127.0.0.1:8080\" or \"unix:app.sock\", \
                     or a table { address = \"…\", name = \"…\" }",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(RawListen::Address(v.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                RawListenTable::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawListen::Table)
            }
        }
        d.deserialize_any(V)
    }
}
