//! `pbx-edge import FILE... --out DIR`: captures in, recordings out (CONTRACT §1).
//!
//! The files are read in the order given, through one [`CallEngine`], so a call
//! that spans rotated capture files is one recording. A file that cannot be read
//! to its end (truncated, corrupt) still gives every call found before the point
//! where reading stopped; the message names the file and the byte offset, and the
//! exit status is 1.

use std::fs::File;
use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use pbx_core::call::{
    CallEngine, CallKey, CallMeta, EndReason, EngineConfig, EngineStats, Narrowed, RecordingSink,
    RecordingStart, SampleRatePolicy,
};
use pbx_core::capture::{CaptureError, CaptureReader};

use crate::cli::ImportArgs;

use crate::recording::{RecordingContext, RecordingCounters, RecordingDir};
/// The host name (the default agent id), where it used to be.
pub use crate::sys::hostname;
use crate::units::parse_duration;

/// `config`: `--config`. The configuration is found as `run` finds it
/// (`--config FILE`, else /etc/pbx-edge/pbx-edge.toml if present, else the
/// built-in defaults; `PBX_EDGE__*` over either): its `[recording]`
/// (sample rate, minimum duration, jitter window, pause/resume DTMF
/// sequences), `agent.id` and `[roles]` apply to the imported calls as
/// they would have live. A flag given on the command line wins.
///
/// Without `--config`, a default file that cannot be used (one only the
/// daemon's user may read, or a key or token file it names that this user
/// cannot read) is said on stderr and the built-in defaults are used: a
/// capture can always be imported. With `--config`, the file must load.
pub fn run(args: &ImportArgs, config: Option<&std::path::Path>) -> Result<ExitCode> {
    let cfg = match (crate::config::Config::load(config), config) {
        (Ok(c), _) => c,
        (Err(e), Some(_)) => anyhow::bail!("{}", e.lines().join("\n")),
        (Err(e), None) => {
            eprintln!(
                "pbx-edge import: the default configuration cannot be used, built-in defaults instead (give --config FILE to use one):\n{}",
                e.lines().join("\n")
            );
            crate::config::Config::default()
        }
    };
    let sample_rate = match &args.sample_rate {
        Some(s) => parse_rate(s)?,
        None => cfg.recording.sample_rate.policy(),
    };
    let min_duration = match &args.min_duration {
        Some(s) => parse_duration(s).map_err(|e| anyhow::anyhow!("--min-duration: {e}"))?,
        None => cfg.recording.min_duration,
    };
    let roles = crate::sources::handle::role_rules(&cfg);
    let ctx = RecordingContext {
        agent_id: args
            .agent_id
            .clone()
            .unwrap_or_else(|| cfg.agent.id.clone()),
        source: "pcap",
        min_duration,
        // `import --out DIR` writes plain files for the operator.
        seal: None,
        tap: None,
        roles,
    };
    let mut out = RecordingDir::new(&args.out, ctx)
        .with_context(|| format!("cannot create output directory {}", args.out.display()))?;
    // A capture file can be imported again: no need to write each chunk
    // through for crash safety.
    out.set_write_through(false);
    // Nor any need to see each pair the moment its call ends: finished
    // two at a time, their WAVs hashed together.
    out.finish_in_pairs(true);
    // [recording] as live (rtp_timeout included), the flags over it.
    let mut engine_cfg = cfg.recording.engine_config();
    engine_cfg.sample_rate = sample_rate;
    if let Some(ms) = args.jitter_ms {
        engine_cfg.jitter_ms = ms;
    }
    let mut engine = CallEngine::new(engine_cfg);

    let total: u64 = args
        .files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    let bar = if !args.quiet && std::io::stderr().is_terminal() {
        let b = ProgressBar::new(total);
        b.set_style(
            ProgressStyle::with_template(
                "{bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        Some(b)
    } else {
        None
    };

    let read = read_captures(&args.files, &mut engine, &mut out, &bar);
    if let Some(b) = &bar {
        b.set_position(total);
    }
    engine.finish(EndReason::CaptureEnd, &mut out);
    out.finish_held();
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let narrowed = engine.take_narrowed();
    // (Only files can be read again: not a pipe, `/dev/stdin`, a FIFO.)
    let again = args
        .files
        .iter()
        .all(|f| std::fs::metadata(f).is_ok_and(|m| m.is_file()));
    if sample_rate == SampleRatePolicy::Auto && !narrowed.is_empty() && again {
        read_wideband_again(&args.files, engine.config(), narrowed, &mut out);
    }
    let Reading {
        mut all_ok,
        files_read,
        cut,
    } = read;
    for e in &out.errors {
        eprintln!("pbx-edge import: {e}");
    }
    println!(
        "{}",
        summary(
            args.files.len(),
            files_read,
            cut,
            engine.stats(),
            &out.counters
        )
    );
    if !out.errors.is_empty() || cut > 0 {
        all_ok = false;
    }
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// How reading the captures went.
struct Reading {
    /// Every file could be opened and read.
    all_ok: bool,
    /// Files opened.
    files_read: usize,
    /// Files opened whose reading stopped at an error (their calls up to
    /// there are written).
    cut: usize,
}

/// Read `files` into `engine`, its recordings to `sink`.
fn read_captures(
    files: &[std::path::PathBuf],
    engine: &mut CallEngine,
    sink: &mut dyn RecordingSink,
    bar: &Option<ProgressBar>,
) -> Reading {
    // Every file is opened, and their packets read as one stream in time
    // order (a k-way merge on each file's next packet): two interfaces
    // captured at once into two files (the SIP VLAN and the voice VLAN,
    // the inside and the outside of an SBC) make one call only together.
    // Files one after another in time (a ring buffer's, given in any
    // order, as a glob gives `cap1 cap10 cap2`) are read one after another
    // as the merge finds them.
    // A file is opened when the merge reaches its first packet, and closed
    // at its end: a ring buffer of thousands of files holds one or two
    // open at a time (not one descriptor per file).
    let mut all_ok = true;
    let mut files_read = 0usize;
    // Files opened whose reading stopped at an error (their calls up to
    // there are written).
    let mut cut = 0usize;
    let open =
        |path: &std::path::PathBuf, bar: &Option<ProgressBar>| -> Option<CaptureReader<File>> {
            let shown = path.display();
            let file = match File::open(path) {
                Ok(f) => f,
                Err(e) => {
                    report(bar, format!("{shown}: cannot open: {e}"));
                    return None;
                }
            };
            // The reader buffers (large reads, straight from the file): a
            // BufReader in between would copy every byte once more.
            match CaptureReader::new(file) {
                Ok(r) => Some(r),
                Err(e) => {
                    report(bar, format!("{shown}: {}", describe(&e)));
                    None
                }
            }
        };
    let mut n = 0u64;
    if files.len() == 1 {
        // One file: its frames straight from the reader's buffer.
        let path = &files[0];
        match open(path, bar) {
            None => all_ok = false,
            Some(reader) => {
                files_read = 1;
                let mut input = Input {
                    path,
                    reader,
                    head: None,
                };
                loop {
                    match input.reader.next_frame() {
                        Ok(Some(f)) => engine.handle_frame(f.ts, f.link, f.data, sink),
                        Ok(None) => break,
                        Err(e) => {
                            report(bar, format!("{}: {}", input.path.display(), describe(&e)));
                            cut += 1;
                            break;
                        }
                    }
                    n += 1;
                    if n % 8192 == 0 {
                        progress(bar, input.reader.offset(), &[], engine);
                    }
                }
            }
        }
    } else {
        // Several: each file's first packet time (the file closed again),
        // the files in that order.
        let mut pending: Vec<(pbx_core::Timestamp, &std::path::PathBuf)> = Vec::new();
        for path in files {
            let Some(mut r) = open(path, bar) else {
                all_ok = false;
                continue;
            };
            files_read += 1;
            match r.next_frame() {
                Ok(Some(f)) => pending.push((f.ts, path)),
                Ok(None) => {}
                Err(e) => {
                    report(bar, format!("{}: {}", path.display(), describe(&e)));
                    cut += 1;
                }
            }
        }
        pending.sort_by_key(|(ts, _)| *ts);
        let mut pending = pending.into_iter().peekable();
        // Each open file's next frame is copied out of its reader (the
        // reader's buffer moves on when the next one is read), and the
        // earliest goes first (the earlier file on a tie).
        let mut inputs: Vec<Option<Input>> = Vec::new();
        let mut heap = std::collections::BinaryHeap::new();
        let mut done_bytes = 0u64;
        loop {
            // Open the files whose first packet comes before every frame
            // held.
            while let Some((first, path)) = pending.peek().copied() {
                if heap
                    .peek()
                    .is_some_and(|std::cmp::Reverse((ts, _))| *ts < first)
                {
                    break;
                }
                pending.next();
                let Some(reader) = open(path, bar) else {
                    all_ok = false;
                    continue;
                };
                let mut input = Input {
                    path,
                    reader,
                    head: None,
                };
                if let Some(ts) = input.advance(bar, &mut cut) {
                    heap.push(std::cmp::Reverse((ts, inputs.len())));
                    inputs.push(Some(input));
                }
            }
            let Some(std::cmp::Reverse((_, i))) = heap.pop() else {
                break;
            };
            let Some(input) = inputs[i].as_mut() else {
                continue;
            };
            if let Some(h) = input.head.as_ref() {
                engine.handle_frame(h.ts, h.link, &h.data, sink);
            }
            match input.advance(bar, &mut cut) {
                Some(ts) => heap.push(std::cmp::Reverse((ts, i))),
                None => {
                    // Its end: closed.
                    done_bytes += input.reader.offset();
                    inputs[i] = None;
                }
            }
            n += 1;
            if n % 8192 == 0 {
                progress(bar, done_bytes, &inputs, engine);
            }
        }
    }
    Reading {
        all_ok,
        files_read,
        cut,
    }
}

/// `sample_rate = "auto"` records a call at 16000 Hz if a leg is wideband,
/// but the rate is fixed when its media start: a call that began in G.711
/// and turned to G.722 or Opus later (a re-INVITE) was recorded at 8000 Hz,
/// its wideband audio narrowed. A capture file can be read again: those calls
/// (`narrowed`) are recorded anew at 16000 Hz from their start, their files
/// replacing the first reading's (the same recording ids: the same first
/// packet). The other calls are followed as before, so that every packet
/// finds the same call, but not written again.
fn read_wideband_again(
    files: &[std::path::PathBuf],
    cfg: &EngineConfig,
    narrowed: Vec<Narrowed>,
    out: &mut RecordingDir,
) {
    let mut cfg = cfg.clone();
    cfg.wideband_calls = narrowed.iter().map(|n| n.call_id.clone()).collect();
    let before = out.counters.clone();
    let mut engine = CallEngine::new(cfg.clone());
    let mut only = OnlyCalls {
        out,
        calls: &cfg.wideband_calls,
        keys: Default::default(),
        written: Vec::new(),
    };
    // Said once, by the first reading.
    let quiet = Some(ProgressBar::hidden());
    read_captures(files, &mut engine, &mut only, &quiet);
    engine.finish(EndReason::CaptureEnd, &mut only);
    let written = std::mem::take(&mut only.written);
    out.finish_held();
    // The first reading's count stands, but for a recording the second
    // made anew. (One the second did not make again keeps the first
    // reading's files, at 8000 Hz with their warning: nothing is removed.)
    let mut counters = before;
    counters.failed = out.counters.failed;
    for id in &written {
        if !narrowed.iter().any(|n| &n.recording_id == id)
            && out.dir().join(format!("{id}.json")).is_file()
        {
            counters.written += 1;
        }
    }
    out.counters = counters;
}

/// The recordings of some calls only (by Call-ID) to a [`RecordingDir`].
struct OnlyCalls<'a> {
    out: &'a mut RecordingDir,
    calls: &'a std::collections::HashSet<String>,
    keys: std::collections::HashSet<CallKey>,
    /// The recording ids ended.
    written: Vec<String>,
}

impl RecordingSink for OnlyCalls<'_> {
    fn begin(&mut self, call: CallKey, start: &RecordingStart) {
        if self.calls.contains(&start.call_id) {
            self.keys.insert(call);
            self.out.begin(call, start);
        }
    }

    fn audio(&mut self, call: CallKey, frames: &[i16]) {
        if self.keys.contains(&call) {
            self.out.audio(call, frames);
        }
    }

    fn end(&mut self, call: CallKey, meta: CallMeta) {
        if self.keys.remove(&call) {
            self.written.push(meta.recording_id.clone());
            self.out.end(call, meta);
        }
    }
}

fn report(bar: &Option<ProgressBar>, msg: String) {
    match bar {
        Some(b) => b.println(format!("pbx-edge import: {msg}")),
        None => eprintln!("pbx-edge import: {msg}"),
    }
}

fn describe(e: &CaptureError) -> String {
    match e {
        CaptureError::Truncated { offset: 0 } => {
            "the file ends within its header: no packet in it (truncated capture)".to_string()
        }
        CaptureError::Truncated { offset } => {
            format!("stopped at byte {offset}: the file ends in the middle of a packet record (truncated capture)")
        }
        CaptureError::Corrupt { offset, reason } => {
            format!("stopped at byte {offset}: corrupt capture: {reason}")
        }
        CaptureError::NotACapture => "not a pcap or pcapng file".to_string(),
        CaptureError::Io(io) => format!("read error: {io}"),
        other => other.to_string(),
    }
}

fn parse_rate(s: &str) -> Result<SampleRatePolicy> {
    Ok(match s {
        "auto" => SampleRatePolicy::Auto,
        "8000" => SampleRatePolicy::Fixed(8000),
        "16000" => SampleRatePolicy::Fixed(16000),
        other => bail!("--sample-rate must be auto, 8000 or 16000, not `{other}`"),
    })
}

/// The one summary line printed at the end.
/// `read`: files opened, of which `cut` stopped at a read error (not
/// counted as imported: only files read to their end are).
fn summary(
    files: usize,
    read: usize,
    cut: usize,
    s: &EngineStats,
    c: &RecordingCounters,
) -> String {
    let whole = read.saturating_sub(cut);
    let mut line = format!(
        "imported {whole}/{files} files: {} packets, {} calls, {} recordings written",
        s.frames, s.calls_seen, c.written
    );
    let mut notes: Vec<String> = Vec::new();
    let mut add = |n: u64, what: &str| {
        if n > 0 {
            notes.push(format!("{n} {what}"));
        }
    };
    add(
        cut as u64,
        "files cut short by a read error (their calls up to there written)",
    );
    add(s.calls_without_media, "calls without media");
    add(
        s.capture_clock_steps_back,
        "steps back of the capture's clock (the time after each continued from before it)",
    );
    add(c.too_short, "recordings shorter than --min-duration");
    add(c.failed, "recordings failed to write");
    let mut unusable: Vec<String> = Vec::new();
    let mut bad = |n: u64, what: &str| {
        if n > 0 {
            unusable.push(format!("{n} {what}"));
        }
    };
    bad(s.frames_undecodable, "not IP/UDP/TCP or malformed");
    bad(s.sip_malformed, "malformed SIP");
    bad(s.sdp_malformed, "malformed SDP");
    bad(s.rtp_malformed, "malformed RTP");
    bad(s.rtp_unmatched, "RTP of no known call");
    bad(
        s.rtp_duplicate_flow,
        "RTP copies of an already recorded stream",
    );
    bad(s.rtcp_packets, "RTCP (ignored)");
    bad(s.sip_retransmissions, "SIP retransmissions");
    bad(s.udp_other, "other UDP");
    bad(s.tcp_other, "other TCP");
    if !notes.is_empty() {
        line.push_str(&format!(" ({})", notes.join(", ")));
    }
    if !unusable.is_empty() {
        line.push_str(&format!("; not used: {}", unusable.join(", ")));
    }
    line
}

/// One capture file of an import, with its next frame when several are
/// merged (a copy: the reader's buffer moves on).
struct Input<'a> {
    path: &'a std::path::PathBuf,
    reader: CaptureReader<File>,
    head: Option<Head>,
}

/// A frame copied out of its reader.
struct Head {
    ts: pbx_core::Timestamp,
    link: pbx_core::capture::LinkType,
    data: Vec<u8>,
}

impl Input<'_> {
    /// Read the next frame into `head` (its buffer reused); its time, or
    /// `None` at the end (or an error, reported).
    /// The next frame into `head`; at a read error, reported and counted in
    /// `cut`, the file ends there.
    fn advance(
        &mut self,
        bar: &Option<ProgressBar>,
        cut: &mut usize,
    ) -> Option<pbx_core::Timestamp> {
        match self.reader.next_frame() {
            Ok(Some(f)) => {
                let head = self.head.get_or_insert_with(|| Head {
                    ts: f.ts,
                    link: f.link,
                    data: Vec::with_capacity(2048),
                });
                head.ts = f.ts;
                head.link = f.link;
                head.data.clear();
                head.data.extend_from_slice(f.data);
                Some(f.ts)
            }
            Ok(None) => {
                self.head = None;
                None
            }
            Err(e) => {
                report(bar, format!("{}: {}", self.path.display(), describe(&e)));
                *cut += 1;
                self.head = None;
                None
            }
        }
    }
}

/// The progress bar: bytes read (`done` of the files closed, and of those
/// open), calls and recordings so far.
fn progress(bar: &Option<ProgressBar>, done: u64, inputs: &[Option<Input>], engine: &CallEngine) {
    if let Some(b) = bar {
        b.set_position(
            done + inputs
                .iter()
                .flatten()
                .map(|i| i.reader.offset())
                .sum::<u64>(),
        );
        b.set_message(format!(
            "{} calls, {} recordings",
            engine.stats().calls_seen,
            engine.stats().calls_recorded
        ));
    }
}
