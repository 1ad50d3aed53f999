//! Tests for the capture reader: pcap / pcapng bytes built by tiny writers below
//! (timestamps, link types, sections, truncation and corruption offsets), byte-
//! at-a-time reads, every-prefix truncation, proptests on garbage, and the shared
//! corpus read end to end with frame counts from tshark.

use super::*;
use proptest::prelude::*;
use std::io::Cursor;

// ----- tiny capture writers -------------------------------------------------------

fn e16(big: bool, v: u16) -> [u8; 2] {
    if big {
        v.to_be_bytes()
    } else {
        v.to_le_bytes()
    }
}

fn e32(big: bool, v: u32) -> [u8; 4] {
    if big {
        v.to_be_bytes()
    } else {
        v.to_le_bytes()
    }
}

/// Classic pcap writer.
struct Pcap {
    big: bool,
    /// Kuznetzov's "modified" format: 8 more bytes per record header.
    modified: bool,
    out: Vec<u8>,
}

impl Pcap {
    fn new(big: bool, nanos: bool, network: u32) -> Pcap {
        let magic: u32 = if nanos { 0xa1b2_3c4d } else { 0xa1b2_c3d4 };
        Pcap::with_magic(big, magic, network)
    }

    fn with_magic(big: bool, magic: u32, network: u32) -> Pcap {
        let mut out = Vec::new();
        out.extend(e32(big, magic));
        out.extend(e16(big, 2));
        out.extend(e16(big, 4));
        out.extend(e32(big, 0));
        out.extend(e32(big, 0));
        out.extend(e32(big, 65535));
        out.extend(e32(big, network));
        Pcap {
            big,
            modified: magic == 0xa1b2_cd34,
            out,
        }
    }

    fn record(&mut self, sec: u32, frac: u32, data: &[u8], orig_len: u32) -> &mut Self {
        let b = self.big;
        self.out.extend(e32(b, sec));
        self.out.extend(e32(b, frac));
        self.out.extend(e32(b, data.len() as u32));
        self.out.extend(e32(b, orig_len));
        if self.modified {
            // interface index, protocol, packet type, padding
            self.out.extend(e32(b, 3));
            self.out.extend(e16(b, 0x0800));
            self.out.extend([4, 0]);
        }
        self.out.extend_from_slice(data);
        self
    }
}

/// pcapng writer; each `shb` starts a section in the given byte order.
struct Ng {
    big: bool,
    out: Vec<u8>,
}

impl Ng {
    fn new() -> Ng {
        Ng {
            big: false,
            out: Vec::new(),
        }
    }

    fn block(&mut self, btype: u32, body: &[u8]) -> &mut Self {
        let mut body = body.to_vec();
        while body.len() % 4 != 0 {
            body.push(0);
        }
        let len = 12 + body.len() as u32;
        let b = self.big;
        self.out.extend(e32(b, btype));
        self.out.extend(e32(b, len));
        self.out.extend(body);
        self.out.extend(e32(b, len));
        self
    }

    fn shb(&mut self, big: bool) -> &mut Self {
        self.big = big;
        let mut body = Vec::new();
        body.extend(e32(big, 0x1A2B_3C4D));
        body.extend(e16(big, 1));
        body.extend(e16(big, 0));
        body.extend([0xff; 8]); // section length: unknown
        self.block(0x0A0D_0D0A, &body)
    }

    fn options(&self, opts: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut body = Vec::new();
        if opts.is_empty() {
            return body;
        }
        for (code, value) in opts {
            body.extend(e16(self.big, *code));
            body.extend(e16(self.big, value.len() as u16));
            body.extend(value);
            while body.len() % 4 != 0 {
                body.push(0);
            }
        }
        body.extend([0, 0, 0, 0]); // opt_endofopt
        body
    }

    fn idb(&mut self, link: u16, snaplen: u32, opts: &[(u16, Vec<u8>)]) -> &mut Self {
        let mut body = Vec::new();
        body.extend(e16(self.big, link));
        body.extend(e16(self.big, 0));
        body.extend(e32(self.big, snaplen));
        body.extend(self.options(opts));
        self.block(1, &body)
    }

    fn epb(&mut self, if_id: u32, ticks: u64, data: &[u8], orig_len: u32) -> &mut Self {
        let b = self.big;
        let mut body = Vec::new();
        body.extend(e32(b, if_id));
        body.extend(e32(b, (ticks >> 32) as u32));
        body.extend(e32(b, ticks as u32));
        body.extend(e32(b, data.len() as u32));
        body.extend(e32(b, orig_len));
        body.extend_from_slice(data);
        while body.len() % 4 != 0 {
            body.push(0);
        }
        body.extend(self.options(&[(1, b"comment".to_vec())]));
        self.block(6, &body)
    }

    /// The obsolete Packet Block (type 2): 16-bit interface id and drops.
    fn opb(&mut self, if_id: u16, ticks: u64, data: &[u8], orig_len: u32) -> &mut Self {
        let b = self.big;
        let mut body = Vec::new();
        body.extend(e16(b, if_id));
        body.extend(e16(b, 7)); // drops
        body.extend(e32(b, (ticks >> 32) as u32));
        body.extend(e32(b, ticks as u32));
        body.extend(e32(b, data.len() as u32));
        body.extend(e32(b, orig_len));
        body.extend_from_slice(data);
        while body.len() % 4 != 0 {
            body.push(0);
        }
        self.block(2, &body)
    }

    fn spb(&mut self, orig_len: u32, data: &[u8]) -> &mut Self {
        let mut body = Vec::new();
        body.extend(e32(self.big, orig_len));
        body.extend_from_slice(data);
        self.block(3, &body)
    }
}

/// A `Read` that hands out at most `step` bytes per call.
struct Trickle<'a> {
    data: &'a [u8],
    step: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.step.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

#[derive(Debug, PartialEq)]
struct Owned {
    ts: i64,
    link: LinkType,
    data: Vec<u8>,
    orig_len: u32,
}

/// Reads everything: the frames and how it ended.
fn read_all<R: Read>(r: R) -> (Vec<Owned>, Result<(), String>) {
    let mut reader = match CaptureReader::new(r) {
        Ok(r) => r,
        Err(e) => return (Vec::new(), Err(format!("new: {e}"))),
    };
    let mut frames = Vec::new();
    loop {
        match reader.next_frame() {
            Ok(Some(f)) => frames.push(Owned {
                ts: f.ts.as_micros(),
                link: f.link,
                data: f.data.to_vec(),
                orig_len: f.orig_len,
            }),
            Ok(None) => return (frames, Ok(())),
            Err(e) => return (frames, Err(e.to_string())),
        }
    }
}

fn reader(bytes: &[u8]) -> CaptureReader<Cursor<&[u8]>> {
    CaptureReader::new(Cursor::new(bytes)).expect("valid header")
}

// ----- classic pcap ---------------------------------------------------------------

#[test]
fn pcap_little_endian_microseconds() {
    let mut p = Pcap::new(false, false, 1);
    p.record(1_700_000_000, 123_456, b"frame-one", 9)
        .record(1_700_000_001, 999_999, b"two", 60);
    let mut r = reader(&p.out);
    assert_eq!(r.format(), CaptureFormat::Pcap);
    assert_eq!(r.offset(), 24);
    let f = r.next_frame().unwrap().unwrap();
    assert_eq!(f.ts.as_micros(), 1_700_000_000_123_456);
    assert_eq!(f.link, LinkType::Ethernet);
    assert_eq!(f.data, b"frame-one");
    assert_eq!(f.orig_len, 9);
    assert_eq!(r.offset(), 24 + 16 + 9);
    let f = r.next_frame().unwrap().unwrap();
    assert_eq!(f.ts.as_micros(), 1_700_000_001_999_999);
    assert_eq!(f.data, b"two");
    assert_eq!(f.orig_len, 60);
    assert!(r.next_frame().unwrap().is_none());
    assert!(r.next_frame().unwrap().is_none());
    assert_eq!(r.offset(), p.out.len() as u64);
}

#[test]
fn pcap_big_endian_nanoseconds() {
    let mut p = Pcap::new(true, true, 113);
    p.record(1_600_000_000, 987_654_321, &[1, 2, 3, 4], 4);
    let mut r = reader(&p.out);
    let f = r.next_frame().unwrap().unwrap();
    assert_eq!(f.ts.as_micros(), 1_600_000_000_987_654);
    assert_eq!(f.link, LinkType::LinuxSll);
    assert_eq!(f.data, &[1, 2, 3, 4]);
}

#[test]
fn pcap_little_endian_nanoseconds_and_big_endian_micros() {
    let mut p = Pcap::new(false, true, 101);
    p.record(10, 1_500, b"x", 1);
    let (frames, end) = read_all(Cursor::new(&p.out));
    assert_eq!(end, Ok(()));
    assert_eq!(frames[0].ts, 10_000_001);
    assert_eq!(frames[0].link, LinkType::RawIp);

    let mut p = Pcap::new(true, false, 228);
    p.record(10, 1_500, b"x", 1);
    let (frames, _) = read_all(Cursor::new(&p.out));
    assert_eq!(frames[0].ts, 10_001_500);
    assert_eq!(frames[0].link, LinkType::Ipv4);
}

/// Kuznetzov's "modified" pcap (magic a1b2cd34, 24-byte record headers) in
/// both byte orders: the file starts a1 b2 cd 34 when written big-endian,
/// 34 cd b2 a1 little-endian.
#[test]
fn pcap_modified_format_both_byte_orders() {
    for big in [false, true] {
        let mut p = Pcap::with_magic(big, 0xa1b2_cd34, 1);
        p.record(1_700_000_000, 250_000, b"first", 5)
            .record(1_700_000_002, 7, b"second!", 90);
        let start: [u8; 4] = if big {
            [0xa1, 0xb2, 0xcd, 0x34]
        } else {
            [0x34, 0xcd, 0xb2, 0xa1]
        };
        assert_eq!(p.out[..4], start);
        let (frames, end) = read_all(Cursor::new(&p.out));
        assert_eq!(end, Ok(()), "big endian: {big}");
        assert_eq!(
            frames,
            vec![
                Owned {
                    ts: 1_700_000_000_250_000,
                    link: LinkType::Ethernet,
                    data: b"first".to_vec(),
                    orig_len: 5,
                },
                Owned {
                    ts: 1_700_000_002_000_007,
                    link: LinkType::Ethernet,
                    data: b"second!".to_vec(),
                    orig_len: 90,
                },
            ],
            "big endian: {big}"
        );
        // Byte at a time, and cut inside the second record's 24-byte header.
        let (trickled, end) = read_all(Trickle {
            data: &p.out,
            step: 1,
        });
        assert_eq!((trickled, end), (frames, Ok(())));
        let cut = 24 + 24 + 5 + 20;
        let (frames, end) = read_all(Cursor::new(&p.out[..cut]));
        assert_eq!(frames.len(), 1);
        assert!(end.unwrap_err().contains(&format!("{}", 24 + 24 + 5)));
    }
}

/// Classic pcap in all four combinations of byte order and resolution, each
/// checked from its first bytes on.
#[test]
fn pcap_classic_magics_both_byte_orders() {
    let cases: [(bool, bool, [u8; 4]); 4] = [
        (false, false, [0xd4, 0xc3, 0xb2, 0xa1]),
        (true, false, [0xa1, 0xb2, 0xc3, 0xd4]),
        (false, true, [0x4d, 0x3c, 0xb2, 0xa1]),
        (true, true, [0xa1, 0xb2, 0x3c, 0x4d]),
    ];
    for (big, nanos, start) in cases {
        let mut p = Pcap::new(big, nanos, 113);
        let frac = if nanos { 123_456_789 } else { 123_456 };
        p.record(1_650_000_000, frac, b"abc", 3);
        assert_eq!(p.out[..4], start);
        let (frames, end) = read_all(Cursor::new(&p.out));
        assert_eq!(end, Ok(()), "big {big} nanos {nanos}");
        assert_eq!(frames.len(), 1);
        assert_eq!(
            frames[0].ts, 1_650_000_000_123_456,
            "big {big} nanos {nanos}"
        );
        assert_eq!(frames[0].link, LinkType::LinuxSll);
        assert_eq!(frames[0].data, b"abc");
    }
}

#[test]
fn link_type_numbers() {
    let cases = [
        (0, LinkType::Null),
        (1, LinkType::Ethernet),
        (12, LinkType::RawIp),
        (14, LinkType::RawIp),
        (101, LinkType::RawIp),
        (108, LinkType::Loop),
        (113, LinkType::LinuxSll),
        (228, LinkType::Ipv4),
        (229, LinkType::Ipv6),
        (276, LinkType::LinuxSll2),
        (147, LinkType::Other(147)),
    ];
    for (n, want) in cases {
        assert_eq!(LinkType::from_number(n), want);
        let p = Pcap::new(false, false, n);
        let mut p = p;
        p.record(0, 0, b"z", 1);
        let (frames, _) = read_all(Cursor::new(&p.out));
        assert_eq!(frames[0].link, want, "linktype {n}");
    }
    assert_eq!(LinkType::LinuxSll2.number(), 276);
    assert_eq!(LinkType::Other(147).number(), 147);
    // FCS bits in the upper half of the pcap LINKTYPE field are ignored.
    let mut p = Pcap::new(false, false, 0x1400_0001);
    p.record(0, 0, b"z", 1);
    let (frames, _) = read_all(Cursor::new(&p.out));
    assert_eq!(frames[0].link, LinkType::Ethernet);
}

#[test]
fn pcap_truncated_mid_record_reports_record_start() {
    let mut p = Pcap::new(false, false, 1);
    p.record(1, 0, &[7; 100], 100).record(2, 0, &[8; 100], 100);
    let second = 24 + 16 + 100;
    // Cut inside the data and inside the record header of the second record.
    for cut in [second + 50, second + 3, second + 16] {
        let bytes = &p.out[..cut as usize];
        let mut r = reader(bytes);
        assert!(r.next_frame().unwrap().is_some());
        assert_eq!(r.offset(), second);
        for _ in 0..3 {
            match r.next_frame() {
                Err(CaptureError::Truncated { offset }) => assert_eq!(offset, second),
                other => panic!("cut {cut}: {:?}", other.map(|f| f.map(|f| f.orig_len))),
            }
        }
        assert_eq!(r.offset(), second);
    }
    // Exactly at the record boundary: a clean end.
    let (frames, end) = read_all(Cursor::new(&p.out[..second as usize]));
    assert_eq!(frames.len(), 1);
    assert_eq!(end, Ok(()));
}

#[test]
fn pcap_oversized_record_is_corrupt() {
    let mut p = Pcap::new(false, false, 1);
    p.record(1, 0, b"ok", 2);
    let bad = p.out.len() as u64;
    p.out.extend(e32(false, 1));
    p.out.extend(e32(false, 0));
    p.out.extend(e32(false, 0x7fff_ffff)); // caplen 2 GiB
    p.out.extend(e32(false, 0x7fff_ffff));
    p.out.extend([0; 64]);
    let mut r = reader(&p.out);
    assert!(r.next_frame().unwrap().is_some());
    match r.next_frame() {
        Err(CaptureError::Corrupt { offset, reason }) => {
            assert_eq!(offset, bad);
            assert!(reason.contains("limit"), "{reason}");
        }
        other => panic!("{:?}", other.is_ok()),
    }
    assert!(matches!(
        r.next_frame(),
        Err(CaptureError::Corrupt { offset, .. }) if offset == bad
    ));
}

#[test]
fn not_a_capture() {
    for bytes in [&b""[..], b"ab", b"GET / HTTP/1.1\r\n\r\n", &[0u8; 64]] {
        assert!(matches!(
            CaptureReader::new(Cursor::new(bytes)),
            Err(CaptureError::NotACapture)
        ));
    }
    // A known magic with a cut header is a truncated capture, not "not a capture".
    let p = Pcap::new(false, false, 1);
    assert!(matches!(
        CaptureReader::new(Cursor::new(&p.out[..10])),
        Err(CaptureError::Truncated { offset: 0 })
    ));
}

// ----- pcapng ---------------------------------------------------------------------

#[test]
fn pcapng_sections_interfaces_resolutions() {
    let mut ng = Ng::new();
    ng.shb(false)
        .idb(1, 0, &[]) // Ethernet, default µs
        .idb(113, 0, &[(9, vec![9])]) // SLL, ns
        .block(4, &[0; 12]) // name resolution block: skipped
        .epb(0, 1_700_000_000_123_456, b"eth", 3)
        .epb(1, 1_700_000_000_123_456_789, b"sll-frame", 100)
        .spb(5, b"simple") // SPB: interface 0, last timestamp, captured 5 bytes
        .block(0x0000_0BAD, &[1, 2, 3, 4, 5, 6, 7, 8]); // custom block: skipped
                                                        // Second section, big endian, new interface numbering.
    ng.shb(true)
        .idb(
            101,
            0,
            &[
                (9, vec![0x80 | 10]),                // 2^-10 s ticks
                (14, 100i64.to_be_bytes().to_vec()), // +100 s
            ],
        )
        .idb(276, 0, &[(9, vec![3])]) // SLL2, ms
        .epb(0, 3 * 1024 + 512, b"raw", 3) // 3.5 s + 100 s
        .epb(1, 1_234, b"sll2", 4); // 1.234 s
    let (frames, end) = read_all(Cursor::new(&ng.out));
    assert_eq!(end, Ok(()));
    let got: Vec<(i64, LinkType, &[u8], u32)> = frames
        .iter()
        .map(|f| (f.ts, f.link, &f.data[..], f.orig_len))
        .collect();
    assert_eq!(
        got,
        vec![
            (1_700_000_000_123_456, LinkType::Ethernet, &b"eth"[..], 3),
            (1_700_000_000_123_456, LinkType::LinuxSll, b"sll-frame", 100),
            (1_700_000_000_123_456, LinkType::Ethernet, b"simpl", 5),
            (103_500_000, LinkType::RawIp, b"raw", 3),
            (1_234_000, LinkType::LinuxSll2, b"sll2", 4),
        ]
    );
    let r = reader(&ng.out);
    assert_eq!(r.format(), CaptureFormat::PcapNg);
}

#[test]
fn pcapng_resolution_conversions() {
    assert_eq!(TsResolution::Pow10(0).to_micros(5), 5_000_000);
    assert_eq!(TsResolution::Pow10(3).to_micros(5), 5_000);
    assert_eq!(TsResolution::Pow10(9).to_micros(5_000_999), 5_000);
    assert_eq!(TsResolution::Pow10(19).to_micros(u64::MAX), 1_844_674);
    assert_eq!(TsResolution::Pow2(0).to_micros(2), 2_000_000);
    assert_eq!(TsResolution::Pow2(20).to_micros(1 << 20), 1_000_000);
    assert_eq!(TsResolution::Pow2(63).to_micros(1 << 63), 1_000_000);
    assert_eq!(TsResolution::Pow10(0).to_micros(u64::MAX), i64::MAX);
    assert_eq!(TsResolution::from_option(20), None);
    assert_eq!(TsResolution::from_option(0x80 | 64), None);
    assert_eq!(TsResolution::from_option(0x86), Some(TsResolution::Pow2(6)));
}

#[test]
fn pcapng_spb_uses_interface_snaplen() {
    let mut ng = Ng::new();
    ng.shb(false)
        .idb(1, 4, &[])
        .epb(0, 1_700_000_000_000_000, b"abcd", 4)
        .spb(10, b"0123456789");
    let (frames, end) = read_all(Cursor::new(&ng.out));
    assert_eq!(end, Ok(()));
    assert_eq!(frames[1].data, b"0123");
    assert_eq!(frames[1].orig_len, 10);
    assert_eq!(frames[1].ts, 1_700_000_000_000_000);
}

/// Simple Packet Blocks carry no time. Before any timestamped packet there is
/// none to give them: the file is refused at the first one (it used to be
/// read with every packet at 1970-01-01, and the call with it).
#[test]
fn pcapng_spb_without_any_time_is_refused() {
    for big in [false, true] {
        let mut ng = Ng::new();
        ng.shb(big).idb(1, 0, &[]);
        let first = ng.out.len() as u64;
        ng.spb(6, b"packet").spb(6, b"second");
        let (frames, end) = read_all(Cursor::new(&ng.out));
        assert!(frames.is_empty(), "{frames:?}");
        let e = end.unwrap_err();
        assert!(
            e.contains(&format!("byte {first}")) && e.contains("no time"),
            "{e}"
        );
        // Sticky, with its offset, and not a corruption.
        let mut r = reader(&ng.out);
        let e = r.next_frame().unwrap_err();
        assert!(matches!(e, CaptureError::Untimed { offset } if offset == first));
        assert_eq!(e.offset(), Some(first));
        assert!(matches!(
            r.next_frame(),
            Err(CaptureError::Untimed { offset }) if offset == first
        ));
        // A timestamped packet first: the SPBs after it take its time.
        let mut ng = Ng::new();
        ng.shb(big)
            .idb(1, 0, &[])
            .epb(0, 1_650_000_000_000_001, b"timed", 5)
            .spb(6, b"packet");
        let (frames, end) = read_all(Cursor::new(&ng.out));
        assert_eq!(end, Ok(()));
        assert_eq!(frames[1].ts, 1_650_000_000_000_001);
    }
}

#[test]
fn pcapng_truncated_block() {
    let mut ng = Ng::new();
    ng.shb(false).idb(1, 0, &[]).epb(0, 1, b"first", 5);
    let second = ng.out.len() as u64;
    ng.epb(0, 2, &[9; 40], 40);
    for cut in [second + 4, second + 30, ng.out.len() as u64 - 1] {
        let mut r = reader(&ng.out[..cut as usize]);
        assert!(r.next_frame().unwrap().is_some());
        assert_eq!(r.offset(), second);
        for _ in 0..2 {
            assert!(matches!(
                r.next_frame(),
                Err(CaptureError::Truncated { offset }) if offset == second
            ));
        }
    }
}

#[test]
fn pcapng_corrupt_blocks() {
    let base = || {
        let mut ng = Ng::new();
        ng.shb(false).idb(1, 0, &[]).epb(0, 1, b"first", 5);
        ng
    };
    let expect_corrupt = |bytes: &[u8], at: u64, what: &str| {
        let mut r = reader(bytes);
        assert!(r.next_frame().unwrap().is_some());
        match r.next_frame() {
            Err(CaptureError::Corrupt { offset, reason }) => {
                assert_eq!(offset, at, "{what}: {reason}");
                assert!(reason.contains(what), "{reason} should mention {what}");
            }
            Ok(f) => panic!("{what}: got frame {:?}", f.map(|f| f.orig_len)),
            Err(e) => panic!("{what}: {e}"),
        }
        assert!(r.next_frame().is_err(), "sticky");
    };

    // Block length not a multiple of 4.
    let mut ng = base();
    let at = ng.out.len() as u64;
    ng.out.extend(e32(false, 6));
    ng.out.extend(e32(false, 13));
    ng.out.extend([0; 16]);
    expect_corrupt(&ng.out, at, "invalid block length");

    // Trailer disagrees with the header.
    let mut ng = base();
    let at = ng.out.len() as u64;
    ng.epb(0, 2, b"abcd", 4);
    let n = ng.out.len();
    ng.out[n - 4] ^= 0x40;
    expect_corrupt(&ng.out, at, "trailer");

    // Packet on an undeclared interface.
    let mut ng = base();
    let at = ng.out.len() as u64;
    ng.epb(7, 2, b"abcd", 4);
    expect_corrupt(&ng.out, at, "undeclared interface");

    // A packet block larger than any packet may be.
    let mut ng = base();
    let at = ng.out.len() as u64;
    ng.out.extend(e32(false, 6));
    ng.out.extend(e32(false, 0x0100_0000));
    expect_corrupt(&ng.out, at, "limit");

    // EPB whose caplen runs past its block.
    let mut ng = base();
    let at = ng.out.len() as u64;
    let mut body = Vec::new();
    body.extend(e32(false, 0));
    body.extend(e32(false, 0));
    body.extend(e32(false, 0));
    body.extend(e32(false, 400)); // caplen 400 in a tiny block
    body.extend(e32(false, 400));
    body.extend([1; 8]);
    ng.block(6, &body);
    expect_corrupt(&ng.out, at, "enhanced packet");

    // Unsupported timestamp resolution.
    let mut ng = base();
    let at = ng.out.len() as u64;
    ng.idb(1, 0, &[(9, vec![40])]);
    expect_corrupt(&ng.out, at, "if_tsresol");

    // Bad byte-order magic in a later section header.
    let mut ng = base();
    let at = ng.out.len() as u64;
    ng.shb(false);
    ng.out[at as usize + 8] = 0x99;
    expect_corrupt(&ng.out, at, "byte-order");
}

#[test]
fn pcapng_large_non_packet_block_is_streamed_over() {
    let mut ng = Ng::new();
    ng.shb(false).idb(1, 0, &[]);
    ng.block(0x0000_000A, &vec![0x55; 3 * 1024 * 1024]); // decryption secrets, 3 MiB
    ng.epb(0, 42, b"after", 5);
    let mut r = CaptureReader::new(Trickle {
        data: &ng.out,
        step: 100_000,
    })
    .unwrap();
    let f = r.next_frame().unwrap().unwrap();
    assert_eq!(f.data, b"after");
    assert!(r.buf.len() < 1024 * 1024, "buffer stayed small");
    assert!(r.next_frame().unwrap().is_none());

    // Truncated inside the big block: reported at the block start.
    let mut ng2 = Ng::new();
    ng2.shb(false).idb(1, 0, &[]);
    let at = ng2.out.len() as u64;
    let cut = ng.out.len() - 200;
    let mut r = reader(&ng.out[..cut]);
    assert!(matches!(
        r.next_frame(),
        Err(CaptureError::Truncated { offset }) if offset == at
    ));
}

#[test]
fn pcapng_must_start_with_section_header() {
    let mut ng = Ng::new();
    ng.shb(false);
    ng.out[8] = 0; // break the BOM
    assert!(matches!(
        CaptureReader::new(Cursor::new(&ng.out)),
        Err(CaptureError::Corrupt { offset: 0, .. })
    ));
    let mut ng = Ng::new();
    ng.shb(false);
    ng.out[12] = 2; // major version 2
    assert!(CaptureReader::new(Cursor::new(&ng.out)).is_err());
}

#[test]
fn tiny_reads_give_the_same_frames() {
    let mut ng = Ng::new();
    ng.shb(false).idb(1, 0, &[(9, vec![9])]);
    for i in 0..50u64 {
        ng.epb(
            0,
            i * 1_000_000_007,
            &vec![i as u8; (i * 37 % 1500) as usize],
            1500,
        );
    }
    let mut p = Pcap::new(true, false, 1);
    for i in 0..50u32 {
        p.record(i, i, &vec![i as u8; (i * 53 % 1500) as usize], 1500);
    }
    for bytes in [&ng.out, &p.out] {
        let whole = read_all(Cursor::new(bytes));
        for step in [1, 3, 7, 4096] {
            let trickled = read_all(Trickle { data: bytes, step });
            assert_eq!(trickled, whole, "step {step}");
        }
        assert_eq!(whole.0.len(), 50);
        assert_eq!(whole.1, Ok(()));
    }
}

#[test]
fn every_prefix_ends_cleanly_or_truncated() {
    let mut ng = Ng::new();
    ng.shb(false).idb(1, 0, &[]);
    let mut boundaries = vec![ng.out.len()];
    for i in 0..4u64 {
        ng.epb(0, i, &[i as u8; 13], 13);
        boundaries.push(ng.out.len());
    }
    // Block starts: the IDB right after the 28-byte SHB, then every EPB.
    let mut starts = vec![28];
    starts.extend(&boundaries);
    for cut in 28..ng.out.len() {
        let mut r = CaptureReader::new(Cursor::new(&ng.out[..cut])).unwrap();
        let mut n = 0;
        let end = loop {
            match r.next_frame() {
                Ok(Some(_)) => n += 1,
                Ok(None) => break None,
                Err(CaptureError::Truncated { offset }) => break Some(offset),
                Err(e) => panic!("cut {cut}: {e}"),
            }
        };
        // Complete packets before the cut are all delivered.
        let complete = boundaries
            .iter()
            .filter(|&&b| b <= cut)
            .count()
            .saturating_sub(1);
        assert_eq!(n, complete, "cut {cut}");
        if starts.contains(&cut) {
            assert_eq!(end, None, "cut {cut}");
        } else {
            let start = *starts.iter().rfind(|&&b| b <= cut).unwrap();
            assert_eq!(end, Some(start as u64), "cut {cut}");
            assert_eq!(r.offset(), start as u64);
        }
    }
}

proptest! {
    #[test]
    fn garbage_after_header_never_panics(tail in proptest::collection::vec(any::<u8>(), 0..2000), ng in any::<bool>()) {
        let mut bytes = if ng {
            let mut n = Ng::new();
            n.shb(false).idb(1, 0, &[]);
            n.out
        } else {
            Pcap::new(false, false, 1).out
        };
        bytes.extend(tail);
        let mut r = CaptureReader::new(Cursor::new(&bytes)).unwrap();
        let mut calls = 0;
        loop {
            calls += 1;
            prop_assert!(calls < 10_000);
            match r.next_frame() {
                Ok(Some(f)) => prop_assert!(f.data.len() <= MAX_PACKET_LEN),
                Ok(None) => break,
                Err(_) => {
                    prop_assert!(r.next_frame().is_err());
                    break;
                }
            }
        }
        prop_assert!(r.offset() <= bytes.len() as u64);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        if let Ok(mut r) = CaptureReader::new(Cursor::new(&bytes)) {
            for _ in 0..1000 {
                match r.next_frame() {
                    Ok(Some(_)) => {}
                    _ => break,
                }
            }
        }
    }
}

// ----- the shared corpus -----------------------------------------------------------

fn corpus_dir() -> Option<std::path::PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus");
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!("note: {} missing, corpus test skipped", dir.display());
        None
    }
}

#[test]
fn corpus_files_read_completely() {
    let Some(dir) = corpus_dir() else { return };
    // Frame counts from `tshark -r FILE -T fields -e frame.number 2>/dev/null | wc -l`,
    // run once by hand.
    let expected: &[(&str, usize)] = &[
        ("16_bit_48khz_60_fec_dropped.pcapng", 2971),
        ("Asterisk_ZFONE_XLITE.pcap", 1042),
        ("FAX-Call-t38-CA-TDM-SIP-FB-1.pcap", 7217),
        ("SIP_CALL_RTP_G711.pcap", 4269),
        ("SIP_DTMF2.cap", 1360),
        ("WebRTC_PCMA_p2p_SDES_Call_1.pcap", 1425),
        ("codec-negotiation.pcap", 614),
        ("invite-opus-bye.pcap", 311),
        ("marseillaise-srtp.pcap", 11888),
        ("opus-2013785496.pcap", 765),
        ("register-invite-reinvite-bye.pcap", 230),
        ("rtp-protocol.pcap", 259),
        ("sip-rtp-g711.pcap", 852),
        ("sip-rtp-g722.pcap", 433),
        ("sip-rtp-g729a.pcap", 433),
        ("sip-rtp-opus-hybrid.pcap", 7),
        ("sip_ipv4_tcp.pcap", 84),
        ("sip_ipv4_tcp_fragmented.pcap", 1542),
        ("sipp_uac_Media_DTMF_Speex.pcap", 2129),
        ("srtp_g722_DTMF_srcport_29394.pcap", 686),
    ];
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !(name.ends_with(".pcap") || name.ends_with(".pcapng") || name.ends_with(".cap")) {
            continue;
        }
        let file = std::fs::File::open(&path).unwrap();
        let size = file.metadata().unwrap().len();
        let mut r = CaptureReader::new(file).unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut n = 0usize;
        let mut last_link = None;
        let mut first_ts = None;
        while let Some(f) = r.next_frame().unwrap_or_else(|e| panic!("{name}: {e}")) {
            n += 1;
            last_link = Some(f.link);
            first_ts.get_or_insert(f.ts);
        }
        assert_eq!(r.offset(), size, "{name}: consumed everything");
        if let Some((_, want)) = expected.iter().find(|(f, _)| *f == name) {
            assert_eq!(n, *want, "{name}");
            seen += 1;
        } else {
            eprintln!("note: {name}: {n} frames (no expected count)");
        }
        match name.as_str() {
            "opus-2013785496.pcap" => {
                assert_eq!(last_link, Some(LinkType::LinuxSll));
                // tshark: frame.time_epoch 1701110726.946982000
                assert_eq!(first_ts.unwrap().as_micros(), 1_701_110_726_946_982);
            }
            "16_bit_48khz_60_fec_dropped.pcapng" => {
                assert_eq!(r.format(), CaptureFormat::PcapNg);
                // tshark: frame.time_epoch 1482167074.843890000
                assert_eq!(first_ts.unwrap().as_micros(), 1_482_167_074_843_890);
            }
            "sip_ipv4_tcp.pcap" => {
                // tshark: frame.time_epoch 1311857686.556175000
                assert_eq!(first_ts.unwrap().as_micros(), 1_311_857_686_556_175);
            }
            _ => {}
        }
    }
    assert_eq!(seen, expected.len(), "every listed corpus file was found");
}

/// Obsolete Packet Blocks (type 2, still written by old tools) are read as
/// the EPBs they preceded, in both byte orders, on their interface (they
/// were skipped silently: a file of them imported no packet at all); a
/// captured length past the block is corrupt.
#[test]
fn pcapng_obsolete_packet_blocks() {
    for big in [false, true] {
        let mut ng = Ng::new();
        ng.shb(big).idb(1, 0, &[]).idb(101, 0, &[]);
        ng.opb(1, 1_700_000_000_000_001, b"raw-ip-frame", 12).opb(
            0,
            1_700_000_000_000_002,
            b"eth",
            60,
        );
        let (frames, end) = read_all(Cursor::new(&ng.out));
        assert_eq!(end, Ok(()), "big endian: {big}");
        assert_eq!(
            frames,
            vec![
                Owned {
                    ts: 1_700_000_000_000_001,
                    link: LinkType::RawIp,
                    data: b"raw-ip-frame".to_vec(),
                    orig_len: 12
                },
                Owned {
                    ts: 1_700_000_000_000_002,
                    link: LinkType::Ethernet,
                    data: b"eth".to_vec(),
                    orig_len: 60
                },
            ]
        );
    }
    let mut ng = Ng::new();
    ng.shb(false).idb(1, 0, &[]);
    let mut body = Vec::new();
    body.extend(e16(false, 0));
    body.extend(e16(false, 0));
    body.extend(e32(false, 0));
    body.extend(e32(false, 0));
    body.extend(e32(false, 1000)); // captured length past the block
    body.extend(e32(false, 1000));
    body.extend([0u8; 8]);
    ng.block(2, &body);
    let (frames, end) = read_all(Cursor::new(&ng.out));
    assert!(frames.is_empty());
    assert!(
        end.is_err_and(|e| e.contains("corrupt")),
        "{:?}",
        read_all(Cursor::new(&ng.out)).1
    );
}
