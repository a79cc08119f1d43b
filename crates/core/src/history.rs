//! What a task tree has done: the summary chain rules are written against.
//!
//! Policies see it as `context.history` (fixed windows of 10 minutes and an
//! hour, counts per tier, risk spent, denials), computed by the gateway from
//! the stored history of the whole delegation tree, so a restart changes
//! nothing and a sub-agent's actions count for its parent.

use crate::UnixTime;
use serde::Serialize;
use std::collections::BTreeSet;

/// One earlier decision in the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Past {
    pub request_id: String,
    pub action: String,
    pub resource: String,
    pub tier: String,
    pub labels: Vec<String>,
    pub outcome: String,
    pub risk: i64,
    pub ts: UnixTime,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TierCounts {
    pub read: i64,
    pub contain: i64,
    pub change: i64,
    pub destructive: i64,
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
    pub fn from_past(past: &[Past], now: UnixTime) -> Self {
        let mut s = HistorySummary::default();
        for p in past {
            let age = now - p.ts;
            if p.outcome == "deny" && age <= 600 {
                s.denials_10m += 1;
            }
            if p.outcome != "allow" {
                continue;
            }
            s.risk_spent += p.risk;
            s.actions_allowed.insert(p.action.clone());
            s.previous_action = p.action.clone();
            if age <= 3600 {
                s.labels_1h.extend(p.labels.iter().cloned());
                s.actions_1h.insert(p.action.clone());
                match p.tier.as_str() {
                    "read" => s.tier_counts_1h.read += 1,
                    "contain" => s.tier_counts_1h.contain += 1,
                    "change" => s.tier_counts_1h.change += 1,
                    "destructive" => s.tier_counts_1h.destructive += 1,
                    _ => {}
                }
            }
            if age <= 600 {
                s.labels_10m.extend(p.labels.iter().cloned());
            }
            if age <= 60 {
                match p.tier.as_str() {
                    "read" => s.tier_counts_1m.read += 1,
                    "contain" => s.tier_counts_1m.contain += 1,
                    "change" => s.tier_counts_1m.change += 1,
                    "destructive" => s.tier_counts_1m.destructive += 1,
                    _ => {}
                }
            }
        }
        s
    }
}

/// The allowed actions within `window` seconds that carry `label`, newest
/// first: what a decision names as having triggered a chain rule.
pub fn triggers<'a>(past: &'a [Past], label: &str, now: UnixTime, window: i64) -> Vec<&'a Past> {
    let mut v: Vec<&Past> = past
        .iter()
        .filter(|p| {
            p.outcome == "allow" && now - p.ts <= window && p.labels.iter().any(|l| l == label)
        })
        .collect();
    v.reverse();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn past(action: &str, tier: &str, labels: &[&str], outcome: &str, ts: i64) -> Past {
        Past {
            request_id: format!("req_{ts}"),
            action: action.into(),
            resource: "X::y".into(),
            tier: tier.into(),
            labels: labels.iter().map(|s| s.to_string()).collect(),
            outcome: outcome.into(),
            risk: 5,
            ts,
        }
    }

    #[test]
    fn windows_counts_and_risk() {
        let now = 10_000;
        let h = vec![
            past(
                "vault.read_secret",
                "read",
                &["reads-secret"],
                "allow",
                now - 3000,
            ),
            past(
                "edr.isolate_host",
                "contain",
                &["network-change"],
                "allow",
                now - 300,
            ),
            past(
                "logs.delete",
                "destructive",
                &["destroys-evidence"],
                "deny",
                now - 60,
            ),
            past(
                "iam.disable_account",
                "change",
                &["modifies-identity"],
                "approval_required",
                now - 30,
            ),
        ];
        let s = HistorySummary::from_past(&h, now);
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
}
