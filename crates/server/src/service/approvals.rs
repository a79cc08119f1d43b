//! The approval workflow around the pure state machine in
//! `tollgate_core::approval`: creating approvals for `approval_required`
//! decisions, spending them exactly once, votes, expiry and escalation, and
//! withdrawal when the request is abandoned.
//!
//! Every transition is committed as `UpdateApproval { expected_version }`
//! together with its audit entries, so racing transitions resolve to one
//! winner and every step carries the approval id and request hash.

use super::gate::Evaluated;
use super::Error;
use crate::state::AppState;
use serde_json::{json, Value};
use std::sync::Arc;
use tollgate_audit::AuditEvent;
use tollgate_core::{
    Agent, Approval, ApprovalError, ApprovalStatus, EventKind, Outcome, Task, UnixTime, Vote,
};
use tollgate_store::{ApprovalFilter, Batch, Change, StoreError};

/// `approval.refused`, filed under the presenting agent's task (not the
/// approval's: presenting someone else's approval is on the presenter).
pub fn refused_event(agent: &Agent, task: &Task, now: UnixTime, request_id: &str) -> AuditEvent {
    AuditEvent::new(now, EventKind::ApprovalRefused, agent.spiffe_id.clone())
        .task(task.id.clone())
        .incident(task.incident_id.clone())
        .agent(agent.spiffe_id.clone())
        .request(request_id)
        .outcome("refused")
}

/// An audit event about an approval, with its correlation ids.
pub fn event(a: Option<&Approval>, kind: EventKind, actor: &str, now: UnixTime) -> AuditEvent {
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

pub fn detail(a: &Approval, extra: Value) -> Value {
    let mut d = json!({
        "approval_id": a.id, "request_hash": a.request_hash, "action": a.action, "resource": a.resource,
        "status": a.status.as_str(), "required": a.required, "votes": a.votes.len(),
    });
    if let (Some(m), Value::Object(x)) = (d.as_object_mut(), extra) {
        m.extend(x);
    }
    d
}

/// Commit an approval transition with its audit entries (and the webhook
/// messages of `notify`, queued in the same commit), then wake waiters.
async fn save(
    state: &Arc<AppState>,
    a: &Approval,
    expected: u64,
    events: Vec<AuditEvent>,
    notify: Option<EventKind>,
) -> Result<(), Error> {
    let mut batch = Batch::default().change(Change::UpdateApproval {
        approval: a.clone(),
        expected_version: expected,
    });
    batch.audit = events;
    if let Some(kind) = notify {
        let now = state.now();
        batch.changes.extend(crate::webhooks::approval_messages(
            &state.config,
            kind,
            a,
            now,
        ));
    }
    state.store.commit(batch).await.map_err(|e| match e {
        StoreError::Conflict(_) => {
            Error::Conflict(format!("approval {} changed concurrently; retry", a.id))
        }
        e => e.into(),
    })?;
    state.approval_events.notify_waiters();
    if notify.is_some() {
        state.outbox_ready.notify_one();
    }
    Ok(())
}

/// Load an approval, expiring it (durably, with its audit entry and
/// webhook) if its time has come.
pub async fn load(state: &Arc<AppState>, id: &str) -> Result<Approval, Error> {
    let mut a = state
        .store
        .approval(id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("approval {id}")))?;
    let expected = a.version;
    let now = state.now();
    if a.expire_if_due(now) {
        let ev = event(Some(&a), EventKind::ApprovalExpired, "tollgate", now)
            .outcome("expired")
            .detail(detail(&a, json!({})));
        match save(
            state,
            &a,
            expected,
            vec![ev],
            Some(EventKind::ApprovalExpired),
        )
        .await
        {
            Ok(()) => {}
            // Someone else expired or decided it first: read their result.
            Err(Error::Conflict(_)) => return Box::pin(load(state, id)).await,
            Err(e) => return Err(e),
        }
    }
    Ok(a)
}

/// Who gave up on an approval's request, and why.
pub struct Withdrawal<'a> {
    /// The task that made the request.
    pub task: &'a Task,
    /// The agent whose request it was.
    pub agent: &'a str,
    /// Who gave it up: the agent, or `tollgate` for a call whose replica stopped.
    pub actor: &'a str,
    pub reason: &'a str,
}

/// Withdraw the approval of a request nobody waits for any more (a held MCP
/// call whose client left), so that a vote cast later grants nothing.
/// `record` builds, for the commit's time, the entry saying why the request
/// was given up: it is committed first, in the same batch, and alone when
/// the approval is gone or already settled. A lost race with a vote is
/// retried on the approval as it now stands; after 3 lost races, `Conflict`.
pub async fn withdraw(
    state: &AppState,
    approval_id: &str,
    w: &Withdrawal<'_>,
    record: impl Fn(UnixTime) -> AuditEvent,
) -> Result<(), Error> {
    for _ in 0..3 {
        let now = state.now();
        let mut batch = Batch::audit_only(record(now));
        match state.store.approval(approval_id).await {
            Ok(Some(mut a)) => {
                let expected_version = a.version;
                if a.withdraw(now) {
                    batch = batch
                        .change(Change::UpdateApproval {
                            approval: a.clone(),
                            expected_version,
                        })
                        .event(
                            AuditEvent::new(now, EventKind::ApprovalWithdrawn, w.actor)
                                .agent(w.agent)
                                .task(w.task.id.clone())
                                .incident(w.task.incident_id.clone())
                                .request(a.request_id.clone())
                                .outcome("withdrawn")
                                .detail(json!({"approval_id": approval_id, "reason": w.reason})),
                        );
                }
            }
            Ok(None) => {}
            // The abandonment is still worth recording without the withdrawal.
            Err(e) => tracing::error!(error = %e, "could not read an abandoned call's approval"),
        }
        match state.store.commit(batch).await {
            Ok(_) => {
                state.approval_events.notify_waiters();
                return Ok(());
            }
            Err(StoreError::Conflict(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::Conflict(format!(
        "approval {approval_id} changed concurrently 3 times; not withdrawn"
    )))
}

/// Who is voting.
#[derive(Debug, Clone, PartialEq, Eq)]
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
) -> Result<Approval, Error> {
    let mut a = load(state, id).await?;
    let now = state.now();
    let refuse = |a: &Approval, why: String| {
        event(Some(a), EventKind::ApprovalVoteRefused, &voter.name, now)
            .outcome("refused")
            .detail(detail(
                a,
                json!({"approver": voter.name, "role": voter.role, "reason": why}),
            ))
    };
    let policies = match voting_rights(state, &a, voter, now).await? {
        Ok(policies) => policies,
        Err(refusal) => {
            state
                .store
                .commit(Batch::audit_only(refuse(&a, refusal.to_string())))
                .await?;
            return Err(refusal);
        }
    };
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
                event(Some(&a), EventKind::ApprovalExpired, "tollgate", now)
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
        return Err(Error::Conflict(why));
    }
    let mut events = vec![event(Some(&a), EventKind::ApprovalVote, &voter.name, now)
        .outcome(if approve { "approve" } else { "deny" })
        .detail(detail(&a, json!({"approver": voter.name, "role": voter.role, "via": voter.via, "reason": reason, "policies": policies})))];
    let decided = a.status != before;
    if decided {
        events.push(
            event(Some(&a), EventKind::ApprovalDecided, &voter.name, now)
                .outcome(a.status.as_str())
                .detail(detail(&a, json!({}))),
        );
    }
    let notify = decided.then_some(EventKind::ApprovalDecided);
    save(state, &a, expected, events, notify).await?;
    Ok(a)
}

/// May `voter` vote on `a` now? `Ok(Err(refusal))` says why not (the
/// caller audits it); `Ok(Ok(policies))` names the policies that let them.
async fn voting_rights(
    state: &AppState,
    a: &Approval,
    voter: &Voter,
    now: UnixTime,
) -> Result<Result<Vec<String>, Error>, Error> {
    if a.status != ApprovalStatus::Pending {
        let why = format!("approval {} is already {}", a.id, a.status.as_str());
        return Ok(Err(Error::Conflict(why)));
    }
    // An approval of a task that has ended can never be used: no votes on it.
    let live = state
        .store
        .task(&a.task_id)
        .await?
        .is_some_and(|t| t.is_live(now));
    if !live {
        let why = format!(
            "task {} of approval {} is no longer active",
            a.task_id, a.id
        );
        return Ok(Err(Error::Conflict(why)));
    }
    // Separation of duties: agents never approve, least of all themselves.
    if voter.name.starts_with("spiffe://") || voter.name == a.agent {
        return Ok(Err(Error::Forbidden(
            "an agent identity can never approve".into(),
        )));
    }
    let incident = state.store.incident(&a.incident_id).await?.ok_or_else(|| {
        Error::Internal(format!(
            "incident {} of approval {} is missing",
            a.incident_id, a.id
        ))
    })?;
    let is_owner = voter.name.eq_ignore_ascii_case(&a.agent_owner);
    let facts = tollgate_policy::ApproveFacts {
        approver_name: &voter.name,
        approver_role: &voter.role,
        approval: a,
        incident: &incident,
        is_agent_owner: is_owner,
        now,
    };
    let decision =
        Evaluated::from(state.pack.load().decide_approve(&facts)).into_decision("approve")?;
    if decision.outcome != Outcome::Allow {
        return Ok(Err(Error::Forbidden(format!(
            "{} may not decide this approval: {}",
            voter.name,
            decision.reasons.join("; ")
        ))));
    }
    if is_owner && !decision.owner_may_approve {
        return Ok(Err(Error::Forbidden(format!(
            "{} owns the requesting agent and may not approve its requests",
            voter.name
        ))));
    }
    Ok(Ok(decision.policies))
}

/// Expire due approvals and escalate long-pending ones. Run every second by
/// the server; tests call it directly after moving the clock.
pub async fn sweep(state: &Arc<AppState>) -> Result<(), Error> {
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
            let ev = event(Some(&e), EventKind::ApprovalEscalated, "tollgate", now)
                .outcome("pending")
                .detail(detail(
                    &e,
                    json!({"pending_for_seconds": now - e.created_at}),
                ));
            match save(
                state,
                &e,
                a.version,
                vec![ev],
                Some(EventKind::ApprovalEscalated),
            )
            .await
            {
                Ok(()) | Err(Error::Conflict(_)) => {}
                Err(err) => return Err(err),
            }
        }
    }
    Ok(())
}

/// The approval plus what an approver decides on: the operation's tier and
/// labels, the task, its evidence and its chain of decisions so far.
pub async fn describe(
    state: &AppState,
    pack: &tollgate_policy::PolicyPack,
    a: &tollgate_core::Approval,
) -> Result<crate::views::ApprovalDetail, Error> {
    let op = pack.catalog().operation(&a.action);
    let task = state
        .store
        .task(&a.task_id)
        .await?
        .map(|t| crate::views::ApprovalTask {
            intent: t.intent,
            playbook: t.playbook,
            environment: t.environment,
            status: t.status.into(),
        });
    let evidence = state
        .store
        .evidence_for_task(&a.task_id)
        .await?
        .into_iter()
        .map(|e| crate::views::EvidenceView {
            id: e.id,
            resource: e.resource,
            kind: e.kind,
            sha256: e.sha256,
        })
        .collect();
    // The newest 200 decisions of the task, oldest first.
    let chain: Vec<_> = crate::service::checkpoints::task_entries(state, &a.task_id)
        .await?
        .into_iter()
        .filter(|e| e.event.kind == "decision" || e.event.kind == "authzen.decision")
        .collect();
    let skip = chain.len().saturating_sub(200);
    let chain = chain
        .iter()
        .skip(skip)
        .map(|e| crate::views::ChainStep {
            seq: e.seq,
            request_id: e.event.request_id.clone(),
            outcome: e.event.outcome.clone(),
            action: e.event.detail["action"].clone(),
            resource: e.event.detail["resource"].clone(),
            at: tollgate_core::clock::rfc3339(e.event.ts),
        })
        .collect();
    Ok(crate::views::ApprovalDetail {
        approval: crate::views::view(a),
        tier: op.map(|op| op.tier.as_str().to_string()),
        labels: op.map(|op| op.labels.clone()),
        reversible: op.map(|op| op.reversible),
        blast_radius: op.map(|op| op.blast_radius.clone()),
        task,
        evidence,
        chain,
    })
}
