//! Ending work: revocation with its cascade (written once, used by admins,
//! chain rules and incident changes), incident changes, and the rollback
//! plan of a task tree.

use super::gate::Evaluated;
use super::Error;
use crate::state::AppState;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use tollgate_audit::AuditEvent;
use tollgate_core::clock::rfc3339;
use tollgate_core::{
    EventKind, Incident, IncidentStatus, Outcome, Severity, SpiffeId, Task, TaskStatus, UnixTime,
};
use tollgate_policy::{AgentFacts, TaskOpenFacts};
use tollgate_store::{Batch, Change, TaskFilter};

/// `task.revoked`, with the task's place in its tree.
pub fn revoked_event(t: &Task, reason: &str, actor: &str, now: UnixTime) -> AuditEvent {
    AuditEvent::new(now, EventKind::TaskRevoked, actor)
        .agent(t.agent.clone())
        .task(t.id.clone())
        .parent_task(t.parent_task_id.clone())
        .incident(t.incident_id.clone())
        .outcome("revoked")
        .detail(json!({"reason": reason}))
}

/// Why a chain rule or playbook revoked a task.
pub fn revocation_reason(reasons: &[String], request_id: &str) -> String {
    format!(
        "revoked for deviation: {} (request {request_id})",
        reasons.join("; ")
    )
}

/// End every live descendant of `parent` in the same commit: one entry for
/// each descendant known now (`known`, from `Store::descendants`; ended ones
/// are skipped), and an in-commit sweep of the whole subtree so that a child
/// delegated concurrently dies too. Returns the ids of the known live ones.
pub fn cascade(
    batch: &mut Batch,
    parent: &Task,
    known: &[Task],
    reason: &str,
    actor: &str,
    now: UnixTime,
) -> Vec<String> {
    batch.changes.push(Change::EndDescendants {
        root_id: parent.id.clone(),
        reason: reason.to_string(),
    });
    let live: Vec<&Task> = known
        .iter()
        .filter(|t| t.status == TaskStatus::Active)
        .collect();
    for t in &live {
        batch.audit.push(revoked_event(t, reason, actor, now));
    }
    live.iter().map(|t| t.id.clone()).collect()
}

/// What an admin revokes: exactly one of these.
pub enum Target {
    Task(String),
    Agent(String),
    Incident(String),
}

/// Revoke a task (and its descendants), every task of an agent (and the
/// agent), or every task of an incident. Returns the revoked task ids.
pub async fn revoke(state: &AppState, target: Target, reason: &str) -> Result<Vec<String>, Error> {
    let now = state.now();
    let (batch, revoked) = match target {
        Target::Task(id) => revoke_task(state, &id, reason, now).await?,
        Target::Agent(id) => revoke_agent(state, &id, reason, now).await?,
        Target::Incident(id) => revoke_incident(state, &id, reason, now).await?,
    };
    state.store.commit(batch).await?;
    Ok(revoked)
}

async fn revoke_task(
    state: &AppState,
    id: &str,
    reason: &str,
    now: UnixTime,
) -> Result<(Batch, Vec<String>), Error> {
    let task = state
        .store
        .task(id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("task {id}")))?;
    if task.status != TaskStatus::Active {
        return Err(Error::Conflict(format!(
            "task {id} is already {}",
            task.status
        )));
    }
    let mut batch = Batch::default()
        .change(Change::EndTask {
            task_id: id.to_string(),
            status: TaskStatus::Revoked,
            reason: reason.to_string(),
        })
        .event(revoked_event(&task, reason, "admin", now));
    // Revoking a task revokes every task delegated from it.
    let known = state.store.descendants(id).await?;
    let why = format!("parent task {id} was revoked: {reason}");
    let mut revoked = vec![id.to_string()];
    revoked.extend(cascade(&mut batch, &task, &known, &why, "admin", now));
    Ok((batch, revoked))
}

async fn revoke_agent(
    state: &AppState,
    agent: &str,
    reason: &str,
    now: UnixTime,
) -> Result<(Batch, Vec<String>), Error> {
    let id = SpiffeId::parse(agent)
        .map_err(|e| Error::invalid(format!("agent: {e}")))?
        .to_string();
    if state.store.agent(&id).await?.is_none() {
        return Err(Error::NotFound(format!("agent {id}")));
    }
    let tasks = active_tasks(
        state,
        TaskFilter {
            agent: Some(id.clone()),
            ..Default::default()
        },
    )
    .await?;
    let mut batch = Batch::default();
    let mut revoked = vec![];
    for t in &tasks {
        batch.audit.push(revoked_event(t, reason, "admin", now));
        revoked.push(t.id.clone());
    }
    // Work its tasks delegated to other agents dies with them; a task
    // reachable twice (self-delegation) is audited once.
    let mut seen: BTreeSet<String> = tasks.iter().map(|t| t.id.clone()).collect();
    for t in &tasks {
        let known: Vec<Task> = state
            .store
            .descendants(&t.id)
            .await?
            .into_iter()
            .filter(|c| seen.insert(c.id.clone()))
            .collect();
        let why = format!("parent task {} was revoked: {reason}", t.id);
        revoked.extend(cascade(&mut batch, t, &known, &why, "admin", now));
    }
    let batch = batch
        .change(Change::SetAgentRevoked {
            spiffe_id: id.clone(),
            revoked: true,
        })
        .change(Change::EndAgentTasks {
            spiffe_id: id.clone(),
            reason: reason.to_string(),
        })
        .event(
            AuditEvent::new(now, EventKind::AgentRevoked, "admin")
                .agent(id)
                .outcome("revoked")
                .detail(json!({"reason": reason})),
        );
    Ok((batch, revoked))
}

async fn revoke_incident(
    state: &AppState,
    incident: &str,
    reason: &str,
    now: UnixTime,
) -> Result<(Batch, Vec<String>), Error> {
    let tasks = active_tasks(
        state,
        TaskFilter {
            incident_id: Some(incident.to_string()),
            ..Default::default()
        },
    )
    .await?;
    let mut batch = Batch::default();
    let mut revoked = vec![];
    for t in &tasks {
        batch = batch
            .change(Change::EndTask {
                task_id: t.id.clone(),
                status: TaskStatus::Revoked,
                reason: reason.to_string(),
            })
            .event(revoked_event(t, reason, "admin", now));
        revoked.push(t.id.clone());
    }
    let batch = batch.event(
        AuditEvent::new(now, EventKind::IncidentRevoked, "admin")
            .incident(incident.to_string())
            .detail(json!({"reason": reason, "tasks": revoked})),
    );
    Ok((batch, revoked))
}

async fn active_tasks(state: &AppState, filter: TaskFilter) -> Result<Vec<Task>, Error> {
    Ok(state
        .store
        .tasks(TaskFilter {
            status: Some(TaskStatus::Active),
            limit: 100_000,
            ..filter
        })
        .await?)
}

/// An admin's change to an incident.
pub struct IncidentChange {
    pub status: Option<IncidentStatus>,
    pub class: Option<String>,
    pub severity: Option<Severity>,
    pub reason: Option<String>,
}

/// What an incident change did.
pub struct IncidentChanged {
    pub incident: Incident,
    /// Tasks revoked by this change (descendants included).
    pub revoked_tasks: BTreeSet<String>,
    /// Active tasks of the incident that policy still allows.
    pub kept_tasks: Vec<String>,
}

/// Change an incident. Resolved or closed: every task bound to it is
/// revoked. Reclassified: open tasks are re-evaluated and revoked if policy
/// no longer allows them.
pub async fn update_incident(
    state: &AppState,
    id: &str,
    change: IncidentChange,
) -> Result<IncidentChanged, Error> {
    let now = state.now();
    let before = state.store.incident(id).await?;
    let incident = changed_incident(before.as_ref(), id, &change, now)?;
    let active = active_tasks(
        state,
        TaskFilter {
            incident_id: Some(id.to_string()),
            ..Default::default()
        },
    )
    .await?;
    let mut to_revoke: Vec<(Task, String)> = Vec::new();
    if incident.status != IncidentStatus::Open {
        let why = format!("incident {id} was {}", incident.status.as_str());
        to_revoke.extend(active.iter().map(|t| (t.clone(), why.clone())));
    } else if before
        .as_ref()
        .is_some_and(|b| b.class != incident.class || b.severity != incident.severity)
    {
        to_revoke = reevaluate(state, &incident, &active, now).await?;
    }
    let mut batch = Batch::default().change(Change::UpsertIncident(incident.clone())).event(
        AuditEvent::new(now, EventKind::IncidentUpdated, "admin").incident(id.to_string()).detail(json!({
            "before": before, "after": incident, "reason": change.reason, "revoked_tasks": to_revoke.iter().map(|(t, _)| t.id.clone()).collect::<Vec<_>>(),
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
    Ok(IncidentChanged {
        incident,
        revoked_tasks: seen,
        kept_tasks,
    })
}

/// The incident as the change leaves it (creating it needs class and severity).
fn changed_incident(
    before: Option<&Incident>,
    id: &str,
    change: &IncidentChange,
    now: UnixTime,
) -> Result<Incident, Error> {
    let mut incident = match (before, &change.class, change.severity) {
        (Some(i), _, _) => i.clone(),
        (None, Some(class), Some(severity)) => Incident {
            id: id.to_string(),
            class: class.clone(),
            severity,
            status: IncidentStatus::Open,
            updated_at: now,
        },
        (None, _, _) => {
            return Err(Error::NotFound(format!(
                "incident {id} (give class and severity to create it)"
            )))
        }
    };
    if let Some(s) = change.status {
        incident.status = s;
    }
    if let Some(c) = &change.class {
        incident.class = c.clone();
    }
    if let Some(s) = change.severity {
        incident.severity = s;
    }
    incident.updated_at = now;
    Ok(incident)
}

/// Re-evaluate each open top-level task of a reclassified incident as if it
/// were opened now; those policy no longer allows are revoked with their
/// descendants.
async fn reevaluate(
    state: &AppState,
    incident: &Incident,
    active: &[Task],
    now: UnixTime,
) -> Result<Vec<(Task, String)>, Error> {
    let pack = state.pack.load_full();
    let mut to_revoke = Vec::new();
    // Delegated tasks stand or fall with their parent.
    for t in active.iter().filter(|t| t.parent_task_id.is_none()) {
        let agent = state.store.agent(&t.agent).await?;
        let (Some(agent), Ok(aid)) = (agent, SpiffeId::parse(&t.agent)) else {
            // Cannot re-evaluate: fail closed.
            to_revoke.push((
                t.clone(),
                format!(
                    "incident {} was reclassified and task {} could not be re-evaluated",
                    incident.id, t.id
                ),
            ));
            continue;
        };
        let facts = TaskOpenFacts {
            agent: AgentFacts {
                spiffe_id: &aid,
                owner: &agent.owner,
            },
            incident,
            environment: &t.environment,
            playbook: &t.playbook,
            intent: &t.intent,
            ttl_seconds: (t.expires_at - now).max(1),
            now,
        };
        // A request that no longer fits the schema cannot stand either.
        let d = match Evaluated::from(pack.decide_task_open(&facts)) {
            Evaluated::Decided(d) => d,
            Evaluated::Malformed(m) => tollgate_core::Decision::deny(m),
            Evaluated::Failed { denial, error } => {
                tracing::error!(%error, "task re-evaluation failed; failing closed");
                denial
            }
        };
        if d.outcome != Outcome::Allow {
            let why = format!(
                "incident {} was reclassified to {} / {} and policy no longer allows this task: {}",
                incident.id,
                incident.class,
                incident.severity.as_str(),
                d.reasons.join("; ")
            );
            to_revoke.push((t.clone(), why.clone()));
            for c in state.store.descendants(&t.id).await? {
                if c.status == TaskStatus::Active {
                    to_revoke.push((c, why.clone()));
                }
            }
        }
    }
    Ok(to_revoke)
}

/// Every compensation recorded for the task and its delegated children,
/// newest first. A step whose compensation has since succeeded (run through
/// the MCP gateway's `tollgate_rollback`) is marked `"done": true`, whichever
/// task of the delegation tree ran it: a parent that undid its child's step
/// leaves nothing for the child to undo again.
pub async fn rollback_plan(state: &AppState, task: &Task) -> Result<Vec<Value>, Error> {
    let lineage = state
        .store
        .lineage(&task.id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("task {}", task.id)))?;
    let root_id = lineage.root().id.clone();
    let below_root = state.store.descendants(&root_id).await?;
    // The task's own subtree, from the tree already read (parents come first).
    let mut mine = BTreeSet::from([task.id.clone()]);
    for t in &below_root {
        if t.parent_task_id.as_ref().is_some_and(|p| mine.contains(p)) {
            mine.insert(t.id.clone());
        }
    }
    let tree: Vec<String> = std::iter::once(root_id)
        .chain(below_root.into_iter().map(|t| t.id))
        .collect();
    let mut steps = Vec::new();
    let mut compensated = BTreeSet::new();
    for t in &tree {
        let entries = super::checkpoints::task_entries(state, t).await?;
        for e in entries
            .iter()
            .filter(|e| e.event.kind == EventKind::ActionResult.as_str())
        {
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
