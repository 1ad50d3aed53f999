//! The daemon's configuration (CONTRACT §2): a TOML file, then environment
//! overrides, checked into one typed [`Config`].
//!
//! In: an optional file path (default [`DEFAULT_PATH`]; without that file the
//! built-in defaults, which work on a bare machine) and the environment
//! (`PBX_EDGE__SECTION__KEY=value`, nested sections as
//! `PBX_EDGE__SOURCES__SIPREC__LISTEN`; a value is read as a TOML value when it
//! parses as one, else as a plain string). Out: a [`Config`] whose every field is
//! already typed and range-checked, or [`ConfigErrors`] holding *every* problem
//! found, each as `FILE:LINE: key.path: what is wrong` (for an environment
//! override `PBX_EDGE__VAR: key.path: what is wrong`). Unknown sections and keys
//! are errors, never silently ignored. A missing key takes its default.
//!
//! Why the `toml` crate and not the `config` crate: `config` merges sources into
//! an untyped map and forgets where each value came from, so it cannot name the
//! line of a bad value, and its serde-driven deserialisation stops at the first
//! error. `toml`'s [`toml::de::DeTable::parse_recoverable`] keeps the byte span
//! of every key and value (and recovers from syntax errors to report more than
//! one), which is exactly what a `FILE:LINE: key.path` report needs. The layering
//! `config` would add (file, then environment) is a few dozen lines here: both
//! are merged into one span-carrying tree, each node remembering its origin
//! (file line or variable name), and that tree is walked once against the
//! schema, collecting all errors.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use pbx_core::call::{EngineConfig, SampleRatePolicy};
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::units::{parse_duration, parse_size};

mod values;
pub use values::*;

/// Where the daemon looks for its configuration when no `--config` is given.
pub const DEFAULT_PATH: &str = "/etc/pbx-edge/pbx-edge.toml";
/// Prefix of the environment variables that override config keys.
pub const ENV_PREFIX: &str = "PBX_EDGE__";
/// Config files larger than this are refused (they are a few KiB).
pub const MAX_FILE_SIZE: u64 = 1 << 20;

// ---------------------------------------------------------------------------
// The typed configuration
// ---------------------------------------------------------------------------

/// The whole configuration, every value checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub agent: AgentConfig,
    pub spool: SpoolConfig,
    pub health: HealthConfig,
    pub recording: RecordingConfig,
    pub cloud: CloudConfig,
    pub sources: SourcesConfig,
    pub filter: FilterConfig,
    pub log: LogConfig,
}

/// `[agent]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    /// Names this agent in recordings and uploads. Default: the host name.
    pub id: String,
}

/// `[spool]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolConfig {
    /// Default: `$STATE_DIRECTORY` (systemd `StateDirectory=`) if set, else `./var`.
    pub dir: PathBuf,
    /// Bytes; above it health is degraded (nothing spooled is ever deleted for room).
    pub max_size: u64,
    /// How long a delivered recording stays on disk (zero: removed once delivered).
    pub retention: Duration,
}

/// `[health]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    /// HTTP listener for /healthz /readyz /metrics /status.
    pub listen: SocketAddr,
}

/// `recording.sample_rate`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleRate {
    /// 8000 Hz for narrowband calls, 16000 Hz if a leg is wideband.
    Auto,
    Hz8000,
    Hz16000,
}

impl SampleRate {
    /// The engine's form of this setting.
    pub fn policy(self) -> SampleRatePolicy {
        match self {
            SampleRate::Auto => SampleRatePolicy::Auto,
            SampleRate::Hz8000 => SampleRatePolicy::Fixed(8000),
            SampleRate::Hz16000 => SampleRatePolicy::Fixed(16000),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SampleRate::Auto => "auto",
            SampleRate::Hz8000 => "8000",
            SampleRate::Hz16000 => "16000",
        }
    }
}

impl From<SampleRate> for SampleRatePolicy {
    fn from(r: SampleRate) -> Self {
        r.policy()
    }
}

/// `[recording]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordingConfig {
    pub sample_rate: SampleRate,
    /// Calls shorter than this are not kept.
    pub min_duration: Duration,
    /// A call whose media stopped this long ends. At least 1 s.
    pub rtp_timeout: Duration,
    /// Reorder / jitter window: audio is held this long before it is written. At most 10 s.
    pub jitter: Duration,
}

impl RecordingConfig {
    /// An engine configuration carrying these settings (the rest default).
    pub fn engine_config(&self) -> EngineConfig {
        EngineConfig {
            sample_rate: self.sample_rate.policy(),
            jitter_ms: u32::try_from(self.jitter.as_millis()).unwrap_or(u32::MAX),
            rtp_timeout_us: i64::try_from(self.rtp_timeout.as_micros()).unwrap_or(i64::MAX),
            ..EngineConfig::default()
        }
    }
}

/// `cloud.protocol` (CONTRACT §4)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloudProtocol {
    Tus,
    Multipart,
}

impl CloudProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            CloudProtocol::Tus => "tus",
            CloudProtocol::Multipart => "multipart",
        }
    }
}

/// `[cloud]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudConfig {
    /// Base URL, without a trailing `/`; empty: record and spool only. Checked:
    /// https, or http for loopback hosts only; no credentials, query or fragment.
    pub url: String,
    pub protocol: CloudProtocol,
    /// File holding the bearer token; empty path: none given.
    pub token_file: PathBuf,
    /// Uploads at the same time, 1..=64.
    pub max_parallel: u32,
    /// Extra CA certificates (PEM) trusted besides the system roots.
    pub ca_file: Option<PathBuf>,
    /// tus PATCH body size in bytes, 64 KiB ..= 1 GiB.
    pub chunk_size: u64,
    /// Upload bandwidth limit over all uploads, bytes/s; 0 = none.
    pub bandwidth_limit: u64,
    /// Daily upload window `"HH:MM-HH:MM"` (local time); `None` = always.
    pub upload_window: Option<UploadWindow>,
    /// Client certificate and key (PEM) for mutual TLS; both or neither.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// HTTPS proxy URL; empty: `HTTPS_PROXY` from the environment, if set.
    pub proxy: String,
}

impl CloudConfig {
    /// Whether a cloud is configured at all (`url` not empty).
    pub fn is_configured(&self) -> bool {
        !self.url.is_empty()
    }
}

/// `[sources.*]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourcesConfig {
    pub siprec: SiprecConfig,
    pub sniff: SniffConfig,
    pub folder: FolderConfig,
}

/// `[sources.siprec]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiprecConfig {
    pub enabled: bool,
    /// UDP and TCP.
    pub listen: SocketAddr,
    /// RTP ports handed out to recorded streams; at least 1024, holds at least
    /// one RTP/RTCP pair, does not contain the `listen` port.
    pub rtp_ports: RangeInclusive<u16>,
    /// Networks allowed to send INVITEs (host bits cleared); empty = all.
    pub allow: Vec<IpNet>,
    /// More concurrent calls than this get 503. 1..=1_000_000.
    pub max_calls: u32,
    /// SIP over TLS (TCP) on this address; `None`: off.
    pub tls_listen: Option<SocketAddr>,
    /// PEM certificate chain and private key for TLS (both set with
    /// `tls_listen`).
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificates: when set, TLS clients must present a certificate
    /// issued by one of them (mutual TLS).
    pub tls_client_ca: Option<PathBuf>,
    /// A SIP connection (TCP or TLS) without a byte for this long is closed,
    /// unless a call set up over it is in progress. 1 s ..= 1 day.
    pub tcp_idle_timeout: Duration,
    /// A SIP message over TCP/TLS not complete this long after its first
    /// byte (a sender that trickles) gets its connection closed. 1 s ..= 10 min.
    pub tcp_message_timeout: Duration,
}

impl SiprecConfig {
    /// Whether `addr` may send INVITEs (`allow` empty: everyone).
    pub fn allows(&self, addr: IpAddr) -> bool {
        let addr = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(addr),
            v4 => v4,
        };
        self.allow.is_empty() || self.allow.iter().any(|n| n.contains(&addr))
    }
}

/// `[sources.sniff]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SniffConfig {
    pub enabled: bool,
    /// Interface name (at most 15 bytes) or `any`.
    pub interface: String,
    /// Capture filter (pcap syntax, as for tcpdump) applied in the kernel;
    /// `None`: every packet. Checked by compiling it with libpcap.
    pub filter: Option<String>,
}

/// `[sources.folder]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FolderConfig {
    pub enabled: bool,
    /// Directory of the PBX's own recordings (not empty when enabled).
    pub path: PathBuf,
    /// Asterisk Master.csv to take call details from.
    pub cdr_csv: Option<PathBuf>,
    /// A file counts as finished after this long unchanged (with inotify:
    /// after being closed, then this long unchanged).
    pub settle: Duration,
    /// How changes in `path` are noticed.
    pub watch: FolderWatch,
    /// FreePBX CDR database: a file holding `mysql://user:password@host/db`.
    pub cdr_db_url_file: Option<PathBuf>,
    /// The CDR table in that database.
    pub cdr_db_table: String,
    /// Master.csv columns in file order (Asterisk's default unless set).
    pub cdr_csv_columns: CsvColumns,
    /// How long a settled recording waits for its CDR row.
    pub cdr_wait: Duration,
    /// The PBX's time zone: `None` = this machine's (local), else seconds east of UTC.
    pub utc_offset: Option<i64>,
    /// Files older than this are ignored; zero: none ignored.
    pub max_age: Duration,
    /// File name regexes (named groups) tried before the FreePBX naming.
    pub name_patterns: Vec<String>,
    /// Whether `.raw`/`.sln`/`.sln16` files are interleaved stereo
    /// (MixMonitor `D`): detected from the samples, or said.
    pub raw_stereo: RawStereo,
    /// The caller's leg: `in` (rx, default) or `out` (tx): swaps the channels.
    pub caller_leg_out: bool,
    /// Direction rules (dcontext prefixes).
    pub inbound_contexts: Vec<String>,
    pub outbound_contexts: Vec<String>,
    pub internal_contexts: Vec<String>,
    /// What happens to the PBX's files once the recording is delivered.
    pub after_delivery: AfterDelivery,
    /// Where `after_delivery = "move"` puts them.
    pub move_to: Option<PathBuf>,
}

/// `sources.folder.watch`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FolderWatch {
    /// inotify, unless `path` is on a network file system (NFS, SMB/CIFS,
    /// FUSE, ...), whose writes made on other hosts raise no inotify event.
    Auto,
    /// inotify (polling only if inotify cannot be used).
    Inotify,
    /// Polling every second (directory mtimes, a full listing every 5 min).
    Poll,
}

/// `sources.folder.raw_stereo`: the layout of headerless `.raw`/`.sln`/
/// `.sln16` recordings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawStereo {
    /// `"auto"`: interleaved stereo when the samples show it (adjacent
    /// samples unlike each other, every other one alike), else mono.
    Auto,
    /// `true`: always interleaved stereo (MixMonitor `D`).
    Stereo,
    /// `false`: always mono.
    Mono,
}

/// `sources.folder.after_delivery`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterDelivery {
    Leave,
    Move,
    Delete,
}

/// `log.format`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// journald when stderr is connected to the journal (`JOURNAL_STREAM` set), else text.
    Auto,
    Journald,
    Text,
    Json,
}

impl LogFormat {
    /// The concrete format: `Auto` becomes `Journald` when `journal_stream` (the
    /// `JOURNAL_STREAM` variable is set), else `Text`.
    pub fn resolve(self, journal_stream: bool) -> LogFormat {
        match self {
            LogFormat::Auto if journal_stream => LogFormat::Journald,
            LogFormat::Auto => LogFormat::Text,
            f => f,
        }
    }
}

/// `[filter]`: local filters applied before anything leaves the machine.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FilterConfig {
    /// Recordings shorter than this are not delivered.
    pub min_duration: Duration,
    /// When not empty, the caller's or callee's number must match one of
    /// these patterns (`*` any run, `?` one character).
    pub include_numbers: Vec<String>,
    /// A caller or callee number matching one of these filters the recording.
    pub exclude_numbers: Vec<String>,
    /// When not empty, only these directions are delivered.
    pub directions: Vec<String>,
    /// Keep filtered recordings on disk (state `filtered`) instead of deleting them.
    pub keep_filtered: bool,
}

/// `[log]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    pub format: LogFormat,
    /// Whether phone numbers may appear in log lines (default: they are masked).
    pub log_numbers: bool,
}

impl Default for Config {
    /// Built-in defaults; `agent.id` is the host name and `spool.dir` follows
    /// `$STATE_DIRECTORY` from the process environment.
    fn default() -> Self {
        Config::defaults(std::env::var("STATE_DIRECTORY").ok().as_deref())
    }
}

impl Config {
    /// Built-in defaults with `spool.dir` taken from a systemd `STATE_DIRECTORY`
    /// value (first of its `:`-separated paths) when given, else `./var`.
    pub fn defaults(state_directory: Option<&str>) -> Config {
        let dir = state_directory
            .and_then(|s| s.split(':').next())
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("./var"));
        Config {
            agent: AgentConfig {
                id: crate::sys::hostname(),
            },
            spool: SpoolConfig {
                dir,
                max_size: 20 << 30,
                retention: Duration::ZERO,
            },
            health: HealthConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 9466)),
            },
            recording: RecordingConfig {
                sample_rate: SampleRate::Auto,
                min_duration: Duration::ZERO,
                rtp_timeout: Duration::from_secs(30),
                jitter: Duration::from_millis(500),
            },
            cloud: CloudConfig {
                url: String::new(),
                protocol: CloudProtocol::Tus,
                token_file: PathBuf::new(),
                max_parallel: 2,
                ca_file: None,
                chunk_size: 4 << 20,
                bandwidth_limit: 0,
                upload_window: None,
                client_cert: None,
                client_key: None,
                proxy: String::new(),
            },
            sources: SourcesConfig {
                siprec: SiprecConfig {
                    enabled: true,
                    listen: SocketAddr::from(([127, 0, 0, 1], 5090)),
                    rtp_ports: 20000..=29999,
                    allow: Vec::new(),
                    max_calls: 1000,
                    tls_listen: None,
                    tls_cert: None,
                    tls_key: None,
                    tls_client_ca: None,
                    tcp_idle_timeout: Duration::from_secs(120),
                    tcp_message_timeout: Duration::from_secs(10),
                },
                sniff: SniffConfig {
                    enabled: false,
                    interface: "any".into(),
                    filter: None,
                },
                folder: FolderConfig {
                    enabled: false,
                    path: PathBuf::from("/var/spool/asterisk/monitor"),
                    cdr_csv: None,
                    settle: Duration::from_secs(5),
                    watch: FolderWatch::Auto,
                    cdr_db_url_file: None,
                    cdr_db_table: "cdr".into(),
                    cdr_csv_columns: CsvColumns::default(),
                    cdr_wait: Duration::from_secs(60),
                    utc_offset: None,
                    max_age: Duration::ZERO,
                    name_patterns: Vec::new(),
                    raw_stereo: RawStereo::Auto,
                    caller_leg_out: false,
                    inbound_contexts: strings(INBOUND_CONTEXTS),
                    outbound_contexts: strings(OUTBOUND_CONTEXTS),
                    internal_contexts: strings(INTERNAL_CONTEXTS),
                    after_delivery: AfterDelivery::Leave,
                    move_to: None,
                },
            },
            filter: FilterConfig::default(),
            log: LogConfig {
                format: LogFormat::Auto,
                log_numbers: false,
            },
        }
    }

    /// The file [`Config::load`] reads: `explicit` if given, else
    /// [`DEFAULT_PATH`] if it exists, else none (built-in defaults).
    pub fn resolve_path(explicit: Option<&Path>) -> Option<PathBuf> {
        resolve_path_with(explicit, Path::new(DEFAULT_PATH))
    }

    /// Load the configuration the daemon would run with: the file (see
    /// [`Config::resolve_path`]; an explicit path must exist), then the
    /// `PBX_EDGE__*` variables of the process environment.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigErrors> {
        let mut errors = Vec::new();
        let mut env = Vec::new();
        for (k, v) in std::env::vars_os() {
            let Some(k) = k.to_str() else { continue };
            if k == "STATE_DIRECTORY" || k.starts_with(ENV_PREFIX) {
                match v.into_string() {
                    Ok(v) => env.push((k.to_string(), v)),
                    Err(_) => errors.push(ConfigError::Invalid {
                        origin: Origin::Env { var: k.to_string() },
                        key: env_key_path(k),
                        message: "value is not valid UTF-8".into(),
                    }),
                }
            }
        }
        let res = load_inner(path, Path::new(DEFAULT_PATH), env);
        match res {
            Ok(c) if errors.is_empty() => Ok(c),
            Ok(_) => Err(ConfigErrors { errors }),
            Err(mut e) => {
                e.errors.extend(errors);
                Err(e)
            }
        }
    }

    /// [`Config::load`] with the given environment instead of the process's
    /// (only `PBX_EDGE__*` and `STATE_DIRECTORY` entries are looked at).
    pub fn load_from_env_map<I, K, V>(path: Option<&Path>, env: I) -> Result<Config, ConfigErrors>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let env = env.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        load_inner(path, Path::new(DEFAULT_PATH), env)
    }

    /// Parse config text (named `name` in errors) plus environment overrides,
    /// without touching the file system or the process environment.
    pub fn from_toml_str<I, K, V>(name: &str, text: &str, env: I) -> Result<Config, ConfigErrors>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let env: Vec<(String, String)> =
            env.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        let mut errors = Vec::new();
        let root = parse_file(Path::new(name), text, &mut errors);
        build(root, env, errors)
    }

    /// Every key the loader knows, as dotted paths (`sources.siprec.listen`),
    /// in schema order.
    pub fn known_keys() -> Vec<String> {
        let root = Node {
            origin: Origin::Default,
            env_text: None,
            kind: Kind::Table(Table::new()),
        };
        let mut keys = Vec::new();
        check(
            &root,
            &mut Config::defaults(None),
            &mut Vec::new(),
            &mut keys,
        );
        keys
    }

    /// One line for people: which sources, where the spool is, which cloud.
    pub fn summary(&self) -> String {
        let s = &self.sources;
        let mut sources = Vec::new();
        if s.siprec.enabled {
            sources.push(format!("siprec {}", s.siprec.listen));
        }
        if s.sniff.enabled {
            sources.push(format!("sniff {}", s.sniff.interface));
        }
        if s.folder.enabled {
            sources.push(format!("folder {}", s.folder.path.display()));
        }
        let sources = if sources.is_empty() {
            "none".to_string()
        } else {
            sources.join(", ")
        };
        let cloud = if self.cloud.is_configured() {
            format!("{} ({})", self.cloud.url, self.cloud.protocol.as_str())
        } else {
            "not configured".to_string()
        };
        format!(
            "sources: {sources}; spool {}; cloud: {cloud}",
            self.spool.dir.display()
        )
    }

    /// What a reload from `self` to `new` cannot apply in place: the names of
    /// the parts whose settings changed and that must be restarted —
    /// `"sources.siprec"`, `"sources.sniff"`, `"sources.folder"` (any key of
    /// that source), `"health.listen"`, `"spool.dir"`, `"log.format"`. Every
    /// other key (agent, recording, cloud, spool limits, log_numbers) can be
    /// taken over by the running daemon for new calls and uploads.
    /// Files holding secrets (`cloud.token_file`, `cloud.client_key`,
    /// `sources.siprec.tls_key`, `sources.folder.cdr_db_url_file`) whose
    /// mode is more open than 0640 (writable by the group, or any access
    /// for others): one warning each, naming the key, the file and its mode.
    /// Shown by `check-config` and logged at start and on SIGHUP; not an
    /// error (the daemon still runs). Files that cannot be read are left to
    /// the key's own check.
    pub fn secret_file_warnings(&self) -> Vec<String> {
        let mut files: Vec<(&str, &Path)> = Vec::new();
        if !self.cloud.token_file.as_os_str().is_empty() {
            files.push(("cloud.token_file", &self.cloud.token_file));
        }
        if let Some(p) = &self.cloud.client_key {
            files.push(("cloud.client_key", p));
        }
        if let Some(p) = &self.sources.siprec.tls_key {
            files.push(("sources.siprec.tls_key", p));
        }
        if let Some(p) = &self.sources.folder.cdr_db_url_file {
            files.push(("sources.folder.cdr_db_url_file", p));
        }
        files
            .into_iter()
            .filter_map(|(key, path)| secret_file_warning(key, path))
            .collect()
    }

    pub fn diff_restart_needed(&self, new: &Config) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.sources.siprec != new.sources.siprec {
            out.push("sources.siprec");
        }
        if self.sources.sniff != new.sources.sniff {
            out.push("sources.sniff");
        }
        if self.sources.folder != new.sources.folder {
            out.push("sources.folder");
        }
        if self.health.listen != new.health.listen {
            out.push("health.listen");
        }
        if self.spool.dir != new.spool.dir {
            out.push("spool.dir");
        }
        if self.log.format != new.log.format {
            out.push("log.format");
        }
        out
    }
}

/// The warning for one secret file, if its mode is more open than 0640.
pub fn secret_file_warning(key: &str, path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    if mode & 0o037 == 0 {
        return None;
    }
    let mut what = Vec::new();
    if mode & 0o004 != 0 {
        what.push("readable by others");
    }
    if mode & 0o002 != 0 {
        what.push("writable by others");
    }
    if mode & 0o020 != 0 {
        what.push("writable by its group");
    }
    if what.is_empty() {
        what.push("more open than 0640");
    }
    Some(format!(
        "{key}: {} is {} (mode {mode:04o}) and holds a secret: make it 0600 or 0640 (chmod 600 {})",
        path.display(),
        what.join(" and "),
        path.display()
    ))
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Where a value (or a problem) comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Origin {
    /// A line (1-based) of a config file.
    File { path: PathBuf, line: usize },
    /// An environment variable.
    Env { var: String },
    /// A built-in default (only in problems between two keys).
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { path, line } => write!(f, "{}:{line}", path.display()),
            Origin::Env { var } => f.write_str(var),
            Origin::Default => f.write_str("(built-in default)"),
        }
    }
}

impl Origin {
    fn sort_key(&self) -> (u8, usize, &str) {
        match self {
            Origin::File { line, .. } => (0, *line, ""),
            Origin::Env { var } => (1, 0, var),
            Origin::Default => (2, 0, ""),
        }
    }
}

/// One problem with the configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file is missing, unreadable, too large or not UTF-8.
    #[error("{}: {message}", path.display())]
    Read { path: PathBuf, message: String },
    /// The file is not valid TOML there. `key` is the best guess of the key
    /// being written (the table header plus the key on that line) or `toml`.
    #[error("{origin}: {key}: {message}")]
    Syntax {
        origin: Origin,
        key: String,
        message: String,
    },
    /// A value, key or section the configuration does not accept.
    #[error("{origin}: {key}: {message}")]
    Invalid {
        origin: Origin,
        key: String,
        message: String,
    },
}

impl ConfigError {
    fn origin(&self) -> Option<&Origin> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Syntax { origin, .. } | ConfigError::Invalid { origin, .. } => {
                Some(origin)
            }
        }
    }
}

/// Every problem found, in file order, then environment variables. Displays
/// as one problem per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors {
    pub errors: Vec<ConfigError>,
}

impl ConfigErrors {
    /// Each problem as one line of text.
    pub fn lines(&self) -> Vec<String> {
        self.errors.iter().map(|e| e.to_string()).collect()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

// ---------------------------------------------------------------------------
// Loading: file and environment into one tree of values with origins
// ---------------------------------------------------------------------------

fn resolve_path_with(explicit: Option<&Path>, default_path: &Path) -> Option<PathBuf> {
    match explicit {
        Some(p) => Some(p.to_path_buf()),
        None if default_path.exists() => Some(default_path.to_path_buf()),
        None => None,
    }
}

fn load_inner(
    path: Option<&Path>,
    default_path: &Path,
    env: Vec<(String, String)>,
) -> Result<Config, ConfigErrors> {
    let mut errors = Vec::new();
    let root = match resolve_path_with(path, default_path) {
        None => None,
        Some(p) => match read_file(&p) {
            Ok(text) => parse_file(&p, &text, &mut errors),
            Err(e) => {
                return Err(ConfigErrors { errors: vec![e] });
            }
        },
    };
    build(root, env, errors)
}

fn read_file(path: &Path) -> Result<String, ConfigError> {
    let err = |message: String| ConfigError::Read {
        path: path.to_path_buf(),
        message,
    };
    let f = std::fs::File::open(path).map_err(|e| err(format!("cannot read: {e}")))?;
    if f.metadata().map(|m| m.is_dir()).unwrap_or(false) {
        return Err(err("cannot read: is a directory".into()));
    }
    let mut buf = Vec::new();
    f.take(MAX_FILE_SIZE + 1)
        .read_to_end(&mut buf)
        .map_err(|e| err(format!("cannot read: {e}")))?;
    if buf.len() as u64 > MAX_FILE_SIZE {
        return Err(err(format!(
            "larger than {} KiB; not a config file?",
            MAX_FILE_SIZE >> 10
        )));
    }
    String::from_utf8(buf).map_err(|e| {
        err(format!(
            "not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        ))
    })
}

#[derive(Debug, Clone)]
struct Node {
    origin: Origin,
    /// The raw text of an environment override, used where a string is expected
    /// but the text happened to parse as another TOML type (`PBX_EDGE__AGENT__ID=1234`).
    env_text: Option<String>,
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    Str(String),
    /// `None`: outside the 64-bit signed range.
    Int(Option<i64>),
    Float(f64),
    Bool(bool),
    Datetime(String),
    Array(Vec<Node>),
    Table(BTreeMap<String, Entry>),
}

#[derive(Debug, Clone)]
struct Entry {
    key_origin: Origin,
    node: Node,
}

type Table = BTreeMap<String, Entry>;

impl Node {
    fn type_name(&self) -> &'static str {
        match self.kind {
            Kind::Str(_) => "a string",
            Kind::Int(_) => "an integer",
            Kind::Float(_) => "a float",
            Kind::Bool(_) => "a boolean",
            Kind::Datetime(_) => "a date-time",
            Kind::Array(_) => "an array",
            Kind::Table(_) => "a table",
        }
    }

    /// "found an integer (5)" — what a wrong-type message says about this value.
    fn found(&self) -> String {
        let t = self.type_name();
        match &self.kind {
            Kind::Int(Some(i)) => format!("found {t} ({i})"),
            Kind::Float(x) => format!("found {t} ({})", short_float(*x)),
            Kind::Bool(b) => format!("found {t} ({b})"),
            Kind::Str(s) => format!("found {t} ({})", quote(s)),
            Kind::Datetime(d) => format!("found {t} ({d})"),
            _ => format!("found {t}"),
        }
    }
}

/// A float as a person wrote it: `1e308`, not 309 digits.
fn short_float(x: f64) -> String {
    if x.is_finite() && x != 0.0 && !(1e-6..1e16).contains(&x.abs()) {
        format!("{x:e}")
    } else {
        x.to_string()
    }
}

/// Byte offsets of line starts, to turn spans into 1-based line numbers.
struct Lines {
    starts: Vec<usize>,
}

impl Lines {
    fn new(text: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Lines { starts }
    }

    fn line(&self, offset: usize) -> usize {
        self.starts.partition_point(|&s| s <= offset).max(1)
    }
}

/// Parse a config file's text into the tree; syntax errors go into `errors`.
/// What could be recovered is returned even then.
fn parse_file(path: &Path, text: &str, errors: &mut Vec<ConfigError>) -> Option<Node> {
    let lines = Lines::new(text);
    let origin = |span: std::ops::Range<usize>| Origin::File {
        path: path.to_path_buf(),
        line: lines.line(span.start),
    };
    let (doc, syntax) = DeTable::parse_recoverable(text);
    for e in &syntax {
        let line = e.span().map(|s| lines.line(s.start)).unwrap_or(1);
        errors.push(ConfigError::Syntax {
            origin: Origin::File {
                path: path.to_path_buf(),
                line,
            },
            key: syntax_key_guess(text, line),
            message: e.message().to_string(),
        });
    }
    let span = doc.span();
    let mut table = convert_table(doc.get_ref(), &origin);
    // After a broken table header the recovered tree puts that table's keys
    // anywhere (an unclosed `[sources.siprec` leaves `max_calls` at the top,
    // "unknown section"): its lines are left out, the syntax error is the
    // one problem reported for them.
    let broken = broken_tables(
        text,
        syntax
            .iter()
            .filter_map(|e| e.span())
            .map(|s| lines.line(s.start)),
    );
    if !broken.is_empty() {
        drop_lines(&mut table, path, &broken);
    }
    Some(Node {
        origin: origin(span.start..span.start),
        env_text: None,
        kind: Kind::Table(table),
    })
}

/// Line ranges (1-based, end exclusive) from each table header with a syntax
/// error on it to the next header line.
fn broken_tables(text: &str, error_lines: impl Iterator<Item = usize>) -> Vec<(usize, usize)> {
    let all: Vec<&str> = text.lines().collect();
    let is_header = |l: usize| {
        all.get(l.wrapping_sub(1))
            .is_some_and(|t| t.trim_start().starts_with('['))
    };
    let mut out = Vec::new();
    for line in error_lines {
        if !is_header(line) {
            continue;
        }
        let end = (line + 1..=all.len())
            .find(|l| is_header(*l))
            .unwrap_or(all.len() + 1);
        out.push((line, end));
    }
    out
}

/// Removes every entry whose key is on one of the `lines` ranges of `path`.
fn drop_lines(table: &mut Table, path: &Path, lines: &[(usize, usize)]) {
    table.retain(|_, e| match &e.key_origin {
        Origin::File { path: p, line } if p == path => {
            !lines.iter().any(|(a, b)| (*a..*b).contains(line))
        }
        _ => true,
    });
    for e in table.values_mut() {
        if let Kind::Table(t) = &mut e.node.kind {
            drop_lines(t, path, lines);
        }
    }
}

fn convert_table(t: &DeTable<'_>, origin: &dyn Fn(std::ops::Range<usize>) -> Origin) -> Table {
    t.iter()
        .map(|(k, v)| {
            (
                k.get_ref().to_string(),
                Entry {
                    key_origin: origin(k.span()),
                    node: convert_value(v, origin),
                },
            )
        })
        .collect()
}

fn convert_value(
    v: &Spanned<DeValue<'_>>,
    origin: &dyn Fn(std::ops::Range<usize>) -> Origin,
) -> Node {
    let kind = match v.get_ref() {
        DeValue::String(s) => Kind::Str(s.to_string()),
        DeValue::Integer(i) => Kind::Int(i64::from_str_radix(i.as_str(), i.radix()).ok()),
        DeValue::Float(x) => Kind::Float(x.as_str().parse().unwrap_or(f64::NAN)),
        DeValue::Boolean(b) => Kind::Bool(*b),
        DeValue::Datetime(d) => Kind::Datetime(d.to_string()),
        DeValue::Array(a) => Kind::Array(a.iter().map(|x| convert_value(x, origin)).collect()),
        DeValue::Table(t) => Kind::Table(convert_table(t, origin)),
    };
    Node {
        origin: origin(v.span()),
        env_text: None,
        kind,
    }
}

/// Best guess of the key a syntax error is about: the last `[table]` header
/// before the line plus the key written on the line, else `toml`.
fn syntax_key_guess(text: &str, line: usize) -> String {
    let is_key = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ' ' | '"'))
    };
    let clean = |s: &str| -> Vec<String> {
        s.split('.')
            .map(|p| p.trim().trim_matches('"').to_string())
            .collect()
    };
    let mut table: Vec<String> = Vec::new();
    for (i, l) in text.lines().enumerate() {
        let t = l.trim();
        let header = t
            .strip_prefix("[[")
            .and_then(|r| r.strip_suffix("]]"))
            .or_else(|| t.strip_prefix('[').and_then(|r| r.strip_suffix(']')))
            .filter(|h| is_key(h));
        if i + 1 == line {
            if let Some(h) = header {
                return clean(h).join(".");
            }
            // A header that is not closed: `[sources.siprec`.
            if let Some(h) = t
                .strip_prefix("[[")
                .or_else(|| t.strip_prefix('['))
                .map(|h| h.trim_end_matches(']').trim())
                .filter(|h| is_key(h))
            {
                return clean(h).join(".");
            }
            if let Some((k, _)) = t.split_once('=') {
                if is_key(k.trim()) {
                    let mut path = table.clone();
                    path.extend(clean(k.trim()));
                    return path.join(".");
                }
            }
            break;
        }
        if let Some(h) = header {
            table = clean(h);
        }
    }
    "toml".into()
}

/// `PBX_EDGE__SOURCES__SIPREC__LISTEN` → `sources.siprec.listen`.
fn env_key_path(var: &str) -> String {
    var.strip_prefix(ENV_PREFIX)
        .unwrap_or(var)
        .split("__")
        .map(|p| p.to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(".")
}

/// Put one environment override into the tree.
fn apply_env(root: &mut Node, var: &str, text: &str, errors: &mut Vec<ConfigError>) {
    let origin = Origin::Env {
        var: var.to_string(),
    };
    let key = env_key_path(var);
    let err = |message: String| ConfigError::Invalid {
        origin: origin.clone(),
        key: key.clone(),
        message,
    };
    let parts: Vec<String> = key.split('.').map(str::to_string).collect();
    if parts.iter().any(|p| p.is_empty()) {
        errors.push(err(format!(
            "malformed variable name (write {ENV_PREFIX}SECTION__KEY)"
        )));
        return;
    }
    let mut node = match DeValue::parse(text) {
        Ok(v) => convert_value(&v, &|_| origin.clone()),
        Err(_) => Node {
            origin: origin.clone(),
            env_text: None,
            kind: Kind::Str(text.to_string()),
        },
    };
    node.env_text = Some(text.to_string());

    let Some((leaf, dirs)) = parts.split_last() else {
        return;
    };
    let mut cur = root;
    let mut walked = Vec::new();
    for d in dirs {
        walked.push(d.as_str());
        let Kind::Table(t) = &mut cur.kind else {
            return;
        };
        let entry = t.entry(d.clone()).or_insert_with(|| Entry {
            key_origin: origin.clone(),
            node: Node {
                origin: origin.clone(),
                env_text: None,
                kind: Kind::Table(Table::new()),
            },
        });
        if !matches!(entry.node.kind, Kind::Table(_)) {
            errors.push(err(format!(
                "`{}` is not a table (it is set at {})",
                walked.join("."),
                entry.node.origin
            )));
            return;
        }
        cur = &mut entry.node;
    }
    let Kind::Table(t) = &mut cur.kind else {
        return;
    };
    match t.get_mut(leaf) {
        Some(existing) => merge(&mut existing.node, node),
        None => {
            t.insert(
                leaf.clone(),
                Entry {
                    key_origin: origin.clone(),
                    node,
                },
            );
        }
    }
}

/// Override `old` with `new`; tables are merged key by key.
fn merge(old: &mut Node, new: Node) {
    if let (Kind::Table(o), Kind::Table(_)) = (&mut old.kind, &new.kind) {
        if let Kind::Table(n) = new.kind {
            for (k, e) in n {
                match o.get_mut(&k) {
                    Some(existing) => merge(&mut existing.node, e.node),
                    None => {
                        o.insert(k, e);
                    }
                }
            }
        }
        return;
    }
    *old = new;
}

/// File tree + environment → checked [`Config`] or every problem.
fn build(
    root: Option<Node>,
    mut env: Vec<(String, String)>,
    mut errors: Vec<ConfigError>,
) -> Result<Config, ConfigErrors> {
    env.sort();
    let state_dir = env
        .iter()
        .find(|(k, _)| k == "STATE_DIRECTORY")
        .map(|(_, v)| v.as_str());
    let mut cfg = Config::defaults(state_dir);
    let mut root = root.unwrap_or(Node {
        origin: Origin::Default,
        env_text: None,
        kind: Kind::Table(Table::new()),
    });
    for (k, v) in env.iter().filter(|(k, _)| k.starts_with(ENV_PREFIX)) {
        apply_env(&mut root, k, v, &mut errors);
    }
    // Semantic problems on a line that already has a syntax error are noise.
    let syntax_lines: Vec<Origin> = errors
        .iter()
        .filter(|e| matches!(e, ConfigError::Syntax { .. }))
        .filter_map(|e| e.origin().cloned())
        .collect();
    let mut semantic = Vec::new();
    check(&root, &mut cfg, &mut semantic, &mut Vec::new());
    errors.extend(
        semantic
            .into_iter()
            .filter(|e| e.origin().is_none_or(|o| !syntax_lines.contains(o))),
    );
    if errors.is_empty() {
        Ok(cfg)
    } else {
        errors.sort_by(|a, b| {
            let ka = a.origin().map(Origin::sort_key);
            let kb = b.origin().map(Origin::sort_key);
            ka.cmp(&kb)
        });
        Err(ConfigErrors { errors })
    }
}

// ---------------------------------------------------------------------------
// The schema walk
// ---------------------------------------------------------------------------

const SECTIONS: &[&str] = &[
    "agent",
    "spool",
    "health",
    "recording",
    "cloud",
    "sources",
    "filter",
    "log",
];
const SOURCES: &[&str] = &["siprec", "sniff", "folder"];

/// A table being read: which keys were asked for, to report the rest as unknown.
struct Sec<'t> {
    path: String,
    table: Option<&'t Table>,
    known: Vec<&'static str>,
}

impl<'t> Sec<'t> {
    /// The section `name` of `parent` (a missing one reads as empty; one that
    /// is not a table is reported and reads as empty).
    fn child(parent: &Sec<'t>, name: &str, errs: &mut Vec<ConfigError>) -> Sec<'t> {
        let path = if parent.path.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", parent.path)
        };
        let table = match parent.table.and_then(|t| t.get(name)) {
            None => None,
            Some(Entry {
                node:
                    Node {
                        kind: Kind::Table(t),
                        ..
                    },
                ..
            }) => Some(t),
            Some(e) => {
                errs.push(ConfigError::Invalid {
                    origin: e.node.origin.clone(),
                    key: path.clone(),
                    message: format!("expected a table ([{path}]), {}", e.node.found()),
                });
                None
            }
        };
        Sec {
            path,
            table,
            known: Vec::new(),
        }
    }

    fn key(&self, key: &str) -> String {
        format!("{}.{key}", self.path)
    }

    fn get(&mut self, key: &'static str) -> Option<&'t Node> {
        self.known.push(key);
        self.table?.get(key).map(|e| &e.node)
    }

    /// Where `key` was set, for problems between two keys.
    fn origin(&self, key: &str) -> Origin {
        self.table
            .and_then(|t| t.get(key))
            .map(|e| e.node.origin.clone())
            .unwrap_or(Origin::Default)
    }

    /// Read `key` with `conv`; on success store it in `target`, else report.
    fn field<T>(
        &mut self,
        errs: &mut Vec<ConfigError>,
        key: &'static str,
        target: &mut T,
        conv: impl FnOnce(&Node) -> Result<T, String>,
    ) {
        if let Some(n) = self.get(key) {
            match conv(n) {
                Ok(v) => *target = v,
                Err(message) => errs.push(ConfigError::Invalid {
                    origin: n.origin.clone(),
                    key: self.key(key),
                    message,
                }),
            }
        }
    }

    /// Report every key that was not asked for; note the known ones in `keys`.
    fn finish(self, errs: &mut Vec<ConfigError>, keys: &mut Vec<String>, what: &str) {
        if what == "key" {
            keys.extend(self.known.iter().map(|k| self.key(k)));
        }
        let Some(t) = self.table else { return };
        for (k, e) in t {
            if self.known.contains(&k.as_str()) {
                continue;
            }
            let key = if self.path.is_empty() {
                k.clone()
            } else {
                format!("{}.{k}", self.path)
            };
            let mut message = format!("unknown {what}");
            match suggest(k, &self.known) {
                Some(s) => message.push_str(&format!(" (did you mean `{s}`?)")),
                None => message.push_str(&format!(" (known: {})", self.known.join(", "))),
            }
            errs.push(ConfigError::Invalid {
                origin: e.key_origin.clone(),
                key,
                message,
            });
        }
    }
}

/// `sources.siprec.tls_*` once `tls_listen` is set: certificate and key
/// given and usable (loaded as the listener would), no port clashes.
fn check_siprec_tls(
    s: &Sec<'_>,
    sr: &SiprecConfig,
    tls: SocketAddr,
    listen_ok: bool,
    ports_ok: bool,
    health: &SocketAddr,
    errs: &mut Vec<ConfigError>,
) {
    let mut problem = |key: &str, message: String| {
        let o = s.origin(key);
        let (origin, key) = if o == Origin::Default {
            (s.origin("tls_listen"), "tls_listen")
        } else {
            (o, key)
        };
        errs.push(ConfigError::Invalid {
            origin,
            key: s.key(key),
            message,
        });
    };
    let same_tcp_port = |a: SocketAddr, b: SocketAddr| {
        a.port() == b.port()
            && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
    };
    if listen_ok && same_tcp_port(tls, sr.listen) {
        problem(
            "tls_listen",
            format!("{tls} clashes with sources.siprec.listen {} (TCP); TLS needs its own port, usually 5061", sr.listen),
        );
    }
    if same_tcp_port(tls, *health) {
        problem(
            "tls_listen",
            format!("{tls} clashes with health.listen {health}"),
        );
    }
    if ports_ok && sr.rtp_ports.contains(&tls.port()) {
        problem(
            "tls_listen",
            format!(
                "port {} is inside sources.siprec.rtp_ports ({}-{})",
                tls.port(),
                sr.rtp_ports.start(),
                sr.rtp_ports.end()
            ),
        );
    }
    let (Some(cert), Some(key)) = (&sr.tls_cert, &sr.tls_key) else {
        for (k, v) in [("tls_cert", &sr.tls_cert), ("tls_key", &sr.tls_key)] {
            if v.is_none() {
                errs.push(ConfigError::Invalid {
                    origin: s.origin("tls_listen"),
                    key: s.key(k),
                    message: "must be set when sources.siprec.tls_listen is (a PEM file)".into(),
                });
            }
        }
        return;
    };
    if !sr.enabled {
        return;
    }
    match crate::sys::tls::server_config(cert, key, sr.tls_client_ca.as_deref()) {
        Ok(_) => {}
        // The key is often readable only by the service user: checked when
        // the listener starts (and by check-config run as that user).
        Err(e) if e.permission_denied && e.key == "tls_key" => {}
        Err(e) => problem(e.key, e.message),
    }
}

/// The closest known name to a misspelt one, if close enough.
fn suggest<'a>(name: &str, known: &[&'a str]) -> Option<&'a str> {
    let lname = name.to_ascii_lowercase();
    known
        .iter()
        .map(|k| (edit_distance(&lname, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4) && *d < k.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

fn quote(s: &str) -> String {
    const MAX: usize = 60;
    let mut t: String = s.chars().take(MAX).collect();
    if s.chars().count() > MAX {
        t.push('…');
    }
    format!("\"{}\"", t.escape_debug())
}

// --- value conversions: each returns the message of what is wrong ---

fn as_str<'n>(n: &'n Node, expect: &str) -> Result<&'n str, String> {
    match (&n.kind, &n.env_text) {
        (Kind::Str(s), _) => Ok(s),
        (_, Some(text)) => Ok(text),
        _ => Err(format!("expected {expect}, {}", n.found())),
    }
}

/// `"local"` (this machine's zone) → `None`; `"+01:00"`, `"-05:30"`, `"UTC"` →
/// seconds east of UTC.
fn to_utc_offset(n: &Node) -> Result<Option<i64>, String> {
    let v = to_string(n)?;
    let t = v.trim();
    if t.eq_ignore_ascii_case("local") {
        return Ok(None);
    }
    if t.eq_ignore_ascii_case("utc") || t == "Z" {
        return Ok(Some(0));
    }
    let bad = || {
        format!(
            "{} is not a UTC offset: \"local\", \"UTC\" or like \"+01:00\"",
            quote(&v)
        )
    };
    let (sign, rest) = match t.as_bytes().first() {
        Some(b'+') => (1, &t[1..]),
        Some(b'-') => (-1, &t[1..]),
        _ => return Err(bad()),
    };
    let (h, m) = rest.split_once(':').unwrap_or((rest, "0"));
    let h: i64 = h.parse().map_err(|_| bad())?;
    let m: i64 = m.parse().map_err(|_| bad())?;
    if h > 14 || m > 59 {
        return Err(bad());
    }
    Ok(Some(sign * (h * 3600 + m * 60)))
}

/// A folder name pattern: a regex naming at least `uniqueid` and a time.
fn check_name_pattern(p: &str) -> Result<(), String> {
    let re = regex::Regex::new(p).map_err(|e| format!("{} is not a regex: {e}", quote(p)))?;
    let names: Vec<&str> = re.capture_names().flatten().collect();
    if !names.contains(&"uniqueid") {
        return Err(format!("{} has no (?P<uniqueid>…) group", quote(p)));
    }
    let timed = names.contains(&"datetime")
        || names.contains(&"epoch")
        || (names.contains(&"date") && names.contains(&"time"));
    if !timed {
        return Err(format!(
            "{} has no start time: (?P<datetime>…), (?P<epoch>…) or (?P<date>…) + (?P<time>…)",
            quote(p)
        ));
    }
    Ok(())
}

fn to_string(n: &Node) -> Result<String, String> {
    as_str(n, "a string").map(str::to_string)
}

/// An array of strings; from the environment also a comma-separated list.
fn to_string_list(n: &Node) -> Result<Vec<String>, String> {
    match &n.kind {
        Kind::Array(items) => items
            .iter()
            .map(|i| as_str(i, "a string").map(str::to_string))
            .collect(),
        Kind::Str(text) if n.env_text.is_some() => Ok(text
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect()),
        _ => Err(format!("expected an array of strings, {}", n.found())),
    }
}

fn to_bool(n: &Node) -> Result<bool, String> {
    match n.kind {
        Kind::Bool(b) => Ok(b),
        _ => Err(format!("expected true or false, {}", n.found())),
    }
}

fn to_int_in(n: &Node, range: RangeInclusive<i64>) -> Result<i64, String> {
    let (lo, hi) = (range.start(), range.end());
    match n.kind {
        Kind::Int(Some(i)) if range.contains(&i) => Ok(i),
        Kind::Int(Some(i)) => Err(format!("must be between {lo} and {hi}, found {i}")),
        Kind::Int(None) => Err(format!("must be between {lo} and {hi}")),
        _ => Err(format!("expected an integer, {}", n.found())),
    }
}

fn to_u32_in(n: &Node, range: RangeInclusive<u32>) -> Result<u32, String> {
    let i = to_int_in(n, i64::from(*range.start())..=i64::from(*range.end()))?;
    u32::try_from(i).map_err(|_| "out of range".to_string())
}

fn to_duration(n: &Node) -> Result<Duration, String> {
    let s = as_str(n, "a duration string such as \"30s\" or \"5m\"")?;
    parse_duration(s)
}

fn to_duration_in(n: &Node, lo: Duration, hi: Duration) -> Result<Duration, String> {
    let d = to_duration(n)?;
    if d < lo {
        return Err(format!("must be at least {}", fmt_duration(lo)));
    }
    if d > hi {
        return Err(format!("must be at most {}", fmt_duration(hi)));
    }
    Ok(d)
}

fn fmt_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 != 0 {
        format!("{ms}ms")
    } else {
        format!("{}s", ms / 1000)
    }
}

fn to_size(n: &Node) -> Result<u64, String> {
    match n.kind {
        Kind::Int(Some(i)) => u64::try_from(i).map_err(|_| format!("must not be negative ({i})")),
        _ => parse_size(as_str(n, "a size string such as \"512MiB\" or \"20GiB\"")?),
    }
}

fn to_socket_addr(n: &Node) -> Result<SocketAddr, String> {
    let s = as_str(n, "an address such as \"127.0.0.1:5090\"")?;
    s.trim().parse::<SocketAddr>().map_err(|_| {
        format!(
            "{} is not an IP address and port (write e.g. \"127.0.0.1:5090\", \"0.0.0.0:5090\" or \"[::1]:5090\"; host names are not accepted)",
            quote(s)
        )
    })
}

fn to_path(n: &Node) -> Result<PathBuf, String> {
    let s = as_str(n, "a path string")?;
    if s.contains('\0') {
        return Err("path contains a NUL byte".into());
    }
    Ok(PathBuf::from(s))
}

fn to_opt_path(n: &Node) -> Result<Option<PathBuf>, String> {
    let p = to_path(n)?;
    Ok((!p.as_os_str().is_empty()).then_some(p))
}

fn to_nonempty_path(n: &Node) -> Result<PathBuf, String> {
    let p = to_path(n)?;
    if p.as_os_str().is_empty() {
        return Err("must not be empty".into());
    }
    Ok(p)
}

fn to_agent_id(n: &Node) -> Result<String, String> {
    let s = as_str(n, "a string")?;
    if s.is_empty() {
        return Err("must not be empty (leave the key out to use the host name)".into());
    }
    if s.chars().count() > 128 {
        return Err("longer than 128 characters".into());
    }
    if s.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(s.to_string())
}

fn to_sample_rate(n: &Node) -> Result<SampleRate, String> {
    let bad = || {
        let found = match &n.kind {
            Kind::Str(s) => format!("found {}", quote(s)),
            _ => n.found(),
        };
        format!("expected \"auto\", \"8000\" or \"16000\", {found}")
    };
    match &n.kind {
        Kind::Int(Some(8000)) => Ok(SampleRate::Hz8000),
        Kind::Int(Some(16000)) => Ok(SampleRate::Hz16000),
        Kind::Str(s) => match s.trim() {
            "auto" => Ok(SampleRate::Auto),
            "8000" => Ok(SampleRate::Hz8000),
            "16000" => Ok(SampleRate::Hz16000),
            _ => Err(bad()),
        },
        _ => Err(bad()),
    }
}

fn to_protocol(n: &Node) -> Result<CloudProtocol, String> {
    match as_str(n, "\"tus\" or \"multipart\"")? {
        "tus" => Ok(CloudProtocol::Tus),
        "multipart" => Ok(CloudProtocol::Multipart),
        s => Err(format!(
            "expected \"tus\" or \"multipart\", found {}",
            quote(s)
        )),
    }
}

fn to_log_format(n: &Node) -> Result<LogFormat, String> {
    match as_str(n, "\"auto\", \"journald\", \"text\" or \"json\"")? {
        "auto" => Ok(LogFormat::Auto),
        "journald" => Ok(LogFormat::Journald),
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        s => Err(format!(
            "expected \"auto\", \"journald\", \"text\" or \"json\", found {}",
            quote(s)
        )),
    }
}

/// `cloud.url`: empty, or https, or http to a loopback host (CONTRACT §4).
fn to_cloud_url(n: &Node) -> Result<String, String> {
    let s = as_str(n, "a URL string")?.trim();
    if s.is_empty() {
        return Ok(String::new());
    }
    let u = url::Url::parse(s).map_err(|e| format!("{} is not a URL: {e}", quote(s)))?;
    match u.scheme() {
        "https" => {}
        "http" => {
            let loopback = match u.host() {
                Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
                Some(url::Host::Ipv4(a)) => a.is_loopback(),
                Some(url::Host::Ipv6(a)) => a.is_loopback(),
                None => false,
            };
            if !loopback {
                return Err(
                    "plain http:// is accepted only for loopback hosts (localhost, 127.0.0.0/8, ::1); use https://"
                        .into(),
                );
            }
        }
        other => {
            return Err(format!(
                "scheme must be https (or http for a loopback host), found `{other}`"
            ))
        }
    }
    if u.host().is_none() {
        return Err("has no host".into());
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err("must not contain credentials; put the token in cloud.token_file".into());
    }
    if u.query().is_some() || u.fragment().is_some() {
        return Err("must not have a query (?…) or fragment (#…)".into());
    }
    Ok(s.trim_end_matches('/').to_string())
}

fn to_port_range(n: &Node) -> Result<RangeInclusive<u16>, String> {
    let s = as_str(n, "a port range string such as \"20000-29999\"")?;
    let bad = || {
        format!(
            "{} is not a port range (write e.g. \"20000-29999\")",
            quote(s)
        )
    };
    let (lo, hi) = s.split_once('-').ok_or_else(bad)?;
    let lo: u16 = lo.trim().parse().map_err(|_| bad())?;
    let hi: u16 = hi.trim().parse().map_err(|_| bad())?;
    if lo > hi {
        return Err(format!("low port {lo} is above high port {hi}"));
    }
    if lo < 1024 {
        return Err(format!(
            "starts at {lo}: ports below 1024 are privileged (start at 1024 or above)"
        ));
    }
    let first_even = if lo % 2 == 0 {
        lo
    } else {
        lo.saturating_add(1)
    };
    if first_even < lo || first_even >= hi {
        return Err(format!(
            "{lo}-{hi} holds no RTP/RTCP pair (an even port and the odd one after it)"
        ));
    }
    Ok(lo..=hi)
}

fn parse_net(s: &str) -> Result<IpNet, String> {
    let t = s.trim();
    if let Ok(n) = t.parse::<IpNet>() {
        return Ok(n.trunc());
    }
    if let Ok(a) = t.parse::<IpAddr>() {
        return Ok(IpNet::from(a));
    }
    Err(format!(
        "{} is not a network (write e.g. \"10.0.0.0/8\", \"192.0.2.7\" or \"2001:db8::/32\")",
        quote(s)
    ))
}

// --- the sections ---

fn check(root: &Node, cfg: &mut Config, errs: &mut Vec<ConfigError>, keys: &mut Vec<String>) {
    let Kind::Table(t) = &root.kind else {
        return;
    };
    let mut top = Sec {
        path: String::new(),
        table: Some(t),
        known: SECTIONS.to_vec(),
    };

    let mut s = Sec::child(&top, "agent", errs);
    s.field(errs, "id", &mut cfg.agent.id, to_agent_id);
    s.finish(errs, keys, "key");

    let mut s = Sec::child(&top, "spool", errs);
    s.field(errs, "dir", &mut cfg.spool.dir, to_nonempty_path);
    s.field(
        errs,
        "max_size",
        &mut cfg.spool.max_size,
        |n| match to_size(n)? {
            0 => Err("must be above 0".into()),
            v => Ok(v),
        },
    );
    s.field(errs, "retention", &mut cfg.spool.retention, to_duration);
    s.finish(errs, keys, "key");

    let mut s = Sec::child(&top, "health", errs);
    s.field(errs, "listen", &mut cfg.health.listen, to_socket_addr);
    let health_origin = s.origin("listen");
    s.finish(errs, keys, "key");

    let mut s = Sec::child(&top, "recording", errs);
    let r = &mut cfg.recording;
    s.field(errs, "sample_rate", &mut r.sample_rate, to_sample_rate);
    s.field(errs, "min_duration", &mut r.min_duration, to_duration);
    s.field(errs, "rtp_timeout", &mut r.rtp_timeout, |n| {
        to_duration_in(n, Duration::from_secs(1), Duration::from_secs(86_400))
    });
    s.field(errs, "jitter", &mut r.jitter, |n| {
        to_duration_in(n, Duration::ZERO, Duration::from_secs(10))
    });
    s.finish(errs, keys, "key");

    let mut s = Sec::child(&top, "cloud", errs);
    let c = &mut cfg.cloud;
    s.field(errs, "url", &mut c.url, to_cloud_url);
    s.field(errs, "protocol", &mut c.protocol, to_protocol);
    s.field(errs, "token_file", &mut c.token_file, to_path);
    s.field(errs, "max_parallel", &mut c.max_parallel, |n| {
        to_u32_in(n, 1..=64)
    });
    s.field(errs, "ca_file", &mut c.ca_file, to_opt_path);
    s.field(errs, "chunk_size", &mut c.chunk_size, |n| {
        let v = to_size(n)?;
        if !(64 << 10..=1 << 30).contains(&v) {
            return Err(format!("must be between 64KiB and 1GiB, found {v} bytes"));
        }
        Ok(v)
    });
    s.field(errs, "bandwidth_limit", &mut c.bandwidth_limit, to_size);
    s.field(errs, "client_cert", &mut c.client_cert, to_opt_path);
    s.field(errs, "client_key", &mut c.client_key, to_opt_path);
    s.field(errs, "proxy", &mut c.proxy, to_string);
    s.field(errs, "upload_window", &mut c.upload_window, |n| {
        let v = to_string(n)?;
        if v.is_empty() {
            return Ok(None);
        }
        v.parse::<UploadWindow>()
            .map(Some)
            .map_err(|_| format!("`{v}` is not a window like \"22:00-06:00\""))
    });
    s.finish(errs, keys, "key");

    let mut src = Sec::child(&top, "sources", errs);
    src.known = SOURCES.to_vec();

    let mut s = Sec::child(&src, "siprec", errs);
    let sr = &mut cfg.sources.siprec;
    s.field(errs, "enabled", &mut sr.enabled, to_bool);
    let mut listen_ok = true;
    s.field(errs, "listen", &mut sr.listen, |n| {
        to_socket_addr(n).inspect_err(|_| listen_ok = false)
    });
    let mut ports_ok = true;
    s.field(errs, "rtp_ports", &mut sr.rtp_ports, |n| {
        to_port_range(n).inspect_err(|_| ports_ok = false)
    });
    if let Some(n) = s.get("allow") {
        match &n.kind {
            Kind::Array(items) => {
                let mut nets = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    match as_str(item, "a network string such as \"10.0.0.0/8\"")
                        .and_then(parse_net)
                    {
                        Ok(net) => nets.push(net),
                        Err(message) => errs.push(ConfigError::Invalid {
                            origin: item.origin.clone(),
                            key: format!("{}[{i}]", s.key("allow")),
                            message,
                        }),
                    }
                }
                sr.allow = nets;
            }
            // From the environment a plain list is fine: "10.0.0.0/8, 192.0.2.7".
            Kind::Str(text) if n.env_text.is_some() => {
                let mut nets = Vec::new();
                for part in text.split([',', ' ']).filter(|p| !p.is_empty()) {
                    match parse_net(part) {
                        Ok(net) => nets.push(net),
                        Err(message) => errs.push(ConfigError::Invalid {
                            origin: n.origin.clone(),
                            key: s.key("allow"),
                            message,
                        }),
                    }
                }
                sr.allow = nets;
            }
            _ => errs.push(ConfigError::Invalid {
                origin: n.origin.clone(),
                key: s.key("allow"),
                message: format!(
                    "expected an array of networks such as [\"10.0.0.0/8\"], {}",
                    n.found()
                ),
            }),
        }
    }
    s.field(errs, "max_calls", &mut sr.max_calls, |n| {
        to_u32_in(n, 1..=1_000_000)
    });
    let mut tls_ok = true;
    s.field(errs, "tls_listen", &mut sr.tls_listen, |n| {
        if matches!(&n.kind, Kind::Str(t) if t.trim().is_empty()) {
            return Ok(None);
        }
        to_socket_addr(n).map(Some).inspect_err(|_| tls_ok = false)
    });
    s.field(errs, "tls_cert", &mut sr.tls_cert, to_opt_path);
    s.field(errs, "tls_key", &mut sr.tls_key, to_opt_path);
    s.field(errs, "tls_client_ca", &mut sr.tls_client_ca, to_opt_path);
    s.field(errs, "tcp_idle_timeout", &mut sr.tcp_idle_timeout, |n| {
        to_duration_in(n, Duration::from_secs(1), Duration::from_secs(86_400))
    });
    s.field(
        errs,
        "tcp_message_timeout",
        &mut sr.tcp_message_timeout,
        |n| to_duration_in(n, Duration::from_secs(1), Duration::from_secs(600)),
    );
    if let (true, Some(tls)) = (tls_ok, sr.tls_listen) {
        check_siprec_tls(&s, sr, tls, listen_ok, ports_ok, &cfg.health.listen, errs);
    }
    if listen_ok && ports_ok && sr.rtp_ports.contains(&sr.listen.port()) {
        errs.push(ConfigError::Invalid {
            origin: s.origin("rtp_ports"),
            key: s.key("rtp_ports"),
            message: format!(
                "contains the SIP port {} of sources.siprec.listen",
                sr.listen.port()
            ),
        });
    }
    if listen_ok && sr.enabled && sr.listen == cfg.health.listen {
        let siprec_origin = s.origin("listen");
        let (origin, key) = if siprec_origin != Origin::Default {
            (siprec_origin, s.key("listen"))
        } else {
            (health_origin.clone(), "health.listen".to_string())
        };
        errs.push(ConfigError::Invalid {
            origin,
            key,
            message: format!(
                "{} is used by both health.listen and sources.siprec.listen",
                sr.listen
            ),
        });
    }
    s.finish(errs, keys, "key");

    let mut s = Sec::child(&src, "sniff", errs);
    let sn = &mut cfg.sources.sniff;
    s.field(errs, "enabled", &mut sn.enabled, to_bool);
    s.field(errs, "interface", &mut sn.interface, |n| {
        let v = to_string(n)?;
        if v.is_empty() {
            Err("must not be empty (\"any\" captures on all interfaces)".into())
        } else if v.len() > 15 || v.chars().any(|c| c.is_whitespace() || c == '/') {
            Err(format!("{} is not an interface name", quote(&v)))
        } else {
            Ok(v)
        }
    });
    s.field(errs, "filter", &mut sn.filter, |n| {
        let v = to_string(n)?;
        if v.trim().is_empty() {
            return Ok(None);
        }
        crate::sys::bpf::compile_filter(&v)
            .map_err(|e| format!("not a valid capture filter (pcap syntax): {e}"))?;
        Ok(Some(v))
    });
    s.finish(errs, keys, "key");

    let mut s = Sec::child(&src, "folder", errs);
    let f = &mut cfg.sources.folder;
    s.field(errs, "enabled", &mut f.enabled, to_bool);
    let mut path_ok = true;
    s.field(errs, "path", &mut f.path, |n| {
        to_path(n).inspect_err(|_| path_ok = false)
    });
    s.field(errs, "cdr_csv", &mut f.cdr_csv, to_opt_path);
    s.field(errs, "settle", &mut f.settle, to_duration);
    s.field(errs, "watch", &mut f.watch, |n| {
        match to_string(n)?.as_str() {
            "auto" => Ok(FolderWatch::Auto),
            "inotify" => Ok(FolderWatch::Inotify),
            "poll" => Ok(FolderWatch::Poll),
            v => Err(format!(
                "{} is not one of \"auto\", \"inotify\", \"poll\"",
                quote(v)
            )),
        }
    });
    s.field(errs, "cdr_db_url_file", &mut f.cdr_db_url_file, to_opt_path);
    s.field(errs, "cdr_db_table", &mut f.cdr_db_table, |n| {
        let v = to_string(n)?;
        if valid_table(&v) {
            Ok(v)
        } else {
            Err(format!(
                "{} is not a table name (letters, digits, _)",
                quote(&v)
            ))
        }
    });
    s.field(errs, "cdr_csv_columns", &mut f.cdr_csv_columns, |n| {
        let v = to_string_list(n)?;
        if v.is_empty() {
            return Ok(CsvColumns::default());
        }
        CsvColumns::new(&v)
    });
    s.field(errs, "cdr_wait", &mut f.cdr_wait, |n| {
        to_duration_in(n, Duration::ZERO, Duration::from_secs(86_400))
    });
    s.field(errs, "utc_offset", &mut f.utc_offset, to_utc_offset);
    s.field(errs, "max_age", &mut f.max_age, to_duration);
    s.field(errs, "name_patterns", &mut f.name_patterns, |n| {
        let v = to_string_list(n)?;
        for p in &v {
            check_name_pattern(p)?;
        }
        Ok(v)
    });
    s.field(errs, "raw_stereo", &mut f.raw_stereo, |n| match &n.kind {
        Kind::Bool(true) => Ok(RawStereo::Stereo),
        Kind::Bool(false) => Ok(RawStereo::Mono),
        Kind::Str(v) if v == "auto" => Ok(RawStereo::Auto),
        _ => Err(format!("expected \"auto\", true or false, {}", n.found())),
    });
    s.field(
        errs,
        "caller_leg",
        &mut f.caller_leg_out,
        |n| match to_string(n)?.as_str() {
            "in" => Ok(false),
            "out" => Ok(true),
            v => Err(format!("{} is not a leg: \"in\" or \"out\"", quote(v))),
        },
    );
    s.field(
        errs,
        "inbound_contexts",
        &mut f.inbound_contexts,
        to_string_list,
    );
    s.field(
        errs,
        "outbound_contexts",
        &mut f.outbound_contexts,
        to_string_list,
    );
    s.field(
        errs,
        "internal_contexts",
        &mut f.internal_contexts,
        to_string_list,
    );
    s.field(
        errs,
        "after_delivery",
        &mut f.after_delivery,
        |n| match to_string(n)?.as_str() {
            "leave" => Ok(AfterDelivery::Leave),
            "move" => Ok(AfterDelivery::Move),
            "delete" => Ok(AfterDelivery::Delete),
            v => Err(format!(
                "{} is not one of \"leave\", \"move\", \"delete\"",
                quote(v)
            )),
        },
    );
    s.field(errs, "move_to", &mut f.move_to, to_opt_path);
    if f.after_delivery == AfterDelivery::Move {
        match &f.move_to {
            None => errs.push(ConfigError::Invalid {
                origin: s.origin("after_delivery"),
                key: s.key("move_to"),
                message: "must be set when after_delivery = \"move\"".into(),
            }),
            Some(m) if path_ok && m.starts_with(&f.path) => errs.push(ConfigError::Invalid {
                origin: s.origin("move_to"),
                key: s.key("move_to"),
                message:
                    "must not be inside sources.folder.path (moved files would be found again)"
                        .into(),
            }),
            _ => {}
        }
    }
    if f.cdr_db_url_file.is_some() && f.cdr_csv.is_some() {
        errs.push(ConfigError::Invalid {
            origin: s.origin("cdr_db_url_file"),
            key: s.key("cdr_db_url_file"),
            message: "use either cdr_csv or cdr_db_url_file, not both".into(),
        });
    }
    if path_ok && f.enabled && f.path.as_os_str().is_empty() {
        let o = s.origin("path");
        let origin = if o == Origin::Default {
            s.origin("enabled")
        } else {
            o
        };
        errs.push(ConfigError::Invalid {
            origin,
            key: s.key("path"),
            message: "must not be empty when sources.folder is enabled".into(),
        });
    }
    s.finish(errs, keys, "key");
    src.finish(errs, keys, "source");

    let mut s = Sec::child(&top, "filter", errs);
    let f = &mut cfg.filter;
    s.field(errs, "min_duration", &mut f.min_duration, to_duration);
    s.field(
        errs,
        "include_numbers",
        &mut f.include_numbers,
        to_string_list,
    );
    s.field(
        errs,
        "exclude_numbers",
        &mut f.exclude_numbers,
        to_string_list,
    );
    s.field(errs, "directions", &mut f.directions, |n| {
        let v = to_string_list(n)?;
        for d in &v {
            if !["inbound", "outbound", "internal", "unknown"].contains(&d.as_str()) {
                return Err(format!(
                    "`{d}` is not a direction (inbound, outbound, internal, unknown)"
                ));
            }
        }
        Ok(v)
    });
    s.field(errs, "keep_filtered", &mut f.keep_filtered, to_bool);
    s.finish(errs, keys, "key");

    let mut s = Sec::child(&top, "log", errs);
    s.field(errs, "format", &mut cfg.log.format, to_log_format);
    s.field(errs, "log_numbers", &mut cfg.log.log_numbers, to_bool);
    s.finish(errs, keys, "key");

    top.known = SECTIONS.to_vec();
    top.finish(errs, keys, "section");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, Vec<String>> {
        Config::from_toml_str("t.toml", text, Vec::<(String, String)>::new()).map_err(|e| e.lines())
    }

    fn err1(text: &str) -> String {
        let e = parse(text).expect_err("should fail");
        assert_eq!(e.len(), 1, "{e:?}");
        e.into_iter().next().unwrap_or_default()
    }

    #[test]
    fn empty_file_is_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c, Config::defaults(None));
        assert_eq!(c.spool.dir, PathBuf::from("./var"));
        assert_eq!(c.spool.max_size, 20 << 30);
        assert_eq!(c.health.listen.to_string(), "127.0.0.1:9466");
        assert_eq!(c.sources.siprec.rtp_ports, 20000..=29999);
        assert_eq!(c.cloud.chunk_size, 4 << 20);
        assert_eq!(c.recording.jitter, Duration::from_millis(500));
    }

    #[test]
    fn state_directory_sets_spool_default() {
        let c = Config::defaults(Some("/var/lib/pbx-edge:/other"));
        assert_eq!(c.spool.dir, PathBuf::from("/var/lib/pbx-edge"));
        let c = Config::from_toml_str("t", "", [("STATE_DIRECTORY", "/srv/x")]).unwrap();
        assert_eq!(c.spool.dir, PathBuf::from("/srv/x"));
    }

    #[test]
    fn lines_from_offsets() {
        let l = Lines::new("a\nbc\n\nd");
        assert_eq!(l.line(0), 1);
        assert_eq!(l.line(1), 1);
        assert_eq!(l.line(2), 2);
        assert_eq!(l.line(5), 3);
        assert_eq!(l.line(6), 4);
        assert_eq!(l.line(999), 4);
    }

    #[test]
    fn wrong_types() {
        assert_eq!(
            err1("[cloud]\nmax_parallel = \"2\"\n"),
            "t.toml:2: cloud.max_parallel: expected an integer, found a string (\"2\")"
        );
        assert_eq!(
            err1("[sources.siprec]\nenabled = \"yes\""),
            "t.toml:2: sources.siprec.enabled: expected true or false, found a string (\"yes\")"
        );
        assert_eq!(
            err1("[recording]\nrtp_timeout = 30\n"),
            "t.toml:2: recording.rtp_timeout: expected a duration string such as \"30s\" or \"5m\", found an integer (30)"
        );
        assert_eq!(
            err1("cloud = 5\n"),
            "t.toml:1: cloud: expected a table ([cloud]), found an integer (5)"
        );
    }

    #[test]
    fn sizes_accept_integers_and_strings() {
        let c = parse("[spool]\nmax_size = 1000\n").unwrap();
        assert_eq!(c.spool.max_size, 1000);
        let c = parse("[spool]\nmax_size = \"1GB\"\n").unwrap();
        assert_eq!(c.spool.max_size, 1_000_000_000);
        assert_eq!(
            err1("[spool]\nmax_size = -1\n"),
            "t.toml:2: spool.max_size: must not be negative (-1)"
        );
        assert_eq!(
            err1("[spool]\nmax_size = 0\n"),
            "t.toml:2: spool.max_size: must be above 0"
        );
    }

    #[test]
    fn sample_rates() {
        for (v, want) in [
            ("\"auto\"", SampleRate::Auto),
            ("\"8000\"", SampleRate::Hz8000),
            ("16000", SampleRate::Hz16000),
        ] {
            let c = parse(&format!("[recording]\nsample_rate = {v}\n")).unwrap();
            assert_eq!(c.recording.sample_rate, want);
        }
        assert_eq!(SampleRate::Hz16000.policy(), SampleRatePolicy::Fixed(16000));
        assert_eq!(
            err1("[recording]\nsample_rate = 44100\n"),
            "t.toml:2: recording.sample_rate: expected \"auto\", \"8000\" or \"16000\", found an integer (44100)"
        );
        assert_eq!(
            err1("[recording]\nsample_rate = \"wide\"\n"),
            "t.toml:2: recording.sample_rate: expected \"auto\", \"8000\" or \"16000\", found \"wide\""
        );
    }

    #[test]
    fn engine_config_carries_recording_settings() {
        let c = parse("[recording]\njitter = \"250ms\"\nrtp_timeout = \"1m\"\nsample_rate = 8000")
            .unwrap();
        let e = c.recording.engine_config();
        assert_eq!(e.jitter_ms, 250);
        assert_eq!(e.rtp_timeout_us, 60_000_000);
        assert_eq!(e.sample_rate, SampleRatePolicy::Fixed(8000));
    }

    #[test]
    fn port_ranges() {
        let ok = |s: &str| {
            parse(&format!("[sources.siprec]\nrtp_ports = \"{s}\""))
                .map(|c| c.sources.siprec.rtp_ports)
        };
        assert_eq!(ok("10000-10001").unwrap(), 10000..=10001);
        assert_eq!(ok(" 30000 - 40000 ").unwrap(), 30000..=40000);
        assert!(ok("10001-10002").is_err()); // 10002 has no odd partner
        assert!(ok("10000-10000").is_err());
        assert!(ok("5000").is_err());
        assert!(ok("1000-2000").is_err());
        assert!(ok("3000-2000").is_err());
        assert!(ok("20000-70000").is_err());
        assert_eq!(
            err1("[sources.siprec]\nrtp_ports = \"30000-20000\""),
            "t.toml:2: sources.siprec.rtp_ports: low port 30000 is above high port 20000"
        );
        assert_eq!(
            err1("[sources.siprec]\nlisten = \"0.0.0.0:20000\""),
            "(built-in default): sources.siprec.rtp_ports: contains the SIP port 20000 of sources.siprec.listen"
        );
    }

    #[test]
    fn urls() {
        let url = |s: &str| parse(&format!("[cloud]\nurl = \"{s}\"")).map(|c| c.cloud.url);
        assert_eq!(url("").unwrap(), "");
        assert_eq!(
            url("https://api.example.com/edge/").unwrap(),
            "https://api.example.com/edge"
        );
        assert_eq!(
            url("http://127.0.0.1:8080").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            url("http://localhost:8080/").unwrap(),
            "http://localhost:8080"
        );
        assert_eq!(url("http://[::1]:8080").unwrap(), "http://[::1]:8080");
        assert!(url("http://api.example.com").is_err());
        assert!(url("http://10.0.0.1").is_err());
        assert!(url("ftp://x.example").is_err());
        assert!(url("https://user:pw@x.example").is_err());
        assert!(url("https://x.example/?a=b").is_err());
        assert!(url("not a url").is_err());
    }

    #[test]
    fn allow_lists() {
        let c =
            parse("[sources.siprec]\nallow = [\"10.1.2.3/8\", \"192.0.2.7\", \"2001:db8::/32\"]")
                .unwrap();
        let a = &c.sources.siprec.allow;
        assert_eq!(a.len(), 3);
        assert_eq!(a[0].to_string(), "10.0.0.0/8");
        assert_eq!(a[1].to_string(), "192.0.2.7/32");
        assert!(c.sources.siprec.allows("10.9.9.9".parse().unwrap()));
        assert!(c.sources.siprec.allows("::ffff:10.9.9.9".parse().unwrap()));
        assert!(!c.sources.siprec.allows("11.0.0.1".parse().unwrap()));
        assert!(Config::defaults(None)
            .sources
            .siprec
            .allows("8.8.8.8".parse().unwrap()));
    }

    #[test]
    fn unknown_keys_suggest() {
        assert_eq!(
            err1("[cloud]\nurll = \"\""),
            "t.toml:2: cloud.urll: unknown key (did you mean `url`?)"
        );
        assert_eq!(
            err1("[sources.sipreq]\nenabled = true"),
            "t.toml:1: sources.sipreq: unknown source (did you mean `siprec`?)"
        );
        assert_eq!(
            err1("[network]\nx = 1"),
            "t.toml:1: network: unknown section (known: agent, spool, health, recording, cloud, sources, filter, log)"
        );
        assert_eq!(
            suggest("max_parralel", &["url", "max_parallel"]),
            Some("max_parallel")
        );
        assert_eq!(suggest("zzz", &["url", "id"]), None);
    }

    #[test]
    fn syntax_errors_have_lines_and_keys() {
        let e = parse("[cloud]\nurl = \"https://x\n[spool]\nmax_size = \n").unwrap_err();
        assert!(!e.is_empty());
        assert!(e[0].starts_with("t.toml:2: cloud.url: "), "{e:?}");
        assert_eq!(syntax_key_guess("[a.b]\nc = 1", 2), "a.b.c");
        assert_eq!(syntax_key_guess("[ a . \"b\" ]\n", 1), "a.b");
        assert_eq!(syntax_key_guess("x", 1), "toml");
        assert_eq!(syntax_key_guess("x", 9), "toml");
    }

    #[test]
    fn diff_restart() {
        let a = Config::defaults(None);
        let mut b = a.clone();
        assert!(a.diff_restart_needed(&b).is_empty());
        b.recording.jitter = Duration::from_secs(1);
        b.cloud.max_parallel = 9;
        assert!(a.diff_restart_needed(&b).is_empty());
        b.sources.siprec.max_calls = 5;
        b.sources.folder.enabled = true;
        b.health.listen = "127.0.0.1:1".parse().unwrap();
        assert_eq!(
            a.diff_restart_needed(&b),
            vec!["sources.siprec", "sources.folder", "health.listen"]
        );
    }

    proptest::proptest! {
        /// Any text: no panic, and every problem points at a line of the text.
        #[test]
        fn any_text_gives_config_or_located_errors(
            text in "([a-z_.\\[\\]=\"' 0-9/:-]{0,12}\n?){0,12}"
        ) {
            check_located(&text);
        }

        /// The annotated file with one line replaced by junk.
        #[test]
        fn mutated_annotated_file(line in 0usize..100, junk in "[a-z_=\"\\[\\] 0-9.:/-]{0,20}") {
            let base = include_str!("../../config/pbx-edge.toml");
            let text: Vec<&str> = base
                .lines()
                .enumerate()
                .map(|(i, l)| if i == line { junk.as_str() } else { l })
                .collect();
            check_located(&text.join("\n"));
        }
    }

    fn check_located(text: &str) {
        let n_lines = text.lines().count().max(1);
        if let Err(e) = parse(text) {
            assert!(!e.is_empty());
            for l in e {
                if l.starts_with("(built-in default): ") {
                    continue; // a clash between a set key and a default
                }
                let rest = l.strip_prefix("t.toml:").unwrap_or_else(|| panic!("{l}"));
                let (line, _) = rest.split_once(": ").unwrap_or_else(|| panic!("{l}"));
                let line: usize = line.parse().unwrap_or_else(|_| panic!("{l}"));
                assert!((1..=n_lines + 1).contains(&line), "{l} ({n_lines} lines)");
            }
        }
    }

    #[test]
    fn env_key_paths() {
        assert_eq!(
            env_key_path("PBX_EDGE__SOURCES__SIPREC__RTP_PORTS"),
            "sources.siprec.rtp_ports"
        );
        assert_eq!(env_key_path("PBX_EDGE__CLOUD__URL"), "cloud.url");
    }

    #[test]
    fn resolve_path_prefers_explicit_then_default() {
        let dir = tempfile::tempdir().unwrap();
        let def = dir.path().join("pbx-edge.toml");
        let other = dir.path().join("other.toml");
        assert_eq!(resolve_path_with(None, &def), None);
        assert_eq!(resolve_path_with(Some(&other), &def), Some(other.clone()));
        std::fs::write(&def, "[agent]\nid = \"from-default\"\n").unwrap();
        assert_eq!(resolve_path_with(None, &def), Some(def.clone()));
        let c = load_inner(None, &def, Vec::new()).unwrap();
        assert_eq!(c.agent.id, "from-default");
        let e = load_inner(Some(&other), &def, Vec::new()).unwrap_err();
        assert!(e.lines()[0].contains("other.toml: cannot read"), "{e}");
    }
}
