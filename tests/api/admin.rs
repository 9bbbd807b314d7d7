//! The admin listener: `/metrics`, `/livez` and `/readyz` stay open for Prometheus and the
//! kubelet; the status page shows paused account ids only to holders of the admin token.

use std::time::Duration;

use keeptyping::engine::PauseCause;
use keeptyping::ids::AccountId;
use serde_json::Value;

use crate::helpers::*;

const ADMIN_TOKEN: &str = "admin-token-test-61c0f2";

async fn status_json(app: &TestApp, token: Option<&str>) -> (u16, String) {
    let mut req = app.http.get(format!("{}/status.json", app.admin));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

fn pause(app: &TestApp) {
    let account = AccountId::parse_any(ACCOUNT).unwrap();
    app.engine.pause_account(&account, PauseCause::SessionExpired, Duration::from_secs(60));
}

#[tokio::test]
async fn paused_account_ids_are_shown_only_to_holders_of_the_admin_token() {
    // Arrange
    let app = spawn_with(Opts::default().env("KEEPTYPING_ADMIN_TOKEN", ADMIN_TOKEN)).await;
    pause(&app);

    // Act
    let (anon_status, anon) = status_json(&app, None).await;
    let (_, wrong) = status_json(&app, Some("not-the-admin-token")).await;
    let (_, hook_token) = status_json(&app, Some(HOOK_TOKEN)).await;
    let (admin_status, admin) = status_json(&app, Some(ADMIN_TOKEN)).await;

    // Assert: counts for everyone, the id for the admin token only.
    for (who, body) in [("no token", &anon), ("a wrong token", &wrong), ("a hook token", &hook_token)] {
        assert!(!body.contains(ACCOUNT), "{who} saw the account id: {body}");
        let v: Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["paused_accounts_count"], 1, "{who}: {body}");
        assert_eq!(v["account_ids_shown"], false);
        assert_eq!(v["paused_accounts"][0]["cause"], "session_expired");
    }
    assert_eq!((anon_status, admin_status), (200, 200));
    let v: Value = serde_json::from_str(&admin).unwrap();
    assert_eq!(v["paused_accounts"][0]["account_id"], ACCOUNT, "{admin}");
    assert_eq!(v["account_ids_shown"], true);
    // Prometheus and the kubelet need no token.
    for path in ["/metrics", "/livez", "/readyz", "/"] {
        assert_eq!(app.admin_status(path).await, 200, "{path}");
    }
}

#[tokio::test]
async fn without_an_admin_token_configured_no_account_id_is_shown() {
    let app = spawn_app().await;
    pause(&app);

    let (_, body) = status_json(&app, None).await;
    let (_, with_hook_token) = status_json(&app, Some(HOOK_TOKEN)).await;

    assert!(!body.contains(ACCOUNT), "{body}");
    assert!(!with_hook_token.contains(ACCOUNT), "{with_hook_token}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["paused_accounts_count"], 1, "{body}");
}

/// `/status.json` reads the engine and the budgets: a started session is counted in the active
/// sessions and as lit or waiting in its budget, its typing calls in the refire counters; the
/// page (one compiled-in file) shows lit and waiting per budget.
#[tokio::test]
async fn the_status_page_shows_sessions_refires_and_lit_or_waiting_per_budget() {
    // Arrange
    let app = spawn_app().await;
    let status = || async {
        let (code, body) = status_json(&app, None).await;
        assert_eq!(code, 200);
        serde_json::from_str::<Value>(&body).unwrap()
    };
    let before = status().await;

    // Act
    assert_eq!(app.start("6100001").await.0, 200);
    assert_eq!(app.start("6100002").await.0, 200);

    // Assert
    let counted = eventually(Duration::from_secs(5), || async {
        let s = status().await;
        let budget = &s["budgets"][0];
        let placed = budget["sessions_lit"].as_u64().unwrap() + budget["sessions_waiting"].as_u64().unwrap();
        s["sessions_active"] == 2
            && placed == 2
            && s["refires_total"].as_u64().unwrap() >= before["refires_total"].as_u64().unwrap() + 4
    })
    .await;
    assert!(counted, "{}", status().await);
    let s = status().await;
    assert_eq!(s["budgets"][0]["name"], "default");
    assert_eq!(s["budgets"][0]["keys"], serde_json::json!(["default"]));
    let by_outcome: u64 = s["refires_by_outcome"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(by_outcome, s["refires_total"].as_u64().unwrap(), "{s}");
    let page = app.http.get(format!("{}/", app.admin)).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("b.sessions_lit") && page.contains("b.sessions_waiting"), "the page shows lit/waiting");
}
