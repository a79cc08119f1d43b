//! Delegation, cascading revocation, incident lifecycle, introspection and
//! rollback plans.

use crate::api::doc::{self, BadInput, JsonBody, NotFound, Secured};
use crate::api::tasks::Refusal;
use crate::auth::{Admin, ApiJson, ApiPath, PepAuth, Shared, TaskAuth};
use crate::decide::new_id;
use crate::error::{ApiError, ErrorDetail};
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use tollgate_audit::AuditEvent;
use tollgate_core::clock::rfc3339;
use tollgate_core::{
    child_lifetime, Incident, IncidentStatus, Outcome, Severity, SpiffeId, Task, TaskStatus,
};
use tollgate_identity::{Actor, TaskGrant};
use tollgate_policy::{AgentFacts, DelegateFacts, TaskOpenFacts};
use tollgate_store::{Batch, Change, TaskFilter};
use utoipa::ToSchema;

/// Every active descendant of `root` (children, their children, …).
pub async fn active_descendants(state: &Shared, root: &str) -> Result<Vec<Task>, ApiError> {
    Ok(descendants(state, root)
        .await?
        .into_iter()
        .filter(|c| c.status == TaskStatus::Active)
        .collect())
}

/// Every task delegated from `root`, at any depth, ended ones included; a
/// parent always comes before its children.
pub async fn descendants(state: &Shared, root: &str) -> Result<Vec<Task>, ApiError> {
    let mut out = Vec::new();
    let mut frontier = vec![root.to_string()];
    while let Some(id) = frontier.pop() {
        let children = state
            .store
            .tasks(TaskFilter {
                parent_task_id: Some(id),
                limit: 10_000,
                ..Default::default()
            })
            .await?;
        for c in children {
            frontier.push(c.id.clone());
            out.push(c);
        }
    }
    Ok(out)
}

/// Revoke every active descendant of `root`: one audit entry for each one
/// known now, and an in-commit sweep of the whole subtree so that a child
/// delegated concurrently dies too.
pub fn revoke_descendants(
    batch: Batch,
    root: &str,
    known: &[Task],
    reason: &str,
    actor: &str,
    now: i64,
) -> Batch {
    let batch = batch.change(Change::EndDescendants {
        root_id: root.to_string(),
        reason: reason.to_string(),
    });
    known
        .iter()
        .fold(batch, |b, t| b.event(revoked_event(t, reason, actor, now)))
}

pub fn revoked_event(t: &Task, reason: &str, actor: &str, now: i64) -> AuditEvent {
    AuditEvent::new(now, "task.revoked", actor)
        .agent(t.agent.clone())
        .task(t.id.clone())
        .parent_task(t.parent_task_id.clone())
        .incident(t.incident_id.clone())
        .outcome("revoked")
        .detail(json!({"reason": reason}))
}

/// A task's place in its delegation tree, from one walk up the parents.
pub struct Ancestry {
    /// The top-level task (the task itself when it was not delegated).
    pub root: Task,
    /// 0 for a task an agent opened, 1 for its children, …
    pub depth: u32,
    /// Why the task cannot act although it is itself active: an ancestor ended.
    pub dead: Option<String>,
    /// The agents of the task and of every ancestor, the task's own first.
    pub agents: Vec<String>,
}

pub async fn ancestry(state: &AppState, task: &Task) -> Result<Ancestry, ApiError> {
    let mut root = task.clone();
    let mut depth = 0;
    let mut dead = None;
    let mut agents = vec![task.agent.clone()];
    while let Some(p) = root.parent_task_id.clone() {
        depth += 1;
        if depth > 64 {
            return Err(ApiError::Internal("delegation chain too deep".into()));
        }
        match state.store.task(&p).await? {
            Some(t) => {
                if dead.is_none() && t.status != TaskStatus::Active {
                    dead = Some(format!("parent task {} is {}", t.id, t.status));
                }
                agents.push(t.agent.clone());
                root = t;
            }
            None => {
                dead.get_or_insert_with(|| format!("parent task {p} is missing"));
                break;
            }
        }
    }
    Ok(Ancestry {
        root,
        depth,
        dead,
        agents,
    })
}

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
    let now = state.now();
    let parent = &auth.task;
    let child_id =
        SpiffeId::parse(&req.agent).map_err(|e| ApiError::bad_request(format!("agent: {e}")))?;
    let child_record = state.store.agent(&child_id.to_string()).await?;
    let actions: BTreeSet<String> = req.actions.iter().cloned().collect();
    let resources: BTreeSet<String> = req.resources.iter().cloned().collect();
    let request_id = new_id("req");
    let chain = ancestry(&state, parent).await?;
    let depth = chain.depth + 1;
    let pack = state.pack.load_full();
    let refuse = |reasons: Vec<String>, policies: Vec<String>| {
        AuditEvent::new(now, "task.delegation_refused", parent.agent.clone())
            .agent(parent.agent.clone())
            .task(parent.id.clone())
            .incident(parent.incident_id.clone())
            .request(request_id.clone())
            .outcome("deny")
            .detail(json!({"child_agent": child_id.to_string(), "actions": actions, "resources": resources, "ttl_seconds": req.ttl_seconds, "depth": depth, "reasons": reasons, "policies": policies}))
    };
    let child_agent = match child_record {
        Some(a) if !a.revoked => a,
        other => {
            let why = if other.is_some() {
                format!("agent {child_id} is revoked")
            } else {
                format!("agent {child_id} is not registered")
            };
            state
                .store
                .commit(Batch::audit_only(refuse(vec![why.clone()], vec![])))
                .await?;
            return Err(if other.is_some() {
                ApiError::Forbidden(why)
            } else {
                ApiError::bad_request(why)
            });
        }
    };
    // Attenuation and lifetime are the gateway's, before policy: a child is
    // never wider than its parent, whatever policy says.
    let checked = tollgate_core::check_receiver(
        &child_id.to_string(),
        chain.agents.iter().map(String::as_str),
    )
    .and_then(|()| parent.scope.attenuate(&actions, &resources))
    .and_then(|scope| {
        child_lifetime(
            parent,
            now,
            req.ttl_seconds,
            state.config.task_max_ttl_seconds,
            depth,
            state.config.max_delegation_depth,
        )
        .map(|l| (scope, l))
    });
    let (scope, (expires_at, max_expires_at)) = match checked {
        Ok(v) => v,
        Err(e) => {
            state
                .store
                .commit(Batch::audit_only(refuse(vec![e.to_string()], vec![])))
                .await?;
            let body = Refusal {
                decision: Some(doc::Outcome::Deny),
                request_id: Some(request_id),
                reasons: Some(vec![e.to_string()]),
                policies: None,
                error: ErrorDetail::new("delegation_refused", e.to_string()),
            };
            return Ok((StatusCode::FORBIDDEN, Json(body)).into_response());
        }
    };
    let incident = state
        .store
        .incident(&parent.incident_id)
        .await?
        .ok_or_else(|| ApiError::Internal("the task's incident is missing".into()))?;
    let parent_id =
        SpiffeId::parse(&parent.agent).map_err(|e| ApiError::Internal(e.to_string()))?;
    let facts = DelegateFacts {
        parent: AgentFacts {
            spiffe_id: &parent_id,
            owner: &auth.agent.owner,
        },
        child: AgentFacts {
            spiffe_id: &child_id,
            owner: &child_agent.owner,
        },
        task: parent,
        incident: &incident,
        actions: &actions,
        resources: &resources,
        ttl_seconds: req.ttl_seconds,
        depth,
        intent: &req.intent,
    };
    let quarantine = crate::decide::quarantined(&state, &parent.agent).await?;
    let decision = if let Some(why) = quarantine {
        tollgate_core::Decision::deny(why)
    } else if state.is_frozen() {
        tollgate_core::Decision::deny(
            "tollgate is frozen: every agent decision denies until an admin unfreezes",
        )
    } else {
        match pack.decide_delegate(&facts) {
            Ok(d) => d,
            Err(tollgate_policy::PolicyError::BadRequest(m)) => {
                return Err(ApiError::BadRequest {
                    code: "invalid_request",
                    message: m,
                })
            }
            Err(e) => tollgate_core::Decision::deny(format!(
                "policy evaluation failed; failing closed: {e}"
            )),
        }
    };
    if decision.outcome != Outcome::Allow {
        let mut decision = decision.clone();
        if decision.outcome == Outcome::ApprovalRequired {
            decision
                .reasons
                .push("delegation cannot wait for approval; refused".into());
        }
        state
            .store
            .commit(Batch::audit_only(refuse(
                decision.reasons.clone(),
                decision.policies.clone(),
            )))
            .await?;
        let body = Refusal {
            decision: Some(doc::Outcome::Deny),
            request_id: Some(request_id),
            error: ErrorDetail::new("delegation_refused", decision.reasons.join("; ")),
            reasons: Some(decision.reasons),
            policies: Some(decision.policies),
        };
        return Ok((StatusCode::FORBIDDEN, Json(body)).into_response());
    }
    let task = Task {
        id: new_id("task"),
        agent: child_id.to_string(),
        incident_id: parent.incident_id.clone(),
        environment: parent.environment.clone(),
        playbook: parent.playbook.clone(),
        intent: req.intent.clone(),
        scope: scope.clone(),
        parent_task_id: Some(parent.id.clone()),
        created_at: now,
        expires_at,
        max_expires_at,
        status: TaskStatus::Active,
        status_reason: None,
    };
    // RFC 8693: the child acts, on behalf of the parent's chain.
    let act = Actor {
        sub: parent.agent.clone(),
        act: auth.claims.act.clone().map(Box::new),
    };
    let jti = new_id("cred");
    let grant = TaskGrant {
        sub: task.agent.clone(),
        task_id: task.id.clone(),
        incident_id: task.incident_id.clone(),
        scope,
        iat: now,
        exp: expires_at,
        jti: jti.clone(),
        act: Some(act.clone()),
    };
    let (credential, _) = state
        .tokens
        .issue_task_credential(grant)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let batch = Batch::default()
        // The parent must still be live when the child is born.
        .change(Change::RequireTaskLive { task_id: parent.id.clone(), now })
        .change(Change::InsertTask(task.clone()))
        .event(
            AuditEvent::new(now, "task.delegated", parent.agent.clone())
                .agent(task.agent.clone())
                .task(task.id.clone())
                .parent_task(Some(parent.id.clone()))
                .incident(task.incident_id.clone())
                .request(request_id.clone())
                .outcome("allow")
                .detail(json!({
                    "from": parent.agent, "to": task.agent, "scope": task.scope, "depth": depth,
                    "expires_at": expires_at, "intent": req.intent, "act": act, "credential_jti": jti,
                    "policies": decision.policies, "reasons": decision.reasons, "policy_digest": pack.digest(),
                })),
        );
    state.store.commit(batch).await.map_err(|e| match e {
        tollgate_store::StoreError::Conflict(_) => {
            ApiError::Unauthorized(format!("task {} is no longer active", parent.id))
        }
        e => e.into(),
    })?;
    let body = Delegated {
        task_id: task.id,
        credential,
        expires_at: rfc3339(expires_at),
        request_id,
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
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
    let now = state.now();
    let before = state.store.incident(&id).await?;
    let mut incident = match (&before, &req.class, req.severity) {
        (Some(i), _, _) => i.clone(),
        (None, Some(class), Some(severity)) => Incident {
            id: id.clone(),
            class: class.clone(),
            severity,
            status: IncidentStatus::Open,
            updated_at: now,
        },
        (None, _, _) => {
            return Err(ApiError::NotFound(format!(
                "incident {id} (give class and severity to create it)"
            )))
        }
    };
    if let Some(s) = req.status {
        incident.status = s;
    }
    if let Some(c) = &req.class {
        incident.class = c.clone();
    }
    if let Some(s) = req.severity {
        incident.severity = s;
    }
    incident.updated_at = now;
    let active = state
        .store
        .tasks(TaskFilter {
            incident_id: Some(id.clone()),
            status: Some(TaskStatus::Active),
            limit: 100_000,
            ..Default::default()
        })
        .await?;
    let mut to_revoke: Vec<(Task, String)> = Vec::new();
    if incident.status != IncidentStatus::Open {
        let why = format!("incident {id} was {}", incident.status.as_str());
        to_revoke.extend(active.iter().map(|t| (t.clone(), why.clone())));
    } else if before
        .as_ref()
        .is_some_and(|b| b.class != incident.class || b.severity != incident.severity)
    {
        // Re-evaluate each open task as if it were opened now.
        let pack = state.pack.load_full();
        for t in &active {
            // Delegated tasks stand or fall with their parent.
            if t.parent_task_id.is_some() {
                continue;
            }
            let agent = state.store.agent(&t.agent).await?;
            let (Some(agent), Ok(aid)) = (agent, SpiffeId::parse(&t.agent)) else {
                // Cannot re-evaluate: fail closed.
                to_revoke.push((
                    t.clone(),
                    format!(
                        "incident {id} was reclassified and task {} could not be re-evaluated",
                        t.id
                    ),
                ));
                continue;
            };
            let facts = TaskOpenFacts {
                agent: AgentFacts {
                    spiffe_id: &aid,
                    owner: &agent.owner,
                },
                incident: &incident,
                environment: &t.environment,
                playbook: &t.playbook,
                intent: &t.intent,
                ttl_seconds: (t.expires_at - now).max(1),
                now,
            };
            let d = pack
                .decide_task_open(&facts)
                .unwrap_or_else(|e| tollgate_core::Decision::deny(e.to_string()));
            if d.outcome != Outcome::Allow {
                let why = format!(
                    "incident {id} was reclassified to {} / {} and policy no longer allows this task: {}",
                    incident.class,
                    incident.severity.as_str(),
                    d.reasons.join("; ")
                );
                to_revoke.push((t.clone(), why.clone()));
                for c in active_descendants(&state, &t.id).await? {
                    to_revoke.push((c, why.clone()));
                }
            }
        }
    }
    let mut batch = Batch::default().change(Change::UpsertIncident(incident.clone())).event(
        AuditEvent::new(now, "incident.updated", "admin").incident(id.clone()).detail(json!({
            "before": before, "after": incident, "reason": req.reason, "revoked_tasks": to_revoke.iter().map(|(t, _)| t.id.clone()).collect::<Vec<_>>(),
        })),
    );
    let mut seen = BTreeSet::new();
    for (t, why) in &to_revoke {
        if seen.insert(t.id.clone()) {
            batch = batch
                .change(Change::RevokeTask {
                    task_id: t.id.clone(),
                    reason: why.clone(),
                })
                .change(Change::EndDescendants {
                    root_id: t.id.clone(),
                    reason: why.clone(),
                })
                .event(revoked_event(t, why, "admin", now));
        }
    }
    state.store.commit(batch).await?;
    let kept_tasks = active
        .iter()
        .filter(|t| !seen.contains(&t.id))
        .map(|t| t.id.clone())
        .collect();
    Ok(Json(IncidentUpdated {
        incident,
        revoked_tasks: seen,
        kept_tasks,
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
        Some(t) => ancestry(&state, t).await?.dead.is_none(),
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
    let root = ancestry(&state, &task).await?.root;
    let steps = rollback_plan(&state, &task, &root.id).await?;
    Ok(Json(RollbackPlan { task_id: id, steps }))
}

#[derive(Serialize, ToSchema)]
pub struct RollbackPlan {
    pub task_id: String,
    #[schema(value_type = Vec<doc::RollbackStep>)]
    pub steps: Vec<Value>,
}

/// Every compensation recorded for the task and its delegated children,
/// newest first. A step whose compensation has since succeeded (run through
/// the MCP gateway's `tollgate_rollback`) is marked `"done": true`, whichever
/// task of the delegation tree ran it: a parent that undid its child's step
/// leaves nothing for the child to undo again.
/// `root_id`: the root of `task`'s delegation tree.
pub async fn rollback_plan(
    state: &Shared,
    task: &Task,
    root_id: &str,
) -> Result<Vec<Value>, ApiError> {
    let below_root = descendants(state, root_id).await?;
    // The task's own subtree, from the tree already read (parents come first).
    let mut mine = std::collections::BTreeSet::from([task.id.clone()]);
    for t in &below_root {
        if t.parent_task_id.as_ref().is_some_and(|p| mine.contains(p)) {
            mine.insert(t.id.clone());
        }
    }
    let tree: Vec<String> = std::iter::once(root_id.to_string())
        .chain(below_root.into_iter().map(|t| t.id))
        .collect();
    let mut steps = Vec::new();
    let mut compensated = std::collections::BTreeSet::new();
    for t in &tree {
        let entries = crate::audit::task_entries(state, t).await?;
        for e in entries.iter().filter(|e| e.event.kind == "action.result") {
            if e.event.outcome.as_deref() == Some("succeeded") {
                if let Some(r) = e.event.detail["compensates"].as_str() {
                    compensated.insert(r.to_string());
                }
            }
            // A compensation is not itself undone by a rollback (entries
            // written before compensations stopped carrying one included).
            if !mine.contains(t)
                || e.event.detail["compensation"].is_null()
                || !e.event.detail["compensates"].is_null()
            {
                continue;
            }
            steps.push((e.seq, json!({
                "task_id": t,
                "request_id": e.event.request_id,
                "executed_at": rfc3339(e.event.ts),
                // `unknown`: a forwarded call that timed out or was cut off.
                "executed": {"action": e.event.detail["action"], "resource": e.event.detail["resource"], "command": e.event.detail["command"], "outcome": e.event.outcome},
                "compensation": e.event.detail["compensation"],
            })));
        }
    }
    steps.sort_by_key(|(seq, _)| std::cmp::Reverse(*seq));
    Ok(steps
        .into_iter()
        .map(|(_, mut s)| {
            let done = s["request_id"]
                .as_str()
                .is_some_and(|r| compensated.contains(r));
            s["done"] = json!(done);
            s
        })
        .collect())
}
