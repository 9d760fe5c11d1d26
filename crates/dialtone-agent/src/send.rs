//! Sending: the outcome of a send, and the handle's send operations.

use dialtone_proto::{DeviceId, Identifier, Refusal, wire::MessageId};
use serde::Serialize;

use crate::{AgentHandle, SessionError, now_ms, peer};

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
    pub async fn send(&self, to: Identifier, body: String) -> Result<Delivery, SendError> {
        peer::send_text(&self.inner, to, body).await
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
