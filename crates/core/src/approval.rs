//! Human approval of one exact request: a pure state machine.
//!
//! An approval is bound to the canonical hash of (task, action, resource,
//! parameters); it collects votes from distinct approvers, is decided by a
//! quorum (or a deny threshold), expires, and can be consumed exactly once.
//! Stores persist it with an optimistic `version`, so two racing transitions
//! (two uses, two votes) resolve to one winner without any logic in the store.

use crate::UnixTime;
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalStatus {
    Pending,
    Approved,
    Denied,
    Expired,
    /// Approved and then spent by the one request it was for.
    Used,
    /// The request it was for was abandoned (its caller cancelled or went
    /// away while it waited); it can no longer be decided or spent.
    Withdrawn,
}

impl ApprovalStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalStatus::Pending => "pending",
            ApprovalStatus::Approved => "approved",
            ApprovalStatus::Denied => "denied",
            ApprovalStatus::Expired => "expired",
            ApprovalStatus::Used => "used",
            ApprovalStatus::Withdrawn => "withdrawn",
        }
    }
}

impl std::str::FromStr for ApprovalStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        serde_json::from_value(Value::String(s.to_string()))
            .map_err(|_| format!("unknown approval status {s:?}"))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vote {
    pub approver: String,
    pub role: String,
    pub approve: bool,
    pub reason: String,
    pub ts: UnixTime,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Approval {
    pub id: String,
    pub version: u64,
    pub request_hash: String,
    /// The decision request that asked for it.
    pub request_id: String,
    pub task_id: String,
    pub agent: String,
    pub agent_owner: String,
    pub incident_id: String,
    pub action: String,
    /// `Type::id`.
    pub resource: String,
    /// What the approver is shown: resource attributes, parameters, intent.
    pub request: Value,
    pub required: u32,
    pub deny_threshold: u32,
    pub policies: Vec<String>,
    pub reasons: Vec<String>,
    pub status: ApprovalStatus,
    pub votes: Vec<Vote>,
    pub created_at: UnixTime,
    pub expires_at: UnixTime,
    pub escalated: bool,
    pub decided_at: Option<UnixTime>,
    pub used_at: Option<UnixTime>,
    /// The request id of the one decision that spent it.
    pub used_by: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ApprovalError {
    #[error("approval is {0}, not pending")]
    NotPending(&'static str),
    #[error("approval has expired")]
    Expired,
    #[error("{0} has already voted on this approval")]
    AlreadyVoted(String),
    #[error("approval is {0}; only an approved, unused approval can be used")]
    NotApproved(&'static str),
    #[error("approval was granted for a different request (task, action, resource or parameters differ)")]
    Mismatch,
}

impl Approval {
    /// Distinct approving and denying voters.
    pub fn tally(&self) -> (u32, u32) {
        let approve = self.votes.iter().filter(|v| v.approve).count() as u32;
        (approve, self.votes.len() as u32 - approve)
    }

    /// Expire a pending, or approved but unused, approval whose time has
    /// come: a grant is only good until `expires_at`. Returns whether it changed.
    pub fn expire_if_due(&mut self, now: UnixTime) -> bool {
        let open = matches!(
            self.status,
            ApprovalStatus::Pending | ApprovalStatus::Approved
        );
        if open && now >= self.expires_at {
            self.status = ApprovalStatus::Expired;
            self.decided_at = Some(now);
            self.version += 1;
            return true;
        }
        false
    }

    /// Withdraw a pending, or approved but unused, approval because the
    /// request it was for was abandoned. Returns whether it changed.
    pub fn withdraw(&mut self, now: UnixTime) -> bool {
        if matches!(
            self.status,
            ApprovalStatus::Pending | ApprovalStatus::Approved
        ) {
            self.status = ApprovalStatus::Withdrawn;
            self.decided_at = Some(now);
            self.version += 1;
            return true;
        }
        false
    }

    /// Record one approver's vote. Each approver counts once: a second vote
    /// by the same person is refused, not added.
    pub fn cast(&mut self, vote: Vote, now: UnixTime) -> Result<(), ApprovalError> {
        if self.expire_if_due(now) {
            return Err(ApprovalError::Expired);
        }
        if self.status != ApprovalStatus::Pending {
            return Err(ApprovalError::NotPending(self.status.as_str()));
        }
        if self.votes.iter().any(|v| v.approver == vote.approver) {
            return Err(ApprovalError::AlreadyVoted(vote.approver));
        }
        self.votes.push(vote);
        let (yes, no) = self.tally();
        if no >= self.deny_threshold.max(1) {
            self.status = ApprovalStatus::Denied;
            self.decided_at = Some(now);
        } else if yes >= self.required {
            self.status = ApprovalStatus::Approved;
            self.decided_at = Some(now);
        }
        self.version += 1;
        Ok(())
    }

    /// Spend the approval on the request it was granted for.
    pub fn consume(
        &mut self,
        request_hash: &str,
        task_id: &str,
        request_id: &str,
        now: UnixTime,
    ) -> Result<(), ApprovalError> {
        if self.expire_if_due(now) {
            return Err(ApprovalError::Expired);
        }
        if self.status != ApprovalStatus::Approved {
            return Err(ApprovalError::NotApproved(self.status.as_str()));
        }
        if self.request_hash != request_hash || self.task_id != task_id {
            return Err(ApprovalError::Mismatch);
        }
        self.status = ApprovalStatus::Used;
        self.used_at = Some(now);
        self.used_by = Some(request_id.to_string());
        self.version += 1;
        Ok(())
    }
}

/// JSON with object keys sorted at every level and no whitespace, so equal
/// values hash equally whatever order the client sent.
pub fn canonical_json(v: &Value) -> String {
    fn write(v: &Value, out: &mut String) {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                out.push('{');
                for (i, k) in keys.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String((*k).clone()).to_string());
                    out.push(':');
                    if let Some(x) = m.get(*k) {
                        write(x, out);
                    }
                }
                out.push('}');
            }
            Value::Array(a) => {
                out.push('[');
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(x, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut s = String::new();
    write(v, &mut s);
    s
}

/// The hash an approval is bound to.
pub fn request_hash(
    task_id: &str,
    action: &str,
    resource_type: &str,
    resource_id: &str,
    resource_attributes: &Value,
    parameters: &Value,
) -> String {
    let v = serde_json::json!({
        "v": 1,
        "task": task_id,
        "action": action,
        "resource": {"type": resource_type, "id": resource_id, "attributes": resource_attributes},
        "parameters": parameters,
    });
    crate::sha256_hex(canonical_json(&v).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn approval(required: u32, deny_threshold: u32) -> Approval {
        Approval {
            id: "apr_1".into(),
            version: 0,
            request_hash: "h".into(),
            request_id: "req_1".into(),
            task_id: "task_1".into(),
            agent: "spiffe://acme.test/agent/ir-responder/i-1".into(),
            agent_owner: "alice".into(),
            incident_id: "INC-4711".into(),
            action: "vault.rotate_secret".into(),
            resource: "Secret::prod-db".into(),
            request: json!({}),
            required,
            deny_threshold,
            policies: vec![],
            reasons: vec![],
            status: ApprovalStatus::Pending,
            votes: vec![],
            created_at: 0,
            expires_at: 900,
            escalated: false,
            decided_at: None,
            used_at: None,
            used_by: None,
        }
    }

    fn vote(who: &str, approve: bool) -> Vote {
        Vote {
            approver: who.into(),
            role: "secops".into(),
            approve,
            reason: "r".into(),
            ts: 1,
        }
    }

    #[test]
    fn quorum_of_distinct_approvers() {
        let mut a = approval(2, 1);
        a.cast(vote("bob", true), 10).unwrap();
        assert_eq!(a.status, ApprovalStatus::Pending);
        assert_eq!(
            a.cast(vote("bob", true), 11),
            Err(ApprovalError::AlreadyVoted("bob".into()))
        );
        assert_eq!(a.status, ApprovalStatus::Pending);
        a.cast(vote("carol", true), 12).unwrap();
        assert_eq!(a.status, ApprovalStatus::Approved);
        assert_eq!(
            a.cast(vote("dave", true), 13),
            Err(ApprovalError::NotPending("approved"))
        );
    }

    #[test]
    fn a_withdrawn_approval_takes_no_vote_and_is_never_spent() {
        let mut a = approval(1, 1);
        assert!(a.withdraw(5));
        assert_eq!(a.status, ApprovalStatus::Withdrawn);
        assert!(!a.withdraw(6), "withdrawing twice changes nothing");
        assert_eq!(
            a.cast(vote("bob", true), 7),
            Err(ApprovalError::NotPending("withdrawn"))
        );
        assert_eq!(
            a.consume("h", "task_1", "req_2", 8),
            Err(ApprovalError::NotApproved("withdrawn"))
        );
        // Approved but unused: withdrawn too; used: stays used.
        let mut b = approval(1, 1);
        b.cast(vote("bob", true), 1).unwrap();
        assert!(b.withdraw(2));
        let mut c = approval(1, 1);
        c.cast(vote("bob", true), 1).unwrap();
        c.consume("h", "task_1", "req_2", 2).unwrap();
        assert!(!c.withdraw(3));
        assert_eq!(c.status, ApprovalStatus::Used);
    }

    #[test]
    fn deny_threshold_ends_the_request() {
        let mut a = approval(1, 2);
        a.cast(vote("bob", false), 1).unwrap();
        assert_eq!(a.status, ApprovalStatus::Pending);
        a.cast(vote("carol", false), 2).unwrap();
        assert_eq!(a.status, ApprovalStatus::Denied);
        let mut b = approval(2, 1);
        b.cast(vote("bob", true), 1).unwrap();
        b.cast(vote("carol", false), 2).unwrap();
        assert_eq!(b.status, ApprovalStatus::Denied);
    }

    #[test]
    fn expiry_and_single_use() {
        let mut a = approval(1, 1);
        assert_eq!(a.cast(vote("bob", true), 900), Err(ApprovalError::Expired));
        assert_eq!(a.status, ApprovalStatus::Expired);
        let mut b = approval(1, 1);
        assert_eq!(
            b.consume("h", "task_1", "r", 5),
            Err(ApprovalError::NotApproved("pending"))
        );
        b.cast(vote("bob", true), 5).unwrap();
        assert_eq!(
            b.consume("other", "task_1", "r", 6),
            Err(ApprovalError::Mismatch)
        );
        assert_eq!(
            b.consume("h", "task_2", "r", 6),
            Err(ApprovalError::Mismatch)
        );
        let v = b.version;
        b.consume("h", "task_1", "req_9", 6).unwrap();
        assert_eq!(
            (b.status, b.used_by.as_deref(), b.version),
            (ApprovalStatus::Used, Some("req_9"), v + 1)
        );
        assert_eq!(
            b.consume("h", "task_1", "req_10", 7),
            Err(ApprovalError::NotApproved("used"))
        );
        // A grant not used before expires_at is dead too.
        let mut c = approval(1, 1);
        c.cast(vote("bob", true), 5).unwrap();
        assert_eq!(
            c.consume("h", "task_1", "r", 900),
            Err(ApprovalError::Expired)
        );
        assert_eq!(c.status, ApprovalStatus::Expired);
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let a = json!({"b": 1, "a": {"d": [1, {"y": 2, "x": 1}], "c": "é"}});
        assert_eq!(
            canonical_json(&a),
            r#"{"a":{"c":"é","d":[1,{"x":1,"y":2}]},"b":1}"#
        );
    }

    proptest! {
        #[test]
        fn each_approver_counts_once(voters in proptest::collection::vec(0u8..5, 1..20), required in 1u32..4) {
            let mut a = approval(required, 99);
            for v in voters {
                let _ = a.cast(vote(&format!("p{v}"), true), 1);
            }
            let distinct: std::collections::HashSet<_> = a.votes.iter().map(|v| v.approver.clone()).collect();
            prop_assert_eq!(distinct.len(), a.votes.len());
            prop_assert_eq!(a.status == ApprovalStatus::Approved, a.votes.len() as u32 >= required);
        }

        #[test]
        fn request_hash_binds_every_field(p in "[a-z]{1,8}", q in "[a-z]{1,8}") {
            let base = request_hash("t", "a", "Host", "web-1", &json!({}), &json!({"k": p, "z": q}));
            prop_assert_eq!(&base, &request_hash("t", "a", "Host", "web-1", &json!({}), &json!({"z": q, "k": p})));
            prop_assert_ne!(&base, &request_hash("t2", "a", "Host", "web-1", &json!({}), &json!({"k": p, "z": q})));
            prop_assert_ne!(&base, &request_hash("t", "a", "Host", "web-2", &json!({}), &json!({"k": p, "z": q})));
            prop_assert_ne!(&base, &request_hash("t", "a", "Host", "web-1", &json!({}), &json!({"k": format!("{p}x"), "z": q})));
            prop_assert_ne!(&base, &request_hash("t", "b", "Host", "web-1", &json!({}), &json!({"k": p, "z": q})));
        }
    }
}
