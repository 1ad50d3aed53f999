//! Bytes → `CaptureReader` over a cursor, read to the end. The reader must never
//! panic, must terminate, and must keep reporting the same error once it failed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pbx_core::capture::{CaptureReader, MAX_PACKET_LEN};
use std::io::Cursor;

fuzz_target!(|data: &[u8]| {
    let Ok(mut reader) = CaptureReader::new(Cursor::new(data)) else {
        return;
    };
    let mut frames = 0usize;
    loop {
        match reader.next_frame() {
            Ok(Some(frame)) => {
                assert!(frame.data.len() <= MAX_PACKET_LEN);
                frames += 1;
                // Each frame consumes at least one byte of input.
                assert!(frames <= data.len());
            }
            Ok(None) => break,
            Err(first) => {
                let again = reader.next_frame().err().map(|e| e.to_string());
                assert_eq!(again, Some(first.to_string()));
                break;
            }
        }
        assert!(reader.offset() <= data.len() as u64);
    }
});
