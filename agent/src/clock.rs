//! The wall clock as the protocol counts it.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch; 0 before 1970 (a board without a clock, whose every
/// command the issue-time check then refuses, and whose samples say so).
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
