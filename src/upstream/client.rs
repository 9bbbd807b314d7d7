//! [`OnlyFansClient`]: the reqwest implementation of [`Upstream`].
//!
//! One client for the process (rustls, keep-alive pool, `TCP_NODELAY`), one attempt per typing
//! call bounded by `upstream.timeout`. API keys are turned into sensitive header values once, at
//! construction, and never formatted anywhere else.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::header::{AUTHORIZATION, HeaderValue};
use secrecy::ExposeSecret;
use tokio::time::Instant;

use super::{BoxFuture, KeyIndex, Outcome, Upstream, UpstreamError, parse_rate_limits, parse_retry_after};
use crate::config::{ApiKey, UpstreamSettings};
use crate::ids::{Platform, SessionKey};

/// Characters left unescaped in a path segment: RFC 3986 unreserved ones only.
pub(crate) const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// Largest answer body read; `_meta` is small, anything longer is not worth reading.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// The path of the typing endpoint for `key`, every segment percent-encoded.
pub fn typing_path(key: &SessionKey) -> String {
    let account = utf8_percent_encode(key.account.as_str(), SEGMENT);
    let chat = utf8_percent_encode(key.chat.as_str(), SEGMENT);
    match key.platform {
        Platform::Onlyfans => format!("/api/{account}/chats/{chat}/typing"),
        Platform::Fansly => format!("/api/fansly/{account}/chats/{chat}/typing"),
        Platform::Fanvue => format!("/api/fanvue/{account}/chats/{chat}/typing"),
    }
}

/// The real OnlyFansAPI client.
#[derive(Clone)]
pub struct OnlyFansClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    base_url: String,
    /// `Bearer <key>` per configured key, marked sensitive so hyper never logs it.
    auth: Vec<HeaderValue>,
}

impl OnlyFansClient {
    /// Builds the client for `settings` and the resolved `keys`.
    ///
    /// # Errors
    /// When the TLS stack cannot be initialised or a key is not a valid header value.
    pub fn build(settings: &UpstreamSettings, keys: &[ApiKey]) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.connect_timeout)
            .pool_max_idle_per_host(settings.pool_max_idle_per_host)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .user_agent(concat!("keeptyping/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let mut auth = Vec::with_capacity(keys.len());
        for k in keys {
            let mut v = HeaderValue::from_str(&format!("Bearer {}", k.secret.expose_secret()))
                .map_err(|_| anyhow::anyhow!("api key {:?} contains characters not allowed in a header", k.name))?;
            v.set_sensitive(true);
            auth.push(v);
        }
        Ok(Self { inner: Arc::new(Inner { http, base_url: settings.base_url.trim_end_matches('/').to_owned(), auth }) })
    }

    /// The shared reqwest client (for the account endpoints).
    pub fn http(&self) -> &reqwest::Client {
        &self.inner.http
    }

    /// The base URL without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.inner.base_url
    }

    /// The `Authorization` value of key `index`, if configured.
    pub fn auth_header(&self, index: KeyIndex) -> Option<HeaderValue> {
        self.inner.auth.get(index).cloned()
    }
}

impl Upstream for OnlyFansClient {
    fn typing(&self, key: &SessionKey, api_key: KeyIndex) -> BoxFuture<Outcome> {
        let inner = Arc::clone(&self.inner);
        let url = format!("{}{}", inner.base_url, typing_path(key));
        Box::pin(async move {
            let started = Instant::now();
            let Some(auth) = inner.auth.get(api_key).cloned() else {
                return Outcome {
                    result: Err(UpstreamError::Status { status: 401, retry_after: None }),
                    rate_limits: None,
                    elapsed: Duration::ZERO,
                };
            };
            let sent = inner.http.post(url).header(AUTHORIZATION, auth).header("content-length", "0").send().await;
            let (result, rate_limits) = match sent {
                Ok(resp) => read_answer(resp).await,
                Err(e) => (Err(classify(&e)), None),
            };
            Outcome { result, rate_limits, elapsed: started.elapsed() }
        })
    }
}

/// Reads status, headers and (bounded) body of an answer.
pub(crate) async fn read_answer(mut resp: reqwest::Response) -> (Result<(), UpstreamError>, Option<super::RateLimits>) {
    let status = resp.status();
    let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let retry_after =
        parse_retry_after(header("retry-after").as_deref(), header("retry-after-ms").as_deref(), SystemTime::now());
    let mut body = Vec::new();
    let mut read_error = None;
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_BODY_BYTES {
                    break;
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => {
                read_error = Some(classify(&e));
                break;
            }
        }
    }
    let rate_limits = parse_rate_limits(&body);
    let result = if status.is_success() {
        // A 2xx whose body was cut off still reached the upstream: the indicator was lit.
        Ok(())
    } else {
        Err(UpstreamError::Status { status: status.as_u16(), retry_after })
    };
    let _ = read_error;
    (result, rate_limits)
}

/// Maps a reqwest failure to an [`UpstreamError`].
pub(crate) fn classify(e: &reqwest::Error) -> UpstreamError {
    if e.is_timeout() {
        UpstreamError::Timeout
    } else {
        // The message of a reqwest error carries the URL, which holds ids but never a key.
        let mut msg = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            source = s.source();
        }
        UpstreamError::Network(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{AccountId, ChatId};

    #[test]
    fn paths_per_platform() {
        let key = |p, a, c| SessionKey {
            platform: p,
            account: AccountId::parse(p, a).unwrap(),
            chat: ChatId::parse(p, c).unwrap(),
        };
        assert_eq!(typing_path(&key(Platform::Onlyfans, "acct_abc", "123")), "/api/acct_abc/chats/123/typing");
        assert_eq!(
            typing_path(&key(Platform::Fansly, "fansly_acct_x1", "99")),
            "/api/fansly/fansly_acct_x1/chats/99/typing"
        );
        assert_eq!(
            typing_path(&key(Platform::Fanvue, "fv-1", "0f8fad5b-d9cb-469f-a165-70867728950e")),
            "/api/fanvue/fv-1/chats/0f8fad5b-d9cb-469f-a165-70867728950e/typing"
        );
    }
}
