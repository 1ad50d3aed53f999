//! # pbx-edge: the shell around `pbx-core`
//!
//! Everything that touches the operating system lives here; the protocol and
//! audio logic is in the sans-IO `pbx-core` crate. Each folder is one arrow
//! of the flow (docs/architecture.md has the diagram and the layering rule,
//! which `tests/layering.rs` enforces):
//!
//! - [`cli`]: argv → a command; [`commands`]: `check-config`, `import`,
//!   `spool list|retry|purge`, `status`; [`daemon`]: `run` (sources,
//!   delivery, health, signals, reload, sd_notify).
//! - [`sources`]: the outside world → recordings: [`sources::sniff`]
//!   (AF_PACKET), [`sources::siprec`] (SIPREC server: SIP transports, media
//!   ports, SRTP, admission), [`sources::folder`] (a PBX's recording files
//!   and its CDR store).
//! - [`recording`]: the only writer of `<id>.wav` + `<id>.json` (a typed
//!   document), answered-call notes, power-loss syncing, crash recovery.
//! - [`spool`]: recording pairs → a durable queue (SQLite); [`delivery`]:
//!   due entries → uploads → outcomes; [`upload`]: the cloud protocols (tus,
//!   multipart) and what an answer means (a pure policy).
//! - [`stream`]: recordings being written → a live WebSocket stream per
//!   call (CONTRACT §5), best effort beside the recording.
//! - [`status`] and [`health`]: snapshots → `/healthz`, `/readyz`,
//!   `/metrics`, `/status`; [`control`]: `/v1/calls` (calls in progress,
//!   pause, resume) → requests answered by the engines.
//! - [`spoolfile`]: how a spool file is stored (plain or sealed at rest)
//!   and read back, its hash, its FLAC form for the uplink.
//! - [`config`]: file + environment → a typed `Config` (a leaf); `sys`
//!   (crate-private): clock, files, sockets, host name, BPF filters, TLS key
//!   files (a leaf); [`units`]: sizes and durations; [`logmask`]: phone
//!   numbers masked in logs.

#![warn(unreachable_pub)]

pub mod cli;
pub mod commands;
pub mod config;
pub mod control;
pub mod daemon;
pub mod delivery;
pub mod health;
pub use commands::import;
pub mod logmask;
pub mod recording;
pub mod sources;
pub mod spool;
pub mod spoolfile;
pub mod status;
pub mod stream;
pub(crate) mod sys;
pub mod units;
pub mod upload;

// The paths these modules had before the layout of sources/ (kept for the
// tests, fuzz targets and benches that use them).
pub use sources::folder::{self, cdr};
pub use sources::siprec::{self, admission, guard as sip_guard, media, ports as rtp_ports, srtp};
pub use sources::sniff;
pub use sys::tls as sip_tls;
