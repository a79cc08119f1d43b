//! Each task tree's action history as last read, with the highest
//! `action_history` rowid it includes, so that a decision reads only the
//! rows committed since (`SqliteStore::decision_facts`). Why that is exact is
//! argued where it is used (`tree_history` in `sqlite.rs`); this module only
//! keeps the copies; merging a read into one, and grouping its records into
//! series for the decision, is [`TreeHistory::extend`]'s.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tollgate_core::{ActionRecord, TreeHistory, UnixTime};

/// Most trees kept; past this the cache starts over (a miss costs one full
/// read of a tree, never a wrong answer).
pub(crate) const MAX_TREES: usize = 10_000;

/// A tree's records (oldest first: by time, then rowid) and the highest
/// rowid among them (0 for none).
#[derive(Clone)]
pub(crate) struct Cached {
    pub records: Arc<TreeHistory>,
    pub max_rowid: i64,
}

struct Entry {
    /// The tree's records are those at or after this time (its root's `created_at`).
    since: UnixTime,
    cached: Cached,
}

#[derive(Default)]
pub(crate) struct TreeCache {
    trees: Mutex<HashMap<String, Entry>>,
}

impl TreeCache {
    pub fn get(&self, root: &str, since: UnixTime) -> Option<Cached> {
        let trees = self.trees.lock().ok()?;
        trees
            .get(root)
            .filter(|e| e.since == since)
            .map(|e| e.cached.clone())
    }

    /// Remove and return a tree's records if the entry is still the one
    /// read at `max_rowid`: the caller then extends them in place, without
    /// a copy, unless an earlier answer is still held somewhere.
    pub fn take(&self, root: &str, since: UnixTime, max_rowid: i64) -> Option<Arc<TreeHistory>> {
        let mut trees = self.trees.lock().ok()?;
        let current = trees
            .get(root)
            .is_some_and(|e| e.since == since && e.cached.max_rowid == max_rowid);
        if !current {
            return None;
        }
        trees.remove(root).map(|e| e.cached.records)
    }

    /// Keep `cached` unless the tree already holds a later read.
    pub fn put(&self, root: &str, since: UnixTime, cached: Cached) {
        let Ok(mut trees) = self.trees.lock() else {
            return;
        };
        match trees.get(root) {
            Some(e) if e.since == since && e.cached.max_rowid > cached.max_rowid => return,
            Some(_) => {}
            None if trees.len() >= MAX_TREES => trees.clear(),
            None => {}
        }
        trees.insert(root.to_string(), Entry { since, cached });
    }

    /// A tree's records after a delta read: `cached` (the copy `delta` was
    /// read after, or `None` when `delta` is the whole tree) plus `delta`,
    /// kept as the tree's copy at `max_rowid`. Copy on write: taken out of
    /// the cache, the records are extended in place unless an earlier
    /// answer still holds them.
    pub fn extend(
        &self,
        root: &str,
        since: UnixTime,
        cached: Option<Cached>,
        delta: Vec<ActionRecord>,
        max_rowid: i64,
    ) -> Arc<TreeHistory> {
        let records = match cached {
            Some(c) if delta.is_empty() => return c.records,
            Some(Cached {
                records: held,
                max_rowid: base,
            }) => {
                let mut records = match self.take(root, since, base) {
                    Some(taken) => {
                        drop(held);
                        taken
                    }
                    None => held,
                };
                Arc::make_mut(&mut records).extend(delta);
                records
            }
            None => Arc::new(TreeHistory::new(delta)),
        };
        self.put(
            root,
            since,
            Cached {
                records: records.clone(),
                max_rowid,
            },
        );
        records
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.trees.lock().map(|t| t.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_core::{Outcome, Tier};

    fn rec(id: &str, ts: i64) -> ActionRecord {
        ActionRecord {
            root_task_id: "root".into(),
            task_id: "root".into(),
            agent: "spiffe://acme.test/agent/a/1".into(),
            request_id: id.into(),
            action: "edr.read_alerts".into(),
            resource: "Host::web-1".into(),
            tier: Tier::Read,
            labels: Default::default(),
            outcome: Outcome::Allow,
            ts,
        }
    }

    fn ids(v: &[ActionRecord]) -> Vec<&str> {
        v.iter().map(|r| r.request_id.as_str()).collect()
    }

    #[test]
    fn later_rows_append_and_earlier_ones_merge_into_place() {
        let mut v = TreeHistory::new(vec![rec("a", 10), rec("b", 20)]);
        v.extend(vec![rec("c", 20), rec("d", 30)]);
        assert_eq!(ids(&v), ["a", "b", "c", "d"]);
        // Clock skew: a newer row with an older time sorts by time, and
        // after older rows of the same time (their rowids are lower).
        v.extend(vec![rec("e", 5), rec("f", 20), rec("g", 40)]);
        assert_eq!(ids(&v), ["e", "a", "b", "c", "f", "d", "g"]);
        let mut empty = TreeHistory::default();
        empty.extend(vec![rec("x", 1)]);
        assert_eq!(ids(&empty), ["x"]);
    }

    #[test]
    fn put_keeps_the_latest_read_and_take_only_the_expected_one() {
        let c = TreeCache::default();
        let at = |n: i64| Cached {
            records: Arc::new(TreeHistory::new(vec![rec("a", n)])),
            max_rowid: n,
        };
        c.put("root", 1, at(5));
        c.put("root", 1, at(3));
        assert_eq!(c.get("root", 1).map(|x| x.max_rowid), Some(5));
        assert!(c.get("root", 2).is_none(), "another since is another tree");
        assert!(c.take("root", 1, 3).is_none());
        assert!(c.take("root", 1, 5).is_some());
        assert!(c.get("root", 1).is_none());
    }

    #[test]
    fn the_cache_starts_over_when_full() {
        let c = TreeCache::default();
        for i in 0..MAX_TREES {
            c.put(
                &format!("t{i}"),
                0,
                Cached {
                    records: Arc::new(TreeHistory::default()),
                    max_rowid: 0,
                },
            );
        }
        assert_eq!(c.len(), MAX_TREES);
        c.put(
            "one-more",
            0,
            Cached {
                records: Arc::new(TreeHistory::default()),
                max_rowid: 0,
            },
        );
        assert_eq!(c.len(), 1);
    }
}
