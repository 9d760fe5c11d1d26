//! Issue 11, points 1 and 2: "delivered" means a front end took the message, and a local API
//! that bots and a TUI can rely on. Real agents and a real directory as processes on
//! loopback; the front ends are `dialtone watch` processes or raw connections to
//! `agent.sock`, so that a test can also be a front end that never reads.
//!
//! Each test would have failed on the code before the issue: the ack counted broadcast
//! subscribers (none attached still acked with `shown_to: 0`; one that never read still
//! counted), a request half read when an event was written was lost, one `link_wait` held the
//! whole connection, an oversize line was skipped into an unbounded buffer, and there was no
//! `client_id` nor `message_sent`.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    time::{Duration, Instant},
};

use dialtone_testkit::{Directory, Person};
use serde_json::{Value, json};

const ALICE: &str = "alice@example.com";
const BOB: &str = "bob@example.com";

/// A raw local-API connection.
struct Conn {
    write: UnixStream,
    read: BufReader<UnixStream>,
    /// Lines read while looking for something else.
    seen: Vec<Value>,
}

impl Conn {
    fn open(p: &Person) -> Self {
        let s = UnixStream::connect(p.home.join("agent.sock")).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        Self {
            read: BufReader::new(s.try_clone().unwrap()),
            write: s,
            seen: Vec::new(),
        }
    }

    fn send(&mut self, v: Value) {
        let mut line = serde_json::to_vec(&v).unwrap();
        line.push(b'\n');
        self.write.write_all(&line).unwrap();
    }

    /// The next line; `None` at the end of the connection.
    fn line(&mut self, deadline: Instant) -> Option<Value> {
        let mut s = String::new();
        loop {
            assert!(Instant::now() < deadline, "timed out; saw {:#?}", self.seen);
            match self.read.read_line(&mut s) {
                Ok(0) => return None,
                Ok(_) if s.ends_with('\n') => return Some(serde_json::from_str(&s).unwrap()),
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return None,
            }
        }
    }

    /// Reads until a line matches `pred` (within `timeout`); lines before it go to `seen`.
    #[track_caller]
    fn expect(&mut self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.seen.iter().position(&pred) {
            return self.seen.remove(i);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.line(deadline).expect("connection closed");
            if pred(&v) {
                return v;
            }
            self.seen.push(v);
        }
    }

    fn answer(&mut self, id: u64) -> Value {
        self.expect(Duration::from_secs(20), |v| v["id"] == id)
    }

    fn call(&mut self, id: u64, method: &str, params: Value) -> Value {
        self.send(json!({"jsonrpc":"2.0","id":id,"method":method,"params":params}));
        self.answer(id)
    }

    fn subscribe(&mut self) {
        let r = self.call(1, "events.subscribe", json!({}));
        assert_eq!(r["result"]["subscribed"], true, "{r}");
    }
}

fn is_message(v: &Value, body: &str) -> bool {
    v["method"] == "event" && v["params"]["event"] == "message" && v["params"]["body"] == body
}

fn pair() -> (Directory, Person, Person) {
    let dir = Directory::start();
    let alice = Person::online(&dir, ALICE);
    let bob = Person::online(&dir, BOB);
    alice.befriend(&bob);
    (dir, alice, bob)
}

/// Point 1: with no front end open on bob's device, a message is refused `no-front-end`
/// (exit 20, the sender told in words) instead of acknowledged with `shown_to: 0`; with one
/// open, it is delivered and counted.
#[test]
fn a_device_with_no_front_end_refuses_with_no_front_end() {
    let (_dir, alice, bob) = pair();
    let r = alice.run(&["send", BOB, "anyone there?"]);
    r.fails_with(20, "no app is open");
    let mut w = bob.watch();
    let r = alice.run(&["send", BOB, "now?", "--json"]).ok().json();
    assert_eq!(r["delivered_to"][0]["shown_to"], 1, "{r}");
    w.expect("message", Duration::from_secs(5), |e| e["body"] == "now?");
    drop(w);
    // Gone again: refused again.
    dialtone_testkit::wait_until(Duration::from_secs(10), "refusal", || {
        alice.run(&["send", BOB, "and now?"]).code == 20
    });
}

/// Point 1: a front end that subscribes and never reads is cut off (its connection closed)
/// and does not count; the reading one does. With only a stuck one left, the message is
/// refused `no-front-end` within the sender's timeout.
#[test]
fn a_front_end_that_never_reads_is_cut_off() {
    let (_dir, alice, bob) = pair();
    let mut stuck = Conn::open(&bob);
    stuck.subscribe();
    let mut reading = bob.watch();
    // Big messages fill the stuck connection's socket buffer quickly; after that it holds
    // each next message and is cut off within seconds.
    let body = "x".repeat(30 * 1024);
    let started = Instant::now();
    let mut only_one = 0;
    for i in 0..80 {
        let text = format!("{i} {body}");
        let r = alice.run(&["send", BOB, &text, "--json"]).ok().json();
        let shown = r["delivered_to"][0]["shown_to"].as_u64().unwrap();
        assert!(shown >= 1, "{r}");
        if shown == 1 {
            only_one += 1;
        }
        if only_one >= 3 && started.elapsed() > Duration::from_secs(6) {
            break;
        }
    }
    assert!(only_one >= 3, "the stuck front end kept counting");
    // The reading front end saw them all; the stuck one was closed.
    reading.expect("last message", Duration::from_secs(10), |e| {
        e["event"] == "message" && e["body"].as_str().is_some_and(|b| b.starts_with("0 "))
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut lines = 0;
    while stuck.line(deadline).is_some() {
        lines += 1;
    }
    assert!(
        lines < 80,
        "the stuck front end was sent everything ({lines} lines)"
    );

    // Only a stuck front end: refused, not counted as shown.
    drop(reading);
    let mut stuck = Conn::open(&bob);
    stuck.subscribe();
    let mut refused = false;
    for i in 0..40 {
        let r = alice.run(&["send", BOB, &format!("{i} {body}")]);
        if r.code == 20 {
            assert!(r.stderr.contains("no app is open"), "{}", r.stderr);
            assert!(r.elapsed < Duration::from_secs(8), "took {:?}", r.elapsed);
            refused = true;
            break;
        }
        r.ok();
    }
    assert!(refused, "a front end that never reads kept acknowledging");
    drop(stuck);
}

/// Point 2: a request written in small pieces while events stream to the same connection is
/// answered (the old reader dropped a half-read line whenever an event was written).
#[test]
fn a_long_request_written_slowly_while_events_stream_is_answered() {
    let (_dir, alice, bob) = pair();
    let mut bob_watch = bob.watch();
    let mut c = Conn::open(&alice);
    c.subscribe();
    // Bob talks to alice all the while: events on alice's connection.
    let bob_home = bob.home.clone();
    let chatter = std::thread::spawn(move || {
        for i in 0..15 {
            let _ = std::process::Command::new(dialtone_testkit::bin("dialtone"))
                .arg("--home")
                .arg(&bob_home)
                .args(["send", ALICE, &format!("chatter {i}")])
                .output();
        }
    });
    let body = "y".repeat(32 * 1024 - 64);
    let mut line = serde_json::to_vec(
        &json!({"jsonrpc":"2.0","id":7,"method":"message.send","params":{"to":BOB,"body":body}}),
    )
    .unwrap();
    line.push(b'\n');
    for piece in line.chunks(1024) {
        c.write.write_all(piece).unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = c.answer(7);
    assert!(r["result"]["id"].is_string(), "{r}");
    bob_watch.expect("the long message", Duration::from_secs(5), |e| {
        e["event"] == "message" && e["body"].as_str().is_some_and(|b| b.len() == body.len())
    });
    chatter.join().unwrap();
    assert!(
        c.seen.iter().any(|v| v["params"]["event"] == "message"),
        "no event arrived while the request was written"
    );
}

/// Point 2: a `devices.link_wait` in flight holds neither other requests nor events on the
/// same connection; answers go by id.
#[test]
fn a_link_wait_in_flight_does_not_hold_the_connection() {
    let (_dir, alice, bob) = pair();
    let mut c = Conn::open(&alice);
    c.subscribe();
    let r = c.call(2, "devices.link_start", json!({}));
    assert!(r["result"]["code"].is_string(), "{r}");
    c.send(
        json!({"jsonrpc":"2.0","id":3,"method":"devices.link_wait","params":{"timeout_secs":60}}),
    );
    let status = c.call(4, "agent.status", json!({}));
    assert_eq!(status["result"]["identifier"], ALICE);
    bob.run(&["send", ALICE, "while you wait"]).ok();
    c.expect(Duration::from_secs(10), |v| is_message(v, "while you wait"));
    assert!(
        !c.seen.iter().any(|v| v["id"] == 3),
        "link_wait answered early: {:#?}",
        c.seen
    );
    // Cancelled from another connection: the wait ends with an error.
    Conn::open(&alice).call(1, "devices.link_cancel", json!({}));
    let r = c.answer(3);
    assert!(r["error"].is_object(), "{r}");
}

fn peak_rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Point 2: an oversize line is skipped without being kept (the agent's peak memory does not
/// grow by the line's size), answered `-32600`, and the connection keeps working.
#[test]
fn an_oversize_line_is_skipped_with_bounded_memory() {
    let dir = Directory::start();
    let alice = Person::online(&dir, ALICE);
    let pid = alice.agent_pid().unwrap();
    let mut c = Conn::open(&alice);
    assert_eq!(
        c.call(1, "agent.status", json!({}))["result"]["identifier"],
        ALICE
    );
    let before = peak_rss_kib(pid);
    let chunk = vec![b'z'; 1024 * 1024];
    for _ in 0..64 {
        c.write.write_all(&chunk).unwrap();
    }
    c.write.write_all(b"\n").unwrap();
    let r = c.expect(Duration::from_secs(30), |v| v["error"].is_object());
    assert_eq!(r["error"]["code"], -32600, "{r}");
    assert_eq!(
        c.call(2, "agent.status", json!({}))["result"]["identifier"],
        ALICE
    );
    let grown = peak_rss_kib(pid).saturating_sub(before);
    assert!(
        grown < 16 * 1024,
        "a 64 MiB line grew the agent's peak memory by {grown} KiB"
    );
}

/// Point 2: `message.send` with a `client_id` is idempotent: the retry returns the first
/// outcome, and bob sees the message once.
#[test]
fn a_retried_send_with_a_client_id_is_delivered_once() {
    let (_dir, alice, bob) = pair();
    let mut w = bob.watch();
    let params = json!({"to": BOB, "body": "exactly once", "client_id": "retry-1"});
    let first = Conn::open(&alice).call(1, "message.send", params.clone());
    let second = Conn::open(&alice).call(1, "message.send", params);
    assert!(first["result"]["id"].is_string(), "{first}");
    assert_eq!(first["result"], second["result"]);
    w.expect("the message", Duration::from_secs(5), |e| {
        e["body"] == "exactly once"
    });
    w.seen.clear();
    w.expect_none("a second delivery", Duration::from_secs(2), |e| {
        e["body"] == "exactly once"
    });
    // Another client id is another message.
    let third = Conn::open(&alice).call(
        1,
        "message.send",
        json!({"to": BOB, "body": "exactly once", "client_id": "retry-2"}),
    );
    assert_ne!(third["result"]["id"], first["result"]["id"]);
}

/// Point 2: a message sent by one front end is shown to the person's other front ends.
#[test]
fn other_front_ends_see_message_sent() {
    let (_dir, alice, bob) = pair();
    let _bob_watch = bob.watch();
    let mut mine = alice.watch();
    let r = alice
        .run(&["send", BOB, "from my CLI", "--json"])
        .ok()
        .json();
    let ev = mine.expect("message_sent", Duration::from_secs(5), |e| {
        e["event"] == "message_sent"
    });
    assert_eq!(ev["to"], BOB);
    assert_eq!(ev["body"], "from my CLI");
    assert_eq!(ev["id"], r["id"]);
    // The sending connection itself is not told its own message.
    let mut c = Conn::open(&alice);
    c.subscribe();
    let r = c.call(
        2,
        "message.send",
        json!({"to": BOB, "body": "from the socket"}),
    );
    assert!(r["result"]["id"].is_string(), "{r}");
    mine.expect("message_sent", Duration::from_secs(5), |e| {
        e["event"] == "message_sent" && e["body"] == "from the socket"
    });
    // (`message_sent` goes out before the send's own answer, so before this one.)
    c.call(3, "agent.status", json!({}));
    assert!(
        !c.seen
            .iter()
            .any(|v| v["params"]["event"] == "message_sent"),
        "the sender was told of its own message: {:#?}",
        c.seen
    );
}

/// Point 1: the receiver ignores a duplicate message id from the same device — the sender's
/// one redial after a lost answer would otherwise show the message twice — and acknowledges it
/// again. The test speaks the peer protocol as alice's device (with her keys, her agent
/// stopped) and sends the same `text` frame on two streams.
#[test]
fn a_duplicate_message_id_is_shown_once() {
    use dialtone_proto::{
        DeviceId,
        directory::EndpointInfo,
        wire::{Frame, Hello, MessageId, PROTOCOL_VERSION},
    };
    let (_dir, alice, bob) = pair();
    let mut w = bob.watch();
    let status = bob.run(&["status", "--json"]).ok().json();
    let device = DeviceId::from_hex(status["device"].as_str().unwrap()).unwrap();
    let endpoint: EndpointInfo = serde_json::from_value(status["endpoint"].clone()).unwrap();
    alice.down();
    let home = dialtone_agent::Home::open(&alice.home).unwrap();
    let secret = *home.device_secret().unwrap();
    let cert = home.device_cert().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let acks = rt.block_on(async {
        let mut cfg = dialtone_net::EndpointConfig::new(secret);
        cfg.bind = vec!["127.0.0.1:0".parse().unwrap()];
        cfg.portmapper = false;
        let ep = dialtone_net::bind(&cfg).await.unwrap();
        let conn = dialtone_net::connect(&ep, &device, &endpoint, Duration::from_secs(5))
            .await
            .unwrap();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        let hello = Frame::Hello(Hello {
            version: PROTOCOL_VERSION,
            identifier: dialtone_proto::Identifier::parse(ALICE).unwrap(),
            device_cert: cert,
            checkpoint: None,
            // Today's legacy hello: version 1, text only, no stream kinds.
            max_version: None,
            features: None,
        });
        dialtone_net::write_frame(&mut send, &hello).await.unwrap();
        let _ = send.finish();
        let theirs = dialtone_net::read_frame(&mut recv).await.unwrap();
        assert!(matches!(theirs, Frame::Hello(_)), "{theirs:?}");
        let text = Frame::Text {
            id: MessageId([7; 16]),
            sent_at_ms: 1,
            body: "only once".into(),
        };
        let mut acks = Vec::new();
        for _ in 0..2 {
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            dialtone_net::write_frame(&mut send, &text).await.unwrap();
            let _ = send.finish();
            acks.push(dialtone_net::read_frame(&mut recv).await.unwrap());
        }
        conn.close(0u32.into(), b"done");
        ep.close().await;
        acks
    });
    for a in &acks {
        assert!(matches!(a, Frame::Ack { shown_to: 1, .. }), "{acks:?}");
    }
    w.expect("the message", Duration::from_secs(5), |e| {
        e["body"] == "only once"
    });
    w.seen.clear();
    w.expect_none("the duplicate", Duration::from_secs(2), |e| {
        e["body"] == "only once"
    });
}
