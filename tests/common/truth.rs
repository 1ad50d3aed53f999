//! Measuring a recording against the truth of a generated call.

use pbx_testgen::audio::{best_lag, correlation_at, rms};
use pbx_testgen::CallTruth;

use super::{to_rate, Recording};

/// Alignment of one channel against its truth, measured in 250 ms windows
/// that carry sound: (fraction of windows within `max_lag_ms` with correlation
/// >= `min_corr`, worst |lag| in ms, number of windows).
pub fn windowed(
    rec: &[i16],
    rec_rate: u32,
    truth: &[i16],
    truth_rate: u32,
    max_lag_ms: f64,
    min_corr: f64,
) -> (f64, f64, usize) {
    let t = to_rate(truth, truth_rate, rec_rate);
    let w = rec_rate as usize / 4;
    let search = i64::from(rec_rate) / 10; // +-100 ms
    let (mut good, mut n, mut worst) = (0usize, 0usize, 0f64);
    let mut a = 0;
    while a + w <= t.len().min(rec.len()) {
        let tw = &t[a..a + w];
        if rms(tw) > 300.0 {
            // the recording window is wider so that a lag can be seen
            let lo = a.saturating_sub(search as usize);
            let hi = (a + w + search as usize).min(rec.len());
            let at = (a - lo) as i64;
            let (lag, c) = best_lag_in(&rec[lo..hi], tw, at - search, at + search);
            let lag_ms = (lag - at) as f64 * 1000.0 / f64::from(rec_rate);
            n += 1;
            worst = f64::max(worst, lag_ms.abs());
            if lag_ms.abs() <= max_lag_ms && c >= min_corr {
                good += 1;
            }
        }
        a += w;
    }
    (if n == 0 { 1.0 } else { good as f64 / n as f64 }, worst, n)
}

/// [`best_lag`] over the lags `from..=to` only, coarse every 2nd lag (not
/// every 4th), then refined. A window of noise-like speech has a narrow
/// peak (0.93 one sample off it, 0.45 two samples off): with steps of 4 a
/// coarse lag two samples off lost to a chance match elsewhere, so whether a
/// window passed depended on sub-millisecond arrival offsets. `windowed`
/// searches +-100 ms around the window's place: lags beyond that overlap
/// the truth window only in part (down to a fifth of it), which makes chance
/// matches likelier still.
fn best_lag_in(a: &[i16], b: &[i16], from: i64, to: i64) -> (i64, f64) {
    let mut best = (from, f64::MIN);
    for lag in (from..=to).step_by(2) {
        let c = correlation_at(a, b, lag);
        if c > best.1 {
            best = (lag, c);
        }
    }
    let center = best.0;
    for lag in (center - 2).max(from)..=(center + 2).min(to) {
        let c = correlation_at(a, b, lag);
        if c > best.1 {
            best = (lag, c);
        }
    }
    best
}

/// Each channel matches its own party and not the other one: at least 95 % of
/// the 250 ms windows that carry sound are within `max_lag_ms` of the truth with
/// correlation >= `min_corr`.
pub fn check(rec: &Recording, truth: &CallTruth, max_lag_ms: f64, min_corr: f64) {
    check_share(rec, truth, max_lag_ms, min_corr, 0.95)
}

/// [`check`] with the share of windows that must be in sync given.
pub fn check_share(rec: &Recording, truth: &CallTruth, max_lag_ms: f64, min_corr: f64, share: f64) {
    check_alignment(rec, truth, max_lag_ms, min_corr, share);
    // Duration: the recording covers the truth (within a packet or two).
    let want_ms = truth.expected[0].len() as f64 * 1000.0 / f64::from(truth.rate);
    let got_ms = rec.ch[0].len() as f64 * 1000.0 / f64::from(rec.rate);
    assert!(
        (got_ms - want_ms).abs() <= 60.0,
        "duration {got_ms} ms, expected {want_ms} ms"
    );
    assert_eq!(
        rec.json["duration_ms"]
            .as_f64()
            .map(|d| (d - got_ms).abs() < 2.0),
        Some(true)
    );
}

/// The per-channel part of [`check_share`] (no duration check).
pub fn check_alignment(
    rec: &Recording,
    truth: &CallTruth,
    max_lag_ms: f64,
    min_corr: f64,
    share: f64,
) {
    for ch in 0..2 {
        if rms(&truth.expected[ch]) == 0.0 {
            assert!(rms(&rec.ch[ch]) < 1.0, "channel {ch} should be silent");
            continue;
        }
        let (ok, worst, n) = windowed(
            &rec.ch[ch],
            rec.rate,
            &truth.expected[ch],
            truth.rate,
            max_lag_ms,
            min_corr,
        );
        assert!(
            ok >= share && n > 0,
            "call {} channel {ch}: {:.1} % of {n} windows within {max_lag_ms} ms with corr >= {min_corr} (worst lag {worst} ms)",
            truth.call_id,
            ok * 100.0
        );
        let other = &truth.expected[1 - ch];
        if rms(other) > 0.0 {
            let t = to_rate(other, truth.rate, rec.rate);
            let (_, x) = best_lag(&rec.ch[ch], &t, i64::from(rec.rate) / 10);
            assert!(
                x < 0.2,
                "call {} channel {ch}: cross-talk correlation {x:.3}",
                truth.call_id
            );
        }
    }
}
