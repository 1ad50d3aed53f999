//! Arbitrary bytes as a PBX recording file (WAV, .sln/.raw, .sln16, raw GSM,
//! WAV49, raw G.711 .ulaw/.alaw, raw G.722): decoding must never panic and give consistent PCM, and splitting
//! it into channels and resampling to 8/16 kHz (as a conversion does) must
//! hold the duration.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pbx_edge::folder::{channel, decode_audio, resample, FolderSettings, RawStereo};
use std::path::Path;

const NAMES: [&str; 12] = [
    "a.wav", "a-in.WAV", "a.sln", "a.sln16", "a.raw", "a.gsm", "a.wav49", "a.wav16", "a.sln48",
    "a-r.ulaw", "a.al", "a-t.g722",
];

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, bytes)) = data.split_first() else {
        return;
    };
    let settings = FolderSettings {
        raw_stereo: match ctl >> 6 {
            0 => RawStereo::Auto,
            1 => RawStereo::Stereo,
            _ => RawStereo::Mono,
        },
        ..FolderSettings::default()
    };
    let path = Path::new(NAMES[usize::from(ctl & 0x3f) % NAMES.len()]);
    let Ok(pcm) = decode_audio(path, bytes, &settings) else {
        return;
    };
    assert!(pcm.channels == 1 || pcm.channels == 2, "{}", pcm.channels);
    if pcm.codec == "GSM" {
        // 320 samples per 65-byte WAV49 block at most (160 per 33-byte frame).
        assert_eq!(pcm.channels, 1);
        assert_eq!(pcm.rate, 8000);
        assert!(pcm.samples.len() * 65 <= bytes.len() * 320);
    } else if pcm.codec == "PCMU" || pcm.codec == "PCMA" {
        // One sample a byte, 8 kHz mono.
        assert_eq!(
            (pcm.samples.len(), pcm.rate, pcm.channels),
            (bytes.len(), 8000, 1)
        );
    } else if pcm.codec == "G722" {
        // Two samples a byte, 16 kHz mono.
        assert_eq!(
            (pcm.samples.len(), pcm.rate, pcm.channels),
            (bytes.len() * 2, 16000, 1)
        );
    } else {
        assert!(pcm.samples.len() * 2 <= bytes.len());
    }
    let frames = pcm.samples.len().div_ceil(usize::from(pcm.channels));
    for c in 0..usize::from(pcm.channels) {
        let x = channel(&pcm, c);
        assert!(x.len() <= frames);
        for to in [8000, 16000] {
            if let Ok(y) = resample(x.clone(), pcm.rate, to, path) {
                let want = x.len() as u64 * u64::from(to) / u64::from(pcm.rate.max(1));
                assert_eq!(y.len() as u64, want);
            }
        }
    }
});
