//! The gateway as a whole: the policy pack it enforces (reloaded atomically,
//! and only once the reload is audited) and the brake (frozen: every agent
//! decision denies). Both live where every process over the store sees them.

use super::Error;
use crate::state::{load_pack, AppState, ShadowPack, FROZEN_KEY};
use std::path::Path;
use std::sync::Arc;
use tollgate_audit::AuditEvent;
use tollgate_core::EventKind;
use tollgate_policy::{Diagnostic, PolicyError, PolicyPack};
use tollgate_store::{Batch, Change};

/// A pack's load error as diagnostics, whatever failed.
fn diagnostics(e: &PolicyError) -> Vec<Diagnostic> {
    match e {
        PolicyError::Invalid(d) => d.clone(),
        other => vec![Diagnostic {
            file: String::new(),
            line: 0,
            column: 0,
            message: other.to_string(),
        }],
    }
}

/// Rebuild the pack from its source and swap it in atomically. A pack
/// that does not validate is refused and the old one stays live; a pack
/// whose `policy.loaded` entry cannot be written does not go live either.
pub async fn reload_pack(state: &AppState, trigger: &str) -> Result<String, Error> {
    match load_pack(state.config_dir.as_deref(), state.config.pack_options()) {
        Ok(pack) => {
            let digest = pack.digest().to_string();
            state.audit_pack_loaded(&pack, trigger).await?;
            state.pack.store(Arc::new(pack));
            Ok(digest)
        }
        Err(e) => {
            let diags = diagnostics(&e);
            let ev = AuditEvent::new(
                state.now(),
                tollgate_core::EventKind::PolicyRejected,
                "tollgate",
            )
            .outcome("refused")
            .detail(serde_json::json!({"trigger": trigger, "diagnostics": diags}));
            state.store.commit(Batch::audit_only(ev)).await?;
            tracing::warn!(error = %e, "policy reload refused; previous pack stays live");
            Err(Error::PolicyInvalid(diags))
        }
    }
}

/// Load the pack in `dir` as the shadow pack, replacing any: evaluated
/// beside the enforced pack on every decision of this process, never
/// enforced. A pack that does not validate is refused (and the previous
/// shadow, if any, stays).
pub async fn load_shadow(
    state: &AppState,
    dir: &Path,
    actor: &str,
) -> Result<Arc<ShadowPack>, Error> {
    let pack = PolicyPack::load_dir_with(dir, state.config.pack_options())
        .map_err(|e| Error::PolicyInvalid(diagnostics(&e)))?;
    state.put_shadow(pack, dir, actor).await?;
    state
        .shadow
        .load_full()
        .ok_or_else(|| Error::Conflict("the shadow pack was cleared meanwhile".into()))
}

/// Stop shadowing: the shadow pack's digest, if there was one.
pub async fn clear_shadow(state: &AppState, actor: &str) -> Result<Option<String>, Error> {
    let Some(old) = state.shadow.load_full() else {
        return Ok(None);
    };
    let digest = old.pack.digest().to_string();
    let ev = AuditEvent::new(state.now(), EventKind::PolicyShadowCleared, actor)
        .outcome("cleared")
        .detail(serde_json::json!({"digest": digest, "source": old.source}));
    state.store.commit(Batch::audit_only(ev)).await?;
    state.shadow.store(None);
    Ok(Some(digest))
}

pub async fn set_frozen(state: &AppState, frozen: bool, actor: &str) -> Result<(), Error> {
    let ev = AuditEvent::new(
        state.now(),
        if frozen {
            tollgate_core::EventKind::Freeze
        } else {
            tollgate_core::EventKind::Unfreeze
        },
        actor,
    );
    let batch = Batch::default()
        .change(Change::PutSetting {
            key: FROZEN_KEY.into(),
            value: frozen.to_string(),
        })
        .event(ev);
    state.store.commit(batch).await?;
    Ok(())
}

/// How long the replica doing the background work (approval expiry and
/// escalation, checkpoint signing) holds it without renewing: it renews
/// every second, and a replica that dies is replaced after this.
const BACKGROUND_LEASE_SECONDS: i64 = 5;

/// Take or keep the `background` lease for `holder`: true if this process
/// should do the background work now. Every process over the store competes
/// for one lease, so the work runs once, not once per replica.
pub async fn lead_background(state: &AppState, holder: &str) -> Result<bool, Error> {
    let now = state.now();
    let lease = Change::AcquireLease {
        key: "background".into(),
        holder: holder.to_string(),
        until: now.saturating_add(BACKGROUND_LEASE_SECONDS),
        now,
    };
    match state.store.commit(Batch::default().change(lease)).await {
        Ok(_) => Ok(true),
        Err(tollgate_store::StoreError::Conflict(_)) => Ok(false),
        Err(e) => Err(e.into()),
    }
}
