//! Engine tests on paused time.
