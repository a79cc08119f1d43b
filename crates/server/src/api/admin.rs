//! Admin endpoints: kill switch, revocation, task and audit views, policy
//! reload, PEP keys.

use crate::api::auth::{Admin, ApiJson, ApiPath, ApiQuery, Shared};
use crate::api::doc::{self, BadInput, Conflict, JsonBody, NotFound, Secured};
use crate::api::error::{ApiError, ErrorBody};
use crate::service::{admin, gateway, lifecycle};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tollgate_core::TaskStatus;
use tollgate_store::{AuditQuery, TaskFilter};
use utoipa::{IntoParams, ToSchema};

#[derive(Serialize, ToSchema)]
pub struct Frozen {
    /// Whether every agent decision now denies.
    pub frozen: bool,
}

/// Kill switch: every agent decision denies until unfrozen. Survives restarts.
#[utoipa::path(post, path = "/v1/freeze", responses((status = 200, description = "Frozen", body = Frozen), Secured), security(("admin" = [])))]
pub async fn freeze(_: Admin, State(state): State<Shared>) -> Result<Json<Frozen>, ApiError> {
    gateway::set_frozen(&state, true, "admin").await?;
    Ok(Json(Frozen { frozen: true }))
}

/// Lift the kill switch.
#[utoipa::path(post, path = "/v1/unfreeze", responses((status = 200, description = "Unfrozen", body = Frozen), Secured), security(("admin" = [])))]
pub async fn unfreeze(_: Admin, State(state): State<Shared>) -> Result<Json<Frozen>, ApiError> {
    gateway::set_frozen(&state, false, "admin").await?;
    Ok(Json(Frozen { frozen: false }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Revocation {
    /// Revokes the task and every task delegated from it.
    #[serde(default, deserialize_with = "tollgate_core::text::opt_id")]
    #[schema(value_type = Option<doc::Id>)]
    pub task_id: Option<String>,
    /// SPIFFE ID: revokes all its tasks, and it gets no SVID until re-registered.
    #[serde(default, deserialize_with = "tollgate_core::text::opt_id")]
    #[schema(value_type = Option<doc::Id>)]
    pub agent: Option<String>,
    /// Revokes every active task of the incident.
    #[serde(default, deserialize_with = "tollgate_core::text::opt_id")]
    #[schema(value_type = Option<doc::Id>)]
    pub incident_id: Option<String>,
    pub reason: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct Revoked {
    /// Every task revoked, descendants included.
    pub revoked_tasks: Vec<String>,
}

/// Revoke a task, every task of an agent, or every task of an incident
/// (exactly one of `task_id`, `agent`, `incident_id`).
#[utoipa::path(post, path = "/v1/revocations", request_body = Revocation, responses(
    (status = 200, description = "Revoked; the credentials fail on their next request", body = Revoked),
    JsonBody,
    Secured,
    NotFound,
    Conflict,
), security(("admin" = [])))]
pub async fn revoke(
    _: Admin,
    State(state): State<Shared>,
    ApiJson(req): ApiJson<Revocation>,
) -> Result<Json<Revoked>, ApiError> {
    let reason = req
        .reason
        .clone()
        .unwrap_or_else(|| "revoked by an admin".into());
    let target = match (req.task_id, req.agent, req.incident_id) {
        (Some(t), None, None) => lifecycle::Target::Task(t),
        (None, Some(a), None) => lifecycle::Target::Agent(a),
        (None, None, Some(i)) => lifecycle::Target::Incident(i),
        _ => {
            return Err(ApiError::bad_request(
                "give exactly one of task_id, agent, incident_id",
            ))
        }
    };
    let revoked = lifecycle::revoke(&state, target, &reason).await?;
    Ok(Json(Revoked {
        revoked_tasks: revoked,
    }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Release {
    /// SPIFFE ID of the quarantined agent.
    #[serde(deserialize_with = "tollgate_core::text::id")]
    #[schema(value_type = doc::Id)]
    pub agent: String,
    pub reason: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct Released {
    pub agent: String,
    /// Always `false`.
    pub quarantined: bool,
}

/// Lift an agent's quarantine (set by a chain rule with `@on_deny("quarantine")`).
#[utoipa::path(post, path = "/v1/agents/release", request_body = Release, responses(
    (status = 200, description = "Released", body = Released),
    JsonBody,
    Secured,
    NotFound,
    (status = 409, description = "The agent is not quarantined (`conflict`)", body = ErrorBody),
), security(("admin" = [])))]
pub async fn release(
    _: Admin,
    State(state): State<Shared>,
    ApiJson(req): ApiJson<Release>,
) -> Result<Json<Released>, ApiError> {
    let id = admin::release_agent(&state, &req.agent, req.reason).await?;
    Ok(Json(Released {
        agent: id,
        quarantined: false,
    }))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TaskListQuery {
    /// Tasks of this agent (SPIFFE ID).
    #[param(value_type = doc::Id, required = false)]
    pub agent: Option<String>,
    /// Tasks of this incident.
    #[param(value_type = doc::Id, required = false)]
    pub incident: Option<String>,
    #[param(value_type = doc::TaskStatus, required = false)]
    pub status: Option<String>,
    /// At most this many (default 100, at most 10000).
    #[param(minimum = 0)]
    pub limit: Option<usize>,
}

#[derive(Serialize, ToSchema)]
pub struct TaskView {
    pub id: String,
    pub agent: String,
    pub incident_id: String,
    pub environment: String,
    pub playbook: String,
    pub intent: String,
    pub status: doc::TaskStatus,
    /// Why the task left `active` (close summary, revocation reason).
    pub status_reason: Option<String>,
    /// For delegated tasks: the task that delegated this one.
    pub parent_task_id: Option<String>,
    #[schema(value_type = doc::Scope)]
    pub scope: tollgate_core::Scope,
    pub created_at: String,
    pub expires_at: String,
    pub max_expires_at: String,
}

impl From<tollgate_core::Task> for TaskView {
    fn from(t: tollgate_core::Task) -> Self {
        use tollgate_core::clock::rfc3339;
        Self {
            id: t.id,
            agent: t.agent,
            incident_id: t.incident_id,
            environment: t.environment,
            playbook: t.playbook,
            intent: t.intent,
            status: t.status.into(),
            status_reason: t.status_reason,
            parent_task_id: t.parent_task_id,
            scope: t.scope,
            created_at: rfc3339(t.created_at),
            expires_at: rfc3339(t.expires_at),
            max_expires_at: rfc3339(t.max_expires_at),
        }
    }
}

/// Tasks, oldest first, filtered.
#[utoipa::path(get, path = "/v1/tasks", params(TaskListQuery), responses((status = 200, description = "The tasks", body = Vec<TaskView>), BadInput, Secured), security(("admin" = [])))]
pub async fn list_tasks(
    _: Admin,
    State(state): State<Shared>,
    ApiQuery(q): ApiQuery<TaskListQuery>,
) -> Result<Json<Vec<TaskView>>, ApiError> {
    let status = q
        .status
        .as_deref()
        .map(str::parse::<TaskStatus>)
        .transpose()
        .map_err(ApiError::bad_request)?;
    let filter = TaskFilter {
        agent: q.agent,
        incident_id: q.incident,
        status,
        limit: q.limit.unwrap_or(100).min(10_000),
        parent_task_id: None,
    };
    Ok(Json(
        state
            .store
            .tasks(filter)
            .await?
            .into_iter()
            .map(TaskView::from)
            .collect(),
    ))
}

/// One task.
#[utoipa::path(get, path = "/v1/tasks/{id}", params(("id" = doc::Id, Path)), responses((status = 200, description = "The task", body = TaskView), BadInput, Secured, NotFound), security(("admin" = [])))]
pub async fn show_task(
    _: Admin,
    State(state): State<Shared>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<TaskView>, ApiError> {
    let t = state
        .store
        .task(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("task {id}")))?;
    Ok(Json(t.into()))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditListQuery {
    #[param(value_type = doc::Id, required = false)]
    pub incident: Option<String>,
    #[param(value_type = doc::Id, required = false)]
    pub task: Option<String>,
    #[param(value_type = doc::Id, required = false)]
    pub agent: Option<String>,
    /// Entries carrying this request id (decision, approval steps, result).
    #[param(value_type = doc::Id, required = false)]
    pub request: Option<String>,
    /// Only entries after this sequence number (paging).
    #[param(minimum = 0)]
    pub after: Option<u64>,
    /// At most this many (default 100, clamped to 1..=1000).
    #[param(minimum = 0)]
    pub limit: Option<usize>,
}

/// A page of audit entries.
#[derive(Serialize, ToSchema)]
pub struct AuditPage {
    #[schema(value_type = Vec<doc::AuditEntry>)]
    pub entries: Vec<tollgate_audit::AuditEntry>,
    /// Pass as `after` for the next page; `null`: this was the last.
    pub next_after: Option<u64>,
}

/// Audit entries, oldest first, paged by `after`.
#[utoipa::path(get, path = "/v1/audit", params(AuditListQuery), responses((status = 200, description = "A page of entries", body = AuditPage), BadInput, Secured), security(("admin" = [])))]
pub async fn audit(
    _: Admin,
    State(state): State<Shared>,
    ApiQuery(q): ApiQuery<AuditListQuery>,
) -> Result<Json<AuditPage>, ApiError> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    if let Some(r) = &q.request {
        let entries = state.store.audit_by_request(r).await?;
        return Ok(Json(AuditPage {
            entries,
            next_after: None,
        }));
    }
    let entries = state
        .store
        .audit(AuditQuery {
            incident_id: q.incident,
            task_id: q.task,
            agent: q.agent,
            after: q.after.unwrap_or(0),
            limit,
        })
        .await?;
    let next_after = if entries.len() == limit {
        entries.last().map(|e| e.seq)
    } else {
        None
    };
    Ok(Json(AuditPage {
        entries,
        next_after,
    }))
}

#[derive(Serialize, ToSchema)]
pub struct Reloaded {
    /// Digest of the pack now live.
    pub digest: String,
    /// How many policies it has.
    pub policies: usize,
}

/// Reload the policy pack; an invalid pack is refused (422) and the old one stays live.
#[utoipa::path(post, path = "/v1/policies/reload", responses(
    (status = 200, description = "The new pack is live", body = Reloaded),
    Secured,
    (status = 422, description = "The pack does not validate; the old one stays live (`policy_invalid`, with `diagnostics`)", body = ErrorBody),
), security(("admin" = [])))]
pub async fn reload(_: Admin, State(state): State<Shared>) -> Result<Json<Reloaded>, ApiError> {
    let digest = gateway::reload_pack(&state, "api").await?;
    let pack = state.pack.load();
    Ok(Json(Reloaded {
        digest,
        policies: pack.policy_count(),
    }))
}

/// Which pack to shadow.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoadShadow {
    /// The pack's directory on the server, relative to the config
    /// directory (or absolute).
    #[schema(min_length = 1, max_length = 4096)]
    pub path: String,
}

/// The shadow pack, if one is loaded.
#[derive(Serialize, ToSchema)]
pub struct ShadowStatus {
    pub loaded: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policies: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loaded_at: Option<String>,
}

fn shadow_status(shadow: Option<&crate::state::ShadowPack>) -> ShadowStatus {
    ShadowStatus {
        loaded: shadow.is_some(),
        digest: shadow.map(|s| s.pack.digest().to_string()),
        policies: shadow.map(|s| s.pack.policy_count()),
        source: shadow.map(|s| s.source.clone()),
        loaded_at: shadow.map(|s| tollgate_core::clock::rfc3339(s.loaded_at)),
    }
}

/// Load a shadow pack: evaluated beside the enforced pack on every
/// decision of this server, never enforced; each disagreement is a
/// `decision.shadow_diff` audit entry.
#[utoipa::path(post, path = "/v1/policies/shadow", request_body = LoadShadow, responses(
    (status = 200, description = "The shadow pack is loaded (replacing any)", body = ShadowStatus),
    JsonBody,
    Secured,
    (status = 422, description = "The pack does not validate; the previous shadow (if any) stays (`policy_invalid`, with `diagnostics`)", body = ErrorBody),
), security(("admin" = [])))]
pub async fn load_shadow(
    _: Admin,
    State(state): State<Shared>,
    ApiJson(req): ApiJson<LoadShadow>,
) -> Result<Json<ShadowStatus>, ApiError> {
    if req.path.is_empty() || req.path.len() > 4096 || req.path.contains('\0') {
        return Err(ApiError::bad_request("path: 1 to 4096 bytes, no NUL"));
    }
    let base = state.config_dir.clone().unwrap_or_else(|| ".".into());
    let loaded = gateway::load_shadow(&state, &base.join(&req.path), "admin").await?;
    Ok(Json(shadow_status(Some(&loaded))))
}

/// The shadow pack, if one is loaded.
#[utoipa::path(get, path = "/v1/policies/shadow", responses(
    (status = 200, description = "The shadow pack (`loaded: false` when there is none)", body = ShadowStatus),
    Secured,
), security(("admin" = [])))]
pub async fn show_shadow(_: Admin, State(state): State<Shared>) -> Json<ShadowStatus> {
    Json(shadow_status(state.shadow.load_full().as_deref()))
}

/// Stop shadowing.
#[utoipa::path(delete, path = "/v1/policies/shadow", responses(
    (status = 200, description = "No shadow pack any more (`loaded: false`)", body = ShadowStatus),
    Secured,
), security(("admin" = [])))]
pub async fn clear_shadow(
    _: Admin,
    State(state): State<Shared>,
) -> Result<Json<ShadowStatus>, ApiError> {
    gateway::clear_shadow(&state, "admin").await?;
    Ok(Json(shadow_status(None)))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddPep {
    /// 1 to 64 characters of `[A-Za-z0-9._-]`.
    #[serde(deserialize_with = "tollgate_core::text::id")]
    #[schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9._-]+$")]
    pub name: String,
}

#[derive(Serialize, ToSchema)]
pub struct PepKey {
    pub name: String,
    /// The PEP's bearer key; shown only here.
    pub key: String,
}

/// Register a policy enforcement point for the AuthZEN API; the key is shown once.
#[utoipa::path(post, path = "/v1/peps", request_body = AddPep, responses(
    (status = 201, description = "Registered (a name already registered gets a new key)", body = PepKey),
    JsonBody,
    Secured,
), security(("admin" = [])))]
pub async fn add_pep(
    _: Admin,
    State(state): State<Shared>,
    ApiJson(req): ApiJson<AddPep>,
) -> Result<(StatusCode, Json<PepKey>), ApiError> {
    let key = admin::add_pep(&state, &req.name).await?;
    Ok((
        StatusCode::CREATED,
        Json(PepKey {
            name: req.name,
            key,
        }),
    ))
}

/// A registered PEP (never its key or the key's hash).
#[derive(Serialize, ToSchema)]
pub struct PepView {
    pub name: String,
    pub created_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct PepList {
    pub peps: Vec<PepView>,
}

/// Every registered PEP, by name.
#[utoipa::path(get, path = "/v1/peps", responses((status = 200, description = "The PEPs", body = PepList), Secured), security(("admin" = [])))]
pub async fn list_peps(_: Admin, State(state): State<Shared>) -> Result<Json<PepList>, ApiError> {
    let peps = state
        .store
        .peps()
        .await?
        .into_iter()
        .map(|p| PepView {
            name: p.name,
            created_at: tollgate_core::clock::rfc3339(p.created_at),
        })
        .collect();
    Ok(Json(PepList { peps }))
}

/// Offboard a PEP: its key fails on the next request. Audited, `pep.removed`.
#[utoipa::path(delete, path = "/v1/peps/{name}", params(("name" = doc::Id, Path)), responses((status = 204, description = "Removed"), BadInput, Secured, NotFound), security(("admin" = [])))]
pub async fn remove_pep(
    _: Admin,
    State(state): State<Shared>,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    admin::remove_pep(&state, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The MCP gateway's upstream servers: whether each is connected, its last
/// failure and when it is tried again, and its tools with the catalog
/// operation each is bound to (`null`: not offered to agents).
#[utoipa::path(get, path = "/v1/mcp/upstreams", responses((status = 200, description = "The upstreams, in configuration order", body = Upstreams), Secured), security(("admin" = [])))]
pub async fn mcp_upstreams(_: Admin, State(state): State<Shared>) -> Json<Upstreams> {
    let pack = state.pack.load_full();
    let upstreams: Vec<Value> = state
        .upstreams
        .iter()
        .map(|u| u.status(pack.catalog()))
        .collect();
    Json(Upstreams { upstreams })
}

#[derive(Serialize, ToSchema)]
pub struct Upstreams {
    #[schema(value_type = Vec<doc::UpstreamStatus>)]
    pub upstreams: Vec<Value>,
}
