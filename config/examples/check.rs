//! `cargo run -p appvisor-config --example check -- FILE`: validate a config file and
//! print it resolved, or print every problem found.

fn main() {
    let Some(path) = std::env::args_os().nth(1) else {
        eprintln!("usage: check FILE");
        std::process::exit(2);
    };
    match appvisor_config::load(std::path::Path::new(&path)) {
        Ok(config) => print!("{config}"),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}
