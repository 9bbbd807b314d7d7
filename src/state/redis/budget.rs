//! Budgets shared between replicas. Each replica reserves, about once a second and per budget
//! name, the typing calls it expects to make in the next second from the budget's window in
//! Redis ([`scripts::BUDGET`]), and gives back what it did not spend of the last grant; first
//! indicators have a reserve of their own.
//!
//! The scarcity policy holds across replicas as in one process: when the budget cannot keep
//! every session lit, the replicas exchange the heads of their slot orders with their
//! reservations ([`order`]) and each lights its own sessions within the merged prefix. When the
//! budget is far from short nothing is exchanged, and each replica's share of the budget follows
//! its share of the sessions.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::budget::SharedWindow;
use crate::metrics::StateOp;

use super::{Inner, conn, order, scripts, wire};

/// How long a grant from a shared budget window may be spent.
const GRANT_FOR: Duration = Duration::from_millis(1500);
/// How often each replica reserves calls from the shared budget windows.
const BUDGET_EVERY: Duration = Duration::from_secs(1);
/// How soon a replica whose grant ran out reserves again, before the next scheduled reservation.
const BUDGET_STARVED_EVERY: Duration = Duration::from_millis(100);
/// The replicas exchange their slot orders once the budget's sessions need more than this share
/// of what slots may spend (so that the exchange is running before the budget is short).
const EXCHANGE_FROM: f64 = 0.5;

/// One budget as this replica shares it.
#[derive(Debug)]
struct Share {
    /// Calls left of an earlier grant, to give back, and the second that grant was made in.
    give_back: (u32, i64),
    /// The second of the grant held now.
    held: i64,
    /// When this replica last reserved, and its session count then.
    last: Option<Instant>,
    sessions_then: usize,
    /// This replica's share of the budget, as last computed.
    fraction: f64,
    /// First indicators granted in the window, and every replica's sessions, as last seen.
    recent_firsts: u32,
    total: u64,
    /// The merged lit prefix as last computed, while the replicas exchange their orders.
    lit: Option<order::Lit>,
    /// The fraction of a call accrued but not yet asked for.
    owed: f64,
    /// The window's cap as last in force (the smallest any replica reported).
    cap_in_force: Option<u32>,
    /// The last reservation did not reach Redis.
    failed: bool,
}

impl Default for Share {
    fn default() -> Self {
        Self {
            give_back: (0, 0),
            held: 0,
            last: None,
            sessions_then: 0,
            fraction: 1.0,
            recent_firsts: 0,
            total: 0,
            lit: None,
            owed: 0.0,
            cap_in_force: None,
            failed: false,
        }
    }
}

/// What the `BUDGET` script answers: calls granted, the second they were granted in, every
/// replica's sessions, calls granted in the window, first indicators granted now and in the
/// window, the other replicas' slot-order heads (id, head, id, head, ...), and the cap in force
/// (the smallest any live replica reported).
type Reply = (u32, i64, u64, u32, u32, u32, Vec<String>, u32);

/// Shares every budget until `stop`.
pub(super) async fn share(inner: Arc<Inner>, stop: CancellationToken) {
    let mut shares: Vec<Share> = inner.budget_names.iter().map(|_| Share::default()).collect();
    let mut adopted = false;
    loop {
        for (i, share) in shares.iter_mut().enumerate() {
            reserve(&inner, i, share, adopted).await;
        }
        adopted = tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(BUDGET_STARVED_EVERY) => false,
            () = inner.regrant.notified() => true,
        };
    }
}

/// One reservation for budget `i`, when one is due: once a second, sooner when a call was
/// denied for want of a grant or sessions came in, and at once when they came in with shards
/// just taken over (`adopted`), whose calls may be due right away.
async fn reserve(inner: &Inner, i: usize, share: &mut Share, adopted: bool) {
    let Some(name) = inner.budget_names.get(i) else { return };
    let engine = &inner.engine;
    let now = Instant::now();
    let starved = engine.budget_states().with(i, |b| b.shared_starved()).unwrap_or(false);
    // Sessions came in (shards taken over, a burst of starts) since the last reservation: the
    // grant held was sized for fewer.
    let sessions = engine.budget_sessions(i);
    let grew = sessions > share.sessions_then + (share.sessions_then / 8).max(10);
    let due = share.last.is_none_or(|t| {
        let since = now.saturating_duration_since(t);
        since >= BUDGET_EVERY || ((starved || grew) && since >= BUDGET_STARVED_EVERY) || (grew && adopted)
    });
    if !due {
        return;
    }
    // The calls due before the next reservation, and the sessions that started since the last
    // one (first indicators to come: as many again, as one process keeps room for).
    let (due, started) = engine.budget_demand(i, BUDGET_EVERY + BUDGET_STARVED_EVERY, share.last);
    let window = engine.budget_window();
    let interval = engine.refire_interval().as_secs_f64();
    let cap = engine.budget_states().with(i, |b| b.period_allowance(now)).unwrap_or(0);
    // What slot holders may spend is judged on the cap the window enforces, the same on every
    // replica (as of the last reservation), not on this replica's own reading.
    let enforced = share.cap_in_force.map_or(cap, |c| c.min(cap));
    let first_starved = engine.budget_states().with(i, |b| b.shared_first_starved()).unwrap_or(false);
    // The whole share: what first indicators may use of the window.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "a small positive count")]
    let share_cap = engine.budget_states().with(i, |b| b.typing_per_minute().floor() as u32).unwrap_or(0);
    // Grants are spent up to GRANT_FOR after the second they were made in: the window counts
    // them for that much longer, so that any `window` of calls fits.
    let counted = window.as_secs() + GRANT_FOR.as_secs() + 1;
    // What other calls leave of the window for first indicators.
    let reserve = (cap / 10).max(2);
    // What slot holders may spend per window, all replicas together: what the window grants
    // over that time, less the reserve and the first indicators of the last window (as one
    // process keeps room for as many newcomers as came in the last window).
    #[allow(clippy::cast_precision_loss, reason = "small counts")]
    let room = order::milli(
        f64::from(enforced.saturating_sub(reserve).saturating_sub(share.recent_firsts)) * window.as_secs_f64()
            / counted as f64,
    );
    let per_session = window.as_secs_f64() / interval;
    let replicas = inner.shards.members().len().max(1);
    #[allow(clippy::cast_precision_loss, reason = "small counts")]
    let exchange = replicas > 1
        && order::milli(share.total.max(sessions as u64) as f64 * per_session) as f64 > room as f64 * EXCHANGE_FROM;
    // A second of this replica's calls with a margin. With the orders exchanged: its lit
    // sessions' calls, and its share of what they leave to waiting sessions. Otherwise its
    // refires, but not much more than its share of the budget (so that the others find room).
    // First indicators apart: the sessions that joined since the last reservation, and any first
    // call denied meanwhile.
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "small counts"
    )]
    let (want, firsts) = {
        let per_second = |milli: u64| milli as f64 / 1000.0 / window.as_secs_f64();
        let mine = sessions as f64 / share.total.max(sessions as u64).max(1) as f64;
        let want = match share.lit.filter(|_| exchange) {
            // What accrued since the last reservation, to the call (the fraction left over
            // is asked for next time): the replicas together ask for no more than the window
            // grants, so that none of them finds it spent by the others' margins.
            Some(lit) => {
                let since = share.last.map_or(1.0, |t| now.saturating_duration_since(t).as_secs_f64().min(1.0));
                let accrued = (per_second(lit.mine) + per_second(room.saturating_sub(lit.all)) * mine) * since;
                let want = (accrued + share.owed).floor();
                share.owed = accrued + share.owed - want;
                want
            }
            None => {
                share.owed = 0.0;
                // This replica's share as of now (its sessions may have grown since the last
                // reservation), against every replica's as last seen.
                let fraction = (sessions as f64 + 1.0) / (share.total.max(sessions as u64) as f64 + replicas as f64);
                // The calls due before the next reservation, however their deadlines bunch, or
                // a second of the sessions' average rate if that is more.
                let demand = (sessions as f64 / interval).max(due as f64) * 1.25 + 4.0;
                let fair = fraction * f64::from(cap) / window.as_secs_f64() * 1.2 + 1.0;
                demand.min(fair).ceil()
            }
        };
        let firsts = started as u64 + if first_starved { 2 } else { 0 };
        (want as u64, firsts)
    };
    let head =
        if exchange { order::head(&engine.budget_order(i), room, Instant::now(), wire::wall_ms()) } else { Vec::new() };
    share.last = Some(now);
    share.sessions_then = sessions;
    let (back, back_second) = share.give_back;
    let keys = wire::budget_keys(name);
    let args = [
        counted.to_string(),
        cap.to_string(),
        want.to_string(),
        back.to_string(),
        back_second.to_string(),
        inner.id.clone(),
        sessions.to_string(),
        (BUDGET_EVERY * 3).as_millis().to_string(),
        firsts.to_string(),
        reserve.to_string(),
        order::encode(&head),
        share_cap.to_string(),
    ];
    let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let mut conn = inner.conn.clone();
    let reply: Result<Reply, _> = conn::script(&mut conn, &scripts::BUDGET, &key_refs, &args, StateOp::Budget).await;
    let Ok((granted, second, total, used, first_granted, recent_firsts, heads, cap_in_force)) = reply else {
        share.failed = true;
        return;
    };
    share.total = total;
    share.recent_firsts = recent_firsts;
    share.cap_in_force = Some(cap_in_force);
    // This replica's share of the budget: with the orders exchanged, its share of the merged
    // lit prefix, and its slot capacity the calls of its own sessions within it; otherwise its
    // share of the budget's sessions. Either is smoothed by one session per replica, so that a
    // replica with none lit yet can still light a newcomer at once.
    #[allow(clippy::cast_precision_loss, reason = "small counts")]
    let (fraction, slot_calls) = if exchange {
        let others: Vec<(String, Vec<order::Entry>)> = heads
            .chunks(2)
            .filter_map(|p| match p {
                [id, head] => Some((id.clone(), order::decode(head))),
                _ => None,
            })
            .collect();
        let lit = order::lit(&inner.id, &head, &others, room);
        share.lit = Some(lit);
        let one = order::milli(per_session) as f64;
        let fraction = (lit.mine as f64 + one) / (lit.all as f64 + one * replicas as f64);
        (fraction, Some(lit.mine as f64 / 1000.0))
    } else {
        share.lit = None;
        ((sessions as f64 + 1.0) / (total.max(sessions as u64) as f64 + replicas as f64), None)
    };
    share.fraction = fraction;
    let now = Instant::now();
    let grant = SharedWindow { tokens: granted, first_tokens: first_granted, fraction, window_used: used, slot_calls };
    let left = engine.budget_states().with(i, |b| b.set_shared_grant(grant, now + GRANT_FOR, now)).unwrap_or(0);
    engine.budget_granted(i);
    if std::mem::take(&mut share.failed) {
        // Refires skipped for want of a grant while Redis did not answer leave now.
        engine.hasten(|_| true);
    }
    // What is left of the grant held until now goes back, at the next reservation, to the
    // second it was made in.
    share.give_back = (left, share.held);
    share.held = second;
}
