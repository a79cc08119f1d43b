//! `tollgate audit verify|export|timeline|checkpoint|hash`.
//!
//! Verification reads entries from one of three sources — the server's API,
//! a stopped server's data directory, or an exported file — and runs the
//! same streaming verifier (`tollgate_audit::verify::LogVerifier`) over them.

use crate::client::{self, Client};
use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use std::io::{BufRead, Write};
use std::path::Path;
use tollgate_audit::checkpoint::Checkpoint;
use tollgate_audit::verify::{LogVerifier, Report};
use tollgate_audit::AuditEntry;
use tollgate_store::{AuditQuery, SqliteStore, Store};

pub const EXPORT_FORMAT: &str = "tollgate-audit-export/1";

fn parse_key(hex_key: &str) -> Result<ed25519_dalek::VerifyingKey> {
    let bytes = hex::decode(hex_key.trim()).context("public key is not hex")?;
    let arr: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| anyhow!("public key must be 32 bytes"))?;
    ed25519_dalek::VerifyingKey::from_bytes(&arr).map_err(|e| anyhow!("public key: {e}"))
}

fn extra_checkpoint(path: Option<&Path>) -> Result<Vec<Checkpoint>> {
    let Some(p) = path else { return Ok(vec![]) };
    let v: Value = serde_json::from_str(
        &std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
    )?;
    // Accept the answer of GET /v1/audit/checkpoint as saved, or a bare checkpoint.
    let cp = v.get("checkpoint").cloned().unwrap_or(v);
    Ok(vec![serde_json::from_value(cp).context("not a checkpoint")?])
}

fn report(r: &Report, key_source: &str) {
    if r.checkpoints_verified == 0 && r.entries > 0 {
        eprintln!(
            "warning: no signed checkpoint covers this log, so entries removed from its end, or a consistent \
             rewrite, cannot be detected; verify against a checkpoint you saved (--checkpoint)"
        );
    }
    println!(
        "ok: {} entries, hash chain intact, {} signed checkpoint(s) verified (key: {key_source}), root {}",
        r.entries,
        r.checkpoints_verified,
        hex::encode(r.root_hash)
    );
}

/// Verify a stopped server's data directory, reading its SQLite file directly.
pub async fn verify_data(dir: &Path, pinned: Option<&str>, extra: Option<&Path>) -> Result<()> {
    let db = dir.join("tollgate.db");
    if !db.exists() {
        bail!("{} does not exist", db.display());
    }
    let (key, source) = match pinned {
        Some(k) => (parse_key(k)?, "pinned"),
        None => {
            use ed25519_dalek::pkcs8::DecodePrivateKey;
            let der = std::fs::read(dir.join("audit-key.der")).context("reading audit-key.der")?;
            let sk = ed25519_dalek::SigningKey::from_pkcs8_der(&der)
                .map_err(|e| anyhow!("audit-key.der: {e}"))?;
            (sk.verifying_key(), "data dir")
        }
    };
    let store = SqliteStore::open(&db)?;
    let mut cps = store.checkpoints().await?;
    cps.extend(extra_checkpoint(extra)?);
    let mut v = LogVerifier::new(cps, &key).map_err(|e| anyhow!("FAILED: {e}"))?;
    let mut after = 0;
    loop {
        let page = store
            .audit(AuditQuery {
                after,
                limit: 20_000,
                ..Default::default()
            })
            .await?;
        if page.is_empty() {
            break;
        }
        for e in &page {
            v.push(e).map_err(|e| anyhow!("FAILED: {e}"))?;
        }
        after = page.last().map(|e| e.seq).unwrap_or(after);
    }
    report(&v.finish().map_err(|e| anyhow!("FAILED: {e}"))?, source);
    Ok(())
}

/// Verify through a running server's API.
pub fn verify_api(c: &Client, pinned: Option<&str>, extra: Option<&Path>) -> Result<()> {
    // Ask for a fresh checkpoint so the whole log is covered.
    c.get("/v1/audit/checkpoint")?;
    let r = c.get("/v1/audit/checkpoints")?;
    let (key, source) = match pinned {
        Some(k) => (parse_key(k)?, "pinned"),
        None => (
            parse_key(r["public_key"].as_str().unwrap_or_default())?,
            "as published by the server; pin it with --public-key",
        ),
    };
    let mut cps: Vec<Checkpoint> = serde_json::from_value(r["checkpoints"].clone())?;
    cps.extend(extra_checkpoint(extra)?);
    let mut v = LogVerifier::new(cps, &key).map_err(|e| anyhow!("FAILED: {e}"))?;
    let mut after = 0u64;
    loop {
        let page = c.get(&format!("/v1/audit?after={after}&limit=1000"))?;
        let entries: Vec<AuditEntry> = serde_json::from_value(page["entries"].clone())?;
        for e in &entries {
            v.push(e).map_err(|e| anyhow!("FAILED: {e}"))?;
        }
        match page["next_after"].as_u64() {
            Some(n) => after = n,
            None => break,
        }
    }
    report(&v.finish().map_err(|e| anyhow!("FAILED: {e}"))?, source);
    Ok(())
}

/// Verify an export file.
pub fn verify_file(path: &Path, pinned: Option<&str>, extra: Option<&Path>) -> Result<()> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut lines = std::io::BufReader::new(f).lines();
    let header: Value =
        serde_json::from_str(&lines.next().ok_or_else(|| anyhow!("empty export"))??)?;
    if header["format"] != EXPORT_FORMAT {
        bail!(
            "{} is not a {EXPORT_FORMAT} file (use --format jsonl to export for verification)",
            path.display()
        );
    }
    let (key, source) = match pinned {
        Some(k) => (parse_key(k)?, "pinned"),
        None => (
            parse_key(header["public_key"].as_str().unwrap_or_default())?,
            "from the export itself; pin it with --public-key",
        ),
    };
    let mut cps: Vec<Checkpoint> = serde_json::from_value(header["checkpoints"].clone())?;
    cps.extend(extra_checkpoint(extra)?);
    let mut v = LogVerifier::new(cps, &key).map_err(|e| anyhow!("FAILED: {e}"))?;
    for line in lines {
        let e: AuditEntry = serde_json::from_str(&line?).context("malformed entry line")?;
        v.push(&e).map_err(|e| anyhow!("FAILED: {e}"))?;
    }
    report(&v.finish().map_err(|e| anyhow!("FAILED: {e}"))?, source);
    Ok(())
}

/// All entries up to the newest checkpoint, optionally filtered by incident.
fn fetch(c: &Client, incident: Option<&str>) -> Result<(Value, Vec<AuditEntry>)> {
    let cp = c.get("/v1/audit/checkpoint")?;
    let size = cp["checkpoint"]["tree_size"].as_u64().unwrap_or(0);
    let filter = incident
        .map(|i| format!("&incident={}", client::encode(i)))
        .unwrap_or_default();
    let mut out = Vec::new();
    let mut after = 0u64;
    loop {
        let page = c.get(&format!("/v1/audit?after={after}&limit=1000{filter}"))?;
        let entries: Vec<AuditEntry> = serde_json::from_value(page["entries"].clone())?;
        out.extend(entries.into_iter().filter(|e| e.seq <= size));
        match page["next_after"].as_u64() {
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
            let size = cp["checkpoint"]["tree_size"].as_u64().unwrap_or(0);
            let mut cps = c.get("/v1/audit/checkpoints")?;
            // Only checkpoints the exported entries reach; a newer one would
            // make a clean export look truncated.
            if let Some(list) = cps["checkpoints"].as_array_mut() {
                list.retain(|c| c["tree_size"].as_u64().unwrap_or(u64::MAX) <= size);
            }
            writeln!(
                out,
                "{}",
                json!({"format": EXPORT_FORMAT, "public_key": cps["public_key"], "checkpoints": cps["checkpoints"]})
            )?;
            for e in &entries {
                writeln!(out, "{}", serde_json::to_string(e)?)?;
            }
        }
        "ocsf" => {
            let (cp, entries) = fetch(c, incident)?;
            for e in &entries {
                writeln!(out, "{}", ocsf(e, &cp["checkpoint"]))?;
            }
        }
        other => bail!("unknown format {other:?}; use jsonl or ocsf"),
    }
    out.flush()?;
    Ok(())
}

/// One entry as an OCSF 1.3 API Activity event (class 6003).
pub fn ocsf(e: &AuditEntry, checkpoint: &Value) -> Value {
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
            "checkpoint": {"tree_size": checkpoint["tree_size"], "root_hash": checkpoint["root_hash"]},
        },
    })
}

/// The readable story of an incident.
pub fn timeline(c: &Client, incident: &str) -> Result<()> {
    let (cp, entries) = fetch(c, Some(incident))?;
    let mut out = crate::term::SafeWriter(std::io::BufWriter::new(std::io::stdout().lock()));
    writeln!(
        out,
        "Incident {incident}: {} audit entries (covered by checkpoint of size {})",
        entries.len(),
        cp["checkpoint"]["tree_size"]
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
