//! What a task tree has done: the summary chain rules are written against.
//!
//! Policies see it as `context.history` (fixed windows of 10 minutes and an
//! hour, counts per tier, risk spent, denials), computed by the gateway from
//! the stored history of the whole delegation tree, so a restart changes
//! nothing and a sub-agent's actions count for its parent.

use crate::{Catalog, Outcome, SharedStr, SharedStrs, Tier, UnixTime};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// One decided action, kept per delegation tree so chain rules can look at
/// what the whole tree did (a child's actions count for its parent). Its
/// risk is not recorded: it is the catalog's when the history is read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionRecord {
    /// The top-level task of the tree.
    pub root_task_id: SharedStr,
    pub task_id: SharedStr,
    /// SPIFFE ID of the agent that asked.
    pub agent: SharedStr,
    pub request_id: String,
    pub action: SharedStr,
    /// `Type::id`.
    pub resource: SharedStr,
    pub tier: Tier,
    pub labels: SharedStrs,
    pub outcome: Outcome,
    pub ts: UnixTime,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TierCounts {
    pub read: i64,
    pub contain: i64,
    pub change: i64,
    pub destructive: i64,
}

impl TierCounts {
    fn add(&mut self, tier: Tier, n: i64) {
        match tier {
            Tier::Read => self.read += n,
            Tier::Contain => self.contain += n,
            Tier::Change => self.change += n,
            Tier::Destructive => self.destructive += n,
        }
    }
}

/// `context.history`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HistorySummary {
    /// Sensitivity labels of actions allowed in the tree in the last 10 minutes.
    pub labels_10m: BTreeSet<String>,
    /// ... and in the last hour.
    pub labels_1h: BTreeSet<String>,
    /// Actions allowed in the tree in the last hour.
    pub actions_1h: BTreeSet<String>,
    /// Allowed actions per tier in the last hour.
    pub tier_counts_1h: TierCounts,
    /// ... and in the last minute (rate limits).
    pub tier_counts_1m: TierCounts,
    /// Denials in the tree in the last 10 minutes.
    pub denials_10m: i64,
    /// Risk weight of every action allowed in the tree so far.
    pub risk_spent: i64,
    /// The last allowed action, or "".
    pub previous_action: String,
    /// Every action allowed in the tree so far (for playbook order; not
    /// part of the Cedar context).
    #[serde(skip)]
    pub actions_allowed: BTreeSet<String>,
}

impl HistorySummary {
    /// Fold a tree's records, oldest first, into the summary at `now`. An
    /// action's risk is the catalog's weight today (0 once it has left the
    /// catalog), so a reloaded pack re-weighs the past.
    ///
    /// A busy tree holds thousands of records and this runs on every
    /// decision, so the records are first counted per kind of allowed
    /// action (action, tier and labels: a handful per tree), comparing
    /// borrowed strings and allocating nothing; the sets and sums are then
    /// built once per kind.
    pub fn from_records(records: &[ActionRecord], catalog: &Catalog, now: UnixTime) -> Self {
        let mut denials_10m = 0;
        let mut kinds: Vec<Kind<'_>> = Vec::new();
        let mut last = 0;
        for r in records {
            let age = now - r.ts;
            if r.outcome == Outcome::Deny && age <= 600 {
                denials_10m += 1;
            }
            if r.outcome != Outcome::Allow {
                continue;
            }
            // Runs of one kind are common: try the last one first.
            let at = if kinds.get(last).is_some_and(|k| k.is(r)) {
                last
            } else if let Some(at) = kinds.iter().position(|k| k.is(r)) {
                at
            } else {
                kinds.push(Kind::of(r));
                kinds.len() - 1
            };
            last = at;
            let k = &mut kinds[at];
            k.all += 1;
            if age <= 3600 {
                k.last_1h += 1;
            }
            if age <= 600 {
                k.last_10m += 1;
            }
            if age <= 60 {
                k.last_1m += 1;
            }
        }
        let previous = records.iter().rev().find(|r| r.outcome == Outcome::Allow);
        Self::from_kinds(
            &kinds,
            denials_10m,
            previous.map(|r| r.action.as_str()),
            catalog,
        )
    }

    /// The summary of a tree's history from its series
    /// ([`TreeHistory`](crate::tree_history::TreeHistory)): each window
    /// counted by two binary searches per kind of action, so the cost
    /// follows how many kinds the tree did, not how many records it has.
    /// Equal to [`from_records`](Self::from_records) over the same records
    /// (a property test holds them to it).
    pub fn from_series(
        series: &[crate::tree_history::Series],
        previous_action: Option<&str>,
        catalog: &Catalog,
        now: UnixTime,
    ) -> Self {
        let mut denials_10m = 0;
        let mut kinds = Vec::new();
        for s in series {
            // Records at most `age` seconds old (`now - ts <= age`; a record
            // from the future counts in every window, as in `from_records`).
            let within = |age: i64| count(s.ts.len() - s.ts.partition_point(|&t| now - t > age));
            match s.outcome {
                Outcome::Deny => denials_10m += within(600),
                Outcome::Allow => kinds.push(Kind {
                    action: &s.action,
                    tier: s.tier,
                    labels: &s.labels,
                    all: count(s.ts.len()),
                    last_1h: within(3600),
                    last_10m: within(600),
                    last_1m: within(60),
                }),
                Outcome::ApprovalRequired => {}
            }
        }
        Self::from_kinds(&kinds, denials_10m, previous_action, catalog)
    }

    /// The sets and sums, built once per kind of allowed action.
    fn from_kinds(
        kinds: &[Kind<'_>],
        denials_10m: i64,
        previous_action: Option<&str>,
        catalog: &Catalog,
    ) -> Self {
        let mut s = HistorySummary {
            denials_10m,
            ..Default::default()
        };
        for k in kinds {
            let weight = catalog
                .operation(k.action)
                .map(|op| op.risk_weight())
                .unwrap_or(0);
            s.risk_spent = s.risk_spent.saturating_add(weight.saturating_mul(k.all));
            insert(&mut s.actions_allowed, k.action);
            if k.last_1h > 0 {
                insert(&mut s.actions_1h, k.action);
                k.labels.iter().for_each(|l| insert(&mut s.labels_1h, l));
                s.tier_counts_1h.add(k.tier, k.last_1h);
            }
            if k.last_10m > 0 {
                k.labels.iter().for_each(|l| insert(&mut s.labels_10m, l));
            }
            s.tier_counts_1m.add(k.tier, k.last_1m);
        }
        if let Some(action) = previous_action {
            s.previous_action = action.to_string();
        }
        s
    }
}

fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Allowed records alike in what the summary reads of them, and how many
/// there are in each window.
struct Kind<'a> {
    action: &'a str,
    tier: Tier,
    labels: &'a [String],
    all: i64,
    last_1h: i64,
    last_10m: i64,
    last_1m: i64,
}

impl<'a> Kind<'a> {
    fn of(r: &'a ActionRecord) -> Self {
        Kind {
            action: &r.action,
            tier: r.tier,
            labels: &r.labels,
            all: 0,
            last_1h: 0,
            last_10m: 0,
            last_1m: 0,
        }
    }

    fn is(&self, r: &ActionRecord) -> bool {
        self.tier == r.tier && self.action == r.action && self.labels == r.labels.as_slice()
    }
}

/// Insert without allocating when the set already holds the string.
fn insert(set: &mut BTreeSet<String>, value: &str) {
    if !set.contains(value) {
        set.insert(value.to_string());
    }
}

/// The allowed actions within `window` seconds that carry `label`, newest
/// first: what a decision names as having triggered a chain rule.
pub fn triggers<'a>(
    records: &'a [ActionRecord],
    label: &str,
    now: UnixTime,
    window: i64,
) -> Vec<&'a ActionRecord> {
    let mut v: Vec<&ActionRecord> = records
        .iter()
        .filter(|r| {
            r.outcome == Outcome::Allow
                && now - r.ts <= window
                && r.labels.iter().any(|l| l == label)
        })
        .collect();
    v.reverse();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(action: &str, tier: Tier, labels: &[&str], outcome: Outcome, ts: i64) -> ActionRecord {
        ActionRecord {
            root_task_id: "task_root".into(),
            task_id: "task_root".into(),
            agent: "spiffe://acme.test/agent/a/1".into(),
            request_id: format!("req_{ts}"),
            action: action.into(),
            resource: "X::y".into(),
            tier,
            labels: labels.iter().map(|s| s.to_string()).collect(),
            outcome,
            ts,
        }
    }

    fn catalog() -> Catalog {
        Catalog::from_yaml(
            r#"
operations:
  vault.read_secret: {tier: read, resource_types: [Secret], labels: [reads-secret], risk: 5}
  edr.isolate_host: {tier: contain, resource_types: [Host], labels: [network-change], risk: 5}
  logs.delete: {tier: destructive, resource_types: [Host], labels: [destroys-evidence], risk: 5}
  iam.disable_account: {tier: change, resource_types: [Account], labels: [modifies-identity]}
"#,
        )
        .unwrap()
    }

    /// The summary as defined: each record folded in on its own.
    fn summary_record_by_record(
        records: &[ActionRecord],
        catalog: &Catalog,
        now: UnixTime,
    ) -> HistorySummary {
        let mut s = HistorySummary::default();
        for r in records {
            let age = now - r.ts;
            if r.outcome == Outcome::Deny && age <= 600 {
                s.denials_10m += 1;
            }
            if r.outcome != Outcome::Allow {
                continue;
            }
            s.risk_spent += catalog
                .operation(&r.action)
                .map(|op| op.risk_weight())
                .unwrap_or(0);
            s.actions_allowed.insert(r.action.to_string());
            s.previous_action = r.action.to_string();
            if age <= 3600 {
                s.labels_1h.extend(r.labels.iter().cloned());
                s.actions_1h.insert(r.action.to_string());
                s.tier_counts_1h.add(r.tier, 1);
            }
            if age <= 600 {
                s.labels_10m.extend(r.labels.iter().cloned());
            }
            if age <= 60 {
                s.tier_counts_1m.add(r.tier, 1);
            }
        }
        s
    }

    proptest::proptest! {
        #[test]
        fn counting_by_kind_sums_up_to_the_record_by_record_fold(
            raw in proptest::collection::vec(
                (0usize..5, 0usize..4, 0usize..4, 0usize..3, 0i64..5000),
                0..60,
            )
        ) {
            let actions = ["vault.read_secret", "edr.isolate_host", "logs.delete", "iam.disable_account", "gone.action"];
            let tiers = [Tier::Read, Tier::Contain, Tier::Change, Tier::Destructive];
            let labels: [&[&str]; 4] = [&[], &["reads-secret"], &["network-change", "x"], &["x"]];
            let outcomes = [Outcome::Allow, Outcome::Deny, Outcome::ApprovalRequired];
            // Oldest first, as the store returns them; some in the future.
            let mut raw = raw;
            raw.sort_by_key(|r| std::cmp::Reverse(r.4));
            let now = 4000;
            let records: Vec<ActionRecord> = raw
                .iter()
                .map(|&(a, t, l, o, age)| rec(actions[a], tiers[t], labels[l], outcomes[o], now - age + 200))
                .collect();
            let c = catalog();
            proptest::prop_assert_eq!(
                HistorySummary::from_records(&records, &c, now),
                summary_record_by_record(&records, &c, now)
            );
            // And through a tree's series, as the gateway reads it.
            let tree = crate::TreeHistory::new(records.clone());
            proptest::prop_assert_eq!(
                HistorySummary::from_series(
                    tree.series(),
                    tree.last_allowed().map(|r| r.action.as_str()),
                    &c,
                    now
                ),
                summary_record_by_record(&records, &c, now)
            );
        }
    }

    #[test]
    fn windows_counts_and_risk() {
        let now = 10_000;
        let h = vec![
            rec(
                "vault.read_secret",
                Tier::Read,
                &["reads-secret"],
                Outcome::Allow,
                now - 3000,
            ),
            rec(
                "edr.isolate_host",
                Tier::Contain,
                &["network-change"],
                Outcome::Allow,
                now - 300,
            ),
            rec(
                "logs.delete",
                Tier::Destructive,
                &["destroys-evidence"],
                Outcome::Deny,
                now - 60,
            ),
            rec(
                "iam.disable_account",
                Tier::Change,
                &["modifies-identity"],
                Outcome::ApprovalRequired,
                now - 30,
            ),
        ];
        let s = HistorySummary::from_records(&h, &catalog(), now);
        assert_eq!(s.labels_10m, ["network-change".to_string()].into());
        assert!(s.labels_1h.contains("reads-secret"));
        assert_eq!(
            (
                s.tier_counts_1h.read,
                s.tier_counts_1h.contain,
                s.tier_counts_1h.destructive
            ),
            (1, 1, 0)
        );
        assert_eq!((s.denials_10m, s.risk_spent), (1, 10));
        assert_eq!(s.previous_action, "edr.isolate_host");
        assert_eq!(triggers(&h, "reads-secret", now, 3600).len(), 1);
        assert!(triggers(&h, "reads-secret", now, 600).is_empty());
    }

    #[test]
    fn risk_comes_from_the_catalog_and_is_zero_for_unknown_actions() {
        let now = 10_000;
        let h = vec![
            // Default weight by tier: change is 10.
            rec(
                "iam.disable_account",
                Tier::Change,
                &[],
                Outcome::Allow,
                now,
            ),
            // No longer in the catalog: it weighs nothing.
            rec("gone.op", Tier::Destructive, &[], Outcome::Allow, now),
            // Denied actions spend nothing.
            rec("logs.delete", Tier::Destructive, &[], Outcome::Deny, now),
        ];
        let s = HistorySummary::from_records(&h, &catalog(), now);
        assert_eq!(s.risk_spent, 10);
        assert_eq!(s.tier_counts_1m.destructive, 1);
        assert_eq!(s.previous_action, "gone.op");
    }
}
