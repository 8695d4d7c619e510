//! Valid configs: every default, every key, every fixture, and the resolved dump
//! reading back to the same config.

use std::path::{Path, PathBuf};
use std::time::Duration;

use appvisor_config::*;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[test]
fn minimal_config_gets_every_default() {
    let path = fixtures().join("minimal.toml");
    let config = load(&path).unwrap();
    let dir = fixtures();
    assert_eq!(config.path, path);
    assert_eq!(config.supervisor.state_dir, dir.join(".appvisor"));
    assert_eq!(config.supervisor.log_max_size, 10 << 20);
    assert_eq!(config.supervisor.log_keep, 5);
    assert_eq!(config.supervisor.events_max_size, 16 << 20);
    assert_eq!(config.supervisor.events_keep, 5);
    assert_eq!(config.supervisor.sample_interval, secs(1));
    assert_eq!(config.supervisor.history_max_size, 64 << 20);
    assert_eq!(config.supervisor.history_retention, secs(7 * 86_400));
    assert_eq!(
        config.store.backend,
        StoreBackend::Embedded(EmbeddedStore {
            tcp: None,
            persist: Persist::EverySec,
            max_memory: None,
            max_value_size: 1 << 20,
            max_clients: 10_000,
        })
    );
    let app = config.app("web").unwrap();
    assert_eq!(app.command, ["python3", "app.py"]);
    assert_eq!(app.cwd, dir);
    assert!(app.env.is_empty());
    assert_eq!(app.processes, 1);
    assert!(app.listen.is_empty());
    assert_eq!(app.ready, ReadyCheck::Notify);
    assert_eq!(
        app.recycle,
        RecycleConfig {
            overlapped: true,
            batch: RecycleBatch::Share(25.0),
            startup_timeout: secs(90),
            shutdown_timeout: secs(90),
            stop_signal: Signal::TERM,
            private_memory: None,
            virtual_memory: None,
            rss: None,
            memory_check_interval: secs(1),
            memory_hard_limit: None,
            requests: None,
            requests_jitter: 0,
            interval: None,
            interval_jitter: Duration::ZERO,
            schedule: vec![],
            idle_timeout: None,
            app_memory: None,
            pressure_candidate: true,
            memory_shares: vec![],
        }
    );
    assert_eq!(
        app.failure,
        FailureConfig {
            rapid_fail_max_crashes: 5,
            rapid_fail_interval: secs(300),
            backoff_initial: Duration::from_millis(100),
            backoff_max: secs(30),
            stable_uptime: secs(30),
        }
    );
    let w = &app.watch;
    assert!(w.enabled);
    assert_eq!(w.code_dir, "App_Code");
    let mut expected_paths: Vec<String> =
        DEFAULT_WATCH_PATHS.iter().map(|s| s.to_string()).collect();
    expected_paths.push("App_Code/**".into());
    assert_eq!(w.paths, expected_paths);
    // The state dir sits inside the app's cwd here, so it is ignored too.
    let mut expected_ignore: Vec<String> =
        DEFAULT_WATCH_IGNORE.iter().map(|s| s.to_string()).collect();
    expected_ignore.push(".appvisor/**".into());
    assert_eq!(w.ignore, expected_ignore);
    assert_eq!(w.debounce, Duration::from_millis(200));
    assert_eq!(w.max_wait, secs(2));
    assert_eq!(w.compare, Compare::Content);
    assert!(w.soft.is_empty());
    assert_eq!(w.soft_signal, Signal::HUP);
    assert_eq!(w.soft_changes_before_recycle, 15);
    assert_eq!(w.poll, None);
    assert_eq!(
        app.health,
        HealthConfig {
            watchdog: None,
            http_probe: None
        }
    );
    assert_eq!(
        app.sessions,
        SessionsConfig {
            mode: SessionMode::Store,
            timeout: secs(20 * 60),
        }
    );
}

#[test]
fn full_config_sets_every_key() {
    let config = load(&fixtures().join("full.toml")).unwrap();
    let dir = fixtures();
    assert_eq!(config.supervisor.state_dir, Path::new("/var/lib/appvisor"));
    assert_eq!(config.supervisor.log_max_size, 20 << 20);
    assert_eq!(config.supervisor.log_keep, 7);
    assert_eq!(
        config.store.backend,
        StoreBackend::Embedded(EmbeddedStore {
            tcp: Some("127.0.0.1:6390".parse().unwrap()),
            persist: Persist::Always,
            max_memory: Some(1 << 30),
            max_value_size: 512 << 10,
            max_clients: 500,
        })
    );
    let web = config.app("web").unwrap();
    assert_eq!(web.cwd, dir.join("site"));
    assert_eq!(web.env["RUST_LOG"], "info");
    assert_eq!(web.env["DOTTED.NAME"], "yes");
    assert_eq!(web.processes, 4);
    assert_eq!(
        web.listen,
        [
            Listen {
                address: ListenAddress::Tcp("127.0.0.1:8080".parse().unwrap()),
                name: "web".into(),
            },
            Listen {
                address: ListenAddress::Unix(dir.join("run/admin.sock")),
                name: "admin".into(),
            },
        ]
    );
    assert_eq!(
        web.ready,
        ReadyCheck::Http {
            path: "/healthz".into()
        }
    );
    let r = &web.recycle;
    assert!(!r.overlapped);
    assert_eq!(r.batch, RecycleBatch::Workers(1));
    assert_eq!(r.startup_timeout, secs(45));
    assert_eq!(r.shutdown_timeout, secs(90));
    assert_eq!(
        r.stop_signal,
        Signal {
            name: "SIGINT",
            number: 2
        }
    );
    assert_eq!(r.private_memory, Some(512 << 20));
    assert_eq!(r.virtual_memory, Some(4 << 30));
    assert_eq!(r.rss, Some(600_000_000));
    assert_eq!(r.memory_check_interval, Duration::from_millis(500));
    assert_eq!(r.memory_hard_limit, Some(1 << 30));
    assert_eq!(r.requests, Some(100_000));
    assert_eq!(r.requests_jitter, 5000);
    assert_eq!(r.interval, Some(secs(29 * 3600)));
    assert_eq!(r.interval_jitter, secs(30 * 60));
    // Sorted, whatever order they were written in.
    assert_eq!(
        r.schedule,
        [
            TimeOfDay {
                hour: 3,
                minute: 0,
                second: 0
            },
            TimeOfDay {
                hour: 15,
                minute: 30,
                second: 10
            },
        ]
    );
    assert_eq!(r.idle_timeout, Some(secs(20 * 60)));
    let f = &web.failure;
    assert_eq!(
        (
            f.rapid_fail_max_crashes,
            f.rapid_fail_interval,
            f.backoff_initial,
            f.backoff_max,
            f.stable_uptime
        ),
        (
            10,
            secs(600),
            Duration::from_millis(250),
            secs(60),
            secs(120)
        )
    );
    let w = &web.watch;
    assert_eq!(w.code_dir, "src");
    assert!(w.paths.contains(&"src/**".to_owned()));
    assert!(!w.paths.contains(&"App_Code/**".to_owned()));
    assert_eq!(w.ignore.last().unwrap(), "cache/**");
    assert!(
        w.ignore.iter().any(|g| g == "**/.git/**"),
        "defaults are merged in"
    );
    assert_eq!(
        (w.debounce, w.max_wait),
        (Duration::from_millis(300), secs(5))
    );
    assert_eq!(w.compare, Compare::Mtime);
    assert_eq!(w.soft, ["templates/**"]);
    assert_eq!(w.soft_signal.name, "SIGUSR2");
    assert_eq!(w.soft_changes_before_recycle, 20);
    assert_eq!(w.poll, Some(secs(2)));
    assert_eq!(
        web.health,
        HealthConfig {
            watchdog: Some(secs(30)),
            http_probe: Some(HttpProbe {
                path: "/ping".into(),
                interval: secs(10),
                timeout: secs(2),
                failures: 5,
            }),
        }
    );
    assert_eq!(web.sessions.mode, SessionMode::Store);
    assert_eq!(web.sessions.timeout, secs(45 * 60));

    let jobs = config.app("jobs").unwrap();
    assert_eq!(jobs.ready, ReadyCheck::Delay(Duration::from_millis(500)));
    assert_eq!(jobs.watch.paths, ["tasks/**/*.py", "settings.toml"]);
    assert!(!jobs.watch.enabled);
    assert_eq!(jobs.sessions.mode, SessionMode::Inproc);
}

#[test]
fn redis_backend_takes_a_url() {
    let config = load(&fixtures().join("redis.toml")).unwrap();
    assert_eq!(
        config.store.backend,
        StoreBackend::Redis {
            url: "redis://127.0.0.1:6379/2".into()
        }
    );
    assert_eq!(config.apps[0].recycle.stop_signal, Signal::TERM);
}

/// Old config files stay valid: every fixture must keep loading.
#[test]
fn every_fixture_loads_and_its_dump_reads_back_the_same() {
    let mut seen = 0;
    for entry in std::fs::read_dir(fixtures()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        seen += 1;
        let config = load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let dumped = config.to_toml_string();
        let again = parse(&dumped, &path).unwrap_or_else(|e| panic!("{e}\n--- dump ---\n{dumped}"));
        assert_eq!(
            again,
            config,
            "dump of {} differs:\n{dumped}",
            path.display()
        );
    }
    assert!(seen >= 4, "fixtures went missing: {seen}");
}

#[test]
fn relative_config_path_still_gives_absolute_paths() {
    let config = parse(
        "[[app]]\nname = \"a\"\ncommand = [\"x\"]\n",
        Path::new("conf/appvisor.toml"),
    )
    .unwrap();
    let cwd = std::env::current_dir().unwrap();
    assert_eq!(config.path, cwd.join("conf/appvisor.toml"));
    assert_eq!(config.apps[0].cwd, cwd.join("conf"));
    assert_eq!(config.supervisor.state_dir, cwd.join("conf/.appvisor"));
}

#[test]
fn missing_file_names_the_path() {
    let err = load(Path::new("/nonexistent/appvisor.toml")).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with("/nonexistent/appvisor.toml: cannot read"),
        "{msg}"
    );
}

#[test]
fn user_resolves_to_ids_before_any_fork() {
    let config = parse(
        "[[app]]\nname = \"a\"\ncommand = [\"x\"]\nuser = \"root\"\ngroups = [\"0\"]\numask = \"0077\"\n[app.rlimits]\nnofile = 10\n",
        Path::new("/tmp/appvisor.toml"),
    )
    .unwrap();
    let p = &config.apps[0].process;
    assert_eq!(p.user, Some(("root".into(), 0)));
    assert_eq!(p.group, Some(("0".into(), 0)));
    assert_eq!(p.groups, Some(vec![0]));
    assert_eq!(p.umask, Some(0o077));
    assert_eq!((p.nofile, p.core, p.nproc), (Some(10), None, None));
}

#[test]
fn secret_env_values_are_redacted_in_the_dump() {
    let config = parse(
        "[[app]]\nname = \"a\"\ncommand = [\"x\"]\nenv = { DB_PASSWORD = \"hunter2\", MODE = \"prod\" }\nsecret_env = [\"DB_PASSWORD\"]\n",
        Path::new("/tmp/appvisor.toml"),
    )
    .unwrap();
    assert_eq!(config.apps[0].env["DB_PASSWORD"], "hunter2");
    let dumped = config.to_toml_string();
    assert!(!dumped.contains("hunter2"), "{dumped}");
    assert!(dumped.contains("DB_PASSWORD = \"(redacted)\""), "{dumped}");
    assert!(dumped.contains("MODE = \"prod\""), "{dumped}");
    // Naming a variable that env does not set is a mistake worth a message.
    let err = parse(
        "[[app]]\nname = \"a\"\ncommand = [\"x\"]\nsecret_env = [\"NOPE\"]\n",
        Path::new("/tmp/appvisor.toml"),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("secret_env") && err.contains("NOPE"), "{err}");
}

#[test]
fn store_password_is_redacted_in_the_dump() {
    let config = parse(
        "[store]\nbackend = \"redis\"\nurl = \"redis://app:s3cret-pw@127.0.0.1:6379/0\"\n",
        Path::new("/tmp/appvisor.toml"),
    )
    .unwrap();
    let dumped = config.to_toml_string();
    assert!(!dumped.contains("s3cret-pw"), "{dumped}");
    assert!(
        dumped.contains("redis://app:(redacted)@127.0.0.1:6379/0"),
        "{dumped}"
    );
}

/// A state dir above the app's cwd (`state_dir = ".."`) is not inside it: no ignore
/// glob is added for it (it was `../**`, which `check`'s dump could not load again,
/// found by the config fuzz target).
#[test]
fn a_state_dir_above_the_cwd_adds_no_ignore_and_the_dump_loads() {
    let path = Path::new("/srv/site/appvisor.toml");
    let text =
        "[supervisor]\nstate_dir = \"..\"\n\n[[app]]\nname = \"web\"\ncommand = [\"./server\"]\n";
    let config = appvisor_config::parse(text, path).expect("loads");
    let ignore = &config.apps[0].watch.ignore;
    let expected: Vec<String> = DEFAULT_WATCH_IGNORE.iter().map(|s| s.to_string()).collect();
    assert_eq!(ignore, &expected);
    let dump = config.to_toml_string();
    appvisor_config::parse(&dump, path).unwrap_or_else(|e| panic!("the dump loads: {e}\n{dump}"));
}

/// `site/../site/.appvisor` is inside `site`: still ignored, written plainly.
#[test]
fn a_state_dir_inside_the_cwd_by_a_roundabout_path_is_ignored() {
    let path = Path::new("/srv/appvisor.toml");
    let text = "[supervisor]\nstate_dir = \"site/../site/.appvisor\"\n\n[[app]]\nname = \"web\"\ncommand = [\"./server\"]\ncwd = \"site\"\n";
    let config = appvisor_config::parse(text, path).expect("loads");
    assert_eq!(config.apps[0].watch.ignore.last().unwrap(), ".appvisor/**");
}

#[test]
fn percentages_resolve_against_the_memory_base() {
    let text = "[supervisor]\nmemory_pressure = { min_available = \"30%\", cooldown = \"20s\" }\n\
                [[app]]\nname = \"web\"\ncommand = [\"x\"]\n\
                [app.recycle]\nprivate_memory = \"25%\"\nmemory_hard_limit = \"50%\"\napp_memory = \"60%\"\n\
                [[app]]\nname = \"batch\"\ncommand = [\"x\"]\n[app.recycle]\noverlapped = false\n";
    let base = appvisor_config::MemoryBase {
        bytes: 512 << 20,
        source: appvisor_config::MemorySource::CgroupV1 {
            path: "/sys/fs/cgroup/memory/t".into(),
        },
    };
    let path = std::path::Path::new("/tmp/appvisor.toml");
    let config = appvisor_config::parse_with(text, path, Some(base.clone())).unwrap();
    let web = &config.app("web").unwrap().recycle;
    assert_eq!(web.private_memory, Some(128 << 20));
    assert_eq!(web.memory_hard_limit, Some(256 << 20));
    assert_eq!(web.app_memory, Some((512u64 << 20) * 6 / 10));
    assert_eq!(
        web.share("private_memory").unwrap().describe(),
        "25 % of 512 MiB, cgroup limit"
    );
    assert!(web.pressure_candidate);
    // Not overlapped: not a pressure candidate unless it says so.
    assert!(!config.app("batch").unwrap().recycle.pressure_candidate);
    let p = config.supervisor.memory_pressure.as_ref().unwrap();
    assert_eq!(p.min_available, Some((512u64 << 20) * 3 / 10));
    assert_eq!(p.cooldown, secs(20));
    assert_eq!(p.interval, secs(1));
    assert_eq!(p.psi_some_avg10, None);
    // `check` prints the percentage with what it resolved to, and reads back the same.
    let rendered = config.to_toml_string();
    assert!(
        rendered.contains("private_memory = \"25%\"  # 25 % of 512 MiB, cgroup limit = 128MiB"),
        "{rendered}"
    );
    let again = appvisor_config::parse_with(&rendered, path, Some(base)).unwrap();
    assert_eq!(again.apps, config.apps);
    assert_eq!(
        again.supervisor.memory_pressure,
        config.supervisor.memory_pressure
    );
}

#[test]
fn history_keys_are_read() {
    let text = "[supervisor]\nsample_interval = \"250ms\"\nhistory_max_size = \"8MiB\"\nhistory_retention = \"2d\"\n";
    let config = appvisor_config::parse(text, Path::new("/tmp/appvisor.toml")).unwrap();
    assert_eq!(
        config.supervisor.sample_interval,
        std::time::Duration::from_millis(250)
    );
    assert_eq!(config.supervisor.history_max_size, 8 << 20);
    assert_eq!(config.supervisor.history_retention, secs(2 * 86_400));
    // `check` prints them, and what it prints reads back the same.
    let again =
        appvisor_config::parse(&config.to_toml_string(), Path::new("/tmp/appvisor.toml")).unwrap();
    assert_eq!(again.supervisor, config.supervisor);
}

/// A `code_dir` with glob characters (`"["`) is watched as the literal directory:
/// its default watch glob is escaped, so `check`'s dump loads again (it was
/// `"[/**"`, an invalid glob; found by the config fuzz target in CI).
#[test]
fn a_code_dir_with_glob_characters_is_escaped_in_the_default_paths() {
    let path = Path::new("/srv/site/appvisor.toml");
    let text =
        "[[app]]\nname = \"web\"\ncommand = [\"./server\"]\n[app.watch]\ncode_dir = \"[x]\"\n";
    let config = appvisor_config::parse(text, path).expect("loads");
    assert_eq!(config.apps[0].watch.paths.last().unwrap(), "\\[x\\]/**");
    let dump = config.to_toml_string();
    let again = appvisor_config::parse(&dump, path)
        .unwrap_or_else(|e| panic!("the dump loads: {e}\n{dump}"));
    assert_eq!(again.apps, config.apps);
}

#[test]
fn recycle_batch_is_a_number_of_workers_or_a_share_of_them_rounded_up() {
    let batch_of = |processes: u32, line: &str| {
        let text = format!(
            "[[app]]\nname = \"web\"\ncommand = [\"app\"]\nprocesses = {processes}\n[app.recycle]\n{line}\n"
        );
        let config = parse(&text, Path::new("appvisor.toml")).unwrap();
        let app = config.app("web").unwrap();
        (app.recycle.batch, app.recycle.batch.of(processes as usize))
    };
    // The default: a quarter, rounded up, so one at a time up to 4 workers.
    assert_eq!(batch_of(2, ""), (RecycleBatch::Share(25.0), 1));
    assert_eq!(batch_of(4, ""), (RecycleBatch::Share(25.0), 1));
    assert_eq!(batch_of(5, ""), (RecycleBatch::Share(25.0), 2));
    assert_eq!(batch_of(32, ""), (RecycleBatch::Share(25.0), 8));
    assert_eq!(batch_of(8, "batch = 3"), (RecycleBatch::Workers(3), 3));
    assert_eq!(
        batch_of(2, "batch = 3"),
        (RecycleBatch::Workers(3), 2),
        "never more than all"
    );
    assert_eq!(
        batch_of(10, "batch = \"50%\""),
        (RecycleBatch::Share(50.0), 5)
    );
    assert_eq!(
        batch_of(3, "batch = \"100%\""),
        (RecycleBatch::Share(100.0), 3)
    );
    // Not overlapped: one at a time, whatever the default.
    assert_eq!(
        batch_of(32, "overlapped = false"),
        (RecycleBatch::Workers(1), 1)
    );
}
