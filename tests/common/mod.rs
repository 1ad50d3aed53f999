//! Helpers shared by the integration tests: run the real `pbx-edge` binary,
//! read the recordings it wrote, measure them against the truth.
#![allow(dead_code)]

pub mod daemon;
pub mod receiver;
pub mod truth;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use pbx_testgen::audio::{best_lag, correlation_at, read_stereo_wav};
use serde_json::Value;

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pbx-edge"))
}

/// ../shared/corpus, if present.
pub fn corpus() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus");
    if p.join("MANIFEST.tsv").exists() {
        Some(p)
    } else {
        eprintln!("note: ../shared/corpus not found; corpus test skipped");
        None
    }
}

pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool} >/dev/null"))
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

pub fn import(files: &[&Path], out: &Path, extra: &[&str]) -> Output {
    let mut c = Command::new(bin());
    c.arg("import");
    for f in files {
        c.arg(f);
    }
    c.arg("--out").arg(out).args(extra);
    c.output().expect("run pbx-edge import")
}

pub struct Recording {
    pub json: Value,
    pub wav: PathBuf,
    pub rate: u32,
    pub ch: [Vec<i16>; 2],
}

/// Every recording pair in `dir`, sorted by started_at then call id.
pub fn recordings(dir: &Path) -> Vec<Recording> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("read out dir") {
        let p = e.expect("dir entry").path();
        // (Not the hidden `.<id>.start.json` / `.answer.json` sidecars of
        // calls in progress: one still there for a moment after its
        // recording's JSON landed was read as a recording without a WAV.)
        if p.extension().and_then(|x| x.to_str()) != Some("json")
            || p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        {
            continue;
        }
        let json: Value =
            serde_json::from_slice(&std::fs::read(&p).expect("read json")).expect("parse json");
        let wav = p.with_extension("wav");
        let (rate, ch) = read_stereo_wav(&wav).expect("read wav");
        out.push(Recording {
            json,
            wav,
            rate,
            ch,
        });
    }
    out.sort_by(|a, b| {
        (
            a.json["media_started_at"].as_str(),
            a.json["call_id"].as_str(),
        )
            .cmp(&(
                b.json["media_started_at"].as_str(),
                b.json["call_id"].as_str(),
            ))
    });
    out
}

pub fn by_call_id<'a>(recs: &'a [Recording], call_id: &str) -> &'a Recording {
    recs.iter()
        .find(|r| r.json["call_id"] == call_id)
        .unwrap_or_else(|| panic!("no recording for call {call_id}"))
}

/// Bring a truth signal to the recording's rate.
pub fn to_rate(x: &[i16], from: u32, to: u32) -> Vec<i16> {
    match (from, to) {
        (a, b) if a == b => x.to_vec(),
        (16000, 8000) => pbx_testgen::audio::halve(x),
        (8000, 16000) => x.iter().flat_map(|s| [*s, *s]).collect(),
        _ => panic!("unsupported rate pair {from}->{to}"),
    }
}

/// Alignment of recorded channel vs truth: (lag in ms, correlation).
pub fn align(
    rec: &[i16],
    rec_rate: u32,
    truth: &[i16],
    truth_rate: u32,
    max_ms: i64,
) -> (f64, f64) {
    let t = to_rate(truth, truth_rate, rec_rate);
    let max = max_ms * i64::from(rec_rate) / 1000;
    let (lag, c) = best_lag(rec, &t, max);
    (lag as f64 * 1000.0 / f64::from(rec_rate), c)
}

/// Correlation between a recorded channel and a truth at zero lag (cross-talk check).
pub fn corr0(rec: &[i16], rec_rate: u32, truth: &[i16], truth_rate: u32) -> f64 {
    correlation_at(rec, &to_rate(truth, truth_rate, rec_rate), 0)
}

/// The value of a SIP message's header `name` (case-insensitive; the first
/// one).
pub fn header<'a>(msg: &'a str, name: &str) -> Option<&'a str> {
    msg.lines()
        .find(|l| {
            l.to_ascii_lowercase()
                .starts_with(&format!("{}:", name.to_ascii_lowercase()))
        })
        .map(|l| l[name.len() + 1..].trim())
}

/// Whether SIP message `m` is a final (>= 200) response to `method`.
#[allow(dead_code)]
pub fn is_final_response(m: &str, method: &str) -> bool {
    let code: u16 = m
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    m.starts_with("SIP/2.0") && code >= 200 && m.contains(&format!(" {method}\r\n"))
}

/// The first final (>= 200) response to `method` that reaches `sock` within
/// `max` (other messages are skipped).
pub fn final_response(
    sock: &std::net::UdpSocket,
    method: &str,
    max: std::time::Duration,
) -> String {
    let t = std::time::Instant::now();
    let mut b = vec![0u8; 65536];
    while t.elapsed() < max {
        if let Ok((n, _)) = sock.recv_from(&mut b) {
            let m = String::from_utf8_lossy(&b[..n]).into_owned();
            if is_final_response(&m, method) {
                return m;
            }
        }
    }
    panic!("no final response to {method}");
}

/// A tmpfs mounted for a disk-full test, unmounted when dropped.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. `"16m"`) at `at` (created). `None`,
    /// with a note, where mounting is not allowed (it needs root or
    /// CAP_SYS_ADMIN): the caller skips its test.
    pub fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("note: cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN): disk-full test skipped");
            return None;
        }
        Some(Tmpfs(at.to_path_buf()))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Writes `path` until its file system refuses more: a full disk.
pub fn fill_up(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let block = vec![0u8; 64 * 1024];
    while f.write_all(&block).is_ok() {}
    let _ = f.sync_all();
}
