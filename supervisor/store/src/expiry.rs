//! The purge task: removes keys when their time comes (publishing the expiry
//! notifications that tell other processes a session ended), and starts log
//! rewrites.
//!
//! It sleeps until the earliest deadline in any namespace — with no deadline,
//! until told: an idle store never wakes up. A command that gives a key an
//! earlier deadline wakes it through [`PurgeAlarm`](super::keyspace::PurgeAlarm)
//! (so does BGREWRITEAOF), and the log's writer wakes it when the log reaches the
//! size at which a rewrite may be due. Each
//! round removes at most [`ROUND`] keys with the lock held, then yields, so a
//! million keys expiring at once never stall the event loop for long.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::state::{now_ms, Shared};

const ROUND: usize = 1000;

pub(crate) async fn run(inner: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let alarm = inner.lock().alarm.clone();
    loop {
        let now = now_ms();
        let (wake_at, busy) = {
            let mut ks = inner.lock();
            let mut budget = ROUND;
            for db in &mut ks.dbs {
                let removed = db.purge(now, budget);
                if removed > 0 {
                    tracing::debug!("app {}: {removed} keys expired and removed", db.name);
                }
                budget = budget.saturating_sub(removed);
            }
            let next = ks.dbs.iter().filter_map(|db| db.next_deadline()).min();
            let busy = next.is_some_and(|at| at <= now);
            if busy {
                tracing::debug!("more than {ROUND} keys expired at once: yielding between rounds");
            }
            let wake_at = next.unwrap_or(u64::MAX);
            alarm.at.store(wake_at, Ordering::Relaxed);
            inner.maybe_rewrite(&mut ks, now);
            (wake_at, busy)
        };
        if busy {
            tokio::task::yield_now().await;
            continue;
        }
        let deadline = async {
            match wake_at {
                u64::MAX => std::future::pending().await,
                at => tokio::time::sleep(Duration::from_millis(at.saturating_sub(now))).await,
            }
        };
        tokio::select! {
            _ = deadline => {}
            _ = alarm.notify.notified() => {}
            _ = inner.state.log.size_reached.notified() => {}
            _ = stop.changed() => return,
        }
    }
}
