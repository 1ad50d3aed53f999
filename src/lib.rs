//! # pbx-edge: the shell around `pbx-core`
//!
//! Everything that touches the operating system lives here: the command line
//! ([`cli`]), the `import` command ([`import`]), recording files
//! ([`recording`]), and the config value syntax ([`units`]). The protocol and
//! audio logic is in the sans-IO `pbx-core` crate.

pub mod admission;
pub mod cdr;
pub mod cli;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod delivery;
pub mod folder;
pub mod health;
pub use commands::import;
pub mod logmask;
pub mod media;
pub mod recording;
pub mod rtp_ports;
pub mod sip_guard;
pub use sys::tls as sip_tls;
pub mod siprec;
pub mod sniff;
pub mod spool;
pub mod srtp;
pub mod status;
pub mod sys;
pub mod units;
pub mod upload;
