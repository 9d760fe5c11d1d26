//! Drives `dialtone_proto::hello::HelloCheck` on a connection: reads the peer's first frame,
//! answers the machine's questions from the agent's contacts, the directory, the
//! transparency log and the pins, and carries out its actions.

use std::{sync::Arc, time::Instant};

use dialtone_net::{RecvStream, SendStream, read_frame, write_frame};
use dialtone_proto::{
    DeviceId, Identifier, IdentityKey,
    directory::{ContactEntry, Relation, Reply, Request},
    hello::{Accepted, Action, Admission, Fact, HelloCheck, Role},
    transparency::{Checkpoint, Hash32},
    wire::{CloseCode, Frame, Hello, MAX_PROTOCOL_VERSION, PROTOCOL_VERSION},
};
use tracing::{debug, warn};

use crate::{Event, Inner, home::Pin, now_secs, session::SessionError};

/// How a hello exchange ended.
pub(super) enum Outcome {
    /// A proven contact, on these terms.
    Accepted(Accepted),
    /// A device-link request (listener only): the stream goes to `link`.
    Link {
        send: SendStream,
        recv: RecvStream,
        offer: String,
        name: String,
        proof: Hash32,
    },
    /// Refused (by us) with this code; the caller closes the connection.
    Refused(CloseCode),
}

/// The hello this agent sends: today's exact hello in legacy mode (the test knob), else the
/// version range and the features it announces.
pub(super) fn my_hello(inner: &Inner) -> Hello {
    let legacy = inner.peer.legacy;
    Hello {
        version: PROTOCOL_VERSION,
        max_version: (!legacy).then_some(MAX_PROTOCOL_VERSION),
        identifier: inner.identifier.clone(),
        device_cert: inner.cert.clone(),
        checkpoint: inner.kt.current(),
        features: (!legacy).then(|| inner.peer.features.names()),
    }
}

/// Runs the hello on the connection's first stream. The caller bounds it in time.
pub(super) async fn run(
    inner: &Arc<Inner>,
    role: Role,
    remote: DeviceId,
    mut send: SendStream,
    mut recv: RecvStream,
) -> Outcome {
    let listener = role == Role::Listener;
    let mut m = HelloCheck::new(role, remote, my_hello(inner));
    // Bounded: each step either waits for a frame (once) or answers one question (six at most).
    for _ in 0..16 {
        let Some(action) = m.poll_action() else {
            if m.is_done() {
                break;
            }
            let frame = read_frame(&mut recv).await.map_err(|e| match e {
                dialtone_net::FrameError::Decode(d) => d,
                _ => dialtone_proto::wire::DecodeError::Invalid("stream ended"),
            });
            if m.handle_frame(frame).is_err() {
                return Outcome::Refused(CloseCode::Protocol);
            }
            continue;
        };
        let fact = match action {
            Action::Send(hello) => {
                if write_frame(&mut send, &Frame::Hello(hello)).await.is_err() {
                    return Outcome::Refused(CloseCode::Protocol);
                }
                let _ = send.finish();
                continue;
            }
            Action::Close(code) => return Outcome::Refused(code),
            Action::Accept(a) => {
                // A listener's Send comes just before Accept and was written above.
                return Outcome::Accepted(a);
            }
            Action::Link { offer, name, proof } => {
                return Outcome::Link {
                    send,
                    recv,
                    offer,
                    name,
                    proof,
                };
            }
            Action::LookUpContact { identifier } => {
                contact_fact(inner, &identifier, listener).await
            }
            Action::CompareCheckpoint {
                identifier,
                checkpoint,
            } => checkpoint_fact(inner, &identifier, &checkpoint).await,
            Action::ProveIdentity {
                identifier,
                identity_key,
            } => match crate::kt::ensure(inner, &identifier, &identity_key).await {
                Ok(()) => Fact::Proven,
                Err(f) => {
                    debug!(peer = %identifier, "identity not proven: {f}");
                    Fact::Unproven
                }
            },
            Action::ProveDevice {
                identifier,
                identity_key,
                device,
            } => match crate::kt::ensure_device(inner, &identifier, &identity_key, &device).await {
                Ok(()) => Fact::Proven,
                Err(f @ crate::kt::KtFailure::DeviceNotListed { .. }) => {
                    warn!(peer = %identifier, device = %device.short(), "refused a device that is not on the list: {f}");
                    Fact::DeviceNotListed
                }
                Err(f) => {
                    debug!(peer = %identifier, "device list not proven: {f}");
                    Fact::Unproven
                }
            },
            Action::CheckPin {
                identifier,
                identity_key,
            } => pin_fact(inner, &identifier, identity_key),
            // A new action kind the driver does not know: refuse rather than guess.
            _ => return Outcome::Refused(CloseCode::Protocol),
        };
        if m.handle_fact(fact).is_err() {
            return Outcome::Refused(CloseCode::Protocol);
        }
    }
    Outcome::Refused(CloseCode::Protocol)
}

/// A stranger-lookup slot: given back if dropped while still held (the lookup never ended).
struct StrangerSlot<'a>(Option<&'a Inner>);

impl Drop for StrangerSlot<'_> {
    fn drop(&mut self) {
        if let Some(inner) = self.0.take() {
            inner.peer.strangers().abandoned();
        }
    }
}

/// Is `id` an accepted contact, with which key? The agent's contacts first; a stranger's
/// hello (we are the listener) may ask the directory only within the stranger-lookup bound.
async fn contact_fact(inner: &Arc<Inner>, id: &Identifier, listener: bool) -> Fact {
    let cached = inner
        .lock()
        .contacts
        .get(id)
        .filter(|c| c.relation == Relation::Accepted)
        .map(|c| c.identity_key);
    if let Some(key) = cached {
        return Fact::Contact(key);
    }
    let lan_down = inner.lan.is_some() && !*inner.connected.borrow();
    if lan_down {
        return lan_pin(inner, id);
    }
    // A stranger's lookup holds one of the few slots until it ends; the slot is given back
    // even if the hello's deadline drops this future mid-lookup.
    let mut slot = None;
    if listener {
        let admission = inner.peer.strangers().admit(id, Instant::now());
        if admission != Admission::LookUp {
            debug!(
                ?admission,
                "stranger's hello refused without a directory lookup"
            );
            return Fact::NotAContact;
        }
        slot = Some(StrangerSlot(Some(inner)));
    }
    let found = lookup(inner, id).await;
    if let Some(mut slot) = slot {
        slot.0 = None;
        let mut strangers = inner.peer.strangers();
        match &found {
            // Only the directory's answer says who is a stranger; a failed lookup is not one.
            Ok(c) => strangers.finished(id, c.relation == Relation::Accepted, Instant::now()),
            Err(_) => strangers.abandoned(),
        }
    }
    match found {
        Ok(c) if c.relation == Relation::Accepted => {
            // The directory knows better than our cache (a push may be on its way): record
            // it, so the per-message check agrees with this one.
            let key = c.identity_key;
            inner.update_contact(c, false);
            Fact::Contact(key)
        }
        // LAN mode with the directory down: a contact whose key we pinned earlier.
        Err(SessionError::NotConnected | SessionError::Timeout) if inner.lan.is_some() => {
            lan_pin(inner, id)
        }
        _ => Fact::NotAContact,
    }
}

fn lan_pin(inner: &Inner, id: &Identifier) -> Fact {
    match inner.lock().pins.get(id) {
        Some(pin) if !pin.not_a_contact => Fact::Contact(pin.identity_key),
        _ => Fact::NotAContact,
    }
}

pub(super) async fn lookup(
    inner: &Arc<Inner>,
    id: &Identifier,
) -> Result<ContactEntry, SessionError> {
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

async fn checkpoint_fact(inner: &Arc<Inner>, id: &Identifier, theirs: &Checkpoint) -> Fact {
    match crate::kt::compare_with_peer(inner, id, theirs).await {
        Ok(()) => Fact::CheckpointAgrees,
        Err(f) if f.is_attack() => Fact::SplitView,
        Err(f) => {
            debug!("cannot compare checkpoints with {id}: {f}");
            Fact::CheckpointAgrees
        }
    }
}

/// The pin check: a differing pin warns loudly (once per key); no pin yet pins this key.
fn pin_fact(inner: &Arc<Inner>, id: &Identifier, key: IdentityKey) -> Fact {
    let mut st = inner.lock();
    match st.pins.get(id).cloned() {
        Some(pin) if pin.identity_key != key => {
            if st.warned.insert((id.clone(), key)) {
                drop(st);
                inner.emit(Event::KeyChanged {
                    identifier: id.clone(),
                    pinned_fingerprint: pin.identity_key.fingerprint().to_string(),
                    new_fingerprint: key.fingerprint().to_string(),
                    verified: pin.verified,
                    reset: crate::kt::reset_kind(&pin),
                });
                if pin.registration_lock {
                    crate::kt::judge_locked_change(inner, id.clone(), key);
                }
            }
            Fact::PinDiffers
        }
        Some(_) => Fact::PinOk,
        None => {
            st.pins.insert(id.clone(), {
                let mut pin = Pin::new(key, now_secs(), false, true);
                crate::kt::fill_pin(inner, id, &mut pin);
                pin
            });
            let _ = inner.home.save_pins(&st.pins);
            Fact::PinOk
        }
    }
}
