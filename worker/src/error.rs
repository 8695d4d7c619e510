//! The one error type of the SDK.
//!
//! Every variant names the environment variable, file descriptor or socket
//! path it is about, and its message says what to do: a worker that fails to
//! start under appvisor prints this on stderr, and the operator reads it in the
//! app's log.

use std::io;
use std::os::fd::RawFd;

use appvisor_contract::env;

/// Why the worker SDK could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// An environment variable set by the supervisor does not parse.
    #[error(
        "environment variable {var}={value:?} is invalid: {reason}; \
         it is set by the supervisor (appvisor or systemd), so check the supervisor's version \
         or unset it when running the worker by hand"
    )]
    InvalidEnv {
        /// The variable's name, e.g. `LISTEN_FDS`.
        var: &'static str,
        /// Its value as found.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// `LISTEN_FDNAMES` has a different number of names than `LISTEN_FDS` has fds.
    #[error(
        "{names_var} has {names} name(s) but {fds_var} says {fds} fd(s); \
         the supervisor must name every passed socket or none",
        names_var = env::LISTEN_FDNAMES,
        fds_var = env::LISTEN_FDS
    )]
    FdNamesMismatch {
        /// How many colon-separated names `LISTEN_FDNAMES` holds.
        names: usize,
        /// The value of `LISTEN_FDS`.
        fds: usize,
    },

    /// A passed file descriptor is not open or cannot be inspected.
    #[error(
        "inherited fd {fd} ({var}) cannot be used: {source}; the supervisor passed a closed fd",
        var = env::LISTEN_FDS
    )]
    BadFd {
        /// The descriptor number.
        fd: RawFd,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },

    /// A passed file descriptor is not a listening stream socket.
    #[error(
        "inherited fd {fd} ({var}) is not a listening stream socket ({what}); \
         configure the app's socket as a TCP or unix stream listener",
        var = env::LISTEN_FDS
    )]
    NotAListener {
        /// The descriptor number.
        fd: RawFd,
        /// What it is instead.
        what: String,
    },

    /// A listener was asked for by name and none of the inherited ones has it.
    #[error(
        "no inherited listener is named {name:?} (inherited: {available}); \
         check the socket names in the app's config"
    )]
    NoSuchListener {
        /// The name asked for.
        name: String,
        /// The names that were inherited, comma separated, for the message.
        available: String,
    },

    /// Something that needs a tokio runtime was called outside one.
    #[error("{what} must be called inside a tokio runtime (e.g. from within Runtime::block_on)")]
    NoRuntime {
        /// The operation that needed the runtime.
        what: &'static str,
    },

    /// Registering a listener or signal with the tokio runtime failed.
    #[error("cannot register {what} with the tokio runtime: {source}")]
    Register {
        /// What was being registered.
        what: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// A notification could not be sent to `NOTIFY_SOCKET`.
    #[error(
        "cannot send {message:?} to {var} {socket}: {source}; \
         is the supervisor still running?",
        var = env::NOTIFY_SOCKET
    )]
    Notify {
        /// The socket path as found in `NOTIFY_SOCKET`.
        socket: String,
        /// The message, for the log.
        message: String,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
}
