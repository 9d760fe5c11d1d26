//! The route table, and the routes that need no module of their own (info, health).

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{Request, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use dialtone_proto::directory::{DirectoryInfo, ErrorCode, MAX_BODY_LEN};

use crate::AppState;

#[cfg(feature = "malicious")]
use super::kt::set_lie;
use super::{
    kt::{kt_audit, kt_checkpoint, kt_history, kt_keys, kt_lookup},
    lookup::{lookup, webfinger},
    register::{register_confirm, register_start},
    session::{challenge, link_offer},
    *,
};

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
