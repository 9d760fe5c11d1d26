//! The error answer every route gives: a JSON [`ErrorBody`] with a status, and the JSON
//! body extractor whose rejections are such answers.

use std::time::Duration;

use axum::{
    Json,
    extract::{FromRequest, Request, rejection::JsonRejection},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use dialtone_proto::directory::{ErrorBody, ErrorCode, MAX_BODY_LEN};
use tracing::warn;

use crate::store::StoreError;

use super::*;

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
