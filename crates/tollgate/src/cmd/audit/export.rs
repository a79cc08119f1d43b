//! `tollgate audit export|timeline`: the entries up to the newest signed
//! checkpoint, as a verifiable JSON-lines export, OCSF events, or the story
//! of an incident.

use crate::api_types::Checkpoint;
use crate::client::{AuditFilter, Client};
use anyhow::{bail, Result};
use serde_json::{json, Value};
use std::io::Write;
use tollgate_audit::AuditEntry;

/// The first line of a jsonl export names this format.
pub const EXPORT_FORMAT: &str = "tollgate-audit-export/1";

/// The newest checkpoint and all entries it covers, optionally filtered by incident.
fn fetch(c: &Client, incident: Option<&str>) -> Result<(Checkpoint, Vec<AuditEntry>)> {
    let cp = c.checkpoint()?.value.checkpoint;
    let size = cp.tree_size;
    let filter = AuditFilter {
        incident: incident.map(str::to_string),
        ..AuditFilter::default()
    };
    let mut out = Vec::new();
    let mut after = 0u64;
    loop {
        let page = c.audit::<AuditEntry>(&filter, after)?;
        out.extend(page.entries.into_iter().filter(|e| e.seq <= size));
        match page.next_after {
            Some(n) if n < size => after = n,
            _ => break,
        }
    }
    Ok((cp, out))
}

/// `ai`: OCSF 1.9.0 with its AI and record-integrity vocabulary, not 1.3.0.
pub fn export(c: &Client, format: &str, incident: Option<&str>, ai: bool) -> Result<()> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    match format {
        "jsonl" => {
            if incident.is_some() {
                bail!("a jsonl export is the whole log (so it can be verified); filter with --format ocsf or timeline");
            }
            let (cp, entries) = fetch(c, None)?;
            let size = cp.tree_size;
            let mut published = c.checkpoints()?;
            // Only checkpoints the exported entries reach; a newer one would
            // make a clean export look truncated.
            published.checkpoints.retain(|c| c.tree_size <= size);
            writeln!(
                out,
                "{}",
                json!({"format": EXPORT_FORMAT, "public_key": published.public_key, "checkpoints": published.checkpoints})
            )?;
            for e in &entries {
                writeln!(out, "{}", serde_json::to_string(e)?)?;
            }
        }
        "ocsf" => {
            let (cp, entries) = fetch(c, incident)?;
            let mut chain = super::ocsf_ai::Chain::new(&cp, incident);
            for e in &entries {
                let event = ocsf(e, &cp);
                let event = if ai {
                    super::ocsf_ai::upgrade(event, e, &cp, &mut chain)?
                } else {
                    event
                };
                writeln!(out, "{event}")?;
            }
        }
        other => bail!("unknown format {other:?}; use jsonl or ocsf"),
    }
    out.flush()?;
    Ok(())
}

/// The OCSF activity of an entry: what kind of API operation it records.
/// A refusal is the activity that was attempted (a refused task open is a
/// failed Create); decisions take the verb of the action they decide.
fn ocsf_activity(kind: &str, action: &str) -> (i64, &'static str) {
    const CREATE: (i64, &str) = (1, "Create");
    const READ: (i64, &str) = (2, "Read");
    const UPDATE: (i64, &str) = (3, "Update");
    const DELETE: (i64, &str) = (4, "Delete");
    match kind {
        "decision" | "authzen.decision" | "mcp.call_refused" => {
            let verb = action.rsplit('.').next().unwrap_or("");
            if verb.starts_with("read") || verb.starts_with("query") || verb.starts_with("list") {
                READ
            } else if verb.starts_with("delete") {
                DELETE
            } else {
                UPDATE
            }
        }
        "task.opened"
        | "task.refused"
        | "task.delegated"
        | "task.delegation_refused"
        | "agent.registered"
        | "agent.attested"
        | "agent.attest_refused"
        | "svid.issued"
        | "approver.registered"
        | "pep.registered"
        | "approval.created"
        | "approval.vote"
        | "approval.vote_refused"
        | "evidence.recorded"
        | "incident.recorded"
        | "console.signed_in"
        | "policy.shadow_loaded" => CREATE,
        "approver.removed" | "pep.removed" | "console.signed_out" | "policy.shadow_cleared" => {
            DELETE
        }
        "authzen.search" => READ,
        // A shadow disagreement records what a pack would have done.
        "auth.refused" | "webhook.failed" | "decision.shadow_diff" => (99, "Other"),
        _ => UPDATE,
    }
}

/// The OCSF status of an entry: whether the operation it records happened.
/// A vote either way, a revocation, an expiry are operations that
/// succeeded; refusals and denials failed; a decision waiting for a human is
/// neither yet.
fn ocsf_status(kind: &str, outcome: &str) -> (i64, &'static str) {
    const SUCCESS: (i64, &str) = (1, "Success");
    const FAILURE: (i64, &str) = (2, "Failure");
    if kind.ends_with("refused") || kind == "policy.rejected" || kind == "webhook.failed" {
        return FAILURE;
    }
    match (kind, outcome) {
        ("decision" | "authzen.decision", "allow") => SUCCESS,
        ("decision" | "authzen.decision", "approval_required") => (99, "Other"),
        ("decision" | "authzen.decision", _) => FAILURE,
        ("action.result", "succeeded") => SUCCESS,
        ("action.result", _) => FAILURE,
        _ => SUCCESS,
    }
}

/// How an actor name reads as an OCSF user: `type_id` and its caption.
fn ocsf_user_type(actor: &str) -> (i64, &'static str) {
    if actor.starts_with("spiffe://") {
        (99, "Agent")
    } else if actor == "admin" {
        (2, "Admin")
    } else if actor == "tollgate" || actor.starts_with("pep:") {
        (3, "System")
    } else {
        (1, "User")
    }
}

/// An array of strings from `v`, whatever it holds (so `unmapped` keeps one type).
fn strings(v: &Value) -> Value {
    match v {
        Value::Array(a) => Value::Array(a.iter().filter(|x| x.is_string()).cloned().collect()),
        Value::String(s) => json!([s]),
        _ => json!([]),
    }
}

/// One entry as an OCSF 1.3 API Activity event (class 6003), valid against
/// the 1.3.0 schema (tested in `tests/e2e/ocsf.rs` against a compiled copy).
pub fn ocsf(e: &AuditEntry, checkpoint: &Checkpoint) -> Value {
    let ev = &e.event;
    let d = &ev.detail;
    let action = d["action"].as_str().unwrap_or(&ev.kind);
    let (activity_id, activity) = ocsf_activity(&ev.kind, action);
    let outcome = ev.outcome.as_deref().unwrap_or("");
    let (status_id, status) = ocsf_status(&ev.kind, outcome);
    let (severity_id, severity) = match (status_id, ev.kind.as_str()) {
        (_, "agent.quarantined") => (4, "High"),
        (2, _) => (3, "Medium"),
        _ => (1, "Informational"),
    };
    let (user_type_id, user_type) = ocsf_user_type(&ev.actor);
    let resource = d["resource"].as_str();
    let message = [
        ev.kind.as_str(),
        d["action"].as_str().unwrap_or(""),
        resource.unwrap_or(""),
    ]
    .iter()
    .filter(|s| !s.is_empty())
    .copied()
    .collect::<Vec<_>>()
    .join(" ");
    let mut api = json!({"operation": action});
    if let Some(id) = &ev.request_id {
        api["request"] = json!({"uid": id});
    }
    let mut metadata = json!({
        "version": "1.3.0",
        "product": {"name": "Tollgate", "vendor_name": "Tollgate", "version": env!("CARGO_PKG_VERSION")},
        "uid": e.seq.to_string(),
        "log_name": "tollgate-audit",
        "log_provider": "tollgate",
        "original_time": tollgate_core::clock::rfc3339(ev.ts),
    });
    if let Some(task) = &ev.task_id {
        metadata["correlation_uid"] = json!(task);
    }
    let mut observables = vec![json!({"name": "actor.user", "type_id": 21, "value": ev.actor})];
    let mut event = json!({
        "class_uid": 6003,
        "class_name": "API Activity",
        "category_uid": 6,
        "category_name": "Application Activity",
        "activity_id": activity_id,
        "activity_name": activity,
        "type_uid": 6003 * 100 + activity_id,
        "type_name": format!("API Activity: {activity}"),
        "time": ev.ts * 1000,
        "timezone_offset": 0,
        "severity_id": severity_id,
        "severity": severity,
        "status_id": status_id,
        "status": if status_id == 99 { outcome } else { status },
        "message": message,
        // The caller: an agent (its SPIFFE ID), an enforcement point, an
        // approver, the admin, or Tollgate itself.
        "actor": {"user": {"uid": ev.actor, "type_id": user_type_id, "type": user_type}},
        "src_endpoint": {"uid": ev.actor},
        "dst_endpoint": {"svc_name": "tollgate"},
        "api": api,
        "metadata": metadata,
        "unmapped": {
            "kind": ev.kind, "incident_id": ev.incident_id, "task_id": ev.task_id, "agent": ev.agent,
            "entry_hash": hex::encode(e.hash), "reasons": strings(&d["reasons"]), "policies": strings(&d["policies"]),
            "checkpoint": {"tree_size": checkpoint.tree_size, "root_hash": checkpoint.root_hash},
        },
    });
    if !outcome.is_empty() {
        event["status_detail"] = json!(outcome);
    }
    if let Some(r) = resource {
        event["resources"] = json!([{"uid": r, "type": r.split("::").next().unwrap_or("")}]);
        observables.push(json!({"name": "resources.uid", "type_id": 10, "value": r}));
    }
    event["observables"] = Value::Array(observables);
    event
}

/// The readable story of an incident.
pub fn timeline(c: &Client, incident: &str, json: bool) -> Result<()> {
    let (cp, entries) = fetch(c, Some(incident))?;
    if json {
        // The entries whole, each with the line the text output shows for it.
        let entries: Vec<Value> = entries
            .iter()
            .map(|e| {
                Ok(serde_json::json!({"line": story_line(e), "entry": serde_json::to_value(e)?}))
            })
            .collect::<Result<_>>()?;
        return crate::print_json(&serde_json::json!({
            "incident": incident,
            "checkpoint": cp,
            "entries": entries,
        }));
    }
    let mut out = crate::term::SafeWriter(std::io::BufWriter::new(std::io::stdout().lock()));
    writeln!(
        out,
        "Incident {incident}: {} audit entries (covered by checkpoint of size {})",
        entries.len(),
        cp.tree_size
    )?;
    for e in &entries {
        writeln!(out, "{}", story_line(e))?;
    }
    out.flush()?;
    Ok(())
}

fn short(agent: &str) -> &str {
    agent.split_once("/agent/").map(|(_, r)| r).unwrap_or(agent)
}

pub fn story_line(e: &AuditEntry) -> String {
    let ev = &e.event;
    let d = &ev.detail;
    let time = tollgate_core::clock::rfc3339(ev.ts);
    // Every field is agent-controlled or quotes what an agent sent: escape
    // each one whole, newlines too, so no field can forge a line.
    use crate::term::printable;
    let who = printable(short(&ev.actor));
    let s = |k: &str| printable(d[k].as_str().unwrap_or("")).into_owned();
    let list = |k: &str| {
        d[k].as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(|x| printable(x).into_owned())
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .unwrap_or_default()
    };
    let what = match ev.kind.as_str() {
        "incident.recorded" => format!(
            "{who} reported the incident as {} / {}",
            s("class"),
            d["severity"].as_str().unwrap_or("")
        ),
        "task.opened" => format!(
            "{who} opened task {} (playbook {}): \"{}\"",
            ev.task_id.as_deref().unwrap_or(""),
            s("playbook"),
            s("intent")
        ),
        "task.refused" => format!("{who} was refused a task: {}", list("reasons")),
        "decision" | "authzen.decision" => format!(
            "{who} asked to {} {} (\"{}\") -> {}{} [policies: {}]",
            s("action"),
            s("resource"),
            s("intent"),
            ev.outcome.as_deref().unwrap_or(""),
            if list("reasons").is_empty() {
                String::new()
            } else {
                format!(": {}", list("reasons"))
            },
            list("policies"),
        ),
        "evidence.recorded" => format!(
            "{who} recorded {} evidence for {} (sha256 {})",
            s("kind"),
            s("resource"),
            &s("sha256")[..12.min(s("sha256").len())]
        ),
        "approval.created" => format!(
            "approval {} opened for {} on {} ({} needed)",
            s("approval_id"),
            s("action"),
            s("resource"),
            d["required"]
        ),
        "approval.vote" => format!(
            "{who} voted {} on {}: \"{}\"",
            ev.outcome.as_deref().unwrap_or(""),
            s("approval_id"),
            s("reason")
        ),
        "approval.decided" => format!(
            "approval {} {}",
            s("approval_id"),
            ev.outcome.as_deref().unwrap_or("")
        ),
        "approval.used" => format!(
            "{who} used approval {} (approved by {})",
            s("approval_id"),
            list("approvers")
        ),
        "approval.refused" => format!(
            "{who} presented approval {} and was refused: {}",
            s("approval_id"),
            s("reason")
        ),
        "action.result" => format!(
            "{who} executed `{}` for {} on {} -> {}",
            s("command"),
            s("action"),
            s("resource"),
            ev.outcome.as_deref().unwrap_or("")
        ),
        "task.closed" => format!(
            "{who} closed task {} ({})",
            ev.task_id.as_deref().unwrap_or(""),
            ev.outcome.as_deref().unwrap_or("")
        ),
        "task.revoked" => format!(
            "task {} revoked by {who}: {}",
            ev.task_id.as_deref().unwrap_or(""),
            s("reason")
        ),
        other => format!(
            "{other} by {who}{}",
            ev.outcome
                .as_deref()
                .map(|o| format!(" -> {o}"))
                .unwrap_or_default()
        ),
    };
    format!("#{:<6} {time}  {what}", e.seq)
}
