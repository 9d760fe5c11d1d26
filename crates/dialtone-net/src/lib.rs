//! The only Dialtone crate that names iroh.
//!
//! It sets up a fully self-hosted iroh endpoint (no n0 relays, no n0 DNS or pkarr discovery:
//! the Dialtone directory is the discovery source), dials and accepts `dialtone/1`
//! connections, and reads and writes length-prefixed [`Frame`]s on QUIC streams.
//!
//! It is **not** where the rules live: what a hello must prove, who may connect and what a
//! message means are decided by `dialtone-agent` with the types of `dialtone-proto`.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]
#![deny(missing_docs, rustdoc::broken_intra_doc_links)]

use std::{net::SocketAddr, time::Duration};

use dialtone_proto::{
    DeviceId,
    directory::EndpointInfo,
    wire::{ALPN, DecodeError, Frame, MAX_FRAME_LEN},
};
use iroh::{
    EndpointAddr, RelayConfig, RelayMode, SecretKey, TransportAddr,
    endpoint::{PortmapperConfig, presets},
    tls::CaTlsConfig,
};
use iroh_relay::RelayQuicConfig;
use serde::Serialize;

pub mod doctor;
#[cfg(feature = "relay-server")]
pub mod relay;
pub mod select;

/// The iroh endpoint itself, for `dialtone-agent`'s accept loop.
pub use iroh::Endpoint;
/// iroh types the other crates use. `dialtone-agent` holds connections and streams, and
/// takes or refuses each `Incoming` connection.
pub use iroh::endpoint::{Connection, ConnectionError, Incoming, RecvStream, SendStream, VarInt};

/// How to set up the peer endpoint.
///
/// Defaults are tuned for a person's device on a real network: bind every interface (IPv6
/// and IPv4), portmapping on, no relay (until the directory names one).
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// The device's Ed25519 secret key (its seed); the endpoint id is its public key.
    pub secret_key: [u8; 32],
    /// Local addresses to bind. Default: `[::]:0` and `0.0.0.0:0`.
    pub bind: Vec<SocketAddr>,
    /// The relay to use (the directory names it in `/v1/info`). Default: none — then there
    /// is no hole punching and no relayed fallback, only direct paths to reachable addresses.
    pub relay: Option<RelaySettings>,
    /// Extra CA certificates (DER) to trust for the relay's TLS, besides the public roots (the
    /// directory's private CA). Default: none.
    pub extra_roots: Vec<Vec<u8>>,
    /// Ask the home router for a port mapping (UPnP, PCP, NAT-PMP). Default: on. Switch it off
    /// in tests and on loopback-only demos: it sends packets to the LAN's gateway.
    pub portmapper: bool,
}

impl EndpointConfig {
    /// Defaults for `secret_key`.
    pub fn new(secret_key: [u8; 32]) -> Self {
        Self {
            secret_key,
            bind: vec![
                SocketAddr::from(([0u16; 8], 0)),
                SocketAddr::from(([0u8; 4], 0)),
            ],
            relay: None,
            extra_roots: Vec::new(),
            portmapper: true,
        }
    }
}

/// A relay server as the directory announces it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelaySettings {
    /// Its URL (`https://host:port`, or `http://` for a relay without TLS).
    pub url: String,
    /// The UDP port of its QUIC address discovery, which tells the endpoint its public
    /// address (needs TLS). `None`: no address discovery.
    pub quic_port: Option<u16>,
}

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BindError {
    /// A bind address was refused.
    #[error("cannot bind {addr}")]
    Address {
        /// The address.
        addr: SocketAddr,
        /// What iroh said.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The relay URL does not parse.
    #[error("invalid relay url {0:?}")]
    RelayUrl(String),
    /// iroh failed to start.
    #[error("could not start the peer endpoint")]
    Iroh(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Starts the endpoint: self-hosted, accepting `dialtone/1`.
///
/// If binding every configured address fails (a host without IPv6, say), it tries again with
/// each address family alone, so a single-stack machine still comes online.
pub async fn bind(config: &EndpointConfig) -> Result<Endpoint, BindError> {
    let first = bind_exact(config).await;
    if first.is_ok() || config.bind.len() < 2 {
        return first;
    }
    for want_v4 in [false, true] {
        let only: Vec<SocketAddr> = config
            .bind
            .iter()
            .copied()
            .filter(|a| a.is_ipv4() == want_v4)
            .collect();
        if only.is_empty() || only.len() == config.bind.len() {
            continue;
        }
        let mut c = config.clone();
        c.bind = only;
        if let Ok(ep) = bind_exact(&c).await {
            tracing::warn!(
                "could not bind every address family; running on {}",
                if want_v4 { "IPv4" } else { "IPv6" }
            );
            return Ok(ep);
        }
    }
    first
}

async fn bind_exact(config: &EndpointConfig) -> Result<Endpoint, BindError> {
    let relay_mode = match &config.relay {
        None => RelayMode::Disabled,
        Some(relay) => {
            let url: iroh::RelayUrl = relay
                .url
                .parse()
                .map_err(|_| BindError::RelayUrl(relay.url.clone()))?;
            let quic = relay.quic_port.map(RelayQuicConfig::new);
            RelayMode::Custom(iroh::RelayMap::from(RelayConfig::new(url, quic)))
        }
    };
    let roots = config
        .extra_roots
        .iter()
        .map(|der| rustls::pki_types::CertificateDer::from(der.clone()));
    let mut builder = Endpoint::builder(presets::Minimal)
        .secret_key(SecretKey::from_bytes(&config.secret_key))
        .alpns(vec![ALPN.to_vec()])
        .relay_mode(relay_mode)
        .ca_tls_config(CaTlsConfig::embedded().with_extra_roots(roots))
        .net_report_config(net_report_config())
        .clear_address_lookup()
        .path_selector(std::sync::Arc::new(select::Ipv6First))
        .transport_config(stranger_transport())
        .clear_ip_transports();
    if !config.portmapper {
        builder = builder.portmapper_config(PortmapperConfig::Disabled);
    }
    for addr in &config.bind {
        builder = builder.bind_addr(*addr).map_err(|e| BindError::Address {
            addr: *addr,
            source: Box::new(e),
        })?;
    }
    builder
        .bind()
        .await
        .map_err(|e| BindError::Iroh(Box::new(e)))
}

/// Streams a peer may open at once before its hello proved a contact: one bidirectional
/// stream (the hello), no unidirectional one.
pub const STRANGER_BI_STREAMS: u32 = 1;
/// Bytes a peer may have in flight on one stream (before and after the hello; QUIC has no
/// per-connection change of it): room for two frames of [`MAX_FRAME_LEN`].
pub const STREAM_WINDOW: u32 = 2 * (MAX_FRAME_LEN as u32 + 4);
/// Bytes a peer may have in flight on the whole connection before its hello proved a contact.
pub const STRANGER_WINDOW: u32 = 4 * STREAM_WINDOW;
/// Bidirectional streams a proven contact may open at once (one per message in flight).
pub const CONTACT_BI_STREAMS: u32 = 128;
/// Unidirectional streams a proven contact may open at once; none is used yet, each is
/// stopped at once ([`refuse_uni_streams`]), so a few are enough to answer each explicitly.
pub const CONTACT_UNI_STREAMS: u32 = 4;
/// Bytes a proven contact may have in flight on the whole connection.
pub const CONTACT_WINDOW: u32 = 8 * 1024 * 1024;
/// Longest QUIC idle time: a connection whose peer stops answering is dropped after this.
pub const MAX_IDLE: Duration = Duration::from_secs(30);

/// The transport limits every connection starts with, before a hello proved a contact: a
/// stranger gets one stream for its hello and a small receive window. [`trust`] raises them
/// once the hello passed.
fn stranger_transport() -> iroh::endpoint::QuicTransportConfig {
    let idle = iroh::endpoint::IdleTimeout::try_from(MAX_IDLE).ok();
    iroh::endpoint::QuicTransportConfig::builder()
        .max_concurrent_bidi_streams(VarInt::from_u32(STRANGER_BI_STREAMS))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .stream_receive_window(VarInt::from_u32(STREAM_WINDOW))
        .receive_window(VarInt::from_u32(STRANGER_WINDOW))
        .max_idle_timeout(idle)
        .build()
}

/// Raises a connection's limits to a proven contact's: more streams and a larger window.
pub fn trust(conn: &Connection) {
    conn.set_max_concurrent_bi_streams(VarInt::from_u32(CONTACT_BI_STREAMS));
    conn.set_max_concurrent_uni_streams(VarInt::from_u32(CONTACT_UNI_STREAMS));
    conn.set_receive_window(VarInt::from_u32(CONTACT_WINDOW));
}

/// Where an incoming connection comes from, known before any handshake work: what the
/// agent counts its per-remote cap by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IncomingSource {
    /// A direct connection from this IP address.
    Ip(std::net::IpAddr),
    /// Through the relay, from this device (the relay names it).
    Relayed(DeviceId),
    /// Another transport.
    Other,
}

/// Where `incoming` comes from.
pub fn incoming_source(incoming: &Incoming) -> IncomingSource {
    match incoming.remote_addr() {
        iroh::endpoint::IncomingAddr::Ip(a) => IncomingSource::Ip(a.ip()),
        iroh::endpoint::IncomingAddr::Relay { endpoint_id, .. } => {
            DeviceId::from_bytes(endpoint_id.as_bytes())
                .map_or(IncomingSource::Other, IncomingSource::Relayed)
        }
        _ => IncomingSource::Other,
    }
}

/// Stops every unidirectional stream the peer opens, at once, with `code` (no frame of ours
/// travels on one yet): the peer learns it was refused and nothing stays in buffers. Ends
/// when the connection does.
pub async fn refuse_uni_streams(conn: &Connection, code: dialtone_proto::wire::StreamCode) {
    while let Ok(mut recv) = conn.accept_uni().await {
        let _ = recv.stop(VarInt::from_u32(code.code()));
    }
}

/// Stops a stream's receiving side with `code` and resets its sending side with it.
pub fn refuse_stream(
    send: &mut SendStream,
    recv: &mut RecvStream,
    code: dialtone_proto::wire::StreamCode,
) {
    let _ = recv.stop(VarInt::from_u32(code.code()));
    let _ = send.reset(VarInt::from_u32(code.code()));
}

/// Waits until the endpoint is connected to its relay and knows its public address (at most
/// `timeout`); `false` if that did not happen in time (or there is no relay).
pub async fn wait_online(endpoint: &Endpoint, timeout: Duration) -> bool {
    tokio::time::timeout(timeout, endpoint.online())
        .await
        .is_ok()
}

/// Network checks: HTTPS latency probes to the relay (for networks that block QUIC), but no
/// captive-portal check: it asks `http://RELAY-HOST:80/generate_204`, and our relay beside the
/// directory serves that on another port; the check would only delay the first report by
/// its timeout (about 3 s).
fn net_report_config() -> iroh::NetReportConfig {
    let mut c = iroh::NetReportConfig::minimal();
    c.https_probes = true;
    c
}

/// The device id of an endpoint.
pub fn device_id(endpoint: &Endpoint) -> Option<DeviceId> {
    DeviceId::from_bytes(endpoint.id().as_bytes()).ok()
}

/// The device id of a connection's authenticated peer.
pub fn remote_device(conn: &Connection) -> Option<DeviceId> {
    DeviceId::from_bytes(conn.remote_id().as_bytes()).ok()
}

/// Where this endpoint can be reached right now: direct addresses (IPv6 first), then the
/// relay, ready to publish to the directory.
pub fn local_endpoint_info(endpoint: &Endpoint) -> EndpointInfo {
    let addr = endpoint.addr();
    let mut addrs: Vec<SocketAddr> = addr.ip_addrs().copied().collect();
    if addrs.is_empty() {
        addrs = endpoint
            .bound_sockets()
            .into_iter()
            .filter(|a| !a.ip().is_unspecified())
            .collect();
    }
    addrs.sort_by_key(|a| (a.is_ipv4(), a.ip().is_loopback(), *a));
    addrs.dedup();
    addrs.truncate(dialtone_proto::directory::MAX_ADDRS);
    let relay_url = addr.relay_urls().next().map(|u| u.to_string());
    EndpointInfo { addrs, relay_url }
}

/// Whether a connection's data goes directly between the two devices or through the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PathKind {
    /// Straight between the two devices (UDP over IPv6 or IPv4).
    Direct,
    /// Forwarded by the relay (encrypted end to end; the relay sees only packets).
    Relayed,
    /// No path selected yet (the connection is starting or closing).
    None,
}

/// The path a connection currently sends its data on.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PathInfo {
    /// Direct or relayed.
    pub path: PathKind,
    /// The remote end: a socket address for a direct path, the relay's URL for a relayed one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_addr: Option<String>,
    /// The round-trip time on this path, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rtt_ms: Option<f64>,
    /// How many paths are open (a relayed one and direct candidates, say).
    pub open_paths: usize,
}

/// The path `conn` currently uses for its data.
pub fn selected_path(conn: &Connection) -> PathInfo {
    let paths = conn.paths();
    let mut info = PathInfo {
        path: PathKind::None,
        remote_addr: None,
        rtt_ms: None,
        open_paths: paths.iter().count(),
    };
    if let Some(p) = paths.iter().find(|p| p.is_selected()) {
        info.path = if p.is_ip() {
            PathKind::Direct
        } else {
            PathKind::Relayed
        };
        info.remote_addr = Some(match p.remote_addr() {
            TransportAddr::Ip(a) => a.to_string(),
            TransportAddr::Relay(u) => u.to_string(),
            other => format!("{other:?}"),
        });
        info.rtt_ms = Some(p.rtt().as_secs_f64() * 1000.0);
    }
    info
}

/// Waits until `conn` sends on a direct path; `false` if none was selected within `timeout`
/// or the connection closed.
pub async fn wait_direct(conn: &Connection, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if selected_path(conn).path == PathKind::Direct {
            return true;
        }
        if conn.close_reason().is_some() || tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Calls `on_change` with the new path each time the connection's selected path changes
/// (for example when iroh moves it from the relay to a direct path), until it closes. The
/// task holds only a weak handle: it does not keep the connection open.
pub fn watch_paths(conn: &Connection, on_change: impl Fn(PathInfo) + Send + 'static) {
    let weak = conn.weak_handle();
    let mut events = conn.path_events();
    let mut last = selected_path(conn);
    tokio::spawn(async move {
        loop {
            if futures_util::StreamExt::next(&mut events).await.is_none() {
                return;
            }
            let Some(conn) = weak.upgrade() else { return };
            let now = selected_path(&conn);
            drop(conn);
            if now.path != last.path || now.remote_addr != last.remote_addr {
                on_change(now.clone());
                last = now;
            }
        }
    });
}

/// Why a connection attempt failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The device id is not a valid key.
    #[error("invalid device id")]
    InvalidDevice,
    /// Nothing answered in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// iroh could not connect (no path, handshake failed, wrong key).
    #[error("could not connect")]
    Iroh(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Dials `device` at the addresses the directory gave, within `timeout`.
pub async fn connect(
    endpoint: &Endpoint,
    device: &DeviceId,
    info: &EndpointInfo,
    timeout: Duration,
) -> Result<Connection, ConnectError> {
    let id =
        iroh::PublicKey::from_bytes(device.as_bytes()).map_err(|_| ConnectError::InvalidDevice)?;
    let mut addrs: Vec<TransportAddr> = info.addrs.iter().copied().map(TransportAddr::Ip).collect();
    if let Some(relay) = info.relay_url.as_ref().and_then(|u| u.parse().ok()) {
        addrs.push(TransportAddr::Relay(relay));
    }
    let addr = EndpointAddr::from_parts(id, addrs);
    match tokio::time::timeout(timeout, endpoint.connect(addr, ALPN)).await {
        Err(_) => Err(ConnectError::Timeout(timeout)),
        Ok(Err(e)) => Err(ConnectError::Iroh(Box::new(e))),
        Ok(Ok(conn)) => Ok(conn),
    }
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The stream ended cleanly before a frame started.
    #[error("stream ended")]
    Finished,
    /// The stream broke (connection lost, reset by the peer, or ended mid-frame).
    #[error("stream failed: {0}")]
    Stream(String),
    /// The bytes are not a valid frame.
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// Reads one length-prefixed frame.
pub async fn read_frame(recv: &mut RecvStream) -> Result<Frame, FrameError> {
    let mut prefix = [0u8; 4];
    let mut filled = 0;
    while filled < 4 {
        match recv.read(&mut prefix[filled..]).await {
            Ok(Some(n)) => filled += n,
            Ok(None) if filled == 0 => return Err(FrameError::Finished),
            Ok(None) => return Err(FrameError::Stream("ended inside a frame header".into())),
            Err(e) => return Err(FrameError::Stream(e.to_string())),
        }
    }
    let len = Frame::decode_len(prefix)?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body)
        .await
        .map_err(|e| FrameError::Stream(e.to_string()))?;
    Ok(Frame::decode_body(&body)?)
}

/// Writes one length-prefixed frame.
pub async fn write_frame(send: &mut SendStream, frame: &Frame) -> Result<(), FrameError> {
    let bytes = frame.encode();
    debug_assert!(bytes.len() <= MAX_FRAME_LEN + 4);
    send.write_all(&bytes)
        .await
        .map_err(|e| FrameError::Stream(e.to_string()))
}

/// Closes a connection with a Dialtone close code.
pub fn close(conn: &Connection, code: dialtone_proto::wire::CloseCode) {
    conn.close(VarInt::from_u32(code.code()), code_reason(code).as_bytes());
}

fn code_reason(code: dialtone_proto::wire::CloseCode) -> &'static str {
    use dialtone_proto::wire::CloseCode::*;
    match code {
        BadCertificate => "bad certificate",
        NotAContact => "not a contact",
        KeyChanged => "identity key changed",
        Protocol => "protocol violation",
        UnsupportedVersion => "unsupported version",
        Idle => "idle",
        Shutdown => "shutdown",
        NoDirectPath => "no direct path (direct-only)",
        _ => "closed",
    }
}

/// The Dialtone close code a connection was closed with by the peer, if any.
pub fn peer_close_code(err: &ConnectionError) -> Option<dialtone_proto::wire::CloseCode> {
    match err {
        ConnectionError::ApplicationClosed(close) => {
            dialtone_proto::wire::CloseCode::from_code(close.error_code.into_inner())
        }
        _ => None,
    }
}

/// A receiver that changes whenever the endpoint's addresses change (a network change, a new
/// interface, a relay connection), so the agent can republish them. The forwarding task ends
/// when the endpoint closes.
pub fn addr_changes(endpoint: &Endpoint) -> tokio::sync::watch::Receiver<()> {
    use iroh::Watcher;
    let (tx, rx) = tokio::sync::watch::channel(());
    let mut watcher = endpoint.watch_addr();
    tokio::spawn(async move {
        while watcher.updated().await.is_ok() {
            if tx.send(()).is_err() {
                break;
            }
        }
    });
    rx
}
