//! Liveness pings (`WATCHDOG=1`) when the supervisor asks for them.
//!
//! The supervisor sets `WATCHDOG_USEC` (and `WATCHDOG_PID`, which must be our
//! pid if present) when it wants pings; one that hears none for that long
//! treats the worker as hung and recycles it. The ping task sends every half
//! interval, as systemd recommends, so one late tick is not fatal.
//!
//! The pings come from a task on the worker's own runtime: if the runtime is
//! blocked (a handler spinning or deadlocked on a single-threaded runtime),
//! the pings stop, which is exactly the hang the supervisor should see. A
//! worker with its own notion of health can [`pause`](Watchdog::pause) the
//! pings while it is unhealthy, and tests use that to play dead.

use std::sync::Arc;
use std::time::Duration;

use appvisor_contract as contract;
use tokio::sync::watch;

use crate::error::WorkerError;
use crate::sd_notify::Notifier;

/// Reads `WATCHDOG_USEC`/`WATCHDOG_PID`: `Some(interval)` when the
/// supervisor expects pings from this process.
pub fn interval_from_env(our_pid: u32) -> Result<Option<Duration>, WorkerError> {
    let Ok(usec) = std::env::var(contract::env::WATCHDOG_USEC) else {
        return Ok(None);
    };
    if let Ok(pid) = std::env::var(contract::env::WATCHDOG_PID) {
        match pid.trim().parse::<u32>() {
            Ok(pid) if pid == our_pid => {}
            Ok(_) => return Ok(None),
            Err(_) => {
                return Err(WorkerError::InvalidEnv {
                    var: contract::env::WATCHDOG_PID,
                    value: pid,
                    reason: "not a process id",
                })
            }
        }
    }
    match usec.trim().parse::<u64>() {
        Ok(0) => Ok(None),
        Ok(us) => Ok(Some(Duration::from_micros(us))),
        Err(_) => Err(WorkerError::InvalidEnv {
            var: contract::env::WATCHDOG_USEC,
            value: usec,
            reason: "not a number of microseconds",
        }),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Pinging,
    Paused,
    Stopped,
}

/// Control over a running ping task. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Watchdog {
    state: Arc<watch::Sender<State>>,
    interval: Duration,
}

impl Watchdog {
    /// Starts pinging every `interval / 2`, the first ping at once. Needs a
    /// tokio runtime.
    pub fn spawn(notifier: Notifier, interval: Duration) -> Watchdog {
        let state = Arc::new(watch::Sender::new(State::Pinging));
        let mut rx = state.subscribe();
        let period = (interval / 2).max(Duration::from_millis(1));
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(period);
            // After a stall, ping once and resume the rhythm; a burst of
            // catch-up pings would hide how late we were.
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let state = *rx.borrow_and_update();
                match state {
                    State::Stopped => return,
                    State::Paused => {
                        if rx.changed().await.is_err() {
                            return;
                        }
                    }
                    State::Pinging => {
                        tokio::select! {
                            _ = ticks.tick() => {
                                // A failed ping is the supervisor's problem to
                                // notice; the next tick tries again.
                                let _ = notifier.watchdog();
                            }
                            changed = rx.changed() => if changed.is_err() { return },
                        }
                    }
                }
            }
        });
        Watchdog { state, interval }
    }

    /// The interval the supervisor asked for (pings go at half of it).
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Stops pinging until [`resume`](Watchdog::resume).
    pub fn pause(&self) {
        self.state
            .send_if_modified(|s| set_unless_stopped(s, State::Paused));
    }

    /// Pings again after a pause.
    pub fn resume(&self) {
        self.state
            .send_if_modified(|s| set_unless_stopped(s, State::Pinging));
    }

    /// Ends the ping task for good.
    pub fn stop(&self) {
        self.state.send_replace(State::Stopped);
    }
}

fn set_unless_stopped(state: &mut State, new: State) -> bool {
    if *state == State::Stopped || *state == new {
        false
    } else {
        *state = new;
        true
    }
}
