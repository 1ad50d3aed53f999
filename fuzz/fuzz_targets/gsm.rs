//! Arbitrary bytes as raw GSM 06.10 frames and as WAV49 blocks: decoding must
//! never panic, give 160 samples per whole frame (320 per block) with the
//! 13-bit output's low three bits clear, account for every byte, and decode
//! frame by frame exactly as the whole-buffer functions do.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pbx_core::audio::gsm::{
    decode_gsm_with_stats, decode_wav49_with_stats, GsmDecoder, GsmError, FRAME_BYTES,
    FRAME_SAMPLES, WAV49_BLOCK_BYTES, WAV49_BLOCK_SAMPLES,
};

fuzz_target!(|data: &[u8]| {
    match decode_gsm_with_stats(data) {
        Ok((pcm, st)) => {
            assert_eq!(st.frames, data.len() / FRAME_BYTES);
            assert_eq!(st.trailing_bytes, data.len() % FRAME_BYTES);
            assert_eq!(pcm.len(), st.frames * FRAME_SAMPLES);
            assert!(st.bad_frames * 2 <= st.frames);
            assert!(pcm.iter().all(|s| s & 7 == 0));
            let mut dec = GsmDecoder::new();
            let mut out = [0i16; FRAME_SAMPLES];
            for (f, want) in data
                .chunks_exact(FRAME_BYTES)
                .zip(pcm.chunks_exact(FRAME_SAMPLES))
            {
                let f: &[u8; FRAME_BYTES] = f.try_into().unwrap();
                match dec.decode_frame(f, &mut out) {
                    Ok(()) => assert_eq!(f[0] >> 4, 0xD),
                    Err(e) => {
                        assert_eq!(e, GsmError::BadMagic(f[0]));
                        assert!(out.iter().all(|&s| s == 0));
                    }
                }
                assert_eq!(&out[..], want);
            }
            assert_eq!(dec.bad_frames(), st.bad_frames as u64);
        }
        Err(GsmError::TooShort { have, .. }) => assert!(have < FRAME_BYTES),
        Err(GsmError::NotGsm { bad, frames }) => {
            assert_eq!(frames, data.len() / FRAME_BYTES);
            assert!(bad * 2 > frames);
        }
        Err(e) => panic!("unexpected error {e}"),
    }

    match decode_wav49_with_stats(data) {
        Ok((pcm, st)) => {
            let blocks = data.len() / WAV49_BLOCK_BYTES;
            assert_eq!(st.frames, blocks * 2);
            assert_eq!(st.trailing_bytes, data.len() % WAV49_BLOCK_BYTES);
            assert_eq!(pcm.len(), blocks * WAV49_BLOCK_SAMPLES);
            assert!(pcm.iter().all(|s| s & 7 == 0));
            let mut dec = GsmDecoder::new();
            let mut out = [0i16; WAV49_BLOCK_SAMPLES];
            for (b, want) in data
                .chunks_exact(WAV49_BLOCK_BYTES)
                .zip(pcm.chunks_exact(WAV49_BLOCK_SAMPLES))
            {
                dec.decode_wav49_block(b.try_into().unwrap(), &mut out);
                assert_eq!(&out[..], want);
            }
        }
        Err(GsmError::TooShort { have, .. }) => assert!(have < WAV49_BLOCK_BYTES),
        Err(e) => panic!("unexpected error {e}"),
    }
});
