//! Signal names and numbers (Linux numbering), for `stop_signal` and `soft_signal`.
//!
//! Accepted spellings: `"SIGTERM"`, `"TERM"`, `"sigterm"`, or the number `15`.

use crate::resolved::Signal;

/// The standard Linux signals a user may reasonably name. Realtime signals are left
/// out: their numbers differ between libcs.
const SIGNALS: &[(&str, i32)] = &[
    ("SIGHUP", 1),
    ("SIGINT", 2),
    ("SIGQUIT", 3),
    ("SIGABRT", 6),
    ("SIGKILL", 9),
    ("SIGUSR1", 10),
    ("SIGUSR2", 12),
    ("SIGPIPE", 13),
    ("SIGALRM", 14),
    ("SIGTERM", 15),
    ("SIGCONT", 18),
    ("SIGSTOP", 19),
    ("SIGTSTP", 20),
    ("SIGTTIN", 21),
    ("SIGTTOU", 22),
    ("SIGURG", 23),
    ("SIGXCPU", 24),
    ("SIGXFSZ", 25),
    ("SIGVTALRM", 26),
    ("SIGPROF", 27),
    ("SIGWINCH", 28),
    ("SIGIO", 29),
    ("SIGPWR", 30),
    ("SIGSYS", 31),
];

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
        SIGNALS
            .iter()
            .find(|(n, _)| *n == full)
            .map(|&(name, number)| Signal { name, number })
    }

    /// The signal with Linux number `number`, if it is one of the named ones.
    pub fn from_number(number: i64) -> Option<Signal> {
        SIGNALS
            .iter()
            .find(|(_, n)| i64::from(*n) == number)
            .map(|&(name, number)| Signal { name, number })
    }

    /// Every name [`Signal::from_name`] knows (with the `SIG` prefix).
    pub fn known_names() -> impl Iterator<Item = &'static str> {
        SIGNALS.iter().map(|(n, _)| *n)
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
}
