//! HTTP routes: registration, session challenges, public lookups, WebFinger, info.
//! Every error is a JSON [`ErrorBody`] with a 4xx status (5xx only for our own faults).

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use axum::{
    Extension, Json, Router,
    extract::{FromRequest, Path, Query, Request, State, rejection::JsonRejection},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use dialtone_proto::{
    Identifier,
    directory::{
        Challenge, ChallengeRequest, DirectoryInfo, ErrorBody, ErrorCode, LinkOfferInfo,
        LinkOfferRequest, MAX_BODY_LEN, MAX_CLOCK_SKEW_SECS, PublicRecord, RegisterConfirm,
        RegisterStart, RegisterStarted, Registered, check_pin, is_link_offer,
    },
    keys::{register_confirm_transcript, register_start_transcript},
    rules::{CODE_DIGITS, clean_code, codes_equal},
    transparency::{Checkpoint, KtAudit, KtHistory, KtKeys, KtLookup},
};
use serde::Deserialize;
use tracing::{info, warn};

use crate::{
    AppState,
    store::{LockChange, Pending, StoreError, q},
};

/// The client's address, set per connection by the accept loop.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientAddr(pub(crate) SocketAddr);

/// An error answer.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    body: ErrorBody,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status,
            body: ErrorBody::new(code, message),
        }
    }

    pub(crate) fn limited(what: &str, wait: Duration) -> Self {
        let secs = wait.as_secs().max(1);
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RateLimited,
            format!("too many {what}; try again in {secs} s"),
        );
        e.body.retry_after_secs = Some(secs);
        e
    }

    pub(crate) fn body(&self) -> &ErrorBody {
        &self.body
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        warn!("store error: {e}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            "the directory failed; try again later",
        )
    }
}

impl From<crate::kt::KtError> for ApiError {
    fn from(e: crate::kt::KtError) -> Self {
        use crate::kt::KtError;
        match e {
            KtError::NotFound(id) => not_registered(&id),
            KtError::NotPublished(_) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::NotPublished,
                e.to_string(),
            ),
            KtError::BadRange(m) => Self::new(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, m),
            other => {
                warn!("transparency error: {other}");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ErrorCode::Internal,
                    "the directory failed; try again later",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let retry = self.body.retry_after_secs;
        let mut resp = (self.status, Json(self.body)).into_response();
        if let Some(secs) = retry
            && let Ok(v) = HeaderValue::from_str(&secs.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp
    }
}

/// JSON body extractor whose rejections are JSON errors.
#[derive(Debug)]
pub(crate) struct Body<T>(pub(crate) T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Self(v)),
            Err(e) => Err(json_rejection(e)),
        }
    }
}

fn json_rejection(e: JsonRejection) -> ApiError {
    match e {
        JsonRejection::BytesRejection(b) if b.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::PayloadTooLarge,
                format!("request body is larger than {MAX_BODY_LEN} bytes"),
            )
        }
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadJson,
            "send the body as JSON with Content-Type: application/json",
        ),
        JsonRejection::JsonDataError(e) => ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest,
            e.body_text(),
        ),
        JsonRejection::JsonSyntaxError(e) => {
            ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::BadJson, e.body_text())
        }
        other => ApiError::new(other.status(), ErrorCode::BadRequest, other.body_text()),
    }
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The routes.
pub(crate) fn router(state: Arc<AppState>) -> Router {
    #[cfg(feature = "malicious")]
    let lying = state.config.lie.is_some();
    let r = Router::new()
        .route("/v1/register/start", post(register_start))
        .route("/v1/register/confirm", post(register_confirm))
        .route("/v1/session/challenge", post(challenge))
        .route("/v1/session", get(crate::sessions::upgrade))
        .route("/v1/lookup/{identifier}", get(lookup))
        .route("/v1/link", post(link_offer))
        .route("/v1/kt/keys", get(kt_keys))
        .route("/v1/kt/checkpoint", get(kt_checkpoint))
        .route("/v1/kt/lookup/{identifier}", get(kt_lookup))
        .route("/v1/kt/history/{identifier}", get(kt_history))
        .route("/v1/kt/audit", get(kt_audit));
    #[cfg(feature = "malicious")]
    let r = if lying {
        r.route("/v1/malicious/lie", post(set_lie))
    } else {
        r
    };
    r.route("/.well-known/webfinger", get(webfinger))
        .route("/v1/info", get(info_route))
        .route(
            "/v1/health",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                ErrorCode::NotFound,
                "no such endpoint; see docs/directory-api.md",
            )
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                ErrorCode::BadRequest,
                "method not allowed on this endpoint",
            )
        })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_LEN))
        .layer(axum::middleware::from_fn(catch_panic))
        .with_state(state)
}

/// Turns a panic in a handler into a JSON 500 `internal` instead of a dropped connection.
/// It should never trigger: client input is answered with errors, never panics.
async fn catch_panic(req: Request, next: axum::middleware::Next) -> Response {
    use futures_util::FutureExt;
    match std::panic::AssertUnwindSafe(next.run(req))
        .catch_unwind()
        .await
    {
        Ok(resp) => resp,
        Err(_) => {
            tracing::error!("a request handler panicked");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Internal,
                "the directory failed; try again later",
            )
            .into_response()
        }
    }
}

/// The key a client is rate-limited under: its IPv4 address, or the /64 of its IPv6 address
/// (one host usually holds a whole /64, so per-address limits would be no limit at all). An
/// IPv4-mapped IPv6 address counts as the IPv4 address.
fn ip_of(addr: &ClientAddr) -> IpAddr {
    rate_key(addr.0.ip())
}

fn rate_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

fn check(
    limiter: &std::sync::Mutex<dialtone_proto::rules::RateLimiter<IpAddr>>,
    ip: IpAddr,
    what: &str,
) -> Result<(), ApiError> {
    let mut l = limiter
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let now = Instant::now();
    if l.len() > 100_000 {
        l.prune(now);
    }
    l.check(&ip, now).map_err(|w| ApiError::limited(what, w))
}

async fn register_start(
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

async fn register_confirm(
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
                    return Ok(Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        ErrorCode::UnlockMismatch,
                        "the device list says it was unlocked with a PIN, but no lock was opened; run `dialtone register` again",
                    )));
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
            q::bind(c, &id, &key, &cert, list.as_ref(), lock, now).map(Ok)
        })
        .await
        .map_err(|e| match e {
            StoreError::Invalid(m) => ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadDeviceList,
                format!("{m}; run `dialtone register` again"),
            ),
            e => e.into(),
        })??;
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
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::UnlockMismatch,
            "the device list must say it was unlocked with the PIN",
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

async fn challenge(
    State(st): State<Arc<AppState>>,
    Extension(addr): Extension<ClientAddr>,
    Body(req): Body<ChallengeRequest>,
) -> Result<Json<Challenge>, ApiError> {
    check(
        &st.limits.requests_ip,
        ip_of(&addr),
        "requests from your address",
    )?;
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

fn parse_identifier(raw: &str) -> Result<Identifier, ApiError> {
    Identifier::parse(raw).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidIdentifier,
            e.to_string(),
        )
    })
}

fn not_registered(id: &Identifier) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::NotFound,
        format!("no one is registered as {id}"),
    )
}

async fn lookup(
    State(st): State<Arc<AppState>>,
    Extension(addr): Extension<ClientAddr>,
    Path(raw): Path<String>,
) -> Result<Json<PublicRecord>, ApiError> {
    check(
        &st.limits.requests_ip,
        ip_of(&addr),
        "requests from your address",
    )?;
    let id = parse_identifier(&raw)?;
    let id2 = id.clone();
    let found = st
        .store
        .run(move |c| {
            Ok(q::account(c, &id2)?.map(|a| (a, q::devices(c, &id2), q::device_list(c, &id2))))
        })
        .await?;
    let Some((account, devices, list)) = found else {
        return Err(not_registered(&id));
    };
    Ok(Json(PublicRecord {
        identifier: account.identifier,
        identity_key: account.identity_key,
        devices: devices?,
        device_list: list?,
    }))
}

/// `POST /v1/link`: the device that shows a device-link code, once, to whoever shows the
/// code's rendezvous token.
async fn link_offer(
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

async fn kt_keys(State(st): State<Arc<AppState>>) -> Json<KtKeys> {
    Json(st.kt.keys().clone())
}

async fn kt_checkpoint(
    State(st): State<Arc<AppState>>,
    Extension(addr): Extension<ClientAddr>,
) -> Result<Json<Checkpoint>, ApiError> {
    check(
        &st.limits.requests_ip,
        ip_of(&addr),
        "requests from your address",
    )?;
    Ok(Json(st.kt.checkpoint(None).await?))
}

async fn kt_lookup(
    State(st): State<Arc<AppState>>,
    Extension(addr): Extension<ClientAddr>,
    Path(raw): Path<String>,
) -> Result<Json<KtLookup>, ApiError> {
    check(
        &st.limits.requests_ip,
        ip_of(&addr),
        "requests from your address",
    )?;
    let id = parse_identifier(&raw)?;
    Ok(Json(st.kt.lookup(&id, None).await?))
}

async fn kt_history(
    State(st): State<Arc<AppState>>,
    Extension(addr): Extension<ClientAddr>,
    Path(raw): Path<String>,
) -> Result<Json<KtHistory>, ApiError> {
    check(
        &st.limits.requests_ip,
        ip_of(&addr),
        "requests from your address",
    )?;
    let id = parse_identifier(&raw)?;
    Ok(Json(st.kt.history(&id, None).await?))
}

/// Changes the lie (malicious test build, and only when started lying).
#[cfg(feature = "malicious")]
async fn set_lie(
    State(st): State<Arc<AppState>>,
    Body(lie): Body<crate::malicious::Lie>,
) -> Result<Json<serde_json::Value>, ApiError> {
    crate::malicious::apply(&st.kt, lie).await?;
    Ok(Json(serde_json::json!({"status": "lying"})))
}

#[derive(Deserialize)]
struct AuditQuery {
    from: u64,
    to: u64,
}

async fn kt_audit(
    State(st): State<Arc<AppState>>,
    Extension(addr): Extension<ClientAddr>,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<KtAudit>, ApiError> {
    check(
        &st.limits.requests_ip,
        ip_of(&addr),
        "requests from your address",
    )?;
    let Ok(Query(q)) = query else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest,
            "give the epochs as ?from=A&to=B (non-negative integers)",
        ));
    };
    Ok(Json(st.kt.audit(q.from, q.to, None).await?))
}

#[derive(Deserialize)]
struct WebfingerQuery {
    resource: Option<String>,
}

async fn webfinger(
    State(st): State<Arc<AppState>>,
    Extension(addr): Extension<ClientAddr>,
    query: Result<Query<WebfingerQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    check(
        &st.limits.requests_ip,
        ip_of(&addr),
        "requests from your address",
    )?;
    let resource = query.ok().and_then(|q| q.0.resource).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest,
            "missing ?resource=acct:user@host (RFC 7033)",
        )
    })?;
    let lower = resource.to_ascii_lowercase();
    if !(lower.starts_with("acct:") || lower.starts_with("mailto:") || lower.starts_with("tel:")) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidIdentifier,
            "resource must be an acct:, mailto: or tel: URI",
        ));
    }
    let id = parse_identifier(&resource)?;
    let id2 = id.clone();
    let Some(account) = st.store.run(move |c| q::account(c, &id2)).await? else {
        return Err(not_registered(&id));
    };
    let subject = match id.kind() {
        dialtone_proto::ids::IdentifierKind::Email => format!("acct:{id}"),
        dialtone_proto::ids::IdentifierKind::Phone => format!("tel:{id}"),
    };
    let jrd = serde_json::json!({
        "subject": subject,
        "properties": {
            "https://dialtone.im/ns/identity-key": account.identity_key.to_string(),
            "https://dialtone.im/ns/fingerprint": account.identity_key.fingerprint().to_string(),
        },
        "links": [{
            "rel": "https://dialtone.im/rel/directory",
            "type": "application/json",
            "href": format!("{}/v1/lookup/{}", st.public_url, id),
        }],
    });
    let mut resp = Json(jrd).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/jrd+json"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    Ok(resp)
}

async fn info_route(
    State(st): State<Arc<AppState>>,
    headers: axum::http::HeaderMap,
) -> Json<DirectoryInfo> {
    let relay = st.relay.as_ref();
    // The relay lives on the directory's host: unless configured otherwise, its URL uses the
    // host this agent reached the directory at (so an IPv6-only agent gets an IPv6 URL).
    let relay_url = relay.and_then(|r| {
        if let Some(u) = &r.public_url {
            return Some(u.clone());
        }
        let host = headers.get(header::HOST)?.to_str().ok()?;
        let host = match host.rsplit_once(':') {
            Some((h, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => host,
        };
        if host.is_empty()
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"[]:.-".contains(&b))
        {
            return None;
        }
        let scheme = if r.tls { "https" } else { "http" };
        Some(format!("{scheme}://{host}:{}", r.port))
    });
    Json(DirectoryInfo {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        protocol: 1,
        relay_url,
        heartbeat_secs: st.config.session.heartbeat.as_secs().max(1),
        relay_quic_port: relay.and_then(|r| r.quic_port),
        echo_ports: relay.map(|r| r.echo_ports.clone()).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_are_limited_per_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(rate_key(a), rate_key(b));
        assert_ne!(rate_key(a), rate_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(rate_key(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
        let v4: IpAddr = "198.51.100.1".parse().unwrap();
        assert_eq!(rate_key(v4), v4);
    }
}
