//! [`OnlyFansClient`]: the real implementation of [`Upstream`].
//!
//! Typing calls go through hyper's pooled client ([`super::transport`]): keep-alive, rustls,
//! `TCP_NODELAY`, one attempt per call bounded by `upstream.timeout`. The account endpoints and
//! the attempt callbacks go through a reqwest client with the same settings. API keys are
//! turned into sensitive header values once, at construction, and never formatted anywhere else.
//!
//! What a typing call costs is kept to the request itself: the base URL is parsed once and each
//! call only puts its own path behind it; nothing retries or follows redirects; the answer's
//! body is read in place and only `_meta._rate_limits` is looked at.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http_body_util::{BodyExt, Empty, Limited};
use hyper::Method;
use hyper::body::{Bytes, Incoming};
use hyper::header::{AUTHORIZATION, CONTENT_LENGTH, HeaderValue, USER_AGENT};
use hyper::http::uri::{PathAndQuery, Uri};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use secrecy::ExposeSecret;
use tokio::time::Instant;

use super::transport::{self, HttpClient};
use super::{BoxFuture, KeyIndex, Outcome, Upstream, UpstreamError, parse_rate_limits, parse_retry_after};
use crate::config::{ApiKey, UpstreamSettings};
use crate::ids::{Platform, SessionKey};

/// Characters left unescaped in a path segment: RFC 3986 unreserved ones only.
pub(crate) const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// Largest answer body read; `_meta` is small, anything longer is not worth reading.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// The `User-Agent` of every call.
const AGENT: &str = concat!("keeptyping/", env!("CARGO_PKG_VERSION"));

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
    /// Typing calls.
    typing: HttpClient,
    /// The account endpoints and callbacks.
    http: reqwest::Client,
    base_url: String,
    /// `base_url` parsed once; each typing call puts its path behind it.
    base: Uri,
    /// `upstream.timeout`: the bound on a whole typing call, answer included.
    timeout: Duration,
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
        let base = parse_base(&base_url)?;
        let roots = settings.ca_roots()?;
        let mut builder = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.connect_timeout)
            .pool_max_idle_per_host(settings.pool_max_idle_per_host)
            .pool_idle_timeout(transport::POOL_IDLE_TIMEOUT)
            .tcp_nodelay(true)
            .redirect(reqwest::redirect::Policy::none())
            .retry(reqwest::retry::never().max_retries_per_request(0))
            .user_agent(AGENT);
        if base.scheme_str() == Some("http") {
            builder = builder.http1_only();
        }
        if !roots.is_empty() {
            let certs = roots.iter().map(|der| reqwest::Certificate::from_der(der)).collect::<Result<Vec<_>, _>>()?;
            builder = builder.tls_certs_merge(certs);
        }
        let http = builder.build()?;
        let typing = transport::build(settings, roots)?;
        let mut auth = Vec::with_capacity(keys.len());
        for k in keys {
            let mut v = HeaderValue::from_str(&format!("Bearer {}", k.secret.expose_secret()))
                .map_err(|_| anyhow::anyhow!("api key {:?} contains characters not allowed in a header", k.name))?;
            v.set_sensitive(true);
            auth.push(v);
        }
        Ok(Self { inner: Arc::new(Inner { typing, http, base_url, base, timeout: settings.timeout, auth }) })
    }

    /// The shared reqwest client (for the account endpoints).
    pub fn http(&self) -> &reqwest::Client {
        &self.inner.http
    }

    /// The base URL without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.inner.base_url
    }

    /// The URI of `key`'s typing endpoint.
    fn typing_uri(&self, key: &SessionKey) -> Uri {
        let base = &self.inner.base;
        let mut path = String::with_capacity(base.path().len() + 96);
        path.push_str(base.path().trim_end_matches('/'));
        write_typing_path(&mut path, key);
        let mut parts = base.clone().into_parts();
        // Every segment is percent-encoded and the base path was parsed: the path is valid.
        parts.path_and_query = PathAndQuery::from_maybe_shared(Bytes::from(path)).ok();
        Uri::from_parts(parts).unwrap_or_else(|_| base.clone())
    }

    /// The `Authorization` value of key `index`, if configured.
    pub fn auth_header(&self, index: KeyIndex) -> Option<HeaderValue> {
        self.inner.auth.get(index).cloned()
    }
}

/// Parses the base URL: `http` or `https`, a host, an optional path prefix, nothing else.
fn parse_base(base_url: &str) -> anyhow::Result<Uri> {
    let bad = |why: &str| anyhow::anyhow!("upstream.base_url {base_url:?}: {why}");
    let uri: Uri = base_url.parse().map_err(|e| bad(&format!("{e}")))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(bad("not an http:// or https:// URL"));
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    if uri.query().is_some() {
        return Err(bad("a query has no place in the base URL"));
    }
    Ok(uri)
}

impl Upstream for OnlyFansClient {
    fn typing(&self, key: &SessionKey, api_key: KeyIndex) -> BoxFuture<Outcome> {
        let inner = Arc::clone(&self.inner);
        let uri = self.typing_uri(key);
        Box::pin(async move {
            let started = Instant::now();
            let Some(auth) = inner.auth.get(api_key).cloned() else {
                return Outcome {
                    result: Err(UpstreamError::Status { status: 401, retry_after: None }),
                    rate_limits: None,
                    elapsed: Duration::ZERO,
                };
            };
            let mut request = hyper::Request::new(Empty::new());
            *request.method_mut() = Method::POST;
            *request.uri_mut() = uri;
            let headers = request.headers_mut();
            headers.insert(AUTHORIZATION, auth);
            headers.insert(CONTENT_LENGTH, ZERO);
            headers.insert(USER_AGENT, HeaderValue::from_static(AGENT));
            let call = async {
                match inner.typing.request(request).await {
                    Ok(resp) => read_typing_answer(resp).await,
                    Err(e) => (Err(network(&e)), None),
                }
            };
            let (result, rate_limits) =
                tokio::time::timeout(inner.timeout, call).await.unwrap_or((Err(UpstreamError::Timeout), None));
            Outcome { result, rate_limits, elapsed: started.elapsed() }
        })
    }
}

/// `content-length: 0`, a static header value.
const ZERO: HeaderValue = HeaderValue::from_static("0");

/// What a typing call's answer says: its status (with `Retry-After` on a refusal) and the
/// `_meta._rate_limits` of its body. The body, read whole up to [`MAX_BODY_BYTES`], nearly
/// always arrives in one piece and is parsed where it lies; a longer or broken body carries
/// no limits.
async fn read_typing_answer(resp: hyper::Response<Incoming>) -> (Result<(), UpstreamError>, Option<super::RateLimits>) {
    let status = resp.status();
    let result = if status.is_success() {
        // A 2xx whose body was cut off still reached the upstream: the indicator was lit.
        Ok(())
    } else {
        let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok());
        let retry_after = parse_retry_after(header("retry-after"), header("retry-after-ms"), SystemTime::now());
        Err(UpstreamError::Status { status: status.as_u16(), retry_after })
    };
    let rate_limits = match Limited::new(resp.into_body(), MAX_BODY_BYTES).collect().await {
        Ok(body) => parse_rate_limits(&body.to_bytes()),
        Err(_) => None,
    };
    (result, rate_limits)
}

/// A failed typing call: a connect timeout counts as a timeout, anything else as a network
/// error with the whole chain of causes (they name hosts and TLS problems, never a key).
fn network(e: &hyper_util::client::legacy::Error) -> UpstreamError {
    let timed_out = std::iter::successors(std::error::Error::source(e), |s| s.source())
        .any(|s| s.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut));
    if timed_out { UpstreamError::Timeout } else { UpstreamError::Network(causes(e)) }
}

/// `e`'s message followed by those of its sources, `: `-separated.
fn causes(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    for s in std::iter::successors(e.source(), |s| s.source()) {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
    }
    msg
}

/// Maps a reqwest failure (an account call's) to an [`UpstreamError`].
pub(crate) fn classify(e: &reqwest::Error) -> UpstreamError {
    if e.is_timeout() {
        UpstreamError::Timeout
    } else {
        // The message of a reqwest error carries the URL, which holds ids but never a key.
        UpstreamError::Network(causes(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{AccountId, ChatId};
    use crate::mock::{MockConfig, MockUpstream, RecordQuery, Tls};

    /// Chat 123 of account `acct_abc`.
    fn chat() -> SessionKey {
        SessionKey {
            platform: Platform::Onlyfans,
            account: AccountId::parse(Platform::Onlyfans, "acct_abc").unwrap(),
            chat: ChatId::parse(Platform::Onlyfans, "123").unwrap(),
        }
    }

    fn api_key() -> ApiKey {
        ApiKey::for_tests("sk_test")
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
        let chat = chat();
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

    #[tokio::test]
    async fn the_typing_uri_keeps_the_base_path_and_bad_base_urls_are_refused() {
        let chat = chat();
        let build = |base: &str| {
            OnlyFansClient::build(
                &UpstreamSettings { base_url: base.to_owned(), ..UpstreamSettings::default() },
                &[api_key()],
            )
        };
        let proxied = build("https://edge.example.com:8443/proxy/").unwrap();
        assert_eq!(
            proxied.typing_uri(&chat).to_string(),
            "https://edge.example.com:8443/proxy/api/acct_abc/chats/123/typing"
        );
        let plain = build("http://127.0.0.1:9").unwrap();
        assert_eq!(plain.typing_uri(&chat).to_string(), "http://127.0.0.1:9/api/acct_abc/chats/123/typing");
        for bad in ["ftp://edge.example.com", "edge.example.com", "https://edge.example.com/?x=1", "not a url"] {
            let err = build(bad).err().unwrap_or_else(|| panic!("{bad:?} was accepted"));
            assert!(err.to_string().contains("upstream.base_url"), "{bad:?}: {err}");
        }
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_network_error_naming_its_cause() {
        // A port nothing listens on: bind one, note it, and close it.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let settings = UpstreamSettings { base_url: format!("http://127.0.0.1:{port}"), ..UpstreamSettings::default() };
        let chat = chat();

        let outcome = OnlyFansClient::build(&settings, &[api_key()]).unwrap().typing(&chat, 0).await;

        match &outcome.result {
            Err(UpstreamError::Network(m)) => assert!(m.to_lowercase().contains("refused"), "{m}"),
            other => panic!("expected a network error, got {other:?}"),
        }
        assert!(!format!("{:?}", outcome.result).contains("sk_test"), "the key reached an error message");
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
