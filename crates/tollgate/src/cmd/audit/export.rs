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

pub fn export(c: &Client, format: &str, incident: Option<&str>) -> Result<()> {
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
            for e in &entries {
                writeln!(out, "{}", ocsf(e, &cp))?;
            }
        }
        other => bail!("unknown format {other:?}; use jsonl or ocsf"),
    }
    out.flush()?;
    Ok(())
}

/// One entry as an OCSF 1.3 API Activity event (class 6003).
pub fn ocsf(e: &AuditEntry, checkpoint: &Checkpoint) -> Value {
    let ev = &e.event;
    let d = &ev.detail;
    let action = d["action"].as_str().unwrap_or(&ev.kind);
    let (activity_id, activity) = match (ev.kind.as_str(), action.rsplit('.').next().unwrap_or(""))
    {
        ("task.opened", _)
        | ("agent.registered", _)
        | ("approval.created", _)
        | ("evidence.recorded", _) => (1, "Create"),
        (_, a) if a.starts_with("read") || a.starts_with("query") => (2, "Read"),
        (_, a) if a.starts_with("delete") => (4, "Delete"),
        ("decision", _) | ("authzen.decision", _) | ("action.result", _) => (3, "Update"),
        _ => (99, "Other"),
    };
    let outcome = ev.outcome.as_deref().unwrap_or("");
    let (status_id, status) = match outcome {
        "allow" | "succeeded" | "approved" | "used" | "completed" => (1, "Success"),
        "" | "pending" | "approval_required" => (0, "Unknown"),
        _ => (2, "Failure"),
    };
    let message = [
        ev.kind.as_str(),
        d["action"].as_str().unwrap_or(""),
        d["resource"].as_str().unwrap_or(""),
    ]
    .iter()
    .filter(|s| !s.is_empty())
    .copied()
    .collect::<Vec<_>>()
    .join(" ");
    json!({
        "class_uid": 6003,
        "class_name": "API Activity",
        "category_uid": 6,
        "category_name": "Application Activity",
        "activity_id": activity_id,
        "activity_name": activity,
        "type_uid": 6003 * 100 + activity_id,
        "time": ev.ts * 1000,
        "severity_id": if outcome == "deny" || outcome == "refused" { 3 } else { 1 },
        "status_id": status_id,
        "status": status,
        "status_detail": outcome,
        "message": message,
        "actor": {"user": {"uid": ev.actor, "type": if ev.actor.starts_with("spiffe://") { "Service" } else { "User" }}},
        "api": {"operation": action, "request": {"uid": ev.request_id}},
        "resources": d["resource"].as_str().map(|r| json!([{"uid": r, "type": r.split("::").next().unwrap_or("")}])).unwrap_or(json!([])),
        "metadata": {
            "version": "1.3.0",
            "product": {"name": "Tollgate", "vendor_name": "Tollgate"},
            "uid": e.seq.to_string(),
            "correlation_uid": ev.task_id,
            "log_name": "tollgate-audit",
        },
        "unmapped": {
            "kind": ev.kind, "incident_id": ev.incident_id, "task_id": ev.task_id, "agent": ev.agent,
            "entry_hash": hex::encode(e.hash), "reasons": d["reasons"], "policies": d["policies"],
            "checkpoint": {"tree_size": checkpoint.tree_size, "root_hash": checkpoint.root_hash},
        },
    })
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
