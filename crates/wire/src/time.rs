//! Wall-clock time as Unix timestamps, the form records and OpenAI's
//! `created` fields use. A clock set before 1970 reads as 0.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since 1970-01-01 UTC.
pub fn unix_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Seconds since 1970-01-01 UTC (OpenAI's `created`).
pub fn unix_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_time_is_now_in_both_units() {
        let (secs, ms) = (unix_secs(), unix_ms());
        // After 2024-01-01 and in step with each other.
        assert!(secs > 1_704_067_200, "{secs}");
        assert!((ms / 1000 - secs).abs() <= 1, "{ms} ms vs {secs} s");
    }
}
