//! # capture: pcap / pcapng bytes → link-layer frames with timestamps
//!
//! In: any [`std::io::Read`] positioned at the start of a classic pcap file
//! (little or big endian, microsecond or nanosecond magic, also the "modified"
//! Kuznetzov variant) or a pcapng file (any number of sections and interfaces,
//! each section in its own byte order). Out: one [`CapturedFrame`] per packet
//! record — the interface's [`LinkType`], the timestamp converted to
//! [`Timestamp`] (µs since the epoch, honouring pcapng `if_tsresol` in powers of
//! 10 or 2 and `if_tsoffset`), the captured bytes and the original length.
//!
//! Promises:
//! - The reader never panics and never loops: each call consumes input or ends.
//! - Memory is bounded: a packet record may hold at most [`MAX_PACKET_LEN`]
//!   bytes (Wireshark's own limit); a packet-bearing block declaring more is
//!   [`CaptureError::Corrupt`]. Large blocks that carry no packets (name
//!   resolution, decryption secrets, custom blocks, ...) are skipped by streaming
//!   over them, not by buffering them.
//! - Errors are exact: a file that ends inside a record gives
//!   [`CaptureError::Truncated`] with the byte offset where that record starts;
//!   bytes that cannot be a valid record give [`CaptureError::Corrupt`] with the
//!   offset of the bad record. Every frame returned before the error is good, and
//!   after an error every later call returns the same error again.
//! - No made-up times: a pcapng Simple Packet Block (no timestamp) takes the
//!   time of the last timestamped packet before it; with none before it the
//!   input is refused ([`CaptureError::Untimed`]), not read as packets at 1970
//!   (the engine places audio by capture time: a call would be dated 1970,
//!   and one instant for every packet is no timing at all).
//! - [`CaptureReader::offset`] is the number of input bytes consumed up to the end
//!   of the last complete record or block, so "stopped at byte N" is meaningful.
//!
//! Block framing (lengths, trailers, limits) is done here so that truncation and
//! corruption are told apart precisely; the contents of each pcapng block (SHB,
//! IDB with its options, EPB, SPB) are decoded by `pcap-parser`; classic pcap
//! headers and records (fixed fields, six magic numbers) are decoded here.
//! Frames borrow the reader's internal buffer: no per-packet allocation.

use std::fmt;
use std::io::{self, Read};
use std::ops::Range;

use pcap_parser::pcapng::{
    parse_enhancedpacketblock_be, parse_enhancedpacketblock_le, parse_interfacedescriptionblock_be,
    parse_interfacedescriptionblock_le, parse_sectionheaderblock, parse_simplepacketblock_be,
    parse_simplepacketblock_le,
};
use pcap_parser::traits::PcapNGPacketBlock;
use pcap_parser::{EPB_MAGIC, IDB_MAGIC, SHB_MAGIC, SPB_MAGIC};

use crate::Timestamp;

/// The largest packet a record may carry (256 KiB, as in Wireshark and tcpdump).
pub const MAX_PACKET_LEN: usize = 262_144;

/// The obsolete Packet Block's type (pcapng drafts; replaced by the EPB).
const OBSOLETE_PB_MAGIC: u32 = 0x0000_0002;

/// Largest pcapng block we buffer: a maximal packet plus the EPB header and up
/// to 64 KiB of options. SHB and IDB blocks share this limit.
const MAX_BUFFERED_BLOCK: usize = MAX_PACKET_LEN + 32 + 64 * 1024;

/// At most this many interfaces per pcapng section (bounded state).
const MAX_INTERFACES: usize = 65_536;

/// Bytes asked from the reader at a time.
const READ_CHUNK: usize = 64 * 1024;

const BOM_LE: u32 = 0x1A2B_3C4D;
const BOM_SWAPPED: u32 = 0x4D3C_2B1A;

/// The link-layer header type of a frame (DLT / LINKTYPE numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinkType {
    /// LINKTYPE_ETHERNET (1).
    Ethernet,
    /// LINKTYPE_LINUX_SLL (113), Linux "cooked" capture v1.
    LinuxSll,
    /// LINKTYPE_LINUX_SLL2 (276), Linux "cooked" capture v2.
    LinuxSll2,
    /// Raw IP, version from the first nibble: LINKTYPE_RAW (101) and the
    /// historical DLT_RAW values 12 and 14.
    RawIp,
    /// LINKTYPE_IPV4 (228).
    Ipv4,
    /// LINKTYPE_IPV6 (229).
    Ipv6,
    /// LINKTYPE_NULL (0): BSD loopback, 4-byte AF in the capturing host's order.
    Null,
    /// LINKTYPE_LOOP (108): OpenBSD loopback, 4-byte AF in network order.
    Loop,
    /// Anything else, with its number.
    Other(u32),
}

impl LinkType {
    /// Maps a DLT / LINKTYPE number to a link type.
    pub fn from_number(n: u32) -> LinkType {
        match n {
            0 => LinkType::Null,
            1 => LinkType::Ethernet,
            12 | 14 | 101 => LinkType::RawIp,
            108 => LinkType::Loop,
            113 => LinkType::LinuxSll,
            228 => LinkType::Ipv4,
            229 => LinkType::Ipv6,
            276 => LinkType::LinuxSll2,
            other => LinkType::Other(other),
        }
    }

    /// The LINKTYPE number (raw IP maps to 101).
    pub fn number(self) -> u32 {
        match self {
            LinkType::Null => 0,
            LinkType::Ethernet => 1,
            LinkType::RawIp => 101,
            LinkType::Loop => 108,
            LinkType::LinuxSll => 113,
            LinkType::Ipv4 => 228,
            LinkType::Ipv6 => 229,
            LinkType::LinuxSll2 => 276,
            LinkType::Other(n) => n,
        }
    }
}

/// Which container format the input is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaptureFormat {
    Pcap,
    PcapNg,
}

/// One packet record.
#[derive(Debug, Clone, Copy)]
pub struct CapturedFrame<'a> {
    pub ts: Timestamp,
    pub link: LinkType,
    /// The captured bytes (may be shorter than `orig_len` when a snap length cut it).
    pub data: &'a [u8],
    /// The packet's length on the wire.
    pub orig_len: u32,
}

/// Why reading stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaptureError {
    #[error("read error: {0}")]
    Io(#[from] io::Error),
    #[error("not a pcap or pcapng capture")]
    NotACapture,
    #[error("file ends inside the record that starts at byte {offset}")]
    Truncated { offset: u64 },
    #[error("corrupt record at byte {offset}: {reason}")]
    Corrupt { offset: u64, reason: String },
    /// A pcapng Simple Packet Block (which carries no time) before any
    /// packet with a time: the call's timing would be made up.
    #[error(
        "the packet at byte {offset} has no time: pcapng Simple Packet Blocks carry none, and no \
         timestamped packet came before it; recordings are placed by packet times, so this \
         capture cannot be imported (capture again with timestamps: dumpcap, tshark and \
         tcpdump write Enhanced Packet Blocks)"
    )]
    Untimed { offset: u64 },
}

impl CaptureError {
    /// The input offset the error refers to, when there is one.
    pub fn offset(&self) -> Option<u64> {
        match self {
            CaptureError::Truncated { offset }
            | CaptureError::Corrupt { offset, .. }
            | CaptureError::Untimed { offset } => Some(*offset),
            CaptureError::Io(_) | CaptureError::NotACapture => None,
        }
    }
}

/// A failure remembered so that every later call reports it again.
#[derive(Debug, Clone)]
enum Sticky {
    Truncated(u64),
    Corrupt(u64, String),
    Untimed(u64),
    Io(io::ErrorKind, String),
}

impl Sticky {
    fn from_error(e: &CaptureError) -> Sticky {
        match e {
            CaptureError::Io(io) => Sticky::Io(io.kind(), io.to_string()),
            CaptureError::NotACapture => Sticky::Corrupt(0, "not a capture".into()),
            CaptureError::Truncated { offset } => Sticky::Truncated(*offset),
            CaptureError::Corrupt { offset, reason } => Sticky::Corrupt(*offset, reason.clone()),
            CaptureError::Untimed { offset } => Sticky::Untimed(*offset),
        }
    }

    fn to_error(&self) -> CaptureError {
        match self {
            Sticky::Truncated(offset) => CaptureError::Truncated { offset: *offset },
            Sticky::Corrupt(offset, reason) => CaptureError::Corrupt {
                offset: *offset,
                reason: reason.clone(),
            },
            Sticky::Untimed(offset) => CaptureError::Untimed { offset: *offset },
            Sticky::Io(kind, msg) => CaptureError::Io(io::Error::new(*kind, msg.clone())),
        }
    }
}

/// pcapng timestamp units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TsResolution {
    /// 10^-e seconds per tick (e <= 19).
    Pow10(u32),
    /// 2^-e seconds per tick (e <= 63).
    Pow2(u32),
}

impl TsResolution {
    fn from_option(v: u8) -> Option<TsResolution> {
        let e = u32::from(v & 0x7f);
        if v & 0x80 == 0 {
            (e <= 19).then_some(TsResolution::Pow10(e))
        } else {
            (e <= 63).then_some(TsResolution::Pow2(e))
        }
    }

    /// Ticks → microseconds (saturating).
    fn to_micros(self, ticks: u64) -> i64 {
        let us: u128 = match self {
            TsResolution::Pow10(6) => u128::from(ticks),
            TsResolution::Pow10(e) if e < 6 => u128::from(ticks) * 10u128.pow(6 - e),
            TsResolution::Pow10(e) => u128::from(ticks) / 10u128.pow(e - 6),
            TsResolution::Pow2(e) => (u128::from(ticks) * 1_000_000) >> e,
        };
        i64::try_from(us).unwrap_or(i64::MAX)
    }
}

#[derive(Debug, Clone)]
struct Interface {
    link: LinkType,
    snaplen: u32,
    resolution: TsResolution,
    offset_us: i64,
}

#[derive(Debug)]
enum State {
    Pcap {
        big_endian: bool,
        nanos: bool,
        modified: bool,
        link: LinkType,
    },
    PcapNg {
        big_endian: bool,
        interfaces: Vec<Interface>,
        /// Timestamp for Simple Packet Blocks, which carry none: that of the
        /// last timestamped packet; `None` before the first (an SPB then is
        /// [`CaptureError::Untimed`]).
        last_ts: Option<Timestamp>,
    },
}

/// A frame found in the buffer: where its bytes are and what it is.
struct Found {
    range: Range<usize>,
    ts: Timestamp,
    link: LinkType,
    orig_len: u32,
}

/// Streaming pcap / pcapng reader. See the module documentation.
pub struct CaptureReader<R: Read> {
    inner: R,
    buf: Vec<u8>,
    /// Unconsumed bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    /// Input offset of `buf[0]`.
    base: u64,
    eof: bool,
    /// Input offset just after the last complete record or block.
    committed: u64,
    state: State,
    failed: Option<Sticky>,
}

impl<R: Read> fmt::Debug for CaptureReader<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaptureReader")
            .field("format", &self.format())
            .field("offset", &self.committed)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl<R: Read> CaptureReader<R> {
    /// Reads the file header (pcap) or the first section header block (pcapng).
    ///
    /// An input shorter than 4 bytes or with an unknown magic number is
    /// [`CaptureError::NotACapture`].
    pub fn new(inner: R) -> Result<Self, CaptureError> {
        let mut me = CaptureReader {
            inner,
            buf: Vec::new(),
            start: 0,
            end: 0,
            base: 0,
            eof: false,
            committed: 0,
            state: State::Pcap {
                big_endian: false,
                nanos: false,
                modified: false,
                link: LinkType::Ethernet,
            },
            failed: None,
        };
        if !me.fill(4)? {
            return Err(CaptureError::NotACapture);
        }
        let magic = me.u32_at(0, false);
        match magic {
            // Read little-endian: a1b2c3d4 (µs), a1b23c4d (ns) and a1b2cd34
            // (Kuznetzov's "modified" pcap, µs, 24-byte record headers)
            // written little-endian, and the same three written big-endian.
            // (pcap-parser knows no big-endian modified file, so the
            // header and records are decoded here.)
            0xa1b2_c3d4 | 0xa1b2_3c4d | 0xa1b2_cd34 | 0xd4c3_b2a1 | 0x4d3c_b2a1 | 0x34cd_b2a1 => {
                if !me.fill(24)? {
                    return Err(CaptureError::Truncated { offset: 0 });
                }
                let big_endian = matches!(magic, 0xd4c3_b2a1 | 0x4d3c_b2a1 | 0x34cd_b2a1);
                let nanos = matches!(magic, 0xa1b2_3c4d | 0x4d3c_b2a1);
                let modified = matches!(magic, 0xa1b2_cd34 | 0x34cd_b2a1);
                // The LINKTYPE field (offset 20) carries FCS information in its
                // upper bits.
                let link = LinkType::from_number(me.u32_at(20, big_endian) & 0xffff);
                me.state = State::Pcap {
                    big_endian,
                    nanos,
                    modified,
                    link,
                };
                me.consume(24);
                me.committed = 24;
            }
            SHB_MAGIC => {
                me.state = State::PcapNg {
                    big_endian: false,
                    interfaces: Vec::new(),
                    last_ts: None,
                };
                // The first block must be a section header; reading it here makes
                // a broken header an error of `new`.
                match me.pcapng_block()? {
                    Block::SectionStart => {}
                    _ => {
                        return Err(CaptureError::Corrupt {
                            offset: 0,
                            reason: "pcapng does not start with a section header".into(),
                        })
                    }
                }
            }
            _ => return Err(CaptureError::NotACapture),
        }
        Ok(me)
    }

    /// The container format.
    pub fn format(&self) -> CaptureFormat {
        match self.state {
            State::Pcap { .. } => CaptureFormat::Pcap,
            State::PcapNg { .. } => CaptureFormat::PcapNg,
        }
    }

    /// Input bytes consumed up to the end of the last complete record / block.
    pub fn offset(&self) -> u64 {
        self.committed
    }

    /// The next packet, `Ok(None)` at a clean end of input.
    pub fn next_frame(&mut self) -> Result<Option<CapturedFrame<'_>>, CaptureError> {
        if let Some(f) = &self.failed {
            return Err(f.to_error());
        }
        let found = match &self.state {
            State::Pcap { .. } => self.pcap_record(),
            State::PcapNg { .. } => self.pcapng_packet(),
        };
        match found {
            Ok(Some(f)) => Ok(Some(CapturedFrame {
                ts: f.ts,
                link: f.link,
                data: self.buf.get(f.range).unwrap_or(&[]),
                orig_len: f.orig_len,
            })),
            Ok(None) => Ok(None),
            Err(e) => {
                self.failed = Some(Sticky::from_error(&e));
                Err(e)
            }
        }
    }

    // ----- classic pcap -------------------------------------------------------

    fn pcap_record(&mut self) -> Result<Option<Found>, CaptureError> {
        let State::Pcap {
            big_endian,
            nanos,
            modified,
            link,
        } = self.state
        else {
            return Ok(None);
        };
        let rec_start = self.pos();
        let hdr_len = if modified { 24 } else { 16 };
        if !self.fill(hdr_len)? {
            return if self.avail().is_empty() {
                Ok(None)
            } else {
                Err(CaptureError::Truncated { offset: rec_start })
            };
        }
        let caplen = self.u32_at(8, big_endian) as usize;
        if caplen > MAX_PACKET_LEN {
            return Err(CaptureError::Corrupt {
                offset: rec_start,
                reason: format!("record claims {caplen} captured bytes (limit {MAX_PACKET_LEN})"),
            });
        }
        let total = hdr_len + caplen;
        if !self.fill(total)? {
            return Err(CaptureError::Truncated { offset: rec_start });
        }
        // Record header: seconds, fraction, captured and original length in
        // the file's byte order; the modified format adds interface index,
        // protocol, packet type and padding (8 bytes, not used).
        let ts_sec = self.u32_at(0, big_endian);
        let ts_frac = self.u32_at(4, big_endian);
        let origlen = self.u32_at(12, big_endian);
        let data_start = self.start + hdr_len;
        let data_range = data_start..data_start + caplen;
        let frac_us = if nanos { ts_frac / 1000 } else { ts_frac };
        let ts = Timestamp::from_micros(i64::from(ts_sec) * 1_000_000 + i64::from(frac_us));
        self.consume(total);
        self.committed = self.pos();
        Ok(Some(Found {
            range: data_range,
            ts,
            link,
            orig_len: origlen,
        }))
    }

    // ----- pcapng -------------------------------------------------------------

    fn pcapng_packet(&mut self) -> Result<Option<Found>, CaptureError> {
        loop {
            match self.pcapng_block()? {
                Block::End => return Ok(None),
                Block::Packet(f) => return Ok(Some(f)),
                Block::SectionStart | Block::Other => continue,
            }
        }
    }

    /// Reads and acts on one pcapng block.
    fn pcapng_block(&mut self) -> Result<Block, CaptureError> {
        let blk_start = self.pos();
        let truncated = CaptureError::Truncated { offset: blk_start };
        let corrupt = |reason: String| CaptureError::Corrupt {
            offset: blk_start,
            reason,
        };
        if !self.fill(8)? {
            return if self.avail().is_empty() {
                Ok(Block::End)
            } else {
                Err(truncated)
            };
        }
        // The SHB type is a palindrome, so it reads the same in either order.
        if self.u32_at(0, false) == SHB_MAGIC {
            if !self.fill(12)? {
                return Err(truncated);
            }
            let big = match self.u32_at(8, false) {
                BOM_LE => false,
                BOM_SWAPPED => true,
                other => return Err(corrupt(format!("bad byte-order magic {other:#010x}"))),
            };
            if let State::PcapNg { big_endian, .. } = &mut self.state {
                *big_endian = big;
            }
        }
        let big = match self.state {
            State::PcapNg { big_endian, .. } => big_endian,
            State::Pcap { .. } => return Ok(Block::End),
        };
        let btype = self.u32_at(0, big);
        let len32 = self.u32_at(4, big);
        let len = len32 as usize;
        if len < 12 || len % 4 != 0 {
            return Err(corrupt(format!("invalid block length {len32}")));
        }
        let carries_state = matches!(
            btype,
            SHB_MAGIC | IDB_MAGIC | EPB_MAGIC | SPB_MAGIC | OBSOLETE_PB_MAGIC
        );
        if len > MAX_BUFFERED_BLOCK {
            if carries_state {
                return Err(corrupt(format!(
                    "block of type {btype:#x} claims {len32} bytes (limit {MAX_BUFFERED_BLOCK})"
                )));
            }
            return self.skip_block(blk_start, len32, big);
        }
        if !self.fill(len)? {
            return Err(truncated);
        }
        let trailer = self.u32_at(len - 4, big);
        if trailer != len32 {
            return Err(corrupt(format!(
                "block length {len32} does not match its trailer {trailer}"
            )));
        }
        if btype == SPB_MAGIC && matches!(self.state, State::PcapNg { last_ts: None, .. }) {
            // No time to give it: refused rather than placed at 1970 (or at
            // one made-up instant, which the timeline would read as every
            // packet arriving at once). Wireshark shows no time for it.
            return Err(CaptureError::Untimed { offset: blk_start });
        }
        let result = match btype {
            SHB_MAGIC => self.on_section_header(len).map(|()| Block::SectionStart),
            IDB_MAGIC => self.on_interface(len, big).map(|()| Block::Other),
            EPB_MAGIC => self.on_enhanced_packet(len, big).map(Block::Packet),
            SPB_MAGIC => self.on_simple_packet(len, big).map(Block::Packet),
            OBSOLETE_PB_MAGIC => self.on_obsolete_packet(len, big).map(Block::Packet),
            _ => Ok(Block::Other),
        };
        let block = result.map_err(corrupt)?;
        self.consume(len);
        self.committed = self.pos();
        Ok(block)
    }

    fn on_section_header(&mut self, len: usize) -> Result<(), String> {
        let bytes = self
            .buf
            .get(self.start..self.end)
            .and_then(|b| b.get(..len))
            .unwrap_or(&[]);
        let shb = match parse_sectionheaderblock(bytes) {
            Ok((_, shb)) => shb,
            Err(e) => return Err(format!("bad section header block: {e:?}")),
        };
        if shb.major_version != 1 {
            return Err(format!(
                "unsupported pcapng version {}.{}",
                shb.major_version, shb.minor_version
            ));
        }
        if let State::PcapNg { interfaces, .. } = &mut self.state {
            interfaces.clear();
        }
        Ok(())
    }

    fn on_interface(&mut self, len: usize, big: bool) -> Result<(), String> {
        let bytes = self
            .buf
            .get(self.start..self.end)
            .and_then(|b| b.get(..len))
            .unwrap_or(&[]);
        let parsed = if big {
            parse_interfacedescriptionblock_be(bytes)
        } else {
            parse_interfacedescriptionblock_le(bytes)
        };
        let idb = match parsed {
            Ok((_, idb)) => idb,
            Err(e) => return Err(format!("bad interface description block: {e:?}")),
        };
        let mut resolution = TsResolution::Pow10(6);
        let mut offset_s: i64 = 0;
        for opt in &idb.options {
            let Ok(value) = opt.as_bytes() else { continue };
            match opt.code.0 {
                9 => {
                    if let Some(&v) = value.first() {
                        resolution = TsResolution::from_option(v)
                            .ok_or_else(|| format!("unsupported if_tsresol {v:#04x}"))?;
                    }
                }
                14 => {
                    if let Ok(b) = <[u8; 8]>::try_from(value) {
                        offset_s = if big {
                            i64::from_be_bytes(b)
                        } else {
                            i64::from_le_bytes(b)
                        };
                    }
                }
                _ => {}
            }
        }
        let iface = Interface {
            link: LinkType::from_number(u32::from(idb.linktype.0 as u16)),
            snaplen: idb.snaplen,
            resolution,
            offset_us: offset_s.saturating_mul(1_000_000),
        };
        if let State::PcapNg { interfaces, .. } = &mut self.state {
            if interfaces.len() >= MAX_INTERFACES {
                return Err(format!(
                    "more than {MAX_INTERFACES} interfaces in a section"
                ));
            }
            interfaces.push(iface);
        }
        Ok(())
    }

    fn on_enhanced_packet(&mut self, len: usize, big: bool) -> Result<Found, String> {
        let bytes = self
            .buf
            .get(self.start..self.end)
            .and_then(|b| b.get(..len))
            .unwrap_or(&[]);
        let parsed = if big {
            parse_enhancedpacketblock_be(bytes)
        } else {
            parse_enhancedpacketblock_le(bytes)
        };
        let epb = match parsed {
            Ok((_, epb)) => epb,
            Err(e) => return Err(format!("bad enhanced packet block: {e:?}")),
        };
        let data = epb.packet_data();
        if data.len() > MAX_PACKET_LEN {
            return Err(format!(
                "packet of {} bytes (limit {MAX_PACKET_LEN})",
                data.len()
            ));
        }
        let ticks = (u64::from(epb.ts_high) << 32) | u64::from(epb.ts_low);
        let (ts, link) = stamp(&mut self.state, epb.if_id as usize, ticks)?;
        Ok(Found {
            range: subslice_range(&self.buf, data),
            ts,
            link,
            orig_len: epb.origlen,
        })
    }

    /// The obsolete Packet Block (type 2, pcapng drafts before EPB; old
    /// Wireshark and tools still write it): an EPB with a 16-bit interface
    /// id and a 16-bit drop count.
    fn on_obsolete_packet(&mut self, len: usize, big: bool) -> Result<Found, String> {
        if len < 32 {
            return Err(format!("packet block of {len} bytes"));
        }
        let if_id = {
            let b = [self.avail()[8], self.avail()[9]];
            if big {
                u16::from_be_bytes(b)
            } else {
                u16::from_le_bytes(b)
            }
        };
        let ticks = (u64::from(self.u32_at(12, big)) << 32) | u64::from(self.u32_at(16, big));
        let caplen = self.u32_at(20, big) as usize;
        let orig_len = self.u32_at(24, big);
        if caplen > len - 32 {
            return Err(format!("packet of {caplen} bytes in a block of {len}"));
        }
        if caplen > MAX_PACKET_LEN {
            return Err(format!("packet of {caplen} bytes (limit {MAX_PACKET_LEN})"));
        }
        let (ts, link) = stamp(&mut self.state, usize::from(if_id), ticks)?;
        let at = self.start + 28;
        Ok(Found {
            range: at..at + caplen,
            ts,
            link,
            orig_len,
        })
    }

    fn on_simple_packet(&mut self, len: usize, big: bool) -> Result<Found, String> {
        let bytes = self
            .buf
            .get(self.start..self.end)
            .and_then(|b| b.get(..len))
            .unwrap_or(&[]);
        let parsed = if big {
            parse_simplepacketblock_be(bytes)
        } else {
            parse_simplepacketblock_le(bytes)
        };
        let spb = match parsed {
            Ok((_, spb)) => spb,
            Err(e) => return Err(format!("bad simple packet block: {e:?}")),
        };
        let State::PcapNg {
            interfaces,
            last_ts: Some(last_ts),
            ..
        } = &self.state
        else {
            return Err("simple packet block without a time".into());
        };
        let iface = interfaces
            .first()
            .ok_or_else(|| "simple packet block without an interface".to_string())?;
        // Captured length = min(original length, snap length); the rest is padding.
        let mut caplen = spb.origlen as usize;
        if iface.snaplen != 0 {
            caplen = caplen.min(iface.snaplen as usize);
        }
        let raw = spb.raw_packet_data();
        let data = raw.get(..caplen.min(raw.len())).unwrap_or(&[]);
        Ok(Found {
            range: subslice_range(&self.buf, data),
            ts: *last_ts,
            link: iface.link,
            orig_len: spb.origlen,
        })
    }

    /// Streams over a large block that carries no packet, checking its trailer.
    fn skip_block(&mut self, blk_start: u64, len32: u32, big: bool) -> Result<Block, CaptureError> {
        let truncated = CaptureError::Truncated { offset: blk_start };
        self.consume(8);
        if !self.skip(u64::from(len32) - 12)? || !self.fill(4)? {
            return Err(truncated);
        }
        let trailer = self.u32_at(0, big);
        if trailer != len32 {
            return Err(CaptureError::Corrupt {
                offset: blk_start,
                reason: format!("block length {len32} does not match its trailer {trailer}"),
            });
        }
        self.consume(4);
        self.committed = self.pos();
        Ok(Block::Other)
    }

    // ----- buffer -------------------------------------------------------------

    fn pos(&self) -> u64 {
        self.base + self.start as u64
    }

    fn avail(&self) -> &[u8] {
        self.buf.get(self.start..self.end).unwrap_or(&[])
    }

    fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
    }

    /// u32 at `at` bytes past the read position (0 if out of range).
    fn u32_at(&self, at: usize, big: bool) -> u32 {
        let b = self
            .avail()
            .get(at..at + 4)
            .and_then(|s| <[u8; 4]>::try_from(s).ok())
            .unwrap_or([0; 4]);
        if big {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        }
    }

    /// Makes at least `need` unconsumed bytes available; `false` when the input
    /// ends first.
    fn fill(&mut self, need: usize) -> io::Result<bool> {
        while self.end - self.start < need {
            if self.eof {
                return Ok(false);
            }
            if self.buf.len() - self.start < need || self.end == self.buf.len() {
                // Move the unconsumed tail to the front, grow if the record needs it.
                self.buf.copy_within(self.start..self.end, 0);
                self.base += self.start as u64;
                self.end -= self.start;
                self.start = 0;
                let want = need.max(READ_CHUNK);
                if self.buf.len() < want {
                    self.buf.resize(want, 0);
                }
            }
            let Some(space) = self.buf.get_mut(self.end..) else {
                return Ok(false);
            };
            match self.inner.read(space) {
                Ok(0) => self.eof = true,
                Ok(n) => self.end += n.min(space_len(self.buf.len(), self.end)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Discards `n` bytes of input; `false` when the input ends first.
    fn skip(&mut self, mut n: u64) -> io::Result<bool> {
        loop {
            let avail = (self.end - self.start) as u64;
            let take = avail.min(n);
            self.start += take as usize;
            n -= take;
            if n == 0 {
                return Ok(true);
            }
            // Buffer is empty now: read the next chunk.
            if !self.fill(1)? {
                return Ok(false);
            }
        }
    }
}

fn space_len(buf_len: usize, end: usize) -> usize {
    buf_len.saturating_sub(end)
}

enum Block {
    End,
    SectionStart,
    Packet(Found),
    Other,
}

/// The position of `inner` (a sub-slice of `outer`) inside `outer`.
/// A pcapng packet's time (its interface's resolution and offset) and link
/// type; the time is kept for the Simple Packet Blocks that follow.
fn stamp(state: &mut State, if_id: usize, ticks: u64) -> Result<(Timestamp, LinkType), String> {
    let State::PcapNg {
        interfaces,
        last_ts,
        ..
    } = state
    else {
        return Err("pcapng block in a pcap file".into());
    };
    let iface = interfaces
        .get(if_id)
        .ok_or_else(|| format!("packet on undeclared interface {if_id}"))?;
    let ts = Timestamp::from_micros(
        iface
            .resolution
            .to_micros(ticks)
            .saturating_add(iface.offset_us),
    );
    *last_ts = Some(ts);
    Ok((ts, iface.link))
}

fn subslice_range(outer: &[u8], inner: &[u8]) -> Range<usize> {
    let start = (inner.as_ptr() as usize).wrapping_sub(outer.as_ptr() as usize);
    if start > outer.len() || inner.len() > outer.len() - start {
        return 0..0;
    }
    start..start + inner.len()
}

#[cfg(test)]
mod tests;
