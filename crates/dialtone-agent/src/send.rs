//! Sending: the outcome of a send, and the handle's send operations.

use std::time::Duration;

use dialtone_proto::{DeviceId, Identifier, Refusal, wire::MessageId};
use serde::Serialize;

use crate::{
    AgentHandle, Event, FrontEndId, SessionError, now_ms, peer,
    recent::{self, Claim},
};

/// Longest `client_id`, in bytes.
pub const MAX_CLIENT_ID_LEN: usize = 128;
/// `client_id`s remembered at most (the oldest are forgotten first).
pub(crate) const CLIENT_IDS_KEPT: usize = 4096;
/// How long a `client_id`'s outcome is remembered.
pub const CLIENT_ID_TTL: Duration = Duration::from_secs(600);

/// What a `client_id` remembers of a send: its outcome only, never the body.
pub(crate) type Outcome = Result<Delivery, (Refusal, String)>;

/// Options of [`AgentHandle::send_with`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct SendOptions {
    /// Makes a retry idempotent: a second send to the same person with the same client id
    /// (within [`CLIENT_ID_TTL`], while the agent runs) is not sent again but returns the first
    /// one's outcome (a delivery or a refusal; waiting for it if it is still under way). At
    /// most [`MAX_CLIENT_ID_LEN`] bytes.
    pub client_id: Option<String>,
    /// The front end that sends: every *other* front end gets a `message_sent` event.
    pub front_end: Option<FrontEndId>,
}

impl SendOptions {
    /// Options with a client id.
    pub fn client_id(id: impl Into<String>) -> Self {
        Self {
            client_id: Some(id.into()),
            front_end: None,
        }
    }

    /// Sets the sending front end.
    pub fn from_front_end(mut self, front_end: FrontEndId) -> Self {
        self.front_end = Some(front_end);
        self
    }
}

/// Why a send failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// Refused, with a reason; nothing was queued.
    #[error("{message}")]
    Refused {
        /// The typed reason.
        refusal: Refusal,
        /// A sentence for a person.
        message: String,
    },
    /// The directory could not be asked.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The transparency log could not be checked (the directory is down, unreachable, or
    /// refused the lookup), so nothing was proven, sent or pinned. Not an attack; try again.
    #[error("{0}")]
    DirectoryUnavailable(String),
    /// The message is not acceptable (empty, too long).
    #[error("{0}")]
    Invalid(String),
}

impl SendError {
    pub(crate) fn refused(refusal: Refusal, who: &Identifier) -> Self {
        Self::Refused {
            refusal,
            message: refusal.explain(who.as_str()),
        }
    }
}

/// A delivered message.
#[derive(Debug, Clone, Serialize)]
pub struct Delivery {
    /// The message's id.
    pub id: MessageId,
    /// The devices that acknowledged it.
    pub delivered_to: Vec<DeviceDelivery>,
}

/// One device's acknowledgement.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceDelivery {
    /// The device.
    pub device: DeviceId,
    /// Its name.
    pub name: String,
    /// How many front ends it was shown on.
    pub shown_to: u32,
}

impl AgentHandle {
    /// Sends a text message to every online device of `to`; returns once at least one
    /// device acknowledged it, or a typed refusal. Nothing is queued.
    /// Every front end gets a `message_sent` event once it is delivered.
    pub async fn send(&self, to: Identifier, body: String) -> Result<Delivery, SendError> {
        self.send_with(to, body, SendOptions::default()).await
    }

    /// [`AgentHandle::send`] with options: a client id that makes a retry idempotent, and the
    /// sending front end (which gets no `message_sent` event of its own message).
    pub async fn send_with(
        &self,
        to: Identifier,
        body: String,
        options: SendOptions,
    ) -> Result<Delivery, SendError> {
        let Some(client_id) = options.client_id else {
            return self.send_once(to, body, options.front_end).await;
        };
        if client_id.is_empty() || client_id.len() > MAX_CLIENT_ID_LEN {
            return Err(SendError::Invalid(format!(
                "client_id must be 1 to {MAX_CLIENT_ID_LEN} bytes"
            )));
        }
        // Twice at most: an earlier attempt with this id may have been given up (it never
        // reached a peer: the directory was down, the message invalid) and is tried afresh.
        for _ in 0..2 {
            match self.inner.sent.claim((to.clone(), client_id.clone())) {
                Claim::First(filler) => {
                    // In a task of its own: the outcome is recorded even if the caller goes.
                    let me = self.clone();
                    let front_end = options.front_end;
                    let task = tokio::spawn(async move {
                        let r = me.send_once(to, body, front_end).await;
                        match &r {
                            Ok(d) => filler.fill(Ok(d.clone())),
                            Err(SendError::Refused { refusal, message }) => {
                                filler.fill(Err((*refusal, message.clone())));
                            }
                            // Nothing reached a peer: not an outcome to repeat.
                            Err(_) => drop(filler),
                        }
                        r
                    });
                    return task.await.unwrap_or_else(|_| {
                        Err(SendError::Invalid("the send was cancelled".into()))
                    });
                }
                Claim::Again(rx) => match recent::outcome(rx).await {
                    Some(Ok(d)) => return Ok(d),
                    Some(Err((refusal, message))) => {
                        return Err(SendError::Refused { refusal, message });
                    }
                    None => continue,
                },
            }
        }
        Err(SendError::Invalid(format!(
            "another send with client_id {client_id:?} is being retried; try again"
        )))
    }

    async fn send_once(
        &self,
        to: Identifier,
        body: String,
        front_end: Option<FrontEndId>,
    ) -> Result<Delivery, SendError> {
        let shown = body.clone();
        let d = peer::send_text(&self.inner, to.clone(), body).await?;
        self.inner.events.send_except(
            Event::MessageSent {
                to,
                id: d.id,
                sent_at_ms: now_ms(),
                body: shown,
            },
            front_end,
        );
        Ok(d)
    }

    /// Closes every peer connection (the next message dials afresh).
    pub fn drop_connections(&self) {
        for (_, pc) in self.inner.lock().conns.drain() {
            dialtone_net::close(&pc.conn, dialtone_proto::wire::CloseCode::Idle);
        }
    }
}

pub(crate) fn new_message_id() -> MessageId {
    let mut id = [0u8; 16];
    rand::fill(&mut id[..]);
    MessageId(id)
}

pub(crate) fn timestamp_ms() -> u64 {
    now_ms()
}
