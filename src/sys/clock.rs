//! The wall clock (only the shell reads it; `pbx-core` is told the time),
//! and a steady wall clock that a step of the wall clock does not move.

use std::time::{SystemTime, UNIX_EPOCH};

use pbx_core::Timestamp;

/// Wall-clock now as a core [`Timestamp`].
pub fn now() -> Timestamp {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp::from_micros(i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// The monotonic clock (never stepped; slewed by NTP as the wall clock
/// is), in microseconds.
fn monotonic_us() -> i64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    t.tv_sec * 1_000_000 + t.tv_nsec / 1000
}

/// The wall clock's lead over the monotonic clock when the steady clock
/// was first read.
static ANCHOR: std::sync::OnceLock<i64> = std::sync::OnceLock::new();

/// Smaller differences are the two clocks read a moment apart, not a step.
const STEP_MIN_US: i64 = 1000;

/// How far the wall clock has been stepped (set by NTP or by hand; a
/// suspend counts as a step forward) since the steady clock began, in
/// microseconds: 0 until it is. Subtracted from a wall-clock stamp (a
/// socket's receive time) it puts the stamp on [`steady_now`]'s clock.
pub(crate) fn wall_step() -> i64 {
    wall_step_at(now())
}

/// [`wall_step`] with the wall clock read just before (`wall`).
fn wall_step_at(wall: Timestamp) -> i64 {
    let lead = wall.as_micros() - monotonic_us();
    let step = lead - *ANCHOR.get_or_init(|| lead);
    if step.abs() < STEP_MIN_US {
        0
    } else {
        step
    }
}

/// The wall clock as it ran when this clock was first read, run on by the
/// monotonic clock: the same as [`now`] until the wall clock is stepped,
/// then off by the steps, but never stepping itself. For the clocks a
/// call's media are placed by (the SIPREC server: a wall clock set back
/// by 2 s would cut 2 s of every call in progress, a step of an hour
/// hold them for the hour).
pub(crate) fn steady_now() -> Timestamp {
    let wall = now();
    steady_of(wall, wall_step_at(wall))
}

/// A wall-clock stamp taken when the wall clock had been stepped by `step`
/// ([`wall_step`]), on [`steady_now`]'s clock.
pub(crate) fn steady_of(wall: Timestamp, step: i64) -> Timestamp {
    wall.add_micros(-step)
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
    fn the_steady_clock_is_the_wall_clock_until_a_step() {
        let a = super::now();
        let s = super::steady_now();
        let b = super::now();
        assert!(a <= s && s <= b, "{a:?} {s:?} {b:?}");
        assert_eq!(super::wall_step(), 0);
        let t = pbx_core::Timestamp::from_micros(1_000_000);
        assert_eq!(super::steady_of(t, 0), t);
        assert_eq!(
            super::steady_of(t, -2_000_000),
            pbx_core::Timestamp::from_micros(3_000_000)
        );
    }

    #[test]
    fn both_clocks_tell_the_same_time() {
        let a = super::now_ms();
        let t = super::now().as_micros() / 1000;
        let b = super::now_ms();
        assert!(a <= t && t <= b, "{a} {t} {b}");
    }
}
