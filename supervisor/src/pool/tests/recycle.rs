//! Recycles: overlapped, non-overlapped, coalesced, failed, and the drain kill.

use super::fake::Op;
use super::*;

// ---- recycle ------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn overlapped_recycle_keeps_capacity_and_stops_old_only_after_new_is_ready() {
    let mut h = serving(app(2)).await;
    let old = h.fake.spawned();
    assert_eq!(h.serving_pids().await.len(), 2);

    let reply = h.recycle();
    h.settle().await;
    let new0 = h.fake.last_spawn();
    assert_eq!(h.fake.spawned().len(), 3, "one candidate at a time");
    h.advance(Duration::from_secs(5)).await;
    assert!(
        h.fake.signals_to(old[0]).is_empty(),
        "old told to stop before new ready"
    );
    assert_eq!(h.serving_pids().await.len(), 2);

    h.fake.ready(new0);
    h.settle().await;
    assert_eq!(h.fake.signals_to(old[0]), vec![SIGTERM]);
    let ready_then_stop = h.fake.position(&Op::Signal {
        pid: old[0],
        signal: SIGTERM,
    });
    assert!(
        ready_then_stop
            > h.fake.position(&Op::Spawn {
                pid: new0,
                slot: 0,
                generation: 2
            })
    );
    assert_eq!(h.serving_pids().await.len(), 2, "capacity never drops");
    assert!(h.fake.signals_to(old[1]).is_empty(), "one slot at a time");

    let new1 = h.fake.last_spawn();
    assert_ne!(new1, new0);
    h.fake.ready(new1);
    h.settle().await;
    let reply = reply.await.unwrap().expect("recycle succeeds");
    assert!(
        reply.contains("recycled 2 worker(s) to generation 2"),
        "{reply}"
    );
    let mut serving = h.serving_pids().await;
    serving.sort();
    assert_eq!(serving, vec![new0, new1]);
    assert_eq!(h.count(EventKind::Recycle), 2);
    assert_eq!(h.count(EventKind::Retired), 2);
    assert_eq!(h.last(EventKind::Recycle).old_pid, Some(old[1]));
}

#[tokio::test(start_paused = true)]
async fn non_overlapped_recycle_stops_old_first_then_starts_new() {
    let mut a = app(1);
    a.recycle.overlapped = false;
    let mut h = serving(a).await;
    h.fake.state().stubborn = true;
    let old = h.fake.spawned()[0];

    let reply = h.recycle();
    h.settle().await;
    assert_eq!(h.fake.signals_to(old), vec![SIGTERM]);
    assert_eq!(
        h.fake.spawned().len(),
        1,
        "no new worker while the old one runs"
    );

    h.fake.exit(old, ExitStatus::Code(0));
    h.settle().await;
    assert_eq!(h.fake.spawned().len(), 2);
    let new = h.fake.last_spawn();
    h.fake.ready(new);
    h.settle().await;
    assert!(reply.await.unwrap().is_ok());
    assert_eq!(h.serving_pids().await, vec![new]);
    assert_eq!(
        h.kinds()
            .iter()
            .filter(|k| **k == EventKind::Retired)
            .count(),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn recycle_requests_during_a_recycle_coalesce_into_one_follow_up() {
    let mut h = serving(app(1)).await;
    let first = h.recycle();
    h.settle().await;
    assert_eq!(h.fake.spawned().len(), 2);
    let waiting: Vec<_> = (0..5).map(|_| h.recycle()).collect();
    h.settle().await;
    assert_eq!(h.count(EventKind::RecycleQueued), 5);
    assert_eq!(h.fake.spawned().len(), 2, "nothing starts while a job runs");

    h.fake.ready(h.fake.last_spawn());
    h.settle().await;
    assert!(first.await.unwrap().is_ok());
    assert_eq!(h.fake.spawned().len(), 3, "exactly one follow-up");
    h.fake.ready(h.fake.last_spawn());
    h.settle().await;
    for w in waiting {
        assert!(w.await.unwrap().unwrap().contains("generation 3"));
    }
    h.advance(Duration::from_secs(60)).await;
    assert_eq!(h.fake.spawned().len(), 3, "and nothing after it");
    assert_eq!(h.count(EventKind::Recycle), 2);
}

// ---- batches ------------------------------------------------------------------

/// Candidates starting now: spawned for a recycle (generation > 1), not yet ready,
/// still running.
fn starting(h: &Harness, ready: &[i32]) -> Vec<i32> {
    h.fake
        .ops()
        .into_iter()
        .filter_map(|o| match o {
            Op::Spawn {
                pid, generation, ..
            } if generation > 1 => Some(pid),
            _ => None,
        })
        .filter(|pid| !ready.contains(pid) && h.fake.state().alive.contains(pid))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_batch_recycle_starts_that_many_candidates_at_once_and_keeps_capacity() {
    let mut a = app(8);
    a.recycle.batch = appvisor_config::RecycleBatch::Workers(3);
    let mut h = serving(a).await;
    let old = h.fake.spawned();
    let reply = h.recycle();
    h.settle().await;
    let mut ready = Vec::new();
    let mut most = 0;
    while ready.len() < 8 {
        let now = starting(&h, &ready);
        assert!(now.len() <= 3, "{} candidates at once: {now:?}", now.len());
        assert!(
            !now.is_empty(),
            "the job stalled with {} of 8 replaced",
            ready.len()
        );
        most = most.max(now.len());
        // Capacity never drops: every slot has a serving worker throughout.
        assert_eq!(h.serving_pids().await.len(), 8);
        // Readiness in any order: the last of the batch first.
        let pid = *now.last().unwrap();
        h.fake.ready(pid);
        ready.push(pid);
        h.settle().await;
    }
    assert_eq!(most, 3, "a batch of 3 starts 3 at once");
    let reply = reply.await.unwrap().expect("recycle succeeds");
    assert!(
        reply.contains("recycled 8 worker(s) to generation 2"),
        "{reply}"
    );
    let mut serving = h.serving_pids().await;
    serving.sort();
    ready.sort();
    assert_eq!(serving, ready);
    for pid in old {
        assert_eq!(
            h.fake.signals_to(pid),
            vec![SIGTERM],
            "old {pid} told to stop once"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn the_default_batch_is_a_quarter_of_the_workers() {
    let mut h = serving(app(8)).await;
    let _reply = h.recycle();
    h.settle().await;
    assert_eq!(starting(&h, &[]).len(), 2, "25% of 8");
}

#[tokio::test(start_paused = true)]
async fn a_failed_candidate_ends_the_batch_recycle_and_stops_the_rest_of_its_batch() {
    let mut a = app(4);
    a.recycle.batch = appvisor_config::RecycleBatch::Workers(2);
    let mut h = serving(a).await;
    let old = h.fake.spawned();
    let reply = h.recycle();
    h.settle().await;
    let batch = starting(&h, &[]);
    assert_eq!(batch.len(), 2);
    h.fake.exit(batch[0], ExitStatus::Code(1));
    h.settle().await;
    let reply = reply.await.unwrap();
    assert!(
        reply
            .as_ref()
            .is_err_and(|e| e.contains("exited before it was ready")),
        "{reply:?}"
    );
    assert_eq!(
        h.fake.signals_to(batch[1]),
        vec![SIGTERM],
        "the rest of the batch is stopped"
    );
    h.settle().await;
    assert!(
        starting(&h, &[]).is_empty(),
        "no new candidate after the failure"
    );
    let mut serving = h.serving_pids().await;
    serving.sort();
    assert_eq!(serving, old, "the previous generation keeps serving");
    for pid in &old {
        assert!(h.fake.signals_to(*pid).is_empty(), "old {pid} told to stop");
    }
    assert_eq!(h.count(EventKind::Recycle), 0);
}

// ---- startup failure ------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_candidate_not_ready_within_startup_timeout_is_killed_and_the_old_keeps_serving() {
    let mut h = serving(app(1)).await;
    let old = h.fake.spawned()[0];
    let reply = h.recycle();
    h.settle().await;
    let new = h.fake.last_spawn();

    h.advance(Duration::from_millis(9_990)).await;
    assert!(
        h.fake.position(&Op::KillGroup { pid: new }).is_none(),
        "killed early"
    );
    h.advance(Duration::from_millis(20)).await;
    assert!(h.fake.position(&Op::KillGroup { pid: new }).is_some());
    let failed = h.last(EventKind::StartupFailed);
    assert!(failed
        .detail
        .as_deref()
        .unwrap()
        .contains("startup_timeout"));
    let err = reply.await.unwrap().unwrap_err();
    assert!(err.contains("previous generation keeps serving"), "{err}");
    assert!(h.fake.signals_to(old).is_empty());
    assert_eq!(h.serving_pids().await, vec![old]);
    assert_eq!(h.status().await.workers.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_candidate_that_exits_before_ready_fails_the_recycle_and_the_old_keeps_serving() {
    let mut h = serving(app(1)).await;
    let old = h.fake.spawned()[0];
    let reply = h.recycle();
    h.settle().await;
    let new = h.fake.last_spawn();
    h.fake.exit(new, ExitStatus::Code(3));
    h.settle().await;

    let failed = h.last(EventKind::StartupFailed);
    assert_eq!(failed.exit_code, Some(3));
    assert_eq!(
        failed.stderr_tail.as_deref(),
        Some(&[format!("worker {new} says goodbye")][..])
    );
    assert!(reply.await.unwrap().is_err());
    assert!(h.fake.signals_to(old).is_empty());
    assert_eq!(h.serving_pids().await, vec![old]);
    h.advance(Duration::from_secs(30)).await;
    assert_eq!(
        h.fake.spawned().len(),
        2,
        "a failed candidate is not restarted"
    );
}

// ---- drain ----------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_worker_still_draining_at_shutdown_timeout_gets_its_group_killed() {
    let mut h = serving(app(1)).await;
    h.fake.state().stubborn = true;
    let old = h.fake.spawned()[0];
    let reply = h.recycle();
    h.settle().await;
    h.fake.ready(h.fake.last_spawn());
    h.settle().await;
    assert!(reply.await.unwrap().is_ok());
    assert_eq!(h.fake.signals_to(old), vec![SIGTERM]);

    h.advance(Duration::from_millis(29_990)).await;
    assert!(
        h.fake.position(&Op::KillGroup { pid: old }).is_none(),
        "killed early"
    );
    h.advance(Duration::from_millis(20)).await;
    assert!(h.fake.position(&Op::KillGroup { pid: old }).is_some());
    let killed = h.last(EventKind::Killed);
    assert_eq!(killed.pid, Some(old));
    assert!(killed.drain_ms.unwrap() >= 30_000);
    assert_eq!(
        h.count(EventKind::Retired),
        0,
        "a killed worker did not retire"
    );
    assert_eq!(h.status().await.workers.len(), 1);
}
