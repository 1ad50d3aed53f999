//! # pbx-core: the sans-IO heart of pbx-edge
//!
//! Bytes and timestamps come in; call events, PCM and recording metadata come out.
//! Nothing in this crate opens a socket or a file, spawns a task or reads the clock:
//! the shell (the `pbx-edge` binary) owns all of that and passes time in with every
//! input. That keeps a two-hour call with a missing BYE a test that runs in
//! milliseconds.
//!
//! The modules follow the data flow:
//!
//! ```text
//! capture ─► net ─► sip / rtp ─► call (engine) ─► audio (codecs, timeline, wav)
//! ```
//!
//! - [`capture`]: pcap / pcapng bytes → link-layer frames with timestamps.
//! - [`net`]: frames → UDP datagrams and in-order TCP stream bytes (VLAN, SLL,
//!   IPv4/IPv6, IPv4 defragmentation, TCP reassembly).
//! - [`hep`]: HEP (Homer) packets from capture agents → segments, beside
//!   `net` (the agent did the capturing and the unwrapping).
//! - [`sip`]: SIP messages (via `rsip`), TCP framing, SDP, the SIPREC
//!   server's UAS (`sip::uas`: transaction, dialog, response, timers) and
//!   SIPREC bodies (`sip::siprec`: xml, metadata, body, channel, answer).
//! - [`rtp`]: RTP/RTCP header parsing, RFC 4733 telephone events, the one
//!   sequence tracker.
//! - [`audio`]: decoders (G.711, G.722, GSM, Opus, L16; the one codec list),
//!   resampling, the two-channel timeline, the WAV writer.
//! - [`call`]: the `CallEngine` that ties it all together (demux, dialog,
//!   leg, seq; the per-leg `timeline`).

pub mod audio;
pub mod call;
pub mod capture;
pub mod hep;
pub mod net;
pub mod rtp;
pub mod sip;
pub mod time;

pub use time::Timestamp;
