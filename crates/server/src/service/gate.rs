//! The gateway-wide checks every agent operation passes before policy runs:
//! freeze, quarantine, a dead delegation chain, the incident's state. Written
//! once here and used by opening a task, delegating and deciding an action,
//! so the three cannot drift apart. Pure: the facts come in as arguments.

use tollgate_core::{Decision, Incident, IncidentStatus};
use tollgate_policy::PolicyError;

/// The settings keys of the gateway-wide brake (`"true"` = frozen) and of an
/// agent's quarantine (its value is the reason; empty means released): the
/// store reads them into a decision's facts, so it names them.
pub use tollgate_store::{quarantine_key, FROZEN_KEY};

const FROZEN: &str = "tollgate is frozen: every agent decision denies until an admin unfreezes";

/// What the gateway knows about an agent operation before policy runs.
pub struct Gate<'a> {
    pub frozen: bool,
    /// The agent acting.
    pub agent: &'a str,
    /// The stored quarantine reason, if the agent is quarantined.
    pub quarantine: Option<&'a str>,
    /// Why the task cannot act although it is itself active (an ancestor ended).
    pub dead_chain: Option<(&'a str, String)>,
    /// The incident the operation is bound to: `None` to skip the check
    /// (delegation, whose parent task's incident is checked by its liveness).
    pub incident: Option<(&'a str, Option<&'a Incident>)>,
}

impl Gate<'_> {
    /// The denial the gateway gives before policy, if any; `None` lets
    /// policy decide.
    pub fn refusal(&self) -> Option<Decision> {
        if let Some((task_id, why)) = &self.dead_chain {
            return Some(Decision::deny(format!("task {task_id} cannot act: {why}")));
        }
        if self.frozen {
            return Some(Decision::deny(FROZEN));
        }
        if let Some(r) = self.quarantine.filter(|r| !r.is_empty()) {
            return Some(Decision::deny(quarantine_reason(self.agent, r)));
        }
        match self.incident {
            Some((id, None)) => Some(Decision::deny(format!("incident {id} is unknown"))),
            Some((_, Some(i))) if i.status != IncidentStatus::Open => Some(Decision::deny(
                format!("incident {} is {}", i.id, i.status.as_str()),
            )),
            _ => None,
        }
    }
}

/// How a quarantine is explained to the agent and in the audit log.
pub fn quarantine_reason(agent: &str, stored: &str) -> String {
    format!("agent {agent} is quarantined ({stored}); an admin must release it")
}

/// What a policy evaluation came to, in the one way every entry point
/// treats it.
pub enum Evaluated {
    Decided(Decision),
    /// The request does not fit the schema: nothing is decided; the message
    /// names no secret value (the pack forms it without them).
    Malformed(String),
    /// The evaluation itself failed: deny (fail closed). The error text goes
    /// to the operator's log only, never into a reason, since it can quote
    /// request values.
    Failed {
        denial: Decision,
        error: String,
    },
}

impl From<Result<Decision, PolicyError>> for Evaluated {
    fn from(r: Result<Decision, PolicyError>) -> Self {
        match r {
            Ok(d) => Evaluated::Decided(d),
            Err(PolicyError::BadRequest(m)) => Evaluated::Malformed(m),
            Err(e) => Evaluated::Failed {
                denial: Decision::deny("policy evaluation failed; failing closed"),
                error: e.to_string(),
            },
        }
    }
}

impl Evaluated {
    /// The decision, logging a failed evaluation; a malformed request is
    /// the caller's error (`invalid_request`).
    pub fn into_decision(self, what: &str) -> Result<Decision, super::Error> {
        match self {
            Evaluated::Decided(d) => Ok(d),
            Evaluated::Malformed(message) => Err(super::Error::Invalid {
                code: "invalid_request",
                message,
            }),
            Evaluated::Failed { denial, error } => {
                tracing::error!(%error, what, "policy evaluation failed; failing closed");
                Ok(denial)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_core::Severity;

    fn incident(status: IncidentStatus) -> Incident {
        Incident {
            id: "INC-1".into(),
            class: "malware".into(),
            severity: Severity::High,
            status,
            updated_at: 0,
        }
    }

    #[test]
    fn every_check_denies_and_the_order_is_fixed() {
        let open = incident(IncidentStatus::Open);
        let resolved = incident(IncidentStatus::Resolved);
        let gate = |frozen, quarantine, dead: bool, inc| Gate {
            frozen,
            agent: "spiffe://t/agent/a/1",
            quarantine,
            dead_chain: dead.then(|| ("task_1", "parent task p is revoked".to_string())),
            incident: Some(("INC-1", inc)),
        };
        assert!(gate(false, None, false, Some(&open)).refusal().is_none());
        assert!(gate(false, Some(""), false, Some(&open))
            .refusal()
            .is_none());
        let reason = |g: Gate<'_>| g.refusal().map(|d| d.reasons.join(";")).unwrap_or_default();
        assert!(reason(gate(true, Some("x"), true, None)).starts_with("task task_1 cannot act"));
        assert!(reason(gate(true, Some("x"), false, None)).starts_with("tollgate is frozen"));
        assert!(reason(gate(false, Some("x"), false, None)).contains("is quarantined (x)"));
        assert_eq!(
            reason(gate(false, None, false, None)),
            "incident INC-1 is unknown"
        );
        assert_eq!(
            reason(gate(false, None, false, Some(&resolved))),
            "incident INC-1 is resolved"
        );
    }

    #[test]
    fn a_failed_evaluation_denies_without_its_text() {
        let e: Evaluated = Err(PolicyError::Io("secret=hunter2".into())).into();
        let Evaluated::Failed { denial, error } = e else {
            unreachable!("an evaluation error is a failure")
        };
        assert_eq!(denial.outcome, tollgate_core::Outcome::Deny);
        assert!(!denial.reasons.join(" ").contains("hunter2"));
        assert!(error.contains("hunter2"));
    }
}
