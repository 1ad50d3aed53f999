//! The sources: the outside world → recordings. Each source turns what it
//! receives (SIPREC sessions, sniffed SIP/RTP, a PBX's recording files)
//! into recording pairs through [`crate::recording`], and publishes its
//! state into [`crate::status`]. A source never uses another source.

pub(crate) mod engine_host;
pub mod folder;
pub mod hep;
pub mod siprec;
pub mod sniff;
