//! The moment a worker is told to stop, as a cloneable future.
//!
//! [`Shutdown`] is a one-way latch built on `tokio::sync::watch`: it starts
//! unset, is set once (by a signal or by hand), and every clone's
//! [`wait`](Shutdown::wait) resolves from then on, including waits that begin
//! after it was set. It is the same idea as a cancellation token, without a
//! dependency for it.
//!
//! The stop signals are SIGTERM (what appvisor and systemd send), SIGINT
//! (Ctrl-C when run by hand) and SIGQUIT (the graceful-stop signal of nginx
//! and some app servers, which an app's config may choose). Once tokio handles
//! a signal, its default action (terminate) is gone for the process; a
//! worker whose drain hangs is ended by the supervisor's `shutdown_timeout`
//! with SIGKILL.

use std::sync::Arc;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use crate::error::WorkerError;

/// The signals [`Shutdown::on_stop_signals`] listens for.
pub const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGQUIT];

/// Why shutdown began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownCause {
    /// A signal arrived; the name is e.g. `SIGTERM`.
    Signal(&'static str),
    /// [`Shutdown::trigger`] was called.
    Requested,
}

impl std::fmt::Display for ShutdownCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ShutdownCause::Signal(name) => f.write_str(name),
            ShutdownCause::Requested => f.write_str("request"),
        }
    }
}

/// A cloneable "stop now" latch.
#[derive(Debug, Clone)]
pub struct Shutdown {
    state: Arc<watch::Sender<Option<ShutdownCause>>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown::new()
    }
}

impl Shutdown {
    /// A latch set only by [`trigger`](Shutdown::trigger).
    pub fn new() -> Shutdown {
        Shutdown {
            state: Arc::new(watch::Sender::new(None)),
        }
    }

    /// A latch set by SIGTERM, SIGINT or SIGQUIT. Needs a tokio runtime.
    pub fn on_stop_signals() -> Result<Shutdown, WorkerError> {
        Shutdown::on_signals(&STOP_SIGNALS)
    }

    /// A latch set by any of `signals`. Needs a tokio runtime.
    ///
    /// A worker that must ignore one of them (a test worker that plays
    /// deaf to SIGTERM) leaves it out here and sets it to `SIG_IGN` itself.
    pub fn on_signals(signals: &[libc::c_int]) -> Result<Shutdown, WorkerError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(WorkerError::NoRuntime {
                what: "Shutdown::on_signals",
            });
        }
        let shutdown = Shutdown::new();
        for &signo in signals {
            let name = signal_name(signo);
            let mut stream =
                signal(SignalKind::from_raw(signo)).map_err(|source| WorkerError::Register {
                    what: format!("a handler for {name}"),
                    source,
                })?;
            let latch = shutdown.clone();
            tokio::spawn(async move {
                if stream.recv().await.is_some() {
                    latch.set(ShutdownCause::Signal(name));
                }
            });
        }
        Ok(shutdown)
    }

    /// Sets the latch by hand (tests, an admin endpoint, a fatal error).
    pub fn trigger(&self) {
        self.set(ShutdownCause::Requested);
    }

    fn set(&self, cause: ShutdownCause) {
        // The first cause wins; later ones do not overwrite it.
        self.state.send_if_modified(|state| {
            if state.is_none() {
                *state = Some(cause);
                true
            } else {
                false
            }
        });
    }

    /// Why shutdown began, or `None` while it has not.
    pub fn cause(&self) -> Option<ShutdownCause> {
        *self.state.borrow()
    }

    /// Whether shutdown has begun.
    pub fn is_triggered(&self) -> bool {
        self.cause().is_some()
    }

    /// Resolves once shutdown has begun (at once if it already has).
    pub async fn wait(&self) -> ShutdownCause {
        let mut rx = self.state.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let cause = match rx.wait_for(Option::is_some).await {
            Ok(cause) => cause.unwrap_or(ShutdownCause::Requested),
            Err(_) => ShutdownCause::Requested,
        };
        cause
    }
}

/// `"SIGTERM"` for 15: `nix`'s signal names (the SDK does not link the
/// supervisor's config crate, whose table the supervisor uses; both are the Linux
/// names). A number `nix` does not name (a realtime signal) is "a signal".
fn signal_name(signo: libc::c_int) -> &'static str {
    nix::sys::signal::Signal::try_from(signo).map_or("a signal", |s| s.as_str())
}
