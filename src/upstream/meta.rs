//! Parsing what every OnlyFansAPI answer says about the rate budget: `_meta._rate_limits` in the
//! body, and `Retry-After` / `retry-after-ms` on a 429. Lenient by design: a field of an odd type
//! is treated as absent, never as an error. The legacy daily fields are read when they are numbers
//! (`null` means no daily limit).

use std::fmt;
use std::time::{Duration, SystemTime};

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// The figures of `_meta._rate_limits`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RateLimits {
    /// `limit_minute`: the live per-minute limit.
    pub limit_minute: Option<u32>,
    /// `remaining_minute`: requests left in the current minute.
    pub remaining_minute: Option<u32>,
    /// `limit_day`: a legacy daily limit; `None` (`null`) means none.
    pub limit_day: Option<u32>,
    /// `remaining_day`: requests left today under `limit_day`.
    pub remaining_day: Option<u32>,
}

/// Extracts `_meta._rate_limits` from a response body. Returns `None` when the body is not JSON
/// or carries none of the fields as a number.
///
/// Every answer goes through here, so it reads the body in one pass without building a tree:
/// keys are compared in place, every other field is skipped, and nothing is allocated. Later
/// duplicates of a key win, as they would in a parsed tree.
pub fn parse_rate_limits(body: &[u8]) -> Option<RateLimits> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let found = de.deserialize_any(Lenient(Level::Body)).ok()?;
    de.end().ok()?;
    let limits = found.flatten()?;
    (limits != RateLimits::default()).then_some(limits)
}

/// Which object the visitor reads: the body, `_meta`, or `_rate_limits`.
#[derive(Clone, Copy)]
enum Level {
    Body,
    Meta,
    Limits,
}

/// What one level found: `Some` when the value was an object holding what was looked for.
type Found = Option<Option<RateLimits>>;

/// Reads one level as an object; any other JSON type reads as "not there" (`None`), never as an
/// error.
struct Lenient(Level);

/// A key of interest at a level, or another one (compared without allocating).
enum Key {
    Meta,
    RateLimits,
    Count(usize),
    Other,
}

struct KeyOf(Level);

impl<'de> de::DeserializeSeed<'de> for KeyOf {
    type Value = Key;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Key, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for KeyOf {
    type Value = Key;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
        Ok(match (self.0, v) {
            (Level::Body, "_meta") => Key::Meta,
            (Level::Meta, "_rate_limits") => Key::RateLimits,
            (Level::Limits, "limit_minute") => Key::Count(0),
            (Level::Limits, "remaining_minute") => Key::Count(1),
            (Level::Limits, "limit_day") => Key::Count(2),
            (Level::Limits, "remaining_day") => Key::Count(3),
            _ => Key::Other,
        })
    }
}

impl<'de> de::DeserializeSeed<'de> for Lenient {
    type Value = Found;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Found, D::Error> {
        d.deserialize_any(self)
    }
}

/// Implements the visits of every non-object JSON type as "not there", consuming the value.
macro_rules! not_there {
    ($value:ty) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<$value, E> {
            Ok(None)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<$value, E> {
            Ok(None)
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<$value, E> {
            Ok(None)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<$value, E> {
            Ok(None)
        }
        fn visit_str<E: de::Error>(self, _: &str) -> Result<$value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<$value, E> {
            Ok(None)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<$value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(None)
        }
    };
}

impl<'de> Visitor<'de> for Lenient {
    type Value = Found;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    not_there!(Found);
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Found, A::Error> {
        let mut counts = [None; 4];
        let mut inner: Found = None;
        while let Some(key) = map.next_key_seed(KeyOf(self.0))? {
            match key {
                Key::Meta => inner = map.next_value_seed(Lenient(Level::Meta))?,
                Key::RateLimits => inner = map.next_value_seed(Lenient(Level::Limits))?,
                Key::Count(i) => counts[i] = map.next_value_seed(Count)?,
                Key::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Some(match self.0 {
            Level::Limits => Some(RateLimits {
                limit_minute: counts[0],
                remaining_minute: counts[1],
                limit_day: counts[2],
                remaining_day: counts[3],
            }),
            Level::Body | Level::Meta => inner.flatten(),
        }))
    }
}

/// A count: a non-negative number (fractions truncated, capped at `u32::MAX`) or a string
/// holding an integer; anything else is "not a count".
struct Count;

impl<'de> de::DeserializeSeed<'de> for Count {
    type Value = Option<u32>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<u32>, D::Error> {
        d.deserialize_any(self)
    }
}

fn saturate(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl<'de> Visitor<'de> for Count {
    type Value = Option<u32>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a count")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Option<u32>, E> {
        Ok(None)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Option<u32>, E> {
        Ok(u64::try_from(v).ok().map(saturate))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Option<u32>, E> {
        Ok(Some(saturate(v)))
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "finite, non-negative; saturating")]
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Option<u32>, E> {
        Ok((v.is_finite() && v >= 0.0).then(|| saturate(v as u64)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Option<u32>, E> {
        Ok(v.trim().parse::<u64>().ok().map(saturate))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Option<u32>, E> {
        Ok(None)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Option<u32>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<u32>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(None)
    }
}

/// Parses `retry-after-ms` (milliseconds) or `Retry-After` (seconds, or an HTTP date relative
/// to `now`). Absurd values are capped at one hour.
pub fn parse_retry_after(retry_after: Option<&str>, retry_after_ms: Option<&str>, now: SystemTime) -> Option<Duration> {
    const CAP: Duration = Duration::from_secs(3600);
    if let Some(ms) = retry_after_ms.and_then(|v| v.trim().parse::<f64>().ok()).filter(|v| v.is_finite() && *v >= 0.0) {
        // A finite value too large for a Duration caps, instead of panicking.
        return Some(Duration::try_from_secs_f64(ms / 1000.0).map_or(CAP, |d| d.min(CAP)));
    }
    let raw = retry_after?.trim();
    if let Ok(secs) = raw.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0)
            .then(|| Duration::try_from_secs_f64(secs).map_or(CAP, |d| d.min(CAP)));
    }
    let at = httpdate::parse_http_date(raw).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO).min(CAP))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_documented_meta_with_null_daily_fields() {
        let body = br#"{"data":{"success":true},"_meta":{"_credits":{"used":0},"_rate_limits":{"limit_minute":1000,"remaining_minute":999,"limit_day":null,"remaining_day":null}}}"#;
        let want = RateLimits { limit_minute: Some(1000), remaining_minute: Some(999), ..RateLimits::default() };
        assert_eq!(parse_rate_limits(body), Some(want));
    }

    #[test]
    fn parses_legacy_numeric_daily_fields_and_odd_types() {
        let legacy = br#"{"_meta":{"_rate_limits":{"limit_minute":5000,"remaining_minute":"12","limit_day":50000,"remaining_day":49000}}}"#;
        assert_eq!(
            parse_rate_limits(legacy),
            Some(RateLimits {
                limit_minute: Some(5000),
                remaining_minute: Some(12),
                limit_day: Some(50000),
                remaining_day: Some(49000)
            })
        );
        let odd = br#"{"_meta":{"_rate_limits":{"limit_minute":true,"remaining_minute":[1]}}}"#;
        assert_eq!(parse_rate_limits(odd), None);
        assert_eq!(parse_rate_limits(b"not json"), None);
        assert_eq!(parse_rate_limits(br#"{"_meta":"x"}"#), None);
        let neg = br#"{"_meta":{"_rate_limits":{"limit_minute":-5,"remaining_minute":1e30}}}"#;
        assert_eq!(
            parse_rate_limits(neg),
            Some(RateLimits { remaining_minute: Some(u32::MAX), ..RateLimits::default() })
        );
    }

    #[test]
    fn later_duplicates_win_and_nested_odd_values_are_skipped() {
        let body =
            br#"{"_meta":{"_rate_limits":{"limit_minute":1,"limit_minute":7,"x":{"a":[1,{"b":null}]}}},"data":[1,2]}"#;
        assert_eq!(parse_rate_limits(body), Some(RateLimits { limit_minute: Some(7), ..RateLimits::default() }));
        let later = br#"{"_meta":{"_rate_limits":{"limit_minute":3}},"_meta":5}"#;
        assert_eq!(parse_rate_limits(later), None);
        assert_eq!(parse_rate_limits(br#"{"_meta":{"_rate_limits":{"limit_minute":3}}} trailing"#), None);
        assert_eq!(parse_rate_limits(br#"[{"_meta":{"_rate_limits":{"limit_minute":3}}}]"#), None);
        assert_eq!(parse_rate_limits(br#"{"_meta":{"_rate_limits":{"limit_minute":{"n":3}}}}"#), None);
    }

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(parse_retry_after(Some("5"), None, now), Some(Duration::from_secs(5)));
        assert_eq!(parse_retry_after(Some("5"), Some("250"), now), Some(Duration::from_millis(250)));
        let date = httpdate::fmt_http_date(now + Duration::from_secs(7));
        assert_eq!(parse_retry_after(Some(&date), None, now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(Some("soon"), None, now), None);
        assert_eq!(parse_retry_after(Some("-3"), None, now), None);
        assert_eq!(parse_retry_after(Some("999999"), None, now), Some(Duration::from_secs(3600)));
        // Finite but beyond what a Duration holds (found by fuzzing): capped, no panic.
        let huge = "6".repeat(40);
        assert_eq!(parse_retry_after(Some(&huge), None, now), Some(Duration::from_secs(3600)));
        assert_eq!(parse_retry_after(None, Some(&huge), now), Some(Duration::from_secs(3600)));
        assert_eq!(parse_retry_after(Some("1e300"), Some("1e300"), now), Some(Duration::from_secs(3600)));
    }
}
