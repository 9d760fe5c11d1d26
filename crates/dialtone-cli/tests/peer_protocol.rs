//! Issue 11, points 3 and 4: a peer protocol that can grow, and nothing for strangers before
//! the hello. Real `dialtone` agents and a real directory on loopback; the stranger is a raw
//! iroh endpoint built on `dialtone-net`.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use dialtone_proto::{
    DeviceCertificate, DeviceId, Identifier,
    directory::EndpointInfo,
    wire::{CloseCode, Feature, Frame, Hello, PROTOCOL_VERSION},
};
use dialtone_testkit::{Directory, Person};

const ALICE: &str = "alice@example.com";
const BOB: &str = "bob@example.com";
const CAROL: &str = "carol@example.com";

/// Starts `p`'s agent announcing only what agents before features spoke: today's hello (no
/// version range, no feature list) and message streams without a kind. In this mode the
/// agent closes the connection (code `protocol`) on anything else it is sent — a frame or
/// stream kind it does not know, a unidirectional stream — as such an agent would fail.
fn up_legacy(p: &Person) {
    p.run_env(
        &dialtone_testkit::UP_ARGS,
        &[("DIALTONE_PEER_FEATURES", "legacy")],
    )
    .ok();
}

fn conn_id(p: &Person, with: &str) -> serde_json::Value {
    let list = p.run(&["status", "--connections", "--json"]).ok().json();
    list.as_array()
        .and_then(|l| l.iter().find(|c| c["identifier"] == with).cloned())
        .map(|c| c["conn_id"].clone())
        .unwrap_or(serde_json::Value::Null)
}

/// What broke: a new agent must still talk to one that announces only today's features, and
/// send it nothing it did not announce (no `open` before a text, no `unsupported`, no
/// unidirectional stream). The legacy side closes the connection on anything else, so a
/// stray frame shows as a failed send or a new connection id.
#[test]
fn legacy_peer_exchanges_text_and_is_sent_nothing_else() {
    let dir = Directory::start();
    let alice = Person::registered(&dir, ALICE);
    up_legacy(&alice);
    let carol = Person::registered(&dir, CAROL);
    up_legacy(&carol);
    let bob = Person::online(&dir, BOB);
    alice.befriend(&bob);
    carol.befriend(&bob);
    // A message is delivered only to a device with a front end open.
    let _carol_watch = carol.watch();

    // The new agent dials the legacy one, then the legacy one answers on that connection.
    let mut alice_watch = alice.watch();
    bob.run(&["send", ALICE, "from the new agent"]).ok();
    alice_watch.expect("message from bob", Duration::from_secs(10), |e| {
        e["event"] == "message" && e["body"] == "from the new agent"
    });
    let first = conn_id(&bob, ALICE);
    assert!(first.is_u64(), "no connection to alice");
    // The legacy one dials the new one.
    let mut bob_watch = bob.watch();
    carol.run(&["send", BOB, "from a legacy agent"]).ok();
    bob_watch.expect("message from carol", Duration::from_secs(10), |e| {
        e["event"] == "message" && e["body"] == "from a legacy agent"
    });
    let carols = conn_id(&bob, CAROL);
    assert!(carols.is_u64(), "no connection to carol");
    // (A connection id names a connection within one agent: compare each side with itself.)
    let (alices_side, carols_side) = (conn_id(&alice, BOB), conn_id(&carol, BOB));
    assert!(alices_side.is_u64() && carols_side.is_u64());
    for i in 0..3 {
        alice.run(&["send", BOB, &format!("a{i}")]).ok();
        bob.run(&["send", ALICE, &format!("b{i}")]).ok();
        bob.run(&["send", CAROL, &format!("c{i}")]).ok();
        carol.run(&["send", BOB, &format!("d{i}")]).ok();
    }
    // Same connections all along: the legacy sides never saw a frame they would refuse.
    assert_eq!(conn_id(&bob, ALICE), first);
    assert_eq!(conn_id(&alice, BOB), alices_side);
    assert_eq!(conn_id(&bob, CAROL), carols);
    assert_eq!(conn_id(&carol, BOB), carols_side);
}

struct Target {
    device: DeviceId,
    endpoint: EndpointInfo,
}

fn target(p: &Person) -> Target {
    let status = p.run(&["status", "--json"]).ok().json();
    Target {
        device: DeviceId::from_hex(status["device"].as_str().unwrap()).unwrap(),
        endpoint: serde_json::from_value(status["endpoint"].clone()).unwrap(),
    }
}

fn stranger_hello(device_key: &ed25519_dalek::SigningKey, n: usize) -> Frame {
    let identity = ed25519_dalek::SigningKey::from_bytes(&[(n % 251) as u8 + 1; 32]);
    let device = DeviceId::from_signing_key(device_key);
    Frame::Hello(Hello {
        version: PROTOCOL_VERSION,
        max_version: Some(PROTOCOL_VERSION),
        identifier: Identifier::parse(&format!("stranger{n}@example.com")).unwrap(),
        device_cert: DeviceCertificate::issue(&identity, device, "flood", 1).unwrap(),
        checkpoint: None,
        features: Some(vec![Feature::Text.name().into()]),
    })
}

/// What the flood saw.
#[derive(Default)]
struct FloodReport {
    refused_at_incoming: AtomicUsize,
    closed_not_a_contact: AtomicUsize,
    closed_other: AtomicUsize,
    hello_answered: AtomicUsize,
    extra_stream_granted: AtomicUsize,
    uni_stream_granted: AtomicUsize,
}

/// A non-contact opens `total` connections, `parallel` at a time, each with a valid hello
/// of a fresh identifier (each would cost a directory lookup), and tries to open more
/// streams than the hello's one. Bounded in count and time; loopback only.
fn flood(t: &Target, total: usize, parallel: usize, report: Arc<FloodReport>) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let seed = [77u8; 32];
        let mut cfg = dialtone_net::EndpointConfig::new(seed);
        cfg.bind = vec!["127.0.0.1:0".parse().unwrap()];
        cfg.portmapper = false;
        let ep = dialtone_net::bind(&cfg).await.unwrap();
        let key = ed25519_dalek::SigningKey::from_bytes(&seed);
        let next = Arc::new(AtomicUsize::new(0));
        let mut workers = Vec::new();
        for _ in 0..parallel {
            let (ep, key, next, report) = (ep.clone(), key.clone(), next.clone(), report.clone());
            let (device, endpoint) = (t.device, t.endpoint.clone());
            workers.push(tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= total {
                        return;
                    }
                    let Ok(conn) =
                        dialtone_net::connect(&ep, &device, &endpoint, Duration::from_secs(5))
                            .await
                    else {
                        report.refused_at_incoming.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    let Ok((mut send, mut recv)) = conn.open_bi().await else {
                        continue;
                    };
                    let _ = dialtone_net::write_frame(&mut send, &stranger_hello(&key, n)).await;
                    // More streams than the hello's are not granted before a hello passed.
                    let short = Duration::from_millis(300);
                    if let Ok(Ok(_)) = tokio::time::timeout(short, conn.open_bi()).await {
                        report.extra_stream_granted.fetch_add(1, Ordering::Relaxed);
                    }
                    if let Ok(Ok(_)) = tokio::time::timeout(short, conn.open_uni()).await {
                        report.uni_stream_granted.fetch_add(1, Ordering::Relaxed);
                    }
                    let answer = tokio::time::timeout(
                        Duration::from_secs(10),
                        dialtone_net::read_frame(&mut recv),
                    )
                    .await;
                    if let Ok(Ok(Frame::Hello(_))) = answer {
                        report.hello_answered.fetch_add(1, Ordering::Relaxed);
                    }
                    match tokio::time::timeout(Duration::from_secs(10), conn.closed()).await {
                        Ok(reason) => {
                            if dialtone_net::peer_close_code(&reason)
                                == Some(CloseCode::NotAContact)
                            {
                                report.closed_not_a_contact.fetch_add(1, Ordering::Relaxed);
                            } else {
                                report.closed_other.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(_) => {
                            report.closed_other.fetch_add(1, Ordering::Relaxed);
                            conn.close(0u32.into(), b"");
                        }
                    }
                }
            }));
        }
        for w in workers {
            let _ = w.await;
        }
        ep.close().await;
    });
}

/// What broke: before the hello a stranger could open as many streams as a contact, and each
/// stranger's hello made the agent ask the directory, spending the person's own rate-limit
/// budget (100 requests, then 20 a second): a flood of hellos from fresh identifiers left the
/// person unable to look anyone up. Now a stranger gets one stream, no unidirectional one,
/// and at most a few lookups; contacts are served during and after the flood.
#[test]
fn stranger_flood_leaves_contacts_served_and_the_directory_budget_intact() {
    let dir = Directory::start();
    let alice = Person::online(&dir, ALICE);
    let bob = Person::online(&dir, BOB);
    alice.befriend(&bob);
    // A message is delivered only to a device with a front end open.
    let (_alice_watch, _bob_watch) = (alice.watch(), bob.watch());
    alice.run(&["send", BOB, "before the flood"]).ok();
    let t = target(&bob);

    let report = Arc::new(FloodReport::default());
    let started = Instant::now();
    let flooder = {
        let report = report.clone();
        std::thread::spawn(move || flood(&t, 400, 24, report))
    };
    // During the flood, the two contacts still talk (both directions).
    let mut during = 0;
    while !flooder.is_finished() && during < 5 {
        alice.run(&["send", BOB, &format!("during {during}")]).ok();
        bob.run(&["send", ALICE, &format!("back {during}")]).ok();
        during += 1;
    }
    flooder.join().unwrap();
    let flood_time = started.elapsed();
    assert!(during > 0, "the flood ended before any message was sent");
    let r = &report;
    let (refused, nac, other) = (
        r.refused_at_incoming.load(Ordering::Relaxed),
        r.closed_not_a_contact.load(Ordering::Relaxed),
        r.closed_other.load(Ordering::Relaxed),
    );
    eprintln!(
        "flood of 400 connections in {flood_time:?}: {nac} closed not-a-contact, {refused} \
         refused at Incoming, {other} otherwise; {during} message pairs during it"
    );
    assert_eq!(
        r.hello_answered.load(Ordering::Relaxed),
        0,
        "a stranger got our hello"
    );
    assert_eq!(
        r.extra_stream_granted.load(Ordering::Relaxed),
        0,
        "a stranger got a second stream before its hello passed"
    );
    assert_eq!(r.uni_stream_granted.load(Ordering::Relaxed), 0);
    assert!(nac > 0, "no stranger's hello was checked at all");

    // The person's own directory budget is intact: lookups answer (not "too many requests").
    for i in 0..5 {
        let out = bob.run(&["send", &format!("nobody{i}@example.com"), "x"]);
        let text = format!("{}{}", out.stdout, out.stderr);
        assert!(
            text.contains("no one is registered"),
            "bob's own lookup failed after the flood: {text}"
        );
    }
    // And contacts are served after it.
    alice.run(&["send", BOB, "after the flood"]).ok();
    bob.run(&["send", ALICE, "still here"]).ok();
}
