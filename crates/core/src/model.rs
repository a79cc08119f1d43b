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
    #[serde(deserialize_with = "crate::text::id")]
    pub id: String,
    #[serde(deserialize_with = "crate::text::id")]
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
    /// When the current registration began: registering again starts a new
    /// one, and SVIDs issued before it are refused.
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

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DelegationError {
    #[error("a delegation must name at least one action and one resource")]
    Empty,
    #[error("action {0} is outside the parent task's scope")]
    Action(String),
    #[error("resource {0} is outside the parent task's scope")]
    Resource(String),
    #[error("delegation depth {depth} exceeds the maximum of {max}")]
    Depth { depth: u32, max: u32 },
    #[error("ttl_seconds must be positive")]
    Ttl,
    #[error("the parent task has no lifetime left to delegate")]
    ParentExpired,
    #[error("agent {0} already acts in this delegation chain; an agent cannot delegate to itself")]
    SelfDelegation(String),
}

impl Scope {
    /// The child scope for a delegation of `actions` on `resources`:
    /// always explicit and never wider than `self`. This is the only way a
    /// delegated scope is made.
    pub fn attenuate(
        &self,
        actions: &BTreeSet<String>,
        resources: &BTreeSet<String>,
    ) -> Result<Scope, DelegationError> {
        if actions.is_empty() || resources.is_empty() {
            return Err(DelegationError::Empty);
        }
        if let Some(parent) = &self.actions {
            if let Some(a) = actions.iter().find(|a| !parent.contains(*a)) {
                return Err(DelegationError::Action(a.clone()));
            }
        }
        if let Some(parent) = &self.resources {
            if let Some(r) = resources.iter().find(|r| !parent.contains(*r)) {
                return Err(DelegationError::Resource(r.clone()));
            }
        }
        Ok(Scope {
            actions: Some(actions.clone()),
            resources: Some(resources.clone()),
        })
    }

    /// Whether everything `self` permits, `parent` permits too.
    pub fn is_within(&self, parent: &Scope) -> bool {
        let sub = |c: &Option<BTreeSet<String>>, p: &Option<BTreeSet<String>>| match (c, p) {
            (_, None) => true,
            (None, Some(_)) => false,
            (Some(c), Some(p)) => c.is_subset(p),
        };
        sub(&self.actions, &parent.actions) && sub(&self.resources, &parent.resources)
    }
}

/// Lifetime of a delegated task: never past the parent's current expiry, its
/// hard maximum, or the ttl granted. Returns `(expires_at, max_expires_at)`.
pub fn child_lifetime(
    parent: &Task,
    now: UnixTime,
    ttl: i64,
    max_ttl: i64,
    depth: u32,
    max_depth: u32,
) -> Result<(UnixTime, UnixTime), DelegationError> {
    if ttl <= 0 {
        return Err(DelegationError::Ttl);
    }
    if depth > max_depth {
        return Err(DelegationError::Depth {
            depth,
            max: max_depth,
        });
    }
    // Saturating: a ttl near i64::MAX must clamp to the parent, not wrap
    // into the past (which would once have made a child with a negative expiry).
    let expires_at = now
        .saturating_add(ttl)
        .min(now.saturating_add(max_ttl))
        .min(parent.expires_at)
        .min(parent.max_expires_at);
    if expires_at <= now {
        return Err(DelegationError::ParentExpired);
    }
    // The granted ttl is a ceiling: a delegated task cannot renew past it,
    // so it can never outlive the parent's lifetime as it stood.
    Ok((expires_at, expires_at))
}

/// Refuse a delegation to an agent that already acts in the chain (the
/// parent's own agent or any ancestor's): it would hold two credentials of
/// one tree, and the `act` chain would name it twice. Delegation is for
/// handing work to someone else; an agent that wants a narrower credential
/// for itself opens a task.
pub fn check_receiver<'a>(
    receiver: &str,
    chain_agents: impl IntoIterator<Item = &'a str>,
) -> Result<(), DelegationError> {
    if chain_agents.into_iter().any(|a| a == receiver) {
        return Err(DelegationError::SelfDelegation(receiver.to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod delegation_tests {
    use super::*;
    use proptest::prelude::*;

    /// A parent task with these expiries (everything else fixed).
    fn parent_task(expires_at: i64, max_expires_at: i64) -> Task {
        Task {
            id: "p".into(),
            agent: "a".into(),
            incident_id: "i".into(),
            environment: "prod".into(),
            playbook: "x".into(),
            intent: "y".into(),
            scope: Scope::default(),
            parent_task_id: None,
            created_at: 0,
            expires_at,
            max_expires_at,
            status: TaskStatus::Active,
            status_reason: None,
        }
    }

    fn set(v: &[u8], prefix: &str) -> BTreeSet<String> {
        v.iter().map(|x| format!("{prefix}{x}")).collect()
    }

    proptest! {
        /// Scope attenuation never widens: whatever a granted child permits,
        /// its parent permits, for random parents (bounded or not) and
        /// random requests.
        #[test]
        fn attenuation_never_widens(
            pa in proptest::option::of(proptest::collection::vec(0u8..8, 0..6)),
            pr in proptest::option::of(proptest::collection::vec(0u8..8, 0..6)),
            ca in proptest::collection::vec(0u8..8, 0..6),
            cr in proptest::collection::vec(0u8..8, 0..6),
            probe_a in 0u8..8, probe_r in 0u8..8,
        ) {
            let parent = Scope { actions: pa.map(|v| set(&v, "a")), resources: pr.map(|v| set(&v, "r")) };
            if let Ok(child) = parent.attenuate(&set(&ca, "a"), &set(&cr, "r")) {
                prop_assert!(child.is_within(&parent));
                let (a, r) = (format!("a{probe_a}"), format!("r{probe_r}"));
                prop_assert!(!child.permits(&a, &r) || parent.permits(&a, &r));
                // Delegating again from the child can only narrow further.
                if let Ok(grandchild) = child.attenuate(&set(&ca, "a"), &set(&cr, "r")) {
                    prop_assert!(grandchild.is_within(&child) && grandchild.is_within(&parent));
                }
            }
        }

        #[test]
        fn child_lifetime_stays_within_the_parent(now in 0i64..1000, exp in 1i64..5000, max in 1i64..9000, ttl in 1i64..10_000, max_ttl in 1i64..10_000) {
            let parent = parent_task(now + exp, now + exp.max(max));
            let (e, m) = child_lifetime(&parent, now, ttl, max_ttl, 1, 3).unwrap();
            prop_assert!(e <= parent.expires_at && m <= parent.max_expires_at && e <= m && e <= now + ttl);
        }

        /// Whatever the numbers (any i64, overflow included), a granted
        /// lifetime lies in (now, parent expiry] and within the ttl asked.
        #[test]
        fn no_input_gives_a_lifetime_outside_now_and_the_parent(
            now in any::<i64>(), exp in any::<i64>(), max in any::<i64>(),
            ttl in any::<i64>(), max_ttl in any::<i64>(), depth in any::<u32>(), max_depth in any::<u32>(),
        ) {
            let parent = parent_task(exp, max);
            if let Ok((e, m)) = child_lifetime(&parent, now, ttl, max_ttl, depth, max_depth) {
                prop_assert!(e > now, "expiry {e} not after now {now}");
                prop_assert!(e <= parent.expires_at && e <= parent.max_expires_at);
                prop_assert!(e == m);
                prop_assert!(ttl > 0 && e.checked_sub(now).is_some_and(|d| d <= ttl && d <= max_ttl));
                prop_assert!(depth <= max_depth);
            }
        }
    }

    #[test]
    fn overflowing_ttl_clamps_to_the_parent() {
        let parent = parent_task(1_800_000_300, 1_800_003_600);
        let now = 1_800_000_000;
        assert_eq!(
            child_lifetime(&parent, now, i64::MAX, 86_400, 1, 3),
            Ok((1_800_000_300, 1_800_000_300))
        );
        assert_eq!(
            child_lifetime(&parent, 1_800_000_300, 60, 86_400, 1, 3),
            Err(DelegationError::ParentExpired)
        );
    }

    #[test]
    fn an_agent_in_the_chain_cannot_receive() {
        assert!(check_receiver("b", ["a"]).is_ok());
        assert_eq!(
            check_receiver("a", ["a"]),
            Err(DelegationError::SelfDelegation("a".into()))
        );
        assert!(check_receiver("a", ["c", "a"]).is_err());
    }

    #[test]
    fn refusals_name_what_is_wrong() {
        let parent = Scope {
            actions: Some(set(&[1, 2], "a")),
            resources: None,
        };
        assert_eq!(
            parent.attenuate(&set(&[3], "a"), &set(&[1], "r")),
            Err(DelegationError::Action("a3".into()))
        );
        assert_eq!(
            parent.attenuate(&BTreeSet::new(), &set(&[1], "r")),
            Err(DelegationError::Empty)
        );
        let t = parent_task(100, 100);
        assert_eq!(
            child_lifetime(&t, 0, 10, 60, 3, 2),
            Err(DelegationError::Depth { depth: 3, max: 2 })
        );
    }
}
