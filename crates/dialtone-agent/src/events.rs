//! Events: what the agent streams to its front ends.

use dialtone_proto::{
    DeviceId, Identifier,
    directory::{PresenceState, Relation},
    wire::MessageId,
};
use serde::Serialize;

use crate::Inner;

/// Something that happened, streamed to front ends (`dialtone watch`).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// A message arrived (it exists only in this event: nothing is kept).
    Message {
        /// Sender.
        from: Identifier,
        /// Sender's device.
        device: DeviceId,
        /// Message id.
        id: MessageId,
        /// Sender's clock, ms since the Unix epoch.
        sent_at_ms: u64,
        /// The text.
        body: String,
    },
    /// A contact's presence changed.
    Presence {
        /// Who.
        identifier: Identifier,
        /// New state.
        state: PresenceState,
        /// Status message.
        #[serde(skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
    /// Someone asks to be your contact.
    ContactRequest {
        /// Who.
        from: Identifier,
        /// Their identity key's fingerprint.
        fingerprint: String,
    },
    /// A contact's relation changed.
    ContactChanged {
        /// Who.
        identifier: Identifier,
        /// New relation (`none` = removed).
        relation: Relation,
    },
    /// A contact's identity key differs from the one pinned: possible impersonation.
    KeyChanged {
        /// Who.
        identifier: Identifier,
        /// The fingerprint pinned on first use.
        pinned_fingerprint: String,
        /// The fingerprint now presented.
        new_fingerprint: String,
        /// Whether the pinned key had been verified (then this is a hard block).
        verified: bool,
        /// How the old key's registration lock bears on the change: `no-lock` (the old key
        /// had none: whoever re-verified the identifier could have made this change) or
        /// `locked` (it had one: a `transparency` event `lock-bypassed` follows if the new
        /// key was bound without the PIN).
        reset: &'static str,
    },
    /// A key-transparency check failed: the directory showed a key its log does not prove,
    /// rolled its log back, forked it, showed a peer a different log (split view), or bound a
    /// key that is not ours to our identifier. Shown loudly; what it concerned was refused.
    Transparency {
        /// `forged-key`, `bad-proof`, `rollback`, `fork`, `split-view`, `bad-signature` or
        /// `own-key-replaced`.
        kind: &'static str,
        /// A sentence for a person, starting with "WARNING:".
        message: String,
    },
    /// The directory session went up or down.
    Directory {
        /// Whether connected.
        connected: bool,
    },
    /// A peer connection moved to another path (relayed → direct, say).
    Path {
        /// The contact.
        identifier: Identifier,
        /// Their device.
        device: DeviceId,
        /// The new path.
        #[serde(flatten)]
        path: dialtone_net::PathInfo,
    },
    /// Another front end of this device sent a message, and it was delivered (so every front
    /// end of the person shows the conversation; kept in memory only, like a message).
    MessageSent {
        /// The recipient.
        to: Identifier,
        /// The message's id (as in the sender's `message.send` result).
        id: MessageId,
        /// Our clock, ms since the Unix epoch.
        sent_at_ms: u64,
        /// The text.
        body: String,
    },
    /// This front end did not keep up and was cut off: `missed` events were dropped. It is
    /// the last event of the subscription.
    Lagged {
        /// Events dropped.
        missed: u64,
    },
}

impl Inner {
    /// Hands an event to every front end (a message goes through `FrontEnds::deliver`
    /// instead, which waits until one took it).
    pub(crate) fn emit(&self, event: Event) {
        self.events.send(event);
    }

    pub(crate) fn set_connected(&self, up: bool) {
        let changed = self.connected.send_replace(up) != up;
        if changed {
            self.emit(Event::Directory { connected: up });
        }
    }
}
