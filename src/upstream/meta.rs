//! Parsing what every OnlyFansAPI answer says about the rate budget: `_meta._rate_limits` in the
//! body, and `Retry-After` / `retry-after-ms` on a 429. Lenient by design: a field of an odd type
//! is treated as absent, never as an error. The legacy daily fields are read when they are numbers
//! (`null` means no daily limit).

use std::time::{Duration, SystemTime};

use serde_json::Value;

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

fn as_count(v: &Value) -> Option<u32> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| f.is_finite() && *f >= 0.0).map(|f| f as u64))
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
        Value::String(s) => s.trim().parse::<u64>().ok().map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
        _ => None,
    }
}

/// Extracts `_meta._rate_limits` from a response body. Returns `None` when the body is not JSON
/// or carries none of the fields as a number.
pub fn parse_rate_limits(body: &[u8]) -> Option<RateLimits> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let rl = v.get("_meta")?.get("_rate_limits")?;
    let limits = RateLimits {
        limit_minute: rl.get("limit_minute").and_then(as_count),
        remaining_minute: rl.get("remaining_minute").and_then(as_count),
        limit_day: rl.get("limit_day").and_then(as_count),
        remaining_day: rl.get("remaining_day").and_then(as_count),
    };
    (limits != RateLimits::default()).then_some(limits)
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
