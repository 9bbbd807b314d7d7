//! Lit slots: which sessions of each budget the budget keeps fully lit when it cannot keep them
//! all.
//!
//! Each budget's members are ordered `high` first, then by start (the instant it started, which
//! for a session taken over from another replica is when it started there; the generation breaks
//! ties). The lit sessions are always a prefix of that order: the longest one whose
//! calls per period fit the budget's slot capacity ([`crate::budget::BudgetState::slot_capacity`]).
//! So when capacity shrinks the most recently started normal sessions lose their slots first,
//! when it grows (or a member leaves) the waiting sessions are admitted in start order, and a
//! `high` newcomer takes the place of the newest normal slot holder.
//!
//! Owned by the scheduler task alone; hook handlers reach it through scheduler commands.
//! [`Slots::rebalance`] returns the sessions whose slot changed, for the scheduler to mark.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::time::Instant;

use crate::budget::BudgetIndex;
use crate::ids::SessionKey;

use super::session::Priority;

/// A member's place in its budget's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Order {
    /// 0 for `high`, 1 for normal.
    rank: u8,
    started: Instant,
    generation: u64,
}

impl Order {
    fn new(priority: Priority, started: Instant, generation: u64) -> Self {
        Self { rank: u8::from(priority != Priority::High), started, generation }
    }
}

#[derive(Debug)]
struct Member {
    key: SessionKey,
    /// Typing calls per budget period at its platform's cadence.
    calls: f64,
}

/// One budget's members.
#[derive(Debug, Default)]
struct Budget {
    lit: BTreeMap<Order, Member>,
    waiting: BTreeMap<Order, Member>,
    /// Calls per period of the lit members.
    lit_calls: f64,
    /// Calls per period slots may spend.
    capacity: f64,
}

/// How many sessions of one budget are lit and waiting, readable from any thread.
#[derive(Debug, Default)]
pub struct SlotCounts {
    lit: AtomicUsize,
    waiting: AtomicUsize,
}

impl SlotCounts {
    /// `(lit, waiting)`.
    pub fn get(&self) -> (usize, usize) {
        (self.lit.load(Ordering::Relaxed), self.waiting.load(Ordering::Relaxed))
    }
}

/// A session whose slot changed.
#[derive(Debug, PartialEq)]
pub(crate) struct Change {
    pub(crate) key: SessionKey,
    pub(crate) generation: u64,
    pub(crate) lit: bool,
}

/// A session joining its budget's order.
#[derive(Debug)]
pub(crate) struct Joining {
    pub(crate) key: SessionKey,
    pub(crate) generation: u64,
    pub(crate) priority: Priority,
    /// When it started (here, or on the replica it was taken over from).
    pub(crate) started: Instant,
    /// Typing calls per budget period at its platform's cadence.
    pub(crate) calls: f64,
}

/// Every budget's lit slots.
#[derive(Debug)]
pub(crate) struct Slots {
    budgets: Vec<Budget>,
    /// When each member (by generation) started.
    started: HashMap<u64, Instant>,
}

/// Slack against floating-point sums: a member fits when it exceeds capacity by less than this.
const EPS: f64 = 1e-9;

// === impl Slots ===

impl Slots {
    pub(crate) fn new(budgets: usize) -> Self {
        Self { budgets: (0..budgets.max(1)).map(|_| Budget::default()).collect(), started: HashMap::new() }
    }

    fn budget(&mut self, b: BudgetIndex) -> &mut Budget {
        let i = b.min(self.budgets.len() - 1);
        &mut self.budgets[i]
    }

    /// A session started at `started` joins its budget, waiting; [`Self::rebalance`] decides
    /// whether it is lit.
    pub(crate) fn join(&mut self, b: BudgetIndex, member: Joining) {
        let Joining { key, generation, priority, started, calls } = member;
        self.started.insert(generation, started);
        self.budget(b).waiting.insert(Order::new(priority, started, generation), Member { key, calls });
    }

    /// A session leaves (it ended). Its slot, if any, is free for the next [`Self::rebalance`].
    pub(crate) fn leave(&mut self, b: BudgetIndex, generation: u64) {
        let Some(started) = self.started.remove(&generation) else { return };
        let budget = self.budget(b);
        for priority in [Priority::High, Priority::Normal] {
            let order = Order::new(priority, started, generation);
            if let Some(m) = budget.lit.remove(&order) {
                budget.lit_calls -= m.calls;
                return;
            }
            if budget.waiting.remove(&order).is_some() {
                return;
            }
        }
    }

    /// A session's priority rose to `high`: it moves ahead of every normal session.
    pub(crate) fn promote(&mut self, b: BudgetIndex, generation: u64) {
        let Some(started) = self.started.get(&generation).copied() else { return };
        let budget = self.budget(b);
        let (from, to) =
            (Order::new(Priority::Normal, started, generation), Order::new(Priority::High, started, generation));
        if let Some(m) = budget.lit.remove(&from) {
            budget.lit.insert(to, m);
        } else if let Some(m) = budget.waiting.remove(&from) {
            budget.waiting.insert(to, m);
        }
    }

    /// Sets budget `b`'s capacity (calls per period) and moves members in or out of the lit
    /// prefix to match. Returns the members whose slot changed.
    pub(crate) fn rebalance(&mut self, b: BudgetIndex, capacity: f64, counts: Option<&SlotCounts>) -> Vec<Change> {
        let budget = self.budget(b);
        budget.capacity = capacity;
        let mut changes = Vec::new();
        loop {
            // Over capacity: the last of the prefix waits.
            if budget.lit_calls > budget.capacity + EPS {
                if let Some((order, m)) = budget.lit.pop_last() {
                    budget.lit_calls -= m.calls;
                    changes.push(Change { key: m.key.clone(), generation: order.generation, lit: false });
                    budget.waiting.insert(order, m);
                    continue;
                }
                budget.lit_calls = 0.0;
            }
            let first_waiting = budget.waiting.first_key_value().map(|(o, m)| (*o, m.calls));
            let Some((order, calls)) = first_waiting else { break };
            // A waiting member ahead of a lit one (a `high` newcomer): the prefix gives way.
            if budget.lit.last_key_value().is_some_and(|(last, _)| *last > order)
                && budget.lit_calls + calls > budget.capacity + EPS
            {
                if let Some((o, m)) = budget.lit.pop_last() {
                    budget.lit_calls -= m.calls;
                    changes.push(Change { key: m.key.clone(), generation: o.generation, lit: false });
                    budget.waiting.insert(o, m);
                }
                continue;
            }
            if budget.lit_calls + calls <= budget.capacity + EPS {
                if let Some(m) = budget.waiting.remove(&order) {
                    budget.lit_calls += m.calls;
                    changes.push(Change { key: m.key.clone(), generation: order.generation, lit: true });
                    budget.lit.insert(order, m);
                }
                continue;
            }
            break;
        }
        if budget.lit.is_empty() {
            // Keep the sum from drifting.
            budget.lit_calls = 0.0;
        }
        if let Some(c) = counts {
            c.lit.store(budget.lit.len(), Ordering::Relaxed);
            c.waiting.store(budget.waiting.len(), Ordering::Relaxed);
        }
        // A member demoted and admitted again in one pass changed nothing.
        let mut net: Vec<Change> = Vec::with_capacity(changes.len());
        for c in changes {
            match net.iter().position(|n| n.generation == c.generation) {
                Some(i) => {
                    net.swap_remove(i);
                }
                None => net.push(c),
            }
        }
        net
    }

    /// `(lit, waiting)` of budget `b`.
    #[cfg(test)]
    pub(crate) fn counts(&self, b: BudgetIndex) -> (usize, usize) {
        let budget = &self.budgets[b.min(self.budgets.len() - 1)];
        (budget.lit.len(), budget.waiting.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{AccountId, ChatId, Platform};

    fn key(chat: u64) -> SessionKey {
        SessionKey {
            platform: Platform::Onlyfans,
            account: AccountId::parse(Platform::Onlyfans, "acct_abc").unwrap(),
            chat: ChatId::parse(Platform::Onlyfans, &chat.to_string()).unwrap(),
        }
    }

    /// Session `g` of priority `p`, started `g` ms after `t0`.
    fn joining(t0: Instant, g: u64, p: Priority, calls: f64) -> Joining {
        Joining { key: key(g), generation: g, priority: p, started: t0 + std::time::Duration::from_millis(g), calls }
    }

    fn lit_set(changes: &[Change]) -> Vec<(u64, bool)> {
        let mut v: Vec<(u64, bool)> = changes.iter().map(|c| (c.generation, c.lit)).collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn slots_fill_in_start_order_and_shrink_from_the_newest_normal() {
        let mut s = Slots::new(1);
        let t0 = Instant::now();
        for g in 1..=5 {
            s.join(0, joining(t0, g, Priority::Normal, 10.0));
        }
        assert_eq!(lit_set(&s.rebalance(0, 30.0, None)), vec![(1, true), (2, true), (3, true)]);
        assert_eq!(s.counts(0), (3, 2));
        // Capacity shrinks: the newest slot holder gives way.
        assert_eq!(lit_set(&s.rebalance(0, 25.0, None)), vec![(3, false)]);
        // A stop frees a slot: the next waiting session in start order takes it.
        s.leave(0, 1);
        assert_eq!(lit_set(&s.rebalance(0, 25.0, None)), vec![(3, true)]);
        // Capacity grows: admitted in start order.
        assert_eq!(lit_set(&s.rebalance(0, 100.0, None)), vec![(4, true), (5, true)]);
    }

    #[test]
    fn a_high_newcomer_takes_the_place_of_the_newest_normal_slot_holder() {
        let mut s = Slots::new(1);
        let t0 = Instant::now();
        for g in 1..=3 {
            s.join(0, joining(t0, g, Priority::Normal, 10.0));
        }
        s.rebalance(0, 20.0, None);
        s.join(0, joining(t0, 9, Priority::High, 10.0));
        assert_eq!(lit_set(&s.rebalance(0, 20.0, None)), vec![(2, false), (9, true)]);
        // A normal session whose priority rises overtakes the normal ones too.
        s.promote(0, 3);
        assert_eq!(lit_set(&s.rebalance(0, 20.0, None)), vec![(1, false), (3, true)]);
        assert_eq!(s.counts(0), (2, 2));
    }

    #[test]
    fn a_session_taken_over_keeps_its_place_in_start_order() {
        let mut s = Slots::new(1);
        let t0 = Instant::now() + std::time::Duration::from_secs(60);
        for g in [2, 3] {
            s.join(0, joining(t0, g, Priority::Normal, 10.0));
        }
        s.rebalance(0, 20.0, None);
        // Generation 7 joins last but started before the others, on another replica.
        s.join(
            0,
            Joining { started: t0 - std::time::Duration::from_secs(30), ..joining(t0, 7, Priority::Normal, 10.0) },
        );
        assert_eq!(lit_set(&s.rebalance(0, 20.0, None)), vec![(3, false), (7, true)]);
        s.leave(0, 7);
        assert_eq!(lit_set(&s.rebalance(0, 20.0, None)), vec![(3, true)]);
    }

    #[test]
    fn the_lit_set_is_always_the_longest_fitting_prefix() {
        let mut s = Slots::new(1);
        let t0 = Instant::now();
        let mut live = Vec::new();
        let mut rng = 7u64;
        let mut next = || {
            rng = rng.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            rng >> 33
        };
        for g in 1..400u64 {
            match next() % 4 {
                0 if !live.is_empty() => {
                    let i = usize::try_from(next()).unwrap() % live.len();
                    let (generation, _) = live.swap_remove(i);
                    s.leave(0, generation);
                }
                _ => {
                    let p = if next() % 5 == 0 { Priority::High } else { Priority::Normal };
                    s.join(0, joining(t0, g, p, 17.0));
                    live.push((g, p));
                }
            }
            #[allow(clippy::cast_precision_loss)]
            let capacity = (next() % 200) as f64;
            s.rebalance(0, capacity, None);
            let budget = &s.budgets[0];
            let mut order: Vec<(u8, u64)> = live.iter().map(|(g, p)| (u8::from(*p != Priority::High), *g)).collect();
            order.sort_unstable();
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let fits = ((capacity + EPS) / 17.0).floor() as usize;
            let want: Vec<u64> = order.iter().take(fits).map(|(_, g)| *g).collect();
            let got: Vec<u64> = budget.lit.keys().map(|o| o.generation).collect();
            assert_eq!(got, want, "capacity {capacity}");
        }
    }
}
