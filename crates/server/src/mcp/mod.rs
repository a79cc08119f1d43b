//! The MCP gateway: Tollgate as the MCP server an agent talks to, in front
//! of the real tool servers.
//!
//! An agent connects to `/mcp` (streamable HTTP) with its task credential
//! as bearer token. Every HTTP request is authenticated the way the REST
//! API authenticates (`TaskAuth`), so closing or revoking the task ends the
//! agent's MCP access on its next request, inside an open session too.
//!
//! - `tools/list` offers the tools bound in the catalog whose action is in
//!   the task's scope and its playbook, and that some policy could permit
//!   this agent. It only trims the menu: every call is still decided.
//! - `tools/call` is decided like `/v1/authorize`, with the call's
//!   arguments as the Cedar context's `parameters` and the resource named
//!   by the catalog's `resource_argument`; see [`call`].
//!
//! Invariants:
//! - No call reaches an upstream without an allowing decision committed to
//!   the audit log first, and every forwarded call's outcome is recorded
//!   as the executed action (`action.result`).
//! - The agent never sees the credentials Tollgate injects upstream
//!   ([`upstream`] owns them and scrubs answers).
//! - This module holds no policy of its own: what is allowed is decided in
//!   `decide.rs` by the pack, exactly as for the REST API.

pub mod call;
pub mod held;
pub mod sessions;

use crate::api::auth::{Shared, TaskAuth};
use crate::api::error::ApiError;
use axum::extract::{FromRequestParts, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, Implementation, ListToolsResult,
    PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler};
use std::sync::Arc;
use std::time::Duration;
use tollgate_audit::AuditEvent;
use tollgate_core::SpiffeId;
use tollgate_policy::AgentFacts;
use tollgate_store::Batch;

pub use crate::upstream::{
    handshake_error, install_crypto_provider, mcp_http_client, UpstreamError, Upstreams,
};

/// The gateway's own tool: run the task's rollback plan through the gateway.
pub const ROLLBACK_TOOL: &str = "tollgate_rollback";

/// The `/mcp` endpoint: rmcp's streamable-HTTP service behind our credential check.
pub fn router(state: Shared) -> axum::Router {
    use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
    use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
    let gateway = Gateway {
        state: state.clone(),
    };
    // Host checks guard unauthenticated local servers against DNS
    // rebinding; every request here carries a bearer credential a rebinding
    // page cannot have, and the gateway is reached by whatever name the
    // operator gives it.
    let mut config = StreamableHttpServerConfig::default().disable_allowed_hosts();
    let idle = std::time::Duration::from_secs(state.config.mcp.session_idle_seconds);
    let mut sessions = LocalSessionManager::default();
    // rmcp closes a session after this long without an event; a call held
    // for approval without a progress token produces none. The session's
    // row in the store outlives this process's copy: another request
    // restores it.
    sessions.session_config.keep_alive = Some(idle);
    let sessions = Arc::new(sessions);
    let registry = Arc::new(sessions::Registry::new(state.clone(), sessions.clone()));
    // Sessions live in the store: a replica without the session in memory
    // replays its handshake from there (rmcp's restore).
    config.session_store = Some(registry.clone());
    let service = StreamableHttpService::new(move || Ok(gateway.clone()), sessions, config);
    let guard = Guard { state, registry };
    axum::Router::new()
        .fallback_service(service)
        .layer(axum::middleware::from_fn_with_state(guard, authenticate))
}

#[derive(Clone)]
struct Guard {
    state: Shared,
    registry: Arc<sessions::Registry>,
}

const SESSION_HEADER: &str = "mcp-session-id";

/// Audit and refuse a session id presented with another task's credential:
/// a session id is a bearer handle to a stream of answers, so it is bound
/// to its task, as the MCP specification asks of servers.
async fn refuse_foreign_session(state: &Shared, auth: &TaskAuth) -> Response {
    let ev = AuditEvent::new(
        state.now(),
        tollgate_core::EventKind::AuthRefused,
        auth.agent.spiffe_id.clone(),
    )
    .agent(auth.agent.spiffe_id.clone())
    .task(auth.task.id.clone())
    .outcome("refused")
    .detail(serde_json::json!({"reason": "MCP session belongs to another task", "path": "/mcp"}));
    if let Err(e) = state.store.commit(Batch::audit_only(ev)).await {
        return ApiError::from(e).into_response();
    }
    ApiError::Forbidden("this MCP session belongs to another task".into()).into_response()
}

/// Not a session any replica knows (never opened, ended, idled out): say
/// so the way the MCP transport does, so the client initialises anew.
fn unknown_session() -> Response {
    ApiError::NotFound("unknown MCP session".into()).into_response()
}

/// The largest body a request to `/mcp` may carry: rmcp's limit (4 MiB),
/// applied here because the body is read here (`authenticate`).
const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

fn is_length_limit(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// Authenticate every request to `/mcp` with the task credential; the
/// handler finds the caller in the request's extensions.
async fn authenticate(State(guard): State<Guard>, req: Request, next: Next) -> Response {
    let (mut parts, body) = req.into_parts();
    let auth = match TaskAuth::from_request_parts(&mut parts, &guard.state).await {
        Ok(auth) => auth,
        Err(e) => return e.into_response(),
    };
    let session = match parts.headers.get(SESSION_HEADER) {
        None => None,
        Some(v) => match v.to_str() {
            // Hostile input: bounded before it reaches the store.
            Ok(id) if sessions::plausible_id(id) => Some(id.to_string()),
            _ => return unknown_session(),
        },
    };
    if let Some(id) = &session {
        match guard.registry.check(id, &auth.task.id).await {
            Ok(sessions::Known::Own) => {}
            Ok(sessions::Known::Unknown) => return unknown_session(),
            Ok(sessions::Known::Other) => return refuse_foreign_session(&guard.state, &auth).await,
            Err(e) => return ApiError::from(e).into_response(),
        }
    }
    // Read the whole body before rmcp sees it. rmcp answers some requests
    // (no `Accept` header) without reading theirs, and hyper then closes the
    // connection, which a client that reuses it (keep-alive) meets as a
    // reset on its next request. The bound is rmcp's own.
    let body = match axum::body::to_bytes(body, MAX_REQUEST_BYTES).await {
        Ok(bytes) => axum::body::Body::from(bytes),
        Err(e) if is_length_limit(&e) => return ApiError::PayloadTooLarge.into_response(),
        Err(e) => {
            return ApiError::bad_request(format!("the request body could not be read: {e}"))
                .into_response()
        }
    };
    let task_id = auth.task.id.clone();
    let closing = parts.method == http::Method::DELETE;
    parts.extensions.insert(Arc::new(auth));
    let gone = ConnectionGone::default();
    parts.extensions.insert(gone.clone());
    let mut response = next.run(Request::from_parts(parts, body)).await;
    match (&session, response.headers().get(SESSION_HEADER)) {
        (None, Some(new)) => {
            let registered = match new.to_str() {
                Ok(new) => guard.registry.register(new, &task_id).await,
                Err(_) => Err(crate::service::Error::Internal(
                    "rmcp made a session id that is not text".into(),
                )),
            };
            if let Err(e) = registered {
                // A session no replica could find is not handed out.
                return ApiError::from(e).into_response();
            }
        }
        (Some(id), _) if closing && response.status().is_success() => {
            if let Err(e) = guard.registry.end(id).await {
                return ApiError::from(e).into_response();
            }
        }
        _ => {}
    }
    // rmcp answers a session termination 202, which MCP clients (the
    // official Python SDK among them) take for a failure: 200 and 204 mean
    // "terminated". Nothing is pending after a DELETE, so say 204.
    if closing && response.status() == http::StatusCode::ACCEPTED {
        *response.status_mut() = http::StatusCode::NO_CONTENT;
    }
    let response = in_error_shape(response).await;
    response.map(|body| {
        axum::body::Body::new(WatchedBody {
            inner: body,
            gone: Some(gone),
        })
    })
}

/// rmcp answers transport errors (no `Accept` header, a bad session
/// header, a body that is not JSON-RPC) in plain text; every error of
/// Tollgate's HTTP surface is `{"error": {"code", "message"}}`, so those
/// are rewritten, their text kept (cut at 2 KiB) as the message.
async fn in_error_shape(response: Response) -> Response {
    let status = response.status();
    let mut headers = response.headers().clone();
    headers.remove(http::header::CONTENT_TYPE);
    headers.remove(http::header::CONTENT_LENGTH);
    let is_json = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let text = match axum::body::to_bytes(response.into_body(), 64 * 1024).await {
        Ok(b) => String::from_utf8_lossy(&b[..b.len().min(2048)]).into_owned(),
        Err(_) => String::new(),
    };
    let code = match status.as_u16() {
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
        406 => "not_acceptable",
        409 => "conflict",
        413 => "payload_too_large",
        415 => "unsupported_media_type",
        422 => "unprocessable",
        503 => "unavailable",
        s if s >= 500 => "internal",
        _ => "bad_request",
    };
    let message = if text.trim().is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text.trim().to_string()
    };
    let body = serde_json::json!({"error": {"code": code, "message": message}});
    let mut rewritten = (status, axum::Json(body)).into_response();
    // Keep what the transport said besides its body (`Allow` on a 405, …).
    for (name, value) in headers.iter() {
        rewritten.headers_mut().insert(name.clone(), value.clone());
    }
    rewritten
}

/// Cancelled when the HTTP response of the request that carried it is
/// dropped before it ended: the client closed the connection. A call held
/// for approval watches it, so an approval granted after the client left
/// executes nothing (see `call::hold`).
#[derive(Clone, Default)]
pub struct ConnectionGone(pub tokio_util::sync::CancellationToken);

/// A response body that cancels its [`ConnectionGone`] if it is dropped
/// before its end (hyper drops the body of a connection that closed).
struct WatchedBody {
    inner: axum::body::Body,
    /// `None` once the body ended normally.
    gone: Option<ConnectionGone>,
}

impl http_body::Body for WatchedBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(None) = polled {
            self.gone = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for WatchedBody {
    fn drop(&mut self) {
        if let Some(gone) = self.gone.take() {
            gone.0.cancel();
        }
    }
}

#[derive(Clone)]
pub struct Gateway {
    state: Shared,
}

fn caller(ctx: &RequestContext<RoleServer>) -> Result<Arc<TaskAuth>, ErrorData> {
    ctx.extensions
        .get::<http::request::Parts>()
        .and_then(|p| p.extensions.get::<Arc<TaskAuth>>())
        .cloned()
        // Unreachable through `router`, which authenticates first: refuse anyway.
        .ok_or_else(|| ErrorData::invalid_request("no task credential on this request", None))
}

/// The upstream's live connection, auditing a restart if getting it took one.
pub async fn live_audited(
    state: &Shared,
    upstream: &crate::upstream::Upstream,
    task: Option<&tollgate_core::Task>,
) -> Result<crate::upstream::Live, UpstreamError> {
    let live = upstream.live(state.upstreams.call_timeout).await?;
    if live.restarted {
        audit_restart(state, &upstream.name, task).await;
    }
    Ok(live)
}

/// Audit that an upstream was (re)started because its connection had died.
pub(crate) async fn audit_restart(
    state: &Shared,
    server: &str,
    task: Option<&tollgate_core::Task>,
) {
    let mut ev = AuditEvent::new(
        state.now(),
        tollgate_core::EventKind::McpUpstreamRestarted,
        "tollgate",
    )
    .outcome("restarted")
    .detail(serde_json::json!({"server": server}));
    if let Some(t) = task {
        ev = ev.task(t.id.clone()).agent(t.agent.clone());
    }
    if let Err(e) = state.store.commit(Batch::audit_only(ev)).await {
        tracing::error!(error = %e, server, "could not audit an upstream restart");
    }
    tracing::warn!(
        server,
        "upstream MCP server connection was dead; reconnected"
    );
}

impl Gateway {
    /// The tools this task may be offered, with the upstreams' own descriptions.
    async fn offered(&self, auth: &TaskAuth) -> Vec<Tool> {
        let state = &self.state;
        let pack = state.pack.load_full();
        let Ok(spiffe_id) = SpiffeId::parse(&auth.agent.spiffe_id) else {
            return vec![];
        };
        let agent = AgentFacts {
            spiffe_id: &spiffe_id,
            owner: &auth.agent.owner,
        };
        // Every upstream is asked at once, and one that is slow to connect
        // is left out after a few seconds (its connection goes on in the
        // background): one stuck server must not stall every agent's list.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let asked: Vec<_> = state
            .upstreams
            .iter()
            .map(|upstream| {
                let (state, upstream, task) = (state.clone(), upstream.clone(), auth.task.clone());
                tokio::spawn(async move { live_audited(&state, &upstream, Some(&task)).await })
            })
            .collect();
        let mut tools = Vec::new();
        for (upstream, handle) in state.upstreams.iter().zip(asked) {
            // One deadline for all of them: N stuck upstreams cost 5 s, not 5 s each.
            let live = match tokio::time::timeout_at(deadline, handle).await {
                Ok(Ok(Ok(l))) => l,
                Ok(Ok(Err(e))) => {
                    // One unreachable upstream hides its tools, not the others'.
                    tracing::warn!(error = %e, "upstream left out of tools/list");
                    continue;
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, server = %upstream.name, "tools/list task failed");
                    continue;
                }
                Err(_) => {
                    tracing::warn!(server = %upstream.name, "upstream still connecting; left out of this tools/list");
                    continue;
                }
            };
            for tool in live.tools.iter() {
                let Some((action, _, binding)) = pack.catalog().by_tool(&tool.name) else {
                    continue;
                };
                let in_scope = auth
                    .task
                    .scope
                    .actions
                    .as_ref()
                    .is_none_or(|a| a.contains(action));
                let in_playbook = pack
                    .playbooks()
                    .is_none_or(|b| b.offers(&auth.task.playbook, action));
                if binding.server == upstream.name
                    && in_scope
                    && in_playbook
                    && pack.may_permit(agent, action)
                {
                    tools.push(tool.clone());
                }
            }
        }
        tools.push(rollback_tool());
        tools
    }
}

fn rollback_tool() -> Tool {
    let schema = serde_json::json!({
        "type": "object",
        "properties": {
            "request_id": {
                "type": "string",
                "description": "Undo only this executed action; default: every step of the task's rollback plan not yet undone, newest first."
            }
        },
        "additionalProperties": false
    });
    let schema = match schema {
        serde_json::Value::Object(m) => m,
        _ => serde_json::Map::new(),
    };
    Tool::new(
        ROLLBACK_TOOL,
        "Undo this task's reversible actions by running their compensations (from Tollgate's rollback plan). Each compensation is authorised and audited like any other call.",
        schema,
    )
}

impl ServerHandler for Gateway {
    fn get_info(&self) -> ServerConfig {
        let capabilities = ServerCapabilities::builder()
            .enable_tools()
            .enable_tool_list_changed()
            .build();
        ServerConfig::new(capabilities)
            .with_server_info(Implementation::new("tollgate", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Tollgate governs these tools: every call is authorised against your task and audited. \
                 A call that needs human approval is held open (with progress notifications) until it is decided.",
            )
    }

    async fn on_initialized(&self, ctx: rmcp::service::NotificationContext<RoleServer>) {
        // Told when an upstream's tools change, so the agent lists again;
        // only while its task can still live (a notification also keeps an
        // idle session open, so a dead task's session must not get them).
        let auth = ctx
            .extensions
            .get::<http::request::Parts>()
            .and_then(|p| p.extensions.get::<Arc<TaskAuth>>());
        if let Some(auth) = auth {
            self.state
                .upstreams
                .agents
                .add(ctx.peer.clone(), auth.task.max_expires_at);
        }
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let auth = caller(&ctx)?;
        Ok(ListToolsResult::with_all_items(self.offered(&auth).await))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let auth = caller(&ctx)?;
        Ok(call::call_tool(&self.state, &auth, request, &ctx)
            .await
            .into())
    }
}
