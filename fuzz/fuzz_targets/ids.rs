//! Id validation: whatever string a tool sends, parsing either refuses it or yields an id that
//! is safe in a URL path segment (no slash, no dot-segment, no control character, bounded).
#![no_main]

use keeptyping::ids::{AccountId, ChatId, Platform};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    for platform in [Platform::Onlyfans, Platform::Fansly, Platform::Fanvue] {
        if let Ok(id) = AccountId::parse(platform, text) {
            check(id.as_str());
        }
        if let Ok(id) = ChatId::parse(platform, text) {
            check(id.as_str());
        }
    }
});

fn check(id: &str) {
    assert!(!id.is_empty() && id.len() <= 128, "{id:?}");
    assert!(id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'), "{id:?}");
}
