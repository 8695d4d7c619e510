//! Memory across workers and apps: `app_memory`, `[supervisor] memory_pressure`
//! (the choice of the worker, the cooldown) and OOM kills named in `crashed`.

use std::collections::BTreeMap;
use std::sync::Mutex;

use appvisor_config::MemoryPressureConfig;

use super::*;
use crate::trigger::memory::MemorySample;
use crate::trigger::pressure::{monitor, Reading};

const MIB: u64 = 1 << 20;

fn set_private(h: &Harness, pid: i32, private: u64) {
    h.fake.state().memory.insert(
        pid,
        MemorySample {
            private,
            ..MemorySample::default()
        },
    );
}

#[tokio::test(start_paused = true)]
async fn app_memory_recycles_the_worker_that_grew_most_one_at_a_time() {
    let mut a = app(3);
    a.recycle.app_memory = Some(600 * MIB);
    let h0 = start(a).await;
    let pids = h0.fake.spawned();
    // At ready: 150, 250, 100 MiB. Growth counts from here.
    for (pid, mib) in pids.iter().zip([150, 250, 100]) {
        set_private(&h0, *pid, mib * MIB);
        h0.fake.ready(*pid);
    }
    let mut h = h0;
    h.settle().await;
    // 150+100 → 250 (+100), 250 → 300 (+50), 100 → 120 (+20): 670 MiB > 600 MiB.
    // The biggest is the second; the one that grew most is the first.
    set_private(&h, pids[0], 250 * MIB);
    set_private(&h, pids[1], 300 * MIB);
    set_private(&h, pids[2], 120 * MIB);
    h.advance(Duration::from_secs(1)).await;
    assert_eq!(h.fake.spawned().len(), 4, "one candidate, for one worker");
    // While that recycle runs, nothing else is chosen, over the limit or not.
    h.advance(Duration::from_secs(1)).await;
    assert_eq!(h.fake.spawned().len(), 4, "one at a time");
    expect_recycle(&mut h, 0, "app_memory").await;
    let e = h.last(EventKind::Recycle);
    assert_eq!(
        e.cause,
        Some(RecycleReason::AppMemory {
            bytes: 670 * MIB,
            limit: 600 * MIB,
            growth: 100 * MIB
        })
    );
    assert_eq!(h.fake.signals_to(pids[0]), vec![SIGTERM], "drained");
    assert!(h.fake.signals_to(pids[1]).is_empty());
    assert!(h.fake.signals_to(pids[2]).is_empty());
    // The old worker is gone; the new one starts at 0 (the fake's default): 420 MiB.
    h.settle().await;
    h.advance(Duration::from_secs(2)).await;
    assert_eq!(
        h.fake.spawned().len(),
        4,
        "under the limit: no more recycles"
    );
}

fn pressure_cfg(cooldown: Duration) -> MemoryPressureConfig {
    MemoryPressureConfig {
        min_available: Some(150 * MIB),
        min_available_share: None,
        psi_some_avg10: Some(40.0),
        cooldown,
        interval: Duration::from_secs(1),
    }
}

/// Two pools, `web` (overlapped) and `batch` (not), and a monitor reading
/// `reading`.
async fn two_apps(
    batch_candidate: Option<bool>,
    reading: Arc<Mutex<Reading>>,
) -> (Harness, Harness, tokio::task::JoinHandle<()>) {
    let web = serving(app(2)).await;
    let mut b = app(1);
    b.name = "batch".into();
    b.recycle.overlapped = false;
    b.recycle.pressure_candidate = batch_candidate.unwrap_or(false);
    let batch = serving(b).await;
    let pools: BTreeMap<String, PoolHandle> = [
        ("web".to_string(), web.handle.clone()),
        ("batch".to_string(), batch.handle.clone()),
    ]
    .into();
    let task = tokio::spawn(monitor(
        pressure_cfg(Duration::from_secs(30)),
        move || *reading.lock().unwrap(),
        Arc::new(Mutex::new(pools)),
    ));
    (web, batch, task)
}

#[tokio::test(start_paused = true)]
async fn pressure_recycles_the_candidate_that_grew_most_then_waits_its_cooldown() {
    let reading = Arc::new(Mutex::new(Reading {
        available: Some(400 * MIB),
        psi_some_avg10: Some(0.5),
    }));
    let (mut web, mut batch, task) = two_apps(None, reading.clone()).await;
    let w = web.fake.spawned();
    let b = batch.fake.spawned();
    // Everyone started at 0. batch grew most, but it is not overlapped: no candidate.
    set_private(&web, w[0], 40 * MIB);
    set_private(&web, w[1], 90 * MIB);
    set_private(&batch, b[0], 300 * MIB);
    web.advance(Duration::from_secs(3)).await;
    assert_eq!(web.fake.spawned().len(), 2, "memory is not short: nothing");

    reading.lock().unwrap().available = Some(100 * MIB);
    web.advance(Duration::from_secs(1)).await;
    assert_eq!(
        web.fake.spawned().len(),
        3,
        "the shortage is acted on within a tick"
    );
    expect_recycle(&mut web, 1, "memory_pressure").await;
    assert_eq!(
        web.last(EventKind::Recycle).cause,
        Some(RecycleReason::MemoryPressure {
            available: Some(100 * MIB),
            min_available: Some(150 * MIB),
            psi_some_avg10: Some(0.5),
            psi_threshold: Some(40.0),
            growth: 90 * MIB,
        })
    );
    assert_eq!(
        web.fake.signals_to(w[1]),
        vec![SIGTERM],
        "drained, not killed"
    );
    assert!(web.fake.signals_to(w[0]).is_empty());
    batch.settle().await;
    assert_eq!(batch.fake.spawned().len(), 1, "the other app is untouched");
    assert!(batch.fake.signals_to(b[0]).is_empty());

    // Still short: nothing more inside the cooldown (30 s from the choice)…
    web.advance(Duration::from_secs(28)).await;
    assert_eq!(
        web.fake.spawned().len(),
        3,
        "no second recycle inside cooldown"
    );
    // …then the next one that grew most.
    web.advance(Duration::from_secs(2)).await;
    assert_eq!(web.fake.spawned().len(), 4);
    expect_recycle(&mut web, 0, "memory_pressure").await;
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn psi_alone_triggers_and_pressure_candidate_admits_a_non_overlapped_app() {
    let reading = Arc::new(Mutex::new(Reading {
        available: Some(400 * MIB),
        psi_some_avg10: Some(55.0),
    }));
    let (mut web, mut batch, task) = two_apps(Some(true), reading).await;
    let b = batch.fake.spawned();
    set_private(&web, web.fake.spawned()[0], 40 * MIB);
    set_private(&batch, b[0], 300 * MIB);
    web.advance(Duration::from_secs(1)).await;
    batch.settle().await;
    assert_eq!(web.fake.spawned().len(), 2, "web grew less: untouched");
    // batch is not overlapped: its worker is stopped first, then replaced.
    assert_eq!(batch.fake.signals_to(b[0]), vec![SIGTERM]);
    batch.settle().await;
    batch.fake.ready(batch.fake.last_spawn());
    batch.settle().await;
    let e = batch.last(EventKind::Recycle);
    assert_eq!(e.reason.as_deref(), Some("memory_pressure"));
    assert!(
        e.detail
            .as_deref()
            .unwrap()
            .contains("PSI memory some avg10 55.00 > 40"),
        "{e:?}"
    );
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn an_oom_kill_is_named_in_the_crashed_event() {
    let mut h = serving(app(2)).await;
    let pids = h.fake.spawned();
    h.fake
        .state()
        .oom
        .insert(pids[0], "kernel log: Killed process 1 (worker)".into());
    h.fake.exit(pids[0], ExitStatus::Signal(9));
    h.fake.exit(pids[1], ExitStatus::Signal(9));
    h.settle().await;
    let crashed: Vec<&Event> = h
        .seen
        .iter()
        .filter(|e| e.kind == EventKind::Crashed)
        .collect();
    assert_eq!(crashed.len(), 2);
    let oom = crashed.iter().find(|e| e.pid == Some(pids[0])).unwrap();
    assert_eq!(oom.reason.as_deref(), Some("oom_killed"));
    assert!(oom.detail.as_deref().unwrap().contains("Killed process 1"));
    // A SIGKILL without the kernel's record is not called an OOM kill.
    let other = crashed.iter().find(|e| e.pid == Some(pids[1])).unwrap();
    assert_eq!(other.reason, None);
    assert_eq!(other.signal.as_deref(), Some("SIGKILL"));
}

#[tokio::test(start_paused = true)]
async fn a_worker_that_barely_grew_is_not_recycled_for_pressure() {
    let reading = Arc::new(Mutex::new(Reading {
        available: Some(100 * MIB),
        psi_some_avg10: None,
    }));
    let (mut web, mut batch, task) = two_apps(Some(true), reading).await;
    set_private(&web, web.fake.spawned()[0], 512 << 10);
    web.advance(Duration::from_secs(3)).await;
    batch.settle().await;
    assert_eq!(
        web.fake.spawned().len(),
        2,
        "512 KiB of growth is not a leak"
    );
    assert_eq!(batch.fake.spawned().len(), 1);
    task.abort();
}
