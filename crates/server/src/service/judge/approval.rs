//! The approval part of an `approval_required` decision, pure: spend the
//! presented approval, or share the pending one for this exact request, or
//! open a new one. The store's preconditions (`UpdateApproval`'s version,
//! the one-pending-per-request index) make racing decisions resolve to one
//! winner; the loser is judged again on fresh facts.

use super::{ActionAsk, Prepared};
use crate::config::ServerConfig;
use crate::service::approvals::{detail, event, refused_event};
use serde_json::json;
use tollgate_audit::AuditEvent;
use tollgate_core::{Approval, ApprovalStatus, Decision, EventKind, Outcome, UnixTime};
use tollgate_store::{Change, StoredFacts};

/// What the approval workflow adds to a decision's commit.
#[derive(Default)]
pub struct Step {
    pub approval: Option<Approval>,
    pub changes: Vec<Change>,
    pub events: Vec<AuditEvent>,
    /// A new pending approval was created (`approval.created` after commit).
    pub created: bool,
}

pub fn step(
    config: &ServerConfig,
    ask: &ActionAsk<'_>,
    prepared: &Prepared,
    facts: &StoredFacts,
    decision: &mut Decision,
    now: UnixTime,
) -> Step {
    match ask.approval_id {
        Some(id) => spend(ask, prepared, facts, decision, id, now),
        None => find_or_open(config, ask, prepared, facts, decision, now),
    }
}

/// The agent presents an approval: spend it once, for this request only.
fn spend(
    ask: &ActionAsk<'_>,
    prepared: &Prepared,
    facts: &StoredFacts,
    decision: &mut Decision,
    id: &str,
    now: UnixTime,
) -> Step {
    let mut step = Step::default();
    let request_id = prepared.request_id.as_str();
    let request_hash = prepared.request_hash.as_str();
    // Another task's approval is treated as unknown: an agent learns
    // nothing about approvals outside its own task.
    let found = facts
        .presented_approval
        .clone()
        .filter(|a| a.id == id && a.task_id == ask.task.id);
    let Some(mut a) = found else {
        decision.outcome = Outcome::Deny;
        decision
            .reasons
            .push(format!("approval {id} does not exist in this task"));
        step.events
            .push(refused_event(ask.agent, ask.task, now, request_id).detail(
            json!({"approval_id": id, "request_hash": request_hash, "reason": "unknown approval"}),
        ));
        return step;
    };
    let expected = a.version;
    if a.expire_if_due(now) {
        step.events.push(
            event(Some(&a), EventKind::ApprovalExpired, "tollgate", now)
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
                event(Some(&a), EventKind::ApprovalUsed, &ask.agent.spiffe_id, now)
                    .request(request_id)
                    .outcome("used")
                    .detail(detail(&a, json!({"approvers": who}))),
            );
        }
        Err(reason) => {
            decision.outcome = Outcome::Deny;
            decision.reasons.push(reason.clone());
            // A replay, another task, or a changed request: refused and audited.
            step.events.push(
                refused_event(ask.agent, ask.task, now, request_id).detail(detail(
                    &a,
                    json!({"presented_request_hash": request_hash, "reason": reason}),
                )),
            );
        }
    }
    if a.version != expected {
        step.changes.push(Change::UpdateApproval {
            approval: a.clone(),
            expected_version: expected,
        });
    }
    step.approval = Some(a);
    step
}

/// No approval presented: share the pending one for this exact request, or
/// open one.
fn find_or_open(
    config: &ServerConfig,
    ask: &ActionAsk<'_>,
    prepared: &Prepared,
    facts: &StoredFacts,
    decision: &Decision,
    now: UnixTime,
) -> Step {
    let mut step = Step::default();
    // A stale one (expired, or collecting fewer approvals than policy now
    // demands) is not handed out; the sweeper expires it.
    if let Some(a) = facts.pending_approvals.iter().find(|a| {
        a.status == ApprovalStatus::Pending
            && a.request_hash == prepared.request_hash
            && a.expires_at > now
            && a.required >= decision.approvals_required
    }) {
        step.approval = Some(a.clone());
        return step;
    }
    let cfg = &config.approvals;
    let a = Approval {
        id: prepared.new_approval_id.clone(),
        version: 0,
        request_hash: prepared.request_hash.clone(),
        request_id: prepared.request_id.clone(),
        task_id: ask.task.id.clone(),
        agent: ask.agent.spiffe_id.clone(),
        agent_owner: ask.agent.owner.clone(),
        incident_id: ask.task.incident_id.clone(),
        action: ask.action.to_string(),
        resource: ask.resource.key(),
        request: json!({
            "resource": {"type": ask.resource.kind, "id": ask.resource.id, "attributes": ask.resource.attributes},
            "parameters": prepared.logged_parameters,
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
        event(
            Some(&a),
            EventKind::ApprovalCreated,
            &ask.agent.spiffe_id,
            now,
        )
        .outcome("pending")
        .detail(detail(
            &a,
            json!({"expires_at": a.expires_at, "deny_threshold": a.deny_threshold}),
        )),
    );
    step.created = true;
    step.approval = Some(a);
    step
}
