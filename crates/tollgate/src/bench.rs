//! `tollgate bench audit`: durable append throughput (one fsync per commit
//! versus group commit) and verification speed, on this machine, in one run.

use anyhow::{anyhow, Result};
use serde_json::json;
use std::sync::Arc;
use std::time::Instant;
use tollgate_audit::checkpoint::Checkpoint;
use tollgate_audit::verify::LogVerifier;
use tollgate_audit::AuditEvent;
use tollgate_store::{AuditQuery, Batch, Change, SqliteStore, Store};

/// A decision-sized event (~600 bytes of JSON), like the gateway writes.
fn event(i: u64) -> AuditEvent {
    AuditEvent::new(1_800_000_000 + i as i64, "decision", "spiffe://acme.test/agent/ir-responder/i-1")
        .agent("spiffe://acme.test/agent/ir-responder/i-1")
        .task(format!("task_{:032x}", i / 100))
        .incident("INC-4711")
        .request(format!("req_{i:032x}"))
        .outcome("allow")
        .detail(json!({
            "action": "edr.read_alerts", "resource": "Host::web-1", "resource_attributes": {},
            "intent": "read EDR alerts for the beacon", "parameters": {"window_minutes": 60},
            "policies": ["read-during-task"], "reasons": ["read-only diagnostics are allowed during any task"],
            "obligations": [], "approvals_required": 0, "approval_id": null,
            "request_hash": "9f2c0b5e1c1f0f1a6d3b0e5c2f4a7b8c9d0e1f2a3b4c5d6e7f8091a2b3c4d5e6",
            "policy_digest": "7f637eafb6ee6b9839fc4c4427a6e48423aedc310adc69377e51b4c82ed5095d",
        }))
}

async fn append(
    store: &Arc<SqliteStore>,
    total: u64,
    concurrency: u64,
    offset: u64,
) -> Result<f64> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while i < total {
                s.commit(Batch::audit_only(event(offset + i))).await?;
                i += concurrency;
            }
            Ok::<_, tollgate_store::StoreError>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

pub fn audit(entries: u64, concurrency: u64) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let dir = tempfile::tempdir()?;
        let store = Arc::new(SqliteStore::open(&dir.path().join("bench.db"))?);
        println!("tollgate bench audit: {entries} entries, {concurrency} concurrent writers, SQLite WAL synchronous=FULL");
        let serial_n = entries.min(2_000);
        let serial = append(&store, serial_n, 1, 0).await?;
        println!("append, one writer (an fsync per entry):   {serial:>10.0} entries/s  ({serial_n} entries)");
        let grouped = append(&store, entries, concurrency, serial_n).await?;
        println!("append, {concurrency} writers (group commit):       {grouped:>10.0} entries/s  ({:.1}x)", grouped / serial);

        let head = store.audit_head().await?;
        let key = ed25519_dalek::SigningKey::from_bytes(&[1u8; 32]);
        let cp = Checkpoint::sign("bench", head.size, &head.root_hash, 0, &key);
        store.commit(Batch::default().change(Change::PutCheckpoint(cp.clone()))).await?;

        // Verification as `audit verify --data` does it: read pages, stream.
        let started = Instant::now();
        let mut v = LogVerifier::new(vec![cp.clone()], &key.verifying_key()).map_err(|e| anyhow!("{e}"))?;
        let mut after = 0;
        let mut all = Vec::with_capacity(head.size as usize);
        loop {
            let page = store.audit(AuditQuery { after, limit: 20_000, ..Default::default() }).await?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            for e in &page {
                v.push(e).map_err(|e| anyhow!("{e}"))?;
            }
            all.extend(page);
        }
        let report = v.finish().map_err(|e| anyhow!("{e}"))?;
        let with_reads = report.entries as f64 / started.elapsed().as_secs_f64();
        // The verifier alone, entries already in memory.
        let started = Instant::now();
        let mut v = LogVerifier::new(vec![cp], &key.verifying_key()).map_err(|e| anyhow!("{e}"))?;
        for e in &all {
            v.push(e).map_err(|e| anyhow!("{e}"))?;
        }
        v.finish().map_err(|e| anyhow!("{e}"))?;
        let pure = report.entries as f64 / started.elapsed().as_secs_f64();
        println!("verify, reading SQLite (audit verify --data): {with_reads:>7.0} entries/s  ({} entries, 1 checkpoint)", report.entries);
        println!("verify, entries in memory (chain + Merkle):   {pure:>7.0} entries/s");
        Ok(())
    })
}
