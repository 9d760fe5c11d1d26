//! Public lookups: `/v1/lookup/{identifier}` and WebFinger.

use std::sync::Arc;

use axum::{
    Extension, Json,
    extract::{Path, Query, State},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use dialtone_proto::directory::{ErrorCode, PublicRecord};
use serde::Deserialize;

use crate::{AppState, store::q};

use super::*;

/// `GET /v1/lookup/{identifier}`, for anyone: what adding a contact needs (the identity key)
/// and the signed device list, which is the identifier's transparency-log value and so
/// public to whoever knows the identifier anyway (`/v1/kt/lookup`). The device certificates
/// are not shown: a device proves itself to its peers in the hello (docs/privacy.md).
pub(super) async fn lookup(
    State(st): State<Arc<AppState>>,
    Extension(addr): Extension<ClientAddr>,
    Path(raw): Path<String>,
) -> Result<Json<PublicRecord>, ApiError> {
    limit_ip(&st, &addr)?;
    let id = parse_identifier(&raw)?;
    let id2 = id.clone();
    let found = st
        .store
        .run(move |c| Ok(q::account(c, &id2)?.map(|a| (a, q::device_list(c, &id2)))))
        .await?;
    let Some((account, list)) = found else {
        return Err(not_registered(&id));
    };
    Ok(Json(PublicRecord {
        identifier: account.identifier,
        identity_key: account.identity_key,
        devices: Vec::new(),
        device_list: list?,
    }))
}
#[derive(Deserialize)]
pub(super) struct WebfingerQuery {
    resource: Option<String>,
}

pub(super) async fn webfinger(
    State(st): State<Arc<AppState>>,
    Extension(addr): Extension<ClientAddr>,
    query: Result<Query<WebfingerQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    limit_ip(&st, &addr)?;
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
