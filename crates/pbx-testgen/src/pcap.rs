//! Writing captures: classic pcap (µs or ns) and pcapng, any link type.

use std::io::{self, Write};

/// Link-layer framing of the frames written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    Ethernet,
    /// Linux cooked capture v1 (DLT 113).
    LinuxSll,
    /// Linux cooked capture v2 (DLT 276).
    LinuxSll2,
    /// Raw IP (DLT 101).
    RawIp,
}

impl Link {
    pub fn dlt(self) -> u32 {
        match self {
            Link::Ethernet => 1,
            Link::LinuxSll => 113,
            Link::LinuxSll2 => 276,
            Link::RawIp => 101,
        }
    }
}

/// Capture file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    PcapMicros,
    PcapNanos,
    PcapNg,
}

/// Streams frames into a capture file.
pub struct CaptureWriter<W: Write> {
    w: W,
    format: Format,
    link: Link,
}

impl<W: Write> CaptureWriter<W> {
    pub fn new(mut w: W, format: Format, link: Link) -> io::Result<Self> {
        match format {
            Format::PcapMicros | Format::PcapNanos => {
                let magic: u32 = if format == Format::PcapMicros {
                    0xa1b2_c3d4
                } else {
                    0xa1b2_3c4d
                };
                w.write_all(&magic.to_le_bytes())?;
                w.write_all(&2u16.to_le_bytes())?;
                w.write_all(&4u16.to_le_bytes())?;
                w.write_all(&0i32.to_le_bytes())?;
                w.write_all(&0u32.to_le_bytes())?;
                w.write_all(&262_144u32.to_le_bytes())?;
                w.write_all(&link.dlt().to_le_bytes())?;
            }
            Format::PcapNg => {
                // Section header block
                let mut shb = Vec::new();
                shb.extend_from_slice(&0x1a2b_3c4du32.to_le_bytes());
                shb.extend_from_slice(&1u16.to_le_bytes());
                shb.extend_from_slice(&0u16.to_le_bytes());
                shb.extend_from_slice(&(-1i64).to_le_bytes());
                write_block(&mut w, 0x0a0d_0d0a, &shb)?;
                // Interface description block, if_tsresol = 9 (ns)
                let mut idb = Vec::new();
                idb.extend_from_slice(&(link.dlt() as u16).to_le_bytes());
                idb.extend_from_slice(&0u16.to_le_bytes());
                idb.extend_from_slice(&262_144u32.to_le_bytes());
                idb.extend_from_slice(&9u16.to_le_bytes()); // if_tsresol
                idb.extend_from_slice(&1u16.to_le_bytes());
                idb.extend_from_slice(&[9, 0, 0, 0]);
                idb.extend_from_slice(&0u16.to_le_bytes()); // opt_endofopt
                idb.extend_from_slice(&0u16.to_le_bytes());
                write_block(&mut w, 1, &idb)?;
            }
        }
        Ok(CaptureWriter { w, format, link })
    }

    pub fn link(&self) -> Link {
        self.link
    }

    /// Write one frame captured at `ts_us` (µs since the epoch; `ts_ns` adds sub-µs).
    pub fn write(&mut self, ts_ns: i64, frame: &[u8]) -> io::Result<()> {
        let len = frame.len() as u32;
        match self.format {
            Format::PcapMicros | Format::PcapNanos => {
                let secs = ts_ns.div_euclid(1_000_000_000) as u32;
                let frac = ts_ns.rem_euclid(1_000_000_000) as u32;
                let frac = if self.format == Format::PcapMicros {
                    frac / 1000
                } else {
                    frac
                };
                self.w.write_all(&secs.to_le_bytes())?;
                self.w.write_all(&frac.to_le_bytes())?;
                self.w.write_all(&len.to_le_bytes())?;
                self.w.write_all(&len.to_le_bytes())?;
                self.w.write_all(frame)
            }
            Format::PcapNg => {
                let t = ts_ns as u64;
                let mut epb = Vec::with_capacity(frame.len() + 24);
                epb.extend_from_slice(&0u32.to_le_bytes());
                epb.extend_from_slice(&((t >> 32) as u32).to_le_bytes());
                epb.extend_from_slice(&(t as u32).to_le_bytes());
                epb.extend_from_slice(&len.to_le_bytes());
                epb.extend_from_slice(&len.to_le_bytes());
                epb.extend_from_slice(frame);
                while epb.len() % 4 != 0 {
                    epb.push(0);
                }
                write_block(&mut self.w, 6, &epb)
            }
        }
    }

    pub fn into_inner(self) -> W {
        self.w
    }
}

fn write_block<W: Write>(w: &mut W, kind: u32, body: &[u8]) -> io::Result<()> {
    let total = (12 + body.len()) as u32;
    w.write_all(&kind.to_le_bytes())?;
    w.write_all(&total.to_le_bytes())?;
    w.write_all(body)?;
    w.write_all(&total.to_le_bytes())
}
