//! A task tree's history as the gateway keeps it between decisions: the
//! records, oldest first, and the same records grouped into series of one
//! kind each.
//!
//! Every decision summarises its tree's history (`context.history`) and
//! evaluates the tree's temporal rules over it. Walking the records for
//! that made a decision's cost grow with how much the tree had done: a
//! tree of a few thousand reads spent more time there than in Cedar. A
//! series holds the timestamps of the records alike in everything the
//! summary and a rule's filter read (action, tier, labels, outcome), so a
//! window's count is two binary searches per kind of action the tree did.
//! The series grow with the records (`extend`), so the work is done once
//! per record, not once per decision.
//!
//! The records themselves stay for as long as the tree is cached (tree
//! rules that read the resource, tree-wide rate limits and naming what
//! triggered a chain rule read them), so their repeated text (root task,
//! task, agent, action, resource, labels) is shared between them: each
//! distinct string ([`SharedStr`]) or list of labels ([`SharedStrs`]) is one
//! allocation, however many records hold it.
//!
//! Invariant: `series` is a function of `records`: however the records
//! arrived, the series are those of the records taken in order (the order
//! of the series themselves aside). Property tests hold this, and hold the
//! summary and every rule read through the series to their
//! record-by-record definitions. Sharing text changes no record's value.

use crate::{ActionRecord, Outcome, SharedStr, SharedStrs, Tier, UnixTime};
use std::collections::HashSet;

/// Most distinct strings one tree shares between its records; past it, new
/// text is kept per record (a tree that touches thousands of resources
/// still gets its root task, task, agent and actions shared).
const MAX_SHARED: usize = 1024;

/// The records of one kind, by time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Series {
    pub action: SharedStr,
    pub tier: Tier,
    pub labels: SharedStrs,
    pub outcome: Outcome,
    /// Ascending (records of equal time keep their order).
    pub ts: Vec<UnixTime>,
}

impl Series {
    fn of(r: &ActionRecord) -> Self {
        Series {
            action: r.action.clone(),
            tier: r.tier,
            labels: r.labels.clone(),
            outcome: r.outcome,
            ts: Vec::new(),
        }
    }

    fn is(&self, r: &ActionRecord) -> bool {
        self.outcome == r.outcome
            && self.tier == r.tier
            && self.action == r.action
            && self.labels == r.labels
    }

    /// How many records have `after < ts <= upto`.
    pub fn count_in(&self, after: UnixTime, upto: UnixTime) -> usize {
        let end = self.ts.partition_point(|&t| t <= upto);
        let start = self.ts.partition_point(|&t| t <= after);
        end.saturating_sub(start)
    }

    /// The latest `ts` with `after < ts <= upto`.
    pub fn last_in(&self, after: UnixTime, upto: UnixTime) -> Option<UnixTime> {
        let end = self.ts.partition_point(|&t| t <= upto);
        end.checked_sub(1)
            .map(|i| self.ts[i])
            .filter(|&t| t > after)
    }
}

/// A tree's records, oldest first, and their series.
#[derive(Debug, Clone, Default)]
pub struct TreeHistory {
    records: Vec<ActionRecord>,
    series: Vec<Series>,
    /// Where the last allowed record is in `records`.
    last_allowed: Option<usize>,
    /// The text the records share.
    shared: HashSet<SharedStr>,
}

/// Equal records, series and last allowed record: which strings happen to
/// be shared is not part of a history's value.
impl PartialEq for TreeHistory {
    fn eq(&self, other: &Self) -> bool {
        self.records == other.records
            && self.series == other.series
            && self.last_allowed == other.last_allowed
    }
}

impl Eq for TreeHistory {}

impl TreeHistory {
    /// From a tree's records in rowid order (as the store reads them).
    pub fn new(records: Vec<ActionRecord>) -> Self {
        let mut h = TreeHistory::default();
        h.extend(records);
        h
    }

    pub fn records(&self) -> &[ActionRecord] {
        &self.records
    }

    pub fn series(&self) -> &[Series] {
        &self.series
    }

    /// The last allowed record.
    pub fn last_allowed(&self) -> Option<&ActionRecord> {
        self.last_allowed.and_then(|i| self.records.get(i))
    }

    /// Add records read after these, merged by time. The store reads
    /// `delta` in rowid order, and every rowid in it is above every rowid
    /// here; `delta` is sorted by time here, stably, so on equal times the
    /// older record comes first. A record committed later may carry an
    /// earlier time (a clock that went back, or the clocks of two
    /// replicas): it is merged into place, not appended.
    pub fn extend(&mut self, mut delta: Vec<ActionRecord>) {
        delta.sort_by_key(|r| r.ts);
        let in_order = match (self.records.last(), delta.first()) {
            (Some(last), Some(first)) => first.ts >= last.ts,
            _ => true,
        };
        if in_order {
            for mut r in delta {
                self.index(&mut r, self.records.len());
                self.records.push(r);
            }
            return;
        }
        // Rare: merge, then group again from scratch.
        let old = std::mem::take(&mut self.records);
        let mut merged = Vec::with_capacity(old.len() + delta.len());
        let mut old = old.into_iter().peekable();
        let mut new = delta.into_iter().peekable();
        loop {
            let take_new = match (old.peek(), new.peek()) {
                (Some(o), Some(n)) => n.ts < o.ts,
                (None, Some(_)) => true,
                (Some(_), None) => false,
                (None, None) => break,
            };
            merged.extend(if take_new { new.next() } else { old.next() });
        }
        *self = TreeHistory::default();
        for mut r in merged {
            self.index(&mut r, self.records.len());
            self.records.push(r);
        }
    }

    /// `s`, as the copy of its text this tree already holds, if any.
    fn share(&mut self, s: &mut SharedStr) {
        if let Some(known) = self.shared.get(s.as_str()) {
            *s = known.clone();
        } else if self.shared.len() < MAX_SHARED {
            self.shared.insert(s.clone());
        }
    }

    /// Enter `r`, about to be `records[at]`, into its series, sharing its
    /// text with the records before it.
    fn index(&mut self, r: &mut ActionRecord, at: usize) {
        self.share(&mut r.root_task_id);
        self.share(&mut r.task_id);
        self.share(&mut r.agent);
        self.share(&mut r.resource);
        // Runs of one kind are common: try the newest series first.
        let found = match self.series.iter().rposition(|s| s.is(r)) {
            Some(i) => i,
            None => {
                self.series.push(Series::of(r));
                self.series.len() - 1
            }
        };
        // The series' action and labels are the same: the record shares them.
        r.action = self.series[found].action.clone();
        r.labels = self.series[found].labels.clone();
        let ts = &mut self.series[found].ts;
        let pos = ts.partition_point(|&t| t <= r.ts);
        ts.insert(pos, r.ts);
        if r.outcome == Outcome::Allow {
            self.last_allowed = Some(at);
        }
    }
}

impl std::ops::Deref for TreeHistory {
    type Target = [ActionRecord];
    fn deref(&self) -> &[ActionRecord] {
        &self.records
    }
}

impl From<Vec<ActionRecord>> for TreeHistory {
    fn from(records: Vec<ActionRecord>) -> Self {
        TreeHistory::new(records)
    }
}

impl PartialEq<Vec<ActionRecord>> for TreeHistory {
    fn eq(&self, other: &Vec<ActionRecord>) -> bool {
        &self.records == other
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rec(action: &str, outcome: Outcome, ts: i64, n: usize) -> ActionRecord {
        ActionRecord {
            root_task_id: "root".into(),
            task_id: "root".into(),
            agent: "spiffe://acme.test/agent/a/1".into(),
            request_id: format!("req_{n}"),
            action: action.into(),
            resource: "Host::web-1".into(),
            tier: Tier::Read,
            labels: vec![].into(),
            outcome,
            ts,
        }
    }

    #[test]
    fn records_share_their_repeated_text() {
        let records: Vec<_> = (0..4)
            .map(|n| rec("edr.read_alerts", Outcome::Allow, n as i64, n))
            .collect();
        // Each record of the input has its own copy of every string.
        assert!(!records[0].agent.shares_with(&records[1].agent));
        let h = TreeHistory::new(records.clone());
        assert_eq!(h, records);
        for pair in h.records().windows(2) {
            let (x, y) = (&pair[0], &pair[1]);
            assert!(x.root_task_id.shares_with(&y.root_task_id));
            assert!(x.task_id.shares_with(&y.task_id));
            assert!(x.agent.shares_with(&y.agent));
            assert!(x.action.shares_with(&y.action));
            assert!(x.resource.shares_with(&y.resource));
            assert!(x.labels.shares_with(&y.labels));
        }
        // Records merged out of order share as well.
        let mut late = h.clone();
        late.extend(vec![rec("edr.read_alerts", Outcome::Allow, 1, 9)]);
        let last = late.records().iter().find(|r| r.request_id == "req_9");
        assert!(last.is_some_and(|r| r.agent.shares_with(&h.records()[0].agent)));
    }

    #[test]
    fn a_series_counts_its_window_open_at_the_start() {
        let h = TreeHistory::new(
            [5, 10, 10, 20]
                .iter()
                .enumerate()
                .map(|(n, &ts)| rec("a", Outcome::Allow, ts, n))
                .collect(),
        );
        let s = &h.series()[0];
        assert_eq!(s.count_in(5, 10), 2);
        assert_eq!(s.count_in(4, 20), 4);
        assert_eq!(s.count_in(20, 30), 0);
        assert_eq!(s.last_in(0, 15), Some(10));
        assert_eq!(s.last_in(10, 15), None);
    }

    proptest! {
        /// However the records arrive, the history is the records sorted
        /// by time (stable) with the series built from them in one go.
        #[test]
        fn extending_equals_building_from_the_sorted_whole(
            parts in proptest::collection::vec(
                proptest::collection::vec((0usize..3, 0usize..3, 0i64..20), 0..8),
                0..5,
            ),
        ) {
            let actions = ["a", "b", "c"];
            let outcomes = [Outcome::Allow, Outcome::Deny, Outcome::ApprovalRequired];
            let mut n = 0;
            let mut h = TreeHistory::default();
            let mut all = Vec::new();
            for part in parts {
                let mut delta: Vec<ActionRecord> = part
                    .into_iter()
                    .map(|(a, o, ts)| {
                        n += 1;
                        rec(actions[a], outcomes[o], ts, n)
                    })
                    .collect();
                // The store reads each delta in order of time.
                delta.sort_by_key(|r| r.ts);
                all.extend(delta.iter().cloned());
                h.extend(delta);
            }
            // What the store would read from scratch: by time, then by
            // arrival (rowid).
            all.sort_by_key(|r| r.ts);
            let whole = TreeHistory::new(all.clone());
            prop_assert_eq!(h.records(), whole.records());
            let mut ours = h.series().to_vec();
            let mut theirs = whole.series().to_vec();
            ours.sort_by(|x, y| (&x.action, x.outcome.as_str()).cmp(&(&y.action, y.outcome.as_str())));
            theirs.sort_by(|x, y| (&x.action, x.outcome.as_str()).cmp(&(&y.action, y.outcome.as_str())));
            prop_assert_eq!(ours, theirs);
            prop_assert_eq!(
                h.last_allowed(),
                all.iter().rev().find(|r| r.outcome == Outcome::Allow)
            );
        }
    }
}
