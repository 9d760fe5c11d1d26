//! `POST /v1/register/start` and `/v1/register/confirm`: proof of control, the
//! registration lock, and the device list a registration may carry.

use std::{sync::Arc, time::Instant};

use axum::{
    Extension, Json,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use dialtone_proto::{
    directory::{
        ErrorCode, MAX_CLOCK_SKEW_SECS, RegisterConfirm, RegisterStart, RegisterStarted,
        Registered, check_pin,
    },
    keys::{register_confirm_transcript, register_start_transcript},
    rules::{CODE_DIGITS, clean_code, codes_equal},
};
use tracing::{info, warn};

use crate::{
    AppState,
    store::{LockChange, Pending, StoreError, q},
};

use super::*;

pub(super) async fn register_start(
    State(st): State<Arc<AppState>>,
    Extension(addr): Extension<ClientAddr>,
    Body(req): Body<RegisterStart>,
) -> Result<Response, ApiError> {
    if req.device_cert.identity_key != req.identity_key || req.device_cert.verify().is_err() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidCertificate,
            "the device certificate is not signed by this identity key",
        ));
    }
    let now = now_secs();
    if req.timestamp.abs_diff(now) > MAX_CLOCK_SKEW_SECS {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::StaleTimestamp,
            "the request's timestamp is too far from the directory's clock; check your clock",
        ));
    }
    let transcript = register_start_transcript(
        &req.identifier,
        &req.identity_key,
        &req.device_cert,
        req.timestamp,
    );
    if req
        .identity_key
        .verify(&transcript, &req.signature)
        .is_err()
    {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::BadSignature,
            "the signature does not verify",
        ));
    }
    if req
        .device_cert
        .device_id
        .verify(&transcript, &req.device_signature)
        .is_err()
    {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::BadSignature,
            "the device signature does not verify: the device key must sign the registration",
        ));
    }
    // Per address and overall first, so that one address cannot cheaply use up the budget of
    // someone else's identifier.
    check(
        &st.limits.register_ip,
        ip_of(&addr),
        "registrations from your address",
    )?;
    {
        let mut g = st
            .limits
            .register_global
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        g.check(&(), Instant::now())
            .map_err(|w| ApiError::limited("registrations right now", w))?;
    }
    {
        let now = Instant::now();
        let mut by_id = st
            .limits
            .register_id
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if by_id.len() > 100_000 {
            by_id.prune(now);
        }
        by_id
            .check(&req.identifier, now)
            .map_err(|w| ApiError::limited("registrations for this identifier", w))?;
    }
    let Some(channel) = st.channels.for_identifier(&req.identifier).cloned() else {
        let what = match req.identifier.kind() {
            dialtone_proto::ids::IdentifierKind::Email => "email addresses",
            dialtone_proto::ids::IdentifierKind::Phone => "phone numbers",
        };
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::DeliveryFailed,
            format!(
                "this directory cannot send verification codes to {what}; its operator must configure a channel"
            ),
        ));
    };
    let code = new_code();
    let ttl = st.config.verification.code_ttl;
    let pending = Pending {
        identity_key: req.identity_key,
        device_cert: req.device_cert.clone(),
        code: code.clone(),
        expires_at: now + ttl.as_secs(),
        attempts: 0,
    };
    let id = req.identifier.clone();
    st.store
        .run(move |c| q::put_pending(c, &id, &pending))
        .await?;
    channel.send(&req.identifier, &code).await.map_err(|e| {
        warn!("verification channel failed: {e}");
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            ErrorCode::DeliveryFailed,
            "the verification code could not be sent; try again later",
        )
    })?;
    info!(channel = channel.name(), "verification code sent");
    Ok((
        StatusCode::ACCEPTED,
        Json(RegisterStarted {
            channel: channel.name().to_owned(),
            expires_in_secs: ttl.as_secs(),
        }),
    )
        .into_response())
}

fn new_code() -> String {
    let mut bytes = [0u8; 8];
    rand::fill(&mut bytes[..]);
    let n = u64::from_le_bytes(bytes) % 10u64.pow(CODE_DIGITS as u32);
    format!("{n:0width$}", width = CODE_DIGITS)
}

pub(super) async fn register_confirm(
    State(st): State<Arc<AppState>>,
    Extension(addr): Extension<ClientAddr>,
    Body(req): Body<RegisterConfirm>,
) -> Result<Json<Registered>, ApiError> {
    check(
        &st.limits.confirm_ip,
        ip_of(&addr),
        "attempts from your address",
    )?;
    let transcript = register_confirm_transcript(&req.identifier, &req.code, &req.identity_key);
    if req
        .identity_key
        .verify(&transcript, &req.signature)
        .is_err()
    {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::BadSignature,
            "the signature does not verify",
        ));
    }
    let id = req.identifier.clone();
    let key = req.identity_key;
    let max = st.config.verification.max_attempts;
    // Read and count the attempt in one step: concurrent guesses cannot all see the same
    // count (the store runs one closure at a time).
    let pending = st
        .store
        .run(move |c| {
            let p = q::pending(c, &id)?;
            if let Some(p) = &p
                && p.identity_key == key
                && p.attempts < max
            {
                q::bump_attempts(c, &id)?;
            }
            Ok(p)
        })
        .await?;
    let Some(p) = pending.filter(|p| p.identity_key == req.identity_key) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NoPendingVerification,
            "no verification is pending for this identifier and key; run `dialtone register` first",
        ));
    };
    if now_secs() > p.expires_at {
        let id = req.identifier.clone();
        st.store.run(move |c| q::delete_pending(c, &id)).await?;
        return Err(ApiError::new(
            StatusCode::GONE,
            ErrorCode::CodeExpired,
            "the code expired; register again for a new one",
        ));
    }
    if p.attempts >= max {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::TooManyAttempts,
            "too many wrong codes; register again",
        ));
    }
    let good = clean_code(&req.code).is_some_and(|c| codes_equal(&c, &p.code));
    if !good {
        let id = req.identifier.clone();
        let left = max.saturating_sub(p.attempts + 1);
        if left == 0 {
            st.store.run(move |c| q::delete_pending(c, &id)).await?;
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::TooManyAttempts,
                "wrong code, and too many wrong codes: register again for a new code",
            ));
        }
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::WrongCode,
            format!(
                "wrong code; {left} attempt{} left",
                if left == 1 { "" } else { "s" }
            ),
        ));
    }
    let pin_given = check_registration_lock(&st, &req).await?;
    let lock = check_registration_list(&req, &p.device_cert, pin_given)?;
    let lock = match lock {
        LockChange::Set(pin) => LockChange::Set(
            tokio::task::spawn_blocking(move || crate::reglock::hash_pin(&pin))
                .await
                .map_err(|_| ApiError::from(StoreError::Join))?,
        ),
        other => other,
    };
    let (id, key, cert, list) = (
        req.identifier.clone(),
        req.identity_key,
        p.device_cert.clone(),
        req.device_list.clone(),
    );
    let now = now_secs();
    let (replaced, removed) = st
        .store
        .run(move |c| {
            // A re-registration with the same key, and the list it published (if any).
            let same_key = q::account(c, &id)?.is_some_and(|a| a.identity_key == key);
            let published = if same_key {
                q::device_list(c, &id)?
            } else {
                None
            };
            if let Some(list) = &list {
                // Devices other than the new one stay only if they are registered under this
                // key already (a re-registration with the same key keeps its other devices).
                let registered = if same_key {
                    q::devices(c, &id)?
                } else {
                    Vec::new()
                };
                for d in &list.devices {
                    if d.device_id != cert.device_id
                        && !registered.iter().any(|r| r.device_id == d.device_id)
                    {
                        return Err(StoreError::Invalid(format!(
                            "the device list names {:?}, which is not registered under this key",
                            d.name
                        )));
                    }
                }
                if let Some(old) = &published
                    && old.version >= list.version
                {
                    return Err(StoreError::Invalid(
                        "the device list is older than the published one".into(),
                    ));
                }
                // How a key was bound stays with it: without a PIN now, only a key that was
                // bound with one may say so.
                if list.unlocked_with_pin
                    && !pin_given
                    && !published.as_ref().is_some_and(|l| l.unlocked_with_pin)
                {
                    return Err(StoreError::Invalid(
                        "the device list says it was unlocked with a PIN, but no lock was opened"
                            .into(),
                    ));
                }
            }
            // A lock asked for without a PIN: only the same key keeping the lock it has.
            if matches!(lock, LockChange::Keep)
                && !pin_given
                && !(same_key && q::lock(c, &id)?.and_then(|l| l.hash).is_some())
            {
                return Err(StoreError::Invalid(
                    "the device list turns on a registration lock but gives no PIN".into(),
                ));
            }
            q::bind(c, &id, &key, &cert, list.as_ref(), lock, now)
        })
        .await
        .map_err(|e| match e {
            StoreError::Invalid(m) => ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadDeviceList,
                format!("{m}; run `dialtone register` again"),
            ),
            e => e.into(),
        })?;
    info!(replaced, "identifier bound");
    st.kt.notify();
    // A new key removes every old device; a re-registration with the same key and a list
    // removes the devices the list leaves out.
    if replaced || !removed.is_empty() {
        st.sessions
            .key_replaced(&st, &req.identifier, &removed)
            .await;
    }
    Ok(Json(Registered {
        identifier: req.identifier,
        identity_key: req.identity_key,
        device_id: p.device_cert.device_id,
        replaced_key: replaced,
    }))
}

/// The registration lock at a confirmation: `Ok(true)` when the identifier is bound to
/// another key whose lock is in force and the right PIN was given, `Ok(false)` when no lock
/// applies, an error when the PIN is missing or wrong.
async fn check_registration_lock(st: &AppState, req: &RegisterConfirm) -> Result<bool, ApiError> {
    // A device online now keeps the lock in force, however long its session has been open.
    // Asked before `last_seen` is read: a session writes it before it leaves the registry, so
    // an account found offline here is read with its last session's end.
    let online = st.sessions.is_online(&req.identifier);
    let id = req.identifier.clone();
    let row = st
        .store
        .run(move |c| Ok(q::account(c, &id)?.zip(q::lock(c, &id)?)))
        .await?;
    let Some((account, lock)) = row else {
        return Ok(false);
    };
    let lapse = st.config.verification.lock_lapse.as_secs();
    let Some(hash) = lock.hash else {
        return Ok(false);
    };
    if account.identity_key == req.identity_key
        || (!online && now_secs() > lock.last_seen.saturating_add(lapse))
    {
        // The key holder itself, or a lock that lapsed (no device online for `lock_lapse`).
        return Ok(false);
    }
    let days = lapse.div_ceil(86_400);
    let max = st.config.verification.max_pin_attempts;
    let too_many = || {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::TooManyAttempts,
            format!(
                "too many wrong registration-lock PINs: {} stays bound to its key until the lock lapses ({days} days after its owner's devices were last online)",
                req.identifier
            ),
        )
    };
    if lock.failures >= max {
        return Err(too_many());
    }
    let Some(pin) = req.pin.clone() else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::RegistrationLocked,
            format!(
                "{} has a registration lock: give its PIN with `dialtone register --pin-file FILE` (or DIALTONE_PIN); without the PIN the lock lapses {days} days after its owner's devices were last online",
                req.identifier
            ),
        ));
    };
    // The attempt is counted as wrong before the PIN is checked, in one statement: of any
    // number of concurrent guesses, at most the attempts left are ever checked.
    let id = req.identifier.clone();
    let Some(used) = st
        .store
        .run(move |c| q::reserve_pin_attempt(c, &id, max))
        .await?
    else {
        return Err(too_many());
    };
    let right = tokio::task::spawn_blocking(move || crate::reglock::verify_pin(&hash, &pin))
        .await
        .map_err(|_| ApiError::from(StoreError::Join))?;
    if !right {
        let left = max.saturating_sub(used);
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::WrongPin,
            format!(
                "wrong registration-lock PIN; {left} attempt{} left",
                if left == 1 { "" } else { "s" }
            ),
        ));
    }
    // The right PIN: the count starts again.
    let id = req.identifier.clone();
    st.store.run(move |c| q::pin_right(c, &id)).await?;
    Ok(true)
}

/// Checks the device list of a confirmation (if any) and says what happens to the lock.
fn check_registration_list(
    req: &RegisterConfirm,
    cert: &dialtone_proto::DeviceCertificate,
    pin_given: bool,
) -> Result<LockChange, ApiError> {
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::BadDeviceList, m);
    let Some(list) = &req.device_list else {
        return Ok(if pin_given {
            LockChange::Keep
        } else {
            LockChange::Clear
        });
    };
    list.verify()
        .map_err(|e| bad(format!("the device list is invalid: {e}")))?;
    if list.identifier != req.identifier || list.identity_key != req.identity_key {
        return Err(bad(
            "the device list is for another identifier or key".into()
        ));
    }
    if !list.contains(&cert.device_id) {
        return Err(bad(
            "the device list does not name the registering device".into()
        ));
    }
    // Without a PIN given now, the list may still say it was unlocked with one if it is a
    // re-registration of a key that was (checked with the store, below).
    if pin_given && !list.unlocked_with_pin {
        return Err(bad(
            "the device list must say it was unlocked with the PIN".into()
        ));
    }
    match (list.registration_lock, &req.pin) {
        (false, _) => Ok(LockChange::Clear),
        // The PIN opened the old lock and stays the lock of the new key.
        (true, Some(_)) if pin_given => Ok(LockChange::Keep),
        (true, Some(pin)) => {
            check_pin(pin).map_err(bad)?;
            Ok(LockChange::Set(pin.clone()))
        }
        // Only a re-registration of the same key keeps its lock without the PIN (checked
        // with the store, below).
        (true, None) => Ok(LockChange::Keep),
    }
}
