//! Why a message was not delivered.
//!
//! `send` ends in a bounded time either as *delivered* or as one of these refusals. Each has a
//! stable wire name (used in the local API and on the peer protocol) and a CLI exit code
//! (documented in the README and `docs/local-api.md`).

use std::fmt;

use serde::{Deserialize, Serialize};

/// A typed refusal. Nothing is ever queued: a refused message is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Refusal {
    /// You blocked the recipient.
    Blocked,
    /// A device is not on its owner's device list in the transparency log: this device was
    /// revoked (the recipient's devices refuse it), or the recipient's device was.
    DeviceRevoked,
    /// The directory's answer failed the key-transparency checks (a key its log does not
    /// prove, a rolled-back or forked log, a split view): it may be lying.
    DirectoryUntrusted,
    /// The recipient is busy (do not disturb) and refuses messages.
    DoNotDisturb,
    /// The recipient's identity key is not the one pinned for them.
    KeyChanged,
    /// The recipient's device is online, but no front end (app, CLI, bot) is open on it to
    /// show the message, or none took it in time.
    NoFrontEnd,
    /// Not a mutually accepted contact.
    NotAContact,
    /// The recipient is offline, or invisible to you.
    Offline,
    /// The recipient's device refused the connection or the message.
    PeerRefused,
    /// The recipient accepted the connection but did not acknowledge in time.
    Timeout,
    /// The recipient is online but none of their devices could be reached.
    Unreachable,
}

impl Refusal {
    /// Every refusal, for docs and tests.
    pub const ALL: [Self; 11] = [
        Self::Blocked,
        Self::DeviceRevoked,
        Self::DirectoryUntrusted,
        Self::DoNotDisturb,
        Self::KeyChanged,
        Self::NoFrontEnd,
        Self::NotAContact,
        Self::Offline,
        Self::PeerRefused,
        Self::Timeout,
        Self::Unreachable,
    ];

    /// Wire name (`offline`, `not-a-contact`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Blocked => "blocked",
            Self::DeviceRevoked => "device-revoked",
            Self::DirectoryUntrusted => "directory-untrusted",
            Self::DoNotDisturb => "do-not-disturb",
            Self::KeyChanged => "key-changed",
            Self::NoFrontEnd => "no-front-end",
            Self::NotAContact => "not-a-contact",
            Self::Offline => "offline",
            Self::PeerRefused => "peer-refused",
            Self::Timeout => "timeout",
            Self::Unreachable => "unreachable",
        }
    }

    /// Parses a wire name.
    pub fn from_wire(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// The `dialtone` CLI's exit code for this refusal.
    pub fn exit_code(self) -> u8 {
        match self {
            Self::Offline => 10,
            Self::Unreachable => 11,
            Self::NotAContact => 12,
            Self::Blocked => 13,
            Self::DoNotDisturb => 14,
            Self::Timeout => 15,
            Self::KeyChanged => 16,
            Self::PeerRefused => 17,
            Self::DirectoryUntrusted => 18,
            Self::DeviceRevoked => 19,
            Self::NoFrontEnd => 20,
        }
    }

    /// JSON-RPC error code used by the local API (`-32010` … `-32020`).
    pub fn rpc_code(self) -> i64 {
        -32000 - i64::from(self.exit_code())
    }

    /// A sentence for a person about `who`, saying what happened and what to do.
    pub fn explain(self, who: &str) -> String {
        match self {
            Self::Blocked => format!(
                "you have blocked {who}; unblock them first (dialtone contacts unblock {who})"
            ),
            Self::DirectoryUntrusted => format!(
                "WARNING: the directory's answer about {who} failed the key-transparency checks \
                 (a key its log does not prove, a rolled-back or forked log, or a split view found \
                 when your devices compared logs); nothing was sent. The directory may be lying about keys: do not trust new keys \
                 from it, and tell {who} and the directory's operator"
            ),
            Self::DeviceRevoked => format!(
                "a device in this conversation is not on its owner's device list in the transparency log: \
                 either this device was revoked from your account (link it again with `dialtone device link`), \
                 or {who}'s device was revoked; nothing was sent"
            ),
            Self::DoNotDisturb => {
                format!("{who} is busy (do not disturb) and is not taking messages; try later")
            }
            Self::KeyChanged => format!(
                "WARNING: the identity key of {who} has changed since you first talked; nothing was sent. \
                 Check with {who} in person, then run `dialtone contacts trust {who}` to accept the new key"
            ),
            Self::NoFrontEnd => format!(
                "{who} is online but no app is open on their device to show it; nothing was sent \
                 and nothing is kept. Try again when they have Dialtone open"
            ),
            Self::NotAContact => format!(
                "{who} is not your contact; ask first with `dialtone contacts add {who}` and wait for them to accept"
            ),
            Self::Offline => format!(
                "{who} is offline; nothing was sent and nothing is kept. Try again when they are online"
            ),
            Self::PeerRefused => format!("{who}'s device refused the message"),
            Self::Timeout => format!(
                "{who}'s device did not acknowledge in time; the message may not have been shown"
            ),
            Self::Unreachable => format!(
                "{who} is online but their device could not be reached (network or firewall); nothing was sent"
            ),
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_codes_are_unique_and_roundtrip() {
        let mut codes = std::collections::HashSet::new();
        for r in Refusal::ALL {
            assert_eq!(Refusal::from_wire(r.as_str()), Some(r));
            assert!(codes.insert(r.exit_code()));
            assert_eq!(
                serde_json::to_string(&r).unwrap(),
                format!("\"{}\"", r.as_str())
            );
        }
    }
}
