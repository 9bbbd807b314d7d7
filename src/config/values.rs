//! Values that carry their own rule, so that a setting of that type cannot hold a bad value: a
//! count of at least one ([`Count`]), a share of a limit ([`Share`], in (0, 1]) and a reserve
//! ([`Reserve`], in [0, 1)). A bad value is refused while the configuration is read; the loader
//! turns the refusal into the usual one line naming the key (`config: budget.burst: must be at
//! least 1`). Rules between several keys stay in `validate.rs`.

use serde::{Deserialize, Serialize};

/// A configured count that must be at least 1 (sessions, calls in flight, connections, tokens,
/// requests per minute).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct Count(u32);

impl Count {
    /// `n`, which must be at least 1: for defaults and tests, where a 0 is a programming error.
    ///
    /// # Panics
    /// If `n` is 0 (at compile time in a `const`).
    pub const fn of(n: u32) -> Self {
        assert!(n > 0, "a Count is at least 1");
        Self(n)
    }

    /// The count.
    pub const fn get(self) -> u32 {
        self.0
    }

    /// The count as a `usize`.
    pub fn as_usize(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

impl TryFrom<u64> for Count {
    type Error = String;

    fn try_from(n: u64) -> Result<Self, String> {
        match u32::try_from(n) {
            Ok(0) => Err("must be at least 1".to_owned()),
            Ok(n) => Ok(Self(n)),
            Err(_) => Err(format!("must be at most {}", u32::MAX)),
        }
    }
}

impl From<Count> for u64 {
    fn from(c: Count) -> Self {
        u64::from(c.0)
    }
}

/// A share of a limit, in (0, 1] (`budget.typing_share`).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize, Deserialize)]
#[serde(try_from = "f64", into = "f64")]
pub struct Share(f64);

impl Share {
    /// `v`, which must be in (0, 1].
    ///
    /// # Panics
    /// If it is not.
    pub const fn of(v: f64) -> Self {
        assert!(v > 0.0 && v <= 1.0, "a Share is in (0, 1]");
        Self(v)
    }

    /// The share.
    pub const fn get(self) -> f64 {
        self.0
    }
}

impl TryFrom<f64> for Share {
    type Error = &'static str;

    fn try_from(v: f64) -> Result<Self, &'static str> {
        if v > 0.0 && v <= 1.0 { Ok(Self(v)) } else { Err("must be in (0, 1]") }
    }
}

impl From<Share> for f64 {
    fn from(s: Share) -> Self {
        s.0
    }
}

/// A reserve kept of a limit, in [0, 1) (`budget.reserve`).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize, Deserialize)]
#[serde(try_from = "f64", into = "f64")]
pub struct Reserve(f64);

impl Reserve {
    /// `v`, which must be in [0, 1).
    ///
    /// # Panics
    /// If it is not.
    pub const fn of(v: f64) -> Self {
        assert!(v >= 0.0 && v < 1.0, "a Reserve is in [0, 1)");
        Self(v)
    }

    /// The reserve.
    pub const fn get(self) -> f64 {
        self.0
    }
}

impl TryFrom<f64> for Reserve {
    type Error = &'static str;

    fn try_from(v: f64) -> Result<Self, &'static str> {
        if (0.0..1.0).contains(&v) { Ok(Self(v)) } else { Err("must be in [0, 1)") }
    }
}

impl From<Reserve> for f64 {
    fn from(r: Reserve) -> Self {
        r.0
    }
}

/// Splits the config crate's "`problem` for key `a.b`" into the key and the problem, so that a
/// value refused by its type reads like every other refusal.
pub(super) fn key_and_problem(message: &str) -> Option<(String, String)> {
    let (problem, rest) = message.rsplit_once(" for key `")?;
    let key = rest.strip_suffix('`')?;
    Some((key.to_owned(), problem.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_type_refuses_what_its_rule_refuses() {
        assert_eq!(Count::try_from(0), Err("must be at least 1".to_owned()));
        assert_eq!(Count::try_from(5).map(Count::get), Ok(5));
        assert!(Count::try_from(u64::from(u32::MAX) + 1).is_err());
        assert_eq!(Share::try_from(0.0), Err("must be in (0, 1]"));
        assert_eq!(Share::try_from(1.0).map(Share::get), Ok(1.0));
        assert_eq!(Reserve::try_from(1.0), Err("must be in [0, 1)"));
        assert_eq!(Reserve::try_from(0.0).map(Reserve::get), Ok(0.0));
        assert_eq!(
            key_and_problem("must be at least 1 for key `budget.burst`"),
            Some(("budget.burst".to_owned(), "must be at least 1".to_owned()))
        );
    }
}
