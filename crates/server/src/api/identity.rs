//! Agent identity: registration, join-token attestation, SVID refresh, JWKS.

use crate::api::auth::{Admin, AgentSvid, ApiJson, Shared, Source};
use crate::api::doc::{self, BadInput, JsonBody, Secured, Unavailable};
use crate::api::error::{ApiError, ErrorBody};
use crate::service::new_id;
use crate::state::random_token;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use tollgate_audit::AuditEvent;
use tollgate_core::clock::rfc3339;
use tollgate_core::{sha256_hex, Agent, SpiffeId};
use tollgate_store::{Batch, Change, JoinToken};
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
    let id = SpiffeId::parse(&req.spiffe_id)
        .map_err(|e| ApiError::bad_request(format!("spiffe_id: {e}")))?;
    if req.owner.trim().is_empty() {
        return Err(ApiError::bad_request("owner must not be empty"));
    }
    if !state.tokens.trusts_domain(id.trust_domain()) {
        return Err(ApiError::bad_request(format!(
            "trust domain {} is neither ours nor configured with a trust bundle; its agents could never authenticate",
            id.trust_domain()
        )));
    }
    let now = state.now();
    let own = id.trust_domain() == state.tokens.trust_domain();
    let agent = Agent {
        spiffe_id: id.to_string(),
        owner: req.owner.clone(),
        created_at: now,
        revoked: false,
    };
    // Re-enrolment voids any join token not yet used.
    let mut batch =
        Batch::default()
            .change(Change::UpsertAgent(agent))
            .change(Change::DropUnusedJoinTokens {
                spiffe_id: id.to_string(),
            });
    let (join_token, expires_at) = if own {
        let token = random_token("tgj_");
        let expires_at = now.saturating_add(state.config.join_token_ttl_seconds);
        batch = batch.change(Change::PutJoinToken(JoinToken {
            token_hash: sha256_hex(token.as_bytes()),
            spiffe_id: id.to_string(),
            expires_at,
            used_at: None,
        }));
        (Some(token), Some(rfc3339(expires_at)))
    } else {
        (None, None)
    };
    batch = batch.event(
        AuditEvent::new(now, tollgate_core::EventKind::AgentRegistered, "admin")
            .agent(id.to_string())
            .detail(serde_json::json!({"owner": req.owner, "join_token_expires_at": expires_at})),
    );
    state.store.commit(batch).await?;
    Ok((
        StatusCode::CREATED,
        Json(Registered {
            spiffe_id: id.to_string(),
            join_token,
            expires_at,
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
    let now = state.now();
    let hash = sha256_hex(req.join_token.as_bytes());
    let refused = |reason: &str| {
        AuditEvent::new(
            now,
            tollgate_core::EventKind::AgentAttestRefused,
            "anonymous",
        )
        .outcome("refused")
        .detail(serde_json::json!({"reason": reason}))
    };
    let token = state.store.join_token(&hash).await?;
    let token = match token {
        Some(t) if t.used_at.is_none() && t.expires_at > now => t,
        other => {
            let why = match other {
                None => "unknown join token",
                Some(t) if t.used_at.is_some() => "join token already used",
                Some(_) => "join token expired",
            };
            // Unknown tokens cost nothing to send: aggregated per source.
            crate::api::auth::record_refusal(
                &state,
                &source.0,
                "agent.attest_refused",
                why,
                refused(why),
            )
            .await?;
            return Err(ApiError::Unauthorized(why.into()));
        }
    };
    match state.store.agent(&token.spiffe_id).await? {
        Some(a) if !a.revoked => {}
        _ => {
            let ev = refused("agent is revoked").agent(token.spiffe_id.clone());
            crate::api::auth::record_refusal(
                &state,
                &source.0,
                "agent.attest_refused",
                "agent is revoked",
                ev,
            )
            .await?;
            return Err(ApiError::Forbidden(format!(
                "agent {} is revoked",
                token.spiffe_id
            )));
        }
    }
    let id = SpiffeId::parse(&token.spiffe_id).map_err(|e| ApiError::Internal(e.to_string()))?;
    let jti = new_id("svid");
    let (svid, exp) = state
        .tokens
        .issue_svid(&id, now, state.config.svid_ttl_seconds, jti.clone())
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let batch = Batch::default()
        .change(Change::ConsumeJoinToken {
            token_hash: hash,
            now,
        })
        .event(
            AuditEvent::new(now, tollgate_core::EventKind::AgentAttested, id.to_string())
                .agent(id.to_string())
                .detail(serde_json::json!({"svid_jti": jti, "expires_at": exp})),
        );
    // The conditional consume makes two racing attestations yield one SVID.
    state.store.commit(batch).await.map_err(|e| match e {
        tollgate_store::StoreError::Conflict(_) => {
            ApiError::Unauthorized("join token already used".into())
        }
        e => e.into(),
    })?;
    Ok(Json(Svid {
        spiffe_id: id.to_string(),
        svid,
        expires_at: rfc3339(exp),
    }))
}

/// A fresh JWT-SVID for an agent holding a valid one.
#[utoipa::path(post, path = "/v1/agents/svid", responses((status = 200, description = "A fresh JWT-SVID", body = Svid), BadInput, Secured), security(("svid" = [])))]
pub async fn refresh_svid(
    caller: AgentSvid,
    State(state): State<Shared>,
) -> Result<Json<Svid>, ApiError> {
    if caller.svid.external {
        return Err(ApiError::bad_request(
            "agents of external trust domains get SVIDs from their own issuer",
        ));
    }
    let now = state.now();
    let jti = new_id("svid");
    let (svid, exp) = state
        .tokens
        .issue_svid(
            &caller.svid.spiffe_id,
            now,
            state.config.svid_ttl_seconds,
            jti.clone(),
        )
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let id = caller.agent.spiffe_id.clone();
    let ev = AuditEvent::new(now, tollgate_core::EventKind::SvidIssued, id.clone())
        .agent(id.clone())
        .detail(serde_json::json!({"svid_jti": jti, "expires_at": exp}));
    state.store.commit(Batch::audit_only(ev)).await?;
    Ok(Json(Svid {
        spiffe_id: id,
        svid,
        expires_at: rfc3339(exp),
    }))
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
