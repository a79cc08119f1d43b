//! A task and its ancestors, read together, and what follows from them: the
//! tree's root (whose history chain rules read), the delegation depth,
//! whether an ancestor has ended (a delegated task lives only while its
//! parents do), and the actor chain.

use crate::{Task, TaskStatus};

/// Most ancestors a task may have; a store refuses a longer chain (it can
/// only come from corrupt data, since delegation caps the depth far lower).
pub const MAX_ANCESTORS: usize = 64;

/// A task and its ancestors as read in one go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lineage {
    pub task: Task,
    /// Parent first, root last.
    pub ancestors: Vec<Task>,
    /// The id of a parent that was not found; the walk stopped there.
    pub missing_parent: Option<String>,
}

impl Lineage {
    /// The top-level task of the tree: the last ancestor found, or the task.
    pub fn root(&self) -> &Task {
        self.ancestors.last().unwrap_or(&self.task)
    }

    /// How many ancestors the task has, counting a missing one.
    pub fn depth(&self) -> u32 {
        let found = u32::try_from(self.ancestors.len()).unwrap_or(u32::MAX);
        found.saturating_add(u32::from(self.missing_parent.is_some()))
    }

    /// Why the task cannot act because of its ancestors, if it cannot: the
    /// first one (from the parent up) that is not active, else a missing one.
    pub fn dead(&self) -> Option<String> {
        self.ancestors
            .iter()
            .find(|t| t.status != TaskStatus::Active)
            .map(|t| format!("parent task {} is {}", t.id, t.status))
            .or_else(|| {
                self.missing_parent
                    .as_ref()
                    .map(|p| format!("parent task {p} is missing"))
            })
    }

    /// The agents of the chain: the task's first, then each ancestor's.
    pub fn agents(&self) -> Vec<String> {
        std::iter::once(&self.task)
            .chain(&self.ancestors)
            .map(|t| t.agent.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Scope;

    fn task(id: &str, parent: Option<&str>, status: TaskStatus) -> Task {
        Task {
            id: id.into(),
            agent: format!("spiffe://acme.test/agent/{id}/1"),
            incident_id: "INC-1".into(),
            environment: "prod".into(),
            playbook: "contain-malware".into(),
            intent: "contain".into(),
            scope: Scope::default(),
            parent_task_id: parent.map(str::to_string),
            created_at: 1,
            expires_at: 100,
            max_expires_at: 100,
            status,
            status_reason: None,
        }
    }

    #[test]
    fn a_top_level_task_is_its_own_root() {
        let l = Lineage {
            task: task("a", None, TaskStatus::Active),
            ancestors: vec![],
            missing_parent: None,
        };
        assert_eq!(l.root().id, "a");
        assert_eq!(l.depth(), 0);
        assert_eq!(l.dead(), None);
        assert_eq!(l.agents(), ["spiffe://acme.test/agent/a/1"]);
    }

    #[test]
    fn ancestors_give_root_depth_and_agents() {
        let l = Lineage {
            task: task("c", Some("b"), TaskStatus::Active),
            ancestors: vec![
                task("b", Some("a"), TaskStatus::Active),
                task("a", None, TaskStatus::Active),
            ],
            missing_parent: None,
        };
        assert_eq!(l.root().id, "a");
        assert_eq!(l.depth(), 2);
        assert_eq!(l.dead(), None);
        assert_eq!(
            l.agents(),
            [
                "spiffe://acme.test/agent/c/1",
                "spiffe://acme.test/agent/b/1",
                "spiffe://acme.test/agent/a/1"
            ]
        );
    }

    #[test]
    fn the_first_ended_ancestor_wins_over_a_missing_one() {
        let l = Lineage {
            task: task("d", Some("c"), TaskStatus::Active),
            ancestors: vec![
                task("c", Some("b"), TaskStatus::Active),
                task("b", Some("a"), TaskStatus::Revoked),
                task("a", Some("gone"), TaskStatus::Completed),
            ],
            missing_parent: Some("gone".into()),
        };
        assert_eq!(l.dead().as_deref(), Some("parent task b is revoked"));
        assert_eq!(l.depth(), 4);
        assert_eq!(l.root().id, "a");
    }

    #[test]
    fn a_missing_parent_kills_and_counts() {
        let l = Lineage {
            task: task("b", Some("a"), TaskStatus::Active),
            ancestors: vec![],
            missing_parent: Some("a".into()),
        };
        assert_eq!(l.dead().as_deref(), Some("parent task a is missing"));
        assert_eq!(l.depth(), 1);
        // The walk stopped at the task: it is the root as far as is known.
        assert_eq!(l.root().id, "b");
        assert_eq!(l.agents(), ["spiffe://acme.test/agent/b/1"]);
    }

    #[test]
    fn the_task_itself_ended_is_not_an_ancestor_problem() {
        let l = Lineage {
            task: task("b", Some("a"), TaskStatus::Revoked),
            ancestors: vec![task("a", None, TaskStatus::Active)],
            missing_parent: None,
        };
        assert_eq!(l.dead(), None);
    }
}
