//! What `--help` shows beyond the flags: an example for every subcommand.
//!
//! The examples live in one table rather than in an attribute on each variant of
//! [`Command`](crate::cli::Command), so a subcommand added later gets its example
//! here, and the test below fails until it has one.

use clap::CommandFactory;

use crate::cli::Cli;

/// (subcommand, the `Examples:` text of its `--help`).
pub const EXAMPLES: &[(&str, &str)] = &[
    (
        "run",
        "  appvisor run                       # ./appvisor.toml, in the foreground\n  \
         appvisor run deploy/appvisor.toml  # another config file\n  \
         RUST_LOG=debug appvisor run        # the supervisor's own log, in detail",
    ),
    (
        "check",
        "  appvisor check                     # validate ./appvisor.toml, print it resolved\n  \
         appvisor check deploy/appvisor.toml",
    ),
    (
        "init",
        "  appvisor init -- python3 -m gunicorn app:app\n  \
         appvisor init --name web --listen tcp://127.0.0.1:8000 -- ./server --workers 1\n  \
         appvisor -c deploy/appvisor.toml init -- node server.js",
    ),
    (
        "status",
        "  appvisor status                    # every app and worker\n  \
         appvisor status web --json         # one app, for scripts",
    ),
    (
        "recycle",
        "  appvisor recycle web               # waits until the new generation serves\n  \
         appvisor recycle web --no-wait",
    ),
    ("start", "  appvisor start web"),
    (
        "stop",
        "  appvisor stop web                  # graceful; its sockets stay open",
    ),
    (
        "events",
        "  appvisor events                    # the last 30 events\n  \
         appvisor events --app web -f       # follow one app\n  \
         appvisor events --json -n 1000 | jq 'select(.kind == \"recycle\")'",
    ),
    (
        "top",
        "  appvisor top\n  \
         appvisor -c deploy/appvisor.toml top",
    ),
    (
        "tune",
        "  appvisor tune web --since 24h\n  \
         appvisor tune web --what-if 'private_memory = \"300MiB\"'",
    ),
    (
        "logs",
        "  appvisor logs web -f\n  \
         appvisor logs web -n 100 --worker 0",
    ),
    (
        "reload",
        "  appvisor reload                    # as saving the file or SIGHUP",
    ),
    (
        "shutdown",
        "  appvisor shutdown                  # as SIGTERM",
    ),
    (
        "completions",
        "  appvisor completions bash > /etc/bash_completion.d/appvisor\n  \
         appvisor completions zsh > \"${fpath[1]}/_appvisor\"\n  \
         appvisor completions fish > ~/.config/fish/completions/appvisor.fish",
    ),
];

/// The CLI's clap command with every subcommand's example attached.
pub fn command() -> clap::Command {
    let mut cmd = Cli::command();
    let names: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect();
    for name in names {
        if let Some((_, text)) = EXAMPLES.iter().find(|(n, _)| *n == name) {
            let text = format!("Examples:\n{text}");
            cmd = cmd.mut_subcommand(name, |s| s.after_help(text));
        }
    }
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_visible_subcommand_has_an_example() {
        let cmd = command();
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            let help = sub
                .get_after_help()
                .map(|h| h.to_string())
                .unwrap_or_default();
            assert!(
                help.starts_with("Examples:\n") && help.contains("appvisor "),
                "`appvisor {}` has no example in its --help; add one to help::EXAMPLES",
                sub.get_name()
            );
        }
    }
}
