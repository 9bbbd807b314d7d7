//! `/metrics`: the names of DESIGN.md, no ids as labels, and `promtool check metrics` passes.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::helpers::*;

const EXPECTED: &[&str] = &[
    "keeptyping_sessions_active",
    "keeptyping_sessions_started_total",
    "keeptyping_sessions_ended_total",
    "keeptyping_refires_total",
    "keeptyping_refire_lateness_seconds_bucket",
    "keeptyping_upstream_request_duration_seconds_bucket",
    "keeptyping_budget_tokens",
    "keeptyping_upstream_limit_minute",
    "keeptyping_upstream_remaining_minute",
    "keeptyping_budget_paused",
    "keeptyping_budget_capacity_fans",
    "keeptyping_indicator_coverage_ratio_bucket",
    "keeptyping_hook_requests_total",
    "keeptyping_hook_request_duration_seconds_bucket",
];

#[tokio::test]
async fn metrics_carry_the_documented_names_and_pass_promtool() {
    let mock = keeptyping::mock::MockConfig { limit_per_minute: Some(100_000), ..Default::default() };
    let app = spawn_with(Opts { mock, ..Opts::default() }).await;
    app.start("7701").await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    app.stop("7701").await;
    app.post_with("/v1/typing/start", &chat_body("7702"), Some("wrong")).await;
    let text = app.metrics().await;
    for name in EXPECTED {
        assert!(text.lines().any(|l| l.starts_with(name)), "{name} missing from /metrics");
    }
    assert!(metric_sum(&text, "keeptyping_refires_total", &[r#"outcome="ok""#, r#"platform="onlyfans""#]) >= 3.0);
    assert!(
        metric_sum(&text, "keeptyping_hook_requests_total", &[r#"route="/v1/typing/start""#, r#"status="401""#]) >= 1.0
    );
    // Names and labels only: a sample value (a float sum) may contain the digits of a chat id.
    let series: Vec<&str> =
        text.lines().filter(|l| !l.starts_with('#')).filter_map(|l| l.rsplit_once(' ').map(|(s, _)| s)).collect();
    for id in [ACCOUNT, "7701", "7702"] {
        assert!(!series.iter().any(|s| s.contains(id)), "an id ({id}) became a label");
    }
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is required (apt-get install prometheus); .ci/run installs it");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn livez_and_readyz_answer_on_the_admin_listener() {
    let app = spawn_app().await;
    assert_eq!(app.admin_status("/livez").await, 200);
    assert_eq!(app.admin_status("/readyz").await, 200);
}
