//! appvisor: launches an app's worker processes and recycles them — replaces a
//! worker with a fresh one without dropping a request — and keeps session state in
//! a side store that outlives every worker.
//!
//! # Layout
//! - [`cli`] — the command line ([`help`]: its examples; [`init`]: `appvisor init`);
//!   [`daemon`] — `appvisor run`.
//! - [`pool`] — one app's workers: overlapped recycle, crash policy. The only
//!   module that starts and stops processes.
//! - [`spawn`] — fork/exec of one worker; [`sockets`] — listening sockets shared by
//!   every generation; [`sd_notify`] — the sd_notify protocol (worker → supervisor, supervisor → systemd); [`reaper`] — exits; [`guard`] — no
//!   worker outlives a killed supervisor; [`output`] — worker logs; [`probe`] —
//!   HTTP readiness; [`procfs`] — what `/proc` says about a process (memory, CPU,
//!   descendants) and the one `Pid` type.
//! - [`events`] — `events.jsonl`; [`event_query`] — reading it back (filters, the
//!   time window, `events --stats`); [`logs`] — `appvisor logs`; [`rotation`] —
//!   size-rotated files, read and followed across rotations; [`control`] — the
//!   control socket; [`logging`] — the supervisor's own `tracing` log (text, JSON
//!   or journald lines on stderr).
//! - [`top`] — `appvisor top`, the terminal UI over the control socket (ratatui).
//! - [`metrics`] — `/metrics` (Prometheus / OpenMetrics text), when configured.
//! - [`state_dir`] — the state dir's lock (one supervisor per dir), its modes, and
//!   opening its files without following symlinks; [`fd_limit`] — `RLIMIT_NOFILE`
//!   and naming `EMFILE`.
//! - [`reason`] — why a recycle happened; [`signal`] — sending signals (their
//!   names and numbers are `appvisor_config::Signal`, the one table).
//! - [`trigger`] — what decides a recycle: file watch, memory, clock, requests.
//! - [`backend`] — which store workers use: the embedded one (the `appvisor-store`
//!   crate, `supervisor/store/`, a Redis-protocol server on this runtime) or a remote Redis,
//!   and its URL.
//!
//! # Theory of operation
//! The supervisor runs on one thread (a current-thread tokio runtime): that thread
//! lives as long as the supervisor, so `PR_SET_PDEATHSIG` in the workers it forks
//! fires exactly when the supervisor dies. Each app is a [`pool`] actor; triggers
//! and the control socket only send it commands. See `docs/ARCHITECTURE.md`.

pub mod backend;
pub mod cgroup;
pub mod cli;
pub mod control;
pub mod daemon;
pub mod event_query;
pub mod events;
pub mod fd_limit;
pub mod guard;
pub mod help;
pub mod history;
pub mod init;
pub mod logging;
pub mod logs;
pub mod memory_base;
pub mod metrics;
pub mod oom;
pub mod output;
pub mod pool;
pub mod probe;
pub mod procfs;
pub mod reaper;
pub mod reason;
pub mod rotation;
pub mod sd_notify;
pub mod signal;
pub mod sockets;
pub mod spawn;
pub mod state_dir;
pub mod top;
pub mod trigger;

#[cfg(test)]
mod fuzz;
