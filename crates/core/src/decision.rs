//! A decision as Tollgate returns it: the outcome plus everything needed to
//! explain it (which policies determined it, their reasons, obligations).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Allow,
    Deny,
    ApprovalRequired,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allow => "allow",
            Outcome::Deny => "deny",
            Outcome::ApprovalRequired => "approval_required",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub outcome: Outcome,
    /// Ids of the policies that determined the outcome.
    pub policies: Vec<String>,
    /// Human-readable reasons, from `@reason` or from the gateway itself.
    pub reasons: Vec<String>,
    /// Conditions the agent must meet first (`evidence-before`).
    pub obligations: Vec<String>,
    /// Distinct human approvals needed when the outcome is `approval_required`.
    pub approvals_required: u32,
    /// `@approval_ttl` of the determining permits (the shortest), seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_ttl_seconds: Option<i64>,
    /// `@deny_threshold` of the determining permits (the lowest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deny_threshold: Option<u32>,
    /// For `approve` decisions: a determining permit says the agent's owner may approve.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub owner_may_approve: bool,
    /// A determining forbid carries `@on_deny("revoke")`: the task is revoked.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub revoke_task: bool,
    /// A determining forbid carries `@on_deny("quarantine")`: the agent is
    /// quarantined (every decision denies until an admin releases it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub quarantine_agent: bool,
    /// History labels (`@chain_label`) of determining policies, to name the
    /// earlier actions that triggered a chain rule.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chain_labels: Vec<String>,
}

impl Decision {
    /// A denial by the gateway itself, before or instead of policy.
    pub fn deny(reason: impl Into<String>) -> Self {
        Self {
            outcome: Outcome::Deny,
            policies: vec![],
            reasons: vec![reason.into()],
            obligations: vec![],
            approvals_required: 0,
            approval_ttl_seconds: None,
            deny_threshold: None,
            owner_may_approve: false,
            revoke_task: false,
            quarantine_agent: false,
            chain_labels: vec![],
        }
    }
}
