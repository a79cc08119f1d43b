//! Tasks: opening one (a policy decision over agent, incident and intent),
//! delegating a narrower part of one to another agent, renewing its
//! credential, attaching evidence to it, and closing one.
//! Both decisions pass the same gateway checks as every action (`gate`).

use super::gate::{quarantine_key, Evaluated, Gate, FROZEN_KEY};
use super::lifecycle::cascade;
use super::{new_id, Error};
use crate::state::AppState;
use serde_json::json;
use std::collections::BTreeSet;
use tollgate_audit::AuditEvent;
use tollgate_core::{
    child_lifetime, Agent, Decision, EventKind, Incident, IncidentRef, IncidentStatus, Outcome,
    Scope, SpiffeId, Task, TaskStatus, UnixTime,
};
use tollgate_identity::{Actor, TaskClaims, TaskGrant};
use tollgate_policy::{AgentFacts, DelegateFacts, ResourceRef, TaskOpenFacts};
use tollgate_store::{Batch, Change, Conflict, Evidence, StoreError};

/// A task granted: its id and credential.
pub struct Granted {
    pub task_id: String,
    pub credential: String,
    pub expires_at: UnixTime,
    pub request_id: String,
}

/// A refusal by the gateway or policy: audited, with its reasons.
pub struct Refused {
    pub request_id: String,
    pub reasons: Vec<String>,
    /// The determining policies; `None` when the gateway refused before
    /// policy ran (a delegation wider, longer or deeper than allowed).
    pub policies: Option<Vec<String>>,
}

/// The gateway-wide state an agent operation is checked against, read from
/// the store (never from this process) so every replica agrees.
async fn gate_facts(state: &AppState, agent: &str) -> Result<(bool, Option<String>), Error> {
    let frozen = state.store.setting(FROZEN_KEY).await?.as_deref() == Some("true");
    let quarantine = state.store.setting(&quarantine_key(agent)).await?;
    Ok((frozen, quarantine))
}

/// What an agent asks for when it opens a task.
pub struct TaskRequest {
    pub incident: IncidentRef,
    pub environment: String,
    pub playbook: String,
    pub intent: String,
    pub ttl_seconds: i64,
}

/// Open a task: gateway checks, then policy (`task.open`); anything but
/// allow is a refusal (opening a task has no approval flow).
pub async fn open_task(
    state: &AppState,
    agent: &Agent,
    req: &TaskRequest,
) -> Result<Result<Granted, Refused>, Error> {
    let now = state.now();
    let request_id = new_id("req");
    let pack = state.pack.load_full();
    let stored = state.store.incident(&req.incident.id).await?;
    // The first report of an incident is recorded as the agent states it;
    // after that the stored record (which admins update) is authoritative.
    let is_new = stored.is_none();
    let incident = stored.unwrap_or_else(|| Incident {
        id: req.incident.id.clone(),
        class: req.incident.class.clone(),
        severity: req.incident.severity,
        status: IncidentStatus::Open,
        updated_at: now,
    });
    let mut decision = judge_open(state, &pack, agent, req, &incident, now).await?;
    let max_ttl = state.config.task_max_ttl_seconds;
    if req.ttl_seconds > max_ttl && decision.outcome != Outcome::Deny {
        decision = Decision::deny(format!("ttl_seconds exceeds the maximum of {max_ttl}"));
    }
    if decision.outcome != Outcome::Allow {
        if decision.outcome == Outcome::ApprovalRequired {
            decision
                .reasons
                .push("task opening cannot wait for approval; refused".into());
        }
        let ev = AuditEvent::new(now, EventKind::TaskRefused, agent.spiffe_id.clone())
            .agent(agent.spiffe_id.clone())
            .incident(incident.id.clone())
            .request(request_id.clone())
            .outcome("deny")
            .detail(json!({"request": {"incident": req.incident, "environment": req.environment, "playbook": req.playbook, "intent": req.intent, "ttl_seconds": req.ttl_seconds}, "policies": decision.policies, "reasons": decision.reasons, "policy_digest": pack.digest()}));
        state.store.commit(Batch::audit_only(ev)).await?;
        return Ok(Err(refused(request_id, decision)));
    }
    let task = Task {
        id: new_id("task"),
        agent: agent.spiffe_id.clone(),
        incident_id: incident.id.clone(),
        environment: req.environment.clone(),
        playbook: req.playbook.clone(),
        intent: req.intent.clone(),
        scope: Scope::default(),
        parent_task_id: None,
        created_at: now,
        expires_at: now.saturating_add(req.ttl_seconds),
        max_expires_at: now.saturating_add(max_ttl),
        status: TaskStatus::Active,
        status_reason: None,
    };
    let (credential, jti) = issue(state, &task, task.expires_at, None, now)?;
    let mut batch = Batch::default();
    if is_new {
        batch = batch
            .change(Change::RecordIncident(incident.clone()))
            .event(
                AuditEvent::new(now, EventKind::IncidentRecorded, agent.spiffe_id.clone())
                    .incident(incident.id.clone())
                    .detail(json!({"class": incident.class, "severity": incident.severity})),
            );
    }
    batch = batch.change(Change::InsertTask(task.clone())).event(
        AuditEvent::new(now, EventKind::TaskOpened, agent.spiffe_id.clone())
            .agent(agent.spiffe_id.clone())
            .task(task.id.clone())
            .incident(incident.id.clone())
            .request(request_id.clone())
            .outcome("allow")
            .detail(json!({
                "environment": req.environment, "playbook": req.playbook, "intent": req.intent,
                "expires_at": task.expires_at, "credential_jti": jti, "policies": decision.policies, "reasons": decision.reasons, "policy_digest": pack.digest(),
            })),
    );
    state.store.commit(batch).await?;
    Ok(Ok(Granted {
        task_id: task.id,
        credential,
        expires_at: task.expires_at,
        request_id,
    }))
}

/// The gateway checks, the incident as recorded, and policy (`task.open`).
async fn judge_open(
    state: &AppState,
    pack: &tollgate_policy::PolicyPack,
    agent: &Agent,
    req: &TaskRequest,
    incident: &Incident,
    now: UnixTime,
) -> Result<Decision, Error> {
    let (frozen, quarantine) = gate_facts(state, &agent.spiffe_id).await?;
    let gate = Gate {
        frozen,
        agent: &agent.spiffe_id,
        quarantine: quarantine.as_deref(),
        dead_chain: None,
        incident: Some((&incident.id, Some(incident))),
    };
    Ok(match gate.refusal() {
        Some(d) => d,
        None if incident.class != req.incident.class
            || incident.severity != req.incident.severity =>
        {
            Decision::deny(format!(
                "incident {} is recorded as class {} severity {}",
                incident.id,
                incident.class,
                incident.severity.as_str()
            ))
        }
        None => {
            let id =
                SpiffeId::parse(&agent.spiffe_id).map_err(|e| Error::Internal(e.to_string()))?;
            let facts = TaskOpenFacts {
                agent: AgentFacts {
                    spiffe_id: &id,
                    owner: &agent.owner,
                },
                incident,
                environment: &req.environment,
                playbook: &req.playbook,
                intent: &req.intent,
                ttl_seconds: req.ttl_seconds,
                now,
            };
            Evaluated::from(pack.decide_task_open(&facts)).into_decision("task.open")?
        }
    })
}

fn refused(request_id: String, decision: Decision) -> Refused {
    Refused {
        request_id,
        reasons: decision.reasons,
        policies: Some(decision.policies),
    }
}

/// A task credential for `task` until `exp` (with the actor chain of a
/// delegated one); returns the token and its `jti`.
fn issue(
    state: &AppState,
    task: &Task,
    exp: UnixTime,
    act: Option<Actor>,
    now: UnixTime,
) -> Result<(String, String), Error> {
    let jti = new_id("cred");
    let grant = TaskGrant {
        sub: task.agent.clone(),
        task_id: task.id.clone(),
        incident_id: task.incident_id.clone(),
        scope: task.scope.clone(),
        iat: now,
        exp,
        jti: jti.clone(),
        act,
    };
    let (credential, _) = state
        .tokens
        .issue_task_credential(grant)
        .map_err(|e| Error::Internal(e.to_string()))?;
    Ok((credential, jti))
}

/// What the delegating agent asks for.
pub struct DelegationRequest {
    pub agent: String,
    pub actions: BTreeSet<String>,
    pub resources: BTreeSet<String>,
    pub ttl_seconds: i64,
    pub intent: String,
}

/// Everything a delegation is judged on, for its audit entries.
struct Delegation<'a> {
    parent: &'a Task,
    req: &'a DelegationRequest,
    request_id: String,
    depth: u32,
    now: UnixTime,
}

impl Delegation<'_> {
    /// `task.delegation_refused`, audited before the refusal is answered.
    fn refusal(&self, reasons: &[String], policies: &[String]) -> AuditEvent {
        let p = self.parent;
        AuditEvent::new(self.now, EventKind::TaskDelegationRefused, p.agent.clone())
            .agent(p.agent.clone())
            .task(p.id.clone())
            .incident(p.incident_id.clone())
            .request(self.request_id.clone())
            .outcome("deny")
            .detail(json!({"child_agent": self.req.agent, "actions": self.req.actions, "resources": self.req.resources, "ttl_seconds": self.req.ttl_seconds, "depth": self.depth, "reasons": reasons, "policies": policies}))
    }
}

/// Hand a sub-scope of `parent` to another agent. The child is never wider
/// than its parent (attenuation, lifetime, depth are the gateway's, before
/// policy), and the parent must still be live when the child is born.
pub async fn delegate(
    state: &AppState,
    parent_agent: &Agent,
    claims: &TaskClaims,
    parent: &Task,
    req: &DelegationRequest,
) -> Result<Result<Granted, Refused>, Error> {
    let now = state.now();
    let child_id =
        SpiffeId::parse(&req.agent).map_err(|e| Error::invalid(format!("agent: {e}")))?;
    let lineage =
        state.store.lineage(&parent.id).await?.ok_or_else(|| {
            Error::Unauthenticated(format!("task {} is no longer active", parent.id))
        })?;
    let d = Delegation {
        parent,
        req,
        request_id: new_id("req"),
        depth: lineage.depth() + 1,
        now,
    };
    let child_agent = receiver(state, &d, &child_id).await?;
    let checked = tollgate_core::check_receiver(
        &child_id.to_string(),
        lineage.agents().iter().map(String::as_str),
    )
    .and_then(|()| parent.scope.attenuate(&req.actions, &req.resources))
    .and_then(|scope| {
        let cfg = &state.config;
        child_lifetime(
            parent,
            now,
            req.ttl_seconds,
            cfg.task_max_ttl_seconds,
            d.depth,
            cfg.max_delegation_depth,
        )
        .map(|l| (scope, l))
    });
    let (scope, (expires_at, max_expires_at)) = match checked {
        Ok(v) => v,
        Err(e) => {
            let reasons = vec![e.to_string()];
            state
                .store
                .commit(Batch::audit_only(d.refusal(&reasons, &[])))
                .await?;
            return Ok(Err(Refused {
                request_id: d.request_id,
                reasons,
                policies: None,
            }));
        }
    };
    let decision = judge_delegation(state, parent_agent, &child_id, &child_agent, &d).await?;
    if decision.outcome != Outcome::Allow {
        let mut decision = decision;
        if decision.outcome == Outcome::ApprovalRequired {
            decision
                .reasons
                .push("delegation cannot wait for approval; refused".into());
        }
        let ev = d.refusal(&decision.reasons, &decision.policies);
        state.store.commit(Batch::audit_only(ev)).await?;
        return Ok(Err(refused(d.request_id, decision)));
    }
    let task = Task {
        id: new_id("task"),
        agent: child_id.to_string(),
        intent: req.intent.clone(),
        scope,
        parent_task_id: Some(parent.id.clone()),
        created_at: now,
        expires_at,
        max_expires_at,
        status: TaskStatus::Active,
        status_reason: None,
        ..parent.clone()
    };
    // RFC 8693: the child acts, on behalf of the parent's chain.
    let act = Actor {
        sub: parent.agent.clone(),
        act: claims.act.clone().map(Box::new),
    };
    let (credential, jti) = issue(state, &task, task.expires_at, Some(act.clone()), now)?;
    let pack = state.pack.load();
    let batch = Batch::default()
        // The parent must still be live when the child is born.
        .change(Change::RequireTaskLive { task_id: parent.id.clone(), now })
        .change(Change::InsertTask(task.clone()))
        .event(
            AuditEvent::new(now, EventKind::TaskDelegated, parent.agent.clone())
                .agent(task.agent.clone())
                .task(task.id.clone())
                .parent_task(Some(parent.id.clone()))
                .incident(task.incident_id.clone())
                .request(d.request_id.clone())
                .outcome("allow")
                .detail(json!({
                    "from": parent.agent, "to": task.agent, "scope": task.scope, "depth": d.depth,
                    "expires_at": expires_at, "intent": req.intent, "act": act, "credential_jti": jti,
                    "policies": decision.policies, "reasons": decision.reasons, "policy_digest": pack.digest(),
                })),
        );
    state.store.commit(batch).await.map_err(|e| match e {
        StoreError::Conflict(Conflict::TaskNotLive { .. }) => {
            Error::Unauthenticated(format!("task {} is no longer active", parent.id))
        }
        e => e.into(),
    })?;
    Ok(Ok(Granted {
        task_id: task.id,
        credential,
        expires_at,
        request_id: d.request_id,
    }))
}

/// The receiving agent: registered and not revoked, or a refusal on the record.
async fn receiver(
    state: &AppState,
    d: &Delegation<'_>,
    child_id: &SpiffeId,
) -> Result<Agent, Error> {
    match state.store.agent(&child_id.to_string()).await? {
        Some(a) if !a.revoked => Ok(a),
        other => {
            let why = match other {
                Some(_) => format!("agent {child_id} is revoked"),
                None => format!("agent {child_id} is not registered"),
            };
            let ev = d.refusal(std::slice::from_ref(&why), &[]);
            state.store.commit(Batch::audit_only(ev)).await?;
            Err(match other {
                Some(_) => Error::Forbidden(why),
                None => Error::invalid(why),
            })
        }
    }
}

/// The gateway checks and policy (`task.delegate`) for a delegation.
async fn judge_delegation(
    state: &AppState,
    parent_agent: &Agent,
    child_id: &SpiffeId,
    child_agent: &Agent,
    d: &Delegation<'_>,
) -> Result<Decision, Error> {
    let parent = d.parent;
    let (frozen, quarantine) = gate_facts(state, &parent.agent).await?;
    let gate = Gate {
        frozen,
        agent: &parent.agent,
        quarantine: quarantine.as_deref(),
        dead_chain: None,
        incident: None,
    };
    if let Some(denial) = gate.refusal() {
        return Ok(denial);
    }
    let incident = state
        .store
        .incident(&parent.incident_id)
        .await?
        .ok_or_else(|| Error::Internal("the task's incident is missing".into()))?;
    let parent_id = SpiffeId::parse(&parent.agent).map_err(|e| Error::Internal(e.to_string()))?;
    let facts = DelegateFacts {
        parent: AgentFacts {
            spiffe_id: &parent_id,
            owner: &parent_agent.owner,
        },
        child: AgentFacts {
            spiffe_id: child_id,
            owner: &child_agent.owner,
        },
        task: parent,
        incident: &incident,
        actions: &d.req.actions,
        resources: &d.req.resources,
        ttl_seconds: d.req.ttl_seconds,
        depth: d.depth,
        intent: &d.req.intent,
    };
    Evaluated::from(state.pack.load().decide_delegate(&facts)).into_decision("task.delegate")
}

/// Close a task (`completed` or `failed`); every delegated descendant dies with it.
pub async fn close_task(
    state: &AppState,
    task: &Task,
    status: TaskStatus,
    summary: Option<String>,
) -> Result<(), Error> {
    let now = state.now();
    let reason = summary
        .clone()
        .unwrap_or_else(|| "closed by the agent".into());
    let mut batch = Batch::default()
        .change(Change::EndTask {
            task_id: task.id.clone(),
            status,
            reason,
        })
        .event(
            AuditEvent::new(now, EventKind::TaskClosed, task.agent.clone())
                .agent(task.agent.clone())
                .task(task.id.clone())
                .incident(task.incident_id.clone())
                .outcome(status.as_str())
                .detail(json!({"summary": summary})),
        );
    let known = state.store.descendants(&task.id).await?;
    let why = format!("parent task {} was closed", task.id);
    cascade(&mut batch, task, &known, &why, &task.agent, now);
    state.store.commit(batch).await?;
    Ok(())
}

/// A task's credential renewed.
pub struct Renewed {
    pub credential: String,
    pub expires_at: UnixTime,
}

/// A fresh credential for a live task: the configured TTL from now, never
/// past the task's hard maximum. It carries the actor chain of the
/// credential it replaces.
pub async fn renew_task(
    state: &AppState,
    task: &Task,
    claims: &TaskClaims,
) -> Result<Renewed, Error> {
    let now = state.now();
    let expires_at = now
        .saturating_add(state.config.task_ttl_seconds)
        .min(task.max_expires_at);
    if expires_at <= now {
        return Err(Error::Conflict(format!(
            "task {} has reached its maximum lifetime",
            task.id
        )));
    }
    let (credential, jti) = issue(state, task, expires_at, claims.act.clone(), now)?;
    let batch = Batch::default().change(Change::RenewTask { task_id: task.id.clone(), expires_at, now }).event(
        AuditEvent::new(now, EventKind::TaskRenewed, task.agent.clone())
            .agent(task.agent.clone())
            .task(task.id.clone())
            .incident(task.incident_id.clone())
            .detail(json!({"expires_at": expires_at, "credential_jti": jti, "max_expires_at": task.max_expires_at})),
    );
    state.store.commit(batch).await?;
    Ok(Renewed {
        credential,
        expires_at,
    })
}

/// Evidence an agent attaches to its task.
pub struct NewEvidence {
    pub resource: ResourceRef,
    pub kind: String,
    /// Lowercase hex SHA-256 of the content.
    pub sha256: String,
    pub content: Option<String>,
}

/// Attach evidence about a resource to a task; its hash goes into the audit
/// chain. Content, when given, must be what the hash names. Returns the
/// evidence id.
pub async fn add_evidence(state: &AppState, task: &Task, ev: NewEvidence) -> Result<String, Error> {
    if let Some(c) = &ev.content {
        if tollgate_core::sha256_hex(c.as_bytes()) != ev.sha256 {
            return Err(Error::invalid("content does not hash to sha256"));
        }
    }
    let now = state.now();
    let evidence_id = new_id("ev");
    let resource = ev.resource.key();
    let batch = Batch::default()
        .change(Change::PutEvidence(Evidence {
            id: evidence_id.clone(),
            task_id: task.id.clone(),
            resource: resource.clone(),
            kind: ev.kind.clone(),
            sha256: ev.sha256.clone(),
            content: ev.content,
            created_at: now,
        }))
        .event(
            AuditEvent::new(now, EventKind::EvidenceRecorded, task.agent.clone())
                .agent(task.agent.clone())
                .task(task.id.clone())
                .incident(task.incident_id.clone())
                .detail(json!({"evidence_id": evidence_id, "resource": resource, "kind": ev.kind, "sha256": ev.sha256})),
        );
    state.store.commit(batch).await?;
    Ok(evidence_id)
}
