//! A small blocking client for the server's API: one method per call the
//! CLI makes, each answer read into the types of [`crate::api_types`].
//!
//! A refused call is an error naming the call, the HTTP status and the
//! server's message (`POST /v1/revocations: 409 Conflict: task … is already
//! revoked`); a refused policy pack's diagnostics go to stderr first, one
//! `file:line:column: message` each.

use crate::api_types::{
    Approval, ApprovalList, ApprovalTally, ApproverKey, ApproverList, AuditPage, Checkpoints,
    ErrorBody, Health, IncidentUpdated, KeyedHash, PepKey, PepList, Registered, Reloaded, Revoked,
    RollbackPlan, ShadowStatus, SignedCheckpoint, Svid, Task, TaskCredential, Upstreams, Verbatim,
};
use anyhow::{anyhow, Context, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

pub struct Client {
    agent: ureq::Agent,
    addr: String,
    token: String,
}

/// Percent-encode a query or path value.
pub fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Which tasks `GET /v1/tasks` lists.
pub struct TaskFilter {
    pub agent: Option<String>,
    pub incident: Option<String>,
    pub status: Option<String>,
    pub limit: usize,
}

/// Which entries `GET /v1/audit` returns.
#[derive(Default)]
pub struct AuditFilter {
    pub incident: Option<String>,
    pub task: Option<String>,
    pub agent: Option<String>,
}

/// The body of `POST /v1/incidents/{id}`: what to change (`None`: keep).
#[derive(Serialize)]
pub struct IncidentChange {
    pub status: Option<String>,
    pub class: Option<String>,
    pub severity: Option<String>,
    pub reason: Option<String>,
}

/// The body of `POST /v1/tasks`.
#[derive(Serialize)]
pub struct OpenTask<'a> {
    pub incident: IncidentRef<'a>,
    pub environment: &'a str,
    pub playbook: &'a str,
    pub intent: &'a str,
}

#[derive(Serialize)]
pub struct IncidentRef<'a> {
    pub id: &'a str,
    pub class: &'a str,
    pub severity: &'a str,
}

/// The body of `POST /v1/tasks/{id}/evidence`.
#[derive(Serialize)]
pub struct NewEvidence<'a> {
    pub resource: ResourceRef<'a>,
    pub kind: &'a str,
    /// Hex SHA-256 of `content`.
    pub sha256: String,
    pub content: &'a str,
}

#[derive(Serialize)]
pub struct ResourceRef<'a> {
    #[serde(rename = "type")]
    pub kind: &'a str,
    pub id: &'a str,
}

/// At most this many audit entries a page (the server's maximum).
const AUDIT_PAGE: usize = 1000;

enum Method {
    Get,
    Post(Value),
    Delete,
}

impl Client {
    pub fn new(conn: &crate::Conn) -> Result<Self> {
        let conn = conn.resolve()?;
        let token = match &conn.token {
            Some(t) => t.clone(),
            None => {
                let dir = conn
                    .data
                    .clone()
                    .unwrap_or_else(|| std::path::PathBuf::from("tollgate-data"));
                let p = dir.join("admin.token");
                std::fs::read_to_string(&p)
                    .with_context(|| format!("no TOLLGATE_TOKEN and cannot read {}", p.display()))?
                    .trim()
                    .to_string()
            }
        };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        Ok(Self {
            agent,
            addr: server_addr(&conn.addr)?,
            token,
        })
    }

    /// The same server with another bearer token: an agent's SVID or task
    /// credential, an approver's key.
    pub fn with_token(&self, token: &str) -> Self {
        Self {
            agent: self.agent.clone(),
            addr: self.addr.clone(),
            token: token.to_string(),
        }
    }

    /// `req` with the bearer token, or as it is.
    fn authorized<B>(&self, req: ureq::RequestBuilder<B>, bearer: bool) -> ureq::RequestBuilder<B> {
        if bearer {
            req.header("Authorization", &format!("Bearer {}", self.token))
        } else {
            req
        }
    }

    /// Make the call and answer the body of a success; a refusal is an error
    /// with the server's message. `bearer`: whether to send the token.
    fn call(&self, method: Method, path: &str, bearer: bool) -> Result<String> {
        let url = format!("{}{path}", self.addr);
        let (what, sent) = match method {
            Method::Get => (
                format!("GET {path}"),
                self.authorized(self.agent.get(&url), bearer).call(),
            ),
            Method::Delete => (
                format!("DELETE {path}"),
                self.authorized(self.agent.delete(&url), bearer).call(),
            ),
            Method::Post(body) => (
                format!("POST {path}"),
                self.authorized(self.agent.post(&url), bearer)
                    .send_json(&body),
            ),
        };
        let mut resp = sent.map_err(|e| unreachable(&self.addr, &what, &e))?;
        let status = resp.status();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        if status.is_success() {
            return Ok(text);
        }
        let message = refusal_message(&text);
        Err(anyhow!(
            "{what}: {status}: {message}{}",
            hint_for(status.as_u16(), &message, &self.token)
        ))
    }

    fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        parse(&self.call(Method::Get, path, true)?, "GET", path)
    }

    fn post<T: DeserializeOwned>(&self, path: &str, body: Value) -> Result<T> {
        parse(&self.call(Method::Post(body), path, true)?, "POST", path)
    }

    /// A POST whose answer the CLI does not read.
    fn post_ignoring_answer(&self, path: &str, body: Value) -> Result<()> {
        self.call(Method::Post(body), path, true).map(drop)
    }

    fn delete(&self, path: &str) -> Result<()> {
        self.call(Method::Delete, path, true).map(drop)
    }

    // Agents.

    pub fn register_agent(&self, spiffe_id: &str, owner: &str) -> Result<Verbatim<Registered>> {
        self.post(
            "/v1/agents",
            json!({"spiffe_id": spiffe_id, "owner": owner}),
        )
    }

    /// Exchange a join token for an SVID (no bearer token: the join token is
    /// the credential).
    pub fn attest(&self, join_token: &str) -> Result<Svid> {
        let path = "/v1/agents/attest";
        let body = json!({"join_token": join_token});
        parse(&self.call(Method::Post(body), path, false)?, "POST", path)
    }

    pub fn release_agent(&self, spiffe_id: &str, reason: Option<&str>) -> Result<()> {
        self.post_ignoring_answer(
            "/v1/agents/release",
            json!({"agent": spiffe_id, "reason": reason}),
        )
    }

    pub fn revoke_agent(&self, spiffe_id: &str, reason: Option<&str>) -> Result<Verbatim<Revoked>> {
        self.post(
            "/v1/revocations",
            json!({"agent": spiffe_id, "reason": reason}),
        )
    }

    // Tasks and incidents.

    /// Open a task (as an agent: the token is its SVID).
    pub fn open_task(&self, task: &OpenTask) -> Result<TaskCredential> {
        self.post("/v1/tasks", serde_json::to_value(task)?)
    }

    /// Record evidence for a task (the token is its credential).
    pub fn add_evidence(&self, task_id: &str, evidence: &NewEvidence) -> Result<()> {
        self.post_ignoring_answer(
            &format!("/v1/tasks/{}/evidence", encode(task_id)),
            serde_json::to_value(evidence)?,
        )
    }

    pub fn tasks(&self, filter: &TaskFilter) -> Result<Verbatim<Vec<Task>>> {
        let mut query = vec![format!("limit={}", filter.limit)];
        for (key, value) in [
            ("agent", &filter.agent),
            ("incident", &filter.incident),
            ("status", &filter.status),
        ] {
            if let Some(v) = value {
                query.push(format!("{key}={}", encode(v)));
            }
        }
        self.get(&format!("/v1/tasks?{}", query.join("&")))
    }

    pub fn task(&self, id: &str) -> Result<Verbatim<Task>> {
        self.get(&format!("/v1/tasks/{}", encode(id)))
    }

    pub fn rollback_plan(&self, task_id: &str) -> Result<Verbatim<RollbackPlan>> {
        self.get(&format!("/v1/tasks/{}/rollback", encode(task_id)))
    }

    pub fn revoke_task(&self, id: &str, reason: Option<&str>) -> Result<Verbatim<Revoked>> {
        self.post("/v1/revocations", json!({"task_id": id, "reason": reason}))
    }

    pub fn update_incident(
        &self,
        id: &str,
        change: &IncidentChange,
    ) -> Result<Verbatim<IncidentUpdated>> {
        self.post(
            &format!("/v1/incidents/{}", encode(id)),
            serde_json::to_value(change)?,
        )
    }

    // Operations.

    pub fn freeze(&self) -> Result<()> {
        self.post_ignoring_answer("/v1/freeze", json!({}))
    }

    pub fn unfreeze(&self) -> Result<()> {
        self.post_ignoring_answer("/v1/unfreeze", json!({}))
    }

    pub fn reload_policy(&self) -> Result<Verbatim<Reloaded>> {
        self.post("/v1/policies/reload", json!({}))
    }

    pub fn load_shadow(&self, path: &str) -> Result<Verbatim<ShadowStatus>> {
        self.post("/v1/policies/shadow", json!({"path": path}))
    }

    pub fn shadow(&self) -> Result<Verbatim<ShadowStatus>> {
        self.get("/v1/policies/shadow")
    }

    pub fn clear_shadow(&self) -> Result<Verbatim<ShadowStatus>> {
        parse(
            &self.call(Method::Delete, "/v1/policies/shadow", true)?,
            "DELETE",
            "/v1/policies/shadow",
        )
    }

    pub fn health(&self) -> Result<Health> {
        self.get("/healthz")
    }

    pub fn mcp_upstreams(&self) -> Result<Verbatim<Upstreams>> {
        self.get("/v1/mcp/upstreams")
    }

    pub fn peps(&self) -> Result<PepList> {
        self.get("/v1/peps")
    }

    pub fn add_pep(&self, name: &str) -> Result<Verbatim<PepKey>> {
        self.post("/v1/peps", json!({"name": name}))
    }

    pub fn remove_pep(&self, name: &str) -> Result<()> {
        self.delete(&format!("/v1/peps/{}", encode(name)))
    }

    // The audit log.

    /// The page of entries after `after`, each read as `E`.
    pub fn audit<E: DeserializeOwned>(
        &self,
        filter: &AuditFilter,
        after: u64,
    ) -> Result<AuditPage<E>> {
        let mut path = format!("/v1/audit?after={after}&limit={AUDIT_PAGE}");
        for (key, value) in [
            ("incident", &filter.incident),
            ("task", &filter.task),
            ("agent", &filter.agent),
        ] {
            if let Some(v) = value {
                path.push_str(&format!("&{key}={}", encode(v)));
            }
        }
        self.get(&path)
    }

    /// The newest signed checkpoint; the server signs one first if the log grew.
    pub fn checkpoint(&self) -> Result<Verbatim<SignedCheckpoint>> {
        self.get("/v1/audit/checkpoint")
    }

    pub fn checkpoints(&self) -> Result<Checkpoints> {
        self.get("/v1/audit/checkpoints")
    }

    /// The keyed hash a secret value is logged as.
    pub fn audit_hash(&self, value: &str) -> Result<KeyedHash> {
        self.post("/v1/audit/hash", json!({"value": value}))
    }

    // Approvers and approvals.

    pub fn approvers(&self) -> Result<ApproverList> {
        self.get("/v1/approvers")
    }

    pub fn add_approver(
        &self,
        name: &str,
        role: &str,
        expires_in_seconds: Option<i64>,
    ) -> Result<Verbatim<ApproverKey>> {
        let mut body = json!({"name": name, "role": role});
        if let Some(secs) = expires_in_seconds {
            body["expires_in_seconds"] = json!(secs);
        }
        self.post("/v1/approvers", body)
    }

    pub fn remove_approver(&self, name: &str) -> Result<()> {
        self.delete(&format!("/v1/approvers/{}", encode(name)))
    }

    /// Disable (refuse the key) or enable an approver.
    pub fn set_approver_disabled(&self, name: &str, disabled: bool) -> Result<()> {
        let verb = if disabled { "disable" } else { "enable" };
        self.post_ignoring_answer(&format!("/v1/approvers/{}/{verb}", encode(name)), json!({}))
    }

    /// Approvals with this status (`all`: every one).
    pub fn approvals(&self, status: &str) -> Result<ApprovalList> {
        self.get(&format!("/v1/approvals?status={}", encode(status)))
    }

    pub fn approval(&self, id: &str) -> Result<Verbatim<Approval>> {
        self.get(&format!("/v1/approvals/{}", encode(id)))
    }

    /// Vote on an approval (the token is the approver's key).
    pub fn vote(&self, id: &str, approve: bool, reason: &str) -> Result<Verbatim<ApprovalTally>> {
        self.post(
            &format!("/v1/approvals/{}/decision", encode(id)),
            json!({"approve": approve, "reason": reason}),
        )
    }
}

/// Read a success's body as `T`.
fn parse<T: DeserializeOwned>(text: &str, method: &str, path: &str) -> Result<T> {
    serde_json::from_str(text)
        .map_err(|e| anyhow!("{method} {path}: unexpected answer from the server: {e}"))
}

/// The server's message in an error answer (the whole body when it is not
/// the API's error shape). Diagnostics of a refused pack go to stderr.
/// Check an address the way every command will use it.
pub fn check_addr(addr: &str) -> Result<()> {
    server_addr(addr).map(|_| ())
}

/// `--addr` as a base URL: a scheme is required (`127.0.0.1:8181` alone
/// would be taken for a URL scheme), and a trailing `/` is dropped.
fn server_addr(addr: &str) -> Result<String> {
    let trimmed = addr.trim().trim_end_matches('/');
    let parsed = url::Url::parse(trimmed).ok();
    match parsed {
        Some(u) if (u.scheme() == "http" || u.scheme() == "https") && u.host().is_some() => {
            Ok(trimmed.to_string())
        }
        _ if !trimmed.contains("://") => Err(anyhow!(
            "--addr {addr:?} has no scheme: use http://{trimmed} (or set TOLLGATE_ADDR)"
        )),
        _ => Err(anyhow!(
            "--addr {addr:?} is not an http:// or https:// address of a Tollgate server"
        )),
    }
}

/// A call that never got an answer: say where we tried and what to check,
/// in one line.
fn unreachable(addr: &str, what: &str, e: &ureq::Error) -> anyhow::Error {
    match e {
        ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => anyhow!(
            "{what}: cannot connect to {addr} (connection refused): is `tollgate serve` running there? Point --addr or TOLLGATE_ADDR at it"
        ),
        ureq::Error::HostNotFound => anyhow!(
            "{what}: cannot resolve the host of {addr}: check --addr or TOLLGATE_ADDR"
        ),
        ureq::Error::Timeout(_) => anyhow!(
            "{what}: {addr} did not answer in time: is it a Tollgate server, and is it reachable?"
        ),
        other => anyhow!("{what}: cannot reach {addr}: {other}"),
    }
}

/// A suggestion after a refusal the caller can fix, from the kind of token
/// sent (the prefixes say what a Tollgate token is).
fn hint_for(status: u16, message: &str, token: &str) -> &'static str {
    if status != 401 || !message.contains("admin token") {
        return "";
    }
    match token.get(..4) {
        Some("tgr_") => " (this is an approver key; admin commands need the admin token: run them without TOLLGATE_TOKEN set, or with --token set to the admin token)",
        Some("tgp_") => " (this is a PEP key, for AuthZEN only; admin commands need the admin token)",
        _ => " (the admin token is in <data>/admin.token; pass it with --token, TOLLGATE_TOKEN or --data)",
    }
}

fn refusal_message(text: &str) -> String {
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
    };
    let Ok(ErrorBody { error }) = ErrorBody::deserialize(&body) else {
        return body.to_string();
    };
    for d in &error.diagnostics {
        eprintln!("{}:{}:{}: {}", d.file, d.line, d.column, d.message);
    }
    error.message.unwrap_or_else(|| body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_reads_as_the_servers_message_or_its_whole_body() {
        let api = r#"{"error":{"code":"conflict","message":"task t is already revoked"}}"#;
        assert_eq!(refusal_message(api), "task t is already revoked");
        assert_eq!(refusal_message("bad gateway"), r#""bad gateway""#);
        assert_eq!(refusal_message(""), "null");
        assert_eq!(refusal_message(r#"{"other":1}"#), r#"{"other":1}"#);
    }

    #[test]
    fn an_address_needs_its_scheme() {
        assert_eq!(
            server_addr("http://127.0.0.1:8181/").unwrap(),
            "http://127.0.0.1:8181"
        );
        assert_eq!(
            server_addr("https://gw.acme.test").unwrap(),
            "https://gw.acme.test"
        );
        let e = server_addr("127.0.0.1:8181").unwrap_err().to_string();
        assert!(
            e.contains("no scheme") && e.contains("http://127.0.0.1:8181"),
            "{e}"
        );
        let e = server_addr("ftp://x").unwrap_err().to_string();
        assert!(e.contains("not an http"), "{e}");
    }

    #[test]
    fn an_approver_key_on_an_admin_command_is_named() {
        assert!(hint_for(401, "invalid admin token", "tgr_abc").contains("approver key"));
        assert!(hint_for(401, "invalid admin token", "tgp_abc").contains("PEP key"));
        assert!(hint_for(401, "invalid admin token", "nonsense").contains("admin.token"));
        assert_eq!(hint_for(403, "invalid admin token", "tgr_abc"), "");
        assert_eq!(hint_for(401, "task t is revoked", "tgr_abc"), "");
    }

    #[test]
    fn values_are_percent_encoded() {
        assert_eq!(encode("bob@acme.test"), "bob%40acme.test");
        assert_eq!(encode("a-b_c.d~e"), "a-b_c.d~e");
        assert_eq!(encode("x\u{1b}/y"), "x%1B%2Fy");
    }
}
