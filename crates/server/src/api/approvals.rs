//! Human approval: approvers, pending approvals, long-poll, decisions.

use crate::api::auth::{Admin, ApiJson, ApiPath, ApiQuery, ApproverAuth, Shared, Viewer};
use crate::api::doc::{self, BadInput, Conflict, JsonBody, NotFound, Secured};
use crate::api::error::ApiError;
use crate::service::admin;
use crate::service::approvals::{describe, load, vote};
use crate::views::{view, ApprovalDetail, ApprovalView};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tollgate_core::ApprovalStatus;
use tollgate_store::ApprovalFilter;
use utoipa::{IntoParams, ToSchema};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddApprover {
    /// The key stops working this many seconds from now; absent = no expiry.
    #[serde(default)]
    #[schema(minimum = 1)]
    pub expires_in_seconds: Option<i64>,
    /// An email-like name, 1 to 128 characters of `[A-Za-z0-9._@+-]`
    /// (lowercased; never a SPIFFE ID).
    #[serde(deserialize_with = "tollgate_core::text::id")]
    #[schema(min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9._@+-]+$")]
    pub name: String,
    /// The role policy sees as `principal.role` in `approve` decisions:
    /// 1 to 64 characters of `[a-z0-9-]`.
    #[serde(deserialize_with = "tollgate_core::text::id")]
    #[schema(min_length = 1, max_length = 64, pattern = "^[a-z0-9-]+$")]
    pub role: String,
}

/// A new approver key.
#[derive(Serialize, ToSchema)]
pub struct ApproverKey {
    pub name: String,
    pub role: String,
    /// The approver's bearer key; shown only here.
    pub key: String,
    /// `null`: no expiry.
    pub expires_at: Option<String>,
}

/// Register (or rotate the key of) an approver; the key is shown once.
/// Names are lowercased, so one person has one spelling.
#[utoipa::path(post, path = "/v1/approvers", request_body = AddApprover, responses(
    (status = 201, description = "Registered; the key is shown once", body = ApproverKey),
    JsonBody,
    Secured,
), security(("admin" = [])))]
pub async fn add_approver(
    _: Admin,
    State(state): State<Shared>,
    ApiJson(req): ApiJson<AddApprover>,
) -> Result<(StatusCode, Json<ApproverKey>), ApiError> {
    let added = admin::add_approver(&state, &req.name, &req.role, req.expires_in_seconds).await?;
    Ok((
        StatusCode::CREATED,
        Json(ApproverKey {
            name: added.name,
            role: added.role,
            key: added.key,
            expires_at: added.expires_at.map(tollgate_core::clock::rfc3339),
        }),
    ))
}

/// An approver as the admin sees it (never the key or its hash).
#[derive(serde::Serialize, ToSchema)]
pub struct ApproverView {
    pub name: String,
    pub role: String,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub disabled: bool,
    /// When the key last authenticated, to the minute.
    pub last_used_at: Option<String>,
    /// `active`, `disabled` or `expired`.
    #[schema(value_type = String, pattern = "^(active|disabled|expired)$")]
    pub status: String,
}

#[derive(serde::Serialize, ToSchema)]
pub struct ApproverList {
    pub approvers: Vec<ApproverView>,
}

/// Every approver registered with a key, with its status and last use.
#[utoipa::path(get, path = "/v1/approvers", responses((status = 200, description = "The approvers", body = ApproverList), Secured), security(("admin" = [])))]
pub async fn list_approvers(
    _: Admin,
    State(state): State<Shared>,
) -> Result<Json<ApproverList>, ApiError> {
    let now = state.now();
    let rfc = tollgate_core::clock::rfc3339;
    let approvers = state
        .store
        .approvers()
        .await?
        .into_iter()
        .map(|a| ApproverView {
            status: match (a.disabled, a.refusal(now)) {
                (true, _) => "disabled",
                (false, Some(_)) => "expired",
                (false, None) => "active",
            }
            .into(),
            created_at: rfc(a.created_at),
            expires_at: a.expires_at.map(rfc),
            last_used_at: a.last_used_at.map(rfc),
            disabled: a.disabled,
            name: a.name,
            role: a.role,
        })
        .collect();
    Ok(Json(ApproverList { approvers }))
}

/// Offboard an approver: the key fails at once; votes already cast stay as cast.
#[utoipa::path(delete, path = "/v1/approvers/{name}", params(("name" = doc::Id, Path)), responses((status = 204, description = "Removed"), BadInput, Secured, NotFound), security(("admin" = [])))]
pub async fn remove_approver(
    _: Admin,
    State(state): State<Shared>,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    admin::remove_approver(&state, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Disable an approver's key until it is enabled again.
#[utoipa::path(post, path = "/v1/approvers/{name}/disable", params(("name" = doc::Id, Path)), responses((status = 204, description = "Disabled"), BadInput, Secured, NotFound), security(("admin" = [])))]
pub async fn disable_approver(
    admin: Admin,
    state: State<Shared>,
    name: ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    set_disabled(admin, state, name, true).await
}

/// Enable a disabled approver's key.
#[utoipa::path(post, path = "/v1/approvers/{name}/enable", params(("name" = doc::Id, Path)), responses((status = 204, description = "Enabled"), BadInput, Secured, NotFound), security(("admin" = [])))]
pub async fn enable_approver(
    admin: Admin,
    state: State<Shared>,
    name: ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    set_disabled(admin, state, name, false).await
}

async fn set_disabled(
    _: Admin,
    State(state): State<Shared>,
    ApiPath(name): ApiPath<String>,
    disabled: bool,
) -> Result<StatusCode, ApiError> {
    admin::set_approver_disabled(&state, &name, disabled).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// A status, or `all`; default `pending`.
    #[param(value_type = doc::ApprovalStatusFilter, required = false)]
    pub status: Option<String>,
    /// Approvals of this task.
    #[param(value_type = doc::Id, required = false)]
    pub task: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct Approvals {
    pub approvals: Vec<ApprovalDetail>,
}

/// Approvals with what an approver needs to decide: intent, action, tier,
/// resource, parameters, the task's evidence and its chain of actions so far.
#[utoipa::path(get, path = "/v1/approvals", params(ListQuery), responses(
    (status = 200, description = "At most 500 approvals", body = Approvals),
    BadInput,
    Secured,
), security(("approver" = []), ("admin" = [])))]
pub async fn list(
    viewer: Viewer,
    State(state): State<Shared>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Approvals>, ApiError> {
    if matches!(viewer, Viewer::Agent { .. }) {
        return Err(ApiError::Forbidden(
            "agents may only look at their own approvals by id".into(),
        ));
    }
    let status = match q.status.as_deref().unwrap_or("pending") {
        "all" => None,
        s => Some(s.parse::<ApprovalStatus>().map_err(ApiError::bad_request)?),
    };
    let approvals = state
        .store
        .approvals(ApprovalFilter {
            status,
            task_id: q.task,
            limit: 500,
            ..Default::default()
        })
        .await?;
    let pack = state.pack.load();
    let now = state.now();
    let mut out = Vec::with_capacity(approvals.len());
    // Past-due approvals are expired by the background sweep within a
    // second; never offer one for a vote meanwhile.
    for a in approvals
        .into_iter()
        .filter(|a| !(a.status == ApprovalStatus::Pending && a.expires_at <= now))
    {
        out.push(describe(&state, &pack, &a).await?);
    }
    Ok(Json(Approvals { approvals: out }))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WaitQuery {
    /// Long-poll: hold the answer up to this many seconds while the approval
    /// is pending (capped by the server's `approvals.max_wait_seconds`).
    #[param(minimum = 0)]
    pub wait: Option<u64>,
}

/// One approval; with `?wait=N`, answers as soon as it is decided or expires.
/// An agent sees only its own task's approvals (others are 404 to it).
#[utoipa::path(get, path = "/v1/approvals/{id}", params(("id" = doc::Id, Path), WaitQuery), responses(
    (status = 200, description = "The approval", body = ApprovalDetail),
    BadInput,
    Secured,
    NotFound,
), security(("task" = []), ("approver" = []), ("admin" = [])))]
pub async fn show(
    viewer: Viewer,
    State(state): State<Shared>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<WaitQuery>,
) -> Result<Json<ApprovalDetail>, ApiError> {
    // An agent sees only its own task's approvals; check before anything else.
    if let Viewer::Agent { task_id } = &viewer {
        let own = state
            .store
            .approval(&id)
            .await?
            .is_some_and(|a| a.task_id == *task_id);
        if !own {
            return Err(ApiError::NotFound(format!("approval {id}")));
        }
    }
    let mut a = load(&state, &id).await?;
    let deadline = tokio::time::Instant::now()
        + Duration::from_secs(
            q.wait
                .unwrap_or(0)
                .min(state.config.approvals.max_wait_seconds),
        );
    while a.status == ApprovalStatus::Pending && tokio::time::Instant::now() < deadline {
        let notified = state.approval_events.notified();
        // Wake on any approval change, and at least every second so expiry
        // (which is clock-driven) is noticed.
        let step = deadline
            .saturating_duration_since(tokio::time::Instant::now())
            .min(Duration::from_secs(1));
        let _ = tokio::time::timeout(step, notified).await;
        a = load(&state, &id).await?;
    }
    let pack = state.pack.load();
    Ok(Json(describe(&state, &pack, &a).await?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(examples(json!({"approve": true, "reason": "jdoe's credentials are confirmed stolen"})))]
pub struct DecisionBody {
    pub approve: bool,
    /// Why; recorded in the audit log and shown to the other approvers; 1 to 2048 bytes.
    #[schema(min_length = 1, max_length = 2048)]
    pub reason: String,
}

/// An approver's vote. Each approver counts once; a denial reaching the
/// deny threshold ends the request.
#[utoipa::path(post, path = "/v1/approvals/{id}/decision", params(("id" = doc::Id, Path)), request_body = DecisionBody, responses(
    (status = 200, description = "The approval after the vote", body = ApprovalView),
    JsonBody,
    Secured,
    NotFound,
    Conflict,
), security(("approver" = [])))]
pub async fn decide(
    approver: ApproverAuth,
    State(state): State<Shared>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<DecisionBody>,
) -> Result<Json<ApprovalView>, ApiError> {
    if req.reason.trim().is_empty() || req.reason.len() > 2048 {
        return Err(ApiError::bad_request("reason must be 1 to 2048 bytes"));
    }
    let a = vote(&state, &id, &approver.0, req.approve, &req.reason).await?;
    Ok(Json(view(&a)))
}
