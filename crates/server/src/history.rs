//! An in-memory copy of each delegation tree's action history, so a
//! decision does not re-read (and re-parse) the tree's rows from the store.
//!
//! The store stays the truth: a miss loads from it. Decisions that commit
//! while a load is in flight are collected per tree (`pending`) and merged
//! into the load, de-duplicated by request id, so a load under concurrent
//! traffic is still cached and never misses a committed decision. (The
//! first version refused any load that raced a commit, so a busy tree was
//! re-read from SQLite on every decision.) Appends happen after the commit
//! that recorded the row. Generations come from one counter for the whole
//! cache, so a tree dropped and re-created meanwhile cannot pass for an
//! unchanged one. The cache is dropped on policy reload (risk weights may
//! change) and when it holds too many trees.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use tollgate_core::Past;

const MAX_TREES: usize = 10_000;
/// Commits remembered for a tree that is not loaded yet; past this the
/// tree's in-flight loads are not cached (the next one will be).
const MAX_PENDING: usize = 4_096;

struct Tree {
    past: Option<Arc<Vec<Past>>>,
    /// Request ids in `past`: an append racing the load is not counted twice.
    ids: HashSet<String>,
    /// Commits seen while `past` is `None`.
    pending: Vec<Past>,
    /// `pending` holds every commit of this tree after this generation.
    pending_from: u64,
}

#[derive(Default)]
struct Trees {
    by_root: HashMap<String, Tree>,
    /// Counts every append, across trees.
    generation: u64,
}

impl Trees {
    fn tree(&mut self, root: &str) -> &mut Tree {
        if self.by_root.len() >= MAX_TREES && !self.by_root.contains_key(root) {
            self.by_root.clear();
        }
        let generation = self.generation;
        self.by_root
            .entry(root.to_string())
            .or_insert_with(|| Tree {
                past: None,
                ids: HashSet::new(),
                pending: Vec::new(),
                pending_from: generation,
            })
    }
}

#[derive(Default)]
pub struct HistoryCache {
    trees: Mutex<Trees>,
}

impl HistoryCache {
    /// The cached history of a tree, or `None`, with the generation to pass to `fill`.
    pub fn snapshot(&self, root: &str) -> (Option<Arc<Vec<Past>>>, u64) {
        match self.trees.lock() {
            Ok(t) => (
                t.by_root.get(root).and_then(|e| e.past.clone()),
                t.generation,
            ),
            Err(_) => (None, u64::MAX),
        }
    }

    /// Cache a history loaded from the store after `snapshot` returned
    /// `generation`, merged with the decisions committed since, if every
    /// one of them is known; returns what the decision should use.
    pub fn fill(&self, root: &str, loaded: Arc<Vec<Past>>, generation: u64) -> Arc<Vec<Past>> {
        let Ok(mut t) = self.trees.lock() else {
            return loaded;
        };
        let e = t.tree(root);
        if let Some(past) = &e.past {
            return past.clone();
        }
        if e.pending_from > generation {
            return loaded;
        }
        let mut merged = (*loaded).clone();
        let mut ids: HashSet<String> = merged.iter().map(|p| p.request_id.clone()).collect();
        for p in e.pending.drain(..) {
            // Commits missing from the load are newer than all of it.
            if ids.insert(p.request_id.clone()) {
                merged.push(p);
            }
        }
        let merged = Arc::new(merged);
        e.past = Some(merged.clone());
        e.ids = ids;
        merged
    }

    /// Record a committed decision.
    pub fn append(&self, root: &str, p: Past) {
        let Ok(mut t) = self.trees.lock() else { return };
        // A tree created now collects this append: created before the count moves.
        t.tree(root);
        t.generation += 1;
        let generation = t.generation;
        let Some(e) = t.by_root.get_mut(root) else {
            return;
        };
        match &mut e.past {
            Some(v) => {
                if e.ids.insert(p.request_id.clone()) {
                    Arc::make_mut(v).push(p);
                }
            }
            None if e.pending.len() < MAX_PENDING => e.pending.push(p),
            None => {
                e.pending.clear();
                e.pending_from = generation;
            }
        }
    }

    pub fn clear(&self) {
        if let Ok(mut t) = self.trees.lock() {
            t.by_root.clear();
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
    fn a_load_that_raced_commits_is_merged_with_them() {
        let c = HistoryCache::default();
        let (none, g) = c.snapshot("root");
        assert!(none.is_none());
        // Two decisions commit while the load is in flight: one before the
        // load read its rows (so it is in the load too), one after.
        c.append("root", past(1));
        c.append("root", past(2));
        let used = c.fill("root", Arc::new(vec![past(0), past(1)]), g);
        let ids: Vec<_> = used.iter().map(|p| p.request_id.as_str()).collect();
        assert_eq!(ids, ["r0", "r1", "r2"]);
        assert_eq!(c.snapshot("root").0.unwrap().len(), 3);
        // A late append of a loaded decision is not counted twice.
        c.append("root", past(2));
        c.append("root", past(3));
        assert_eq!(c.snapshot("root").0.unwrap().len(), 4);
    }

    #[test]
    fn a_load_is_not_cached_when_commits_since_its_snapshot_are_unknown() {
        let c = HistoryCache::default();
        let (_, g) = c.snapshot("root");
        // More commits than are remembered: the load cannot be completed.
        for i in 0..=MAX_PENDING as i64 {
            c.append("root", past(i));
        }
        let used = c.fill("root", Arc::new(vec![past(0)]), g);
        assert_eq!(used.len(), 1);
        assert!(c.snapshot("root").0.is_none());
        // A tree dropped and re-created after the snapshot: not cached either.
        let (_, g) = c.snapshot("other");
        c.append("other", past(1));
        c.clear();
        c.append("other", past(2));
        c.fill("other", Arc::new(vec![]), g);
        assert!(c.snapshot("other").0.is_none());
        // A fresh snapshot loads and caches.
        let (_, g) = c.snapshot("other");
        c.fill("other", Arc::new(vec![past(1), past(2)]), g);
        assert_eq!(c.snapshot("other").0.unwrap().len(), 2);
    }
}
