//! Identifiers that travel from a hook request into an upstream URL.
//!
//! Every id is parsed here, once, at the API edge: a value that is not a well-formed
//! account or chat id for its platform never becomes an [`AccountId`] or [`ChatId`], so it can
//! never reach a URL path. The upstream client still percent-encodes every segment as a second
//! line of defence. This module knows nothing of HTTP or sessions.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Longest account id accepted, prefix included.
pub const MAX_ACCOUNT_ID_LEN: usize = 80;
/// Longest numeric chat id accepted (a u64 has at most 20 digits).
pub const MAX_NUMERIC_CHAT_ID_LEN: usize = 20;

/// The creator platforms OnlyFansAPI proxies a typing call for.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    /// OnlyFans: `POST /api/{account}/chats/{chat}/typing`.
    #[default]
    Onlyfans,
    /// Fansly: `POST /api/fansly/{account}/chats/{chat}/typing`.
    Fansly,
    /// Fanvue: `POST /api/fanvue/{account}/chats/{user_uuid}/typing`.
    Fanvue,
}

impl Platform {
    /// Every platform, in a fixed order (used to pre-register metric label values).
    pub const ALL: [Platform; 3] = [Platform::Onlyfans, Platform::Fansly, Platform::Fanvue];

    /// The lowercase name used in JSON, config and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Onlyfans => "onlyfans",
            Platform::Fansly => "fansly",
            Platform::Fanvue => "fanvue",
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an id was refused. The message names the field and the rule, never echoes the raw value
/// at length (it may be hostile).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The account id does not match the platform's pattern.
    #[error("account_id is not a valid {platform} account id ({rule})")]
    Account {
        /// The platform whose pattern was applied.
        platform: Platform,
        /// The rule that failed, in words.
        rule: &'static str,
    },
    /// The chat id does not match the platform's pattern.
    #[error("chat_id is not a valid {platform} chat id ({rule})")]
    Chat {
        /// The platform whose pattern was applied.
        platform: Platform,
        /// The rule that failed, in words.
        rule: &'static str,
    },
}

/// A validated creator account id (`acct_…` on OnlyFans, `fansly_acct_…` on Fansly).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountId(Arc<str>);

/// A validated chat id: the fan's numeric user id, or a lowercase UUID on Fanvue.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChatId(Arc<str>);

fn is_id_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'-'
}

// === impl AccountId ===

impl AccountId {
    /// Parses an account id for `platform`.
    ///
    /// OnlyFans ids are `acct_` followed by letters and digits (the docs use 32 lowercase hex
    /// digits, and placeholders like `acct_XXXXXXXX`); Fansly ids start with `fansly_acct_`;
    /// Fanvue's format is undocumented, so it accepts letters, digits, `_` and `-`. All are
    /// bounded to [`MAX_ACCOUNT_ID_LEN`] bytes.
    ///
    /// # Errors
    /// [`IdError::Account`] naming the rule that failed.
    pub fn parse(platform: Platform, raw: &str) -> Result<Self, IdError> {
        let err = |rule| IdError::Account { platform, rule };
        if raw.is_empty() {
            return Err(err("must not be empty"));
        }
        if raw.len() > MAX_ACCOUNT_ID_LEN {
            return Err(err("too long"));
        }
        let rest = match platform {
            Platform::Onlyfans => raw.strip_prefix("acct_").ok_or(err("must start with acct_"))?,
            Platform::Fansly => raw.strip_prefix("fansly_acct_").ok_or(err("must start with fansly_acct_"))?,
            Platform::Fanvue => raw,
        };
        if rest.is_empty() {
            return Err(err("nothing after the prefix"));
        }
        let ok = match platform {
            Platform::Onlyfans | Platform::Fansly => rest.bytes().all(|c| c.is_ascii_alphanumeric()),
            Platform::Fanvue => rest.bytes().all(is_id_char),
        };
        if !ok {
            return Err(err("only letters and digits are allowed"));
        }
        Ok(Self(Arc::from(raw)))
    }

    /// Parses an account id whose platform is not known (allow-lists, webhooks): the Fansly
    /// prefix selects Fansly, `acct_` OnlyFans, anything else must pass Fanvue's rule.
    ///
    /// # Errors
    /// [`IdError::Account`] when no platform accepts it.
    pub fn parse_any(raw: &str) -> Result<Self, IdError> {
        if raw.starts_with("fansly_acct_") {
            Self::parse(Platform::Fansly, raw)
        } else if raw.starts_with("acct_") {
            Self::parse(Platform::Onlyfans, raw)
        } else {
            Self::parse(Platform::Fanvue, raw)
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Lets a set of ids be searched with a `&str` (`AccountId` hashes and compares as its text).
impl std::borrow::Borrow<str> for AccountId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AccountId({})", self.0)
    }
}

impl Serialize for AccountId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

// === impl ChatId ===

impl ChatId {
    /// Parses a chat id for `platform`: ASCII digits (1 to 20, no sign, no leading `+`) on
    /// OnlyFans and Fansly, a hyphenated UUID on Fanvue (normalised to lowercase).
    ///
    /// # Errors
    /// [`IdError::Chat`] naming the rule that failed.
    pub fn parse(platform: Platform, raw: &str) -> Result<Self, IdError> {
        let err = |rule| IdError::Chat { platform, rule };
        match platform {
            Platform::Onlyfans | Platform::Fansly => {
                if raw.is_empty() {
                    return Err(err("must not be empty"));
                }
                if raw.len() > MAX_NUMERIC_CHAT_ID_LEN {
                    return Err(err("at most 20 digits"));
                }
                if !raw.bytes().all(|c| c.is_ascii_digit()) {
                    return Err(err("digits only"));
                }
                Ok(Self(Arc::from(raw)))
            }
            Platform::Fanvue => {
                let b = raw.as_bytes();
                let well_formed = b.len() == 36
                    && b.iter().enumerate().all(|(i, &c)| match i {
                        8 | 13 | 18 | 23 => c == b'-',
                        _ => c.is_ascii_hexdigit(),
                    });
                if !well_formed {
                    return Err(err("must be a UUID like 0f8fad5b-d9cb-469f-a165-70867728950e"));
                }
                Ok(Self(Arc::from(raw.to_ascii_lowercase())))
            }
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ChatId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ChatId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChatId({})", self.0)
    }
}

impl Serialize for ChatId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// One chat on one account on one platform: the key of a typing session.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionKey {
    /// The platform.
    pub platform: Platform,
    /// The creator account.
    pub account: AccountId,
    /// The fan's chat.
    pub chat: ChatId,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn onlyfans_account_ids_need_the_prefix_and_alphanumerics() {
        assert!(AccountId::parse(Platform::Onlyfans, "acct_0123456789abcdef0123456789abcdef").is_ok());
        assert!(AccountId::parse(Platform::Onlyfans, "acct_XXXXXXXX").is_ok());
        for bad in ["", "acct_", "0123", "acct_../x", "acct_a/b", "acct_a%2Fb", "acct_ä", "fansly_acct_1"] {
            assert!(AccountId::parse(Platform::Onlyfans, bad).is_err(), "{bad:?} accepted");
        }
        let long = format!("acct_{}", "a".repeat(MAX_ACCOUNT_ID_LEN));
        assert!(AccountId::parse(Platform::Onlyfans, &long).is_err());
    }

    #[test]
    fn fansly_and_fanvue_account_rules() {
        assert!(AccountId::parse(Platform::Fansly, "fansly_acct_abc123").is_ok());
        assert!(AccountId::parse(Platform::Fansly, "acct_abc").is_err());
        assert!(AccountId::parse(Platform::Fanvue, "fanvue_acct-1").is_ok());
        assert!(AccountId::parse(Platform::Fanvue, "a b").is_err());
        assert!(AccountId::parse(Platform::Fanvue, "..").is_err());
    }

    #[test]
    fn numeric_chat_ids_reject_path_tricks() {
        assert!(ChatId::parse(Platform::Onlyfans, "123456789").is_ok());
        for bad in ["../../api-keys", "1%2F2", "1/2", "", "-1", "+1", " 1", "1 ", "１", "123456789012345678901"] {
            assert!(ChatId::parse(Platform::Onlyfans, bad).is_err(), "{bad:?} accepted");
            assert!(ChatId::parse(Platform::Fansly, bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn fanvue_chat_ids_are_uuids_normalised_to_lowercase() {
        let id = ChatId::parse(Platform::Fanvue, "0F8FAD5B-D9CB-469F-A165-70867728950E").unwrap();
        assert_eq!(id.as_str(), "0f8fad5b-d9cb-469f-a165-70867728950e");
        assert!(ChatId::parse(Platform::Fanvue, "12345").is_err());
        assert!(ChatId::parse(Platform::Fanvue, "0f8fad5b-d9cb-469f-a165-70867728950/").is_err());
    }

    #[test]
    fn parse_any_picks_the_platform_by_prefix() {
        assert!(AccountId::parse_any("acct_abc").is_ok());
        assert!(AccountId::parse_any("fansly_acct_abc").is_ok());
        assert!(AccountId::parse_any("acct_a/b").is_err());
    }
}
