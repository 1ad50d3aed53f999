//! # pbx-edge: the shell around `pbx-core`
//!
//! Everything that touches the operating system lives here: the command line
//! ([`cli`]), the `import` command ([`import`]), recording files
//! ([`recording`]), and the config value syntax ([`units`]). The protocol and
//! audio logic is in the sans-IO `pbx-core` crate.

#![warn(unreachable_pub)]

pub mod cli;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod delivery;
pub mod health;
pub use commands::import;
pub mod logmask;
pub mod recording;
pub mod sources;
pub mod spool;
pub mod status;
pub(crate) mod sys;
pub mod units;
pub mod upload;

// The paths these modules had before the layout of sources/ (kept for the
// tests, fuzz targets and benches that use them).
pub use sources::folder::{self, cdr};
pub use sources::siprec::{self, admission, guard as sip_guard, media, ports as rtp_ports, srtp};
pub use sources::sniff;
pub use sys::tls as sip_tls;
