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
