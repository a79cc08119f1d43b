//! Deciding an action, for `/v1/authorize`, AuthZEN and MCP `tools/call`
//! alike: gather the facts in one read, judge them purely, commit once.
//!
//! A commit whose precondition fails (the task ended, the approval was spent
//! or voted on, an identical request opened the pending approval first) is
//! not patched up: the facts are gathered again and judged again, so every
//! answer is the judgement of one consistent snapshot that was still true
//! when it committed.

use super::judge::{agent_count_queries, judge, ActionAsk, Effect, Prepared, Refusal, Verdict};
use super::{lifecycle, new_id, Error};
use crate::state::AppState;
use crate::views::DecisionView;
use serde_json::json;
use serde_json::Value;
use std::sync::Arc;
use std::time::Instant;
use tollgate_core::{Approval, Decision, EventKind};
use tollgate_policy::PolicyPack;
use tollgate_store::{FactsQuery, StoreError};

/// How often a decision is judged again after losing a race. Each loss means
/// another commit changed a fact this decision depended on; the next
/// judgement sees it (a spent approval, a shared pending one, an ended task),
/// so two rounds settle every race the store reports. The bound only keeps a
/// pathological storm from looping.
const ATTEMPTS: usize = 4;

pub struct Decided {
    pub request_id: String,
    pub decision: Decision,
    /// The approval this decision created, found pending, or spent.
    pub approval: Option<Approval>,
    /// The decision's audit entry as committed: what a result recorded
    /// against this decision refers to, so the MCP gateway need not read
    /// it back (`results::record_result`).
    pub entry: Option<DecisionEntry>,
}

/// A committed decision entry: its sequence number and the event as
/// committed.
#[derive(Debug, Clone)]
pub struct DecisionEntry {
    pub seq: u64,
    pub event: tollgate_audit::AuditEvent,
}

/// Decide, audit durably, and only then return. If the audit write fails
/// the caller gets an error (503), never an unaudited allow.
pub async fn decide_action(state: &Arc<AppState>, ask: ActionAsk<'_>) -> Result<Decided, Error> {
    let started = Instant::now();
    let started_at = std::time::SystemTime::now();
    // One pack for the whole decision, so the digest audited is the one that decided.
    let pack = state.pack.load_full();
    let shadow = state.shadow.load_full();
    let prepared = prepare(state, &pack, shadow.as_deref().map(|s| &s.pack), &ask);
    let mut attempt = 0;
    let (verdict, seqs) = loop {
        attempt += 1;
        let now = state.now();
        let facts = gather(state, &pack, &ask, &prepared, now).await?;
        let mut verdict = judge(
            &pack,
            shadow.as_deref().map(|s| &s.pack),
            &state.config,
            &ask,
            &prepared,
            &facts,
            now,
        );
        // Let go of the tree's history before the commit: while a decision
        // holds it, the store must copy it to append the next decision's rows.
        drop(facts);
        if let Some(error) = &verdict.evaluation_error {
            tracing::error!(%error, "policy evaluation failed; failing closed");
        }
        if let Some(reason) = &verdict.revokes {
            // Each delegated descendant gets its own entry, as in every cascade.
            let known = state.store.descendants(&ask.task.id).await?;
            let why = format!("parent task {} was {reason}", ask.task.id);
            lifecycle::cascade(&mut verdict.batch, ask.task, &known, &why, "tollgate", now);
        }
        // Webhooks go out through the outbox, queued in this very commit.
        let mut batch = verdict.batch.clone();
        batch
            .changes
            .extend(notifications(state, &verdict.effects, now));
        match state.store.commit(batch).await {
            Ok(seqs) => break (verdict, seqs),
            Err(StoreError::Conflict(c)) if attempt < ATTEMPTS => {
                tracing::debug!(conflict = %c, attempt, "decision raced a commit; judging again");
            }
            Err(StoreError::Conflict(c)) => {
                return Err(Error::Conflict(format!(
                    "the decision kept racing other changes ({c}); retry"
                )))
            }
            Err(e) => return Err(e.into()),
        }
    };
    let elapsed = started.elapsed();
    state.metrics.record(
        ask.kind.as_str(),
        verdict.decision.outcome.as_str(),
        elapsed.as_secs_f64(),
    );
    if let Some(diff) = verdict.shadow_diff {
        state
            .metrics
            .shadow_diff(diff.enforced.as_str(), diff.shadow.as_str());
    }
    // One line per decision for whoever watches the server. Agent-chosen
    // strings are logged with `?` (quoted, control characters escaped);
    // parameters never are (they may hold secrets).
    tracing::info!(
        target: "tollgate::decision",
        decision = verdict.decision.outcome.as_str(),
        action = ?ask.action,
        resource = ?ask.resource.key(),
        agent = ?ask.agent.spiffe_id,
        task = ?ask.task.id,
        policies = ?verdict.decision.policies,
        request = %prepared.request_id,
        latency_ms = elapsed.as_secs_f64() * 1e3,
        via = ask.kind.as_str(),
    );
    // The span of this decision in the caller's trace (when traces are on).
    state.telemetry.decision(crate::telemetry::DecisionSpan {
        traceparent: ask.traceparent.as_deref(),
        started: started_at,
        via: ask.kind.as_str(),
        outcome: verdict.decision.outcome.as_str(),
        action: ask.action,
        resource: ask.resource.key(),
        policies: &verdict.decision.policies,
        task: &ask.task.id,
        incident: &ask.task.incident_id,
        agent: ask.agent.spiffe_id.as_str(),
        request: &prepared.request_id,
    });
    finish(state, verdict, &seqs, prepared.request_id)
}

/// Ids, redaction and the request hash: everything judge needs that is not
/// a fact of the store and not a pure function of one.
fn prepare(
    state: &AppState,
    pack: &PolicyPack,
    shadow: Option<&PolicyPack>,
    ask: &ActionAsk<'_>,
) -> Prepared {
    // Secret parameters reach Cedar as they are, but everything stored
    // (audit, approvals, the request hash that binds an approval) sees only
    // their keyed hash. A name that some operation declares sensitive is
    // secret on every action (`PolicyPack::secret_parameters`).
    let logged_parameters = state.audit.redact(ask.parameters, pack.secret_parameters());
    let request_hash = tollgate_core::approval::request_hash(
        &ask.task.id,
        ask.action,
        &ask.resource.kind,
        &ask.resource.id,
        &Value::Object(ask.resource.attributes.clone()),
        &Value::Object(logged_parameters.clone()),
    );
    Prepared {
        request_id: new_id("req"),
        new_approval_id: new_id("apr"),
        logged_parameters,
        request_hash,
        // Which limits apply does not depend on the time, only their windows.
        agent_limits: agent_count_queries(&state.config, pack, ask.action, 0)
            .into_iter()
            .map(|(i, _)| i)
            .collect(),
        rule_scans: super::judge::rule_scans(
            &[Some(pack), shadow]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>(),
            ask.task,
            &ask.agent.spiffe_id,
            &ask.resource.key(),
        ),
    }
}

/// Every fact the decision needs, in one read of the store.
async fn gather(
    state: &AppState,
    pack: &PolicyPack,
    ask: &ActionAsk<'_>,
    prepared: &Prepared,
    now: i64,
) -> Result<tollgate_store::StoredFacts, Error> {
    let counts = agent_count_queries(&state.config, pack, ask.action, now);
    let query = FactsQuery {
        task_id: ask.task.id.clone(),
        resource: ask.resource.key(),
        presented_approval: ask.approval_id.map(str::to_string),
        request_hash: prepared.request_hash.clone(),
        agent_counts: counts.iter().map(|(_, q)| q.clone()).collect(),
        // Each scope from the start of its longest window (inclusive; the
        // rules' windows are open at the start, so this reads one second more).
        scans: prepared
            .rule_scans
            .iter()
            .map(|s| tollgate_store::HistoryScan {
                scope: s.scope,
                key: s.key.clone(),
                since: now.saturating_sub(s.window),
                actions: s.actions.as_ref().map(|a| a.iter().cloned().collect()),
                outcomes: s
                    .outcomes
                    .as_ref()
                    .map(|o| o.iter().map(|o| o.as_str().to_string()).collect()),
            })
            .collect(),
    };
    state
        .store
        .decision_facts(&query)
        .await?
        .ok_or_else(|| Error::Unauthenticated(format!("task {} is no longer active", ask.task.id)))
}

/// The outbox messages of a verdict's webhook effects.
fn notifications(state: &AppState, effects: &[Effect], now: i64) -> Vec<tollgate_store::Change> {
    let mut out = Vec::new();
    for effect in effects {
        match effect {
            Effect::Alert {
                event,
                subject,
                summary,
                detail,
            } => out.extend(crate::webhooks::alert_messages(
                &state.config,
                *event,
                subject,
                summary,
                detail,
                now,
            )),
            Effect::ApprovalCreated(a) => out.extend(crate::webhooks::approval_messages(
                &state.config,
                EventKind::ApprovalCreated,
                a,
                now,
            )),
            Effect::ApprovalsChanged => {}
        }
    }
    out
}

/// Run the effects of a committed verdict and shape the answer.
fn finish(
    state: &Arc<AppState>,
    verdict: Verdict,
    seqs: &[u64],
    request_id: String,
) -> Result<Decided, Error> {
    // The decision's entry is the batch's first (`judge`), and the store
    // numbers a batch's entries in order.
    let entry = verdict
        .batch
        .audit
        .first()
        .zip(seqs.first())
        .map(|(event, &seq)| DecisionEntry {
            seq,
            event: event.clone(),
        });
    for effect in verdict.effects {
        match effect {
            // Queued in the commit; wake this process's delivery worker.
            Effect::Alert { .. } | Effect::ApprovalCreated(_) => state.outbox_ready.notify_one(),
            Effect::ApprovalsChanged => state.approval_events.notify_waiters(),
        }
    }
    match verdict.refusal {
        None => Ok(Decided {
            request_id,
            decision: verdict.decision,
            approval: verdict.approval,
            entry,
        }),
        // The request id finds the refusal in the audit log.
        Some(Refusal::Malformed(message)) => Err(Error::Invalid {
            code: "invalid_request",
            message: format!("{message} (request {request_id})"),
        }),
        Some(Refusal::TaskEnded(message)) => Err(Error::Unauthenticated(message)),
    }
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
            approvals_required: (d.decision.outcome == tollgate_core::Outcome::ApprovalRequired)
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
