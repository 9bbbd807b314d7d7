//! The typing call in flight for one session, which the end of the session drops.
//!
//! A call is handed to the upstream client by the task that launched it; the client passes it to
//! a pooled connection's own task, which writes it when that task next runs. hyper writes a
//! request only if its caller still waits for the answer, and the caller waits as long as the
//! call's future lives. Under overload the connection's task and the launching task both wait in
//! the runtime's queues: a stop that only cancelled a token would wake the launching task to drop
//! the call, and the connection's task could run first and write it, after the stop was
//! answered. So the call's future lives here instead, where the stop drops it itself, on the
//! stopping thread, before the stop is answered: the connection then finds nobody waiting and
//! writes nothing.
//!
//! One [`InFlight`] per session, made at its first launch and reused by every call (one is in
//! flight at a time); [`InFlight::close`] is final: the session ended or the drain began.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use crate::upstream::{BoxFuture, Outcome};

/// The call in flight for one session. See the module documentation.
#[derive(Default)]
pub struct InFlight {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    closed: bool,
    call: Option<BoxFuture<Outcome>>,
    /// The task awaiting `call`, woken when the call is dropped under it.
    waiter: Option<Waker>,
}

impl std::fmt::Debug for InFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.lock();
        f.debug_struct("InFlight").field("closed", &s.closed).field("call", &s.call.is_some()).finish()
    }
}

impl InFlight {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while polling a call leaves nothing half-done here: the state stays usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the session ended (or the drain began): no call of it may leave.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Drops the call in flight, if any, and refuses the calls to come. Returns once the call
    /// is dropped: a request not yet written by its connection is then never written.
    pub fn close(&self) {
        let (call, waiter) = {
            let mut s = self.lock();
            s.closed = true;
            (s.call.take(), s.waiter.take())
        };
        drop(call);
        if let Some(w) = waiter {
            w.wake();
        }
    }

    /// Runs `call` to its answer, or to `None` if the session ends first (then the call was
    /// dropped by [`InFlight::close`], or never started).
    pub fn run(self: &Arc<Self>, call: BoxFuture<Outcome>) -> Running {
        {
            let mut s = self.lock();
            if !s.closed {
                s.call = Some(call);
            }
        }
        Running { slot: Arc::clone(self) }
    }
}

/// The future of [`InFlight::run`].
#[must_use = "a call does nothing unless awaited"]
pub struct Running {
    slot: Arc<InFlight>,
}

impl Future for Running {
    type Output = Option<Outcome>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Outcome>> {
        let mut s = self.slot.lock();
        let Some(call) = s.call.as_mut() else { return Poll::Ready(None) };
        match call.as_mut().poll(cx) {
            Poll::Ready(outcome) => {
                s.call = None;
                s.waiter = None;
                Poll::Ready(Some(outcome))
            }
            Poll::Pending => {
                match &mut s.waiter {
                    Some(w) => w.clone_from(cx.waker()),
                    None => s.waiter = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
        }
    }
}

impl Drop for Running {
    /// A call abandoned by its task (the drain's grace ran out) goes with it.
    fn drop(&mut self) {
        let call = {
            let mut s = self.slot.lock();
            s.waiter = None;
            s.call.take()
        };
        drop(call);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::{ApiKey, UpstreamSettings};
    use crate::ids::{AccountId, ChatId, Platform, SessionKey};
    use crate::mock::{MockConfig, MockUpstream, RecordQuery};
    use crate::upstream::{OnlyFansClient, Upstream as _};

    async fn client_and_mock() -> (OnlyFansClient, MockUpstream) {
        let config = MockConfig { limit_per_minute: None, ..MockConfig::default() };
        let mock = MockUpstream::start("127.0.0.1:0".parse().unwrap(), config).await.unwrap();
        let settings = UpstreamSettings { base_url: mock.url(), ..UpstreamSettings::default() };
        (OnlyFansClient::build(&settings, &[ApiKey::for_tests("sk_test")]).unwrap(), mock)
    }

    fn key() -> SessionKey {
        SessionKey {
            platform: Platform::Onlyfans,
            account: AccountId::parse(Platform::Onlyfans, "acct_abc").unwrap(),
            chat: ChatId::parse(Platform::Onlyfans, "4242").unwrap(),
        }
    }

    fn typing_calls(mock: &MockUpstream) -> usize {
        mock.state().records(&RecordQuery::default()).len()
    }

    /// The race a stop must win: the call is already handed to a pooled connection, whose task
    /// has not run yet, and the task that launched it will not run before the stop is answered.
    /// On this single-threaded runtime nothing else runs until the test awaits.
    #[tokio::test]
    async fn a_call_handed_to_a_connection_is_not_written_once_closed() {
        // Arrange: one answered call leaves an idle connection in the pool.
        let (client, mock) = client_and_mock().await;
        assert!(client.typing(&key(), 0).await.result.is_ok());
        assert_eq!(typing_calls(&mock), 1);
        let slot = InFlight::new();
        let mut running = Box::pin(slot.run(client.typing(&key(), 0)));
        assert!(futures_util::poll!(running.as_mut()).is_pending(), "handed to the connection");

        // Act: the session ends; then the connection's task gets to run.
        slot.close();
        tokio::time::sleep(Duration::from_millis(300)).await;

        // Assert
        assert_eq!(running.await.map(|o| o.result.is_ok()), None);
        assert_eq!(typing_calls(&mock), 1, "the call was written after the session ended");
        assert!(slot.is_closed());
        assert!(slot.run(client.typing(&key(), 0)).await.is_none(), "a closed slot starts nothing");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(typing_calls(&mock), 1);
    }

    #[tokio::test]
    async fn calls_run_one_after_another_through_one_slot() {
        let (client, mock) = client_and_mock().await;
        let slot = InFlight::new();
        for _ in 0..3 {
            let outcome = slot.run(client.typing(&key(), 0)).await.expect("not closed");
            assert!(outcome.result.is_ok());
        }
        assert_eq!(typing_calls(&mock), 3);
    }
}
