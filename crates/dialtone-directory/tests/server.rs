//! The directory over real sockets with a Rust client (reqwest, tokio-tungstenite): the HTTP
//! API's error answers, WebSocket sessions as presence, contact requests that are delivered
//! only live, HTTPS, and the binary's start line, exit codes and signal handling.
//!
//! Every wait on the server is an await on an event under a timeout, never a fixed sleep.

use std::{
    collections::VecDeque,
    path::{Path, PathBuf},
    time::Duration,
};

use dialtone_directory::{Config, Server};
use dialtone_proto::{
    DeviceId, Identifier, IdentityKey,
    directory::{
        ClientFrame, ContactEntry, EndpointInfo, ErrorBody, ErrorCode, PresenceState, Relation,
        Reply, Request, ServerFrame,
    },
    keys::{session_transcript, sign},
};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

mod support;
use support::{Keys, confirm_body, keys, now, start_body};

/// Any single await on the server gets this long.
const WAIT: Duration = Duration::from_secs(10);

struct Dir {
    srv: Server,
    base: String,
    outbox: PathBuf,
    http: reqwest::Client,
}

fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().no_proxy().build().unwrap()
}

async fn start(tmp: &Path, tweak: impl FnOnce(&mut Config)) -> Dir {
    let mut c = Config::default();
    c.listen = "127.0.0.1:0".parse().unwrap();
    c.data_dir = tmp.join("data");
    c.verify_outbox = Some(tmp.join("outbox"));
    tweak(&mut c);
    let srv = Server::bind(c).await.unwrap();
    Dir {
        base: srv.url().to_owned(),
        srv,
        outbox: tmp.join("outbox"),
        http: http_client(),
    }
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Answer {
    fn error(&self) -> (u16, &str) {
        (self.status, self.body["error"].as_str().unwrap_or("<none>"))
    }
}

async fn send(req: reqwest::RequestBuilder) -> Answer {
    let resp = tokio::time::timeout(WAIT, req.send())
        .await
        .expect("request timed out")
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("non-JSON body ({e}), status {status}: {text:?}"));
    Answer {
        status,
        headers,
        body,
    }
}

impl Dir {
    async fn post(&self, path: &str, body: Vec<u8>) -> Answer {
        send(
            self.http
                .post(format!("{}{path}", self.base))
                .header("content-type", "application/json")
                .body(body),
        )
        .await
    }

    async fn get(&self, path: &str) -> Answer {
        send(self.http.get(format!("{}{path}", self.base))).await
    }

    fn code(&self, id: &str) -> String {
        std::fs::read_to_string(self.outbox.join(id))
            .unwrap()
            .trim()
            .to_owned()
    }

    /// Registers `id` with the keys of `seed`, reading the code from the outbox.
    async fn register(&self, seed: u8, id: &str) -> (Keys, Value) {
        let k = keys(seed);
        let a = self
            .post("/v1/register/start", start_body(&k, id, now()))
            .await;
        assert_eq!(a.status, 202, "{}", a.body);
        assert_eq!(a.body["channel"], "outbox");
        let a = self
            .post("/v1/register/confirm", confirm_body(&k, id, &self.code(id)))
            .await;
        assert_eq!(a.status, 200, "{}", a.body);
        (k, a.body)
    }

    /// The session URL for a fresh, signed challenge.
    async fn session_url(&self, k: &Keys) -> String {
        let dev = DeviceId::from_signing_key(&k.device);
        let a = self
            .post(
                "/v1/session/challenge",
                serde_json::to_vec(&serde_json::json!({ "device_id": dev })).unwrap(),
            )
            .await;
        assert_eq!(a.status, 200, "{}", a.body);
        let hexc = a.body["challenge"].as_str().unwrap().to_owned();
        let mut c = [0u8; 32];
        hex::decode_to_slice(&hexc, &mut c).unwrap();
        let sig = sign(&k.device, &session_transcript(&c, &dev));
        format!(
            "{}/v1/session?device_id={dev}&challenge={hexc}&signature={sig}",
            self.base.replacen("http", "ws", 1)
        )
    }

    async fn connect(&self, k: &Keys) -> Ws {
        let url = self.session_url(k).await;
        let (stream, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .unwrap()
            .unwrap();
        let mut ws = Ws::new(stream);
        match ws.frame().await {
            Some(ServerFrame::Welcome {
                identity_key,
                device_id,
                heartbeat_secs,
                ..
            }) => {
                assert_eq!(identity_key, IdentityKey::from_signing_key(&k.identity));
                assert_eq!(device_id, DeviceId::from_signing_key(&k.device));
                assert!(heartbeat_secs >= 1);
            }
            other => panic!("expected welcome, got {other:?}"),
        }
        ws
    }
}

type Stream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One device's session, as a test client. A reader task reads all the time (so pings are
/// answered, as a live agent does) and forwards the frames.
struct Ws {
    sink: futures_util::stream::SplitSink<Stream, Message>,
    frames: tokio::sync::mpsc::UnboundedReceiver<ServerFrame>,
    reader: tokio::task::JoinHandle<()>,
    /// Pushed frames read while waiting for a reply.
    pushes: VecDeque<ServerFrame>,
    next_id: u64,
}

impl Drop for Ws {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Ws {
    fn new(stream: Stream) -> Self {
        let (sink, mut read) = stream.split();
        let (tx, frames) = tokio::sync::mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            while let Some(Ok(msg)) = read.next().await {
                match msg {
                    Message::Text(t) if tx.send(serde_json::from_str(&t).unwrap()).is_err() => {
                        return;
                    }
                    Message::Close(_) => return,
                    _ => {}
                }
            }
        });
        Self {
            sink,
            frames,
            reader,
            pushes: VecDeque::new(),
            next_id: 1,
        }
    }

    /// Stops reading (and so answering pings) while keeping the socket open, like an agent
    /// that was killed behind a link that stays up, or a cut-off network.
    fn freeze(&self) {
        self.reader.abort();
    }

    /// The next server frame, or `None` once the session is closed.
    async fn frame(&mut self) -> Option<ServerFrame> {
        tokio::time::timeout(WAIT, self.frames.recv())
            .await
            .expect("no frame from the directory in time")
    }

    async fn send_text(&mut self, text: String) {
        self.sink.send(Message::Text(text.into())).await.unwrap();
    }

    async fn call(&mut self, request: Request) -> Result<Reply, ErrorBody> {
        let id = self.next_id;
        self.next_id += 1;
        let frame = ClientFrame { id, request };
        self.send_text(serde_json::to_string(&frame).unwrap()).await;
        self.answer(id).await
    }

    async fn answer(&mut self, want: u64) -> Result<Reply, ErrorBody> {
        loop {
            match self.frame().await.expect("session closed") {
                ServerFrame::Reply { id, reply } if id == want => return Ok(reply),
                ServerFrame::Error { id, error } if id == want => return Err(error),
                push => self.pushes.push_back(push),
            }
        }
    }

    /// Waits for a pushed frame matching `pred`, skipping others.
    async fn push_where(&mut self, what: &str, pred: impl Fn(&ServerFrame) -> bool) -> ServerFrame {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(i) = self.pushes.iter().position(&pred) {
                return self.pushes.remove(i).unwrap();
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let f = tokio::time::timeout(left, self.frame())
                .await
                .unwrap_or_else(|_| panic!("no push: {what}; had {:?}", self.pushes))
                .unwrap_or_else(|| panic!("session closed while waiting for {what}"));
            self.pushes.push_back(f);
        }
    }

    /// Waits for a presence push about `who` in `state`.
    async fn presence(&mut self, who: &str, state: PresenceState) -> ContactEntry {
        let f = self
            .push_where(&format!("presence {who} {state:?}"), |f| {
                matches!(f, ServerFrame::Presence { contact }
                    if contact.identifier.as_str() == who && contact.presence.state == state)
            })
            .await;
        let ServerFrame::Presence { contact } = f else {
            unreachable!()
        };
        contact
    }

    async fn publish(&mut self, state: PresenceState, message: Option<&str>) {
        let r = self
            .call(Request::Publish {
                state,
                message: message.map(str::to_owned),
                endpoint: EndpointInfo {
                    addrs: vec!["192.0.2.7:4433".parse().unwrap()],
                    relay_url: None,
                },
            })
            .await;
        assert!(matches!(r, Ok(Reply::Done)), "{r:?}");
    }

    /// Waits until the directory ends the session.
    async fn closed(&mut self) {
        while self.frame().await.is_some() {}
    }
}

fn id(s: &str) -> Identifier {
    Identifier::parse(s).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_errors_are_json_with_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let d = start(tmp.path(), |_| {}).await;
    let k = keys(1);

    assert_eq!(d.get("/v1/health").await.body["status"], "ok");
    let info = d.get("/v1/info").await;
    assert_eq!(
        (info.status, info.body["protocol"].as_u64()),
        (200, Some(1))
    );

    // Malformed JSON, wrong shape, wrong content type, oversize.
    let a = d.post("/v1/register/start", b"{nope".to_vec()).await;
    assert_eq!(a.error(), (400, "bad_json"));
    assert!(
        a.body["message"].as_str().unwrap().contains("line 1"),
        "{}",
        a.body
    );
    let a = d
        .post(
            "/v1/register/start",
            br#"{"identifier":"a@b.com"}"#.to_vec(),
        )
        .await;
    assert_eq!(a.error(), (400, "bad_request"));
    let a = send(
        d.http
            .post(format!("{}/v1/register/start", d.base))
            .header("content-type", "text/plain")
            .body(start_body(&k, "alice@example.com", now())),
    )
    .await;
    assert_eq!(a.error(), (400, "bad_json"));
    let a = d.post("/v1/register/start", vec![b' '; 64 * 1024]).await;
    assert_eq!(a.error(), (413, "payload_too_large"));

    // Signature over another identifier, stale timestamp, foreign certificate.
    let mut v: Value = serde_json::from_slice(&start_body(&k, "alice@example.com", now())).unwrap();
    v["identifier"] = "mallory@example.com".into();
    let a = d
        .post("/v1/register/start", v.to_string().into_bytes())
        .await;
    assert_eq!(a.error(), (401, "bad_signature"));
    // A certificate for someone else's device: the identity key signed, but the device key
    // (which only its owner holds) did not. Device ids are public, so this must not pass.
    let mut v: Value = serde_json::from_slice(&start_body(&k, "alice@example.com", now())).unwrap();
    v["device_signature"] = v["signature"].clone();
    let a = d
        .post("/v1/register/start", v.to_string().into_bytes())
        .await;
    assert_eq!(a.error(), (401, "bad_signature"));
    assert!(
        a.body["message"].as_str().unwrap().contains("device"),
        "{}",
        a.body
    );
    let a = d
        .post(
            "/v1/register/start",
            start_body(&k, "alice@example.com", now() - 3600),
        )
        .await;
    assert_eq!(a.error(), (400, "stale_timestamp"));
    let a = d
        .post(
            "/v1/register/start",
            start_body(&k, "alice@example.com", now() + 3600),
        )
        .await;
    assert_eq!(a.error(), (400, "stale_timestamp"));

    // Confirm without a pending verification, then wrong codes until the attempt is void.
    let a = d
        .post(
            "/v1/register/confirm",
            confirm_body(&k, "alice@example.com", "123456"),
        )
        .await;
    assert_eq!(a.error(), (404, "no_pending_verification"));
    let a = d
        .post(
            "/v1/register/start",
            start_body(&k, "alice@example.com", now()),
        )
        .await;
    assert_eq!(a.status, 202, "{}", a.body);
    let code = d.code("alice@example.com");
    assert_eq!(code.len(), 6);
    assert!(code.bytes().all(|b| b.is_ascii_digit()));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.outbox.join("alice@example.com"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let wrong = if code == "000000" { "111111" } else { "000000" };
    // A bad signature on confirm is refused before the code is even looked at.
    let mut v: Value =
        serde_json::from_slice(&confirm_body(&k, "alice@example.com", wrong)).unwrap();
    v["code"] = code.clone().into();
    let a = d
        .post("/v1/register/confirm", v.to_string().into_bytes())
        .await;
    assert_eq!(a.error(), (401, "bad_signature"));
    for left in (1..=4).rev() {
        let a = d
            .post(
                "/v1/register/confirm",
                confirm_body(&k, "alice@example.com", wrong),
            )
            .await;
        assert_eq!(a.error(), (400, "wrong_code"));
        let msg = a.body["message"].as_str().unwrap();
        assert!(msg.contains(&format!("{left} attempt")), "{msg}");
    }
    let a = d
        .post(
            "/v1/register/confirm",
            confirm_body(&k, "alice@example.com", wrong),
        )
        .await;
    assert_eq!(a.error(), (429, "too_many_attempts"));
    let a = d
        .post(
            "/v1/register/confirm",
            confirm_body(&k, "alice@example.com", &code),
        )
        .await;
    assert_eq!(
        a.error(),
        (404, "no_pending_verification"),
        "the attempt is void"
    );

    // Per-identifier rate limit (burst 3): the fourth start in a row is refused.
    let mut refused = None;
    for _ in 0..4 {
        let a = d
            .post(
                "/v1/register/start",
                start_body(&k, "alice@example.com", now()),
            )
            .await;
        if a.status != 202 {
            refused = Some(a);
            break;
        }
    }
    let a = refused.expect("never rate limited");
    assert_eq!(a.error(), (429, "rate_limited"));
    let retry: u64 = a.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(a.body["retry_after_secs"].as_u64(), Some(retry));

    // Lookups, unknown routes and methods.
    let a = d.get("/v1/lookup/nobody@example.com").await;
    assert_eq!(a.error(), (404, "not_found"));
    let a = d.get("/v1/lookup/garbage").await;
    assert_eq!(a.error(), (400, "invalid_identifier"));
    let a = d.get("/v1/no-such-thing").await;
    assert_eq!(a.error(), (404, "not_found"));
    let a = send(d.http.delete(format!("{}/v1/register/start", d.base))).await;
    assert_eq!(a.status, 405);
    assert!(a.body["error"].is_string());
    let a = d.get("/.well-known/webfinger").await;
    assert_eq!(a.status, 400);
    let a = d
        .get("/.well-known/webfinger?resource=acct:nobody@example.com")
        .await;
    assert_eq!(a.error(), (404, "not_found"));
    let a = d
        .post(
            "/v1/session/challenge",
            serde_json::to_vec(&serde_json::json!({
                "device_id": DeviceId::from_signing_key(&keys(99).device)
            }))
            .unwrap(),
        )
        .await;
    assert_eq!(a.error(), (404, "unknown_device"));
    d.srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn challenges_are_single_use() {
    let tmp = tempfile::tempdir().unwrap();
    let d = start(tmp.path(), |_| {}).await;
    let (k, reg) = d.register(2, "bob@example.com").await;
    assert_eq!(reg["replaced_key"], false);

    // A replayed challenge and signature: the first use upgrades, the second is refused.
    let url = d.session_url(&k).await;
    let (mut first, _) = tokio_tungstenite::connect_async(url.clone()).await.unwrap();
    assert!(first.next().await.is_some(), "welcome");
    let http_url = url.replacen("ws", "http", 1);
    let a = send(d.http.get(&http_url)).await;
    assert_eq!(a.error(), (401, "challenge_invalid"));
    let msg = a.body["message"].as_str().unwrap();
    assert!(msg.contains("already used"), "{msg}");

    // A wrong signature does not use the challenge up (only the device's key can), so no one
    // else can burn a device's challenges; the right answer then uses it, once.
    let url = d.session_url(&k).await;
    let (base, _) = url.split_once("&signature=").unwrap();
    let bad = format!("{}&signature={}", base, "00".repeat(64)).replacen("ws", "http", 1);
    let a = send(d.http.get(&bad)).await;
    assert_eq!(a.error(), (401, "bad_signature"));
    let a = send(d.http.get(url.replacen("ws", "http", 1))).await;
    assert_eq!(
        a.error(),
        (400, "bad_request"),
        "valid, but no WebSocket upgrade"
    );
    let a = send(d.http.get(url.replacen("ws", "http", 1))).await;
    assert_eq!(a.error(), (401, "challenge_invalid"));
    // Another device's challenge does not open this device's session.
    let (k2, _) = d.register(3, "carol@example.com").await;
    let other = d.session_url(&k2).await;
    let (_, other_challenge) = other.split_once("challenge=").unwrap();
    let other_challenge = other_challenge.split('&').next().unwrap();
    let (_, mine) = url.split_once("challenge=").unwrap();
    let mine = mine.split('&').next().unwrap();
    let swapped = url.replace(mine, other_challenge).replacen("ws", "http", 1);
    let a = send(d.http.get(&swapped)).await;
    assert_eq!(a.error(), (401, "challenge_invalid"));

    // A challenge never issued, and a malformed one.
    let a = send(d.http.get(format!(
        "{}&signature={}",
        base.replacen("ws", "http", 1).replace("challenge=", "challenge=ff"),
        "00".repeat(64)
    )))
    .await;
    assert_eq!(a.error(), (401, "challenge_invalid"));
    drop(first);

    // Without any verification channel, registering explains what the operator must do.
    let tmp2 = tempfile::tempdir().unwrap();
    let bare = start(tmp2.path(), |c| c.verify_outbox = None).await;
    let a = bare
        .post(
            "/v1/register/start",
            start_body(&keys(3), "carol@example.com", now()),
        )
        .await;
    assert_eq!(a.error().1, "delivery_failed");
    assert!((400..600).contains(&a.status));
    assert!(
        a.body["message"].as_str().unwrap().contains("operator"),
        "{}",
        a.body
    );
    bare.srv.shutdown().await;
    d.srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codes_expire() {
    let tmp = tempfile::tempdir().unwrap();
    let d = start(tmp.path(), |c| c.verification.code_ttl = Duration::ZERO).await;
    let k = keys(4);
    let a = d
        .post(
            "/v1/register/start",
            start_body(&k, "dave@example.com", now()),
        )
        .await;
    assert_eq!(a.status, 202);
    // Expiry has one-second resolution: wait for the clock's next second (bounded).
    let t0 = now();
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while now() <= t0 {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let a = d
        .post(
            "/v1/register/confirm",
            confirm_body(&k, "dave@example.com", &d.code("dave@example.com")),
        )
        .await;
    assert_eq!(a.error(), (410, "code_expired"));
    d.srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_carry_presence_and_live_contact_requests() {
    let tmp = tempfile::tempdir().unwrap();
    let d = start(tmp.path(), |c| {
        c.session.heartbeat = Duration::from_millis(200);
        c.session.timeout = Duration::from_secs(1);
        // A session that times out keeps its presence this long (issue 11: no flap on a
        // short cut; tests/login.rs covers the resume).
        c.session.grace = Duration::from_secs(1);
    })
    .await;
    let (ka, _) = d.register(11, "alice@example.com").await;
    let (kb, _) = d.register(12, "bob@example.com").await;
    let (kc, _) = d.register(13, "carol@example.com").await;
    let (alice_id, bob_id) = (id("alice@example.com"), id("bob@example.com"));

    let mut alice = d.connect(&ka).await;
    assert_eq!(d.srv.sessions(), 1);
    assert!(matches!(alice.call(Request::Ping).await, Ok(Reply::Pong)));

    // A frame that is not JSON gets an error with id 0 and the session stays.
    alice.send_text("{not json".into()).await;
    match alice.frame().await {
        Some(ServerFrame::Error { id: 0, error }) => assert_eq!(error.error, ErrorCode::BadJson),
        other => panic!("{other:?}"),
    }
    assert!(matches!(alice.call(Request::Ping).await, Ok(Reply::Pong)));

    // Publishing checks its input.
    let e = alice
        .call(Request::Publish {
            state: PresenceState::Offline,
            message: None,
            endpoint: EndpointInfo::default(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.error, ErrorCode::BadRequest);
    let e = alice
        .call(Request::Publish {
            state: PresenceState::Away,
            message: Some("x".repeat(1000)),
            endpoint: EndpointInfo::default(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.error, ErrorCode::BadRequest);
    alice.publish(PresenceState::Online, None).await;

    // Contact requests: to oneself and to no one are refused; to someone offline the answer
    // is the one an online person gets (no presence for strangers), and nothing reaches them.
    let e = alice
        .call(Request::ContactRequest {
            to: alice_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.error, ErrorCode::BadRequest);
    let e = alice
        .call(Request::ContactRequest {
            to: id("nobody@example.com"),
        })
        .await
        .unwrap_err();
    assert_eq!(e.error, ErrorCode::NotFound);
    assert!(matches!(
        alice
            .call(Request::ContactRequest { to: bob_id.clone() })
            .await,
        Ok(Reply::Done)
    ));

    // Bob comes online: the request reaches him live.
    let mut bob = d.connect(&kb).await;
    bob.publish(PresenceState::Online, Some("hi")).await;
    assert!(matches!(
        alice
            .call(Request::ContactRequest { to: bob_id.clone() })
            .await,
        Ok(Reply::Done)
    ));
    let f = bob
        .push_where("contact request", |f| {
            matches!(f, ServerFrame::ContactRequest { .. })
        })
        .await;
    let ServerFrame::ContactRequest { from, identity_key } = f else {
        unreachable!()
    };
    assert_eq!(from, alice_id);
    assert_eq!(identity_key, IdentityKey::from_signing_key(&ka.identity));

    // Before acceptance, neither sees the other's presence or addresses.
    let Ok(Reply::Lookup { contact }) = alice
        .call(Request::Lookup {
            identifier: bob_id.clone(),
        })
        .await
    else {
        panic!("lookup failed")
    };
    assert_eq!(contact.relation, Relation::Outgoing);
    assert_eq!(contact.presence.state, PresenceState::Offline);
    assert!(contact.presence.devices.is_empty());

    // Bob accepts: both get each other's presence at once.
    assert!(matches!(
        bob.call(Request::ContactRespond {
            from: alice_id.clone(),
            accept: true
        })
        .await,
        Ok(Reply::Done)
    ));
    let seen = alice
        .presence("bob@example.com", PresenceState::Online)
        .await;
    assert_eq!(seen.relation, Relation::Accepted);
    assert_eq!(seen.presence.message.as_deref(), Some("hi"));
    assert_eq!(seen.presence.devices.len(), 1);
    let seen = bob
        .presence("alice@example.com", PresenceState::Online)
        .await;
    assert_eq!(
        seen.presence.devices[0].endpoint.addrs,
        ["192.0.2.7:4433".parse().unwrap()]
    );
    assert_eq!(
        seen.presence.devices[0].cert.device_id,
        DeviceId::from_signing_key(&ka.device)
    );

    // Alice goes away, then invisible (offline with no devices), then online again.
    alice.publish(PresenceState::Away, Some("lunch")).await;
    let seen = bob.presence("alice@example.com", PresenceState::Away).await;
    assert_eq!(seen.presence.message.as_deref(), Some("lunch"));
    alice.publish(PresenceState::Invisible, None).await;
    let seen = bob
        .presence("alice@example.com", PresenceState::Offline)
        .await;
    assert!(seen.presence.devices.is_empty(), "{seen:?}");
    alice.publish(PresenceState::Online, None).await;
    bob.presence("alice@example.com", PresenceState::Online)
        .await;

    let Ok(Reply::Contacts { contacts }) = bob.call(Request::Contacts).await else {
        panic!("contacts failed")
    };
    assert_eq!(contacts.len(), 1);
    assert_eq!(
        (contacts[0].relation, contacts[0].presence.state),
        (Relation::Accepted, PresenceState::Online)
    );

    // Carol is no contact: she sees keys only. Bob blocks her; to her he looks offline.
    let mut carol = d.connect(&kc).await;
    carol.publish(PresenceState::Online, None).await;
    let Ok(Reply::Lookup { contact }) = carol
        .call(Request::Lookup {
            identifier: alice_id.clone(),
        })
        .await
    else {
        panic!("lookup failed")
    };
    assert_eq!(
        (contact.relation, contact.presence.state),
        (Relation::None, PresenceState::Offline)
    );
    assert!(contact.presence.devices.is_empty());
    assert!(matches!(
        bob.call(Request::Block {
            identifier: id("carol@example.com")
        })
        .await,
        Ok(Reply::Done)
    ));
    // Blocked: carol is told what anyone is told, and bob gets nothing.
    assert!(matches!(
        carol
            .call(Request::ContactRequest { to: bob_id.clone() })
            .await,
        Ok(Reply::Done)
    ));
    // A frame over the limit ends the session.
    carol.send_text("x".repeat(70 * 1024)).await;
    carol.closed().await;

    // Alice's connection drops: bob sees her offline.
    drop(alice);
    bob.presence("alice@example.com", PresenceState::Offline)
        .await;

    // Alice reconnects; then her agent stops answering pings (as if killed or cut off) while
    // the socket stays open: the session times out and, after the grace period, bob sees her
    // offline.
    let mut alice = d.connect(&ka).await;
    alice.publish(PresenceState::Busy, None).await;
    let alice_sessions = d.srv.sessions();
    bob.presence("alice@example.com", PresenceState::Busy).await;
    alice.freeze();
    let t0 = std::time::Instant::now();
    bob.presence("alice@example.com", PresenceState::Offline)
        .await;
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());

    assert_eq!(d.srv.sessions(), alice_sessions - 1);
    drop(alice);

    // A second session of the same device replaces the first.
    let mut a1 = d.connect(&ka).await;
    a1.publish(PresenceState::Online, None).await;
    bob.presence("alice@example.com", PresenceState::Online)
        .await;
    let mut a2 = d.connect(&ka).await;
    a1.closed().await;
    assert!(matches!(a2.call(Request::Ping).await, Ok(Reply::Pong)));

    // Alice registers a new identity key: her old device's session ends, bob keeps her as a
    // contact and is told her new key.
    let (ka2, reg) = d.register(21, "alice@example.com").await;
    assert_eq!(reg["replaced_key"], true);
    a2.closed().await;
    let new_key = IdentityKey::from_signing_key(&ka2.identity);
    let f = bob
        .push_where("key change", |f| {
            matches!(f, ServerFrame::ContactChanged { contact } if contact.identity_key == new_key)
        })
        .await;
    let ServerFrame::ContactChanged { contact } = f else {
        unreachable!()
    };
    assert_eq!(contact.relation, Relation::Accepted);
    let a = d.get("/v1/lookup/alice@example.com").await;
    assert_eq!(a.body["identity_key"], new_key.to_string());
    // A public lookup shows no device certificates (docs/privacy.md).
    assert_eq!(a.body["devices"].as_array().unwrap().len(), 0);

    // Removing a contact tells the other side.
    let mut alice = d.connect(&ka2).await;
    assert!(matches!(
        alice
            .call(Request::ContactRemove {
                identifier: bob_id.clone()
            })
            .await,
        Ok(Reply::Done)
    ));
    bob.push_where("removal", |f| {
        matches!(f, ServerFrame::ContactChanged { contact }
            if contact.identifier == alice_id && contact.relation == Relation::None)
    })
    .await;
    d.srv.shutdown().await;
    // Shutdown closes the remaining sessions.
    bob.closed().await;
    alice.closed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_requests_and_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let d = start(tmp.path(), |_| {}).await;
    let (ka, _) = d.register(31, "erin@example.com").await;
    let (kb, _) = d.register(32, "+14155550100").await;
    let mut a = d.connect(&ka).await;
    let mut b = d.connect(&kb).await;
    b.publish(PresenceState::Online, None).await;
    a.publish(PresenceState::Online, None).await;
    let phone = id("+14155550100");
    a.call(Request::ContactRequest { to: phone.clone() })
        .await
        .unwrap();
    b.push_where("request", |f| {
        matches!(f, ServerFrame::ContactRequest { .. })
    })
    .await;
    // Responding to a request that does not exist is a conflict.
    let e = a
        .call(Request::ContactRespond {
            from: phone.clone(),
            accept: true,
        })
        .await
        .unwrap_err();
    assert_eq!(e.error, ErrorCode::Conflict);
    b.call(Request::ContactRespond {
        from: id("erin@example.com"),
        accept: false,
    })
    .await
    .unwrap();
    a.push_where("rejection", |f| {
        matches!(f, ServerFrame::ContactChanged { contact } if contact.relation == Relation::None)
    })
    .await;
    // Ask again and accept, then restart: the contact survives, presence does not.
    a.call(Request::ContactRequest { to: phone.clone() })
        .await
        .unwrap();
    b.push_where("request", |f| {
        matches!(f, ServerFrame::ContactRequest { .. })
    })
    .await;
    b.call(Request::ContactRespond {
        from: id("erin@example.com"),
        accept: true,
    })
    .await
    .unwrap();
    a.presence("+14155550100", PresenceState::Online).await;
    d.srv.shutdown().await;
    a.closed().await;
    b.closed().await;

    let d = start(tmp.path(), |_| {}).await;
    let mut a = d.connect(&ka).await;
    let Ok(Reply::Contacts { contacts }) = a.call(Request::Contacts).await else {
        panic!("contacts failed")
    };
    assert_eq!(contacts.len(), 1);
    assert_eq!(contacts[0].identifier, phone);
    assert_eq!(contacts[0].relation, Relation::Accepted);
    assert_eq!(contacts[0].presence.state, PresenceState::Offline);
    let mut b = d.connect(&kb).await;
    b.publish(PresenceState::Away, None).await;
    a.presence("+14155550100", PresenceState::Away).await;
    d.srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_https_with_the_configured_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(tmp.path().join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(tmp.path().join("key.pem"), key.serialize_pem()).unwrap();
    let t = tmp.path().to_path_buf();
    let d = start(tmp.path(), move |c| {
        c.tls = Some(dialtone_directory::config::TlsConfig {
            cert: t.join("cert.pem"),
            key: t.join("key.pem"),
        });
    })
    .await;
    assert!(d.base.starts_with("https://127.0.0.1:"), "{}", d.base);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .no_proxy()
        .build()
        .unwrap();
    let a = send(http.get(format!("{}/v1/health", d.base))).await;
    assert_eq!((a.status, a.body["status"].as_str()), (200, Some("ok")));
    let a = send(http.get(format!("{}/v1/lookup/nobody@example.com", d.base))).await;
    assert_eq!(a.error(), (404, "not_found"));
    d.srv.shutdown().await;

    // Unusable TLS files are refused at start.
    let mut c = Config::default();
    c.listen = "127.0.0.1:0".parse().unwrap();
    c.data_dir = tmp.path().join("data2");
    c.tls = Some(dialtone_directory::config::TlsConfig {
        cert: tmp.path().join("missing.pem"),
        key: tmp.path().join("key.pem"),
    });
    assert!(Server::bind(c).await.is_err());
}

/// The binary: one `listening on URL` line on stdout, a clean exit on SIGTERM, exit code 2
/// for plain HTTP off loopback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_prints_its_url_and_stops_on_sigterm() {
    use std::{
        io::{BufRead, BufReader},
        process::{Command, Stdio},
    };
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("nested/data");
    let config = tmp.path().join("dir.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:1\"\ndata_dir = {:?}\n[session]\nheartbeat = \"1s\"\n",
            data.display().to_string()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_dialtone-directory"))
        .args(["--config"])
        .arg(&config)
        .args(["--listen", "127.0.0.1:0", "--verify-outbox"])
        .arg(tmp.path().join("outbox"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let line = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).unwrap();
            line
        }),
    )
    .await
    .expect("no start line")
    .unwrap();
    let url = line
        .strip_suffix('\n')
        .and_then(|l| l.strip_prefix("listening on "))
        .unwrap_or_else(|| panic!("unexpected start line {line:?}"));
    let port: u16 = url
        .strip_prefix("http://127.0.0.1:")
        .unwrap_or_else(|| panic!("{url}"))
        .parse()
        .unwrap();
    assert_ne!(port, 0);
    assert!(data.join("directory.sqlite3").exists());
    let a = send(http_client().get(format!("{url}/v1/info"))).await;
    assert_eq!(a.body["heartbeat_secs"], 1, "the config file was read");

    let pid = i32::try_from(child.id()).unwrap();
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = tokio::time::timeout(
        Duration::from_secs(15),
        tokio::task::spawn_blocking(move || child.wait().unwrap()),
    )
    .await
    .expect("did not stop on SIGTERM")
    .unwrap();
    assert!(status.success(), "{status:?}");

    let out = Command::new(env!("CARGO_BIN_EXE_dialtone-directory"))
        .args(["--listen", "0.0.0.0:0", "--data"])
        .arg(tmp.path().join("d2"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--insecure-http"), "{err}");
}

/// Issue 4: the relay beside the directory. `/v1/info` names it with the host the client used
/// (so an IPv6 client gets an IPv6 URL), the relay answers, and plain HTTP is refused off
/// loopback as for the directory itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_is_announced_in_info_and_serves() {
    let tmp = tempfile::tempdir().unwrap();
    let d = start(tmp.path(), |c| {
        c.relay = Some(dialtone_directory::config::RelaySection {
            listen: "127.0.0.1:0".parse().unwrap(),
            public_url: None,
        });
    })
    .await;
    let relay = d.srv.relay_addr().expect("relay running");
    let info = d.get("/v1/info").await;
    assert_eq!(
        info.body["relay_url"],
        format!("http://127.0.0.1:{}", relay.port()),
        "{}",
        info.body
    );
    assert_eq!(info.body["echo_ports"].as_array().map(Vec::len), Some(2));
    // Without TLS there is no QUIC address discovery to announce.
    assert!(info.body.get("relay_quic_port").is_none(), "{}", info.body);
    // The relay itself answers its health check.
    let health = tokio::time::timeout(
        WAIT,
        http_client().get(format!("http://{relay}/healthz")).send(),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(health.status().is_success(), "{}", health.status());
    // A Host header with a name gives a URL with that name.
    let named = send(
        http_client()
            .get(format!("{}/v1/info", d.base))
            .header("host", "directory.test:443"),
    )
    .await;
    assert_eq!(
        named.body["relay_url"],
        format!("http://directory.test:{}", relay.port())
    );

    // Plain HTTP relay on a public address: refused with the same advice as the directory.
    let mut c = Config::default();
    c.listen = "127.0.0.1:0".parse().unwrap();
    c.data_dir = tmp.path().join("data2");
    c.relay = Some(dialtone_directory::config::RelaySection {
        listen: "0.0.0.0:0".parse().unwrap(),
        public_url: None,
    });
    let err = Server::bind(c).await.unwrap_err().to_string();
    assert!(err.contains("--tls-cert"), "{err}");
}

/// A confirmation of `id` for the keys `k` with `code`, a device list naming the device
/// (`registration_lock` as given) and `pin`.
fn confirm_locked_body(k: &Keys, id: &str, code: &str, lock: bool, pin: Option<&str>) -> Vec<u8> {
    use dialtone_proto::devices::{DeviceEntry, DeviceList, DeviceListContent};
    let mut req: dialtone_proto::directory::RegisterConfirm =
        serde_json::from_slice(&confirm_body(k, id, code)).unwrap();
    let list = DeviceList::sign(
        &k.identity,
        DeviceListContent {
            identifier: Identifier::parse(id).unwrap(),
            version: 1,
            devices: vec![DeviceEntry {
                device_id: DeviceId::from_signing_key(&k.device),
                name: k.cert.name.clone(),
                added_at: now(),
            }],
            registration_lock: lock,
            unlocked_with_pin: false,
        },
    )
    .unwrap();
    req.device_list = Some(list);
    req.pin = pin.map(str::to_owned);
    serde_json::to_vec(&req).unwrap()
}

impl Dir {
    /// Registers `id` with the keys of `seed` and a registration lock with `pin`.
    async fn register_locked(&self, seed: u8, id: &str, pin: &str) -> Keys {
        let k = keys(seed);
        let a = self
            .post("/v1/register/start", start_body(&k, id, now()))
            .await;
        assert_eq!(a.status, 202, "{}", a.body);
        let body = confirm_locked_body(&k, id, &self.code(id), true, Some(pin));
        let a = self.post("/v1/register/confirm", body).await;
        assert_eq!(a.status, 200, "{}", a.body);
        k
    }

    /// Starts a registration of `id` with the keys of `seed` and returns them and the code.
    async fn start_registration(&self, seed: u8, id: &str) -> (Keys, String) {
        let k = keys(seed);
        let a = self
            .post("/v1/register/start", start_body(&k, id, now()))
            .await;
        assert_eq!(a.status, 202, "{}", a.body);
        let code = self.code(id);
        (k, code)
    }
}

/// Issue 3: the failure count of registration-lock PINs was read, checked and raised in
/// separate steps around the Argon2 check, so concurrent wrong guesses could all pass the
/// check and more than `max_pin_attempts` PINs were tried. Now each guess takes an attempt in
/// one SQL statement before its PIN is checked. Many concurrent wrong guesses are fired at a
/// real directory; every checked guess answers `wrong_pin` and every other one
/// `too_many_attempts`, so the count of `wrong_pin` answers is the count of PINs checked. The
/// assertion holds however the requests interleave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue3_concurrent_pin_guesses_never_pass_the_limit() {
    const MAX: u32 = 3;
    const GUESSES: usize = 24;
    let tmp = tempfile::tempdir().unwrap();
    let d = start(tmp.path(), |c| {
        c.verification.max_pin_attempts = MAX;
        c.verification.max_attempts = 1000;
        c.limits.confirm_per_ip = dialtone_directory::config::Limit {
            burst: 1000,
            every: Duration::from_millis(1),
        };
    })
    .await;
    let alice = "alice@example.com";
    d.register_locked(1, alice, "2468").await;
    let (thief, code) = d.start_registration(2, alice).await;

    let guesses = (0..GUESSES).map(|i| {
        let body = confirm_locked_body(&thief, alice, &code, false, Some(&format!("{:04}", i)));
        let req = d
            .http
            .post(format!("{}/v1/register/confirm", d.base))
            .header("content-type", "application/json")
            .body(body);
        tokio::spawn(send(req))
    });
    let mut wrong = 0;
    let mut too_many = 0;
    for g in futures_util::future::join_all(guesses).await {
        match g.unwrap().error() {
            (403, "wrong_pin") => wrong += 1,
            (429, "too_many_attempts") => too_many += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert_eq!(wrong, MAX, "PINs checked");
    assert_eq!(too_many, GUESSES as u32 - MAX);
    // The right PIN now is refused too: the lock holds until it lapses.
    let a = d
        .post(
            "/v1/register/confirm",
            confirm_locked_body(&thief, alice, &code, false, Some("2468")),
        )
        .await;
    assert_eq!(a.error(), (429, "too_many_attempts"));
    d.srv.shutdown().await;
}

/// Issue 3: the registration lock lapses `lock_lapse` after the account's devices were last
/// online, but `last_seen` was written only when a session opened: a device online for
/// longer than the lapse left it lapsed the moment it went offline. Now a session writes it
/// as it closes. The test makes the session look older than the lapse by writing an old
/// `last_seen` into the directory's database while the session is open, closes the session,
/// and shows that a re-verification with another key still meets the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue3_the_lock_counts_from_when_the_last_session_closed() {
    let tmp = tempfile::tempdir().unwrap();
    let d = start(tmp.path(), |_| {}).await;
    let alice = "alice@example.com";
    let k = d.register_locked(1, alice, "2468").await;
    let mut ws = d.connect(&k).await;
    let db = rusqlite::Connection::open(tmp.path().join("data/directory.sqlite3")).unwrap();
    db.busy_timeout(WAIT).unwrap();
    let eight_days_ago = now() - 8 * 24 * 3600;
    let last_seen = || -> u64 {
        db.query_row(
            "SELECT last_seen FROM accounts WHERE identifier = ?1",
            [alice],
            |r| r.get(0),
        )
        .unwrap()
    };
    db.execute(
        "UPDATE accounts SET last_seen = ?1 WHERE identifier = ?2",
        rusqlite::params![eight_days_ago, alice],
    )
    .unwrap();
    assert_eq!(last_seen(), eight_days_ago);

    // The device goes offline; the directory has written `last_seen` before its close frame.
    ws.sink.send(Message::Close(None)).await.unwrap();
    ws.closed().await;
    assert!(last_seen() + 60 > now(), "last_seen written at the close");

    let (thief, code) = d.start_registration(2, alice).await;
    let a = d
        .post(
            "/v1/register/confirm",
            confirm_locked_body(&thief, alice, &code, false, None),
        )
        .await;
    assert_eq!(a.error(), (403, "registration_locked"), "{}", a.body);
    d.srv.shutdown().await;
}

/// Issue 3: a device-link rendezvous was taken by whoever named its 4-character offer id, so
/// sweeping the 20-bit space used up other people's rendezvous (no one could link) and told
/// who was linking. Now it takes the code's rendezvous token too: an unknown offer and a wrong
/// token get the same answer and leave the offer in place; only the right token takes it,
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue3_guessing_link_offers_takes_no_rendezvous() {
    use dialtone_proto::devices::LinkCode;
    let tmp = tempfile::tempdir().unwrap();
    let d = start(tmp.path(), |_| {}).await;
    let (k, _) = d.register(1, "alice@example.com").await;
    let mut ws = d.connect(&k).await;
    let code = LinkCode::parse("K7QM-AAAA-BBBB-CCCC").unwrap();
    let r = ws
        .call(Request::LinkOffer {
            offer: code.offer().to_owned(),
            token: code.rendezvous_token(),
            endpoint: EndpointInfo {
                addrs: vec!["192.0.2.7:4433".parse().unwrap()],
                relay_url: None,
            },
        })
        .await;
    assert!(matches!(r, Ok(Reply::Done)), "{r:?}");

    let take = |offer: &str, token: String| {
        serde_json::to_vec(&serde_json::json!({ "offer": offer, "token": token })).unwrap()
    };
    let right = hex::encode(code.rendezvous_token().0);
    let wrong_code = LinkCode::parse("K7QM-AAAA-BBBB-CCCD").unwrap();
    let wrong = hex::encode(wrong_code.rendezvous_token().0);

    // A wrong token and an unknown offer: the same answer, and the offer stays.
    let a = d.post("/v1/link", take("K7QM", wrong.clone())).await;
    assert_eq!(a.error(), (404, "not_found"));
    let unknown = d.post("/v1/link", take("ZZZZ", right.clone())).await;
    assert_eq!((unknown.status, &unknown.body), (a.status, &a.body));
    let a = d.post("/v1/link", take("K7QM", "00".repeat(3))).await;
    assert_eq!(a.error(), (400, "bad_request"), "a malformed token");

    // The right token takes it (the offer id in any case), once.
    let a = d.post("/v1/link", take("k7qm", right.clone())).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["identifier"], "alice@example.com");
    assert_eq!(
        a.body["device_id"],
        serde_json::json!(DeviceId::from_signing_key(&k.device))
    );
    let a = d.post("/v1/link", take("K7QM", right)).await;
    assert_eq!(a.error(), (404, "not_found"));
    drop(ws);
    d.srv.shutdown().await;
}

// ---- docs/privacy.md: what a stranger can learn ----

/// A contact request's answer, and everything the requester sees afterwards, are the same
/// whether the person asked is online, offline, invisible, or has blocked the requester:
/// today's main answered `offline` to all but the first, so anyone with an account could
/// probe whether any registered person was online. Only the online, unblocking person gets
/// the request; the others get nothing, then or later.
#[tokio::test]
async fn privacy_a_stranger_learns_no_presence_from_contact_requests() {
    let tmp = tempfile::tempdir().unwrap();
    let d = start(tmp.path(), |_| {}).await;
    let (ks, _) = d.register(60, "stranger@example.com").await;
    let (kon, _) = d.register(61, "on@example.com").await;
    let (koff, _) = d.register(62, "off@example.com").await;
    let (kblk, _) = d.register(63, "blocks@example.com").await;
    let (kinv, _) = d.register(64, "invisible@example.com").await;
    let mut on = d.connect(&kon).await;
    on.publish(PresenceState::Online, Some("here")).await;
    let mut blocks = d.connect(&kblk).await;
    blocks.publish(PresenceState::Online, None).await;
    assert!(matches!(
        blocks
            .call(Request::Block {
                identifier: id("stranger@example.com")
            })
            .await,
        Ok(Reply::Done)
    ));
    let mut invisible = d.connect(&kinv).await;
    invisible.publish(PresenceState::Invisible, None).await;

    let mut stranger = d.connect(&ks).await;
    let targets = [
        "on@example.com",
        "off@example.com",
        "blocks@example.com",
        "invisible@example.com",
    ];
    let mut seen = Vec::new();
    for t in targets {
        let reply = stranger.call(Request::ContactRequest { to: id(t) }).await;
        let Ok(Reply::Lookup { contact }) =
            stranger.call(Request::Lookup { identifier: id(t) }).await
        else {
            panic!("lookup of {t} failed")
        };
        // Everything the stranger got, but the name: the same for the four.
        seen.push((
            format!("{reply:?}"),
            contact.relation,
            serde_json::to_value(&contact.presence).unwrap(),
        ));
    }
    assert!(seen.iter().all(|s| s == &seen[0]), "{seen:#?}");
    assert_eq!(seen[0].0, format!("{:?}", Ok::<_, ErrorBody>(Reply::Done)));
    assert_eq!(seen[0].1, Relation::Outgoing);
    let Ok(Reply::Contacts { contacts }) = stranger.call(Request::Contacts).await else {
        panic!("contacts failed")
    };
    assert_eq!(contacts.len(), 4);
    assert!(
        contacts
            .iter()
            .all(|c| c.relation == Relation::Outgoing && c.presence == contacts[0].presence),
        "{contacts:#?}"
    );

    // The online person got it live; the invisible one too (it is online, only hidden).
    on.push_where("contact request", |f| {
        matches!(f, ServerFrame::ContactRequest { from, .. } if from.as_str() == "stranger@example.com")
    })
    .await;
    // Whoever was offline or blocks the stranger has nothing of it, then or later.
    let mut off = d.connect(&koff).await;
    off.publish(PresenceState::Online, None).await;
    for w in [&mut off, &mut blocks] {
        let Ok(Reply::Contacts { contacts }) = w.call(Request::Contacts).await else {
            panic!("contacts failed")
        };
        assert!(
            contacts.iter().all(|c| c.relation != Relation::Incoming),
            "{contacts:?}"
        );
        assert!(
            !w.pushes
                .iter()
                .any(|f| matches!(f, ServerFrame::ContactRequest { .. })),
            "{:?}",
            w.pushes
        );
    }
}

/// Contact requests are limited per requesting account, over all its sessions: a new
/// session does not bring a new budget.
#[tokio::test]
async fn privacy_contact_requests_are_rate_limited_per_requester() {
    let tmp = tempfile::tempdir().unwrap();
    let d = start(tmp.path(), |c| {
        c.limits.contact_requests_per_account = dialtone_directory::config::Limit {
            burst: 3,
            every: Duration::from_secs(3600),
        };
    })
    .await;
    let (ks, _) = d.register(70, "sweeper@example.com").await;
    for i in 0..4u8 {
        d.register(71 + i, &format!("p{i}@example.com")).await;
    }
    let mut s = d.connect(&ks).await;
    for i in 0..3 {
        let r = s
            .call(Request::ContactRequest {
                to: id(&format!("p{i}@example.com")),
            })
            .await;
        assert!(matches!(r, Ok(Reply::Done)), "{r:?}");
    }
    let e = s
        .call(Request::ContactRequest {
            to: id("p3@example.com"),
        })
        .await
        .unwrap_err();
    assert_eq!(e.error, ErrorCode::RateLimited);
    assert!(e.retry_after_secs.is_some_and(|s| s >= 1), "{e:?}");
    // Another session of the same account has no fresh budget.
    drop(s);
    let mut s = d.connect(&ks).await;
    let e = s
        .call(Request::ContactRequest {
            to: id("p3@example.com"),
        })
        .await
        .unwrap_err();
    assert_eq!(e.error, ErrorCode::RateLimited);
    // Other requests are not limited by it.
    assert!(matches!(
        s.call(Request::Contacts).await,
        Ok(Reply::Contacts { .. })
    ));
}

/// `/v1/lookup` over anonymous HTTP shows what adding a contact needs (the identity key)
/// and the signed list (public in the transparency log anyway): no device certificates, no
/// presence, no addresses, however online the person is.
#[tokio::test]
async fn privacy_public_lookup_shows_the_key_and_no_devices_or_presence() {
    let tmp = tempfile::tempdir().unwrap();
    let d = start(tmp.path(), |_| {}).await;
    let (k, _) = d.register(80, "open@example.com").await;
    let mut s = d.connect(&k).await;
    s.publish(PresenceState::Online, Some("at my desk")).await;
    let a = d.get("/v1/lookup/open@example.com").await;
    assert_eq!(a.status, 200, "{}", a.body);
    let mut keys: Vec<&str> = a
        .body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    // `device_list` appears only once the person publishes one (not here).
    assert_eq!(
        keys,
        ["devices", "identifier", "identity_key"],
        "{}",
        a.body
    );
    assert_eq!(a.body["devices"], serde_json::json!([]));
    assert_eq!(
        a.body["identity_key"],
        serde_json::to_value(IdentityKey::from_signing_key(&k.identity)).unwrap()
    );
    let text = a.body.to_string();
    assert!(!text.contains("192.0.2.7"), "{text}");
    assert!(!text.contains("at my desk"), "{text}");
    // Unregistered: the same 404 as ever (registration is public: a key directory answers
    // whether it has a key).
    assert_eq!(d.get("/v1/lookup/nobody@example.com").await.status, 404);
}
