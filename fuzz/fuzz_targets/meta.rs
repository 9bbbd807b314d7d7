//! Upstream `_meta` and retry headers: any answer body and header values parse leniently to
//! something or nothing; never a panic, and a retry delay is capped.
#![no_main]

use std::time::{Duration, SystemTime};

use keeptyping::upstream::{parse_rate_limits, parse_retry_after};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse_rate_limits(data);
    let text = String::from_utf8_lossy(data);
    let (a, b) = text.split_once('\n').unwrap_or((&text, ""));
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    for (ra, ms) in [(Some(a), None), (None, Some(a)), (Some(a), Some(b))] {
        if let Some(d) = parse_retry_after(ra, ms, now) {
            assert!(d <= Duration::from_secs(3600), "{d:?} from {ra:?} {ms:?}");
        }
    }
});
