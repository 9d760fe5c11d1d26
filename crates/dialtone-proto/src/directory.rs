//! The directory protocol's JSON types (HTTP under `/v1`, and the WebSocket session).
//!
//! Flow, as a client sees it (`docs/directory-api.md` has every body in full):
//!
//! - `POST /v1/register/start` with [`RegisterStart`] (signed by the identity key): the
//!   directory sends a one-time code to the identifier and answers [`RegisterStarted`].
//! - `POST /v1/register/confirm` with [`RegisterConfirm`] (the code, signed together with the
//!   identifier and the key): the identifier is bound to the key; answer [`Registered`].
//! - `POST /v1/session/challenge` with [`ChallengeRequest`]: a fresh one-time challenge.
//! - `GET /v1/session?device_id=…&challenge=…&signature=…` upgrades to a WebSocket once the
//!   device key's signature over the challenge verifies. The session *is* the device's
//!   presence. Text frames carry one JSON [`ClientFrame`] (client → directory) or
//!   [`ServerFrame`] (directory → client) each.
//! - `GET /v1/lookup/{identifier}` and `GET /.well-known/webfinger?resource=acct:…` return
//!   public keys only — never presence or addresses.
//! - `POST /v1/link` with [`LinkOfferRequest`]: a new device takes the device-link
//!   rendezvous another device offered ([`Request::LinkOffer`]); answer [`LinkOfferInfo`].
//!
//! Every error is a 4xx (or 5xx for the directory's own faults) with an [`ErrorBody`].

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::{
    devices::DeviceList,
    ids::Identifier,
    keys::{DeviceCertificate, DeviceId, IdentityKey, Signature},
};

/// Largest HTTP request body the directory accepts, in bytes.
pub const MAX_BODY_LEN: usize = 16 * 1024;
/// Largest WebSocket frame the directory accepts from a client, in bytes.
pub const MAX_WS_FRAME_LEN: usize = 64 * 1024;
/// Longest status message ("away message"), in bytes.
pub const MAX_STATUS_MESSAGE_LEN: usize = 256;
/// How many addresses one device may publish.
pub const MAX_ADDRS: usize = 16;
/// A registration's timestamp may be this far from the directory's clock, in seconds.
pub const MAX_CLOCK_SKEW_SECS: u64 = 300;

/// `POST /v1/register/start`: ask for a verification code.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterStart {
    /// The email address or phone number to bind.
    pub identifier: Identifier,
    /// The key to bind it to.
    pub identity_key: IdentityKey,
    /// The first device, certified by `identity_key`.
    pub device_cert: DeviceCertificate,
    /// Seconds since the Unix epoch, within [`MAX_CLOCK_SKEW_SECS`] of the directory's clock.
    pub timestamp: u64,
    /// Identity key's signature over [`crate::keys::register_start_transcript`].
    pub signature: Signature,
    /// The device key's signature over the same transcript: proof that whoever registers
    /// holds the device key, not only its public id (which lookups reveal).
    pub device_signature: Signature,
}

/// Answer to [`RegisterStart`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisterStarted {
    /// Which channel carried the code: `email`, `sms` or `outbox`.
    pub channel: String,
    /// How long the code stays valid, in seconds.
    pub expires_in_secs: u64,
}

/// `POST /v1/register/confirm`: prove control of the identifier with the code.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterConfirm {
    /// The identifier from [`RegisterStart`].
    pub identifier: Identifier,
    /// The key from [`RegisterStart`].
    pub identity_key: IdentityKey,
    /// The one-time code as received.
    pub code: String,
    /// Identity key's signature over [`crate::keys::register_confirm_transcript`].
    pub signature: Signature,
    /// The device list to publish for the binding: it must name the device of
    /// [`RegisterStart`]. Without one the directory publishes the bare key (older clients).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_list: Option<DeviceList>,
    /// The registration-lock PIN, when the identifier is bound to another key that has a
    /// lock ([`ErrorCode::RegistrationLocked`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<String>,
}

/// Shortest registration-lock PIN.
pub const MIN_PIN_LEN: usize = 4;
/// Longest registration-lock PIN.
pub const MAX_PIN_LEN: usize = 64;

/// Checks a registration-lock PIN's shape: [`MIN_PIN_LEN`] to [`MAX_PIN_LEN`] printable
/// characters.
pub fn check_pin(pin: &str) -> Result<(), String> {
    let n = pin.chars().count();
    if !(MIN_PIN_LEN..=MAX_PIN_LEN).contains(&n) || pin.chars().any(char::is_control) {
        return Err(format!(
            "a registration-lock PIN is {MIN_PIN_LEN} to {MAX_PIN_LEN} printable characters"
        ));
    }
    Ok(())
}

/// `POST /v1/link`: the new device asks for the rendezvous of a device-link code.
///
/// Only a request with the right [`LinkToken`] takes the offer (once); an unknown offer and a
/// wrong token get the same `404 not_found` and leave the offer in place, so sweeping the
/// offer ids neither uses up someone's rendezvous nor tells who is linking.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkOfferRequest {
    /// The offer id: the code's first [`LINK_OFFER_LEN`] characters.
    pub offer: String,
    /// [`crate::devices::LinkCode::rendezvous_token`] of the code.
    pub token: LinkToken,
}

/// The proof that a device-link rendezvous is asked for by someone who knows the code: the
/// first 16 bytes of SHA-256 over the transcript `link-rendezvous/v1` (the code's secret,
/// then the offer id), as 32 hex digits. See [`crate::devices::LinkCode::rendezvous_token`].
///
/// The directory learns this hash of the secret. It gains nothing it could not get before: a
/// directory that hands out its own endpoint as the rendezvous receives the new device's link
/// proof, which is a hash of the same secret. A PAKE would close both.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct LinkToken(pub [u8; 16]);

impl LinkToken {
    /// Whether `other` is the same token, compared in constant time.
    pub fn matches(&self, other: &Self) -> bool {
        self.0
            .iter()
            .zip(&other.0)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

impl std::fmt::Debug for LinkToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkToken(…)")
    }
}

impl Serialize for LinkToken {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(self.0))
    }
}

impl<'de> Deserialize<'de> for LinkToken {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        let mut out = [0u8; 16];
        hex::decode_to_slice(s.as_ref(), &mut out)
            .map_err(|_| serde::de::Error::custom("a link token is 32 hex digits"))?;
        Ok(Self(out))
    }
}

/// Answer to `POST /v1/link` ([`LinkOfferRequest`]): the device that shows a device-link
/// code, so the new device can connect to it directly. Each offer is given out once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkOfferInfo {
    /// Whose device shows the code.
    pub identifier: Identifier,
    /// The device to connect to.
    pub device_id: DeviceId,
    /// Where it is reachable.
    pub endpoint: EndpointInfo,
}

/// Answer to [`RegisterConfirm`]: the binding now in force.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Registered {
    /// The bound identifier.
    pub identifier: Identifier,
    /// The bound key.
    pub identity_key: IdentityKey,
    /// The device that may now open sessions.
    pub device_id: DeviceId,
    /// Whether this replaced a different key that was bound before.
    pub replaced_key: bool,
}

/// `POST /v1/session/challenge`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChallengeRequest {
    /// The device that will answer the challenge.
    pub device_id: DeviceId,
}

/// Answer to [`ChallengeRequest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Challenge {
    /// 32 random bytes as hex; sign [`crate::keys::session_transcript`] over them.
    pub challenge: String,
    /// Seconds until the challenge expires; it can be used once.
    pub expires_in_secs: u64,
}

/// Query of `GET /v1/session` (the WebSocket upgrade).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionQuery {
    /// The device opening the session.
    pub device_id: DeviceId,
    /// The challenge from [`Challenge`].
    pub challenge: String,
    /// Device key's signature over [`crate::keys::session_transcript`].
    pub signature: Signature,
}

/// The first frame a client sends on a session opened without a query (`GET /v1/session`,
/// the one-connection login): its answer to the [`ServerFrame::Challenge`] the directory sent
/// first on the same connection.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionLogin {
    /// The device opening the session.
    pub device_id: DeviceId,
    /// Device key's signature over [`crate::keys::session_transcript`] of the challenge.
    pub signature: Signature,
}

/// Length of a device-link offer id ([`Request::LinkOffer`]).
pub const LINK_OFFER_LEN: usize = 4;

/// Whether `offer` is a well-formed link offer id.
pub fn is_link_offer(offer: &str) -> bool {
    offer.len() == LINK_OFFER_LEN
        && offer
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
}

/// `GET /v1/lookup/{identifier}`: public keys only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PublicRecord {
    /// The identifier.
    pub identifier: Identifier,
    /// Its identity key.
    pub identity_key: IdentityKey,
    /// Its devices' certificates.
    pub devices: Vec<DeviceCertificate>,
    /// The signed device list, if the person published one (unproven here: prove it with
    /// `/v1/kt/lookup`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_list: Option<DeviceList>,
}

/// `GET /v1/info`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DirectoryInfo {
    /// Server software version.
    pub version: String,
    /// Protocol version (`1`).
    pub protocol: u32,
    /// A relay URL that agents should use, if the deployment runs one.
    pub relay_url: Option<String>,
    /// Seconds between keep-alive pings on the session.
    pub heartbeat_secs: u64,
    /// The relay's UDP port for QUIC address discovery (how a device learns its public
    /// address), if it runs one (it needs TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_quic_port: Option<u16>,
    /// Two UDP ports of the address echo beside the relay, on the relay's host (for
    /// `dialtone doctor`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub echo_ports: Vec<u16>,
}

/// A machine-readable error code, stable across versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The request was malformed (missing or invalid field).
    BadRequest,
    /// The body was not valid JSON.
    BadJson,
    /// The body was larger than [`MAX_BODY_LEN`].
    PayloadTooLarge,
    /// A signature did not verify.
    BadSignature,
    /// A timestamp was too far from the directory's clock.
    StaleTimestamp,
    /// An identifier could not be parsed.
    InvalidIdentifier,
    /// A device certificate was invalid or for another key.
    InvalidCertificate,
    /// No such identifier or route.
    NotFound,
    /// The verification code was wrong.
    WrongCode,
    /// No verification is pending for this identifier and key.
    NoPendingVerification,
    /// The verification code expired.
    CodeExpired,
    /// Too many wrong codes: start again.
    TooManyAttempts,
    /// Rate limited; see `retry_after_secs`.
    RateLimited,
    /// The session challenge is unknown, used, expired or for another device.
    ChallengeInvalid,
    /// The device is not registered.
    UnknownDevice,
    /// The person is offline (or appears so to you).
    Offline,
    /// Not a mutually accepted contact.
    NotAContact,
    /// You have blocked this person.
    Blocked,
    /// The operation makes no sense in the current state (e.g. accept with no request).
    Conflict,
    /// The directory could not send a verification code.
    DeliveryFailed,
    /// The binding is not in the transparency log yet; ask again in a moment.
    NotPublished,
    /// The identifier is bound to another key with a registration lock: give the PIN.
    RegistrationLocked,
    /// The registration-lock PIN was wrong.
    WrongPin,
    /// A device list was refused (not signed by the account's key, an old version, a device
    /// without a certificate, the requesting device missing).
    BadDeviceList,
    /// A registration's device list claims `unlocked_with_pin` where this registration opened
    /// no lock, or does not claim it where the PIN opened one (the lock lapsed, or was in
    /// force, unlike the public record suggested): sign the list again with the claim flipped.
    UnlockMismatch,
    /// The directory failed; not the client's fault.
    Internal,
}

/// JSON error body of every failed request, and of a failed session request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Machine-readable code.
    pub error: ErrorCode,
    /// A sentence for a person, saying what to do.
    pub message: String,
    /// For [`ErrorCode::RateLimited`]: seconds to wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_secs: Option<u64>,
}

impl ErrorBody {
    /// A body with a code and message.
    pub fn new(error: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            error,
            message: message.into(),
            retry_after_secs: None,
        }
    }
}

/// A person's state as they set it, and as contacts see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum PresenceState {
    /// Available.
    Online,
    /// Away (idle or set by hand); messages are still delivered.
    Away,
    /// Busy / do not disturb: messages are refused with `do-not-disturb`.
    Busy,
    /// Online but shown as offline to everyone: contacts' messages are refused as `offline`.
    Invisible,
    /// Not connected (only ever *reported*, never published).
    Offline,
}

impl PresenceState {
    /// The lowercase name (`online`, `away`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Online => "online",
            Self::Away => "away",
            Self::Busy => "busy",
            Self::Invisible => "invisible",
            Self::Offline => "offline",
        }
    }

    /// What a contact sees: invisible shows as offline.
    pub fn as_seen_by_contacts(self) -> Self {
        match self {
            Self::Invisible => Self::Offline,
            s => s,
        }
    }
}

/// Where a device can be reached: its iroh endpoint address.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct EndpointInfo {
    /// Direct socket addresses (IPv6 first).
    pub addrs: Vec<SocketAddr>,
    /// The relay the device is reachable through, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_url: Option<String>,
}

/// One online device of a contact, as the directory reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceEndpoint {
    /// The device's certificate (its key and the identity key's signature).
    pub cert: DeviceCertificate,
    /// How to reach it.
    pub endpoint: EndpointInfo,
    /// This device's own state.
    pub state: PresenceState,
}

/// What the requester may see of someone's presence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PresenceView {
    /// Aggregate state over devices: `offline` unless the requester is an accepted contact.
    pub state: PresenceState,
    /// Status ("away") message, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Online devices and their addresses: only for accepted contacts.
    #[serde(default)]
    pub devices: Vec<DeviceEndpoint>,
}

impl PresenceView {
    /// Offline, no message, no devices.
    pub fn offline() -> Self {
        Self {
            state: PresenceState::Offline,
            message: None,
            devices: Vec::new(),
        }
    }
}

/// How the requester relates to someone, from the requester's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Relation {
    /// Both accepted: presence and addresses are shared.
    Accepted,
    /// The requester blocked them.
    Blocked,
    /// They asked the requester; waiting for accept or reject.
    Incoming,
    /// No relation.
    None,
    /// The requester asked them; waiting for their answer.
    Outgoing,
}

/// A contact as listed on the session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContactEntry {
    /// Their identifier.
    pub identifier: Identifier,
    /// Their current identity key, as the directory has it.
    pub identity_key: IdentityKey,
    /// Relation from the requester's side.
    pub relation: Relation,
    /// Presence (offline unless [`Relation::Accepted`]).
    pub presence: PresenceView,
}

/// One request from the client on the session, with an id the reply carries back.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientFrame {
    /// Chosen by the client; echoed in the reply.
    pub id: u64,
    /// What to do.
    pub request: Request,
}

/// A request on the session.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum Request {
    /// Block someone: they lose the contact and see you offline.
    Block {
        /// Whom.
        identifier: Identifier,
    },
    /// Ask someone to be a contact; delivered only if they are online.
    ContactRequest {
        /// Whom.
        to: Identifier,
    },
    /// Accept or reject a request that reached you.
    ContactRespond {
        /// Who asked.
        from: Identifier,
        /// Accept (true) or reject (false).
        accept: bool,
    },
    /// Remove a contact (both ways).
    ContactRemove {
        /// Whom.
        identifier: Identifier,
    },
    /// List contacts, requests and blocks, with presence.
    Contacts,
    /// Look someone up: keys always; presence and addresses if an accepted contact.
    Lookup {
        /// Whom.
        identifier: Identifier,
    },
    /// Key transparency: every checkpoint from `from` to `to` and the append-only proof
    /// between them ([`Reply::KtAudit`]).
    KtAudit {
        /// First epoch (the one the client holds).
        from: u64,
        /// Last epoch (at most the latest).
        to: u64,
    },
    /// Key transparency: the latest signed checkpoint ([`Reply::KtCheckpoint`]).
    KtCheckpoint,
    /// Key transparency: the complete key history of an identifier ([`Reply::KtHistory`]).
    KtHistory {
        /// Whose.
        identifier: Identifier,
    },
    /// Key transparency: a lookup proof for an identifier ([`Reply::KtLookup`]).
    KtLookup {
        /// Whom.
        identifier: Identifier,
    },
    /// Keep-alive; the reply is [`Reply::Pong`].
    Ping,
    /// Publish this device's state and addresses. Contacts get the change pushed.
    Publish {
        /// State (`offline` is not allowed).
        state: PresenceState,
        /// Status text, at most [`MAX_STATUS_MESSAGE_LEN`] bytes.
        #[serde(default)]
        message: Option<String>,
        /// Where this device is reachable.
        endpoint: EndpointInfo,
    },
    /// Offer a device-link rendezvous: until it is taken once (`POST /v1/link` with the
    /// right token, [`LinkOfferRequest`]), expires or this session ends, the directory tells
    /// whoever names `offer` with `token` this device's id and `endpoint`. The link itself
    /// runs directly between the two devices.
    LinkOffer {
        /// The offer id: [`LINK_OFFER_LEN`] characters of `0-9A-Z` (the first part of the
        /// code the device shows).
        offer: String,
        /// [`crate::devices::LinkCode::rendezvous_token`] of the code shown.
        token: LinkToken,
        /// Where this device is reachable.
        endpoint: EndpointInfo,
    },
    /// Publish a new signed device list (link, revoke, registration lock): signed by the
    /// account's identity key, a higher version, naming the requesting device. Devices not
    /// on it lose their sessions and registrations; new devices need a certificate.
    PublishDevices {
        /// The new list (boxed: the largest request by far).
        list: Box<DeviceList>,
        /// Certificates of the devices that are new on the list.
        #[serde(default)]
        certs: Vec<DeviceCertificate>,
        /// The new registration-lock PIN, when `list.registration_lock` turns the lock on or
        /// changes the PIN.
        #[serde(default)]
        pin: Option<String>,
    },
    /// Unblock someone (they are not re-added as a contact).
    Unblock {
        /// Whom.
        identifier: Identifier,
    },
}

/// A frame from the directory on the session.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ServerFrame {
    /// First frame of a session opened without a query (the one-connection login): the
    /// client answers with a [`SessionLogin`] within `expires_in_secs`. The challenge is bound
    /// to this connection; it is never valid on another.
    Challenge {
        /// 32 random bytes as hex; sign [`crate::keys::session_transcript`] over them.
        challenge: String,
        /// Seconds the directory waits for the answer.
        expires_in_secs: u64,
    },
    /// First frame after the upgrade: who the session belongs to.
    Welcome {
        /// The account.
        identifier: Identifier,
        /// The account's identity key.
        identity_key: IdentityKey,
        /// This device.
        device_id: DeviceId,
        /// The directory pings this often; answer pongs (WebSocket level) or the session ends.
        heartbeat_secs: u64,
    },
    /// Successful answer to the request with this id.
    Reply {
        /// The request's id.
        id: u64,
        /// The answer.
        reply: Reply,
    },
    /// Failed answer to the request with this id.
    Error {
        /// The request's id (0 if the frame could not be parsed).
        id: u64,
        /// Why.
        error: ErrorBody,
    },
    /// Pushed: an accepted contact's presence changed.
    Presence {
        /// The contact, with their new presence.
        contact: ContactEntry,
    },
    /// Pushed: someone asks to be your contact (delivered live, never stored for later push).
    ContactRequest {
        /// Who asks.
        from: Identifier,
        /// Their identity key.
        identity_key: IdentityKey,
    },
    /// Pushed: a contact's relation changed (accepted, rejected, removed, blocked).
    ContactChanged {
        /// The contact as it now stands; `relation: none` means removed.
        contact: ContactEntry,
    },
}

/// The successful answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
// Values are built, sent and dropped one at a time, never kept in bulk: boxing the large
// variant would cost an allocation per frame for no memory saved.
#[allow(clippy::large_enum_variant)]
pub enum Reply {
    /// Done; nothing to return.
    Done,
    /// The contact list.
    Contacts {
        /// Every contact, request and block.
        contacts: Vec<ContactEntry>,
    },
    /// A lookup result.
    Lookup {
        /// The person, from the requester's side.
        contact: ContactEntry,
    },
    /// Answer to [`Request::KtAudit`].
    KtAudit {
        /// Checkpoints and proof.
        audit: crate::transparency::KtAudit,
    },
    /// Answer to [`Request::KtCheckpoint`].
    KtCheckpoint {
        /// The latest checkpoint.
        checkpoint: crate::transparency::Checkpoint,
    },
    /// Answer to [`Request::KtHistory`].
    KtHistory {
        /// Proof and checkpoint.
        history: crate::transparency::KtHistory,
    },
    /// Answer to [`Request::KtLookup`].
    KtLookup {
        /// Proof and checkpoint.
        lookup: crate::transparency::KtLookup,
    },
    /// Answer to [`Request::Ping`].
    Pong,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_json_shape() {
        let f: ClientFrame = serde_json::from_str(
            r#"{"id":7,"request":{"op":"lookup","identifier":"Bob@Example.com"}}"#,
        )
        .unwrap();
        assert_eq!(f.id, 7);
        assert!(
            matches!(f.request, Request::Lookup { ref identifier } if identifier.as_str() == "bob@example.com")
        );
        assert!(
            serde_json::from_str::<ClientFrame>(r#"{"id":1,"request":{"op":"nope"}}"#).is_err()
        );
        let p: ClientFrame = serde_json::from_str(
            r#"{"id":2,"request":{"op":"publish","state":"away","message":"lunch","endpoint":{"addrs":["[::1]:5"]}}}"#,
        )
        .unwrap();
        assert!(matches!(
            p.request,
            Request::Publish {
                state: PresenceState::Away,
                ..
            }
        ));
    }

    #[test]
    fn link_tokens_are_hex_and_compared_whole() {
        let r: LinkOfferRequest =
            serde_json::from_str(r#"{"offer":"K7QM","token":"00112233445566778899aabbccddeeff"}"#)
                .unwrap();
        assert_eq!(r.token.0[15], 0xff);
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"offer":"K7QM","token":"00112233445566778899aabbccddeeff"}"#
        );
        let mut other = r.token;
        assert!(r.token.matches(&other));
        other.0[15] ^= 1;
        assert!(!r.token.matches(&other));
        assert_eq!(format!("{:?}", r.token), "LinkToken(…)");
        for bad in [
            r#"{"offer":"K7QM","token":"0011"}"#,
            r#"{"offer":"K7QM","token":"zz112233445566778899aabbccddeeff"}"#,
            r#"{"offer":"K7QM"}"#,
            r#"{"offer":"K7QM","token":"00112233445566778899aabbccddeeff","x":1}"#,
        ] {
            assert!(
                serde_json::from_str::<LinkOfferRequest>(bad).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn error_body_shape() {
        let e = ErrorBody::new(ErrorCode::WrongCode, "wrong code");
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"error":"wrong_code","message":"wrong code"}"#
        );
    }
}
