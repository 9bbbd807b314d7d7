//! `GET /openapi.json` is served without a token and describes routes that exist: every
//! described path and method of the live service answers something other than 404/405.

use serde_json::Value;

use crate::helpers::*;

#[tokio::test]
async fn the_openapi_document_is_served_and_every_described_route_exists() {
    let app = spawn_app().await;
    let resp = app.http.get(format!("{}/openapi.json", app.hook)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let doc: Value = resp.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    let mut checked = 0;
    for (path, item) in paths {
        for (method, _op) in item.as_object().unwrap() {
            let url = format!("{}{}", app.hook, path);
            let req = match method.as_str() {
                "get" => app.http.get(url),
                "post" => app.http.post(url).json(&serde_json::json!({})),
                other => panic!("unexpected method {other}"),
            };
            let status = req.bearer_auth(HOOK_TOKEN).send().await.unwrap().status().as_u16();
            assert!(status != 404 && status != 405, "{method} {path} is described but answers {status}");
            checked += 1;
        }
    }
    // Five typing and budget routes, /openapi.json, and four account routes.
    assert_eq!(checked, 10);
}

/// The hook router is assembled from `openapi::routes()` alone (utoipa-axum: each route is
/// registered with the description its handler carries), so nothing is served undescribed. A
/// plain `.route(` or `.nest(` in the router's module would bypass that.
#[test]
fn the_hook_router_serves_only_described_routes() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/api");
    for file in ["mod.rs", "openapi.rs"] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        for bypass in [".route(", ".nest(", ".merge(", ".route_service("] {
            assert!(!text.contains(bypass), "src/api/{file} adds a route with {bypass}: use openapi::routes()");
        }
    }
}

/// The statuses of `method path` in the document.
fn documented(doc: &Value, method: &str, path: &str) -> Vec<u16> {
    let op = &doc["paths"][path][method.to_lowercase()];
    let responses = op["responses"].as_object().unwrap_or_else(|| panic!("{method} {path} is not described"));
    responses.keys().map(|s| s.parse().unwrap()).collect()
}

struct Probe {
    method: &'static str,
    /// As the document names it.
    path: &'static str,
    /// What is sent.
    url: String,
    body: Option<String>,
    content_type: &'static str,
    token: Option<&'static str>,
    signature: Option<&'static str>,
}

fn probe(method: &'static str, path: &'static str) -> Probe {
    Probe {
        method,
        path,
        url: path.to_owned(),
        body: None,
        content_type: "application/json",
        token: Some(HOOK_TOKEN),
        signature: None,
    }
}

impl Probe {
    fn body(mut self, body: impl Into<String>) -> Self {
        self.body = Some(body.into());
        self
    }
    fn url(mut self, url: &str) -> Self {
        self.url = url.to_owned();
        self
    }
    fn content_type(mut self, ct: &'static str) -> Self {
        self.content_type = ct;
        self
    }
    fn token(mut self, token: Option<&'static str>) -> Self {
        self.token = token;
        self
    }
    fn signature(mut self, signature: &'static str) -> Self {
        self.signature = Some(signature);
        self
    }

    /// Sends the probe, asserts it answers `want`, and that the document lists `want` for it.
    async fn expect(self, app: &TestApp, doc: &Value, want: u16) {
        let url = format!("{}{}", app.hook, self.url);
        let mut req = match self.method {
            "GET" => app.http.get(url),
            _ => {
                app.http.post(url).header("content-type", self.content_type).body(self.body.clone().unwrap_or_default())
            }
        };
        if let Some(t) = self.token {
            req = req.bearer_auth(t);
        }
        if let Some(s) = self.signature {
            req = req.header("Signature", s);
        }
        let got = req.send().await.unwrap().status().as_u16();
        assert_eq!(got, want, "{} {} ({:?})", self.method, self.url, self.body);
        let listed = documented(doc, self.method, self.path);
        assert!(
            listed.contains(&got),
            "{} {} answers {got}, the document lists only {listed:?}",
            self.method,
            self.path
        );
    }
}

const POSTS: [&str; 5] =
    ["/v1/typing/start", "/v1/typing/stop", "/v1/typing/batch", "/v1/client-sessions", "/v1/auth-attempts"];
const GETS: [&str; 3] = ["/v1/typing/sessions", "/v1/budget", "/v1/auth-attempts/{attempt_id}"];

async fn live_document(app: &TestApp) -> Value {
    app.http.get(format!("{}/openapi.json", app.hook)).send().await.unwrap().json().await.unwrap()
}

/// Every status the handlers and the layers in front of them answer, provoked on the live
/// service, is listed for that route in the document it serves.
#[tokio::test]
async fn every_status_a_route_answers_is_in_the_document() {
    // Arrange: a tenant token limited to ACCOUNT, a small body limit, a webhook secret.
    let tenant = "openapi-tenant-token-5a1c";
    let toml = format!(
        "[[hooks.tokens]]\nname = \"tenant\"\ntoken_sha256 = \"{}\"\naccounts = [\"{ACCOUNT}\"]\n",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(tenant.as_bytes()))
    );
    let app = spawn_with(Opts {
        config_toml: Some(toml),
        ..Opts::default()
            .env("KEEPTYPING__SERVER__MAX_BODY_BYTES", "1024")
            .env("KEEPTYPING_WEBHOOK_SECRET", "openapi-webhook-secret")
    })
    .await;
    let doc = live_document(&app).await;
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(4096));
    let start = r#"{"account_id":"ACCOUNT","chat_id":"91001"}"#;
    let typing_bodies = [
        ("/v1/typing/start", start.to_owned()),
        ("/v1/typing/stop", start.to_owned()),
        ("/v1/typing/batch", format!(r#"{{"events":[{{"action":"start",{}}}]}}"#, &start[1..start.len() - 1])),
    ];

    // Act and assert.
    for path in POSTS {
        probe("POST", path).token(None).body("{}").expect(&app, &doc, 401).await;
        probe("POST", path).body("{not json").expect(&app, &doc, 400).await;
        probe("POST", path).body("{}").content_type("text/plain").expect(&app, &doc, 415).await;
        probe("POST", path).body(big.clone()).expect(&app, &doc, 413).await;
    }
    for path in GETS {
        probe("GET", path).url(&path.replace("{attempt_id}", "auth_0123")).token(None).expect(&app, &doc, 401).await;
    }
    for (path, body) in &typing_bodies {
        let path: &'static str = path;
        probe("POST", path).body(body.replace("ACCOUNT", ACCOUNT)).expect(&app, &doc, 200).await;
        probe("POST", path).body(body.replace("ACCOUNT", "not-an-account")).expect(&app, &doc, 422).await;
        let other = body.replace("ACCOUNT", OTHER_ACCOUNT);
        probe("POST", path).body(other).token(Some(tenant)).expect(&app, &doc, 403).await;
    }
    let attempt = "/v1/auth-attempts/{attempt_id}";
    probe("GET", attempt).url("/v1/auth-attempts/auth_0123456789").expect(&app, &doc, 404).await;
    probe("GET", attempt).url("/v1/auth-attempts/not%20an%20id").expect(&app, &doc, 400).await;
    probe("POST", "/v1/client-sessions").body("{}").expect(&app, &doc, 400).await;
    let hook = "/v1/webhooks/onlyfansapi";
    probe("POST", hook).token(None).body(r#"{"event":"messages.sent"}"#).expect(&app, &doc, 401).await;
    probe("POST", hook).token(None).signature("00").body(r#"{"event":"x"}"#).expect(&app, &doc, 401).await;
    probe("POST", hook).token(None).body(big.clone()).expect(&app, &doc, 413).await;

    // Draining: every route answers 503.
    app.engine.drain();
    for path in POSTS.into_iter().chain([hook]) {
        probe("POST", path).body("{}").expect(&app, &doc, 503).await;
    }
    for path in GETS.into_iter().chain(["/openapi.json"]) {
        probe("GET", path).url(&path.replace("{attempt_id}", "auth_0123")).expect(&app, &doc, 503).await;
    }
}

/// Statuses that need their own service: a spent hook rate limit (429) and a service with no
/// API key at all (403 on the routes that need one, 503 on the webhook without a secret).
#[tokio::test]
async fn the_rate_limit_and_a_missing_api_key_are_in_the_document() {
    let app = spawn_with(
        Opts::default()
            .env("KEEPTYPING__HOOKS__RATE_LIMIT_PER_SECOND", "1")
            .env("KEEPTYPING__HOOKS__RATE_LIMIT_BURST", "1")
            .env("ONLYFANSAPI_API_KEY", ""),
    )
    .await;
    let doc = live_document(&app).await;
    let hook = "/v1/webhooks/onlyfansapi";
    probe("POST", hook).token(None).body(r#"{"event":"x"}"#).expect(&app, &doc, 503).await;
    probe("POST", "/v1/auth-attempts").body(r#"{"attempt_id":"auth_0123456789"}"#).expect(&app, &doc, 403).await;
    for path in POSTS {
        probe("POST", path).body("{}").expect(&app, &doc, 429).await;
    }
    for path in GETS {
        probe("GET", path).url(&path.replace("{attempt_id}", "auth_0123")).expect(&app, &doc, 429).await;
    }
}
