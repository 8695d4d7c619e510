//! appvisor's configuration: TOML → raw types → validated, resolved types.
//!
//! # Layout
//! - `resolved` — the types the supervisor uses (every default filled in).
//!
//! # Theory of operation
//! `load(path)` reads the file, deserializes it into raw types that keep spans,
//! then validates and resolves them into [`Config`]. Every error carries the file,
//! line:column and the field, and says what is expected.

mod resolved;
pub use resolved::*;
