//! The wall clock (only the shell reads it; `pbx-core` is told the time).

use std::time::{SystemTime, UNIX_EPOCH};

use pbx_core::Timestamp;

/// Wall-clock now as a core [`Timestamp`].
pub fn now() -> Timestamp {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp::from_micros(i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn both_clocks_tell_the_same_time() {
        let a = super::now_ms();
        let t = super::now().as_micros() / 1000;
        let b = super::now_ms();
        assert!(a <= t && t <= b, "{a} {t} {b}");
    }
}
