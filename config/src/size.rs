//! Byte sizes as users write them: `"512MiB"`, `"1GiB"`, `"150MB"`, `"64KiB"`,
//! `"1024"`, or a bare TOML integer (bytes).
//!
//! `MB` is 10^6 and `MiB` is 2^20, as the SI and IEC say. A lone letter (`"512m"`) is
//! rejected: Docker reads it as MiB and Redis as 10^6, so either guess surprises
//! someone; the message asks for one of the two spellings.

use crate::duration::scaled;

/// A size string that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not a size ({reason}); expected e.g. \"512MiB\", \"1GiB\", \"150MB\" or a number of bytes")]
pub struct InvalidSize {
    pub input: String,
    pub reason: String,
}

const UNITS: &[(&str, u128)] = &[
    ("b", 1),
    ("kb", 1_000),
    ("mb", 1_000_000),
    ("gb", 1_000_000_000),
    ("tb", 1_000_000_000_000),
    ("kib", 1 << 10),
    ("mib", 1 << 20),
    ("gib", 1 << 30),
    ("tib", 1 << 40),
];

/// Parse a size into bytes. Units are case-insensitive; decimals are allowed
/// (`"1.5GiB"`, rounded down to a whole byte).
pub fn parse_size(s: &str) -> Result<u64, InvalidSize> {
    let fail = |reason: String| InvalidSize {
        input: s.to_owned(),
        reason,
    };
    let text = s.trim();
    if text.is_empty() {
        return Err(fail("it is empty".into()));
    }
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = (&text[..split], text[split..].trim());
    if number.is_empty() {
        return Err(fail("it does not start with a number".into()));
    }
    let lower = unit.to_ascii_lowercase();
    let scale = if lower.is_empty() {
        1
    } else if let Some(&(_, scale)) = UNITS.iter().find(|(u, _)| *u == lower) {
        scale
    } else if matches!(lower.as_str(), "k" | "m" | "g" | "t") {
        let up = lower.to_ascii_uppercase();
        return Err(fail(format!(
            "{unit:?} is ambiguous; write \"{number}{up}iB\" (powers of 2) or \"{number}{up}B\" (powers of 10)"
        )));
    } else {
        return Err(fail(format!(
            "unknown unit {unit:?}; use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB"
        )));
    };
    let bytes = scaled(number, scale).ok_or_else(|| fail(format!("{number:?} is not a number")))?;
    u64::try_from(bytes).map_err(|_| fail("it is too large".into()))
}

/// The shortest exact spelling of `bytes`: `"10MiB"`, `"150MB"`, or plain bytes.
pub fn format_size(bytes: u64) -> String {
    const BEST_FIRST: &[(&str, u64)] = &[
        ("TiB", 1 << 40),
        ("TB", 1_000_000_000_000),
        ("GiB", 1 << 30),
        ("GB", 1_000_000_000),
        ("MiB", 1 << 20),
        ("MB", 1_000_000),
        ("KiB", 1 << 10),
        ("KB", 1_000),
    ];
    if bytes > 0 {
        for (unit, scale) in BEST_FIRST {
            if bytes.is_multiple_of(*scale) {
                return format!("{}{unit}", bytes / scale);
            }
        }
    }
    format!("{bytes}B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_decimal_and_binary_units() {
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("150MB"), Ok(150_000_000));
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("64KiB"), Ok(65_536));
        assert_eq!(parse_size("64 kib"), Ok(65_536));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("10B"), Ok(10));
    }

    #[test]
    fn rejects_ambiguous_and_unknown_units() {
        let err = parse_size("512m").unwrap_err().to_string();
        assert!(err.contains("512MiB") && err.contains("512MB"), "{err}");
        for bad in ["", "MiB", "5 parsecs", "1.2.3MB", "99999999999TiB"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn formatting_reads_back() {
        for n in [0, 1, 1000, 1024, 10 << 20, 150_000_000, 1_234_567, 1 << 40] {
            assert_eq!(parse_size(&format_size(n)), Ok(n));
        }
        assert_eq!(format_size(10 << 20), "10MiB");
        assert_eq!(format_size(150_000_000), "150MB");
    }
}
