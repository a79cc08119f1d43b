//! The agent-controlled parts of a decision (resource, attributes,
//! parameters, action name) against the example pack: no panic, ever.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use tollgate_core::{Incident, IncidentStatus, Scope, Severity, SpiffeId, Task, TaskStatus};
use tollgate_policy::{ActionFacts, AgentFacts, PolicyPack, ResourceRef};

fn pack() -> &'static PolicyPack {
    static P: OnceLock<PolicyPack> = OnceLock::new();
    P.get_or_init(|| tollgate_server::embedded::pack().unwrap())
}

#[derive(serde::Deserialize)]
struct Body {
    action: String,
    resource: ResourceRef,
    #[serde(default)]
    parameters: serde_json::Map<String, serde_json::Value>,
}

fuzz_target!(|data: &[u8]| {
    let Ok(body) = serde_json::from_slice::<Body>(data) else { return };
    let id = SpiffeId::parse("spiffe://acme.test/agent/ir-responder/i-1").unwrap();
    let task = Task {
        id: "t".into(), agent: id.to_string(), incident_id: "I".into(), environment: "prod".into(),
        playbook: "p".into(), intent: "i".into(), scope: Scope::default(), parent_task_id: None,
        created_at: 0, expires_at: 10, max_expires_at: 10, status: TaskStatus::Active, status_reason: None,
    };
    let incident = Incident { id: "I".into(), class: "malware".into(), severity: Severity::High, status: IncidentStatus::Open, updated_at: 0 };
    let _ = pack().decide_action(&ActionFacts {
        agent: AgentFacts { spiffe_id: &id, owner: "o" },
        task: &task,
        incident: &incident,
        action: &body.action,
        resource: &body.resource,
        intent: "fuzz",
        parameters: &body.parameters,
        evidence_present: data.len() % 2 == 0,
        history: &tollgate_core::HistorySummary::default(),
        now: 0,
    });
});
