//! Views of the agent for front ends: our status, our contacts, our connections.

use dialtone_proto::{
    DeviceId, Identifier,
    directory::{MAX_STATUS_MESSAGE_LEN, PresenceState, Relation},
};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::{AgentHandle, SendError, lan};

/// A contact as front ends see it.
#[derive(Debug, Clone, Serialize)]
pub struct ContactView {
    /// Who.
    pub identifier: Identifier,
    /// Relation from our side.
    pub relation: Relation,
    /// Presence.
    pub state: PresenceState,
    /// Status message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Fingerprint of the key the directory has for them.
    pub fingerprint: String,
    /// `pinned` (matches the key pinned on first use), `changed` (does not!) or `unpinned`.
    pub key: &'static str,
    /// Online devices.
    pub devices: usize,
    /// Whether you verified their current key (safety number).
    pub verified: bool,
    /// Whether `state` is live: false while the agent cannot reach its directory, when it is
    /// the last state known, as of `confirmed_at`.
    pub live: bool,
    /// When the state was last confirmed by the directory (Unix seconds): now while `live`;
    /// `None` if this agent never reached the directory since it started.
    pub confirmed_at: Option<u64>,
}

/// A safety number, for people to compare.
#[derive(Debug, Clone, Serialize)]
pub struct SafetyView {
    /// Who.
    pub identifier: Identifier,
    /// 60 digits in 12 groups of 5.
    pub safety_number: String,
    /// What the QR code carries.
    pub qr_payload: String,
    /// Fingerprint of their key as the directory has it now.
    pub fingerprint: String,
    /// `pinned`, `changed` or `unpinned` (see [`ContactView::key`]).
    pub key: &'static str,
    /// Whether this key is the one you verified.
    pub verified: bool,
}

/// Our own status.
#[derive(Debug, Clone, Serialize)]
pub struct StatusView {
    /// Our identifier.
    pub identifier: Identifier,
    /// Our identity key's fingerprint.
    pub fingerprint: String,
    /// This device.
    pub device: DeviceId,
    /// Our state.
    pub state: PresenceState,
    /// Our status message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Whether the directory session is up.
    pub directory_connected: bool,
    /// The directory.
    pub directory: String,
    /// Open peer connections.
    pub connections: usize,
    /// Where this device's peer endpoint listens (as published to the directory).
    pub endpoint: dialtone_proto::directory::EndpointInfo,
    /// The relay this agent uses (named by the directory), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay: Option<String>,
    /// Whether relayed message paths are refused (`--direct-only`).
    pub direct_only: bool,
    /// Agent version.
    pub version: &'static str,
}

/// One open peer connection and the path its data takes.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionView {
    /// The contact.
    pub identifier: Identifier,
    /// Their device.
    pub device: DeviceId,
    /// Names this connection while the agent runs: a new connection to the same device gets
    /// another number (so a path change can be told from a reconnection).
    pub conn_id: u64,
    /// Direct or relayed, the remote address and the round-trip time.
    #[serde(flatten)]
    pub path: dialtone_net::PathInfo,
    /// Seconds since the connection was last used.
    pub idle_secs: u64,
}

impl AgentHandle {
    /// Our identity, state and connectivity.
    pub fn status(&self) -> StatusView {
        let st = self.inner.lock();
        StatusView {
            identifier: self.inner.identifier.clone(),
            fingerprint: self.inner.identity_key.fingerprint().to_string(),
            device: self.inner.cert.device_id,
            state: st.presence,
            message: st.message.clone(),
            directory_connected: *self.inner.connected.borrow(),
            directory: self.inner.dir.base().to_owned(),
            connections: st.conns.len(),
            endpoint: self.inner.endpoint_info(),
            relay: self.inner.relay.as_ref().map(|r| r.url.clone()),
            direct_only: self.inner.config.direct_only,
            version: env!("CARGO_PKG_VERSION"),
        }
    }

    /// Devices seen on the LAN (LAN mode), with the pinned contact each one announces, if any.
    pub fn lan_peers(&self) -> Vec<serde_json::Value> {
        let Some(lan) = &self.inner.lan else {
            return Vec::new();
        };
        let st = self.inner.lock();
        lan.peers()
            .into_iter()
            .map(|p| {
                let contact = st
                    .pins
                    .iter()
                    .find(|(_, pin)| {
                        !pin.not_a_contact && lan::key_tag(&pin.identity_key) == p.key_tag
                    })
                    .map(|(id, _)| id.clone());
                serde_json::json!({
                    "device": p.device,
                    "addrs": p.addrs,
                    "contact": contact,
                })
            })
            .collect()
    }

    /// Open peer connections with their current path (read live from iroh: a connection that
    /// moved from the relay to a direct path shows as direct at once).
    pub fn connections(&self) -> Vec<ConnectionView> {
        let st = self.inner.lock();
        let mut v: Vec<ConnectionView> = st
            .conns
            .iter()
            .filter(|(_, pc)| pc.conn.close_reason().is_none())
            .map(|(device, pc)| ConnectionView {
                identifier: pc.identifier.clone(),
                device: *device,
                conn_id: pc.conn.stable_id() as u64,
                path: dialtone_net::selected_path(&pc.conn),
                idle_secs: pc.last_used.elapsed().as_secs(),
            })
            .collect();
        v.sort_by(|a, b| a.identifier.cmp(&b.identifier));
        v
    }

    /// Sets our presence; contacts get it pushed by the directory. Kept for the next start.
    pub fn set_status(
        &self,
        state: PresenceState,
        message: Option<String>,
    ) -> Result<(), SendError> {
        if state == PresenceState::Offline {
            return Err(SendError::Invalid(
                "'offline' cannot be set: use 'invisible' to appear offline, or `dialtone down`"
                    .into(),
            ));
        }
        if message
            .as_ref()
            .is_some_and(|m| m.len() > MAX_STATUS_MESSAGE_LEN)
        {
            return Err(SendError::Invalid(format!(
                "status message is longer than {MAX_STATUS_MESSAGE_LEN} bytes"
            )));
        }
        {
            let mut st = self.inner.lock();
            st.presence = state;
            st.message = message.clone();
        }
        let mut settings = self
            .inner
            .home
            .settings()
            .map_err(|e| SendError::Invalid(e.to_string()))?;
        settings.state = Some(state);
        settings.status_message = message;
        self.inner
            .home
            .save_settings(&settings)
            .map_err(|e| SendError::Invalid(e.to_string()))?;
        self.inner.session.notify(self.inner.publish_request());
        Ok(())
    }

    /// Contacts, requests and blocks, with live presence (from the directory's pushes).
    pub fn contacts(&self) -> Vec<ContactView> {
        let live = *self.inner.connected.borrow();
        let confirmed_at = if live {
            Some(SystemTime::now())
        } else {
            self.inner.session.confirmed_at()
        }
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs());
        let st = self.inner.lock();
        let mut v: Vec<ContactView> = st
            .contacts
            .values()
            .map(|c| ContactView {
                identifier: c.identifier.clone(),
                relation: c.relation,
                state: c.presence.state,
                message: c.presence.message.clone(),
                fingerprint: c.identity_key.fingerprint().to_string(),
                key: self.inner.key_status(&st, c),
                devices: c.presence.devices.len(),
                verified: st
                    .pins
                    .get(&c.identifier)
                    .is_some_and(|p| p.verified && p.identity_key == c.identity_key),
                live,
                confirmed_at,
            })
            .collect();
        v.sort_by(|a, b| a.identifier.cmp(&b.identifier));
        v
    }
}
