//! The public shape of domain records: what the API answers, webhooks send
//! and people are shown. Derived from the records, never stored; every value
//! an agent sent is data here, escaped by whoever renders it.

use serde::Serialize;
use serde_json::Value;
use tollgate_core::clock::rfc3339;
use tollgate_core::Approval;
use utoipa::ToSchema;

/// Mirrors of the core enums, each convertible from the real one by an
/// exhaustive match (a new variant does not compile until it is added here).
macro_rules! mirror_enum {
    ($(#[$doc:meta])* $name:ident from $real:path { $($variant:ident),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Serialize, ToSchema, Clone, Copy, PartialEq, Eq, Debug)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($variant),+
        }

        impl From<$real> for $name {
            fn from(v: $real) -> Self {
                use $real as R;
                match v {
                    $(R::$variant => $name::$variant),+
                }
            }
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
        }
    };
}

mirror_enum!(
    /// Incident severity.
    Severity from tollgate_core::Severity { Low, Medium, High, Critical }
);
mirror_enum!(
    /// Incident status: `resolved` and `closed` revoke every task bound to it.
    IncidentStatus from tollgate_core::IncidentStatus { Open, Resolved, Closed }
);
mirror_enum!(
    /// Task status.
    TaskStatus from tollgate_core::TaskStatus { Active, Completed, Failed, Revoked }
);
mirror_enum!(
    /// Approval status.
    ApprovalStatus from tollgate_core::ApprovalStatus {
        Pending, Approved, Denied, Expired, Used, Withdrawn
    }
);

mirror_enum!(
    /// A decision's outcome; a denial is not an error.
    Outcome from tollgate_core::Outcome { Allow, Deny, ApprovalRequired }
);

/// One approver's vote, as the API shows it.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct VoteView {
    pub approver: String,
    pub role: String,
    pub approve: bool,
    pub reason: String,
    pub at: String,
}

/// The API view of an approval.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ApprovalView {
    pub id: String,
    pub status: ApprovalStatus,
    pub task_id: String,
    pub incident_id: String,
    /// The requesting agent (SPIFFE ID).
    pub agent: String,
    pub action: String,
    /// `Type::id`.
    pub resource: String,
    /// What the approver is shown: resource attributes, parameters, intent.
    #[schema(value_type = Object)]
    pub request: Value,
    /// Canonical hash of (task, action, resource, parameters): the one request it is for.
    pub request_hash: String,
    /// The decision request that asked for it.
    pub request_id: String,
    /// Distinct approvals needed.
    pub required: u32,
    pub approvals: u32,
    pub denials: u32,
    pub deny_threshold: u32,
    pub votes: Vec<VoteView>,
    pub policies: Vec<String>,
    pub reasons: Vec<String>,
    pub escalated: bool,
    pub created_at: String,
    pub expires_at: String,
    pub decided_at: Option<String>,
    pub used_at: Option<String>,
    /// The request id of the one decision that spent it.
    pub used_by: Option<String>,
}

/// The API view of an approval.
pub fn view(a: &Approval) -> ApprovalView {
    let (yes, no) = a.tally();
    ApprovalView {
        id: a.id.clone(),
        status: a.status.into(),
        task_id: a.task_id.clone(),
        incident_id: a.incident_id.clone(),
        agent: a.agent.clone(),
        action: a.action.clone(),
        resource: a.resource.clone(),
        request: a.request.clone(),
        request_hash: a.request_hash.clone(),
        request_id: a.request_id.clone(),
        required: a.required,
        approvals: yes,
        denials: no,
        deny_threshold: a.deny_threshold,
        votes: a
            .votes
            .iter()
            .map(|v| VoteView {
                approver: v.approver.clone(),
                role: v.role.clone(),
                approve: v.approve,
                reason: v.reason.clone(),
                at: rfc3339(v.ts),
            })
            .collect(),
        policies: a.policies.clone(),
        reasons: a.reasons.clone(),
        escalated: a.escalated,
        created_at: rfc3339(a.created_at),
        expires_at: rfc3339(a.expires_at),
        decided_at: a.decided_at.map(rfc3339),
        used_at: a.used_at.map(rfc3339),
        used_by: a.used_by.clone(),
    }
}

/// The JSON answer of a decision, as `/v1/authorize` returns it.
/// The answer to `POST /v1/authorize` (and the structured content of a
/// refused MCP tool call).
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct DecisionView {
    pub decision: Outcome,
    /// Finds every audit entry of this request.
    pub request_id: String,
    pub reasons: Vec<String>,
    /// Ids of the determining policies.
    pub policies: Vec<String>,
    /// Conditions to meet first (`evidence-before`); absent when none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub obligations: Option<Vec<String>>,
    /// Distinct approvals needed (`approval_required` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approvals_required: Option<u32>,
    /// The approval created, found pending, or spent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval_status: Option<ApprovalStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval_expires_at: Option<String>,
}

/// An approval with what an approver decides on.
#[derive(Serialize, ToSchema)]
pub struct ApprovalDetail {
    #[serde(flatten)]
    pub approval: ApprovalView,
    /// The operation's tier (absent when it left the catalog).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// Sensitivity labels: `reads-secret`, `egress-external`, …
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reversible: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blast_radius: Option<String>,
    /// The task (absent when it is gone).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task: Option<ApprovalTask>,
    /// The task's evidence.
    pub evidence: Vec<EvidenceView>,
    /// The newest 200 decisions of the task, oldest first.
    pub chain: Vec<ChainStep>,
}

#[derive(Serialize, ToSchema)]
pub struct ApprovalTask {
    pub intent: String,
    pub playbook: String,
    pub environment: String,
    pub status: TaskStatus,
}

#[derive(Serialize, ToSchema)]
pub struct EvidenceView {
    pub id: String,
    /// `Type::id`.
    pub resource: String,
    pub kind: String,
    pub sha256: String,
}

/// One decision of the task so far.
#[derive(Serialize, ToSchema)]
pub struct ChainStep {
    pub seq: u64,
    pub request_id: Option<String>,
    pub outcome: Option<String>,
    #[schema(value_type = Option<String>)]
    pub action: Value,
    #[schema(value_type = Option<String>)]
    pub resource: Value,
    pub at: String,
}
