//! Issue: recycle triggers — watched files, memory, requests, age, schedule, idle,
//! health, config reload. Real files, real processes, the real binary.

use std::time::Duration;

use appvisor_e2e::load::Load;
use appvisor_e2e::*;
use serde_json::Value;

const LONG: Duration = Duration::from_secs(30);

fn app(name: &str, port: u16, extra: &str) -> String {
    format!(
        "[[app]]\nname = \"{name}\"\ncommand = [\"{demo}\"]\nlisten = [\"tcp://127.0.0.1:{port}\"]\n{extra}\n",
        demo = example_bin("demo").display()
    )
}

fn recycles(sv: &Supervisor, app: &str) -> Vec<Value> {
    sv.events_of("recycle")
        .into_iter()
        .filter(|e| e["app"] == app)
        .collect()
}

fn wait_recycles(sv: &Supervisor, app: &str, n: usize) -> Vec<Value> {
    wait_until(LONG, &format!("{n} recycle(s) of {app}"), || {
        let r = recycles(sv, app);
        (r.len() >= n).then_some(r)
    })
}

fn wait_watching(sv: &Supervisor) {
    sv.wait_event("the watcher", LONG, |e| e["kind"] == "watching");
}

#[test]
fn content_changes_recycle_but_touch_chmod_and_identical_saves_do_not() {
    let sb = Sandbox::new("content");
    let port = free_port();
    sb.write("web.config", "<config a=1/>");
    sb.config(&app("web", port, "[app.watch]\ndebounce = \"100ms\"\n"));
    let sv = sb.start();
    sv.wait_running("web", 1);
    wait_watching(&sv);

    // touch, chmod, identical bytes: logged as ignored, never a recycle.
    let f = sb.path("web.config");
    let now = std::time::SystemTime::now() + Duration::from_secs(5);
    std::fs::File::options()
        .write(true)
        .open(&f)
        .unwrap()
        .set_modified(now)
        .unwrap();
    sv.wait_event("ignored touch", LONG, |e| e["kind"] == "ignored_change");
    let n = sv.events_of("ignored_change").len();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
    wait_until(LONG, "ignored chmod", || {
        (sv.events_of("ignored_change").len() > n).then_some(())
    });
    let n = sv.events_of("ignored_change").len();
    std::fs::write(&f, "<config a=1/>").unwrap();
    wait_until(LONG, "ignored identical save", || {
        (sv.events_of("ignored_change").len() > n).then_some(())
    });
    assert!(
        recycles(&sv, "web").is_empty(),
        "{:?}",
        recycles(&sv, "web")
    );

    // A real edit: exactly one recycle naming the file.
    std::fs::write(&f, "<config a=2/>").unwrap();
    let r = wait_recycles(&sv, "web", 1);
    assert_eq!(r[0]["reason"], "file_change");
    assert!(
        r[0]["detail"].as_str().unwrap().contains("web.config"),
        "{}",
        r[0]
    );
    assert_eq!(r[0]["cause"]["paths"][0], "web.config");
}

#[test]
fn compare_mtime_recycles_on_a_touch() {
    let sb = Sandbox::new("mtime");
    let port = free_port();
    sb.write("web.config", "x");
    sb.config(&app(
        "web",
        port,
        "[app.watch]\ndebounce = \"100ms\"\ncompare = \"mtime\"\n",
    ));
    let sv = sb.start();
    sv.wait_running("web", 1);
    wait_watching(&sv);
    let later = std::time::SystemTime::now() + Duration::from_secs(5);
    std::fs::File::options()
        .write(true)
        .open(sb.path("web.config"))
        .unwrap()
        .set_modified(later)
        .unwrap();
    let r = wait_recycles(&sv, "web", 1);
    assert!(r[0]["detail"].as_str().unwrap().contains("web.config"));
}

#[test]
fn ten_thousand_files_copied_into_bin_make_exactly_one_recycle() {
    let sb = Sandbox::new("burst");
    let port = free_port();
    std::fs::create_dir_all(sb.path("bin")).unwrap();
    sb.write("web.config", "v1");
    sb.config(&app(
        "web",
        port,
        "[app.watch]\ndebounce = \"300ms\"\nmax_wait = \"10s\"\n",
    ));
    let sv = sb.start();
    sv.wait_running("web", 1);
    wait_watching(&sv);
    for i in 0..10_000 {
        std::fs::write(sb.path(&format!("bin/lib{i}.dll")), format!("binary {i}")).unwrap();
    }
    let first = wait_recycles(&sv, "web", 1);
    assert_eq!(first[0]["cause"]["count"], 10_000, "{}", first[0]);
    sv.wait_running("web", 1);
    // A sentinel change after the burst: its recycle must be the second one, and
    // name only the sentinel — so the burst produced exactly one.
    std::fs::write(sb.path("web.config"), "v2").unwrap();
    let all = wait_recycles(&sv, "web", 2);
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(
        all[1]["cause"]["paths"],
        serde_json::json!(["web.config"]),
        "{}",
        all[1]
    );
}

#[test]
fn five_atomic_saves_after_the_debounce_make_five_recycles() {
    let sb = Sandbox::new("atomic");
    let port = free_port();
    sb.write("appsettings.json", "{\"v\":0}");
    sb.config(&app("web", port, "[app.watch]\ndebounce = \"100ms\"\n"));
    let sv = sb.start();
    sv.wait_running("web", 1);
    wait_watching(&sv);
    for i in 1..=5 {
        // An editor's save: write a temp file, rename it over the original.
        sb.write("appsettings.json.new~", &format!("{{\"v\":{i}}}"));
        std::fs::rename(
            sb.path("appsettings.json.new~"),
            sb.path("appsettings.json"),
        )
        .unwrap();
        wait_recycles(&sv, "web", i);
        sv.wait_running("web", 1);
    }
    let r = recycles(&sv, "web");
    assert_eq!(r.len(), 5);
    assert!(
        r.iter()
            .all(|e| e["cause"]["paths"][0] == "appsettings.json"),
        "{r:?}"
    );
}

#[test]
fn a_leaking_worker_is_recycled_for_private_memory_without_failed_requests() {
    let sb = Sandbox::new("leak");
    let port = free_port();
    let rate_mb = 20.0;
    sb.config(&app(
        "web",
        port,
        "env = { DEMO_LEAK_MB_PER_SEC = \"20\" }\n[app.recycle]\nprivate_memory = \"80MiB\"\nmemory_check_interval = \"500ms\"\n[app.watch]\nenabled = false\n",
    ));
    let sv = sb.start();
    sv.wait_running("web", 1);
    let load = Load::start(port, 4, true, "/");
    let r = wait_recycles(&sv, "web", 1);
    load.wait_for_requests(100);
    let report = load.finish();
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    let cause = &r[0]["cause"];
    assert_eq!(r[0]["reason"], "memory");
    assert_eq!(cause["kind"], "private_memory");
    let (bytes, limit) = (
        cause["bytes"].as_f64().unwrap(),
        cause["limit"].as_f64().unwrap(),
    );
    assert!(bytes > limit);
    // Detected within one check interval + 1 s of crossing: at 20 MiB/s the figure
    // can be at most that much past the limit.
    let slack = rate_mb * 1.5 * 1024.0 * 1024.0;
    assert!(bytes <= limit + slack, "{bytes} vs {limit}: detected late");
    assert!(r[0]["detail"].as_str().unwrap().contains("MiB"));
}

#[test]
fn the_hundredth_request_recycles_the_worker() {
    let sb = Sandbox::new("requests");
    let port = free_port();
    sb.config(&app(
        "web",
        port,
        "[app.recycle]\nrequests = 100\n[app.watch]\nenabled = false\n",
    ));
    let sv = sb.start();
    let first = sv.wait_running("web", 1)[0];
    for _ in 0..99 {
        assert_eq!(http_get(port, "/").unwrap().0, 200);
    }
    assert!(recycles(&sv, "web").is_empty());
    assert_eq!(http_get(port, "/").unwrap().0, 200);
    let r = wait_recycles(&sv, "web", 1);
    assert_eq!(r[0]["reason"], "requests");
    assert_eq!(r[0]["cause"]["count"], 100);
    assert_eq!(r[0]["cause"]["limit"], 100);
    assert_eq!(r[0]["old_pid"], first);
}

#[test]
fn a_worker_reaching_its_interval_is_recycled_for_age() {
    let sb = Sandbox::new("age");
    let port = free_port();
    sb.config(&app(
        "web",
        port,
        "[app.recycle]\ninterval = \"2s\"\n[app.watch]\nenabled = false\n",
    ));
    let sv = sb.start();
    sv.wait_running("web", 1);
    let r = wait_recycles(&sv, "web", 1);
    assert_eq!(r[0]["reason"], "age");
    assert!(r[0]["cause"]["age_ms"].as_u64().unwrap() >= 2000);
}

#[test]
fn a_schedule_one_minute_ahead_fires_at_that_minute() {
    let sb = Sandbox::new("schedule");
    let port = free_port();
    // The start of the minute 70 s from now is 10–70 s away: far enough that the daemon
    // is up before it (a minute that began while the daemon started would be tomorrow's).
    let target = jiff::Zoned::now()
        .checked_add(jiff::SignedDuration::from_secs(70))
        .unwrap();
    let hhmm = target.strftime("%H:%M").to_string();
    let day_and_minute = target.strftime("%Y-%m-%d %H:%M").to_string();
    sb.config(&app(
        "web",
        port,
        &format!("[app.recycle]\nschedule = [\"{hhmm}\"]\n[app.watch]\nenabled = false\n"),
    ));
    let sv = sb.start();
    sv.wait_running("web", 1);
    assert_eq!(sv.app("web")["next_schedule"], day_and_minute.as_str());
    // That minute starts within the next 70 s.
    let r = wait_until(Duration::from_secs(100), "the scheduled recycle", || {
        let r = recycles(&sv, "web");
        (!r.is_empty()).then_some(r)
    });
    assert_eq!(r[0]["reason"], "schedule");
    assert_eq!(r[0]["cause"]["at"], hhmm.as_str());
    // It fired during that minute (local time).
    let fired: jiff::Timestamp = r[0]["time"].as_str().unwrap().parse().unwrap();
    let local = fired.to_zoned(jiff::tz::TimeZone::system());
    assert_eq!(local.strftime("%H:%M").to_string(), hhmm);
}

#[test]
fn idle_workers_stop_and_the_next_connection_starts_them() {
    let sb = Sandbox::new("idle");
    let port = free_port();
    sb.config(&app(
        "web",
        port,
        "[app.recycle]\nidle_timeout = \"1s\"\n[app.watch]\nenabled = false\n",
    ));
    let sv = sb.start();
    let old = sv.wait_running("web", 1)[0];
    sv.wait_event("idle_stop", LONG, |e| e["kind"] == "idle_stop");
    wait_until(LONG, "the idle state", || {
        (sv.app("web")["state"] == "idle").then_some(())
    });
    assert!(!alive(old));
    // The first request after idling is served from the backlog, no error.
    let (code, body) = http_get(port, "/").unwrap();
    assert_eq!(code, 200);
    assert!(!body.contains(&format!("pid={old}")));
    sv.wait_event("on-demand start", LONG, |e| e["kind"] == "on_demand_start");
}

#[test]
fn a_worker_that_stops_sending_watchdog_pings_is_recycled() {
    let sb = Sandbox::new("watchdog");
    let port = free_port();
    sb.config(&app(
        "web",
        port,
        "[app.health]\nwatchdog = \"1s\"\n[app.watch]\nenabled = false\n",
    ));
    let sv = sb.start();
    let old = sv.wait_running("web", 1)[0];
    assert_eq!(http_get(port, "/watchdog/pause").unwrap().0, 200);
    let r = wait_recycles(&sv, "web", 1);
    assert_eq!(r[0]["reason"], "unhealthy");
    assert_eq!(r[0]["old_pid"], old);
    assert!(r[0]["detail"].as_str().unwrap().contains("WATCHDOG"));
}

#[test]
fn editing_appvisor_toml_recycles_only_the_changed_app_and_rejects_a_bad_edit() {
    let sb = Sandbox::new("reload");
    let (pa, pb) = (free_port(), free_port());
    let a = app("a", pa, "[app.watch]\nenabled = false\n");
    let b = |v: &str| {
        app(
            "b",
            pb,
            &format!("env = {{ VERSION = \"{v}\" }}\n[app.watch]\nenabled = false\n"),
        )
    };
    sb.config(&format!("{a}{}", b("1")));
    let sv = sb.start();
    let a_pids = sv.wait_running("a", 1);
    sv.wait_running("b", 1);

    sb.config(&format!("{a}{}", b("2")));
    let r = wait_recycles(&sv, "b", 1);
    assert_eq!(r[0]["reason"], "config_change");
    sv.wait_running("b", 1);
    assert_eq!(http_get(pb, "/env/VERSION").unwrap().1.trim(), "2");
    assert!(recycles(&sv, "a").is_empty());
    assert_eq!(sv.ready_pids("a"), a_pids);
    assert_eq!(sv.status()["config_generation"], 2);

    // An invalid edit: logged, nothing stops, the old settings stay.
    sb.config(&format!("{a}{}\nprocesses = \"many\"\n", b("3")));
    let rejected = sv.wait_event("config_rejected", LONG, |e| e["kind"] == "config_rejected");
    assert!(
        rejected["detail"]
            .as_str()
            .unwrap()
            .contains("appvisor.toml:"),
        "{rejected}"
    );
    assert_eq!(sv.ready_pids("a"), a_pids);
    assert_eq!(http_get(pb, "/env/VERSION").unwrap().1.trim(), "2");
    assert_eq!(sv.status()["config_generation"], 2);
}

#[test]
fn soft_changes_signal_the_workers_and_the_limit_recycles() {
    let sb = Sandbox::new("soft");
    let port = free_port();
    sb.write("templates/page.html", "v0");
    sb.config(&app(
        "web",
        port,
        "[app.watch]\ndebounce = \"100ms\"\nsoft = [\"templates/**\"]\nsoft_changes_before_recycle = 2\n",
    ));
    let sv = sb.start();
    let pid = sv.wait_running("web", 1)[0];
    wait_watching(&sv);
    for i in 1..=2 {
        sb.write("templates/page.html", &format!("v{i}"));
        wait_until(LONG, "a soft change", || {
            (sv.events_of("soft_change").len() >= i).then_some(())
        });
        // The worker got SIGHUP and reloaded in place: same pid, one more reload.
        wait_until(LONG, "the worker's soft reload", || {
            let (_, body) = http_get(port, "/reloads").ok()?;
            (body.trim() == i.to_string()).then_some(())
        });
        assert_eq!(sv.ready_pids("web"), vec![pid]);
    }
    assert!(sv.events_of("soft_change")[0]["detail"]
        .as_str()
        .unwrap()
        .contains("templates/page.html"));
    assert!(recycles(&sv, "web").is_empty());
    // Past soft_changes_before_recycle, the next soft change recycles.
    sb.write("templates/page.html", "v3");
    let r = wait_recycles(&sv, "web", 1);
    assert_eq!(r[0]["reason"], "soft_change_limit");
}

#[test]
fn changes_during_a_recycle_make_exactly_one_follow_up_recycle() {
    let sb = Sandbox::new("coalesce");
    let port = free_port();
    sb.write("web.config", "v0");
    // A slow start keeps the first recycle open while more changes arrive.
    sb.config(&app(
        "web",
        port,
        "env = { DEMO_STARTUP_MS = \"1500\" }\n[app.recycle]\nstartup_timeout = \"20s\"\n[app.watch]\ndebounce = \"50ms\"\nmax_wait = \"200ms\"\n",
    ));
    let sv = sb.start();
    sv.wait_running("web", 1);
    wait_watching(&sv);
    std::fs::write(sb.path("web.config"), "v1").unwrap();
    // The candidate of generation 2 has started: the recycle is under way.
    sv.wait_event("the first candidate", LONG, |e| {
        e["kind"] == "started" && e["generation"] == 2
    });
    for i in 2..=4 {
        std::fs::write(sb.path("web.config"), format!("v{i}")).unwrap();
        // Each edit is decided on its own (past max_wait) while the recycle runs,
        // and queued behind it.
        wait_until(LONG, "the edit to be queued", || {
            (sv.events_of("recycle_queued").len() >= i - 1).then_some(())
        });
    }
    assert!(
        recycles(&sv, "web").is_empty(),
        "the first recycle is still under way"
    );
    let r = wait_recycles(&sv, "web", 2);
    sv.wait_running("web", 1);
    // A sentinel recycle by hand: if the three edits had made more than one
    // follow-up, they would show before it.
    sv.ok(&["recycle", "web"]);
    let all = recycles(&sv, "web");
    assert_eq!(all.len(), 3, "{all:?}");
    assert_eq!(all[0]["reason"], "file_change");
    assert_eq!(all[1]["reason"], "file_change");
    assert_eq!(all[2]["reason"], "manual");
    let _ = r;
}

#[test]
fn memory_hard_limit_kills_at_once_and_starts_a_fresh_worker() {
    let sb = Sandbox::new("hardlimit");
    let port = free_port();
    sb.config(&app(
        "web",
        port,
        "env = { DEMO_LEAK_MB_PER_SEC = \"40\" }\n[app.recycle]\nmemory_hard_limit = \"60MiB\"\nmemory_check_interval = \"250ms\"\n[app.watch]\nenabled = false\n",
    ));
    let sv = sb.start();
    let old = sv.wait_running("web", 1)[0];
    let killed = sv.wait_event("a hard-limit kill", LONG, |e| e["kind"] == "killed");
    assert_eq!(killed["pid"], old);
    assert_eq!(killed["cause"]["kind"], "memory_hard_limit");
    assert!(
        killed["cause"]["bytes"].as_u64().unwrap() > killed["cause"]["limit"].as_u64().unwrap()
    );
    wait_until(LONG, "a fresh worker", || {
        let pids = sv.ready_pids("web");
        (!pids.is_empty() && !pids.contains(&old)).then_some(())
    });
    // SIGKILL was sent at once; the kernel may take a moment to tear it down.
    wait_until(LONG, "the killed worker to be gone", || {
        (!alive(old)).then_some(())
    });
    // Not a crash: rapid-fail protection does not count it.
    assert!(sv.events_of("crashed").is_empty());
}

#[test]
fn a_failing_http_probe_recycles_a_hung_worker() {
    let sb = Sandbox::new("probe");
    let port = free_port();
    sb.config(&app(
        "web",
        port,
        "[app.health]\nhttp_probe = { path = \"/healthz\", interval = \"200ms\", timeout = \"100ms\", failures = 2 }\n[app.watch]\nenabled = false\n",
    ));
    let sv = sb.start();
    let old = sv.wait_running("web", 1)[0];
    // Block the worker's only thread for a while: it accepts nothing meanwhile.
    let hang = std::thread::spawn(move || http_get(port, "/hang?ms=5000"));
    let r = wait_recycles(&sv, "web", 1);
    assert_eq!(r[0]["reason"], "unhealthy");
    assert_eq!(r[0]["old_pid"], old);
    assert!(
        r[0]["detail"].as_str().unwrap().contains("HTTP probe"),
        "{}",
        r[0]
    );
    let _ = hang.join();
}

#[test]
fn a_busy_worker_that_reports_no_requests_is_not_stopped_as_idle() {
    let sb = Sandbox::new("busyidle");
    let port = free_port();
    // The Python worker has no SDK: it never reports X_APPVISOR_REQUESTS, so
    // its CPU time is what tells busy from idle.
    sb.config(&format!(
        "[[app]]\nname = \"py\"\ncommand = [\"python3\", \"{}\"]\nlisten = [\"tcp://127.0.0.1:{port}\"]\n[app.recycle]\nidle_timeout = \"500ms\"\n[app.watch]\nenabled = false\n",
        worker_script("py_http.py").display()
    ));
    let sv = sb.start();
    sv.wait_running("py", 1);
    let load = Load::start(port, 2, false, "/");
    // Four idle windows under load (an absence can only be checked over time).
    let until = std::time::Instant::now() + Duration::from_secs(2);
    while std::time::Instant::now() < until {
        load.wait_for_requests(50);
    }
    let report = load.finish();
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    assert!(sv.events_of("idle_stop").is_empty(), "stopped while busy");
    // Once the load is gone, it is idle.
    sv.wait_event("idle_stop", LONG, |e| e["kind"] == "idle_stop");
}
