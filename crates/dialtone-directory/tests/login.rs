//! The one-connection login (the challenge over the WebSocket itself) and the grace period of
//! a session lost silently (issue 11, points 6 and 7), against the real server over loopback.
//!
//! People are provisioned straight into the data folder (as the load generator does) with
//! each other as accepted contacts; a watcher's session tells what their contacts are shown.

use std::{path::Path, time::Duration};

use dialtone_directory::{
    Config, Server,
    provision::{Person, provision},
};
use dialtone_proto::{
    DeviceCertificate, DeviceId, Identifier,
    directory::{ClientFrame, EndpointInfo, PresenceState, Request, ServerFrame, SessionLogin},
    keys::{session_transcript, sign},
};
use ed25519_dalek::SigningKey;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const WAIT: Duration = Duration::from_secs(10);

fn key(i: u8, what: u8) -> SigningKey {
    SigningKey::from_bytes(&[i.wrapping_mul(31).wrapping_add(what); 32])
}

/// Two people, 0 and 1, accepted contacts; returns their device keys.
fn people(data: &Path) -> Vec<SigningKey> {
    let mut persons = Vec::new();
    let mut devices = Vec::new();
    for i in 0..2u8 {
        let id = key(i, 1);
        let dev = key(i, 2);
        let cert =
            DeviceCertificate::issue(&id, DeviceId::from_signing_key(&dev), "test", 1_700_000_000)
                .unwrap();
        persons.push(Person {
            identifier: Identifier::parse(&format!("p{i}@login.test")).unwrap(),
            device: cert,
        });
        devices.push(dev);
    }
    provision(data, &persons, &[(0, 1)]).unwrap();
    devices
}

async fn start(tmp: &Path, tweak: impl FnOnce(&mut Config)) -> Server {
    let mut c = Config::default();
    c.listen = "127.0.0.1:0".parse().unwrap();
    c.data_dir = tmp.join("data");
    c.verify_outbox = Some(tmp.join("outbox"));
    tweak(&mut c);
    Server::bind(c).await.unwrap()
}

fn ws_url(srv: &Server) -> String {
    format!("{}/v1/session", srv.url().replacen("http", "ws", 1))
}

async fn next(ws: &mut Ws) -> Option<ServerFrame> {
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await.ok()?? {
            Ok(Message::Text(t)) => return Some(serde_json::from_str(&t).unwrap()),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// Upgrades without a query and reads the challenge.
async fn open(srv: &Server) -> (Ws, [u8; 32]) {
    let (mut ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(ws_url(srv)))
        .await
        .unwrap()
        .unwrap();
    let Some(ServerFrame::Challenge { challenge, .. }) = next(&mut ws).await else {
        panic!("no challenge first");
    };
    let mut c = [0u8; 32];
    hex::decode_to_slice(&challenge, &mut c).unwrap();
    (ws, c)
}

async fn answer(ws: &mut Ws, device: &SigningKey, challenge: &[u8; 32]) {
    let dev = DeviceId::from_signing_key(device);
    let login = SessionLogin {
        device_id: dev,
        signature: sign(device, &session_transcript(challenge, &dev)),
    };
    ws.send(Message::Text(serde_json::to_string(&login).unwrap().into()))
        .await
        .unwrap();
}

/// A full one-connection login and a publish; the session, after its Welcome.
async fn login(srv: &Server, device: &SigningKey) -> Ws {
    let (mut ws, c) = open(srv).await;
    answer(&mut ws, device, &c).await;
    match next(&mut ws).await {
        Some(ServerFrame::Welcome { device_id, .. }) => {
            assert_eq!(device_id, DeviceId::from_signing_key(device));
        }
        other => panic!("expected welcome, got {other:?}"),
    }
    let publish = ClientFrame {
        id: 1,
        request: Request::Publish {
            state: PresenceState::Online,
            message: None,
            endpoint: EndpointInfo::default(),
        },
    };
    ws.send(Message::Text(
        serde_json::to_string(&publish).unwrap().into(),
    ))
    .await
    .unwrap();
    ws
}

/// The presence states pushed to `ws` about others within `d` (pings answered meanwhile).
async fn presence_pushes(ws: &mut Ws, d: Duration) -> Vec<PresenceState> {
    let mut seen = Vec::new();
    let _ = tokio::time::timeout(d, async {
        while let Some(f) = next(ws).await {
            if let ServerFrame::Presence { contact } = f {
                seen.push(contact.presence.state);
            }
        }
    })
    .await;
    seen
}

#[tokio::test]
async fn one_connection_login_and_its_refusals() {
    let tmp = tempfile::tempdir().unwrap();
    let devices = people(&tmp.path().join("data"));
    let srv = start(tmp.path(), |_| {}).await;
    // The right answer: a session.
    let _ws = login(&srv, &devices[0]).await;

    // An answer signed over another connection's challenge: refused, never a session.
    let (_first, c1) = open(&srv).await;
    let (mut ws, _c2) = open(&srv).await;
    answer(&mut ws, &devices[1], &c1).await;
    match next(&mut ws).await {
        Some(ServerFrame::Error { error, .. }) => {
            assert_eq!(
                error.error,
                dialtone_proto::directory::ErrorCode::BadSignature
            );
        }
        other => panic!("a replayed answer was not refused: {other:?}"),
    }
    assert!(next(&mut ws).await.is_none(), "the connection stays open");

    // An unregistered device: refused as such.
    let (mut ws, c) = open(&srv).await;
    answer(&mut ws, &key(9, 9), &c).await;
    match next(&mut ws).await {
        Some(ServerFrame::Error { error, .. }) => {
            assert_eq!(
                error.error,
                dialtone_proto::directory::ErrorCode::UnknownDevice
            );
        }
        other => panic!("an unknown device was not refused: {other:?}"),
    }

    // Not JSON: refused.
    let (mut ws, _) = open(&srv).await;
    ws.send(Message::Text("hello".into())).await.unwrap();
    assert!(matches!(
        next(&mut ws).await,
        Some(ServerFrame::Error { .. })
    ));
    srv.shutdown().await;
}

/// A session that stops answering (its link silent) is kept for the grace period: the device
/// logs in again after the old session timed out, and its contact sees no change. Left
/// alone, it is shown offline once the grace period is over; a clean close shows at once.
#[tokio::test]
async fn a_silent_session_resumes_within_the_grace_period() {
    let tmp = tempfile::tempdir().unwrap();
    let devices = people(&tmp.path().join("data"));
    let srv = start(tmp.path(), |c| {
        c.session.heartbeat = Duration::from_secs(1);
        c.session.timeout = Duration::from_secs(2);
        c.session.grace = Duration::from_secs(6);
    })
    .await;
    let mut watcher = login(&srv, &devices[1]).await;
    let silent = login(&srv, &devices[0]).await;
    assert!(
        presence_pushes(&mut watcher, Duration::from_secs(1))
            .await
            .contains(&PresenceState::Online)
    );
    // The device stops reading (no pongs): its session times out within about 3 s. It logs
    // in again after that, inside the grace period.
    let seen = presence_pushes(&mut watcher, Duration::from_millis(4500)).await;
    let back = login(&srv, &devices[0]).await;
    // `back` is not read either: it goes silent from its login on.
    let t_back = std::time::Instant::now();
    let mut after = presence_pushes(&mut watcher, Duration::from_secs(5)).await;
    let mut all = seen;
    all.append(&mut after);
    assert!(
        !all.contains(&PresenceState::Offline),
        "the contact saw a silent session's device offline although it came back within \
         the grace period: {all:?}"
    );
    drop(silent);

    // Left alone this time: offline once the grace is over (the timeout, 2 s or a little
    // more, then 6 s), not before.
    let left = back;
    let shown = offline_within(&mut watcher, Duration::from_secs(25)).await;
    assert!(shown.is_some(), "a silent session was never shown offline");
    let shown = t_back.elapsed();
    assert!(
        shown >= Duration::from_secs(8),
        "shown offline {shown:?} after the device went silent, inside timeout + grace"
    );
    drop(left);

    // A clean close: offline at once.
    let mut again = login(&srv, &devices[0]).await;
    let _ = presence_pushes(&mut watcher, Duration::from_millis(500)).await;
    again.close(None).await.unwrap();
    let shown = offline_within(&mut watcher, WAIT).await;
    assert!(
        shown.is_some_and(|d| d < Duration::from_secs(5)),
        "a clean close was not shown at once: {shown:?}"
    );
    srv.shutdown().await;
}

/// How long until an offline push reached `ws`, if within `d`.
async fn offline_within(ws: &mut Ws, d: Duration) -> Option<Duration> {
    let t = std::time::Instant::now();
    while t.elapsed() < d {
        let left = d.saturating_sub(t.elapsed());
        match tokio::time::timeout(left, next(ws)).await {
            Ok(Some(ServerFrame::Presence { contact }))
                if contact.presence.state == PresenceState::Offline =>
            {
                return Some(t.elapsed());
            }
            Ok(Some(_)) | Err(_) => {}
            Ok(None) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    None
}
