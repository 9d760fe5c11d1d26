//! Routes for sessions: the session challenge, and taking a device-link offer a session
//! holds.

use std::sync::Arc;

use axum::{Extension, Json, extract::State, http::StatusCode};
use dialtone_proto::directory::{
    Challenge, ChallengeRequest, ErrorCode, LinkOfferInfo, LinkOfferRequest, is_link_offer,
};

use crate::{AppState, store::q};

use super::*;

pub(super) async fn challenge(
    State(st): State<Arc<AppState>>,
    Extension(addr): Extension<ClientAddr>,
    Body(req): Body<ChallengeRequest>,
) -> Result<Json<Challenge>, ApiError> {
    limit_ip(&st, &addr)?;
    let device = req.device_id;
    if st
        .store
        .run(move |c| q::device(c, &device))
        .await?
        .is_none()
    {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::UnknownDevice,
            "this device is not registered here; run `dialtone register` and `dialtone verify`",
        ));
    }
    let Some(challenge) = st
        .sessions
        .new_challenge(req.device_id, st.config.session.challenge_ttl)
    else {
        return Err(ApiError::limited(
            "session challenges outstanding",
            st.config.session.challenge_ttl,
        ));
    };
    Ok(Json(Challenge {
        challenge: hex::encode(challenge),
        expires_in_secs: st.config.session.challenge_ttl.as_secs(),
    }))
}

/// `POST /v1/link`: the device that shows a device-link code, once, to whoever shows the
/// code's rendezvous token.
pub(super) async fn link_offer(
    State(st): State<Arc<AppState>>,
    Extension(addr): Extension<ClientAddr>,
    Body(req): Body<LinkOfferRequest>,
) -> Result<Json<LinkOfferInfo>, ApiError> {
    // A wrong guess costs its sender only: the confirmation limit (a few per minute per
    // address) applies, not the lookup one.
    check(
        &st.limits.confirm_ip,
        ip_of(&addr),
        "device-link attempts from your address",
    )?;
    let offer = req.offer.to_ascii_uppercase();
    if !is_link_offer(&offer) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest,
            "not a device-link code: the code has 16 letters and digits, like ABCD-EFGH-JKMN-PQRS",
        ));
    }
    // An unknown offer and a wrong token get the same answer, and the offer stays.
    st.sessions
        .take_link_offer(&offer, &req.token)
        .map(Json)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                ErrorCode::NotFound,
                "no device shows this code (check that it is typed right; it may also have expired, been used, or its device gone offline): run `dialtone device link` on your other device for a new code",
            )
        })
}
