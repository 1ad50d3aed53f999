//! # pbx-testgen: calls whose audio is known
//!
//! Makes SIP/RTP captures for pbx-edge's ground-truth tests and benchmarks: a
//! [`scenario::CallSpec`] describes a call (parties, codec, each leg's audio,
//! network trouble: loss, duplicates, jitter, reordering, SSRC change, hold,
//! silence suppression, clock drift, NAT), [`scenario::generate`] turns calls into
//! timestamped link-layer frames plus a [`scenario::CallTruth`] (what each channel
//! of a correct recording holds), and [`pcap::CaptureWriter`] writes them as pcap
//! or pcapng with Ethernet (VLAN/QinQ), Linux cooked v1/v2 or raw IP framing.

pub mod audio;
pub mod codec;
pub mod frame;
pub mod pcap;
pub mod scenario;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

pub use codec::TestCodec;
pub use frame::Framing;
pub use pcap::{Format, Link};
pub use scenario::{CallSpec, CallTruth, Hold, Impairments, LegSpec, Party, SipTransport};

/// Generate `calls` and write them to `path`.
pub fn write_capture(
    path: &Path,
    calls: &[CallSpec],
    format: Format,
    link: Link,
    framing: &Framing,
) -> std::io::Result<Vec<CallTruth>> {
    let (frames, truths) = scenario::generate(calls, link, framing);
    let mut w = pcap::CaptureWriter::new(BufWriter::new(File::create(path)?), format, link)?;
    for (ts, f) in &frames {
        w.write(*ts, f)?;
    }
    w.into_inner().flush()?;
    Ok(truths)
}
