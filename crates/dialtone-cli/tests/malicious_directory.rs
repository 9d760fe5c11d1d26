//! Malicious-directory tests: the real `dialtone` agents against
//! `dialtone-directory-malicious`, the directory with a lying view (crate
//! `dialtone-directory-malicious`, `publish = false`). Each lie must end in a clear,
//! user-visible warning and no message delivered to a key that is not the recipient's.
//!
//! Build the binaries first: `cargo build --workspace --bins` (`scripts/test.sh` does).

use std::time::Duration;

use dialtone_testkit::{Directory, Person, Watch, wait_until};
use serde_json::{Value, json};

const ALICE: &str = "alice@example.com";
const BOB: &str = "bob@example.com";
const CAROL: &str = "carol@example.com";

fn is_message(e: &Value) -> bool {
    e["event"] == "message"
}

fn transparency(w: &mut Watch, kind: &str, within: Duration) -> Value {
    w.expect(&format!("a {kind} transparency warning"), within, |e| {
        e["event"] == "transparency" && e["kind"] == kind
    })
}

/// The epoch of the checkpoint an agent holds (`kt.json` in its home).
/// Makes alice and bob contacts and has bob's first message reach alice; returns alice's
/// watch.
fn befriend_and_talk(alice: &Person, bob: &Person) -> Watch {
    alice.befriend(bob);
    let mut wa = alice.watch();
    bob.run(&["send", ALICE, "before"]).ok();
    wa.expect("the first message", Duration::from_secs(5), |e| {
        e["body"] == "before"
    });
    wa
}

fn held_epoch(p: &Person) -> Option<u64> {
    let text = std::fs::read_to_string(p.home.join("kt.json")).ok()?;
    serde_json::from_str::<Value>(&text).ok()?["checkpoint"]["epoch"].as_u64()
}

/// The directory hands out a forged key for bob: the lookup proof fails, alice's agent refuses
/// to send and warns; bob receives nothing.
#[test]
fn forged_key_is_refused() {
    let dir = Directory::start_lying("honest");
    let alice = Person::online(&dir, ALICE);
    let bob = Person::online(&dir, BOB);
    alice.befriend(&bob);
    let mut wa = alice.watch();
    let mut wb = bob.watch();
    dir.set_lie(json!({"mode": "forged-key", "target": BOB}));

    let r = alice.run(&["send", BOB, "for bob only"]);
    r.fails_with(18, "WARNING");
    assert!(r.stderr.contains("proof does not verify"), "{}", r.stderr);
    let w = transparency(&mut wa, "bad-proof", Duration::from_secs(10));
    assert!(w["message"].as_str().unwrap().starts_with("WARNING"));
    wb.expect_none("message to bob", Duration::from_secs(1), is_message);

    // The directory now claims the forged key in bob's contact entry too (any refresh):
    // still refused, and nothing reaches anyone.
    alice.run(&["send", BOB, "again"]).fails_with(18, "WARNING");
    wb.expect_none("message to bob", Duration::from_secs(1), is_message);
}

/// The directory rolls alice back to an older epoch: her agent refuses the checkpoint, keeps
/// the one it held, and warns.
#[test]
fn rollback_is_refused() {
    let dir = Directory::start_lying("honest");
    let alice = Person::registered(&dir, ALICE);
    alice.up_with(&["--kt-monitor-interval", "1"]);
    let bob = Person::online(&dir, BOB);
    alice.befriend(&bob);
    let bob_watch = bob.watch();
    alice.run(&["send", BOB, "before"]).ok();
    drop(bob_watch);
    let before = held_epoch(&alice).expect("alice holds a checkpoint");
    // A new epoch, which alice's monitor picks up.
    let _carol = Person::registered(&dir, CAROL);
    wait_until(
        Duration::from_secs(15),
        "alice to see carol's epoch",
        || held_epoch(&alice).is_some_and(|e| e > before),
    );
    let held = held_epoch(&alice).unwrap();
    let mut wa = alice.watch();
    dir.set_lie(json!({"mode": "rollback"}));
    let w = transparency(&mut wa, "rollback", Duration::from_secs(15));
    assert!(w["message"].as_str().unwrap().contains("rolled"), "{w}");
    assert!(
        held_epoch(&alice).unwrap() >= held,
        "the older checkpoint must not replace the one held"
    );
}

/// The directory shows alice a second log (where carol has a forged key) and bob the real
/// one. When alice and bob connect they swap checkpoints: bob sees the split, refuses the
/// connection and warns; alice's message is refused, not delivered.
#[test]
fn split_view_is_detected_when_peers_connect() {
    let dir = Directory::start_lying(&format!("split-view:{ALICE}:{CAROL}"));
    let alice = Person::online(&dir, ALICE);
    let bob = Person::online(&dir, BOB);
    let _carol = Person::registered(&dir, CAROL);
    alice.befriend(&bob);
    let mut wb = bob.watch();
    let r = alice.run(&["send", BOB, "hello bob"]);
    r.fails_with(18, "WARNING");
    let w = transparency(&mut wb, "split-view", Duration::from_secs(10));
    assert!(w["message"].as_str().unwrap().contains("split view"), "{w}");
    wb.expect_none("message to bob", Duration::from_secs(1), is_message);
    // Bob's messages to alice are refused the same way.
    bob.run(&["send", ALICE, "hello alice"])
        .fails_with(18, "WARNING");
}

/// The directory binds a new key to alice without any verification and tells no one. Alice's
/// agent, watching her own key history, raises the alarm; bob is warned of the key change and
/// his message is refused, never sent to the new key.
#[test]
fn key_replaced_without_verification_is_flagged() {
    let dir = Directory::start_lying("honest");
    let alice = Person::registered(&dir, ALICE);
    alice.up_with(&["--kt-monitor-interval", "1"]);
    let bob = Person::online(&dir, BOB);
    let mut wa = befriend_and_talk(&alice, &bob);
    let mut wb = bob.watch();
    dir.set_lie(json!({"mode": "replace-key", "target": ALICE}));
    let w = transparency(&mut wa, "own-key-replaced", Duration::from_secs(15));
    assert!(w["message"].as_str().unwrap().contains("not yours"), "{w}");
    // Any presence change carries the new key to bob: he is warned…
    alice.run(&["status", "set", "away"]).ok();
    let w = wb.expect(
        "bob warned of the key change",
        Duration::from_secs(10),
        |e| e["event"] == "key_changed" && e["identifier"] == ALICE,
    );
    // Alice had no registration lock: the warning says anyone who re-verified could do this.
    assert_eq!(w["reset"], "no-lock", "{w}");
    // …and nothing is sent to the key alice does not hold.
    bob.run(&["send", ALICE, "after"]).fails_with(16, "WARNING");
    wa.expect_none(
        "message after the replacement",
        Duration::from_secs(1),
        |e| e["body"] == "after",
    );
}

/// Alice has a registration lock; the directory binds a new key to her anyway, without the
/// PIN. Bob, whose agent proved alice's locked key before, is told the lock was bypassed.
#[test]
fn key_replaced_despite_the_registration_lock_is_flagged_as_bypassed() {
    let dir = Directory::start_lying("honest");
    let alice = Person::new(ALICE);
    alice
        .run(&["register", ALICE, "--directory", &dir.url])
        .ok();
    alice
        .run_env(
            &["verify", &dir.code_for(ALICE)],
            &[("DIALTONE_PIN", "2468")],
        )
        .ok();
    alice.up();
    let bob = Person::online(&dir, BOB);
    let mut wa = befriend_and_talk(&alice, &bob);
    let mut wb = bob.watch();
    dir.set_lie(json!({"mode": "replace-key", "target": ALICE}));
    alice.run(&["status", "set", "away"]).ok();
    let w = wb.expect(
        "bob warned of the key change",
        Duration::from_secs(10),
        |e| e["event"] == "key_changed" && e["identifier"] == ALICE,
    );
    assert_eq!(w["reset"], "locked", "{w}");
    let t = transparency(&mut wb, "lock-bypassed", Duration::from_secs(20));
    assert!(
        t["message"]
            .as_str()
            .unwrap()
            .contains("without the lock's PIN"),
        "{t}"
    );
    bob.run(&["send", ALICE, "after"]).fails_with(16, "WARNING");
    wa.expect_none(
        "message after the replacement",
        Duration::from_secs(1),
        |e| e["body"] == "after",
    );
}
