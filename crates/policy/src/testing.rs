//! `tollgate policy test`: traces of requests with expected decisions, run
//! against a pack offline, so chain rules are testable as sequences and a
//! pack can be checked in a user's own CI.
//!
//! ```yaml
//! name: egress after a secret read is denied and revokes the task
//! agent: spiffe://acme.test/agent/ir-responder/i-1
//! incident: {id: INC-1, class: malware, severity: high}
//! steps:
//!   - action: vault.read_secret
//!     resource: {type: Secret, id: prod-db}
//!     expect: allow
//!   - action: http.post
//!     resource: {type: Url, id: "https://pastebin.com/x", attributes: {domain: pastebin.com}}
//!     after_seconds: 60
//!     expect: deny
//!     expect_policies: [no-egress-after-secret-read]   # among the deciding policies
//!   - action: edr.read_alerts
//!     resource: {type: Host, id: web-1}
//!     expect: revoked        # the task was revoked by the step before
//! ```
//!
//! Each step's outcome joins the simulated history exactly as the gateway
//! records it; `approval_required` steps count as granted when `approved: true`.

use crate::{ActionFacts, AgentFacts, PolicyPack, ResourceRef};
use serde::Deserialize;
use serde_json::{Map, Value};
use tollgate_core::{
    ActionRecord, HistorySummary, Incident, IncidentRef, IncidentStatus, Outcome, Scope, SpiffeId,
    Task, TaskStatus,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestFile {
    pub name: String,
    pub agent: String,
    #[serde(default = "d_owner")]
    pub owner: String,
    pub incident: IncidentRef,
    #[serde(default = "d_env")]
    pub environment: String,
    #[serde(default = "d_playbook")]
    pub playbook: String,
    pub steps: Vec<Step>,
}

fn d_owner() -> String {
    "owner@acme.test".into()
}
fn d_env() -> String {
    "prod".into()
}
fn d_playbook() -> String {
    "contain-malware".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub action: String,
    pub resource: ResourceRef,
    #[serde(default)]
    pub parameters: Map<String, Value>,
    #[serde(default)]
    pub intent: Option<String>,
    /// Evidence for the resource was recorded before this step.
    #[serde(default)]
    pub evidence: bool,
    /// For `approval_required` steps: the approval was granted and used.
    #[serde(default)]
    pub approved: bool,
    /// Seconds after the previous step (default 1).
    #[serde(default)]
    pub after_seconds: Option<i64>,
    /// `allow`, `deny`, `approval_required`, or `revoked` (the task was revoked earlier).
    pub expect: String,
    #[serde(default)]
    pub expect_policies: Vec<String>,
    /// For `approval_required` steps: how many distinct approvals it needs.
    #[serde(default)]
    pub expect_approvals: Option<u32>,
}

/// One step that did not go as expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub step: usize,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum TestError {
    #[error("{0}")]
    Parse(String),
}

pub fn parse(text: &str) -> Result<TestFile, TestError> {
    serde_yaml_ng::from_str(text).map_err(|e| TestError::Parse(e.to_string()))
}

/// Run one trace; an empty list means it passed.
pub fn run(pack: &PolicyPack, t: &TestFile) -> Result<Vec<Failure>, TestError> {
    let agent = SpiffeId::parse(&t.agent).map_err(|e| TestError::Parse(format!("agent: {e}")))?;
    let start = 1_800_000_000;
    let incident = Incident {
        id: t.incident.id.clone(),
        class: t.incident.class.clone(),
        severity: t.incident.severity,
        status: IncidentStatus::Open,
        updated_at: start,
    };
    let task = Task {
        id: "task_test".into(),
        agent: agent.to_string(),
        incident_id: incident.id.clone(),
        environment: t.environment.clone(),
        playbook: t.playbook.clone(),
        intent: t.name.clone(),
        scope: Scope::default(),
        parent_task_id: None,
        created_at: start,
        expires_at: start + 86_400,
        max_expires_at: start + 86_400,
        status: TaskStatus::Active,
        status_reason: None,
    };
    let mut now = start;
    let mut past: Vec<ActionRecord> = Vec::new();
    let mut revoked = false;
    let mut failures = Vec::new();
    for (i, step) in t.steps.iter().enumerate() {
        let n = i + 1;
        now += step.after_seconds.unwrap_or(1);
        if revoked {
            if step.expect != "revoked" {
                failures.push(Failure {
                    step: n,
                    message: format!("expected {}, but the task was already revoked", step.expect),
                });
            }
            continue;
        }
        let history = HistorySummary::from_records(&past, pack.catalog(), now);
        // The trace is one task of one agent on one incident: every scope
        // of a rule reads the same past.
        let seen: Vec<tollgate_core::temporal::Past<'_>> = past
            .iter()
            .map(|record| tollgate_core::temporal::Past {
                record,
                incident_id: &incident.id,
            })
            .collect();
        let key = step.resource.key();
        let rules = pack.rules().values(
            &seen,
            &tollgate_core::temporal::Subject {
                root_task_id: &task.id,
                agent: &task.agent,
                incident_id: &incident.id,
                resource: &key,
            },
            now,
        );
        let facts = ActionFacts {
            agent: AgentFacts {
                spiffe_id: &agent,
                owner: &t.owner,
            },
            task: &task,
            incident: &incident,
            action: &step.action,
            resource: &step.resource,
            intent: step.intent.as_deref().unwrap_or(&t.name),
            parameters: &step.parameters,
            evidence_present: step.evidence,
            history: &history,
            rules: &rules,
            now,
        };
        let d = match pack.decide_action(&facts) {
            Ok(d) => d,
            Err(e) => {
                failures.push(Failure {
                    step: n,
                    message: format!("bad request: {e}"),
                });
                continue;
            }
        };
        let outcome = if d.outcome == Outcome::ApprovalRequired && step.approved {
            Outcome::Allow
        } else {
            d.outcome
        };
        let shown = if d.outcome == Outcome::ApprovalRequired && step.approved {
            "approval_required (approved)"
        } else {
            d.outcome.as_str()
        };
        let expected_outcome = if step.approved && step.expect == "approval_required" {
            "allow"
        } else {
            step.expect.as_str()
        };
        if expected_outcome != outcome.as_str() {
            failures.push(Failure {
                step: n,
                message: format!(
                    "{} on {}: expected {}, got {shown} ({})",
                    step.action,
                    step.resource.key(),
                    step.expect,
                    d.reasons.join("; ")
                ),
            });
        }
        if let Some(want) = step.expect_approvals {
            if d.outcome != Outcome::ApprovalRequired || d.approvals_required != want {
                failures.push(Failure {
                    step: n,
                    message: format!(
                        "expected {want} approval(s), got {} needing {}",
                        d.outcome.as_str(),
                        d.approvals_required
                    ),
                });
            }
        }
        for p in &step.expect_policies {
            if !d.policies.contains(p) {
                failures.push(Failure {
                    step: n,
                    message: format!("expected policy {p} among {:?}", d.policies),
                });
            }
        }
        if let Some(op) = pack.catalog().operation(&step.action) {
            past.push(ActionRecord {
                root_task_id: task.id.clone().into(),
                task_id: task.id.clone().into(),
                agent: task.agent.clone().into(),
                request_id: format!("step-{n}"),
                action: step.action.clone().into(),
                resource: step.resource.key().into(),
                tier: op.tier,
                labels: op.labels.clone().into(),
                outcome,
                ts: now,
            });
        }
        if d.outcome == Outcome::Deny && d.revoke_task {
            revoked = true;
        }
    }
    Ok(failures)
}
