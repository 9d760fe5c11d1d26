//! The transparency log's public routes (`/v1/kt/…`).

use std::sync::Arc;

use axum::{
    Extension, Json,
    extract::{Path, Query, State},
    http::StatusCode,
};
use dialtone_proto::{
    directory::ErrorCode,
    transparency::{Checkpoint, KtAudit, KtHistory, KtKeys, KtLookup},
};
use serde::Deserialize;

use crate::AppState;

use super::*;

pub(super) async fn kt_keys(State(st): State<Arc<AppState>>) -> Json<KtKeys> {
    Json(st.kt.keys().clone())
}

pub(super) async fn kt_checkpoint(
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

pub(super) async fn kt_lookup(
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

pub(super) async fn kt_history(
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
pub(super) async fn set_lie(
    State(st): State<Arc<AppState>>,
    Body(lie): Body<crate::malicious::Lie>,
) -> Result<Json<serde_json::Value>, ApiError> {
    crate::malicious::apply(&st.kt, lie).await?;
    Ok(Json(serde_json::json!({"status": "lying"})))
}

#[derive(Deserialize)]
pub(super) struct AuditQuery {
    from: u64,
    to: u64,
}

pub(super) async fn kt_audit(
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
