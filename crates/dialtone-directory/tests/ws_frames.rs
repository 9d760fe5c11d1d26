//! The session WebSocket at the frame level, against a real directory: pings are answered,
//! fragmented requests reassembled, binary frames refused with a typed error, and what a
//! client must not send (an oversize message, an unmasked frame, garbage) closes that one
//! connection with the right close code, never the server.

use std::{path::Path, time::Duration};

use dialtone_directory::{Config, Server};
use dialtone_proto::{
    DeviceId,
    directory::{ClientFrame, ErrorCode, MAX_WS_FRAME_LEN, Reply, Request, ServerFrame},
    keys::{session_transcript, sign},
};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::{
    Message,
    protocol::{
        CloseFrame, WebSocketConfig,
        frame::{
            Frame,
            coding::{CloseCode, Data, OpCode},
        },
    },
};

mod support;
use support::{Keys, confirm_body, keys, now, start_body};

const WAIT: Duration = Duration::from_secs(10);

async fn post(http: &reqwest::Client, url: String, body: Vec<u8>) -> serde_json::Value {
    let r = http
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    r.json().await.unwrap()
}

/// A directory with one registered person; their keys.
async fn directory(tmp: &Path) -> (Server, reqwest::Client, Keys) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut c = Config::default();
    c.listen = "127.0.0.1:0".parse().unwrap();
    c.data_dir = tmp.join("data");
    c.verify_outbox = Some(tmp.join("outbox"));
    let srv = Server::bind(c).await.unwrap();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let k = keys(7);
    let id = "frames@example.com";
    let base = srv.url().to_owned();
    post(
        &http,
        format!("{base}/v1/register/start"),
        start_body(&k, id, now()),
    )
    .await;
    let code = std::fs::read_to_string(tmp.join("outbox").join(id)).unwrap();
    post(
        &http,
        format!("{base}/v1/register/confirm"),
        confirm_body(&k, id, code.trim()),
    )
    .await;
    (srv, http, k)
}

/// The path and query of a session with a fresh, signed challenge.
async fn session_path(srv: &Server, http: &reqwest::Client, k: &Keys) -> String {
    let dev = DeviceId::from_signing_key(&k.device);
    let a = post(
        http,
        format!("{}/v1/session/challenge", srv.url()),
        serde_json::to_vec(&serde_json::json!({ "device_id": dev })).unwrap(),
    )
    .await;
    let hexc = a["challenge"].as_str().unwrap().to_owned();
    let mut c = [0u8; 32];
    hex::decode_to_slice(&hexc, &mut c).unwrap();
    let sig = sign(&k.device, &session_transcript(&c, &dev));
    format!("/v1/session?device_id={dev}&challenge={hexc}&signature={sig}")
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(srv: &Server, http: &reqwest::Client, k: &Keys) -> Ws {
    let url = format!(
        "{}{}",
        srv.url().replacen("http", "ws", 1).trim_end_matches('/'),
        session_path(srv, http, k).await
    );
    // The client may send more than the directory accepts: that is the point.
    let config = WebSocketConfig::default()
        .max_message_size(None)
        .max_frame_size(None);
    let (mut ws, _) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::connect_async_with_config(url, Some(config), false),
    )
    .await
    .unwrap()
    .unwrap();
    match next(&mut ws).await {
        Some(Message::Text(t)) => assert!(t.contains("\"welcome\""), "{t}"),
        other => panic!("expected welcome, got {other:?}"),
    }
    ws
}

/// The next message other than the directory's heartbeat pings.
async fn next(ws: &mut Ws) -> Option<Message> {
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await.unwrap() {
            Some(Ok(Message::Ping(_))) => {}
            Some(Ok(m)) => return Some(m),
            Some(Err(_)) | None => return None,
        }
    }
}

fn frame_of(m: Message) -> ServerFrame {
    match m {
        Message::Text(t) => serde_json::from_str(&t).unwrap(),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

async fn wait_sessions(srv: &Server, n: usize) {
    let t = tokio::time::Instant::now();
    while srv.sessions() != n {
        assert!(
            t.elapsed() < WAIT,
            "{} sessions, expected {n}",
            srv.sessions()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_pings_and_fragments() {
    let tmp = tempfile::tempdir().unwrap();
    let (srv, http, k) = directory(tmp.path()).await;
    let mut ws = connect(&srv, &http, &k).await;

    // A ping is answered with its bytes.
    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    assert_eq!(
        next(&mut ws).await,
        Some(Message::Pong(b"are you there".to_vec().into()))
    );

    // A binary frame gets a typed error; the session goes on.
    ws.send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    match frame_of(next(&mut ws).await.unwrap()) {
        ServerFrame::Error { id: 0, error } => assert_eq!(error.error, ErrorCode::BadJson),
        other => panic!("{other:?}"),
    }

    // A request in three fragments is one request.
    let text = serde_json::to_string(&ClientFrame {
        id: 5,
        request: Request::Ping,
    })
    .unwrap();
    let (a, rest) = text.as_bytes().split_at(4);
    let (b, c) = rest.split_at(3);
    for (part, op, fin) in [
        (a, OpCode::Data(Data::Text), false),
        (b, OpCode::Data(Data::Continue), false),
        (c, OpCode::Data(Data::Continue), true),
    ] {
        ws.send(Message::Frame(Frame::message(part.to_vec(), op, fin)))
            .await
            .unwrap();
    }
    match frame_of(next(&mut ws).await.unwrap()) {
        ServerFrame::Reply {
            id: 5,
            reply: Reply::Pong,
        } => {}
        other => panic!("{other:?}"),
    }

    // Garbage JSON is a typed error too.
    ws.send(Message::Text("{not json".into())).await.unwrap();
    match frame_of(next(&mut ws).await.unwrap()) {
        ServerFrame::Error { error, .. } => assert_eq!(error.error, ErrorCode::BadJson),
        other => panic!("{other:?}"),
    }

    // Closing is answered with a close frame, and the session is gone.
    ws.send(Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    })))
    .await
    .unwrap();
    match next(&mut ws).await {
        Some(Message::Close(Some(f))) => assert_eq!(f.code, CloseCode::Normal),
        other => panic!("expected a close frame, got {other:?}"),
    }
    wait_sessions(&srv, 0).await;
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_client_must_not_send_closes_that_connection_only() {
    let tmp = tempfile::tempdir().unwrap();
    let (srv, http, k) = directory(tmp.path()).await;

    // A message over the limit: closed with "message too big".
    let mut ws = connect(&srv, &http, &k).await;
    ws.send(Message::Text("x".repeat(MAX_WS_FRAME_LEN + 1).into()))
        .await
        .unwrap();
    match next(&mut ws).await {
        Some(Message::Close(Some(f))) => assert_eq!(f.code, CloseCode::Size),
        other => panic!("expected a close frame, got {other:?}"),
    }
    wait_sessions(&srv, 0).await;

    // Raw bytes after a real handshake: an unmasked frame, then garbage.
    for bytes in [
        &b"\x81\x02hi"[..],
        &b"\xff\xff\xff\xff\xff\xff\xff\xff\xff"[..],
    ] {
        let addr = srv
            .url()
            .trim_start_matches("http://")
            .trim_end_matches('/');
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let path = session_path(&srv, &http, &k).await;
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        tcp.write_all(req.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tokio::time::timeout(WAIT, tcp.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "closed during the handshake");
            got.extend_from_slice(&buf[..n]);
        }
        let head = String::from_utf8_lossy(&got).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(
            head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            "the accept key of RFC 6455's example: {head}"
        );
        tcp.write_all(bytes).await.unwrap();
        // The directory sends what it had (the welcome, perhaps a ping), a close frame with
        // "protocol error", and closes.
        loop {
            let n = tokio::time::timeout(WAIT, tcp.read(&mut buf))
                .await
                .unwrap()
                .unwrap_or(0);
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        assert!(
            got.windows(4).any(|w| w == [0x88, 0x02, 0x03, 0xEA]),
            "a close frame with code 1002"
        );
        wait_sessions(&srv, 0).await;
    }

    // The directory still serves.
    let mut ws = connect(&srv, &http, &k).await;
    ws.send(Message::Text(
        serde_json::to_string(&ClientFrame {
            id: 1,
            request: Request::Ping,
        })
        .unwrap()
        .into(),
    ))
    .await
    .unwrap();
    assert!(matches!(
        frame_of(next(&mut ws).await.unwrap()),
        ServerFrame::Reply {
            id: 1,
            reply: Reply::Pong
        }
    ));
    srv.shutdown().await;
}
