//! [`Worker`]: everything the supervisor handed this process, in one value.

use std::sync::OnceLock;
use std::time::Duration;

use appvisor_contract as contract;
use tokio::task::JoinHandle;

use crate::activation::{self, InheritedSocket};
use crate::error::WorkerError;
use crate::listener::Listener;
use crate::requests::{RequestCounter, REPORT_INTERVAL};
use crate::sd_notify::Notifier;
use crate::watchdog::{self, Watchdog};

/// What the supervisor told this worker process, and the means to answer it.
#[derive(Debug)]
pub struct Worker {
    app: Option<String>,
    generation: Option<u64>,
    index: Option<u32>,
    sockets: Vec<InheritedSocket>,
    notifier: Notifier,
    requests: RequestCounter,
    watchdog_interval: Option<Duration>,
    heartbeats: OnceLock<Heartbeats>,
}

/// The background tasks started by [`Worker::start_heartbeats`].
#[derive(Debug)]
struct Heartbeats {
    /// Kept so the task is visibly owned; it runs for the process's life.
    _reporter: JoinHandle<()>,
    watchdog: Option<Watchdog>,
}

impl Worker {
    /// Reads the environment the supervisor set and takes the inherited
    /// listening sockets. Synchronous on purpose: call it first thing in
    /// `main`, before a multi-threaded runtime starts, because taking the
    /// sockets removes `LISTEN_*` from the environment.
    ///
    /// Works outside a supervisor too: then there are no sockets, no
    /// notifications and no app name, and the worker can bind its own port.
    pub fn from_env() -> Result<Worker, WorkerError> {
        let pid = std::process::id();
        let sockets = activation::take_inherited()?;
        let watchdog_interval = watchdog::interval_from_env(pid)?;
        // Like the LISTEN_* variables these are for this process only: a
        // child that saw them would think the supervisor expects its pings.
        for var in [contract::env::WATCHDOG_USEC, contract::env::WATCHDOG_PID] {
            std::env::remove_var(var);
        }
        Ok(Worker {
            app: std::env::var(contract::env::APPVISOR_APP)
                .ok()
                .filter(|s| !s.is_empty()),
            generation: parse_env_number(contract::env::APPVISOR_GENERATION)?,
            index: parse_env_number(contract::env::APPVISOR_WORKER)?,
            sockets,
            notifier: Notifier::from_env()?,
            requests: RequestCounter::new(),
            watchdog_interval,
            heartbeats: OnceLock::new(),
        })
    }

    /// The app's name (`APPVISOR_APP`), if run by appvisor.
    pub fn app(&self) -> Option<&str> {
        self.app.as_deref()
    }

    /// Which generation of the app this worker belongs to (`APPVISOR_GENERATION`).
    pub fn generation(&self) -> Option<u64> {
        self.generation
    }

    /// This worker's slot among the app's workers, from 0 (`APPVISOR_WORKER`).
    pub fn index(&self) -> Option<u32> {
        self.index
    }

    /// Whether a supervisor listens to notifications (`NOTIFY_SOCKET` set).
    pub fn is_supervised(&self) -> bool {
        self.notifier.is_enabled()
    }

    /// The inherited sockets not yet taken.
    pub fn sockets(&self) -> &[InheritedSocket] {
        &self.sockets
    }

    /// Takes every inherited socket as an async listener. Needs a tokio runtime.
    pub fn take_listeners(&mut self) -> Result<Vec<Listener>, WorkerError> {
        std::mem::take(&mut self.sockets)
            .into_iter()
            .map(InheritedSocket::into_listener)
            .collect()
    }

    /// Takes the inherited socket named `name` (`LISTEN_FDNAMES`). Needs a
    /// tokio runtime.
    pub fn take_listener(&mut self, name: &str) -> Result<Listener, WorkerError> {
        match self.sockets.iter().position(|s| s.name() == Some(name)) {
            Some(i) => self.sockets.remove(i).into_listener(),
            None => Err(WorkerError::NoSuchListener {
                name: name.to_owned(),
                available: self.available_names(),
            }),
        }
    }

    fn available_names(&self) -> String {
        if self.sockets.is_empty() {
            return "none".to_owned();
        }
        self.sockets
            .iter()
            .map(|s| {
                s.name()
                    .map_or_else(|| format!("fd {} (unnamed)", s.raw_fd()), str::to_owned)
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The handle for sending state to the supervisor.
    pub fn notifier(&self) -> &Notifier {
        &self.notifier
    }

    /// The counter whose total is reported as `X_APPVISOR_REQUESTS`.
    /// [`http::Server::for_worker`](crate::http::Server::for_worker) counts
    /// into it; other servers call [`RequestCounter::increment`] per request.
    pub fn requests(&self) -> &RequestCounter {
        &self.requests
    }

    /// The watchdog interval the supervisor asked for, if any.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog_interval
    }

    /// Control over the watchdog pings, once heartbeats have started and if
    /// the supervisor asked for pings.
    pub fn watchdog(&self) -> Option<&Watchdog> {
        self.heartbeats.get().and_then(|h| h.watchdog.as_ref())
    }

    /// Starts the background tasks: the request-count reporter and, if
    /// `WATCHDOG_USEC` asked for it, the watchdog pinger. Idempotent. Needs a
    /// tokio runtime. [`ready`](Worker::ready) calls it, so only a worker that
    /// never declares itself ready (readiness by HTTP probe) calls it directly.
    pub fn start_heartbeats(&self) -> Result<(), WorkerError> {
        if self.heartbeats.get().is_some() {
            return Ok(());
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(WorkerError::NoRuntime {
                what: "Worker::start_heartbeats",
            });
        }
        let _ = self.heartbeats.get_or_init(|| Heartbeats {
            _reporter: self
                .requests
                .spawn_reporter(self.notifier.clone(), REPORT_INTERVAL),
            watchdog: self
                .watchdog_interval
                .filter(|_| self.notifier.is_enabled())
                .map(|interval| Watchdog::spawn(self.notifier.clone(), interval)),
        });
        Ok(())
    }

    /// Declares the worker ready: starts the heartbeats, then sends
    /// `READY=1`. Call it once the listeners are taken and the app can answer
    /// requests; the supervisor then retires the previous generation.
    pub fn ready(&self) -> Result<(), WorkerError> {
        self.start_heartbeats()?;
        self.notifier.ready()
    }

    /// Sends `STATUS=…`, a one-line human status shown by `appvisor status`.
    pub fn status(&self, status: &str) -> Result<(), WorkerError> {
        self.notifier.status(status)
    }

    /// Sends `STOPPING=1`. [`http::Server`](crate::http::Server) sends it
    /// when draining starts; other servers call this themselves.
    pub fn stopping(&self) -> Result<(), WorkerError> {
        self.notifier.stopping()
    }
}

fn parse_env_number<T: std::str::FromStr>(var: &'static str) -> Result<Option<T>, WorkerError> {
    match std::env::var(var) {
        Ok(value) if value.is_empty() => Ok(None),
        Ok(value) => value
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| WorkerError::InvalidEnv {
                var,
                value,
                reason: "not a non-negative number",
            }),
        Err(_) => Ok(None),
    }
}
