//! Agent identity: registration (with its single-use join token), the
//! exchange of a join token for a JWT-SVID, SVID refresh, and the recording
//! of refused credentials at a bounded cost.

use super::{new_id, Error};
use crate::state::{random_token, AppState};
use serde_json::json;
use tollgate_audit::AuditEvent;
use tollgate_core::clock::rfc3339;
use tollgate_core::{sha256_hex, Agent, EventKind, SpiffeId, UnixTime};
use tollgate_identity::VerifiedSvid;
use tollgate_store::{Batch, Change, JoinToken, StoreError};

/// An agent registered.
pub struct Registered {
    pub spiffe_id: String,
    /// Single-use; `None` for an agent of an external trust domain, which
    /// brings its own SVIDs.
    pub join_token: Option<String>,
    pub expires_at: Option<UnixTime>,
}

/// A JWT-SVID issued.
pub struct Svid {
    pub spiffe_id: String,
    pub svid: String,
    pub expires_at: UnixTime,
}

/// Register (or re-enrol) an agent. An agent of our own trust domain gets a
/// join token; one of a domain we hold no bundle for is refused, as it could
/// never authenticate.
pub async fn register_agent(
    state: &AppState,
    spiffe_id: &str,
    owner: &str,
) -> Result<Registered, Error> {
    let id = SpiffeId::parse(spiffe_id).map_err(|e| Error::invalid(format!("spiffe_id: {e}")))?;
    if owner.trim().is_empty() {
        return Err(Error::invalid("owner must not be empty"));
    }
    if !state.tokens.trusts_domain(id.trust_domain()) {
        return Err(Error::invalid(format!(
            "trust domain {} is neither ours nor configured with a trust bundle; its agents could never authenticate",
            id.trust_domain()
        )));
    }
    let now = state.now();
    let own = id.trust_domain() == state.tokens.trust_domain();
    let agent = Agent {
        spiffe_id: id.to_string(),
        owner: owner.to_string(),
        created_at: now,
        revoked: false,
    };
    // Re-enrolment voids any join token not yet used.
    let mut batch =
        Batch::default()
            .change(Change::UpsertAgent(agent))
            .change(Change::DropUnusedJoinTokens {
                spiffe_id: id.to_string(),
            });
    let (join_token, expires_at) = if own {
        let token = random_token("tgj_");
        let expires_at = now.saturating_add(state.config.join_token_ttl_seconds);
        batch = batch.change(Change::PutJoinToken(JoinToken {
            token_hash: sha256_hex(token.as_bytes()),
            spiffe_id: id.to_string(),
            expires_at,
            used_at: None,
        }));
        (Some(token), Some(expires_at))
    } else {
        (None, None)
    };
    batch = batch.event(
        AuditEvent::new(now, EventKind::AgentRegistered, "admin")
            .agent(id.to_string())
            .detail(json!({"owner": owner, "join_token_expires_at": expires_at.map(rfc3339)})),
    );
    state.store.commit(batch).await?;
    Ok(Registered {
        spiffe_id: id.to_string(),
        join_token,
        expires_at,
    })
}

/// Exchange a join token, once, for a JWT-SVID of the agent it was issued
/// to. Refusals are audited, aggregated per `source` (the caller's address):
/// an unknown token costs nothing to send.
pub async fn attest(state: &AppState, source: &str, join_token: &str) -> Result<Svid, Error> {
    let now = state.now();
    let hash = sha256_hex(join_token.as_bytes());
    let kind = EventKind::AgentAttestRefused;
    let refused = |reason: &str| {
        AuditEvent::new(now, kind, "anonymous")
            .outcome("refused")
            .detail(json!({"reason": reason}))
    };
    let token = match state.store.join_token(&hash).await? {
        Some(t) if t.used_at.is_none() && t.expires_at > now => t,
        other => {
            let why = match other {
                None => "unknown join token",
                Some(t) if t.used_at.is_some() => "join token already used",
                Some(_) => "join token expired",
            };
            record_refusal(state, source, kind.as_str(), why, refused(why)).await?;
            return Err(Error::Unauthenticated(why.into()));
        }
    };
    match state.store.agent(&token.spiffe_id).await? {
        Some(a) if !a.revoked => {}
        _ => {
            let why = "agent is revoked";
            let ev = refused(why).agent(token.spiffe_id.clone());
            record_refusal(state, source, kind.as_str(), why, ev).await?;
            return Err(Error::Forbidden(format!(
                "agent {} is revoked",
                token.spiffe_id
            )));
        }
    }
    let id = SpiffeId::parse(&token.spiffe_id).map_err(|e| Error::Internal(e.to_string()))?;
    let jti = new_id("svid");
    let (svid, exp) = state
        .tokens
        .issue_svid(&id, now, state.config.svid_ttl_seconds, jti.clone())
        .map_err(|e| Error::Internal(e.to_string()))?;
    let batch = Batch::default()
        .change(Change::ConsumeJoinToken {
            token_hash: hash,
            now,
        })
        .event(
            AuditEvent::new(now, EventKind::AgentAttested, id.to_string())
                .agent(id.to_string())
                .detail(json!({"svid_jti": jti, "expires_at": exp})),
        );
    // The conditional consume makes two racing attestations yield one SVID.
    state.store.commit(batch).await.map_err(|e| match e {
        StoreError::Conflict(_) => Error::Unauthenticated("join token already used".into()),
        e => e.into(),
    })?;
    Ok(Svid {
        spiffe_id: id.to_string(),
        svid,
        expires_at: exp,
    })
}

/// A fresh JWT-SVID for an agent presenting a valid one of ours; agents of
/// external trust domains get theirs from their own issuer.
pub async fn refresh_svid(
    state: &AppState,
    svid: &VerifiedSvid,
    agent: &Agent,
) -> Result<Svid, Error> {
    if svid.external {
        return Err(Error::invalid(
            "agents of external trust domains get SVIDs from their own issuer",
        ));
    }
    let now = state.now();
    let jti = new_id("svid");
    let (token, exp) = state
        .tokens
        .issue_svid(
            &svid.spiffe_id,
            now,
            state.config.svid_ttl_seconds,
            jti.clone(),
        )
        .map_err(|e| Error::Internal(e.to_string()))?;
    let id = agent.spiffe_id.clone();
    let ev = AuditEvent::new(now, EventKind::SvidIssued, id.clone())
        .agent(id.clone())
        .detail(json!({"svid_jti": jti, "expires_at": exp}));
    state.store.commit(Batch::audit_only(ev)).await?;
    Ok(Svid {
        spiffe_id: id,
        svid: token,
        expires_at: exp,
    })
}

/// Record a refused credential or join token: commit what the refusal log
/// (`refusals.rs`) says to commit now, which is nothing when the refusal is
/// counted into its source's current second.
pub async fn record_refusal(
    state: &AppState,
    source: &str,
    kind: &str,
    reason: &str,
    event: AuditEvent,
) -> Result<(), Error> {
    let now = state.refusals.admit(source, kind, reason, event);
    if now.is_empty() {
        return Ok(());
    }
    state
        .store
        .commit(Batch {
            changes: vec![],
            audit: now,
        })
        .await?;
    Ok(())
}

/// The approver a key or OIDC ID token belongs to: `Ok(None)` when it is
/// neither; `Unauthenticated` for an approver's key that may not be used
/// now (disabled, expired).
pub async fn approver_by_credential(
    state: &AppState,
    token: &str,
) -> Result<Option<super::approvals::Voter>, Error> {
    if let Some(a) = state
        .store
        .approver_by_key_hash(&sha256_hex(token.as_bytes()))
        .await?
    {
        let now = state.now();
        // A disabled or expired key is an approver's key that no longer
        // works: refused (and audited by the caller), never passed on to
        // the other kinds of credential.
        if let Some(why) = a.refusal(now) {
            return Err(Error::Unauthenticated(why));
        }
        // Last use, to the minute: one small write a minute per approver,
        // so `approver list` can show keys nobody uses any more.
        if a.last_used_at.is_none_or(|t| now.saturating_sub(t) >= 60) {
            let touch = Batch::default().change(tollgate_store::Change::TouchApprover {
                name: a.name.clone(),
                at: now,
            });
            if let Err(e) = state.store.commit(touch).await {
                tracing::warn!(error = %e, "could not record an approver's last use");
            }
        }
        return Ok(Some(super::approvals::Voter {
            name: a.name,
            role: a.role,
            via: "key",
        }));
    }
    if let Some(oidc) = &state.oidc {
        if let Ok(id) = oidc.verify(token, state.now()) {
            // The same name rules as registered approvers (which also rule
            // out SPIFFE IDs), and one spelling per person.
            let name = id.name.to_ascii_lowercase();
            if !super::admin::valid_approver_name(&name) {
                return Ok(None);
            }
            let id = tollgate_identity::OidcIdentity {
                name,
                role: id.role,
            };
            return Ok(Some(super::approvals::Voter {
                name: id.name,
                role: id.role,
                via: "oidc",
            }));
        }
    }
    Ok(None)
}
