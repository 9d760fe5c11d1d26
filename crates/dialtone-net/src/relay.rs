//! The relay server the directory runs beside itself (iroh-relay, feature `relay-server`).
//!
//! Agents connect to it over HTTPS (a WebSocket carrying encrypted QUIC packets). iroh uses it
//! to learn each device's public address (QUIC address discovery, UDP, needs TLS), to
//! coordinate hole punching, and — only while no direct path exists — to forward packets in
//! real time. It keeps nothing: a packet for a device that is not connected is dropped.

use std::{net::SocketAddr, sync::Arc};

use iroh_relay::server::{CertConfig, QuicConfig, RelayConfig, Server, ServerConfig, TlsConfig};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// How to run the relay.
#[derive(Debug)]
#[non_exhaustive]
pub struct RelayServerConfig {
    /// The relay's address: HTTPS with `tls`, plain HTTP without (loopback tests only).
    pub listen: SocketAddr,
    /// Certificate chain and key for HTTPS and QUIC address discovery. Without it there is no
    /// address discovery, so devices behind NAT learn no public address and cannot punch holes.
    pub tls: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
}

impl RelayServerConfig {
    /// A relay on `listen`, without TLS.
    pub fn new(listen: SocketAddr) -> Self {
        Self { listen, tls: None }
    }
}

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// The certificate or key is unusable.
    #[error("relay TLS: {0}")]
    Tls(#[source] rustls::Error),
    /// iroh-relay could not start (address in use, say).
    #[error("cannot start the relay on {addr}")]
    Spawn {
        /// The address.
        addr: SocketAddr,
        /// What iroh-relay said.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// A running relay.
#[derive(Debug)]
pub struct RelayServer {
    server: Server,
    addr: SocketAddr,
    tls: bool,
}

impl RelayServer {
    /// Starts the relay.
    pub async fn spawn(config: RelayServerConfig) -> Result<Self, RelayError> {
        let listen = config.listen;
        let tls = config.tls.is_some();
        let mut relay = match config.tls {
            None => RelayConfig::new(listen),
            Some((certs, key)) => {
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let server_config = rustls::ServerConfig::builder_with_provider(provider)
                    .with_protocol_versions(&[&rustls::version::TLS13])
                    .map_err(RelayError::Tls)?
                    .with_no_client_auth()
                    .with_single_cert(certs, key)
                    .map_err(RelayError::Tls)?;
                // The captive-portal probe must be plain HTTP: a free port beside the relay.
                let mut r = RelayConfig::new(SocketAddr::new(listen.ip(), 0));
                r.tls = Some(TlsConfig::new(listen, CertConfig::Manual { server_config }));
                r
            }
        };
        relay.key_cache_capacity = Some(1024);
        let quic = tls.then(|| QuicConfig::new(SocketAddr::new(listen.ip(), 0)));
        let mut server_config = ServerConfig::default();
        server_config.relay = Some(relay);
        server_config.quic = quic;
        let server = Server::spawn(server_config)
            .await
            .map_err(|e| RelayError::Spawn {
                addr: listen,
                source: Box::new(e),
            })?;
        let addr = if tls {
            server.https_addr()
        } else {
            server.http_addr()
        }
        .unwrap_or(listen);
        Ok(Self { server, addr, tls })
    }

    /// The relay's bound address (HTTPS, or HTTP without TLS).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether it serves HTTPS.
    pub fn tls(&self) -> bool {
        self.tls
    }

    /// The UDP port of QUIC address discovery, if it runs (with TLS only).
    pub fn quic_port(&self) -> Option<u16> {
        self.server.quic_addr().map(|a| a.port())
    }

    /// Stops the relay; every forwarded connection ends.
    pub async fn shutdown(self) {
        let _ = self.server.shutdown().await;
    }
}
