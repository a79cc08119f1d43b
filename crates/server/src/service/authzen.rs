//! AuthZEN evaluations of non-agent subjects (the general PDP): decided
//! by the pack (`PolicyPack::decide_general`) and audited before the
//! answer, refusals included. Agent subjects go through `decide.rs`, like
//! `/v1/authorize`.

use super::Error;
use crate::state::AppState;
use serde_json::json;
use tollgate_audit::AuditEvent;
use tollgate_core::{Decision, EventKind};
use tollgate_policy::{GeneralRequest, PolicyError};
use tollgate_store::Batch;

/// Decide `r` for the enforcement point `pep`, and record it (or its
/// refusal) durably first. A request that cannot be decided is
/// [`Error::Invalid`], recorded with outcome `refused`.
pub async fn decide_general(
    state: &AppState,
    pep: &str,
    r: &GeneralRequest<'_>,
    traceparent: Option<&str>,
) -> Result<Decision, Error> {
    let started = std::time::SystemTime::now();
    let pack = state.pack.load_full();
    let request_id = super::new_id("req");
    let decided = pack.decide_general(r);
    let (outcome, reasons, policies) = match &decided {
        Ok(d) => (d.outcome.as_str(), d.reasons.clone(), d.policies.clone()),
        Err(e) => ("refused", vec![e.to_string()], Vec::new()),
    };
    // Ids and the verdict only: properties and context are the PEP's data
    // and may hold anything.
    let event = AuditEvent::new(
        state.now(),
        EventKind::AuthzenDecision,
        format!("pep:{pep}"),
    )
    .request(request_id.clone())
    .outcome(outcome)
    .detail(json!({
        "subject": format!("{}::{}", r.subject_type, r.subject_id),
        "action": r.action,
        "resource": format!("{}::{}", r.resource_type, r.resource_id),
        "reasons": reasons,
        "policies": policies,
        "policy_digest": pack.digest(),
    }));
    state.store.commit(Batch::audit_only(event)).await?;
    let subject = format!("{}::{}", r.subject_type, r.subject_id);
    state.telemetry.decision(crate::telemetry::DecisionSpan {
        traceparent,
        started,
        via: "authzen.decision",
        outcome,
        action: r.action,
        resource: format!("{}::{}", r.resource_type, r.resource_id),
        policies: &policies,
        task: "",
        incident: "",
        agent: &subject,
        request: &request_id,
    });
    match decided {
        Ok(decision) => Ok(decision),
        Err(PolicyError::BadRequest(message)) => Err(Error::Invalid {
            code: "invalid_request",
            message,
        }),
        Err(e) => Err(Error::Internal(e.to_string())),
    }
}
