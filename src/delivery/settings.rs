//! Delivery settings from the config: filters (what is uploaded), the
//! upload window, parallelism, retention.

use super::*;

pub use crate::config::filters::{glob_match, Filters};

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
