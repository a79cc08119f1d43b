//! The records Tollgate keeps: agents, incidents and tasks.

use crate::UnixTime;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    /// Numeric rank for policy comparisons (`context.incident.severity_rank >= 3`).
    pub fn rank(self) -> i64 {
        match self {
            Severity::Low => 1,
            Severity::Medium => 2,
            Severity::High => 3,
            Severity::Critical => 4,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "snake_case")]
pub enum IncidentStatus {
    Open,
    Resolved,
    Closed,
}

impl IncidentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            IncidentStatus::Open => "open",
            IncidentStatus::Resolved => "resolved",
            IncidentStatus::Closed => "closed",
        }
    }
}

/// What an agent says about the incident when it opens a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncidentRef {
    pub id: String,
    pub class: String,
    pub severity: Severity,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incident {
    pub id: String,
    pub class: String,
    pub severity: Severity,
    pub status: IncidentStatus,
    pub updated_at: UnixTime,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Agent {
    pub spiffe_id: String,
    pub owner: String,
    pub created_at: UnixTime,
    /// A revoked agent gets no new SVIDs or tasks until it is re-enrolled.
    pub revoked: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Active,
    Completed,
    Failed,
    Revoked,
}

impl TaskStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Active => "active",
            TaskStatus::Completed => "completed",
            TaskStatus::Failed => "failed",
            TaskStatus::Revoked => "revoked",
        }
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TaskStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "active" => Ok(TaskStatus::Active),
            "completed" => Ok(TaskStatus::Completed),
            "failed" => Ok(TaskStatus::Failed),
            "revoked" => Ok(TaskStatus::Revoked),
            other => Err(format!("unknown task status {other:?}")),
        }
    }
}

/// What a task may touch, beyond what policy allows. `None` means "whatever
/// policy permits"; a set narrows it. Delegation only ever narrows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scope {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actions: Option<BTreeSet<String>>,
    /// Resources as `Type::id` strings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<BTreeSet<String>>,
}

impl Scope {
    pub fn permits(&self, action: &str, resource: &str) -> bool {
        self.actions.as_ref().is_none_or(|a| a.contains(action))
            && self.resources.as_ref().is_none_or(|r| r.contains(resource))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub id: String,
    pub agent: String,
    pub incident_id: String,
    pub environment: String,
    pub playbook: String,
    pub intent: String,
    pub scope: Scope,
    pub parent_task_id: Option<String>,
    pub created_at: UnixTime,
    /// Expiry of the newest credential; renewal moves it, never past `max_expires_at`.
    pub expires_at: UnixTime,
    pub max_expires_at: UnixTime,
    pub status: TaskStatus,
    /// Why the task left `active` (close summary, revocation reason).
    pub status_reason: Option<String>,
}

impl Task {
    /// A task acts only while active and unexpired. Checked against the
    /// store on every request, which is what makes revocation immediate.
    pub fn is_live(&self, now: UnixTime) -> bool {
        self.status == TaskStatus::Active && now < self.expires_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_none_means_policy_decides_and_sets_narrow() {
        let open = Scope::default();
        assert!(open.permits("edr.isolate_host", "Host::web-1"));
        let narrow = Scope {
            actions: Some(["forensics.image_host".to_string()].into()),
            resources: Some(["Host::web-1".to_string()].into()),
        };
        assert!(narrow.permits("forensics.image_host", "Host::web-1"));
        assert!(!narrow.permits("logs.delete", "Host::web-1"));
        assert!(!narrow.permits("forensics.image_host", "Host::web-2"));
    }

    #[test]
    fn severity_ranks_are_ordered() {
        assert!(Severity::Low.rank() < Severity::Critical.rank());
        assert_eq!(serde_json::to_string(&Severity::High).unwrap(), "\"high\"");
    }
}
