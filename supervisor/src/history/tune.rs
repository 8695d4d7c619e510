//! `appvisor tune`.
