//! The decision path shared by `/v1/authorize` and AuthZEN: gateway checks,
//! policy, then a durable audit entry, and only then an answer.

use crate::approvals;
use crate::error::ApiError;
use crate::state::AppState;
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::Instant;
use tollgate_audit::AuditEvent;
use tollgate_core::{Agent, Approval, Decision, IncidentStatus, Outcome, SpiffeId, Task};
use tollgate_policy::{ActionFacts, AgentFacts, PolicyError, ResourceRef};
use tollgate_store::{Batch, Change, StoreError};

pub fn quarantine_key(agent: &str) -> String {
    format!("quarantine:{agent}")
}

/// Why `agent` is quarantined, if it is: every decision denies until an admin releases it.
pub async fn quarantined(state: &AppState, agent: &str) -> Result<Option<String>, ApiError> {
    Ok(state
        .store
        .setting(&quarantine_key(agent))
        .await?
        .filter(|r| !r.is_empty())
        .map(|r| format!("agent {agent} is quarantined ({r}); an admin must release it")))
}

/// Configured rate limits (`rate_limits:` in tollgate.yaml), counted over
/// allowed actions of the agent or of the task tree in a sliding window.
async fn rate_limited(
    state: &AppState,
    pack: &tollgate_policy::PolicyPack,
    ask: &ActionAsk<'_>,
    past: &[tollgate_core::Past],
    now: i64,
) -> Result<Option<Decision>, ApiError> {
    use crate::config::{RateResponse, RateScope};
    let Some(op) = pack.catalog().operation(ask.action) else {
        return Ok(None);
    };
    for rl in &state.config.rate_limits {
        let applies = |tier: &str, action: &str| {
            rl.tier.as_deref().is_none_or(|t| t == tier)
                && rl.action.as_deref().is_none_or(|a| a == action)
        };
        if !applies(op.tier.as_str(), ask.action) {
            continue;
        }
        let since = now - rl.per_seconds;
        let count = match rl.scope {
            RateScope::TaskTree => past
                .iter()
                .filter(|p| p.outcome == "allow" && p.ts > since && applies(&p.tier, &p.action))
                .count(),
            RateScope::Agent => state
                .store
                .count_allowed_by_agent(
                    &ask.agent.spiffe_id,
                    since + 1,
                    rl.tier.as_deref(),
                    rl.action.as_deref(),
                )
                .await?
                .try_into()
                .unwrap_or(usize::MAX),
        };
        if count >= rl.max {
            let scope = match rl.scope {
                RateScope::Agent => "this agent",
                RateScope::TaskTree => "this task tree",
            };
            let mut d = Decision::deny(format!(
                "rate limit {}: {scope} already did {count} such actions in the last {} s (max {})",
                rl.name, rl.per_seconds, rl.max
            ));
            d.policies = vec![format!("rate-limit:{}", rl.name)];
            if rl.on_exceed == RateResponse::Quarantine {
                d.quarantine_agent = true;
                d.revoke_task = true;
            }
            return Ok(Some(d));
        }
    }
    Ok(None)
}

pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}

pub struct ActionAsk<'a> {
    pub task: &'a Task,
    pub agent: &'a Agent,
    pub action: &'a str,
    pub resource: &'a ResourceRef,
    pub intent: &'a str,
    pub parameters: &'a Map<String, Value>,
    /// Who asked: the agent itself, or `pep:<name>` for AuthZEN.
    pub actor: String,
    /// `decision` or `authzen.decision`.
    pub kind: &'static str,
    pub traceparent: Option<String>,
    /// A granted approval the agent presents on its retry.
    pub approval_id: Option<&'a str>,
}

pub struct Decided {
    pub request_id: String,
    pub decision: Decision,
    /// The approval this decision created, found pending, or spent.
    pub approval: Option<Approval>,
}

/// Decide, audit durably, and only then return. If the audit write fails
/// the caller gets an error (503), never an unaudited allow.
pub async fn decide_action(state: &Arc<AppState>, ask: ActionAsk<'_>) -> Result<Decided, ApiError> {
    let started = Instant::now();
    let now = state.now();
    let request_id = new_id("req");
    // One pack for the whole decision, so the digest audited is the one that decided.
    let pack = state.pack.load_full();
    // Secret parameters reach Cedar as they are, but everything stored
    // (audit, approvals, the request hash that binds an approval) sees only
    // their keyed hash. A name that some operation declares sensitive is
    // secret on every action (`PolicyPack::secret_parameters`), and errors
    // about the request are formed without secret values by the pack itself.
    let logged = state.audit.redact(ask.parameters, pack.secret_parameters());
    // The history of the whole delegation tree: chain rules judge the
    // sequence, and a sub-agent's actions count for its parent.
    let tree = crate::api::lifecycle::ancestry(state, ask.task).await?;
    let root = tree.root;
    let (cached, generation) = state.history.snapshot(&root.id);
    let past: Arc<Vec<tollgate_core::Past>> = match cached {
        Some(p) => p,
        None => {
            let loaded: Vec<tollgate_core::Past> = state
                .store
                .actions_in_tree(&root.id, root.created_at)
                .await?
                .into_iter()
                .map(|a| tollgate_core::Past {
                    risk: pack
                        .catalog()
                        .operation(&a.action)
                        .map(|op| op.risk_weight())
                        .unwrap_or(0),
                    request_id: a.request_id,
                    action: a.action,
                    resource: a.resource,
                    tier: a.tier,
                    labels: a.labels,
                    outcome: a.outcome,
                    ts: a.ts,
                })
                .collect();
            state.history.fill(&root.id, Arc::new(loaded), generation)
        }
    };
    let history = tollgate_core::HistorySummary::from_past(&past, now);
    let decided = match tree.dead {
        // A delegated task lives only while its parents do (AuthZEN callers
        // reach here without the credential extractor that checks this too).
        Some(why) => Ok(Decision::deny(format!(
            "task {} cannot act: {why}",
            ask.task.id
        ))),
        None => gateway_decision(state, &pack, &ask, &history, &past, now).await,
    };
    let mut decision = match decided {
        Ok(d) => d,
        Err(ApiError::BadRequest { code, message }) => {
            // A malformed request changes nothing, but leaves a trace.
            let ev = base_event(&ask, now, &request_id)
                .outcome("refused")
                .detail(json!({
                    "action": ask.action, "resource": ask.resource.key(), "error": message,
                }));
            state.store.commit(Batch::audit_only(ev)).await?;
            // The request id finds the refusal in the audit log.
            return Err(ApiError::BadRequest {
                code,
                message: format!("{message} (request {request_id})"),
            });
        }
        Err(e) => return Err(e),
    };
    let ask = ActionAsk {
        parameters: &logged,
        ..ask
    };
    // Name the earlier actions that triggered a chain rule.
    for label in decision.chain_labels.clone() {
        for p in tollgate_core::history::triggers(&past, &label, now, 3600)
            .into_iter()
            .take(5)
        {
            decision.reasons.push(format!(
                "triggered by {} on {} ({}, {} s ago, labelled {label})",
                p.action,
                p.resource,
                p.request_id,
                now - p.ts
            ));
        }
    }
    // Let go of the history before the commit: while a decision holds it,
    // every other decision of the tree that commits must copy it to append.
    drop(past);
    let request_hash = tollgate_core::approval::request_hash(
        &ask.task.id,
        ask.action,
        &ask.resource.kind,
        &ask.resource.id,
        &Value::Object(ask.resource.attributes.clone()),
        &Value::Object(ask.parameters.clone()),
    );
    let mut step = ApprovalStep::default();
    if decision.outcome == Outcome::ApprovalRequired {
        step = approvals::on_approval_required(
            state,
            &ask,
            &mut decision,
            &request_id,
            &request_hash,
            now,
        )
        .await?;
    }
    let decision_event = |d: &Decision, approval: Option<&Approval>| {
        base_event(&ask, now, &request_id)
            .outcome(d.outcome.as_str())
            .detail(json!({
                "action": ask.action,
                "resource": ask.resource.key(),
                "resource_attributes": ask.resource.attributes,
                "intent": ask.intent,
                "parameters": ask.parameters,
                "policies": d.policies,
                "reasons": d.reasons,
                "obligations": d.obligations,
                "approvals_required": d.approvals_required,
                "approval_id": approval.map(|a| a.id.clone()),
                "request_hash": request_hash,
                "policy_digest": pack.digest(),
                "traceparent": ask.traceparent,
            }))
    };
    let mut audit = vec![decision_event(&decision, step.approval.as_ref())];
    audit.append(&mut step.events);
    // The task must still be live when the decision commits, not only
    // when it was read: a close or revocation in flight wins.
    let mut changes = vec![Change::RequireTaskLive {
        task_id: ask.task.id.clone(),
        now,
    }];
    changes.append(&mut step.changes);
    // This decision joins the tree's history (what later chain rules see):
    // recorded in the commit, and appended to the in-memory copy after it.
    let recorded = pack
        .catalog()
        .operation(ask.action)
        .map(|op| tollgate_core::Past {
            request_id: request_id.clone(),
            action: ask.action.to_string(),
            resource: ask.resource.key(),
            tier: op.tier.as_str().to_string(),
            labels: op.labels.clone(),
            outcome: decision.outcome.as_str().to_string(),
            risk: op.risk_weight(),
            ts: now,
        });
    if let Some(p) = &recorded {
        changes.push(Change::RecordAction(tollgate_store::ActionRecord {
            root_task_id: root.id.clone(),
            task_id: ask.task.id.clone(),
            agent: ask.agent.spiffe_id.clone(),
            request_id: p.request_id.clone(),
            action: p.action.clone(),
            resource: p.resource.clone(),
            tier: p.tier.clone(),
            labels: p.labels.clone(),
            outcome: p.outcome.clone(),
            ts: p.ts,
        }));
    }
    // A chain rule marked `@on_deny("revoke")` ends the task (and its
    // children) in the same commit as the denial: the next call fails.
    if decision.outcome == Outcome::Deny && decision.revoke_task {
        let why = format!(
            "revoked for deviation: {} (request {request_id})",
            decision.reasons.join("; ")
        );
        changes.push(Change::RevokeTask {
            task_id: ask.task.id.clone(),
            reason: why.clone(),
        });
        changes.push(Change::EndDescendants {
            root_id: ask.task.id.clone(),
            reason: why.clone(),
        });
        audit.push(crate::api::lifecycle::revoked_event(
            ask.task, &why, "tollgate", now,
        ));
        // Each delegated descendant gets its own entry, as in every cascade.
        for child in crate::api::lifecycle::active_descendants(state, &ask.task.id).await? {
            audit.push(crate::api::lifecycle::revoked_event(
                &child,
                &format!("parent task {} was {why}", ask.task.id),
                "tollgate",
                now,
            ));
        }
    }
    if decision.outcome == Outcome::Deny && decision.quarantine_agent {
        let why = format!("{} (request {request_id})", decision.reasons.join("; "));
        changes.push(Change::PutSetting {
            key: quarantine_key(&ask.agent.spiffe_id),
            value: why.clone(),
        });
        audit.push(
            AuditEvent::new(now, "agent.quarantined", "tollgate")
                .agent(ask.agent.spiffe_id.clone())
                .task(ask.task.id.clone())
                .incident(ask.task.incident_id.clone())
                .request(&request_id)
                .outcome("quarantined")
                .detail(json!({"reason": why, "policies": decision.policies})),
        );
    }
    let batch = Batch { changes, audit };
    match state.store.commit(batch).await {
        Ok(_) => {
            if let Some(p) = recorded {
                state.history.append(&root.id, p);
            }
        }
        Err(StoreError::Conflict(_)) => {
            // Something changed between our reads and our write. Find out
            // what, and still leave exactly one audited answer.
            let live = state
                .store
                .task(&ask.task.id)
                .await?
                .is_some_and(|t| t.is_live(now));
            if !live {
                // Closed or revoked while this request was in flight.
                let mut refused = decision.clone();
                refused.outcome = Outcome::Deny;
                refused
                    .reasons
                    .push("the task ended while this request was being decided".into());
                state
                    .store
                    .commit(Batch::audit_only(decision_event(&refused, None)))
                    .await?;
                return Err(ApiError::Unauthorized(format!(
                    "task {} is no longer active",
                    ask.task.id
                )));
            }
            let mut audit = Vec::new();
            if step.consuming {
                // Another request spent the approval first: one use wins.
                decision.outcome = Outcome::Deny;
                decision
                    .reasons
                    .push("the approval was used by a concurrent request".into());
                audit.push(
                    approvals::refused_event(&ask, now, &request_id).detail(json!({
                        "approval_id": step.approval.as_ref().map(|a| a.id.clone()),
                        "request_hash": request_hash, "reason": "used concurrently",
                    })),
                );
            }
            if step.created {
                // An identical request opened the pending approval first: share it.
                step.created = false;
                step.approval = state
                    .store
                    .approvals(tollgate_store::ApprovalFilter {
                        task_id: Some(ask.task.id.clone()),
                        request_hash: Some(request_hash.clone()),
                        status: Some(tollgate_core::ApprovalStatus::Pending),
                        limit: 0,
                    })
                    .await?
                    .pop();
            }
            audit.insert(0, decision_event(&decision, step.approval.as_ref()));
            state
                .store
                .commit(Batch {
                    changes: vec![],
                    audit,
                })
                .await?;
        }
        Err(e) => return Err(e.into()),
    }
    if decision.outcome == Outcome::Deny && decision.revoke_task {
        crate::webhooks::alert(
            state,
            "task.revoked",
            ask.task.id.clone(),
            format!(
                "task {} of {} revoked for deviation: {}",
                ask.task.id,
                ask.agent.spiffe_id,
                decision.reasons.join("; ")
            ),
            json!({"task_id": ask.task.id, "agent": ask.agent.spiffe_id, "incident_id": ask.task.incident_id,
                   "request_id": request_id, "action": ask.action, "resource": ask.resource.key(),
                   "policies": decision.policies, "reasons": decision.reasons}),
        );
    }
    if decision.outcome == Outcome::Deny && decision.quarantine_agent {
        crate::webhooks::alert(
            state,
            "agent.quarantined",
            ask.agent.spiffe_id.clone(),
            format!(
                "agent {} quarantined: {}",
                ask.agent.spiffe_id,
                decision.reasons.join("; ")
            ),
            json!({"agent": ask.agent.spiffe_id, "task_id": ask.task.id, "request_id": request_id, "policies": decision.policies}),
        );
    }
    if let Some(a) = &step.approval {
        if step.created {
            crate::webhooks::fire(state, "approval.created", a);
        }
        state.approval_events.notify_waiters();
    }
    state.metrics.record(
        ask.kind,
        decision.outcome.as_str(),
        started.elapsed().as_secs_f64(),
    );
    Ok(Decided {
        request_id,
        decision,
        approval: step.approval,
    })
}

/// What the approval workflow adds to a decision's commit.
#[derive(Default)]
pub struct ApprovalStep {
    pub approval: Option<Approval>,
    pub changes: Vec<tollgate_store::Change>,
    pub events: Vec<AuditEvent>,
    /// A new pending approval was created (fire `approval.created` after commit).
    pub created: bool,
    /// The commit spends an approval; a version conflict means it lost a race.
    pub consuming: bool,
}

fn base_event(ask: &ActionAsk<'_>, now: i64, request_id: &str) -> AuditEvent {
    AuditEvent::new(now, ask.kind, ask.actor.clone())
        .agent(ask.agent.spiffe_id.clone())
        .task(ask.task.id.clone())
        .incident(ask.task.incident_id.clone())
        .request(request_id)
}

async fn gateway_decision(
    state: &AppState,
    pack: &tollgate_policy::PolicyPack,
    ask: &ActionAsk<'_>,
    history: &tollgate_core::HistorySummary,
    past: &[tollgate_core::Past],
    now: i64,
) -> Result<Decision, ApiError> {
    if state.is_frozen() {
        return Ok(Decision::deny(
            "tollgate is frozen: every agent decision denies until an admin unfreezes",
        ));
    }
    if let Some(why) = quarantined(state, &ask.agent.spiffe_id).await? {
        return Ok(Decision::deny(why));
    }
    if let Some(d) = rate_limited(state, pack, ask, past, now).await? {
        return Ok(d);
    }
    let Some(incident) = state.store.incident(&ask.task.incident_id).await? else {
        return Ok(Decision::deny(format!(
            "incident {} is unknown",
            ask.task.incident_id
        )));
    };
    if incident.status != IncidentStatus::Open {
        return Ok(Decision::deny(format!(
            "incident {} is {}",
            incident.id,
            incident.status.as_str()
        )));
    }
    let spiffe_id =
        SpiffeId::parse(&ask.agent.spiffe_id).map_err(|e| ApiError::Internal(e.to_string()))?;
    let evidence_present = state
        .store
        .has_evidence(&ask.task.id, &ask.resource.key())
        .await?;
    let facts = ActionFacts {
        agent: AgentFacts {
            spiffe_id: &spiffe_id,
            owner: &ask.agent.owner,
        },
        task: ask.task,
        incident: &incident,
        action: ask.action,
        resource: ask.resource,
        intent: ask.intent,
        parameters: ask.parameters,
        evidence_present,
        history,
        now,
    };
    match pack.decide_action(&facts) {
        Ok(d) => Ok(d),
        Err(PolicyError::BadRequest(m)) => Err(ApiError::BadRequest {
            code: "invalid_request",
            message: m,
        }),
        Err(e) => {
            // Anything else is the gateway's fault: deny, and say so in the log.
            tracing::error!(error = %e, "policy evaluation failed; failing closed");
            Ok(Decision::deny("policy evaluation failed; failing closed"))
        }
    }
}

/// The JSON answer of a decision, as `/v1/authorize` returns it.
/// The answer to `POST /v1/authorize` (and the structured content of a
/// refused MCP tool call).
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct DecisionView {
    pub decision: crate::api::doc::Outcome,
    /// Finds every audit entry of this request.
    pub request_id: String,
    pub reasons: Vec<String>,
    /// Ids of the determining policies.
    pub policies: Vec<String>,
    /// Conditions to meet first (`evidence-before`); absent when none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub obligations: Option<Vec<String>>,
    /// Distinct approvals needed (`approval_required` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approvals_required: Option<u32>,
    /// The approval created, found pending, or spent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval_status: Option<crate::api::doc::ApprovalStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval_expires_at: Option<String>,
}

impl From<&Decided> for DecisionView {
    fn from(d: &Decided) -> Self {
        DecisionView {
            decision: d.decision.outcome.into(),
            request_id: d.request_id.clone(),
            reasons: d.decision.reasons.clone(),
            policies: d.decision.policies.clone(),
            obligations: (!d.decision.obligations.is_empty())
                .then(|| d.decision.obligations.clone()),
            approvals_required: (d.decision.outcome == Outcome::ApprovalRequired)
                .then_some(d.decision.approvals_required),
            approval_id: d.approval.as_ref().map(|a| a.id.clone()),
            approval_status: d.approval.as_ref().map(|a| a.status.into()),
            approval_expires_at: d
                .approval
                .as_ref()
                .map(|a| tollgate_core::clock::rfc3339(a.expires_at)),
        }
    }
}

pub fn decision_json(d: &Decided) -> Value {
    json!(DecisionView::from(d))
}
