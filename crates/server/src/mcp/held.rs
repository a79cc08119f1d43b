//! Calls held for approval, recorded in the store with the replica that
//! holds each, so that a call whose replica dies does not leave its
//! approval pending (or, worse, approved) for a call nobody will make.
//!
//! Every replica keeps a lease `replica:<id>` (renewed every
//! [`RENEW_EVERY`], expiring after [`LEASE_SECONDS`]); a held call is a
//! row naming its replica, written when the hold starts and removed when
//! it ends, whatever ends it. [`sweep`], run by the holder of the
//! `background` lease, finds the rows whose replica's lease is gone and
//! ends them as abandoned: the approval withdrawn and the abandonment
//! audited, as when a client leaves. A restarted single server is a new
//! replica, so it finds its previous incarnation's held calls the same way.

use crate::service::approvals;
use crate::state::AppState;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tollgate_audit::AuditEvent;
use tollgate_core::ApprovalStatus;
use tollgate_store::{replica_lease_key, Batch, Change, HeldCall};

/// How long a replica's lease lasts unrenewed: a held call of a replica
/// that stopped is abandoned this long (plus a sweep) after its last
/// renewal. Long enough that a few slow or failed renewals (a busy
/// database, clocks a few seconds apart) do not end live calls.
pub const LEASE_SECONDS: i64 = 10;

/// How often a replica renews its lease.
pub const RENEW_EVERY: Duration = Duration::from_secs(2);

/// Most held calls one sweep ends (the next takes the rest).
const SWEEP_BATCH: usize = 100;

/// Take or extend this replica's lease.
pub async fn renew(state: &AppState) -> Result<(), crate::service::Error> {
    let now = state.now();
    let lease = Change::AcquireLease {
        key: replica_lease_key(&state.replica),
        holder: state.replica.clone(),
        until: now.saturating_add(LEASE_SECONDS),
        now,
    };
    state.store.commit(Batch::default().change(lease)).await?;
    Ok(())
}

/// Give this replica's lease back (it stops): anything it still held is
/// abandoned at the next sweep rather than after the lease runs out.
pub async fn release(state: &AppState) {
    let release = Change::ReleaseLease {
        key: replica_lease_key(&state.replica),
        holder: state.replica.clone(),
    };
    if let Err(e) = state.store.commit(Batch::default().change(release)).await {
        tracing::warn!(error = %e, "could not give back this replica's lease; it expires on its own");
    }
}

/// The record of one held call: written when the hold starts, removed by
/// [`Record::end`] (or, if the call's future is dropped, in the background).
pub struct Record {
    state: Arc<AppState>,
    request_id: String,
    ended: bool,
}

impl Record {
    pub async fn put(
        state: &Arc<AppState>,
        request_id: &str,
        approval_id: &str,
        task_id: &str,
        agent: &str,
    ) -> Result<Self, crate::service::Error> {
        let held = HeldCall {
            request_id: request_id.to_string(),
            approval_id: approval_id.to_string(),
            replica: state.replica.clone(),
            task_id: task_id.to_string(),
            agent: agent.to_string(),
            held_at: state.now(),
        };
        state
            .store
            .commit(Batch::default().change(Change::PutHeldCall(held)))
            .await?;
        Ok(Self {
            state: state.clone(),
            request_id: request_id.to_string(),
            ended: false,
        })
    }

    /// The hold is over. A failure leaves the row for [`sweep`], which
    /// drops it without an entry once this replica's lease is gone and
    /// the approval is settled.
    pub async fn end(mut self) {
        self.ended = true;
        forget(&self.state, &self.request_id).await;
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        // `drop` cannot wait; a removal that never runs is left to `sweep`.
        let (state, request_id) = (self.state.clone(), self.request_id.clone());
        tokio::spawn(async move { forget(&state, &request_id).await });
    }
}

async fn forget(state: &AppState, request_id: &str) {
    let end = Change::EndHeldCall {
        request_id: request_id.to_string(),
    };
    if let Err(e) = state.store.commit(Batch::default().change(end)).await {
        tracing::warn!(error = %e, request_id, "could not forget a held MCP call");
    }
}

/// End the held calls of replicas that stopped: withdraw each one's
/// approval, if it is still pending or approved, with an
/// `mcp.call_abandoned` entry naming the replica, then forget the call.
/// A call whose approval is already settled (denied, expired, used,
/// withdrawn) ended on its own: it is only forgotten.
pub async fn sweep(state: &Arc<AppState>) -> Result<(), crate::service::Error> {
    let orphans = state
        .store
        .abandoned_held_calls(state.now(), SWEEP_BATCH)
        .await?;
    for h in orphans {
        let approval = state.store.approval(&h.approval_id).await?;
        let open = approval.is_some_and(|a| {
            matches!(a.status, ApprovalStatus::Pending | ApprovalStatus::Approved)
        });
        let task = state.store.task(&h.task_id).await?;
        if let (true, Some(task)) = (open, task) {
            let reason = format!(
                "the replica holding the call ({}) stopped while it waited for approval",
                h.replica
            );
            let abandoned = |now| {
                AuditEvent::new(now, tollgate_core::EventKind::McpCallAbandoned, "tollgate")
                    .agent(h.agent.clone())
                    .task(task.id.clone())
                    .incident(task.incident_id.clone())
                    .request(h.request_id.clone())
                    .outcome("abandoned")
                    .detail(json!({"approval_id": h.approval_id, "reason": reason, "replica": h.replica}))
            };
            let w = approvals::Withdrawal {
                task: &task,
                agent: &h.agent,
                actor: "tollgate",
                reason: &reason,
            };
            match approvals::withdraw(state, &h.approval_id, &w, abandoned).await {
                Ok(()) => {}
                // Lost three races with votes: the next sweep tries again.
                Err(crate::service::Error::Conflict(e)) => {
                    tracing::warn!(error = %e, "could not withdraw an abandoned call's approval yet");
                    continue;
                }
                Err(e) => return Err(e),
            }
            tracing::warn!(
                request_id = %h.request_id,
                replica = %h.replica,
                "a call held for approval on a replica that stopped was abandoned"
            );
        }
        forget(state, &h.request_id).await;
    }
    Ok(())
}
