//! Which parts of `context` a pack's policies can read.
//!
//! A privileged action's context carries everything the gateway knows
//! (task, incident, operation, history summary, rule values, parameters …),
//! and turning it into Cedar values was about a third of a decision. A
//! policy can only read what it names: Cedar has no computed attribute
//! access on records, so every read of the context is a chain of `.` (or a
//! `has`) starting at the variable `context`, or the variable itself used
//! as a value. [`ContextUse`] collects those chains from every policy at
//! load, and the unchecked request path leaves out what no policy names.
//!
//! Invariant: the analysis only ever over-approximates. Every occurrence of
//! the variable `context` in a policy is either the start of a recorded
//! chain or marks the whole context as read, so a left-out attribute is one
//! no policy of the pack can observe, and the decision (including which
//! policies errored) is that of the full context. `tests.rs` holds the
//! pruned request to the validated one's decision.

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// What a pack's policies read of `context`, two levels deep: a top-level
/// attribute either read whole, or only some of its own attributes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ContextUse {
    /// Some policy uses `context` itself as a value: keep everything.
    whole: bool,
    /// Top-level attributes read; `None` means read whole (or tested
    /// with `has`), `Some` lists the only sub-attributes read.
    top: BTreeMap<String, Option<BTreeSet<String>>>,
}

impl ContextUse {
    /// Keep everything: what a pack whose policies cannot be analysed gets.
    pub(crate) fn everything() -> Self {
        Self {
            whole: true,
            top: BTreeMap::new(),
        }
    }

    /// The reads of every policy, each given in Cedar's JSON form (EST).
    /// A policy that cannot be given in that form keeps everything.
    pub(crate) fn of_policies<'a>(
        policies: impl IntoIterator<Item = &'a cedar_policy::Policy>,
    ) -> Self {
        let mut reads = Self::default();
        for policy in policies {
            // Only a condition can read the context, and only by naming it:
            // the variable is written `context` in the policy's text (which
            // Cedar keeps), so a policy without the word is skipped without
            // the costly JSON form. A comment mentioning it only costs time.
            if !policy.has_non_scope_constraint() || !policy.to_string().contains("context") {
                continue;
            }
            match policy.to_json() {
                Ok(json) => reads.walk(&json),
                Err(_) => return Self::everything(),
            }
        }
        reads
    }

    /// Whether top-level attribute `name` is kept.
    pub(crate) fn keeps(&self, name: &str) -> bool {
        self.whole || self.top.contains_key(name)
    }

    /// What is kept of the top-level record `name`.
    pub(crate) fn record(&self, name: &str) -> Kept<'_> {
        if self.whole {
            return Kept::All;
        }
        match self.top.get(name) {
            None => Kept::Nothing,
            Some(None) => Kept::All,
            Some(Some(fields)) => Kept::Only(fields),
        }
    }

    /// Whether `field` of the top-level record `name` is kept.
    #[cfg(test)]
    fn keeps_field(&self, name: &str, field: &str) -> bool {
        self.record(name).keeps(field)
    }

    /// Record a read of `context.<path>`.
    fn read(&mut self, path: &[&str]) {
        match path {
            [] => self.whole = true,
            [name] => {
                self.top.insert((*name).to_string(), None);
            }
            [name, field, ..] => {
                let entry = self
                    .top
                    .entry((*name).to_string())
                    .or_insert_with(|| Some(BTreeSet::new()));
                // `None` (read whole) stays whole.
                if let Some(fields) = entry {
                    fields.insert((*field).to_string());
                }
            }
        }
    }

    /// Visit every node of a policy's JSON form. A chain of `.`/`has` on
    /// `context` is recorded and not descended into (its only variable is
    /// the one recorded); any other occurrence of `context` is a whole read.
    fn walk(&mut self, node: &Value) {
        match node {
            Value::Object(map) => {
                if map.len() == 1 {
                    if let Some(path) = chain(node) {
                        self.read(&path);
                        return;
                    }
                }
                for child in map.values() {
                    self.walk(child);
                }
            }
            Value::Array(items) => {
                for item in items {
                    self.walk(item);
                }
            }
            _ => {}
        }
    }
}

/// What is kept of one top-level record of the context.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kept<'a> {
    Nothing,
    All,
    Only(&'a BTreeSet<String>),
}

impl Kept<'_> {
    pub(crate) fn any(self) -> bool {
        !matches!(self, Kept::Nothing)
    }

    pub(crate) fn keeps(self, field: &str) -> bool {
        match self {
            Kept::Nothing => false,
            Kept::All => true,
            Kept::Only(fields) => fields.contains(field),
        }
    }
}

/// `Some(path)` when `node` is `context` itself or a chain of attribute
/// reads (or a final `has` test) on it.
fn chain(node: &Value) -> Option<Vec<&str>> {
    let map = node.as_object()?;
    if map.len() != 1 {
        return None;
    }
    if let Some(var) = map.get("Var") {
        return (var.as_str() == Some("context")).then(Vec::new);
    }
    if let Some(get) = map.get(".") {
        let mut path = chain(get.get("left")?)?;
        path.push(get.get("attr")?.as_str()?);
        return Some(path);
    }
    if let Some(has) = map.get("has") {
        let mut path = chain(has.get("left")?)?;
        match has.get("attr")? {
            Value::String(attr) => path.push(attr),
            Value::Array(attrs) => {
                for attr in attrs {
                    path.push(attr.as_str()?);
                }
            }
            _ => return None,
        }
        return Some(path);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reads(text: &str) -> ContextUse {
        let set: cedar_policy::PolicySet = text.parse().unwrap();
        ContextUse::of_policies(set.policies())
    }

    #[test]
    fn chains_are_recorded_two_levels_deep() {
        let u = reads(
            r#"permit (principal, action, resource) when {
                 context.history.risk_spent + context.operation.risk > 100 &&
                 context.rules.a.b == 1 && context has intent && context.history has labels_1h
               };"#,
        );
        assert!(!u.whole);
        assert!(u.keeps("history") && u.keeps("operation") && u.keeps("rules"));
        assert!(u.keeps("intent") && u.keeps_field("intent", "anything"));
        assert!(u.keeps_field("history", "risk_spent"));
        assert!(u.keeps_field("history", "labels_1h"));
        assert!(!u.keeps_field("history", "labels_10m"));
        assert!(u.keeps_field("rules", "a"));
        assert!(!u.keeps("task") && !u.keeps("parameters") && !u.keeps("now"));
    }

    #[test]
    fn a_record_read_whole_keeps_all_its_fields() {
        let u = reads(
            r#"permit (principal, action, resource) when { context.history.risk_spent > 1 };
               forbid (principal, action, resource) when { context.history == context.history };"#,
        );
        assert!(u.keeps_field("history", "labels_10m"));
        // Order does not matter: the whole read comes first here.
        let u = reads(
            r#"forbid (principal, action, resource) when { context.history == context.history };
               permit (principal, action, resource) when { context.history.risk_spent > 1 };"#,
        );
        assert!(u.keeps_field("history", "labels_10m"));
    }

    #[test]
    fn context_as_a_value_keeps_everything() {
        for text in [
            r#"permit (principal, action, resource) when { context == {} };"#,
            r#"permit (principal, action, resource) when { (if true then context else {"a": 1}).a == 1 };"#,
            r#"permit (principal, action, resource) when { [context].contains(context) };"#,
        ] {
            let u = reads(text);
            assert!(u.keeps("task") && u.keeps_field("history", "x"), "{text}");
        }
    }

    #[test]
    fn a_multi_attribute_has_is_a_chain() {
        let u = reads(r#"permit (principal, action, resource) when { context has task.intent };"#);
        assert!(u.keeps_field("task", "intent"));
        assert!(!u.keeps_field("task", "id"));
    }

    #[test]
    fn the_word_in_a_comment_or_a_string_only_widens() {
        let u = reads(
            "// context.task is not read here\npermit (principal, action, resource) when { principal.role == \"context\" };",
        );
        assert_eq!(u, ContextUse::default());
        // A policy the analysis cannot skip still reads only what it names.
        let u = reads(r#"permit (principal, action, resource) when { context.now > 1 };"#);
        assert!(u.keeps("now") && !u.keeps("task"));
    }

    #[test]
    fn policies_without_context_read_nothing() {
        let u = reads(
            r#"permit (principal == Agent::"a", action, resource) when { principal.role == "x" };"#,
        );
        assert_eq!(u, ContextUse::default());
        assert!(!u.keeps("task"));
    }
}
