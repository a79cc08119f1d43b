//! API errors and the one function that maps them to HTTP statuses.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use tollgate_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Conflict(String),
    #[error("request body is larger than the limit")]
    PayloadTooLarge,
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The policy pack did not validate; carries the diagnostics.
    #[error("policy pack is invalid")]
    PolicyInvalid(Vec<tollgate_policy::Diagnostic>),
    /// Storage or audit could not answer: fail closed.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::BadRequest {
            code: "bad_request",
            message: message.into(),
        }
    }

    /// The single place where errors meet HTTP.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest { code, .. } => (StatusCode::BAD_REQUEST, code),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::PolicyInvalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "policy_invalid"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        crate::service::Error::from(e).into()
    }
}

/// The service's errors, one to one: the status they get is decided in
/// `status_and_code` alone.
impl From<crate::service::Error> for ApiError {
    fn from(e: crate::service::Error) -> Self {
        use crate::service::Error as E;
        match e {
            E::Invalid { code, message } => ApiError::BadRequest { code, message },
            E::Unauthenticated(m) => ApiError::Unauthorized(m),
            E::Forbidden(m) => ApiError::Forbidden(m),
            E::NotFound(m) => ApiError::NotFound(m),
            E::Conflict(m) => ApiError::Conflict(m),
            E::PolicyInvalid(d) => ApiError::PolicyInvalid(d),
            E::Unavailable(m) => ApiError::Unavailable(m),
            E::Internal(m) => ApiError::Internal(m),
        }
    }
}

/// The body of every error answer.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable, snake_case: what kind of error.
    pub code: String,
    /// For people; may change between versions.
    pub message: String,
    /// Why a policy pack was refused (`policy_invalid` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<crate::api::doc::Diagnostic>>)]
    pub diagnostics: Option<Vec<tollgate_policy::Diagnostic>>,
}

impl ErrorDetail {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
            diagnostics: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let mut detail = ErrorDetail::new(code, self.to_string());
        if let ApiError::PolicyInvalid(diags) = self {
            detail.diagnostics = Some(diags);
        }
        (status, Json(ErrorBody { error: detail })).into_response()
    }
}
