//! The server's answers as the CLI reads them: only the fields some command
//! uses. Unknown fields are ignored, so a newer server that adds fields
//! still works; the full shapes are in `GET /openapi.json`
//! (crates/server/src/api).
//!
//! Fields the server copies from free-form JSON (audit `detail`, a rollback
//! step's executed action, a decision in an approval's chain) are read
//! leniently: anything but a string reads as absent, as the CLI always
//! showed them, rather than failing the whole answer.

use serde::de::{DeserializeOwned, Deserializer};
use serde::Deserialize;
use serde_json::Value;

pub use tollgate_audit::checkpoint::Checkpoint;

/// An answer kept as the server sent it beside its typed reading: `--json`
/// output prints the server's JSON as-is, fields the CLI does not model
/// included.
#[derive(Debug)]
pub struct Verbatim<T> {
    pub json: Value,
    pub value: T,
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Verbatim<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let json = Value::deserialize(d)?;
        let value = T::deserialize(&json).map_err(serde::de::Error::custom)?;
        Ok(Self { json, value })
    }
}

/// A free-form field as text: absent unless it is a string.
fn lenient_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::String(s) => Some(s),
        _ => None,
    })
}

/// A free-form list as its strings: other items, or a value that is not a
/// list, are skipped.
fn lenient_texts<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Array(items) => items
            .into_iter()
            .filter_map(|v| match v {
                Value::String(s) => Some(s),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    })
}

// Errors.

/// The body of every error answer.
#[derive(Debug, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Deserialize)]
pub struct ErrorDetail {
    /// For people; printed as the error.
    pub message: Option<String>,
    /// Why a policy pack was refused (`policy_invalid` only).
    #[serde(default)]
    pub diagnostics: Vec<Diagnostic>,
}

/// A problem in a policy pack file.
#[derive(Debug, Deserialize)]
pub struct Diagnostic {
    pub file: String,
    pub line: u64,
    pub column: u64,
    pub message: String,
}

// Agents and tasks.

/// `POST /v1/agents`.
#[derive(Debug, Deserialize)]
pub struct Registered {
    pub spiffe_id: String,
    /// `None` for an agent of an external trust domain, which brings its own SVIDs.
    pub join_token: Option<String>,
    pub expires_at: Option<String>,
}

/// `POST /v1/agents/attest`.
#[derive(Debug, Deserialize)]
pub struct Svid {
    pub svid: String,
}

/// `POST /v1/tasks`.
#[derive(Debug, Deserialize)]
pub struct TaskCredential {
    pub task_id: String,
    pub credential: String,
}

/// `POST /v1/authorize` (read by `bench http`).
#[derive(Debug, Deserialize)]
pub struct Decision {
    /// `allow`, `deny` or `approval_required`.
    pub decision: String,
}

/// `POST /v1/revocations`.
#[derive(Debug, Deserialize)]
pub struct Revoked {
    /// Every task revoked, descendants included.
    pub revoked_tasks: Vec<String>,
}

/// An item of `GET /v1/tasks`, and `GET /v1/tasks/{id}`.
#[derive(Debug, Deserialize)]
pub struct Task {
    pub id: String,
    pub agent: String,
    pub incident_id: String,
    pub status: String,
    pub expires_at: String,
}

/// `GET /v1/tasks/{id}/rollback`.
#[derive(Debug, Deserialize)]
pub struct RollbackPlan {
    /// Newest first.
    pub steps: Vec<RollbackStep>,
}

/// An executed reversible action and what undoes it.
#[derive(Debug, Deserialize)]
pub struct RollbackStep {
    pub executed_at: String,
    pub executed: Executed,
    pub compensation: Compensation,
    /// The compensation has since run and succeeded.
    #[serde(default)]
    pub done: bool,
}

/// What was executed (from the `action.result` audit entry).
#[derive(Debug, Deserialize)]
pub struct Executed {
    #[serde(default, deserialize_with = "lenient_text")]
    pub action: Option<String>,
    #[serde(default, deserialize_with = "lenient_text")]
    pub command: Option<String>,
}

/// The compensating operation.
#[derive(Debug, Deserialize)]
pub struct Compensation {
    #[serde(default, deserialize_with = "lenient_text")]
    pub action: Option<String>,
    #[serde(default, deserialize_with = "lenient_text")]
    pub resource: Option<String>,
}

/// `POST /v1/incidents/{id}`.
#[derive(Debug, Deserialize)]
pub struct IncidentUpdated {
    pub incident: Incident,
    /// Tasks revoked by this change (descendants included).
    pub revoked_tasks: Vec<String>,
    /// Active tasks of the incident that policy still allows.
    pub kept_tasks: Vec<String>,
}

#[derive(Debug, Deserialize)]
pub struct Incident {
    pub status: String,
    pub class: String,
    pub severity: String,
}

// Operations.

/// `POST /v1/policies/reload`.
#[derive(Debug, Deserialize)]
pub struct Reloaded {
    /// Digest of the pack now live.
    pub digest: String,
    /// How many policies it has.
    pub policies: u64,
}

/// `GET|POST|DELETE /v1/policies/shadow`.
#[derive(Debug, Deserialize)]
pub struct ShadowStatus {
    pub loaded: bool,
    pub digest: Option<String>,
    pub policies: Option<u64>,
    pub source: Option<String>,
    pub loaded_at: Option<String>,
}

/// `GET /healthz`.
#[derive(Debug, Deserialize)]
pub struct Health {
    pub audit_entries: u64,
}

/// `GET /v1/mcp/upstreams`.
#[derive(Debug, Deserialize)]
pub struct Upstreams {
    pub upstreams: Vec<Upstream>,
}

/// An MCP upstream server as the gateway sees it.
#[derive(Debug, Deserialize)]
pub struct Upstream {
    pub name: String,
    /// `stdio` or `http`.
    pub transport: String,
    /// The program or URL.
    pub target: String,
    /// `connected`, `connecting`, `closed` or `not connected`.
    pub state: String,
    /// Why it is down, and when it is tried again.
    pub failure: Option<UpstreamFailure>,
    /// The tools, when connected.
    pub tools: Option<Vec<UpstreamTool>>,
}

#[derive(Debug, Deserialize)]
pub struct UpstreamFailure {
    pub last_error: String,
    pub retry_after_ms: u64,
}

#[derive(Debug, Deserialize)]
pub struct UpstreamTool {
    pub name: String,
    /// The catalog operation it is bound to; `None`: not offered to agents.
    pub operation: Option<String>,
}

/// `GET /v1/peps`.
#[derive(Debug, Deserialize)]
pub struct PepList {
    pub peps: Verbatim<Vec<Pep>>,
}

#[derive(Debug, Deserialize)]
pub struct Pep {
    pub name: String,
    pub created_at: String,
}

/// `POST /v1/peps`.
#[derive(Debug, Deserialize)]
pub struct PepKey {
    pub name: String,
    /// The PEP's bearer key; shown only here.
    pub key: String,
}

// The audit log.

/// `GET /v1/audit`: a page of entries, each read as `E`.
#[derive(Debug, Deserialize)]
pub struct AuditPage<E> {
    pub entries: Vec<E>,
    /// Pass as `after` for the next page; `None`: this was the last.
    pub next_after: Option<u64>,
}

/// An audit entry as `audit tail` shows it (verification reads the whole
/// entry, `tollgate_audit::AuditEntry`).
#[derive(Debug, Deserialize)]
pub struct AuditLine {
    pub seq: u64,
    pub event: AuditLineEvent,
}

#[derive(Debug, Deserialize)]
pub struct AuditLineEvent {
    /// Unix seconds.
    pub ts: i64,
    pub kind: String,
    pub actor: String,
    pub task_id: Option<String>,
    pub outcome: Option<String>,
    #[serde(default)]
    pub detail: AuditLineDetail,
}

/// The part of an entry's free-form `detail` a line shows.
#[derive(Debug, Default, Deserialize)]
pub struct AuditLineDetail {
    #[serde(default, deserialize_with = "lenient_text")]
    pub action: Option<String>,
    #[serde(default, deserialize_with = "lenient_text")]
    pub resource: Option<String>,
    #[serde(default, deserialize_with = "lenient_texts")]
    pub reasons: Vec<String>,
}

/// `GET /v1/audit/checkpoint`.
#[derive(Debug, Deserialize)]
pub struct SignedCheckpoint {
    pub checkpoint: Checkpoint,
}

/// `GET /v1/audit/checkpoints`.
#[derive(Debug, Deserialize)]
pub struct Checkpoints {
    /// Oldest first.
    pub checkpoints: Vec<Checkpoint>,
    /// Hex Ed25519 public key of the audit log.
    pub public_key: String,
}

/// `POST /v1/audit/hash`.
#[derive(Debug, Deserialize)]
pub struct KeyedHash {
    pub hash: String,
}

// Approvers and approvals.

/// `POST /v1/approvers`.
#[derive(Debug, Deserialize)]
pub struct ApproverKey {
    pub name: String,
    pub role: String,
    /// The approver's bearer key; shown only here.
    pub key: String,
    /// `None`: no expiry.
    pub expires_at: Option<String>,
}

/// `GET /v1/approvers`.
#[derive(Debug, Deserialize)]
pub struct ApproverList {
    pub approvers: Verbatim<Vec<Approver>>,
}

#[derive(Debug, Deserialize)]
pub struct Approver {
    pub name: String,
    pub role: String,
    /// `active`, `disabled` or `expired`.
    pub status: String,
    pub expires_at: Option<String>,
    pub last_used_at: Option<String>,
}

/// `GET /v1/approvals`.
#[derive(Debug, Deserialize)]
pub struct ApprovalList {
    pub approvals: Verbatim<Vec<Approval>>,
}

/// An approval with what an approver decides on (`GET /v1/approvals/{id}`).
#[derive(Debug, Deserialize)]
pub struct Approval {
    pub id: String,
    pub status: String,
    pub task_id: String,
    pub incident_id: String,
    /// The requesting agent.
    pub agent: String,
    pub action: String,
    /// `Type::id`.
    pub resource: String,
    pub request: ApprovalRequest,
    pub required: u32,
    pub approvals: u32,
    pub expires_at: String,
    #[serde(default)]
    pub votes: Vec<Vote>,
    #[serde(default)]
    pub reasons: Vec<String>,
    /// The operation's tier (absent when it left the catalog).
    pub tier: Option<String>,
    /// Sensitivity labels (absent when the operation left the catalog).
    pub labels: Option<Vec<String>>,
    /// The task (absent when it is gone).
    pub task: Option<ApprovalTask>,
    #[serde(default)]
    pub evidence: Vec<Evidence>,
    /// The task's decisions so far, oldest first.
    #[serde(default)]
    pub chain: Vec<ChainStep>,
}

/// What the agent asked, as the approver is shown it.
#[derive(Debug, Deserialize)]
pub struct ApprovalRequest {
    #[serde(default, deserialize_with = "lenient_text")]
    pub intent: Option<String>,
    /// Free-form, shown as JSON.
    #[serde(default)]
    pub parameters: Value,
}

#[derive(Debug, Deserialize)]
pub struct ApprovalTask {
    pub intent: String,
}

#[derive(Debug, Deserialize)]
pub struct Evidence {
    pub kind: String,
    /// `Type::id`.
    pub resource: String,
    pub sha256: String,
}

/// One decision of the task so far.
#[derive(Debug, Deserialize)]
pub struct ChainStep {
    pub at: String,
    #[serde(default, deserialize_with = "lenient_text")]
    pub action: Option<String>,
    #[serde(default, deserialize_with = "lenient_text")]
    pub resource: Option<String>,
    pub outcome: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct Vote {
    pub approver: String,
    pub role: String,
    pub approve: bool,
    pub reason: String,
}

/// `POST /v1/approvals/{id}/decision`: the approval after the vote.
#[derive(Debug, Deserialize)]
pub struct ApprovalTally {
    pub status: String,
    pub required: u32,
    pub approvals: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn verbatim_keeps_what_the_server_sent_beside_the_typed_reading() {
        let sent = json!({"peps": [{"name": "edge", "created_at": "t", "added_later": 1}]});
        let list: PepList = serde_json::from_value(sent.clone()).unwrap();
        assert_eq!(list.peps.json, sent["peps"]);
        assert_eq!(list.peps.value[0].name, "edge");
    }

    #[test]
    fn free_form_fields_that_are_not_text_read_as_absent() {
        let line: AuditLine = serde_json::from_value(json!({
            "seq": 7, "prev_hash": "00", "hash": "00",
            "event": {"ts": 1, "kind": "decision", "actor": "a",
                      "detail": {"action": {"odd": true}, "resource": "Host::web-1",
                                 "reasons": ["one", 2, null, "two"]}},
        }))
        .unwrap();
        let d = &line.event.detail;
        assert_eq!(
            (d.action.as_deref(), d.resource.as_deref()),
            (None, Some("Host::web-1"))
        );
        assert_eq!(d.reasons, ["one", "two"]);
        let bare: AuditLine = serde_json::from_value(
            json!({"seq": 1, "event": {"ts": 1, "kind": "k", "actor": "a"}}),
        )
        .unwrap();
        assert!(bare.event.detail.reasons.is_empty() && bare.event.task_id.is_none());
    }

    #[test]
    fn an_approval_whose_operation_and_task_are_gone_still_reads() {
        let a: Approval = serde_json::from_value(json!({
            "id": "apr_1", "status": "pending", "task_id": "t", "incident_id": "i",
            "agent": "spiffe://acme.test/agent/a/1", "action": "x.y", "resource": "Host::h",
            "request": {"intent": "why"}, "required": 1, "approvals": 0, "expires_at": "e",
        }))
        .unwrap();
        assert!(a.tier.is_none() && a.labels.is_none() && a.task.is_none());
        assert!(a.request.parameters.is_null() && a.chain.is_empty());
    }
}
