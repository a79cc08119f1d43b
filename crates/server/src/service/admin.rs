//! What an admin grants and lifts outside a task's life: releasing a
//! quarantined agent, and the keys of policy enforcement points (AuthZEN)
//! and of approvers. A key is shown once and only its hash is stored.

use super::gate::quarantine_key;
use super::Error;
use crate::state::{random_token, AppState};
use serde_json::json;
use tollgate_audit::AuditEvent;
use tollgate_core::clock::rfc3339;
use tollgate_core::{sha256_hex, EventKind, SpiffeId, UnixTime};
use tollgate_store::{Approver, Batch, Change, Pep};

/// Lift an agent's quarantine (set by a chain rule). Returns the agent's
/// SPIFFE ID as stored.
pub async fn release_agent(
    state: &AppState,
    agent: &str,
    reason: Option<String>,
) -> Result<String, Error> {
    let id = SpiffeId::parse(agent)
        .map_err(|e| Error::invalid(format!("agent: {e}")))?
        .to_string();
    if state.store.agent(&id).await?.is_none() {
        return Err(Error::NotFound(format!("agent {id}")));
    }
    let quarantine = state.store.setting(&quarantine_key(&id)).await?;
    if quarantine.is_none_or(|r| r.is_empty()) {
        return Err(Error::Conflict(format!("agent {id} is not quarantined")));
    }
    let now = state.now();
    let batch = Batch::default()
        .change(Change::PutSetting {
            key: quarantine_key(&id),
            value: String::new(),
        })
        .event(
            AuditEvent::new(now, EventKind::AgentReleased, "admin")
                .agent(id.clone())
                .outcome("released")
                .detail(json!({"reason": reason})),
        );
    state.store.commit(batch).await?;
    Ok(id)
}

/// Register a policy enforcement point; a name already registered gets a
/// new key (the old one stops working). Returns the key.
pub async fn add_pep(state: &AppState, name: &str) -> Result<String, Error> {
    let name_ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !name_ok {
        return Err(Error::invalid(
            "name must be 1-64 characters of [A-Za-z0-9._-]",
        ));
    }
    let now = state.now();
    let key = random_token("tgp_");
    let batch = Batch::default()
        .change(Change::PutPep(Pep {
            name: name.to_string(),
            key_hash: sha256_hex(key.as_bytes()),
            created_at: now,
        }))
        .event(
            AuditEvent::new(now, EventKind::PepRegistered, "admin").detail(json!({"name": name})),
        );
    state.store.commit(batch).await?;
    Ok(key)
}

/// Offboard a PEP: its key fails on the next request.
pub async fn remove_pep(state: &AppState, name: &str) -> Result<(), Error> {
    let batch = Batch::default()
        .change(Change::RemovePep {
            name: name.to_string(),
        })
        .event(
            AuditEvent::new(state.now(), EventKind::PepRemoved, "admin")
                .detail(json!({"name": name})),
        );
    state.store.commit(batch).await?;
    Ok(())
}

/// Approver names: an email-like string, never a SPIFFE ID (no ':' or '/'),
/// so an agent identity can never pass for an approver. The same rule holds
/// for names from OIDC ID tokens.
pub fn valid_approver_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@+".contains(&b))
}

/// A new approver key.
pub struct ApproverKey {
    /// The name as registered (lowercased).
    pub name: String,
    pub role: String,
    pub key: String,
    pub expires_at: Option<UnixTime>,
}

/// Register (or rotate the key of) an approver. Names are lowercased, so
/// one person has one spelling.
pub async fn add_approver(
    state: &AppState,
    name: &str,
    role: &str,
    expires_in_seconds: Option<i64>,
) -> Result<ApproverKey, Error> {
    let name = name.to_ascii_lowercase();
    if !valid_approver_name(&name) {
        return Err(Error::invalid(
            "name must be 1-128 characters of [a-z0-9._@+-] (an email address, say) and not a SPIFFE ID",
        ));
    }
    let role_ok = !role.is_empty()
        && role.len() <= 64
        && role
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !role_ok {
        return Err(Error::invalid("role must be 1-64 characters of [a-z0-9-]"));
    }
    let now = state.now();
    let expires_at = match expires_in_seconds {
        None => None,
        Some(s) if s > 0 => Some(now.saturating_add(s)),
        Some(_) => return Err(Error::invalid("expires_in_seconds must be positive")),
    };
    let key = random_token("tgr_");
    let batch = Batch::default()
        .change(Change::PutApprover(Approver {
            name: name.clone(),
            role: role.to_string(),
            key_hash: sha256_hex(key.as_bytes()),
            created_at: now,
            expires_at,
            disabled: false,
            last_used_at: None,
        }))
        .event(
            AuditEvent::new(now, EventKind::ApproverRegistered, "admin")
                .detail(json!({"name": name, "role": role, "expires_at": expires_at.map(rfc3339)})),
        );
    state.store.commit(batch).await?;
    Ok(ApproverKey {
        name,
        role: role.to_string(),
        key,
        expires_at,
    })
}

/// Offboard an approver: the key fails at once; votes already cast stay as cast.
pub async fn remove_approver(state: &AppState, name: &str) -> Result<(), Error> {
    let name = name.to_ascii_lowercase();
    let batch = Batch::default()
        .change(Change::RemoveApprover { name: name.clone() })
        .event(
            AuditEvent::new(state.now(), EventKind::ApproverRemoved, "admin")
                .detail(json!({"name": name})),
        );
    state.store.commit(batch).await?;
    Ok(())
}

/// Disable an approver's key until it is enabled again, or enable it.
pub async fn set_approver_disabled(
    state: &AppState,
    name: &str,
    disabled: bool,
) -> Result<(), Error> {
    let name = name.to_ascii_lowercase();
    let kind = if disabled {
        EventKind::ApproverDisabled
    } else {
        EventKind::ApproverEnabled
    };
    let batch = Batch::default()
        .change(Change::SetApproverDisabled {
            name: name.clone(),
            disabled,
        })
        .event(AuditEvent::new(state.now(), kind, "admin").detail(json!({"name": name})));
    state.store.commit(batch).await?;
    Ok(())
}
