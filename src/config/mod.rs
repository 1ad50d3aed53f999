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
//! A leaf of the shell: it uses only `units` and `sys` (tests/layering.rs).
//! Values with a syntax of their own are stored parsed, as the types the
//! runtime modules use ([`values`]: the upload window, Master.csv columns).
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

pub mod filters;
pub mod values;
pub use values::*;

mod load;
use load::*;
mod check;
use check::*;
mod nodes;
use nodes::*;

/// Where the daemon looks for its configuration when no `--config` is given.
pub const DEFAULT_PATH: &str = "/etc/pbx-edge/pbx-edge.toml";
/// Prefix of the environment variables that override config keys.
pub(crate) const ENV_PREFIX: &str = "PBX_EDGE__";
/// Config files larger than this are refused (they are a few KiB).
pub(crate) const MAX_FILE_SIZE: u64 = 1 << 20;

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
    pub stream: StreamConfig,
    pub roles: RolesConfig,
    pub sources: SourcesConfig,
    pub filter: FilterConfig,
    pub log: LogConfig,
    /// Problems that stop delivery but not recording (a token file that
    /// cannot be read): `check-config` reports them as errors (exit 1);
    /// the daemon still starts and records, and `/readyz` says why
    /// nothing is delivered (a refused start would lose the calls).
    pub delivery_problems: Vec<ConfigError>,
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
    /// Default: `$STATE_DIRECTORY` (systemd `StateDirectory=`) if set, else
    /// `/var/lib/pbx-edge` for a binary installed under `/usr`, else `./var`
    /// ([`default_spool_dir`]).
    pub dir: PathBuf,
    /// Bytes; above it health is degraded (nothing spooled is ever deleted for room).
    pub max_size: u64,
    /// How long a delivered recording stays on disk (zero: removed once delivered).
    pub retention: Duration,
    /// `encryption_key_file`: the key new spool files are sealed with;
    /// empty: the systemd credential `spool-key`, if present, else none.
    pub encryption_key_file: PathBuf,
    /// `old_key_files`: keys of earlier rotations, still opening old files.
    pub old_key_files: Vec<PathBuf>,
    /// The keys read from those files when the configuration was loaded
    /// (`None`: encryption at rest is off). Compared by key id.
    pub keys: Option<std::sync::Arc<crate::spoolfile::Keyring>>,
}

/// `[health]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    /// HTTP listener for /healthz /readyz /metrics /status.
    pub listen: SocketAddr,
    /// `health.control_allow`: networks besides loopback whose requests to
    /// the control API (`/v1/calls`, pause/resume) are taken; empty (the
    /// default): loopback only, others get 403.
    pub control_allow: Vec<IpNet>,
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
    /// DTMF sequence that pauses a call's recording ("" = none), e.g. `*1`.
    pub pause_dtmf: String,
    /// DTMF sequence that resumes it ("" = none).
    pub resume_dtmf: String,
}

impl RecordingConfig {
    /// An engine configuration carrying these settings (the rest default).
    pub(crate) fn engine_config(&self) -> EngineConfig {
        EngineConfig {
            sample_rate: self.sample_rate.policy(),
            jitter_ms: u32::try_from(self.jitter.as_millis()).unwrap_or(u32::MAX),
            rtp_timeout_us: i64::try_from(self.rtp_timeout.as_micros()).unwrap_or(i64::MAX),
            pause_dtmf: self.pause_dtmf.clone(),
            resume_dtmf: self.resume_dtmf.clone(),
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

/// `cloud.audio_format` (CONTRACT §4): the file uploaded for a recording.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AudioFormat {
    /// The spooled WAV as it is.
    #[default]
    Wav,
    /// A lossless FLAC encoding of the WAV (same samples and channels).
    Flac,
}

impl AudioFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            AudioFormat::Wav => "wav",
            AudioFormat::Flac => "flac",
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
    /// `wav` (default) or `flac`: the audio file uploaded.
    pub audio_format: AudioFormat,
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

/// `[stream]`: live streaming of calls in progress (CONTRACT §5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamConfig {
    pub enabled: bool,
    /// `wss://…` (or `ws://` to a loopback host), without a trailing `/`;
    /// empty only while `enabled` is false. No credentials, no fragment.
    pub url: String,
    /// File holding the bearer token; empty path: the cloud's
    /// ([`StreamConfig::token_path`]).
    pub token_file: PathBuf,
    /// Audio per binary message, 20 ms ..= 1 s.
    pub frame: Duration,
    /// How far a call's stream may fall behind (or its receiver be gone)
    /// before it is given up for that call, 1 s ..= 1 h.
    pub max_lag: Duration,
}

impl StreamConfig {
    /// The token file to read: `stream.token_file`, else `cloud.token_file`.
    pub fn token_path<'a>(&'a self, cloud: &'a CloudConfig) -> &'a Path {
        if self.token_file.as_os_str().is_empty() {
            &cloud.token_file
        } else {
            &self.token_file
        }
    }
}

/// `[roles]`: who is who (`channels[i].role`, `extension`, the direction
/// of calls a source does not know it for).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolesConfig {
    /// Number patterns of internal parties (`*` any run, `?` one character).
    pub internal_numbers: Vec<String>,
    /// All-digit numbers this long are extensions (inclusive); `None`: off.
    pub extension_length: Option<(usize, usize)>,
    /// SIP URI / SIPREC AoR patterns of agents, e.g. `sip:*@agents.example.com`.
    pub agent_uris: Vec<String>,
    /// Carrier-side addresses (host bits cleared): an INVITE from one is
    /// inbound, to one outbound.
    pub trunks: Vec<IpNet>,
}

/// `[sources.*]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourcesConfig {
    pub siprec: SiprecConfig,
    pub sniff: SniffConfig,
    pub folder: FolderConfig,
    pub hep: HepConfig,
}

/// `[sources.hep]`: a HEP collector (CONTRACT §6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HepConfig {
    pub enabled: bool,
    /// HEP over UDP and TCP, the same port.
    pub listen: SocketAddr,
    /// Capture agents allowed to send (host bits cleared); empty = all.
    pub allow: Vec<IpNet>,
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
    pub(crate) fn allows(&self, addr: IpAddr) -> bool {
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
    /// How split legs of different lengths are lined up.
    pub leg_align: LegAlign,
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

/// `sources.folder.leg_align`: where split legs (MixMonitor `r()`/`t()`)
/// of different lengths are lined up. Without MixMonitor's `S` option
/// Asterisk writes nothing for a direction while it has no audio; both files
/// are opened when MixMonitor starts and closed at hang-up, so the audio a
/// shorter leg lacks is nearly always at its start (ringing, one-way early
/// media).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegAlign {
    /// `"end"` (default): the legs end together; the shorter is padded
    /// with silence at its start.
    End,
    /// `"start"`: the legs start together; the shorter is padded at its end.
    Start,
}

impl LegAlign {
    pub fn as_str(self) -> &'static str {
        match self {
            LegAlign::End => "end",
            LegAlign::Start => "start",
        }
    }
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
    /// journald when stderr is connected to the journal (`JOURNAL_STREAM`
    /// names stderr), else text.
    Auto,
    /// Plain lines without time stamps or colours, each starting with its
    /// syslog priority (`<3>` error ... `<7>` debug).
    Journald,
    Text,
    Json,
}

impl LogFormat {
    /// The concrete format: `Auto` becomes `Journald` when `journal_stream`
    /// (stderr is the journal: `JOURNAL_STREAM` names it), else `Text`.
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

/// The spool of an installed pbx-edge (CONTRACT §2): the service's
/// `StateDirectory=`.
pub const INSTALLED_SPOOL_DIR: &str = "/var/lib/pbx-edge";

/// `spool.dir` when the configuration does not set it: the first path of
/// a systemd `STATE_DIRECTORY` value when given (the service); else
/// [`INSTALLED_SPOOL_DIR`] when the binary `exe` is installed under `/usr`
/// (the packages' `/usr/bin/pbx-edge`, so `sudo -u pbx-edge pbx-edge spool
/// list` finds the service's spool); else `./var` (run from a checkout:
/// `cargo run`, `target/...`, works as any user).
pub fn default_spool_dir(state_directory: Option<&str>, exe: Option<&Path>) -> PathBuf {
    if let Some(d) = state_directory
        .and_then(|s| s.split(':').next())
        .filter(|s| !s.is_empty())
    {
        return PathBuf::from(d);
    }
    if exe.is_some_and(|e| e.starts_with("/usr")) {
        PathBuf::from(INSTALLED_SPOOL_DIR)
    } else {
        PathBuf::from("./var")
    }
}

impl Config {
    /// Built-in defaults with `spool.dir` from [`default_spool_dir`]: a
    /// systemd `STATE_DIRECTORY` value when given, else by where this
    /// program is installed.
    pub fn defaults(state_directory: Option<&str>) -> Config {
        let exe = std::env::current_exe().ok();
        let dir = default_spool_dir(state_directory, exe.as_deref());
        Config {
            agent: AgentConfig {
                id: crate::sys::hostname(),
            },
            spool: SpoolConfig {
                dir,
                max_size: 20 << 30,
                retention: Duration::ZERO,
                encryption_key_file: PathBuf::new(),
                old_key_files: Vec::new(),
                keys: None,
            },
            health: HealthConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 9466)),
                control_allow: Vec::new(),
            },
            recording: RecordingConfig {
                sample_rate: SampleRate::Auto,
                min_duration: Duration::ZERO,
                rtp_timeout: Duration::from_secs(30),
                jitter: Duration::from_millis(500),
                pause_dtmf: String::new(),
                resume_dtmf: String::new(),
            },
            cloud: CloudConfig {
                url: String::new(),
                protocol: CloudProtocol::Tus,
                audio_format: AudioFormat::Wav,
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
            stream: StreamConfig {
                enabled: false,
                url: String::new(),
                token_file: PathBuf::new(),
                frame: Duration::from_millis(100),
                max_lag: Duration::from_secs(30),
            },
            roles: RolesConfig {
                internal_numbers: Vec::new(),
                extension_length: Some((2, 5)),
                agent_uris: Vec::new(),
                trunks: Vec::new(),
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
                hep: HepConfig {
                    enabled: false,
                    listen: SocketAddr::from(([127, 0, 0, 1], 9060)),
                    allow: Vec::new(),
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
                    leg_align: LegAlign::End,
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
            delivery_problems: Vec::new(),
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
        if s.hep.enabled {
            sources.push(format!("hep {}", s.hep.listen));
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

    /// Everything `check-config` warns about, and the daemon logs at start
    /// and on SIGHUP: settings that work but not as one may expect (not
    /// errors: the daemon still runs). Secret files too open
    /// ([`Self::secret_file_warnings`]) and a SIPREC port range too small
    /// for `max_calls` ([`Self::capacity_warnings`]).
    pub fn warnings(&self) -> Vec<String> {
        let mut w = self.secret_file_warnings();
        w.extend(self.capacity_warnings());
        let r = &self.recording;
        if !r.pause_dtmf.is_empty()
            && !r.resume_dtmf.is_empty()
            && r.resume_dtmf.chars().all(|c| c.is_ascii_digit())
        {
            w.push(format!(
                "recording.resume_dtmf (\"{}\") is digits only: a card number keyed while paused may hold it and resume the recording on its own (only the leg that paused can resume; still, start the sequence with * or #)",
                r.resume_dtmf
            ));
        }
        if self.sources.folder.enabled && !r.pause_dtmf.is_empty() {
            w.push(
                "recording.pause_dtmf does not apply to the folder source: the PBX's own recordings hold what it recorded (pause them in the PBX, e.g. Asterisk's StopMixMonitor/PauseMonitor)"
                    .to_string(),
            );
        }
        w
    }

    /// A SIPREC source whose `rtp_ports` holds fewer streams than
    /// `max_calls` two-stream calls need (one even port a stream, the odd
    /// one above it kept for RTCP): the calls past the range's capacity get
    /// 503, and ended calls' ports come back sooner than their 60 s
    /// cooling-off.
    pub fn capacity_warnings(&self) -> Vec<String> {
        let sr = &self.sources.siprec;
        if !sr.enabled {
            return Vec::new();
        }
        let (lo, hi) = (
            u32::from(*sr.rtp_ports.start()),
            u32::from(*sr.rtp_ports.end()),
        );
        let streams = (lo..=hi).filter(|p| p % 2 == 0).count() as u64;
        let calls = streams / 2;
        if u64::from(sr.max_calls) <= calls {
            return Vec::new();
        }
        let need = u64::from(sr.max_calls) * 4;
        vec![format!(
            "sources.siprec.rtp_ports ({lo}-{hi}) holds {streams} streams: at most {calls} two-stream calls at once, fewer than max_calls = {}; about {need} ports are needed (e.g. \"{lo}-{}\"; keep the range clear of the PBX's own RTP ports and of net.ipv4.ip_local_port_range)",
            sr.max_calls,
            (u64::from(lo) + need - 1).min(65535),
        )]
    }

    /// Files holding secrets (`cloud.token_file`, `cloud.client_key`,
    /// `sources.siprec.tls_key`, `sources.folder.cdr_db_url_file`,
    /// `stream.token_file`, `spool.encryption_key_file`, `old_key_files`) whose
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
        if !self.stream.token_file.as_os_str().is_empty() {
            files.push(("stream.token_file", &self.stream.token_file));
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
        if !self.spool.encryption_key_file.as_os_str().is_empty() {
            files.push(("spool.encryption_key_file", &self.spool.encryption_key_file));
        }
        for p in &self.spool.old_key_files {
            files.push(("spool.old_key_files", p));
        }
        files
            .into_iter()
            .filter_map(|(key, path)| secret_file_warning(key, path))
            .collect()
    }

    /// What a reload from `self` to `new` cannot apply in place: the names of
    /// the parts whose settings changed and that must be restarted —
    /// `"sources.siprec"`, `"sources.sniff"`, `"sources.folder"` (any key of
    /// that source), `"health.listen"`, `"spool.dir"`, `"log.format"`. Every
    /// other key (agent, recording, cloud, spool limits, log_numbers) can be
    /// taken over by the running daemon for new calls and uploads; of those,
    /// `"roles"` and `"spool.keys"` are named too, for the sources that
    /// cannot take them in place (the folder source restarts for them).
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
        if self.sources.hep != new.sources.hep {
            out.push("sources.hep");
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
        if self.roles != new.roles {
            out.push("roles");
        }
        if self.spool.keys != new.spool.keys {
            out.push("spool.keys");
        }
        out
    }
}

/// The warning for one secret file, if its mode is more open than 0640.
pub(crate) fn secret_file_warning(key: &str, path: &Path) -> Option<String> {
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
    /// The file is missing, unreadable, too large or not UTF-8. Shaped as
    /// every problem is (CONTRACT §1: `FILE:LINE: key.path: what`), the
    /// whole file's problem at its line 1.
    #[error("{}:1: file: {message}", path.display())]
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

#[cfg(test)]
mod tests;
