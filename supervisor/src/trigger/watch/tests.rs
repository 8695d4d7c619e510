//! The watcher against real files in temporary directories, with real inotify.
//!
//! Every wait is on a decision with a deadline. "Nothing else arrives" is asserted as
//! silence over a window several times the debounce, which is the only way to observe
//! an absence.

use std::fs;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use appvisor_config::{Compare, Signal, WatchConfig, DEFAULT_WATCH_IGNORE};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tokio::time::timeout;

use super::thread::Burst;
use super::*;

/// A directory under the system temp dir, removed on drop.
struct Tree {
    root: PathBuf,
}

impl Tree {
    fn new(name: &str) -> Tree {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let root = std::env::temp_dir().join(format!(
            "appvisor-watch-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).unwrap();
        Tree { root }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    fn write(&self, rel: &str, content: &str) {
        let p = self.path(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, content).unwrap();
    }

    /// Write a temporary file and rename it over `rel`, as editors save.
    fn atomic_save(&self, rel: &str, content: &str) {
        let tmp = self.path(&format!("{rel}.tmp"));
        fs::write(&tmp, content).unwrap();
        fs::rename(&tmp, self.path(rel)).unwrap();
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}

fn config(paths: &[&str]) -> WatchConfig {
    WatchConfig {
        enabled: true,
        paths: paths.iter().map(|s| s.to_string()).collect(),
        code_dir: "App_Code".into(),
        ignore: DEFAULT_WATCH_IGNORE.iter().map(|s| s.to_string()).collect(),
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
    }
}

fn default_paths() -> WatchConfig {
    config(&[
        "web.config",
        "*.config",
        "global.*",
        "config/**",
        "bin/**",
        "App_Code/**",
    ])
}

const DEADLINE: Duration = Duration::from_secs(20);

async fn start(tree: &Tree, cfg: &WatchConfig) -> (AppWatcher, UnboundedReceiver<WatchDecision>) {
    let (tx, rx) = unbounded_channel();
    let w = AppWatcher::start("test", &tree.root, cfg, tx)
        .await
        .unwrap();
    (w, rx)
}

async fn next(rx: &mut UnboundedReceiver<WatchDecision>) -> WatchDecision {
    timeout(DEADLINE, rx.recv())
        .await
        .expect("no decision within the deadline")
        .expect("watcher stopped")
}

/// No decision for `window`.
async fn silent(rx: &mut UnboundedReceiver<WatchDecision>, window: Duration) {
    if let Ok(d) = timeout(window, rx.recv()).await {
        panic!("unexpected decision: {d:?}");
    }
}

fn file_change(paths: &[&str], count: usize, change: &str) -> WatchDecision {
    WatchDecision::Recycle(RecycleReason::FileChange {
        paths: paths.iter().map(|s| s.to_string()).collect(),
        count,
        change: change.into(),
    })
}

fn ignored(paths: &[&str]) -> WatchDecision {
    WatchDecision::Ignored {
        paths: paths.iter().map(|s| s.to_string()).collect(),
        count: paths.len(),
    }
}

#[tokio::test]
async fn edit_recycles_naming_the_file() {
    let tree = Tree::new("edit");
    tree.write("web.config", "<a/>");
    tree.write("bin/app.dll", "v1");
    let (w, mut rx) = start(&tree, &default_paths()).await;
    let stats = w.stats();
    assert_eq!((stats.backend, stats.files), ("inotify", 2));

    tree.write("web.config", "<b/>");
    assert_eq!(
        next(&mut rx).await,
        file_change(&["web.config"], 1, "modified")
    );
    tree.write("bin/app.dll", "v2");
    assert_eq!(
        next(&mut rx).await,
        file_change(&["bin/app.dll"], 1, "modified")
    );
    let t = w.stats().last_burst.unwrap();
    assert!(t.decided >= t.last_event && t.last_event >= t.first_event);
}

#[tokio::test]
async fn touch_chmod_and_identical_rewrite_are_ignored() {
    let tree = Tree::new("touch");
    tree.write("web.config", "<a/>");
    let (_w, mut rx) = start(&tree, &default_paths()).await;
    let p = tree.path("web.config");

    let f = fs::File::options().write(true).open(&p).unwrap();
    f.set_modified(SystemTime::now() + Duration::from_secs(60))
        .unwrap();
    drop(f);
    assert_eq!(next(&mut rx).await, ignored(&["web.config"]));

    fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(next(&mut rx).await, ignored(&["web.config"]));

    tree.write("web.config", "<a/>");
    assert_eq!(next(&mut rx).await, ignored(&["web.config"]));

    // An editor saving without changes (temp file renamed over): same bytes, not bin/.
    tree.atomic_save("web.config", "<a/>");
    assert_eq!(next(&mut rx).await, ignored(&["web.config"]));

    // Still watching, and the baseline is still the original content.
    tree.write("web.config", "<b/>");
    assert_eq!(
        next(&mut rx).await,
        file_change(&["web.config"], 1, "modified")
    );
}

#[tokio::test]
async fn mtime_compare_recycles_on_touch() {
    let tree = Tree::new("mtime");
    tree.write("web.config", "<a/>");
    let mut cfg = default_paths();
    cfg.compare = Compare::Mtime;
    let (_w, mut rx) = start(&tree, &cfg).await;
    let f = fs::File::options()
        .write(true)
        .open(tree.path("web.config"))
        .unwrap();
    f.set_modified(SystemTime::now() + Duration::from_secs(60))
        .unwrap();
    drop(f);
    assert_eq!(
        next(&mut rx).await,
        file_change(&["web.config"], 1, "modified")
    );
}

#[tokio::test]
async fn ten_thousand_files_are_one_decision() {
    let tree = Tree::new("burst");
    tree.write("bin/app.dll", "v1");
    let mut cfg = default_paths();
    // The burst ends on quiet alone: the copy may take longer than the default cap.
    cfg.debounce = Duration::from_millis(500);
    cfg.max_wait = Duration::from_secs(120);
    let (_w, mut rx) = start(&tree, &cfg).await;
    fs::create_dir(tree.path("bin/lib")).unwrap();
    for i in 0..10_000 {
        fs::write(
            tree.path(&format!("bin/lib/f{i:05}.dll")),
            format!("file {i}"),
        )
        .unwrap();
    }
    match next(&mut rx).await {
        WatchDecision::Recycle(RecycleReason::FileChange {
            paths,
            count,
            change,
        }) => {
            assert_eq!(count, 10_001, "the directory and 10,000 files");
            assert_eq!(change, "created");
            assert_eq!(paths.len(), NAMED_PATHS);
            assert_eq!(paths[0], "bin/lib");
        }
        // inotify's queue (fs.inotify.max_queued_events) may overflow under such a
        // burst; then the one decision is the rescan's.
        WatchDecision::Recycle(RecycleReason::WatchOverflow) => {}
        other => panic!("expected one recycle, got {other:?}"),
    }
    silent(&mut rx, cfg.debounce * 3).await;
}

#[tokio::test]
async fn five_atomic_saves_are_five_recycles() {
    let tree = Tree::new("atomic");
    tree.write("web.config", "v0");
    let (_w, mut rx) = start(&tree, &default_paths()).await;
    for i in 1..=5 {
        tree.atomic_save("web.config", &format!("v{i}"));
        assert_eq!(
            next(&mut rx).await,
            file_change(&["web.config"], 1, "modified"),
            "save {i}"
        );
    }
}

#[tokio::test]
async fn same_bytes_new_inode_counts_only_under_bin() {
    let tree = Tree::new("inode");
    tree.write("bin/app.dll", "same");
    tree.write("app.config", "same");
    let (_w, mut rx) = start(&tree, &default_paths()).await;
    tree.atomic_save("bin/app.dll", "same");
    assert_eq!(
        next(&mut rx).await,
        file_change(&["bin/app.dll"], 1, "modified")
    );
    tree.atomic_save("app.config", "same");
    assert_eq!(next(&mut rx).await, ignored(&["app.config"]));
}

#[tokio::test]
async fn directory_rename_under_bin_recycles() {
    let tree = Tree::new("rename");
    tree.write("bin/sub/a.dll", "a");
    tree.write("bin/sub/b.dll", "b");
    let (_w, mut rx) = start(&tree, &default_paths()).await;
    fs::rename(tree.path("bin/sub"), tree.path("bin/sub2")).unwrap();
    assert_eq!(
        next(&mut rx).await,
        file_change(
            &[
                "bin/sub",
                "bin/sub/a.dll",
                "bin/sub/b.dll",
                "bin/sub2",
                "bin/sub2/a.dll"
            ],
            6,
            "renamed"
        )
    );
}

#[tokio::test]
async fn create_remove_and_a_recreated_bin_is_watched_again() {
    let tree = Tree::new("recreate");
    tree.write("bin/app.dll", "v1");
    let (_w, mut rx) = start(&tree, &default_paths()).await;

    tree.write("bin/new.dll", "n");
    assert_eq!(
        next(&mut rx).await,
        file_change(&["bin/new.dll"], 1, "created")
    );
    fs::remove_file(tree.path("bin/new.dll")).unwrap();
    assert_eq!(
        next(&mut rx).await,
        file_change(&["bin/new.dll"], 1, "removed")
    );

    fs::remove_dir_all(tree.path("bin")).unwrap();
    assert_eq!(
        next(&mut rx).await,
        file_change(&["bin", "bin/app.dll"], 2, "removed")
    );
    tree.write("bin/app.dll", "v2");
    assert_eq!(
        next(&mut rx).await,
        file_change(&["bin", "bin/app.dll"], 2, "created")
    );
    // The new `bin` is a new inode: only a fresh watch sees this edit.
    tree.write("bin/app.dll", "v3");
    assert_eq!(
        next(&mut rx).await,
        file_change(&["bin/app.dll"], 1, "modified")
    );
}

#[tokio::test]
async fn a_directory_created_after_start_is_watched() {
    let tree = Tree::new("later");
    tree.write("web.config", "x");
    let (_w, mut rx) = start(&tree, &default_paths()).await;
    tree.write("App_Code/deep/a.cs", "class A {}");
    match next(&mut rx).await {
        WatchDecision::Recycle(RecycleReason::FileChange { paths, change, .. }) => {
            assert_eq!(change, "created");
            assert!(
                paths.contains(&"App_Code/deep/a.cs".to_owned()),
                "{paths:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    tree.write("App_Code/deep/a.cs", "class B {}");
    assert_eq!(
        next(&mut rx).await,
        file_change(&["App_Code/deep/a.cs"], 1, "modified")
    );
}

#[tokio::test]
async fn a_directory_moved_in_is_watched() {
    let tree = Tree::new("movein");
    tree.write("bin/app.dll", "v1");
    tree.write("staging/lib/a.dll", "a");
    tree.write("staging/lib/deeper/b.dll", "b");
    let (_w, mut rx) = start(&tree, &default_paths()).await;
    fs::rename(tree.path("staging/lib"), tree.path("bin/lib")).unwrap();
    assert_eq!(
        next(&mut rx).await,
        file_change(
            &[
                "bin/lib",
                "bin/lib/a.dll",
                "bin/lib/deeper",
                "bin/lib/deeper/b.dll"
            ],
            4,
            "renamed"
        )
    );
    tree.write("bin/lib/deeper/b.dll", "b2");
    assert_eq!(
        next(&mut rx).await,
        file_change(&["bin/lib/deeper/b.dll"], 1, "modified")
    );
}

#[tokio::test]
async fn soft_changes_signal_then_recycle_past_the_limit() {
    let tree = Tree::new("soft");
    tree.write("views/a.html", "0");
    let mut cfg = default_paths();
    cfg.soft = vec!["views/**".into()];
    cfg.soft_changes_before_recycle = 2;
    let (w, mut rx) = start(&tree, &cfg).await;
    let soft = WatchDecision::Soft {
        paths: vec!["views/a.html".into()],
        count: 1,
    };
    for i in 1..=2 {
        tree.write("views/a.html", &i.to_string());
        assert_eq!(next(&mut rx).await, soft, "soft change {i}");
    }
    tree.write("views/a.html", "3");
    assert_eq!(
        next(&mut rx).await,
        WatchDecision::Recycle(RecycleReason::SoftChangeLimit {
            changes: 3,
            limit: 2
        })
    );
    // The count starts over after the recycle, and after a recycle the pool reports.
    tree.write("views/a.html", "4");
    assert_eq!(next(&mut rx).await, soft);
    w.recycled();
    tree.write("views/a.html", "5");
    assert_eq!(next(&mut rx).await, soft);
    tree.write("views/a.html", "6");
    assert_eq!(next(&mut rx).await, soft);
}

#[tokio::test]
async fn default_ignores_do_not_trigger() {
    let tree = Tree::new("ignore");
    tree.write("bin/app.dll", "v1");
    let (_w, mut rx) = start(&tree, &default_paths()).await;
    tree.write("bin/.app.dll.swp", "swap");
    tree.write("bin/app.dll~", "backup");
    tree.write("bin/.git/HEAD", "ref: main");
    tree.write("bin/server.log", "line");
    tree.write("bin/node_modules/x/index.js", "js");
    tree.write("web.config.tmp", "tmp");
    tree.write("readme.txt", "not watched");
    silent(&mut rx, Duration::from_millis(500)).await;
    // Had any of those counted, they would be folded into this decision.
    tree.write("bin/real.dll", "r");
    assert_eq!(
        next(&mut rx).await,
        file_change(&["bin/real.dll"], 1, "created")
    );
}

#[tokio::test]
async fn polling_sees_edits_and_ignores_touches() {
    let tree = Tree::new("poll");
    tree.write("web.config", "<a/>");
    let mut cfg = default_paths();
    cfg.poll = Some(Duration::from_millis(100));
    let (w, mut rx) = start(&tree, &cfg).await;
    assert_eq!(w.stats().backend, "poll");
    // Same second as the baseline: a whole-second mtime poller would miss it.
    tree.write("web.config", "<b/>");
    assert_eq!(
        next(&mut rx).await,
        file_change(&["web.config"], 1, "modified")
    );
    fs::set_permissions(tree.path("web.config"), fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(next(&mut rx).await, ignored(&["web.config"]));
    tree.write("bin/x.dll", "x");
    assert_eq!(
        next(&mut rx).await,
        file_change(&["bin", "bin/x.dll"], 2, "created")
    );
}

#[tokio::test]
async fn dropping_the_watcher_stops_it() {
    let tree = Tree::new("drop");
    tree.write("web.config", "a");
    let (w, mut rx) = start(&tree, &default_paths()).await;
    drop(w);
    // The thread exits and drops its sender: the channel closes.
    let closed = timeout(DEADLINE, rx.recv())
        .await
        .expect("thread did not stop");
    assert_eq!(closed, None);
}

#[tokio::test]
async fn disabled_is_inert() {
    let tree = Tree::new("off");
    let mut cfg = default_paths();
    cfg.enabled = false;
    let (w, _rx) = start(&tree, &cfg).await;
    assert_eq!(w.stats().backend, "off");
}

#[test]
fn burst_deadline_is_quiet_period_capped_by_max_wait() {
    let t0 = std::time::Instant::now();
    let ms = Duration::from_millis;
    let mut b = Burst::new(t0);
    b.add("a".into(), Flags::MODIFIED, t0);
    assert_eq!(b.deadline(ms(200), ms(2000)), t0 + ms(200));
    b.add("b".into(), Flags::CREATED, t0 + ms(150));
    assert_eq!(b.deadline(ms(200), ms(2000)), t0 + ms(350));
    // A steady stream: the cap wins.
    for i in 0..100 {
        b.add("c".into(), Flags::MODIFIED, t0 + ms(150 + i * 50));
    }
    assert_eq!(b.deadline(ms(200), ms(2000)), t0 + ms(2000));
    assert_eq!(b.dirty.len(), 3);
    assert_eq!(b.dirty[Path::new("b")], Flags::CREATED);
    b.overflowed(t0 + ms(5000));
    assert!(b.overflow && b.dirty.is_empty());
}

#[test]
fn watch_limit_message_says_what_to_do() {
    let e = WatchError::WatchLimit {
        app: "shop".into(),
        needed: 1200,
        limit: Some(8192),
    };
    let m = e.to_string();
    assert!(m.contains("`shop`"), "{m}");
    assert!(m.contains("fs.inotify.max_user_watches = 8192"), "{m}");
    assert!(m.contains("needs 1200 directories"), "{m}");
    assert!(
        m.contains("sysctl fs.inotify.max_user_watches=16384"),
        "{m}"
    );
}

/// A FIFO (or a device) in a watched directory is never opened: opening a FIFO
/// blocks until a writer comes and a device can be read forever, either of which
/// would freeze the watch. Special files are not watched at all: their appearance is
/// not a change, and a real change next to them is still seen, once.
#[tokio::test]
async fn special_files_are_skipped_and_the_watch_goes_on() {
    use nix::sys::stat::Mode;
    let tree = Tree::new("fifo");
    tree.write("bin/app.dll", "v1");
    nix::unistd::mkfifo(&tree.path("bin/before"), Mode::S_IRWXU).unwrap();
    let (w, mut rx) = timeout(DEADLINE, start(&tree, &default_paths()))
        .await
        .expect("building the baseline blocked on a FIFO");
    assert_eq!(w.stats().files, 1, "the FIFO is not a watched file");

    nix::unistd::mkfifo(&tree.path("bin/pipe"), Mode::S_IRWXU).unwrap();
    // A character device, where we may make one (root); /dev/zero reads forever.
    let dev = tree.path("bin/zero");
    let _ = nix::sys::stat::mknod(
        &dev,
        nix::sys::stat::SFlag::S_IFCHR,
        Mode::S_IRUSR | Mode::S_IWUSR,
        nix::sys::stat::makedev(1, 5),
    );
    tree.write("bin/app.dll", "v2");
    assert_eq!(
        next(&mut rx).await,
        file_change(&["bin/app.dll"], 1, "modified")
    );
    // A write into the FIFO (an IN_MODIFY on it) is not a change either.
    let reader = fs::File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(tree.path("bin/pipe"))
        .unwrap();
    fs::write(tree.path("bin/pipe"), "data").unwrap();
    drop(reader);
    silent(&mut rx, Duration::from_millis(600)).await;
    tree.write("bin/app.dll", "v3");
    assert_eq!(
        next(&mut rx).await,
        file_change(&["bin/app.dll"], 1, "modified")
    );
}

/// EMFILE from `inotify_init` is either the per-user instance limit or this
/// process's fd limit; each is named as what it is, and ENFILE as the system's.
#[test]
fn inotify_init_failures_name_the_limit_that_was_hit() {
    use super::watches::fds_exhausted;
    // Out of fds: no fd even to list them, or at the soft limit.
    assert!(fds_exhausted(None, 1024));
    assert!(fds_exhausted(Some(1022), 1024));
    // Far from the fd limit: the EMFILE was the instance limit.
    assert!(!fds_exhausted(Some(40), 1024));

    let descriptors = WatchError::Descriptors {
        app: "shop".into(),
        detail: crate::fd_limit::explain(&std::io::Error::from_raw_os_error(libc::EMFILE)),
    }
    .to_string();
    assert!(descriptors.contains("`shop`"), "{descriptors}");
    assert!(descriptors.contains("EMFILE"), "{descriptors}");
    assert!(descriptors.contains("ulimit -n"), "{descriptors}");
    assert!(!descriptors.contains("max_user_instances"), "{descriptors}");

    // This test process has fds to spare: an EMFILE here is the instance limit.
    let cwd = std::path::Path::new("/srv/shop");
    let emfile =
        super::watches::init_failure("shop", cwd, std::io::Error::from_raw_os_error(libc::EMFILE));
    assert!(
        matches!(emfile, WatchError::InstanceLimit { .. }),
        "{emfile}"
    );
    assert!(
        emfile.to_string().contains("max_user_instances"),
        "{emfile}"
    );
    let enfile =
        super::watches::init_failure("shop", cwd, std::io::Error::from_raw_os_error(libc::ENFILE));
    assert!(matches!(enfile, WatchError::Descriptors { .. }), "{enfile}");
    assert!(enfile.to_string().contains("ENFILE"), "{enfile}");
    assert!(enfile.to_string().contains("fs.file-max"), "{enfile}");
}
