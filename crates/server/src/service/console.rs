//! Web console sessions: signing in with a credential the API already
//! accepts (the admin token, an approver's key or OIDC ID token), the
//! session that stands for it, and signing out.
//!
//! The browser holds a random secret; the store holds its SHA-256
//! ([`ConsoleSession`]), so a session works on every replica and a database
//! reader cannot act as anyone. The CSRF token is derived from the secret
//! (a different hash), so it needs no storage and cannot be derived from
//! the stored hash either.

use super::approvals::Voter;
use super::{identity, Error};
use crate::state::{random_token, AppState};
use serde_json::json;
use tollgate_audit::AuditEvent;
use tollgate_core::{sha256_hex, EventKind};
use tollgate_store::{Batch, Change, ConsoleSession};

/// Who is signed in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Admin,
    Approver(Voter),
}

impl Principal {
    /// The name the audit log records as the actor.
    pub fn name(&self) -> &str {
        match self {
            Principal::Admin => "admin",
            Principal::Approver(v) => &v.name,
        }
    }
}

/// A live session: who, until when, and the token its forms carry.
#[derive(Debug, Clone)]
pub struct Session {
    pub principal: Principal,
    pub expires_at: i64,
    pub csrf: String,
}

/// Longest credential accepted at sign-in (an OIDC ID token is the largest).
const MAX_CREDENTIAL: usize = 16 * 1024;

fn csrf_of(secret: &str) -> String {
    sha256_hex(format!("tollgate console csrf\0{secret}").as_bytes())
}

/// Whether `token` is the CSRF token of the session whose secret is `secret`.
pub fn csrf_ok(secret: &str, token: &str) -> bool {
    // Hash both sides so the comparison's timing says nothing about the token.
    sha256_hex(csrf_of(secret).as_bytes()) == sha256_hex(token.as_bytes())
}

/// Sign in with `credential`; returns the session secret for the cookie.
/// A credential that is none of the accepted kinds is refused and audited
/// like any refused credential (aggregated per `source`).
pub async fn sign_in(
    state: &AppState,
    credential: &str,
    source: &str,
) -> Result<(String, Session), Error> {
    let credential = credential.trim();
    if credential.is_empty() || credential.len() > MAX_CREDENTIAL {
        return Err(Error::Unauthenticated(
            "paste an approver key, an ID token or the admin token".into(),
        ));
    }
    let principal = if sha256_hex(credential.as_bytes()) == state.admin_token_hash {
        Principal::Admin
    } else {
        match identity::approver_by_credential(state, credential).await? {
            Some(v) => Principal::Approver(v),
            None => {
                let why = "not an approver key, ID token or admin token";
                let ev = AuditEvent::new(state.now(), EventKind::AuthRefused, "anonymous")
                    .outcome("refused")
                    .detail(
                        json!({"path": "/console/signin", "expected": "console", "reason": why}),
                    );
                identity::record_refusal(state, source, "auth.refused/console", why, ev).await?;
                return Err(Error::Unauthenticated(why.into()));
            }
        }
    };
    let now = state.now();
    let secret = random_token("tgc_");
    let expires_at = now.saturating_add(state.config.console.session_minutes as i64 * 60);
    let (role, via) = match &principal {
        Principal::Admin => ("admin".to_string(), "admin-token"),
        Principal::Approver(v) => (v.role.clone(), v.via),
    };
    let stored = ConsoleSession {
        id_hash: sha256_hex(secret.as_bytes()),
        principal: principal.name().to_string(),
        role: role.clone(),
        via: via.to_string(),
        created_at: now,
        expires_at,
    };
    let ev = AuditEvent::new(now, EventKind::ConsoleSignedIn, principal.name())
        .outcome("signed_in")
        .detail(json!({"role": role, "via": via, "source": source, "expires_at": tollgate_core::clock::rfc3339(expires_at)}));
    state
        .store
        .commit(Batch::audit_only(ev).change(Change::PutConsoleSession(stored)))
        .await?;
    let session = Session {
        principal,
        expires_at,
        csrf: csrf_of(&secret),
    };
    Ok((secret, session))
}

/// The session `secret` stands for, if it is live. An approver whose key
/// was disabled, removed or expired since sign-in has no session any more.
pub async fn session(state: &AppState, secret: &str) -> Result<Option<Session>, Error> {
    if secret.is_empty() || secret.len() > 256 {
        return Ok(None);
    }
    let Some(s) = state
        .store
        .console_session(&sha256_hex(secret.as_bytes()))
        .await?
    else {
        return Ok(None);
    };
    let now = state.now();
    if s.expires_at <= now {
        return Ok(None);
    }
    let principal = match s.via.as_str() {
        "admin-token" => Principal::Admin,
        "key" => {
            let approvers = state.store.approvers().await?;
            match approvers.into_iter().find(|a| a.name == s.principal) {
                Some(a) if a.refusal(now).is_none() => Principal::Approver(Voter {
                    name: a.name,
                    role: a.role,
                    via: "key",
                }),
                _ => return Ok(None),
            }
        }
        // An ID token was checked at sign-in; the session is shorter than
        // any approver's shift and ends on its own.
        _ => Principal::Approver(Voter {
            name: s.principal,
            role: s.role,
            via: "oidc",
        }),
    };
    Ok(Some(Session {
        principal,
        expires_at: s.expires_at,
        csrf: csrf_of(secret),
    }))
}

/// End the session `secret` stands for, on every replica at once.
pub async fn sign_out(state: &AppState, secret: &str, who: &str) -> Result<(), Error> {
    let ev = AuditEvent::new(state.now(), EventKind::ConsoleSignedOut, who).outcome("signed_out");
    state
        .store
        .commit(Batch::audit_only(ev).change(Change::EndConsoleSession {
            id_hash: sha256_hex(secret.as_bytes()),
        }))
        .await?;
    Ok(())
}

/// Forget sessions that have ended on their own (the background work).
pub async fn purge_expired(state: &AppState) -> Result<(), Error> {
    let before = state.now();
    state
        .store
        .commit(Batch::default().change(Change::PurgeConsoleSessions { before }))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_csrf_token_is_the_sessions_and_not_its_stored_hash() {
        let t = csrf_of("tgc_secret");
        assert!(csrf_ok("tgc_secret", &t));
        assert!(!csrf_ok("tgc_other", &t));
        assert!(!csrf_ok("tgc_secret", ""));
        assert_ne!(t, sha256_hex(b"tgc_secret"));
    }
}
