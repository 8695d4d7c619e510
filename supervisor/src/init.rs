//! `appvisor init -- COMMAND…`: a first `appvisor.toml` for a command, with
//! comments that say what each line does and what to change.
//!
//! The file is written with `O_EXCL`, so an existing config is never overwritten
//! (nor a symlink followed). What it writes always passes `appvisor check` as far
//! as the file goes (ports in use are the machine's business): the test below
//! loads it with the same loader.

use std::io::Write;
use std::path::Path;

/// Why `init` wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("{path} already exists; appvisor init never overwrites a config — remove it, or write another file with `appvisor -c OTHER.toml init -- …`")]
    Exists { path: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

/// What goes into the file.
#[derive(Debug, Clone)]
pub struct InitSpec {
    pub command: Vec<String>,
    /// The app's name; default: the program's file name, made a valid app name.
    pub name: Option<String>,
    /// `tcp://HOST:PORT` or `unix:PATH`.
    pub listen: String,
}

/// An app name from a program path: `/usr/bin/python3` → `python3`,
/// `./my server` → `my-server`; `app` if nothing is left.
pub fn name_from_program(program: &str) -> String {
    let base = Path::new(program)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    let name = name.trim_matches(['-', '.']).to_string();
    if name.is_empty() {
        "app".into()
    } else {
        name
    }
}

/// A TOML basic string: JSON's string escapes (`\"`, `\\`, `\n`, `\uXXXX`, …) are
/// all valid TOML escapes.
fn toml_string(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialize")
}

/// The command as one line for the header comment: plain words as they are, any
/// other argument quoted (so a newline in an argument cannot end the comment).
pub fn shown(command: &[String]) -> String {
    command
        .iter()
        .map(|a| {
            let plain = !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.,:/=@+%-".contains(c));
            if plain {
                a.clone()
            } else {
                toml_string(a)
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The file's text.
pub fn render(spec: &InitSpec) -> Result<String, InitError> {
    if spec.command.is_empty() || spec.command[0].trim().is_empty() {
        return Err(InitError::Invalid(
            "give the command after `--`, e.g. `appvisor init -- python3 app.py`".into(),
        ));
    }
    let name = spec
        .name
        .clone()
        .unwrap_or_else(|| name_from_program(&spec.command[0]));
    let argv: Vec<String> = spec.command.iter().map(|a| toml_string(a)).collect();
    let shown = shown(&spec.command);
    Ok(format!(
        r#"# appvisor.toml for `{shown}`, written by `appvisor init`.
# `appvisor check` validates it and prints every default; `appvisor run` starts it.
# Unknown keys are errors. The README's "Configuration" lists every key.

[supervisor]
# state_dir = ".appvisor"          # control socket, events.jsonl, worker logs, the session store
# metrics = "127.0.0.1:9464"       # Prometheus / OpenMetrics text at /metrics (off by default)

[[app]]
name = {name}
command = [{argv}]   # argv, never a shell
processes = 1                      # workers; recycled one at a time, so capacity never drops
# The workers inherit this socket as fd 3 (systemd socket activation: LISTEN_FDS,
# LISTEN_PID). An app that binds its own port instead cannot be recycled without
# dropping connections: give it the inherited socket (gunicorn --bind fd://3,
# uvicorn --fd 3, Node listen({{fd: 3}}), the appvisor worker SDK).
listen = [{listen}]
# When is a new worker ready to serve? "notify" (it sends READY=1 on NOTIFY_SOCKET,
# as systemd Type=notify apps and the appvisor SDK do), "http:/healthz" (probed on
# the listen address), or a fixed delay for an app that says nothing:
ready = "delay:2s"

[app.recycle]
startup_timeout = "90s"            # not ready by then: the old worker keeps serving
shutdown_timeout = "90s"           # still draining by then: SIGKILL to its process group
# private_memory = "512MiB"        # recycle a worker past this (its whole process tree)
# requests = 10000                 # … or after this many requests
# interval = "29h"                 # … or this old
# schedule = ["03:00"]             # … or at these local times of day

[app.watch]
# Files whose change recycles the app (content compared, so a touch does not):
# paths = ["*.config", ".env", "config/**", "bin/**"]
# ignore = []

[app.sessions]
# mode = "store"                   # session state in the embedded store, kept across recycles
"#,
        name = toml_string(&name),
        argv = argv.join(", "),
        listen = toml_string(&spec.listen),
    ))
}

/// Writes the file; never replaces one.
pub fn write(path: &Path, spec: &InitSpec) -> Result<String, InitError> {
    let text = render(spec)?;
    let shown = path.display().to_string();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::AlreadyExists => InitError::Exists {
                path: shown.clone(),
            },
            _ => InitError::Write {
                path: shown.clone(),
                source,
            },
        })?;
    file.write_all(text.as_bytes())
        .map_err(|source| InitError::Write {
            path: shown.clone(),
            source,
        })?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("av-init-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn names_come_from_the_program() {
        assert_eq!(name_from_program("/usr/bin/python3"), "python3");
        assert_eq!(name_from_program("./my server"), "my-server");
        assert_eq!(name_from_program("node"), "node");
        assert_eq!(name_from_program("/"), "app");
    }

    #[test]
    fn the_file_loads_and_says_what_was_asked() {
        let dir = temp("loads");
        let path = dir.join("appvisor.toml");
        let spec = InitSpec {
            command: vec![
                "python3".into(),
                "-c".into(),
                "print(\"a \\ b\")\n\ttab".into(),
            ],
            name: None,
            listen: "tcp://127.0.0.1:18123".into(),
        };
        write(&path, &spec).unwrap();
        let config = appvisor_config::load(&path).expect("the written file is a valid config");
        let app = &config.apps[0];
        assert_eq!(app.name, "python3");
        assert_eq!(app.command, spec.command, "arguments survive quoting");
        assert_eq!(app.listen[0].address.to_string(), "tcp://127.0.0.1:18123");
        // And never overwritten.
        std::fs::write(&path, "# mine\n").unwrap();
        let e = write(&path, &spec).unwrap_err();
        assert!(matches!(e, InitError::Exists { .. }), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "# mine\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_empty_command_is_refused() {
        let spec = InitSpec {
            command: vec![],
            name: None,
            listen: "tcp://127.0.0.1:8080".into(),
        };
        assert!(render(&spec).is_err());
    }
}
