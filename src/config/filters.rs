//! `[filter]`: which recordings may leave the machine (delivery applies
//! it to finished recordings, the live stream to calls as they start).

use std::time::Duration;

use serde_json::Value;

use super::Config;

/// Local filters: recordings that fail them never leave the machine.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filters {
    /// `filter.min_duration`: shorter recordings are filtered.
    pub min_duration: Duration,
    /// `filter.include_numbers`: when not empty, the caller's or callee's
    /// number must match one of these patterns (`*` any run, `?` one char).
    pub include_numbers: Vec<String>,
    /// `filter.exclude_numbers`: a caller or callee number matching one of
    /// these filters the recording.
    pub exclude_numbers: Vec<String>,
    /// `filter.directions`: when not empty, only these `direction` values
    /// (inbound, outbound, internal, unknown) are delivered.
    pub directions: Vec<String>,
}

/// `*` matches any run of characters, `?` exactly one; everything else
/// literally. Iterative, linear in practice, no recursion.
pub fn glob_match(pattern: &str, s: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = s.chars().collect();
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(c) if *c == '?' || Some(c) == t.get(ti) => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p.get(pi..)
        .is_some_and(|rest| rest.iter().all(|c| *c == '*'))
}

impl Filters {
    /// `[filter]` of `cfg`.
    pub fn from_config(cfg: &Config) -> Filters {
        Filters {
            min_duration: cfg.filter.min_duration,
            include_numbers: cfg.filter.include_numbers.clone(),
            exclude_numbers: cfg.filter.exclude_numbers.clone(),
            directions: cfg.filter.directions.clone(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.min_duration.is_zero()
            && self.include_numbers.is_empty()
            && self.exclude_numbers.is_empty()
            && self.directions.is_empty()
    }

    /// `Some(reason)` when a call whose metadata so far is `start` (CONTRACT
    /// §3 fields as known when its recording begins) will be filtered out
    /// whatever happens later: a number filter on its numbers, or its
    /// direction when already known. The live stream asks before it sends
    /// anything: audio the filters keep on the machine must not leave it
    /// while the call runs either.
    pub fn check_start(&self, start: &Value) -> Option<String> {
        let known = Filters {
            min_duration: Duration::ZERO,
            directions: if start["direction"].is_string() {
                self.directions.clone()
            } else {
                Vec::new()
            },
            ..self.clone()
        };
        known.check(start)
    }

    /// `Some(reason)` when the recording JSON `doc` is filtered out.
    pub fn check(&self, doc: &Value) -> Option<String> {
        if !self.min_duration.is_zero() {
            let ms = doc["duration_ms"].as_i64().unwrap_or(0);
            if (ms.max(0) as u128) < self.min_duration.as_millis() {
                return Some(format!(
                    "shorter than filter.min_duration ({ms} ms < {} ms)",
                    self.min_duration.as_millis()
                ));
            }
        }
        let numbers: Vec<&str> = ["from", "to"]
            .iter()
            .filter_map(|k| doc[*k]["number"].as_str())
            .filter(|n| !n.is_empty())
            .collect();
        if !self.include_numbers.is_empty()
            && !numbers
                .iter()
                .any(|n| self.include_numbers.iter().any(|p| glob_match(p, n)))
        {
            return Some("no number matches filter.include_numbers".into());
        }
        if let Some(p) = self
            .exclude_numbers
            .iter()
            .find(|p| numbers.iter().any(|n| glob_match(p, n)))
        {
            return Some(format!("a number matches filter.exclude_numbers {p:?}"));
        }
        if !self.directions.is_empty() {
            let d = doc["direction"].as_str().unwrap_or("unknown");
            if !self.directions.iter().any(|x| x.eq_ignore_ascii_case(d)) {
                return Some(format!("direction {d} not in filter.directions"));
            }
        }
        None
    }
}
