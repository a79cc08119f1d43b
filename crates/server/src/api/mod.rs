//! The HTTP API: routes, OpenAPI document, health and metrics.

pub mod admin;
pub mod approvals;
pub mod audit;
pub mod auth;
pub mod authzen;
pub mod doc;
pub mod error;
pub mod identity;
pub mod lifecycle;
pub mod tasks;

use crate::api::error::{ApiError, ErrorBody};
use crate::state::Shared;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use doc::{Secured, Unavailable};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// Bodies above this are refused with 413 before parsing.
pub const BODY_LIMIT: usize = 64 * 1024;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for (name, what) in [
            ("admin", "admin token"),
            ("svid", "JWT-SVID"),
            ("task", "task credential"),
            ("pep", "PEP key"),
            ("approver", "approver API key or OIDC ID token"),
        ] {
            components.add_security_scheme(
                name,
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .bearer_format(what)
                        .build(),
                ),
            );
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Tollgate", description = "Runtime governance gateway for autonomous agents"),
    paths(
        identity::register_agent, identity::attest, identity::refresh_svid, identity::jwks,
        tasks::open_task, tasks::renew_task, tasks::close_task, tasks::add_evidence, tasks::authorize,
        admin::freeze, admin::unfreeze, admin::revoke, admin::list_tasks, admin::show_task, admin::audit,
        admin::reload, admin::load_shadow, admin::show_shadow, admin::clear_shadow, admin::add_pep, admin::list_peps, admin::remove_pep,
        admin::release,
        admin::mcp_upstreams,
        lifecycle::delegate,
        lifecycle::update_incident,
        lifecycle::introspect,
        lifecycle::rollback,
        audit::checkpoint,
        audit::checkpoints,
        audit::proof,
        audit::consistency,
        audit::hash,
        audit::action_result,
        approvals::add_approver,
        approvals::list_approvers,
        approvals::remove_approver,
        approvals::disable_approver,
        approvals::enable_approver,
        approvals::list,
        approvals::show,
        approvals::decide,
        authzen::evaluation, authzen::evaluations, authzen::configuration,
        authzen::search_subject, authzen::search_resource, authzen::search_action,
        healthz, livez, readyz, metrics, openapi_json,
        mcp_post, mcp_get, mcp_delete,
    ),
    components(schemas(ErrorBody, doc::Id, doc::TaskStatus, doc::ApprovalStatusFilter)),
    modifiers(&Security)
)]
pub struct ApiDoc;

const MCP_ERRORS: &str = "An error of the transport or the gateway, in the API's error shape";

/// The MCP gateway (streamable HTTP transport, MCP 2025-06-18): send one
/// JSON-RPC message (`initialize` first; then `tools/list`, `tools/call`, …).
/// Every `tools/call` is decided, held for approval or forwarded by the
/// gateway; see `docs/mcp-gateway.md`. The answer is a JSON-RPC response, as
/// JSON or as an SSE stream, depending on `Accept`.
#[utoipa::path(post, path = "/mcp", request_body(content = doc::JsonRpcMessage, content_type = "application/json"),
    params(
        ("mcp-session-id" = Option<String>, Header, description = "The session, from the `initialize` answer's `mcp-session-id` header; any replica over the same store serves it (at most 128 bytes of visible ASCII)"),
        ("accept" = String, Header, description = "Must accept both `application/json` and `text/event-stream`"),
    ),
    responses(
        (status = 200, description = "The JSON-RPC answer (an SSE stream of messages, or one JSON message); `initialize` sets `mcp-session-id`",
            content((doc::SseEvent = "text/event-stream"), (doc::JsonRpcMessage = "application/json"))),
        (status = 202, description = "A notification or response was accepted"),
        (status = 400, description = MCP_ERRORS, body = ErrorBody),
        Secured,
        (status = 404, description = "Unknown or expired session: initialise again (`not_found`)", body = ErrorBody),
        (status = 406, description = "`Accept` does not allow both `application/json` and `text/event-stream`", body = ErrorBody),
        (status = 413, description = MCP_ERRORS, body = ErrorBody),
        (status = 415, description = "The body is not `application/json`", body = ErrorBody),
        (status = 422, description = MCP_ERRORS, body = ErrorBody),
    ),
    security(("task" = [])))]
pub fn mcp_post() {}

/// The MCP gateway: open the session's SSE stream of server messages.
#[utoipa::path(get, path = "/mcp",
    params(
        ("mcp-session-id" = String, Header, description = "The session"),
        ("accept" = String, Header, description = "Must accept `text/event-stream`"),
    ),
    responses(
        (status = 200, description = "An SSE stream of JSON-RPC messages", content_type = "text/event-stream", body = doc::SseEvent),
        (status = 400, description = MCP_ERRORS, body = ErrorBody),
        Secured,
        (status = 404, description = "Unknown or expired session (`not_found`)", body = ErrorBody),
        (status = 405, description = MCP_ERRORS, body = ErrorBody),
        (status = 406, description = "`Accept` does not allow `text/event-stream`", body = ErrorBody),
        (status = 409, description = "The session already has a stream (`conflict`)", body = ErrorBody),
        (status = 422, description = MCP_ERRORS, body = ErrorBody),
    ),
    security(("task" = [])))]
pub fn mcp_get() {}

/// The MCP gateway: end the session.
#[utoipa::path(delete, path = "/mcp",
    params(("mcp-session-id" = String, Header, description = "The session")),
    responses(
        (status = 204, description = "The session is terminated"),
        (status = 400, description = MCP_ERRORS, body = ErrorBody),
        Secured,
        (status = 404, description = "Unknown or expired session (`not_found`)", body = ErrorBody),
        (status = 405, description = MCP_ERRORS, body = ErrorBody),
        (status = 422, description = MCP_ERRORS, body = ErrorBody),
    ),
    security(("task" = [])))]
pub fn mcp_delete() {}

/// Liveness: the process answers. Says nothing of the store; use `/readyz`
/// to decide whether to send traffic here.
#[utoipa::path(get, path = "/livez", responses((status = 200, description = "`ok`", body = Status)))]
pub async fn livez() -> Json<Status> {
    Json(Status {
        status: "ok".into(),
    })
}

/// Readiness: the store can commit (so decisions can be audited). 503 when not.
#[utoipa::path(get, path = "/readyz", responses((status = 200, description = "`ready`", body = Status), Unavailable))]
pub async fn readyz(State(state): State<Shared>) -> Result<Json<Status>, ApiError> {
    state
        .readiness
        .check(state.store.as_ref())
        .await
        .map_err(ApiError::Unavailable)?;
    Ok(Json(Status {
        status: "ready".into(),
    }))
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Status {
    pub status: String,
}

/// Health, for humans and older probes: ready (the store can commit), plus
/// the audit log's size and whether the gateway is frozen. 503 when not ready.
#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "`ok`", body = Health), Unavailable))]
pub async fn healthz(State(state): State<Shared>) -> Result<Json<Health>, ApiError> {
    state
        .readiness
        .check(state.store.as_ref())
        .await
        .map_err(ApiError::Unavailable)?;
    let head = state.store.audit_head().await?;
    Ok(Json(Health {
        status: "ok".into(),
        audit_entries: head.size,
        frozen: state.is_frozen().await?,
    }))
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Health {
    pub status: String,
    pub audit_entries: u64,
    pub frozen: bool,
}

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain", body = String)))]
pub async fn metrics(State(state): State<Shared>) -> impl IntoResponse {
    let mut text = state.metrics.encode();
    // Bundle endpoints' ages are computed now, not when last fetched.
    let bundles = state.bundle_endpoints.metrics_text(state.now());
    if !bundles.is_empty() {
        text = text.trim_end_matches("# EOF\n").to_string();
        text.push_str(&bundles);
        text.push_str("# EOF\n");
    }
    // Resident memory, from /proc on Linux (the bench reads it); absent elsewhere.
    if let Some(rss) = crate::metrics::resident_memory_bytes() {
        text = text.trim_end_matches("# EOF\n").to_string();
        text.push_str(
            "# HELP tollgate_process_resident_memory_bytes Resident memory of the server.\n",
        );
        text.push_str("# TYPE tollgate_process_resident_memory_bytes gauge\n");
        text.push_str(&format!(
            "tollgate_process_resident_memory_bytes {}\n# EOF\n",
            rss
        ));
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", responses((status = 200, description = "OpenAPI 3.1", body = doc::Object)))]
pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such endpoint".into())
}

async fn method_not_allowed(method: axum::http::Method) -> ApiError {
    ApiError::MethodNotAllowed(format!(
        "{method} is not allowed on this endpoint; see /openapi.json"
    ))
}

/// The HTTP API, with the MCP gateway (`mcp`, built by the caller: the
/// adapters do not import each other) at `/mcp`.
pub fn router(state: Shared, mcp: axum::Router) -> Router {
    Router::new()
        .route("/v1/agents", post(identity::register_agent))
        .route("/v1/agents/attest", post(identity::attest))
        .route("/v1/agents/svid", post(identity::refresh_svid))
        .route("/.well-known/jwks.json", get(identity::jwks))
        .route("/v1/tasks", post(tasks::open_task).get(admin::list_tasks))
        .route("/v1/tasks/{id}", get(admin::show_task))
        .route("/v1/tasks/{id}/renew", post(tasks::renew_task))
        .route("/v1/tasks/{id}/close", post(tasks::close_task))
        .route("/v1/tasks/{id}/evidence", post(tasks::add_evidence))
        .route("/v1/authorize", post(tasks::authorize))
        .route("/v1/freeze", post(admin::freeze))
        .route("/v1/unfreeze", post(admin::unfreeze))
        .route("/v1/revocations", post(admin::revoke))
        .route("/v1/audit", get(admin::audit))
        .route("/v1/policies/reload", post(admin::reload))
        .route(
            "/v1/policies/shadow",
            post(admin::load_shadow)
                .get(admin::show_shadow)
                .delete(admin::clear_shadow),
        )
        .route("/v1/peps", post(admin::add_pep).get(admin::list_peps))
        .route("/v1/peps/{name}", axum::routing::delete(admin::remove_pep))
        .route("/v1/agents/release", post(admin::release))
        .route("/v1/tasks/{id}/delegate", post(lifecycle::delegate))
        .route("/v1/tasks/{id}/rollback", get(lifecycle::rollback))
        .route("/v1/incidents/{id}", post(lifecycle::update_incident))
        .route("/v1/introspect", post(lifecycle::introspect))
        .route("/v1/audit/checkpoint", get(audit::checkpoint))
        .route("/v1/audit/checkpoints", get(audit::checkpoints))
        .route("/v1/audit/proof/{seq}", get(audit::proof))
        .route("/v1/audit/consistency", get(audit::consistency))
        .route("/v1/audit/hash", post(audit::hash))
        .route(
            "/v1/actions/{request_id}/result",
            post(audit::action_result),
        )
        .route(
            "/v1/approvers",
            post(approvals::add_approver).get(approvals::list_approvers),
        )
        .route(
            "/v1/approvers/{name}",
            axum::routing::delete(approvals::remove_approver),
        )
        .route(
            "/v1/approvers/{name}/disable",
            post(approvals::disable_approver),
        )
        .route(
            "/v1/approvers/{name}/enable",
            post(approvals::enable_approver),
        )
        .route("/v1/approvals", get(approvals::list))
        .route("/v1/approvals/{id}", get(approvals::show))
        .route("/v1/approvals/{id}/decision", post(approvals::decide))
        .route("/access/v1/evaluation", post(authzen::evaluation))
        .route("/access/v1/evaluations", post(authzen::evaluations))
        .route("/access/v1/search/subject", post(authzen::search_subject))
        .route("/access/v1/search/resource", post(authzen::search_resource))
        .route("/access/v1/search/action", post(authzen::search_action))
        .route(
            "/.well-known/authzen-configuration",
            get(authzen::configuration),
        )
        .route("/healthz", get(healthz))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi_json))
        .route("/v1/mcp/upstreams", get(admin::mcp_upstreams))
        .nest_service("/mcp", mcp)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn(echo_request_id))
        .with_state(state)
}

/// The longest `X-Request-ID` echoed back; a longer one is ignored.
const MAX_REQUEST_ID: usize = 256;

/// Every answer, errors included, carries the caller's `X-Request-ID`
/// (AuthZEN 1.0 requires it of a PDP; any caller can correlate with it).
async fn echo_request_id(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let id = request
        .headers()
        .get("x-request-id")
        .filter(|v| v.len() <= MAX_REQUEST_ID)
        .cloned();
    let mut response = next.run(request).await;
    if let Some(id) = id {
        response.headers_mut().insert("x-request-id", id);
    }
    response
}
