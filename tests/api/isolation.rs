//! Tenant isolation beyond account scopes: `/v1/budget` shows a token only the budgets of the
//! keys it may use, and holders are namespaced by token, so two tenants whose scopes overlap on
//! an account never release each other's hold on a chat.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::helpers::*;

const TOKEN_A: &str = "isolation-a-token-4c1e9f20";
const TOKEN_B: &str = "isolation-b-token-77ab03d5";
const TOKEN_C: &str = "isolation-c-token-0d9e6b41";
const THIRD_ACCOUNT: &str = "acct_00000000000000000000000000000003";

fn sha(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

async fn budget_as(app: &TestApp, token: &str) -> Value {
    let resp = app.http.get(format!("{}/v1/budget", app.hook)).bearer_auth(token).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

/// `(budget name, key names)` of each budget in a `/v1/budget` answer.
fn budgets(v: &Value) -> Vec<(String, Vec<String>)> {
    v["budgets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            let keys = b["keys"].as_array().unwrap().iter().map(|k| k.as_str().unwrap().to_owned()).collect();
            (b["name"].as_str().unwrap().to_owned(), keys)
        })
        .collect()
}

#[tokio::test]
async fn the_budget_route_shows_only_the_budgets_of_the_callers_keys() {
    // Arrange: two agencies, each with its key, budget and token; no all-accounts key.
    let toml = format!(
        r#"
[[upstream.keys]]
name = "key-a"
budget = "team-a"
key_env = "KEY_A"
accounts = ["{ACCOUNT}"]
[[upstream.keys]]
name = "key-b"
budget = "team-b"
key_env = "KEY_B"
accounts = ["{OTHER_ACCOUNT}"]
[[hooks.tokens]]
name = "a"
token_sha256 = "{}"
accounts = ["{ACCOUNT}"]
api_key = "key-a"
[[hooks.tokens]]
name = "b"
token_sha256 = "{}"
accounts = ["{OTHER_ACCOUNT}"]
api_key = "key-b"
"#,
        sha(TOKEN_A),
        sha(TOKEN_B)
    );
    let opts = Opts { config_toml: Some(toml), ..Opts::default() }
        .env("ONLYFANSAPI_API_KEY", "")
        .env("KEY_A", "key-a-secret")
        .env("KEY_B", "key-b-secret");
    let app = spawn_with(opts).await;

    // Act
    let a = budget_as(&app, TOKEN_A).await;
    let b = budget_as(&app, TOKEN_B).await;
    let operator = budget_as(&app, HOOK_TOKEN).await;

    // Assert: each tenant sees its own budget and key name only; the all-accounts token both.
    assert_eq!(budgets(&a), vec![("team-a".to_owned(), vec!["key-a".to_owned()])], "{a}");
    assert_eq!(budgets(&b), vec![("team-b".to_owned(), vec!["key-b".to_owned()])], "{b}");
    assert_eq!(budgets(&operator).len(), 2, "{operator}");
    assert!(!a.to_string().contains("key-b") && !a.to_string().contains("team-b"), "{a}");
}

#[tokio::test]
async fn a_token_that_may_use_no_key_sees_an_empty_budget_list() {
    // One key, covering ACCOUNT only; token C may touch only another account.
    let toml = format!(
        r#"
[[upstream.keys]]
name = "key-a"
key_env = "KEY_A"
accounts = ["{ACCOUNT}"]
[[hooks.tokens]]
name = "c"
token_sha256 = "{}"
accounts = ["{THIRD_ACCOUNT}"]
"#,
        sha(TOKEN_C)
    );
    let opts =
        Opts { config_toml: Some(toml), ..Opts::default() }.env("ONLYFANSAPI_API_KEY", "").env("KEY_A", "key-a-secret");
    let app = spawn_with(opts).await;

    let c = budget_as(&app, TOKEN_C).await;

    assert_eq!(c, json!({ "budgets": [] }));
}

/// Two tenants whose scopes overlap on ACCOUNT.
fn overlapping() -> Opts {
    let toml = format!(
        r#"
[[hooks.tokens]]
name = "a"
token_sha256 = "{}"
accounts = ["{ACCOUNT}"]
[[hooks.tokens]]
name = "b"
token_sha256 = "{}"
accounts = ["{ACCOUNT}", "{OTHER_ACCOUNT}"]
"#,
        sha(TOKEN_A),
        sha(TOKEN_B)
    );
    Opts { config_toml: Some(toml), ..Opts::default() }
}

#[tokio::test]
async fn a_tenant_cannot_release_another_tenants_holder_on_a_shared_account() {
    let app = spawn_with(overlapping()).await;
    let named = json!({ "account_id": ACCOUNT, "chat_id": "91001", "chatter_id": "alice" });
    let anonymous = json!({ "account_id": ACCOUNT, "chat_id": "91002" });
    // Arrange: tenant A holds one chat as chatter "alice" and another anonymously.
    assert_eq!(app.post_with("/v1/typing/start", &named, Some(TOKEN_A)).await.0, 200);
    assert_eq!(app.post_with("/v1/typing/start", &anonymous, Some(TOKEN_A)).await.0, 200);

    // Act: tenant B stops both with the same chatter id, and anonymously.
    let (_, stop_named) = app.post_with("/v1/typing/stop", &named, Some(TOKEN_B)).await;
    let (_, stop_anon) = app.post_with("/v1/typing/stop", &anonymous, Some(TOKEN_B)).await;

    // Assert: nothing of A's was released; both chats still type.
    assert_ne!(stop_named["outcome"], "stopped", "{stop_named}");
    assert_ne!(stop_anon["outcome"], "stopped", "{stop_anon}");
    assert_eq!(app.engine.active_count(), 2);
    let before = app.calls("91001").len();
    assert!(eventually(std::time::Duration::from_secs(1), || async { app.calls("91001").len() > before + 1 }).await);

    // B's own holder on the same chat is B's: B's stop releases it, A keeps the chat.
    let body = json!({ "account_id": ACCOUNT, "chat_id": "91001", "chatter_id": "alice" });
    assert_eq!(app.post_with("/v1/typing/start", &body, Some(TOKEN_B)).await.0, 200);
    let (_, released) = app.post_with("/v1/typing/stop", &body, Some(TOKEN_B)).await;
    assert_eq!((released["outcome"].as_str(), released["holders"].as_u64()), (Some("released"), Some(1)));

    // Each tenant's listing names only its own chatters.
    let list = |token: &'static str| {
        let app = &app;
        async move {
            let resp =
                app.http.get(format!("{}/v1/typing/sessions", app.hook)).bearer_auth(token).send().await.unwrap();
            resp.json::<Value>().await.unwrap()
        }
    };
    let a = list(TOKEN_A).await;
    let holders_of = |v: &Value, chat: &str| {
        v["sessions"].as_array().unwrap().iter().find(|s| s["chat_id"] == chat).unwrap()["holders"].clone()
    };
    assert_eq!(holders_of(&a, "91001"), json!(["alice"]), "{a}");
    assert_eq!(holders_of(&a, "91002"), json!([null]), "{a}");
    let b = list(TOKEN_B).await;
    assert_eq!(holders_of(&b, "91001"), json!([]), "{b}");

    // And A's own stops end the chats.
    assert_eq!(app.post_with("/v1/typing/stop", &named, Some(TOKEN_A)).await.1["outcome"], "stopped");
    assert_eq!(app.post_with("/v1/typing/stop", &anonymous, Some(TOKEN_A)).await.1["outcome"], "stopped");
    assert_eq!(app.engine.active_count(), 0);
}
