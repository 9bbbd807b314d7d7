//! What the mock's record says about one run: cadence, lateness, coverage, first-call delay and
//! calls after stop, all on the mock's clock (its receive times).

use keeptyping::demo::lit_ms;
use serde::Serialize;

/// How long an indicator shows after a typing call (OnlyFans).
pub(crate) const LIFETIME_MS: f64 = 4000.0;
/// A call received this long after a stop was answered counts as "after stop" (a call that
/// left just before the answer may still be on the loopback wire). The strict count is kept too.
pub(crate) const AFTER_STOP_SLACK_MS: f64 = 50.0;

/// p50, p99 and max of a sample, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct Quantiles {
    pub(crate) p50: f64,
    pub(crate) p99: f64,
    pub(crate) max: f64,
    pub(crate) samples: usize,
}

/// The `q` quantile of `sorted` (nearest rank).
pub(crate) fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss, reason = "ranks")]
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

impl Quantiles {
    pub(crate) fn of(mut v: Vec<f64>) -> Self {
        v.sort_by(f64::total_cmp);
        Self {
            p50: quantile(&v, 0.5),
            p99: quantile(&v, 0.99),
            max: v.last().copied().unwrap_or(f64::NAN),
            samples: v.len(),
        }
    }
}

/// One composing spell the driver opened: chat index, start sent and stop answered (mock ms).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Spell {
    pub(crate) start_ms: f64,
    pub(crate) stop_ms: f64,
}

/// The record's typing calls, grouped by chat index (`chat - base`), sorted by time.
pub(crate) struct Calls {
    pub(crate) main: Vec<Vec<f64>>,
    pub(crate) storm: Vec<Vec<f64>>,
    /// Every typing call's receive time.
    pub(crate) all: Vec<f64>,
    /// Calls answered anything but 2xx.
    pub(crate) failed: usize,
}

/// Parses `GET /_mock/requests.tsv?kind=typing`.
pub(crate) fn parse(tsv: &str, main: (u64, usize), storm: (u64, usize)) -> Calls {
    let mut calls =
        Calls { main: vec![Vec::new(); main.1], storm: vec![Vec::new(); storm.1], all: Vec::new(), failed: 0 };
    for line in tsv.lines() {
        let mut f = line.split('\t');
        let (Some(t), Some(chat), Some(status)) = (f.next(), f.nth(3), f.next()) else { continue };
        let (Ok(t), Ok(chat)) = (t.parse::<f64>(), chat.parse::<u64>()) else { continue };
        calls.all.push(t);
        if !status.starts_with('2') {
            calls.failed += 1;
        }
        let slot =
            |base: u64, len: usize| chat.checked_sub(base).and_then(|i| usize::try_from(i).ok()).filter(|i| *i < len);
        if let Some(i) = slot(main.0, main.1) {
            calls.main[i].push(t);
        } else if let Some(i) = slot(storm.0, storm.1) {
            calls.storm[i].push(t);
        }
    }
    for v in calls.main.iter_mut().chain(calls.storm.iter_mut()) {
        v.sort_by(f64::total_cmp);
    }
    calls
}

/// Figures of the held sessions.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Cadence {
    /// Typing call minus the previous call of the same chat minus the interval (ms).
    pub(crate) lateness_ms: Quantiles,
    /// First typing call received minus start request sent (ms).
    pub(crate) first_call_ms: Quantiles,
    /// Sessions that never received a typing call.
    pub(crate) never_lit: usize,
    /// Lit time over composing time, all sessions together.
    pub(crate) coverage: f64,
    /// The 1st-percentile session's coverage.
    pub(crate) coverage_p1: f64,
    /// Calls received more than the slack after their chat's stop was answered.
    pub(crate) after_stop: usize,
    /// Calls received after their chat's stop was answered, no slack.
    pub(crate) after_stop_strict: usize,
}

/// Cadence figures of `spells` (index = chat index) against `calls`.
pub(crate) fn cadence(calls: &[Vec<f64>], spells: &[Spell], interval_ms: f64) -> Cadence {
    let mut lateness = Vec::new();
    let mut first = Vec::new();
    let mut covs = Vec::with_capacity(spells.len());
    let (mut lit, mut composing) = (0.0, 0.0);
    let mut out = Cadence::default();
    for (c, s) in calls.iter().zip(spells) {
        match c.iter().find(|t| **t >= s.start_ms - 1.0) {
            Some(t) => first.push(t - s.start_ms),
            None => out.never_lit += 1,
        }
        let during: Vec<f64> = c.iter().copied().filter(|t| *t <= s.stop_ms).collect();
        lateness.extend(during.windows(2).map(|w| w[1] - w[0] - interval_ms));
        let l = lit_ms(&during, s.start_ms, s.stop_ms, LIFETIME_MS);
        let d = s.stop_ms - s.start_ms;
        lit += l;
        composing += d;
        if d > 0.0 {
            covs.push(l / d);
        }
        out.after_stop += c.iter().filter(|t| **t > s.stop_ms + AFTER_STOP_SLACK_MS).count();
        out.after_stop_strict += c.iter().filter(|t| **t > s.stop_ms).count();
    }
    covs.sort_by(f64::total_cmp);
    out.lateness_ms = Quantiles::of(lateness);
    out.first_call_ms = Quantiles::of(first);
    out.coverage = if composing > 0.0 { lit / composing } else { f64::NAN };
    out.coverage_p1 = quantile(&covs, 0.01);
    out
}

/// Calls after stop of short spells (the storm): (slack, strict).
pub(crate) fn after_stop(calls: &[Vec<f64>], spells: &[Spell]) -> (usize, usize) {
    calls.iter().zip(spells).fold((0, 0), |(a, b), (c, s)| {
        (
            a + c.iter().filter(|t| **t > s.stop_ms + AFTER_STOP_SLACK_MS).count(),
            b + c.iter().filter(|t| **t > s.stop_ms).count(),
        )
    })
}
