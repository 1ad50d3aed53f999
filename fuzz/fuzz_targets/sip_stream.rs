//! Fuzz `SipStreamFramer`: the first bytes choose chunk sizes (0 = a gap),
//! the rest is the stream. Drains after every push; memory must stay bounded.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pbx_core::sip::message::parse_message;
use pbx_core::sip::stream::{SipStreamFramer, MAX_BUFFER};

fuzz_target!(|data: &[u8]| {
    let (sizes, stream) = data.split_at(data.len().min(8));
    let mut f = SipStreamFramer::new();
    let mut pos = 0;
    let mut i = 0;
    while pos < stream.len() {
        let size = sizes.get(i % sizes.len().max(1)).copied().unwrap_or(64);
        i += 1;
        if size == 0 {
            f.gap();
        }
        let end = (pos + usize::from(size).max(1) * 4).min(stream.len());
        f.push(&stream[pos..end]);
        pos = end;
        while let Some(r) = f.next_message() {
            if let Ok(m) = r {
                let _ = parse_message(&m);
            }
        }
        assert!(f.buffered() <= MAX_BUFFER);
    }
});
