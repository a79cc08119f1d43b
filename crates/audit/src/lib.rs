//! The audit log's format and its hash chain.
//!
//! Architecture invariant: pure. This crate defines what an entry is and how
//! it is hashed and verified; it never reads or writes storage. Stores call
//! [`chain`] under their write lock so that the chain order is the commit order.
//!
//! Hashing: `hash = SHA-256("tollgate-audit-v1" 0x00 || seq (8 bytes BE) ||
//! prev_hash (32 bytes) || json(event))`. `json` is serde_json's compact
//! output: struct fields in declaration order, and the keys inside `detail`
//! in the order they were written. The workspace builds serde_json with
//! `preserve_order` (and `float_roundtrip`) on purpose, so an entry read back
//! from storage re-serialises to exactly the bytes that were hashed; an
//! outside verifier must keep key order too. The first entry's `prev_hash`
//! is 32 zero bytes.

pub mod checkpoint;
pub mod merkle;
pub mod verify;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

const DOMAIN: &[u8] = b"tollgate-audit-v1\0";

/// The all-zero hash the first entry chains from.
pub const GENESIS: [u8; 32] = [0u8; 32];

/// What happened. Correlation ids are top-level fields so stores can index
/// them; everything kind-specific lives in `detail`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
// A stored event with fields the hash does not cover is a forgery, not an extension.
#[serde(deny_unknown_fields)]
pub struct AuditEvent {
    /// Unix seconds.
    pub ts: i64,
    /// Dotted event kind: `agent.registered`, `task.opened`, `decision`, …
    pub kind: String,
    /// Who caused it: a SPIFFE ID, `admin`, `pep:<name>`, or `anonymous`.
    pub actor: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incident_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    /// For delegated tasks: the task that delegated this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_task_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The agent the event is about (may differ from `actor` for admin actions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// `allow`, `deny`, `approval_required`, `refused`, or absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub detail: serde_json::Value,
}

impl AuditEvent {
    pub fn new(ts: i64, kind: impl Into<String>, actor: impl Into<String>) -> Self {
        Self {
            ts,
            kind: kind.into(),
            actor: actor.into(),
            ..Default::default()
        }
    }
    pub fn incident(mut self, id: impl Into<String>) -> Self {
        self.incident_id = Some(id.into());
        self
    }
    pub fn task(mut self, id: impl Into<String>) -> Self {
        self.task_id = Some(id.into());
        self
    }
    pub fn parent_task(mut self, id: Option<String>) -> Self {
        self.parent_task_id = id;
        self
    }
    pub fn request(mut self, id: impl Into<String>) -> Self {
        self.request_id = Some(id.into());
        self
    }
    pub fn agent(mut self, id: impl Into<String>) -> Self {
        self.agent = Some(id.into());
        self
    }
    pub fn outcome(mut self, o: impl Into<String>) -> Self {
        self.outcome = Some(o.into());
        self
    }
    pub fn detail(mut self, d: serde_json::Value) -> Self {
        self.detail = d;
        self
    }
}

/// An event as stored: numbered and chained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: u64,
    #[serde(with = "hex32")]
    pub prev_hash: [u8; 32],
    #[serde(with = "hex32")]
    pub hash: [u8; 32],
    pub event: AuditEvent,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("entry {seq}: sequence gap, expected {expected}")]
    Gap { seq: u64, expected: u64 },
    #[error("entry {seq}: previous-hash link broken (an entry before it was removed, inserted or reordered)")]
    Link { seq: u64 },
    #[error("entry {seq}: content does not match its hash (the entry was modified)")]
    Content { seq: u64 },
}

fn canonical(event: &AuditEvent) -> Vec<u8> {
    // Serialising plain data to a Vec cannot fail; an empty body would make
    // verification fail loudly rather than pass silently.
    serde_json::to_vec(event).unwrap_or_default()
}

pub fn entry_hash(seq: u64, prev_hash: &[u8; 32], event: &AuditEvent) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(DOMAIN);
    h.update(seq.to_be_bytes());
    h.update(prev_hash);
    h.update(canonical(event));
    h.finalize().into()
}

/// Number and chain `event` after an entry with hash `prev_hash`.
pub fn chain(seq: u64, prev_hash: [u8; 32], event: AuditEvent) -> AuditEntry {
    let hash = entry_hash(seq, &prev_hash, &event);
    AuditEntry {
        seq,
        prev_hash,
        hash,
        event,
    }
}

/// Verify a contiguous run of entries that follows `(expected_seq, prev)`.
/// Returns the head `(next_seq, last_hash)` so verification can stream.
pub fn verify_run<'a>(
    mut expected_seq: u64,
    mut prev: [u8; 32],
    entries: impl IntoIterator<Item = &'a AuditEntry>,
) -> Result<(u64, [u8; 32]), VerifyError> {
    for e in entries {
        if e.seq != expected_seq {
            return Err(VerifyError::Gap {
                seq: e.seq,
                expected: expected_seq,
            });
        }
        if e.prev_hash != prev {
            return Err(VerifyError::Link { seq: e.seq });
        }
        if entry_hash(e.seq, &e.prev_hash, &e.event) != e.hash {
            return Err(VerifyError::Content { seq: e.seq });
        }
        prev = e.hash;
        expected_seq += 1;
    }
    Ok((expected_seq, prev))
}

mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(&s, &mut out).map_err(serde::de::Error::custom)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn log(n: usize) -> Vec<AuditEntry> {
        let mut prev = GENESIS;
        (0..n)
            .map(|i| {
                let e = chain(
                    i as u64 + 1,
                    prev,
                    AuditEvent::new(i as i64, "decision", "spiffe://acme.test/agent/a/i")
                        .task(format!("t{i}"))
                        .detail(serde_json::json!({"n": i})),
                );
                prev = e.hash;
                e
            })
            .collect()
    }

    #[test]
    fn an_untouched_log_verifies() {
        let l = log(20);
        let (next, last) = verify_run(1, GENESIS, &l).unwrap();
        assert_eq!(next, 21);
        assert_eq!(last, l[19].hash);
    }

    #[test]
    fn entry_format_is_stable() {
        // Golden: if this changes, every stored log stops verifying.
        let e = chain(
            1,
            GENESIS,
            AuditEvent::new(1_700_000_000, "task.opened", "x").task("t1"),
        );
        assert_eq!(
            serde_json::to_string(&e.event).unwrap(),
            r#"{"ts":1700000000,"kind":"task.opened","actor":"x","task_id":"t1"}"#
        );
        assert_eq!(
            hex::encode(e.hash),
            hex::encode(entry_hash(1, &GENESIS, &e.event))
        );
    }

    #[test]
    fn detail_key_order_is_kept_as_written() {
        let e = chain(
            1,
            GENESIS,
            AuditEvent::new(1, "decision", "a").detail(serde_json::json!({"zeta": 1, "alpha": 2})),
        );
        let stored = serde_json::to_string(&e.event).unwrap();
        assert!(stored.contains(r#"{"zeta":1,"alpha":2}"#), "{stored}");
        let back: AuditEvent = serde_json::from_str(&stored).unwrap();
        assert_eq!(entry_hash(1, &GENESIS, &back), e.hash);
    }

    #[test]
    fn floats_survive_the_store_round_trip() {
        // An entry is re-parsed from its stored JSON before it is verified;
        // a float that does not round-trip would make a clean log fail.
        for x in [
            1e-30,
            0.1,
            2.0f64.powi(-1074),
            1.7976931348623157e308,
            123456.789e-7,
        ] {
            let e = chain(
                1,
                GENESIS,
                AuditEvent::new(1, "decision", "a")
                    .detail(serde_json::json!({"parameters": {"x": x}})),
            );
            let stored = serde_json::to_string(&e.event).unwrap();
            let back: AuditEvent = serde_json::from_str(&stored).unwrap();
            assert_eq!(entry_hash(1, &GENESIS, &back), e.hash, "{x}");
        }
    }

    proptest! {
        #[test]
        fn float_parameters_round_trip(x in proptest::num::f64::NORMAL | proptest::num::f64::SUBNORMAL) {
            let e = chain(1, GENESIS, AuditEvent::new(1, "decision", "a").detail(serde_json::json!({"x": x})));
            let back: AuditEvent = serde_json::from_str(&serde_json::to_string(&e.event).unwrap()).unwrap();
            prop_assert_eq!(entry_hash(1, &GENESIS, &back), e.hash);
        }

        #[test]
        fn any_edit_is_detected(n in 2usize..30, victim in 0usize..30, mode in 0u8..4) {
            let mut l = log(n);
            // Truncation is only visible against a published head (checkpoint).
            let head = (n as u64 + 1, l[n - 1].hash);
            let v = victim % n;
            match mode {
                0 => l[v].event.actor.push('!'),
                1 => { l.remove(v); }
                2 => { let w = (v + 1) % n; l.swap(v, w); }
                _ => { let dup = l[v].clone(); l.insert(v, dup); }
            }
            prop_assert_ne!(verify_run(1, GENESIS, &l), Ok(head));
        }
    }
}
