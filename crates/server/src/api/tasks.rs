//! Tasks and their credentials, evidence, and the decision at every action.

use crate::api::auth::{AgentSvid, ApiJson, ApiPath, Shared, TaskAuth};
use crate::api::doc::{self, BadInput, Conflict, JsonBody, Secured};
use crate::api::error::{ApiError, ErrorDetail};
use crate::service::decide::decide_action;
use crate::service::judge::ActionAsk;
use crate::service::tasks;
use crate::views::DecisionView;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::time::Instant;
use tollgate_core::clock::rfc3339;
use tollgate_core::{IncidentRef, TaskStatus};
use tollgate_policy::ResourceRef;
use utoipa::ToSchema;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(examples(json!({
    "incident": {"id": "INC-4711", "class": "malware", "severity": "high"},
    "environment": "prod", "playbook": "contain-malware",
    "intent": "contain the beacon on web-1", "ttl_seconds": 900,
})))]
pub struct OpenTask {
    #[schema(value_type = doc::IncidentRef)]
    pub incident: IncidentRef,
    /// `prod`, `staging`, …: an id of at most 64 bytes.
    #[serde(deserialize_with = "tollgate_core::text::id")]
    #[schema(min_length = 1, max_length = 64)]
    pub environment: String,
    /// The playbook the task follows: an id of at most 128 bytes.
    #[serde(deserialize_with = "tollgate_core::text::id")]
    #[schema(min_length = 1, max_length = 128)]
    pub playbook: String,
    /// What the agent means to do, in its own words (audited); 1 to 2048 bytes.
    #[schema(min_length = 1, max_length = 2048)]
    pub intent: String,
    /// Default: the configured task TTL; above the maximum TTL the task is refused.
    #[schema(minimum = 1)]
    pub ttl_seconds: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct TaskCredential {
    pub task_id: String,
    /// EdDSA JWT bound to this task; present it as bearer token.
    pub credential: String,
    pub expires_at: String,
}

/// A refusal by policy (`decision` and the rest present), or of the caller
/// itself (`error` only: a revoked agent, another task's credential).
#[derive(Serialize, ToSchema)]
pub struct Refusal {
    /// `deny`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<doc::Outcome>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasons: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policies: Option<Vec<String>>,
    /// `task_refused` or `delegation_refused` (or `forbidden`).
    pub error: ErrorDetail,
}

fn non_empty(field: &str, v: &str, max: usize) -> Result<(), ApiError> {
    if v.trim().is_empty() || v.len() > max {
        return Err(ApiError::bad_request(format!(
            "{field} must be 1 to {max} bytes"
        )));
    }
    Ok(())
}

/// Open a task: a policy decision over the agent, incident and declared intent.
#[utoipa::path(post, path = "/v1/tasks", request_body = OpenTask, responses(
    (status = 201, description = "The task is open; its credential", body = TaskCredential),
    JsonBody,
    Secured,
    (status = 403, description = "Refused by policy (the body carries the decision, `task_refused`), or the agent is revoked (`forbidden`)", body = Refusal),
), security(("svid" = [])))]
pub async fn open_task(
    caller: AgentSvid,
    State(state): State<Shared>,
    ApiJson(req): ApiJson<OpenTask>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    non_empty("incident.id", &req.incident.id, 128)?;
    non_empty("incident.class", &req.incident.class, 64)?;
    non_empty("environment", &req.environment, 64)?;
    non_empty("playbook", &req.playbook, 128)?;
    non_empty("intent", &req.intent, 2048)?;
    let ttl_seconds = req.ttl_seconds.unwrap_or(state.config.task_ttl_seconds);
    if ttl_seconds <= 0 {
        return Err(ApiError::bad_request("ttl_seconds must be positive"));
    }
    let request = tasks::TaskRequest {
        incident: req.incident,
        environment: req.environment,
        playbook: req.playbook,
        intent: req.intent,
        ttl_seconds,
    };
    let opened = tasks::open_task(&state, &caller.agent, &request).await?;
    let outcome = if opened.is_ok() { "allow" } else { "deny" };
    state
        .metrics
        .record("task.open", outcome, started.elapsed().as_secs_f64());
    Ok(match opened {
        Ok(g) => {
            let body = TaskCredential {
                task_id: g.task_id,
                credential: g.credential,
                expires_at: rfc3339(g.expires_at),
            };
            (StatusCode::CREATED, Json(body)).into_response()
        }
        Err(refused) => Refusal::of(refused, "task_refused").into_response(),
    })
}

impl Refusal {
    /// A refusal by the gateway or policy, as `403` with its decision.
    pub fn of(r: tasks::Refused, code: &str) -> Self {
        Refusal {
            decision: Some(doc::Outcome::Deny),
            request_id: Some(r.request_id),
            error: ErrorDetail::new(code, r.reasons.join("; ")),
            reasons: Some(r.reasons),
            policies: r.policies,
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (StatusCode::FORBIDDEN, Json(self)).into_response()
    }
}

fn same_task(auth: &TaskAuth, id: &str) -> Result<(), ApiError> {
    if auth.task.id != id {
        return Err(ApiError::Forbidden(
            "this credential belongs to another task".into(),
        ));
    }
    Ok(())
}

/// A fresh credential for a live task; never past the task's hard maximum.
#[utoipa::path(post, path = "/v1/tasks/{id}/renew", params(("id" = doc::Id, Path, description = "The task of the credential")), responses(
    (status = 200, description = "A fresh credential", body = TaskCredential),
    BadInput,
    Secured,
    Conflict,
), security(("task" = [])))]
pub async fn renew_task(
    auth: TaskAuth,
    State(state): State<Shared>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<TaskCredential>, ApiError> {
    same_task(&auth, &id)?;
    let renewed = tasks::renew_task(&state, &auth.task, &auth.claims).await?;
    Ok(Json(TaskCredential {
        task_id: id,
        credential: renewed.credential,
        expires_at: rfc3339(renewed.expires_at),
    }))
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CloseOutcome {
    Completed,
    Failed,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CloseTask {
    pub outcome: CloseOutcome,
    /// Recorded as the task's status reason.
    pub summary: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct TaskClosed {
    pub task_id: String,
    /// `completed` or `failed`.
    pub status: doc::TaskStatus,
}

/// Close a task; its credential stops working on the next request.
#[utoipa::path(post, path = "/v1/tasks/{id}/close", params(("id" = doc::Id, Path, description = "The task of the credential")), request_body = CloseTask, responses(
    (status = 200, description = "Closed; the credential and every delegated descendant are dead", body = TaskClosed),
    JsonBody,
    Secured,
), security(("task" = [])))]
pub async fn close_task(
    auth: TaskAuth,
    State(state): State<Shared>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<CloseTask>,
) -> Result<Json<TaskClosed>, ApiError> {
    same_task(&auth, &id)?;
    let status = match req.outcome {
        CloseOutcome::Completed => TaskStatus::Completed,
        CloseOutcome::Failed => TaskStatus::Failed,
    };
    tasks::close_task(&state, &auth.task, status, req.summary).await?;
    Ok(Json(TaskClosed {
        task_id: id,
        status: status.into(),
    }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(examples(json!({
    "resource": {"type": "Host", "id": "web-1"}, "kind": "process-list",
    "sha256": "9f2c1e0a4b7d3c5e8f6a2b1d0c9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e",
})))]
pub struct AddEvidence {
    #[schema(value_type = doc::ResourceRef)]
    pub resource: ResourceRef,
    /// What kind of evidence: `memory-snapshot`, `process-list`, `pcap`, …
    /// (an id of at most 64 bytes).
    #[serde(deserialize_with = "tollgate_core::text::id")]
    #[schema(min_length = 1, max_length = 64)]
    pub kind: String,
    /// Lowercase hex SHA-256 of the evidence content.
    #[schema(pattern = "^[0-9a-f]{64}$")]
    pub sha256: String,
    /// The content itself (text), optional; if given, it must hash to `sha256`.
    pub content: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct EvidenceRecorded {
    pub evidence_id: String,
}

/// Attach diagnostic evidence about a resource to the task.
#[utoipa::path(post, path = "/v1/tasks/{id}/evidence", params(("id" = doc::Id, Path, description = "The task of the credential")), request_body = AddEvidence, responses(
    (status = 201, description = "Recorded; its hash is in the audit chain", body = EvidenceRecorded),
    JsonBody,
    Secured,
), security(("task" = [])))]
pub async fn add_evidence(
    auth: TaskAuth,
    State(state): State<Shared>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<AddEvidence>,
) -> Result<(StatusCode, Json<EvidenceRecorded>), ApiError> {
    same_task(&auth, &id)?;
    non_empty("kind", &req.kind, 64)?;
    let hex_ok = req.sha256.len() == 64
        && req
            .sha256
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !hex_ok {
        return Err(ApiError::bad_request(
            "sha256 must be 64 lowercase hex characters",
        ));
    }
    let evidence = tasks::NewEvidence {
        resource: req.resource,
        kind: req.kind,
        sha256: req.sha256,
        content: req.content,
    };
    let evidence_id = tasks::add_evidence(&state, &auth.task, evidence).await?;
    Ok((StatusCode::CREATED, Json(EvidenceRecorded { evidence_id })))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(examples(json!({
    "action": "edr.isolate_host", "resource": {"type": "Host", "id": "web-1"},
    "intent": "isolate web-1: it beacons to a known C2 address",
})))]
pub struct Authorize {
    /// A tool-catalog operation, e.g. `edr.isolate_host` (an id of at most 128 bytes).
    #[serde(deserialize_with = "tollgate_core::text::id")]
    #[schema(min_length = 1, max_length = 128)]
    pub action: String,
    #[schema(value_type = doc::ResourceRef)]
    pub resource: ResourceRef,
    /// Why the agent wants to do this, in its own words (audited); 1 to 2048 bytes.
    #[schema(min_length = 1, max_length = 2048)]
    pub intent: String,
    /// The operation's parameters, as the tool will receive them (part of
    /// what an approval is bound to).
    #[serde(default)]
    #[schema(value_type = doc::Object)]
    pub parameters: Map<String, Value>,
    /// The granted approval, when retrying an `approval_required` request.
    #[serde(default, deserialize_with = "tollgate_core::text::opt_id")]
    #[schema(value_type = Option<doc::Id>)]
    pub approval_id: Option<String>,
}

/// Ask before a privileged action: allow, deny or approval_required.
#[utoipa::path(post, path = "/v1/authorize", request_body = Authorize, responses(
    (status = 200, description = "The decision, audited before it is returned; a denial is not an error", body = DecisionView),
    JsonBody,
    Secured,
    Conflict,
), security(("task" = [])))]
pub async fn authorize(
    auth: TaskAuth,
    State(state): State<Shared>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<Authorize>,
) -> Result<Json<DecisionView>, ApiError> {
    non_empty("action", &req.action, 128)?;
    non_empty("intent", &req.intent, 2048)?;
    let traceparent = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let decided = decide_action(
        &state,
        ActionAsk {
            task: &auth.task,
            agent: &auth.agent,
            action: &req.action,
            resource: &req.resource,
            intent: &req.intent,
            parameters: &req.parameters,
            actor: auth.agent.spiffe_id.clone(),
            kind: tollgate_core::EventKind::Decision,
            traceparent,
            approval_id: req.approval_id.as_deref(),
        },
    )
    .await?;
    Ok(Json(DecisionView::from(&decided)))
}
