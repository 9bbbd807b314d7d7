//! `GET /openapi.json`: the OpenAPI 3.1 document of the hook API, derived from the handlers.
//!
//! Every hook route is registered through [`routes`], a `utoipa_axum` router: each handler's
//! `#[utoipa::path]` (method, path, request body, answers) is both how the route is served and
//! how it is described, and the bodies' schemas are the `ToSchema` derives of the very request
//! and response types the handlers read and write. A route cannot be served without being
//! described. The error answers are the types in [`super::error`] (`BadRequest`, ...), one per
//! status, all with the `{"error": {"code", "message"}}` body.
//!
//! Shapes are kept to what client generators read: flat objects, plain string enums, no
//! `oneOf` of `allOf` (`openapi-python-client` skips such a schema, and with it the route).
//!
//! It only describes: nothing here is on a request path other than `GET /openapi.json`.

use std::sync::OnceLock;

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ComponentsBuilder, InfoBuilder, OpenApi, OpenApiBuilder};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ErrorDetail, ErrorResponse, ServiceUnavailable};
use super::{ApiState, accounts, budget, typing, webhooks};

/// Name of the bearer security scheme (hook tokens).
pub const BEARER: &str = "hook_token";
/// Tag of the typing and budget routes.
pub const TYPING_TAG: &str = "typing";
/// Tag of the account routes, so tools can include or exclude them as a group.
pub const ACCOUNTS_TAG: &str = "accounts";
/// Tag of `GET /openapi.json`.
pub const META_TAG: &str = "meta";

/// Every hook route, each described by its handler. [`super::router`] serves these and only
/// these; [`document`] describes them.
pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::with_openapi(base())
        .routes(routes!(typing::start))
        .routes(routes!(typing::stop))
        .routes(routes!(typing::batch))
        .routes(routes!(typing::sessions))
        .routes(routes!(budget::budget))
        .routes(routes!(accounts::create_client_session))
        .routes(routes!(accounts::watch_attempt))
        .routes(routes!(accounts::get_attempt))
        .routes(routes!(webhooks::onlyfansapi))
        .routes(routes!(openapi_json))
}

/// The document, built once.
pub fn document() -> &'static OpenApi {
    static DOC: OnceLock<OpenApi> = OnceLock::new();
    DOC.get_or_init(|| routes().into_openapi())
}

/// `GET /openapi.json`
#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "openapi",
    summary = "This document",
    tag = META_TAG,
    security(()),
    responses(
        (status = 200, description = "The OpenAPI document", body = Object, content_type = "application/json"),
        ServiceUnavailable,
    )
)]
pub async fn openapi_json() -> Json<&'static OpenApi> {
    Json(document())
}

/// Title, version, description and the bearer scheme; the paths come from [`routes`].
fn base() -> OpenApi {
    // The error body is named by the `IntoResponses` types, which do not register it.
    let components = ComponentsBuilder::new()
        .schema_from::<ErrorResponse>()
        .schema_from::<ErrorDetail>()
        .security_scheme(BEARER, SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()))
        .build();
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("keeptyping hook API")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "Keeps the \"Model is typing...\" indicator alive while a chatter composes. \
                     Authenticate with `Authorization: Bearer <hook token>`.",
                ))
                .build(),
        )
        .components(Some(components))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> serde_json::Value {
        serde_json::to_value(document()).unwrap()
    }

    fn refs(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(serde_json::Value::String(r)) = m.get("$ref") {
                    out.push(r.clone());
                }
                m.values().for_each(|v| refs(v, out));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn every_reference_resolves_to_a_component() {
        let d = doc();
        let mut all = Vec::new();
        refs(&d, &mut all);
        assert!(all.len() > 20, "{all:?}");
        for r in all {
            let name = r.strip_prefix("#/components/schemas/").unwrap_or_else(|| panic!("odd ref {r}"));
            assert!(d["components"]["schemas"][name].is_object(), "unresolved {r}");
        }
    }

    #[test]
    fn every_route_is_described_with_its_errors() {
        let d = doc();
        let routes = [
            ("/v1/typing/start", "post"),
            ("/v1/typing/stop", "post"),
            ("/v1/typing/batch", "post"),
            ("/v1/typing/sessions", "get"),
            ("/v1/budget", "get"),
            ("/openapi.json", "get"),
            ("/v1/client-sessions", "post"),
            ("/v1/auth-attempts", "post"),
            ("/v1/auth-attempts/{attempt_id}", "get"),
            ("/v1/webhooks/onlyfansapi", "post"),
        ];
        for (path, method) in routes {
            let op = &d["paths"][path][method];
            assert!(op.is_object(), "{method} {path} is not described");
            assert!(op["operationId"].is_string(), "{method} {path} has no operationId");
            let open = path == "/openapi.json" || path == "/v1/webhooks/onlyfansapi";
            let security = if open { serde_json::json!([{}]) } else { serde_json::json!([{ BEARER: [] }]) };
            assert_eq!(op["security"], security, "{method} {path}");
            let responses = op["responses"].as_object().unwrap();
            assert!(responses.contains_key("200"), "{path}");
            assert!(responses.contains_key("503"), "{path}: every route can answer 503");
            for (status, resp) in responses.iter().filter(|(s, _)| s.as_str() >= "400") {
                assert_eq!(
                    resp["content"]["application/json"]["schema"]["$ref"], "#/components/schemas/ErrorResponse",
                    "{path} {status}"
                );
            }
        }
        assert_eq!(d["paths"].as_object().unwrap().len(), routes.len(), "a route is described but not listed here");
    }

    #[test]
    fn the_typing_schemas_match_what_the_handlers_accept() {
        let d = doc();
        let start = &d["components"]["schemas"]["StartRequest"];
        let required: Vec<&str> = start["required"].as_array().unwrap().iter().filter_map(|v| v.as_str()).collect();
        assert_eq!(required, ["account_id", "chat_id"]);
        let platform = &d["components"]["schemas"]["Platform"]["enum"];
        assert_eq!(platform, &serde_json::json!(["onlyfans", "fansly", "fanvue"]));
        assert!(d["components"]["securitySchemes"][BEARER].is_object());
    }

    /// `openapi-python-client` refuses a `oneOf` of `allOf` (and drops the route using it); the
    /// batch event is one flat object whose `action` is a plain string enum.
    #[test]
    fn no_schema_nests_all_of_inside_one_of() {
        fn walk(v: &serde_json::Value, inside_one_of: bool, at: &str) {
            match v {
                serde_json::Value::Object(m) => {
                    assert!(!(inside_one_of && m.contains_key("allOf")), "allOf inside oneOf at {at}");
                    for (k, v) in m {
                        walk(v, inside_one_of || k == "oneOf" || k == "anyOf", &format!("{at}/{k}"));
                    }
                }
                serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, inside_one_of, at)),
                _ => {}
            }
        }
        let d = doc();
        walk(&d, false, "#");
        let event = &d["components"]["schemas"]["BatchEvent"];
        assert_eq!(event["type"], "object", "{event}");
        assert_eq!(d["components"]["schemas"]["BatchAction"]["enum"], serde_json::json!(["start", "stop"]));
        let required: Vec<&str> = event["required"].as_array().unwrap().iter().filter_map(|v| v.as_str()).collect();
        assert_eq!(required, ["action", "account_id", "chat_id"]);
    }
}
