//! appvisor's configuration: TOML → raw types → validated, resolved types.
//!
//! # Layout
//! - `resolved` — the types the supervisor uses (every default filled in). This is the
//!   crate's interface; everything else exists to produce it.
//! - `raw` — serde types mirroring the file, every value `Spanned`, unknown keys denied.
//! - `resolve` — raw → resolved: defaults, parsing, range and cross-field checks.
//! - `diagnostic` — [`ConfigError`] and [`Problem`]: file, line:column, field, fix.
//! - `duration`, `size`, `signal` — the value syntaxes users write.
//! - `render` — prints a resolved [`Config`] back as TOML (`appvisor check`).
//!
//! # Theory of operation
//! [`load`] reads the file and hands it to [`parse`]. `parse` first runs the TOML
//! parser in recovering mode so every syntax error is reported at once, then
//! deserializes into the raw types. A serde error (unknown key, wrong TOML type) has
//! only a byte span, so `diagnostic` walks the parsed document to find which app and
//! field that span falls in, and rewrites the message in the user's terms with a
//! "did you mean". The resolver then checks everything else, collecting all problems
//! before failing. The crate is pure: no processes, no sockets, no DNS. Checks that need
//! the system (is the port free? does the program exist?) belong to the supervisor.
//!
//! Choices worth knowing:
//! - Durations must be strings with a unit (`"90s"`); a bare integer is rejected with
//!   the fix spelled out, because a unit-less number is ambiguous (IIS mixes minutes and
//!   seconds). Sizes may be bare integers (bytes) or `"512MiB"` / `"150MB"`.
//! - Relative paths (`cwd`, `state_dir`, `unix:` sockets) are relative to the config
//!   file's directory, never to the process's working directory.
//! - `[app.sessions] mode` defaults to `"store"` (write-through: sessions survive
//!   recycles and crashes, with any number of workers). `"handoff"` — in memory,
//!   flushed while draining — is refused with `processes > 1`, where a user's
//!   requests land on any worker.
//! - `[app.watch] ignore` is merged with built-in ignores (VCS, editor swap files,
//!   logs, `node_modules`, the state dir); `paths` replaces the defaults.

mod accounts;
mod diagnostic;
mod duration;
mod raw;
mod render;
mod resolve;
mod resolved;
mod signal;
mod size;

use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::de::DeTable;

pub use diagnostic::{Annotated, ConfigError, Excerpt, Location, Problem};
pub use duration::{format_duration, parse_duration, InvalidDuration};
pub use resolve::{
    DEFAULT_HISTORY_MAX_SIZE, DEFAULT_HISTORY_RETENTION, DEFAULT_SAMPLE_INTERVAL,
    DEFAULT_WATCH_IGNORE, DEFAULT_WATCH_PATHS, MAX_UNIX_PATH,
};
pub use resolved::*;
pub use size::{format_size, parse_size, InvalidSize};

/// Read and validate the config file at `path`. [`Config::path`] is made absolute;
/// error messages name the file as `path` was given.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    load_with(path, None)
}

/// [`load`], resolving percentage limits (`private_memory = "25%"`) against `base`:
/// the memory the supervisor may use, which this pure crate cannot find itself.
/// Without one, a percentage is an error.
pub fn load_with(path: &Path, base: Option<MemoryBase>) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_with(&text, path, base)
}

/// Validate config `text` as if read from `path`: `path` names the file in messages,
/// and relative paths in the config resolve against its directory (made absolute
/// against the current directory if `path` is relative). Nothing is read from disk.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    parse_with(text, path, None)
}

/// [`parse`], resolving percentage limits against `base` (see [`load_with`]).
pub fn parse_with(
    text: &str,
    path: &Path,
    base: Option<MemoryBase>,
) -> Result<Config, ConfigError> {
    let absolute = absolute(path);
    let dir = absolute
        .parent()
        .map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from("/"));

    let (doc, syntax_errors) = DeTable::parse_recoverable(text);
    if !syntax_errors.is_empty() {
        // Only the first: after one syntax error the parser's recovery guesses, and
        // its later errors are mostly echoes of the first.
        let problems = vec![diagnostic::from_toml_error(path, text, &syntax_errors[0])];
        return Err(ConfigError::Invalid { problems });
    }
    let raw = raw::RawConfig::deserialize(toml::de::Deserializer::from(doc)).map_err(|e| {
        ConfigError::Invalid {
            problems: vec![diagnostic::from_toml_error(path, text, &e)],
        }
    })?;
    resolve::Resolver::new(path, text, dir)
        .with_memory_base(base)
        .resolve(raw, absolute)
}

/// The state dir a config file names, found even when the file fails validation
/// (an unknown key, a bad value elsewhere, even a syntax error elsewhere): the CLI
/// needs only this to reach the running supervisor while someone edits the file.
/// `[supervisor] state_dir` is read leniently — from the TOML if it parses, else
/// from its line in the `[supervisor]` section — and resolved as [`load`] would;
/// without one, the default `.appvisor` beside the file.
pub fn state_dir_lenient(text: &str, path: &Path) -> PathBuf {
    let absolute = absolute(path);
    let dir = absolute
        .parent()
        .map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from("/"));
    let named = match toml::from_str::<toml::Table>(text) {
        Ok(t) => t
            .get("supervisor")
            .and_then(|s| s.get("state_dir"))
            .and_then(|d| d.as_str())
            .map(str::to_owned),
        Err(_) => state_dir_line(text),
    };
    match named {
        Some(d) if !d.is_empty() && !d.starts_with('~') => {
            resolve::absolute_from(&dir, Path::new(&d))
        }
        _ => dir.join(".appvisor"),
    }
}

/// `state_dir = "…"` inside `[supervisor]`, from the lines of a file that is not
/// valid TOML.
fn state_dir_line(text: &str) -> Option<String> {
    let mut in_supervisor = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_supervisor =
                line.trim_start_matches('[').trim_end_matches(']').trim() == "supervisor";
            continue;
        }
        if !in_supervisor {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if key.trim() != "state_dir" {
            continue;
        }
        let value = value.trim();
        let quote = value.chars().next().filter(|c| *c == '"' || *c == '\'')?;
        let rest = &value[1..];
        return rest.find(quote).map(|end| rest[..end].to_string());
    }
    None
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}
