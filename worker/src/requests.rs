//! Counting requests and reporting the count to the supervisor.
//!
//! The supervisor recycles a worker after `requests = N` (IIS's request
//! limit), so it must learn the count soon after it changes, yet a busy
//! worker must not send one datagram per request. The [`RequestCounter`] is
//! an atomic add plus a wake-up of the reporter task; the reporter sends
//! `X_APPVISOR_REQUESTS=<cumulative>` with this rule:
//!
//! - the first change after a quiet period is reported at once, so a limit
//!   crossed by a request that follows a pause is noticed immediately;
//! - further changes are coalesced and sent [`REPORT_INTERVAL`] after the
//!   previous report (a trailing flush), so the supervisor is never more than
//!   one interval behind and hears at most ten reports a second;
//! - nothing is sent while the count does not change.
//!
//! The count is cumulative, not a delta, so a lost datagram costs nothing but
//! latency: the next one carries the full figure.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::sd_notify::Notifier;

/// The shortest time between two reports of the count.
pub const REPORT_INTERVAL: Duration = Duration::from_millis(100);

/// A shared, cheap-to-clone request counter.
#[derive(Debug, Clone, Default)]
pub struct RequestCounter {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    count: AtomicU64,
    changed: Notify,
}

impl RequestCounter {
    /// A counter at zero.
    pub fn new() -> RequestCounter {
        RequestCounter::default()
    }

    /// Counts one request and returns the new total.
    pub fn increment(&self) -> u64 {
        let n = self.inner.count.fetch_add(1, Ordering::Relaxed) + 1;
        // Stores a permit if the reporter is busy, so no change is missed.
        self.inner.changed.notify_one();
        n
    }

    /// The total so far.
    pub fn get(&self) -> u64 {
        self.inner.count.load(Ordering::Relaxed)
    }

    /// Starts the reporter task described in the module docs. Needs a tokio
    /// runtime. The task runs until aborted through the returned handle.
    pub fn spawn_reporter(&self, notifier: Notifier, interval: Duration) -> JoinHandle<()> {
        let counter = self.clone();
        tokio::spawn(async move {
            let mut reported = 0u64;
            let mut last_report: Option<Instant> = None;
            let mut warned = false;
            loop {
                if counter.get() == reported {
                    // A change between the check and this wait left a
                    // permit, so the wait returns at once: nothing is missed.
                    counter.inner.changed.notified().await;
                }
                if let Some(at) = last_report {
                    // Returns at once when the last report is old enough.
                    tokio::time::sleep_until(at + interval).await;
                }
                let now = counter.get();
                if now == reported {
                    continue;
                }
                match notifier.requests(now) {
                    Ok(true) => reported = now,
                    // The supervisor's queue is full: the loop comes back
                    // after one interval and sends the then-current count.
                    Ok(false) => {}
                    Err(e) => {
                        if !warned {
                            // Once: the supervisor is gone, and repeating it
                            // ten times a second helps nobody.
                            tracing::warn!("{e}");
                            warned = true;
                        }
                        // Wait for the next change before trying again.
                        reported = now;
                    }
                }
                last_report = Some(Instant::now());
            }
        })
    }
}
