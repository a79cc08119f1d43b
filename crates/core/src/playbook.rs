//! Playbooks: predefined safe remediation paths. A task is bound to one; an
//! action outside its steps (or before the steps it must follow) is a
//! deviation, answered as the playbook says: deny, step-up (approval) or
//! revoke the task.

use crate::{Catalog, Severity};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviationResponse {
    Deny,
    StepUp,
    Revoke,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaybookStep {
    pub action: String,
    /// Actions that must have been allowed in the task tree before this one.
    #[serde(default)]
    pub after: Vec<String>,
    /// Distinct human approvals this step needs (0 = as policy says).
    #[serde(default)]
    pub approval: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Playbook {
    #[serde(default)]
    pub description: String,
    /// Incident classes it applies to; empty = any.
    #[serde(default)]
    pub incident_classes: Vec<String>,
    pub max_severity: Severity,
    pub on_deviation: DeviationResponse,
    pub steps: Vec<PlaybookStep>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Playbooks {
    pub playbooks: BTreeMap<String, Playbook>,
}

/// What a playbook says about one action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepVerdict {
    /// A step; `approval` > 0 asks for that many approvals.
    Step { approval: u32 },
    /// Not a step, or out of order: the reason, and the playbook's response.
    Deviation {
        reason: String,
        response: DeviationResponse,
    },
}

impl Playbooks {
    pub fn from_yaml(text: &str, catalog: &Catalog) -> Result<Self, String> {
        let p: Playbooks = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
        for (name, pb) in &p.playbooks {
            let actions: BTreeSet<&str> = pb.steps.iter().map(|s| s.action.as_str()).collect();
            for s in &pb.steps {
                if catalog.operation(&s.action).is_none() {
                    return Err(format!(
                        "playbook {name}: step {} is not in the tool catalog",
                        s.action
                    ));
                }
                if let Some(a) = s.after.iter().find(|a| !actions.contains(a.as_str())) {
                    return Err(format!(
                        "playbook {name}: step {} comes after {a}, which is not one of its steps",
                        s.action
                    ));
                }
                if s.approval > 5 {
                    return Err(format!(
                        "playbook {name}: step {} asks for more than 5 approvals",
                        s.action
                    ));
                }
            }
            if pb.steps.is_empty() {
                return Err(format!("playbook {name} has no steps"));
            }
        }
        Ok(p)
    }

    /// Whether a task may be opened with playbook `name` on this incident.
    pub fn admits(&self, name: &str, class: &str, severity: Severity) -> Result<(), String> {
        let Some(pb) = self.playbooks.get(name) else {
            return Err(format!("playbook {name} does not exist"));
        };
        if !pb.incident_classes.is_empty() && !pb.incident_classes.iter().any(|c| c == class) {
            return Err(format!(
                "playbook {name} is for {} incidents, not {class}",
                pb.incident_classes.join(", ")
            ));
        }
        if severity > pb.max_severity {
            return Err(format!(
                "playbook {name} goes up to severity {}, not {}",
                pb.max_severity.as_str(),
                severity.as_str()
            ));
        }
        Ok(())
    }

    /// Whether a task bound to `name` should be offered `action` at all: it
    /// is a step, or a deviation the playbook answers with step-up (a human
    /// may still allow it). Order (`after`) is left to the decision.
    pub fn offers(&self, name: &str, action: &str) -> bool {
        self.playbooks.get(name).is_some_and(|pb| {
            pb.on_deviation == DeviationResponse::StepUp
                || pb.steps.iter().any(|s| s.action == action)
        })
    }

    /// Judge `action` in a task bound to `name`, given what its tree has done.
    pub fn judge(
        &self,
        name: &str,
        action: &str,
        allowed_before: &BTreeSet<String>,
    ) -> Option<StepVerdict> {
        let pb = self.playbooks.get(name)?;
        let Some(step) = pb.steps.iter().find(|s| s.action == action) else {
            return Some(StepVerdict::Deviation {
                reason: format!("deviation: {action} is not a step of playbook {name}"),
                response: pb.on_deviation,
            });
        };
        if let Some(missing) = step.after.iter().find(|a| !allowed_before.contains(*a)) {
            return Some(StepVerdict::Deviation {
                reason: format!("deviation: playbook {name} takes {action} only after {missing}"),
                response: pb.on_deviation,
            });
        }
        Some(StepVerdict::Step {
            approval: step.approval,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CATALOG: &str = "operations:\n  a.read: {tier: read, resource_types: [Host]}\n  a.fix: {tier: change, resource_types: [Host]}\n  a.nuke: {tier: destructive, resource_types: [Host]}\n";
    const BOOK: &str = "playbooks:\n  fix:\n    incident_classes: [malware]\n    max_severity: high\n    on_deviation: step-up\n    steps:\n      - action: a.read\n      - {action: a.fix, after: [a.read], approval: 2}\n";

    #[test]
    fn steps_order_and_deviation() {
        let cat = Catalog::from_yaml(CATALOG).unwrap();
        let p = Playbooks::from_yaml(BOOK, &cat).unwrap();
        assert!(p.admits("fix", "malware", Severity::High).is_ok());
        assert!(p.admits("fix", "ddos", Severity::High).is_err());
        assert!(p.admits("fix", "malware", Severity::Critical).is_err());
        assert!(p.admits("nope", "malware", Severity::Low).is_err());
        let none = BTreeSet::new();
        assert!(
            p.offers("fix", "a.nuke"),
            "step-up playbooks offer deviations"
        );
        assert!(!p.offers("nope", "a.read"));
        assert_eq!(
            p.judge("fix", "a.read", &none),
            Some(StepVerdict::Step { approval: 0 })
        );
        assert!(matches!(
            p.judge("fix", "a.fix", &none),
            Some(StepVerdict::Deviation {
                response: DeviationResponse::StepUp,
                ..
            })
        ));
        let read: BTreeSet<String> = ["a.read".to_string()].into();
        assert_eq!(
            p.judge("fix", "a.fix", &read),
            Some(StepVerdict::Step { approval: 2 })
        );
        assert!(matches!(
            p.judge("fix", "a.nuke", &read),
            Some(StepVerdict::Deviation { .. })
        ));
    }

    #[test]
    fn invalid_playbooks_are_refused() {
        let cat = Catalog::from_yaml(CATALOG).unwrap();
        assert!(
            Playbooks::from_yaml(&BOOK.replace("a.read\n", "a.gone\n"), &cat)
                .unwrap_err()
                .contains("not in the tool catalog")
        );
        assert!(Playbooks::from_yaml(&BOOK.replace("step-up", "shrug"), &cat).is_err());
        assert!(Playbooks::from_yaml(&BOOK.replace("approval: 2", "approval: 9"), &cat).is_err());
    }
}
