//! Device-link offers: a rendezvous held for an open session, taken once by whoever shows its
//! token.

use std::time::{Duration, Instant};

use dialtone_proto::directory::{ErrorCode, LinkOfferInfo, LinkToken};

use crate::http::ApiError;

use super::{Sessions, ops::err};

/// Device-link offers open at once, at most (one per session; beyond it, refused).
const MAX_LINK_OFFERS: usize = 10_000;
/// How long a device-link offer stays open.
const LINK_OFFER_TTL: Duration = Duration::from_secs(600);

/// A device-link rendezvous the directory holds.
#[derive(Debug)]
pub(super) struct LinkEntry {
    info: LinkOfferInfo,
    /// Who may take it ([`LinkToken::matches`]).
    token: LinkToken,
    /// The offering session: the offer ends with it.
    session: u64,
    expires: Instant,
}

impl Sessions {
    /// Takes a device-link offer for someone who shows its token (each is given out once),
    /// if its session is still open. An unknown offer and a wrong token are alike `None`, and
    /// a wrong token leaves the offer in place: guessing offer ids uses up nobody's.
    pub(crate) fn take_link_offer(&self, offer: &str, token: &LinkToken) -> Option<LinkOfferInfo> {
        let entry = {
            let mut links = self
                .links
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if !links.get(offer)?.token.matches(token) {
                return None;
            }
            links.remove(offer)?
        };
        let live = self
            .lock()
            .get(&entry.info.identifier)
            .is_some_and(|l| l.iter().any(|d| d.id == entry.session));
        (live && Instant::now() < entry.expires).then_some(entry.info)
    }

    pub(super) fn offer_link(
        &self,
        offer: String,
        token: LinkToken,
        info: LinkOfferInfo,
        session: u64,
    ) -> Result<(), ApiError> {
        let mut links = self
            .links
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        links.retain(|_, e| e.expires > now && e.session != session);
        if links.len() >= MAX_LINK_OFFERS || links.contains_key(&offer) {
            return Err(err(
                ErrorCode::Conflict,
                "this link offer cannot be taken now; try again with another code",
            ));
        }
        links.insert(
            offer,
            LinkEntry {
                info,
                token,
                session,
                expires: now + LINK_OFFER_TTL,
            },
        );
        Ok(())
    }
}
