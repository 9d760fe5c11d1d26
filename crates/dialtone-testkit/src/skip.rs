//! Tests that cannot run here (no root, no `ip netns`, no Prosody user) report as **skipped**,
//! never as passed.
//!
//! The test harness has no "skipped" outcome for a test that ran, and nextest captures each
//! test's output, so a skip cannot be told from a pass by reading it. Instead a skipping test
//! calls [`skip`], which appends one line to the file named by `DIALTONE_SKIP_LOG` (set by
//! `scripts/test.sh`); the script moves every test named there from "passed" to "skipped" in
//! its summary line. Each line is `<test binary> <test name>\t<why>`, written with one
//! `write` on a file opened for appending, so tests running in parallel do not interleave.
//!
//! `DIALTONE_FORCE_SKIP=1` makes every test that can skip do so, as if it could not run here
//! (to check the counting where the tests could run).

use std::io::Write;

/// The environment variable naming the file skipped tests are recorded in.
pub const SKIP_LOG_ENV: &str = "DIALTONE_SKIP_LOG";

/// The environment variable that forces every test that can skip to skip.
pub const FORCE_SKIP_ENV: &str = "DIALTONE_FORCE_SKIP";

/// Records that the calling test is skipped because of `why`: prints `SKIPPED <test>: <why>`
/// on stderr and appends the test to `$DIALTONE_SKIP_LOG` if that is set. The caller must
/// return at once, asserting nothing.
///
/// The recorded name is the harness's (the test thread's name, e.g. `netns_same_lan`), with
/// the test binary's, so that it is unique; `test` is only shown.
pub fn skip(test: &str, why: &str) {
    eprintln!("SKIPPED {test}: {why}");
    let Some(path) = std::env::var_os(SKIP_LOG_ENV).filter(|p| !p.is_empty()) else {
        return;
    };
    let exe = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    // Cargo names test executables `<name>-<hash>`: the hash changes with every build.
    let binary = exe.rsplit_once('-').map_or(exe.as_str(), |(name, _)| name);
    let thread = std::thread::current();
    let name = thread.name().unwrap_or(test);
    let line = format!("{binary} {name}\t{}\n", why.replace(['\n', '\t'], " "));
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    // A skip that cannot be recorded would count as a pass: fail instead.
    if let Err(e) = written {
        panic!(
            "cannot record the skip of {test} in {}: {e}",
            std::path::Path::new(&path).display()
        );
    }
}

/// Skips the calling test if it cannot run here (`why` is the reason, from the test's own
/// check) or if `DIALTONE_FORCE_SKIP` is set. Returns `true` if the test must return at once.
pub fn skip_if(test: &str, why: Option<String>) -> bool {
    let why = forced().or(why);
    match why {
        None => false,
        Some(why) => {
            skip(test, &why);
            true
        }
    }
}

/// The forced reason, if `DIALTONE_FORCE_SKIP` is set to anything but empty or `0`.
fn forced() -> Option<String> {
    std::env::var(FORCE_SKIP_ENV)
        .ok()
        .filter(|v| !v.is_empty() && v != "0")
        .map(|_| format!("forced by {FORCE_SKIP_ENV}"))
}
