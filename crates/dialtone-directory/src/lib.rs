//! Dialtone's directory: a phone book with a presence light, not a post office.
//!
//! It binds identifiers (email addresses, phone numbers) to identity keys after proof of
//! control, keeps one WebSocket session per online device (the session *is* presence), tells
//! accepted contacts — and only them — who is online and at which addresses, relays contact
//! requests live, and answers public key lookups (`/v1/lookup`, WebFinger).
//!
//! It is not trusted for keys: every binding goes into a key-transparency log ([`kt`]: Meta's
//! `akd` on the same SQLite file, epochs signed into an append-only checkpoint log) whose
//! proofs clients verify (`/v1/kt/…` and the session's `kt_*` operations).
//!
//! It is **not** a message store: it never sees message content, and nothing it pushes is
//! kept for a device that is not connected.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let mut config = dialtone_directory::Config::default();
//! config.listen = "127.0.0.1:0".parse()?;
//! config.verify_outbox = Some("outbox".into());
//! let server = dialtone_directory::Server::bind(config).await?;
//! println!("listening on {}", server.url());
//! server.shutdown().await;
//! # Ok(()) }
//! ```
#![cfg_attr(not(test), deny(clippy::unwrap_used))]
#![deny(missing_docs, rustdoc::broken_intra_doc_links)]

pub mod channel;
pub mod cli;
pub mod config;
mod devicelist;
mod http;
pub mod kt;
pub mod provision;
mod reglock;
mod sessions;
mod store;
pub mod view;
mod ws;

use std::{
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
};

use dialtone_proto::{Identifier, rules::RateLimiter};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

pub use channel::{Channels, OutboxChannel, SmsChannel, SmtpChannel, VerificationChannel};
pub use config::Config;
pub use store::StoreError;

/// Why the directory could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BindError {
    /// Plain HTTP was requested on an address that is not loopback.
    #[error(
        "refusing plain HTTP on {0}, which is not a loopback address: configure TLS (--tls-cert/--tls-key) \
         or pass --insecure-http if you really mean it"
    )]
    InsecureHttp(SocketAddr),
    /// The TLS files are unusable.
    #[error("TLS: {0}")]
    Tls(String),
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A verification channel is misconfigured.
    #[error("{0}")]
    Channel(String),
    /// The database could not be opened.
    #[error("cannot open the database: {0}")]
    Store(#[from] StoreError),
    /// The relay could not start.
    #[error(transparent)]
    Relay(#[from] dialtone_net::relay::RelayError),
    /// The relay's address echo could not bind.
    #[error("cannot bind the relay's address echo: {0}")]
    Echo(#[source] std::io::Error),
    /// The transparency log could not be opened.
    #[error("cannot open the transparency log: {0}")]
    Transparency(#[from] kt::KtError),
}

/// What `/v1/info` tells agents about the relay.
#[derive(Debug, Clone)]
pub(crate) struct RelayInfo {
    pub(crate) port: u16,
    pub(crate) tls: bool,
    pub(crate) quic_port: Option<u16>,
    pub(crate) echo_ports: Vec<u16>,
    pub(crate) public_url: Option<String>,
}

type Limiter<K> = Mutex<RateLimiter<K>>;

#[derive(Debug)]
pub(crate) struct Limits {
    register_id: Limiter<Identifier>,
    register_ip: Limiter<IpAddr>,
    register_global: Limiter<()>,
    confirm_ip: Limiter<IpAddr>,
    requests_ip: Limiter<IpAddr>,
    contact_requests: Limiter<Identifier>,
}

/// Shared state of the running server.
#[derive(Debug)]
pub(crate) struct AppState {
    config: Config,
    store: store::Store,
    channels: Channels,
    sessions: sessions::Sessions,
    limits: Limits,
    public_url: String,
    relay: Option<RelayInfo>,
    kt: Arc<kt::Transparency>,
}

/// A running directory.
#[derive(Debug)]
pub struct Server {
    local_addr: SocketAddr,
    url: String,
    state: Arc<AppState>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    relay: Option<(
        dialtone_net::relay::RelayServer,
        dialtone_net::doctor::AddrEcho,
    )>,
}

/// How a [`Server`] is put together before it binds: its configuration, and what may be
/// plugged into its seams (verification channels, the [`view::View`] of its answers, extra
/// routes).
#[derive(Debug)]
pub struct ServerBuilder {
    config: Config,
    channels: Option<Channels>,
    view: view::ViewHandle,
    routes: Option<axum::Router>,
}

impl ServerBuilder {
    /// Verification channels instead of those the configuration names.
    pub fn channels(mut self, channels: Channels) -> Self {
        self.channels = Some(channels);
        self
    }

    /// What the server shows whoever asks (default [`view::Honest`]).
    pub fn view(mut self, view: Arc<dyn view::View>) -> Self {
        self.view = view::ViewHandle(view);
        self
    }

    /// More routes, served beside the directory's own (they must not overlap them).
    pub fn routes(mut self, routes: axum::Router) -> Self {
        self.routes = Some(routes);
        self
    }

    /// Opens the store, binds the listener and starts serving.
    pub async fn bind(self) -> Result<Server, BindError> {
        let channels = match self.channels {
            Some(c) => c,
            None => Channels::from_config(&self.config)
                .map_err(|e| BindError::Channel(e.to_string()))?,
        };
        Server::start(self.config, channels, self.view, self.routes).await
    }
}

impl Server {
    /// A builder for a server with `config`.
    pub fn builder(config: Config) -> ServerBuilder {
        ServerBuilder {
            config,
            channels: None,
            view: view::ViewHandle::default(),
            routes: None,
        }
    }

    /// Opens the store, binds the listener and starts serving, with the verification
    /// channels the configuration names (outbox, `[smtp]`, `[sms]`).
    pub async fn bind(config: Config) -> Result<Self, BindError> {
        Self::builder(config).bind().await
    }

    /// Like [`Server::bind`], with explicit verification channels.
    pub async fn bind_with_channels(config: Config, channels: Channels) -> Result<Self, BindError> {
        Self::builder(config).channels(channels).bind().await
    }

    async fn start(
        config: Config,
        channels: Channels,
        view: view::ViewHandle,
        routes: Option<axum::Router>,
    ) -> Result<Self, BindError> {
        let tls = match &config.tls {
            Some(t) => Some(tls_acceptor(t)?),
            None => {
                if !config.listen.ip().is_loopback() && !config.insecure_http {
                    return Err(BindError::InsecureHttp(config.listen));
                }
                None
            }
        };
        let relay = match &config.relay {
            None => None,
            Some(r) => Some(spawn_relay(&config, r).await?),
        };
        let relay_info = relay.as_ref().map(|(server, echo)| RelayInfo {
            port: server.addr().port(),
            tls: server.tls(),
            quic_port: server.quic_port(),
            echo_ports: echo.ports().to_vec(),
            public_url: config.relay.as_ref().and_then(|r| r.public_url.clone()),
        });
        let dir = config.data_dir.clone();
        let store = tokio::task::spawn_blocking(move || store::Store::open(&dir))
            .await
            .map_err(|_| StoreError::Join)??;
        let kt = kt::Transparency::open(
            store.clone(),
            &config.data_dir,
            config.transparency.clone(),
            view.0.clone(),
        )
        .await?;
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| BindError::Listen {
                    addr: config.listen,
                    source,
                })?;
        let local_addr = listener.local_addr().map_err(|source| BindError::Listen {
            addr: config.listen,
            source,
        })?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{local_addr}");
        let l = &config.limits;
        let limits = Limits {
            register_id: Mutex::new(RateLimiter::new(l.register_per_identifier.rule())),
            register_ip: Mutex::new(RateLimiter::new(l.register_per_ip.rule())),
            register_global: Mutex::new(RateLimiter::new(l.register_global.rule())),
            confirm_ip: Mutex::new(RateLimiter::new(l.confirm_per_ip.rule())),
            requests_ip: Mutex::new(RateLimiter::new(l.requests_per_ip.rule())),
            contact_requests: Mutex::new(RateLimiter::new(l.contact_requests_per_account.rule())),
        };
        let public_url = config
            .public_url
            .clone()
            .unwrap_or_else(|| url.clone())
            .trim_end_matches('/')
            .to_owned();
        let state = Arc::new(AppState {
            config,
            store,
            channels,
            sessions: sessions::Sessions::new(view),
            limits,
            public_url,
            relay: relay_info,
            kt: kt.clone(),
        });
        let cancel = CancellationToken::new();
        let publisher = tokio::spawn(kt.run(cancel.clone()));
        let housekeeping = tokio::spawn(sessions::housekeeping(state.clone(), cancel.clone()));
        let router = http::router(state.clone(), routes);
        let dead_link = state.config.session.dead_link;
        let accept = tokio::spawn(accept_loop(
            listener,
            router,
            tls,
            dead_link,
            cancel.clone(),
        ));
        let task = tokio::spawn(async move {
            let _ = accept.await;
            let _ = publisher.await;
            let _ = housekeeping.await;
        });
        info!(%url, "directory listening");
        if let Some((r, _)) = &relay {
            info!(addr = %r.addr(), tls = r.tls(), "relay listening");
        }
        Ok(Self {
            local_addr,
            url,
            state,
            cancel,
            task,
            relay,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The base URL (`http://127.0.0.1:PORT` or `https://…`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The relay's bound address, if it runs.
    pub fn relay_addr(&self) -> Option<SocketAddr> {
        self.relay.as_ref().map(|(r, _)| r.addr())
    }

    /// The latest signed checkpoint of the transparency log.
    pub async fn checkpoint(
        &self,
    ) -> Result<dialtone_proto::transparency::Checkpoint, kt::KtError> {
        self.state.kt.checkpoint().await
    }

    /// Publishes every queued binding now, as one epoch (tests and benchmarks; the server
    /// also does it on its own every epoch interval).
    pub async fn publish_now(
        &self,
    ) -> Result<Option<dialtone_proto::transparency::Checkpoint>, kt::KtError> {
        self.state.kt.publish_pending().await
    }

    /// Number of open sessions (online devices).
    pub fn sessions(&self) -> usize {
        self.state.sessions.count()
    }

    /// Stops accepting, closes every session (each sends a WebSocket close frame), and waits
    /// for the session tasks to end (5 s at most).
    pub async fn shutdown(mut self) {
        if let Some((relay, _echo)) = self.relay.take() {
            relay.shutdown().await;
        }
        // The online accounts were seen until now (the sessions skip it as they close).
        sessions::refresh_seen(&self.state).await;
        self.cancel.cancel();
        self.state.sessions.shutdown.cancel();
        self.state.sessions.kill_all();
        let _ = self.task.await;
        let tasks = &self.state.sessions.tasks;
        tasks.close();
        if tokio::time::timeout(std::time::Duration::from_secs(5), tasks.wait())
            .await
            .is_err()
        {
            debug!("sessions still closing after 5 s; leaving them");
        }
        info!("directory stopped");
    }

    /// Waits until the server stops (it stops only through [`Server::shutdown`]).
    pub async fn join(&mut self) {
        let _ = (&mut self.task).await;
    }
}

async fn spawn_relay(
    config: &Config,
    r: &config::RelaySection,
) -> Result<
    (
        dialtone_net::relay::RelayServer,
        dialtone_net::doctor::AddrEcho,
    ),
    BindError,
> {
    let mut rc = dialtone_net::relay::RelayServerConfig::new(r.listen);
    match &config.tls {
        Some(t) => rc.tls = Some(load_cert(t)?),
        None => {
            if !r.listen.ip().is_loopback() && !config.insecure_http {
                return Err(BindError::InsecureHttp(r.listen));
            }
        }
    }
    let server = dialtone_net::relay::RelayServer::spawn(rc).await?;
    let echo = dialtone_net::doctor::AddrEcho::spawn(r.listen.ip())
        .await
        .map_err(BindError::Echo)?;
    Ok((server, echo))
}

fn load_cert(
    t: &config::TlsConfig,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), BindError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&t.cert)
        .and_then(|i| i.collect::<Result<_, _>>())
        .map_err(|e| BindError::Tls(format!("{}: {e}", t.cert.display())))?;
    if certs.is_empty() {
        return Err(BindError::Tls(format!(
            "{}: no certificate",
            t.cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(&t.key)
        .map_err(|e| BindError::Tls(format!("{}: {e}", t.key.display())))?;
    Ok((certs, key))
}

fn tls_acceptor(t: &config::TlsConfig) -> Result<tokio_rustls::TlsAcceptor, BindError> {
    let (certs, key) = load_cert(t)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| BindError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| BindError::Tls(e.to_string()))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Session resumption: an agent that reconnects (after a cut, a hand-over, a restart of its
    // own) presents a ticket and skips the certificate and its signature. Tickets are
    // stateless (encrypted under a key the process draws and rotates every 6 hours), so a
    // hundred thousand agents cost no memory here; one per handshake is all an agent uses.
    cfg.ticketer =
        rustls::crypto::ring::Ticketer::new().map_err(|e| BindError::Tls(e.to_string()))?;
    cfg.send_tls13_tickets = 1;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

/// A client must send its request headers within this time (slow clients hold no socket).
const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Lets the kernel close `stream` within `within` once the other end is gone: keepalive
/// probes after `within / 2` of silence, two more a quarter apart, and a user timeout for
/// data that is never acknowledged. No wake-up of ours is involved.
fn close_dead_links(stream: &tokio::net::TcpStream, within: std::time::Duration) {
    let sock = socket2::SockRef::from(stream);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(within / 2)
        .with_interval(within / 4)
        .with_retries(2);
    if let Err(e) = sock
        .set_tcp_keepalive(&keepalive)
        .and_then(|()| sock.set_tcp_user_timeout(Some(within)))
    {
        debug!("cannot set TCP keepalive: {e}");
    }
}

async fn accept_loop(
    listener: TcpListener,
    router: axum::Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    dead_link: std::time::Duration,
    cancel: CancellationToken,
) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    debug!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        close_dead_links(&stream, dead_link);
        // The shared router, with the client's address put into each request (layering the
        // router per connection would copy its route table for every connection).
        let router = router.clone();
        let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(http::ClientAddr(peer));
            tower::ServiceExt::oneshot(router.clone(), req)
        });
        let tls = tls.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            let result = match tls {
                Some(acceptor) => {
                    let Ok(Ok(s)) = tokio::time::timeout(
                        std::time::Duration::from_secs(10),
                        acceptor.accept(stream),
                    )
                    .await
                    else {
                        return;
                    };
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(s), svc);
                    tokio::select! { r = conn => r, _ = cancel.cancelled() => Ok(()) }
                }
                None => {
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                    tokio::select! { r = conn => r, _ = cancel.cancelled() => Ok(()) }
                }
            };
            if let Err(e) = result {
                debug!("connection ended: {e}");
            }
        });
    }
}
