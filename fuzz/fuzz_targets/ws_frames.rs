//! The directory's WebSocket framing (`crates/dialtone-directory/src/ws/frame.rs`, compiled
//! here on its own): bytes from a client, in pieces of any size. Never a panic; the messages
//! (and the error that ends the connection) do not depend on how the bytes were cut; what is
//! held stays bounded by one frame plus one read.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../crates/dialtone-directory/src/ws/frame.rs"]
mod frame;

use frame::{Decoder, Incoming, MAX_HEADER_LEN, WsError};

/// A small limit, so that the fuzzer reaches it.
const MAX_LEN: usize = 1000;

/// The messages `data` makes when read `step` bytes at a time, and the close code that ended
/// it, if any.
fn read(data: &[u8], step: usize) -> (Vec<Incoming>, Option<u16>) {
    let mut dec = Decoder::new(&[], MAX_LEN);
    let mut got = Vec::new();
    for chunk in data.chunks(step) {
        dec.push(chunk);
        loop {
            match dec.next_message() {
                Ok(Some(m)) => got.push(m),
                Ok(None) => break,
                Err(WsError::Protocol(code, _)) => return (got, Some(code)),
                Err(WsError::Io(e)) => panic!("the decoder does no IO: {e}"),
            }
        }
        // Unparsed input is less than a whole frame; a fragmented message at most MAX_LEN.
        assert!(dec.held() < MAX_HEADER_LEN + MAX_LEN + step + MAX_LEN);
    }
    (got, None)
}

fuzz_target!(|input: &[u8]| {
    let Some((&step, data)) = input.split_first() else {
        return;
    };
    let whole = read(data, data.len().max(1));
    let pieces = read(data, usize::from(step % 16) + 1);
    assert_eq!(whole, pieces);
});
