//! Upstream failures and their classification into the kinds the engine acts on
//! (UPSTREAM.md, "Errors worth telling apart"). The engine branches on [`ErrorKind`], never on
//! message text.

use std::time::Duration;

/// One failed upstream request.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    /// The upstream answered with a non-2xx status.
    #[error("upstream answered {status}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// `Retry-After` / `retry-after-ms`, when given.
        retry_after: Option<Duration>,
    },
    /// No complete answer within `upstream.timeout`.
    #[error("upstream did not answer in time")]
    Timeout,
    /// Connecting, sending or reading failed (refused, reset, truncated).
    #[error("upstream connection failed: {0}")]
    Network(String),
    /// A 2xx answer of an account endpoint whose body is not what the docs describe.
    #[error("upstream answer is malformed: {0}")]
    InvalidBody(String),
}

/// What the engine should do about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// 429: pause the budget for `retry_after`, or a backoff when absent.
    RateLimited {
        /// How long the upstream asked to wait.
        retry_after: Option<Duration>,
    },
    /// 401: the API key is invalid or revoked; stop using it and end its sessions.
    Unauthorized,
    /// 400/403/404/422 and other 4xx: the account or chat cannot be typed to; end that session.
    Rejected,
    /// 503: the account is re-authenticating; pause the account for a while.
    Unavailable,
    /// Other 5xx, timeouts, resets: skip this beat, keep the session.
    Transient,
}

impl UpstreamError {
    /// Classifies the error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Status { status: 429, retry_after } => ErrorKind::RateLimited { retry_after: *retry_after },
            Self::Status { status: 401, .. } => ErrorKind::Unauthorized,
            Self::Status { status: 503, .. } => ErrorKind::Unavailable,
            Self::Status { status, .. } if (400..500).contains(status) && *status != 408 => ErrorKind::Rejected,
            Self::Status { .. } | Self::Timeout | Self::Network(_) | Self::InvalidBody(_) => ErrorKind::Transient,
        }
    }

    /// The `outcome` label of `keeptyping_refires_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Network(_) => "network",
            Self::InvalidBody(_) => "invalid_body",
            Self::Status { status, .. } => match self.kind() {
                ErrorKind::RateLimited { .. } => "rate_limited",
                ErrorKind::Unauthorized => "unauthorized",
                ErrorKind::Rejected => "rejected",
                ErrorKind::Unavailable => "unavailable",
                ErrorKind::Transient if *status == 408 => "timeout",
                ErrorKind::Transient => "server_error",
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(s: u16) -> UpstreamError {
        UpstreamError::Status { status: s, retry_after: None }
    }

    #[test]
    fn statuses_map_to_the_documented_kinds() {
        assert_eq!(status(401).kind(), ErrorKind::Unauthorized);
        for s in [400, 403, 404, 422] {
            assert_eq!(status(s).kind(), ErrorKind::Rejected, "{s}");
        }
        assert_eq!(status(503).kind(), ErrorKind::Unavailable);
        for s in [500, 502, 504, 408] {
            assert_eq!(status(s).kind(), ErrorKind::Transient, "{s}");
        }
        let limited = UpstreamError::Status { status: 429, retry_after: Some(Duration::from_secs(5)) };
        assert_eq!(limited.kind(), ErrorKind::RateLimited { retry_after: Some(Duration::from_secs(5)) });
        assert_eq!(UpstreamError::Timeout.kind(), ErrorKind::Transient);
    }

    #[test]
    fn labels_are_the_documented_outcomes() {
        assert_eq!(status(429).label(), "rate_limited");
        assert_eq!(status(401).label(), "unauthorized");
        assert_eq!(status(404).label(), "rejected");
        assert_eq!(status(503).label(), "unavailable");
        assert_eq!(status(500).label(), "server_error");
        assert_eq!(UpstreamError::Timeout.label(), "timeout");
        assert_eq!(UpstreamError::Network("reset".into()).label(), "network");
    }
}
