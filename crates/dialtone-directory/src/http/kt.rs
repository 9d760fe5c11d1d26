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
    limit_ip(&st, &addr)?;
    Ok(Json(st.sessions.view.checkpoint(&st.kt, None).await?))
}

pub(super) async fn kt_lookup(
    State(st): State<Arc<AppState>>,
    Extension(addr): Extension<ClientAddr>,
    Path(raw): Path<String>,
) -> Result<Json<KtLookup>, ApiError> {
    limit_ip(&st, &addr)?;
    let id = parse_identifier(&raw)?;
    Ok(Json(st.sessions.view.lookup(&st.kt, &id, None).await?))
}

pub(super) async fn kt_history(
    State(st): State<Arc<AppState>>,
    Extension(addr): Extension<ClientAddr>,
    Path(raw): Path<String>,
) -> Result<Json<KtHistory>, ApiError> {
    limit_ip(&st, &addr)?;
    let id = parse_identifier(&raw)?;
    Ok(Json(st.sessions.view.history(&st.kt, &id, None).await?))
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
    limit_ip(&st, &addr)?;
    let Ok(Query(q)) = query else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest,
            "give the epochs as ?from=A&to=B (non-negative integers)",
        ));
    };
    Ok(Json(
        st.sessions.view.audit(&st.kt, q.from, q.to, None).await?,
    ))
}
