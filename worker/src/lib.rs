//! `appvisor-worker`: what a Rust worker links to run under appvisor.
//!
//! appvisor starts an app's worker processes, hands them the app's listening
//! sockets, waits for them to say they are ready, and later replaces them
//! with a fresh generation without dropping a request. This crate is the
//! worker's half of that contract. Nothing in it is appvisor-only: the
//! sockets and notifications are systemd's protocols, so a worker built on it
//! also runs under systemd (`Type=notify`, socket units), and runs by hand
//! with no supervisor at all.
//!
//! # Layout
//!
//! | module | concept |
//! |---|---|
//! | [`activation`] | `LISTEN_FDS`/`LISTEN_PID`/`LISTEN_FDNAMES`: parsing, checking and taking the inherited sockets |
//! | [`listener`] | [`Listener`] and [`Stream`]: TCP or unix, one async type each |
//! | [`sd_notify`] | [`Notifier`]: `READY=1`, `STOPPING=1`, `WATCHDOG=1`, `STATUS=`, `X_APPVISOR_REQUESTS=` to `NOTIFY_SOCKET` |
//! | [`shutdown`] | [`Shutdown`]: the cloneable latch set by SIGTERM/SIGINT/SIGQUIT |
//! | [`requests`] | [`RequestCounter`] and its rate-limited reporter |
//! | [`watchdog`] | [`Watchdog`]: liveness pings when `WATCHDOG_USEC` asks for them |
//! | [`worker`] | [`Worker`]: everything above, read from the environment in one call |
//! | [`http`] (feature `http`, default) | [`http::Server`]: hyper HTTP/1.1 with a drain that drops nothing |
//! | [`error`] | [`WorkerError`]: every failure, naming the variable, fd or socket |
//! | [`contract`] | re-export of `appvisor-contract`: every variable and notify key by name, shared with the supervisor |
//!
//! # Theory of operation
//!
//! A worker's life under appvisor has four steps, and the SDK has one call
//! for each:
//!
//! 1. **Start** — [`Worker::from_env`], first thing in `main` and before a
//!    multi-threaded runtime exists, takes the sockets at fd 3.. (checking
//!    `LISTEN_PID` is ours), marks them close-on-exec and removes `LISTEN_*`
//!    from the environment so children do not claim them. Inside the runtime,
//!    [`Worker::take_listeners`] registers them with tokio and
//!    [`Shutdown::on_stop_signals`] installs the signal handlers.
//! 2. **Ready** — [`Worker::ready`] starts the heartbeats (the request-count
//!    reporter and, if asked for, watchdog pings) and sends `READY=1`. Until
//!    then the supervisor keeps the previous generation serving.
//! 3. **Serve** — [`http::Server::serve`] accepts and answers, counting each
//!    request; the reporter tells the supervisor the cumulative count at most
//!    every 100 ms, at once after a quiet spell, so a `requests` limit is
//!    noticed promptly without a datagram per request.
//! 4. **Drain** — SIGTERM sets the [`Shutdown`] latch. The server stops
//!    accepting at once (the socket stays open in the supervisor and the next
//!    generation takes the backlog), sends `STOPPING=1`, finishes in-flight
//!    requests, answers late keep-alive requests with `Connection: close`,
//!    closes idle connections after a short grace, and returns. `main` then
//!    returns and the process exits 0.
//!
//! *Logging.* A library never prints: what the app's operator should hear (a
//! failed accept, a session store that cannot be reached, a predecessor that
//! never handed off) is a `tracing` event. The app routes it with the
//! subscriber it installs (e.g. `tracing_subscriber::fmt()` to stderr, which
//! appvisor captures into `logs/<app>.log`); with none installed, nothing is
//! printed.
//!
//! ```no_run
//! use appvisor_worker::{http, Listener, Shutdown, Worker};
//! use http_body_util::Full;
//! use hyper::{body::Bytes, service::service_fn, Response};
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let mut worker = Worker::from_env()?;
//!     let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
//!     runtime.block_on(async move {
//!         let mut listeners = worker.take_listeners()?;
//!         if listeners.is_empty() {
//!             // Run by hand: bind our own port.
//!             listeners.push(Listener::bind_tcp("127.0.0.1:3000").await?);
//!         }
//!         let shutdown = Shutdown::on_stop_signals()?;
//!         let service = service_fn(|_req| async {
//!             Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from("hello\n"))))
//!         });
//!         worker.ready()?;
//!         http::Server::for_worker(&worker).serve(listeners, service, shutdown).await?;
//!         Ok(())
//!     })
//! }
//! ```

pub mod activation;
pub mod error;
#[cfg(feature = "http")]
pub mod http;
pub mod listener;
pub mod requests;
pub mod sd_notify;
pub mod shutdown;
pub mod watchdog;
pub mod worker;

/// The names this SDK and the supervisor agree on (environment variables,
/// notify keys), for a worker that reads or sends one itself.
pub use appvisor_contract as contract;

pub use activation::{Family, InheritedSocket};
pub use error::WorkerError;
pub use listener::{Listener, Stream};
pub use requests::RequestCounter;
pub use sd_notify::Notifier;
pub use shutdown::{Shutdown, ShutdownCause};
pub use watchdog::Watchdog;
pub use worker::Worker;
#[cfg(feature = "sessions")]
pub mod sessions;
