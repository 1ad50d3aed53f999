//! The sources: the outside world → recordings. Each source turns what it
//! receives (SIPREC sessions, sniffed SIP/RTP, HEP copies, a PBX's
//! recording files) into recording pairs through [`crate::recording`], and
//! publishes its state into [`crate::status`]. A source never uses another
//! source.
//!
//! What the daemon holds of a running source is a
//! [`handle::SourceHandle`] (`handle.rs`, with the helpers every source
//! shares): its
//! name, a reload (applied in place, or "restart me"), and a stop that
//! returns once every recording it had open is closed. The live sources
//! run their [`CallEngine`](pbx_core::call::CallEngine) in one
//! [`engine_host::EngineHost`] each and stop on one
//! [`Shutdown`](crate::sys::shutdown::Shutdown) token each.
//!
//! Adding a source: its module here (with a `SourceHandle`), its typed
//! section in `config/`, and one line in the daemon's `start_source`.

pub(crate) mod engine_host;
pub mod folder;
pub(crate) mod handle;
pub mod hep;
pub mod siprec;
pub mod sniff;
