//! `judge` without a store: generated facts over the example pack, and the
//! properties every verdict must have whatever the facts are.

use super::*;
use proptest::prelude::*;
use std::sync::OnceLock;
use tollgate_core::{
    ApprovalStatus, Incident, IncidentStatus, Lineage, Scope, Severity, TaskStatus, Tier, Vote,
};

const NOW: UnixTime = 1_000_000;
const AGENT: &str = "spiffe://acme.test/agent/ir-responder/i-1";

fn pack() -> &'static PolicyPack {
    static PACK: OnceLock<PolicyPack> = OnceLock::new();
    PACK.get_or_init(|| match crate::embedded::pack(Default::default()) {
        Ok(p) => p,
        Err(e) => unreachable!("the embedded pack validates: {e}"),
    })
}

fn config() -> &'static ServerConfig {
    static CONFIG: OnceLock<ServerConfig> = OnceLock::new();
    CONFIG.get_or_init(
        || match ServerConfig::from_yaml(crate::embedded::config_text()) {
            Ok(c) => c,
            Err(e) => unreachable!("the embedded config validates: {e}"),
        },
    )
}

fn task(id: &str, parent: Option<&str>, status: TaskStatus) -> Task {
    Task {
        id: id.into(),
        agent: AGENT.into(),
        incident_id: "INC-1".into(),
        environment: "prod".into(),
        playbook: "contain-malware".into(),
        intent: "contain".into(),
        scope: Scope::default(),
        parent_task_id: parent.map(str::to_string),
        created_at: NOW - 100,
        expires_at: NOW + 600,
        max_expires_at: NOW + 3600,
        status,
        status_reason: None,
    }
}

fn agent() -> Agent {
    Agent {
        spiffe_id: AGENT.into(),
        owner: "alice".into(),
        created_at: NOW - 1000,
        revoked: false,
    }
}

/// Everything a verdict depends on, generated.
#[derive(Debug, Clone)]
struct World {
    action: &'static str,
    frozen: bool,
    quarantined: bool,
    dead_parent: bool,
    incident: Option<IncidentStatus>,
    severity: Severity,
    evidence: bool,
    /// Earlier allowed actions of the tree, `(action, seconds ago)`.
    history: Vec<(&'static str, i64)>,
    /// The agent presents an approval in this state.
    presented: Option<ApprovalStatus>,
}

const ACTIONS: &[&str] = &[
    "edr.read_alerts",
    "siem.query",
    "vault.read_secret",
    "forensics.image_host",
    "edr.isolate_host",
    "edr.release_host",
    "iam.disable_account",
    "iam.enable_account",
    "vault.rotate_secret",
    "http.post",
    "logs.delete",
];

fn world() -> impl Strategy<Value = World> {
    (
        prop::sample::select(ACTIONS),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        prop::option::of(prop::sample::select(vec![
            IncidentStatus::Open,
            IncidentStatus::Open,
            IncidentStatus::Resolved,
            IncidentStatus::Closed,
        ])),
        prop::sample::select(vec![
            Severity::Low,
            Severity::Medium,
            Severity::High,
            Severity::Critical,
        ]),
        any::<bool>(),
        prop::collection::vec((prop::sample::select(ACTIONS), 0i64..7200), 0..12),
        prop::option::of(prop::sample::select(vec![
            ApprovalStatus::Pending,
            ApprovalStatus::Approved,
            ApprovalStatus::Used,
            ApprovalStatus::Denied,
            ApprovalStatus::Expired,
        ])),
    )
        .prop_map(
            |(
                action,
                frozen,
                quarantined,
                dead_parent,
                incident,
                severity,
                evidence,
                history,
                presented,
            )| World {
                action,
                frozen,
                quarantined,
                dead_parent,
                incident,
                severity,
                evidence,
                history,
                presented,
            },
        )
}

fn resource_for(action: &str) -> ResourceRef {
    let kind = match pack().catalog().operation(action) {
        Some(op) => op.resource_types.first().cloned().unwrap_or_default(),
        None => String::new(),
    };
    ResourceRef {
        kind,
        id: "web-1".into(),
        attributes: Map::new(),
    }
}

struct Case {
    world: World,
    task: Task,
    agent: Agent,
    resource: ResourceRef,
    parameters: Map<String, Value>,
}

impl Case {
    fn new(world: World) -> Self {
        let parent = if world.dead_parent {
            Some("task_parent")
        } else {
            None
        };
        Case {
            resource: resource_for(world.action),
            task: task("task_1", parent, TaskStatus::Active),
            agent: agent(),
            parameters: Map::new(),
            world,
        }
    }

    fn ask(&self) -> ActionAsk<'_> {
        ActionAsk {
            task: &self.task,
            agent: &self.agent,
            action: self.world.action,
            resource: &self.resource,
            intent: "contain the beacon",
            parameters: &self.parameters,
            actor: AGENT.into(),
            kind: EventKind::Decision,
            traceparent: None,
            approval_id: self.world.presented.map(|_| "apr_presented"),
        }
    }

    fn prepared(&self) -> Prepared {
        let request_hash = tollgate_core::approval::request_hash(
            &self.task.id,
            self.world.action,
            &self.resource.kind,
            &self.resource.id,
            &Value::Object(Map::new()),
            &Value::Object(Map::new()),
        );
        Prepared {
            request_id: "req_1".into(),
            new_approval_id: "apr_new".into(),
            logged_parameters: Map::new(),
            request_hash,
            agent_limits: agent_count_queries(config(), pack(), self.world.action, 0)
                .into_iter()
                .map(|(i, _)| i)
                .collect(),
            // The example pack's rules by agent, incident and resource.
            rule_scans: rule_scans(
                &[pack()],
                &self.task,
                &self.task.agent,
                &format!("{}::{}", self.resource.kind, self.resource.id),
            ),
        }
    }

    fn facts(&self) -> StoredFacts {
        let w = &self.world;
        let mut ancestors = vec![];
        if w.dead_parent {
            ancestors.push(task("task_parent", None, TaskStatus::Revoked));
        }
        let history = w
            .history
            .iter()
            .enumerate()
            .map(|(i, (action, ago))| {
                let op = pack().catalog().operation(action);
                ActionRecord {
                    root_task_id: "task_1".into(),
                    task_id: "task_1".into(),
                    agent: AGENT.into(),
                    request_id: format!("req_old_{i}"),
                    action: action.to_string().into(),
                    resource: "Host::web-1".into(),
                    tier: op.map_or(Tier::Read, |o| o.tier),
                    labels: op.map(|o| o.labels.clone()).unwrap_or_default().into(),
                    outcome: Outcome::Allow,
                    ts: NOW - ago,
                }
            })
            .collect::<Vec<_>>();
        let prepared = self.prepared();
        let presented = w.presented.map(|status| Approval {
            id: "apr_presented".into(),
            version: 3,
            request_hash: prepared.request_hash.clone(),
            request_id: "req_0".into(),
            task_id: self.task.id.clone(),
            agent: AGENT.into(),
            agent_owner: "alice".into(),
            incident_id: "INC-1".into(),
            action: w.action.into(),
            resource: self.resource.key(),
            request: json!({}),
            required: 1,
            deny_threshold: 1,
            policies: vec![],
            reasons: vec![],
            status,
            votes: vec![Vote {
                approver: "bob".into(),
                role: "ir-lead".into(),
                approve: true,
                reason: "ok".into(),
                ts: NOW - 10,
            }],
            created_at: NOW - 60,
            expires_at: NOW + 600,
            escalated: false,
            decided_at: Some(NOW - 10),
            used_at: None,
            used_by: None,
        });
        StoredFacts {
            lineage: Lineage {
                task: self.task.clone(),
                ancestors,
                missing_parent: None,
            },
            agent: Some(self.agent.clone()),
            incident: w.incident.map(|status| Incident {
                id: "INC-1".into(),
                class: "malware".into(),
                severity: w.severity,
                status,
                updated_at: NOW - 500,
            }),
            frozen: w.frozen,
            quarantine: w.quarantined.then(|| "burst of denials".to_string()),
            evidence_present: w.evidence,
            history: std::sync::Arc::new(history.into()),
            agent_counts: vec![0; prepared.agent_limits.len()],
            // Nothing in the other scopes' past: every rule false or 0.
            scanned: vec![vec![]; prepared.rule_scans.len()],
            presented_approval: presented,
            pending_approvals: vec![],
        }
    }

    fn verdict(&self) -> Verdict {
        judge(
            pack(),
            None,
            config(),
            &self.ask(),
            &self.prepared(),
            &self.facts(),
            NOW,
        )
    }
}

fn decision_events(v: &Verdict) -> Vec<&AuditEvent> {
    v.batch
        .audit
        .iter()
        .filter(|e| e.kind == EventKind::Decision.as_str())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever else is true, these never allow.
    #[test]
    fn the_gateway_checks_always_deny(w in world()) {
        let case = Case::new(w.clone());
        let v = case.verdict();
        let open = w.incident == Some(IncidentStatus::Open);
        if w.frozen || w.quarantined || w.dead_parent || !open {
            prop_assert_ne!(v.decision.outcome, Outcome::Allow);
            prop_assert!(v.approval.as_ref().is_none_or(|a| a.status != ApprovalStatus::Used));
        }
    }

    /// One decision, one entry, one history record; the task must still
    /// be live when it commits.
    #[test]
    fn every_verdict_commits_one_audited_decision(w in world()) {
        let v = Case::new(w).verdict();
        prop_assert!(v.refusal.is_none());
        let events = decision_events(&v);
        prop_assert_eq!(events.len(), 1);
        prop_assert_eq!(events[0].outcome.as_deref(), Some(v.decision.outcome.as_str()));
        prop_assert_eq!(events[0].request_id.as_deref(), Some("req_1"));
        let live_first = matches!(v.batch.changes.first(), Some(Change::RequireTaskLive { .. }));
        prop_assert!(live_first, "the first change asserts the task is live");
        let recorded: Vec<_> = v.batch.changes.iter().filter_map(|c| match c {
            Change::RecordAction(r) => Some(r),
            _ => None,
        }).collect();
        prop_assert_eq!(recorded.len(), 1);
        prop_assert_eq!(recorded[0].outcome, v.decision.outcome);
    }

    /// An approval is spent at most once: an allow that spends it carries
    /// the optimistic version check, and judging again over the spent
    /// approval never allows.
    #[test]
    fn an_approval_is_spent_at_most_once(w in world()) {
        let mut case = Case::new(w);
        let v = case.verdict();
        let approved = case.world.presented == Some(ApprovalStatus::Approved);
        let spent = v.batch.changes.iter().find_map(|c| match c {
            Change::UpdateApproval { approval, expected_version } if approval.status == ApprovalStatus::Used => Some((approval.clone(), *expected_version)),
            _ => None,
        });
        if let Some((approval, expected)) = spent {
            prop_assert_eq!(expected, 3);
            prop_assert_eq!(approval.used_by.as_deref(), Some("req_1"));
            prop_assert_eq!(v.decision.outcome, Outcome::Allow);
            case.world.presented = Some(ApprovalStatus::Used);
            let again = case.verdict();
            prop_assert_ne!(again.decision.outcome, Outcome::Allow);
        }
        // Only an approved approval is ever spent.
        let spends = v.batch.changes.iter().any(|c| {
            matches!(c, Change::UpdateApproval { approval, .. } if approval.status == ApprovalStatus::Used)
        });
        prop_assert!(approved || !spends, "only an approved approval is spent");
    }

    /// `evidence-before` is honoured: containment without evidence never allows.
    #[test]
    fn obligations_are_honoured(w in world()) {
        let v = Case::new(w.clone()).verdict();
        if v.decision.obligations.iter().any(|o| o == "evidence-before") && !w.evidence && w.presented.is_none() {
            prop_assert_ne!(v.decision.outcome, Outcome::Allow);
        }
    }

    /// Judging is a function: the same facts give the same verdict.
    #[test]
    fn judging_twice_gives_the_same_verdict(w in world()) {
        let case = Case::new(w);
        let (a, b) = (case.verdict(), case.verdict());
        prop_assert_eq!(a.decision, b.decision);
        prop_assert_eq!(format!("{:?}", a.batch), format!("{:?}", b.batch));
    }
}

#[test]
fn a_task_that_ended_before_the_commit_is_refused_and_audited() {
    let mut case = Case::new(World {
        action: "edr.read_alerts",
        frozen: false,
        quarantined: false,
        dead_parent: false,
        incident: Some(IncidentStatus::Open),
        severity: Severity::High,
        evidence: false,
        history: vec![],
        presented: None,
    });
    let allowed = case.verdict();
    assert_eq!(
        allowed.decision.outcome,
        Outcome::Allow,
        "{:?}",
        allowed.decision
    );
    case.task.status = TaskStatus::Revoked;
    let v = case.verdict();
    assert!(matches!(v.refusal, Some(Refusal::TaskEnded(_))));
    assert_eq!(v.decision.outcome, Outcome::Deny);
    assert_eq!(decision_events(&v).len(), 1);
    assert!(v.batch.changes.is_empty());
}

#[test]
fn an_approval_required_decision_opens_one_approval_or_shares_the_pending_one() {
    let case = Case::new(World {
        action: "iam.disable_account",
        frozen: false,
        quarantined: false,
        dead_parent: false,
        incident: Some(IncidentStatus::Open),
        severity: Severity::High,
        evidence: true,
        history: vec![],
        presented: None,
    });
    let v = case.verdict();
    assert_eq!(
        v.decision.outcome,
        Outcome::ApprovalRequired,
        "{:?}",
        v.decision
    );
    let opened = v.approval.clone().expect("an approval is opened");
    assert_eq!(opened.id, "apr_new");
    assert!(v
        .batch
        .changes
        .iter()
        .any(|c| matches!(c, Change::InsertApproval(_))));
    assert!(v
        .effects
        .iter()
        .any(|e| matches!(e, Effect::ApprovalCreated(_))));
    // Another decision sees it pending: shared, not opened again.
    let mut facts = case.facts();
    facts.pending_approvals = vec![opened.clone()];
    let again = judge(
        pack(),
        None,
        config(),
        &case.ask(),
        &case.prepared(),
        &facts,
        NOW + 1,
    );
    assert_eq!(again.approval.map(|a| a.id), Some(opened.id));
    assert!(!again
        .batch
        .changes
        .iter()
        .any(|c| matches!(c, Change::InsertApproval(_))));
}
