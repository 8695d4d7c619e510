//! Crashes, rapid-fail, stop and start, idle.

use super::*;

// ---- crashes --------------------------------------------------------------------

/// Crashes the slot's worker and returns how long the slot waited for its
/// restart (to the 100 ms), leaving the new worker ready.
async fn crash_and_restart(h: &mut Harness) -> u128 {
    let pid = h.fake.last_spawn();
    h.fake.exit(pid, ExitStatus::Code(1));
    let crashed_at = Instant::now();
    h.settle().await;
    // The restart comes at the backoff deadline: wait for it.
    while h.fake.last_spawn() == pid {
        h.advance(Duration::from_millis(10)).await;
    }
    let new = h.fake.last_spawn();
    let at = h.fake.state().spawned_at[&new];
    h.fake.ready(new);
    h.settle().await;
    (at - crashed_at).as_millis() / 100 * 100
}

#[tokio::test(start_paused = true)]
async fn the_first_crash_restarts_at_once_then_the_backoff_doubles_to_its_cap() {
    let mut h = serving(app(1)).await;
    let mut delays = Vec::new();
    for _ in 0..6 {
        delays.push(crash_and_restart(&mut h).await);
    }
    assert_eq!(delays, vec![0, 1000, 2000, 4000, 4000, 4000]);
    assert_eq!(h.count(EventKind::Crashed), 6);
}

#[tokio::test(start_paused = true)]
async fn a_crash_after_a_stable_uptime_restarts_at_once_and_the_next_one_backs_off() {
    let mut h = serving(app(1)).await;
    for _ in 0..3 {
        crash_and_restart(&mut h).await;
    }
    // Up for `stable_uptime`: the backoff resets, the crash restarts at once
    // (within the 1 ms `settle` moves the clock by).
    h.advance(Duration::from_secs(61)).await;
    let pid = h.fake.last_spawn();
    h.fake.exit(pid, ExitStatus::Code(1));
    h.settle().await;
    assert_ne!(h.fake.last_spawn(), pid, "no restart at once");
    let new = h.fake.last_spawn();
    h.fake.ready(new);
    h.settle().await;
    // The next crash in a row waits `backoff_initial`, then it doubles.
    let delays = vec![
        crash_and_restart(&mut h).await,
        crash_and_restart(&mut h).await,
    ];
    assert_eq!(delays, vec![1000, 2000]);
    // Up for a while but less than `stable_uptime`: no reset.
    h.advance(Duration::from_secs(59)).await;
    assert_eq!(crash_and_restart(&mut h).await, 4000);
}

#[tokio::test(start_paused = true)]
async fn a_first_worker_that_exits_before_ready_is_restarted_after_the_backoff() {
    let mut h = start(app(1)).await;
    let pid = h.fake.last_spawn();
    h.fake.exit(pid, ExitStatus::Code(1));
    h.settle().await;
    assert_eq!(h.count(EventKind::StartupFailed), 1);
    h.advance(Duration::from_millis(990)).await;
    assert_eq!(h.fake.last_spawn(), pid, "restarted before the backoff");
    h.advance(Duration::from_millis(20)).await;
    assert_ne!(h.fake.last_spawn(), pid);
}

#[tokio::test(start_paused = true)]
async fn rapid_fail_stops_the_app_until_start() {
    let mut a = app(1);
    a.failure.rapid_fail_max_crashes = 3;
    a.failure.rapid_fail_interval = Duration::from_secs(60);
    let mut h = serving(a).await;
    for _ in 0..3 {
        let pid = h.fake.last_spawn();
        h.fake.exit(pid, ExitStatus::Code(1));
        h.settle().await;
        h.advance(Duration::from_secs(5)).await;
    }
    assert_eq!(h.count(EventKind::RapidFailStopped), 1);
    assert_eq!(h.status().await.state, AppRunState::RapidFailStopped);
    let spawns = h.fake.spawned().len();
    assert_eq!(spawns, 3, "no restart after the third crash");
    h.advance(Duration::from_secs(120)).await;
    assert_eq!(h.fake.spawned().len(), spawns, "stays stopped");
    assert!(h.handle.recycle(RecycleReason::Manual).await.is_err());

    let handle = h.handle.clone();
    let started = tokio::spawn(async move { handle.start().await });
    h.settle().await;
    assert_eq!(h.fake.spawned().len(), spawns + 1);
    h.fake.ready(h.fake.last_spawn());
    h.settle().await;
    assert!(started.await.unwrap().unwrap().contains("started"));
    assert_eq!(h.status().await.state, AppRunState::Running);
}

#[tokio::test(start_paused = true)]
async fn stop_then_start() {
    let mut h = serving(app(2)).await;
    let old = h.fake.spawned();
    assert!(h.handle.stop().await.unwrap().contains("stopped"));
    h.collect();
    for pid in &old {
        assert_eq!(h.fake.signals_to(*pid), vec![SIGTERM]);
    }
    assert_eq!(h.status().await.state, AppRunState::Stopped);
    assert_eq!(h.count(EventKind::Stopped), 1);
    let handle = h.handle.clone();
    let started = tokio::spawn(async move { handle.start().await });
    h.settle().await;
    for pid in &h.fake.spawned()[2..] {
        h.fake.ready(*pid);
    }
    h.settle().await;
    assert!(started.await.unwrap().is_ok());
    assert_eq!(h.serving_pids().await.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_spawn_that_fails_is_a_startup_failure_retried_after_the_backoff() {
    let fake = Fake::default();
    fake.state().spawn_fails = true;
    let mut h = start_with(app(1), Vec::new(), fake).await;
    assert_eq!(h.count(EventKind::StartupFailed), 1);
    assert!(h.fake.spawned().is_empty());
    h.fake.state().spawn_fails = false;
    h.advance(Duration::from_millis(990)).await;
    assert!(h.fake.spawned().is_empty(), "restarted before the backoff");
    h.advance(Duration::from_millis(20)).await;
    assert_eq!(h.fake.spawned().len(), 1);
}

// ---- idle -----------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn idle_timeout_stops_the_workers_and_a_connection_starts_them() {
    let mut a = app(1);
    a.recycle.idle_timeout = Some(Duration::from_secs(60));
    let mut h = serving(a).await;
    let old = h.fake.last_spawn();
    h.advance(Duration::from_secs(30)).await;
    h.fake.send_notify(
        old,
        NotifyMessage {
            requests: Some(1),
            ..NotifyMessage::default()
        },
    );
    h.advance(Duration::from_secs(50)).await;
    assert!(
        h.fake.signals_to(old).is_empty(),
        "a request resets the idle clock"
    );
    h.advance(Duration::from_secs(11)).await;
    assert_eq!(h.fake.signals_to(old), vec![SIGTERM]);
    assert_eq!(h.count(EventKind::IdleStop), 1);
    assert_eq!(h.status().await.state, AppRunState::Idle);
    assert_eq!(h.count(EventKind::Stopped), 0);

    let wake = h
        .fake
        .state()
        .wake
        .take()
        .expect("waiting for a connection");
    let _ = wake.send(());
    h.settle().await;
    assert_eq!(h.count(EventKind::OnDemandStart), 1);
    assert_eq!(h.fake.spawned().len(), 2);
    h.fake.ready(h.fake.last_spawn());
    h.settle().await;
    assert_eq!(h.status().await.state, AppRunState::Running);
}

/// Without a cgroup, what a worker leaves behind when it exits (its process table
/// finds it) is named in an `escaped` event, and `status` lists it while it runs.
#[tokio::test(start_paused = true)]
async fn escaped_pids_are_an_event_and_in_status_while_they_run() {
    let mut h = serving(app(1)).await;
    let worker = h.fake.spawned()[0];
    {
        let mut st = h.fake.state();
        st.escaped.insert(worker, vec![9001, 9002]);
        st.escaped_alive.extend([9001, 9002]);
    }
    assert!(h.status().await.escaped.is_empty());
    h.fake.exit(worker, ExitStatus::Signal(9));
    h.settle().await;
    let e = h.last(EventKind::Escaped).clone();
    assert_eq!((e.worker, e.pid), (Some(0), Some(worker)));
    let detail = e.detail.unwrap();
    assert!(detail.contains("pids 9001 9002"), "{detail}");
    assert!(detail.contains(&format!("worker {worker}")), "{detail}");
    assert_eq!(h.status().await.escaped, [9001, 9002]);

    // One exits by itself: status stops listing it.
    h.fake.state().escaped_alive.remove(&9001);
    assert_eq!(h.status().await.escaped, [9002]);
    // A worker that leaves nothing behind adds no event.
    let n = h.count(EventKind::Escaped);
    let next = h.fake.last_spawn();
    h.fake.ready(next);
    h.fake.exit(next, ExitStatus::Code(1));
    h.settle().await;
    assert_eq!(h.count(EventKind::Escaped), n);
}
