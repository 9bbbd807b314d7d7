//! The real `keeptyping` binary as child processes, for the tests that need a process of their
//! own (its resident memory, its signals): the mock upstream, the service, and waiting for them.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// The binary under test.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_keeptyping");

/// Kills the child on drop, so a failed assertion leaves no process behind.
pub(crate) struct Kill(pub(crate) Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback port nobody listens on right now, and never one handed out before in this test
/// process: tests running side by side choose ports before their children bind them, and the
/// system may offer a port again once its probe is closed. Two children given one port would
/// have the first answer for both, and a test would talk to the wrong process without noticing.
pub(crate) fn free_port() -> u16 {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if GIVEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(port) {
            return port;
        }
    }
}

/// Waits up to 20 s for `url` to answer 2xx.
pub(crate) async fn wait_up(http: &reqwest::Client, url: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !http.get(url).send().await.is_ok_and(|r| r.status().is_success()) {
        assert!(Instant::now() < deadline, "{url} did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `keeptyping mock-upstream` on `port` with no rate limit, up and answering; returns it and
/// its base URL.
pub(crate) async fn mock(http: &reqwest::Client, port: u16) -> (Kill, String) {
    let child = Command::new(BIN)
        .args(["mock-upstream", "--listen", &format!("127.0.0.1:{port}"), "--limit-per-minute", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let mock = Kill(child);
    wait_up(http, &format!("{url}/_mock/stats")).await;
    (mock, url)
}

/// `keeptyping serve` on loopback against `mock_url`, with a budget that never binds, the given
/// API key and hook token, and logs at warn discarded. The caller adds its own settings and
/// spawns it.
pub(crate) fn serve(hook_port: u16, admin_port: u16, mock_url: &str, api_key: &str, hook_token: &str) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .env("KEEPTYPING__SERVER__LISTEN", format!("127.0.0.1:{hook_port}"))
        .env("KEEPTYPING__ADMIN__LISTEN", format!("127.0.0.1:{admin_port}"))
        .env("KEEPTYPING__UPSTREAM__BASE_URL", mock_url)
        .env("KEEPTYPING__BUDGET__LIMIT_PER_MINUTE", "10000000")
        .env("KEEPTYPING__BUDGET__BURST", "100000")
        .env("ONLYFANSAPI_API_KEY", api_key)
        .env("KEEPTYPING_HOOK_TOKEN", hook_token)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}
