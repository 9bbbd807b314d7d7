//! A stand-in OnlyFansAPI on loopback: `keeptyping mock-upstream`, the demo, the tests and the
//! benchmarks all talk to it over real HTTP.
//!
//! It serves the typing endpoints of the three platforms (and answers any other `/api/...`
//! request as the chat tool's own traffic), with `_meta._rate_limits` in every answer and a
//! sliding 60-second per-minute limit per API key that answers 429 with `Retry-After` when
//! exceeded. Latency, latency spikes, error rates and faults (black hole, connection reset,
//! garbage or truncated bodies, odd `_meta` types, forced statuses) are switchable at run time
//! through `POST /_mock/config`, and every request received is recorded with its receive time,
//! readable at `GET /_mock/requests` (JSON) or `GET /_mock/requests.tsv` (compact), with the mock's
//! clock at `GET /_mock/now`. It is a test instrument, not part of the service path.
//! The account endpoints (client sessions, scripted authentication attempts) are in [`accounts`].

pub mod accounts;
mod state;

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

pub use state::{Fault, MockConfig, MockState, Record, RecordQuery, key_id};

/// A running mock upstream.
#[derive(Debug)]
pub struct MockUpstream {
    addr: SocketAddr,
    https: bool,
    state: Arc<MockState>,
    token: CancellationToken,
    task: JoinHandle<()>,
}

impl MockUpstream {
    /// Binds `listen` and serves until [`MockUpstream::stop`] (or drop of the runtime).
    ///
    /// # Errors
    /// When the address cannot be bound.
    pub async fn start(listen: SocketAddr, config: MockConfig) -> std::io::Result<Self> {
        Self::start_with(listen, config, None).await
    }

    /// [`MockUpstream::start`], serving HTTPS when `tls` is given (see [`Tls`]).
    ///
    /// # Errors
    /// When the address cannot be bound.
    pub async fn start_with(listen: SocketAddr, config: MockConfig, tls: Option<&Tls>) -> std::io::Result<Self> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(MockState::new(config));
        let token = CancellationToken::new();
        let acceptor = tls.map(|t| t.acceptor.clone());
        let task = tokio::spawn(serve_with(listener, Arc::clone(&state), token.clone(), acceptor));
        Ok(Self { addr, https: tls.is_some(), state, token, task })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, or `https://localhost:PORT` when serving TLS.
    pub fn url(&self) -> String {
        if self.https { format!("https://localhost:{}", self.addr.port()) } else { format!("http://{}", self.addr) }
    }

    /// The shared state (records and configuration), for in-process callers.
    pub fn state(&self) -> &Arc<MockState> {
        &self.state
    }

    /// Stops accepting and closes every connection.
    pub async fn stop(self) {
        self.token.cancel();
        let _ = self.task.await;
    }
}

/// Serves the mock on `listener` until `token` is cancelled. Each connection is served by
/// hyper directly so that the `reset` fault can drop it without an answer.
pub async fn serve(listener: TcpListener, state: Arc<MockState>, token: CancellationToken) {
    serve_with(listener, state, token, None).await;
}

/// A TLS identity for the mock: a self-signed certificate made at start for `localhost` and
/// `127.0.0.1`. Clients trust it through its PEM ([`Tls::cert_pem`]): keeptyping through
/// `upstream.ca_file`, other clients through their own setting (reqwest's reads
/// `SSL_CERT_FILE`). With `http2`, the mock offers `h2` by ALPN (as an edge that speaks HTTP/2
/// would) besides `http/1.1`; without it, HTTP/1.1 only.
#[derive(Clone)]
pub struct Tls {
    acceptor: tokio_rustls::TlsAcceptor,
    cert_pem: String,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").finish_non_exhaustive()
    }
}

impl Tls {
    /// Makes a fresh self-signed identity.
    ///
    /// # Errors
    /// When the certificate cannot be generated or the TLS stack refuses it.
    pub fn self_signed(http2: bool) -> anyhow::Result<Self> {
        use tokio_rustls::rustls;
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let rcgen::CertifiedKey { cert, signing_key } = rcgen::generate_simple_self_signed(names)?;
        let der = rustls::pki_types::PrivateKeyDer::try_from(signing_key.serialize_der())
            .map_err(|e| anyhow::anyhow!("private key: {e}"))?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], der)?;
        config.alpn_protocols =
            if http2 { vec![b"h2".to_vec(), b"http/1.1".to_vec()] } else { vec![b"http/1.1".to_vec()] };
        Ok(Self { acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)), cert_pem: cert.pem() })
    }

    /// The certificate, PEM-encoded: what a client must trust.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }
}

async fn serve_with(
    listener: TcpListener,
    state: Arc<MockState>,
    token: CancellationToken,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let router = router(Arc::clone(&state));
    loop {
        let (stream, _) = tokio::select! {
            () = token.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let state = Arc::clone(&state);
        let token = token.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let router = router.clone();
                let state = Arc::clone(&state);
                async move {
                    if req.uri().path().starts_with("/api/") && state.should_reset() {
                        state.record_reset(req.uri().path());
                        return Err(ResetConnection);
                    }
                    let resp = router.oneshot(req.map(Body::new)).await;
                    Ok::<_, ResetConnection>(resp.unwrap_or_else(|e: Infallible| match e {}))
                }
            });
            if let Some(tls) = tls {
                let Ok(stream) = tls.accept(stream).await else { return };
                let builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
                let conn = builder.serve_connection(TokioIo::new(stream), service);
                tokio::select! {
                    _ = conn => {}
                    () = token.cancelled() => {}
                }
                return;
            }
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                () = token.cancelled() => {}
            }
        });
    }
}

/// The error that makes hyper drop a connection without answering.
#[derive(Debug)]
struct ResetConnection;

impl std::fmt::Display for ResetConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection reset by the mock")
    }
}

impl std::error::Error for ResetConnection {}

fn router(state: Arc<MockState>) -> Router {
    Router::new()
        .route("/api/fansly/{account}/chats/{chat}/typing", post(typing_fansly))
        .route("/api/fanvue/{account}/chats/{chat}/typing", post(typing_fanvue))
        .route("/api/{account}/chats/{chat}/typing", post(typing_onlyfans))
        .route("/api/client-sessions", post(accounts::client_sessions))
        .route("/api/authenticate", post(accounts::start_authentication))
        .route("/api/authenticate/{attempt_id}", get(accounts::poll_authentication).put(accounts::submit_code))
        .route("/_mock/attempts", post(accounts::script))
        .route("/_mock/requests", get(requests))
        .route("/_mock/requests.tsv", get(requests_tsv))
        .route("/_mock/now", get(now))
        .route("/_mock/config", get(get_config).post(set_config))
        .route("/_mock/reset", post(reset))
        .route("/_mock/stats", get(stats))
        .fallback(other)
        .with_state(state)
}

async fn typing_onlyfans(
    State(s): State<Arc<MockState>>,
    Path((account, chat)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    typing(&s, "onlyfans", account, chat, &headers).await
}

async fn typing_fansly(
    State(s): State<Arc<MockState>>,
    Path((account, chat)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    typing(&s, "fansly", account, chat, &headers).await
}

async fn typing_fanvue(
    State(s): State<Arc<MockState>>,
    Path((account, chat)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    typing(&s, "fanvue", account, chat, &headers).await
}

async fn typing(s: &MockState, platform: &'static str, account: String, chat: String, headers: &HeaderMap) -> Response {
    let key = bearer(headers);
    let plan = s.admit("typing", platform, account, chat, &key);
    plan.respond(s).await
}

async fn other(State(s): State<Arc<MockState>>, headers: HeaderMap) -> Response {
    let key = bearer(&headers);
    let plan = s.admit("other", "", String::new(), String::new(), &key);
    plan.respond(&s).await
}

pub(crate) fn bearer(headers: &HeaderMap) -> String {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
        .to_owned()
}

async fn requests(State(s): State<Arc<MockState>>, Query(q): Query<RecordQuery>) -> Response {
    Json(serde_json::json!({ "requests": s.records(&q) })).into_response()
}

/// The record as tab-separated lines `t_ms kind platform account chat status key_id`, for
/// readers of hundreds of thousands of records (the benchmarks), where JSON is slow to parse.
async fn requests_tsv(State(s): State<Arc<MockState>>, Query(q): Query<RecordQuery>) -> Response {
    let mut out = String::new();
    for r in s.records(&q) {
        let _ = writeln!(
            out,
            "{:.3}\t{}\t{}\t{}\t{}\t{}\t{}",
            r.t_ms, r.kind, r.platform, r.account, r.chat, r.status, r.key_id
        );
    }
    ([(header::CONTENT_TYPE, "text/tab-separated-values")], out).into_response()
}

/// The mock's clock (milliseconds since it started, the unit of `t_ms`), so that a client can
/// put its own events on the record's time line.
async fn now(State(s): State<Arc<MockState>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "now_ms": s.now_ms() }))
}

async fn get_config(State(s): State<Arc<MockState>>) -> Json<MockConfig> {
    Json(s.config())
}

async fn set_config(State(s): State<Arc<MockState>>, Json(c): Json<MockConfig>) -> StatusCode {
    s.set_config(c);
    StatusCode::NO_CONTENT
}

async fn reset(State(s): State<Arc<MockState>>) -> StatusCode {
    s.reset();
    StatusCode::NO_CONTENT
}

async fn stats(State(s): State<Arc<MockState>>) -> Json<serde_json::Value> {
    Json(s.stats())
}

/// What the mock decided to answer one request with.
#[derive(Debug)]
pub(crate) enum Plan {
    /// Wait, then answer `status` with `body` and headers.
    Answer { delay: Duration, status: u16, body: String, headers: Vec<(&'static str, String)> },
    /// Never answer.
    BlackHole,
}

impl Plan {
    async fn respond(self, _s: &MockState) -> Response {
        match self {
            Plan::BlackHole => std::future::pending().await,
            Plan::Answer { delay, status, body, headers } => {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                let mut resp = Response::new(Body::from(body));
                *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                resp.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
                for (name, value) in headers {
                    if let Ok(v) = header::HeaderValue::from_str(&value) {
                        resp.headers_mut().insert(name, v);
                    }
                }
                resp
            }
        }
    }
}

/// `keeptyping mock-upstream` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct MockArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8088")]
    pub listen: SocketAddr,
    /// Requests per minute per API key (0: no limit).
    #[arg(long, default_value_t = 1000)]
    pub limit_per_minute: u32,
    /// Delay before every answer, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Share of requests answered 500.
    #[arg(long, default_value_t = 0.0)]
    pub error_rate: f64,
    /// Serve HTTPS with a self-signed certificate made at start, written (PEM) to this file:
    /// keeptyping trusts it through `upstream.ca_file` (other clients: `SSL_CERT_FILE`).
    #[arg(long)]
    pub tls_cert_out: Option<std::path::PathBuf>,
    /// With `--tls-cert-out`: offer HTTP/2 by ALPN as well as HTTP/1.1.
    #[arg(long)]
    pub http2: bool,
}

/// Runs the mock until SIGINT/SIGTERM.
///
/// # Errors
/// When the address cannot be bound.
pub async fn run(args: MockArgs) -> anyhow::Result<()> {
    let config = MockConfig {
        limit_per_minute: (args.limit_per_minute > 0).then_some(args.limit_per_minute),
        latency_ms: args.latency_ms,
        error_rate: args.error_rate,
        ..MockConfig::default()
    };
    let tls = match &args.tls_cert_out {
        Some(path) => {
            let tls = Tls::self_signed(args.http2)?;
            // Written whole under another name, then renamed: a reader never sees half a file.
            let partial = path.with_extension("partial");
            std::fs::write(&partial, tls.cert_pem())?;
            std::fs::rename(&partial, path)?;
            Some(tls)
        }
        None => None,
    };
    let mock = MockUpstream::start_with(args.listen, config, tls.as_ref()).await?;
    println!("mock OnlyFansAPI listening on {}", mock.url());
    println!("  records: GET {0}/_mock/requests   config: GET/POST {0}/_mock/config", mock.url());
    crate::shutdown::signal().await;
    mock.stop().await;
    Ok(())
}
