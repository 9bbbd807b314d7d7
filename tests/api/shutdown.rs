//! Graceful shutdown: readiness fails, no typing call leaves after the trigger, and the app
//! returns within `shutdown.grace`.

use std::time::Duration;

use crate::helpers::*;

#[tokio::test]
async fn after_the_trigger_no_typing_call_leaves_and_the_app_exits_within_grace() {
    let app = spawn_app().await;
    for i in 0..50 {
        app.start(&format!("{}", 6000 + i)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.admin_status("/readyz").await, 200);
    let typing_before = app.all_requests().len();
    assert!(typing_before >= 50);
    let mock_state = std::sync::Arc::clone(app.mock.state());
    let triggered_at = mock_state.now_ms();
    let (took, result, mock) = app.trigger_shutdown().await;
    assert!(result.is_ok(), "{result:?}");
    assert!(took < Duration::from_secs(2), "drain took {took:?}, grace is 2 s");
    tokio::time::sleep(Duration::from_millis(3 * INTERVAL_MS)).await;
    // Calls already on the wire may land within a few ms of the trigger; none after.
    let late: Vec<f64> =
        mock_state.records(&Default::default()).iter().map(|r| r.t_ms).filter(|t| *t > triggered_at + 20.0).collect();
    assert!(late.is_empty(), "typing calls after the drain began: {late:?}");
    mock.stop().await;
}

#[tokio::test]
async fn during_the_drain_readiness_and_hooks_answer_503() {
    let app = spawn_with(Opts::default().env("KEEPTYPING__SHUTDOWN__GRACE", "2s")).await;
    // Keep a request open so the drain takes a moment: a black-holed upstream call is in flight.
    app.start("6101").await;
    app.engine.drain();
    assert_eq!(app.admin_status("/readyz").await, 503);
    let (status, body) = app.start("6102").await;
    assert_eq!(status, 503);
    assert_eq!(body["error"]["code"], "shutting_down");
    let (took, result, _mock) = app.trigger_shutdown().await;
    assert!(result.is_ok());
    assert!(took < Duration::from_secs(2));
}
