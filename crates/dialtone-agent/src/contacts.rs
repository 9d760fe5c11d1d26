//! Contacts: what the directory says about them, pins, and the contact operations.

use std::collections::HashSet;

use dialtone_proto::{
    DeviceId, Identifier, IdentityKey, Refusal,
    directory::{ContactEntry, Relation, Reply, Request, ServerFrame},
};
use tracing::warn;

use crate::{
    AgentHandle, Event, Inner, SafetyView, SendError, SessionError, State, home::Pin, kt, now_secs,
};

impl Inner {
    pub(crate) fn handle_internal_reply(&self, reply: Reply) {
        if let Reply::Contacts { contacts } = reply {
            let known: HashSet<Identifier> =
                contacts.iter().map(|c| c.identifier.clone()).collect();
            {
                // The full list: a pinned person missing from it, or not accepted in it, was
                // removed or blocked (perhaps while this agent was off). LAN mode must know.
                let mut st = self.lock();
                let mut changed = false;
                for (id, pin) in st.pins.iter_mut() {
                    let not_a_contact = !contacts
                        .iter()
                        .any(|c| c.identifier == *id && c.relation == Relation::Accepted);
                    changed |= pin.not_a_contact != not_a_contact;
                    pin.not_a_contact = not_a_contact;
                }
                if changed && let Err(e) = self.home.save_pins(&st.pins) {
                    warn!("cannot save pinned keys: {e}");
                }
            }
            let stale: Vec<Identifier> = self
                .lock()
                .contacts
                .keys()
                .filter(|k| !known.contains(*k))
                .cloned()
                .collect();
            for id in stale {
                // No longer a contact of any kind: nothing of theirs may stay open.
                let mut st = self.lock();
                st.contacts.remove(&id);
                close_connections_of(&mut st, &id);
            }
            for c in contacts {
                self.update_contact(c, false);
            }
        }
    }

    pub(crate) fn handle_push(&self, frame: ServerFrame) {
        match frame {
            ServerFrame::Presence { contact } => self.update_contact(contact, false),
            ServerFrame::ContactChanged { contact } => self.update_contact(contact, true),
            ServerFrame::ContactRequest { from, identity_key } => {
                self.emit(Event::ContactRequest {
                    from,
                    fingerprint: identity_key.fingerprint().to_string(),
                });
            }
            _ => {}
        }
    }

    /// Records what the directory says about a contact, pins its key on first acceptance,
    /// and warns on a key that differs from the pin.
    pub(crate) fn update_contact(&self, c: ContactEntry, relation_push: bool) {
        let mut events = Vec::new();
        {
            let mut st = self.lock();
            let old = st.contacts.get(&c.identifier).cloned();
            if relation_push || old.as_ref().is_some_and(|o| o.relation != c.relation) {
                events.push(Event::ContactChanged {
                    identifier: c.identifier.clone(),
                    relation: c.relation,
                });
            }
            if c.relation == Relation::Accepted {
                match st.pins.get(&c.identifier).cloned() {
                    None => {
                        st.pins.insert(
                            c.identifier.clone(),
                            Pin::new(c.identity_key, now_secs(), false, false),
                        );
                        if let Err(e) = self.home.save_pins(&st.pins) {
                            warn!("cannot save pinned keys: {e}");
                        }
                    }
                    Some(pin) if pin.identity_key != c.identity_key => {
                        if st.warned.insert((c.identifier.clone(), c.identity_key)) {
                            warn!(
                                "identity key of a contact changed; messages to them are refused until re-trusted"
                            );
                            events.push(Event::KeyChanged {
                                identifier: c.identifier.clone(),
                                pinned_fingerprint: pin.identity_key.fingerprint().to_string(),
                                new_fingerprint: c.identity_key.fingerprint().to_string(),
                                verified: pin.verified,
                                reset: kt::reset_kind(&pin),
                            });
                            if pin.registration_lock {
                                kt::judge_locked_change(self, c.identifier.clone(), c.identity_key);
                            }
                        }
                    }
                    Some(_) => {}
                }
                let presence_changed = old.as_ref().is_none_or(|o| {
                    o.presence.state != c.presence.state || o.presence.message != c.presence.message
                });
                if presence_changed {
                    events.push(Event::Presence {
                        identifier: c.identifier.clone(),
                        state: c.presence.state,
                        message: c.presence.message.clone(),
                    });
                }
            }
            if c.relation != Relation::Accepted {
                // Removed, blocked, or only asked: they may not talk to us (any more).
                close_connections_of(&mut st, &c.identifier);
            }
            let not_a_contact = c.relation != Relation::Accepted;
            if let Some(pin) = st.pins.get_mut(&c.identifier)
                && pin.not_a_contact != not_a_contact
            {
                // Remembered for LAN mode, which cannot ask the directory.
                pin.not_a_contact = not_a_contact;
                if let Err(e) = self.home.save_pins(&st.pins) {
                    warn!("cannot save pinned keys: {e}");
                }
            }
            if c.relation == Relation::None {
                st.contacts.remove(&c.identifier);
            } else {
                // Connections to devices that went offline are dead or soon will be: forget
                // them, so the next message dials afresh instead of waiting on a stale path.
                let online: HashSet<DeviceId> = c
                    .presence
                    .devices
                    .iter()
                    .map(|d| d.cert.device_id)
                    .collect();
                let gone: Vec<DeviceId> = st
                    .conns
                    .iter()
                    .filter(|(d, pc)| pc.identifier == c.identifier && !online.contains(*d))
                    .map(|(d, _)| *d)
                    .collect();
                if !gone.is_empty() {
                    // A device that left may have been revoked: check the list afresh.
                    self.kt.forget(&c.identifier);
                }
                for d in gone {
                    if let Some(pc) = st.conns.remove(&d) {
                        dialtone_net::close(&pc.conn, dialtone_proto::wire::CloseCode::Idle);
                    }
                }
                st.contacts.insert(c.identifier.clone(), c);
            }
        }
        for e in events {
            self.emit(e);
        }
    }

    pub(crate) fn key_status(&self, st: &State, c: &ContactEntry) -> &'static str {
        match st.pins.get(&c.identifier) {
            None => "unpinned",
            Some(p) if p.identity_key == c.identity_key => "pinned",
            Some(_) => "changed",
        }
    }
}

impl AgentHandle {
    /// Sends a contact request (refused if they are offline) or accepts theirs.
    pub async fn add_contact(&self, who: Identifier) -> Result<(), SessionError> {
        self.inner
            .session
            .request(Request::ContactRequest { to: who })
            .await?;
        self.refresh_contacts().await
    }

    /// Accepts or rejects a contact request.
    pub async fn respond(&self, who: Identifier, accept: bool) -> Result<(), SessionError> {
        self.inner
            .session
            .request(Request::ContactRespond { from: who, accept })
            .await?;
        self.refresh_contacts().await
    }

    /// Removes a contact.
    pub async fn remove_contact(&self, who: Identifier) -> Result<(), SessionError> {
        self.inner
            .session
            .request(Request::ContactRemove { identifier: who })
            .await?;
        self.refresh_contacts().await
    }

    /// Blocks or unblocks someone.
    pub async fn block(&self, who: Identifier, block: bool) -> Result<(), SessionError> {
        let req = if block {
            Request::Block { identifier: who }
        } else {
            Request::Unblock { identifier: who }
        };
        self.inner.session.request(req).await?;
        self.refresh_contacts().await
    }

    async fn refresh_contacts(&self) -> Result<(), SessionError> {
        let reply = self.inner.session.request(Request::Contacts).await?;
        self.inner.handle_internal_reply(reply);
        Ok(())
    }

    /// Checks `key` against the transparency log before it is pinned.
    async fn prove(&self, who: &Identifier, key: &IdentityKey) -> Result<(), SendError> {
        match kt::ensure(&self.inner, who, key).await {
            Ok(()) => Ok(()),
            Err(f) if f.is_attack() => Err(SendError::Refused {
                refusal: Refusal::DirectoryUntrusted,
                message: format!("WARNING: {f}. The key was not trusted."),
            }),
            Err(f @ kt::KtFailure::Unavailable(_)) => {
                Err(SendError::DirectoryUnavailable(f.to_string()))
            }
            Err(f) => Err(SendError::Invalid(f.to_string())),
        }
    }

    /// Accepts a contact's new identity key after a key change (re-pins it). Refused for a
    /// contact whose key was verified: they must be verified again ([`AgentHandle::verify`]).
    pub async fn trust(&self, who: Identifier) -> Result<String, SendError> {
        let contact = self.lookup(who.clone()).await?;
        self.prove(&who, &contact.identity_key).await?;
        {
            let mut st = self.inner.lock();
            if let Some(pin) = st.pins.get(&who)
                && pin.verified
                && pin.identity_key != contact.identity_key
            {
                return Err(SendError::Invalid(format!(
                    "you had verified {who}'s key, and it changed: compare the new safety number with \
                     `dialtone contacts verify {who}`, then confirm with --confirm"
                )));
            }
            self.pin_proven(&mut st, &who, contact.identity_key, false)?;
        }
        self.reconfirm(&who, &contact).await?;
        Ok(contact.identity_key.fingerprint().to_string())
    }

    /// Pins `key` for `who` as proven by the transparency log (and `verified` after a
    /// safety-number check), and saves the pins.
    fn pin_proven(
        &self,
        st: &mut State,
        who: &Identifier,
        key: IdentityKey,
        verified: bool,
    ) -> Result<(), SendError> {
        // The same key pinned already: what its proven lists taught (the newest list version,
        // its devices, its lock) stays; only `verified` and `proven` change.
        let mut pin = match st.pins.remove(who) {
            Some(old) if old.identity_key == key => Pin {
                verified,
                proven: true,
                ..old
            },
            _ => Pin::new(key, now_secs(), verified, true),
        };
        kt::fill_pin(&self.inner, who, &mut pin);
        st.pins.insert(who.clone(), pin);
        self.inner
            .home
            .save_pins(&st.pins)
            .map_err(|e| SendError::Invalid(e.to_string()))
    }

    /// After a contact's key changed, the directory shows them our presence again only once
    /// we confirm their new key: a contact request to an accepted contact does that.
    async fn reconfirm(&self, who: &Identifier, contact: &ContactEntry) -> Result<(), SendError> {
        if contact.relation == Relation::Accepted {
            self.inner
                .session
                .request(Request::ContactRequest { to: who.clone() })
                .await?;
        }
        Ok(())
    }

    /// The safety number with `who` over our identity key and the key the directory has for
    /// them now; with `confirm`, pins that key as verified.
    pub async fn verify(&self, who: Identifier, confirm: bool) -> Result<SafetyView, SendError> {
        let contact = self.lookup(who.clone()).await?;
        if confirm {
            self.prove(&who, &contact.identity_key).await?;
        }
        let number = dialtone_proto::safety::SafetyNumber::new(
            (&self.inner.identifier, &self.inner.identity_key),
            (&who, &contact.identity_key),
        );
        if confirm {
            self.pin_proven(&mut self.inner.lock(), &who, contact.identity_key, true)?;
            self.reconfirm(&who, &contact).await?;
        }
        let st = self.inner.lock();
        let verified = st
            .pins
            .get(&who)
            .is_some_and(|p| p.verified && p.identity_key == contact.identity_key);
        Ok(SafetyView {
            identifier: who,
            safety_number: number.to_string(),
            qr_payload: number.qr_payload(),
            fingerprint: contact.identity_key.fingerprint().to_string(),
            key: self.inner.key_status(&st, &contact),
            verified,
        })
    }

    /// Asks the directory about someone: keys always; presence and addresses only if they
    /// are an accepted contact.
    pub async fn lookup(&self, who: Identifier) -> Result<ContactEntry, SessionError> {
        match self
            .inner
            .session
            .request(Request::Lookup { identifier: who })
            .await?
        {
            Reply::Lookup { contact } => Ok(contact),
            _ => Err(SessionError::Timeout),
        }
    }
}

/// Closes every peer connection with `who`'s devices (they are not an accepted contact).
pub(crate) fn close_connections_of(st: &mut State, who: &Identifier) {
    let gone: Vec<DeviceId> = st
        .conns
        .iter()
        .filter(|(_, pc)| pc.identifier == *who)
        .map(|(d, _)| *d)
        .collect();
    for d in gone {
        if let Some(pc) = st.conns.remove(&d) {
            dialtone_net::close(&pc.conn, dialtone_proto::wire::CloseCode::NotAContact);
        }
    }
}
