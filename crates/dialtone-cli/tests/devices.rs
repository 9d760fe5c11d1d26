//! Devices and the registration lock, end to end: real directory, real agents, the real CLI.
//!
//! - A second device is linked with the code the first one shows (over a direct connection
//!   between the two), both are on the device list the log proves, a contact's message reaches
//!   both, and a revoked device is told so, loses its session and gets nothing more.
//! - A wrong code links nothing, and leaves the code usable.
//! - With a registration lock, re-verifying the identifier alone cannot bind another key; the
//!   PIN can, and the contacts are told how the key changed.

use std::{
    io::{BufRead, BufReader, Read},
    process::Child,
    sync::mpsc,
    time::{Duration, Instant},
};

use dialtone_testkit::{Directory, Person, Run, decode_terminal_qr, wait_until};
use serde_json::Value;

const ALICE: &str = "alice@example.com";
const BOB: &str = "bob@example.com";

/// Runs `device link` on `p` (the device with the identity key) and returns the code it
/// shows, the running command and everything it printed up to "Waiting" (the QR code too).
// The child is handed to the caller, which waits for it (`finish`) or kills it.
#[allow(clippy::zombie_processes)]
fn show_code(p: &Person) -> (String, Child, String) {
    let mut child = p.spawn(&["device", "link", "--timeout", "90"]);
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    let mut code = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = rx.recv_timeout(left) else {
            let _ = child.kill();
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            panic!("no code shown; stdout {seen:#?}, stderr {err}");
        };
        if code.is_none() {
            code = line
                .split_whitespace()
                .find(|w| w.len() == 19 && w.matches('-').count() == 3)
                .map(str::to_owned);
        }
        let waiting = line.contains("Waiting for the new device");
        seen.push(line);
        if waiting {
            let code = code.expect("a code before the waiting line");
            return (code, child, seen.join("\n"));
        }
    }
}

/// Waits for a command started with [`Person::spawn`] and returns its exit code and stderr.
fn finish(mut child: Child, timeout: Duration) -> (i32, String) {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            return (status.code().unwrap_or(-1), err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the command did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `dialtone device link CODE --directory URL --name NAME` on the new device.
fn join(new: &Person, code: &str, dir: &Directory, name: &str) -> Run {
    new.run(&[
        "device",
        "link",
        code,
        "--directory",
        &dir.url,
        "--name",
        name,
        "--bind",
        "127.0.0.1:0",
    ])
}

/// Links a new device named "laptop" to `existing`'s account with the code it shows.
fn link_laptop(existing: &Person, dir: &Directory) -> Person {
    let laptop = Person::empty(&existing.identifier);
    let (code, shower, _) = show_code(existing);
    join(&laptop, &code, dir, "laptop").ok();
    let (status, err) = finish(shower, Duration::from_secs(60));
    assert_eq!(status, 0, "device link on the first device failed: {err}");
    laptop
}

fn devices_of(p: &Person, who: &str) -> u64 {
    p.contacts()
        .iter()
        .find(|c| c["identifier"] == who)
        .and_then(|c| c["devices"].as_u64())
        .unwrap_or(0)
}

fn listed(p: &Person) -> Vec<String> {
    let v = p.run(&["device", "list", "--json"]).ok().json();
    v["list"]["devices"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| d["name"].as_str().unwrap_or("").to_owned())
        .collect()
}

#[test]
fn linked_devices_get_messages_and_revoked_ones_are_shut_out() {
    let dir = Directory::start();
    let alice = Person::online(&dir, ALICE);
    let bob = Person::online(&dir, BOB);
    alice.befriend(&bob);

    // Link a laptop with the code the first device shows.
    let laptop = link_laptop(&alice, &dir);
    let show = laptop.run(&["id", "show", "--json"]).ok().json();
    assert_eq!(show["identifier"], ALICE);
    assert_eq!(show["linked"], true, "{show}");
    laptop.up();

    // Both devices are on the list the log proves, seen alike from both.
    wait_until(Duration::from_secs(15), "both devices listed", || {
        listed(&alice).len() == 2
    });
    assert_eq!(listed(&laptop), listed(&alice));
    assert!(listed(&alice).contains(&"laptop".to_owned()));

    // A contact's message reaches every online device.
    wait_until(Duration::from_secs(15), "bob sees two devices", || {
        devices_of(&bob, ALICE) == 2
    });
    let mut wa = alice.watch();
    let mut wl = laptop.watch();
    let sent = bob
        .run(&["send", ALICE, "hello both", "--json"])
        .ok()
        .json();
    assert_eq!(
        sent["delivered_to"].as_array().map(Vec::len),
        Some(2),
        "{sent}"
    );
    let is = |body: &'static str| move |e: &Value| e["event"] == "message" && e["body"] == body;
    wa.expect(
        "the message on the first device",
        Duration::from_secs(5),
        is("hello both"),
    );
    wl.expect(
        "the message on the laptop",
        Duration::from_secs(5),
        is("hello both"),
    );

    // The laptop speaks as alice.
    let mut wb = bob.watch();
    laptop.run(&["send", BOB, "from the laptop"]).ok();
    let m = wb.expect(
        "the laptop's message",
        Duration::from_secs(5),
        is("from the laptop"),
    );
    assert_eq!(m["from"], ALICE);

    // A linked device holds no identity key: it cannot revoke.
    laptop
        .run(&["device", "revoke", "test-device"])
        .fails_with(2, "holds no identity key");
    // Nor can a device revoke itself.
    alice
        .run(&["device", "revoke", "test-device"])
        .fails_with(2, "the device you are on");

    // Revoke the laptop.
    alice.run(&["device", "revoke", "laptop"]).ok();
    let w = wl.expect(
        "the laptop told it was revoked",
        Duration::from_secs(20),
        |e| e["event"] == "transparency" && e["kind"] == "device-revoked",
    );
    assert!(w["message"].as_str().unwrap().contains("revoked"), "{w}");
    wait_until(Duration::from_secs(15), "bob sees one device", || {
        devices_of(&bob, ALICE) == 1
    });
    assert_eq!(listed(&alice), vec!["test-device".to_owned()]);
    let sent = bob
        .run(&["send", ALICE, "after the revocation", "--json"])
        .ok()
        .json();
    assert_eq!(
        sent["delivered_to"].as_array().map(Vec::len),
        Some(1),
        "{sent}"
    );
    wl.expect_none(
        "a message on the revoked laptop",
        Duration::from_secs(1),
        is("after the revocation"),
    );
    // The revoked laptop reaches no one: it still knows bob's address, but bob's device
    // checks the log and turns it away.
    laptop
        .run(&["send", BOB, "still here?"])
        .fails_with(19, "revoked");
    wb.expect_none(
        "a message from the revoked laptop",
        Duration::from_secs(1),
        is("still here?"),
    );
}

/// A wrong code links nothing, and (issue 3) does not use up the rendezvous: the directory
/// gives it out only for the code's rendezvous token, so a wrong secret gets the answer an
/// unknown offer gets, and the right code still links afterwards. Before, the first request
/// naming the offer took it, so anyone sweeping offer ids blocked everyone's linking.
#[test]
fn a_wrong_code_links_nothing_and_leaves_the_code_usable() {
    let dir = Directory::start();
    let alice = Person::online(&dir, ALICE);
    let (code, shower, _) = show_code(&alice);
    // Same offer, wrong secret.
    let last = code.chars().last().unwrap();
    let wrong = format!("{}{}", &code[..18], if last == 'A' { 'B' } else { 'A' });
    let laptop = Person::empty(ALICE);
    join(&laptop, &wrong, &dir, "laptop").fails_with(4, "no device shows this code");
    assert!(!laptop.home.join("identity.pub").exists());
    assert!(!laptop.home.join("device.cert").exists());
    assert_eq!(listed(&alice).len(), 1);
    // The right code still links.
    join(&laptop, &code, &dir, "laptop").ok();
    let (status, err) = finish(shower, Duration::from_secs(60));
    assert_eq!(status, 0, "device link on the first device failed: {err}");
    wait_until(Duration::from_secs(15), "both devices listed", || {
        listed(&alice).len() == 2
    });
}

#[test]
fn the_registration_lock_stops_a_takeover_and_the_pin_opens_it() {
    let dir = Directory::start();
    let alice = Person::new(ALICE);
    alice
        .run(&["register", ALICE, "--directory", &dir.url])
        .ok();
    let code = dir.code_for(ALICE);
    alice
        .run_env(&["verify", &code], &[("DIALTONE_PIN", "2468")])
        .ok();
    alice.up();
    let v = alice.run(&["device", "list", "--json"]).ok().json();
    assert_eq!(v["list"]["registration_lock"], true, "{v}");
    let bob = Person::online(&dir, BOB);
    alice.befriend(&bob);
    // Bob talks to alice: her key (and its lock) is proven and pinned.
    let mut wa = alice.watch();
    bob.run(&["send", ALICE, "hi"]).ok();
    wa.expect("bob's message", Duration::from_secs(5), |e| {
        e["body"] == "hi"
    });

    // Someone who re-verified alice's email, with another key.
    let thief = Person::new(ALICE);
    thief
        .run(&["register", ALICE, "--directory", &dir.url])
        .ok();
    let code = dir.code_for(ALICE);
    thief
        .run(&["verify", &code])
        .fails_with(4, "has a registration lock");
    thief
        .run_env(&["verify", &code], &[("DIALTONE_PIN", "1357")])
        .fails_with(4, "wrong registration-lock PIN");
    // Still alice's key.
    assert_eq!(listed(&alice), vec!["test-device".to_owned()]);

    // With the PIN, the key changes, and bob is told it was done with the PIN.
    let mut wb = bob.watch();
    thief
        .run_env(&["verify", &code], &[("DIALTONE_PIN", "2468")])
        .ok();
    thief.up();
    let w = wb.expect(
        "bob warned of the key change",
        Duration::from_secs(15),
        |e| e["event"] == "key_changed" && e["identifier"] == ALICE,
    );
    assert_eq!(w["reset"], "locked", "{w}");
    wb.expect_none("a lock-bypassed alarm", Duration::from_secs(3), |e| {
        e["kind"] == "lock-bypassed"
    });
    bob.run(&["send", ALICE, "who are you?"])
        .fails_with(16, "WARNING");
}

#[test]
fn lock_set_and_clear_are_published() {
    // Four registrations of one identifier: more than the default limit allows at once.
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        config.path(),
        "[limits.register_per_identifier]\nburst = 10\nevery = \"1s\"\n",
    )
    .unwrap();
    let dir = Directory::start_with(&["--config", config.path().to_str().unwrap()]);
    let alice = Person::online(&dir, ALICE);
    let lock_of = || {
        alice.run(&["device", "list", "--json"]).ok().json()["list"]["registration_lock"].clone()
    };
    alice.run(&["lock", "set"]).fails_with(2, "give the PIN");
    alice
        .run_env(&["lock", "set"], &[("DIALTONE_PIN", "12")])
        .fails_with(2, "4 to 64");
    alice
        .run_env(&["lock", "set"], &[("DIALTONE_PIN", "9753")])
        .ok();
    wait_until(Duration::from_secs(10), "the lock in the log", || {
        lock_of() == Value::Bool(true)
    });
    // Re-verifying the same key without the PIN keeps the lock (and its PIN).
    alice
        .run(&["register", ALICE, "--directory", &dir.url])
        .ok();
    let r = alice.run(&["verify", &dir.code_for(ALICE)]);
    r.ok();
    assert!(r.stdout.contains("still on"), "{}", r.stdout);
    wait_until(Duration::from_secs(10), "the lock kept in the log", || {
        lock_of() == Value::Bool(true)
    });
    let thief = Person::new(ALICE);
    thief
        .run(&["register", ALICE, "--directory", &dir.url])
        .ok();
    thief
        .run(&["verify", &dir.code_for(ALICE)])
        .fails_with(4, "has a registration lock");
    alice.run(&["lock", "clear"]).ok();
    wait_until(Duration::from_secs(10), "the lock off in the log", || {
        lock_of() == Value::Bool(false)
    });
    // Without the lock, re-verifying is enough again (and the change is flagged as such).
    let other = Person::new(ALICE);
    other
        .run(&["register", ALICE, "--directory", &dir.url])
        .ok();
    other.run(&["verify", &dir.code_for(ALICE)]).ok();
}

#[test]
fn the_qr_code_carries_a_ticket_that_links() {
    let dir = Directory::start();
    let alice = Person::online(&dir, ALICE);
    let (code, shower, shown) = show_code(&alice);
    // A real decoder reads the QR code printed in the terminal.
    let ticket = decode_terminal_qr(&shown);
    assert_eq!(
        ticket,
        format!("dialtone-link:{code}?directory={}", dir.url)
    );
    let phone = Person::empty(ALICE);
    phone
        .run(&[
            "device",
            "link",
            "--ticket",
            &ticket,
            "--name",
            "phone",
            "--bind",
            "127.0.0.1:0",
        ])
        .ok();
    let (status, err) = finish(shower, Duration::from_secs(60));
    assert_eq!(status, 0, "{err}");
    phone.up();
    wait_until(Duration::from_secs(15), "both devices listed", || {
        listed(&phone).len() == 2
    });
}

/// A lying directory republishes alice's older device list, the one that still names her
/// revoked laptop. Bob's agent proved the newer list before, so it refuses the laptop and
/// raises the alarm; alice's own agent, watching her key history, raises it too.
#[test]
fn a_replayed_older_device_list_is_refused_and_flagged() {
    let dir = Directory::start_lying("honest");
    let alice = Person::registered(&dir, ALICE);
    alice.up_with(&["--kt-monitor-interval", "1"]);
    let bob = Person::online(&dir, BOB);
    alice.befriend(&bob);

    let laptop = link_laptop(&alice, &dir);
    laptop.up();
    let mut wb = bob.watch();
    wait_until(Duration::from_secs(20), "the laptop reaches bob", || {
        laptop.run(&["send", BOB, "from the laptop"]).code == 0
    });
    wb.expect("the laptop's message", Duration::from_secs(5), |e| {
        e["event"] == "message" && e["body"] == "from the laptop"
    });

    // Revoke it; bob's device proves the new list when the laptop tries again.
    alice.run(&["device", "revoke", "laptop"]).ok();
    wait_until(
        Duration::from_secs(20),
        "bob refuses the revoked laptop",
        || laptop.run(&["send", BOB, "revoked?"]).code == 19,
    );

    // The directory now publishes the older list again.
    let mut wa = alice.watch();
    dir.set_lie(serde_json::json!({"mode": "replay-list", "target": ALICE}));
    let w = wa.expect(
        "alice warned of her replayed list",
        Duration::from_secs(20),
        |e| e["event"] == "transparency" && e["kind"] == "list-rollback",
    );
    assert!(
        w["message"].as_str().unwrap().contains("older device list"),
        "{w}"
    );
    // The laptop is still refused by bob, who is told why.
    laptop
        .run(&["send", BOB, "let me back in"])
        .fails_with(18, "WARNING");
    let w = wb.expect(
        "bob warned of the replayed list",
        Duration::from_secs(10),
        |e| e["event"] == "transparency" && e["kind"] == "list-rollback",
    );
    assert!(w["message"].as_str().unwrap().contains(ALICE), "{w}");
    wb.expect_none(
        "a message from the revoked laptop",
        Duration::from_secs(1),
        |e| e["event"] == "message" && e["body"] == "let me back in",
    );

    // Alice re-verifies her identifier. The directory shows her the old list (laptop and
    // all) to sign again; her device starts from the list it published last instead.
    alice
        .run(&["register", ALICE, "--directory", &dir.url])
        .ok();
    let r = alice.run(&["verify", &dir.code_for(ALICE)]);
    r.ok();
    assert!(r.stderr.contains("older device list"), "{}", r.stderr);
    wait_until(Duration::from_secs(20), "alice's own list again", || {
        let r = alice.run(&["device", "list", "--json"]);
        r.code == 0 && {
            let v: Value = serde_json::from_str(&r.stdout).unwrap_or_default();
            v["list"]["devices"]
                .as_array()
                .is_some_and(|d| d.len() == 1 && d[0]["name"] == "test-device")
        }
    });
    laptop
        .run(&["send", BOB, "and now?"])
        .fails_with(19, "revoked");
}
