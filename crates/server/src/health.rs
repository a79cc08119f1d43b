//! Liveness and readiness.
//!
//! Live means the process answers HTTP. Ready means it can do its job, and
//! for a gate that audits every decision before answering that is: the
//! store can *commit*. Reading is not enough: on a full disk reads still
//! work while every decision fails with 503, and a load balancer must take
//! such a replica out.
//!
//! The probe commits one tiny settings row through the same writer as
//! every decision. Its result is kept for a second, so a flood of probes
//! (the endpoint needs no credential) costs at most one commit a second.

use std::time::{Duration, Instant};
use tollgate_store::{Batch, Change, Store};

/// How long one probe's answer is reused.
const PROBE_TTL: Duration = Duration::from_secs(1);

/// The settings key the probe writes.
pub const PROBE_KEY: &str = "readyz.probe";

#[derive(Default)]
pub struct Readiness {
    last: tokio::sync::Mutex<Option<(Instant, Result<(), String>)>>,
}

impl Readiness {
    /// `Ok` when the store took a commit within the last second.
    pub async fn check(&self, store: &dyn Store) -> Result<(), String> {
        // Held across the probe: concurrent callers wait for its answer
        // instead of each committing their own.
        let mut last = self.last.lock().await;
        if let Some((at, result)) = last.as_ref() {
            if at.elapsed() < PROBE_TTL {
                return result.clone();
            }
        }
        let batch = Batch {
            changes: vec![Change::PutSetting {
                key: PROBE_KEY.into(),
                value: uuid::Uuid::now_v7().simple().to_string(),
            }],
            audit: vec![],
        };
        let result = match store.commit(batch).await {
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, "readiness probe: the store cannot commit");
                Err("storage cannot commit; every decision fails closed".to_string())
            }
        };
        *last = Some((Instant::now(), result.clone()));
        result
    }
}
