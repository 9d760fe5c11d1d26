//! How a simulated device logs in: the one-connection login an agent uses now (WebSocket
//! upgrade, the directory's challenge as the first frame, the signed answer, the Welcome), or
//! the two-connection login agents used before (`POST /v1/session/challenge` on a connection
//! of its own, then the upgrade with the signed challenge in its query), over plain TCP or
//! TLS. With TLS each device keeps its own session tickets, as an agent does, so its next
//! login resumes.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use anyhow::{Context, bail};
use dialtone_proto::{
    DeviceId,
    directory::{Challenge, ServerFrame, SessionLogin},
    keys::{session_transcript, sign},
};
use ed25519_dalek::SigningKey;
use futures_util::{SinkExt, StreamExt};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};
use tokio_tungstenite::{
    Connector, MaybeTlsStream, WebSocketStream,
    tungstenite::{Message, protocol::WebSocketConfig},
};

/// A session's WebSocket, over TCP or TLS.
pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Which login the devices use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LoginMode {
    /// One connection: the challenge over the WebSocket (what agents do now).
    One,
    /// Two connections: the HTTP challenge, then the upgrade (agents before issue 11).
    Two,
}

/// Where and how devices log in.
#[derive(Clone)]
pub(crate) struct Target {
    /// The directory's address.
    pub addr: SocketAddr,
    /// The login.
    pub mode: LoginMode,
    /// TLS, if the directory speaks it: one client configuration per device (each with its
    /// own ticket store), indexed like the devices.
    pub tls: Option<Arc<Vec<Arc<rustls::ClientConfig>>>>,
}

/// One client configuration per device trusting `ca_pem`, each with its own session store.
pub(crate) fn device_tls(ca_pem: &str, n: usize) -> anyhow::Result<Vec<Arc<rustls::ClientConfig>>> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let base = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok((0..n)
        .map(|_| {
            let mut c = base.clone();
            c.resumption = rustls::client::Resumption::in_memory_sessions(2);
            Arc::new(c)
        })
        .collect())
}

async fn tcp(target: &Target, source: IpAddr) -> anyhow::Result<TcpStream> {
    let sock = if source.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    sock.bind(SocketAddr::new(source, 0))?;
    let tcp = sock.connect(target.addr).await?;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

/// Logs device `i` in: the WebSocket after the Welcome, and whether TLS resumed.
pub(crate) async fn login(
    target: &Target,
    source: IpAddr,
    device: &SigningKey,
    i: usize,
) -> anyhow::Result<(Ws, bool)> {
    let dev = DeviceId::from_signing_key(device);
    let tls = target.tls.as_ref().map(|t| t[i].clone());
    let scheme = if tls.is_some() { "wss" } else { "ws" };
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let connector = || match &tls {
        Some(c) => Connector::Rustls(c.clone()),
        None => Connector::Plain,
    };
    let mut ws = match target.mode {
        LoginMode::One => {
            let url = format!("{scheme}://{}/v1/session", target.addr);
            let stream = tcp(target, source).await?;
            let (mut ws, _) = tokio_tungstenite::client_async_tls_with_config(
                url,
                stream,
                Some(config),
                Some(connector()),
            )
            .await?;
            let challenge = match next(&mut ws).await? {
                ServerFrame::Challenge { challenge, .. } => challenge,
                other => bail!("expected a challenge, got {other:?}"),
            };
            let mut ch = [0u8; 32];
            hex::decode_to_slice(&challenge, &mut ch)?;
            let answer = SessionLogin {
                device_id: dev,
                signature: sign(device, &session_transcript(&ch, &dev)),
            };
            ws.send(Message::Text(serde_json::to_string(&answer)?.into()))
                .await?;
            ws
        }
        LoginMode::Two => {
            let c = http_challenge(target, source, tls.clone(), &dev).await?;
            let mut ch = [0u8; 32];
            hex::decode_to_slice(&c.challenge, &mut ch)?;
            let sig = sign(device, &session_transcript(&ch, &dev));
            let url = format!(
                "{scheme}://{}/v1/session?device_id={dev}&challenge={}&signature={sig}",
                target.addr, c.challenge
            );
            let stream = tcp(target, source).await?;
            let (ws, _) = tokio_tungstenite::client_async_tls_with_config(
                url,
                stream,
                Some(config),
                Some(connector()),
            )
            .await?;
            ws
        }
    };
    let resumed = match ws.get_ref() {
        MaybeTlsStream::Rustls(s) => {
            s.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
        }
        _ => false,
    };
    match next(&mut ws).await? {
        ServerFrame::Welcome { .. } => Ok((ws, resumed)),
        other => bail!("expected welcome, got {other:?}"),
    }
}

async fn next(ws: &mut Ws) -> anyhow::Result<ServerFrame> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(&t)?),
            Some(Ok(Message::Close(c))) => bail!("closed during the login: {c:?}"),
            None => bail!("closed during the login"),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
        }
    }
}

/// `POST /v1/session/challenge` on a connection of its own (HTTP/1.1, `Connection: close`),
/// as an agent's login did: its HTTP pool had nothing open to the directory by the time the
/// session needed a new challenge.
async fn http_challenge(
    target: &Target,
    source: IpAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
    dev: &DeviceId,
) -> anyhow::Result<Challenge> {
    let body = serde_json::json!({ "device_id": dev }).to_string();
    let req = format!(
        "POST /v1/session/challenge HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        target.addr,
        body.len()
    );
    let stream = tcp(target, source).await?;
    let answer = match tls {
        Some(c) => {
            let name = rustls::pki_types::ServerName::IpAddress(target.addr.ip().into());
            let s = tokio_rustls::TlsConnector::from(c)
                .connect(name, stream)
                .await?;
            exchange(s, req.as_bytes()).await?
        }
        None => exchange(stream, req.as_bytes()).await?,
    };
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text.split_once("\r\n\r\n").context("no HTTP answer")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!(
            "challenge refused: {}",
            head.lines().next().unwrap_or_default()
        );
    }
    Ok(serde_json::from_str(body)?)
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    req: &[u8],
) -> anyhow::Result<Vec<u8>> {
    s.write_all(req).await?;
    s.flush().await?;
    let mut out = Vec::with_capacity(512);
    // The answer is small; the directory closes the connection after it. A TLS peer that
    // closes without close_notify is fine here: the body is complete.
    let mut buf = [0u8; 2048];
    loop {
        match s.read(&mut buf).await {
            Ok(0) => break,
            Ok(k) => out.extend_from_slice(&buf[..k]),
            Err(_) if !out.is_empty() => break,
            Err(e) => return Err(e.into()),
        }
        if out.len() > 64 * 1024 {
            bail!("challenge answer too long");
        }
    }
    Ok(out)
}
