//! The checker over the mock's record of typing calls. The mock cannot tell replicas apart, so
//! every promise is checked per chat on the calls it received:
//! - no typing call for a chat after its stop was answered (by any replica), allowing 50 ms
//!   for a call already on the wire when the stop removed the session;
//! - no two calls for one chat closer than `interval - 250 ms` (two refire loops), except
//!   inside a stated hand-over window;
//! - the longest gap per chat while it was composing (including from its last call to the
//!   stop, or to the end of the observation: a chat that went dark counts);
//! - coverage: the share of composing time during which an indicator was showing.

use std::collections::BTreeMap;

use keeptyping::demo::lit_ms;

/// Slack for a call already on the wire when a stop answered.
pub const AFTER_STOP_SLACK_MS: f64 = 50.0;

/// One typing call the mock received.
#[derive(Debug, Clone)]
pub struct Call {
    /// The mock's clock at receipt (ms).
    pub t: f64,
    pub chat: String,
    pub status: u16,
}

/// One composing spell of a chat, on the mock's clock: from the moment its start was sent until
/// its stop was answered (or the end of the observation).
#[derive(Debug, Clone)]
pub struct Spell {
    pub chat: String,
    pub start: f64,
    pub stop: Option<f64>,
}

/// What the checker applies.
#[derive(Debug, Clone)]
pub struct Rules {
    /// The indicator's lifetime (ms), for coverage.
    pub lifetime_ms: f64,
    /// Two calls for one chat closer than this are two refire loops.
    pub duplicate_ms: f64,
    /// Windows (mock ms) in which close calls are allowed: a crash hand-over.
    pub handovers: Vec<(f64, f64)>,
    /// End of the observation (mock ms) for spells without a stop.
    pub end: f64,
}

impl Rules {
    pub fn new(interval_ms: f64, lifetime_ms: f64, end: f64) -> Self {
        Self { lifetime_ms, duplicate_ms: interval_ms - 250.0, handovers: Vec::new(), end }
    }
}

/// What the checker found.
#[derive(Debug, Default)]
pub struct Findings {
    /// `chat: +ms after the stop answered`.
    pub after_stop: Vec<String>,
    /// `chat: calls at a and b (gap)`.
    pub duplicates: Vec<String>,
    /// Longest gap per chat within its spell (ms).
    pub longest_gap: BTreeMap<String, f64>,
    /// Where each chat's longest gap began (mock ms).
    pub gap_from: BTreeMap<String, f64>,
    /// From the start sent to the first call (ms), per chat; `None` if none came.
    pub first_call: BTreeMap<String, Option<f64>>,
    /// Lit and composing time, summed over spells (ms).
    pub lit_ms: f64,
    pub composing_ms: f64,
    /// Lowest per-chat coverage and its chat.
    pub worst_coverage: Option<(String, f64)>,
    /// Typing calls checked.
    pub calls: usize,
}

impl Findings {
    pub fn coverage(&self) -> f64 {
        if self.composing_ms > 0.0 { self.lit_ms / self.composing_ms } else { 1.0 }
    }

    /// The longest gap over every chat, with its chat.
    pub fn max_gap(&self) -> (String, f64) {
        self.longest_gap.iter().max_by(|a, b| a.1.total_cmp(b.1)).map_or((String::new(), 0.0), |(c, g)| (c.clone(), *g))
    }

    /// The gaps longer than `ms`, longest first: `chat: gap ms from t` (t relative to `t0`).
    pub fn gaps_over(&self, ms: f64, t0: f64) -> Vec<String> {
        let mut v: Vec<(&String, &f64)> = self.longest_gap.iter().filter(|(_, g)| **g > ms).collect();
        v.sort_by(|a, b| b.1.total_cmp(a.1));
        v.iter().map(|(c, g)| format!("{c}: {g:.0} ms from +{:.0} ms", self.gap_from[*c] - t0)).take(10).collect()
    }

    /// Asserts no call after a stop and no duplicate refire.
    pub fn assert_clean(&self, what: &str) {
        assert!(
            self.after_stop.is_empty(),
            "{what}: {} typing calls after their stop was answered: {:?}",
            self.after_stop.len(),
            first(&self.after_stop)
        );
        assert!(
            self.duplicates.is_empty(),
            "{what}: {} pairs of calls for one chat closer than one interval (two refire loops): {:?}",
            self.duplicates.len(),
            first(&self.duplicates)
        );
    }

    pub fn summary(&self) -> String {
        let (chat, gap) = self.max_gap();
        let mut firsts: Vec<f64> = self.first_call.values().flatten().copied().collect();
        firsts.sort_by(f64::total_cmp);
        format!(
            "{} calls, {} chats; longest gap {gap:.0} ms (chat {chat}); coverage {:.3}% (worst {:?}); \
             first call p50 {:.1} ms, max {:.1} ms; after stop {}; duplicates {}",
            self.calls,
            self.longest_gap.len(),
            self.coverage() * 100.0,
            self.worst_coverage.as_ref().map(|(c, v)| format!("{c} {:.2}%", v * 100.0)),
            percentile(&firsts, 0.5),
            firsts.last().copied().unwrap_or(0.0),
            self.after_stop.len(),
            self.duplicates.len(),
        )
    }
}

fn first(v: &[String]) -> &[String] {
    &v[..v.len().min(10)]
}

/// The `q` quantile of sorted `v` (0 when empty).
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Calls per chat, in time order (answered calls only: status 200).
pub fn by_chat(calls: &[Call]) -> BTreeMap<String, Vec<f64>> {
    let mut map: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for c in calls.iter().filter(|c| c.status == 200) {
        map.entry(c.chat.clone()).or_default().push(c.t);
    }
    for v in map.values_mut() {
        v.sort_by(f64::total_cmp);
    }
    map
}

/// Checks every spell against the calls (one spell per chat).
pub fn check(calls: &[Call], spells: &[Spell], rules: &Rules) -> Findings {
    let per_chat = by_chat(calls);
    let mut f = Findings { calls: calls.len(), ..Findings::default() };
    let in_handover = |t: f64| rules.handovers.iter().any(|(a, b)| t >= *a && t <= *b);
    let empty = Vec::new();
    for spell in spells {
        let ts = per_chat.get(&spell.chat).unwrap_or(&empty);
        let end = spell.stop.unwrap_or(rules.end);
        // After the stop answered.
        if let Some(stop) = spell.stop {
            for t in ts.iter().filter(|t| **t > stop + AFTER_STOP_SLACK_MS) {
                f.after_stop.push(format!("chat {}: +{:.1} ms after its stop answered", spell.chat, t - stop));
            }
        }
        // Two refire loops.
        for w in ts.windows(2) {
            if w[1] - w[0] < rules.duplicate_ms && !(in_handover(w[0]) && in_handover(w[1])) {
                f.duplicates.push(format!(
                    "chat {}: calls at {:.1} and {:.1} ms ({:.1} ms apart)",
                    spell.chat,
                    w[0],
                    w[1],
                    w[1] - w[0]
                ));
            }
        }
        // Gaps while composing, from the first call to the end of the spell.
        let inside: Vec<f64> = ts.iter().copied().filter(|t| *t >= spell.start && *t <= end).collect();
        f.first_call.insert(spell.chat.clone(), inside.first().map(|t| t - spell.start));
        let mut longest = (inside.first().map_or(end - spell.start, |t| t - spell.start).max(0.0), spell.start);
        for w in inside.windows(2) {
            if w[1] - w[0] > longest.0 {
                longest = (w[1] - w[0], w[0]);
            }
        }
        if let Some(last) = inside.last() {
            // Dark until the end.
            if end - last > longest.0 {
                longest = (end - last, *last);
            }
        }
        f.longest_gap.insert(spell.chat.clone(), longest.0);
        f.gap_from.insert(spell.chat.clone(), longest.1);
        // Coverage from the first call (the start's own latency is measured apart).
        let from = inside.first().copied().unwrap_or(spell.start);
        if end > from {
            let lit = lit_ms(ts, from, end, rules.lifetime_ms);
            f.lit_ms += lit;
            f.composing_ms += end - from;
            let cov = lit / (end - from);
            if f.worst_coverage.as_ref().is_none_or(|(_, w)| cov < *w) {
                f.worst_coverage = Some((spell.chat.clone(), cov));
            }
        }
    }
    f
}

/// Typing calls per tumbling window of `window_ms` from `t0` (answered or not).
pub fn per_window(calls: &[Call], t0: f64, window_ms: f64) -> Vec<usize> {
    let mut counts: Vec<usize> = Vec::new();
    for c in calls.iter().filter(|c| c.t >= t0) {
        let i = ((c.t - t0) / window_ms) as usize;
        if counts.len() <= i {
            counts.resize(i + 1, 0);
        }
        counts[i] += 1;
    }
    counts
}

/// Most calls in any window of `window_ms` that starts at a call.
pub fn busiest_window(calls: &[Call], window_ms: f64) -> usize {
    let mut t: Vec<f64> = calls.iter().map(|c| c.t).collect();
    t.sort_by(f64::total_cmp);
    let mut best = 0;
    let mut j = 0;
    for i in 0..t.len() {
        while j < t.len() && t[j] < t[i] + window_ms {
            j += 1;
        }
        best = best.max(j - i);
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn calls(chat: &str, ts: &[f64]) -> Vec<Call> {
        ts.iter().map(|t| Call { t: *t, chat: chat.to_owned(), status: 200 }).collect()
    }

    #[test]
    fn the_checker_flags_late_calls_duplicates_and_dark_gaps() {
        // Chat a: on cadence, stopped at 3100, nothing after. Chat b: a second loop at 1200,
        // and a call 80 ms after its stop. Chat c: dark from 1000 to the end at 5000.
        let mut all = calls("a", &[0.0, 1000.0, 2000.0, 3000.0]);
        all.extend(calls("b", &[0.0, 1000.0, 1200.0, 2000.0, 3180.0]));
        all.extend(calls("c", &[0.0, 1000.0]));
        let spells = vec![
            Spell { chat: "a".into(), start: -1.0, stop: Some(3100.0) },
            Spell { chat: "b".into(), start: -1.0, stop: Some(3100.0) },
            Spell { chat: "c".into(), start: -1.0, stop: None },
        ];
        let rules = Rules::new(1000.0, 1400.0, 5000.0);
        let f = check(&all, &spells, &rules);
        assert_eq!(f.after_stop.len(), 1, "{:?}", f.after_stop);
        assert!(f.after_stop[0].starts_with("chat b"));
        assert_eq!(f.duplicates.len(), 1, "{:?}", f.duplicates);
        assert!(f.duplicates[0].starts_with("chat b"));
        assert!((f.longest_gap["a"] - 1000.0).abs() < 1e-9);
        assert!((f.longest_gap["c"] - 4000.0).abs() < 1e-9);
        assert_eq!(f.max_gap().0, "c");
        assert!(f.coverage() < 0.9, "{}", f.coverage());
        // Inside a stated hand-over window, close calls are allowed.
        let rules = Rules { handovers: vec![(900.0, 1250.0)], ..rules };
        assert!(check(&all, &spells, &rules).duplicates.is_empty());
    }

    #[test]
    fn windows_count_calls() {
        let all = calls("a", &[0.0, 10.0, 590.0, 600.0, 1300.0]);
        assert_eq!(per_window(&all, 0.0, 600.0), vec![3, 1, 1]);
        assert_eq!(busiest_window(&all, 600.0), 3);
    }
}
