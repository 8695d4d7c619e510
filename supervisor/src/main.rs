//! The `appvisor` binary: a thin shell over the library (see `appvisor::cli`).

use clap::Parser;

fn main() {
    let cli = appvisor::cli::Cli::parse();
    match appvisor::cli::main(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("appvisor: {e:#}");
            std::process::exit(2);
        }
    }
}
