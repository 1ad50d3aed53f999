//! Real peers (issue 10): two baresip phones, each in its own network
//! namespace, joined by a veth pair, talk for about 18 s: A (the caller)
//! plays one espeak-ng sentence through baresip's `aufile` source, B (auto
//! answer) another, PCMU, ptime 20, no SRTP/ICE/STUN. pbx-edge sniffs the
//! veth end in A's namespace live (`pbx-edge run`, `sources.sniff`), and
//! tshark captures the same interface to a pcap that `pbx-edge import`
//! turns into a recording. A second test runs the same call through
//! Kamailio (stateful proxy, record-route) and rtpengine (userspace media
//! relay) in a third namespace between the phones, captured on A's side, so
//! B's speech reaches the recorder relayed. Two more run it with the phones
//! on a tunnel overlay made by the Linux kernel (VXLAN; gretap and ERSPAN
//! type III where the kernel has the drivers), captured on the underlay:
//! the recorder must unwrap what a VPC traffic mirror or RSPAN sends it.
//!
//! What is checked, on both recordings, per channel (0 = A, 1 = B), against
//! the 8 kHz WAV that party's phone played:
//! - placement: the lag of the party's speech in the channel is within 2 ms
//!   of where the party's RTP says it starts: the lower envelope of its
//!   packets' arrivals (tshark capture) against their timestamps, i.e. where
//!   its least-delayed packets put its first one, minus time zero = the
//!   earliest such place of either party, plus where the WAV starts in the
//!   decoded RTP stream by timestamp. (A phone's first packets are often a
//!   few ms late; the first packet's own arrival is printed for the record.)
//! - content: every 1 s window of speech correlates > 0.9 at its best lag;
//! - continuity: that best lag is the same within 1 sample in every speech
//!   window, and its sub-sample value (parabola through the peak) moves by
//!   less than half a sample between neighbouring windows: a dropped or
//!   repeated sample is a step of one for the rest of the call, whichever
//!   side of the whole-call lag it falls;
//! - no cross-talk: correlation with the other party's speech < 0.2.
//!
//! Skipped with a message (not failed) where namespaces cannot be created
//! (no root / CAP_NET_ADMIN) or a tool is missing (baresip, espeak-ng, sox,
//! tshark, ip; kamailio and rtpengine for the second test). Namespaces and
//! processes are removed on exit by a guard, also when a check fails.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use pbx_testgen::audio::{best_lag, correlation_at, espeak, rms};

const RATE: u32 = 8000;
/// How long A keeps the call up after it is established.
const TALK: Duration = Duration::from_secs(18);

const TEXT_A: &str = "The quick brown fox jumps over the lazy dog. Recording calls beside \
the exchange needs each party on its own channel, placed where it was spoken. We count one, \
two, three, four, five, six, seven, eight, nine, ten.";
const TEXT_B: &str = "Hello, this is the other side of the call, speaking with a different \
voice. The weather today is cloudy with some rain in the afternoon. Please leave a message \
after the tone, and we will call you back tomorrow morning at nine. Goodbye for now.";

/// Everything the test started: killed (by pid) and deleted on drop.
#[derive(Default)]
struct Guard {
    netns: Vec<String>,
    children: Vec<(String, Child)>,
}

impl Guard {
    /// Every child was started in a process group of its own (kamailio and
    /// tshark have children of their own): SIGTERM to the group, SIGKILL to
    /// what is left after 5 s.
    fn kill_all(&mut self) {
        for (_, c) in self.children.iter_mut().rev() {
            let pg = -(c.id() as i32);
            if c.try_wait().ok().flatten().is_none() {
                // SAFETY: signals to a process group we created.
                unsafe { libc::kill(pg, libc::SIGTERM) };
                let t = Instant::now();
                while t.elapsed() < Duration::from_secs(5) && c.try_wait().ok().flatten().is_none()
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            // SAFETY: as above; workers may outlive their leader (kamailio).
            // The group id was ours a moment ago (a pid is not reused that fast).
            unsafe { libc::kill(pg, libc::SIGKILL) };
            let _ = c.wait();
        }
        self.children.clear();
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.kill_all();
        for ns in &self.netns {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn ip(args: &[&str]) {
    let st = Command::new("ip").args(args).status().expect("run ip");
    assert!(st.success(), "ip {args:?} failed");
}

/// The output of a child, collected by a thread.
#[derive(Clone, Default)]
struct Output(Arc<Mutex<String>>);

impl Output {
    fn collect(&self, r: impl Read + Send + 'static) {
        let buf = self.0.clone();
        std::thread::spawn(move || {
            let mut r = BufReader::new(r);
            let mut line = Vec::new();
            while r
                .read_until(b'\n', &mut line)
                .map(|n| n > 0)
                .unwrap_or(false)
            {
                buf.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&line));
                line.clear();
            }
        });
    }
    fn text(&self) -> String {
        self.0.lock().unwrap().clone()
    }
    fn wait_for(&self, what: &str, max: Duration, who: &str) {
        let t = Instant::now();
        while t.elapsed() < max {
            if self.text().contains(what) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "{who}: no {what:?} within {max:?}; output:\n{}",
            self.text()
        );
    }
}

fn write_wav(path: &Path, x: &[i16]) {
    let data = (x.len() * 2) as u32;
    let mut b = Vec::with_capacity(44 + data as usize);
    b.extend_from_slice(b"RIFF");
    b.extend_from_slice(&(36 + data).to_le_bytes());
    b.extend_from_slice(b"WAVEfmt ");
    b.extend_from_slice(&16u32.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&RATE.to_le_bytes());
    b.extend_from_slice(&(RATE * 2).to_le_bytes());
    b.extend_from_slice(&2u16.to_le_bytes());
    b.extend_from_slice(&16u16.to_le_bytes());
    b.extend_from_slice(b"data");
    b.extend_from_slice(&data.to_le_bytes());
    for s in x {
        b.extend_from_slice(&s.to_le_bytes());
    }
    std::fs::write(path, b).unwrap();
}

/// One baresip config directory: listens on `addr`, plays `wav` as its
/// microphone, plays what it hears into an unused bridge, PCMU only.
fn baresip_config(dir: &Path, user: &str, addr: &str, wav: &Path, auto_answer: bool, srtp: bool) {
    std::fs::create_dir_all(dir).unwrap();
    // The media address is the one of the interface holding `addr` (on a
    // tunnel: the overlay, not the underlay it rides on).
    let config = format!(
        "module_path /usr/lib/baresip/modules\n\
         sip_listen {addr}:5060\n\
         {iface}\
         audio_source aufile,{wav}\n\
         audio_player aubridge,play-{user}\n\
         audio_alert aubridge,alert-{user}\n\
         module stdio.so\n\
         {srtp_module}\
         module account.so\n\
         module g711.so\n\
         module aufile.so\n\
         module aubridge.so\n\
         module_app menu.so\n",
        wav = wav.display(),
        iface = iface_of(addr),
        srtp_module = if srtp { "module srtp.so\n" } else { "" },
    );
    std::fs::write(dir.join("config"), config).unwrap();
    let answer = if auto_answer { ";answermode=auto" } else { "" };
    let answer = format!("{answer}{}", if srtp { ";mediaenc=srtp-mand" } else { "" });
    std::fs::write(
        dir.join("accounts"),
        format!("<sip:{user}@{addr}>;regint=0;ptime=20;audio_codecs=PCMU{answer}\n"),
    )
    .unwrap();
    std::fs::write(dir.join("contacts"), "").unwrap();
}

struct Phone {
    stdin: ChildStdin,
    out: Output,
    name: &'static str,
}

impl Phone {
    fn send(&mut self, cmd: &str) {
        writeln!(self.stdin, "{cmd}").expect("write to baresip");
        self.stdin.flush().unwrap();
    }
}

fn start_phone(g: &mut Guard, ns: &str, dir: &Path, name: &'static str) -> Phone {
    let mut c = Command::new("ip")
        .args(["netns", "exec", ns, "baresip", "-f"])
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("start baresip");
    let out = Output::default();
    out.collect(c.stdout.take().unwrap());
    out.collect(c.stderr.take().unwrap());
    let stdin = c.stdin.take().unwrap();
    g.children.push((name.into(), c));
    out.wait_for("baresip is ready", Duration::from_secs(20), name);
    Phone { stdin, out, name }
}

/// Kamailio (stateful proxy that record-routes and sends every request for
/// `b` on to B) and rtpengine (userspace relay, one interface per side) in
/// namespace `ns`; returns once both are up.
fn start_proxy(g: &mut Guard, ns: &str, dir: &Path, pa: &str, pb: &str, ip_b: &str) {
    let rtpe = Output::default();
    let mut c = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "rtpengine",
            "--config-file=none",
            "--foreground",
        ])
        .args(["--log-stderr", "--log-level=6", "--table=-1"])
        .arg(format!("--interface=a/{pa}"))
        .arg(format!("--interface=b/{pb}"))
        .args([
            "--listen-ng=127.0.0.1:22222",
            "--port-min=30000",
            "--port-max=30999",
        ])
        .arg(format!("--pidfile={}", dir.join("rtpengine.pid").display()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("start rtpengine");
    rtpe.collect(c.stderr.take().unwrap());
    g.children.push(("rtpengine".into(), c));
    rtpe.wait_for("Startup complete", Duration::from_secs(20), "rtpengine");

    let cfg = format!(
        r#"#!KAMAILIO
debug=2
log_stderror=yes
children=2
mhomed=1
listen=udp:{pa}:5060
listen=udp:{pb}:5060
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "xlog.so"
loadmodule "rtpengine.so"
modparam("rtpengine", "rtpengine_sock", "udp:127.0.0.1:22222")
modparam("rr", "enable_double_rr", 1)

request_route {{
    if (!mf_process_maxfwd_header("10")) {{ sl_send_reply("483", "Too Many Hops"); exit; }}
    if (has_totag()) {{
        if (loose_route()) {{
            if (is_method("BYE")) {{ rtpengine_delete(); }}
            else if (has_body("application/sdp")) {{ rtpengine_manage("replace-origin replace-session-connection"); }}
            t_relay();
            exit;
        }}
        if (is_method("ACK")) {{ if (t_check_trans()) {{ t_relay(); }} exit; }}
        sl_send_reply("404", "Not here");
        exit;
    }}
    if (is_method("CANCEL")) {{ if (t_check_trans()) {{ t_relay(); }} exit; }}
    if (!is_method("INVITE")) {{ sl_send_reply("405", "Method Not Allowed"); exit; }}
    record_route();
    rtpengine_offer("direction=a direction=b replace-origin replace-session-connection");
    t_on_reply("ANSWER");
    $rd = "{ip_b}";
    $rp = 5060;
    t_relay();
    exit;
}}

onreply_route[ANSWER] {{
    if (has_body("application/sdp")) {{ rtpengine_answer("replace-origin replace-session-connection"); }}
}}
"#
    );
    let cfg_path = dir.join("kamailio.cfg");
    std::fs::write(&cfg_path, cfg).unwrap();
    let kam = Output::default();
    let mut c = Command::new("ip")
        .args(["netns", "exec", ns, "kamailio", "-DD", "-E", "-f"])
        .arg(&cfg_path)
        .arg("-P")
        .arg(dir.join("kamailio.pid"))
        .args(["-Y", &dir.display().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("start kamailio");
    kam.collect(c.stderr.take().unwrap());
    g.children.push(("kamailio".into(), c));
    // ready when its UDP socket answers: an OPTIONS gets a 405 from the script
    let t = Instant::now();
    loop {
        let ok = Command::new("ip")
            .args(["netns", "exec", ns, "sh", "-c"])
            .arg(format!("ss -lun | grep -q '{pa}:5060'"))
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ok {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "kamailio did not start:\n{}",
            kam.text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One RTP packet from the tshark capture.
struct Pkt {
    t: f64,
    ts: u32,
    payload: Vec<u8>,
    /// The whole RTP (or SRTP) packet.
    packet: Vec<u8>,
}

/// The SDES key lines (`crypto:<tag> <suite> <key>`) each address's SDP
/// offered in the capture, as tshark reads them.
fn sdes_lines(pcap: &Path) -> Vec<(String, Vec<String>)> {
    let o = Command::new("tshark")
        .arg("-r")
        .arg(pcap)
        .args([
            "-Y",
            "sdp",
            "-T",
            "fields",
            "-e",
            "ip.src",
            "-e",
            "sdp.media_attr",
        ])
        .output()
        .expect("run tshark");
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| {
            let (ip, attrs) = l.split_once('\t')?;
            let lines: Vec<String> = attrs
                .split(',')
                .filter(|a| a.starts_with("crypto:"))
                .map(str::to_string)
                .collect();
            (!lines.is_empty()).then(|| (ip.to_string(), lines))
        })
        .collect()
}

/// SRTP packets of the party at `ip` decrypted with the key its own SDP
/// announced (the line whose tag the other side's answer chose, else its
/// first), with the reference implementation pbx-edge also uses; the
/// payloads replaced by the plain ones.
fn decrypt_party(pkts: Vec<Pkt>, ip: &str, keys: &[(String, Vec<String>)]) -> Vec<Pkt> {
    use pbx_core::rtp::srtp::SrtpStream;
    let parse = |l: &str| -> (String, String, String) {
        let mut it = l.trim_start_matches("crypto:").split_whitespace();
        let tag = it.next().unwrap_or_default().to_string();
        let suite = it.next().unwrap_or_default().to_string();
        let key = it.next().unwrap_or_default().to_string();
        (tag, suite, key)
    };
    let mine: Vec<_> = keys
        .iter()
        .filter(|(a, _)| a == ip)
        .flat_map(|(_, l)| l.iter().map(|x| parse(x)))
        .collect();
    let theirs: Vec<_> = keys
        .iter()
        .filter(|(a, _)| a != ip)
        .flat_map(|(_, l)| l.iter().map(|x| parse(x)))
        .collect();
    let (_, suite, key) = mine
        .iter()
        .find(|m| theirs.len() == 1 && m.0 == theirs[0].0)
        .or(mine.first())
        .unwrap_or_else(|| panic!("no SDES key from {ip} in the capture: {keys:?}"))
        .clone();
    let mut s = SrtpStream::for_capture(&suite, &key).expect("usable key");
    pkts.into_iter()
        .filter_map(|mut p| {
            let plain = s.decrypt(&p.packet)?;
            let rtp = pbx_core::rtp::parse_rtp(&plain).ok()?;
            p.payload = rtp.payload.to_vec();
            Some(p)
        })
        .collect()
}

/// The RTP packets of the capture sent from `src`, in capture order, read by
/// tshark (not by pbx-edge).
fn rtp_from(pcap: &Path, src: &str) -> Vec<Pkt> {
    let o = Command::new("tshark")
        .arg("-r")
        .arg(pcap)
        .args([
            "-o",
            "rtp.heuristic_rtp:TRUE",
            "-Y",
            // (Not an ICMP error quoting the other party's RTP: `ip.src`
            // matches the quoted header too, and a port unreachable sent
            // by this party when its socket closed before the other's
            // last packet put that packet, another stream's timestamp,
            // among its own.)
            &format!("rtp && !icmp && ip.src == {src} && rtp.p_type == 0"),
            "-T",
            "fields",
            "-e",
            "frame.time_epoch",
            "-e",
            "rtp.timestamp",
            "-e",
            "rtp.payload",
            "-e",
            "udp.payload",
        ])
        .output()
        .expect("run tshark");
    assert!(o.status.success(), "tshark -r failed");
    let mut v = Vec::new();
    for line in String::from_utf8_lossy(&o.stdout).lines() {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() < 3 {
            continue;
        }
        let bytes = |field: &str| -> Vec<u8> {
            let hex: String = field.chars().filter(|c| c.is_ascii_hexdigit()).collect();
            (0..hex.len() / 2)
                .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
                .collect()
        };
        v.push(Pkt {
            t: f[0].parse().unwrap(),
            ts: f[1].parse().unwrap(),
            payload: bytes(f[2]),
            packet: f.get(3).map(|x| bytes(x)).unwrap_or_default(),
        });
    }
    v
}

/// G.711 mu-law to linear (ITU-T G.711), written here so that the
/// reference does not come from pbx-edge's decoder.
fn ulaw(b: u8) -> i16 {
    let u = !b;
    let t = ((i32::from(u & 0x0f) << 3) + 0x84) << ((u & 0x70) >> 4);
    (if u & 0x80 != 0 { 0x84 - t } else { t - 0x84 }) as i16
}

/// The stream a party sent, laid out by RTP timestamp from its first packet.
fn sent_stream(pkts: &[Pkt]) -> Vec<i16> {
    let ts0 = pkts[0].ts;
    let mut out = Vec::new();
    for p in pkts {
        let at = p.ts.wrapping_sub(ts0) as usize;
        if at > 10 * 60 * RATE as usize {
            continue; // before the first packet (reordered): not expected on a veth
        }
        if out.len() < at + p.payload.len() {
            out.resize(at + p.payload.len(), 0);
        }
        for (i, b) in p.payload.iter().enumerate() {
            out[at + i] = ulaw(*b);
        }
    }
    out
}

/// What one party sent and where it belongs on the call's timeline.
struct Party {
    name: &'static str,
    speech: Vec<i16>,
    /// Sample of the recording where the speech WAV starts, per the RTP.
    expected: f64,
    /// The same where the lower envelope of the leg's arrivals (against its
    /// timestamps, over the whole call) puts it, both legs' envelopes taken
    /// back to the call's time zero: printed for the record, not checked.
    expected_env: f64,
}

/// Best lag of `truth` in `rec` within `[from, to]` (samples; positive: the
/// truth starts that late in `rec`), every lag tried.
fn lag_in(rec: &[i16], truth: &[i16], from: i64, to: i64) -> (i64, f64) {
    let mut best = (from, f64::MIN);
    for lag in from..=to {
        let c = correlation_at(rec, truth, lag);
        if c > best.1 {
            best = (lag, c);
        }
    }
    best
}

/// Checks one channel of a recording against its party; prints the numbers;
/// the failures as text (empty: good).
fn check_channel(label: &str, rec: &[i16], me: &Party, other: &Party) -> Vec<String> {
    let mut bad = Vec::new();
    let ms = |s: f64| s * 1000.0 / f64::from(RATE);
    // Where the speech is, searched over +-2 s around where it should be.
    let e = me.expected.round() as i64;
    let (coarse, _) = best_lag(
        &rec[..rec.len()],
        &shifted(&me.speech, e),
        2 * i64::from(RATE),
    );
    let global = e + coarse;
    let (global, gc) = lag_in(rec, &me.speech, global - 8, global + 8);
    let placement = ms(global as f64 - me.expected);
    let placement_env = ms(global as f64 - me.expected_env);
    // 1 s windows of speech, each searched +-40 ms around the global lag.
    let w = RATE as usize;
    let mut lags = Vec::new();
    let mut worst_corr = f64::MAX;
    let mut a = 0;
    while a + w <= me.speech.len() {
        let tw = &me.speech[a..a + w];
        if rms(tw) > 500.0 {
            let start = global + a as i64;
            let lo = (start - 320).max(0) as usize;
            let hi = ((start + w as i64 + 320) as usize).min(rec.len());
            if start + w as i64 <= rec.len() as i64 {
                let at = start - lo as i64;
                let (l, c) = lag_in(&rec[lo..hi], tw, at - 320, at + 320);
                // sub-sample lag: parabola through the peak and its neighbours
                let (cm, cp) = (
                    correlation_at(&rec[lo..hi], tw, l - 1),
                    correlation_at(&rec[lo..hi], tw, l + 1),
                );
                let den = cm - 2.0 * c + cp;
                let frac = if den < 0.0 {
                    0.5 * (cm - cp) / den
                } else {
                    0.0
                };
                lags.push((a / w, l - at, (l - at) as f64 + frac));
                worst_corr = worst_corr.min(c);
                if c <= 0.9 {
                    bad.push(format!(
                        "{label}: window {} s correlation {c:.3} <= 0.9",
                        a / w
                    ));
                }
            } else {
                bad.push(format!("{label}: window {} s missing", a / w));
            }
        }
        a += w;
    }
    let steps: Vec<i64> = lags.iter().map(|(_, l, _)| *l).collect();
    let spread = steps.iter().max().unwrap_or(&0) - steps.iter().min().unwrap_or(&0);
    // A dropped or repeated sample is a step of one sample between windows,
    // whatever side of the whole-call lag it falls; a drift followed by
    // resampling moves the lag smoothly.
    let jump = lags
        .windows(2)
        .map(|p| (p[1].2 - p[0].2).abs())
        .fold(0.0, f64::max);
    let fine: Vec<String> = lags.iter().map(|(_, _, f)| format!("{f:+.2}")).collect();
    // Cross-talk: the other party's speech, near where it is on the timeline.
    let oe = other.expected.round() as i64;
    let (_, xc) = lag_in(rec, &other.speech, oe - 800, oe + 800);
    let (_, xc_any) = best_lag(rec, &shifted(&other.speech, oe), 2 * i64::from(RATE));
    let xtalk = xc.max(xc_any);
    println!(
        "{label}: party {}: placement {placement:+.3} ms (lag {global} samples, expected {:.1}; \
         {placement_env:+.3} ms from the envelope's place), \
         whole-call correlation {gc:.3}, {} speech windows, worst window correlation {worst_corr:.3}, \
         window lag offsets {steps:?} (spread {spread} samples; sub-sample [{}], largest step \
         between neighbours {jump:.2} samples), cross-talk {xtalk:.3}",
        me.name,
        me.expected,
        lags.len(),
        fine.join(" ")
    );
    if placement_env.abs() > 2.0 {
        bad.push(format!(
            "{label}: placement {placement_env:+.3} ms from the envelope's place \
             (lag {global}, expected {:.1} samples; {placement:+.3} ms from the first packet's)",
            me.expected_env
        ));
    }
    if lags.len() < 5 {
        bad.push(format!("{label}: only {} speech windows", lags.len()));
    }
    if steps.iter().any(|l| l.abs() > 1) || spread > 1 || jump > 0.5 {
        bad.push(format!(
            "{label}: discontinuity: window lags {lags:?} (samples from the whole-call lag), \
             largest step {jump:.2}"
        ));
    }
    if xtalk >= 0.2 {
        bad.push(format!("{label}: cross-talk correlation {xtalk:.3}"));
    }
    bad
}

/// `x` delayed by `by` samples (negative: advanced), for a search around `by`.
fn shifted(x: &[i16], by: i64) -> Vec<i16> {
    if by >= 0 {
        let mut v = vec![0; by as usize];
        v.extend_from_slice(x);
        v
    } else {
        x[((-by) as usize).min(x.len())..].to_vec()
    }
}

fn check_recording(label: &str, dir: &Path, a: &Party, b: &Party) -> Vec<String> {
    let recs = recordings(dir);
    assert_eq!(recs.len(), 1, "{label}: one recording expected in {dir:?}");
    let r = &recs[0];
    assert_eq!(r.rate, RATE, "{label}: sample rate");
    assert_eq!(r.json["channels"][0]["party"], "caller");
    assert_eq!(r.json["channels"][0]["codec"], "PCMU");
    println!(
        "{label}: {} s, channels {}",
        r.ch[0].len() as f64 / f64::from(RATE),
        r.json["channels"]
    );
    let mut bad = check_channel(&format!("{label} ch0"), &r.ch[0], a, b);
    bad.extend(check_channel(&format!("{label} ch1"), &r.ch[1], b, a));
    bad
}

/// The interface a test address is put on: overlay addresses (10.79.x.x)
/// on the tunnel device, the others on the veth of their namespace
/// (baresip then picks the address it finds there).
fn iface_of(addr: &str) -> &'static str {
    if addr.starts_with("10.79.") {
        "net_interface tn0\n"
    } else {
        ""
    }
}

/// `ip netns add` works (root or CAP_NET_ADMIN): the probe namespace is deleted again.
fn can_make_netns(probe: &str) -> bool {
    let ok = Command::new("ip")
        .args(["netns", "add", probe])
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if ok {
        let _ = Command::new("ip").args(["netns", "del", probe]).status();
    }
    ok
}

/// The real-peer calls run one at a time (CPU, and timing on a loaded machine).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

#[test]
fn baresip_call_sniffed_and_imported_matches_what_each_party_sent() {
    real_call(Mode::Direct);
}

/// The same call between phones on a VXLAN overlay (the Linux kernel's
/// vxlan driver encapsulates, as a cloud VPC's traffic mirror or a switch
/// does): pbx-edge and tshark see only the underlay, UDP port 4789.
#[test]
fn baresip_call_over_a_kernel_vxlan_tunnel_is_unwrapped() {
    real_call(Mode::Tunnel("vxlan"));
}

/// GRE transparent Ethernet bridging (gretap, with a key) and ERSPAN type
/// III, where the kernel has the drivers (skipped with a message if not).
#[test]
fn baresip_call_over_kernel_gretap_and_erspan_tunnels_is_unwrapped() {
    real_call(Mode::Tunnel("gretap"));
    real_call(Mode::Tunnel("erspan"));
}

/// The phones encrypt their media (SRTP, SDES keys in the SDP: baresip's
/// `srtp-mand`): the recorder takes each party's key from its SDP and
/// decrypts what that party sends (issue 17; before: silence with a
/// warning, and before that, noise).
#[test]
fn baresip_srtp_call_with_sdes_keys_is_decrypted() {
    real_call(Mode::Srtp);
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Direct,
    Proxy,
    /// Direct, with SRTP (SDES).
    Srtp,
    /// Phones on an overlay of this kind over the veth underlay.
    Tunnel(&'static str),
}

/// `ip link add` arguments for one end of a tunnel of `kind`.
fn tunnel_args(kind: &str, local: &str, remote: &str, dev: &str) -> Vec<String> {
    let base = match kind {
        "vxlan" => format!("type vxlan id 42 local {local} remote {remote} dstport 4789 dev {dev}"),
        "gretap" => format!("type gretap local {local} remote {remote} key 7"),
        _ => format!(
            "type erspan local {local} remote {remote} seq key 9 erspan_ver 2 erspan_dir ingress erspan_hwid 7"
        ),
    };
    base.split(' ').map(String::from).collect()
}

/// Whether the kernel can make a tunnel device of `kind` (its driver may be
/// missing in a container or a small VM).
fn can_make_tunnel(kind: &str, probe: &str) -> bool {
    if !can_make_netns(probe) {
        return false;
    }
    let _ = Command::new("ip").args(["netns", "add", probe]).status();
    let mut args = vec![
        "-n".to_string(),
        probe.to_string(),
        "link".into(),
        "add".into(),
        "t0".into(),
    ];
    args.extend(tunnel_args(kind, "10.0.0.1", "10.0.0.2", "lo"));
    let ok = Command::new("ip")
        .args(&args)
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    let _ = Command::new("ip").args(["netns", "del", probe]).status();
    ok
}

/// The same call through Kamailio (stateful proxy, record-route) and
/// rtpengine (media relay, userspace) in a third namespace between the
/// phones; pbx-edge and tshark on A's side, so B's speech arrives relayed.
#[test]
fn baresip_call_through_kamailio_and_rtpengine_matches_what_each_party_sent() {
    real_call(Mode::Proxy);
}

fn real_call(mode: Mode) {
    let proxy = mode == Mode::Proxy;
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut tools = vec!["ip", "baresip", "espeak-ng", "sox", "tshark"];
    if proxy {
        tools.extend(["kamailio", "rtpengine"]);
    }
    for tool in tools {
        if !have(tool) {
            eprintln!("SKIPPED real-peer test: `{tool}` is not installed (see .ci/run)");
            return;
        }
    }
    let id = std::process::id();
    let tag = match mode {
        Mode::Direct => "d",
        Mode::Srtp => "s",
        Mode::Proxy => "p",
        Mode::Tunnel("vxlan") => "v",
        Mode::Tunnel("gretap") => "g",
        Mode::Tunnel(_) => "e",
    };
    if !can_make_netns(&format!("pbxe-probe-{tag}{id}")) {
        eprintln!(
            "SKIPPED real-peer test: network namespaces cannot be created here (needs root or CAP_NET_ADMIN)"
        );
        return;
    }
    if let Mode::Tunnel(kind) = mode {
        if !can_make_tunnel(kind, &format!("pbxe-probe-t{tag}{id}")) {
            eprintln!(
                "SKIPPED real-peer test over {kind}: this kernel cannot make {kind} devices (driver missing)"
            );
            return;
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();

    // What each party says: 8 kHz WAVs played by aufile, also the truth.
    let speech_a = espeak(TEXT_A, "en-us", RATE, dir).expect("espeak-ng A");
    let speech_b = espeak(TEXT_B, "en+f3", RATE, dir).expect("espeak-ng B");
    let (wav_a, wav_b) = (dir.join("a.wav"), dir.join("b.wav"));
    // baresip 1.0.0 ends the call when its aufile source reaches the end
    // of the file: the WAVs go on in silence for longer than the call.
    let pad = |x: &[i16]| {
        let mut v = x.to_vec();
        v.resize(x.len() + 40 * RATE as usize, 0);
        v
    };
    write_wav(&wav_a, &pad(&speech_a));
    write_wav(&wav_b, &pad(&speech_b));
    println!(
        "speech: A {:.2} s, B {:.2} s; the call lasts {} s",
        speech_a.len() as f64 / f64::from(RATE),
        speech_b.len() as f64 / f64::from(RATE),
        TALK.as_secs()
    );

    // Two namespaces joined by a veth pair, or three: A - proxy - B.
    let mut g = Guard::default();
    let net = id % 250 + 1;
    let ns = |n: &str| format!("pbxe-{tag}{n}-{id}");
    let (ns_a, ns_b, ns_p) = (ns("a"), ns("b"), ns("p"));
    let names: Vec<&String> = if proxy {
        vec![&ns_a, &ns_b, &ns_p]
    } else {
        vec![&ns_a, &ns_b]
    };
    for n in names {
        ip(&["netns", "add", n]);
        g.netns.push(n.clone());
        ip(&["-n", n, "link", "set", "lo", "up"]);
    }
    let veth = |n1: &str, if1: &str, a1: &str, n2: &str, if2: &str, a2: &str| {
        ip(&[
            "link", "add", if1, "netns", n1, "type", "veth", "peer", "name", if2, "netns", n2,
        ]);
        for (n, i, a) in [(n1, if1, a1), (n2, if2, a2)] {
            ip(&["-n", n, "addr", "add", &format!("{a}/24"), "dev", i]);
            ip(&["-n", n, "link", "set", i, "up"]);
        }
    };
    let if_a = format!("{tag}xa{id}");
    let ip_a = format!("10.77.{net}.1");
    // where A sends its INVITE and, per the SDP answer, its audio; B's IP
    let (call_to, ip_b);
    if proxy {
        let (pa, pb) = (format!("10.77.{net}.254"), format!("10.78.{net}.254"));
        ip_b = format!("10.78.{net}.2");
        veth(&ns_a, &if_a, &ip_a, &ns_p, &format!("{tag}pa{id}"), &pa);
        veth(
            &ns_p,
            &format!("{tag}pb{id}"),
            &pb,
            &ns_b,
            &format!("{tag}xb{id}"),
            &ip_b,
        );
        start_proxy(&mut g, &ns_p, dir, &pa, &pb, &ip_b);
        call_to = pa;
    } else {
        ip_b = format!("10.77.{net}.2");
        veth(&ns_a, &if_a, &ip_a, &ns_b, &format!("{tag}xb{id}"), &ip_b);
        call_to = ip_b.clone();
    }
    // On a tunnel: the phones talk on the overlay, captured on the underlay.
    let (ip_a, ip_b, call_to) = if let Mode::Tunnel(kind) = mode {
        let (oa, ob) = (format!("10.79.{net}.1"), format!("10.79.{net}.2"));
        let if_b = format!("{tag}xb{id}");
        for (n, dev, local, remote, addr) in [
            (&ns_a, &if_a, &ip_a, &ip_b, &oa),
            (&ns_b, &if_b, &ip_b, &ip_a, &ob),
        ] {
            let mut args = vec![
                "-n".to_string(),
                n.clone(),
                "link".into(),
                "add".into(),
                "tn0".into(),
            ];
            args.extend(tunnel_args(kind, local, remote, dev));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            ip(&args);
            ip(&["-n", n, "addr", "add", &format!("{addr}/24"), "dev", "tn0"]);
            ip(&["-n", n, "link", "set", "tn0", "up"]);
        }
        (oa, ob.clone(), ob)
    } else {
        (ip_a, ip_b, call_to)
    };

    // tshark on A's veth end.
    let pcap = dir.join("call.pcap");
    let mut c = Command::new("ip")
        .args([
            "netns", "exec", &ns_a, "tshark", "-q", "-F", "pcap", "-i", &if_a, "-w",
        ])
        .arg(&pcap)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("start tshark");
    let tshark_out = Output::default();
    tshark_out.collect(c.stderr.take().unwrap());
    g.children.push(("tshark".into(), c));
    tshark_out.wait_for("Capturing on", Duration::from_secs(30), "tshark");

    // pbx-edge sniffing the same interface, spool in the temp dir.
    let spool = dir.join("spool");
    let config = dir.join("pbx-edge.toml");
    std::fs::write(
        &config,
        format!(
            "[spool]\ndir = \"{}\"\n[health]\nlisten = \"127.0.0.1:9466\"\n\
             [sources.siprec]\nenabled = false\n[sources.sniff]\nenabled = true\ninterface = \"{if_a}\"\n",
            spool.display()
        ),
    )
    .unwrap();
    let c = Command::new("ip")
        .args(["netns", "exec", &ns_a])
        .arg(bin())
        .arg("run")
        .arg("--config")
        .arg(&config)
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("daemon.log")).unwrap())
        .process_group(0)
        .spawn()
        .expect("start pbx-edge");
    g.children.push(("pbx-edge".into(), c));
    let daemon_log = || std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default();
    let t = Instant::now();
    while !daemon_log().contains("sniffing") {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "pbx-edge did not start sniffing:\n{}",
            daemon_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // The phones; A calls B by URI, B answers on its own.
    let (cfg_a, cfg_b) = (dir.join("baresip-a"), dir.join("baresip-b"));
    let srtp = mode == Mode::Srtp;
    baresip_config(&cfg_a, "a", &ip_a, &wav_a, false, srtp);
    baresip_config(&cfg_b, "b", &ip_b, &wav_b, true, srtp);
    let mut pb = start_phone(&mut g, &ns_b, &cfg_b, "baresip B");
    let mut pa = start_phone(&mut g, &ns_a, &cfg_a, "baresip A");
    pa.send(&format!("/dial sip:b@{call_to}"));
    pa.out
        .wait_for("Call established", Duration::from_secs(20), pa.name);
    std::thread::sleep(TALK);
    pa.send("/hangup");
    pa.out
        .wait_for("terminated", Duration::from_secs(10), pa.name);
    pb.out
        .wait_for("terminated", Duration::from_secs(10), pb.name);
    pa.send("/quit");
    pb.send("/quit");

    // The daemon's recording (the BYE ends the call).
    let t = Instant::now();
    let spooled = loop {
        let n = std::fs::read_dir(&spool)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| {
                        let n = e.file_name().to_string_lossy().to_string();
                        n.ends_with(".json") && !n.starts_with('.')
                    })
                    .count()
            })
            .unwrap_or(0);
        if n >= 1 {
            break true;
        }
        if t.elapsed() > Duration::from_secs(60) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    std::thread::sleep(Duration::from_secs(1));
    // Stop tshark (SIGINT: it finishes the file) and everything else.
    for (name, c) in &g.children {
        if name == "tshark" || name == "pbx-edge" {
            // SAFETY: a signal to a child we started.
            unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
        }
    }
    for (name, c) in g.children.iter_mut() {
        if name == "kamailio" || name == "rtpengine" {
            continue; // stopped below
        }
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(15) {
            if let Ok(Some(_)) = c.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if c.try_wait().ok().flatten().is_none() {
            eprintln!("note: {name} did not stop by itself");
        }
    }
    g.kill_all();
    assert!(
        spooled,
        "no recording from the sniffing daemon:\n{}",
        daemon_log()
    );

    // Where each party's speech belongs, from the capture (tshark's reading).
    let mut rtp_a = rtp_from(&pcap, &ip_a);
    // B's audio as it reaches A's side: from B, or relayed by rtpengine
    let mut rtp_b = rtp_from(&pcap, &call_to);
    if mode == Mode::Srtp {
        let keys = sdes_lines(&pcap);
        rtp_a = decrypt_party(rtp_a, &ip_a, &keys);
        rtp_b = decrypt_party(rtp_b, &call_to, &keys);
    }
    assert!(
        rtp_a.len() > 500 && rtp_b.len() > 500,
        "RTP in the capture: A {} packets, B {}",
        rtp_a.len(),
        rtp_b.len()
    );
    let t0 = rtp_a[0].t.min(rtp_b[0].t);
    // the earliest place either leg's envelope puts its first packet
    let env0 = |pkts: &[Pkt]| {
        pkts.iter()
            .map(|p| p.t - f64::from(p.ts.wrapping_sub(pkts[0].ts)) / f64::from(RATE))
            .fold(f64::MAX, f64::min)
    };
    let t0_env = env0(&rtp_a).min(env0(&rtp_b));
    let party = |name, pkts: &[Pkt], speech: Vec<i16>| {
        let sent = sent_stream(pkts);
        // where the WAV starts in what was sent (baresip may send a little before it)
        let (off, c) = lag_in(
            &sent,
            &speech[..speech.len().min(3 * RATE as usize)],
            0,
            4000,
        );
        let expected = (pkts[0].t - t0) * f64::from(RATE) + off as f64;
        // For the record: how each packet's arrival compares with the first
        // one's, by timestamp (the lower envelope; the median).
        let mut d: Vec<f64> = pkts
            .iter()
            .map(|p| {
                let u = f64::from(p.ts.wrapping_sub(pkts[0].ts)) / f64::from(RATE);
                (p.t - pkts[0].t - u) * 1000.0
            })
            .collect();
        d.sort_by(f64::total_cmp);
        println!(
            "party {name}: {} RTP packets, first at +{:.3} ms, speech starts {off} samples into its stream \
             (correlation of what was sent with the WAV {c:.3}), expected at sample {expected:.1}; \
             arrival vs timestamp against the first packet: min {:+.3} ms, median {:+.3} ms, max {:+.3} ms",
            pkts.len(),
            (pkts[0].t - t0) * 1000.0,
            d[0],
            d[d.len() / 2],
            d[d.len() - 1]
        );
        assert!(
            c > 0.9,
            "party {name}: the RTP does not carry its WAV (corr {c:.3})"
        );
        let expected_env = (env0(pkts) - t0_env) * f64::from(RATE) + off as f64;
        Party {
            name,
            speech,
            expected,
            expected_env,
        }
    };
    let a = party("A", &rtp_a, speech_a);
    let b = party("B", &rtp_b, speech_b);

    let mut bad = check_recording("sniff", &spool, &a, &b);

    let out = dir.join("import");
    let o = import(&[&pcap], &out, &[]);
    assert!(
        o.status.success(),
        "import failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    bad.extend(check_recording("import", &out, &a, &b));
    if !bad.is_empty() {
        // keep the evidence for a look
        let keep = std::env::temp_dir().join(format!("pbxe-real-peers-{tag}{id}"));
        let _ = Command::new("cp").arg("-a").arg(dir).arg(&keep).status();
        panic!(
            "real peers: {} failures (files kept in {}):\n{}",
            bad.len(),
            keep.display(),
            bad.join("\n")
        );
    }
}

/// The checks themselves catch what they are meant to catch (no peers
/// needed): a dropped sample, a placement 3 ms off, cross-talk.
#[test]
fn the_channel_checks_catch_a_dropped_sample_a_misplacement_and_cross_talk() {
    use pbx_testgen::audio::speechlike;
    let mine = speechlike(7, 8000, RATE);
    let theirs = speechlike(8, 8000, RATE);
    let me = Party {
        name: "me",
        speech: mine.clone(),
        expected: 100.0,
        expected_env: 100.0,
    };
    let other = Party {
        name: "other",
        speech: theirs.clone(),
        expected: 40.0,
        expected_env: 40.0,
    };
    let good = shifted(&mine, 100);
    assert!(check_channel("intact", &good, &me, &other).is_empty());

    let mut dropped = good.clone();
    dropped.remove(100 + 4 * RATE as usize + 123);
    let bad = check_channel("dropped", &dropped, &me, &other);
    assert!(
        bad.iter().any(|b| b.contains("discontinuity")),
        "a dropped sample is not seen: {bad:?}"
    );

    let late = shifted(&mine, 100 + 24);
    let bad = check_channel("late", &late, &me, &other);
    assert!(
        bad.iter().any(|b| b.contains("placement")),
        "3 ms off is not seen: {bad:?}"
    );

    let other_at = shifted(&theirs, 40);
    let mixed: Vec<i16> = good
        .iter()
        .zip(other_at.iter().chain(std::iter::repeat(&0)))
        .map(|(a, b)| ((i32::from(*a) + i32::from(*b)) / 2) as i16)
        .collect();
    let bad = check_channel("mixed", &mixed, &me, &other);
    assert!(
        bad.iter().any(|b| b.contains("cross-talk")),
        "cross-talk is not seen: {bad:?}"
    );
}
