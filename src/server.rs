//! Serving a router on a listener with bounds a slow or idle client cannot outlast: the loop
//! both listeners run instead of `axum::serve`, which bounds neither.
//!
//! - **Header reads.** A connection has `header_read_timeout` to deliver a complete request
//!   head, counted from the moment it opens or its previous response was written (hyper's
//!   HTTP/1 `header_read_timeout`): half a header and then nothing, a header trickled byte by
//!   byte, and a kept-alive connection left idle are all closed when it runs out.
//! - **Connections.** At most `max_connections` are open at once; beyond it a new connection is
//!   closed as soon as it is accepted and counted in `keeptyping_connections_refused_total`, so
//!   the process keeps file descriptors for its own upstream connections.
//! - **Shutdown.** When `stop` fires, nothing more is accepted, each open connection finishes
//!   the request it is serving and closes, and [`serve`] returns once all have.
//! - **A thread of its own** ([`serve_on_own_thread`], the hook listener). Hooks are what a
//!   chatter waits on. On a runtime whose workers are busy with typing calls, a hook's
//!   connection waited in their run queues behind hundreds of calls before its handler ran: under
//!   overload, hooks took tens of milliseconds while the handlers themselves took under one. On
//!   a thread of their own they wait only for the operating system to run that thread.
//!
//! Request bodies and handler time are bounded by the router's own layers
//! (`server.max_body_bytes`, `server.request_timeout`); this module does not look at requests.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics;

/// How long the accept loop waits after a failed accept (e.g. out of file descriptors) before
/// trying again, so that it does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The bounds of one listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `header_read_timeout` of the listener's settings.
    pub header_read_timeout: Duration,
    /// `max_connections` of the listener's settings.
    pub max_connections: usize,
}

/// Serves like [`serve`], on a thread of its own running a single-threaded runtime. The future
/// returned completes when that thread has drained its connections; dropping it (the caller's
/// runtime shutting down) stops the thread too, so that a listener never outlives its service.
///
/// Handlers run on that runtime: they may await anything that wakes across runtimes (channels,
/// locks, the shared upstream and Redis clients), and they never spawn (see [`crate::api`]).
///
/// # Errors
/// The listener cannot be handed to the new runtime, or the runtime or its thread cannot start.
pub fn serve_on_own_thread(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    name: &'static str,
    stop: &CancellationToken,
) -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    let listener = listener.into_std()?;
    let stop = stop.child_token();
    let guard = stop.clone().drop_guard();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (done, finished) = tokio::sync::oneshot::channel::<()>();
    // The thread logs where its caller logs (the global subscriber, or a test's own).
    let logs = tracing::dispatcher::get_default(Clone::clone);
    std::thread::Builder::new().name(format!("keeptyping-{name}")).spawn(move || {
        let _logs = tracing::dispatcher::set_default(&logs);
        runtime.block_on(async move {
            match TcpListener::from_std(listener) {
                Ok(listener) => serve(listener, router, limits, name, stop).await,
                Err(e) => tracing::error!(listener = name, error = %e, "the listener could not join its runtime"),
            }
        });
        // Whatever the handlers left on this runtime (a pooled upstream connection opened for
        // an account route) closes with it.
        drop(runtime);
        let _ = done.send(());
    })?;
    Ok(async move {
        let _stop_with_caller = guard;
        let _ = finished.await;
    })
}

/// Serves `router` on `listener` within `limits` until `stop` fires, then drains the open
/// connections. `name` (`hooks` or `admin`) labels the refusal metric and the logs.
pub async fn serve(listener: TcpListener, router: Router, limits: Limits, name: &'static str, stop: CancellationToken) {
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout).keep_alive(true);
    loop {
        let stream = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(listener = name, error = %e, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let Ok(permit) = Arc::clone(&open).try_acquire_owned() else {
            metrics::connection_refused(name);
            drop(stream);
            continue;
        };
        // Small JSON answers: do not wait for Nagle. A failure only costs latency.
        let _ = stream.set_nodelay(true);
        let connection = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(router.clone()));
        let stop = stop.clone();
        connections.spawn(async move {
            let _permit = permit;
            let mut connection = std::pin::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = result {
                // Timeouts, resets and malformed requests: the client's doing, not ours.
                tracing::debug!(listener = name, error = %e, "connection closed");
            }
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}
