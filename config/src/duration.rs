//! Durations as users write them: `"90s"`, `"5m"`, `"500ms"`, `"1h30m"`, `"2d"`.
//!
//! A bare TOML integer is *not* a duration: IIS mixes minutes and seconds across its
//! knobs, and a number without a unit is exactly the ambiguity that bites people, so
//! the resolver rejects it with the unit spelled out (`write "30s"`). The one
//! unit-less string accepted is `"0"`, because zero needs no unit.

use std::time::Duration;

/// A duration string that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{input:?} is not a duration ({reason}); expected e.g. \"90s\", \"5m\", \"500ms\", \"1h30m\""
)]
pub struct InvalidDuration {
    pub input: String,
    pub reason: String,
}

/// Units, longest spelling first so `ms` wins over `m`.
const UNITS: &[(&str, u128)] = &[
    ("ns", 1),
    ("us", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60 * 1_000_000_000),
    ("h", 3_600 * 1_000_000_000),
    ("d", 86_400 * 1_000_000_000),
];

/// Parse `"1h30m"`, `"500ms"`, `"1.5s"`, `"2d"`, `"0"`. Components may be separated
/// by spaces; each is a number (decimals allowed) followed by one of `ns us ms s m h d`.
pub fn parse_duration(s: &str) -> Result<Duration, InvalidDuration> {
    let fail = |reason: String| InvalidDuration {
        input: s.to_owned(),
        reason,
    };
    let text = s.trim();
    if text.is_empty() {
        return Err(fail("it is empty".into()));
    }
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = text;
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number = &rest[..digits];
        if number.is_empty() {
            return Err(fail(format!("expected a number at {rest:?}")));
        }
        rest = rest[digits..].trim_start();
        let unit_len = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        if unit.is_empty() {
            return Err(fail(format!(
                "{number:?} has no unit; add one of ms, s, m, h, d"
            )));
        }
        let Some(&(_, scale)) = UNITS.iter().find(|(u, _)| *u == unit) else {
            return Err(fail(format!("unknown unit {unit:?}; use ms, s, m, h or d")));
        };
        let nanos =
            scaled(number, scale).ok_or_else(|| fail(format!("{number:?} is not a number")))?;
        total = total
            .checked_add(nanos)
            .ok_or_else(|| fail("it is too large".into()))?;
        rest = rest[unit_len..].trim_start();
    }
    let secs = u64::try_from(total / 1_000_000_000).map_err(|_| fail("it is too large".into()))?;
    // The remainder is < 10^9, so it fits a u32.
    let nanos = (total % 1_000_000_000) as u32;
    Ok(Duration::new(secs, nanos))
}

/// `number × scale` for a decimal `number` like `"1.5"`, in integers (no float
/// rounding: `"0.1s"` is exactly 100 ms).
pub(crate) fn scaled(number: &str, scale: u128) -> Option<u128> {
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && frac.is_empty() || frac.contains('.') || frac.len() > 18 {
        return None;
    }
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let mut value = whole.checked_mul(scale)?;
    if !frac.is_empty() {
        let f: u128 = frac.parse().ok()?;
        let denom = 10u128.pow(frac.len() as u32);
        value = value.checked_add(f.checked_mul(scale)? / denom)?;
    }
    Some(value)
}

/// The shortest string [`parse_duration`] reads back as `d`: `"1h30m"`, `"500ms"`.
pub fn format_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".into();
    }
    let mut nanos = d.as_nanos();
    let mut out = String::new();
    for (unit, scale) in UNITS.iter().rev() {
        let n = nanos / scale;
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
            nanos -= n * scale;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_documented_forms() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("29h"), Ok(Duration::from_secs(29 * 3600)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0.1s"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
    }

    #[test]
    fn rejects_what_is_not_a_duration() {
        for bad in ["", "9x", "90", "s", "1..5s", "5 m x", "-5s", "5M"] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.to_string().contains("expected e.g."), "{bad}: {err}");
        }
    }

    #[test]
    fn formatting_reads_back() {
        for s in [
            "1h30m", "500ms", "2d", "90s", "1s1ms", "0s", "29h", "1us", "7ns",
        ] {
            let d = parse_duration(s).unwrap();
            assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
        assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
    }
}
