//! The account endpoints of OnlyFansAPI (UPSTREAM.md, "Accounts"): `POST /api/client-sessions`
//! (mint the token a browser hands to `startOnlyFansAuthentication`) and
//! `GET /api/authenticate/{attempt_id}` (poll an authentication attempt).
//!
//! Both reuse [`OnlyFansClient`]'s reqwest client and key headers, make one attempt bounded by
//! `upstream.timeout`, and classify failures as [`UpstreamError`]. Answers are parsed leniently
//! into plain values; deciding what a poll *means* (pending, 2FA, connected, failed) is the
//! `accounts` module's job, not this one's. Nothing here knows of attempts being watched.

use percent_encoding::utf8_percent_encode;
use reqwest::header::AUTHORIZATION;
use serde::Serialize;
use serde_json::Value;
use tokio::time::Instant;

use super::client::{SEGMENT, classify};
use super::{KeyIndex, OnlyFansClient, UpstreamError};
use crate::metrics;

/// Largest answer body read from an account endpoint.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// Body of `POST /api/client-sessions`.
#[derive(Debug, Clone, Serialize)]
pub struct NewClientSession {
    /// Shown to the creator in the login frame.
    pub display_name: String,
    /// The chat tool's own reference for this onboarding.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_reference_id: Option<String>,
    /// Proxy country, an opaque lowercase string.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_country: Option<String>,
}

/// What `POST /api/client-sessions` answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSession {
    /// `ofapi_cs_…`: safe to hand to a browser (it is not the API key).
    pub token: String,
    /// Echoed display name.
    pub display_name: Option<String>,
    /// Echoed reference id.
    pub client_reference_id: Option<String>,
}

/// One answer of `GET /api/authenticate/{attempt_id}`, fields as documented, all optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthPoll {
    /// `state` (only `"authenticated"` is documented).
    pub state: Option<String>,
    /// `progress`, as text.
    pub progress: Option<String>,
    /// `twoFactorPending`.
    pub two_factor_pending: bool,
    /// `account.id`, once connected.
    pub account_id: Option<String>,
    /// `lastAttempt.success`.
    pub last_success: Option<bool>,
    /// `lastAttempt.error_code`.
    pub error_code: Option<String>,
    /// `lastAttempt.error_message`.
    pub error_message: Option<String>,
    /// `lastAttempt.needs_otp`.
    pub needs_otp: bool,
    /// `lastAttempt.otp_phone_ending`.
    pub otp_phone_ending: Option<String>,
    /// `mobile_auth_session_deeplink`, while a mobile-app login is pending.
    pub mobile_deeplink: Option<String>,
}

/// Why an account call failed: the classified error and, for a 4xx, the upstream's own words.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{error}")]
pub struct AccountCallError {
    /// The classified failure.
    #[source]
    pub error: UpstreamError,
    /// `message` or `error` of a non-2xx JSON answer (never contains the API key).
    pub upstream_message: Option<String>,
}

impl From<UpstreamError> for AccountCallError {
    fn from(error: UpstreamError) -> Self {
        Self { error, upstream_message: None }
    }
}

// === impl OnlyFansClient ===

impl OnlyFansClient {
    /// `POST /api/client-sessions` with API key `key`.
    ///
    /// # Errors
    /// [`AccountCallError`]: a non-2xx status (401 when the key is refused, 422 when a field is),
    /// a timeout, a network failure, or a 2xx whose body carries no `data.token`.
    pub async fn create_client_session(
        &self,
        key: KeyIndex,
        body: &NewClientSession,
    ) -> Result<ClientSession, AccountCallError> {
        let url = format!("{}/api/client-sessions", self.base_url());
        let value = self.account_call("client_sessions", key, self.http().post(url).json(body)).await?;
        let data = value.get("data").unwrap_or(&value);
        let token = text(data.get("token")).ok_or_else(|| {
            AccountCallError::from(UpstreamError::InvalidBody("client session answer without data.token".to_owned()))
        })?;
        Ok(ClientSession {
            token,
            display_name: text(data.get("display_name")),
            client_reference_id: text(data.get("client_reference_id")),
        })
    }

    /// `GET /api/authenticate/{attempt_id}` with API key `key`; the id is percent-encoded.
    ///
    /// # Errors
    /// [`AccountCallError`] for a non-2xx status, a timeout, a network failure or a body that is
    /// not a JSON object.
    pub async fn poll_authentication(&self, key: KeyIndex, attempt_id: &str) -> Result<AuthPoll, AccountCallError> {
        let url = format!("{}/api/authenticate/{}", self.base_url(), utf8_percent_encode(attempt_id, SEGMENT));
        let value = self.account_call("authenticate", key, self.http().get(url)).await?;
        parse_auth_poll(&value)
            .ok_or_else(|| UpstreamError::InvalidBody("authentication status is not a JSON object".to_owned()).into())
    }

    /// Sends `req` with key `key`, reads a bounded JSON body, records the duration.
    async fn account_call(
        &self,
        endpoint: &'static str,
        key: KeyIndex,
        req: reqwest::RequestBuilder,
    ) -> Result<Value, AccountCallError> {
        let started = Instant::now();
        let result = self.account_call_inner(key, req).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.error.label(),
        };
        metrics::upstream_request(endpoint, outcome, started.elapsed());
        result
    }

    async fn account_call_inner(&self, key: KeyIndex, req: reqwest::RequestBuilder) -> Result<Value, AccountCallError> {
        let Some(auth) = self.auth_header(key) else {
            return Err(UpstreamError::Status { status: 401, retry_after: None }.into());
        };
        let mut resp = req.header(AUTHORIZATION, auth).send().await.map_err(|e| classify(&e))?;
        let status = resp.status();
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| classify(&e))? {
            if body.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(UpstreamError::InvalidBody("answer larger than 64 KiB".to_owned()).into());
            }
            body.extend_from_slice(&chunk);
        }
        let value: Option<Value> = serde_json::from_slice(&body).ok();
        if !status.is_success() {
            let upstream_message = value.as_ref().and_then(|v| text(v.get("message")).or_else(|| text(v.get("error"))));
            let retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| super::parse_retry_after(Some(v), None, std::time::SystemTime::now()));
            return Err(AccountCallError {
                error: UpstreamError::Status { status: status.as_u16(), retry_after },
                upstream_message: upstream_message.map(|m| m.chars().take(300).collect()),
            });
        }
        value.ok_or_else(|| UpstreamError::InvalidBody("answer is not JSON".to_owned()).into())
    }
}

/// A string field (numbers are accepted and written as text).
fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Parses an authentication status, under `data` or at the top level. `None` when it is not an
/// object.
pub fn parse_auth_poll(value: &Value) -> Option<AuthPoll> {
    let v = value.get("data").filter(|d| d.is_object()).unwrap_or(value);
    if !v.is_object() {
        return None;
    }
    let last = v.get("lastAttempt").or_else(|| v.get("last_attempt"));
    let field = |name: &str| last.and_then(|l| l.get(name));
    Some(AuthPoll {
        state: text(v.get("state")),
        progress: text(v.get("progress")),
        two_factor_pending: v.get("twoFactorPending").and_then(Value::as_bool).unwrap_or(false),
        account_id: text(v.get("account").and_then(|a| a.get("id"))),
        last_success: field("success").and_then(Value::as_bool),
        error_code: text(field("error_code")),
        error_message: text(field("error_message")),
        needs_otp: field("needs_otp").and_then(Value::as_bool).unwrap_or(false),
        otp_phone_ending: text(field("otp_phone_ending")),
        mobile_deeplink: text(v.get("mobile_auth_session_deeplink")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_documented_fields_at_top_level_or_under_data() {
        let raw = serde_json::json!({
            "state": "authenticated", "progress": 100, "twoFactorPending": false,
            "account": {"id": "acct_1"},
            "lastAttempt": {"success": true, "needs_otp": false}
        });
        let p = parse_auth_poll(&raw).unwrap();
        assert_eq!(p.state.as_deref(), Some("authenticated"));
        assert_eq!(p.progress.as_deref(), Some("100"));
        assert_eq!(p.account_id.as_deref(), Some("acct_1"));
        assert_eq!(p.last_success, Some(true));
        let wrapped = serde_json::json!({"data": {"twoFactorPending": true,
            "lastAttempt": {"needs_otp": true, "otp_phone_ending": "42"}}});
        let p = parse_auth_poll(&wrapped).unwrap();
        assert!(p.two_factor_pending && p.needs_otp);
        assert_eq!(p.otp_phone_ending.as_deref(), Some("42"));
        assert!(parse_auth_poll(&serde_json::json!([1])).is_none());
    }
}
