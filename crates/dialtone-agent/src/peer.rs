//! Peer connections: the `dialtone/1` protocol between two agents over iroh.
//!
//! Every connection starts with a hello each way (see `dialtone_proto::wire`); the checks
//! are the sans-IO machine `dialtone_proto::hello`, driven by `hello` here: the certificate
//! is for the device that TLS authenticated, the identity is the one pinned for that
//! identifier and the one the directory and its log prove, and the peer is an accepted
//! contact. A connection keeps the features both hellos announced and is used only within
//! them. Each message then uses a stream of its own. Connections are cached per device, used
//! in both directions, dialed once at a time per device, and closed when idle. `guard` holds
//! what a stranger may cost before its hello passed (pending-connection caps, the bound on
//! the directory lookups its hello may cause).

use std::{sync::Arc, time::Duration, time::Instant};

use dialtone_net::{Connection, read_frame, write_frame};
use dialtone_proto::{
    DeviceId, Identifier, Refusal,
    directory::{DeviceEndpoint, PresenceState, Relation},
    hello::{Accepted, Role},
    wire::{
        CloseCode, DecodeError, Feature, Features, Frame, MAX_TEXT_LEN, MessageId, StreamCode,
        StreamKind,
    },
};
use tracing::{debug, warn};

use crate::{
    Delivery, DeviceDelivery, Event, Inner, PeerConn, SendError, new_message_id,
    session::SessionError, timestamp_ms,
};

mod guard;
mod hello;

pub(crate) use guard::PeerState;
use hello::{Outcome, lookup};

/// Accepts incoming connections until the agent stops. A connection over the caps on
/// connections whose hello has not passed (in total, and per remote) is refused at once,
/// before any handshake work.
pub(crate) async fn accept_loop(inner: Arc<Inner>) {
    loop {
        let incoming = tokio::select! {
            _ = inner.cancel.cancelled() => return,
            i = inner.endpoint.accept() => i,
        };
        let Some(incoming) = incoming else { return };
        let source = dialtone_net::incoming_source(&incoming);
        let Some(slot) = inner.peer.admit(source) else {
            debug!(?source, "too many connections without a hello: refused");
            incoming.refuse();
            continue;
        };
        let inner = inner.clone();
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(inner.config.connect_timeout, async {
                incoming
                    .accept()
                    .map_err(|e| e.to_string())?
                    .await
                    .map_err(|e| e.to_string())
            });
            let conn = match handshake.await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => return debug!("incoming connection failed: {e}"),
                Err(_) => return debug!("incoming connection: no QUIC handshake in time"),
            };
            handle_incoming(inner, conn, slot).await;
        });
    }
}

async fn handle_incoming(inner: Arc<Inner>, conn: Connection, slot: guard::PendingSlot) {
    let Some(remote) = dialtone_net::remote_device(&conn) else {
        return dialtone_net::close(&conn, CloseCode::BadCertificate);
    };
    // --direct-only: not a byte of ours over the relay, not even the hello. (Stopping a bit
    // before the dialer's own deadline, so that it learns why.)
    if inner.config.direct_only
        && !dialtone_net::wait_direct(&conn, inner.config.connect_timeout * 3 / 4).await
    {
        debug!(peer = %remote.short(), "no direct path (direct-only)");
        return dialtone_net::close(&conn, CloseCode::NoDirectPath);
    }
    let handshake = async {
        let Ok((send, recv)) = conn.accept_bi().await else {
            return Outcome::Refused(CloseCode::Protocol);
        };
        hello::run(&inner, Role::Listener, remote, send, recv).await
    };
    let outcome = tokio::time::timeout(inner.config.connect_timeout, handshake).await;
    drop(slot);
    match outcome {
        Ok(Outcome::Link {
            send,
            recv,
            offer,
            name,
            proof,
        }) => {
            crate::link::incoming(&inner, conn, (send, recv), remote, offer, name, proof).await;
        }
        Ok(Outcome::Accepted(accepted)) => {
            debug!(peer = %remote.short(), features = ?accepted.features, "incoming peer connection verified");
            register(&inner, conn, remote, accepted);
        }
        Ok(Outcome::Refused(code)) => {
            debug!(peer = %remote.short(), ?code, "incoming peer connection refused");
            dialtone_net::close(&conn, code);
        }
        Err(_) => dialtone_net::close(&conn, CloseCode::Protocol),
    }
}

fn register(inner: &Arc<Inner>, conn: Connection, device: DeviceId, accepted: Accepted) {
    // A proven contact: lift the limits a stranger's connection starts with.
    dialtone_net::trust(&conn);
    let identifier = accepted.identifier;
    let features = accepted.features;
    let events = inner.events.clone();
    let who = identifier.clone();
    dialtone_net::watch_paths(&conn, move |path| {
        debug!(peer = %device.short(), path = ?path.path, "peer path changed");
        let _ = events.send(Event::Path {
            identifier: who.clone(),
            device,
            path,
        });
    });
    inner.lock().conns.insert(
        device,
        PeerConn {
            conn: conn.clone(),
            identifier: identifier.clone(),
            last_used: Instant::now(),
            features,
        },
    );
    if inner.peer.legacy {
        // As an agent from before features: a unidirectional stream is something it would
        // not understand. Close, so that a test sees it.
        let c = conn.clone();
        tokio::spawn(async move {
            if c.accept_uni().await.is_ok() {
                dialtone_net::close(&c, CloseCode::Protocol);
            }
        });
    } else {
        let c = conn.clone();
        tokio::spawn(async move {
            dialtone_net::refuse_uni_streams(&c, StreamCode::Unsupported).await;
        });
    }
    tokio::spawn(serve_streams(
        inner.clone(),
        conn,
        device,
        identifier,
        features,
    ));
}

/// What a stream's first frame (and, for an `open`, the next) amounted to.
enum Incoming {
    Text {
        id: MessageId,
        sent_at_ms: u64,
        body: String,
    },
    /// Not understood: answer `unsupported` naming this frame (and kind).
    Unsupported { frame: String, kind: Option<String> },
    /// Broken or timed out: drop the stream.
    Broken,
}

/// Reads a stream's request: `open` + `text`, or (a legacy peer's layout) `text` alone. In
/// legacy mode (the test knob) an `open` is not understood, as by an agent before features.
async fn read_incoming(recv: &mut dialtone_net::RecvStream, legacy: bool) -> Incoming {
    let first = read_frame(recv).await;
    let first = match first {
        Ok(Frame::Open { kind }) if !legacy => match StreamKind::parse(&kind) {
            Some(StreamKind::Message) => read_frame(recv).await,
            _ => {
                return Incoming::Unsupported {
                    frame: "open".into(),
                    kind: Some(kind),
                };
            }
        },
        other => other,
    };
    match first {
        Ok(Frame::Text {
            id,
            sent_at_ms,
            body,
        }) => Incoming::Text {
            id,
            sent_at_ms,
            body,
        },
        Ok(other) => Incoming::Unsupported {
            frame: other.name().into(),
            kind: None,
        },
        Err(dialtone_net::FrameError::Decode(DecodeError::UnknownFrame(name))) => {
            Incoming::Unsupported {
                frame: name,
                kind: None,
            }
        }
        Err(e) => {
            debug!("bad frame from peer: {e}");
            Incoming::Broken
        }
    }
}

/// Answers the streams a verified peer opens, until the connection ends.
async fn serve_streams(
    inner: Arc<Inner>,
    conn: Connection,
    device: DeviceId,
    from: Identifier,
    features: Features,
) {
    loop {
        let (mut send, mut recv) = tokio::select! {
            _ = inner.cancel.cancelled() => return,
            s = conn.accept_bi() => match s {
                Ok(s) => s,
                Err(_) => break,
            },
        };
        touch(&inner, &device);
        let inner = inner.clone();
        let from = from.clone();
        let conn = conn.clone();
        tokio::spawn(async move {
            let incoming = match tokio::time::timeout(
                Duration::from_secs(10),
                read_incoming(&mut recv, inner.peer.legacy),
            )
            .await
            {
                Ok(i) => i,
                Err(_) => Incoming::Broken,
            };
            let (id, sent_at_ms, body) = match incoming {
                Incoming::Text {
                    id,
                    sent_at_ms,
                    body,
                } => (id, sent_at_ms, body),
                Incoming::Broken => {
                    return dialtone_net::refuse_stream(
                        &mut send,
                        &mut recv,
                        StreamCode::Unsupported,
                    );
                }
                Incoming::Unsupported { frame, kind } => {
                    debug!(
                        frame,
                        ?kind,
                        "peer sent a frame or stream kind we do not know"
                    );
                    if inner.peer.legacy {
                        // An agent from before features could not read it either.
                        return dialtone_net::close(&conn, CloseCode::Protocol);
                    }
                    // Only to a peer that announced it can read the answer.
                    if features.contains(Feature::Unsupported) {
                        let answer = Frame::Unsupported { frame, kind };
                        let _ = write_frame(&mut send, &answer).await;
                        let _ = send.finish();
                        let _ = recv.stop(dialtone_net::VarInt::from_u32(
                            StreamCode::Unsupported.code(),
                        ));
                    } else {
                        dialtone_net::refuse_stream(&mut send, &mut recv, StreamCode::Unsupported);
                    }
                    return;
                }
            };
            // The direct-path wait and the front ends' wait together stay inside the sender's
            // 5 s acknowledgement timeout (2 s + DELIVER_WAIT 2.5 s + grace).
            let answer = if inner.config.direct_only
                && !dialtone_net::wait_direct(&conn, Duration::from_secs(2)).await
            {
                Frame::Refuse {
                    id,
                    refusal: Refusal::Unreachable,
                }
            } else {
                deliver(&inner, from, device, id, sent_at_ms, body).await
            };
            let answer = match answer {
                // A peer that cannot read `no-front-end` is told the nearest refusal it knows.
                Frame::Refuse {
                    id,
                    refusal: Refusal::NoFrontEnd,
                } if !features.contains(Feature::NoFrontEnd) => Frame::Refuse {
                    id,
                    refusal: Refusal::Timeout,
                },
                a => a,
            };
            let _ = write_frame(&mut send, &answer).await;
            let _ = send.finish();
        });
    }
    let mut st = inner.lock();
    if st
        .conns
        .get(&device)
        .is_some_and(|pc| pc.conn.stable_id() == conn.stable_id())
    {
        st.conns.remove(&device);
    }
}

/// Shows a message to this device's front ends; the answer is an ack once at least one took
/// it (`shown_to` says how many), or a refusal. A duplicate (the sender's redial after a lost
/// answer) is answered again as the first time, not shown twice.
async fn deliver(
    inner: &Inner,
    from: Identifier,
    device: DeviceId,
    id: MessageId,
    sent_at_ms: u64,
    body: String,
) -> Frame {
    let lan_only = inner.lan.is_some() && !*inner.connected.borrow();
    let (state, accepted) = {
        let st = inner.lock();
        let accepted = match st.contacts.get(&from) {
            Some(c) => c.relation == Relation::Accepted,
            // LAN mode with the directory down: contacts pinned earlier (as the hello checked).
            None => lan_only && st.pins.get(&from).is_some_and(|p| !p.not_a_contact),
        };
        (st.presence, accepted)
    };
    // Checked on every message, not only at the hello: a contact removed or blocked since the
    // connection opened is refused.
    if !accepted {
        return Frame::Refuse {
            id,
            refusal: Refusal::NotAContact,
        };
    }
    match state {
        PresenceState::Busy => Frame::Refuse {
            id,
            refusal: Refusal::DoNotDisturb,
        },
        PresenceState::Invisible | PresenceState::Offline => Frame::Refuse {
            id,
            refusal: Refusal::Offline,
        },
        PresenceState::Online | PresenceState::Away => {
            let filler = match inner.seen.claim((device, id)) {
                crate::recent::Claim::First(filler) => filler,
                crate::recent::Claim::Again(rx) => {
                    // Shown (or being shown) already: the same answer again.
                    return crate::recent::outcome(rx).await.unwrap_or(Frame::Refuse {
                        id,
                        refusal: Refusal::NoFrontEnd,
                    });
                }
            };
            let shown_to = inner
                .events
                .deliver(Event::Message {
                    from,
                    device,
                    id,
                    sent_at_ms,
                    body,
                })
                .await;
            let answer = if shown_to == 0 {
                Frame::Refuse {
                    id,
                    refusal: Refusal::NoFrontEnd,
                }
            } else {
                Frame::Ack { id, shown_to }
            };
            filler.fill(answer.clone());
            answer
        }
    }
}

fn touch(inner: &Inner, device: &DeviceId) {
    if let Some(pc) = inner.lock().conns.get_mut(device) {
        pc.last_used = Instant::now();
    }
}

/// Closes idle connections now and then.
pub(crate) async fn reap_idle(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = inner.cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let idle = inner.config.idle_timeout;
        let mut st = inner.lock();
        st.conns.retain(|_, pc| {
            let keep = pc.conn.close_reason().is_none() && pc.last_used.elapsed() < idle;
            if !keep {
                dialtone_net::close(&pc.conn, CloseCode::Idle);
            }
            keep
        });
    }
}

/// Sends a text to every online device of `to`.
pub(crate) async fn send_text(
    inner: &Arc<Inner>,
    to: Identifier,
    body: String,
) -> Result<Delivery, SendError> {
    if body.is_empty() {
        return Err(SendError::Invalid("the message is empty".into()));
    }
    if body.len() > MAX_TEXT_LEN {
        return Err(SendError::Invalid(format!(
            "the message is longer than {MAX_TEXT_LEN} bytes"
        )));
    }
    if to == inner.identifier {
        return Err(SendError::Invalid(
            "you cannot send a message to yourself".into(),
        ));
    }
    let cached = inner
        .lock()
        .contacts
        .get(&to)
        .filter(|c| c.relation == Relation::Accepted && !c.presence.devices.is_empty())
        .cloned();
    let contact = match cached {
        Some(c) => c,
        None => match lookup(inner, &to).await {
            Ok(c) => c,
            Err(SessionError::NotConnected | SessionError::Timeout) if inner.lan.is_some() => {
                return lan_send(inner, to, body).await;
            }
            Err(SessionError::Refused(body))
                if body.error == dialtone_proto::directory::ErrorCode::NotFound =>
            {
                return Err(SendError::Invalid(format!(
                    "no one is registered as {to}; check the address"
                )));
            }
            Err(e) => return Err(e.into()),
        },
    };
    match contact.relation {
        Relation::Accepted => {}
        Relation::Blocked => return Err(SendError::refused(Refusal::Blocked, &to)),
        _ => return Err(SendError::refused(Refusal::NotAContact, &to)),
    }
    // The key must be the one the transparency log proves before anything goes to it.
    if let Err(f) = crate::kt::ensure(inner, &to, &contact.identity_key).await {
        if let crate::kt::KtFailure::Unavailable(_) = f {
            return Err(SendError::DirectoryUnavailable(format!(
                "{f}; nothing was sent"
            )));
        }
        if !f.is_attack() {
            return Err(SendError::Invalid(format!("{f}; nothing was sent")));
        }
        return Err(SendError::Refused {
            refusal: Refusal::DirectoryUntrusted,
            message: format!("WARNING: {f}. Nothing was sent to {to}."),
        });
    }
    let pinned = inner.lock().pins.get(&to).map(|p| p.identity_key);
    if pinned.is_some_and(|k| k != contact.identity_key) {
        return Err(SendError::refused(Refusal::KeyChanged, &to));
    }
    match contact.presence.state {
        PresenceState::Offline | PresenceState::Invisible => {
            return Err(SendError::refused(Refusal::Offline, &to));
        }
        PresenceState::Busy => return Err(SendError::refused(Refusal::DoNotDisturb, &to)),
        _ => {}
    }
    let devices: Vec<DeviceEndpoint> = contact
        .presence
        .devices
        .iter()
        .filter(|d| d.cert.identity_key == contact.identity_key)
        .cloned()
        .collect();
    if devices.is_empty() {
        return Err(SendError::refused(Refusal::Offline, &to));
    }
    let id = new_message_id();
    let sent_at_ms = timestamp_ms();
    let attempts = devices.iter().map(|d| {
        let frame = Frame::Text {
            id,
            sent_at_ms,
            body: body.clone(),
        };
        send_to_device(inner, &to, d.cert.device_id, &d.endpoint, frame)
    });
    let results = futures_util::future::join_all(attempts).await;
    let mut delivered = Vec::new();
    let mut refusals = Vec::new();
    for (d, r) in devices.iter().zip(results) {
        match r {
            Ok(shown_to) => delivered.push(DeviceDelivery {
                device: d.cert.device_id,
                name: d.cert.name.clone(),
                shown_to,
            }),
            Err(r) => refusals.push(r),
        }
    }
    if !delivered.is_empty() {
        return Ok(Delivery {
            id,
            delivered_to: delivered,
        });
    }
    let worst = [
        Refusal::DirectoryUntrusted,
        Refusal::DeviceRevoked,
        Refusal::KeyChanged,
        Refusal::NotAContact,
        Refusal::DoNotDisturb,
        Refusal::NoFrontEnd,
        Refusal::Offline,
        Refusal::Timeout,
        Refusal::PeerRefused,
        Refusal::Unreachable,
    ]
    .into_iter()
    .find(|r| refusals.contains(r))
    .unwrap_or(Refusal::Unreachable);
    if inner.config.direct_only && worst == Refusal::Unreachable {
        return Err(SendError::Refused {
            refusal: worst,
            message: format!(
                "no direct path to {to} (direct-only): none came up, and this agent runs with \
                 --direct-only, which sends nothing over the relay; nothing was sent and nothing \
                 is kept. Start the agent without --direct-only to allow the relay"
            ),
        });
    }
    Err(SendError::refused(worst, &to))
}

/// LAN mode, the directory unreachable: sends to the devices on the LAN that announce the key
/// pinned for `to`. The hello still proves each device's certificate for that key.
async fn lan_send(inner: &Arc<Inner>, to: Identifier, body: String) -> Result<Delivery, SendError> {
    let pin = inner.lock().pins.get(&to).cloned();
    if pin.as_ref().is_some_and(|p| p.not_a_contact) {
        return Err(SendError::refused(Refusal::NotAContact, &to));
    }
    let Some(pin) = pin else {
        return Err(SendError::DirectoryUnavailable(format!(
            "the directory is unreachable, and {to} is not a contact you have talked to before \
             (no pinned key), so they cannot be found on the LAN; try again when the directory \
             is back"
        )));
    };
    let tag = crate::lan::key_tag(&pin.identity_key);
    let devices: Vec<_> = inner
        .lan
        .as_ref()
        .map(|l| l.peers())
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.key_tag == tag)
        .collect();
    if devices.is_empty() {
        return Err(SendError::refused(Refusal::Offline, &to));
    }
    let id = new_message_id();
    let sent_at_ms = timestamp_ms();
    let mut refusals = Vec::new();
    let mut delivered = Vec::new();
    for p in devices {
        let frame = Frame::Text {
            id,
            sent_at_ms,
            body: body.clone(),
        };
        let info = dialtone_proto::directory::EndpointInfo {
            addrs: p.addrs.clone(),
            relay_url: None,
        };
        match send_to_device(inner, &to, p.device, &info, frame).await {
            Ok(shown_to) => delivered.push(DeviceDelivery {
                device: p.device,
                name: "lan".into(),
                shown_to,
            }),
            Err(r) => refusals.push(r),
        }
    }
    if delivered.is_empty() {
        return Err(SendError::refused(
            refusals.first().copied().unwrap_or(Refusal::Unreachable),
            &to,
        ));
    }
    Ok(Delivery {
        id,
        delivered_to: delivered,
    })
}

async fn send_to_device(
    inner: &Arc<Inner>,
    to: &Identifier,
    device: DeviceId,
    endpoint: &dialtone_proto::directory::EndpointInfo,
    frame: Frame,
) -> Result<u32, Refusal> {
    // One retry with a fresh connection if a cached one turns out to be dead.
    let started = Instant::now();
    for attempt in 0..2 {
        let (conn, fresh, features) = connection(inner, to, device, endpoint).await?;
        if inner.config.direct_only {
            let left = inner
                .config
                .connect_timeout
                .saturating_sub(started.elapsed())
                .max(Duration::from_secs(1));
            if !dialtone_net::wait_direct(&conn, left).await {
                debug!(peer = %device.short(), "no direct path (direct-only)");
                return Err(Refusal::Unreachable);
            }
        }
        let exchange = async {
            let (mut send, mut recv) = conn.open_bi().await.map_err(|_| None)?;
            // The stream's kind first, only to a peer that announced it reads one.
            if features.contains(Feature::StreamKinds) {
                let open = Frame::Open {
                    kind: StreamKind::Message.name().into(),
                };
                write_frame(&mut send, &open).await.map_err(|_| None)?;
            }
            write_frame(&mut send, &frame).await.map_err(|_| None)?;
            let _ = send.finish();
            read_frame(&mut recv).await.map_err(|_| None)
        };
        match tokio::time::timeout(inner.config.ack_timeout, exchange).await {
            Ok(Ok(Frame::Ack { shown_to, .. })) => {
                touch(inner, &device);
                return Ok(shown_to);
            }
            Ok(Ok(Frame::Refuse { refusal, .. })) => return Err(refusal),
            Ok(Ok(Frame::Unsupported { frame, kind })) => {
                // The peer does not take this: the connection stays, the message is refused.
                debug!(peer = %device.short(), frame, ?kind, "peer answered unsupported");
                return Err(Refusal::PeerRefused);
            }
            Ok(Ok(_)) => {
                dialtone_net::close(&conn, CloseCode::Protocol);
                return Err(Refusal::PeerRefused);
            }
            Ok(Err(None::<()> | Some(()))) => {
                forget(inner, &device, &conn);
                if fresh || attempt == 1 {
                    return Err(close_refusal(&conn).unwrap_or(Refusal::Unreachable));
                }
            }
            Err(_) => {
                forget(inner, &device, &conn);
                return Err(Refusal::Timeout);
            }
        }
    }
    Err(Refusal::Unreachable)
}

fn forget(inner: &Inner, device: &DeviceId, conn: &Connection) {
    let mut st = inner.lock();
    if st
        .conns
        .get(device)
        .is_some_and(|pc| pc.conn.stable_id() == conn.stable_id())
    {
        st.conns.remove(device);
    }
}

fn close_refusal(conn: &Connection) -> Option<Refusal> {
    let reason = conn.close_reason()?;
    Some(match dialtone_net::peer_close_code(&reason)? {
        CloseCode::NotAContact => Refusal::NotAContact,
        CloseCode::KeyChanged => Refusal::PeerRefused,
        CloseCode::SplitView | CloseCode::Unproven => Refusal::DirectoryUntrusted,
        CloseCode::DeviceRevoked => Refusal::DeviceRevoked,
        CloseCode::Shutdown | CloseCode::Idle => Refusal::Offline,
        CloseCode::NoDirectPath => Refusal::Unreachable,
        _ => Refusal::PeerRefused,
    })
}

/// A verified connection to `device` and the features both sides speak on it: the cached
/// one, or a new one (connect + hellos). Concurrent sends to one device share one dial.
async fn connection(
    inner: &Arc<Inner>,
    to: &Identifier,
    device: DeviceId,
    endpoint: &dialtone_proto::directory::EndpointInfo,
) -> Result<(Connection, bool, Features), Refusal> {
    if let Some(c) = cached(inner, &device) {
        return Ok(c);
    }
    let flight = inner.peer.dial_lock(device);
    let result = {
        let _dialing = flight.lock().await;
        // Whoever held the lock before us may have connected already.
        match cached(inner, &device) {
            Some(c) => Ok(c),
            None => dial(inner, to, device, endpoint).await,
        }
    };
    inner.peer.dial_done(device, flight);
    result
}

fn cached(inner: &Inner, device: &DeviceId) -> Option<(Connection, bool, Features)> {
    let mut st = inner.lock();
    let pc = st.conns.get_mut(device)?;
    if pc.conn.close_reason().is_some() {
        return None;
    }
    pc.last_used = Instant::now();
    Some((pc.conn.clone(), false, pc.features))
}

async fn dial(
    inner: &Arc<Inner>,
    to: &Identifier,
    device: DeviceId,
    endpoint: &dialtone_proto::directory::EndpointInfo,
) -> Result<(Connection, bool, Features), Refusal> {
    let started = Instant::now();
    let timeout = inner.config.connect_timeout;
    let conn = dialtone_net::connect(&inner.endpoint, &device, endpoint, timeout)
        .await
        .map_err(|e| {
            debug!(peer = %device.short(), "connect failed: {e}");
            Refusal::Unreachable
        })?;
    // --direct-only: wait for a direct path before the first stream, so that no hello and no
    // message crosses the relay (only iroh's QUIC handshake and hole-punching frames do).
    if inner.config.direct_only {
        let left = timeout
            .saturating_sub(started.elapsed())
            .max(Duration::from_secs(1));
        if !dialtone_net::wait_direct(&conn, left).await {
            debug!(peer = %device.short(), "no direct path (direct-only)");
            dialtone_net::close(&conn, CloseCode::NoDirectPath);
            return Err(Refusal::Unreachable);
        }
    }
    let remaining = timeout
        .saturating_sub(started.elapsed())
        .max(Duration::from_secs(1));
    let handshake = async {
        let Ok((send, recv)) = conn.open_bi().await else {
            return Outcome::Refused(CloseCode::Protocol);
        };
        hello::run(inner, Role::Dialer(to.clone()), device, send, recv).await
    };
    match tokio::time::timeout(remaining, handshake).await {
        Ok(Outcome::Accepted(accepted)) => {
            let features = accepted.features;
            register(inner, conn.clone(), device, accepted);
            Ok((conn, true, features))
        }
        Ok(Outcome::Refused(code)) => {
            // Either the peer closed on us (read the reason) or its hello failed our checks.
            if let Some(r) = close_refusal(&conn) {
                warn!(peer = %device.short(), "peer refused the connection");
                return Err(r);
            }
            dialtone_net::close(&conn, code);
            Err(match code {
                CloseCode::KeyChanged => Refusal::KeyChanged,
                CloseCode::SplitView | CloseCode::Unproven => Refusal::DirectoryUntrusted,
                CloseCode::NotAContact => Refusal::NotAContact,
                CloseCode::DeviceRevoked => Refusal::DeviceRevoked,
                _ => Refusal::PeerRefused,
            })
        }
        Ok(Outcome::Link { .. }) => {
            dialtone_net::close(&conn, CloseCode::Protocol);
            Err(Refusal::PeerRefused)
        }
        Err(_) => {
            dialtone_net::close(&conn, CloseCode::Protocol);
            Err(Refusal::Unreachable)
        }
    }
}
