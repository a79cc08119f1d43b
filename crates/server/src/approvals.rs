//! The approval workflow around the pure state machine in
//! `tollgate_core::approval`: creating approvals for `approval_required`
//! decisions, spending them exactly once, votes, expiry and escalation.
//!
//! Every transition is committed as `UpdateApproval { expected_version }`
//! together with its audit entries, so racing transitions resolve to one
//! winner and every step carries the approval id and request hash.

use crate::decide::{new_id, ActionAsk, ApprovalStep};
use crate::error::ApiError;
use crate::state::AppState;
use serde_json::{json, Value};
use std::sync::Arc;
use tollgate_audit::AuditEvent;
use tollgate_core::clock::rfc3339;
use tollgate_core::{Approval, ApprovalError, ApprovalStatus, Decision, Outcome, UnixTime, Vote};
use tollgate_store::{ApprovalFilter, Batch, Change, StoreError};

/// `approval.refused`, filed under the presenting agent's task (not the
/// approval's: presenting someone else's approval is on the presenter).
pub fn refused_event(ask: &ActionAsk<'_>, now: UnixTime, request_id: &str) -> AuditEvent {
    AuditEvent::new(now, "approval.refused", ask.agent.spiffe_id.clone())
        .task(ask.task.id.clone())
        .incident(ask.task.incident_id.clone())
        .agent(ask.agent.spiffe_id.clone())
        .request(request_id)
        .outcome("refused")
}

/// An audit event about an approval, with its correlation ids.
pub fn event(a: Option<&Approval>, kind: &str, actor: &str, now: UnixTime) -> AuditEvent {
    let mut ev = AuditEvent::new(now, kind, actor);
    if let Some(a) = a {
        ev = ev
            .task(a.task_id.clone())
            .incident(a.incident_id.clone())
            .agent(a.agent.clone())
            .request(a.request_id.clone());
    }
    ev
}

fn detail(a: &Approval, extra: Value) -> Value {
    let mut d = json!({
        "approval_id": a.id, "request_hash": a.request_hash, "action": a.action, "resource": a.resource,
        "status": a.status.as_str(), "required": a.required, "votes": a.votes.len(),
    });
    if let (Some(m), Value::Object(x)) = (d.as_object_mut(), extra) {
        m.extend(x);
    }
    d
}

/// One approver's vote, as the API shows it.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct VoteView {
    pub approver: String,
    pub role: String,
    pub approve: bool,
    pub reason: String,
    pub at: String,
}

/// The API view of an approval.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ApprovalView {
    pub id: String,
    pub status: crate::api::doc::ApprovalStatus,
    pub task_id: String,
    pub incident_id: String,
    /// The requesting agent (SPIFFE ID).
    pub agent: String,
    pub action: String,
    /// `Type::id`.
    pub resource: String,
    /// What the approver is shown: resource attributes, parameters, intent.
    #[schema(value_type = crate::api::doc::Object)]
    pub request: Value,
    /// Canonical hash of (task, action, resource, parameters): the one request it is for.
    pub request_hash: String,
    /// The decision request that asked for it.
    pub request_id: String,
    /// Distinct approvals needed.
    pub required: u32,
    pub approvals: u32,
    pub denials: u32,
    pub deny_threshold: u32,
    pub votes: Vec<VoteView>,
    pub policies: Vec<String>,
    pub reasons: Vec<String>,
    pub escalated: bool,
    pub created_at: String,
    pub expires_at: String,
    pub decided_at: Option<String>,
    pub used_at: Option<String>,
    /// The request id of the one decision that spent it.
    pub used_by: Option<String>,
}

/// The API view of an approval.
pub fn view(a: &Approval) -> ApprovalView {
    let (yes, no) = a.tally();
    ApprovalView {
        id: a.id.clone(),
        status: a.status.into(),
        task_id: a.task_id.clone(),
        incident_id: a.incident_id.clone(),
        agent: a.agent.clone(),
        action: a.action.clone(),
        resource: a.resource.clone(),
        request: a.request.clone(),
        request_hash: a.request_hash.clone(),
        request_id: a.request_id.clone(),
        required: a.required,
        approvals: yes,
        denials: no,
        deny_threshold: a.deny_threshold,
        votes: a
            .votes
            .iter()
            .map(|v| VoteView {
                approver: v.approver.clone(),
                role: v.role.clone(),
                approve: v.approve,
                reason: v.reason.clone(),
                at: rfc3339(v.ts),
            })
            .collect(),
        policies: a.policies.clone(),
        reasons: a.reasons.clone(),
        escalated: a.escalated,
        created_at: rfc3339(a.created_at),
        expires_at: rfc3339(a.expires_at),
        decided_at: a.decided_at.map(rfc3339),
        used_at: a.used_at.map(rfc3339),
        used_by: a.used_by.clone(),
    }
}

/// The approval part of an `approval_required` decision: spend the
/// presented approval, or find or create the pending one.
pub async fn on_approval_required(
    state: &Arc<AppState>,
    ask: &ActionAsk<'_>,
    decision: &mut Decision,
    request_id: &str,
    request_hash: &str,
    now: UnixTime,
) -> Result<ApprovalStep, ApiError> {
    let mut step = ApprovalStep::default();
    let actor = ask.agent.spiffe_id.as_str();
    if let Some(id) = ask.approval_id {
        // Another task's approval is treated as unknown: an agent learns
        // nothing about approvals outside its own task.
        let found = state
            .store
            .approval(id)
            .await?
            .filter(|a| a.task_id == ask.task.id);
        let Some(mut a) = found else {
            decision.outcome = Outcome::Deny;
            decision
                .reasons
                .push(format!("approval {id} does not exist in this task"));
            step.events.push(
                                refused_event(ask, now, request_id)
                    .detail(json!({"approval_id": id, "request_hash": request_hash, "reason": "unknown approval"})),
            );
            return Ok(step);
        };
        let expected = a.version;
        if a.expire_if_due(now) {
            step.events.push(
                event(Some(&a), "approval.expired", "tollgate", now)
                    .outcome("expired")
                    .detail(detail(&a, json!({}))),
            );
        }
        let result = if a.required < decision.approvals_required {
            Err(format!(
                "policy now requires {} approvals; this approval collected {}",
                decision.approvals_required, a.required
            ))
        } else {
            a.consume(request_hash, &ask.task.id, request_id, now)
                .map_err(|e| e.to_string())
        };
        match result {
            Ok(()) => {
                decision.outcome = Outcome::Allow;
                let who: Vec<&str> = a
                    .votes
                    .iter()
                    .filter(|v| v.approve)
                    .map(|v| v.approver.as_str())
                    .collect();
                decision
                    .reasons
                    .push(format!("approved by {}", who.join(", ")));
                step.events.push(
                    event(Some(&a), "approval.used", actor, now)
                        .request(request_id)
                        .outcome("used")
                        .detail(detail(&a, json!({"approvers": who}))),
                );
                step.consuming = true;
            }
            Err(reason) => {
                decision.outcome = Outcome::Deny;
                decision.reasons.push(reason.clone());
                // A replay, another task, or a changed request: refused and audited.
                step.events
                    .push(refused_event(ask, now, request_id).detail(detail(
                        &a,
                        json!({"presented_request_hash": request_hash, "reason": reason}),
                    )));
            }
        }
        if a.version != expected {
            step.changes.push(Change::UpdateApproval {
                approval: a.clone(),
                expected_version: expected,
            });
        }
        step.approval = Some(a);
        return Ok(step);
    }

    // No approval presented: reuse the pending one for this exact request, or open one.
    let pending = state
        .store
        .approvals(ApprovalFilter {
            task_id: Some(ask.task.id.clone()),
            request_hash: Some(request_hash.to_string()),
            status: Some(ApprovalStatus::Pending),
            limit: 0,
        })
        .await?;
    // A stale one (expired, or collecting fewer approvals than policy now
    // demands) is not handed out; the sweeper expires it.
    if let Some(a) = pending
        .into_iter()
        .find(|a| a.expires_at > now && a.required >= decision.approvals_required)
    {
        step.approval = Some(a);
        return Ok(step);
    }
    let cfg = &state.config.approvals;
    let a = Approval {
        id: new_id("apr"),
        version: 0,
        request_hash: request_hash.to_string(),
        request_id: request_id.to_string(),
        task_id: ask.task.id.clone(),
        agent: ask.agent.spiffe_id.clone(),
        agent_owner: ask.agent.owner.clone(),
        incident_id: ask.task.incident_id.clone(),
        action: ask.action.to_string(),
        resource: ask.resource.key(),
        request: json!({
            "resource": {"type": ask.resource.kind, "id": ask.resource.id, "attributes": ask.resource.attributes},
            "parameters": ask.parameters,
            "intent": ask.intent,
        }),
        required: decision.approvals_required,
        deny_threshold: decision.deny_threshold.unwrap_or(cfg.deny_threshold),
        policies: decision.policies.clone(),
        reasons: decision.reasons.clone(),
        status: ApprovalStatus::Pending,
        votes: vec![],
        created_at: now,
        expires_at: now.saturating_add(
            decision
                .approval_ttl_seconds
                .unwrap_or(cfg.default_ttl_seconds),
        ),
        escalated: false,
        decided_at: None,
        used_at: None,
        used_by: None,
    };
    step.changes.push(Change::InsertApproval(a.clone()));
    step.events.push(
        event(Some(&a), "approval.created", actor, now)
            .outcome("pending")
            .detail(detail(
                &a,
                json!({"expires_at": a.expires_at, "deny_threshold": a.deny_threshold}),
            )),
    );
    step.created = true;
    step.approval = Some(a);
    Ok(step)
}

/// Commit an approval transition with its audit entries, then wake waiters.
async fn save(
    state: &Arc<AppState>,
    a: &Approval,
    expected: u64,
    events: Vec<AuditEvent>,
) -> Result<(), ApiError> {
    let mut batch = Batch::default().change(Change::UpdateApproval {
        approval: a.clone(),
        expected_version: expected,
    });
    batch.audit = events;
    state.store.commit(batch).await.map_err(|e| match e {
        StoreError::Conflict(_) => {
            ApiError::Conflict(format!("approval {} changed concurrently; retry", a.id))
        }
        e => e.into(),
    })?;
    state.approval_events.notify_waiters();
    Ok(())
}

/// Load an approval, expiring it (durably, with its audit entry and
/// webhook) if its time has come.
pub async fn load(state: &Arc<AppState>, id: &str) -> Result<Approval, ApiError> {
    let mut a = state
        .store
        .approval(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("approval {id}")))?;
    let expected = a.version;
    let now = state.now();
    if a.expire_if_due(now) {
        let ev = event(Some(&a), "approval.expired", "tollgate", now)
            .outcome("expired")
            .detail(detail(&a, json!({})));
        match save(state, &a, expected, vec![ev]).await {
            Ok(()) => crate::webhooks::fire(state, "approval.expired", &a),
            // Someone else expired or decided it first: read their result.
            Err(ApiError::Conflict(_)) => return Box::pin(load(state, id)).await,
            Err(e) => return Err(e),
        }
    }
    Ok(a)
}

/// Who is voting.
pub struct Voter {
    pub name: String,
    pub role: String,
    /// `key` or `oidc`.
    pub via: &'static str,
}

/// One approver's vote, with separation of duties and the `approve` policy.
pub async fn vote(
    state: &Arc<AppState>,
    id: &str,
    voter: &Voter,
    approve: bool,
    reason: &str,
) -> Result<Approval, ApiError> {
    let mut a = load(state, id).await?;
    let now = state.now();
    let refuse = |a: &Approval, why: String| {
        event(Some(a), "approval.vote_refused", &voter.name, now)
            .outcome("refused")
            .detail(detail(
                a,
                json!({"approver": voter.name, "role": voter.role, "reason": why}),
            ))
    };
    if a.status != ApprovalStatus::Pending {
        let why = format!("approval {id} is already {}", a.status.as_str());
        state
            .store
            .commit(Batch::audit_only(refuse(&a, why.clone())))
            .await?;
        return Err(ApiError::Conflict(why));
    }
    // An approval of a task that has ended can never be used: no votes on it.
    let live = state
        .store
        .task(&a.task_id)
        .await?
        .is_some_and(|t| t.is_live(now));
    if !live {
        let why = format!("task {} of approval {id} is no longer active", a.task_id);
        state
            .store
            .commit(Batch::audit_only(refuse(&a, why.clone())))
            .await?;
        return Err(ApiError::Conflict(why));
    }
    // Separation of duties: agents never approve, least of all themselves.
    if voter.name.starts_with("spiffe://") || voter.name == a.agent {
        let why = "an agent identity can never approve".to_string();
        state
            .store
            .commit(Batch::audit_only(refuse(&a, why.clone())))
            .await?;
        return Err(ApiError::Forbidden(why));
    }
    let incident = state.store.incident(&a.incident_id).await?.ok_or_else(|| {
        ApiError::Internal(format!(
            "incident {} of approval {id} is missing",
            a.incident_id
        ))
    })?;
    let is_owner = voter.name.eq_ignore_ascii_case(&a.agent_owner);
    let facts = tollgate_policy::ApproveFacts {
        approver_name: &voter.name,
        approver_role: &voter.role,
        approval: &a,
        incident: &incident,
        is_agent_owner: is_owner,
        now,
    };
    let decision = match state.pack.load().decide_approve(&facts) {
        Ok(d) => d,
        Err(e) => Decision::deny(format!("approve policy failed: {e}")),
    };
    let why = if decision.outcome != Outcome::Allow {
        Some(format!(
            "{} may not decide this approval: {}",
            voter.name,
            decision.reasons.join("; ")
        ))
    } else if is_owner && !decision.owner_may_approve {
        Some(format!(
            "{} owns the requesting agent and may not approve its requests",
            voter.name
        ))
    } else {
        None
    };
    if let Some(why) = why {
        state
            .store
            .commit(Batch::audit_only(refuse(&a, why.clone())))
            .await?;
        return Err(ApiError::Forbidden(why));
    }
    let expected = a.version;
    let before = a.status;
    let vote = Vote {
        approver: voter.name.clone(),
        role: voter.role.clone(),
        approve,
        reason: reason.to_string(),
        ts: now,
    };
    if let Err(e) = a.cast(vote, now) {
        // Voting twice, or too late: refused, and on the record.
        let why = e.to_string();
        let mut events = vec![refuse(&a, why.clone())];
        let mut batch = Batch::default();
        if matches!(e, ApprovalError::Expired) {
            events.push(
                event(Some(&a), "approval.expired", "tollgate", now)
                    .outcome("expired")
                    .detail(detail(&a, json!({}))),
            );
            batch = batch.change(Change::UpdateApproval {
                approval: a.clone(),
                expected_version: expected,
            });
        }
        batch.audit = events;
        state.store.commit(batch).await?;
        return Err(ApiError::Conflict(why));
    }
    let mut events = vec![event(Some(&a), "approval.vote", &voter.name, now)
        .outcome(if approve { "approve" } else { "deny" })
        .detail(detail(&a, json!({"approver": voter.name, "role": voter.role, "via": voter.via, "reason": reason, "policies": decision.policies})))];
    let decided = a.status != before;
    if decided {
        events.push(
            event(Some(&a), "approval.decided", &voter.name, now)
                .outcome(a.status.as_str())
                .detail(detail(&a, json!({}))),
        );
    }
    save(state, &a, expected, events).await?;
    if decided {
        crate::webhooks::fire(state, "approval.decided", &a);
    }
    Ok(a)
}

/// Expire due approvals and escalate long-pending ones. Run every second by
/// the server; tests call it directly after moving the clock.
pub async fn sweep(state: &Arc<AppState>) -> Result<(), ApiError> {
    let pending = state
        .store
        .approvals(ApprovalFilter {
            status: Some(ApprovalStatus::Pending),
            limit: 10_000,
            ..Default::default()
        })
        .await?;
    let now = state.now();
    let escalate_after = state.config.approvals.escalate_after_seconds;
    for a in pending {
        if a.expires_at <= now {
            load(state, &a.id).await?;
        } else if escalate_after > 0 && !a.escalated && now >= a.created_at + escalate_after {
            let mut e = a.clone();
            e.escalated = true;
            e.version += 1;
            let ev = event(Some(&e), "approval.escalated", "tollgate", now)
                .outcome("pending")
                .detail(detail(
                    &e,
                    json!({"pending_for_seconds": now - e.created_at}),
                ));
            match save(state, &e, a.version, vec![ev]).await {
                Ok(()) => crate::webhooks::fire(state, "approval.escalated", &e),
                Err(ApiError::Conflict(_)) => {}
                Err(err) => return Err(err),
            }
        }
    }
    Ok(())
}
