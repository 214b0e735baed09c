//! Durations as people write them: `250ms`, `30s`, `5m`, `1h`, or several of those run
//! together (`1m30s`), into milliseconds. The one parser behind the command line's time
//! options (`--ttl 30s`) and the configuration's `_ms` keys (`drain_timeout_ms = "5s"`).
//!
//! A bare number has no unit of its own: the caller says what it counts (seconds on the
//! command line, as it always did; milliseconds in the configuration, where `_ms` integers
//! stay valid). Pure: text in, a number or a reason out; never panics, never overflows.

use std::fmt;

/// The units a duration may use, with their length in milliseconds. Longest spelling first,
/// so `ms` is not read as `m` followed by junk.
const UNITS: [(&str, u64); 4] = [("ms", 1), ("s", 1_000), ("m", 60_000), ("h", 3_600_000)];

/// The longest text looked at: no real duration is longer, and hostile input stays cheap.
pub const MAX_DURATION_CHARS: usize = 64;

/// What a duration looks like, for error messages.
pub const DURATION_EXAMPLES: &str = "500ms, 30s, 5m, 1h or 1m30s";

/// Why a text is not a duration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DurationError {
    /// Nothing was given.
    Empty,
    /// More than [`MAX_DURATION_CHARS`] characters.
    TooLong,
    /// Something other than digits where a number should start (a sign, a dot, a letter).
    NotANumber {
        /// The text from that point on.
        at: String,
    },
    /// A unit that is not one of `ms`, `s`, `m`, `h`.
    UnknownUnit {
        /// The unit as written.
        unit: String,
    },
    /// A number without a unit after another part (`1m30`): which unit it is is a guess.
    MissingUnit {
        /// The number.
        number: String,
    },
    /// Longer than `u64` milliseconds.
    TooLarge,
}

impl fmt::Display for DurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => write!(f, "no duration given"),
            Self::TooLong => write!(f, "longer than {MAX_DURATION_CHARS} characters"),
            Self::NotANumber { at } => write!(f, "expected a whole number at {at:?}"),
            Self::UnknownUnit { unit } => write!(f, "unknown unit {unit:?} (use ms, s, m or h)"),
            Self::MissingUnit { number } => write!(f, "{number} has no unit (use ms, s, m or h)"),
            Self::TooLarge => write!(f, "too large"),
        }
    }
}

impl std::error::Error for DurationError {}

/// Parses `text` into milliseconds. A bare whole number (no unit at all) counts
/// `bare_unit_ms` milliseconds each; otherwise every number carries a unit and the parts
/// add up (`1h30m`). Whitespace around the text is ignored; none is allowed inside.
pub fn parse_ms(text: &str, bare_unit_ms: u64) -> Result<u64, DurationError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(DurationError::Empty);
    }
    if text.len() > MAX_DURATION_CHARS {
        return Err(DurationError::TooLong);
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return number(text)?.checked_mul(bare_unit_ms).ok_or(DurationError::TooLarge);
    }
    let mut rest = text;
    let mut total: u64 = 0;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return Err(DurationError::NotANumber { at: rest.to_string() });
        }
        let (count, after) = rest.split_at(digits);
        let unit_len = after.find(|c: char| c.is_ascii_digit()).unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        if unit.is_empty() {
            return Err(DurationError::MissingUnit { number: count.to_string() });
        }
        let Some(&(_, scale)) = UNITS.iter().find(|(name, _)| *name == unit) else {
            return Err(DurationError::UnknownUnit { unit: unit.to_string() });
        };
        let part = number(count)?.checked_mul(scale).ok_or(DurationError::TooLarge)?;
        total = total.checked_add(part).ok_or(DurationError::TooLarge)?;
        rest = next;
    }
    Ok(total)
}

fn number(digits: &str) -> Result<u64, DurationError> {
    digits.parse().map_err(|_| DurationError::TooLarge)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_ms_units_give_milliseconds() {
        assert_eq!(parse_ms("250ms", 1), Ok(250));
        assert_eq!(parse_ms("30s", 1), Ok(30_000));
        assert_eq!(parse_ms("1m", 1), Ok(60_000));
        assert_eq!(parse_ms("2h", 1), Ok(7_200_000));
        assert_eq!(parse_ms("0s", 1), Ok(0));
        assert_eq!(parse_ms(" 5s\n", 1), Ok(5_000));
    }

    #[test]
    fn parse_ms_parts_add_up() {
        assert_eq!(parse_ms("1m30s", 1), Ok(90_000));
        assert_eq!(parse_ms("1h1m1s1ms", 1), Ok(3_661_001));
    }

    #[test]
    fn parse_ms_bare_number_counts_the_callers_unit() {
        assert_eq!(parse_ms("45", 1_000), Ok(45_000));
        assert_eq!(parse_ms("5000", 1), Ok(5_000));
        assert_eq!(parse_ms("007", 1), Ok(7));
    }

    #[test]
    fn parse_ms_refuses_what_is_not_a_duration() {
        assert_eq!(parse_ms("", 1), Err(DurationError::Empty));
        assert_eq!(parse_ms("   ", 1), Err(DurationError::Empty));
        assert_eq!(parse_ms("s", 1), Err(DurationError::NotANumber { at: "s".into() }));
        assert_eq!(parse_ms("-1s", 1), Err(DurationError::NotANumber { at: "-1s".into() }));
        assert_eq!(parse_ms("1.5s", 1), Err(DurationError::UnknownUnit { unit: ".".into() }));
        assert_eq!(parse_ms("10d", 1), Err(DurationError::UnknownUnit { unit: "d".into() }));
        assert_eq!(parse_ms("5 s", 1), Err(DurationError::UnknownUnit { unit: " s".into() }));
        assert_eq!(parse_ms("soon", 1), Err(DurationError::NotANumber { at: "soon".into() }));
        assert_eq!(parse_ms("1m30", 1), Err(DurationError::MissingUnit { number: "30".into() }));
        assert_eq!(parse_ms(&"1".repeat(65), 1), Err(DurationError::TooLong));
    }

    #[test]
    fn parse_ms_large_values_are_refused_not_wrapped() {
        assert_eq!(parse_ms("99999999999999999999s", 1), Err(DurationError::TooLarge));
        assert_eq!(parse_ms("18446744073709551615h", 1), Err(DurationError::TooLarge));
        assert_eq!(parse_ms("18446744073709551615", 1_000), Err(DurationError::TooLarge));
        assert_eq!(parse_ms("18446744073709551615ms1ms", 1), Err(DurationError::TooLarge));
        assert_eq!(parse_ms("18446744073709551615", 1), Ok(u64::MAX));
    }

    #[test]
    fn parse_ms_never_panics_on_any_short_text() {
        // Every string of up to three characters from an alphabet that covers each branch,
        // including multi-byte characters (slicing must stay on char boundaries).
        let alphabet = ['0', '9', 'm', 's', 'h', 'd', '.', '-', ' ', 'é', '٣'];
        for a in alphabet {
            for b in alphabet {
                for c in alphabet {
                    let text: String = [a, b, c].iter().collect();
                    let _ = parse_ms(&text, 1_000);
                }
            }
        }
    }
}
