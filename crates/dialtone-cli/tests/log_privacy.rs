//! What the logs must never hold, at the most talkative level: a real directory and two real
//! agents, every process with `DIALTONE_LOG=debug` (so every crate's debug lines, iroh's and
//! hyper's included), go through registration, verification, a registration lock, contacts,
//! a status message and messages both ways. Then no log line — the directory's, either
//! agent's `agent.log`, or any command's standard error — holds:
//!
//! - a message's text (README: "No log line contains message text"),
//! - a verification code or a registration-lock PIN (secrets a log reader could use),
//! - a status message (text a person wrote for their contacts only);
//!
//! and the directory's log names no identifier (DESIGN.md: the directory learns as little as
//! possible; who registers, who asks whom and who is online is exactly that). An agent's log
//! is its owner's, on the owner's machine: it may name its own account and its contacts.
//!
//! Build the binaries first: `cargo build --bins` (`scripts/test.sh` does).

use std::path::Path;

use dialtone_testkit::{Directory, Person, Run};

const ALICE: &str = "alice@example.com";
const BOB: &str = "+14155550100";
const DEBUG: [(&str, &str); 1] = [("DIALTONE_LOG", "debug")];

/// Text nobody would write by chance, so a hit can only be a leak.
const TO_BOB: &str = "zebra quartz lullaby 7301";
const TO_ALICE: &str = "marmalade vortex 9922";
const STATUS: &str = "gone fishing at the xylophone lake";
const PIN: &str = "583014";

/// Whether `secret` occurs in `log` as a whole token (not inside a longer run of letters
/// and digits, where a six-digit code could appear by chance, e.g. inside a timestamp).
fn contains_token(log: &str, secret: &str) -> bool {
    log.match_indices(secret).any(|(i, _)| {
        let before = log[..i].chars().next_back();
        let after = log[i + secret.len()..].chars().next();
        !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric)
    })
}

/// Runs `dialtone ARGS` for `p` at debug level; keeps its standard error for the check.
fn run(p: &Person, args: &[&str], stderrs: &mut Vec<String>) -> Run {
    let r = p.run_env(args, &DEBUG);
    r.ok();
    stderrs.push(r.stderr.clone());
    r
}

fn register(p: &Person, dir: &Directory, stderrs: &mut Vec<String>) -> String {
    run(
        p,
        &["register", &p.identifier, "--directory", &dir.url],
        stderrs,
    );
    let code = dir.code_for(&p.identifier);
    run(p, &["verify", &code], stderrs);
    code
}

fn up(p: &Person, stderrs: &mut Vec<String>) {
    run(p, &dialtone_testkit::UP_ARGS, stderrs);
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn debug_logs_hold_no_message_text_codes_pins_or_status() {
    let tmp = tempfile::tempdir().unwrap();
    // DIALTONE_TEST_LOGS=DIR keeps the logs (the agents' as the testkit keeps them).
    let kept = std::env::var_os("DIALTONE_TEST_LOGS").map(std::path::PathBuf::from);
    if let Some(d) = &kept {
        std::fs::create_dir_all(d).unwrap();
    }
    let dir_log = kept
        .as_deref()
        .unwrap_or_else(|| tmp.path())
        .join("directory.log");
    let _ = std::fs::remove_file(&dir_log);
    let dir = Directory::start_logging(&dir_log, "debug");
    let mut stderrs = Vec::new();

    let alice = Person::new(ALICE);
    let bob = Person::new(BOB);
    let codes = [
        register(&alice, &dir, &mut stderrs),
        register(&bob, &dir, &mut stderrs),
    ];
    up(&alice, &mut stderrs);
    up(&bob, &mut stderrs);
    let r = alice.run_env(&["lock", "set"], &[DEBUG[0], ("DIALTONE_PIN", PIN)]);
    r.ok();
    stderrs.push(r.stderr);

    alice.befriend(&bob);
    run(
        &bob,
        &["status", "set", "away", "--message", STATUS],
        &mut stderrs,
    );
    let mut bob_watch = bob.watch();
    run(&alice, &["send", BOB, TO_BOB], &mut stderrs);
    bob_watch.expect("the message", std::time::Duration::from_secs(10), |e| {
        e["body"] == TO_BOB
    });
    // A message is delivered only to a device with a front end open.
    let _alice_watch = alice.watch();
    run(&bob, &["send", ALICE, TO_ALICE], &mut stderrs);
    let seen = run(&alice, &["contacts", "list", "--json"], &mut stderrs);
    assert!(seen.stdout.contains(STATUS), "bob's status reached alice");
    alice.down();
    bob.down();

    let mut logs = vec![
        ("directory.log".to_owned(), read(&dir_log)),
        (
            format!("{ALICE} agent.log"),
            read(&alice.home.join("agent.log")),
        ),
        (
            format!("{BOB} agent.log"),
            read(&bob.home.join("agent.log")),
        ),
    ];
    logs.extend(
        stderrs
            .into_iter()
            .enumerate()
            .map(|(i, s)| (format!("command {i} stderr"), s)),
    );
    // The test is worth something only if debug logging was on.
    for (name, log) in &logs[..3] {
        assert!(log.contains("DEBUG"), "{name} has no debug line:\n{log}");
    }

    let mut secrets: Vec<(&str, &str)> = vec![
        ("message text", TO_BOB),
        ("message text", TO_ALICE),
        ("a registration-lock PIN", PIN),
        ("a status message", STATUS),
    ];
    secrets.extend(codes.iter().map(|c| ("a verification code", c.as_str())));
    // Every word of the texts, too: a log that splits or quotes them still leaks.
    let words: Vec<&str> = [TO_BOB, TO_ALICE, STATUS]
        .iter()
        .flat_map(|t| t.split(' ').filter(|w| w.len() > 4))
        .collect();
    secrets.extend(words.iter().map(|w| ("a word of a text", *w)));
    let mut leaks = Vec::new();
    for (name, log) in &logs {
        for line in log.lines() {
            for (what, secret) in &secrets {
                if contains_token(line, secret) {
                    leaks.push(format!("{name}: {what}: {line}"));
                }
            }
        }
    }
    let directory = &logs[0].1;
    for id in [ALICE, BOB, "4155550100"] {
        for line in directory.lines().filter(|l| l.contains(id)) {
            leaks.push(format!("directory.log: an identifier: {line}"));
        }
    }
    assert!(
        leaks.is_empty(),
        "{} leaks:\n{}",
        leaks.len(),
        leaks.join("\n")
    );
}

#[test]
fn whole_token_match() {
    assert!(contains_token("code=123456 sent", "123456"));
    assert!(contains_token("123456", "123456"));
    assert!(!contains_token("ts=17331234567", "123456"));
    assert!(!contains_token("abc123456", "123456"));
}
