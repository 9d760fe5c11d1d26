//! The directory protocol's JSON (`dialtone_proto::directory`): the HTTP request bodies the
//! directory deserializes, the session frames each side reads, and the device lists in them.
//! Never a panic; a value that parses serializes to JSON that parses back to the same value.
#![no_main]

use dialtone_proto::{
    devices::DeviceList,
    directory::{
        ChallengeRequest, ClientFrame, LinkOfferRequest, PublicRecord, RegisterConfirm,
        RegisterStart, ServerFrame,
    },
};
use libfuzzer_sys::fuzz_target;
use serde::{Serialize, de::DeserializeOwned};

/// Parses `text` as a `T`; if it is one, checks the round trip through its JSON.
fn check<T: Serialize + DeserializeOwned>(text: &str) {
    let Ok(v) = serde_json::from_str::<T>(text) else {
        return;
    };
    let json = serde_json::to_string(&v).expect("a parsed value serializes");
    let back: T = serde_json::from_str(&json).expect("its JSON parses back");
    assert_eq!(serde_json::to_string(&back).unwrap(), json);
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // POST bodies (`http.rs`).
    check::<RegisterStart>(text);
    check::<RegisterConfirm>(text);
    check::<ChallengeRequest>(text);
    check::<LinkOfferRequest>(text);
    // The session: what the directory reads, what the agent reads.
    check::<ClientFrame>(text);
    check::<ServerFrame>(text);
    // Lookup answers and device lists, which agents read.
    check::<PublicRecord>(text);
    check::<DeviceList>(text);
});
