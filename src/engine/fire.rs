//! One typing call: the last check before it leaves, and what its answer changes.
//!
//! The check runs synchronously right before the request is handed to the upstream: if the
//! session was stopped (or restarted, or the drain began) since the scheduler launched it, the
//! call is dropped; and if the session ends while the request still waits (for a pooled
//! connection, or for CPU under overload), the end of the session drops it before it is written
//! (see [`super::call`]). Answers feed the budget (`_meta._rate_limits`, 429s), the session's
//! coverage, and act on [`ErrorKind`]: 401 refuses the key and ends its sessions, 403/404/422
//! end the session, 503 pauses the account, transient failures only skip the beat.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::call::InFlight;
use super::readiness::PauseCause;
use super::session::Session;
use super::{Command, Shared};
use crate::budget::BudgetIndex;
use crate::ids::SessionKey;
use crate::metrics::{self, EndReason};
use crate::upstream::{ErrorKind, KeyIndex};
use tokio::time::Instant;

/// Sends the typing call of `key` (generation `generation`) launched at `launched_at`, through
/// `call`, the session's slot for its call in flight, taken when the call was launched: it is
/// closed when the session ends or the drain begins.
pub(crate) async fn fire(
    shared: &Shared,
    key: SessionKey,
    generation: u64,
    api_key: KeyIndex,
    budget: BudgetIndex,
    launched_at: Instant,
    call: &Arc<InFlight>,
) {
    // The slot has been in place since the launch, before the drain flag is read below: a drain
    // that starts meanwhile either finds the slot (and closes it) or is seen here. A stop that
    // lands while the request still waits for a pooled connection or for CPU drops it before it
    // is written.
    let sent = Instant::now();
    // With replicas, only the owner of the chat's shard sends, and only while its lease holds by
    // this process's own clock: a replica that lost its lease (frozen, cut off from Redis) stays
    // silent whatever its sessions say.
    let ownership = shared.ownership.get();
    if let Some(ownership) = ownership {
        if !ownership.may_send(&key, sent) {
            shared.table.with_generation(&key, generation, |s| s.in_flight = false);
            metrics::refire_skipped(metrics::SkipReason::NotOwner);
            return;
        }
    }
    if call.is_closed() {
        return;
    }
    // A last look at the session before the call leaves, only where it can change something:
    // with replicas (a session handed over since the launch is gone from the table, and its call
    // must not leave: see `Engine::evict`), and for a call leaving late (its next deadline
    // follows). The answer's visit records when it left in any case.
    let late = sent.saturating_duration_since(launched_at) >= FOLLOW_SLACK;
    if ownership.is_some() || late {
        let Some(moved) = shared.table.with_generation(&key, generation, |s| {
            s.last_sent = Some(sent);
            follow_send_time(s, launched_at, sent)
        }) else {
            return;
        };
        if let Some(due) = moved {
            // The scheduler's entry for the old instant is stale now; a send error means the
            // scheduler has stopped, and nothing is due any more.
            let _ = shared.commands.send(Command::Due { key: key.clone(), generation, due });
        }
    }
    if shared.draining.load(Ordering::Acquire) {
        return;
    }
    let Some(outcome) = call.run(shared.upstream.typing(&key, api_key)).await else {
        metrics::refire(key.platform.as_str(), "cancelled", launched_at.elapsed());
        return;
    };
    let now = Instant::now();
    shared.in_flight.observe(outcome.elapsed);
    metrics::refire(key.platform.as_str(), outcome.label(), outcome.elapsed);
    // What the answer tells the budget, in one visit to it.
    let ok = outcome.result.is_ok();
    if ok || outcome.rate_limits.is_some() {
        shared.budgets.with(budget, |b| {
            if let Some(limits) = outcome.rate_limits {
                b.observe(limits, now);
            }
            if ok {
                b.succeeded();
            }
        });
        // What the budget may spend moved: the scheduler balances its slots on its next pass.
        if outcome.rate_limits.is_some() {
            if let Some(flag) = shared.rebalance.get(budget) {
                flag.store(true, Ordering::Release);
            }
        }
    }
    let lifetime = shared.platform(key.platform).indicator_lifetime;
    match &outcome.result {
        Ok(()) => {
            let lit = shared.table.with_generation(&key, generation, |s| {
                s.answered(sent);
                // The first indicator counts as given once a call for it succeeded.
                let first = (!s.first_lit).then(|| sent.saturating_duration_since(s.started_at));
                s.first_lit = true;
                (s.lit(sent, lifetime), first)
            });
            if let Some((gap, first)) = lit {
                if gap {
                    metrics::indicator_gap();
                }
                if let Some(delay) = first {
                    metrics::first_indicator_delay(delay);
                }
            }
            if !shared.readiness.is_empty() {
                shared.readiness.resume(&key.account);
            }
        }
        Err(e) => {
            shared.recent.record(key.platform.as_str(), e);
            match e.kind() {
                ErrorKind::RateLimited { retry_after } => {
                    let jitter: f64 = rand::random();
                    shared.budgets.with(budget, |b| b.rate_limited(retry_after, jitter, now));
                    tracing::warn!(budget, ?retry_after, "upstream rate limited typing; pausing the budget");
                }
                ErrorKind::Unauthorized => {
                    shared.keys.refuse(api_key, now);
                    let name = shared.keys.get(api_key).map_or("?", |k| k.name.as_str());
                    tracing::error!(api_key = name, "upstream refused the api key (401); ending its sessions");
                    for (k, g) in shared.table.keys_where(|_, s| s.api_key == api_key) {
                        if let Some(s) = shared.table.remove_if_generation(&k, g) {
                            shared.ended(&k, s, EndReason::Unauthorized, now);
                        }
                    }
                    return;
                }
                ErrorKind::Rejected => {
                    tracing::info!(account = %key.account, chat = %key.chat, error = %e, "upstream rejected the chat; ending its session");
                    if let Some(s) = shared.table.remove_if_generation(&key, generation) {
                        shared.ended(&key, s, EndReason::Rejected, now);
                    }
                    return;
                }
                ErrorKind::Unavailable => {
                    tracing::warn!(account = %key.account, "account answers 503 (re-authenticating); pausing it");
                    shared.readiness.pause(
                        &key.account,
                        PauseCause::Reauthenticating,
                        now + shared.cfg.unavailable_pause,
                    );
                }
                ErrorKind::Transient => {
                    tracing::debug!(account = %key.account, chat = %key.chat, error = %e, "typing call failed; skipping this beat");
                }
            }
            shared.table.with_generation(&key, generation, |s| s.answered(sent));
        }
    }
}

/// How late a call must leave, after the scheduler launched it, for its next deadline to follow.
/// Below the timer's resolution a move changes nothing but costs a message to the scheduler.
const FOLLOW_SLACK: Duration = Duration::from_millis(1);

/// Bases the next deadline on when the call actually leaves rather than when it was launched:
/// "next due one interval after it was sent". Calls launched together leave over a few
/// milliseconds; without this their next deadlines would stay together. Returns the new
/// deadline if it moved.
fn follow_send_time(s: &mut Session, launched_at: Instant, sent: Instant) -> Option<Instant> {
    let delay = sent.saturating_duration_since(launched_at);
    if delay < FOLLOW_SLACK {
        return None;
    }
    let not_before = s.not_before? + delay;
    s.not_before = Some(not_before);
    let due = not_before.min(s.expires_at().max(sent));
    (due > s.next_due).then(|| {
        s.next_due = due;
        due
    })
}
