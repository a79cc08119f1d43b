//! The audit log as the gateway keeps it: every entry of a task, and signed
//! checkpoints of the whole log (on demand, and when enough entries or time
//! have gone by).

use super::Error;
use crate::state::AppState;
use std::sync::Arc;
use tollgate_audit::checkpoint::Checkpoint;
use tollgate_store::{Batch, Change};

/// Every audit entry of one task, oldest first (paged through the store).
pub async fn task_entries(
    state: &AppState,
    task_id: &str,
) -> Result<Vec<tollgate_audit::AuditEntry>, Error> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = state
            .store
            .audit(tollgate_store::AuditQuery {
                task_id: Some(task_id.to_string()),
                after,
                limit: 1000,
                ..Default::default()
            })
            .await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        out.extend(page);
    }
    Ok(out)
}

/// Sign a checkpoint of the log as it is now, unless the newest one already
/// covers it. Returns the newest checkpoint, or `None` for an empty log.
pub async fn checkpoint_now(state: &Arc<AppState>) -> Result<Option<Checkpoint>, Error> {
    let head = state.store.audit_head().await?;
    let latest = state.latest_checkpoint();
    if head.size == 0 {
        return Ok(latest);
    }
    if let Some(cp) = &latest {
        if cp.tree_size >= head.size {
            return Ok(latest);
        }
    }
    let cp = Checkpoint::sign(
        &state.audit.origin,
        head.size,
        &head.root_hash,
        state.now(),
        &state.audit.signing,
    );
    state
        .store
        .commit(Batch::default().change(Change::PutCheckpoint(cp.clone())))
        .await?;
    state.set_latest_checkpoint(cp.clone());
    Ok(Some(cp))
}

/// Checkpoint when enough entries or enough time has gone by.
pub async fn maybe_checkpoint(state: &Arc<AppState>) -> Result<(), Error> {
    let head = state.store.audit_head().await?;
    let cfg = &state.config.audit;
    let (size, ts) = state
        .latest_checkpoint()
        .map(|c| (c.tree_size, c.timestamp))
        .unwrap_or((0, 0));
    let due = head.size >= size + cfg.checkpoint_every_entries
        || (head.size > size && state.now() - ts >= cfg.checkpoint_every_seconds);
    if due {
        checkpoint_now(state).await?;
    }
    Ok(())
}
