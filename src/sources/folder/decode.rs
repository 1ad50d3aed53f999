//! PBX audio files → PCM: WAV, raw signed linear (`.sln*`, `.raw`, mono or
//! interleaved stereo told from the samples), GSM; resampling to 8/16 kHz.
//! Never panics on input; what was odd is returned as warnings.

use super::*;

// ---------------------------------------------------------------- audio

/// Decoded 16-bit PCM, interleaved.
#[derive(Debug, Clone)]
pub struct Pcm {
    pub rate: u32,
    pub channels: u16,
    pub samples: Vec<i16>,
    /// What the file held, for the JSON's per-channel `codec`: `"L16"` (PCM),
    /// `"GSM"` (GSM 06.10, raw or WAV49), `"PCMU"` / `"PCMA"` (raw G.711),
    /// `"G722"` (raw G.722).
    pub codec: &'static str,
    /// What decoding noticed but got past (GSM frames without the magic, a
    /// partial last frame), each naming the file: for the JSON's `warnings`.
    pub warnings: Vec<String>,
}

impl Pcm {
    fn l16(rate: u32, channels: u16, samples: Vec<i16>) -> Self {
        Pcm {
            rate,
            channels,
            samples,
            codec: "L16",
            warnings: Vec::new(),
        }
    }
}

/// Asterisk's signed-linear formats at rates other than 8 and 16 kHz
/// (`slin12` ... `slin192`): their extensions and rates. Taken as
/// recordings so that they are reported (the resampler converts only
/// between 8 and 16 kHz), not silently passed over.
pub const SLN_OTHER_RATES: &[(&str, u32)] = &[
    ("sln12", 12_000),
    ("sln24", 24_000),
    ("sln32", 32_000),
    ("sln44", 44_100),
    ("sln48", 48_000),
    ("sln96", 96_000),
    ("sln192", 192_000),
];

/// Asterisk's raw G.711 µ-law formats (`ulaw`: 8 kHz mono, one byte a
/// sample, no header): its extensions.
pub const ULAW_EXTS: &[&str] = &["ulaw", "ul", "mu", "ulw", "pcm"];

/// Asterisk's raw G.711 A-law formats (`alaw`).
pub const ALAW_EXTS: &[&str] = &["alaw", "al", "alw"];

/// Extensions of formats Asterisk can record in (MixMonitor, Monitor,
/// Record) that pbx-edge does not decode: taken as recordings so that each
/// is reported (logged, counted in `recordings_failed` and `unsupported`)
/// once, never silently passed over.
pub const UNSUPPORTED_EXTS: &[&str] = &[
    "g723", "g723sf", "g726", "g729", "g719", "siren7", "siren14", "speex", "speex16", "speex32",
    "spx", "ilbc", "vox", "ogg", "opus",
];

/// Extensions taken as recordings (any case): `wav`, `wav16` (Asterisk's
/// 16 kHz WAV), `wav49`, `sln`, `sln16`, `raw`, `gsm`, `g722`, raw G.711
/// ([`ULAW_EXTS`], [`ALAW_EXTS`]), and the [`SLN_OTHER_RATES`] and
/// [`UNSUPPORTED_EXTS`] ones (reported as unsupported).
pub fn is_audio_name(name: &str) -> bool {
    let Some((_, ext)) = name.rsplit_once('.') else {
        return false;
    };
    let ext = ext.to_ascii_lowercase();
    matches!(
        ext.as_str(),
        "wav" | "wav16" | "wav49" | "sln" | "sln16" | "raw" | "gsm"
    ) || SLN_OTHER_RATES.iter().any(|(e, _)| *e == ext)
        || ext == "g722"
        || ULAW_EXTS.contains(&ext.as_str())
        || ALAW_EXTS.contains(&ext.as_str())
        || UNSUPPORTED_EXTS.contains(&ext.as_str())
        || ext.starts_with("g726")
}

/// Whether `path` is a WAV (by its extension: `.wav`, `.wav16`, `.wav49`,
/// any case) whose header was not finalised by its writer: the data size is
/// still 0 while audio follows the header. Asterisk writes the sizes when
/// it closes the file: such a file is most likely still open. `false` when
/// it cannot be read or is no WAV (decoding reports that).
pub fn wav_unfinalised(path: &Path) -> bool {
    use std::io::Read;
    let wav = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .is_some_and(|e| matches!(e.as_str(), "wav" | "wav16" | "wav49"));
    if !wav {
        return false;
    }
    let Ok(f) = File::open(path) else {
        return false;
    };
    let Ok(len) = f.metadata().map(|m| m.len()) else {
        return false;
    };
    let mut head = Vec::with_capacity(4096);
    if f.take(64 * 1024).read_to_end(&mut head).is_err() {
        return false;
    }
    parse_wav_header(&head).is_ok_and(|info| info.data_len == 0 && len > info.data_offset)
}

fn le_samples(bytes: &[u8]) -> Vec<i16> {
    bytes
        .chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect()
}

/// What [`probe_raw_layout`] measured of headerless s16 samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RawProbe {
    /// Σ(x[n] − x[n+1])² over the probe: adjacent samples.
    pub d1: f64,
    /// Σ(x[n] − x[n+2])² over the probe: every other sample.
    pub d2: f64,
    /// Σx[n]² over the probe.
    pub energy: f64,
    /// RMS of the probe (full scale 32768).
    pub rms: f64,
    /// Whether the samples count as interleaved stereo.
    pub stereo: bool,
    /// Why not, when a precondition failed (odd count, too quiet).
    pub why_not: Option<&'static str>,
}

impl RawProbe {
    /// D1/D2 (infinite when D2 is 0 and D1 is not; 0 when both are).
    pub fn ratio(&self) -> f64 {
        if self.d2 > 0.0 {
            self.d1 / self.d2
        } else if self.d1 > 0.0 {
            f64::INFINITY
        } else {
            0.0
        }
    }

    /// For the JSON's warnings.
    pub(crate) fn describe(&self) -> String {
        let how = match self.why_not {
            Some(why) => format!("{why}, D1/D2 = {:.2}", self.ratio()),
            None => format!("D1/D2 = {:.2}", self.ratio()),
        };
        if self.stereo {
            format!("raw layout detected as interleaved stereo (raw_stereo = \"auto\": {how})")
        } else {
            format!(
                "raw layout detected as mono (raw_stereo = \"auto\": {how}); set raw_stereo = \
                 true if the file is MixMonitor D interleaved stereo"
            )
        }
    }
}

/// How much of a raw file [`probe_raw_layout`] looks at, in seconds (of
/// stereo, at the file's rate): enough to get past ringing and a quiet
/// start, bounded so that the cost does not grow with the call.
pub const RAW_PROBE_SECONDS: usize = 30;

/// Interleaved stereo when D1 > this × D2.
pub const RAW_STEREO_RATIO: f64 = 1.5;

/// Interleaved stereo only when D1 < this × 2·Σx²: the channels of two
/// parties (or one party and silence) are not anti-correlated, so D1 ≈
/// 2·Σx²; a mono tone of angular frequency θ has D1 = 2·Σx²·(1 − cos θ),
/// at least 1.5 × 2·Σx² exactly when D1/D2 can exceed 1 (θ ≥ 2π/3).
pub const RAW_MAX_ANTI: f64 = 1.5;

/// Below this RMS (about −66 dBFS) a probe tells nothing: mono.
pub const RAW_PROBE_MIN_RMS: f64 = 16.0;

/// Whether headerless s16 samples at `rate` are interleaved stereo
/// (MixMonitor `D`) or mono, from the samples alone.
///
/// With x the samples: D1 = Σ(x[n]−x[n+1])², D2 = Σ(x[n]−x[n+2])², E =
/// Σx[n]². In interleaved stereo adjacent samples come from different
/// channels (two parties, or one party and silence), every other sample
/// from the same one: D1 ≈ 2E (independent channels), D2 only what a
/// channel changes in one frame, so D1 ≫ D2. In mono, band-limited audio
/// changes less in one sample than in two: D1 ≤ D2. Stereo when, over the
/// first [`RAW_PROBE_SECONDS`], D1 > [`RAW_STEREO_RATIO`]·D2, D1 <
/// [`RAW_MAX_ANTI`]·2E (not a mono tone above fs/3, whose D1/D2 exceeds 1),
/// the count of samples is even (whole frames) and the RMS is at least
/// [`RAW_PROBE_MIN_RMS`]; else mono.
///
/// Measured (tests/folder.rs `raw_layout_detector_on_real_material`,
/// `--nocapture` prints them), D1/D2 and D1/2E:
/// - mono, must stay mono: espeak-ng speech 8 kHz 0.42 / 0.24 and 0.44 /
///   0.29 (two voices), the same through a 300-3400 Hz band 0.39 / 0.26;
///   16 kHz 0.35 / 0.09 and 0.39 / 0.14; two voices mixed (MixMonitor's
///   default) 8 kHz 0.43, 16 kHz 0.37; sox tones 440 Hz 0.26, 1 kHz 0.29
///   (16 kHz: 0.26), DTMF 697+1209 Hz 0.50; pink noise 0.63, white noise
///   0.90 / 0.94. Mono tones above fs/3 pass the ratio but not the second
///   test: 3 kHz at 8 kHz 1.71 / 1.71, 3.4 kHz 4.59 / 1.89, 7 kHz at
///   16 kHz 6.57 / 1.92.
/// - interleaved, must be stereo: espeak speech + silence 8 kHz 4.15 and
///   3.44 (silence first) / 1.00, 16 kHz 10.99 / 1.00; two espeak voices
///   8 kHz 3.75 / 0.99, 16 kHz 8.58 / 0.99, 8 kHz with 30 % crosstalk
///   each way 1.96 / 0.52; sox tones 300 / 700 Hz 11.43 / 1.00; a 440 Hz
///   tone + speech 14.95 / 1.02.
///
/// Channels with heavy crosstalk (one party at more than about a third on
/// the other's channel) fall below the ratio and are read as mono: say
/// `raw_stereo = true` then.
pub fn probe_raw_layout(samples: &[i16], rate: u32) -> RawProbe {
    let n = samples
        .len()
        .min((rate as usize).saturating_mul(2 * RAW_PROBE_SECONDS));
    let x = &samples[..n];
    let (mut d1, mut d2, mut e) = (0f64, 0f64, 0f64);
    for (i, &v) in x.iter().enumerate() {
        let v = f64::from(v);
        e += v * v;
        if let Some(&a) = x.get(i + 1) {
            d1 += (v - f64::from(a)).powi(2);
        }
        if let Some(&b) = x.get(i + 2) {
            d2 += (v - f64::from(b)).powi(2);
        }
    }
    let rms = if n > 0 { (e / n as f64).sqrt() } else { 0.0 };
    let why_not = if samples.len() % 2 != 0 {
        Some("an odd number of samples")
    } else if rms < RAW_PROBE_MIN_RMS {
        Some("too quiet to tell")
    } else if d1 >= RAW_MAX_ANTI * 2.0 * e {
        // Adjacent samples anti-correlated (ρ1 ≤ −0.5): a mono tone above
        // fs/3, not two parties (independent channels give D1 ≈ 2·Σx²).
        Some("adjacent samples anti-correlated, as in a mono tone above a third of the rate")
    } else {
        None
    };
    RawProbe {
        d1,
        d2,
        energy: e,
        rms,
        stereo: why_not.is_none() && d1 > RAW_STEREO_RATIO * d2,
        why_not,
    }
}

/// Reads a recording file: WAV (`.wav`, `.wav16`; 16-bit PCM mono or
/// stereo, or GSM 6.10 = WAV49 mono 8 kHz), `.wav49`, raw GSM 06.10 frames
/// `.gsm` (8 kHz mono), `.sln`/`.raw` (8 kHz s16le, mono or interleaved
/// stereo per `raw_stereo`), `.sln16`.
pub fn read_audio(path: &Path, settings: &FolderSettings) -> Result<Pcm, FolderError> {
    read_audio_as(path, settings, false)
}

/// [`read_audio`] of a split leg (`leg`: MixMonitor `r()`/`t()` files are
/// mono, so `raw_stereo = "auto"` reads them as mono) or a whole file.
pub(super) fn read_audio_as(
    path: &Path,
    settings: &FolderSettings,
    leg: bool,
) -> Result<Pcm, FolderError> {
    let size = fs::metadata(path).map_err(io_err(path))?.len();
    if size > settings.max_file_bytes {
        return Err(FolderError::TooLarge {
            path: path.to_path_buf(),
            size,
            limit: settings.max_file_bytes,
        });
    }
    let bytes = fs::read(path).map_err(io_err(path))?;
    decode_audio_as(path, &bytes, settings, leg)
}

/// [`read_audio`] of bytes already read: the format comes from `path`'s
/// extension and, for WAV (`.wav`, `.WAV`, `.wav49`), from the header's
/// format tag (1 = PCM, 0x31 = GSM 6.10); `path` also names the file in
/// errors and warnings. GSM decodes to about 10 times its size: a GSM file
/// whose PCM would exceed [`FolderSettings::max_file_bytes`] is refused.
/// A PCM WAV whose header was never finalised (data size 0, or more than
/// the file holds) is read to the end of the file, with a warning.
/// Never panics.
pub fn decode_audio(
    path: &Path,
    bytes: &[u8],
    settings: &FolderSettings,
) -> Result<Pcm, FolderError> {
    decode_audio_as(path, bytes, settings, false)
}

fn decode_audio_as(
    path: &Path,
    bytes: &[u8],
    settings: &FolderSettings,
    leg: bool,
) -> Result<Pcm, FolderError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let ext = name.rsplit_once('.').map_or("", |(_, e)| e);
    if ULAW_EXTS.contains(&ext) || ALAW_EXTS.contains(&ext) {
        // Asterisk's `ulaw` / `alaw`: raw G.711, 8 kHz mono, no header.
        let ulaw = ULAW_EXTS.contains(&ext);
        pcm_fits(path, "G.711", bytes.len() as u64 * 2, settings)?;
        let mut samples = Vec::with_capacity(bytes.len());
        if ulaw {
            pbx_core::audio::g711::decode_ulaw(bytes, &mut samples);
        } else {
            pbx_core::audio::g711::decode_alaw(bytes, &mut samples);
        }
        let mut pcm = Pcm::l16(8000, 1, samples);
        pcm.codec = if ulaw { "PCMU" } else { "PCMA" };
        return Ok(pcm);
    }
    if ext == "g722" {
        // Asterisk's `g722`: raw G.722 at 64 kbit/s, one byte per two
        // 16 kHz samples, no header.
        pcm_fits(path, "G.722", bytes.len() as u64 * 4, settings)?;
        let mut samples = Vec::with_capacity(bytes.len().saturating_mul(2));
        pbx_core::audio::g722::G722Decoder::new().decode_into(bytes, &mut samples);
        let mut pcm = Pcm::l16(16000, 1, samples);
        pcm.codec = "G722";
        return Ok(pcm);
    }
    if UNSUPPORTED_EXTS.contains(&ext) || ext.starts_with("g726") {
        return Err(FolderError::Unsupported {
            path: path.to_path_buf(),
            why: format!(
                "Asterisk's .{ext} format is not supported: pbx-edge decodes wav, wav16, \
                 wav49, gsm, sln, sln16, raw, ulaw, alaw and g722; record in one of these"
            ),
        });
    }
    let raw_rate = if name.ends_with(".sln16") {
        Some(16000)
    } else if name.ends_with(".sln") || name.ends_with(".raw") {
        Some(8000)
    } else {
        None
    };
    if let Some(rate) = raw_rate {
        let samples = le_samples(bytes);
        let (channels, warning) = match (settings.raw_stereo, leg) {
            (RawStereo::Stereo, _) => (2, None),
            (RawStereo::Mono, _) | (RawStereo::Auto, true) => (1, None),
            (RawStereo::Auto, false) => {
                let probe = probe_raw_layout(&samples, rate);
                (
                    if probe.stereo { 2 } else { 1 },
                    Some(format!("{}: {}", path.display(), probe.describe())),
                )
            }
        };
        let mut pcm = Pcm::l16(rate, channels, samples);
        pcm.warnings.extend(warning);
        return Ok(pcm);
    }
    if let Some((ext, rate)) = SLN_OTHER_RATES
        .iter()
        .find(|(e, _)| name.rsplit_once('.').is_some_and(|(_, x)| x == *e))
    {
        return Err(fmt_err(
            path,
            format!(
                "signed linear at {rate} Hz (Asterisk's .{ext}) is not supported: pbx-edge \
                 converts 8000 and 16000 Hz only; record as wav, wav16, sln or sln16"
            ),
        ));
    }
    if name.ends_with(".gsm") {
        // Asterisk's `gsm` format: 33-byte GSM 06.10 frames, no header.
        gsm_fits(
            path,
            bytes.len() / gsm::FRAME_BYTES,
            gsm::FRAME_SAMPLES,
            settings,
        )?;
        let (samples, stats) = gsm::decode_gsm_with_stats(bytes)
            .map_err(|e| fmt_err(path, format!("GSM 06.10: {e}")))?;
        return Ok(gsm_pcm(path, samples, stats, "frame"));
    }
    let info = parse_wav_header(bytes).map_err(|e| fmt_err(path, e.to_string()))?;
    let start = usize::try_from(info.data_offset).unwrap_or(usize::MAX);
    if info.format == gsm::WAVE_FORMAT_GSM610 {
        // WAV49 (Asterisk's `wav49`, written as `.WAV`): 65-byte blocks of
        // two GSM 06.10 frames, Microsoft packing.
        if info.channels != 1 || info.sample_rate != gsm::SAMPLE_RATE {
            return Err(fmt_err(
                path,
                format!(
                    "GSM 6.10 WAV (WAV49) with {} channels at {} Hz; mono 8000 Hz expected",
                    info.channels, info.sample_rate
                ),
            ));
        }
        if usize::from(info.block_align) != gsm::WAV49_BLOCK_BYTES {
            return Err(fmt_err(
                path,
                format!(
                    "GSM 6.10 WAV (WAV49) with block align {}; {} expected",
                    info.block_align,
                    gsm::WAV49_BLOCK_BYTES
                ),
            ));
        }
        // The declared size (the 0xFFFFFFFF placeholder of a file still
        // being written, or more than a cut file holds) clamped to the file.
        let available = bytes.len().saturating_sub(start);
        let mut header_warning = None;
        let len = if info.data_len == 0 && available > 0 {
            // Never finalised (the PBX crashed): to the end of the file.
            header_warning = Some(format!(
                "{}: WAV header data size 0: read to end of file ({available} bytes; the \
                 header was never finalised)",
                path.display()
            ));
            available
        } else {
            usize::try_from(info.data_len)
                .unwrap_or(usize::MAX)
                .min(available)
        };
        let data = bytes
            .get(start..start.saturating_add(len))
            .ok_or_else(|| fmt_err(path, "data chunk outside the file"))?;
        gsm_fits(
            path,
            data.len() / gsm::WAV49_BLOCK_BYTES,
            gsm::WAV49_BLOCK_SAMPLES,
            settings,
        )?;
        let (samples, mut stats) = gsm::decode_wav49_with_stats(data)
            .map_err(|e| fmt_err(path, format!("GSM 6.10 WAV (WAV49): {e}")))?;
        // One byte over whole blocks is the RIFF pad of an odd-sized chunk
        // (sox and Asterisk count it in the chunk size), not a cut block.
        if stats.trailing_bytes == 1 {
            stats.trailing_bytes = 0;
        }
        let mut pcm = gsm_pcm(path, samples, stats, "block");
        pcm.warnings.extend(header_warning);
        return Ok(pcm);
    }
    if !info.is_pcm() || info.bits_per_sample != 16 {
        return Err(fmt_err(
            path,
            format!(
                "unsupported WAV encoding (format {}, {} bits); 16-bit PCM or GSM 6.10 expected",
                info.format, info.bits_per_sample
            ),
        ));
    }
    if info.channels != 1 && info.channels != 2 {
        return Err(fmt_err(
            path,
            format!("{} channels; 1 or 2 expected", info.channels),
        ));
    }
    let (len, warning) = pcm_data_len(&info, bytes.len() as u64);
    let len = usize::try_from(len).unwrap_or(0);
    let data = bytes
        .get(start..start.saturating_add(len))
        .ok_or_else(|| fmt_err(path, "data chunk outside the file"))?;
    let mut pcm = Pcm::l16(info.sample_rate, info.channels, le_samples(data));
    pcm.warnings
        .extend(warning.map(|w| format!("{}: {w}", path.display())));
    Ok(pcm)
}

/// The audio bytes of a PCM WAV of `file_len` bytes, in whole frames. A
/// header the PBX never finalised (it crashed, or the file was cut off)
/// declares a data size of 0 (Asterisk's until the file is closed), or the
/// 0xFFFFFFFF placeholder, or more than the file holds: the data then
/// runs to the end of the file, and the warning says so. A valid header
/// is taken as it is (chunks after `data` stay out).
pub(crate) fn pcm_data_len(
    info: &pbx_core::audio::wav::WavInfo,
    file_len: u64,
) -> (u64, Option<String>) {
    let available = file_len.saturating_sub(info.data_offset);
    let align = u64::from(info.block_align.max(1));
    let whole = available / align * align;
    if info.data_len == 0 && whole > 0 {
        return (
            whole,
            Some(format!(
                "WAV header data size 0: read to end of file ({whole} bytes; the header was \
                 never finalised)"
            )),
        );
    }
    if info.data_len > available {
        return (
            whole,
            Some(format!(
                "WAV header data size {} is more than the file holds ({available} bytes): read \
                 to end of file",
                info.data_len
            )),
        );
    }
    (info.audio_len(file_len), None)
}

/// Refuses a file whose decoded PCM (`pcm_bytes`) would be larger than
/// `max_file_bytes` (the memory bound holds for what is decoded).
fn pcm_fits(
    path: &Path,
    codec: &str,
    pcm_bytes: u64,
    settings: &FolderSettings,
) -> Result<(), FolderError> {
    if pcm_bytes > settings.max_file_bytes {
        return Err(fmt_err(
            path,
            format!(
                "{codec} decoding to {pcm_bytes} bytes of PCM, more than the limit of {}",
                settings.max_file_bytes
            ),
        ));
    }
    Ok(())
}

/// Refuses GSM whose decoded PCM (`units` frames or blocks of `samples`
/// each) would be larger than `max_file_bytes`: the memory bound holds for
/// what is decoded, not only for what is read.
fn gsm_fits(
    path: &Path,
    units: usize,
    samples: usize,
    settings: &FolderSettings,
) -> Result<(), FolderError> {
    let pcm_bytes = (units as u64).saturating_mul(samples as u64 * 2);
    if pcm_bytes > settings.max_file_bytes {
        return Err(fmt_err(
            path,
            format!(
                "GSM 06.10 decoding to {pcm_bytes} bytes of PCM, more than the limit of {}",
                settings.max_file_bytes
            ),
        ));
    }
    Ok(())
}

/// Decoded GSM as mono 8 kHz [`Pcm`], with a warning for each thing the
/// decoder got past (`unit`: "frame" or "block").
fn gsm_pcm(path: &Path, samples: Vec<i16>, stats: gsm::GsmStats, unit: &str) -> Pcm {
    let mut warnings = Vec::new();
    if stats.bad_frames > 0 {
        warnings.push(format!(
            "{}: {} of {} GSM frames without the 0xD magic, decoded as silence",
            path.display(),
            stats.bad_frames,
            stats.frames
        ));
    }
    if stats.trailing_bytes > 0 {
        warnings.push(format!(
            "{}: the last {} bytes are a partial GSM {unit}, ignored",
            path.display(),
            stats.trailing_bytes
        ));
    }
    Pcm {
        rate: gsm::SAMPLE_RATE,
        channels: 1,
        samples,
        codec: "GSM",
        warnings,
    }
}

/// Channel `idx` of interleaved PCM.
pub fn channel(p: &Pcm, idx: usize) -> Vec<i16> {
    let n = usize::from(p.channels.max(1));
    p.samples.iter().skip(idx).step_by(n).copied().collect()
}

/// `x` at `from` Hz converted to `to` Hz, same duration, delay compensated
/// (8 ↔ 16 kHz; other rates are an error naming `path`).
pub fn resample(x: Vec<i16>, from: u32, to: u32, path: &Path) -> Result<Vec<i16>, FolderError> {
    if from == to {
        return Ok(x);
    }
    let mut r = Resampler::new(from, to).map_err(|e| fmt_err(path, e.to_string()))?;
    let want = (x.len() as u64 * u64::from(to) / u64::from(from.max(1))) as usize;
    let delay = r.delay();
    let mut out = Vec::with_capacity(want + delay + 64);
    r.process(&x, &mut out);
    // Flush the filter: enough input silence to produce `delay` more outputs.
    let extra_in = (delay as u64 * u64::from(from) / u64::from(to.max(1))) as usize + 2;
    r.process_silence(extra_in, &mut out);
    let mut out: Vec<i16> = out.into_iter().skip(delay).collect();
    out.resize(want, 0);
    Ok(out)
}
