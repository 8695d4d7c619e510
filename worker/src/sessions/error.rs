//! Everything that can go wrong with sessions, each variant naming the
//! variable, URL, key or field involved and saying what to do about it.

use super::mode::SessionMode;

/// Why a session operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// `APPVISOR_SESSION_MODE` holds something other than a known mode.
    #[error(
        "APPVISOR_SESSION_MODE={value:?} is not a session mode; use inproc, handoff or store \
         (appvisor sets it from `[app.sessions] mode`)"
    )]
    BadMode {
        /// The value found in the environment.
        value: String,
    },

    /// `APPVISOR_SESSION_TIMEOUT_MS` is not a positive whole number of milliseconds.
    #[error(
        "{var}={value:?} is not a session timeout; give a whole number of milliseconds > 0 \
         (appvisor sets it from `[app.sessions] timeout`)"
    )]
    BadTimeout {
        /// The environment variable that was read.
        var: &'static str,
        /// The value found in it.
        value: String,
    },

    /// `APPVISOR_PREDECESSORS` is not a comma-separated list of process ids.
    #[error(
        "APPVISOR_PREDECESSORS={value:?} is not a list of process ids; appvisor sets it to the \
         comma-separated pids of the workers a new one replaces (e.g. `4121,4122`), each \
         between 1 and 2147483647: unset it, or fix whatever sets it"
    )]
    BadPredecessors {
        /// The value found in the environment.
        value: String,
    },

    /// A timeout of zero, or one too large to express in Redis milliseconds.
    #[error("session timeout {millis} ms is out of range; use 1 ms ..= 2^62 ms")]
    TimeoutOutOfRange {
        /// The timeout that was asked for, in milliseconds.
        millis: u128,
    },

    /// A mode that needs a store was chosen, but no store URL was given.
    #[error(
        "session mode `{mode}` needs a session store, but APPVISOR_STORE_URL is not set; run the \
         app under appvisor, set APPVISOR_STORE_URL=redis://… yourself, or use mode `inproc`"
    )]
    NoStoreUrl {
        /// The mode that needs the store.
        mode: SessionMode,
    },

    /// The store URL does not parse as a Redis URL.
    #[error(
        "APPVISOR_STORE_URL ({url}) is not a usable Redis URL: {source}; expected \
         unix:///path/store.sock?user=…&pass=…, redis://host:port or rediss://host:port"
    )]
    BadStoreUrl {
        /// The URL with any password replaced by `***`.
        url: String,
        /// What the Redis client said about it.
        #[source]
        source: redis::RedisError,
    },

    /// The store could not be reached.
    #[error("cannot reach the session store at {url}: {source}; is the store running?")]
    Connect {
        /// The URL with any password replaced by `***`.
        url: String,
        /// What the Redis client said.
        #[source]
        source: redis::RedisError,
    },

    /// A command to the store failed.
    #[error("session store at {url} failed during {op}: {source}")]
    Store {
        /// The URL with any password replaced by `***`.
        url: String,
        /// What we were doing: `load`, `commit`, `flush`, `abandon`, `handoff`.
        op: &'static str,
        /// What the Redis client said.
        #[source]
        source: redis::RedisError,
    },

    /// A value under a session key was not written by this SDK.
    #[error(
        "the session stored under {key} is unreadable ({reason}); it was not written by \
         appvisor-worker: delete that key, or give this app its own key prefix"
    )]
    Corrupt {
        /// The store key, with most of the session id hidden.
        key: String,
        /// What was wrong with the value.
        reason: String,
    },

    /// `incr` on a value that is not an integer.
    #[error("session value {key:?} is not an integer, so it cannot be incremented")]
    NotAnInteger {
        /// The session key.
        key: String,
    },

    /// `incr` would overflow an `i64`.
    #[error("incrementing session value {key:?} would overflow a 64-bit integer")]
    Overflow {
        /// The session key.
        key: String,
    },

    /// A value could not be converted to or from JSON.
    #[error("session value {key:?} does not convert to/from JSON: {source}")]
    Json {
        /// The session key.
        key: String,
        /// What serde_json said.
        #[source]
        source: serde_json::Error,
    },

    /// Optimistic commit lost the race every time it tried.
    #[error(
        "committing a session gave up after {attempts} attempts because the stored session \
         changed under every one; the request's changes were not saved"
    )]
    Contention {
        /// How many WATCH/MULTI/EXEC rounds were tried.
        attempts: u32,
    },

    /// Some sessions of a handoff flush could not be written.
    #[error(
        "{failed} sessions could not be handed to the session store ({flushed} were); they \
         stay dirty, so calling flush_dirty/drain again retries them: {source}"
    )]
    Flush {
        /// Sessions not written.
        failed: usize,
        /// Sessions written.
        flushed: usize,
        /// Why the first failing chunk failed.
        #[source]
        source: std::sync::Arc<SessionError>,
    },

    /// [`Sessions::on_end`](super::Sessions::on_end) in a mode without a store.
    #[error(
        "session end events come from the session store's key expiry notifications, and mode \
         `{mode}` keeps sessions in memory only; use mode `store` (or `handoff`) to get them"
    )]
    EndEventsNeedStore {
        /// The configured mode.
        mode: SessionMode,
    },

    /// The store does not publish key expiry events and refused to start.
    #[error(
        "the session store at {url} does not publish key expiry events \
         (notify-keyspace-events is {flags:?}, session ends need `E` and `x`) and refused \
         `CONFIG SET notify-keyspace-events {wanted}`: {source}; run that command on the \
         server as an administrator, or put `notify-keyspace-events {wanted}` in its redis.conf"
    )]
    ExpiryEventsOff {
        /// The URL with any password replaced by `***`.
        url: String,
        /// The server's current flags.
        flags: String,
        /// The flags we asked for (the current ones plus `E` and `x`).
        wanted: String,
        /// What the server said (boxed: this variant carries the most).
        #[source]
        source: Box<redis::RedisError>,
    },

    /// A [`SessionHandle`](super::SessionHandle) was used after its request ended.
    #[error(
        "this session handle belongs to a request that has already finished; \
         use sessions inside the handler, not in tasks that outlive it"
    )]
    RequestFinished,

    /// The operating system's random source failed.
    #[error("the OS random source failed while making a session id: {source}")]
    Entropy {
        /// What getrandom reported.
        #[source]
        source: std::io::Error,
    },

    /// A cookie option would produce a malformed or injectable `Set-Cookie` header.
    #[error("session cookie {field} {value:?} is not allowed: {why}")]
    BadCookieOption {
        /// `name`, `path` or `domain`.
        field: &'static str,
        /// The rejected value.
        value: String,
        /// Which characters are allowed.
        why: &'static str,
    },
}
