//! The vocabulary of audit events the gateway writes. The audit log itself
//! stores a kind as text (the audit crate knows no kinds, and a log must
//! stay readable when kinds are added); this enum is the one list of them,
//! so a writer cannot misspell one and a reader can match exhaustively.

use std::fmt;

/// Every kind of audit event the gateway writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EventKind {
    /// `decision`: a decision on an agent's request (`/v1/authorize`, MCP `tools/call`).
    Decision,
    /// `authzen.decision`: a decision asked for by a PEP over AuthZEN.
    AuthzenDecision,
    /// `freeze`: every decision denies from now on (`tollgate freeze`).
    Freeze,
    /// `unfreeze`: the freeze is lifted.
    Unfreeze,
    /// `policy.loaded`: a policy pack was loaded or reloaded.
    PolicyLoaded,
    /// `policy.rejected`: a reload was refused; the previous pack stays.
    PolicyRejected,
    /// `auth.refused`: a credential was refused (aggregated per source and second).
    AuthRefused,
    /// `agent.registered`.
    AgentRegistered,
    /// `agent.attest_refused`.
    AgentAttestRefused,
    /// `agent.attested`: a join token was spent for an SVID.
    AgentAttested,
    /// `agent.quarantined`: a chain rule or rate limit quarantined the agent.
    AgentQuarantined,
    /// `agent.released`: an admin lifted a quarantine.
    AgentReleased,
    /// `agent.revoked`.
    AgentRevoked,
    /// `svid.issued`.
    SvidIssued,
    /// `task.refused`.
    TaskRefused,
    /// `task.opened`.
    TaskOpened,
    /// `task.renewed`.
    TaskRenewed,
    /// `task.closed`.
    TaskClosed,
    /// `task.revoked`.
    TaskRevoked,
    /// `task.delegated`.
    TaskDelegated,
    /// `task.delegation_refused`.
    TaskDelegationRefused,
    /// `incident.recorded`: first report of an incident, by the task that opened on it.
    IncidentRecorded,
    /// `incident.updated`: reclassified or resolved by an admin.
    IncidentUpdated,
    /// `incident.revoked`: every task on the incident was ended by an admin.
    IncidentRevoked,
    /// `evidence.recorded`.
    EvidenceRecorded,
    /// `action.result`: what came of an allowed action.
    ActionResult,
    /// `action.result_refused`.
    ActionResultRefused,
    /// `approval.created`.
    ApprovalCreated,
    /// `approval.used`.
    ApprovalUsed,
    /// `approval.refused`: a presented approval did not fit the request.
    ApprovalRefused,
    /// `approval.vote`.
    ApprovalVote,
    /// `approval.vote_refused`.
    ApprovalVoteRefused,
    /// `approval.decided`: a vote reached the quorum or the deny threshold.
    ApprovalDecided,
    /// `approval.expired`.
    ApprovalExpired,
    /// `approval.escalated`.
    ApprovalEscalated,
    /// `approval.withdrawn`: the held request (an MCP call) was abandoned.
    ApprovalWithdrawn,
    /// `approver.registered`.
    ApproverRegistered,
    /// `approver.removed`.
    ApproverRemoved,
    /// `approver.disabled`.
    ApproverDisabled,
    /// `approver.enabled`.
    ApproverEnabled,
    /// `pep.registered`.
    PepRegistered,
    /// `pep.removed`.
    PepRemoved,
    /// `webhook.failed`: a webhook delivery failed after its retries.
    WebhookFailed,
    /// `mcp.call_refused`: a `tools/call` for an unmapped or unknown tool.
    McpCallRefused,
    /// `mcp.call_abandoned`: the client left, or the replica holding the
    /// call stopped, while the call was held for approval.
    McpCallAbandoned,
    /// `mcp.upstream_restarted`.
    McpUpstreamRestarted,
    /// `console.signed_in`: someone signed in to the web console.
    ConsoleSignedIn,
    /// `console.signed_out`.
    ConsoleSignedOut,
    /// `trust_bundle.updated`: an external trust domain's keys changed
    /// (fetched from its bundle endpoint).
    TrustBundleUpdated,
    /// `authzen.search`: an AuthZEN subject, resource or action search.
    AuthzenSearch,
    /// `decision.shadow_diff`: the shadow pack would have decided an
    /// action otherwise than the enforced pack did (never enforced).
    DecisionShadowDiff,
    /// `policy.shadow_loaded`: a shadow pack was loaded beside the
    /// enforced one.
    PolicyShadowLoaded,
    /// `policy.shadow_cleared`: the shadow pack was removed.
    PolicyShadowCleared,
}

impl EventKind {
    /// Every kind, in declaration order.
    pub const ALL: [EventKind; 53] = [
        EventKind::Decision,
        EventKind::AuthzenDecision,
        EventKind::Freeze,
        EventKind::Unfreeze,
        EventKind::PolicyLoaded,
        EventKind::PolicyRejected,
        EventKind::AuthRefused,
        EventKind::AgentRegistered,
        EventKind::AgentAttestRefused,
        EventKind::AgentAttested,
        EventKind::AgentQuarantined,
        EventKind::AgentReleased,
        EventKind::AgentRevoked,
        EventKind::SvidIssued,
        EventKind::TaskRefused,
        EventKind::TaskOpened,
        EventKind::TaskRenewed,
        EventKind::TaskClosed,
        EventKind::TaskRevoked,
        EventKind::TaskDelegated,
        EventKind::TaskDelegationRefused,
        EventKind::IncidentRecorded,
        EventKind::IncidentUpdated,
        EventKind::IncidentRevoked,
        EventKind::EvidenceRecorded,
        EventKind::ActionResult,
        EventKind::ActionResultRefused,
        EventKind::ApprovalCreated,
        EventKind::ApprovalUsed,
        EventKind::ApprovalRefused,
        EventKind::ApprovalVote,
        EventKind::ApprovalVoteRefused,
        EventKind::ApprovalDecided,
        EventKind::ApprovalExpired,
        EventKind::ApprovalEscalated,
        EventKind::ApprovalWithdrawn,
        EventKind::ApproverRegistered,
        EventKind::ApproverRemoved,
        EventKind::ApproverDisabled,
        EventKind::ApproverEnabled,
        EventKind::PepRegistered,
        EventKind::PepRemoved,
        EventKind::WebhookFailed,
        EventKind::McpCallRefused,
        EventKind::McpCallAbandoned,
        EventKind::McpUpstreamRestarted,
        EventKind::ConsoleSignedIn,
        EventKind::ConsoleSignedOut,
        EventKind::TrustBundleUpdated,
        EventKind::AuthzenSearch,
        EventKind::DecisionShadowDiff,
        EventKind::PolicyShadowLoaded,
        EventKind::PolicyShadowCleared,
    ];

    /// The kind as the audit log stores it.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Decision => "decision",
            EventKind::AuthzenDecision => "authzen.decision",
            EventKind::Freeze => "freeze",
            EventKind::Unfreeze => "unfreeze",
            EventKind::PolicyLoaded => "policy.loaded",
            EventKind::PolicyRejected => "policy.rejected",
            EventKind::AuthRefused => "auth.refused",
            EventKind::AgentRegistered => "agent.registered",
            EventKind::AgentAttestRefused => "agent.attest_refused",
            EventKind::AgentAttested => "agent.attested",
            EventKind::AgentQuarantined => "agent.quarantined",
            EventKind::AgentReleased => "agent.released",
            EventKind::AgentRevoked => "agent.revoked",
            EventKind::SvidIssued => "svid.issued",
            EventKind::TaskRefused => "task.refused",
            EventKind::TaskOpened => "task.opened",
            EventKind::TaskRenewed => "task.renewed",
            EventKind::TaskClosed => "task.closed",
            EventKind::TaskRevoked => "task.revoked",
            EventKind::TaskDelegated => "task.delegated",
            EventKind::TaskDelegationRefused => "task.delegation_refused",
            EventKind::IncidentRecorded => "incident.recorded",
            EventKind::IncidentUpdated => "incident.updated",
            EventKind::IncidentRevoked => "incident.revoked",
            EventKind::EvidenceRecorded => "evidence.recorded",
            EventKind::ActionResult => "action.result",
            EventKind::ActionResultRefused => "action.result_refused",
            EventKind::ApprovalCreated => "approval.created",
            EventKind::ApprovalUsed => "approval.used",
            EventKind::ApprovalRefused => "approval.refused",
            EventKind::ApprovalVote => "approval.vote",
            EventKind::ApprovalVoteRefused => "approval.vote_refused",
            EventKind::ApprovalDecided => "approval.decided",
            EventKind::ApprovalExpired => "approval.expired",
            EventKind::ApprovalEscalated => "approval.escalated",
            EventKind::ApprovalWithdrawn => "approval.withdrawn",
            EventKind::ApproverRegistered => "approver.registered",
            EventKind::ApproverRemoved => "approver.removed",
            EventKind::ApproverDisabled => "approver.disabled",
            EventKind::ApproverEnabled => "approver.enabled",
            EventKind::PepRegistered => "pep.registered",
            EventKind::PepRemoved => "pep.removed",
            EventKind::WebhookFailed => "webhook.failed",
            EventKind::McpCallRefused => "mcp.call_refused",
            EventKind::McpCallAbandoned => "mcp.call_abandoned",
            EventKind::McpUpstreamRestarted => "mcp.upstream_restarted",
            EventKind::ConsoleSignedIn => "console.signed_in",
            EventKind::ConsoleSignedOut => "console.signed_out",
            EventKind::TrustBundleUpdated => "trust_bundle.updated",
            EventKind::AuthzenSearch => "authzen.search",
            EventKind::DecisionShadowDiff => "decision.shadow_diff",
            EventKind::PolicyShadowLoaded => "policy.shadow_loaded",
            EventKind::PolicyShadowCleared => "policy.shadow_cleared",
        }
    }

    /// The kind a stored string names, if it names one.
    pub fn parse(s: &str) -> Option<EventKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<EventKind> for String {
    fn from(k: EventKind) -> String {
        k.as_str().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn every_kind_round_trips_and_is_distinct() {
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.as_str()), Some(k));
            assert_eq!(k.to_string(), k.as_str());
            assert_eq!(String::from(k), k.as_str());
        }
        let names: BTreeSet<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), EventKind::ALL.len());
        assert_eq!(EventKind::parse("decisions"), None);
        assert_eq!(EventKind::parse(""), None);
    }

    #[test]
    fn all_is_in_declaration_order_and_complete() {
        // Variants take discriminants 0, 1, …: each one's place in ALL is
        // its discriminant, and the last variant closes the list.
        for (i, k) in EventKind::ALL.into_iter().enumerate() {
            assert_eq!(k as usize, i, "{k} is out of place in ALL");
        }
        assert_eq!(
            EventKind::ALL.len(),
            EventKind::PolicyShadowCleared as usize + 1
        );
    }
}
