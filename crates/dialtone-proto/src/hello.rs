//! The hello's checks, as a sans-IO state machine.
//!
//! A [`HelloCheck`] decides whether a peer's [`Hello`] proves an accepted contact. It reads no
//! socket, clock, directory or file: the driver (the agent's `peer` module) feeds it the
//! peer's first frame and the *facts* it asked for, and carries out the [`Action`]s it asks
//! for. The checks, in order:
//!
//! 1. the first frame is a hello (a listener also takes a device-link request: [`Action::Link`]);
//! 2. the version ranges overlap (else [`CloseCode::UnsupportedVersion`]);
//! 3. a dialer got the identifier it dialed, the certificate is for the device TLS
//!    authenticated and its signature verifies (else [`CloseCode::BadCertificate`]);
//! 4. the identifier is an accepted contact ([`Action::LookUpContact`]; else
//!    [`CloseCode::NotAContact`]) whose identity key is the certificate's (else
//!    [`CloseCode::KeyChanged`]);
//! 5. the peer's checkpoint agrees with ours ([`Action::CompareCheckpoint`]; else
//!    [`CloseCode::SplitView`]);
//! 6. the transparency log proves the key ([`Action::ProveIdentity`]; else
//!    [`CloseCode::Unproven`]) and lists the device ([`Action::ProveDevice`]; else
//!    [`CloseCode::DeviceRevoked`] or [`CloseCode::Unproven`]);
//! 7. the key is the one pinned, or none is pinned yet ([`Action::CheckPin`]; else
//!    [`CloseCode::KeyChanged`]).
//!
//! Then a listener sends its own hello ([`Action::Send`]; a dialer sent it first) and the
//! connection is accepted with the version and features both sides speak
//! ([`Action::Accept`]). Nothing is sent to a listener's peer before its hello passed every
//! check.
//!
//! Drive it thus: after construction and after every `handle_*` call, call
//! [`HelloCheck::poll_action`] until `None`. Each question action must be answered with
//! [`HelloCheck::handle_fact`] before the machine continues; [`Action::Close`],
//! [`Action::Link`] and [`Action::Accept`] are final.
//!
//! [`StrangerLookups`] bounds the directory lookups that hellos from strangers can cause.

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

use crate::{
    DeviceId, Identifier, IdentityKey,
    rules::{RateRule, TokenBucket},
    transparency::{Checkpoint, Hash32},
    wire::{CloseCode, Features, Frame, Hello, negotiate_version},
};

/// Which end of the connection runs the check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// We accepted the connection: the peer's hello comes first, ours only once it passed.
    Listener,
    /// We dialed this identifier: our hello went first, and the peer must be who we dialed.
    Dialer(Identifier),
}

/// What a question action found out, fed back with [`HelloCheck::handle_fact`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fact {
    /// Answer to [`Action::LookUpContact`]: an accepted contact with this identity key (from
    /// the agent's contacts, the directory, or — LAN mode — the key pinned earlier).
    Contact(IdentityKey),
    /// Answer to [`Action::LookUpContact`]: not an accepted contact, blocked, unknown, or not
    /// looked up (a stranger over the lookup bound, or in the negative cache).
    NotAContact,
    /// Answer to [`Action::CompareCheckpoint`]: no conflict (or nothing could be compared).
    CheckpointAgrees,
    /// Answer to [`Action::CompareCheckpoint`]: the two checkpoints cannot both be true.
    SplitView,
    /// Answer to [`Action::ProveIdentity`] or [`Action::ProveDevice`]: proven.
    Proven,
    /// Answer to [`Action::ProveIdentity`] or [`Action::ProveDevice`]: not proven.
    Unproven,
    /// Answer to [`Action::ProveDevice`]: the proven device list does not name the device.
    DeviceNotListed,
    /// Answer to [`Action::CheckPin`]: the pinned key is this one, or none was pinned (the
    /// driver pins it now).
    PinOk,
    /// Answer to [`Action::CheckPin`]: another key is pinned (the driver warns loudly).
    PinDiffers,
}

/// What the driver must do next.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
// One action at a time, consumed at once: boxing the hello would cost an allocation each.
#[allow(clippy::large_enum_variant)]
pub enum Action {
    /// Write this hello on the hello stream and finish the stream's sending side.
    Send(Hello),
    /// Is `identifier` an accepted contact, and with which key? Answer with
    /// [`Fact::Contact`] or [`Fact::NotAContact`].
    LookUpContact {
        /// Who the hello claims to be.
        identifier: Identifier,
    },
    /// Compare the peer's checkpoint with ours. Answer [`Fact::CheckpointAgrees`] or
    /// [`Fact::SplitView`].
    CompareCheckpoint {
        /// The peer.
        identifier: Identifier,
        /// Its checkpoint.
        checkpoint: Checkpoint,
    },
    /// Prove the key in the transparency log. Answer [`Fact::Proven`] or [`Fact::Unproven`].
    ProveIdentity {
        /// The peer.
        identifier: Identifier,
        /// Its key.
        identity_key: IdentityKey,
    },
    /// Prove that the log's device list names the device. Answer [`Fact::Proven`],
    /// [`Fact::DeviceNotListed`] or [`Fact::Unproven`].
    ProveDevice {
        /// The peer.
        identifier: Identifier,
        /// Its key.
        identity_key: IdentityKey,
        /// Its device.
        device: DeviceId,
    },
    /// Compare with the key pinned for the identifier (pin it if none is). Answer
    /// [`Fact::PinOk`] or [`Fact::PinDiffers`].
    CheckPin {
        /// The peer.
        identifier: Identifier,
        /// Its key.
        identity_key: IdentityKey,
    },
    /// Final: close the connection with this code.
    Close(CloseCode),
    /// Final (listener only): the first frame was a device-link request; hand the stream to
    /// device linking.
    Link {
        /// The offer id.
        offer: String,
        /// The new device's name.
        name: String,
        /// Its proof of the code.
        proof: Hash32,
    },
    /// Final: the peer is a proven contact; use the connection with these terms.
    Accept(Accepted),
}

/// What a passed hello established, kept with the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The peer's identifier.
    pub identifier: Identifier,
    /// The protocol version both speak.
    pub version: u32,
    /// The features both announced: the only ones either side may use.
    pub features: Features,
}

/// Calling the machine out of order (a driver bug, not the peer's fault).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Misuse {
    /// A frame when none was awaited.
    #[error("the hello check was not waiting for a frame")]
    UnexpectedFrame,
    /// A fact that does not answer the pending question (or none is pending).
    #[error("the fact does not answer the pending question")]
    UnexpectedFact,
}

#[derive(Debug)]
enum State {
    AwaitFrame,
    AwaitContact(Box<Hello>),
    AwaitCheckpoint(Box<Hello>),
    AwaitIdentity(Box<Hello>),
    AwaitDevice(Box<Hello>),
    AwaitPin(Box<Hello>),
    Done,
}

/// The check of one peer's hello on one connection. See the module doc for the order of
/// checks and the drain rule.
#[derive(Debug)]
pub struct HelloCheck {
    role: Role,
    remote: DeviceId,
    ours: Hello,
    state: State,
    actions: VecDeque<Action>,
}

impl HelloCheck {
    /// A check for a connection whose TLS handshake authenticated `remote`; `ours` is the
    /// hello we send (its version range and features are what we offer).
    pub fn new(role: Role, remote: DeviceId, ours: Hello) -> Self {
        let mut actions = VecDeque::new();
        if matches!(role, Role::Dialer(_)) {
            actions.push_back(Action::Send(ours.clone()));
        }
        Self {
            role,
            remote,
            ours,
            state: State::AwaitFrame,
            actions,
        }
    }

    /// The next thing to do, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Whether a final action was produced.
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// The peer's first frame on the hello stream, or why it could not be read.
    pub fn handle_frame(
        &mut self,
        frame: Result<Frame, crate::wire::DecodeError>,
    ) -> Result<(), Misuse> {
        if !matches!(self.state, State::AwaitFrame) {
            return Err(Misuse::UnexpectedFrame);
        }
        match frame {
            Ok(Frame::Hello(hello)) => self.check_hello(Box::new(hello)),
            Ok(Frame::LinkRequest { offer, name, proof }) if self.role == Role::Listener => {
                self.finish(Action::Link { offer, name, proof });
            }
            _ => self.close(CloseCode::Protocol),
        }
        Ok(())
    }

    fn check_hello(&mut self, hello: Box<Hello>) {
        if negotiate_version(self.ours.versions(), hello.versions()).is_none() {
            return self.close(CloseCode::UnsupportedVersion);
        }
        if let Role::Dialer(expected) = &self.role
            && *expected != hello.identifier
        {
            return self.close(CloseCode::BadCertificate);
        }
        let cert = &hello.device_cert;
        if cert.device_id != self.remote || cert.verify().is_err() {
            return self.close(CloseCode::BadCertificate);
        }
        self.actions.push_back(Action::LookUpContact {
            identifier: hello.identifier.clone(),
        });
        self.state = State::AwaitContact(hello);
    }

    /// The answer to the pending question action.
    pub fn handle_fact(&mut self, fact: Fact) -> Result<(), Misuse> {
        let state = std::mem::replace(&mut self.state, State::Done);
        match (state, fact) {
            (State::AwaitContact(_), Fact::NotAContact) => self.close(CloseCode::NotAContact),
            (State::AwaitContact(h), Fact::Contact(key)) => {
                if key != h.device_cert.identity_key {
                    self.close(CloseCode::KeyChanged);
                    return Ok(());
                }
                match h.checkpoint {
                    Some(checkpoint) => {
                        self.actions.push_back(Action::CompareCheckpoint {
                            identifier: h.identifier.clone(),
                            checkpoint,
                        });
                        self.state = State::AwaitCheckpoint(h);
                    }
                    None => self.prove_identity(h),
                }
            }
            (State::AwaitCheckpoint(_), Fact::SplitView) => self.close(CloseCode::SplitView),
            (State::AwaitCheckpoint(h), Fact::CheckpointAgrees) => self.prove_identity(h),
            (State::AwaitIdentity(_), Fact::Unproven) => self.close(CloseCode::Unproven),
            (State::AwaitIdentity(h), Fact::Proven) => {
                self.actions.push_back(Action::ProveDevice {
                    identifier: h.identifier.clone(),
                    identity_key: h.device_cert.identity_key,
                    device: self.remote,
                });
                self.state = State::AwaitDevice(h);
            }
            (State::AwaitDevice(_), Fact::DeviceNotListed) => {
                self.close(CloseCode::DeviceRevoked);
            }
            (State::AwaitDevice(_), Fact::Unproven) => self.close(CloseCode::Unproven),
            (State::AwaitDevice(h), Fact::Proven) => {
                self.actions.push_back(Action::CheckPin {
                    identifier: h.identifier.clone(),
                    identity_key: h.device_cert.identity_key,
                });
                self.state = State::AwaitPin(h);
            }
            (State::AwaitPin(_), Fact::PinDiffers) => self.close(CloseCode::KeyChanged),
            (State::AwaitPin(h), Fact::PinOk) => self.accept(*h),
            (state, _) => {
                self.state = state;
                return Err(Misuse::UnexpectedFact);
            }
        }
        Ok(())
    }

    fn prove_identity(&mut self, h: Box<Hello>) {
        self.actions.push_back(Action::ProveIdentity {
            identifier: h.identifier.clone(),
            identity_key: h.device_cert.identity_key,
        });
        self.state = State::AwaitIdentity(h);
    }

    fn accept(&mut self, theirs: Hello) {
        let Some(version) = negotiate_version(self.ours.versions(), theirs.versions()) else {
            return self.close(CloseCode::UnsupportedVersion);
        };
        if self.role == Role::Listener {
            self.actions.push_back(Action::Send(self.ours.clone()));
        }
        let features = self.ours.features().common(theirs.features());
        self.finish(Action::Accept(Accepted {
            identifier: theirs.identifier,
            version,
            features,
        }));
    }

    fn close(&mut self, code: CloseCode) {
        self.finish(Action::Close(code));
    }

    fn finish(&mut self, action: Action) {
        self.actions.push_back(action);
        self.state = State::Done;
    }
}

/// How many directory lookups hellos from strangers may cause, and how long a "not a
/// contact" answer is remembered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StrangerRules {
    /// Lookups at once, and one more every `period` (the person's own directory budget is
    /// 100 requests, then 20 a second: strangers may use a small part of it).
    pub rate: RateRule,
    /// Lookups in flight at the same time.
    pub in_flight: usize,
    /// How long an identifier found not to be a contact is refused without asking again.
    pub negative_ttl: Duration,
    /// Most identifiers remembered as not a contact.
    pub negative_entries: usize,
}

impl Default for StrangerRules {
    fn default() -> Self {
        Self {
            rate: RateRule::new(8, Duration::from_secs(1)),
            in_flight: 2,
            negative_ttl: Duration::from_secs(30),
            negative_entries: 1024,
        }
    }
}

/// Whether a hello from someone who is not a known contact may cause a directory lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Ask the directory; then call [`StrangerLookups::finished`].
    LookUp,
    /// Asked recently: not a contact. Refuse without asking.
    KnownStranger,
    /// Over the bound (too many lookups in flight or recently). Refuse without asking.
    OverLimit,
}

/// Bounds and caches the lookups that hellos from strangers cause, so a stranger cannot
/// spend the person's own directory rate-limit budget.
///
/// Inputs: [`StrangerLookups::admit`] before a lookup, [`StrangerLookups::finished`] after
/// it, each with the current time (never going backwards).
#[derive(Debug)]
pub struct StrangerLookups {
    rules: StrangerRules,
    bucket: TokenBucket,
    in_flight: usize,
    refused: HashMap<Identifier, Instant>,
}

impl StrangerLookups {
    /// An empty cache with a full budget.
    pub fn new(rules: StrangerRules) -> Self {
        Self {
            rules,
            bucket: TokenBucket::new(rules.rate),
            in_flight: 0,
            refused: HashMap::new(),
        }
    }

    /// May a hello from `identifier` (not an accepted contact as far as the agent knows)
    /// cause a lookup now?
    pub fn admit(&mut self, identifier: &Identifier, now: Instant) -> Admission {
        if let Some(at) = self.refused.get(identifier) {
            if now.saturating_duration_since(*at) < self.rules.negative_ttl {
                return Admission::KnownStranger;
            }
            self.refused.remove(identifier);
        }
        if self.in_flight >= self.rules.in_flight || self.bucket.check(now).is_err() {
            return Admission::OverLimit;
        }
        self.in_flight += 1;
        Admission::LookUp
    }

    /// A lookup admitted by [`StrangerLookups::admit`] ended; `contact` says whether it found
    /// an accepted contact (otherwise the identifier is remembered as a stranger).
    pub fn finished(&mut self, identifier: &Identifier, contact: bool, now: Instant) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if contact {
            self.refused.remove(identifier);
            return;
        }
        if self.refused.len() >= self.rules.negative_entries {
            let ttl = self.rules.negative_ttl;
            self.refused
                .retain(|_, at| now.saturating_duration_since(*at) < ttl);
        }
        if self.refused.len() >= self.rules.negative_entries
            && let Some(oldest) = self
                .refused
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(id, _)| id.clone())
        {
            self.refused.remove(&oldest);
        }
        self.refused.insert(identifier.clone(), now);
    }

    /// A lookup admitted by [`StrangerLookups::admit`] ended without an answer (the directory
    /// failed, or the hello was abandoned): its slot is free again and nothing is remembered.
    pub fn abandoned(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    /// Forgets a remembered stranger (they became a contact).
    pub fn forget(&mut self, identifier: &Identifier) {
        self.refused.remove(identifier);
    }

    /// Lookups in flight now.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        DeviceCertificate,
        wire::{Feature, MAX_PROTOCOL_VERSION, PROTOCOL_VERSION},
    };
    use ed25519_dalek::SigningKey;

    struct Peer {
        identifier: Identifier,
        identity: SigningKey,
        device: SigningKey,
    }

    impl Peer {
        fn new(name: &str, seed: u8) -> Self {
            Self {
                identifier: Identifier::parse(&format!("{name}@example.com")).unwrap(),
                identity: SigningKey::from_bytes(&[seed; 32]),
                device: SigningKey::from_bytes(&[seed + 100; 32]),
            }
        }
        fn device_id(&self) -> DeviceId {
            DeviceId::from_signing_key(&self.device)
        }
        fn key(&self) -> IdentityKey {
            DeviceCertificate::issue(&self.identity, self.device_id(), "d", 1)
                .unwrap()
                .identity_key
        }
        fn hello(&self, features: Option<Features>) -> Hello {
            Hello {
                version: PROTOCOL_VERSION,
                max_version: Some(MAX_PROTOCOL_VERSION),
                identifier: self.identifier.clone(),
                device_cert: DeviceCertificate::issue(&self.identity, self.device_id(), "d", 1)
                    .unwrap(),
                checkpoint: None,
                features: features.map(Features::names),
            }
        }
    }

    fn drain(m: &mut HelloCheck) -> Vec<Action> {
        std::iter::from_fn(|| m.poll_action()).collect()
    }

    /// Answers every question the way a friendly world would, and returns the final action.
    fn run_happy(m: &mut HelloCheck, contact_key: IdentityKey) -> Vec<Action> {
        let mut seen = Vec::new();
        for _ in 0..20 {
            let batch = drain(m);
            if batch.is_empty() {
                break;
            }
            for a in batch {
                let fact = match &a {
                    Action::LookUpContact { .. } => Some(Fact::Contact(contact_key)),
                    Action::CompareCheckpoint { .. } => Some(Fact::CheckpointAgrees),
                    Action::ProveIdentity { .. } | Action::ProveDevice { .. } => Some(Fact::Proven),
                    Action::CheckPin { .. } => Some(Fact::PinOk),
                    _ => None,
                };
                seen.push(a);
                if let Some(f) = fact {
                    m.handle_fact(f).unwrap();
                }
            }
        }
        seen
    }

    #[test]
    fn listener_accepts_a_contact_and_sends_its_hello_only_then() {
        let (me, them) = (Peer::new("bob", 1), Peer::new("alice", 2));
        let mut m = HelloCheck::new(
            Role::Listener,
            them.device_id(),
            me.hello(Some(Features::ALL)),
        );
        assert!(
            drain(&mut m).is_empty(),
            "a listener says nothing before the peer's hello"
        );
        m.handle_frame(Ok(Frame::Hello(them.hello(Some(Features::ALL)))))
            .unwrap();
        let actions = run_happy(&mut m, them.key());
        let names: Vec<&str> = actions
            .iter()
            .map(|a| match a {
                Action::LookUpContact { .. } => "lookup",
                Action::ProveIdentity { .. } => "identity",
                Action::ProveDevice { .. } => "device",
                Action::CheckPin { .. } => "pin",
                Action::Send(_) => "send",
                Action::Accept(_) => "accept",
                _ => "other",
            })
            .collect();
        assert_eq!(
            names,
            ["lookup", "identity", "device", "pin", "send", "accept"]
        );
        let Some(Action::Accept(a)) = actions.last() else {
            unreachable!()
        };
        assert_eq!(a.identifier, them.identifier);
        assert_eq!(a.version, 1);
        assert_eq!(a.features, Features::ALL);
        assert!(m.is_done());
    }

    #[test]
    fn an_old_hello_negotiates_legacy_features() {
        let (me, them) = (Peer::new("bob", 1), Peer::new("alice", 2));
        let mut old = them.hello(None);
        old.max_version = None;
        let mut m = HelloCheck::new(
            Role::Listener,
            them.device_id(),
            me.hello(Some(Features::ALL)),
        );
        m.handle_frame(Ok(Frame::Hello(old))).unwrap();
        let Some(Action::Accept(a)) = run_happy(&mut m, them.key()).pop() else {
            panic!("not accepted")
        };
        assert_eq!(a.features, Features::LEGACY);
        assert!(!a.features.contains(Feature::StreamKinds));
        assert!(!a.features.contains(Feature::Unsupported));
        // Unknown feature names from a newer peer are ignored, not refused.
        let mut newer = them.hello(None);
        newer.features = Some(vec!["text".into(), "video-calls".into()]);
        let mut m = HelloCheck::new(
            Role::Listener,
            them.device_id(),
            me.hello(Some(Features::ALL)),
        );
        m.handle_frame(Ok(Frame::Hello(newer))).unwrap();
        let Some(Action::Accept(a)) = run_happy(&mut m, them.key()).pop() else {
            panic!("not accepted")
        };
        assert_eq!(a.features, Features::LEGACY);
    }

    #[test]
    fn dialer_sends_first_and_checks_who_it_dialed() {
        let (me, them, other) = (
            Peer::new("bob", 1),
            Peer::new("alice", 2),
            Peer::new("eve", 3),
        );
        let mut m = HelloCheck::new(
            Role::Dialer(other.identifier.clone()),
            them.device_id(),
            me.hello(Some(Features::ALL)),
        );
        assert!(matches!(drain(&mut m)[..], [Action::Send(_)]));
        m.handle_frame(Ok(Frame::Hello(them.hello(None)))).unwrap();
        assert_eq!(drain(&mut m), [Action::Close(CloseCode::BadCertificate)]);

        let mut m = HelloCheck::new(
            Role::Dialer(them.identifier.clone()),
            them.device_id(),
            me.hello(Some(Features::ALL)),
        );
        let actions = run_happy(&mut m, them.key());
        assert!(matches!(actions[..], [Action::Send(_)]));
        m.handle_frame(Ok(Frame::Hello(them.hello(None)))).unwrap();
        let actions = run_happy(&mut m, them.key());
        assert!(!actions.iter().any(|a| matches!(a, Action::Send(_))));
        assert!(matches!(actions.last(), Some(Action::Accept(_))));
    }

    #[test]
    fn each_failure_closes_with_its_code() {
        let (me, them) = (Peer::new("bob", 1), Peer::new("alice", 2));
        let ours = || me.hello(Some(Features::ALL));
        let start = |hello: Hello| {
            let mut m = HelloCheck::new(Role::Listener, them.device_id(), ours());
            m.handle_frame(Ok(Frame::Hello(hello))).unwrap();
            m
        };
        // Wrong first frame, undecodable frame, a dialer's link request.
        let mut m = HelloCheck::new(Role::Listener, them.device_id(), ours());
        m.handle_frame(Ok(Frame::LinkDone)).unwrap();
        assert_eq!(drain(&mut m), [Action::Close(CloseCode::Protocol)]);
        let mut m = HelloCheck::new(Role::Listener, them.device_id(), ours());
        m.handle_frame(Err(crate::wire::DecodeError::TrailingBytes(1)))
            .unwrap();
        assert_eq!(drain(&mut m), [Action::Close(CloseCode::Protocol)]);
        let link = Frame::LinkRequest {
            offer: "ABCD".into(),
            name: "n".into(),
            proof: Hash32([0; 32]),
        };
        let mut m = HelloCheck::new(
            Role::Dialer(them.identifier.clone()),
            them.device_id(),
            ours(),
        );
        drain(&mut m);
        m.handle_frame(Ok(link.clone())).unwrap();
        assert_eq!(drain(&mut m), [Action::Close(CloseCode::Protocol)]);
        let mut m = HelloCheck::new(Role::Listener, them.device_id(), ours());
        m.handle_frame(Ok(link)).unwrap();
        assert!(matches!(drain(&mut m)[..], [Action::Link { .. }]));
        assert_eq!(
            m.handle_frame(Ok(Frame::LinkDone)),
            Err(Misuse::UnexpectedFrame)
        );

        // Version ranges that do not meet.
        let mut h = them.hello(None);
        h.version = 2;
        h.max_version = Some(3);
        let mut m = start(h);
        assert_eq!(
            drain(&mut m),
            [Action::Close(CloseCode::UnsupportedVersion)]
        );
        // A certificate for another device, or with a bad signature.
        let mut m = HelloCheck::new(Role::Listener, me.device_id(), ours());
        m.handle_frame(Ok(Frame::Hello(them.hello(None)))).unwrap();
        assert_eq!(drain(&mut m), [Action::Close(CloseCode::BadCertificate)]);
        let mut h = them.hello(None);
        h.device_cert.name = "forged".into();
        let mut m = start(h);
        assert_eq!(drain(&mut m), [Action::Close(CloseCode::BadCertificate)]);

        // Each answer that fails, at its step.
        let steps: [(&[Fact], CloseCode); 6] = [
            (&[Fact::NotAContact], CloseCode::NotAContact),
            (&[Fact::Contact(me.key())], CloseCode::KeyChanged),
            (
                &[Fact::Contact(them.key()), Fact::Unproven],
                CloseCode::Unproven,
            ),
            (
                &[
                    Fact::Contact(them.key()),
                    Fact::Proven,
                    Fact::DeviceNotListed,
                ],
                CloseCode::DeviceRevoked,
            ),
            (
                &[Fact::Contact(them.key()), Fact::Proven, Fact::Unproven],
                CloseCode::Unproven,
            ),
            (
                &[
                    Fact::Contact(them.key()),
                    Fact::Proven,
                    Fact::Proven,
                    Fact::PinDiffers,
                ],
                CloseCode::KeyChanged,
            ),
        ];
        for (facts, code) in steps {
            let mut m = start(them.hello(None));
            for f in facts {
                drain(&mut m);
                m.handle_fact(f.clone()).unwrap();
            }
            let actions = drain(&mut m);
            assert_eq!(actions, [Action::Close(code)], "{facts:?}");
            assert!(m.is_done());
        }
        // A checkpoint is compared; a split view closes.
        let mut h = them.hello(None);
        h.checkpoint = Some(Checkpoint::sign(
            &SigningKey::from_bytes(&[9; 32]),
            1,
            Hash32([1; 32]),
            Hash32([0; 32]),
        ));
        let mut m = start(h);
        drain(&mut m);
        m.handle_fact(Fact::Contact(them.key())).unwrap();
        assert!(matches!(
            drain(&mut m)[..],
            [Action::CompareCheckpoint { .. }]
        ));
        assert_eq!(m.handle_fact(Fact::PinOk), Err(Misuse::UnexpectedFact));
        m.handle_fact(Fact::SplitView).unwrap();
        assert_eq!(drain(&mut m), [Action::Close(CloseCode::SplitView)]);
    }

    /// Lookups of strangers with `burst` a second, 2 in flight, 4 remembered for 30 s.
    fn small_stranger_lookups(burst: u32) -> StrangerLookups {
        StrangerLookups::new(StrangerRules {
            rate: RateRule::new(burst, Duration::from_secs(1)),
            in_flight: 2,
            negative_ttl: Duration::from_secs(30),
            negative_entries: 4,
        })
    }

    fn stranger(n: usize) -> Identifier {
        Identifier::parse(&format!("s{n}@example.com")).unwrap()
    }

    #[test]
    // A test needs some Instant to start from; the machine itself never reads the clock.
    #[allow(clippy::disallowed_methods)]
    fn an_abandoned_stranger_lookup_frees_its_slot_and_is_not_remembered() {
        let t0 = Instant::now();
        let mut g = small_stranger_lookups(10);
        let id = stranger;
        // Two hellos dropped mid-lookup (their deadline passed) must not hold the slots.
        assert_eq!(g.admit(&id(0), t0), Admission::LookUp);
        assert_eq!(g.admit(&id(1), t0), Admission::LookUp);
        g.abandoned();
        g.abandoned();
        assert_eq!(g.admit(&id(2), t0), Admission::LookUp);
        // And a failed lookup says nothing of who is a stranger.
        assert_eq!(g.admit(&id(0), t0), Admission::LookUp);
    }

    #[test]
    #[allow(clippy::disallowed_methods)]
    fn stranger_lookups_are_bounded_and_cached() {
        let t0 = Instant::now();
        let mut g = small_stranger_lookups(3);
        let id = stranger;
        assert_eq!(g.admit(&id(0), t0), Admission::LookUp);
        assert_eq!(g.admit(&id(1), t0), Admission::LookUp);
        // Two in flight: a third waits its turn by being refused.
        assert_eq!(g.admit(&id(2), t0), Admission::OverLimit);
        g.finished(&id(0), false, t0);
        g.finished(&id(1), false, t0);
        // Remembered: refused without a lookup, for the TTL.
        assert_eq!(g.admit(&id(0), t0), Admission::KnownStranger);
        assert_eq!(g.admit(&id(2), t0), Admission::LookUp);
        g.finished(&id(2), false, t0);
        // The bucket (3) is empty now: new names are not looked up until it refills.
        assert_eq!(g.admit(&id(3), t0), Admission::OverLimit);
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(g.admit(&id(3), t1), Admission::LookUp);
        g.finished(&id(3), true, t1);
        // A flood of new names costs at most one lookup a second after the burst.
        let mut lookups = 0;
        for n in 10..1010 {
            let now = t1 + Duration::from_millis(n as u64);
            if g.admit(&id(n), now) == Admission::LookUp {
                lookups += 1;
                g.finished(&id(n), false, now);
            }
        }
        assert!(lookups <= 2, "{lookups} lookups in one second");
        // The negative cache stays bounded, and entries expire.
        assert!(g.refused.len() <= 4);
        let later = t1 + Duration::from_secs(60);
        assert_eq!(g.admit(&id(0), later), Admission::LookUp);
        assert_eq!(g.in_flight(), 1);
    }
}
