//! The service layer's error: what went wrong in domain terms. Adapters map
//! it to their protocol (HTTP statuses in `api::error`, JSON-RPC errors in
//! `mcp`); nothing here knows a status code.

use tollgate_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed or does not fit the schema; `code` is the
    /// stable error code (`bad_request`, `invalid_request`).
    #[error("{message}")]
    Invalid { code: &'static str, message: String },
    /// The caller's credential does not (or no longer) stand.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller is known but may not do this.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    /// The state changed or does not allow this (already used, not pending, …).
    #[error("{0}")]
    Conflict(String),
    /// The policy pack did not validate; carries the diagnostics.
    #[error("policy pack is invalid")]
    PolicyInvalid(Vec<tollgate_policy::Diagnostic>),
    /// Storage or audit could not answer: fail closed.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl Error {
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::Invalid {
            code: "bad_request",
            message: message.into(),
        }
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(c) => Error::Conflict(c.to_string()),
            StoreError::NotFound(m) => Error::NotFound(m),
            StoreError::Backend(m) => {
                tracing::error!(error = %m, "store failure; failing closed");
                Error::Unavailable("storage is unavailable; failing closed".into())
            }
        }
    }
}
