//! [`OnlyFansClient`]: the reqwest implementation of [`Upstream`].
//!
//! One client for the process (rustls, keep-alive pool, `TCP_NODELAY`), one attempt per typing
//! call bounded by `upstream.timeout`. API keys are turned into sensitive header values once, at
//! construction, and never formatted anywhere else.
//!
//! What a typing call costs is kept to the request itself: the base URL is parsed once and each
//! call only sets its path on a copy; reqwest's retry layer is off (it would copy every request
//! to be able to replay it, and a typing call is never retried), as is redirect following;
//! a plain `http://` upstream is spoken to in HTTP/1.1 without trying HTTP/2, while an `https://`
//! one gets HTTP/2 when its TLS handshake offers it (ALPN), one connection carrying many calls.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::Url;
use reqwest::header::{AUTHORIZATION, CONTENT_LENGTH, HeaderValue};
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
    let mut path = String::with_capacity(96);
    write_typing_path(&mut path, key);
    path
}

/// Appends the typing path of `key` to `out`.
fn write_typing_path(out: &mut String, key: &SessionKey) {
    use std::fmt::Write as _;
    let account = utf8_percent_encode(key.account.as_str(), SEGMENT);
    let chat = utf8_percent_encode(key.chat.as_str(), SEGMENT);
    let prefix = match key.platform {
        Platform::Onlyfans => "/api/",
        Platform::Fansly => "/api/fansly/",
        Platform::Fanvue => "/api/fanvue/",
    };
    let _ = write!(out, "{prefix}{account}/chats/{chat}/typing");
}

/// The real OnlyFansAPI client.
#[derive(Clone)]
pub struct OnlyFansClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    base_url: String,
    /// `base_url` parsed once; each typing call sets its path on a copy.
    base: Url,
    /// `Bearer <key>` per configured key, marked sensitive so hyper never logs it.
    auth: Vec<HeaderValue>,
}

impl OnlyFansClient {
    /// Builds the client for `settings` and the resolved `keys`, trusting the certificates of
    /// `upstream.ca_file` besides the system's roots when it is set.
    ///
    /// # Errors
    /// When the base URL is not a URL, `upstream.ca_file` cannot be read or holds no valid
    /// certificate, the TLS stack cannot be initialised, or a key is not a valid header value.
    pub fn build(settings: &UpstreamSettings, keys: &[ApiKey]) -> anyhow::Result<Self> {
        let base_url = settings.base_url.trim_end_matches('/').to_owned();
        let base = Url::parse(&base_url).map_err(|e| anyhow::anyhow!("upstream.base_url {base_url:?}: {e}"))?;
        let mut builder = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.connect_timeout)
            .pool_max_idle_per_host(settings.pool_max_idle_per_host)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .redirect(reqwest::redirect::Policy::none())
            .retry(reqwest::retry::never().max_retries_per_request(0))
            .user_agent(concat!("keeptyping/", env!("CARGO_PKG_VERSION")));
        if base.scheme() == "http" {
            builder = builder.http1_only();
        }
        let roots = settings.ca_roots()?;
        if !roots.is_empty() {
            builder = builder.tls_certs_merge(roots);
        }
        let http = builder.build()?;
        let mut auth = Vec::with_capacity(keys.len());
        for k in keys {
            let mut v = HeaderValue::from_str(&format!("Bearer {}", k.secret.expose_secret()))
                .map_err(|_| anyhow::anyhow!("api key {:?} contains characters not allowed in a header", k.name))?;
            v.set_sensitive(true);
            auth.push(v);
        }
        Ok(Self { inner: Arc::new(Inner { http, base_url, base, auth }) })
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
        let mut path = String::with_capacity(inner.base.path().len() + 96);
        path.push_str(inner.base.path().trim_end_matches('/'));
        write_typing_path(&mut path, key);
        let mut url = inner.base.clone();
        url.set_path(&path);
        Box::pin(async move {
            let started = Instant::now();
            let Some(auth) = inner.auth.get(api_key).cloned() else {
                return Outcome {
                    result: Err(UpstreamError::Status { status: 401, retry_after: None }),
                    rate_limits: None,
                    elapsed: Duration::ZERO,
                };
            };
            let sent = inner.http.post(url).header(AUTHORIZATION, auth).header(CONTENT_LENGTH, ZERO).send().await;
            let (result, rate_limits) = match sent {
                Ok(resp) => read_answer(resp).await,
                Err(e) => (Err(classify(&e)), None),
            };
            Outcome { result, rate_limits, elapsed: started.elapsed() }
        })
    }
}

/// `content-length: 0`, a static header value.
const ZERO: HeaderValue = HeaderValue::from_static("0");

/// Reads status, headers and (bounded) body of an answer.
pub(crate) async fn read_answer(mut resp: reqwest::Response) -> (Result<(), UpstreamError>, Option<super::RateLimits>) {
    let status = resp.status();
    let result = if status.is_success() {
        // A 2xx whose body was cut off still reached the upstream: the indicator was lit.
        Ok(())
    } else {
        let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok());
        let retry_after = parse_retry_after(header("retry-after"), header("retry-after-ms"), SystemTime::now());
        Err(UpstreamError::Status { status: status.as_u16(), retry_after })
    };
    // The body nearly always comes in one chunk: it is read in place, and copied only when more
    // chunks follow. A read error ends the body where it is.
    let first = match resp.chunk().await {
        Ok(Some(chunk)) => chunk,
        Ok(None) | Err(_) => return (result, None),
    };
    let rate_limits = match resp.chunk().await {
        Ok(Some(next)) => {
            let mut body = Vec::with_capacity(first.len() + next.len());
            body.extend_from_slice(&first);
            body.extend_from_slice(&next);
            while let Ok(Some(chunk)) = resp.chunk().await {
                if body.len() + chunk.len() > MAX_BODY_BYTES {
                    break;
                }
                body.extend_from_slice(&chunk);
            }
            parse_rate_limits(&body)
        }
        Ok(None) | Err(_) => parse_rate_limits(&first),
    };
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
    use crate::config::AccountScope;
    use crate::ids::{AccountId, ChatId};
    use crate::mock::{MockConfig, MockUpstream, RecordQuery, Tls};

    fn api_key() -> ApiKey {
        ApiKey {
            name: "default".to_owned(),
            budget: "default".to_owned(),
            accounts: AccountScope::All,
            secret: "sk_test".to_owned().into(),
        }
    }

    #[tokio::test]
    async fn a_self_signed_upstream_is_trusted_through_ca_file_and_refused_without() {
        // Arrange: the mock on HTTPS with a certificate made now, which no system root signed.
        let tls = Tls::self_signed(false).unwrap();
        let mock =
            MockUpstream::start_with("127.0.0.1:0".parse().unwrap(), MockConfig::default(), Some(&tls)).await.unwrap();
        let dir = std::env::temp_dir().join(format!("kt-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_file = dir.join("mock-ca.pem");
        std::fs::write(&ca_file, tls.cert_pem()).unwrap();
        let chat = SessionKey {
            platform: Platform::Onlyfans,
            account: AccountId::parse(Platform::Onlyfans, "acct_abc").unwrap(),
            chat: ChatId::parse(Platform::Onlyfans, "123").unwrap(),
        };
        let without = UpstreamSettings { base_url: mock.url(), ..UpstreamSettings::default() };
        let with = UpstreamSettings { ca_file: Some(ca_file), ..without.clone() };

        // Act
        let refused = OnlyFansClient::build(&without, &[api_key()]).unwrap().typing(&chat, 0).await;
        let trusted = OnlyFansClient::build(&with, &[api_key()]).unwrap().typing(&chat, 0).await;

        // Assert: only the call that trusted the file reached the mock.
        match &refused.result {
            Err(UpstreamError::Network(m)) => assert!(m.contains("certificate"), "{m}"),
            other => panic!("expected a certificate error, got {other:?}"),
        }
        assert!(trusted.result.is_ok(), "{:?}", trusted.result);
        assert_eq!(mock.state().records(&RecordQuery::default()).len(), 1);
        mock.stop().await;
    }

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
