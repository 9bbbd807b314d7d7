//! The process's open-file limit, and the socket budget it leaves for typing calls.
//!
//! Over HTTP/1.1 every typing call in flight holds a connection, so `engine.max_in_flight` is a
//! socket budget. Many systems start services with a soft `RLIMIT_NOFILE` of 1024 and a far
//! higher hard limit; a process may raise its soft limit up to the hard one by itself, as Go's
//! runtime does for every program. keeptyping does so at start, then keeps the in-flight
//! ceiling below what the limit leaves once both listeners are full and a reserve is kept for
//! everything else (Redis, the accounts client, log files, the runtime).

/// Descriptors kept besides the listeners' connections and the typing calls.
pub const RESERVED_FILES: u64 = 128;

/// Raises the soft open-file limit to the hard one and returns the soft limit in force, or
/// `None` where it cannot be read (then nothing is clamped).
pub fn raise_open_file_limit() -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(soft) => Some(soft),
        Err(e) => {
            tracing::warn!(error = %e, "could not read or raise the open-file limit");
            rlimit::Resource::NOFILE.get().ok().map(|(soft, _)| soft)
        }
    }
}

/// The in-flight ceiling that fits `open_files`: `configured`, or less when the listeners'
/// `connections` plus [`RESERVED_FILES`] would leave fewer descriptors than that (at least 1).
#[must_use]
pub fn socket_budget(configured: usize, connections: usize, open_files: Option<u64>) -> usize {
    let Some(open_files) = open_files else { return configured };
    let used = u64::try_from(connections).unwrap_or(u64::MAX).saturating_add(RESERVED_FILES);
    let left = usize::try_from(open_files.saturating_sub(used)).unwrap_or(usize::MAX);
    configured.min(left).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_the_configured_ceiling_when_the_limit_allows_it() {
        assert_eq!(socket_budget(16_384, 1088, Some(1_048_576)), 16_384);
        assert_eq!(socket_budget(16_384, 1088, None), 16_384);
    }

    #[test]
    fn the_budget_shrinks_to_what_the_open_file_limit_leaves() {
        // A soft limit of 4096 that could not be raised: 4096 - 1088 - 128.
        assert_eq!(socket_budget(16_384, 1088, Some(4096)), 2880);
        assert_eq!(socket_budget(16_384, 1088, Some(1024)), 1);
    }

    #[test]
    fn raising_the_limit_leaves_it_at_the_hard_limit() {
        let soft = raise_open_file_limit().expect("the open-file limit of this process");
        let (now, hard) = rlimit::Resource::NOFILE.get().expect("getrlimit");
        assert_eq!(soft, now);
        assert!(now == hard || cfg!(target_os = "macos"), "soft {now} below hard {hard}");
    }
}
