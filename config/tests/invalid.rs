//! Invalid configs: each must be rejected with the file, line:column, the field and
//! something the user can act on.

use std::path::Path;

use appvisor_config::parse;

/// Parse `text` as `appvisor.toml` and return the error message.
fn error_of(text: &str) -> String {
    match parse(text, Path::new("appvisor.toml")) {
        Ok(config) => panic!("accepted:\n{text}\nas {config:#?}"),
        Err(e) => e.to_string(),
    }
}

/// The message has exactly one problem, starting with `appvisor.toml:<at>: <field>`,
/// and mentions every one of `hints`.
#[track_caller]
fn assert_rejected(text: &str, at: &str, field: &str, hints: &[&str]) {
    let msg = error_of(text);
    assert_eq!(msg.lines().count(), 1, "expected one problem, got:\n{msg}");
    let head = format!("appvisor.toml:{at}: {field}");
    assert!(
        msg.starts_with(&head),
        "expected {head:?} at the start of:\n{msg}"
    );
    for hint in hints {
        assert!(msg.contains(hint), "expected {hint:?} in:\n{msg}");
    }
}

const APP: &str = "[[app]]\nname = \"web\"\ncommand = [\"python3\", \"app.py\"]\n";

#[test]
fn toml_syntax_error() {
    assert_rejected(
        "[[app]]\nname = \"web\ncommand = [\"x\"]\n",
        "2:12",
        "TOML syntax error",
        &["invalid basic string", "expected `\"`"],
    );
}

#[test]
fn unknown_top_level_table_suggests_the_right_one() {
    assert_rejected(
        "[supervisr]\nlog_keep = 3\n",
        "1:2",
        "field supervisr",
        &["unknown key \"supervisr\"", "did you mean \"supervisor\""],
    );
}

#[test]
fn unknown_key_in_app_suggests_the_right_one() {
    assert_rejected(
        "[[app]]\nname = \"web\"\ncomand = [\"x\"]\n",
        "3:1",
        "app \"web\" field comand",
        &["did you mean \"command\""],
    );
}

#[test]
fn unknown_key_in_recycle_suggests_the_right_one() {
    let text = format!("{APP}[app.recycle]\nstartup_timout = \"9s\"\n");
    assert_rejected(
        &text,
        "5:1",
        "app \"web\" field recycle.startup_timout",
        &["did you mean \"startup_timeout\""],
    );
}

#[test]
fn unknown_key_far_from_any_lists_the_valid_ones() {
    let text = format!("{APP}[app.sessions]\ncolour = \"red\"\n");
    assert_rejected(
        &text,
        "5:1",
        "app \"web\" field sessions.colour",
        &["expected one of: mode, timeout"],
    );
}

#[test]
fn bad_duration() {
    let text = format!("{APP}[app.recycle]\nstartup_timeout = \"9x\"\n");
    assert_rejected(
        &text,
        "5:19",
        "app \"web\" field recycle.startup_timeout",
        &["\"9x\" is not a duration", "\"90s\""],
    );
}

#[test]
fn duration_without_unit_says_which_unit_to_add() {
    let text = format!("{APP}[app.failure]\nstable_uptime = 30\n");
    assert_rejected(
        &text,
        "5:17",
        "app \"web\" field failure.stable_uptime",
        &["no unit", "\"30s\""],
    );
}

#[test]
fn bad_size() {
    let text = format!("{APP}[app.recycle]\nprivate_memory = \"512m\"\n");
    assert_rejected(
        &text,
        "5:18",
        "app \"web\" field recycle.private_memory",
        &["ambiguous", "\"512MiB\"", "\"512MB\""],
    );
    assert_rejected(
        "[supervisor]\nlog_max_size = \"10 parsecs\"\n",
        "2:16",
        "field supervisor.log_max_size",
        &["not a size", "MiB"],
    );
}

#[test]
fn empty_command() {
    assert_rejected(
        "[[app]]\nname = \"web\"\ncommand = []\n",
        "3:11",
        "app \"web\" field command",
        &["command is empty", "[\"python3\", \"app.py\"]"],
    );
}

#[test]
fn command_as_a_string_suggests_the_array() {
    assert_rejected(
        "[[app]]\nname = \"web\"\ncommand = \"gunicorn -w 4 app:app\"\n",
        "3:11",
        "app \"web\" field command",
        &[
            "never runs a shell",
            "command = [\"gunicorn\", \"-w\", \"4\", \"app:app\"]",
        ],
    );
}

#[test]
fn missing_command() {
    assert_rejected(
        "[[app]]\nname = \"web\"\n",
        "1:1",
        "app \"web\" field command",
        &["\"command\" is missing"],
    );
}

#[test]
fn duplicate_app_name_points_at_the_second() {
    let text = format!("{APP}\n{APP}");
    assert_rejected(
        &text,
        "6:8",
        "app \"web\" field name",
        &["already used by the app on line 2", "unique"],
    );
}

#[test]
fn missing_name() {
    assert_rejected(
        "[[app]]\ncommand = [\"x\"]\n",
        "1:1",
        "app #1 field name",
        &["needs a name", "name = "],
    );
}

#[test]
fn bad_app_name() {
    assert_rejected(
        "[[app]]\nname = \"my app\"\ncommand = [\"x\"]\n",
        "2:8",
        "app \"my app\" field name",
        &["letters, digits"],
    );
}

#[test]
fn bad_listen_addresses() {
    let cases = [
        (
            "\"tcp://example.com:80\"",
            &["not an IP address", "127.0.0.1"][..],
        ),
        (
            "\"127.0.0.1:8080\"",
            &["add the scheme", "\"tcp://127.0.0.1:8080\""][..],
        ),
        ("\"tcp://127.0.0.1\"", &["missing \":PORT\""][..]),
        ("\"tcp://127.0.0.1:70000\"", &["not a port number"][..]),
        ("\"http://x\"", &["expected \"tcp://HOST:PORT\""][..]),
        ("{ name = \"admin\" }", &["no address"][..]),
    ];
    for (value, hints) in cases {
        let text = format!("{APP}listen = [{value}]\n");
        assert_rejected(&text, "4:11", "app \"web\" field listen", hints);
    }
}

#[test]
fn duplicate_listen_address_across_apps() {
    let text = "[[app]]\nname = \"a\"\ncommand = [\"x\"]\nlisten = [\"tcp://127.0.0.1:8080\"]\n\
                [[app]]\nname = \"b\"\ncommand = [\"x\"]\nlisten = [\"tcp://0.0.0.0:8080\"]\n";
    assert_rejected(
        text,
        "8:11",
        "app \"b\" field listen",
        &["already used by app \"a\" on line 4", "another port"],
    );
}

#[test]
fn processes_zero() {
    let text = format!("{APP}processes = 0\n");
    assert_rejected(
        &text,
        "4:13",
        "app \"web\" field processes",
        &["0 is out of range", "from 1 to 256"],
    );
}

#[test]
fn bad_signal_name() {
    let text = format!("{APP}[app.recycle]\nstop_signal = \"SIGTREM\"\n");
    assert_rejected(
        &text,
        "5:15",
        "app \"web\" field recycle.stop_signal",
        &["not a signal name", "did you mean \"SIGTERM\""],
    );
}

#[test]
fn kill_cannot_be_the_soft_signal() {
    let text = format!("{APP}[app.watch]\nsoft_signal = \"KILL\"\n");
    assert_rejected(
        &text,
        "5:15",
        "app \"web\" field watch.soft_signal",
        &["SIGKILL cannot be used as soft_signal", "SIGHUP"],
    );
}

#[test]
fn max_wait_shorter_than_debounce() {
    let text = format!("{APP}[app.watch]\ndebounce = \"3s\"\nmax_wait = \"1s\"\n");
    assert_rejected(
        &text,
        "6:12",
        "app \"web\" field watch.max_wait",
        &["max_wait (1s) is shorter than debounce (3s)", ">= debounce"],
    );
}

#[test]
fn backoff_initial_longer_than_backoff_max() {
    let text = format!("{APP}[app.failure]\nbackoff_initial = \"1m\"\nbackoff_max = \"10s\"\n");
    assert_rejected(
        &text,
        "6:15",
        "app \"web\" field failure.backoff_max",
        &["backoff_initial <= backoff_max"],
    );
}

#[test]
fn bad_schedule_time() {
    let text = format!("{APP}[app.recycle]\nschedule = [\"03:00\", \"25:00\"]\n");
    assert_rejected(
        &text,
        "5:22",
        "app \"web\" field recycle.schedule",
        &["\"25:00\" is not a time of day", "hour 25", "\"HH:MM\""],
    );
}

#[test]
fn unknown_ready_kind() {
    let text = format!("{APP}ready = \"htp:/health\"\n");
    assert_rejected(
        &text,
        "4:9",
        "app \"web\" field ready",
        &[
            "unknown ready check",
            "did you mean \"http\"",
            "\"delay:500ms\"",
        ],
    );
}

#[test]
fn http_ready_needs_a_tcp_listener() {
    let text = format!("{APP}ready = \"http:/health\"\n");
    assert_rejected(
        &text,
        "4:9",
        "app \"web\" field ready",
        &["needs a TCP listen address", "listen = "],
    );
}

#[test]
fn redis_backend_without_url() {
    assert_rejected(
        "[store]\nbackend = \"redis\"\n",
        "1:1",
        "field store.url",
        &["needs url = \"redis://"],
    );
}

#[test]
fn redis_url_with_wrong_scheme() {
    assert_rejected(
        "[store]\nbackend = \"redis\"\nurl = \"http://127.0.0.1:6379\"\n",
        "3:7",
        "field store.url",
        &["unsupported scheme \"http\"", "redis://"],
    );
}

#[test]
fn keys_of_the_other_backend() {
    assert_rejected(
        "[store]\nbackend = \"redis\"\nurl = \"redis://127.0.0.1\"\npersist = \"always\"\n",
        "4:11",
        "field store.persist",
        &["applies only to backend = \"embedded\""],
    );
    assert_rejected(
        "[store]\nurl = \"redis://127.0.0.1\"\n",
        "2:7",
        "field store.url",
        &[
            "applies only to backend = \"redis\"",
            "add backend = \"redis\"",
        ],
    );
}

#[test]
fn bad_session_mode() {
    let text = format!("{APP}[app.sessions]\nmode = \"stor\"\n");
    assert_rejected(
        &text,
        "5:8",
        "app \"web\" field sessions.mode",
        &[
            "unknown mode \"stor\"",
            "did you mean \"store\"",
            "\"handoff\"",
        ],
    );
}

#[test]
fn wrong_toml_type_is_named_in_toml_terms() {
    let text = format!("{APP}[app.recycle]\noverlapped = \"yes\"\n");
    assert_rejected(
        &text,
        "5:14",
        "app \"web\" field recycle.overlapped",
        &["found string \"yes\", expected a boolean"],
    );
}

#[test]
fn single_bracket_app_table_explains_double_brackets() {
    assert_rejected(
        "[app]\nname = \"web\"\ncommand = [\"x\"]\n",
        "1:1",
        "field app",
        &["[[app]]"],
    );
}

#[test]
fn env_values_must_be_strings() {
    let text = format!("{APP}env = {{ PORT = 8080 }}\n");
    assert_rejected(
        &text,
        "4:16",
        "app \"web\" field env.PORT",
        &["expected a string", "PORT = \"8080\""],
    );
}

#[test]
fn env_cannot_override_what_appvisor_sets() {
    let text = format!("{APP}env = {{ LISTEN_FDS = \"3\" }}\n");
    assert_rejected(
        &text,
        "4:9",
        "app \"web\" field env.LISTEN_FDS",
        &["set by appvisor", "remove it"],
    );
}

#[test]
fn bad_glob() {
    let text = format!("{APP}[app.watch]\nsoft = [\"views/[ab\"]\n");
    assert_rejected(
        &text,
        "5:9",
        "app \"web\" field watch.soft",
        &["invalid glob"],
    );
    let text = format!("{APP}[app.watch]\npaths = [\"/etc/app.conf\"]\n");
    assert_rejected(
        &text,
        "5:10",
        "app \"web\" field watch.paths",
        &["relative to the app's cwd"],
    );
}

#[test]
fn http_probe_needs_a_path() {
    let text = format!(
        "{APP}listen = [\"tcp://127.0.0.1:8080\"]\n[app.health]\nhttp_probe = {{ path = \"healthz\" }}\n"
    );
    assert_rejected(
        &text,
        "6:23",
        "app \"web\" field health.http_probe.path",
        &["starting with '/'", "\"/healthz\""],
    );
}

#[test]
fn every_problem_is_reported_in_one_run() {
    let text = format!(
        "{APP}processes = 0\n[app.recycle]\nstartup_timeout = \"soon\"\nstop_signal = \"NOPE\"\n\
         [app.sessions]\nmode = \"cookie\"\n"
    );
    let msg = error_of(&text);
    let lines: Vec<&str> = msg.lines().collect();
    assert_eq!(lines.len(), 4, "{msg}");
    // In file order.
    assert!(
        lines[0].starts_with("appvisor.toml:4:13: app \"web\" field processes"),
        "{msg}"
    );
    assert!(
        lines[1].starts_with("appvisor.toml:6:19: app \"web\" field recycle.startup_timeout"),
        "{msg}"
    );
    assert!(
        lines[2].starts_with("appvisor.toml:7:15: app \"web\" field recycle.stop_signal"),
        "{msg}"
    );
    assert!(
        lines[3].starts_with("appvisor.toml:9:8: app \"web\" field sessions.mode"),
        "{msg}"
    );
}

#[test]
fn problems_are_available_as_data() {
    let err = parse(
        "[supervisor]\nlog_keep = -1\n",
        Path::new("/etc/appvisor.toml"),
    )
    .unwrap_err();
    let problems = err.problems();
    assert_eq!(problems.len(), 1);
    let p = &problems[0];
    assert_eq!(p.file, Path::new("/etc/appvisor.toml"));
    assert_eq!(p.location.map(|l| (l.line, l.column)), Some((2, 12)));
    assert_eq!(p.field.as_deref(), Some("field supervisor.log_keep"));
    assert!(p.message.contains("from 0 to 1000"), "{}", p.message);
}

#[test]
fn handoff_sessions_with_several_workers_are_refused() {
    let text = "[[app]]\nname = \"web\"\ncommand = [\"x\"]\nprocesses = 2\n[app.sessions]\nmode = \"handoff\"\n";
    let err = appvisor_config::parse(text, std::path::Path::new("/tmp/appvisor.toml"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("appvisor.toml:6:8"), "{err}");
    assert!(
        err.contains("sessions.mode") && err.contains("\"store\""),
        "{err}"
    );
}

/// The source line of `line_no` in `rendered` (`N | text`) and the caret line under
/// it; the caret's column, counted in the source text, is returned with the text.
fn excerpt_of(rendered: &str, line_no: usize) -> (String, usize, usize) {
    let lines: Vec<&str> = rendered.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.trim_start().starts_with(&format!("{line_no} |")))
        .unwrap_or_else(|| panic!("no source line {line_no} in:\n{rendered}"));
    let (gutter, source) = lines[at].split_once(" | ").expect("a gutter");
    let caret_line = lines.get(at + 1).expect("a caret line");
    let first = caret_line
        .find('^')
        .unwrap_or_else(|| panic!("no caret in:\n{rendered}"));
    let width = caret_line[first..]
        .chars()
        .take_while(|&c| c == '^')
        .count();
    // Columns in the source text, from 1, as in the file:line:col header.
    let column = first - (gutter.len() + " | ".len()) + 1;
    (source.to_owned(), column, width)
}

#[test]
fn annotated_errors_show_the_source_line_and_a_caret_under_the_column() {
    let text = format!("{APP}processes = \"two\"\n");
    let err = parse(&text, Path::new("appvisor.toml")).unwrap_err();
    let rendered = err.annotated().to_string();
    // The first line is exactly today's message, header and wording included.
    assert_eq!(rendered.lines().next(), Some(err.to_string().as_str()));
    assert!(
        rendered.starts_with("appvisor.toml:4:13: app \"web\" field processes"),
        "{rendered}"
    );
    let (source, column, width) = excerpt_of(&rendered, 4);
    assert_eq!(source, "processes = \"two\"", "{rendered}");
    assert_eq!(column, 13, "caret under the value:\n{rendered}");
    assert_eq!(
        width,
        "\"two\"".len(),
        "the whole value underlined:\n{rendered}"
    );
}

#[test]
fn annotated_errors_show_every_problem_with_its_own_line() {
    let text = format!("{APP}processes = 0\n[app.recycle]\nstartup_timeout = \"soon\"\n");
    let err = parse(&text, Path::new("appvisor.toml")).unwrap_err();
    assert_eq!(err.problems().len(), 2, "{err}");
    let rendered = err.annotated().to_string();
    let headers: Vec<&str> = rendered
        .lines()
        .filter(|l| l.starts_with("appvisor.toml:"))
        .collect();
    assert_eq!(headers, err.to_string().lines().collect::<Vec<_>>());
    assert_eq!(excerpt_of(&rendered, 4), ("processes = 0".into(), 13, 1));
    let (source, column, _) = excerpt_of(&rendered, 6);
    assert_eq!(source, "startup_timeout = \"soon\"");
    assert_eq!(column, 19, "{rendered}");
}

#[test]
fn an_error_without_a_place_renders_as_its_one_line() {
    let err = appvisor_config::load(Path::new("/nonexistent/appvisor.toml")).unwrap_err();
    assert_eq!(err.annotated().to_string(), err.to_string());
}

/// Issue 12, defect 11: the CLI finds the state dir of a file that fails
/// validation, even one with a syntax error elsewhere.
#[test]
fn the_state_dir_is_found_in_an_invalid_file() {
    let path = std::path::Path::new("/srv/app/appvisor.toml");
    let named = "[supervisor]\nstate_dir = \"run/av\"\n[[app]]\nname = \"web\"\nbogus = 1\n";
    assert!(appvisor_config::parse(named, path).is_err());
    assert_eq!(
        appvisor_config::state_dir_lenient(named, path),
        std::path::Path::new("/srv/app/run/av")
    );
    let broken =
        "[[app]]\nname = \"web\ncommand = [\n[supervisor]\nstate_dir = '/var/lib/av' # x\n";
    assert_eq!(
        appvisor_config::state_dir_lenient(broken, path),
        std::path::Path::new("/var/lib/av")
    );
    assert_eq!(
        appvisor_config::state_dir_lenient("[[app]\n", path),
        std::path::Path::new("/srv/app/.appvisor")
    );
}

#[test]
fn event_log_rotation_settings_are_checked() {
    let path = Path::new("/etc/appvisor.toml");
    let err = parse("[supervisor]\nevents_max_size = \"1KiB\"\n", path).unwrap_err();
    let p = &err.problems()[0];
    assert_eq!(p.field.as_deref(), Some("field supervisor.events_max_size"));
    assert_eq!(p.location.map(|l| l.line), Some(2));
    assert!(p.message.contains("at least \"4KiB\""), "{}", p.message);
    let err = parse("[supervisor]\nevents_keep = 1001\n", path).unwrap_err();
    let p = &err.problems()[0];
    assert_eq!(p.field.as_deref(), Some("field supervisor.events_keep"));
    assert!(p.message.contains("from 0 to 1000"), "{}", p.message);
    let ok = parse(
        "[supervisor]\nevents_max_size = \"64KiB\"\nevents_keep = 2\n",
        path,
    )
    .unwrap();
    assert_eq!(ok.supervisor.events_max_size, 64 << 10);
    assert_eq!(ok.supervisor.events_keep, 2);
}

/// 512 MiB behind a cgroup limit: what the percentage tests resolve against.
fn base() -> Option<appvisor_config::MemoryBase> {
    Some(appvisor_config::MemoryBase {
        bytes: 512 << 20,
        source: appvisor_config::MemorySource::Physical,
    })
}

#[track_caller]
fn assert_rejected_with_base(text: &str, at: &str, field: &str, hints: &[&str]) {
    let msg = match appvisor_config::parse_with(text, Path::new("appvisor.toml"), base()) {
        Ok(config) => panic!("accepted:\n{text}\nas {config:#?}"),
        Err(e) => e.to_string(),
    };
    assert_eq!(msg.lines().count(), 1, "expected one problem, got:\n{msg}");
    let head = format!("appvisor.toml:{at}: {field}");
    assert!(
        msg.starts_with(&head),
        "expected {head:?} at the start of:\n{msg}"
    );
    for hint in hints {
        assert!(msg.contains(hint), "expected {hint:?} in:\n{msg}");
    }
}

#[test]
fn percentages_out_of_range() {
    for bad in ["140%", "0%", "-5%"] {
        let text = format!("{APP}[app.recycle]\nprivate_memory = \"{bad}\"\n");
        assert_rejected_with_base(
            &text,
            "5:18",
            "app \"web\" field recycle.private_memory",
            &["out of range", "at most 100%"],
        );
    }
    let text = format!("{APP}[app.recycle]\nrss = \"lots%\"\n");
    assert_rejected_with_base(
        &text,
        "5:7",
        "app \"web\" field recycle.rss",
        &["not a percentage"],
    );
}

#[test]
fn no_percentage_on_virtual_memory() {
    let text = format!("{APP}[app.recycle]\nvirtual_memory = \"40%\"\n");
    assert_rejected_with_base(
        &text,
        "5:18",
        "app \"web\" field recycle.virtual_memory",
        &["cannot be a percentage", "address space", "\"4GiB\""],
    );
}

#[test]
fn memory_pressure_needs_a_threshold() {
    assert_rejected_with_base(
        "[supervisor]\nmemory_pressure = {}\n",
        "2:19",
        "field supervisor.memory_pressure",
        &["no threshold", "min_available", "psi_some_avg10"],
    );
    assert_rejected_with_base(
        "[supervisor]\nmemory_pressure = { cooldown = \"10s\" }\n",
        "2:19",
        "field supervisor.memory_pressure",
        &["no threshold"],
    );
    assert_rejected_with_base(
        "[supervisor]\nmemory_pressure = { psi_some_avg10 = 140 }\n",
        "2:38",
        "field supervisor.memory_pressure.psi_some_avg10",
        &["out of range"],
    );
    assert_rejected_with_base(
        "[supervisor]\nmemory_pressure = { min_available = \"0%\" }\n",
        "2:37",
        "field supervisor.memory_pressure.min_available",
        &["out of range"],
    );
    assert_rejected_with_base(
        "[supervisor]\nmemory_pressure = { min_availabel = \"10%\" }\n",
        "2:21",
        "field supervisor.memory_pressure.min_availabel",
        &["did you mean \"min_available\""],
    );
}

#[test]
fn percentages_need_a_memory_base() {
    let text = format!("{APP}[app.recycle]\napp_memory = \"60%\"\n");
    assert_rejected(
        &text,
        "5:14",
        "app \"web\" field recycle.app_memory",
        &["\"512MiB\""],
    );
}

#[test]
fn metrics_on_a_public_address_needs_metrics_public() {
    assert_rejected(
        &format!("[supervisor]\nmetrics = \"0.0.0.0:9464\"\n\n{APP}"),
        "2:11",
        "field supervisor.metrics",
        &[
            "not a loopback address",
            "127.0.0.1:9464",
            "metrics_public = true",
        ],
    );
    let ok = parse(
        &format!("[supervisor]\nmetrics = \"0.0.0.0:9464\"\nmetrics_public = true\n\n{APP}"),
        Path::new("appvisor.toml"),
    )
    .expect("metrics_public allows it");
    assert_eq!(ok.supervisor.metrics, Some("0.0.0.0:9464".parse().unwrap()));
    let local = parse(
        &format!("[supervisor]\nmetrics = \"localhost:9464\"\n\n{APP}"),
        Path::new("appvisor.toml"),
    )
    .unwrap();
    assert_eq!(
        local.supervisor.metrics,
        Some("127.0.0.1:9464".parse().unwrap())
    );
    assert!(!local.supervisor.metrics_public);
}

#[test]
fn metrics_address_must_be_ip_and_port() {
    assert_rejected(
        &format!("[supervisor]\nmetrics = \"9464\"\n\n{APP}"),
        "2:11",
        "field supervisor.metrics",
        &["\"9464\"", "127.0.0.1:9464"],
    );
}

#[test]
fn metrics_public_without_metrics_is_refused() {
    assert_rejected(
        &format!("[supervisor]\nmetrics_public = true\n\n{APP}"),
        "2:18",
        "field supervisor.metrics_public",
        &["add metrics"],
    );
}

#[test]
fn metrics_address_cannot_be_an_apps_address() {
    assert_rejected(
        "[supervisor]\nmetrics = \"127.0.0.1:8080\"\n\n[[app]]\nname = \"web\"\ncommand = [\"x\"]\nlisten = [\"tcp://127.0.0.1:8080\"]\n",
        "7:11",
        "app \"web\" field listen",
        &["metrics endpoint", "line 2"],
    );
}

#[test]
fn history_keys_out_of_range_are_named() {
    let cases = [
        (
            "sample_interval = \"0s\"",
            "supervisor.sample_interval",
            "longer than zero",
        ),
        (
            "sample_interval = \"10ms\"",
            "supervisor.sample_interval",
            "from 100ms to 1h",
        ),
        (
            "sample_interval = \"2h\"",
            "supervisor.sample_interval",
            "from 100ms to 1h",
        ),
        (
            "history_max_size = \"100KiB\"",
            "supervisor.history_max_size",
            "at least \"1MiB\"",
        ),
        (
            "history_max_size = \"lots\"",
            "supervisor.history_max_size",
            "",
        ),
        (
            "history_retention = \"30m\"",
            "supervisor.history_retention",
            "at least 1h",
        ),
    ];
    for (line, field, words) in cases {
        let text = format!("[supervisor]\n{line}\n");
        let err = parse(&text, Path::new("/etc/appvisor.toml")).unwrap_err();
        let problems = err.problems();
        assert_eq!(problems.len(), 1, "{line}: {err}");
        let p = &problems[0];
        assert_eq!(p.location.map(|l| l.line), Some(2), "{line}");
        assert_eq!(p.field.as_deref(), Some(format!("field {field}").as_str()));
        assert!(p.message.contains(words), "{line}: {}", p.message);
    }
}

#[test]
fn bad_recycle_batch() {
    for (value, hints) in [
        ("0", &["0 is out of range", "from 1 to 256"][..]),
        ("\"0%\"", &["out of range", "above 0% and at most 100%"][..]),
        ("\"150%\"", &["out of range"][..]),
        ("\"half\"", &["is not a batch", "such as 4", "\"25%\""][..]),
        ("2.5", &["a number of workers such as 4"][..]),
    ] {
        let text = format!("{APP}processes = 8\n[app.recycle]\nbatch = {value}\n");
        assert_rejected(&text, "6:9", "app \"web\" field recycle.batch", hints);
    }
}

#[test]
fn recycle_batch_without_overlap_says_what_to_change() {
    let text = format!("{APP}processes = 8\n[app.recycle]\noverlapped = false\nbatch = 2\n");
    assert_rejected(
        &text,
        "7:9",
        "app \"web\" field recycle.batch",
        &[
            "needs overlapped = true",
            "remove batch, or set overlapped = true",
        ],
    );
}
