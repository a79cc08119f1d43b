//! `tollgate policy replay`: re-decide the decisions of a verified audit log
//! against a candidate pack, each with the facts it had at the time, and
//! say what would change.
//!
//! The facts come from the log itself, folded entry by entry in order: an
//! agent's owner (`agent.registered`), a task (`task.opened`,
//! `task.delegated`: environment, playbook, intent, scope, parent), its
//! incident as it stood (`incident.recorded`, then each
//! `incident.updated`), evidence (`evidence.recorded`), and the tree's
//! history (every earlier decision of the same delegation tree, as the
//! store recorded it). Only what policy decided is replayed (`stage`
//! `policy`, or no stage in logs older than it): the gate and rate limits
//! are no pack's. Parameters are replayed as logged, so a policy that reads
//! the value of a secret parameter sees its keyed hash.
//!
//! [`Replay`] is pure: it reads entries and a pack, never the network or
//! the disk.

use anyhow::Result;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use tollgate_audit::AuditEntry;
use tollgate_core::temporal::{Past, Subject};
use tollgate_core::{
    ActionRecord, Decision, HistorySummary, Incident, IncidentStatus, Outcome, Scope, Severity,
    SpiffeId, Task, TaskStatus, UnixTime,
};
use tollgate_policy::{ActionFacts, AgentFacts, PolicyPack, ResourceRef};

/// Which recorded decisions to re-decide.
#[derive(Default)]
pub struct Filter {
    /// Only decisions at or after this time.
    pub since: Option<UnixTime>,
    /// Only decisions of this incident.
    pub incident: Option<String>,
}

/// One decision the candidate pack would make otherwise.
pub struct Change {
    pub request_id: String,
    pub seq: u64,
    pub action: String,
    pub resource: String,
    pub recorded: Decided,
    pub candidate: Decided,
}

/// An outcome with the policies behind it.
pub struct Decided {
    pub outcome: String,
    pub policies: Vec<String>,
    pub approvals_required: Option<u32>,
}

/// What a replay found.
#[derive(Default)]
pub struct Replayed {
    /// Decisions re-decided.
    pub replayed: usize,
    /// Decided by the gate or a rate limit, not by policy: not replayed.
    pub skipped: usize,
    pub changes: Vec<Change>,
}

/// The facts the log had established so far.
#[derive(Default)]
struct Facts {
    owners: HashMap<String, String>,
    tasks: HashMap<String, Task>,
    incidents: HashMap<String, Incident>,
    evidence: HashSet<(String, String)>,
    /// Each delegation tree's decisions so far, by root task id.
    history: HashMap<String, Vec<ActionRecord>>,
}

impl Facts {
    fn root_of(&self, task_id: &str) -> String {
        let mut id = task_id.to_string();
        // Bounded: a tree is never deeper than the configured maximum, and
        // a cycle (a forged log would need one) stops here too.
        for _ in 0..64 {
            match self.tasks.get(&id).and_then(|t| t.parent_task_id.clone()) {
                Some(parent) => id = parent,
                None => break,
            }
        }
        id
    }

    /// Learn what `e` establishes (after it was replayed, if a decision).
    fn learn(&mut self, e: &AuditEntry, pack: &PolicyPack) {
        let ev = &e.event;
        let d = &ev.detail;
        let s = |k: &str| d[k].as_str().unwrap_or_default().to_string();
        match ev.kind.as_str() {
            "agent.registered" => {
                if let Some(agent) = &ev.agent {
                    self.owners.insert(agent.clone(), s("owner"));
                }
            }
            "incident.recorded" => {
                if let Some(id) = &ev.incident_id {
                    if let Ok(severity) = serde_json::from_value::<Severity>(d["severity"].clone())
                    {
                        self.incidents.insert(
                            id.clone(),
                            Incident {
                                id: id.clone(),
                                class: s("class"),
                                severity,
                                status: IncidentStatus::Open,
                                updated_at: ev.ts,
                            },
                        );
                    }
                }
            }
            "incident.updated" => {
                if let (Some(id), Ok(after)) = (
                    &ev.incident_id,
                    serde_json::from_value::<Incident>(d["after"].clone()),
                ) {
                    self.incidents.insert(id.clone(), after);
                }
            }
            "task.opened" => {
                if let (Some(id), Some(agent), Some(incident)) =
                    (&ev.task_id, &ev.agent, &ev.incident_id)
                {
                    self.tasks.insert(
                        id.clone(),
                        Task {
                            id: id.clone(),
                            agent: agent.clone(),
                            incident_id: incident.clone(),
                            environment: s("environment"),
                            playbook: s("playbook"),
                            intent: s("intent"),
                            scope: Scope::default(),
                            parent_task_id: None,
                            created_at: ev.ts,
                            expires_at: d["expires_at"].as_i64().unwrap_or(i64::MAX),
                            max_expires_at: i64::MAX,
                            status: TaskStatus::Active,
                            status_reason: None,
                        },
                    );
                }
            }
            "task.delegated" => {
                let parent = ev.parent_task_id.as_ref().and_then(|p| self.tasks.get(p));
                if let (Some(id), Some(agent), Some(parent)) = (&ev.task_id, &ev.agent, parent) {
                    // A child inherits its parent's environment and playbook.
                    let child = Task {
                        id: id.clone(),
                        agent: agent.clone(),
                        intent: s("intent"),
                        scope: serde_json::from_value(d["scope"].clone()).unwrap_or_default(),
                        parent_task_id: Some(parent.id.clone()),
                        created_at: ev.ts,
                        expires_at: d["expires_at"].as_i64().unwrap_or(i64::MAX),
                        ..parent.clone()
                    };
                    self.tasks.insert(id.clone(), child);
                }
            }
            "evidence.recorded" => {
                if let Some(task) = &ev.task_id {
                    self.evidence.insert((task.clone(), s("resource")));
                }
            }
            "decision" | "authzen.decision" => {
                // The history the store keeps: every decision on a catalog
                // operation (labels as the candidate catalog gives them).
                let (Some(task), Some(agent), Some(request)) =
                    (&ev.task_id, &ev.agent, &ev.request_id)
                else {
                    return;
                };
                let Some(outcome) = recorded_outcome(ev.outcome.as_deref()) else {
                    return;
                };
                if d["stage"] == "task_ended" {
                    return;
                }
                let action = s("action");
                let Some(op) = pack.catalog().operation(&action) else {
                    return;
                };
                let root = self.root_of(task);
                self.history
                    .entry(root.clone())
                    .or_default()
                    .push(ActionRecord {
                        root_task_id: root.into(),
                        task_id: task.clone().into(),
                        agent: agent.clone().into(),
                        request_id: request.clone(),
                        action: action.into(),
                        resource: s("resource").into(),
                        tier: op.tier,
                        labels: op.labels.clone().into(),
                        outcome,
                        ts: ev.ts,
                    });
            }
            _ => {}
        }
    }
}

fn recorded_outcome(o: Option<&str>) -> Option<Outcome> {
    match o? {
        "allow" => Some(Outcome::Allow),
        "deny" => Some(Outcome::Deny),
        "approval_required" => Some(Outcome::ApprovalRequired),
        _ => None,
    }
}

/// The strings of a JSON array (none if it is not one).
pub fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Re-decide every policy decision of `entries` (in log order) that
/// `filter` selects against `pack`.
pub fn replay(entries: &[AuditEntry], pack: &PolicyPack, filter: &Filter) -> Replayed {
    let mut facts = Facts::default();
    let mut out = Replayed::default();
    for e in entries {
        let ev = &e.event;
        let is_decision = matches!(ev.kind.as_str(), "decision" | "authzen.decision")
            && ev.agent.is_some()
            && recorded_outcome(ev.outcome.as_deref()).is_some();
        let selected = filter.since.is_none_or(|t| ev.ts >= t)
            && filter
                .incident
                .as_deref()
                .is_none_or(|i| ev.incident_id.as_deref() == Some(i));
        if is_decision && selected {
            // What decided; logs older than the field: policy.
            if ev.detail["stage"].as_str().unwrap_or("policy") == "policy" {
                out.replayed += 1;
                if let Some(change) = redecide(e, &facts, pack) {
                    out.changes.push(change);
                }
            } else {
                out.skipped += 1;
            }
        }
        facts.learn(e, pack);
    }
    out
}

/// The candidate's decision on one recorded decision, if it differs.
fn redecide(e: &AuditEntry, facts: &Facts, pack: &PolicyPack) -> Option<Change> {
    let ev = &e.event;
    let d = &ev.detail;
    let recorded = Decided {
        outcome: ev.outcome.clone().unwrap_or_default(),
        policies: strings(&d["policies"]),
        approvals_required: d["approvals_required"]
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .filter(|_| ev.outcome.as_deref() == Some("approval_required")),
    };
    let candidate = match candidate_decision(e, facts, pack) {
        Ok(decision) => Decided {
            outcome: decision.outcome.as_str().to_string(),
            approvals_required: (decision.outcome == Outcome::ApprovalRequired)
                .then_some(decision.approvals_required),
            policies: decision.policies,
        },
        Err(why) => Decided {
            outcome: "refused".into(),
            policies: vec![why],
            approvals_required: None,
        },
    };
    // An allow that spent a granted approval is the candidate's
    // `approval_required` met, not a change (unless it wants more votes).
    let approved = ev.outcome.as_deref() == Some("allow") && d["approval_id"].is_string();
    let same = candidate.outcome == recorded.outcome
        && candidate.approvals_required == recorded.approvals_required
        || approved
            && candidate.outcome == "approval_required"
            && candidate.approvals_required
                <= d["approvals_required"]
                    .as_u64()
                    .and_then(|n| u32::try_from(n).ok());
    (!same).then(|| Change {
        request_id: ev.request_id.clone().unwrap_or_default(),
        seq: e.seq,
        action: d["action"].as_str().unwrap_or_default().to_string(),
        resource: d["resource"].as_str().unwrap_or_default().to_string(),
        recorded,
        candidate,
    })
}

/// The candidate pack's decision on the facts `e` had; `Err` says why the
/// facts could not be rebuilt or the pack refuses the request.
fn candidate_decision(
    e: &AuditEntry,
    facts: &Facts,
    pack: &PolicyPack,
) -> std::result::Result<Decision, String> {
    let ev = &e.event;
    let d = &ev.detail;
    let agent = ev.agent.as_deref().unwrap_or_default();
    let task_id = ev.task_id.as_deref().unwrap_or_default();
    let task = facts
        .tasks
        .get(task_id)
        .ok_or_else(|| format!("task {task_id} is not in the log"))?;
    let incident = facts
        .incidents
        .get(&task.incident_id)
        .ok_or_else(|| format!("incident {} is not in the log", task.incident_id))?;
    let spiffe_id = SpiffeId::parse(agent).map_err(|e| format!("agent: {e}"))?;
    let (kind, id) = d["resource"]
        .as_str()
        .and_then(|r| r.split_once("::"))
        .ok_or_else(|| "the entry names no resource".to_string())?;
    let resource = ResourceRef {
        kind: kind.to_string(),
        id: id.to_string(),
        attributes: d["resource_attributes"]
            .as_object()
            .cloned()
            .unwrap_or_default(),
    };
    let parameters = d["parameters"].as_object().cloned().unwrap_or_default();
    let root = facts.root_of(task_id);
    let past = facts
        .history
        .get(&root)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let history = HistorySummary::from_records(past, pack.catalog(), ev.ts);
    let owner = facts
        .owners
        .get(agent)
        .map(String::as_str)
        .unwrap_or_default();
    let rules = rule_values(facts, pack, &root, agent, task, &resource.key(), ev.ts);
    let request = ActionFacts {
        rules: &rules,
        agent: AgentFacts {
            spiffe_id: &spiffe_id,
            owner,
        },
        task,
        incident,
        action: d["action"].as_str().unwrap_or_default(),
        resource: &resource,
        intent: d["intent"].as_str().unwrap_or_default(),
        parameters: &parameters,
        evidence_present: facts
            .evidence
            .contains(&(task_id.to_string(), resource.key())),
        history: &history,
        now: ev.ts,
    };
    pack.decide_action(&request).map_err(|e| e.to_string())
}

/// The candidate's temporal rules over every decision the log recorded so
/// far (each scope picks its own from them). Linear in the log for each
/// decision, and only when the candidate has rules.
fn rule_values(
    facts: &Facts,
    pack: &PolicyPack,
    root: &str,
    agent: &str,
    task: &Task,
    resource: &str,
    now: UnixTime,
) -> serde_json::Map<String, Value> {
    if pack.rules().rules.is_empty() {
        return serde_json::Map::new();
    }
    let past: Vec<Past<'_>> = facts
        .history
        .values()
        .flatten()
        .map(|record| Past {
            record,
            incident_id: facts
                .tasks
                .get(record.task_id.as_str())
                .map_or("", |t| t.incident_id.as_str()),
        })
        .collect();
    pack.rules().values(
        &past,
        &Subject {
            root_task_id: root,
            agent,
            incident_id: &task.incident_id,
            resource,
        },
        now,
    )
}

/// The policies one side names and the other does not: what explains a
/// changed decision, sorted.
pub fn differing(a: &[String], b: &[String]) -> Vec<String> {
    let mut out: Vec<String> = a
        .iter()
        .filter(|p| !b.contains(p))
        .chain(b.iter().filter(|p| !a.contains(p)))
        .cloned()
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The changes grouped by recorded and candidate outcome and by the
/// policies that differ, as `policy replay --json` prints them.
pub fn report(r: &Replayed) -> Value {
    type Side = (String, Option<u32>);
    let mut groups: BTreeMap<(Side, Side, Vec<String>), Vec<&Change>> = BTreeMap::new();
    for c in &r.changes {
        let differ = differing(&c.recorded.policies, &c.candidate.policies);
        let side = |d: &Decided| (d.outcome.clone(), d.approvals_required);
        groups
            .entry((side(&c.recorded), side(&c.candidate), differ))
            .or_default()
            .push(c);
    }
    let mut groups: Vec<Value> = groups
        .into_iter()
        .map(|((recorded, candidate, policies), changes)| {
            json!({
                "recorded": recorded.0, "recorded_approvals": recorded.1,
                "candidate": candidate.0, "candidate_approvals": candidate.1,
                "policies": policies,
                "count": changes.len(),
                "requests": changes.iter().map(|c| json!({
                    "request_id": c.request_id, "seq": c.seq, "action": c.action, "resource": c.resource,
                    "recorded_policies": c.recorded.policies, "candidate_policies": c.candidate.policies,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    groups.sort_by_key(|g| std::cmp::Reverse(g["count"].as_u64()));
    json!({
        "replayed": r.replayed,
        "skipped": r.skipped,
        "changed": r.changes.len(),
        "groups": groups,
    })
}

/// The report as text; agent-chosen strings are escaped.
pub fn print(report: &Value) -> Result<()> {
    use crate::term::printable;
    println!(
        "{} decisions replayed ({} decided by the gate or a rate limit, not replayed): {} would change",
        report["replayed"], report["skipped"], report["changed"]
    );
    for g in report["groups"].as_array().into_iter().flatten() {
        let policies = strings(&g["policies"]).join(", ");
        // `approval_required (2)`: how many approvals.
        let side = |k: &str| {
            let outcome = g[k].as_str().unwrap_or("?");
            match g[format!("{k}_approvals")].as_u64() {
                Some(n) => format!("{outcome} ({n})"),
                None => outcome.to_string(),
            }
        };
        println!(
            "  {} -> {}: {}  (policies: {})",
            side("recorded"),
            side("candidate"),
            g["count"],
            if policies.is_empty() {
                "none named".into()
            } else {
                printable(&policies).into_owned()
            }
        );
        for r in g["requests"].as_array().into_iter().flatten() {
            println!(
                "    {} #{} {} {}",
                r["request_id"].as_str().unwrap_or(""),
                r["seq"],
                printable(r["action"].as_str().unwrap_or("")),
                printable(r["resource"].as_str().unwrap_or(""))
            );
        }
    }
    Ok(())
}
