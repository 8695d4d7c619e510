//! Signal names and numbers (Linux numbering): the one signal table of appvisor.
//!
//! The config reads `stop_signal` and `soft_signal` with it; the supervisor names
//! how a worker died with it (`"signal": "SIGSEGV"` in `events.jsonl`) and converts
//! it to `nix`'s `Signal` only where it sends one. It lives here, in the pure
//! config crate, because it is vocabulary — a name and a number — and the config is
//! the first to need it; sending a signal is the supervisor's business.
//!
//! Accepted spellings in the config: `"SIGTERM"`, `"TERM"`, `"sigterm"`, or the
//! number `15`.

use crate::resolved::Signal;

/// The standard Linux signals, 1–31. The flag says whether a config may name it:
/// the fault signals (SIGILL, SIGTRAP, SIGBUS, SIGFPE, SIGSEGV), SIGSTKFLT and SIGCHLD
/// are only ever *reported* (how a process died), never sent by appvisor. Realtime
/// signals are left out: their numbers differ between libcs.
const SIGNALS: &[(&str, i32, bool)] = &[
    ("SIGHUP", 1, true),
    ("SIGINT", 2, true),
    ("SIGQUIT", 3, true),
    ("SIGILL", 4, false),
    ("SIGTRAP", 5, false),
    ("SIGABRT", 6, true),
    ("SIGBUS", 7, false),
    ("SIGFPE", 8, false),
    ("SIGKILL", 9, true),
    ("SIGUSR1", 10, true),
    ("SIGSEGV", 11, false),
    ("SIGUSR2", 12, true),
    ("SIGPIPE", 13, true),
    ("SIGALRM", 14, true),
    ("SIGTERM", 15, true),
    ("SIGSTKFLT", 16, false),
    ("SIGCHLD", 17, false),
    ("SIGCONT", 18, true),
    ("SIGSTOP", 19, true),
    ("SIGTSTP", 20, true),
    ("SIGTTIN", 21, true),
    ("SIGTTOU", 22, true),
    ("SIGURG", 23, true),
    ("SIGXCPU", 24, true),
    ("SIGXFSZ", 25, true),
    ("SIGVTALRM", 26, true),
    ("SIGPROF", 27, true),
    ("SIGWINCH", 28, true),
    ("SIGIO", 29, true),
    ("SIGPWR", 30, true),
    ("SIGSYS", 31, true),
];

/// The signals a config may name.
fn configurable() -> impl Iterator<Item = (&'static str, i32)> {
    SIGNALS
        .iter()
        .filter(|(_, _, ok)| *ok)
        .map(|&(name, number, _)| (name, number))
}

impl Signal {
    pub const HUP: Signal = Signal {
        name: "SIGHUP",
        number: 1,
    };
    pub const TERM: Signal = Signal {
        name: "SIGTERM",
        number: 15,
    };
    pub const KILL: Signal = Signal {
        name: "SIGKILL",
        number: 9,
    };

    /// `"SIGTERM"`, `"TERM"` or `"sigterm"`.
    pub fn from_name(name: &str) -> Option<Signal> {
        let upper = name.trim().to_ascii_uppercase();
        let full = if upper.starts_with("SIG") {
            upper
        } else {
            format!("SIG{upper}")
        };
        configurable()
            .find(|(n, _)| *n == full)
            .map(|(name, number)| Signal { name, number })
    }

    /// The signal with Linux number `number`, if a config may name it.
    pub fn from_number(number: i64) -> Option<Signal> {
        configurable()
            .find(|(_, n)| i64::from(*n) == number)
            .map(|(name, number)| Signal { name, number })
    }

    /// Any standard signal by number, those a config may not name included (for
    /// saying how a process died: `SIGSEGV`).
    pub fn of_number(number: i32) -> Option<Signal> {
        SIGNALS
            .iter()
            .find(|(_, n, _)| *n == number)
            .map(|&(name, number, _)| Signal { name, number })
    }

    /// `"SIGSEGV"` for 11; `"signal 64"` for a number outside the table.
    pub fn describe(number: i32) -> String {
        match Signal::of_number(number) {
            Some(s) => s.name.to_owned(),
            None => format!("signal {number}"),
        }
    }

    /// Every name [`Signal::from_name`] knows (with the `SIG` prefix).
    pub fn known_names() -> impl Iterator<Item = &'static str> {
        configurable().map(|(n, _)| n)
    }
}

impl std::fmt::Display for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_or_without_prefix_and_numbers_agree() {
        assert_eq!(Signal::from_name("SIGTERM"), Some(Signal::TERM));
        assert_eq!(Signal::from_name("term"), Some(Signal::TERM));
        assert_eq!(Signal::from_number(15), Some(Signal::TERM));
        assert_eq!(Signal::from_name("HUP"), Some(Signal::HUP));
        assert_eq!(Signal::from_name("SIGFOO"), None);
        assert_eq!(Signal::from_number(64), None);
    }

    #[test]
    fn fault_signals_are_named_but_not_configurable() {
        assert_eq!(Signal::from_name("SIGSEGV"), None);
        assert_eq!(Signal::from_number(11), None);
        assert!(!Signal::known_names().any(|n| n == "SIGSEGV"));
        assert_eq!(Signal::describe(11), "SIGSEGV");
        assert_eq!(Signal::describe(9), "SIGKILL");
        assert_eq!(Signal::describe(64), "signal 64");
        assert_eq!(
            Signal::known_names().count(),
            24,
            "the configurable set is unchanged"
        );
    }

    #[test]
    fn numbers_are_linux_numbers() {
        for &(name, number, _) in SIGNALS {
            assert_eq!(Signal::of_number(number).unwrap().name, name);
        }
        assert_eq!(SIGNALS.len(), 31);
    }
}
