//! End-to-end tests: the real `dialtone-directory` and `dialtone` binaries as processes on
//! loopback, each person with their own home directory, talking over real sockets.
//!
//! Build the binaries first: `cargo build --bins` (`scripts/test.sh` does).

use std::time::{Duration, Instant};

use dialtone_testkit::{Directory, Person, decode_terminal_qr, wait_until};

const ALICE: &str = "alice@example.com";
const BOB: &str = "bob@example.com";
const CAROL: &str = "+14155550100";

#[test]
fn identity_register_and_verify() {
    let dir = Directory::start();

    // An identity must be protected unless the user opts out explicitly.
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("h");
    let p = Person::new(ALICE); // --no-passphrase, used below for registration
    let bare = std::process::Command::new(dialtone_testkit::bin("dialtone"))
        .arg("--home")
        .arg(&home)
        .args(["id", "new"])
        .env_remove("DIALTONE_PASSPHRASE")
        .output()
        .unwrap();
    assert_eq!(bare.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bare.stderr).contains("--passphrase-file"));

    // Encrypted identity: register needs the passphrase.
    let pass = tmp.path().join("pass");
    std::fs::write(&pass, "correct horse battery\n").unwrap();
    let enc = Person::new_with_passphrase_file(CAROL, &pass);
    let show = enc.run(&["id", "show", "--json"]).ok().json();
    assert_eq!(show["encrypted"], true);
    let fp = show["fingerprint"].as_str().unwrap().to_owned();
    assert_eq!(fp.len(), 39);
    assert!(enc.run(&["id", "show"]).ok().stdout.starts_with(&fp));
    enc.run(&["register", CAROL, "--directory", &dir.url])
        .fails_with(1, "the identity key is encrypted");
    enc.run(&[
        "register",
        CAROL,
        "--directory",
        &dir.url,
        "--passphrase-file",
        pass.to_str().unwrap(),
    ])
    .ok();
    let code = dir.code_for(CAROL);
    let wrong = if code == "000000" { "111111" } else { "000000" };
    enc.run(&["verify", wrong, "--passphrase-file", pass.to_str().unwrap()])
        .fails_with(4, "wrong code");
    enc.run_env(
        &["verify", &code],
        &[("DIALTONE_PASSPHRASE", "correct horse battery")],
    )
    .ok();
    assert_eq!(
        enc.run(&["id", "show", "--json"]).ok().json()["registered"],
        true
    );

    // Key files are private.
    use std::os::unix::fs::PermissionsExt;
    for f in ["identity.key", "device.key"] {
        let mode = std::fs::metadata(p.home.join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }

    // Identifiers are normalized; garbage is refused with a usage error.
    p.run(&["register", "  Alice@EXAMPLE.com", "--directory", &dir.url])
        .ok();
    assert!(dir.outbox.join(ALICE).exists());
    p.run(&["register", "not-an-address", "--directory", &dir.url])
        .fails_with(2, "neither an email");

    // Repeated registrations are rate limited.
    let mut limited = false;
    for _ in 0..6 {
        let r = p.run(&["register", ALICE, "--directory", &dir.url]);
        if r.code != 0 {
            r.fails_with(4, "");
            assert!(
                r.stderr.to_lowercase().contains("too many") || r.stderr.contains("try again"),
                "{}",
                r.stderr
            );
            limited = true;
            break;
        }
    }
    assert!(limited, "repeated registrations were never rate limited");

    // Plain HTTP to a directory that is not on loopback is refused before any traffic.
    p.run(&["register", ALICE, "--directory", "http://192.0.2.1:8080"])
        .fails_with(4, "refusing the plain-HTTP directory");
}

#[test]
fn contacts_presence_and_messages() {
    let dir = Directory::start();
    let alice = Person::online(&dir, ALICE);
    let bob = Person::registered(&dir, BOB);

    // Bob is offline: alice is told what she would be told if he were online (a stranger
    // learns no presence, docs/privacy.md), and the request is not queued for him.
    alice.run(&["contacts", "add", BOB]).ok();

    bob.up();
    let mut bob_watch = bob.watch();
    // The earlier request never arrives later.
    bob_watch.expect_none("queued contact request", Duration::from_secs(2), |e| {
        e["event"] == "contact_request"
    });
    assert!(bob.contacts().is_empty());

    // Sending before being contacts is refused at once.
    let r = alice.run(&["send", BOB, "hi"]);
    r.fails_with(12, "not your contact");
    assert!(r.elapsed < Duration::from_secs(5));

    // Request while online reaches Bob in real time.
    let mut alice_watch = alice.watch();
    alice.run(&["contacts", "add", BOB]).ok();
    let ev = bob_watch.expect("contact request", Duration::from_secs(10), |e| {
        e["event"] == "contact_request"
    });
    assert_eq!(ev["from"], ALICE);
    bob.run(&["contacts", "accept", ALICE]).ok();
    alice_watch.expect("bob online", Duration::from_secs(10), |e| {
        e["event"] == "presence" && e["identifier"] == BOB && e["state"] == "online"
    });
    assert_eq!(alice.state_of(BOB).as_deref(), Some("online"));

    // Presence is pushed.
    bob.run(&["status", "set", "away", "--message", "at lunch"])
        .ok();
    let ev = alice_watch.expect("bob away", Duration::from_secs(10), |e| {
        e["event"] == "presence" && e["identifier"] == BOB && e["state"] == "away"
    });
    assert_eq!(ev["message"], "at lunch");
    bob.run(&["status", "set", "online"]).ok();

    // A message is delivered and acknowledged.
    let r = alice.run(&["send", BOB, "hello", "bob"]);
    r.ok();
    assert!(r.stdout.contains("delivered to bob@example.com"));
    let ev = bob_watch.expect("message", Duration::from_secs(5), |e| {
        e["event"] == "message"
    });
    assert_eq!(ev["from"], ALICE);
    assert_eq!(ev["body"], "hello bob");
    // And back, on the same connection.
    bob.run(&["send", ALICE, "hi alice"]).ok();
    alice_watch.expect("reply", Duration::from_secs(5), |e| {
        e["event"] == "message" && e["body"] == "hi alice"
    });

    // Busy refuses with do-not-disturb; invisible looks offline.
    bob.run(&["status", "set", "busy"]).ok();
    alice_watch.expect("bob busy", Duration::from_secs(10), |e| {
        e["event"] == "presence" && e["state"] == "busy"
    });
    alice.run(&["send", BOB, "psst"]).fails_with(14, "busy");
    bob.run(&["status", "set", "invisible"]).ok();
    alice_watch.expect("bob invisible", Duration::from_secs(10), |e| {
        e["event"] == "presence" && e["state"] == "offline"
    });
    let r = alice.run(&["send", BOB, "are you there"]);
    r.fails_with(10, "offline");
    assert!(
        r.elapsed < Duration::from_secs(2),
        "offline refusal took {:?}",
        r.elapsed
    );
    bob.run(&["status", "set", "online"]).ok();
    alice_watch.expect("bob back", Duration::from_secs(10), |e| {
        e["event"] == "presence" && e["state"] == "online" && e["identifier"] == BOB
    });

    // Offline: refused within 2 s, and never delivered later.
    bob_watch.seen.clear();
    drop(bob_watch);
    bob.run(&["down"]).ok();
    alice_watch.expect("bob offline after down", Duration::from_secs(5), |e| {
        e["event"] == "presence" && e["identifier"] == BOB && e["state"] == "offline"
    });
    let r = alice.run(&["send", BOB, "this must never arrive"]);
    r.fails_with(10, "offline");
    assert!(
        r.elapsed < Duration::from_secs(2),
        "offline refusal took {:?}",
        r.elapsed
    );
    bob.up();
    let mut bob_watch = bob.watch();
    alice_watch.expect("bob online again", Duration::from_secs(10), |e| {
        e["event"] == "presence" && e["identifier"] == BOB && e["state"] == "online"
    });
    bob_watch.expect_none("late delivery", Duration::from_secs(3), |e| {
        e["event"] == "message"
    });

    // Blocked: refused at once with its own code.
    alice.run(&["contacts", "block", BOB]).ok();
    let r = alice.run(&["send", BOB, "x"]);
    r.fails_with(13, "blocked");
    // Bob lost the contact and sees Alice as a non-contact.
    wait_until(Duration::from_secs(5), "bob to lose alice", || {
        bob.state_of(ALICE).is_none()
    });
    bob.run(&["send", ALICE, "x"])
        .fails_with(12, "not your contact");
}

#[test]
fn kill_dash_nine_shows_offline_within_ten_seconds() {
    let dir = Directory::start();
    let alice = Person::online(&dir, ALICE);
    let bob = Person::online(&dir, BOB);
    alice.befriend(&bob);
    let mut w = alice.watch();
    let killed = Instant::now();
    bob.kill9();
    w.expect("bob offline", Duration::from_secs(10), |e| {
        e["event"] == "presence" && e["identifier"] == BOB && e["state"] == "offline"
    });
    assert!(killed.elapsed() < Duration::from_secs(10));
}

#[test]
fn unreachable_device_is_refused_within_ten_seconds() {
    let dir = Directory::start();
    let alice = Person::online(&dir, ALICE);
    let bob = Person::online(&dir, BOB);
    alice.befriend(&bob);
    // Bob's agent freezes: the directory still lists him for a few seconds, but his device
    // answers nothing.
    bob.signal(libc::SIGSTOP);
    let r = alice.run(&["send", BOB, "hello?"]);
    bob.signal(libc::SIGCONT);
    assert!(
        r.code == 11 || r.code == 10,
        "expected unreachable (or offline), got {}: {}",
        r.code,
        r.stderr
    );
    assert!(r.elapsed < Duration::from_secs(10), "took {:?}", r.elapsed);
}

#[test]
fn key_change_is_refused_with_a_warning() {
    let dir = Directory::start();
    let alice = Person::online(&dir, ALICE);
    let bob = Person::online(&dir, BOB);
    alice.befriend(&bob);
    let bob_watch = bob.watch();
    alice.run(&["send", BOB, "first"]).ok();
    drop(bob_watch);
    let mut w = alice.watch();

    // Someone (or the directory) binds bob's identifier to a different key.
    let mallory = Person::registered(&dir, BOB);
    mallory.up();
    let _mallory_watch = mallory.watch();
    w.expect("key change warning", Duration::from_secs(10), |e| {
        e["event"] == "key_changed" && e["identifier"] == BOB
    });
    let r = alice.run(&["send", BOB, "secret"]);
    r.fails_with(16, "WARNING");
    let list = alice.run(&["contacts", "list"]).ok().stdout.clone();
    assert!(list.contains("KEY CHANGED"), "{list}");

    // Whoever holds the new key inherits no contacts: Alice accepted Bob's old key, so the
    // directory shows Mallory neither her presence nor her addresses, and Mallory cannot
    // message her.
    let relation_of_alice = |p: &Person| {
        p.contacts()
            .into_iter()
            .find(|c| c["identifier"] == ALICE)
            .map(|c| (c["relation"].clone(), c["state"].clone()))
    };
    let (relation, state) = relation_of_alice(&mallory).expect("alice listed");
    assert_eq!(relation, "outgoing");
    assert_eq!(state, "offline");
    mallory
        .run(&["send", ALICE, "hi, it's bob"])
        .fails_with(12, "not");

    // After checking in person, Alice trusts the new key, which confirms the contact again.
    alice.run(&["contacts", "trust", BOB]).ok();
    alice.run(&["send", BOB, "ok"]).ok();
    wait_until(
        Duration::from_secs(10),
        "the contact confirmed again",
        || relation_of_alice(&mallory).is_some_and(|(r, s)| r == "accepted" && s == "online"),
    );
}

#[test]
fn directory_restart_keeps_registrations_and_agents_reconnect() {
    let mut dir = Directory::start();
    let alice = Person::online(&dir, ALICE);
    let bob = Person::online(&dir, BOB);
    alice.befriend(&bob);
    dir.kill();
    wait_until(Duration::from_secs(20), "alice to notice", || {
        alice.run(&["status", "--json"]).json()["directory_connected"] == false
    });
    dir.restart();
    wait_until(Duration::from_secs(20), "bob online again", || {
        alice.state_of(BOB).as_deref() == Some("online")
    });
    // A message is delivered only to a device with a front end open.
    let _bob_watch = bob.watch();
    alice.run(&["send", BOB, "after restart"]).ok();
}

#[test]
fn phone_numbers_and_three_people() {
    let dir = Directory::start();
    let alice = Person::online(&dir, ALICE);
    let carol = Person::online(&dir, CAROL);
    let bob = Person::online(&dir, BOB);
    carol.befriend(&alice);
    carol.befriend(&bob);
    // Alice and Bob are not contacts of each other: neither sees the other's presence.
    assert_eq!(alice.state_of(BOB), None);
    let mut w = carol.watch();
    alice.run(&["send", CAROL, "from alice"]).ok();
    bob.run(&["send", "+1 415 555 0100", "from bob"]).ok();
    w.expect("alice's", Duration::from_secs(5), |e| {
        e["body"] == "from alice"
    });
    w.expect("bob's", Duration::from_secs(5), |e| e["body"] == "from bob");
    alice
        .run(&["send", BOB, "x"])
        .fails_with(12, "not your contact");
}

#[test]
fn agent_lifecycle_and_cli_errors() {
    let dir = Directory::start();
    let alice = Person::registered(&dir, ALICE);
    alice.run(&["send", BOB, "x"]).fails_with(3, "not running");
    alice.run(&["down"]).fails_with(3, "not running");
    alice.up();
    // A second agent for the same home is refused.
    let r = alice.run(&["up", "--bind", "127.0.0.1:0", "--no-portmapper"]);
    r.fails_with(1, "already running");
    alice
        .run(&["status", "set", "sleepy"])
        .fails_with(2, "unknown state");
    alice
        .run(&["send", "nobody@example.com", "x"])
        .fails_with(2, "no one is registered");
    alice.run(&["down"]).ok();
    assert!(!alice.home.join("agent.sock").exists());
    let unregistered = Person::new(BOB);
    unregistered
        .run(&["up", "--no-portmapper"])
        .fails_with(1, "not registered");
}

#[test]
fn https_directory_with_a_private_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let (ca_pem, cert_pem, key_pem) = (
        tmp.path().join("ca.pem"),
        tmp.path().join("cert.pem"),
        tmp.path().join("key.pem"),
    );
    std::fs::write(&ca_pem, ca.as_ref().pem()).unwrap();
    std::fs::write(&cert_pem, leaf.pem()).unwrap();
    std::fs::write(&key_pem, leaf_key.serialize_pem()).unwrap();

    let dir = Directory::start_with(&[
        "--tls-cert",
        cert_pem.to_str().unwrap(),
        "--tls-key",
        key_pem.to_str().unwrap(),
    ]);
    assert!(dir.url.starts_with("https://127.0.0.1:"), "{}", dir.url);

    // Without the CA the certificate is not trusted.
    let alice = Person::new(ALICE);
    let r = alice.run(&["register", ALICE, "--directory", &dir.url]);
    r.fails_with(4, "cannot reach the directory");

    let ca_arg = ["--directory-ca", ca_pem.to_str().unwrap()];
    alice.register_with(&dir, &ca_arg);
    alice.up();
    let bob = Person::new(BOB);
    bob.register_with(&dir, &ca_arg);
    bob.up();
    alice.befriend(&bob);
    let mut w = bob.watch();
    alice.run(&["send", BOB, "over https"]).ok();
    w.expect("message", Duration::from_secs(5), |e| {
        e["body"] == "over https"
    });
}

#[test]
fn chat_is_interactive_and_logs_hold_no_message_text() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};

    let dir = Directory::start();
    let alice = Person::online(&dir, ALICE);
    let bob = Person::online(&dir, BOB);
    alice.befriend(&bob);
    let mut bob_watch = bob.watch();

    let mut chat = Command::new(dialtone_testkit::bin("dialtone"))
        .arg("--home")
        .arg(&alice.home)
        .args(["chat", BOB])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut stdin = chat.stdin.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = chat.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let next_matching = |needle: &str| loop {
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("chat never printed {needle:?}"));
        if line.contains(needle) {
            return line;
        }
    };
    next_matching("chatting with bob@example.com");
    writeln!(stdin, "a secret typed into chat").unwrap();
    next_matching("delivered");
    bob_watch.expect("chat line", Duration::from_secs(5), |e| {
        e["body"] == "a secret typed into chat"
    });
    bob.run(&["send", ALICE, "another secret, back"]).ok();
    next_matching("bob@example.com: another secret, back");
    writeln!(stdin, "/quit").unwrap();
    let status = chat.wait().unwrap();
    assert!(status.success());

    // Neither agent logged the text (detached agents log to agent.log in their homes).
    for p in [&alice, &bob] {
        let log = std::fs::read_to_string(p.home.join("agent.log")).unwrap_or_default();
        assert!(!log.is_empty(), "no agent log in {}", p.home.display());
        assert!(!log.contains("secret"), "message text in the log:\n{log}");
    }
}

#[test]
fn safety_numbers_qr_codes_and_verified_contacts() {
    let dir = Directory::start();
    let alice = Person::online(&dir, ALICE);
    let bob = Person::online(&dir, BOB);
    let carol = Person::online(&dir, CAROL);
    alice.befriend(&bob);
    alice.befriend(&carol);

    let a = alice
        .run(&["contacts", "verify", BOB, "--json"])
        .ok()
        .json();
    let b = bob
        .run(&["contacts", "verify", ALICE, "--json"])
        .ok()
        .json();
    let number = a["safety_number"].as_str().unwrap().to_owned();
    assert_eq!(number.replace(' ', "").len(), 60);
    assert_eq!(
        number,
        b["safety_number"].as_str().unwrap(),
        "both sides must see the same number"
    );
    let c = alice
        .run(&["contacts", "verify", CAROL, "--json"])
        .ok()
        .json();
    assert_ne!(number, c["safety_number"].as_str().unwrap());
    assert_eq!(a["verified"], false);

    // The QR code printed in the terminal decodes (with zbarimg) to the payload.
    let shown = alice.run(&["contacts", "verify", BOB]).ok().stdout.clone();
    assert!(shown.contains(&number[..23]), "{shown}");
    assert_eq!(
        decode_terminal_qr(&shown),
        a["qr_payload"].as_str().unwrap()
    );

    // Confirmed: listed as verified.
    alice.run(&["contacts", "verify", BOB, "--confirm"]).ok();
    assert!(
        alice
            .run(&["contacts", "list"])
            .ok()
            .stdout
            .contains("(verified)")
    );

    // A key change of a verified contact is a hard block: `trust` is not enough.
    let mallory = Person::registered(&dir, BOB);
    mallory.up();
    let _mallory_watch = mallory.watch();
    wait_until(Duration::from_secs(10), "alice to see the new key", || {
        alice
            .contacts()
            .iter()
            .any(|c| c["identifier"] == BOB && c["key"] == "changed")
    });
    alice.run(&["send", BOB, "x"]).fails_with(16, "WARNING");
    alice
        .run(&["contacts", "trust", BOB])
        .fails_with(2, "verify");
    alice.run(&["send", BOB, "x"]).fails_with(16, "WARNING");
    let v = alice
        .run(&["contacts", "verify", BOB, "--json"])
        .ok()
        .json();
    assert_eq!(v["key"], "changed");
    assert_ne!(v["safety_number"].as_str().unwrap(), number);
    alice.run(&["contacts", "verify", BOB, "--confirm"]).ok();
    alice.run(&["send", BOB, "verified again"]).ok();
}
