//! The `appvisor` binary: a thin shell over the library (see `appvisor::cli`).

use std::io::Write;

use appvisor::cli::Command;
use appvisor::logging;

fn main() {
    let cli = appvisor::cli::parse();
    let daemon = matches!(cli.command, Command::Run { .. });
    let log = logging::install(cli.log_format, daemon);
    let code = match appvisor::cli::main(cli) {
        Ok(code) => code,
        // `appvisor status | head -1`: the reader has all it wanted.
        Err(e) if is_broken_pipe(&e) => 0,
        Err(e) => {
            if daemon && log.is_structured() {
                // Keep the stream JSON lines, or give journald the error's priority.
                tracing::error!("{e:#}");
            } else {
                // The message a user reads (it may span lines, with a caret under
                // the config's mistake), so without a log prefix.
                match e.downcast_ref::<appvisor_config::ConfigError>() {
                    // A bad config file: each problem with its source line and a caret.
                    // Only when nothing wrapped it, so no context line is dropped.
                    Some(config) if e.chain().count() == 1 => {
                        let _ = writeln!(std::io::stderr(), "appvisor: {}", config.annotated());
                    }
                    _ => {
                        let _ = writeln!(std::io::stderr(), "appvisor: {e:#}");
                    }
                }
            }
            2
        }
    };
    // Flushes queued log lines: `exit` runs no destructors.
    drop(log);
    std::process::exit(code)
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
