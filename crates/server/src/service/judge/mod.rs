//! `judge`: the whole decision on one action as a pure function of the
//! facts gathered for it.
//!
//! Architecture invariant: no IO, no clock, no randomness, no async. Every
//! input arrives in the arguments (the pack, the configuration, the request,
//! the facts the store returned in one read, `now`, and the ids to use), and
//! the output is the decision together with everything to commit (changes
//! and audit entries, with their preconditions) and the effects to run after
//! the commit. So the same facts always give the same verdict, a retry after
//! a conflict is "gather again, judge again", and the property tests in
//! `tests.rs` exercise it without a store.

mod approval;
#[cfg(test)]
mod tests;

use crate::config::{RateResponse, RateScope, ServerConfig};
use crate::service::gate::{quarantine_key, Evaluated, Gate};
use crate::service::lifecycle::{revocation_reason, revoked_event};
use serde_json::{json, Map, Value};
use tollgate_audit::AuditEvent;
use tollgate_core::temporal::{Past, RuleScope, Subject};
use tollgate_core::{
    history, ActionRecord, Agent, Approval, Decision, EventKind, HistorySummary, Outcome, SpiffeId,
    Task, TreeHistory, UnixTime,
};
use tollgate_policy::{ActionFacts, AgentFacts, PolicyPack, ResourceRef};
use tollgate_store::{AgentCount, Batch, Change, ScanScope, StoredFacts};

/// One action an agent (or an enforcement point for it) asks to perform.
pub struct ActionAsk<'a> {
    /// The task, as the caller's credential (or AuthZEN context) named it.
    pub task: &'a Task,
    pub agent: &'a Agent,
    pub action: &'a str,
    pub resource: &'a ResourceRef,
    pub intent: &'a str,
    /// As the agent sent them: policy sees secret values, nothing stored does.
    pub parameters: &'a Map<String, Value>,
    /// Who asked: the agent itself, or `pep:<name>` for AuthZEN.
    pub actor: String,
    /// `decision` or `authzen.decision`.
    pub kind: EventKind,
    pub traceparent: Option<String>,
    /// A granted approval the agent presents on its retry.
    pub approval_id: Option<&'a str>,
}

/// What the service prepared before judging: ids (judge draws no random
/// numbers), the parameters as they may be stored, and the request's hash.
pub struct Prepared {
    pub request_id: String,
    /// The id a new approval gets if this decision opens one.
    pub new_approval_id: String,
    /// The parameters with every secret replaced by its keyed hash.
    pub logged_parameters: Map<String, Value>,
    /// Binds an approval to this exact request (computed over the logged parameters).
    pub request_hash: String,
    /// For each agent-wide rate limit that applies to this action: its
    /// index in the configuration, in the order of `StoredFacts::agent_counts`.
    pub agent_limits: Vec<usize>,
    /// The scopes temporal rules read beyond the tree, with the longest
    /// window over them, in the order of `StoredFacts::scanned`.
    pub rule_scans: Vec<RuleScan>,
}

/// One scope the temporal rules of the enforced or the shadow pack read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleScan {
    pub scope: ScanScope,
    pub key: String,
    /// The longest window of the rules over this scope, seconds.
    pub window: i64,
    /// The actions those rules can match (`Rule::scan_actions`), or `None`
    /// if one of them does not say: what the store reads.
    pub actions: Option<std::collections::BTreeSet<String>>,
    /// The outcomes they can match (`Rule::scan_outcomes`), or `None`.
    pub outcomes: Option<std::collections::BTreeSet<tollgate_core::Outcome>>,
}

/// The scans the rules of `packs` need for this request: one per scope
/// other than the tree (whose history is always read), with the longest
/// window over that scope.
pub fn rule_scans(
    packs: &[&PolicyPack],
    task: &Task,
    agent: &str,
    resource: &str,
) -> Vec<RuleScan> {
    let mut out: Vec<RuleScan> = Vec::new();
    for (rule, reads) in packs.iter().flat_map(|p| p.rules_with_reads()) {
        let (scope, key) = match rule.scope {
            RuleScope::Tree => continue,
            RuleScope::Agent => (ScanScope::Agent, agent),
            RuleScope::Incident => (ScanScope::Incident, task.incident_id.as_str()),
            RuleScope::Resource => (ScanScope::Resource, resource),
        };
        let (actions, outcomes) = (reads.actions.clone(), reads.outcomes.clone());
        match out.iter_mut().find(|s| s.scope == scope) {
            Some(s) => {
                s.window = s.window.max(rule.window);
                s.actions = unite(s.actions.take(), actions);
                s.outcomes = unite(s.outcomes.take(), outcomes);
            }
            None => out.push(RuleScan {
                scope,
                key: key.to_string(),
                window: rule.window,
                actions,
                outcomes,
            }),
        }
    }
    out
}

/// Two rules' sets over one scope: everything either may match (`None`,
/// "anything", absorbs).
fn unite<T: Ord>(
    a: Option<std::collections::BTreeSet<T>>,
    b: Option<std::collections::BTreeSet<T>>,
) -> Option<std::collections::BTreeSet<T>> {
    let (mut a, b) = (a?, b?);
    a.extend(b);
    Some(a)
}

/// What the store is asked for the agent-wide rate limits of an action.
pub fn agent_count_queries(
    config: &ServerConfig,
    pack: &PolicyPack,
    action: &str,
    now: UnixTime,
) -> Vec<(usize, AgentCount)> {
    let Some(op) = pack.catalog().operation(action) else {
        return vec![];
    };
    config
        .rate_limits
        .iter()
        .enumerate()
        .filter(|(_, rl)| {
            rl.scope == RateScope::Agent && rate_applies(rl, op.tier.as_str(), action)
        })
        .map(|(i, rl)| {
            (
                i,
                AgentCount {
                    since: now.saturating_sub(rl.per_seconds).saturating_add(1),
                    tier: rl.tier.clone(),
                    action: rl.action.clone(),
                },
            )
        })
        .collect()
}

fn rate_applies(rl: &crate::config::RateLimit, tier: &str, action: &str) -> bool {
    rl.tier.as_deref().is_none_or(|t| t == tier) && rl.action.as_deref().is_none_or(|a| a == action)
}

/// Why the request cannot be decided at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// It does not fit the schema (`invalid_request`); the refusal is audited.
    Malformed(String),
    /// The task ended before this decision could commit; a denial is audited.
    TaskEnded(String),
}

/// Something to do once the verdict's batch is durable.
#[derive(Debug, Clone)]
pub enum Effect {
    /// An alert webhook (`task.revoked`, `agent.quarantined`).
    Alert {
        event: EventKind,
        subject: String,
        summary: String,
        detail: Value,
    },
    /// `approval.created` webhook.
    ApprovalCreated(Box<Approval>),
    /// Wake long-polls: an approval was created, found or spent.
    ApprovalsChanged,
}

/// The outcome of judging: the answer and everything to commit for it.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub decision: Decision,
    /// The approval this decision created, found pending, or spent.
    pub approval: Option<Approval>,
    pub refusal: Option<Refusal>,
    /// Committed atomically before the answer is returned.
    pub batch: Batch,
    /// Set when the decision revokes the task: the service adds an entry
    /// for each of its live descendants (read just before the commit; the
    /// in-commit sweep ends any it could not see).
    pub revokes: Option<String>,
    pub effects: Vec<Effect>,
    /// Why policy evaluation failed (the answer denies): for the operator's
    /// log only, never for a reason, since it can quote request values.
    pub evaluation_error: Option<String>,
    /// Where the shadow pack would have decided otherwise (its
    /// `decision.shadow_diff` entry is in the batch).
    pub shadow_diff: Option<ShadowDiff>,
}

/// The enforced outcome and the one the shadow pack would have given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShadowDiff {
    pub enforced: Outcome,
    pub shadow: Outcome,
}

/// Everything one judgement reads, borrowed for its length.
#[derive(Clone, Copy)]
struct Judging<'a> {
    pack: &'a PolicyPack,
    /// Evaluated beside `pack` on the same facts, never enforced.
    shadow: Option<&'a PolicyPack>,
    config: &'a ServerConfig,
    ask: &'a ActionAsk<'a>,
    prepared: &'a Prepared,
    facts: &'a StoredFacts,
    now: UnixTime,
}

/// Decide one action. See the module comment for what this may not do.
/// `shadow`, if given, is evaluated on the same facts and never enforced:
/// where it would decide otherwise, the batch records it.
pub fn judge(
    pack: &PolicyPack,
    shadow: Option<&PolicyPack>,
    config: &ServerConfig,
    ask: &ActionAsk<'_>,
    prepared: &Prepared,
    facts: &StoredFacts,
    now: UnixTime,
) -> Verdict {
    let j = Judging {
        pack,
        shadow,
        config,
        ask,
        prepared,
        facts,
        now,
    };
    let task = &facts.lineage.task;
    if !task.is_live(now) {
        let d = Decision::deny("the task ended while this request was being decided");
        let batch = Batch::audit_only(decision_event(&j, &d, None, "task_ended"));
        return refused(
            d,
            batch,
            Refusal::TaskEnded(format!("task {} is no longer active", task.id)),
        );
    }
    let gate = Gate {
        frozen: facts.frozen,
        agent: &ask.agent.spiffe_id,
        quarantine: facts.quarantine.as_deref(),
        dead_chain: facts.lineage.dead().map(|why| (task.id.as_str(), why)),
        incident: Some((&task.incident_id, facts.incident.as_ref())),
    };
    // Only policy is shadowed (and replayed): the gate and rate limits are
    // no pack's. The stage is recorded so `policy replay` knows which.
    let mut shadowed = None;
    let (decided, stage) = match gate.refusal() {
        Some(d) => (Evaluated::Decided(d), "gate"),
        None => match rate_limited(&j) {
            Some(d) => (Evaluated::Decided(d), "rate_limit"),
            None => {
                shadowed = shadow.map(|p| evaluate(&j, p));
                (evaluate(&j, pack), "policy")
            }
        },
    };
    let mut evaluation_error = None;
    let mut decision = match decided {
        Evaluated::Decided(d) => d,
        Evaluated::Failed { denial, error } => {
            evaluation_error = Some(error);
            denial
        }
        Evaluated::Malformed(message) => {
            // A malformed request changes nothing, but leaves a trace.
            let ev = base_event(&j).outcome("refused").detail(json!({
                "action": ask.action, "resource": ask.resource.key(), "error": message,
            }));
            return refused(
                Decision::deny(message.clone()),
                Batch::audit_only(ev),
                Refusal::Malformed(message),
            );
        }
    };
    name_triggers(&mut decision, &facts.history, now);
    let step = if decision.outcome == Outcome::ApprovalRequired {
        approval::step(config, ask, prepared, facts, &mut decision, now)
    } else {
        approval::Step::default()
    };
    let shadow_event = shadowed.and_then(|e| shadow_diff(&j, &decision, e));
    let mut verdict = commit_plan(&j, decision, step, stage);
    verdict.evaluation_error = evaluation_error;
    if let Some((diff, event)) = shadow_event {
        verdict.batch.audit.insert(1, event);
        verdict.shadow_diff = Some(diff);
    }
    verdict
}

/// The shadow pack's decision, if it differs from the enforced one in
/// effect (outcome, or how many approvals), with its audit entry.
fn shadow_diff(
    j: &Judging<'_>,
    enforced: &Decision,
    shadowed: Evaluated,
) -> Option<(ShadowDiff, AuditEvent)> {
    let shadow = match shadowed {
        Evaluated::Decided(d) | Evaluated::Failed { denial: d, .. } => d,
        // The shadow pack's schema or catalog does not take this request:
        // it would have refused it, which a denial stands for here.
        Evaluated::Malformed(m) => {
            Decision::deny(format!("the shadow pack refuses the request: {m}"))
        }
    };
    let approvals =
        |d: &Decision| (d.outcome == Outcome::ApprovalRequired).then_some(d.approvals_required);
    if shadow.outcome == enforced.outcome && approvals(&shadow) == approvals(enforced) {
        return None;
    }
    let (ask, prepared) = (j.ask, j.prepared);
    let side = |d: &Decision, pack: Option<&PolicyPack>| {
        json!({
            "outcome": d.outcome.as_str(),
            "policies": d.policies,
            "reasons": d.reasons,
            "approvals_required": approvals(d),
            "policy_digest": pack.map(PolicyPack::digest),
        })
    };
    let event = AuditEvent::new(j.now, EventKind::DecisionShadowDiff, ask.actor.clone())
        .agent(ask.agent.spiffe_id.clone())
        .task(ask.task.id.clone())
        .incident(ask.task.incident_id.clone())
        .request(&prepared.request_id)
        .outcome(format!(
            "{}->{}",
            enforced.outcome.as_str(),
            shadow.outcome.as_str()
        ))
        .detail(json!({
            "action": ask.action,
            "resource": ask.resource.key(),
            "enforced": side(enforced, Some(j.pack)),
            "shadow": side(&shadow, j.shadow),
        }));
    let diff = ShadowDiff {
        enforced: enforced.outcome,
        shadow: shadow.outcome,
    };
    Some((diff, event))
}

fn refused(decision: Decision, batch: Batch, refusal: Refusal) -> Verdict {
    Verdict {
        decision,
        approval: None,
        refusal: Some(refusal),
        batch,
        revokes: None,
        effects: vec![],
        evaluation_error: None,
        shadow_diff: None,
    }
}

/// Configured rate limits (`rate_limits:` in tollgate.yaml), counted over
/// allowed actions of the task tree (from its history) or of the agent
/// (counted by the store in the same read).
fn rate_limited(j: &Judging<'_>) -> Option<Decision> {
    let (pack, config, ask, prepared, facts, now) =
        (j.pack, j.config, j.ask, j.prepared, j.facts, j.now);
    let op = pack.catalog().operation(ask.action)?;
    for (i, rl) in config.rate_limits.iter().enumerate() {
        if !rate_applies(rl, op.tier.as_str(), ask.action) {
            continue;
        }
        let since = now.saturating_sub(rl.per_seconds);
        let count = match rl.scope {
            RateScope::TaskTree => facts
                .history
                .iter()
                .filter(|p| {
                    p.outcome == Outcome::Allow
                        && p.ts > since
                        && rate_applies(rl, p.tier.as_str(), &p.action)
                })
                .count(),
            RateScope::Agent => {
                // Counted by the store for exactly the limits `Prepared` names;
                // a limit it was not asked about counts as exceeded (fail closed).
                let pos = prepared.agent_limits.iter().position(|&l| l == i);
                pos.and_then(|p| facts.agent_counts.get(p))
                    .map_or(usize::MAX, |&c| usize::try_from(c).unwrap_or(usize::MAX))
            }
        };
        if count >= rl.max {
            let scope = match rl.scope {
                RateScope::Agent => "this agent",
                RateScope::TaskTree => "this task tree",
            };
            let shown = if count == usize::MAX {
                "too many".to_string()
            } else {
                count.to_string()
            };
            let mut d = Decision::deny(format!(
                "rate limit {}: {scope} already did {shown} such actions in the last {} s (max {})",
                rl.name, rl.per_seconds, rl.max
            ));
            d.policies = vec![format!("rate-limit:{}", rl.name)];
            if rl.on_exceed == RateResponse::Quarantine {
                d.quarantine_agent = true;
                d.revoke_task = true;
            }
            return Some(d);
        }
    }
    None
}

/// `pack`'s decision on the facts: the enforced pack's, or the shadow's.
fn evaluate(j: &Judging<'_>, pack: &PolicyPack) -> Evaluated {
    let (ask, facts, now) = (j.ask, j.facts, j.now);
    // Summarised only when policy runs: the gate and rate limits need none.
    let history = HistorySummary::from_series(
        facts.history.series(),
        facts.history.last_allowed().map(|r| r.action.as_str()),
        pack.catalog(),
        now,
    );
    let Some(incident) = facts.incident.as_ref() else {
        // The gate already denied an unknown incident; never reached.
        return Evaluated::Decided(Decision::deny("incident is unknown"));
    };
    let spiffe_id = match SpiffeId::parse(&ask.agent.spiffe_id) {
        Ok(id) => id,
        Err(e) => {
            return Evaluated::Failed {
                denial: Decision::deny("the agent's SPIFFE ID does not parse; failing closed"),
                error: e.to_string(),
            }
        }
    };
    let rules =
        match rule_values(j, pack) {
            Ok(v) => v,
            Err(error) => return Evaluated::Failed {
                denial: Decision::deny(
                    "a temporal rule could not be evaluated (see the server log); failing closed",
                ),
                error,
            },
        };
    let request = ActionFacts {
        rules: &rules,
        agent: AgentFacts {
            spiffe_id: &spiffe_id,
            owner: &ask.agent.owner,
        },
        task: &facts.lineage.task,
        incident,
        action: ask.action,
        resource: ask.resource,
        intent: ask.intent,
        parameters: ask.parameters,
        evidence_present: facts.evidence_present,
        history: &history,
        now,
    };
    pack.decide_action(&request).into()
}

/// The value of each of `pack`'s temporal rules on the facts: the tree's
/// rules over the tree's history, the others over their scope's scan.
fn rule_values(
    j: &Judging<'_>,
    pack: &PolicyPack,
) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    let (ask, facts, now) = (j.ask, j.facts, j.now);
    let task = &facts.lineage.task;
    let resource = ask.resource.key();
    let subject = Subject {
        root_task_id: &facts.lineage.root().id,
        agent: &ask.agent.spiffe_id,
        incident_id: &task.incident_id,
        resource: &resource,
    };
    let mut values = serde_json::Map::new();
    for rule in &pack.rules().rules {
        let (records, incident): (&[ActionRecord], &str) = match rule.scope {
            RuleScope::Tree => {
                // Counted on the tree's series unless a filter reads the
                // resource; then record by record, as every other scope.
                if let Some(value) = rule.evaluate_series(facts.history.series(), now) {
                    values.insert(rule.name.clone(), value.into());
                    continue;
                }
                (facts.history.records(), task.incident_id.as_str())
            }
            scope => {
                let wanted = match scope {
                    RuleScope::Agent => ScanScope::Agent,
                    RuleScope::Incident => ScanScope::Incident,
                    _ => ScanScope::Resource,
                };
                let at = j
                    .prepared
                    .rule_scans
                    .iter()
                    .position(|s| s.scope == wanted)
                    .ok_or_else(|| format!("rule {}: its scope was not read", rule.name))?;
                let records = facts
                    .scanned
                    .get(at)
                    .ok_or_else(|| format!("rule {}: its scope was not read", rule.name))?;
                if records.len() > tollgate_store::SCAN_LIMIT {
                    return Err(format!(
                        "rule {}: more than {} past actions in its scope and window",
                        rule.name,
                        tollgate_store::SCAN_LIMIT
                    ));
                }
                // An incident scan is that incident's; the other scopes
                // do not look at the incident.
                (records.as_slice(), task.incident_id.as_str())
            }
        };
        let past: Vec<Past<'_>> = rule
            .in_window(records, now)
            .iter()
            .map(|record| Past {
                record,
                incident_id: incident,
            })
            .collect();
        values.insert(
            rule.name.clone(),
            rule.evaluate(&past, &subject, now).into(),
        );
    }
    Ok(values)
}

/// Name the earlier actions that triggered a chain rule.
fn name_triggers(decision: &mut Decision, past: &TreeHistory, now: UnixTime) {
    for label in decision.chain_labels.clone() {
        for p in history::triggers(past, &label, now, 3600)
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
}

fn base_event(j: &Judging<'_>) -> AuditEvent {
    let (ask, prepared) = (j.ask, j.prepared);
    AuditEvent::new(j.now, ask.kind, ask.actor.clone())
        .agent(ask.agent.spiffe_id.clone())
        .task(ask.task.id.clone())
        .incident(ask.task.incident_id.clone())
        .request(&prepared.request_id)
}

/// The decision's own audit entry. Parameters appear only as logged.
/// `stage`: what decided (`policy`, `gate`, `rate_limit`, `task_ended`).
fn decision_event(
    j: &Judging<'_>,
    d: &Decision,
    approval: Option<&Approval>,
    stage: &str,
) -> AuditEvent {
    let (ask, prepared, pack) = (j.ask, j.prepared, j.pack);
    base_event(j).outcome(d.outcome.as_str()).detail(json!({
        "action": ask.action,
        "resource": ask.resource.key(),
        "resource_attributes": ask.resource.attributes,
        "intent": ask.intent,
        "parameters": prepared.logged_parameters,
        "policies": d.policies,
        "reasons": d.reasons,
        "obligations": d.obligations,
        "approvals_required": d.approvals_required,
        "approval_id": approval.map(|a| a.id.clone()),
        "request_hash": prepared.request_hash,
        "policy_digest": pack.digest(),
        "traceparent": ask.traceparent,
        "stage": stage,
    }))
}

/// Everything one decision commits: its entry, the approval step, its
/// place in the tree's history, and a revocation or quarantine it orders.
fn commit_plan(
    j: &Judging<'_>,
    decision: Decision,
    mut step: approval::Step,
    stage: &str,
) -> Verdict {
    let (pack, ask, prepared, facts, now) = (j.pack, j.ask, j.prepared, j.facts, j.now);
    let task = &facts.lineage.task;
    let mut audit = vec![decision_event(j, &decision, step.approval.as_ref(), stage)];
    audit.append(&mut step.events);
    // The task must still be live when the decision commits, not only when
    // it was read: a close or revocation in flight wins (a conflict, then a
    // fresh judgement).
    let mut changes = vec![Change::RequireTaskLive {
        task_id: task.id.clone(),
        now,
    }];
    changes.append(&mut step.changes);
    // This decision joins the tree's history (what later chain rules see).
    if let Some(op) = pack.catalog().operation(ask.action) {
        changes.push(Change::RecordAction(ActionRecord {
            root_task_id: facts.lineage.root().id.as_str().into(),
            task_id: task.id.as_str().into(),
            agent: ask.agent.spiffe_id.as_str().into(),
            request_id: prepared.request_id.clone(),
            action: ask.action.into(),
            resource: ask.resource.key().into(),
            tier: op.tier,
            labels: op.labels.as_slice().into(),
            outcome: decision.outcome,
            ts: now,
        }));
    }
    let mut effects = Vec::new();
    let mut revokes = None;
    let denied = decision.outcome == Outcome::Deny;
    // A chain rule marked `@on_deny("revoke")` ends the task (and its
    // children) in the same commit as the denial: the next call fails.
    if denied && decision.revoke_task {
        let why = revocation_reason(&decision.reasons, &prepared.request_id);
        changes.push(Change::RevokeTask {
            task_id: task.id.clone(),
            reason: why.clone(),
        });
        audit.push(revoked_event(task, &why, "tollgate", now));
        revokes = Some(why);
        effects.push(Effect::Alert {
            event: EventKind::TaskRevoked,
            subject: task.id.clone(),
            summary: format!(
                "task {} of {} revoked for deviation: {}",
                task.id,
                ask.agent.spiffe_id,
                decision.reasons.join("; ")
            ),
            detail: json!({"task_id": task.id, "agent": ask.agent.spiffe_id, "incident_id": task.incident_id,
                   "request_id": prepared.request_id, "action": ask.action, "resource": ask.resource.key(),
                   "policies": decision.policies, "reasons": decision.reasons}),
        });
    }
    if denied && decision.quarantine_agent {
        let why = format!(
            "{} (request {})",
            decision.reasons.join("; "),
            prepared.request_id
        );
        changes.push(Change::PutSetting {
            key: quarantine_key(&ask.agent.spiffe_id),
            value: why.clone(),
        });
        audit.push(
            AuditEvent::new(now, EventKind::AgentQuarantined, "tollgate")
                .agent(ask.agent.spiffe_id.clone())
                .task(task.id.clone())
                .incident(task.incident_id.clone())
                .request(&prepared.request_id)
                .outcome("quarantined")
                .detail(json!({"reason": why, "policies": decision.policies})),
        );
        effects.push(Effect::Alert {
            event: EventKind::AgentQuarantined,
            subject: ask.agent.spiffe_id.clone(),
            summary: format!(
                "agent {} quarantined: {}",
                ask.agent.spiffe_id,
                decision.reasons.join("; ")
            ),
            detail: json!({"agent": ask.agent.spiffe_id, "task_id": task.id, "request_id": prepared.request_id, "policies": decision.policies}),
        });
    }
    if let Some(a) = &step.approval {
        if step.created {
            effects.push(Effect::ApprovalCreated(Box::new(a.clone())));
        }
        effects.push(Effect::ApprovalsChanged);
    }
    Verdict {
        decision,
        approval: step.approval,
        refusal: None,
        batch: Batch { changes, audit },
        revokes,
        effects,
        evaluation_error: None,
        shadow_diff: None,
    }
}
