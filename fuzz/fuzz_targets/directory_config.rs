//! The directory's configuration file (`crates/dialtone-directory/src/config.rs`, compiled
//! here on its own): TOML from an operator. Never a panic; a configuration that is accepted
//! satisfies the checks `from_toml` promises.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code, unexpected_cfgs)]
#[path = "../../crates/dialtone-directory/src/config.rs"]
mod config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = config::Config::from_toml(text) {
        assert!(!c.session.heartbeat.is_zero());
        assert!(c.session.heartbeat < c.session.timeout);
        let _ = format!("{c:?}");
    }
});
