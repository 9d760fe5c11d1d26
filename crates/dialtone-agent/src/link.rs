//! Device linking: a new device joins a person's account through one of their existing devices.
//!
//! 1. The existing device shows a code (`dialtone device link`): it asks the directory to hold
//!    a rendezvous for the code's first four characters (its device id and addresses), with
//!    the code's rendezvous token (a hash of the whole code), and waits.
//! 2. The new device (`dialtone device link CODE --directory URL`) takes the rendezvous with
//!    the token (once; someone guessing offer ids has no token, so takes nobody's),
//!    connects **directly** to the existing device over iroh (QUIC, TLS 1.3 authenticated by
//!    both device keys) and proves it knows the rest of the code; the existing device proves
//!    it too. The directory never sees the secret part, only the token hash of it, so it
//!    cannot stand in for either side without guessing the secret.
//! 3. The existing device's owner signs a certificate for the new device and a new device list
//!    with the identity key, publishes the list through the directory (it goes into the
//!    transparency log), and hands the new device its certificate, the list, the contacts'
//!    pinned keys and the log's keys over the same direct connection.
//!
//! The new device holds no identity secret key: it can message and be messaged, but linking and
//! revoking devices stay with the device that has the identity key.

use std::time::{Duration, Instant};

use dialtone_net::{Connection, RecvStream, SendStream, read_frame, write_frame};
use dialtone_proto::{
    DeviceCertificate, DeviceId, Identifier,
    devices::{DeviceList, LinkBundle, LinkCode, LinkedPin},
    directory::{LinkOfferInfo, Reply, Request},
    transparency::Hash32,
    wire::{Frame, MAX_LINK_PINS, MAX_REASON_LEN},
};
use serde::Serialize;
use tokio::sync::oneshot;
use tracing::{debug, info};

use crate::{AgentHandle, Inner, dirclient::DirectoryClient, home::Home, session::SessionError};

/// How long a shown code stays valid.
pub const OFFER_TTL: Duration = Duration::from_secs(600);
/// Wrong codes tried against one offer before it is withdrawn.
const MAX_FAILURES: u32 = 3;
/// How long each side waits for the other's next step once connected.
const STEP_TIMEOUT: Duration = Duration::from_secs(120);

/// Why a link failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// No code is shown, it expired, or it was used.
    #[error("{0}")]
    NoOffer(String),
    /// The other device did not prove the code, or broke the protocol.
    #[error("{0}")]
    Refused(String),
    /// Nobody came, or a step took too long.
    #[error("{0}")]
    Timeout(String),
    /// The directory refused or could not be reached.
    #[error("the directory: {0}")]
    Session(#[from] SessionError),
    /// Talking to the directory over HTTP failed.
    #[error(transparent)]
    Directory(#[from] crate::DirectoryError),
    /// The home directory could not be written.
    #[error(transparent)]
    Home(#[from] crate::home::HomeError),
    /// The connection to the other device failed.
    #[error("the connection to the other device failed: {0}")]
    Network(String),
}

/// The offer shown by the existing device.
#[derive(Debug, Clone, Serialize)]
pub struct LinkOfferView {
    /// The code to type on the new device: `ABCD-EFGH-JKMN-PQRS`.
    pub code: String,
    /// The same, with the directory's URL, for a QR code: `dialtone-link:CODE?directory=URL`.
    pub ticket: String,
    /// Seconds until the code expires.
    pub expires_in_secs: u64,
}

/// A new device that proved the code and waits to be certified.
#[derive(Debug, Clone, Serialize)]
pub struct JoinRequest {
    /// Its device key.
    pub device: DeviceId,
    /// The name it asked for.
    pub name: String,
}

struct Offer {
    code: LinkCode,
    expires: Instant,
    failures: u32,
    joined: oneshot::Sender<Joined>,
}

struct Joined {
    request: JoinRequest,
    conn: Connection,
    send: SendStream,
    recv: RecvStream,
}

/// The agent's link state: at most one offer, then at most one joined device.
#[derive(Default)]
pub(crate) struct Slot {
    offer: Option<Offer>,
    waiting: Option<oneshot::Receiver<Joined>>,
    joined: Option<Joined>,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field(
                "offer",
                &self.offer.as_ref().map(|o| o.code.offer().to_owned()),
            )
            .field("joined", &self.joined.as_ref().map(|j| &j.request))
            .finish()
    }
}

/// Parses what the new device was given: a code, or a ticket
/// `dialtone-link:CODE?directory=URL` (from the QR code).
pub fn parse_ticket(input: &str) -> Result<(LinkCode, Option<String>), String> {
    let input = input.trim();
    if let Some(rest) = input.strip_prefix("dialtone-link:") {
        let (code, query) = rest.split_once('?').unwrap_or((rest, ""));
        let directory = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("directory="))
            .map(str::to_owned);
        return Ok((LinkCode::parse(code)?, directory));
    }
    Ok((LinkCode::parse(input)?, None))
}

fn refused(reason: impl Into<String>) -> Frame {
    let mut reason: String = reason.into();
    if reason.len() > MAX_REASON_LEN {
        let mut cut = MAX_REASON_LEN;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
    }
    Frame::LinkRefused { reason }
}

async fn step<T>(
    what: &str,
    f: impl Future<Output = Result<T, dialtone_net::FrameError>>,
) -> Result<T, LinkError> {
    match tokio::time::timeout(STEP_TIMEOUT, f).await {
        Err(_) => Err(LinkError::Timeout(format!(
            "the other device did not {what} within {} s",
            STEP_TIMEOUT.as_secs()
        ))),
        Ok(Err(e)) => Err(LinkError::Network(e.to_string())),
        Ok(Ok(v)) => Ok(v),
    }
}

/// A new device's first frame arrived (instead of a hello): check the code and hand the
/// device to whoever waits in [`AgentHandle::link_wait`].
pub(crate) async fn incoming(
    inner: &Inner,
    conn: Connection,
    (mut send, recv): (SendStream, RecvStream),
    remote: DeviceId,
    offer: String,
    name: String,
    proof: Hash32,
) {
    let me = inner.cert.device_id;
    let outcome = {
        let mut slot = inner.link.lock().await;
        match slot.offer.as_mut() {
            None => Err(
                "no device-link code is shown on that device now; run `dialtone device link` there first",
            ),
            Some(o) if o.expires < Instant::now() => {
                slot.offer = None;
                Err("the device-link code expired; show a new one with `dialtone device link`")
            }
            Some(o) if o.code.offer() != offer || !o.code.check("new", &me, &remote, &proof.0) => {
                o.failures += 1;
                if o.failures >= MAX_FAILURES {
                    slot.offer = None;
                }
                Err("wrong device-link code")
            }
            Some(_) => Ok(slot.offer.take()),
        }
    };
    let o = match outcome {
        Ok(Some(o)) => o,
        Ok(None) => return,
        Err(reason) => {
            debug!(device = %remote.short(), "device link refused: {reason}");
            let _ = write_frame(&mut send, &refused(reason)).await;
            let _ = send.finish();
            let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
            return;
        }
    };
    let accepted = Frame::LinkAccepted {
        proof: Hash32(o.code.proof("existing", &me, &remote)),
    };
    if write_frame(&mut send, &accepted).await.is_err() {
        return;
    }
    info!(device = %remote.short(), "a new device proved the link code");
    let _ = o.joined.send(Joined {
        request: JoinRequest {
            device: remote,
            name,
        },
        conn,
        send,
        recv,
    });
}

impl AgentHandle {
    /// Shows a device-link code: the directory holds the rendezvous until a new device with
    /// the code takes it (once), [`OFFER_TTL`] passes, or this agent goes offline.
    pub async fn link_start(&self) -> Result<LinkOfferView, LinkError> {
        let inner = &self.inner;
        let mut tries = 0;
        let code = loop {
            let mut bytes = [0u8; 10];
            rand::fill(&mut bytes[..]);
            let code = LinkCode::from_random(bytes);
            match inner
                .session
                .request(Request::LinkOffer {
                    offer: code.offer().to_owned(),
                    token: code.rendezvous_token(),
                    endpoint: inner.endpoint_info(),
                })
                .await
            {
                Ok(_) => break code,
                // Another device holds this offer id: draw another.
                Err(SessionError::Refused(b))
                    if b.error == dialtone_proto::directory::ErrorCode::Conflict && tries < 3 =>
                {
                    tries += 1;
                }
                Err(e) => return Err(e.into()),
            }
        };
        let (tx, rx) = oneshot::channel();
        let mut slot = inner.link.lock().await;
        *slot = Slot {
            offer: Some(Offer {
                code: code.clone(),
                expires: Instant::now() + OFFER_TTL,
                failures: 0,
                joined: tx,
            }),
            waiting: Some(rx),
            joined: None,
        };
        Ok(LinkOfferView {
            code: code.display(),
            ticket: format!(
                "dialtone-link:{}?directory={}",
                code.display(),
                inner.dir.base()
            ),
            expires_in_secs: OFFER_TTL.as_secs(),
        })
    }

    /// Waits until a new device proves the shown code.
    pub async fn link_wait(&self, timeout: Duration) -> Result<JoinRequest, LinkError> {
        let rx = self.inner.link.lock().await.waiting.take().ok_or_else(|| {
            LinkError::NoOffer(
                "no device-link code is shown: start with `dialtone device link`".into(),
            )
        })?;
        let joined = match tokio::time::timeout(timeout, rx).await {
            Err(_) => {
                self.link_cancel().await;
                return Err(LinkError::Timeout(format!(
                    "no new device used the code within {} s",
                    timeout.as_secs()
                )));
            }
            Ok(Err(_)) => {
                return Err(LinkError::NoOffer(
                    "the code was withdrawn (wrong codes were tried, or it expired); show a new one".into(),
                ));
            }
            Ok(Ok(j)) => j,
        };
        let request = joined.request.clone();
        self.inner.link.lock().await.joined = Some(joined);
        Ok(request)
    }

    /// Withdraws the shown code, or turns away the device waiting to be certified.
    pub async fn link_cancel(&self) {
        let slot = std::mem::take(&mut *self.inner.link.lock().await);
        if let Some(mut j) = slot.joined {
            let _ = write_frame(
                &mut j.send,
                &refused("the link was cancelled on the other device"),
            )
            .await;
            let _ = j.send.finish();
        }
    }

    /// Completes a link: publishes `list` (naming the new device, certified by `cert`) through
    /// the directory, then hands the new device its certificate, the list, the contacts' pins
    /// and the log's keys over the direct connection, and waits for it to confirm.
    pub async fn link_finish(
        &self,
        cert: DeviceCertificate,
        list: DeviceList,
        pin: Option<String>,
    ) -> Result<(), LinkError> {
        let inner = &self.inner;
        let mut j =
            inner.link.lock().await.joined.take().ok_or_else(|| {
                LinkError::NoOffer("no new device is waiting to be linked".into())
            })?;
        if cert.device_id != j.request.device || !list.contains(&j.request.device) {
            let _ = write_frame(&mut j.send, &refused("the link was not completed")).await;
            return Err(LinkError::Refused(
                "the certificate or list does not name the device that is waiting".into(),
            ));
        }
        let published = inner
            .session
            .request(Request::PublishDevices {
                list: Box::new(list.clone()),
                certs: vec![cert.clone()],
                pin,
            })
            .await;
        if let Err(e) = published {
            let _ = write_frame(
                &mut j.send,
                &refused(format!("the directory refused the new device list: {e}")),
            )
            .await;
            let _ = j.send.finish();
            return Err(e.into());
        }
        let pins: Vec<LinkedPin> = inner
            .lock()
            .pins
            .iter()
            .map(|(id, p)| LinkedPin {
                identifier: id.clone(),
                identity_key: p.identity_key,
                verified: p.verified,
                proven: p.proven,
                registration_lock: p.registration_lock,
                devices: p.devices.clone(),
                list_version: p.list_version,
                not_a_contact: p.not_a_contact,
            })
            .collect();
        let kt = inner
            .home
            .kt_state()
            .ok()
            .flatten()
            .map(|st| (st.keys, st.checkpoint));
        let bundle = LinkBundle {
            identifier: inner.identifier.clone(),
            directory: inner.dir.base().to_owned(),
            cert,
            list,
            kt,
        };
        let sent = async {
            for chunk in pins.chunks(MAX_LINK_PINS) {
                write_frame(
                    &mut j.send,
                    &Frame::LinkPins {
                        pins: chunk.to_vec(),
                    },
                )
                .await?;
            }
            write_frame(&mut j.send, &Frame::LinkBundle(Box::new(bundle))).await?;
            read_frame(&mut j.recv).await
        };
        match step("confirm", sent).await? {
            Frame::LinkDone => {
                let _ = j.send.finish();
                info!(device = %j.request.device.short(), name = %j.request.name, "device linked");
                Ok(())
            }
            Frame::LinkRefused { reason } => Err(LinkError::Refused(format!(
                "the new device gave up: {reason} (the list naming it is published: revoke it with `dialtone device revoke {}` if it is not coming back)",
                j.request.name
            ))),
            _ => {
                dialtone_net::close(&j.conn, dialtone_proto::wire::CloseCode::Protocol);
                Err(LinkError::Refused(
                    "the new device broke the link protocol".into(),
                ))
            }
        }
    }

    /// This account's device list as the transparency log proves it now (`None` if the
    /// account published a bare key only, before device lists).
    pub async fn device_list(&self) -> Result<Option<DeviceList>, crate::SendError> {
        let inner = &self.inner;
        match crate::kt::prove_record(inner, &inner.identifier).await {
            Ok(p) if p.key == inner.identity_key => Ok(p.devices),
            Ok(_) => Err(crate::SendError::Invalid(
                "the transparency log binds another key to this account: see `dialtone watch` for the warning".into(),
            )),
            Err(f @ crate::kt::KtFailure::Unavailable(_)) => Err(
                crate::SendError::DirectoryUnavailable(format!(
                    "cannot prove this account's device list: {f}"
                )),
            ),
            Err(f) => Err(crate::SendError::Invalid(format!(
                "cannot prove this account's device list: {f}"
            ))),
        }
    }

    /// Publishes a new signed device list (revoke, registration lock).
    pub async fn publish_devices(
        &self,
        list: DeviceList,
        certs: Vec<DeviceCertificate>,
        pin: Option<String>,
    ) -> Result<(), SessionError> {
        match self
            .inner
            .session
            .request(Request::PublishDevices {
                list: Box::new(list),
                certs,
                pin,
            })
            .await?
        {
            Reply::Done => Ok(()),
            _ => Err(SessionError::Timeout),
        }
    }
}

/// What a newly linked device received.
#[derive(Debug, Clone)]
pub struct Linked {
    /// The account.
    pub identifier: Identifier,
    /// The new device's certificate.
    pub cert: DeviceCertificate,
    /// The published device list.
    pub list: DeviceList,
    /// How many contacts' pinned keys came along.
    pub pins: usize,
}

/// Joins an account as a new device: takes the rendezvous for `code` from `dir`, connects
/// directly to the device showing the code, proves the code, and stores what it hands over
/// in `home` (which must have no identity yet). `bind` are the local addresses to use.
pub async fn join(
    home: &Home,
    dir: &DirectoryClient,
    code: &LinkCode,
    name: &str,
    bind: Vec<std::net::SocketAddr>,
) -> Result<Linked, LinkError> {
    let seed = home.new_device_key()?;
    let me = DeviceId::from_signing_key(&ed25519_dalek::SigningKey::from_bytes(&seed));
    let LinkOfferInfo {
        identifier,
        device_id: existing,
        endpoint,
    } = dir.link_offer(code).await?;
    let relay = dir.info(Duration::from_secs(5)).await.ok().and_then(|i| {
        i.relay_url.map(|url| dialtone_net::RelaySettings {
            url,
            quic_port: i.relay_quic_port,
        })
    });
    let mut config = dialtone_net::EndpointConfig::new(*seed);
    config.bind = bind;
    config.relay = relay;
    config.extra_roots = dir.extra_roots();
    let ep = dialtone_net::bind(&config)
        .await
        .map_err(|e| LinkError::Network(e.to_string()))?;
    let result = join_on(
        &ep, home, dir, code, name, me, identifier, existing, &endpoint,
    )
    .await;
    ep.close().await;
    result
}

#[allow(clippy::too_many_arguments)]
async fn join_on(
    ep: &dialtone_net::Endpoint,
    home: &Home,
    dir: &DirectoryClient,
    code: &LinkCode,
    name: &str,
    me: DeviceId,
    identifier: Identifier,
    existing: DeviceId,
    endpoint: &dialtone_proto::directory::EndpointInfo,
) -> Result<Linked, LinkError> {
    let conn = dialtone_net::connect(ep, &existing, endpoint, Duration::from_secs(20))
        .await
        .map_err(|e| {
            LinkError::Network(format!(
                "cannot reach the device that shows the code ({e}); are both devices online?"
            ))
        })?;
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| LinkError::Network(e.to_string()))?;
    let request = Frame::LinkRequest {
        offer: code.offer().to_owned(),
        name: name.to_owned(),
        proof: Hash32(code.proof("new", &existing, &me)),
    };
    step("answer", write_frame(&mut send, &request)).await?;
    match step("answer", read_frame(&mut recv)).await? {
        Frame::LinkAccepted { proof } if code.check("existing", &existing, &me, &proof.0) => {}
        Frame::LinkAccepted { .. } => {
            return Err(LinkError::Refused(
                "the device at the rendezvous did not prove the code: it is not your device. Nothing was linked".into(),
            ));
        }
        Frame::LinkRefused { reason } => return Err(LinkError::Refused(reason)),
        _ => {
            return Err(LinkError::Refused(
                "the other device broke the link protocol".into(),
            ));
        }
    }
    let mut pins = Vec::new();
    let bundle = loop {
        match step("certify this device", read_frame(&mut recv)).await? {
            Frame::LinkPins { pins: p } if pins.len() < 100_000 => pins.extend(p),
            Frame::LinkBundle(b) => break *b,
            Frame::LinkRefused { reason } => return Err(LinkError::Refused(reason)),
            _ => {
                return Err(LinkError::Refused(
                    "the other device broke the link protocol".into(),
                ));
            }
        }
    };
    let fail =
        |m: &str| LinkError::Refused(format!("the other device sent {m}; nothing was stored"));
    if bundle.identifier != identifier || bundle.list.identifier != identifier {
        return Err(fail("a certificate for another account"));
    }
    if bundle.cert.verify().is_err()
        || bundle.cert.device_id != me
        || bundle.cert.identity_key != bundle.list.identity_key
    {
        return Err(fail("an invalid certificate"));
    }
    if bundle.list.verify().is_err()
        || !bundle.list.contains(&me)
        || !bundle.list.contains(&existing)
    {
        return Err(fail("an invalid device list"));
    }
    let directory = dir.base().to_owned();
    if !same_directory(&bundle.directory, &directory) {
        let _ = write_frame(
            &mut send,
            &refused(format!(
                "it came through the directory {directory}, but the account is at {}",
                bundle.directory
            )),
        )
        .await;
        let _ = send.finish();
        return Err(LinkError::Refused(format!(
            "the other device uses the directory {}, not {directory}, which this device used; nothing was stored: link again with --directory {}",
            bundle.directory, bundle.directory
        )));
    }
    if let Err(e) = home.store_linked(&bundle, &directory, &pins) {
        let _ = write_frame(
            &mut send,
            &refused("the new device could not store its keys"),
        )
        .await;
        return Err(e.into());
    }
    let _ = write_frame(&mut send, &Frame::LinkDone).await;
    let _ = send.finish();
    // Let the frame arrive before the endpoint closes.
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
    Ok(Linked {
        identifier,
        cert: bundle.cert,
        list: bundle.list,
        pins: pins.len(),
    })
}

/// Whether the directory URL the existing device named is the one the new device used: the
/// same but for a trailing slash and the case of scheme and host.
fn same_directory(named: &str, used: &str) -> bool {
    let base = |u: &str| u.trim().trim_end_matches('/').to_owned();
    base(named).eq_ignore_ascii_case(&base(used))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bundles_directory_must_be_the_one_used() {
        let used = "https://dir.example:4100";
        assert!(same_directory("https://dir.example:4100", used));
        assert!(same_directory("HTTPS://Dir.Example:4100/", used));
        assert!(!same_directory("https://evil.example:4100", used));
        assert!(!same_directory("https://dir.example:4101", used));
        assert!(!same_directory("not a url", used));
    }

    #[test]
    fn tickets_and_codes_parse() {
        let code = LinkCode::from_random([7; 10]);
        let t = format!(
            "dialtone-link:{}?directory=https://dir.example:4100",
            code.display()
        );
        let (c, d) = parse_ticket(&t).unwrap();
        assert_eq!(c, code);
        assert_eq!(d.as_deref(), Some("https://dir.example:4100"));
        let (c, d) = parse_ticket(&code.display().to_lowercase()).unwrap();
        assert_eq!(c, code);
        assert_eq!(d, None);
        assert!(parse_ticket("dialtone-link:nope").is_err());
        assert_eq!(
            refused("x".repeat(1000)),
            Frame::LinkRefused {
                reason: "x".repeat(MAX_REASON_LEN)
            }
        );
    }
}
