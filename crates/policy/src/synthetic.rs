//! Synthetic packs for benchmarks: a real pack plus generated per-agent
//! policies, the shape that grows large in practice (one or two policies per
//! enrolled agent, as template links or generated files would give).

use crate::{
    ActionFacts, AgentFacts, LoadOptions, PackSources, PolicyError, PolicyPack, ResourceRef,
    SourceFile,
};
use std::path::Path;
use tollgate_core::{
    Incident, IncidentStatus, Scope, Severity, SpiffeId, Task, TaskStatus, UnixTime,
};

/// The SPIFFE ID of generated agent `i`.
pub fn agent_id(trust_domain: &str, i: usize) -> String {
    format!("spiffe://{trust_domain}/agent/ir-responder/i-{i}")
}

/// Load the pack in `dir` and add generated per-agent policies until it
/// holds `total` policies (never fewer than the pack's own); also returns
/// how many agents got a policy. Agent `i` may read its own host `web-{i}`;
/// every tenth agent is instead forbidden destructive actions.
pub fn with_agent_policies(
    dir: &Path,
    trust_domain: &str,
    total: usize,
) -> Result<(PolicyPack, usize), PolicyError> {
    let mut src = PackSources::read(dir)?;
    let base = PolicyPack::from_pack_sources(&src, LoadOptions::default())?;
    let extra = total.saturating_sub(base.policy_count());
    if extra == 0 {
        return Ok((base, 0));
    }
    src.policies.push(SourceFile {
        name: "policies/zz-agents.cedar".into(),
        text: agent_policies(trust_domain, extra),
    });
    let pack = PolicyPack::from_pack_sources(&src, LoadOptions::default())?;
    Ok((pack, extra))
}

/// `count` per-agent policies, about ten per cent of them forbids.
pub fn agent_policies(trust_domain: &str, count: usize) -> String {
    let mut text = String::with_capacity(count * 200);
    for i in 0..count {
        let agent = agent_id(trust_domain, i);
        if i % 10 == 9 {
            text.push_str(&format!(
                "@id(\"agent-{i}-no-destructive\")\n@reason(\"agent {i} never runs destructive actions\")\nforbid (principal == Agent::\"{agent}\", action in Action::\"destructive\", resource);\n"
            ));
        } else {
            text.push_str(&format!(
                "@id(\"agent-{i}-own-host\")\n@reason(\"agent {i} may read its own host\")\npermit (principal == Agent::\"{agent}\", action in Action::\"read\", resource == Host::\"web-{i}\")\nwhen {{ context.incident.severity_rank >= 1 }};\n"
            ));
        }
    }
    text
}

/// A decision workload over a synthetic pack's agents: each agent has an
/// active task on one high-severity malware incident and a tree history of
/// 20 reads in the last hour; request `k` rotates over agents and over
/// read, contain, destructive, identity-change and SIEM operations.
pub struct Workload {
    ids: Vec<SpiffeId>,
    tasks: Vec<Task>,
    incident: Incident,
    resources: Vec<(&'static str, ResourceRef)>,
    parameters: serde_json::Map<String, serde_json::Value>,
    pub past: Vec<tollgate_core::ActionRecord>,
    pub now: UnixTime,
}

const OPS: [(&str, &str); 5] = [
    ("edr.read_alerts", "Host"),
    ("edr.isolate_host", "Host"),
    ("vault.rotate_secret", "Secret"),
    ("iam.disable_account", "Account"),
    ("siem.query", "SiemIndex"),
];

impl Workload {
    /// `agents` agents of `trust_domain` (at least one).
    pub fn new(trust_domain: &str, agents: usize) -> Result<Self, PolicyError> {
        let now = 1_800_000_000;
        let ids = (0..agents.max(1))
            .map(|i| {
                SpiffeId::parse(&agent_id(trust_domain, i))
                    .map_err(|e| PolicyError::BadRequest(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let tasks = ids
            .iter()
            .map(|id| Task {
                id: format!("task_{id}"),
                agent: id.to_string(),
                incident_id: "INC-1".into(),
                environment: "prod".into(),
                playbook: "contain-malware".into(),
                intent: "contain the beacon".into(),
                scope: Scope::default(),
                parent_task_id: None,
                created_at: now - 3600,
                expires_at: now + 600,
                max_expires_at: now + 3600,
                status: TaskStatus::Active,
                status_reason: None,
            })
            .collect();
        let resources = (0..ids.len())
            .flat_map(|a| {
                OPS.iter().map(move |(action, kind)| {
                    (
                        *action,
                        ResourceRef {
                            kind: (*kind).into(),
                            id: format!("web-{a}"),
                            attributes: serde_json::Map::new(),
                        },
                    )
                })
            })
            .collect();
        let past = (0..20)
            .map(|i| tollgate_core::ActionRecord {
                root_task_id: "task_bench".into(),
                task_id: "task_bench".into(),
                agent: agent_id(trust_domain, 0).into(),
                request_id: format!("req_{i}"),
                action: "edr.read_alerts".into(),
                resource: format!("Host::web-{i}").into(),
                tier: tollgate_core::Tier::Read,
                labels: vec!["reads-telemetry".into()].into(),
                outcome: tollgate_core::Outcome::Allow,
                ts: now - 3000 + i * 100,
            })
            .collect();
        Ok(Self {
            ids,
            tasks,
            incident: Incident {
                id: "INC-1".into(),
                class: "malware".into(),
                severity: Severity::High,
                status: IncidentStatus::Open,
                updated_at: 0,
            },
            resources,
            parameters: serde_json::Map::new(),
            past,
            now,
        })
    }

    /// The agent request `k` comes from.
    fn agent_of(&self, k: usize) -> usize {
        (k * 7919) % self.ids.len()
    }

    /// The pack's temporal rules for request `k`, evaluated over the past
    /// as the gateway would (the whole past is the request's scope).
    pub fn rules(
        &self,
        k: usize,
        rules: &tollgate_core::temporal::RuleSet,
    ) -> serde_json::Map<String, serde_json::Value> {
        let a = self.agent_of(k);
        let past: Vec<_> = self
            .past
            .iter()
            .map(|record| tollgate_core::temporal::Past {
                record,
                incident_id: &self.incident.id,
            })
            .collect();
        let (_, resource) = &self.resources[a * OPS.len() + k % OPS.len()];
        let key = resource.key();
        let subject = tollgate_core::temporal::Subject {
            root_task_id: &self.tasks[a].id,
            agent: &self.tasks[a].agent,
            incident_id: &self.incident.id,
            resource: &key,
        };
        rules.values(&past, &subject, self.now)
    }

    /// The facts of request `k`, with the history summary and rule values
    /// the gateway would have computed from the tree's past.
    pub fn facts<'a>(
        &'a self,
        k: usize,
        history: &'a tollgate_core::HistorySummary,
        rules: &'a serde_json::Map<String, serde_json::Value>,
    ) -> ActionFacts<'a> {
        let a = self.agent_of(k);
        let (action, resource) = &self.resources[a * OPS.len() + k % OPS.len()];
        ActionFacts {
            agent: AgentFacts {
                spiffe_id: &self.ids[a],
                owner: "bench@acme.test",
            },
            task: &self.tasks[a],
            incident: &self.incident,
            action,
            resource,
            intent: "bench",
            parameters: &self.parameters,
            evidence_present: true,
            history,
            rules,
            now: self.now,
        }
    }
}
