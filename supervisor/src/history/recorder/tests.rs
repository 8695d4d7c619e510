use super::*;

static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

pub(crate) fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "appvisor-history-{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

fn samples(workers: u32, t_s: u64) -> Vec<Sample> {
    (0..workers)
        .map(|w| Sample {
            worker: w,
            generation: 1,
            pid: 100 + w as i32,
            phase: file::PHASE_SERVING,
            private: (100 << 20) + t_s * 1024,
            rss: 120 << 20,
            virtual_: 1 << 30,
            cpu_ms: t_s * 10,
            requests: t_s * 5,
            uptime_ms: t_s * 1000,
        })
        .collect()
}

const T0: u64 = 1_700_000_000_000;

#[test]
fn a_week_of_samples_stays_within_the_size_bound_and_the_retention() {
    let dir = temp_dir("week");
    let bounds = Bounds {
        max_bytes: 2 << 20,
        retention: Duration::from_secs(7 * 86_400),
    };
    let mut r = Recorder::open("web", &dir, bounds, T0).unwrap();
    // 8 days, 4 workers, one sample every 10 s (a compressed week: the bound
    // and the retention are what is checked, not the rate).
    let step = 10_000;
    let end = T0 + 8 * 86_400_000;
    let mut t = T0;
    let mut checks = 0;
    let mut peak_heap = 0;
    while t < end {
        r.record(t, &samples(4, (t - T0) / 1000));
        if (t - T0).is_multiple_of(3_600_000) {
            let on_disk = dir_bytes(&dir);
            assert_eq!(on_disk, r.disk_bytes(), "the recorder's count is the truth");
            assert!(on_disk <= bounds.max_bytes, "{on_disk} bytes at {t}");
            peak_heap = peak_heap.max(r.heap_bytes());
            checks += 1;
        }
        t += step;
    }
    assert!(checks > 190);
    // Full resolution only for the last hour (plus the segment being written).
    let segs = file::list(&dir).unwrap();
    let oldest_full = segs.iter().find(|s| s.kind == Kind::Full).unwrap();
    assert!(oldest_full.start_ms + FULL_WINDOW_MS + FULL_SEGMENT_MS >= t);
    // The bound (2 MiB, about 3.5 days of buckets here) is hit before 7 days: the oldest went.
    let oldest_coarse = segs.iter().find(|s| s.kind == Kind::Coarse).unwrap();
    assert!(oldest_coarse.start_ms > T0 + 86_400_000);
    // Memory does not grow with the hours recorded.
    assert!(peak_heap < 16 << 10, "{peak_heap} bytes of heap");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_history_of_a_removed_app_goes_after_the_retention() {
    let state = temp_dir("removed");
    let bounds = Bounds {
        max_bytes: 64 << 20,
        retention: Duration::from_secs(86_400),
    };
    for app in ["gone", "kept", "recent"] {
        let t = if app == "recent" {
            T0 + 10 * 86_400_000
        } else {
            T0
        };
        let mut r = Recorder::open(app, &app_dir(&state, app), bounds, t).unwrap();
        for i in 0..120 {
            r.record(t + i * 1000, &samples(1, i));
        }
        // Close the minute's bucket in the test's time, not at drop (now).
        r.flush(t + 120_000);
    }
    let now = T0 + 10 * 86_400_000 + 120_000;
    prune_unconfigured(&state, &["kept"], bounds, now);
    assert!(
        !app_dir(&state, "gone").exists(),
        "older than the retention"
    );
    assert!(!file::list(&app_dir(&state, "kept")).unwrap().is_empty());
    assert!(!file::list(&app_dir(&state, "recent")).unwrap().is_empty());
    let _ = std::fs::remove_dir_all(&state);
}

#[test]
fn retention_deletes_old_coarse_segments() {
    let dir = temp_dir("retention");
    let bounds = Bounds {
        max_bytes: 64 << 20,
        retention: Duration::from_secs(86_400),
    };
    let mut r = Recorder::open("web", &dir, bounds, T0).unwrap();
    let mut t = T0;
    while t < T0 + 3 * 86_400_000 {
        r.record(t, &samples(1, (t - T0) / 1000));
        t += 60_000;
    }
    let segs = file::list(&dir).unwrap();
    let oldest = segs.iter().find(|s| s.kind == Kind::Coarse).unwrap();
    assert!(
        oldest.start_ms + COARSE_SEGMENT_MS + 86_400_000 >= t,
        "{segs:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn buckets_hold_min_max_and_mean_and_close_when_the_worker_goes() {
    let dir = temp_dir("buckets");
    let bounds = Bounds {
        max_bytes: 64 << 20,
        retention: Duration::from_secs(86_400),
    };
    let mut r = Recorder::open("web", &dir, bounds, T0).unwrap();
    let base = T0 - T0 % BUCKET_MS;
    for (i, mib) in [10u64, 30, 20].iter().enumerate() {
        let mut s = samples(1, i as u64)[0];
        s.private = mib << 20;
        r.record(base + i as u64 * 1000, &[s]);
    }
    // The worker is gone at the next tick: its bucket is written.
    r.record(base + 3000, &[]);
    let segs = file::list(&dir).unwrap();
    let coarse = segs.iter().find(|s| s.kind == Kind::Coarse).unwrap();
    let read = file::read_segment(coarse, 0, u64::MAX).unwrap();
    assert_eq!(read.records.len(), 1);
    let b = read.records[0];
    assert_eq!((b.count, b.t_ms, b.width_ms), (3, base, BUCKET_MS));
    assert_eq!(
        (b.private_min, b.private, b.private_max),
        (10 << 20, 20 << 20, 30 << 20)
    );
    let full = segs.iter().find(|s| s.kind == Kind::Full).unwrap();
    assert_eq!(
        file::read_segment(full, 0, u64::MAX).unwrap().records.len(),
        3
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_torn_tail_is_cut_back_when_the_history_is_opened_again() {
    let dir = temp_dir("torn");
    let bounds = Bounds {
        max_bytes: 64 << 20,
        retention: Duration::from_secs(86_400),
    };
    {
        let mut r = Recorder::open("web", &dir, bounds, T0).unwrap();
        r.record(T0, &samples(2, 0));
    }
    let full = file::list(&dir)
        .unwrap()
        .into_iter()
        .find(|s| s.kind == Kind::Full)
        .unwrap();
    // A crash half-way through the next append.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&full.path)
        .unwrap();
    f.write_all(&[7u8; 20]).unwrap();
    drop(f);
    let mut r = Recorder::open("web", &dir, bounds, T0 + 1000).unwrap();
    let len = std::fs::metadata(&full.path).unwrap().len();
    assert_eq!(len, (file::HEADER_LEN + 2 * file::FULL_LEN) as u64);
    r.record(T0 + 1000, &samples(2, 1));
    let again = file::list(&dir).unwrap();
    let read: usize = again
        .iter()
        .filter(|s| s.kind == Kind::Full)
        .map(|s| file::read_segment(s, 0, u64::MAX).unwrap().records.len())
        .sum();
    assert_eq!(read, 4);
    let _ = std::fs::remove_dir_all(&dir);
}
