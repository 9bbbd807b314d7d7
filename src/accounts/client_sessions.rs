//! Client sessions: the fields a chat tool sends, validated, and the token OnlyFansAPI mints.
//!
//! The token (`ofapi_cs_…`) is what a browser hands to `startOnlyFansAuthentication`; the API key
//! that minted it stays on this server. This file validates and forwards; it does not keep any
//! state (client sessions live upstream).

use crate::upstream::NewClientSession;

/// Longest accepted `display_name`, in characters.
pub const MAX_DISPLAY_NAME_CHARS: usize = 100;
/// Longest accepted `client_reference_id`, in characters.
pub const MAX_REFERENCE_CHARS: usize = 255;
/// Longest accepted `proxy_country`.
pub const MAX_PROXY_COUNTRY_LEN: usize = 16;

/// A field of a client-session request that is missing or out of bounds; the message names it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FieldError(pub String);

/// Validates the fields of a client-session request.
///
/// `display_name` is required: 1 to [`MAX_DISPLAY_NAME_CHARS`] characters after trimming, no
/// control characters. `client_reference_id` is optional, at most [`MAX_REFERENCE_CHARS`]
/// characters, no control characters. `proxy_country` is opaque (the upstream's allowed values
/// differ between doc versions): lowercased, 1 to [`MAX_PROXY_COUNTRY_LEN`] of `a-z0-9_-`.
///
/// # Errors
/// [`FieldError`] naming the first field that fails.
pub fn parse_fields(
    display_name: Option<&str>,
    client_reference_id: Option<&str>,
    proxy_country: Option<&str>,
) -> Result<NewClientSession, FieldError> {
    let name = display_name.map(str::trim).unwrap_or_default();
    if name.is_empty() {
        return Err(FieldError("display_name is required".to_owned()));
    }
    if name.chars().count() > MAX_DISPLAY_NAME_CHARS || name.chars().any(char::is_control) {
        return Err(FieldError(format!(
            "display_name must be at most {MAX_DISPLAY_NAME_CHARS} characters, without control characters"
        )));
    }
    let reference = match client_reference_id.map(str::trim) {
        None | Some("") => None,
        Some(r) if r.chars().count() <= MAX_REFERENCE_CHARS && !r.chars().any(char::is_control) => Some(r.to_owned()),
        Some(_) => {
            return Err(FieldError(format!(
                "client_reference_id must be at most {MAX_REFERENCE_CHARS} characters, without control characters"
            )));
        }
    };
    let country = match proxy_country.map(|c| c.trim().to_ascii_lowercase()) {
        None => None,
        Some(c)
            if !c.is_empty()
                && c.len() <= MAX_PROXY_COUNTRY_LEN
                && c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-') =>
        {
            Some(c)
        }
        Some(_) => {
            return Err(FieldError(format!(
                "proxy_country must be 1 to {MAX_PROXY_COUNTRY_LEN} characters of letters, digits, _ and -"
            )));
        }
    };
    Ok(NewClientSession { display_name: name.to_owned(), client_reference_id: reference, proxy_country: country })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_name_is_required_and_bounded() {
        assert!(parse_fields(None, None, None).is_err());
        assert!(parse_fields(Some("   "), None, None).is_err());
        assert!(parse_fields(Some(&"x".repeat(101)), None, None).is_err());
        assert!(parse_fields(Some("a\u{0}b"), None, None).is_err());
        let ok = parse_fields(Some(" Mia's agency "), Some("crm-42"), Some("US")).unwrap();
        assert_eq!(ok.display_name, "Mia's agency");
        assert_eq!(ok.client_reference_id.as_deref(), Some("crm-42"));
        assert_eq!(ok.proxy_country.as_deref(), Some("us"));
    }

    #[test]
    fn optional_fields_are_checked() {
        assert!(parse_fields(Some("a"), Some(&"r".repeat(256)), None).is_err());
        assert!(parse_fields(Some("a"), None, Some("u s")).is_err());
        assert!(parse_fields(Some("a"), None, Some("")).is_err());
        assert_eq!(parse_fields(Some("a"), Some(""), None).unwrap().client_reference_id, None);
    }
}
