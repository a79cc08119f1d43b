//! Recording what was executed under an allowing decision, as a PEP (or
//! the MCP gateway itself) reports it, with what would undo it: the
//! compensation the rollback plan offers.

use super::Error;
use crate::state::AppState;
use serde_json::{json, Value};
use tollgate_audit::AuditEvent;
use tollgate_core::EventKind;
use tollgate_store::{Batch, Change, StoreError};

/// What was executed under an allowing decision, as a PEP (or the MCP
/// gateway itself) reports it.
#[derive(Clone)]
pub struct ExecutedAction<'a> {
    /// `succeeded` or `failed`; the MCP gateway also records `unknown` for a
    /// call that timed out or was cut off (it may have acted).
    pub status: &'a str,
    pub command: &'a str,
    pub output_digest: Option<&'a str>,
    /// More detail for the `action.result` entry (merged into it).
    pub extra: Value,
}

/// Record an executed action against the allowing decision `request_id` of
/// `task`: one result per decision, and a refusal is audited too. `known`
/// is the decision's entry when the caller holds it as committed (the MCP
/// gateway, which decided the call itself); otherwise it is read from the
/// audit log by request id.
pub async fn record_result(
    state: &AppState,
    task: &tollgate_core::Task,
    request_id: &str,
    known: Option<&super::decide::DecisionEntry>,
    done: ExecutedAction<'_>,
) -> Result<(), Error> {
    let now = state.now();
    let status = done.status;
    let refused = |reason: String| {
        AuditEvent::new(now, EventKind::ActionResultRefused, task.agent.clone())
            .agent(task.agent.clone())
            .task(task.id.clone())
            .incident(task.incident_id.clone())
            .request(request_id.to_string())
            .outcome("refused")
            .detail(json!({"status": status, "command": done.command, "output_digest": done.output_digest, "reason": reason}))
    };
    let allows = |e: &AuditEvent| {
        (e.kind == EventKind::Decision.as_str() || e.kind == EventKind::AuthzenDecision.as_str())
            && e.outcome.as_deref() == Some("allow")
            && e.task_id.as_deref() == Some(task.id.as_str())
    };
    let allowing = match known.filter(|d| allows(&d.event)) {
        Some(d) => Some((d.seq, d.event.detail.clone())),
        None => state
            .store
            .audit_by_request(request_id)
            .await?
            .into_iter()
            .find(|e| allows(&e.event))
            .map(|e| (e.seq, e.event.detail)),
    };
    let Some((decision_seq, decision_detail)) = allowing else {
        // A result without an allowing decision of this task: refused, and on the record.
        let ev = refused("no allowing decision of this task has this request id".into());
        state.store.commit(Batch::audit_only(ev)).await?;
        return Err(Error::Conflict(format!(
            "no allowing decision {request_id} in task {}",
            task.id
        )));
    };
    let action = decision_detail["action"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let resource = decision_detail["resource"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    // What would undo this, for the rollback plan: the catalog's compensation
    // on the same resource, recorded only for a successful reversible action
    // that is not itself a compensation (isolate and release undo each other:
    // undoing the undo would make every rollback run flip the host back).
    let is_compensation = done.extra.get("compensates").is_some();
    let pack = state.pack.load();
    let op = pack.catalog().operation(&action);
    let compensation = op
        .filter(|op| op.reversible && status != "failed" && !is_compensation)
        .and_then(|op| op.compensation.clone())
        .map(|c| {
            let types = op.map_or(&[][..], |op| &op.resource_types[..]);
            let (kind, id) =
                tollgate_core::split_resource_key(&resource, types).unwrap_or_default();
            json!({"action": c, "resource": resource, "resource_type": kind, "resource_id": id,
                   "parameters": decision_detail["parameters"]})
        });
    drop(pack);
    let mut detail = json!({
        "action": action, "resource": resource, "command": done.command, "output_digest": done.output_digest,
        "decision_seq": decision_seq, "compensation": compensation,
    });
    if let (Some(d), Value::Object(extra)) = (detail.as_object_mut(), done.extra) {
        d.extend(extra);
    }
    let ev = AuditEvent::new(now, EventKind::ActionResult, task.agent.clone())
        .agent(task.agent.clone())
        .task(task.id.clone())
        .incident(task.incident_id.clone())
        .request(request_id.to_string())
        .outcome(status)
        .detail(detail);
    let batch = Batch::default()
        .change(Change::RecordActionResult {
            request_id: request_id.to_string(),
            task_id: task.id.clone(),
            status: status.into(),
            at: now,
        })
        .event(ev);
    match state.store.commit(batch).await {
        Ok(_) => Ok(()),
        Err(StoreError::Conflict(c)) => {
            // A second result for one decision: refused, and on the record.
            let m = c.to_string();
            state
                .store
                .commit(Batch::audit_only(refused(m.clone())))
                .await?;
            Err(Error::Conflict(m))
        }
        Err(e) => Err(e.into()),
    }
}
