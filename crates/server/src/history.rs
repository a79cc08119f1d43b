//! An in-memory copy of each delegation tree's action history, so a
//! decision does not re-read (and re-parse) the tree's rows from the store.
//!
//! The store stays the truth: a miss loads from it, and a load only fills
//! the cache if no decision of that tree committed meanwhile (a generation
//! per tree), so the cache can lag a concurrent decision exactly as a store
//! read could, never more. Appends happen after the commit that recorded
//! the row. The cache is dropped on policy reload (risk weights may change)
//! and when it holds too many trees.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tollgate_core::Past;

const MAX_TREES: usize = 10_000;

#[derive(Default)]
struct Tree {
    past: Option<Arc<Vec<Past>>>,
    generation: u64,
}

#[derive(Default)]
pub struct HistoryCache {
    trees: Mutex<HashMap<String, Tree>>,
}

impl HistoryCache {
    /// The cached history of a tree, or `None`, with the generation to pass to `fill`.
    pub fn snapshot(&self, root: &str) -> (Option<Arc<Vec<Past>>>, u64) {
        match self.trees.lock() {
            Ok(t) => t
                .get(root)
                .map(|e| (e.past.clone(), e.generation))
                .unwrap_or((None, 0)),
            Err(_) => (None, u64::MAX),
        }
    }

    /// Cache a history loaded from the store, unless the tree changed since `generation`.
    pub fn fill(&self, root: &str, past: Arc<Vec<Past>>, generation: u64) {
        let Ok(mut t) = self.trees.lock() else { return };
        if t.len() >= MAX_TREES {
            t.clear();
        }
        let e = t.entry(root.to_string()).or_default();
        if e.generation == generation && e.past.is_none() {
            e.past = Some(past);
        }
    }

    /// Record a committed decision.
    pub fn append(&self, root: &str, p: Past) {
        let Ok(mut t) = self.trees.lock() else { return };
        let e = t.entry(root.to_string()).or_default();
        e.generation += 1;
        if let Some(v) = &mut e.past {
            Arc::make_mut(v).push(p);
        }
    }

    pub fn clear(&self) {
        if let Ok(mut t) = self.trees.lock() {
            t.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn past(n: i64) -> Past {
        Past {
            request_id: format!("r{n}"),
            action: "a".into(),
            resource: "X::y".into(),
            tier: "read".into(),
            labels: vec![],
            outcome: "allow".into(),
            risk: 0,
            ts: n,
        }
    }

    #[test]
    fn a_load_that_raced_a_commit_is_not_cached() {
        let c = HistoryCache::default();
        let (none, g) = c.snapshot("root");
        assert!(none.is_none());
        // A decision commits while the load is in flight ...
        c.append("root", past(2));
        // ... so the (possibly stale) load must not be cached.
        c.fill("root", Arc::new(vec![past(1)]), g);
        assert!(c.snapshot("root").0.is_none());
        // A clean load is cached, and later commits are appended.
        let (_, g) = c.snapshot("root");
        c.fill("root", Arc::new(vec![past(1), past(2)]), g);
        c.append("root", past(3));
        assert_eq!(c.snapshot("root").0.unwrap().len(), 3);
    }
}
