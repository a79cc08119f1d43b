//! Agent identity: registration, join-token attestation, SVID refresh, JWKS.

use crate::api::auth::{Admin, AgentSvid, ApiJson, Shared, Source};
use crate::api::doc::{self, BadInput, JsonBody, Secured, Unavailable};
use crate::api::error::{ApiError, ErrorBody};
use crate::service::identity;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use tollgate_core::clock::rfc3339;
use utoipa::ToSchema;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(examples(json!({"spiffe_id": "spiffe://acme.test/agent/forensics/i-2", "owner": "secops-team"})))]
pub struct RegisterAgent {
    /// SPIFFE ID of the agent instance, e.g. `spiffe://acme.test/agent/ir-responder/i-1`.
    #[serde(deserialize_with = "tollgate_core::text::id")]
    #[schema(value_type = doc::Id)]
    pub spiffe_id: String,
    /// The human or team accountable for the agent.
    #[serde(deserialize_with = "tollgate_core::text::id")]
    #[schema(value_type = doc::Id)]
    pub owner: String,
}

#[derive(Serialize, ToSchema)]
pub struct Registered {
    pub spiffe_id: String,
    /// Single-use; `null` for agents of an external trust domain, which bring their own SVIDs.
    pub join_token: Option<String>,
    pub expires_at: Option<String>,
}

/// Register (or re-enrol) an agent instance and issue a single-use join token.
#[utoipa::path(post, path = "/v1/agents", request_body = RegisterAgent, responses((status = 201, description = "Registered; the join token is shown once", body = Registered), JsonBody, Secured), security(("admin" = [])))]
pub async fn register_agent(
    _: Admin,
    State(state): State<Shared>,
    ApiJson(req): ApiJson<RegisterAgent>,
) -> Result<(StatusCode, Json<Registered>), ApiError> {
    let r = identity::register_agent(&state, &req.spiffe_id, &req.owner).await?;
    Ok((
        StatusCode::CREATED,
        Json(Registered {
            spiffe_id: r.spiffe_id,
            join_token: r.join_token,
            expires_at: r.expires_at.map(rfc3339),
        }),
    ))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Attest {
    pub join_token: String,
}

#[derive(Serialize, ToSchema)]
pub struct Svid {
    pub spiffe_id: String,
    /// JWT-SVID (EdDSA), audience = the gateway.
    pub svid: String,
    pub expires_at: String,
}

impl From<identity::Svid> for Svid {
    fn from(s: identity::Svid) -> Self {
        Svid {
            spiffe_id: s.spiffe_id,
            svid: s.svid,
            expires_at: rfc3339(s.expires_at),
        }
    }
}

/// Exchange a join token (once) for a JWT-SVID.
#[utoipa::path(post, path = "/v1/agents/attest", request_body = Attest, responses(
    (status = 200, description = "A JWT-SVID for the agent the join token was issued to", body = Svid),
    JsonBody,
    (status = 401, description = "The join token is unknown, used or expired (`unauthorized`)", body = ErrorBody),
    (status = 403, description = "The agent is revoked (`forbidden`)", body = ErrorBody),
    Unavailable,
))]
pub async fn attest(
    source: Source,
    State(state): State<Shared>,
    ApiJson(req): ApiJson<Attest>,
) -> Result<Json<Svid>, ApiError> {
    let svid = identity::attest(&state, &source.0, &req.join_token).await?;
    Ok(Json(svid.into()))
}

/// A fresh JWT-SVID for an agent holding a valid one.
#[utoipa::path(post, path = "/v1/agents/svid", responses((status = 200, description = "A fresh JWT-SVID", body = Svid), BadInput, Secured), security(("svid" = [])))]
pub async fn refresh_svid(
    caller: AgentSvid,
    State(state): State<Shared>,
) -> Result<Json<Svid>, ApiError> {
    let svid = identity::refresh_svid(&state, &caller.svid, &caller.agent).await?;
    Ok(Json(svid.into()))
}

/// Public keys that verify SVIDs and task credentials.
#[utoipa::path(get, path = "/.well-known/jwks.json", responses((status = 200, description = "JWK Set (RFC 7517)", body = Jwks)))]
pub async fn jwks(State(state): State<Shared>) -> Json<Jwks> {
    let mut set = state.tokens.jwks();
    Json(Jwks {
        keys: set["keys"].take(),
    })
}

/// A JWK Set (RFC 7517).
#[derive(Serialize, ToSchema)]
pub struct Jwks {
    #[schema(value_type = Vec<doc::Jwk>)]
    pub keys: serde_json::Value,
}
