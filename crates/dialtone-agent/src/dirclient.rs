//! HTTP and WebSocket access to the directory: registration, session challenges, the
//! session's upgrade, and the TLS settings they share.

use std::{net::IpAddr, path::Path, sync::Arc, time::Duration};

use dialtone_proto::{
    DeviceId,
    directory::{
        Challenge, ChallengeRequest, DirectoryInfo, ErrorBody, ErrorCode, RegisterConfirm,
        RegisterStart, RegisterStarted, Registered, ServerFrame, SessionLogin,
    },
    keys::{Signature, session_transcript, sign},
};
use ed25519_dalek::SigningKey;
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::{CertificateDer, pem::PemObject};
use tokio_tungstenite::{
    Connector, MaybeTlsStream, WebSocketStream, tungstenite::Message as WsMessage,
};

/// A directory the agent talks to.
#[derive(Debug, Clone)]
pub struct DirectoryClient {
    base: String,
    http: reqwest::Client,
    tls: Arc<rustls::ClientConfig>,
    extra_roots: Vec<CertificateDer<'static>>,
}

/// Errors talking to the directory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DirectoryError {
    /// The URL is not usable.
    #[error("{0}")]
    BadUrl(String),
    /// The CA file could not be read.
    #[error("cannot use CA file {path}: {reason}")]
    Ca {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The directory could not be reached.
    #[error("cannot reach the directory at {url}: {reason}")]
    Unreachable {
        /// Where.
        url: String,
        /// Why.
        reason: String,
    },
    /// The directory answered with an error.
    #[error("{}", .body.message)]
    Refused {
        /// HTTP status.
        status: u16,
        /// The directory's explanation.
        body: ErrorBody,
    },
}

/// The WebSocket stream of a session.
pub type SessionStream = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

impl DirectoryClient {
    /// A client for the directory at `base` (`https://…`, or `http://` on loopback only).
    ///
    /// `ca_file` adds a PEM CA bundle to the public roots, for a directory with a private CA.
    pub fn new(base: &str, ca_file: Option<&Path>) -> Result<Self, DirectoryError> {
        let base = check_url(base)?;
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let mut extra_roots = Vec::new();
        if let Some(path) = ca_file {
            let ca_err = |reason: String| DirectoryError::Ca {
                path: path.display().to_string(),
                reason,
            };
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|e| ca_err(e.to_string()))?
                .collect::<Result<_, _>>()
                .map_err(|e| ca_err(e.to_string()))?;
            if certs.is_empty() {
                return Err(ca_err("no certificates in the file".into()));
            }
            for c in certs {
                roots.add(c.clone()).map_err(|e| ca_err(e.to_string()))?;
                extra_roots.push(c);
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| DirectoryError::BadUrl(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        // The store of session tickets lives as long as this client (the agent), so every
        // reconnect resumes; one directory needs only a few entries.
        let mut tls = tls;
        tls.resumption = rustls::client::Resumption::in_memory_sessions(8);
        let tls = Arc::new(tls);
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured((*tls).clone())
            .timeout(Duration::from_secs(15))
            .connect_timeout(Duration::from_secs(5))
            .no_proxy()
            .build()
            .map_err(|e| DirectoryError::BadUrl(e.to_string()))?;
        Ok(Self {
            base,
            http,
            tls,
            extra_roots,
        })
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The private CA certificates (DER) trusted besides the public roots; the relay on the
    /// directory's host uses the same certificate, so the agent trusts them for it too.
    pub fn extra_roots(&self) -> Vec<Vec<u8>> {
        self.extra_roots.iter().map(|c| c.to_vec()).collect()
    }

    /// `GET /v1/info`: version, heartbeat and the relay, within `timeout`.
    pub async fn info(&self, timeout: Duration) -> Result<DirectoryInfo, DirectoryError> {
        let url = format!("{}/v1/info", self.base);
        let unreachable = |reason: String| DirectoryError::Unreachable {
            url: self.base.clone(),
            reason,
        };
        let resp = self
            .http
            .get(&url)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| unreachable(error_chain(&e)))?;
        if !resp.status().is_success() {
            return Err(unreachable(format!(
                "/v1/info answered HTTP {}",
                resp.status()
            )));
        }
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| unreachable(error_chain(&e)))?;
        serde_json::from_slice(&bytes).map_err(|e| unreachable(format!("unexpected answer: {e}")))
    }

    async fn post<B: serde::Serialize, R: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<R, DirectoryError> {
        let url = format!("{}{path}", self.base);
        self.answer(self.http.post(&url).json(body).send().await)
            .await
    }

    async fn get<R: serde::de::DeserializeOwned>(&self, path: &str) -> Result<R, DirectoryError> {
        let url = format!("{}{path}", self.base);
        self.answer(self.http.get(&url).send().await).await
    }

    async fn answer<R: serde::de::DeserializeOwned>(
        &self,
        sent: Result<reqwest::Response, reqwest::Error>,
    ) -> Result<R, DirectoryError> {
        let resp = sent.map_err(|e| DirectoryError::Unreachable {
            url: self.base.clone(),
            reason: error_chain(&e),
        })?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| DirectoryError::Unreachable {
                url: self.base.clone(),
                reason: error_chain(&e),
            })?;
        if status.is_success() {
            serde_json::from_slice(&bytes).map_err(|e| DirectoryError::Unreachable {
                url: self.base.clone(),
                reason: format!("unexpected answer: {e}"),
            })
        } else {
            let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                ErrorBody::new(
                    ErrorCode::Internal,
                    format!("the directory answered HTTP {status} without an explanation"),
                )
            });
            Err(DirectoryError::Refused {
                status: status.as_u16(),
                body,
            })
        }
    }

    /// The transparency log's public keys (`GET /v1/kt/keys`).
    pub async fn kt_keys(&self) -> Result<dialtone_proto::transparency::KtKeys, DirectoryError> {
        self.get("/v1/kt/keys").await
    }

    /// The public record of an identifier (`GET /v1/lookup/{identifier}`): keys and the
    /// (unproven) device list.
    pub async fn lookup(
        &self,
        id: &dialtone_proto::Identifier,
    ) -> Result<dialtone_proto::directory::PublicRecord, DirectoryError> {
        self.get(&format!("/v1/lookup/{}", id.as_str())).await
    }

    /// Takes the device-link rendezvous of `code` (`POST /v1/link` with the offer id and the
    /// code's rendezvous token), once. The directory answers an unknown offer and a wrong
    /// token alike (`404`), and only the right token uses the offer up.
    pub async fn link_offer(
        &self,
        code: &dialtone_proto::devices::LinkCode,
    ) -> Result<dialtone_proto::directory::LinkOfferInfo, DirectoryError> {
        let req = dialtone_proto::directory::LinkOfferRequest {
            offer: code.offer().to_owned(),
            token: code.rendezvous_token(),
        };
        self.post("/v1/link", &req).await
    }

    /// Starts a registration: the directory sends a code.
    pub async fn register_start(
        &self,
        req: &RegisterStart,
    ) -> Result<RegisterStarted, DirectoryError> {
        self.post("/v1/register/start", req).await
    }

    /// Confirms a registration with the code.
    pub async fn register_confirm(
        &self,
        req: &RegisterConfirm,
    ) -> Result<Registered, DirectoryError> {
        self.post("/v1/register/confirm", req).await
    }

    /// Opens an authenticated session on one connection: the WebSocket upgrade, the
    /// directory's challenge as its first frame, this device's signature as the answer, then
    /// the directory's Welcome (returned; the session starts after it). A directory that does
    /// not offer this (an older one answers the bare upgrade with 400) gets the two-connection
    /// login: `POST /v1/session/challenge`, then the upgrade with the signed challenge.
    ///
    /// TLS sessions resume: the client configuration keeps the directory's session tickets
    /// for as long as this client lives, across reconnects, so a reconnect after a cut costs
    /// no certificate check and no signature on either side.
    pub async fn open_session(&self, device_key: &SigningKey) -> Result<Opened, DirectoryError> {
        let device_id = DeviceId::from_signing_key(device_key);
        let url = format!("{}/v1/session", self.ws_base());
        let mut ws = match self.connect(&url).await {
            Err(DirectoryError::Refused { status: 400, .. }) => {
                return self.open_session_two_step(device_key).await;
            }
            r => r?,
        };
        let resumed = is_resumed(&ws);
        let unreachable = |reason: String| DirectoryError::Unreachable {
            url: self.base.clone(),
            reason,
        };
        let challenge = match next_frame(&mut ws).await? {
            ServerFrame::Challenge { challenge, .. } => challenge,
            ServerFrame::Error { error, .. } => {
                return Err(DirectoryError::Refused {
                    status: 401,
                    body: error,
                });
            }
            _ => return Err(unreachable("the directory did not send a challenge".into())),
        };
        let mut ch = [0u8; 32];
        hex::decode_to_slice(&challenge, &mut ch)
            .map_err(|_| unreachable("malformed challenge".into()))?;
        let login = SessionLogin {
            device_id,
            signature: sign(device_key, &session_transcript(&ch, &device_id)),
        };
        let text = serde_json::to_string(&login).unwrap_or_default();
        tokio::time::timeout(HANDSHAKE_TIMEOUT, ws.send(WsMessage::Text(text.into())))
            .await
            .map_err(|_| unreachable("the directory did not take the login".into()))?
            .map_err(|e| unreachable(e.to_string()))?;
        match next_frame(&mut ws).await? {
            welcome @ ServerFrame::Welcome { .. } => Ok(Opened {
                ws,
                welcome: Some(welcome),
                resumed,
            }),
            ServerFrame::Error { error, .. } => Err(DirectoryError::Refused {
                status: 401,
                body: error,
            }),
            _ => Err(unreachable(
                "the directory did not welcome the session".into(),
            )),
        }
    }

    /// The two-connection login (for a directory without the one-connection one): challenge
    /// over HTTP, signature in the upgrade's query.
    async fn open_session_two_step(
        &self,
        device_key: &SigningKey,
    ) -> Result<Opened, DirectoryError> {
        let device_id = DeviceId::from_signing_key(device_key);
        let ch: Challenge = self
            .post("/v1/session/challenge", &ChallengeRequest { device_id })
            .await?;
        let mut challenge = [0u8; 32];
        hex::decode_to_slice(&ch.challenge, &mut challenge).map_err(|_| {
            DirectoryError::Unreachable {
                url: self.base.clone(),
                reason: "malformed challenge".into(),
            }
        })?;
        let sig: Signature = sign(device_key, &session_transcript(&challenge, &device_id));
        let url = format!(
            "{}/v1/session?device_id={device_id}&challenge={}&signature={sig}",
            self.ws_base(),
            ch.challenge
        );
        let ws = self.connect(&url).await?;
        let resumed = is_resumed(&ws);
        Ok(Opened {
            ws,
            welcome: None,
            resumed,
        })
    }

    fn ws_base(&self) -> String {
        if let Some(rest) = self.base.strip_prefix("https://") {
            format!("wss://{rest}")
        } else {
            format!("ws://{}", self.base.trim_start_matches("http://"))
        }
    }

    /// TCP (each address in turn, [`CONNECT_TIMEOUT`] each, so a reconnect after a cut does
    /// not wait out the kernel's SYN backoff), TLS, and the WebSocket upgrade.
    async fn connect(&self, url: &str) -> Result<SessionStream, DirectoryError> {
        let unreachable = |reason: String| DirectoryError::Unreachable {
            url: self.base.clone(),
            reason,
        };
        let rest = url.split_once("://").map_or(url, |(_, r)| r);
        let authority = rest.split('/').next().unwrap_or(rest);
        let default_port = if url.starts_with("wss://") { 443 } else { 80 };
        let has_port = match authority.strip_prefix('[') {
            Some(v6) => v6.contains("]:"),
            None => authority.contains(':'),
        };
        let host_port = if has_port {
            authority.to_owned()
        } else {
            format!("{authority}:{default_port}")
        };
        let addrs: Vec<std::net::SocketAddr> =
            tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::lookup_host(host_port.as_str()))
                .await
                .map_err(|_| unreachable("name lookup timed out".into()))?
                .map_err(|e| unreachable(format!("name lookup: {e}")))?
                .collect();
        let mut last = String::from("no address");
        let mut tcp = None;
        for a in addrs {
            match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(a)).await {
                Ok(Ok(s)) => {
                    tcp = Some(s);
                    break;
                }
                Ok(Err(e)) => last = format!("{a}: {e}"),
                Err(_) => last = format!("{a}: connect timed out"),
            }
        }
        let tcp = tcp.ok_or_else(|| unreachable(last))?;
        let _ = tcp.set_nodelay(true);
        close_dead_links(&tcp);
        let connector = Connector::Rustls(self.tls.clone());
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .max_message_size(Some(1 << 20))
            .max_frame_size(Some(1 << 20));
        let res = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            tokio_tungstenite::client_async_tls_with_config(
                url,
                tcp,
                Some(config),
                Some(connector),
            ),
        )
        .await
        .map_err(|_| unreachable("session upgrade timed out".into()))?;
        match res {
            Ok((ws, _)) => Ok(ws),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                let status = resp.status().as_u16();
                let body = resp
                    .body()
                    .as_ref()
                    .and_then(|b| serde_json::from_slice(b).ok())
                    .unwrap_or_else(|| {
                        ErrorBody::new(
                            ErrorCode::Internal,
                            format!("session refused with HTTP {status}"),
                        )
                    });
                Err(DirectoryError::Refused { status, body })
            }
            Err(e) => Err(unreachable(e.to_string())),
        }
    }
}

/// A session just opened.
#[derive(Debug)]
pub struct Opened {
    /// The WebSocket.
    pub ws: SessionStream,
    /// The directory's Welcome, when the login read it already (one-connection login).
    pub welcome: Option<ServerFrame>,
    /// Whether TLS resumed an earlier session (no certificate, no handshake signature).
    pub resumed: bool,
}

/// How long one TCP connect may take before the next address (or attempt) is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long TLS, the upgrade and each login frame may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn is_resumed(ws: &SessionStream) -> bool {
    match ws.get_ref() {
        MaybeTlsStream::Rustls(s) => {
            s.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
        }
        _ => false,
    }
}

/// The next text frame of a login, parsed, within [`HANDSHAKE_TIMEOUT`].
async fn next_frame(ws: &mut SessionStream) -> Result<ServerFrame, DirectoryError> {
    let unreachable = |reason: String| DirectoryError::Unreachable {
        url: String::from("the directory"),
        reason,
    };
    loop {
        let msg = tokio::time::timeout(HANDSHAKE_TIMEOUT, ws.next())
            .await
            .map_err(|_| unreachable("the directory did not answer the login".into()))?;
        match msg {
            Some(Ok(WsMessage::Text(t))) => {
                return serde_json::from_str(&t)
                    .map_err(|e| unreachable(format!("unreadable login frame: {e}")));
            }
            Some(Ok(WsMessage::Close(_))) | None => {
                return Err(unreachable("the directory closed the login".into()));
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(unreachable(e.to_string())),
        }
    }
}

/// Normalizes a directory URL and enforces the transport rule: `https://` anywhere,
/// `http://` only to a loopback address.
pub fn check_url(url: &str) -> Result<String, DirectoryError> {
    let url = url.trim().trim_end_matches('/');
    let (scheme, rest) = url.split_once("://").ok_or_else(|| {
        DirectoryError::BadUrl(format!("'{url}' is not a URL: use https://host[:port]"))
    })?;
    let host_port = rest.split('/').next().unwrap_or(rest);
    if host_port.is_empty() {
        return Err(DirectoryError::BadUrl(format!("'{url}' has no host")));
    }
    match scheme {
        "https" => Ok(url.to_owned()),
        "http" => {
            let host = if let Some(v6) = host_port.strip_prefix('[') {
                v6.split(']').next().unwrap_or("")
            } else {
                host_port.rsplit_once(':').map_or(host_port, |(h, _)| h)
            };
            let loopback =
                host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
            if loopback {
                Ok(url.to_owned())
            } else {
                Err(DirectoryError::BadUrl(format!(
                    "refusing the plain-HTTP directory at {url}: only a loopback directory may use \
                     http://; ask its operator for the https:// address"
                )))
            }
        }
        other => Err(DirectoryError::BadUrl(format!(
            "unsupported scheme '{other}': use https://"
        ))),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// A dead link to the directory (network changed, directory's machine gone) is closed by the
/// kernel within this time, so the agent reconnects instead of waiting for missed pings.
const DEAD_LINK: Duration = Duration::from_secs(8);

/// TCP keepalive probes after half of [`DEAD_LINK`] of silence, two more a quarter apart, and
/// a user timeout for unacknowledged data; the kernel does the work.
fn close_dead_links(tcp: &tokio::net::TcpStream) {
    let sock = socket2::SockRef::from(tcp);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(DEAD_LINK / 2)
        .with_interval(DEAD_LINK / 4)
        .with_retries(2);
    if let Err(e) = sock
        .set_tcp_keepalive(&keepalive)
        .and_then(|()| sock.set_tcp_user_timeout(Some(DEAD_LINK)))
    {
        tracing::debug!("cannot set TCP keepalive on the directory session: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_on_loopback() {
        assert!(check_url("http://127.0.0.1:8080").is_ok());
        assert!(check_url("http://[::1]:8080/").is_ok());
        assert!(check_url("http://localhost:1").is_ok());
        assert!(check_url("https://dir.example.com").is_ok());
        assert!(check_url("http://dir.example.com").is_err());
        assert!(check_url("http://10.0.0.1:80").is_err());
        assert!(check_url("ftp://x").is_err());
        assert!(check_url("127.0.0.1:80").is_err());
    }
}
