//! The comparison suite and the load generator in smoke mode (tiny counts, debug binaries),
//! so neither can rot: `bench/suite.py --smoke` runs Dialtone's benchmark, Prosody and
//! Kamailio with their real clients (slixmpp, sipp), the load generator and an idle agent, and
//! fails if any figure is missing.
//!
//! Needs root (Prosody runs as its own user) and what `scripts/setup.sh` installs; build the
//! binaries first (`cargo build --bins`, as `scripts/test.sh` does). Without root it is
//! counted as skipped (`dialtone_testkit::skip`).

use std::{path::PathBuf, process::Command};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Why the suite cannot run on this machine, if it cannot.
fn cannot_run() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (Prosody runs as the prosody user)".into());
    }
    let prosody_user = Command::new("id")
        .args(["-u", "prosody"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !prosody_user {
        return Some("there is no prosody user (scripts/setup.sh installs Prosody)".into());
    }
    None
}

#[test]
fn comparison_suite_smoke() {
    if dialtone_testkit::skip_if("comparison_suite_smoke", cannot_run()) {
        return;
    }
    let root = root();
    let bins = dialtone_testkit::bin("dialtone-loadgen")
        .parent()
        .expect("bin dir")
        .to_path_buf();
    let out = tempfile::tempdir().unwrap();
    let python = root.join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup.sh",
        python.display()
    );
    let status = Command::new(python)
        .arg(root.join("bench/suite.py"))
        .arg("--smoke")
        .arg("--bins")
        .arg(&bins)
        .arg("--out")
        .arg(out.path())
        .env("QUIET_WAIT", "0")
        .status()
        .expect("run bench/suite.py");
    assert!(status.success(), "the smoke suite failed: {status}");
    let results: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("results.json")).expect("results.json"),
    )
    .expect("results.json is JSON");
    let table = results["table"].as_array().expect("table");
    assert!(table.len() >= 10, "{table:?}");
    for row in table {
        // Idle figures can be 0 in a two-second window; everything must be there.
        assert!(
            row["dialtone"].as_f64().is_some_and(|v| v >= 0.0),
            "no Dialtone figure: {row}"
        );
    }
    assert!(
        table[0]["dialtone"].as_f64().unwrap() > 0.0,
        "{:?}",
        table[0]
    );
    let anchors = table
        .iter()
        .filter(|r| r["anchor"].as_f64().is_some_and(|v| v > 0.0))
        .count();
    assert!(anchors >= 8, "anchor figures missing: {table:?}");
    let ladder = results["ladder"].as_array().expect("ladder");
    assert_eq!(ladder[0]["sessions_held"], 300, "{ladder:?}");
    assert!(ladder[0]["fanout_latency_us"]["n"].as_u64().unwrap() > 0);
}
