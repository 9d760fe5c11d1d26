//! A local API request line (`crates/dialtone-agent/src/api/request.rs`, compiled here on
//! its own): the JSON-RPC envelope, then every typed parameter a method reads. Never a panic;
//! a line is "not JSON" exactly when it is not JSON; identifiers come out normalized.
#![no_main]

use dialtone_proto::{
    DeviceCertificate, Identifier, devices::DeviceList, directory::PresenceState,
};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

#[allow(dead_code)]
#[path = "../../crates/dialtone-agent/src/api/request.rs"]
mod request;

use request::{Line, param};

fuzz_target!(|data: &[u8]| {
    let req = match request::parse_line(data) {
        Line::Request(r) => r,
        Line::NotJson(_) => {
            assert!(serde_json::from_slice::<Value>(data.trim_ascii()).is_err());
            return;
        }
        Line::Blank | Line::NotRequest(_) => return,
    };
    let _ = (req.method(), req.wants_answer());
    let p = &req.params;
    for name in ["identifier", "to"] {
        if let Ok(id) = request::identifier_param(p, name) {
            assert_eq!(Identifier::parse(id.as_str()), Ok(id));
        }
    }
    let _ = param::<PresenceState>(p, "state");
    let _ = param::<Option<String>>(p, "message");
    let _ = param::<String>(p, "body");
    let _ = param::<Option<bool>>(p, "confirm");
    let _ = param::<Option<u64>>(p, "timeout_secs");
    let _ = param::<Option<String>>(p, "pin");
    let _ = param::<DeviceList>(p, "list");
    let _ = param::<Option<Vec<DeviceCertificate>>>(p, "certs");
    let _ = param::<DeviceCertificate>(p, "cert");
});
