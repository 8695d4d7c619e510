//! The `appvisor` binary: a thin shell over the library (see `appvisor::cli`).

use clap::Parser;

fn main() {
    let cli = appvisor::cli::Cli::parse();
    match appvisor::cli::main(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            match e.downcast_ref::<appvisor_config::ConfigError>() {
                // A bad config file: each problem with its source line and a caret.
                // Only when nothing wrapped it, so no context line is dropped.
                Some(config) if e.chain().count() == 1 => {
                    eprintln!("appvisor: {}", config.annotated())
                }
                _ => eprintln!("appvisor: {e:#}"),
            }
            std::process::exit(2);
        }
    }
}
