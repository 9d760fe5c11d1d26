//! Peer frames (`dialtone_proto::wire`): what a device reads from a stream, after the 4-byte
//! length prefix. Decoding never panics, and a frame that decodes re-encodes to bytes that
//! decode to the same frame, with a length prefix that says their length.
#![no_main]

use dialtone_proto::wire::{Frame, MAX_FRAME_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(prefix) = data.first_chunk::<4>()
        && let Ok(len) = Frame::decode_len(*prefix)
    {
        assert!(len <= MAX_FRAME_LEN);
    }
    let Ok(frame) = Frame::decode_body(data) else {
        return;
    };
    let encoded = frame.encode();
    let len = Frame::decode_len(encoded[..4].try_into().unwrap()).unwrap();
    assert_eq!(len, encoded.len() - 4);
    assert_eq!(Frame::decode_body(&encoded[4..]).as_ref(), Ok(&frame));
});
