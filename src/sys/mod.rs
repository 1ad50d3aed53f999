//! The operating system, one copy of each call: a leaf (it uses nothing of
//! this crate, only `std`, `libc` and `pbx-core`'s `Timestamp`).
//!
//! In: the clock, file systems, sockets' control messages, the host, PEM
//! key files (TLS), libpcap (filters).
//! Out: plain values (`Timestamp`, sizes, names) and private files.
//! Promises: only this module (and the sockets of the sources) calls
//! `SystemTime::now`; recordings' files and directories are created private
//! (0600 / 0700) here and nowhere else.

pub(crate) mod bpf;
pub(crate) mod clock;
pub(crate) mod files;
pub(crate) mod host;
pub(crate) mod sockets;
pub mod tls;

pub use clock::{now, now_ms};
pub use files::{create_private_dir, create_private_file, free_bytes, sync_dir};
pub use host::hostname;
