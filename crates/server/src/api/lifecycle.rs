//! Delegation, cascading revocation, incident lifecycle, introspection and
//! rollback plans.

use crate::api::auth::{Admin, ApiJson, ApiPath, PepAuth, Shared, TaskAuth};
use crate::api::doc::{self, BadInput, JsonBody, NotFound, Secured};
use crate::api::error::ApiError;
use crate::api::tasks::Refusal;
use crate::service::{lifecycle, tasks};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeSet;
use tollgate_core::clock::rfc3339;
use tollgate_core::{Incident, IncidentStatus, Severity};
use tollgate_identity::Actor;
use utoipa::ToSchema;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(examples(json!({
    "agent": "spiffe://acme.test/agent/forensics/i-2", "actions": ["forensics.image_host"],
    "resources": ["Host::web-1"], "ttl_seconds": 600, "intent": "collect a forensic image of web-1",
})))]
pub struct Delegate {
    /// SPIFFE ID of the registered agent instance that receives the work.
    #[serde(deserialize_with = "tollgate_core::text::id")]
    #[schema(value_type = doc::Id)]
    pub agent: String,
    /// Catalog operations the child may ask for; within the parent's scope.
    #[serde(deserialize_with = "tollgate_core::text::ids")]
    #[schema(value_type = Vec<doc::Id>)]
    pub actions: Vec<String>,
    /// Resources (`Type::id`) the child may act on; within the parent's scope.
    #[serde(deserialize_with = "tollgate_core::text::ids")]
    #[schema(value_type = Vec<doc::Id>)]
    pub resources: Vec<String>,
    /// The child's lifetime; never past the parent's.
    pub ttl_seconds: i64,
    /// 1 to 2048 bytes.
    #[schema(min_length = 1, max_length = 2048)]
    pub intent: String,
}

/// The delegated child task and its credential (for the receiving agent).
#[derive(Serialize, ToSchema)]
pub struct Delegated {
    pub task_id: String,
    pub credential: String,
    pub expires_at: String,
    pub request_id: String,
}

/// Hand a sub-scope of this task to another agent: a policy decision and
/// an audit entry; the child's scope, lifetime and depth never exceed the parent's.
#[utoipa::path(post, path = "/v1/tasks/{id}/delegate", params(("id" = doc::Id, Path, description = "The task of the credential")), request_body = Delegate, responses(
    (status = 201, description = "The child task and its credential", body = Delegated),
    JsonBody,
    Secured,
    (status = 403, description = "Refused (the body carries the decision, `delegation_refused`): wider than the parent, too deep, a revoked receiver, or policy; or the caller is refused (`forbidden`)", body = Refusal),
), security(("task" = [])))]
pub async fn delegate(
    auth: TaskAuth,
    State(state): State<Shared>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<Delegate>,
) -> Result<Response, ApiError> {
    if auth.task.id != id {
        return Err(ApiError::Forbidden(
            "this credential belongs to another task".into(),
        ));
    }
    if req.intent.trim().is_empty() || req.intent.len() > 2048 {
        return Err(ApiError::bad_request("intent must be 1 to 2048 bytes"));
    }
    let request = tasks::DelegationRequest {
        agent: req.agent,
        actions: req.actions.into_iter().collect(),
        resources: req.resources.into_iter().collect(),
        ttl_seconds: req.ttl_seconds,
        intent: req.intent,
    };
    let delegated =
        tasks::delegate(&state, &auth.agent, &auth.claims, &auth.task, &request).await?;
    Ok(match delegated {
        Ok(g) => {
            let body = Delegated {
                task_id: g.task_id,
                credential: g.credential,
                expires_at: rfc3339(g.expires_at),
                request_id: g.request_id,
            };
            (StatusCode::CREATED, Json(body)).into_response()
        }
        Err(refused) => Refusal::of(refused, "delegation_refused").into_response(),
    })
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateIncident {
    /// `resolved` or `closed` revokes every task bound to the incident.
    #[schema(value_type = Option<doc::IncidentStatus>)]
    pub status: Option<IncidentStatus>,
    /// A new class re-evaluates the open tasks (with `severity`, creates an unknown incident).
    #[serde(default, deserialize_with = "tollgate_core::text::opt_id")]
    #[schema(value_type = Option<doc::Id>)]
    pub class: Option<String>,
    #[schema(value_type = Option<doc::Severity>)]
    pub severity: Option<Severity>,
    pub reason: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct IncidentUpdated {
    #[schema(value_type = doc::Incident)]
    pub incident: Incident,
    /// Tasks revoked by this change (descendants included).
    pub revoked_tasks: BTreeSet<String>,
    /// Active tasks of the incident that policy still allows.
    pub kept_tasks: Vec<String>,
}

/// Change an incident. Resolved or closed: every task bound to it is
/// revoked. Reclassified: open tasks are re-evaluated and revoked if policy
/// no longer allows them.
#[utoipa::path(post, path = "/v1/incidents/{id}", params(("id" = doc::Id, Path)), request_body = UpdateIncident, responses(
    (status = 200, description = "The incident as it is now, and what happened to its tasks", body = IncidentUpdated),
    JsonBody,
    Secured,
    NotFound,
), security(("admin" = [])))]
pub async fn update_incident(
    _: Admin,
    State(state): State<Shared>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<UpdateIncident>,
) -> Result<Json<IncidentUpdated>, ApiError> {
    let change = lifecycle::IncidentChange {
        status: req.status,
        class: req.class,
        severity: req.severity,
        reason: req.reason,
    };
    let changed = lifecycle::update_incident(&state, &id, change).await?;
    Ok(Json(IncidentUpdated {
        incident: changed.incident,
        revoked_tasks: changed.revoked_tasks,
        kept_tasks: changed.kept_tasks,
    }))
}

#[derive(Deserialize, ToSchema)]
pub struct Introspect {
    /// A task credential.
    pub token: String,
}

/// RFC 7662 introspection answer: `{"active": false}` alone, or the
/// credential's claims.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum Introspection {
    Active(Box<ActiveCredential>),
    Inactive(InactiveCredential),
}

/// A credential that is no longer (or never was) good.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InactiveCredential {
    /// `false`.
    pub active: bool,
}

/// A live task credential and its claims.
#[derive(Serialize, ToSchema)]
pub struct ActiveCredential {
    /// `true`.
    pub active: bool,
    /// `tollgate-task`.
    pub token_type: String,
    pub sub: String,
    pub iss: String,
    pub aud: String,
    pub exp: i64,
    pub iat: i64,
    pub jti: String,
    pub task_id: String,
    pub incident_id: String,
    /// The actions the credential is narrowed to, space-separated; `null`: whatever policy permits.
    pub scope: Option<String>,
    /// The resources (`Type::id`) it is narrowed to; `null`: whatever policy permits.
    pub resources: Option<BTreeSet<String>>,
    /// Who delegated, hop by hop (RFC 8693); `null` for a task an agent opened.
    #[schema(value_type = Option<doc::Actor>)]
    pub act: Option<Actor>,
}

/// RFC 7662-style introspection of a task credential, for services that
/// verify credentials offline: `active: false` once the task is closed,
/// revoked or expired, or the agent is revoked.
#[utoipa::path(post, path = "/v1/introspect", request_body = Introspect, responses(
    (status = 200, description = "Whether the credential is live, and its claims if so", body = Introspection),
    JsonBody,
    Secured,
), security(("pep" = [])))]
pub async fn introspect(
    _: PepAuth,
    State(state): State<Shared>,
    ApiJson(req): ApiJson<Introspect>,
) -> Result<Json<Introspection>, ApiError> {
    let now = state.now();
    let inactive = Json(Introspection::Inactive(InactiveCredential {
        active: false,
    }));
    let Ok(claims) = state.tokens.verify_task_credential(&req.token, now) else {
        return Ok(inactive);
    };
    let task = state
        .store
        .task(&claims.task_id)
        .await?
        .filter(|t| t.agent == claims.sub && t.is_live(now));
    let live = match &task {
        Some(t) => state
            .store
            .lineage(&t.id)
            .await?
            .is_some_and(|l| l.dead().is_none()),
        None => false,
    };
    let agent_ok = state
        .store
        .agent(&claims.sub)
        .await?
        .is_some_and(|a| !a.revoked);
    if !(live && agent_ok) {
        return Ok(inactive);
    }
    Ok(Json(Introspection::Active(Box::new(ActiveCredential {
        active: true,
        token_type: "tollgate-task".into(),
        sub: claims.sub,
        iss: claims.iss,
        aud: claims.aud,
        exp: claims.exp,
        iat: claims.iat,
        jti: claims.jti,
        task_id: claims.task_id,
        incident_id: claims.incident_id,
        scope: claims
            .scope
            .actions
            .map(|a| a.into_iter().collect::<Vec<_>>().join(" ")),
        resources: claims.scope.resources,
        act: claims.act,
    }))))
}

/// The rollback plan: every compensation recorded for the task (and its
/// delegated children), newest first.
#[utoipa::path(get, path = "/v1/tasks/{id}/rollback", params(("id" = doc::Id, Path)), responses(
    (status = 200, description = "The plan, newest step first", body = RollbackPlan),
    BadInput,
    Secured,
    NotFound,
), security(("admin" = [])))]
pub async fn rollback(
    _: Admin,
    State(state): State<Shared>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<RollbackPlan>, ApiError> {
    let task = state
        .store
        .task(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("task {id}")))?;
    let steps = lifecycle::rollback_plan(&state, &task).await?;
    Ok(Json(RollbackPlan { task_id: id, steps }))
}

#[derive(Serialize, ToSchema)]
pub struct RollbackPlan {
    pub task_id: String,
    #[schema(value_type = Vec<doc::RollbackStep>)]
    pub steps: Vec<Value>,
}
