//! `audit export --format ocsf --ocsf-version 1.9`: the API Activity event
//! of 1.3.0 with the vocabulary OCSF 1.9.0 added for AI agents and record
//! integrity (see docs/audit.md for the mapping and why):
//!
//! - `ai_operation`: `ai_agent` (the agent's SPIFFE ID as its stable `uid`,
//!   its role as `name`, the task as `instance_uid`) and `delegation` (the
//!   task and the task it was delegated from);
//! - `security_control`: `action_id`/`disposition_id` for decisions, votes
//!   and revocations, the pack as `policy`, the policies that decided as
//!   `authorizations`;
//! - `record_integrity`: an `attestation_list` of two. The first links the
//!   export into a hash chain as OCSF defines it: SHA-256 over the JCS
//!   (RFC 8785) serialization of the exported event without its
//!   `fingerprint`s and `signatures`, and the previous event's fingerprint
//!   in `prev_event`. The second carries the signed checkpoint that covers
//!   the entry: an Ed25519 signature (OCSF 1.9 has no value for the
//!   algorithm: 99, `Ed25519`) whose `digest` is the Merkle root; OCSF 1.9
//!   has no attribute for signature bytes, so they stay in
//!   `unmapped.checkpoint`. Tollgate's own entry hash is `raw_data_hash`.
//!
//! The AI Agent Activity class (6009) is a draft (ocsf-schema PR #1754),
//! not part of 1.9.0; events stay API Activity until it is released.

use crate::api_types::Checkpoint;
use anyhow::{Context, Result};
use serde_json::{json, Value};
use tollgate_audit::AuditEntry;

/// The hash chain an export builds, event by event.
pub struct Chain {
    /// Names the chain: the log, and the incident for a filtered export
    /// (whose events link to each other, not to the entries left out).
    pub uid: String,
    /// Who vouches for the events: the log's checkpoint origin.
    pub authority: String,
    /// The previous exported event: its `metadata.uid`, `type_uid` and
    /// fingerprint.
    prev: Option<(String, i64, String)>,
}

impl Chain {
    pub fn new(checkpoint: &Checkpoint, incident: Option<&str>) -> Self {
        let uid = match incident {
            Some(i) => format!("{}:audit:incident:{i}", checkpoint.origin),
            None => format!("{}:audit", checkpoint.origin),
        };
        Self {
            uid,
            authority: checkpoint.origin.clone(),
            prev: None,
        }
    }
}

fn sha256_hex(value: &str) -> Value {
    json!({
        "algorithm_id": 3, "algorithm": "SHA-256",
        "encoding_id": 1, "encoding": "Hex",
        "value": value,
    })
}

/// `event` (a 1.3.0 export of `e`) in OCSF 1.9.0, linked into `chain`.
pub fn upgrade(
    mut event: Value,
    e: &AuditEntry,
    checkpoint: &Checkpoint,
    chain: &mut Chain,
) -> Result<Value> {
    let ev = &e.event;
    let d = &ev.detail;
    event["metadata"]["version"] = json!("1.9.0");
    event["metadata"]["profiles"] = json!(["ai_operation", "security_control", "record_integrity"]);
    if ev.actor.starts_with("spiffe://") {
        // 1.9.0 has a caption for a workload.
        event["actor"]["user"]["type_id"] = json!(4);
        event["actor"]["user"]["type"] = json!("Service");
    }
    // The agent the entry is about, when an agent (or an enforcement point
    // for it) acted: never on a human's action.
    let human = !(ev.actor.starts_with("spiffe://") || ev.actor.starts_with("pep:"));
    if let Some(agent) = ev.agent.as_deref().filter(|_| !human) {
        let mut ai_agent = json!({"uid": agent, "type_id": 0, "type": "Unknown"});
        if let Some(role) = agent
            .split_once("/agent/")
            .and_then(|(_, r)| r.split('/').next())
        {
            ai_agent["name"] = json!(role);
        }
        if let Some(task) = &ev.task_id {
            ai_agent["instance_uid"] = json!(task);
        }
        event["ai_agent"] = ai_agent;
    }
    if let (Some(task), Some(parent)) = (&ev.task_id, &ev.parent_task_id) {
        let mut delegation =
            json!({"uid": task, "parent_uid": parent, "issuer_uid": chain.authority});
        if ev.kind == "task.delegated" {
            delegation["created_time"] = json!(ev.ts * 1000);
        }
        event["delegation"] = delegation;
    }
    security_control(&mut event, &ev.kind, ev.outcome.as_deref().unwrap_or(""), d);
    event["raw_data_hash"] = sha256_hex(&hex::encode(e.hash));
    event["raw_data_hash"]["serialization_id"] = json!(99);
    event["raw_data_hash"]["serialization"] = json!("tollgate audit entry (docs/audit.md)");
    event["unmapped"]["checkpoint"]["signature"] = json!(checkpoint.signature);
    event["unmapped"]["checkpoint"]["key_id"] = json!(checkpoint.key_id);
    event["unmapped"]["checkpoint"]["origin"] = json!(checkpoint.origin);

    let uid = e.seq.to_string();
    let mut link = json!({"uid": uid, "chain_uid": chain.uid, "authority_uid": chain.authority});
    if let Some((prev_uid, prev_type, prev_fp)) = &chain.prev {
        link["prev_event"] =
            json!({"uid": prev_uid, "type_uid": prev_type, "fingerprint": sha256_hex(prev_fp)});
    }
    let signed = json!({
        "uid": format!("checkpoint-{}", checkpoint.tree_size),
        "chain_uid": chain.uid,
        "authority_uid": checkpoint.key_id,
        "signatures": [{
            "algorithm_id": 99, "algorithm": "Ed25519",
            "serialization_id": 99, "serialization": "tollgate checkpoint (docs/audit.md)",
            "created_time": checkpoint.timestamp * 1000,
            "digest": sha256_hex(&checkpoint.root_hash),
        }],
    });
    // The fingerprint covers the event as exported, less every
    // attestation's fingerprint and signatures (OCSF's definition).
    event["attestation_list"] = json!([link, {"uid": signed["uid"], "chain_uid": chain.uid, "authority_uid": checkpoint.key_id}]);
    let fingerprint = fingerprint(&event)?;
    event["attestation_list"][0]["fingerprint"] = sha256_hex(&fingerprint);
    event["attestation_list"][0]["fingerprint"]["serialization_id"] = json!(2);
    event["attestation_list"][0]["fingerprint"]["serialization"] = json!("JCS");
    event["attestation_list"][1] = signed;
    let type_uid = event["type_uid"].as_i64().unwrap_or(0);
    chain.prev = Some((uid, type_uid, fingerprint));
    Ok(event)
}

/// SHA-256 (hex) of the JCS form of `event` without the attestations'
/// `fingerprint` and `signatures`.
pub fn fingerprint(event: &Value) -> Result<String> {
    let mut bare = event.clone();
    if let Some(list) = bare["attestation_list"].as_array_mut() {
        for a in list.iter_mut().filter_map(Value::as_object_mut) {
            a.remove("fingerprint");
            a.remove("signatures");
        }
    }
    let canonical = serde_json_canonicalizer::to_vec(&bare).context("JCS serialization")?;
    Ok(tollgate_core::sha256_hex(&canonical))
}

/// What the gateway did about the request, as OCSF's security control.
fn security_control(event: &mut Value, kind: &str, outcome: &str, d: &Value) {
    let (action, disposition) = match (kind, outcome) {
        ("decision" | "authzen.decision", "allow") => ((1, "Allowed"), (1, "Allowed")),
        ("decision" | "authzen.decision", "approval_required") => {
            ((99, "Approval Required"), (14, "Delayed"))
        }
        ("decision" | "authzen.decision", _) => ((2, "Denied"), (2, "Blocked")),
        ("approval.vote", "approve") => ((1, "Allowed"), (8, "Approved")),
        ("approval.vote", _) => ((2, "Denied"), (25, "Rejected")),
        ("task.revoked" | "agent.revoked" | "agent.quarantined", _) => {
            ((99, "Revoked"), (24, "Access Revoked"))
        }
        _ => return,
    };
    event["action_id"] = json!(action.0);
    event["action"] = json!(action.1);
    event["disposition_id"] = json!(disposition.0);
    event["disposition"] = json!(disposition.1);
    if let Some(digest) = d["policy_digest"].as_str() {
        event["policy"] =
            json!({"uid": digest, "name": "tollgate policy pack", "is_applied": true});
    }
    let policies: Vec<Value> = d["policies"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|p| json!({"decision": outcome, "policy": {"uid": p, "name": p}}))
        .collect();
    if !policies.is_empty() {
        event["authorizations"] = Value::Array(policies);
    }
}
