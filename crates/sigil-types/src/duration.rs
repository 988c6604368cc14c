//! Human-readable durations: `"90s"`, `"15m"`, `"1h30m"`, `"2d"`, `"500ms"`.
//!
//! Grammar: one or more `<digits><unit>` components with no separators, where
//! unit is one of `d`, `h`, `m`, `s`, `ms`. Units must appear in strictly
//! descending order (`d` > `h` > `m` > `s` > `ms`) and at most once each, so
//! `"1h30m"` and `"1h0m5s"` are accepted but `"30m1h"` and `"1m1m"` are
//! rejected. A bare number (`"0"`, `"90"`) is rejected: the unit is required.

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Why a duration string could not be parsed. Every variant names the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// The input was empty or only whitespace.
    #[error("empty duration: expected e.g. \"90s\", \"15m\", \"1h30m\"")]
    Empty,
    /// The input started with a sign.
    #[error("invalid duration {input:?}: negative or signed durations are not allowed")]
    Negative {
        /// The offending input.
        input: String,
    },
    /// A number was not followed by a unit.
    #[error("invalid duration {input:?}: number without a unit (use one of ms, s, m, h, d)")]
    MissingUnit {
        /// The offending input.
        input: String,
    },
    /// A unit was not one of ms, s, m, h, d.
    #[error("invalid duration {input:?}: unknown unit {unit:?} (use one of ms, s, m, h, d)")]
    UnknownUnit {
        /// The offending input.
        input: String,
        /// The unit that was not recognised.
        unit: String,
    },
    /// A unit appeared twice or after a smaller unit.
    #[error(
        "invalid duration {input:?}: unit {unit:?} repeated or out of order (write units largest first, each once, e.g. \"1h30m\")"
    )]
    UnitOrder {
        /// The offending input.
        input: String,
        /// The unit that was out of order.
        unit: String,
    },
    /// Something other than digits and units was found.
    #[error("invalid duration {input:?}: unexpected character {found:?}")]
    InvalidChar {
        /// The offending input.
        input: String,
        /// The unexpected character.
        found: char,
    },
    /// The value does not fit in a `std::time::Duration`.
    #[error("invalid duration {input:?}: value is too large")]
    Overflow {
        /// The offending input.
        input: String,
    },
    /// The value is over [`MAX_DURATION`].
    #[error("invalid duration {input:?}: longer than the limit of 3650d (10 years)")]
    TooLong {
        /// The offending input.
        input: String,
    },
}

/// The longest duration accepted anywhere (10 years of 365 days): every TTL,
/// interval and lifetime is far below, and any date within it of now is
/// representable, so adding one to a timestamp cannot overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 86_400);

/// `now + ttl`, or `None` when the result is not a representable date (a
/// TTL that was not bounded at parse). Use instead of `+` wherever a
/// duration from input meets a date: `OffsetDateTime + Duration` panics on
/// overflow.
pub fn checked_expiry(now: time::OffsetDateTime, ttl: Duration) -> Option<time::OffsetDateTime> {
    time::Duration::try_from(ttl)
        .ok()
        .and_then(|d| now.checked_add(d))
}

/// Checks that a duration from input (a field, a flag, a request) is at most
/// [`MAX_DURATION`]; the error names the limit.
pub fn check_duration(d: Duration) -> Result<(), DurationError> {
    if d > MAX_DURATION {
        return Err(DurationError::TooLong {
            input: format_duration(d),
        });
    }
    Ok(())
}

/// Units from largest to smallest, with their size in milliseconds.
const UNITS: [(&str, u128); 5] = [
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
];

/// Parses a duration such as `"1h30m"`; see the module docs for the grammar.
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let input = s.trim();
    if input.is_empty() {
        return Err(DurationError::Empty);
    }
    let owned = || input.to_string();
    if input.starts_with('-') || input.starts_with('+') {
        return Err(DurationError::Negative { input: owned() });
    }
    let bytes = input.as_bytes();
    let mut i = 0;
    let mut total_ms: u128 = 0;
    // Index into UNITS of the last unit seen; the next must be strictly greater.
    let mut last_unit: Option<usize> = None;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if start == i {
            let found = input[i..].chars().next().unwrap_or(' ');
            return Err(DurationError::InvalidChar {
                input: owned(),
                found,
            });
        }
        let number: u64 = input[start..i]
            .parse()
            .map_err(|_| DurationError::Overflow { input: owned() })?;
        let unit_start = i;
        while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
            i += 1;
        }
        let unit = &input[unit_start..i];
        if unit.is_empty() {
            return match input[i..].chars().next() {
                Some(found) => Err(DurationError::InvalidChar {
                    input: owned(),
                    found,
                }),
                None => Err(DurationError::MissingUnit { input: owned() }),
            };
        }
        let Some(idx) = UNITS.iter().position(|(name, _)| *name == unit) else {
            return Err(DurationError::UnknownUnit {
                input: owned(),
                unit: unit.to_string(),
            });
        };
        if last_unit.is_some_and(|last| idx <= last) {
            return Err(DurationError::UnitOrder {
                input: owned(),
                unit: unit.to_string(),
            });
        }
        last_unit = Some(idx);
        // u64 * 86_400_000 fits in u128 and so do five such terms, but stay checked anyway.
        total_ms = u128::from(number)
            .checked_mul(UNITS[idx].1)
            .and_then(|v| total_ms.checked_add(v))
            .ok_or_else(|| DurationError::Overflow { input: owned() })?;
    }
    if total_ms > MAX_DURATION.as_millis() {
        return Err(DurationError::TooLong { input: owned() });
    }
    let secs =
        u64::try_from(total_ms / 1000).map_err(|_| DurationError::Overflow { input: owned() })?;
    // The remainder is < 1000 so the nanosecond count is < 1e9 and fits in u32.
    let nanos = (total_ms % 1000) as u32 * 1_000_000;
    Ok(Duration::new(secs, nanos))
}

/// Formats a duration in the shortest form `parse_duration` accepts, e.g.
/// `"1h30m"`, `"1d12h"`, `"1m30s"`, `"1s500ms"`, `"0s"`. Sub-millisecond
/// precision is truncated, so round-tripping is exact for whole milliseconds.
pub fn format_duration(d: Duration) -> String {
    let total_ms = d.as_millis();
    if total_ms == 0 {
        return "0s".to_string();
    }
    let mut rest = total_ms;
    let mut out = String::new();
    for (name, size) in UNITS {
        let n = rest / size;
        rest %= size;
        if n > 0 {
            out.push_str(&n.to_string());
            out.push_str(name);
        }
    }
    out
}

/// A `Duration` that serializes as a human string (`"1h30m"`) and
/// deserializes from such a string or from an integer number of seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// The wrapped duration.
    pub fn as_duration(&self) -> Duration {
        self.0
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_duration(self.0))
    }
}

impl FromStr for HumanDuration {
    type Err = DurationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_duration(s).map(HumanDuration)
    }
}

impl From<Duration> for HumanDuration {
    fn from(d: Duration) -> Self {
        HumanDuration(d)
    }
}

impl From<HumanDuration> for Duration {
    fn from(d: HumanDuration) -> Self {
        d.0
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format_duration(self.0))
    }
}

struct HumanDurationVisitor;

impl Visitor<'_> for HumanDurationVisitor {
    type Value = HumanDuration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "a duration such as \"90s\", \"15m\", \"1h30m\" or an integer number of seconds",
        )
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<HumanDuration, E> {
        parse_duration(v).map(HumanDuration).map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<HumanDuration, E> {
        let d = Duration::from_secs(v);
        check_duration(d).map_err(E::custom)?;
        Ok(HumanDuration(d))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<HumanDuration, E> {
        let secs = u64::try_from(v).map_err(|_| {
            E::custom(format!(
                "invalid duration {v}: negative durations are not allowed"
            ))
        })?;
        self.visit_u64(secs)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(HumanDurationVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_examples() {
        let cases = [
            ("90s", 90_000),
            ("15m", 900_000),
            ("1h", 3_600_000),
            ("1h30m", 5_400_000),
            ("2d", 172_800_000),
            ("500ms", 500),
            ("1h0m5s", 3_605_000),
            ("  1s500ms \n", 1_500),
            ("0s", 0),
        ];
        for (s, ms) in cases {
            assert_eq!(parse_duration(s), Ok(Duration::from_millis(ms)), "{s}");
        }
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(parse_duration("  "), Err(DurationError::Empty));
        assert!(matches!(
            parse_duration("-5m"),
            Err(DurationError::Negative { .. })
        ));
        assert!(matches!(
            parse_duration("90"),
            Err(DurationError::MissingUnit { .. })
        ));
        assert!(matches!(
            parse_duration("1h30"),
            Err(DurationError::MissingUnit { .. })
        ));
        assert!(matches!(
            parse_duration("5w"),
            Err(DurationError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse_duration("30m1h"),
            Err(DurationError::UnitOrder { .. })
        ));
        assert!(matches!(
            parse_duration("1m1m"),
            Err(DurationError::UnitOrder { .. })
        ));
        assert!(matches!(
            parse_duration("1.5h"),
            Err(DurationError::InvalidChar { .. })
        ));
        assert!(matches!(
            parse_duration("1h 30m"),
            Err(DurationError::InvalidChar { .. })
        ));
        assert!(matches!(
            parse_duration("h"),
            Err(DurationError::InvalidChar { .. })
        ));
    }

    #[test]
    fn overflow_is_an_error_naming_the_input() {
        let big = "99999999999999999999999d";
        let err = parse_duration(big).unwrap_err();
        assert!(matches!(err, DurationError::Overflow { .. }));
        assert!(err.to_string().contains(big));
        let err = parse_duration("18446744073709551615d").unwrap_err();
        assert!(matches!(err, DurationError::TooLong { .. }));
    }

    #[test]
    fn durations_are_bounded() {
        assert_eq!(parse_duration("3650d"), Ok(MAX_DURATION));
        for big in [
            "3651d",
            "3650d1ms",
            "18446744073709551615s",
            "999999999999d",
        ] {
            let err = parse_duration(big).unwrap_err();
            assert!(
                matches!(
                    err,
                    DurationError::TooLong { .. } | DurationError::Overflow { .. }
                ),
                "{big}: {err}"
            );
        }
        assert!(
            parse_duration("3651d")
                .unwrap_err()
                .to_string()
                .contains("10 years")
        );
        assert!(serde_json::from_str::<HumanDuration>("18446744073709551615").is_err());
        assert!(serde_json::from_str::<HumanDuration>("315360001").is_err());
        assert!(serde_json::from_str::<HumanDuration>("315360000").is_ok());
        assert!(check_duration(Duration::MAX).is_err());
        let now = time::OffsetDateTime::now_utc();
        assert!(checked_expiry(now, Duration::MAX).is_none());
        assert!(checked_expiry(now, Duration::from_secs(u64::MAX / 2)).is_none());
        assert!(checked_expiry(now, MAX_DURATION).is_some());
    }

    #[test]
    fn formats_shortest() {
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format_duration(Duration::from_secs(900)), "15m");
        assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_duration(Duration::ZERO), "0s");
        assert_eq!(format_duration(Duration::from_millis(500)), "500ms");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1s500ms");
        assert_eq!(format_duration(Duration::from_secs(129_600)), "1d12h");
    }

    #[test]
    fn human_duration_serde() {
        let h = HumanDuration(Duration::from_secs(5400));
        assert_eq!(serde_json::to_string(&h).unwrap(), "\"1h30m\"");
        let from_str: HumanDuration = serde_json::from_str("\"1h30m\"").unwrap();
        assert_eq!(from_str, h);
        let from_int: HumanDuration = serde_json::from_str("5400").unwrap();
        assert_eq!(from_int, h);
        let from_yaml: HumanDuration = serde_norway::from_str("15m").unwrap();
        assert_eq!(from_yaml.0, Duration::from_secs(900));
        let from_yaml_int: HumanDuration = serde_norway::from_str("60").unwrap();
        assert_eq!(from_yaml_int.0, Duration::from_secs(60));
        assert!(serde_json::from_str::<HumanDuration>("-5").is_err());
        assert!(serde_json::from_str::<HumanDuration>("\"5x\"").is_err());
        assert!(serde_json::from_str::<HumanDuration>("true").is_err());
        assert_eq!("2d".parse::<HumanDuration>().unwrap().to_string(), "2d");
    }

    proptest! {
        #[test]
        fn roundtrip_whole_millis(secs in 0..MAX_DURATION.as_secs(), ms in 0u32..1000) {
            let d = Duration::new(secs, ms * 1_000_000);
            prop_assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }

        #[test]
        fn huge_values_are_refused_not_panicking(secs in any::<u64>(), ms in 0u32..1000) {
            let d = Duration::new(secs, ms * 1_000_000);
            let parsed = parse_duration(&format_duration(d));
            prop_assert_eq!(parsed.is_ok(), d <= MAX_DURATION);
            let now = time::OffsetDateTime::now_utc();
            if let Ok(p) = parsed {
                prop_assert!(checked_expiry(now, p).is_some());
            }
            let _ = checked_expiry(now, d);
        }

        #[test]
        fn roundtrip_small(ms in 0u64..10_000_000_000) {
            let d = Duration::from_millis(ms);
            prop_assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }

        #[test]
        fn never_panics(s in "\\PC*") {
            let _ = parse_duration(&s);
        }
    }
}
