//! Triggers: the parts of appvisor that *decide* a worker must be recycled.
//!
//! A trigger never starts or stops a process. It observes something — files, the
//! worker's memory, the clock, the request counter — and hands the pool a typed
//! [`RecycleReason`](crate::reason::RecycleReason); the pool performs the overlapped
//! recycle and writes the reason to the event log.
//!
//! # Layout
//!
//! - [`watch`] — file changes of one app: inotify (or polling) on the smallest set of
//!   directories that can hold a match, a debounce with a cap, and a content baseline so
//!   that a touch, a chmod or an identical rewrite is *not* a change.
//! - [`memory`] — the verdict on private / virtual / resident bytes of a worker's whole
//!   process tree (read by [`crate::procfs`]) against `[app.recycle]` limits.
//! - [`schedule`] — time-of-day fires (no drift, DST-safe), the age deadline and the
//!   request limit, each with a per-worker jitter.
//!
//! # Theory of operation
//!
//! Each trigger is a pure decision over observations, so each is tested with real
//! inputs (real files, real processes, explicit clock values) and without a pool. The
//! file watcher is the only one with a thread of its own — one per app, which reads
//! inotify, debounces, hashes and decides, so that nothing slow ever runs on the
//! supervisor's async thread. Memory and time checks are cheap functions the pool calls
//! from its own timers.

pub mod memory;
pub mod pressure;
pub mod schedule;
pub mod watch;
