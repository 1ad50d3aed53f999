//! `pbx-testgen --calls N --seconds S [--codec pcmu|pcma|g722|opus] [--loss P]
//!  [--jitter-ms J] [--stagger-ms M] [--format pcap|pcapng] --out FILE`
//!
//! Writes a capture of N concurrent calls of S seconds each (speech-like audio,
//! a different signal per leg), for benchmarks and manual testing.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::ExitCode;

use pbx_testgen::audio::speechlike;
use pbx_testgen::{write_capture, CallSpec, Format, Framing, Link, Party, TestCodec};

fn main() -> ExitCode {
    let mut calls = 10usize;
    let mut seconds = 60u32;
    let mut codec = TestCodec::Pcmu;
    let mut loss = 0.0f64;
    let mut jitter = 0u32;
    let mut stagger = 100u32;
    let mut format = Format::PcapMicros;
    let mut out: Option<PathBuf> = None;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let v = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--calls" => calls = v.parse().unwrap_or(calls),
            "--seconds" => seconds = v.parse().unwrap_or(seconds),
            "--loss" => loss = v.parse().unwrap_or(loss),
            "--jitter-ms" => jitter = v.parse().unwrap_or(jitter),
            "--stagger-ms" => stagger = v.parse().unwrap_or(stagger),
            "--codec" => {
                codec = match v.as_str() {
                    "pcmu" => TestCodec::Pcmu,
                    "pcma" => TestCodec::Pcma,
                    "g722" => TestCodec::G722,
                    "opus" => TestCodec::Opus,
                    other => {
                        eprintln!("unknown codec {other}");
                        return ExitCode::from(2);
                    }
                }
            }
            "--format" => {
                format = if v == "pcapng" {
                    Format::PcapNg
                } else {
                    Format::PcapMicros
                }
            }
            "--out" => out = Some(PathBuf::from(v)),
            "-h" | "--help" => {
                eprintln!("usage: pbx-testgen --calls N --seconds S [--codec pcmu|pcma|g722|opus] [--loss P] [--jitter-ms J] [--stagger-ms M] [--format pcap|pcapng] --out FILE");
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("unknown argument {other}");
                return ExitCode::from(2);
            }
        }
        i += 2;
    }
    let Some(out) = out else {
        eprintln!("--out FILE is required");
        return ExitCode::from(2);
    };
    let rate = codec.audio_rate();
    let specs: Vec<CallSpec> = (0..calls)
        .map(|n| {
            let a = speechlike(2 * n as u64 + 1, seconds * 1000, rate);
            let b = speechlike(2 * n as u64 + 2, seconds * 1000, rate);
            let mut s = CallSpec::simple(&format!("bench-{n}@pbx-testgen"), codec, a, b);
            let hi = (n / 250) as u8;
            let lo = (n % 250) as u8 + 1;
            s.caller = Party {
                ip: IpAddr::V4(Ipv4Addr::new(10, 1, hi, lo)),
                sip_port: 5060,
                rtp_port: 10000 + 2 * (n % 20000) as u16,
                number: format!("1{n:04}"),
                name: format!("Caller {n}"),
            };
            s.callee = Party {
                ip: IpAddr::V4(Ipv4Addr::new(10, 2, hi, lo)),
                sip_port: 5060,
                rtp_port: 30000 + 2 * (n % 15000) as u16,
                number: format!("2{n:04}"),
                name: format!("Callee {n}"),
            };
            s.start_ns += i64::from(stagger) * 1_000_000 * n as i64;
            s.seed = n as u64 + 1;
            s.caller_leg.impair.loss = loss;
            s.callee_leg.impair.loss = loss;
            s.caller_leg.impair.jitter_ms = jitter;
            s.callee_leg.impair.jitter_ms = jitter;
            s
        })
        .collect();
    match write_capture(&out, &specs, format, Link::Ethernet, &Framing::default()) {
        Ok(_) => {
            eprintln!(
                "wrote {} calls of {} s to {}",
                calls,
                seconds,
                out.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: {e}", out.display());
            ExitCode::from(1)
        }
    }
}
