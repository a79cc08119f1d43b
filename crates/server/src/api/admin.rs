//! Admin endpoints: kill switch, revocation, task and audit views, policy
//! reload, PEP keys.

use crate::auth::{Admin, ApiJson, ApiPath, ApiQuery, Shared};
use crate::error::ApiError;
use crate::state::random_token;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tollgate_audit::AuditEvent;
use tollgate_core::{sha256_hex, SpiffeId, TaskStatus};
use tollgate_store::{AuditQuery, Batch, Change, Pep, TaskFilter};
use utoipa::{IntoParams, ToSchema};

/// Kill switch: every agent decision denies until unfrozen. Survives restarts.
#[utoipa::path(post, path = "/v1/freeze", responses((status = 200)), security(("admin" = [])))]
pub async fn freeze(_: Admin, State(state): State<Shared>) -> Result<Json<Value>, ApiError> {
    state.set_frozen(true, "admin").await?;
    Ok(Json(json!({"frozen": true})))
}

#[utoipa::path(post, path = "/v1/unfreeze", responses((status = 200)), security(("admin" = [])))]
pub async fn unfreeze(_: Admin, State(state): State<Shared>) -> Result<Json<Value>, ApiError> {
    state.set_frozen(false, "admin").await?;
    Ok(Json(json!({"frozen": false})))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Revocation {
    #[serde(default, deserialize_with = "tollgate_core::text::opt_id")]
    pub task_id: Option<String>,
    /// SPIFFE ID: revokes all its tasks, and it gets no SVID until re-registered.
    #[serde(default, deserialize_with = "tollgate_core::text::opt_id")]
    pub agent: Option<String>,
    #[serde(default, deserialize_with = "tollgate_core::text::opt_id")]
    pub incident_id: Option<String>,
    pub reason: Option<String>,
}

/// Revoke a task, every task of an agent, or every task of an incident.
#[utoipa::path(post, path = "/v1/revocations", request_body = Revocation, responses((status = 200)), security(("admin" = [])))]
pub async fn revoke(
    _: Admin,
    State(state): State<Shared>,
    ApiJson(req): ApiJson<Revocation>,
) -> Result<Json<Value>, ApiError> {
    let now = state.now();
    let reason = req
        .reason
        .clone()
        .unwrap_or_else(|| "revoked by an admin".into());
    let targets = [
        req.task_id.is_some(),
        req.agent.is_some(),
        req.incident_id.is_some(),
    ];
    if targets.iter().filter(|t| **t).count() != 1 {
        return Err(ApiError::bad_request(
            "give exactly one of task_id, agent, incident_id",
        ));
    }
    let ended = |t: &tollgate_core::Task| {
        AuditEvent::new(now, "task.revoked", "admin")
            .agent(t.agent.clone())
            .task(t.id.clone())
            .incident(t.incident_id.clone())
            .outcome("revoked")
            .detail(json!({"reason": reason}))
    };
    let mut batch = Batch::default();
    let mut revoked = vec![];
    if let Some(id) = &req.task_id {
        let task = state
            .store
            .task(id)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("task {id}")))?;
        if task.status != TaskStatus::Active {
            return Err(ApiError::Conflict(format!(
                "task {id} is already {}",
                task.status
            )));
        }
        batch = batch
            .change(Change::EndTask {
                task_id: id.clone(),
                status: TaskStatus::Revoked,
                reason: reason.clone(),
            })
            .event(ended(&task));
        revoked.push(id.clone());
        // Revoking a task revokes every task delegated from it.
        let children = crate::api::lifecycle::active_descendants(&state, id).await?;
        revoked.extend(children.iter().map(|t| t.id.clone()));
        batch = crate::api::lifecycle::revoke_descendants(
            batch,
            id,
            &children,
            &format!("parent task {id} was revoked: {reason}"),
            "admin",
            now,
        );
    } else if let Some(agent) = &req.agent {
        let id = SpiffeId::parse(agent)
            .map_err(|e| ApiError::bad_request(format!("agent: {e}")))?
            .to_string();
        if state.store.agent(&id).await?.is_none() {
            return Err(ApiError::NotFound(format!("agent {id}")));
        }
        let tasks = state
            .store
            .tasks(TaskFilter {
                agent: Some(id.clone()),
                status: Some(TaskStatus::Active),
                limit: 100_000,
                ..Default::default()
            })
            .await?;
        for t in &tasks {
            batch = batch.event(ended(t));
            revoked.push(t.id.clone());
        }
        // Work its tasks delegated to other agents dies with them; a task
        // reachable twice (self-delegation) is audited once.
        let mut seen: std::collections::BTreeSet<String> =
            tasks.iter().map(|t| t.id.clone()).collect();
        for t in &tasks {
            let children: Vec<_> = crate::api::lifecycle::active_descendants(&state, &t.id)
                .await?
                .into_iter()
                .filter(|c| seen.insert(c.id.clone()))
                .collect();
            revoked.extend(children.iter().map(|c| c.id.clone()));
            batch = crate::api::lifecycle::revoke_descendants(
                batch,
                &t.id,
                &children,
                &format!("parent task {} was revoked: {reason}", t.id),
                "admin",
                now,
            );
        }
        batch = batch
            .change(Change::SetAgentRevoked {
                spiffe_id: id.clone(),
                revoked: true,
            })
            .change(Change::EndAgentTasks {
                spiffe_id: id.clone(),
                reason: reason.clone(),
            })
            .event(
                AuditEvent::new(now, "agent.revoked", "admin")
                    .agent(id)
                    .outcome("revoked")
                    .detail(json!({"reason": reason})),
            );
    } else if let Some(inc) = &req.incident_id {
        let tasks = state
            .store
            .tasks(TaskFilter {
                incident_id: Some(inc.clone()),
                status: Some(TaskStatus::Active),
                limit: 100_000,
                ..Default::default()
            })
            .await?;
        for t in &tasks {
            batch = batch
                .change(Change::EndTask {
                    task_id: t.id.clone(),
                    status: TaskStatus::Revoked,
                    reason: reason.clone(),
                })
                .event(ended(t));
            revoked.push(t.id.clone());
        }
        batch = batch.event(
            AuditEvent::new(now, "incident.revoked", "admin")
                .incident(inc.clone())
                .detail(json!({"reason": reason, "tasks": revoked})),
        );
    }
    state.store.commit(batch).await?;
    Ok(Json(json!({"revoked_tasks": revoked})))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Release {
    #[serde(deserialize_with = "tollgate_core::text::id")]
    pub agent: String,
    pub reason: Option<String>,
}

/// Lift an agent's quarantine (set by a chain rule with `@on_deny("quarantine")`).
#[utoipa::path(post, path = "/v1/agents/release", request_body = Release, responses((status = 200), (status = 409)), security(("admin" = [])))]
pub async fn release(
    _: Admin,
    State(state): State<Shared>,
    ApiJson(req): ApiJson<Release>,
) -> Result<Json<Value>, ApiError> {
    let id = SpiffeId::parse(&req.agent)
        .map_err(|e| ApiError::bad_request(format!("agent: {e}")))?
        .to_string();
    if state.store.agent(&id).await?.is_none() {
        return Err(ApiError::NotFound(format!("agent {id}")));
    }
    if crate::decide::quarantined(&state, &id).await?.is_none() {
        return Err(ApiError::Conflict(format!("agent {id} is not quarantined")));
    }
    let now = state.now();
    let batch = Batch::default()
        .change(Change::PutSetting {
            key: crate::decide::quarantine_key(&id),
            value: String::new(),
        })
        .event(
            AuditEvent::new(now, "agent.released", "admin")
                .agent(id.clone())
                .outcome("released")
                .detail(json!({"reason": req.reason})),
        );
    state.store.commit(batch).await?;
    Ok(Json(json!({"agent": id, "quarantined": false})))
}

#[derive(Deserialize, IntoParams)]
pub struct TaskListQuery {
    pub agent: Option<String>,
    pub incident: Option<String>,
    pub status: Option<String>,
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
    pub status: String,
    pub status_reason: Option<String>,
    pub parent_task_id: Option<String>,
    #[schema(value_type = Object)]
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
            status: t.status.as_str().into(),
            status_reason: t.status_reason,
            parent_task_id: t.parent_task_id,
            scope: t.scope,
            created_at: rfc3339(t.created_at),
            expires_at: rfc3339(t.expires_at),
            max_expires_at: rfc3339(t.max_expires_at),
        }
    }
}

#[utoipa::path(get, path = "/v1/tasks", params(TaskListQuery), responses((status = 200, body = Vec<TaskView>)), security(("admin" = [])))]
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

#[utoipa::path(get, path = "/v1/tasks/{id}", params(("id" = String, Path)), responses((status = 200, body = TaskView), (status = 404)), security(("admin" = [])))]
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
pub struct AuditListQuery {
    pub incident: Option<String>,
    pub task: Option<String>,
    pub agent: Option<String>,
    /// Entries carrying this request id (decision, approval steps, result).
    pub request: Option<String>,
    /// Only entries after this sequence number (paging).
    pub after: Option<u64>,
    pub limit: Option<usize>,
}

/// Audit entries, oldest first, paged by `after`.
#[utoipa::path(get, path = "/v1/audit", params(AuditListQuery), responses((status = 200)), security(("admin" = [])))]
pub async fn audit(
    _: Admin,
    State(state): State<Shared>,
    ApiQuery(q): ApiQuery<AuditListQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    if let Some(r) = &q.request {
        let entries = state.store.audit_by_request(r).await?;
        return Ok(Json(json!({"entries": entries, "next_after": null})));
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
    Ok(Json(json!({"entries": entries, "next_after": next_after})))
}

/// Reload the policy pack; an invalid pack is refused (422) and the old one stays live.
#[utoipa::path(post, path = "/v1/policies/reload", responses((status = 200), (status = 422)), security(("admin" = [])))]
pub async fn reload(_: Admin, State(state): State<Shared>) -> Result<Json<Value>, ApiError> {
    let digest = state.reload_pack("api").await?;
    let pack = state.pack.load();
    Ok(Json(
        json!({"digest": digest, "policies": pack.policy_count()}),
    ))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddPep {
    #[serde(deserialize_with = "tollgate_core::text::id")]
    pub name: String,
}

/// Register a policy enforcement point for the AuthZEN API; the key is shown once.
#[utoipa::path(post, path = "/v1/peps", request_body = AddPep, responses((status = 201)), security(("admin" = [])))]
pub async fn add_pep(
    _: Admin,
    State(state): State<Shared>,
    ApiJson(req): ApiJson<AddPep>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let name_ok = !req.name.is_empty()
        && req.name.len() <= 64
        && req
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !name_ok {
        return Err(ApiError::bad_request(
            "name must be 1-64 characters of [A-Za-z0-9._-]",
        ));
    }
    let now = state.now();
    let key = random_token("tgp_");
    let batch = Batch::default()
        .change(Change::PutPep(Pep {
            name: req.name.clone(),
            key_hash: sha256_hex(key.as_bytes()),
            created_at: now,
        }))
        .event(AuditEvent::new(now, "pep.registered", "admin").detail(json!({"name": req.name})));
    state.store.commit(batch).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"name": req.name, "key": key})),
    ))
}

/// The MCP gateway's upstream servers: whether each is connected, its last
/// failure and when it is tried again, and its tools with the catalog
/// operation each is bound to (`null`: not offered to agents).
#[utoipa::path(get, path = "/v1/mcp/upstreams", responses((status = 200)), security(("admin" = [])))]
pub async fn mcp_upstreams(_: Admin, State(state): State<Shared>) -> Json<Value> {
    let pack = state.pack.load_full();
    let upstreams: Vec<Value> = state
        .upstreams
        .iter()
        .map(|u| u.status(pack.catalog()))
        .collect();
    Json(json!({"upstreams": upstreams}))
}
