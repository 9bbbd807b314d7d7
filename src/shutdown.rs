//! Shutdown: the signal that starts it, and the token and tracker that carry it to every task.
//!
//! Order (DESIGN.md): readiness goes 503 and hooks answer 503, the scheduler stops launching,
//! listeners stop accepting, in-flight work finishes or is cut at `shutdown.grace`.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Waits for SIGINT or SIGTERM and logs which arrived.
pub async fn signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received; shutting down"),
        () = term => tracing::info!("SIGTERM received; shutting down"),
    }
}

/// The root cancellation token, the tracker of long-lived tasks, and the drain deadline.
#[derive(Debug, Clone)]
pub struct Shutdown {
    /// Cancelled when the drain starts.
    pub token: CancellationToken,
    /// Every long-lived task.
    pub tracker: TaskTracker,
    /// How long the drain may take.
    pub grace: Duration,
}

impl Shutdown {
    /// A fresh shutdown handle.
    pub fn new(grace: Duration) -> Self {
        Self { token: CancellationToken::new(), tracker: TaskTracker::new(), grace }
    }

    /// Cancels the token and waits up to `grace` for the tracked tasks. Returns whether they
    /// all finished in time.
    pub async fn drain(&self) -> bool {
        self.token.cancel();
        self.tracker.close();
        if tokio::time::timeout(self.grace, self.tracker.wait()).await.is_ok() {
            true
        } else {
            tracing::warn!(grace = ?self.grace, "shutdown grace ran out; cutting remaining work");
            false
        }
    }
}
