//! Who is calling: extractors for each kind of caller, and the JSON body
//! extractor that turns every malformed body into our error shape.
//!
//! Refused credentials are audited (`auth.refused`) before the 401 goes out,
//! so probing leaves a trace; nothing else is written.

use crate::api::error::ApiError;
use crate::service::identity;
use crate::state::AppState;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use tollgate_audit::AuditEvent;
use tollgate_core::{sha256_hex, Agent, Task};
use tollgate_identity::{TaskClaims, VerifiedSvid};
use tollgate_store::{Batch, Pep};

pub use crate::state::Shared;

fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    // RFC 7235: the scheme name is case-insensitive.
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Longest reason kept in a refusal entry: a forged token's `kid` or `sub`
/// is quoted in it, and an attacker chooses its length.
const MAX_REASON: usize = 256;

fn refusal_event(
    state: &AppState,
    parts: &Parts,
    who: &str,
    err: &ApiError,
) -> (String, AuditEvent) {
    let mut reason = err.to_string();
    if reason.len() > MAX_REASON {
        let mut cut = MAX_REASON;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
        reason.push('…');
    }
    let ev = AuditEvent::new(
        state.now(),
        tollgate_core::EventKind::AuthRefused,
        "anonymous",
    )
    .outcome("refused")
    .detail(serde_json::json!({"path": parts.uri.path(), "expected": who, "reason": reason}));
    (reason, ev)
}

/// Audit a refused credential that anyone could have made up (a forged or
/// unknown token), then produce the refusal. Such refusals are aggregated
/// per source and second (`refusals.rs`): making them up costs nothing.
async fn refuse(state: &AppState, parts: &Parts, who: &str, err: ApiError) -> ApiError {
    let (reason, ev) = refusal_event(state, parts, who, &err);
    let kind = format!("auth.refused/{who}");
    match identity::record_refusal(state, &peer(parts), &kind, &reason, ev).await {
        Ok(()) => err,
        Err(e) => e.into(),
    }
}

/// Audit the refusal of a credential that verified (a genuine SVID of a
/// revoked agent, a credential of a closed task, a disabled approver's key),
/// each in its own entry before the answer: only a holder of a real
/// credential can cause one, and who tried what must not be summarised away.
async fn refuse_verified(state: &AppState, parts: &Parts, who: &str, err: ApiError) -> ApiError {
    let (_, ev) = refusal_event(state, parts, who, &err);
    match state.store.commit(Batch::audit_only(ev)).await {
        Ok(_) => err,
        Err(e) => e.into(),
    }
}

/// The source an address counts as: an IPv4 address itself, an IPv6
/// address its /64 (one host commonly holds a whole /64, so counting single
/// addresses would let it dodge aggregation by rotating them).
fn source_of(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

/// Clock skew allowed between an SVID's `iat` and the agent's registration:
/// none for Tollgate's own SVIDs (one clock), the token leeway for an
/// external issuer's, whose clock may run behind.
fn registration_slack(svid: &VerifiedSvid) -> i64 {
    if svid.external {
        30
    } else {
        0
    }
}

/// The caller's address, as an extractor.
pub struct Source(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Source {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Source(peer(parts)))
    }
}

/// The caller's address, the source refusals are counted by; `unknown`
/// when the server was not started with connection info (in-process tests).
pub fn peer(parts: &Parts) -> String {
    parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| source_of(c.0.ip()))
        .unwrap_or_else(|| "unknown".into())
}

/// The admin, by the bearer admin token.
pub struct Admin;

impl FromRequestParts<Shared> for Admin {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, ApiError> {
        // Compare hashes, not secrets: the comparison then leaks nothing
        // useful about the token through timing.
        match bearer(parts) {
            Some(t) if sha256_hex(t.as_bytes()) == state.admin_token_hash => Ok(Admin),
            Some(_) => Err(refuse(
                state,
                parts,
                "admin",
                ApiError::Unauthorized("invalid admin token".into()),
            )
            .await),
            None => Err(ApiError::Unauthorized("admin bearer token required".into())),
        }
    }
}

/// A registered agent, by a JWT-SVID.
pub struct AgentSvid {
    pub svid: VerifiedSvid,
    pub agent: Agent,
}

impl FromRequestParts<Shared> for AgentSvid {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, ApiError> {
        let Some(token) = bearer(parts) else {
            return Err(ApiError::Unauthorized("bearer JWT-SVID required".into()));
        };
        let svid = match state.tokens.verify_svid(token, state.now()) {
            Ok(s) => s,
            Err(e) => {
                return Err(refuse(
                    state,
                    parts,
                    "svid",
                    ApiError::Unauthorized(format!("invalid svid: {e}")),
                )
                .await)
            }
        };
        let id = svid.spiffe_id.to_string();
        match state.store.agent(&id).await? {
            None => Err(refuse_verified(
                state,
                parts,
                "svid",
                ApiError::Unauthorized(format!("agent {id} is not registered")),
            )
            .await),
            Some(a) if a.revoked => Err(refuse_verified(
                state,
                parts,
                "svid",
                ApiError::Forbidden(format!("agent {id} is revoked")),
            )
            .await),
            // A registration starts at `created_at`: an SVID issued before
            // it belongs to an earlier registration (one that may have been
            // revoked, its SVID stolen) and does not carry over.
            Some(agent) if svid.iat.is_some_and(|iat| iat.saturating_add(registration_slack(&svid)) < agent.created_at) => Err(refuse_verified(
                state,
                parts,
                "svid",
                ApiError::Unauthorized(format!(
                    "this SVID was issued before agent {id} was last registered; attest with the new join token"
                )),
            )
            .await),
            Some(agent) => Ok(AgentSvid { svid, agent }),
        }
    }
}

/// An agent acting within a live task, by its task credential. The task is
/// read from the store on every request: that read is what makes close and
/// revocation take effect on the very next call.
pub struct TaskAuth {
    pub claims: TaskClaims,
    pub task: Task,
    pub agent: Agent,
}

impl FromRequestParts<Shared> for TaskAuth {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, ApiError> {
        let Some(token) = bearer(parts) else {
            return Err(ApiError::Unauthorized(
                "bearer task credential required".into(),
            ));
        };
        let now = state.now();
        let claims = match state.tokens.verify_task_credential(token, now) {
            Ok(c) => c,
            Err(e) => {
                return Err(refuse(
                    state,
                    parts,
                    "task credential",
                    ApiError::Unauthorized(format!("invalid task credential: {e}")),
                )
                .await)
            }
        };
        // The task, its whole chain of parents and the agent, in one read.
        let (lineage, agent) = state
            .store
            .credential_holder(&claims.task_id, &claims.sub)
            .await?;
        let lineage = match lineage {
            Some(l) if l.task.agent == claims.sub => l,
            _ => {
                return Err(refuse_verified(
                    state,
                    parts,
                    "task credential",
                    ApiError::Unauthorized("task credential names no task of this agent".into()),
                )
                .await)
            }
        };
        let task = &lineage.task;
        let dead = if !task.is_live(now) {
            Some(match &task.status_reason {
                Some(r) => format!("task {} is {}: {r}", task.id, task.status),
                None if task.status == tollgate_core::TaskStatus::Active => {
                    format!("task {} has expired", task.id)
                }
                None => format!("task {} is {}", task.id, task.status),
            })
        } else {
            // A delegated task lives only while its whole chain of parents does.
            lineage
                .dead()
                .map(|why| format!("task {} cannot act: {why}", task.id))
        };
        if let Some(why) = dead {
            state.tokens.forget_task_credential(token);
            return Err(refuse_verified(
                state,
                parts,
                "task credential",
                ApiError::Unauthorized(why),
            )
            .await);
        }
        let task = lineage.task;
        let agent = match agent {
            Some(a) if !a.revoked => a,
            _ => {
                state.tokens.forget_task_credential(token);
                return Err(refuse_verified(
                    state,
                    parts,
                    "task credential",
                    ApiError::Unauthorized(format!("agent {} is revoked", claims.sub)),
                )
                .await);
            }
        };
        Ok(TaskAuth {
            claims,
            task,
            agent,
        })
    }
}

/// A policy enforcement point, by its PEP key.
pub struct PepAuth(pub Pep);

impl FromRequestParts<Shared> for PepAuth {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, ApiError> {
        let Some(key) = bearer(parts) else {
            return Err(ApiError::Unauthorized("bearer PEP key required".into()));
        };
        match state
            .store
            .pep_by_key_hash(&sha256_hex(key.as_bytes()))
            .await?
        {
            Some(p) => Ok(PepAuth(p)),
            None => Err(refuse(
                state,
                parts,
                "pep",
                ApiError::Unauthorized("invalid PEP key".into()),
            )
            .await),
        }
    }
}

/// `Json<T>` whose rejections use the API's error shape.
pub struct ApiJson<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(rej) => Err(match rej.status() {
                StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
                StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                    ApiError::UnsupportedMediaType("expected content-type: application/json".into())
                }
                _ => match rej {
                    JsonRejection::JsonDataError(e) => ApiError::BadRequest {
                        code: "invalid_body",
                        message: e.body_text(),
                    },
                    other => ApiError::BadRequest {
                        code: "invalid_json",
                        message: other.body_text(),
                    },
                },
            }),
        }
    }
}

/// `Path<T>` whose rejections use the API's error shape, and whose every
/// segment follows the id rule (`tollgate_core::text`) before it is parsed.
pub struct ApiPath<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let invalid = |message: String| ApiError::BadRequest {
            code: "invalid_path",
            message,
        };
        let raw = axum::extract::RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|e| invalid(e.body_text()))?;
        for (name, value) in &raw {
            tollgate_core::text::check_id(value)
                .map_err(|e| invalid(format!("path parameter {name}: id {e}")))?;
        }
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(ApiPath(v)),
            Err(e) => Err(invalid(e.body_text())),
        }
    }
}

/// `Query<T>` whose rejections use the API's error shape. Every query value
/// is an id, an enum or a number, so each must follow the id rule too.
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let invalid = |message: String| ApiError::BadRequest {
            code: "invalid_query",
            message,
        };
        let query = parts.uri.query().unwrap_or_default();
        let pairs: Vec<(String, String)> =
            serde_urlencoded::from_str(query).map_err(|e| invalid(format!("query string: {e}")))?;
        for (name, value) in pairs.iter().filter(|(_, v)| !v.is_empty()) {
            tollgate_core::text::check_id(value)
                .map_err(|e| invalid(format!("query parameter {}: id {e}", name.escape_debug())))?;
        }
        serde_urlencoded::from_str::<T>(query)
            .map(ApiQuery)
            .map_err(|e| invalid(format!("query string: {e}")))
    }
}

/// A human approver: by API key (`tollgate approver add`) or by an OIDC ID
/// token of the configured issuer. Agent SVIDs and task credentials are
/// never accepted here, which is the first half of "an agent never approves".
pub struct ApproverAuth(pub crate::service::approvals::Voter);

async fn approver_from(
    state: &AppState,
    token: &str,
) -> Result<Option<crate::service::approvals::Voter>, ApiError> {
    Ok(identity::approver_by_credential(state, token).await?)
}

impl FromRequestParts<Shared> for ApproverAuth {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, ApiError> {
        let Some(token) = bearer(parts) else {
            return Err(ApiError::Unauthorized(
                "bearer approver key or OIDC ID token required".into(),
            ));
        };
        match approver_from(state, token).await {
            Err(ApiError::Unauthorized(why)) => {
                Err(refuse_verified(state, parts, "approver", ApiError::Unauthorized(why)).await)
            }
            Err(e) => Err(e),
            Ok(Some(v)) => Ok(ApproverAuth(v)),
            Ok(None) => Err(refuse(
                state,
                parts,
                "approver",
                ApiError::Unauthorized("not an approver credential".into()),
            )
            .await),
        }
    }
}

/// Who may look at approvals: the admin, any approver, or the agent whose
/// task the approval belongs to.
pub enum Viewer {
    Admin,
    Approver(crate::service::approvals::Voter),
    Agent { task_id: String },
}

impl FromRequestParts<Shared> for Viewer {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, ApiError> {
        let Some(token) = bearer(parts) else {
            return Err(ApiError::Unauthorized("bearer token required".into()));
        };
        if sha256_hex(token.as_bytes()) == state.admin_token_hash {
            return Ok(Viewer::Admin);
        }
        match approver_from(state, token).await {
            Err(ApiError::Unauthorized(why)) => {
                return Err(
                    refuse_verified(state, parts, "viewer", ApiError::Unauthorized(why)).await,
                )
            }
            Err(e) => return Err(e),
            Ok(Some(v)) => return Ok(Viewer::Approver(v)),
            Ok(None) => {}
        }
        // Least privilege: a PEP decides through AuthZEN and learns an
        // approval's outcome by evaluating again; it never reads approvals,
        // whose parameters and evidence are for the people deciding.
        if state
            .store
            .pep_by_key_hash(&sha256_hex(token.as_bytes()))
            .await?
            .is_some()
        {
            return Err(refuse_verified(
                state,
                parts,
                "viewer",
                ApiError::Forbidden(
                    "a PEP key may not read approvals; evaluate the request again to learn its outcome".into(),
                ),
            )
            .await);
        }
        if state
            .tokens
            .verify_task_credential(token, state.now())
            .is_ok()
        {
            let auth = TaskAuth::from_request_parts(parts, state).await?;
            return Ok(Viewer::Agent {
                task_id: auth.task.id,
            });
        }
        Err(refuse(
            state,
            parts,
            "viewer",
            ApiError::Unauthorized("not a credential that may view approvals".into()),
        )
        .await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_sources_count_by_their_slash_64() {
        let a: std::net::IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: std::net::IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: std::net::IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(source_of(a), source_of(b));
        assert_ne!(source_of(a), source_of(c));
        assert_eq!(source_of("10.1.2.3".parse().unwrap()), "10.1.2.3");
        assert_eq!(source_of("::ffff:10.1.2.3".parse().unwrap()), "10.1.2.3");
    }
}
