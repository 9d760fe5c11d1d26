//! Peer connections: the `dialtone/1` protocol between two agents over iroh.
//!
//! Every connection starts with a hello each way (see `dialtone_proto::wire`); a connection
//! is used only after both hellos were checked: the certificate is for the device that TLS
//! authenticated, the identity is the one pinned for that identifier and the one the directory
//! has, and the peer is an accepted contact. Each message then uses a stream of its own.
//! Connections are cached per device, used in both directions, and closed when idle.

use std::{sync::Arc, time::Duration, time::Instant};

use dialtone_net::{Connection, read_frame, write_frame};
use dialtone_proto::{
    DeviceId, Identifier, Refusal,
    directory::{ContactEntry, DeviceEndpoint, PresenceState, Relation, Reply, Request},
    wire::{CloseCode, Frame, Hello, MAX_TEXT_LEN, MessageId, PROTOCOL_VERSION},
};
use tracing::{debug, warn};

use crate::{
    Delivery, DeviceDelivery, Event, Inner, PeerConn, SendError, home::Pin, new_message_id,
    now_secs, session::SessionError, timestamp_ms,
};

fn my_hello(inner: &Inner) -> Frame {
    Frame::Hello(Hello {
        version: PROTOCOL_VERSION,
        identifier: inner.identifier.clone(),
        device_cert: inner.cert.clone(),
        checkpoint: inner.kt.current(),
    })
}

/// Accepts incoming connections until the agent stops.
pub(crate) async fn accept_loop(inner: Arc<Inner>) {
    loop {
        let incoming = tokio::select! {
            _ = inner.cancel.cancelled() => return,
            i = inner.endpoint.accept() => i,
        };
        let Some(incoming) = incoming else { return };
        let inner = inner.clone();
        tokio::spawn(async move {
            let conn = match incoming.accept() {
                Ok(accepting) => match accepting.await {
                    Ok(c) => c,
                    Err(e) => return debug!("incoming connection failed: {e}"),
                },
                Err(e) => return debug!("incoming connection refused: {e}"),
            };
            handle_incoming(inner, conn).await;
        });
    }
}

async fn handle_incoming(inner: Arc<Inner>, conn: Connection) {
    let Some(remote) = dialtone_net::remote_device(&conn) else {
        return dialtone_net::close(&conn, CloseCode::BadCertificate);
    };
    // --direct-only: not a byte of ours over the relay, not even the hello. (Stopping a bit
    // before the dialer's own deadline, so that it learns why.)
    if inner.config.direct_only
        && !dialtone_net::wait_direct(&conn, inner.config.connect_timeout * 3 / 4).await
    {
        debug!(peer = %remote.short(), "no direct path (direct-only): closing");
        return dialtone_net::close(&conn, CloseCode::NoDirectPath);
    }
    let handshake = async {
        let (mut send, mut recv) = conn.accept_bi().await.map_err(|_| CloseCode::Protocol)?;
        let hello = match read_frame(&mut recv).await {
            Ok(Frame::Hello(hello)) => hello,
            // A new device of this account, linking (it is nobody's contact yet).
            Ok(Frame::LinkRequest { offer, name, proof }) => {
                return Ok(Err((send, recv, offer, name, proof)));
            }
            _ => return Err(CloseCode::Protocol),
        };
        let identifier = verify_hello(&inner, &hello, remote, None).await?;
        write_frame(&mut send, &my_hello(&inner))
            .await
            .map_err(|_| CloseCode::Protocol)?;
        let _ = send.finish();
        Ok(Ok(identifier))
    };
    match tokio::time::timeout(inner.config.connect_timeout, handshake).await {
        Ok(Ok(Err((send, recv, offer, name, proof)))) => {
            crate::link::incoming(&inner, conn, (send, recv), remote, offer, name, proof).await;
        }
        Ok(Ok(Ok(identifier))) => {
            debug!(peer = %remote.short(), "incoming peer connection verified");
            register(&inner, conn, remote, identifier);
        }
        Ok(Err(code)) => {
            debug!(peer = %remote.short(), ?code, "incoming peer connection refused");
            dialtone_net::close(&conn, code);
        }
        Err(_) => dialtone_net::close(&conn, CloseCode::Protocol),
    }
}

/// Checks a peer's hello. `expected` is the identifier we dialed, if we dialed.
async fn verify_hello(
    inner: &Arc<Inner>,
    hello: &Hello,
    remote: DeviceId,
    expected: Option<&Identifier>,
) -> Result<Identifier, CloseCode> {
    if hello.version != PROTOCOL_VERSION {
        return Err(CloseCode::UnsupportedVersion);
    }
    if expected.is_some_and(|e| *e != hello.identifier) {
        return Err(CloseCode::BadCertificate);
    }
    let cert = &hello.device_cert;
    if cert.device_id != remote || cert.verify().is_err() {
        return Err(CloseCode::BadCertificate);
    }
    let id = &hello.identifier;
    let cached = inner
        .lock()
        .contacts
        .get(id)
        .filter(|c| c.relation == Relation::Accepted)
        .cloned();
    let expected_key = match cached {
        Some(c) => c.identity_key,
        None => match lookup(inner, id).await {
            Ok(c) if c.relation == Relation::Accepted => {
                // The directory knows better than our cache (a push may be on its way):
                // record it, so the per-message check agrees with this one.
                let key = c.identity_key;
                inner.update_contact(c, false);
                key
            }
            // LAN mode with the directory down: a contact whose key we pinned earlier.
            Err(SessionError::NotConnected | SessionError::Timeout) if inner.lan.is_some() => {
                match inner.lock().pins.get(id) {
                    Some(pin) if !pin.not_a_contact => pin.identity_key,
                    _ => return Err(CloseCode::NotAContact),
                }
            }
            _ => return Err(CloseCode::NotAContact),
        },
    };
    if expected_key != cert.identity_key {
        return Err(CloseCode::KeyChanged);
    }
    // The peer's checkpoint must agree with ours (split view), and its key must be the one
    // the transparency log proves, before the key is pinned or used.
    if let Some(theirs) = &hello.checkpoint {
        match crate::kt::compare_with_peer(inner, id, theirs).await {
            Ok(()) => {}
            Err(f) if f.is_attack() => return Err(CloseCode::SplitView),
            Err(f) => debug!("cannot compare checkpoints with {id}: {f}"),
        }
    }
    if let Err(f) = crate::kt::ensure(inner, id, &cert.identity_key).await {
        debug!(peer = %id, "identity not proven: {f}");
        return Err(CloseCode::Unproven);
    }
    // The device must be on the person's device list in the log (a revoked one is not).
    match crate::kt::ensure_device(inner, id, &cert.identity_key, &remote).await {
        Ok(()) => {}
        Err(f @ crate::kt::KtFailure::DeviceNotListed { .. }) => {
            warn!(peer = %id, device = %remote.short(), "refused a device that is not on the list: {f}");
            return Err(CloseCode::DeviceRevoked);
        }
        Err(f) => {
            debug!(peer = %id, "device list not proven: {f}");
            return Err(CloseCode::Unproven);
        }
    }
    let mut st = inner.lock();
    match st.pins.get(id).cloned() {
        Some(pin) if pin.identity_key != cert.identity_key => {
            if st.warned.insert((id.clone(), cert.identity_key)) {
                drop(st);
                inner.emit(Event::KeyChanged {
                    identifier: id.clone(),
                    pinned_fingerprint: pin.identity_key.fingerprint().to_string(),
                    new_fingerprint: cert.identity_key.fingerprint().to_string(),
                    verified: pin.verified,
                    reset: crate::kt::reset_kind(&pin),
                });
                if pin.registration_lock {
                    crate::kt::judge_locked_change(inner, id.clone(), cert.identity_key);
                }
            }
            return Err(CloseCode::KeyChanged);
        }
        Some(_) => {}
        None => {
            st.pins.insert(id.clone(), {
                let mut pin = Pin::new(cert.identity_key, now_secs(), false, true);
                crate::kt::fill_pin(inner, id, &mut pin);
                pin
            });
            let _ = inner.home.save_pins(&st.pins);
        }
    }
    Ok(id.clone())
}

async fn lookup(inner: &Arc<Inner>, id: &Identifier) -> Result<ContactEntry, SessionError> {
    match inner
        .session
        .request(Request::Lookup {
            identifier: id.clone(),
        })
        .await?
    {
        Reply::Lookup { contact } => Ok(contact),
        _ => Err(SessionError::Timeout),
    }
}

fn register(inner: &Arc<Inner>, conn: Connection, device: DeviceId, identifier: Identifier) {
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
        },
    );
    tokio::spawn(serve_streams(inner.clone(), conn, device, identifier));
}

/// Answers the message streams a verified peer opens, until the connection ends.
async fn serve_streams(inner: Arc<Inner>, conn: Connection, device: DeviceId, from: Identifier) {
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
            let frame =
                match tokio::time::timeout(Duration::from_secs(10), read_frame(&mut recv)).await {
                    Ok(Ok(f)) => f,
                    Ok(Err(e)) => return debug!("bad frame from peer: {e}"),
                    Err(_) => return,
                };
            let Frame::Text {
                id,
                sent_at_ms,
                body,
            } = frame
            else {
                return debug!("unexpected frame from peer");
            };
            let answer = if inner.config.direct_only
                && !dialtone_net::wait_direct(&conn, Duration::from_secs(3)).await
            {
                Frame::Refuse {
                    id,
                    refusal: Refusal::Unreachable,
                }
            } else {
                deliver(&inner, from, device, id, sent_at_ms, body).await
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
        let (conn, fresh) = connection(inner, to, device, endpoint).await?;
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

/// A verified connection to `dev`: the cached one, or a new one (connect + hellos).
async fn connection(
    inner: &Arc<Inner>,
    to: &Identifier,
    device: DeviceId,
    endpoint: &dialtone_proto::directory::EndpointInfo,
) -> Result<(Connection, bool), Refusal> {
    if let Some(pc) = inner.lock().conns.get_mut(&device)
        && pc.conn.close_reason().is_none()
    {
        pc.last_used = Instant::now();
        return Ok((pc.conn.clone(), false));
    }
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
        let (mut send, mut recv) = conn.open_bi().await.map_err(|_| CloseCode::Protocol)?;
        write_frame(&mut send, &my_hello(inner))
            .await
            .map_err(|_| CloseCode::Protocol)?;
        let _ = send.finish();
        let Ok(Frame::Hello(hello)) = read_frame(&mut recv).await else {
            return Err(CloseCode::Protocol);
        };
        verify_hello(inner, &hello, device, Some(to)).await
    };
    match tokio::time::timeout(remaining, handshake).await {
        Ok(Ok(identifier)) => {
            register(inner, conn.clone(), device, identifier);
            Ok((conn, true))
        }
        Ok(Err(code)) => {
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
        Err(_) => {
            dialtone_net::close(&conn, CloseCode::Protocol);
            Err(Refusal::Unreachable)
        }
    }
}
