//! The queue for people and scripts: `spool list` text and JSON, human
//! sizes and ages.

use super::*;

/// Human age: `42s`, `5m03s`, `2h10m`, `3d04h`.
pub(crate) fn human_age(ms: i64) -> String {
    let s = (ms / 1000).max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// Human size: `812B`, `1.5KiB`, `12.0MiB`.
pub fn human_size(b: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < U.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b}B")
    } else {
        format!("{v:.1}{}", U[i])
    }
}

/// The table `spool list` prints.
/// `spool list --json`: every recording with its exact size in bytes and
/// age in milliseconds.
pub(crate) fn list_json(entries: &[Entry], now: i64) -> String {
    let rows: Vec<serde_json::Value> = entries
        .iter()
        .map(|e| {
            serde_json::json!({
                "id": e.id,
                "state": e.state.as_str(),
                "size_bytes": e.size,
                "age_ms": (now - e.recorded_at_ms).max(0),
                "recorded_at_ms": e.recorded_at_ms,
                "attempts": e.attempts,
                "upload_offset": e.offset,
                "last_error": e.last_error,
                "delivered_at_ms": e.delivered_at_ms,
            })
        })
        .collect();
    serde_json::to_string_pretty(&rows).unwrap_or_default()
}

pub(crate) fn render_list(entries: &[Entry], now: i64) -> String {
    use std::fmt::Write as _;
    let idw = entries.iter().map(|e| e.id.len()).max().unwrap_or(2).max(2);
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{:<idw$}  {:<9}  {:>7}  {:>8}  {:>8}  LAST ERROR",
        "ID", "STATE", "AGE", "SIZE", "ATTEMPTS"
    );
    for e in entries {
        let mut state = e.state.as_str().to_string();
        if e.state == State::Uploading && e.size > 0 {
            state = format!("{state} {}%", e.offset.min(e.size) * 100 / e.size);
        }
        let err = match (e.state, &e.last_error) {
            (State::Filtered, _) => e.filter_reason.clone().unwrap_or_default(),
            (State::Queued | State::Uploading, Some(err)) if e.next_attempt_ms > now => {
                format!("{err} (next try in {})", human_age(e.next_attempt_ms - now))
            }
            (_, Some(err)) => err.clone(),
            (_, None) => String::new(),
        };
        let err: String = err.chars().filter(|c| !c.is_control()).take(160).collect();
        let _ = writeln!(
            o,
            "{:<idw$}  {:<9}  {:>7}  {:>8}  {:>8}  {}",
            e.id,
            state,
            human_age(now - e.recorded_at_ms),
            human_size(e.size),
            e.attempts,
            err
        );
    }
    o
}
