//! Arbitrary bytes as the start of a WAV file: the header parser and the
//! crash-repair routine must never panic, never read or write out of bounds,
//! and repair must leave a header the parser accepts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pbx_core::audio::wav::{parse_wav_header, repair_wav};
use std::io::Cursor;

fuzz_target!(|data: &[u8]| {
    let parsed = parse_wav_header(data);
    if let Ok(info) = &parsed {
        let _ = info.audio_len(data.len() as u64);
        let _ = info.is_pcm();
    }
    let mut file = Cursor::new(data.to_vec());
    let len = data.len() as u64;
    if let Ok(audio) = repair_wav(&mut file, len) {
        let repaired = file.into_inner();
        assert_eq!(
            repaired.len(),
            data.len(),
            "repair must not change the length"
        );
        let info = parse_wav_header(&repaired).expect("repaired header parses");
        assert_eq!(info.data_len, audio);
        assert!(info.data_offset + audio <= len);
    }
});
