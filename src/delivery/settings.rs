//! Delivery settings from the config: filters (what is uploaded), the
//! upload window, parallelism, retention.

use super::*;

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
pub(crate) fn glob_match(pattern: &str, s: &str) -> bool {
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

pub use crate::config::UploadWindow;

/// Minutes since local midnight (the system time zone).
pub fn local_minute_of_day(t: SystemTime) -> u16 {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as libc::time_t)
        .unwrap_or(0);
    // SAFETY: localtime_r writes into the zeroed struct we own.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let ok = unsafe { !libc::localtime_r(&secs, &mut tm).is_null() };
    if !ok {
        return ((secs / 60) % 1440) as u16;
    }
    (tm.tm_hour.clamp(0, 23) * 60 + tm.tm_min.clamp(0, 59)) as u16
}

/// Everything the delivery task runs with. [`DeliverySettings::from_config`]
/// fills it from [`Config`]; keys the config does not have yet take the
/// defaults documented on each field.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliverySettings {
    /// `spool.dir`
    pub spool_dir: PathBuf,
    /// `spool.retention`: how long delivered recordings stay.
    pub retention: Duration,
    /// `None` when `cloud.url` is empty: recordings are adopted, filtered and
    /// queued, nothing is sent.
    pub cloud: Option<CloudSettings>,
    /// `cloud.max_parallel`
    pub max_parallel: u32,
    /// `cloud.bandwidth_limit` (bytes/s over all uploads; 0 = none). Default 0.
    pub bandwidth_limit: u64,
    /// `cloud.upload_window` (`"HH:MM-HH:MM"`, local time; empty = always).
    pub upload_window: Option<UploadWindow>,
    /// `[filter]` section. Default: nothing filtered.
    pub filters: Filters,
    /// `filter.keep_filtered`: keep filtered recordings (state `filtered`)
    /// instead of deleting them. Default false.
    pub keep_filtered: bool,
    /// How often the spool directory is scanned. Default 1 s.
    pub scan_interval: Duration,
    /// Backoff base and cap (CONTRACT §4: 1 s, 5 min).
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// How often a paused delivery probes (CONTRACT §4: 5 min).
    pub pause_retry: Duration,
    /// How long shutdown waits for running uploads. Default 5 s.
    pub shutdown_grace: Duration,
    /// Encryption at rest: the keys that open sealed spool files (JSON read
    /// for the filters, audio decrypted on the fly while uploading).
    pub keys: Option<std::sync::Arc<crate::spoolfile::Keyring>>,
}

impl DeliverySettings {
    /// Defaults for everything the config does not say.
    pub fn new(spool_dir: &Path) -> DeliverySettings {
        DeliverySettings {
            spool_dir: spool_dir.to_path_buf(),
            retention: Duration::ZERO,
            cloud: None,
            max_parallel: 2,
            bandwidth_limit: 0,
            upload_window: None,
            filters: Filters::default(),
            keep_filtered: false,
            scan_interval: Duration::from_secs(1),
            backoff_base: policy::BACKOFF_BASE,
            backoff_cap: policy::BACKOFF_CAP,
            pause_retry: policy::PAUSE_RETRY,
            shutdown_grace: Duration::from_secs(5),
            keys: None,
        }
    }

    /// From the daemon's configuration.
    pub fn from_config(cfg: &Config) -> DeliverySettings {
        let c = &cfg.cloud;
        let cloud = c.is_configured().then(|| CloudSettings {
            token_file: c.token_file.clone(),
            ca_file: c.ca_file.clone(),
            client_cert: c.client_cert.clone(),
            client_key: c.client_key.clone(),
            proxy: (!c.proxy.is_empty()).then(|| c.proxy.clone()),
            chunk_size: c.chunk_size,
            audio_format: c.audio_format,
            ..CloudSettings::new(&c.url, c.protocol)
        });
        DeliverySettings {
            retention: cfg.spool.retention,
            cloud,
            max_parallel: c.max_parallel.max(1),
            bandwidth_limit: c.bandwidth_limit,
            upload_window: c.upload_window,
            filters: Filters::from_config(cfg),
            keep_filtered: cfg.filter.keep_filtered,
            keys: cfg.spool.keys.clone(),
            ..DeliverySettings::new(&cfg.spool.dir)
        }
    }
}
