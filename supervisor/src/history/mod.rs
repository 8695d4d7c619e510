//! Recorded history of every worker's memory, CPU and requests.
//!
//! [`wire`] is what the control socket's `history` request answers.

pub mod wire;
