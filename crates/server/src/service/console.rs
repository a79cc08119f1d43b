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
    start_session(state, principal, source).await
}

/// A new session for `principal`, audited; returns its secret.
async fn start_session(
    state: &AppState,
    principal: Principal,
    source: &str,
) -> Result<(String, Session), Error> {
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

/// What a login through the issuer leaves in the browser (an `HttpOnly`
/// cookie) until the issuer sends it back: the `state` that ties the
/// callback to this browser, the `nonce` the ID token must carry, and the
/// PKCE verifier whose hash the issuer was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingLogin {
    pub state: String,
    pub nonce: String,
    pub verifier: String,
}

impl PendingLogin {
    fn new() -> Self {
        Self {
            state: random_token(""),
            nonce: random_token(""),
            verifier: random_token(""),
        }
    }

    /// The cookie's value (URL-safe base64 never holds a `.`).
    pub fn to_cookie(&self) -> String {
        format!("{}.{}.{}", self.state, self.nonce, self.verifier)
    }

    pub fn from_cookie(v: &str) -> Option<Self> {
        let mut it = v.split('.');
        let (state, nonce, verifier) = (it.next()?, it.next()?, it.next()?);
        let ok = |s: &str| {
            (43..=128).contains(&s.len())
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        (it.next().is_none() && ok(state) && ok(nonce) && ok(verifier)).then(|| Self {
            state: state.into(),
            nonce: nonce.into(),
            verifier: verifier.into(),
        })
    }

    /// RFC 7636 `S256`: the verifier's SHA-256, URL-safe base64.
    fn challenge(&self) -> String {
        use base64::Engine;
        use sha2::Digest;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(sha2::Sha256::digest(self.verifier.as_bytes()))
    }
}

fn login_config(state: &AppState) -> Result<&crate::config::OidcLogin, Error> {
    state
        .config
        .approver_oidc
        .as_ref()
        .and_then(|o| o.login.as_ref())
        .ok_or_else(|| {
            Error::NotFound("sign-in through an identity provider is not configured".into())
        })
}

/// Start a login through the issuer: where to send the browser, and what
/// the browser must keep until it comes back.
pub fn oidc_login_start(state: &AppState) -> Result<(String, PendingLogin), Error> {
    let login = login_config(state)?;
    let pending = PendingLogin::new();
    let mut url = url::Url::parse(&login.authorization_endpoint)
        .map_err(|e| Error::Internal(format!("authorization_endpoint: {e}")))?;
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &login.client_id)
        .append_pair("redirect_uri", &login.redirect_uri)
        .append_pair("scope", &login.scopes)
        .append_pair("state", &pending.state)
        .append_pair("nonce", &pending.nonce)
        .append_pair("code_challenge", &pending.challenge())
        .append_pair("code_challenge_method", "S256");
    Ok((url.to_string(), pending))
}

/// Longest answer read from the token endpoint.
const MAX_TOKEN_ANSWER: u64 = 64 * 1024;

/// Finish a login: the callback's `state` must be the one this browser
/// kept; the code is exchanged (with the PKCE verifier) for an ID token,
/// which must verify and carry the nonce; then a session starts. Every
/// refusal is audited like a refused credential.
pub async fn oidc_login_finish(
    state: &AppState,
    pending: &PendingLogin,
    returned_state: &str,
    code: &str,
    source: &str,
) -> Result<(String, Session), Error> {
    let login = login_config(state)?.clone();
    let refuse = |why: String| async move {
        let ev = AuditEvent::new(state.now(), EventKind::AuthRefused, "anonymous")
            .outcome("refused")
            .detail(
                json!({"path": "/console/oidc/callback", "expected": "oidc login", "reason": why}),
            );
        identity::record_refusal(state, source, "auth.refused/console-oidc", &why, ev).await?;
        Err::<(String, Session), Error>(Error::Unauthenticated(why))
    };
    if sha256_hex(returned_state.as_bytes()) != sha256_hex(pending.state.as_bytes()) {
        return refuse(
            "this sign-in was not started from this browser (state does not match)".into(),
        )
        .await;
    }
    if code.is_empty() || code.len() > 4096 {
        return refuse("the identity provider sent no usable code".into()).await;
    }
    let secret = match &login.client_secret_file {
        None => None,
        Some(f) => {
            let dir = state.config_dir.clone().unwrap_or_default();
            let s = std::fs::read_to_string(dir.join(f)).map_err(|e| {
                Error::Internal(format!("approver_oidc.login.client_secret_file: {e}"))
            })?;
            Some(s.trim().to_string())
        }
    };
    let (code, verifier) = (code.to_string(), pending.verifier.clone());
    let exchanged =
        tokio::task::spawn_blocking(move || exchange(&login, &code, &verifier, secret.as_deref()))
            .await
            .map_err(|e| Error::Internal(e.to_string()))?;
    let id_token = match exchanged {
        Ok(t) => t,
        Err(why) => return refuse(why).await,
    };
    let Some(verifier) = &state.oidc else {
        return Err(Error::Internal(
            "approver_oidc is configured without its verifier".into(),
        ));
    };
    let id = match verifier.verify_login(&id_token, state.now(), &pending.nonce) {
        Ok(id) => id,
        Err(e) => return refuse(format!("the ID token was refused: {e}")).await,
    };
    // The same name rules as registered approvers, one spelling per person.
    let name = id.name.to_ascii_lowercase();
    if !super::admin::valid_approver_name(&name) {
        return refuse("the ID token's name is not a valid approver name".into()).await;
    }
    let principal = Principal::Approver(Voter {
        name,
        role: id.role,
        via: "oidc",
    });
    start_session(state, principal, source).await
}

/// The token request (RFC 6749 4.1.3 with RFC 7636's verifier); the ID
/// token, or why not (never the answer's body: it may hold tokens).
fn exchange(
    login: &crate::config::OidcLogin,
    code: &str,
    verifier: &str,
    secret: Option<&str>,
) -> Result<String, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(std::time::Duration::from_secs(10)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", login.redirect_uri.as_str()),
        ("client_id", login.client_id.as_str()),
        ("code_verifier", verifier),
    ];
    if let Some(s) = secret {
        form.push(("client_secret", s));
    }
    let mut resp = agent
        .post(&login.token_endpoint)
        .send_form(form)
        .map_err(|e| format!("the token endpoint could not be reached: {e}"))?;
    let status = resp.status().as_u16();
    if status != 200 {
        return Err(format!("the token endpoint answered {status}"));
    }
    let body = resp
        .body_mut()
        .with_config()
        .limit(MAX_TOKEN_ANSWER)
        .read_to_string()
        .map_err(|e| format!("the token endpoint's answer could not be read: {e}"))?;
    let v: serde_json::Value = serde_json::from_str(&body)
        .map_err(|_| "the token endpoint's answer is not JSON".to_string())?;
    v.get("id_token")
        .and_then(|t| t.as_str())
        .map(str::to_string)
        .ok_or_else(|| "the token endpoint's answer has no id_token".into())
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

    #[test]
    fn a_pending_login_survives_its_cookie_and_nothing_else_passes_for_one() {
        let p = PendingLogin::new();
        assert_eq!(PendingLogin::from_cookie(&p.to_cookie()), Some(p.clone()));
        assert_eq!(p.verifier.len(), 43);
        for bad in [
            "",
            "a.b.c",
            &format!("{}.{}", p.state, p.nonce),
            &format!("{}.x", p.to_cookie()),
            &p.to_cookie().replace('.', "!"),
        ] {
            assert_eq!(PendingLogin::from_cookie(bad), None, "{bad}");
        }
        // RFC 7636 appendix B's example verifier and challenge.
        let rfc = PendingLogin {
            verifier: "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk".into(),
            ..p
        };
        assert_eq!(
            rfc.challenge(),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }
}
