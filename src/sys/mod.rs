//! The operating system, one copy of each call: a leaf (it uses nothing of
//! this crate, only `std`, `libc` and `pbx-core`'s `Timestamp`).
//!
//! In: the clock, file systems, sockets' control messages, the host, PEM
//! key files (TLS), libpcap (filters).
//! Out: plain values (`Timestamp`, sizes, names) and private files.
//! Promises: one copy of each: the wall clock as a core `Timestamp` or as
//! epoch milliseconds ([`now`], [`now_ms`]; code that needs a `SystemTime`,
//! such as HTTP dates, still asks `SystemTime::now` itself), private file
//! and directory creation (0600 / 0700), a finished file's bytes mapped
//! for reading once, free space, the host name, socket options and control
//! messages.

pub(crate) mod bpf;
pub(crate) mod clock;
pub(crate) mod files;
pub(crate) mod host;
pub(crate) mod shutdown;
pub(crate) mod sockets;
pub mod tls;

pub use clock::{now, now_ms};
pub(crate) use clock::{steady_now, steady_of, wall_step};
pub(crate) use files::MappedFile;
pub use files::{create_private_dir, create_private_file, free_bytes, sync_dir};
pub use host::hostname;
pub(crate) use host::{heap_in_use, release_idle_memory, trim_heap_if_mostly_free};
