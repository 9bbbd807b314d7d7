//! The HTTP transport of typing calls: hyper's pooled client over rustls, built once.
//!
//! Typing calls go through hyper's own client rather than reqwest: the load benchmark's
//! ceiling (one client sending calls back to back, no scheduling) measured reqwest at about
//! 1.6 times hyper's CPU per call with the same pool, the same mock and the same body read
//! (`docs/performance.md`, "Typing calls on hyper's client"). A typing call needs none of what
//! reqwest adds: no redirects, no retries, no cookies, no decompression, a URL built from
//! validated ids. The account endpoints, rare and JSON-heavy, stay on reqwest.
//!
//! TLS verifies the upstream as reqwest does: the platform's verifier, with the certificates of
//! `upstream.ca_file` trusted besides the system's roots. An `https://` upstream is offered
//! HTTP/2 and HTTP/1.1 by ALPN and gets what its edge picks (HTTP/2: one connection carries
//! many calls); a plain `http://` upstream is spoken to in HTTP/1.1.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::rustls::crypto::{CryptoProvider, aws_lc_rs};
use tokio_rustls::rustls::pki_types::CertificateDer;

use crate::config::UpstreamSettings;

/// A typing call's request body: always empty.
pub(crate) type Body = Empty<Bytes>;

/// The pooled client typing calls go through.
pub(crate) type HttpClient = Client<HttpsConnector<HttpConnector>, Body>;

/// How long an idle pooled connection is kept.
pub(crate) const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Builds the client for `settings`: `TCP_NODELAY`, `upstream.connect_timeout`, an idle pool of
/// `upstream.pool_max_idle_per_host` connections kept [`POOL_IDLE_TIMEOUT`], and `extra_roots`
/// (`upstream.ca_file`'s certificates) trusted besides the system's roots.
///
/// # Errors
/// When the platform's verifier cannot be set up.
pub(crate) fn build(
    settings: &UpstreamSettings,
    extra_roots: Vec<CertificateDer<'static>>,
) -> anyhow::Result<HttpClient> {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(settings.connect_timeout));
    // The TLS layer in front of it takes `https://` URIs.
    http.enforce_http(false);
    let connector = HttpsConnectorBuilder::new()
        .with_tls_config(tls_config(extra_roots)?)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_max_idle_per_host(settings.pool_max_idle_per_host)
        .build(connector))
}

/// The TLS settings: rustls on aws-lc-rs with its safe default versions, the platform's
/// verifier, and `extra` trusted besides the system's roots.
fn tls_config(extra: Vec<CertificateDer<'static>>) -> anyhow::Result<ClientConfig> {
    let provider: Arc<CryptoProvider> = Arc::new(aws_lc_rs::default_provider());
    let verifier = if extra.is_empty() {
        rustls_platform_verifier::Verifier::new(Arc::clone(&provider))?
    } else {
        rustls_platform_verifier::Verifier::new_with_extra_roots(extra, Arc::clone(&provider))?
    };
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth())
}
