//! Unit tests of the baseline and the comparison (`snapshot.rs`).

use super::*;
use appvisor_config::{Signal, WatchConfig};
use std::time::{Duration, SystemTime};

fn matcher(root: &Path) -> Matcher {
    let cfg = WatchConfig {
        enabled: true,
        paths: vec!["bin/**".into(), "*.config".into()],
        code_dir: "App_Code".into(),
        ignore: vec!["**/*.swp".into()],
        debounce: Duration::from_millis(100),
        max_wait: Duration::from_secs(2),
        compare: Compare::Content,
        soft: Vec::new(),
        soft_signal: Signal {
            name: "SIGHUP",
            number: 1,
        },
        soft_changes_before_recycle: 15,
        poll: None,
    };
    Matcher::new("test", root, &cfg).unwrap()
}

fn tree(name: &str) -> PathBuf {
    let root =
        std::env::temp_dir().join(format!("appvisor-snapshot-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&root);
    for (rel, body) in [
        ("bin/a.dll", "a"),
        ("bin/b.dll", "b"),
        ("bin/sub/c.dll", "c"),
        ("bin/.x.swp", "swap"),
        ("app.config", "cfg"),
        ("notes.txt", "not watched"),
    ] {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, body).unwrap();
    }
    root
}

fn paths(out: &Outcome) -> Vec<(String, ChangeKind)> {
    out.changes
        .iter()
        .map(|(p, k)| (p.display().to_string(), *k))
        .collect()
}

/// The full comparison an inotify overflow ends in: stat everything, hash only what
/// moved, report what really differs.
#[test]
fn rescan_finds_real_changes_only() {
    let root = tree("rescan");
    let m = matcher(&root);
    let (mut snap, built) = Snapshot::build(&m, Compare::Content);
    assert_eq!(built.files, 4, "a, b, c, app.config");
    assert_eq!(built.dirs.len(), 3, "cwd, bin, bin/sub");

    fs::write(root.join("bin/a.dll"), "a2").unwrap();
    let f = fs::File::options()
        .write(true)
        .open(root.join("bin/b.dll"))
        .unwrap();
    f.set_modified(SystemTime::now() + Duration::from_secs(60))
        .unwrap();
    drop(f);
    fs::remove_dir_all(root.join("bin/sub")).unwrap();
    fs::write(root.join("bin/d.dll"), "d").unwrap();
    fs::write(root.join("notes.txt"), "still not watched").unwrap();

    let out = snap.rescan(&m);
    assert_eq!(
        paths(&out),
        vec![
            ("bin/a.dll".into(), ChangeKind::Modified),
            ("bin/d.dll".into(), ChangeKind::Created),
            ("bin/sub".into(), ChangeKind::Removed),
            ("bin/sub/c.dll".into(), ChangeKind::Removed),
        ]
    );
    assert!(
        out.ignored.is_empty(),
        "a rescan names no event, so nothing is 'ignored'"
    );
    // The baseline now holds the disk: a second rescan finds nothing.
    assert!(snap.rescan(&m).changes.is_empty());
    let _ = fs::remove_dir_all(&root);
}

/// What polling feeds the debounce: stat differences, baseline untouched.
#[test]
fn stat_diff_reports_without_updating() {
    let root = tree("statdiff");
    let m = matcher(&root);
    let (mut snap, _) = Snapshot::build(&m, Compare::Content);
    assert!(snap.stat_diff(&m).is_empty());
    fs::write(root.join("app.config"), "changed").unwrap();
    fs::remove_file(root.join("bin/b.dll")).unwrap();
    let diff: Vec<(String, Flags)> = snap
        .stat_diff(&m)
        .into_iter()
        .map(|(p, f, _)| (p.display().to_string(), f))
        .collect();
    assert_eq!(
        diff,
        vec![
            ("app.config".into(), Flags::MODIFIED),
            ("bin/b.dll".into(), Flags::REMOVED),
        ]
    );
    assert_eq!(
        snap.stat_diff(&m).len(),
        2,
        "still different until reconciled"
    );
    let _ = fs::remove_dir_all(&root);
}

#[test]
fn bin_rule() {
    assert!(under_bin(Path::new("bin/app.dll")));
    assert!(under_bin(Path::new("bin/x/app.so")));
    assert!(under_bin(Path::new("sub/bin/app")));
    assert!(!under_bin(Path::new("bin")));
    assert!(!under_bin(Path::new("web.config")));
    assert!(!under_bin(Path::new("binary/app")));
}

/// At most `limit` bytes are read; past it the size and times stand for the rest,
/// and only regular files are read at all.
#[test]
fn hashing_is_bounded_and_reads_regular_files_only() {
    let root = tree("bound");
    let big = root.join("big");
    let mut buf = vec![0; 4096];
    fs::write(&big, vec![b'a'; 10_000]).unwrap();
    let h1 = hash_file(&big, &mut buf, 4096).unwrap();
    assert_eq!(h1, hash_file(&big, &mut buf, 4096).unwrap(), "stable");
    // A different tail with another mtime: beyond the bound, the stat tells.
    let mut bytes = vec![b'a'; 10_000];
    bytes[9_000] = b'b';
    fs::write(&big, &bytes).unwrap();
    let f = fs::File::options().write(true).open(&big).unwrap();
    f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5))
        .unwrap();
    drop(f);
    assert_ne!(h1, hash_file(&big, &mut buf, 4096).unwrap());
    // Within the bound the bytes alone decide: equal content, equal hash.
    let small = root.join("small");
    fs::write(&small, "same").unwrap();
    let s1 = hash_file(&small, &mut buf, 4096).unwrap();
    fs::write(&small, "same").unwrap();
    assert_eq!(s1, hash_file(&small, &mut buf, 4096).unwrap());
    // A FIFO (no writer) and a device fail at once instead of blocking or
    // reading forever.
    let fifo = root.join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    assert!(hash_file(&fifo, &mut buf, MAX_HASHED_BYTES).is_err());
    assert!(hash_file(Path::new("/dev/zero"), &mut buf, MAX_HASHED_BYTES).is_err());
    let _ = fs::remove_dir_all(&root);
}
