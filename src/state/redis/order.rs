//! A budget's slot order across replicas: each replica's head of the order on the wire, and
//! which part of the merged order each replica lights. Plain data; no I/O.
//!
//! In one process the lit sessions of a budget are the longest prefix of its order (`high`
//! first, then by start) whose typing calls per period fit the slot capacity. With replicas,
//! each one sends the head of its own order (no further than the capacity could reach: a
//! session past that cannot be in the merged prefix either) and reads the others'; all merge
//! them the same way, and each lights its own sessions within the merged prefix. Ties (the same
//! priority and start millisecond on two replicas) go to the smaller replica id.

use std::fmt::Write as _;

use tokio::time::Instant;

use crate::engine::OrderEntry;

/// One session of the order on the wire: priority, start (wall-clock ms) and calls per period
/// (in thousandths, so that sums are exact).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) high: bool,
    pub(crate) started_ms: u64,
    pub(crate) milli_calls: u64,
}

impl Entry {
    fn rank(&self) -> (u8, u64) {
        (u8::from(!self.high), self.started_ms)
    }
}

/// Thousandths of a call.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "a small positive count")]
pub(crate) fn milli(calls: f64) -> u64 {
    (calls.max(0.0) * 1000.0).round() as u64
}

/// This replica's order (from [`crate::engine::Engine::budget_order`]) with wall-clock starts,
/// cut where its calls exceed `room` thousandths.
pub(crate) fn head(order: &[OrderEntry], room: u64, now: Instant, wall_now_ms: u64) -> Vec<Entry> {
    let mut sum = 0u64;
    let mut out = Vec::new();
    for e in order {
        let milli_calls = milli(e.calls);
        if sum + milli_calls > room {
            break;
        }
        sum += milli_calls;
        let age = u64::try_from(now.saturating_duration_since(e.started).as_millis()).unwrap_or(u64::MAX);
        out.push(Entry { high: e.high, started_ms: wall_now_ms.saturating_sub(age), milli_calls });
    }
    out
}

/// `h|n<start ms>:<milli-calls>`, comma-separated.
pub(crate) fn encode(entries: &[Entry]) -> String {
    let mut s = String::with_capacity(entries.len() * 22);
    for (i, e) in entries.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, "{}{}:{}", if e.high { 'h' } else { 'n' }, e.started_ms, e.milli_calls);
    }
    s
}

/// The entries of [`encode`]; a malformed entry ends the list there (a shorter head only
/// gives this replica's sessions more room, never the others' less).
pub(crate) fn decode(text: &str) -> Vec<Entry> {
    let mut out = Vec::new();
    for part in text.split(',').filter(|p| !p.is_empty()) {
        let high = match part.as_bytes().first() {
            Some(b'h') => true,
            Some(b'n') => false,
            _ => break,
        };
        let Some((start, calls)) = part[1..].split_once(':') else { break };
        let (Ok(started_ms), Ok(milli_calls)) = (start.parse(), calls.parse()) else { break };
        out.push(Entry { high, started_ms, milli_calls });
    }
    out
}

/// What the merged prefix gives: this replica's calls within it, and every replica's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lit {
    pub(crate) mine: u64,
    pub(crate) all: u64,
}

/// The longest prefix of every replica's heads merged in slot order whose calls fit `room`
/// (thousandths of calls per period); `me` is this replica's id and `mine` its head, `others`
/// the other replicas' ids and heads.
pub(crate) fn lit(me: &str, mine: &[Entry], others: &[(String, Vec<Entry>)], room: u64) -> Lit {
    let mut merged: Vec<(&Entry, &str, bool)> = mine.iter().map(|e| (e, me, true)).collect();
    for (id, entries) in others.iter().filter(|(id, _)| id != me) {
        merged.extend(entries.iter().map(|e| (e, id.as_str(), false)));
    }
    // Stable: each replica's own order stands among its entries of one millisecond.
    merged.sort_by(|a, b| (a.0.rank(), a.1).cmp(&(b.0.rank(), b.1)));
    let mut out = Lit { mine: 0, all: 0 };
    for (e, _, is_mine) in merged {
        if out.all + e.milli_calls > room {
            break;
        }
        out.all += e.milli_calls;
        if is_mine {
            out.mine += e.milli_calls;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(started_ms: u64) -> Entry {
        Entry { high: false, started_ms, milli_calls: 17_000 }
    }

    fn h(started_ms: u64) -> Entry {
        Entry { high: true, started_ms, milli_calls: 17_000 }
    }

    #[test]
    fn entries_survive_the_wire_and_garbage_ends_the_list() {
        let entries = vec![h(5), n(1_796_000_000_000), Entry { high: false, started_ms: 7, milli_calls: 8_571 }];
        assert_eq!(decode(&encode(&entries)), entries);
        assert_eq!(decode(""), Vec::new());
        assert_eq!(decode("n5:17000,x9:1,n6:17000"), vec![n(5)]);
        assert_eq!(decode("n5:17000,n6"), vec![n(5)]);
    }

    #[test]
    fn the_head_stops_where_the_room_ends_and_counts_back_from_wall_time() {
        let now = Instant::now();
        let at = |secs: u64| now.checked_sub(std::time::Duration::from_secs(secs)).unwrap();
        let order: Vec<OrderEntry> =
            (0..5).map(|i| OrderEntry { high: i == 0, started: at(10 - i), calls: 17.0 }).collect();
        let head = head(&order, 3 * 17_000 + 500, now, 100_000);
        assert_eq!(head, vec![h(90_000), n(91_000), n(92_000)]);
    }

    #[test]
    fn the_merged_prefix_is_high_first_then_start_order_across_replicas() {
        // r0 holds the oldest normal sessions, r1 a high one started last, r2 the middle.
        let r0 = vec![n(1), n(2), n(6)];
        let r1 = vec![h(9), n(7)];
        let r2 = vec![n(3), n(4), n(5)];
        let others = |me: &str| -> Vec<(String, Vec<Entry>)> {
            [("r0", &r0), ("r1", &r1), ("r2", &r2)]
                .into_iter()
                .filter(|(id, _)| *id != me)
                .map(|(id, e)| (id.to_owned(), e.clone()))
                .collect()
        };
        // Room for four: h9, then n1, n2, n3.
        let room = 4 * 17_000;
        let l0 = lit("r0", &r0, &others("r0"), room);
        let l1 = lit("r1", &r1, &others("r1"), room);
        let l2 = lit("r2", &r2, &others("r2"), room);
        assert_eq!((l0.mine, l1.mine, l2.mine), (2 * 17_000, 17_000, 17_000));
        // Every replica sees the same prefix, and the shares add up to it.
        assert_eq!((l0.all, l1.all, l2.all), (room, room, room));
        assert_eq!(l0.mine + l1.mine + l2.mine, room);
        // Ties in one millisecond go to the smaller id.
        let t = lit("r1", &[n(1)], &[("r0".to_owned(), vec![n(1)])], 17_000);
        assert_eq!(t, Lit { mine: 0, all: 17_000 });
    }

    #[test]
    fn a_prefix_stops_at_the_first_session_that_does_not_fit() {
        let big = Entry { high: false, started_ms: 2, milli_calls: 34_000 };
        let l = lit("r0", &[n(1), big, n(3)], &[], 40_000);
        assert_eq!(l, Lit { mine: 17_000, all: 17_000 });
    }
}
