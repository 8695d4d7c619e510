//! Every trigger: watch, memory, requests, age, watchdog, health probe, schedule.

use appvisor_config::Listen;

use super::fake::Op;
use super::*;
use crate::trigger::memory::MemorySample;

const SIGHUP: Signal = Signal::HUP;

// ---- triggers -------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_watch_decision_recycles_every_slot_and_a_soft_one_signals() {
    let mut a = app(2);
    a.watch.soft_signal = SIGHUP;
    let mut h = serving(a).await;
    let old = h.fake.spawned();
    h.watch_tx
        .send(WatchDecision::Soft {
            paths: vec!["templates/a.html".into()],
            count: 1,
        })
        .unwrap();
    h.settle().await;
    assert_eq!(h.fake.signals_to(old[0]), vec![SIGHUP]);
    assert_eq!(h.fake.signals_to(old[1]), vec![SIGHUP]);
    assert_eq!(h.fake.spawned().len(), 2, "a soft change does not recycle");

    h.watch_tx
        .send(WatchDecision::Recycle(RecycleReason::FileChange {
            paths: vec!["app.py".into()],
            count: 1,
            change: "modified".into(),
        }))
        .unwrap();
    h.settle().await;
    expect_recycle(&mut h, 0, "file_change").await;
    expect_recycle(&mut h, 1, "file_change").await;
}

#[tokio::test(start_paused = true)]
async fn private_memory_over_its_limit_recycles_that_worker() {
    let mut a = app(2);
    a.recycle.private_memory = Some(100 << 20);
    a.recycle.memory_check_interval = Duration::from_secs(1);
    let mut h = serving(a).await;
    let old = h.fake.spawned();
    h.fake.state().memory.insert(
        old[1],
        MemorySample {
            private: 200 << 20,
            ..MemorySample::default()
        },
    );
    h.advance(Duration::from_millis(990)).await;
    assert_eq!(h.fake.spawned().len(), 2);
    h.advance(Duration::from_millis(20)).await;
    assert_eq!(h.fake.spawned().len(), 3);
    expect_recycle(&mut h, 1, "memory").await;
    assert!(h.fake.signals_to(old[0]).is_empty(), "only that worker");
}

#[tokio::test(start_paused = true)]
async fn memory_hard_limit_kills_at_once_and_restarts_the_slot() {
    let mut a = app(1);
    a.recycle.memory_hard_limit = Some(100 << 20);
    a.recycle.memory_check_interval = Duration::from_secs(1);
    let mut h = serving(a).await;
    let old = h.fake.last_spawn();
    h.fake.state().memory.insert(
        old,
        MemorySample {
            private: 200 << 20,
            ..MemorySample::default()
        },
    );
    h.advance(Duration::from_secs(1)).await;
    assert!(h.fake.position(&Op::KillGroup { pid: old }).is_some());
    assert!(h.fake.signals_to(old).is_empty(), "no drain");
    assert_eq!(h.last(EventKind::Killed).reason.as_deref(), Some("memory"));
    h.settle().await;
    assert_eq!(h.fake.spawned().len(), 2, "the slot restarts at once");
    assert_eq!(h.count(EventKind::Retired), 0);
}

#[tokio::test(start_paused = true)]
async fn the_request_count_limit_recycles_that_worker() {
    let mut a = app(1);
    a.recycle.requests = Some(10);
    a.recycle.requests_jitter = 0;
    let mut h = serving(a).await;
    let old = h.fake.last_spawn();
    let requests = |n| NotifyMessage {
        requests: Some(n),
        ..NotifyMessage::default()
    };
    h.fake.send_notify(old, requests(9));
    h.settle().await;
    assert_eq!(h.fake.spawned().len(), 1);
    h.fake.send_notify(old, requests(10));
    h.settle().await;
    assert_eq!(h.fake.spawned().len(), 2, "at the limit");
    h.fake.send_notify(old, requests(11));
    h.settle().await;
    assert_eq!(h.fake.spawned().len(), 2, "once, not per report");
    expect_recycle(&mut h, 0, "requests").await;
}

#[tokio::test(start_paused = true)]
async fn the_interval_recycles_a_worker_at_its_age() {
    let mut a = app(1);
    a.recycle.interval = Some(Duration::from_secs(3600));
    a.recycle.interval_jitter = Duration::ZERO;
    let mut h = serving(a).await;
    h.advance(Duration::from_secs(3590)).await;
    assert_eq!(h.fake.spawned().len(), 1);
    h.advance(Duration::from_secs(11)).await;
    assert_eq!(h.fake.spawned().len(), 2);
    expect_recycle(&mut h, 0, "age").await;
}

#[tokio::test(start_paused = true)]
async fn a_missing_watchdog_recycles_the_worker() {
    let mut a = app(1);
    a.health.watchdog = Some(Duration::from_secs(10));
    let mut h = serving(a).await;
    let old = h.fake.last_spawn();
    h.advance(Duration::from_secs(8)).await;
    h.fake.send_notify(
        old,
        NotifyMessage {
            watchdog: true,
            ..NotifyMessage::default()
        },
    );
    h.advance(Duration::from_secs(8)).await;
    assert_eq!(h.fake.spawned().len(), 1, "WATCHDOG=1 renews the deadline");
    h.advance(Duration::from_secs(3)).await;
    assert_eq!(h.fake.spawned().len(), 2);
    expect_recycle(&mut h, 0, "unhealthy").await;
}

#[tokio::test(start_paused = true)]
async fn failed_health_probes_recycle_the_app() {
    let mut a = app(1);
    a.health.http_probe = Some(appvisor_config::HttpProbe {
        path: "/healthz".into(),
        interval: Duration::from_secs(5),
        timeout: Duration::from_secs(1),
        failures: 2,
    });
    let listen = Listen {
        address: ListenAddress::Tcp("127.0.0.1:0".parse().unwrap()),
        name: "web".into(),
    };
    let socket = crate::sockets::bind("web", &listen).unwrap();
    let fake = Fake::default();
    fake.state().http_ok = true;
    let mut h = start_with(a, vec![socket], fake).await;
    h.fake.ready(h.fake.last_spawn());
    h.advance(Duration::from_secs(30)).await;
    assert_eq!(h.fake.spawned().len(), 1, "healthy");

    h.fake.state().http_ok = false;
    h.advance(Duration::from_secs(5)).await;
    assert_eq!(h.fake.spawned().len(), 1, "one failure is not enough");
    h.advance(Duration::from_secs(5)).await;
    assert_eq!(h.fake.spawned().len(), 2);
    expect_recycle(&mut h, 0, "unhealthy").await;
}

/// `schedule` fires from the wall clock, which paused time does not move: the
/// reaction is driven directly, with a fire time already past.
#[tokio::test(start_paused = true)]
async fn a_schedule_fire_recycles_the_app() {
    let fake = Fake::default();
    let (mut pool, _inbox, _handle) = new_pool(app(1), Vec::new(), &fake);
    let mut events = pool.events.subscribe();
    pool.start_all();
    let old = fake.last_spawn();
    pool.on_ready(old);
    let past = jiff::Zoned::now()
        .checked_sub(jiff::SignedDuration::from_secs(1))
        .unwrap();
    pool.on_schedule(past);
    assert_eq!(fake.spawned().len(), 2);
    let new = fake.last_spawn();
    pool.on_ready(new);
    assert_eq!(fake.signals_to(old), vec![SIGTERM]);
    let mut recycle = None;
    while let Ok(line) = events.try_recv() {
        let e: Event = serde_json::from_str(&line).unwrap();
        if e.kind == EventKind::Recycle {
            recycle = Some(e);
        }
    }
    assert_eq!(recycle.unwrap().reason.as_deref(), Some("schedule"));
}

/// The pool's schedule runs on [`ScheduleTimer`]: its deadline fires only when the
/// wall clock agrees (a clock stepped back waits the rest), fires once per time of
/// day, and re-arms for the next day. The wall clock is passed in, as the timer's
/// seam, because paused tokio time does not move it.
#[tokio::test(start_paused = true)]
async fn the_schedule_deadline_fires_once_through_the_timer() {
    let mut a = app(1);
    let in_an_hour = jiff::Zoned::now()
        .checked_add(jiff::SignedDuration::from_secs(3600))
        .unwrap();
    a.recycle.schedule = vec![appvisor_config::TimeOfDay {
        hour: in_an_hour.hour() as u8,
        minute: in_an_hour.minute() as u8,
        second: 0,
    }];
    let fake = Fake::default();
    let (mut pool, _inbox, _handle) = new_pool(a, Vec::new(), &fake);
    let mut events = pool.events.subscribe();
    pool.arm_app_timers();
    pool.start_all();
    let old = fake.last_spawn();
    pool.on_ready(old);
    let timer = pool.next_schedule.clone().expect("a schedule is armed");
    let at = timer.next_fire().unwrap().clone();
    let deadline = Instant::from_std(timer.deadline().unwrap());

    // The monotonic deadline passed but the wall clock was stepped back: no fire.
    let behind = at.checked_sub(jiff::SignedDuration::from_secs(60)).unwrap();
    pool.on_schedule_deadline(&behind, deadline);
    assert_eq!(fake.spawned().len(), 1, "no recycle before the wall time");
    let rearmed = pool.next_schedule.clone().unwrap();
    assert_eq!(
        rearmed.next_fire(),
        Some(&at),
        "still waiting for the same time"
    );

    // The wall time came: one recycle, and the next fire is tomorrow's.
    let past = at.checked_add(jiff::SignedDuration::from_secs(1)).unwrap();
    let later = Instant::from_std(rearmed.deadline().unwrap());
    pool.on_schedule_deadline(&past, later);
    assert_eq!(fake.spawned().len(), 2);
    let next = pool.next_schedule.clone().unwrap();
    assert_eq!(
        next.next_fire().unwrap().date(),
        at.date().tomorrow().unwrap()
    );

    // Waking again at the same moment fires nothing: the time fired once.
    pool.on_schedule_deadline(&past, later);
    assert_eq!(fake.spawned().len(), 2, "one time of day fires once");

    pool.on_ready(fake.last_spawn());
    let mut reasons = Vec::new();
    while let Ok(line) = events.try_recv() {
        let e: Event = serde_json::from_str(&line).unwrap();
        if e.kind == EventKind::Recycle {
            reasons.push(e.reason);
        }
    }
    assert_eq!(reasons, [Some("schedule".to_owned())]);
}
