//! `appvisor-contract`: the names a worker and its supervisor agree on.
//!
//! appvisor hands every worker its listening sockets and a notify socket through
//! environment variables, and the worker answers with `KEY=VALUE` datagrams on
//! that socket. Both sides used to spell those names as string literals of
//! their own; this crate is the one place they are written, so a typo on one
//! side is a compile error instead of a worker that silently never becomes
//! ready.
//!
//! # Layout
//!
//! | module | what |
//! |---|---|
//! | [`env`] | the variables appvisor sets for each worker, and which ones a config may not set |
//! | [`notify`] | the sd_notify keys and whole messages a worker sends on `NOTIFY_SOCKET` |
//!
//! # Theory of operation
//!
//! The contract is systemd's socket-activation and `sd_notify` protocols
//! (`sd_listen_fds(3)`, `sd_notify(3)`) plus a few appvisor-only names, all
//! prefixed `APPVISOR_` (environment) or `X_APPVISOR_` (notify keys, the prefix
//! `sd_notify(3)` reserves for extensions). Each constant's *name* is its
//! value, so a grep for `LISTEN_FDNAMES` finds both the constant and every use.
//!
//! Why it lives under `worker/`: the contract is what a worker sees, and a
//! worker author — in Rust or in any other language — looks beside the worker
//! SDK for it. The supervisor and the config link it from there. It has no
//! dependencies at all, so linking it costs the config crate (which is pure)
//! nothing and can never pull tokio or libc into it.

pub mod env {
    //! Environment variables appvisor sets for each worker.
    //!
    //! The six systemd variables ([`SYSTEMD`]) are set per process and are
    //! never inherited from the supervisor's own environment: the supervisor
    //! removes its own copies before adding the worker's. The `APPVISOR_*` ones
    //! describe the app, the generation and the session store.

    /// How many listening sockets were passed, starting at fd
    /// [`LISTEN_FDS_START`](crate::LISTEN_FDS_START). Set only when the app
    /// has `listen` addresses.
    pub const LISTEN_FDS: &str = "LISTEN_FDS";
    /// The pid the sockets are meant for; filled in by the child itself after
    /// fork, so a process the worker spawns can tell they are not its own.
    pub const LISTEN_PID: &str = "LISTEN_PID";
    /// The sockets' names, colon separated, one per fd.
    pub const LISTEN_FDNAMES: &str = "LISTEN_FDNAMES";
    /// Where the worker sends its [`notify`](crate::notify) datagrams: an
    /// absolute path, or `@name` for an abstract socket.
    pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";
    /// The watchdog interval in microseconds, when the app has `health.watchdog`.
    pub const WATCHDOG_USEC: &str = "WATCHDOG_USEC";
    /// The pid the watchdog interval is meant for, filled in like [`LISTEN_PID`].
    pub const WATCHDOG_PID: &str = "WATCHDOG_PID";

    /// The systemd protocol variables, which appvisor sets per worker process.
    pub const SYSTEMD: [&str; 6] = [
        LISTEN_FDS,
        LISTEN_PID,
        LISTEN_FDNAMES,
        NOTIFY_SOCKET,
        WATCHDOG_USEC,
        WATCHDOG_PID,
    ];

    /// The prefix of every appvisor-only variable.
    pub const APPVISOR_PREFIX: &str = "APPVISOR_";
    /// The app's name, as in `appvisor.toml`.
    pub const APPVISOR_APP: &str = "APPVISOR_APP";
    /// The generation this worker belongs to (1 for the first, +1 per recycle).
    pub const APPVISOR_GENERATION: &str = "APPVISOR_GENERATION";
    /// This worker's slot among the app's workers, from 0.
    pub const APPVISOR_WORKER: &str = "APPVISOR_WORKER";
    /// Pids of the app's workers still alive when this one was spawned, comma
    /// separated: a `handoff` worker waits for their sessions.
    pub const APPVISOR_PREDECESSORS: &str = "APPVISOR_PREDECESSORS";
    /// The app's session mode: `inproc`, `handoff` or `store`.
    pub const APPVISOR_SESSION_MODE: &str = "APPVISOR_SESSION_MODE";
    /// The app's session idle timeout, in milliseconds.
    pub const APPVISOR_SESSION_TIMEOUT_MS: &str = "APPVISOR_SESSION_TIMEOUT_MS";
    /// The session store's Redis URL, credentials included, when there is one.
    pub const APPVISOR_STORE_URL: &str = "APPVISOR_STORE_URL";

    /// Whether `name` is set by appvisor for each worker, so that an app's
    /// `env` table may not set it: one of [`SYSTEMD`], or any `APPVISOR_*`
    /// name (the whole prefix is reserved, so a later release can add names
    /// without breaking a config that happened to use one).
    pub fn is_reserved(name: &str) -> bool {
        SYSTEMD.contains(&name) || name.starts_with(APPVISOR_PREFIX)
    }
}

pub mod notify {
    //! The `sd_notify` datagrams a worker sends on `NOTIFY_SOCKET`.
    //!
    //! A datagram is one or more `KEY=VALUE` lines. The supervisor matches the
    //! [keys](self#constants) and ignores the ones it does not know; a worker
    //! sends the three flags as the whole messages [`READY`], [`STOPPING`] and
    //! [`WATCHDOG`].

    /// Key: the worker accepts requests (`READY=1`).
    pub const READY_KEY: &str = "READY";
    /// Key: the worker has begun draining (`STOPPING=1`).
    pub const STOPPING_KEY: &str = "STOPPING";
    /// Key: a liveness ping (`WATCHDOG=1`).
    pub const WATCHDOG_KEY: &str = "WATCHDOG";
    /// Key: a one-line human status (`STATUS=…`).
    pub const STATUS: &str = "STATUS";
    /// Key: the cumulative number of requests served (`X_APPVISOR_REQUESTS=n`).
    pub const X_APPVISOR_REQUESTS: &str = "X_APPVISOR_REQUESTS";
    /// Key: sessions handed to the store while draining (`X_APPVISOR_SESSIONS=n`).
    pub const X_APPVISOR_SESSIONS: &str = "X_APPVISOR_SESSIONS";

    /// The value that turns a flag key on.
    pub const ON: &str = "1";

    /// The whole message: ready to accept requests.
    pub const READY: &str = "READY=1";
    /// The whole message: draining has begun.
    pub const STOPPING: &str = "STOPPING=1";
    /// The whole message: a liveness ping.
    pub const WATCHDOG: &str = "WATCHDOG=1";
}

/// The first fd number of the passed listening sockets, as in systemd.
pub const LISTEN_FDS_START: i32 = 3;

#[cfg(test)]
mod tests {
    use super::{env, notify};

    #[test]
    fn whole_messages_are_their_key_set_to_on() {
        for (message, key) in [
            (notify::READY, notify::READY_KEY),
            (notify::STOPPING, notify::STOPPING_KEY),
            (notify::WATCHDOG, notify::WATCHDOG_KEY),
        ] {
            assert_eq!(message, format!("{key}={}", notify::ON));
        }
    }

    #[test]
    fn appvisor_names_carry_the_prefix() {
        for name in [
            env::APPVISOR_APP,
            env::APPVISOR_GENERATION,
            env::APPVISOR_WORKER,
            env::APPVISOR_PREDECESSORS,
            env::APPVISOR_SESSION_MODE,
            env::APPVISOR_SESSION_TIMEOUT_MS,
            env::APPVISOR_STORE_URL,
        ] {
            assert!(name.starts_with(env::APPVISOR_PREFIX), "{name}");
            assert!(env::is_reserved(name), "{name}");
        }
    }

    #[test]
    fn reserved_names() {
        for name in env::SYSTEMD {
            assert!(env::is_reserved(name), "{name}");
        }
        assert!(env::is_reserved("APPVISOR_ANYTHING"));
        assert!(!env::is_reserved("PATH"));
        assert!(!env::is_reserved("LISTEN_FDS_EXTRA"));
        assert!(!env::is_reserved("appvisor_app"));
    }
}
