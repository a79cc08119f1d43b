//! `tollgate audit verify`: reads entries from one of three sources — the server's API,
//! a stopped server's data directory, or an exported file — and runs the
//! same streaming verifier (`tollgate_audit::verify::LogVerifier`) over them.

use super::export::EXPORT_FORMAT;
use crate::client::{AuditFilter, Client};
use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::io::BufRead;
use std::path::Path;
use tollgate_audit::checkpoint::Checkpoint;
use tollgate_audit::verify::{LogVerifier, Report};
use tollgate_audit::AuditEntry;
use tollgate_store::{AuditQuery, SqliteStore, Store};

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

/// What a successful verification found, and where its key came from.
pub struct Verified {
    report: Report,
    key_source: &'static str,
}

/// Print the outcome of a verification, as text or (`json`) one JSON object;
/// a failure stays an error (non-zero exit) either way.
pub fn report(result: Result<Verified>, json: bool) -> Result<()> {
    let Verified {
        report: r,
        key_source,
    } = match result {
        Ok(v) => v,
        Err(e) if json => {
            crate::print_json(&serde_json::json!({"ok": false, "error": format!("{e:#}")}))?;
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    let uncovered = r.checkpoints_verified == 0 && r.entries > 0;
    if uncovered {
        eprintln!(
            "warning: no signed checkpoint covers this log, so entries removed from its end, or a consistent \
             rewrite, cannot be detected; verify against a checkpoint you saved (--checkpoint)"
        );
    }
    if json {
        return crate::print_json(&serde_json::json!({
            "ok": true,
            "entries": r.entries,
            "checkpoints_verified": r.checkpoints_verified,
            "root_hash": hex::encode(r.root_hash),
            "key_source": key_source,
            "covered_by_checkpoint": !uncovered,
        }));
    }
    println!(
        "ok: {} entries, hash chain intact, {} signed checkpoint(s) verified (key: {key_source}), root {}",
        r.entries,
        r.checkpoints_verified,
        hex::encode(r.root_hash)
    );
    Ok(())
}

fn finish(v: LogVerifier, key_source: &'static str) -> Result<Verified> {
    let report = v.finish().map_err(|e| anyhow!("FAILED: {e}"))?;
    Ok(Verified { report, key_source })
}

/// Verify a stopped server's data directory, reading its SQLite file
/// directly; `sink` sees each entry once it is verified against the chain
/// (the whole result stands only if this returns `Ok`).
pub async fn verify_data(
    dir: &Path,
    pinned: Option<&str>,
    extra: Option<&Path>,
    sink: &mut dyn FnMut(&AuditEntry),
) -> Result<Verified> {
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
    let mut progress = crate::term::Progress::new("entries verified");
    loop {
        progress.tick(after);
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
            sink(e);
        }
        after = page.last().map(|e| e.seq).unwrap_or(after);
    }
    drop(progress);
    finish(v, source)
}

/// Verify through a running server's API; `sink` as for [`verify_data`].
pub fn verify_api(
    c: &Client,
    pinned: Option<&str>,
    extra: Option<&Path>,
    sink: &mut dyn FnMut(&AuditEntry),
) -> Result<Verified> {
    // Ask for a fresh checkpoint so the whole log is covered.
    c.checkpoint()?;
    let published = c.checkpoints()?;
    let (key, source) = match pinned {
        Some(k) => (parse_key(k)?, "pinned"),
        None => (
            parse_key(&published.public_key)?,
            "as published by the server; pin it with --public-key",
        ),
    };
    let mut cps = published.checkpoints;
    cps.extend(extra_checkpoint(extra)?);
    let mut v = LogVerifier::new(cps, &key).map_err(|e| anyhow!("FAILED: {e}"))?;
    let mut after = 0u64;
    let mut progress = crate::term::Progress::new("entries verified");
    loop {
        progress.tick(after);
        let page = c.audit::<AuditEntry>(&AuditFilter::default(), after)?;
        for e in &page.entries {
            v.push(e).map_err(|e| anyhow!("FAILED: {e}"))?;
            sink(e);
        }
        match page.next_after {
            Some(n) => after = n,
            None => break,
        }
    }
    drop(progress);
    finish(v, source)
}

/// Verify an export file.
pub fn verify_file(path: &Path, pinned: Option<&str>, extra: Option<&Path>) -> Result<Verified> {
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
    let mut progress = crate::term::Progress::new("entries verified");
    for line in lines {
        let e: AuditEntry = serde_json::from_str(&line?).context("malformed entry line")?;
        v.push(&e).map_err(|e| anyhow!("FAILED: {e}"))?;
        progress.tick(e.seq);
    }
    drop(progress);
    finish(v, source)
}
