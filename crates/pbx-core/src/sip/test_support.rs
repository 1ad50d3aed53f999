//! Test helpers: where the shared corpus is, and tshark as the reference
//! dissector. Tests that need either skip with a printed note when missing.

use std::path::PathBuf;
use std::process::Command;

/// `/work/shared/corpus` (computed from the crate dir), if present.
pub(crate) fn corpus_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus");
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!("note: corpus dir {} missing, test skipped", dir.display());
        None
    }
}

pub(crate) fn have_tshark() -> bool {
    let ok = Command::new("tshark")
        .arg("-v")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("note: tshark not found, test skipped");
    }
    ok
}

/// Runs tshark with `args` on `file` and returns stdout lines split on tabs.
pub(crate) fn tshark_rows(file: &std::path::Path, args: &[&str]) -> Vec<Vec<String>> {
    let out = Command::new("tshark")
        .arg("-r")
        .arg(file)
        .args(args)
        .output()
        .expect("run tshark");
    assert!(out.status.success(), "tshark failed on {}", file.display());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect()
}

pub(crate) fn hex_decode(s: &str) -> Vec<u8> {
    let s: Vec<u8> = s.bytes().filter(|b| b.is_ascii_hexdigit()).collect();
    s.chunks(2)
        .map(|c| u8::from_str_radix(std::str::from_utf8(c).unwrap(), 16).unwrap())
        .collect()
}

/// The UDP captures whose SIP every test must parse.
pub(crate) const UDP_SIP_CAPTURES: [&str; 13] = [
    "SIP_CALL_RTP_G711.pcap",
    "SIP_DTMF2.cap",
    "rtp-protocol.pcap",
    "sip-rtp-g711.pcap",
    "sip-rtp-g722.pcap",
    "sip-rtp-g729a.pcap",
    "sip-rtp-opus-hybrid.pcap",
    "Asterisk_ZFONE_XLITE.pcap",
    "FAX-Call-t38-CA-TDM-SIP-FB-1.pcap",
    "register-invite-reinvite-bye.pcap",
    "codec-negotiation.pcap",
    "invite-opus-bye.pcap",
    "sipp_uac_Media_DTMF_Speex.pcap",
];

/// Every SIP-over-UDP payload of a capture with tshark's Call-ID for it.
pub(crate) fn udp_sip_payloads(file: &std::path::Path) -> Vec<(Vec<u8>, String)> {
    tshark_rows(
        file,
        &[
            "-Y",
            "sip && udp",
            "-T",
            "fields",
            "-e",
            "udp.payload",
            "-e",
            "sip.Call-ID",
        ],
    )
    .into_iter()
    .map(|row| {
        let payload = hex_decode(row.first().map(String::as_str).unwrap_or(""));
        let call_id = row.get(1).cloned().unwrap_or_default();
        (payload, call_id)
    })
    .collect()
}

/// Byte streams of one TCP conversation, per direction, in order (from
/// `tshark -z follow,tcp,raw,N`): `(client source port, client→server,
/// server→client)`; the client is tshark's node 0.
pub(crate) fn tcp_follow(file: &std::path::Path, stream: u32) -> (String, Vec<u8>, Vec<u8>) {
    let spec = format!("follow,tcp,raw,{stream}");
    let out = Command::new("tshark")
        .arg("-r")
        .arg(file)
        .args(["-q", "-z", &spec])
        .output()
        .expect("run tshark");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut client = Vec::new();
    let mut server = Vec::new();
    let mut client_port = String::new();
    for line in text.lines() {
        if let Some(node) = line.strip_prefix("Node 0:") {
            client_port = node
                .rsplit(':')
                .next()
                .unwrap_or_default()
                .trim()
                .to_string();
        }
        if line.starts_with('=')
            || line.starts_with("Follow")
            || line.starts_with("Filter")
            || line.starts_with("Node")
            || line.trim().is_empty()
        {
            continue;
        }
        if let Some(rest) = line.strip_prefix('\t') {
            server.extend(hex_decode(rest));
        } else {
            client.extend(hex_decode(line));
        }
    }
    (client_port, client, server)
}

/// The SDP part of a SIPREC `.txt` file from the corpus: the lines between
/// `Content-Type: application/sdp` (and its part headers) and the next
/// `--boundary` line.
pub(crate) fn sdp_from_siprec_text(text: &str) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let ct = lines.iter().position(|l| {
        l.to_ascii_lowercase()
            .replace(' ', "")
            .starts_with("content-type:application/sdp")
    })?;
    // Skip the rest of the part headers up to the blank line.
    let mut i = ct;
    while i < lines.len() && !lines[i].trim().is_empty() {
        i += 1;
    }
    let mut sdp = String::new();
    for l in lines.iter().skip(i + 1) {
        if l.starts_with("--") {
            break;
        }
        sdp.push_str(l.trim_end_matches('\r'));
        sdp.push_str("\r\n");
    }
    Some(sdp)
}

/// Resolves the SIPp keywords of a SIPp template (`[local_ip]`, ...) with
/// fixed test values; `[len]` stays (a non-numeric Content-Length).
pub(crate) fn fill_sipp_template(text: &str) -> String {
    [
        ("[local_ip_type]", "4"),
        ("[local_ip]", "127.0.0.1"),
        ("[remote_ip]", "127.0.0.2"),
        ("[auto_media_port]", "6000"),
        ("[media_port]", "6000"),
        ("[local_port]", "5060"),
        ("[remote_port]", "5080"),
        ("[transport]", "UDP"),
        ("[call_id]", "sipp-call-1"),
        ("[branch]", "z9hG4bK-1"),
        ("[pid]", "1"),
        ("[call_number]", "1"),
    ]
    .iter()
    .fold(text.to_string(), |t, (k, v)| t.replace(k, v))
}
