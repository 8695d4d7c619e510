//! The history sampler: every worker, every `sample_interval`, one `/proc` read.

use super::*;
use crate::history::file::{self as hfile, Kind};
use crate::history::recorder::{Bounds, Recorder, RecorderThread};
use crate::trigger::memory::MemorySample;

fn mib(n: u64) -> MemorySample {
    MemorySample {
        private: n << 20,
        rss: (n + 5) << 20,
        virtual_: (n + 100) << 20,
        pids: 1,
    }
}

fn reads(h: &Harness) -> usize {
    h.fake.state().memory_reads
}

/// Starts a pool whose sampler records into `dir` every `interval`.
async fn start_recording(
    app: AppConfig,
    interval: Duration,
    dir: Option<&std::path::Path>,
) -> Harness {
    let fake = Fake::default();
    let (mut pool, inbox, handle) = new_pool(app, Vec::new(), &fake);
    let recorder = dir.map(|d| {
        let bounds = Bounds {
            max_bytes: 64 << 20,
            retention: Duration::from_secs(86_400),
        };
        RecorderThread::start(Recorder::open("web", d, bounds, crate::history::now_ms()).unwrap())
            .unwrap()
    });
    let origin = pool.sampler.origin;
    pool.sampler = super::super::sample::Sampler::new(interval, recorder, origin);
    let mut h = launch(pool, inbox, handle, fake).await;
    for pid in h.fake.spawned() {
        h.fake.ready(pid);
    }
    h.settle().await;
    // Counted from here: a worker's memory is also read once when it becomes ready
    // (the baseline `app_memory` and memory pressure measure growth from).
    h.fake.state().memory_reads = 0;
    h
}

#[tokio::test(start_paused = true)]
async fn every_worker_is_sampled_each_interval_without_any_limit() {
    let mut h = start_recording(app(2), Duration::from_secs(1), None).await;
    let pids = h.fake.spawned();
    h.fake.state().memory.insert(pids[0], mib(50));
    h.fake.state().memory.insert(pids[1], mib(70));
    assert_eq!(reads(&h), 0);
    let st = h.status().await;
    assert!(st.workers.iter().all(|w| w.private.is_none()));
    h.advance(Duration::from_secs(1)).await;
    assert_eq!(reads(&h), 2, "one read per worker per tick");
    let st = h.status().await;
    let w0 = st.workers.iter().find(|w| w.pid == pids[0]).unwrap();
    assert_eq!(w0.private, Some(50 << 20));
    assert_eq!(w0.virtual_memory, Some(150 << 20));
    assert_eq!(w0.cpu_s, Some(0.0));
    h.advance(Duration::from_secs(2)).await;
    assert_eq!(reads(&h), 6);
    // No recycle: no limit is set, the sampler only records.
    assert_eq!(h.count(EventKind::Recycle), 0);
}

#[tokio::test(start_paused = true)]
async fn the_memory_check_uses_the_tick_s_sample() {
    let mut a = app(1);
    a.recycle.private_memory = Some(100 << 20);
    a.recycle.memory_check_interval = Duration::from_secs(1);
    let mut h = start_recording(a, Duration::from_secs(1), None).await;
    let pid = h.fake.spawned()[0];
    h.fake.state().memory.insert(pid, mib(60));
    for _ in 0..3 {
        h.advance(Duration::from_secs(1)).await;
    }
    // Three ticks, each with a memory check: three reads, not six.
    assert_eq!(reads(&h), 3);
    assert_eq!(h.count(EventKind::Recycle), 0);
    // And the check still judges it: over the limit, the worker is recycled.
    h.fake.state().memory.insert(pid, mib(120));
    h.advance(Duration::from_secs(1)).await;
    expect_recycle(&mut h, 0, "memory").await;
}

#[tokio::test(start_paused = true)]
async fn a_stopped_app_is_not_sampled() {
    let mut h = start_recording(app(1), Duration::from_secs(1), None).await;
    h.advance(Duration::from_secs(1)).await;
    assert_eq!(reads(&h), 1);
    h.handle.stop().await.unwrap();
    h.settle().await;
    let before = reads(&h);
    h.advance(Duration::from_secs(10)).await;
    assert_eq!(reads(&h), before, "no worker, no tick");
}

#[tokio::test(start_paused = true)]
async fn each_tick_is_recorded() {
    let dir = std::env::temp_dir().join(format!("appvisor-pool-sample-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut h = start_recording(app(2), Duration::from_millis(500), Some(&dir)).await;
    let pids = h.fake.spawned();
    h.fake.state().memory.insert(pids[1], mib(80));
    for _ in 0..4 {
        h.advance(Duration::from_millis(500)).await;
    }
    // The writer is a thread of its own: wait (in real time) for its appends.
    let read = || {
        let segs = hfile::list(&dir).unwrap();
        let full = segs.iter().find(|s| s.kind == Kind::Full)?;
        Some(hfile::read_segment(full, 0, u64::MAX).unwrap().records)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let recs = loop {
        match read() {
            Some(r) if r.len() >= 8 || std::time::Instant::now() > deadline => break r,
            _ => std::thread::sleep(Duration::from_millis(5)),
        }
    };
    assert_eq!(recs.len(), 8, "2 workers × 4 ticks");
    let w1: Vec<_> = recs.iter().filter(|r| r.pid == pids[1]).collect();
    assert!(w1
        .iter()
        .all(|r| r.private == 80 << 20 && r.worker == 1 && r.generation == 1));
    assert!(w1.windows(2).all(|p| p[0].uptime_ms < p[1].uptime_ms));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Pools tick on one grid: two apps started at different moments sample at the
/// same instants (one wake-up of the runtime for both), never later than one
/// interval from now, and a tick taken late lands back on the grid.
#[test]
fn ticks_of_all_pools_fall_on_one_grid() {
    use super::super::sample::next_tick;
    let interval = Duration::from_millis(1000);
    let origin = Instant::now();
    let a = origin + Duration::from_millis(120);
    let b = origin + Duration::from_millis(490);
    let (na, nb) = (
        next_tick(origin, a, interval),
        next_tick(origin, b, interval),
    );
    assert_eq!(na, origin + interval);
    assert_eq!(nb, na);
    let late = next_tick(origin, na + Duration::from_millis(3), interval);
    assert_eq!(late, na + interval);
    // Before the origin (never in the supervisor): the first grid point.
    assert_eq!(next_tick(a, origin, interval), a + interval);
}
