//! OpenID AuthZEN Authorization API 1.0, for trusted enforcement points.
//!
//! Two kinds of subject. Any type but `agent` is decided as a general PDP
//! against the pack's entity data (`service::authzen`,
//! `PolicyPack::decide_general`), answered `{decision}`. An agent keeps
//! Tollgate's task semantics.
//!
//! Agent mapping (Tollgate's model is task-scoped, so the PEP names the task):
//! - `subject`: `{type: "agent", id: <SPIFFE ID>}`
//! - `action.name`: a tool-catalog operation
//! - `resource`: `{type: <Cedar entity type>, id, properties}`; properties
//!   are the resource attributes
//! - `context.task_id` (required): a live task of that agent;
//!   `context.intent` and `context.parameters` are optional.
//!
//! `decision` is `true` only for `allow`; `approval_required` is `false` with
//! the outcome in the response context. Every evaluation is decided and
//! audited exactly like `/v1/authorize`.

use crate::api::auth::{ApiJson, PepAuth, Shared};
use crate::api::doc::{self, JsonBody, Secured};
use crate::api::error::ApiError;
use crate::service::decide::{decide_action, Decided};
use crate::service::judge::ActionAsk;
use axum::extract::{FromRequest, Request, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tollgate_core::{Agent, Outcome, Task, TaskStatus};
use tollgate_policy::ResourceRef;
use utoipa::ToSchema;

/// The body of an AuthZEN request: [`ApiJson`], except that a body sent
/// as anything but JSON is a 400 like any other bad request, as the spec's
/// certification scenario wants (c-2-4-3), not a 415.
pub struct AuthzenJson<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequest<S> for AuthzenJson<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match ApiJson::<T>::from_request(req, state).await {
            Ok(ApiJson(v)) => Ok(Self(v)),
            Err(ApiError::UnsupportedMediaType(message)) => Err(ApiError::BadRequest {
                code: "invalid_content_type",
                message,
            }),
            Err(e) => Err(e),
        }
    }
}

#[derive(Deserialize, Clone, ToSchema)]
pub struct Subject {
    #[serde(rename = "type")]
    pub kind: String,
    pub id: String,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub properties: Map<String, Value>,
}

#[derive(Deserialize, Clone, ToSchema)]
pub struct Action {
    pub name: String,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub properties: Map<String, Value>,
}

#[derive(Deserialize, Clone, ToSchema)]
pub struct Resource {
    #[serde(rename = "type")]
    pub kind: String,
    pub id: String,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub properties: Map<String, Value>,
}

/// One access evaluation (AuthZEN 1.0 §6). Unknown fields are ignored, as the spec requires.
#[derive(Deserialize, ToSchema)]
pub struct Evaluation {
    pub subject: Subject,
    pub action: Action,
    pub resource: Resource,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub context: Map<String, Value>,
}

/// A subject or resource as a batch item or a top-level default gives it:
/// any part may be left to the other.
#[derive(Deserialize, ToSchema, Clone, Default)]
pub struct PartialEntity {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub id: Option<String>,
    #[schema(value_type = Object)]
    pub properties: Option<Map<String, Value>>,
}

/// An action as a batch item or a top-level default gives it.
#[derive(Deserialize, ToSchema, Clone, Default)]
pub struct PartialAction {
    pub name: Option<String>,
    #[schema(value_type = Object)]
    pub properties: Option<Map<String, Value>>,
}

impl PartialEntity {
    /// An item's entity over the default: it replaces the default whole,
    /// except that a missing `type` or `id` is the default's (the
    /// entity-level merge of the certification scenario, c-3-2-7).
    fn over(item: Option<&Self>, default: Option<&Self>) -> Self {
        match (item, default) {
            (Some(i), Some(d)) => Self {
                kind: i.kind.clone().or_else(|| d.kind.clone()),
                id: i.id.clone().or_else(|| d.id.clone()),
                properties: i.properties.clone(),
            },
            (Some(x), None) | (None, Some(x)) => x.clone(),
            (None, None) => Self::default(),
        }
    }
}

impl PartialAction {
    /// As [`PartialEntity::over`], for `name`.
    fn over(item: Option<&Self>, default: Option<&Self>) -> Self {
        match (item, default) {
            (Some(i), Some(d)) => Self {
                name: i.name.clone().or_else(|| d.name.clone()),
                properties: i.properties.clone(),
            },
            (Some(x), None) | (None, Some(x)) => x.clone(),
            (None, None) => Self::default(),
        }
    }
}

/// One item of a batch: each part is optional and defaults to the
/// request's top-level one.
#[derive(Deserialize, ToSchema)]
pub struct EvaluationItem {
    pub subject: Option<PartialEntity>,
    pub action: Option<PartialAction>,
    pub resource: Option<PartialEntity>,
    #[schema(value_type = Object)]
    pub context: Option<Map<String, Value>>,
}

impl EvaluationItem {
    /// The evaluation of this item over the request's defaults, and whether
    /// it is complete: when a required part is missing from both, what
    /// there is (missing parts empty), for the record.
    fn over(&self, defaults: &Evaluations) -> (Evaluation, bool) {
        let subject = PartialEntity::over(self.subject.as_ref(), defaults.subject.as_ref());
        let action = PartialAction::over(self.action.as_ref(), defaults.action.as_ref());
        let resource = PartialEntity::over(self.resource.as_ref(), defaults.resource.as_ref());
        let complete = [
            &subject.kind,
            &subject.id,
            &action.name,
            &resource.kind,
            &resource.id,
        ]
        .iter()
        .all(|p| p.is_some());
        let e = Evaluation {
            subject: Subject {
                kind: subject.kind.unwrap_or_default(),
                id: subject.id.unwrap_or_default(),
                properties: subject.properties.unwrap_or_default(),
            },
            action: Action {
                name: action.name.unwrap_or_default(),
                properties: action.properties.unwrap_or_default(),
            },
            resource: Resource {
                kind: resource.kind.unwrap_or_default(),
                id: resource.id.unwrap_or_default(),
                properties: resource.properties.unwrap_or_default(),
            },
            context: self
                .context
                .clone()
                .or_else(|| defaults.context.clone())
                .unwrap_or_default(),
        };
        (e, complete)
    }
}

#[derive(Deserialize, ToSchema, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Semantic {
    #[default]
    ExecuteAll,
    DenyOnFirstDeny,
    PermitOnFirstPermit,
}

#[derive(Deserialize, ToSchema, Default)]
pub struct Options {
    #[serde(default)]
    pub evaluations_semantic: Semantic,
}

/// A batch of evaluations with top-level defaults (AuthZEN 1.0 §7).
#[derive(Deserialize, ToSchema)]
pub struct Evaluations {
    pub subject: Option<PartialEntity>,
    pub action: Option<PartialAction>,
    pub resource: Option<PartialEntity>,
    #[schema(value_type = Object)]
    pub context: Option<Map<String, Value>>,
    #[serde(default)]
    pub evaluations: Vec<EvaluationItem>,
    #[serde(default)]
    pub options: Options,
}

/// One AuthZEN decision: `true` only for `allow`. For an agent subject the
/// context carries the decision's details; a general subject's answer is
/// the decision alone (`context` only when the item was refused).
#[derive(Serialize, ToSchema)]
pub struct EvaluationResult {
    pub decision: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context: Option<EvaluationContext>,
}

/// Why: the decision's details, or what was wrong with the item.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum EvaluationContext {
    Decided(DecidedContext),
    Refused(RefusedContext),
}

/// The decision behind `decision`, as `/v1/authorize` would give it.
#[derive(Serialize, ToSchema)]
pub struct DecidedContext {
    pub request_id: String,
    pub outcome: doc::Outcome,
    pub reasons: Vec<String>,
    pub policies: Vec<String>,
    pub obligations: Vec<String>,
    /// `approval_required`, when the denial can be requested (Access Request
    /// and Approval profile draft).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evaluation_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_request: Option<AccessRequest>,
}

/// The pending approval a requestable denial waits on.
#[derive(Serialize, ToSchema)]
pub struct AccessRequest {
    pub id: String,
    pub status: doc::ApprovalStatus,
    /// Where to poll it (`GET /v1/approvals/{id}`).
    pub status_endpoint: String,
    pub expires_at: String,
    pub approvals_required: u32,
}

/// An item that could not be evaluated; the rest of a batch still is.
#[derive(Serialize, ToSchema)]
pub struct RefusedContext {
    pub error: ItemError,
}

#[derive(Serialize, ToSchema)]
pub struct ItemError {
    /// The HTTP status this would have been on its own: 400, 403 or 404.
    pub status: u16,
    pub message: String,
}

/// The answer for an item that could not be evaluated.
fn refused(error: ItemError) -> EvaluationResult {
    EvaluationResult {
        decision: false,
        context: Some(EvaluationContext::Refused(RefusedContext { error })),
    }
}

/// An item that lacks a subject, action or resource, with no default.
fn missing_parts() -> ItemError {
    bad_request(
        "subject, action and resource must be given in the evaluation or as defaults".into(),
    )
}

fn bad_request(message: String) -> ItemError {
    ItemError {
        status: 400,
        message,
    }
}

/// Every id valid.
fn check_names(e: &Evaluation) -> Result<(), ItemError> {
    // Ids follow the rule of the rest of the API; an item that breaks it
    // is refused on its own, so a batch still answers the others.
    for (what, id) in [
        ("subject.id", &e.subject.id),
        ("action.name", &e.action.name),
        ("resource.type", &e.resource.kind),
        ("resource.id", &e.resource.id),
    ] {
        if let Err(err) = tollgate_core::text::check_id(id) {
            return Err(bad_request(format!("{what}: id {err}")));
        }
    }
    Ok(())
}

/// The live task `context.task_id` names, if it is the subject's, and the
/// subject's agent, if not revoked. The outer `Err` is the store's.
async fn live_task(
    state: &Shared,
    e: &Evaluation,
) -> Result<Result<(Task, Agent), ItemError>, ApiError> {
    let Some(task_id) = e.context.get("task_id").and_then(Value::as_str) else {
        return Ok(Err(bad_request(
            "context.task_id is required: Tollgate decides within a task".into(),
        )));
    };
    let now = state.now();
    let task = match state.store.task(task_id).await? {
        Some(t) if t.agent == e.subject.id => t,
        _ => {
            return Ok(Err(ItemError {
                status: 404,
                message: format!(
                    "no task {} of subject {}",
                    task_id.escape_debug(),
                    e.subject.id
                ),
            }))
        }
    };
    if !task.is_live(now) {
        let status = if task.status == TaskStatus::Active {
            "expired"
        } else {
            task.status.as_str()
        };
        return Ok(Err(ItemError {
            status: 403,
            message: format!("task {task_id} is {status}"),
        }));
    }
    let agent = match state.store.agent(&task.agent).await? {
        Some(a) if !a.revoked => a,
        _ => {
            return Ok(Err(ItemError {
                status: 403,
                message: format!("agent {} is revoked", task.agent),
            }))
        }
    };
    Ok(Ok((task, agent)))
}

/// Evaluate one request. `Err` is an error of the whole call (store down);
/// problems with the request itself become `decision: false` with an error context.
async fn evaluate(
    state: &Shared,
    pep: &str,
    e: &Evaluation,
    traceparent: Option<String>,
) -> Result<EvaluationResult, ApiError> {
    if let Err(error) = check_names(e) {
        return refuse(state, pep, e, error).await;
    }
    if !e.subject.kind.eq_ignore_ascii_case("agent") {
        return general(state, pep, e, traceparent).await;
    }
    let (task, agent) = match live_task(state, e).await? {
        Ok(found) => found,
        Err(error) => return refuse(state, pep, e, error).await,
    };
    let resource = ResourceRef {
        kind: e.resource.kind.clone(),
        id: e.resource.id.clone(),
        attributes: e.resource.properties.clone(),
    };
    let intent = e
        .context
        .get("intent")
        .and_then(Value::as_str)
        .unwrap_or(&task.intent)
        .to_string();
    let parameters = e
        .context
        .get("parameters")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    // ARAP-style retry: `context.approval.id` (or `context.approval_id`).
    let approval_id = e
        .context
        .get("approval")
        .and_then(|a| a.get("id"))
        .or_else(|| e.context.get("approval_id"))
        .and_then(Value::as_str)
        .map(str::to_string);
    if let Some(Err(err)) = approval_id.as_deref().map(tollgate_core::text::check_id) {
        let error = bad_request(format!("context.approval_id: id {err}"));
        return refuse(state, pep, e, error).await;
    }
    let ask = ActionAsk {
        approval_id: approval_id.as_deref(),
        task: &task,
        agent: &agent,
        action: &e.action.name,
        resource: &resource,
        intent: &intent,
        parameters: &parameters,
        actor: format!("pep:{pep}"),
        kind: tollgate_core::EventKind::AuthzenDecision,
        traceparent,
    };
    match decide_action(state, ask).await {
        Ok(d) => Ok(decided(d)),
        Err(crate::service::Error::Invalid { message, .. }) => Ok(refused(bad_request(message))),
        Err(e) => Err(e.into()),
    }
}

/// A non-agent subject: the pack decides it against its entity data.
async fn general(
    state: &Shared,
    pep: &str,
    e: &Evaluation,
    traceparent: Option<String>,
) -> Result<EvaluationResult, ApiError> {
    let r = tollgate_policy::GeneralRequest {
        subject_type: &e.subject.kind,
        subject_id: &e.subject.id,
        subject_properties: &e.subject.properties,
        action: &e.action.name,
        action_properties: &e.action.properties,
        resource_type: &e.resource.kind,
        resource_id: &e.resource.id,
        resource_properties: &e.resource.properties,
        context: &e.context,
    };
    match crate::service::authzen::decide_general(state, pep, &r, traceparent.as_deref()).await {
        Ok(d) => Ok(EvaluationResult {
            decision: d.outcome == Outcome::Allow,
            context: None,
        }),
        Err(crate::service::Error::Invalid { message, .. }) => Ok(refused(bad_request(message))),
        Err(e) => Err(e.into()),
    }
}

/// Refuse an item, recording it first (every evaluation leaves an entry).
async fn refuse(
    state: &Shared,
    pep: &str,
    e: &Evaluation,
    error: ItemError,
) -> Result<EvaluationResult, ApiError> {
    // The ids may be what was wrong: escaped, they cannot forge anything.
    let key = |kind: &str, id: &str| format!("{}::{}", kind.escape_debug(), id.escape_debug());
    crate::service::authzen::record_refused(
        state,
        pep,
        crate::service::authzen::Refused {
            subject: key(&e.subject.kind, &e.subject.id),
            action: &e.action.name,
            resource: key(&e.resource.kind, &e.resource.id),
            reason: &error.message,
            status: error.status,
        },
    )
    .await?;
    Ok(refused(error))
}

/// The AuthZEN answer for a decision made.
fn decided(d: Decided) -> EvaluationResult {
    let mut context = DecidedContext {
        request_id: d.request_id.clone(),
        outcome: d.decision.outcome.into(),
        reasons: d.decision.reasons,
        policies: d.decision.policies,
        obligations: d.decision.obligations,
        reason: None,
        evaluation_id: None,
        access_request: None,
    };
    // A requestable denial, shaped after the AuthZEN Access Request
    // and Approval profile draft: the handle is the approval.
    if let (Outcome::ApprovalRequired, Some(a)) = (d.decision.outcome, &d.approval) {
        context.reason = Some("approval_required".into());
        context.evaluation_id = Some(d.request_id);
        context.access_request = Some(AccessRequest {
            id: a.id.clone(),
            status: a.status.into(),
            status_endpoint: format!("/v1/approvals/{}", a.id),
            expires_at: tollgate_core::clock::rfc3339(a.expires_at),
            approvals_required: d.decision.approvals_required,
        });
    }
    EvaluationResult {
        decision: d.decision.outcome == Outcome::Allow,
        context: Some(EvaluationContext::Decided(context)),
    }
}

fn traceparent(headers: &HeaderMap) -> Option<String> {
    headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Access evaluation (AuthZEN 1.0 §6), decided and audited like `/v1/authorize`.
#[utoipa::path(post, path = "/access/v1/evaluation", request_body = Evaluation, responses(
    (status = 200, description = "The decision; problems with the request itself are `decision: false` with `context.error`", body = EvaluationResult,
        headers(("x-request-id" = String, description = "The PEP's `X-Request-ID`, echoed when it sent one"))),
    JsonBody,
    Secured,
), security(("pep" = [])))]
pub async fn evaluation(
    pep: PepAuth,
    State(state): State<Shared>,
    headers: HeaderMap,
    AuthzenJson(req): AuthzenJson<Evaluation>,
) -> Result<Response, ApiError> {
    let body = evaluate(&state, &pep.0.name, &req, traceparent(&headers)).await?;
    Ok(Json(body).into_response())
}

/// Access evaluations (AuthZEN 1.0 §7): at most 100 per call.
#[utoipa::path(post, path = "/access/v1/evaluations", request_body = Evaluations, responses(
    (status = 200, description = "One result per evaluation, in order (fewer when the semantic stops early); with `evaluations` missing or empty, the single shape of `/access/v1/evaluation`", body = EvaluationsAnswer,
        headers(("x-request-id" = String, description = "The PEP's `X-Request-ID`, echoed when it sent one"))),
    JsonBody,
    Secured,
), security(("pep" = [])))]
pub async fn evaluations(
    pep: PepAuth,
    State(state): State<Shared>,
    headers: HeaderMap,
    AuthzenJson(req): AuthzenJson<Evaluations>,
) -> Result<Response, ApiError> {
    // No items: a single evaluation of the top-level parts, answered in
    // the single shape `{decision, context}` (§7.1), and refused as
    // `/access/v1/evaluation` refuses it when a part is missing.
    if req.evaluations.is_empty() {
        let alone = EvaluationItem {
            subject: None,
            action: None,
            resource: None,
            context: None,
        };
        let (e, complete) = alone.over(&req);
        if !complete {
            return Err(ApiError::bad_request(
                "subject (type, id), action (name) and resource (type, id) are required without evaluations",
            ));
        }
        let result = evaluate(&state, &pep.0.name, &e, traceparent(&headers)).await?;
        return Ok(Json(EvaluationsAnswer::Single(Box::new(result))).into_response());
    }
    if req.evaluations.len() > 100 {
        return Err(ApiError::bad_request("at most 100 evaluations per call"));
    }
    let mut out = Vec::with_capacity(req.evaluations.len());
    for item in &req.evaluations {
        let result = match item.over(&req) {
            (e, true) => evaluate(&state, &pep.0.name, &e, traceparent(&headers)).await?,
            (incomplete, false) => {
                refuse(&state, &pep.0.name, &incomplete, missing_parts()).await?
            }
        };
        let decision = result.decision;
        out.push(result);
        match req.options.evaluations_semantic {
            Semantic::DenyOnFirstDeny if !decision => break,
            Semantic::PermitOnFirstPermit if decision => break,
            _ => {}
        }
    }
    Ok(Json(EvaluationsAnswer::Batch(EvaluationResults {
        evaluations: out,
    }))
    .into_response())
}

/// What `/access/v1/evaluations` answers: one result per item, or, for a
/// request without items, the single shape (AuthZEN 1.0 §7.1).
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum EvaluationsAnswer {
    Batch(EvaluationResults),
    Single(Box<EvaluationResult>),
}

#[derive(Serialize, ToSchema)]
pub struct EvaluationResults {
    pub evaluations: Vec<EvaluationResult>,
}

/// PDP metadata (AuthZEN 1.0 §9).
#[derive(Serialize, ToSchema)]
pub struct PdpMetadata {
    pub policy_decision_point: String,
    pub access_evaluation_endpoint: String,
    pub access_evaluations_endpoint: String,
    pub search_subject_endpoint: String,
    pub search_resource_endpoint: String,
    pub search_action_endpoint: String,
}

/// PDP metadata (AuthZEN 1.0 §9).
#[utoipa::path(get, path = "/.well-known/authzen-configuration", responses((status = 200, description = "Where to evaluate: absolute URLs under `public_url` (default: the address the server listens on; never the request's `Host`)", body = PdpMetadata)))]
pub async fn configuration(State(state): State<Shared>) -> Json<PdpMetadata> {
    let base = state.base_url();
    Json(PdpMetadata {
        access_evaluation_endpoint: format!("{base}/access/v1/evaluation"),
        access_evaluations_endpoint: format!("{base}/access/v1/evaluations"),
        search_subject_endpoint: format!("{base}/access/v1/search/subject"),
        search_resource_endpoint: format!("{base}/access/v1/search/resource"),
        search_action_endpoint: format!("{base}/access/v1/search/action"),
        policy_decision_point: base,
    })
}

/// A subject or resource in a search: `id` is what the search fills in
/// (ignored there) or required (the other side).
#[derive(Deserialize, ToSchema, Clone)]
pub struct SearchEntity {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub properties: Map<String, Value>,
}

/// `page` of a search request (AuthZEN 1.0 §8.4).
#[derive(Deserialize, ToSchema, Default)]
pub struct PageRequest {
    /// The previous answer's `page.next_token`.
    #[serde(default)]
    pub token: Option<String>,
    /// At most this many results (1 to 1000; default 1000).
    #[serde(default)]
    pub limit: Option<u64>,
}

/// A subject, resource or action search (AuthZEN 1.0 §8).
#[derive(Deserialize, ToSchema)]
pub struct SearchBody {
    pub subject: SearchEntity,
    /// Absent in an action search.
    #[serde(default)]
    pub action: Option<Action>,
    pub resource: SearchEntity,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub context: Map<String, Value>,
    #[serde(default)]
    pub page: PageRequest,
}

/// One match: an entity (`type` first, as the interop comparison reads
/// it) or an action.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum Found {
    Entity {
        #[serde(rename = "type")]
        kind: String,
        id: String,
    },
    Action {
        name: String,
    },
}

/// Present when more results follow.
#[derive(Serialize, ToSchema)]
pub struct PageAnswer {
    /// Send it back as `page.token` for the next page; `""` on the last.
    pub next_token: String,
    pub count: usize,
}

/// A search's answer: the matches of this page.
#[derive(Serialize, ToSchema)]
pub struct SearchResults {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page: Option<PageAnswer>,
    pub results: Vec<Found>,
}

/// The most results one page holds.
const MAX_PAGE: u64 = 1000;

/// What a page token is bound to: the request without its `page` (the
/// follow-up sends the token alone, perhaps with another limit), so a
/// token cannot be replayed against a changed search.
fn fingerprint(body: &Value) -> String {
    let mut b = body.clone();
    if let Some(b) = b.as_object_mut() {
        b.remove("page");
    }
    tollgate_core::sha256_hex(b.to_string().as_bytes())[..16].to_string()
}

async fn search(
    state: &Shared,
    pep: &str,
    kind: crate::service::authzen::SearchKind,
    raw: Value,
) -> Result<SearchResults, ApiError> {
    use crate::service::authzen::SearchKind;
    let body: SearchBody = serde_json::from_value(raw.clone())
        .map_err(|e| ApiError::bad_request(format!("search request: {e}")))?;
    let need = |what: &str, id: &Option<String>| -> Result<String, ApiError> {
        match id {
            Some(id) => tollgate_core::text::check_id(id)
                .map(|()| id.clone())
                .map_err(|e| ApiError::bad_request(format!("{what}: id {e}"))),
            None => Err(ApiError::bad_request(format!(
                "{what} is required in this search"
            ))),
        }
    };
    let subject_id = match kind {
        SearchKind::Subject => String::new(),
        _ => need("subject.id", &body.subject.id)?,
    };
    let resource_id = match kind {
        SearchKind::Resource => String::new(),
        _ => need("resource.id", &body.resource.id)?,
    };
    let action = match (kind, &body.action) {
        (SearchKind::Action, _) => String::new(),
        (_, Some(a)) => a.name.clone(),
        (_, None) => return Err(ApiError::bad_request("action is required in this search")),
    };
    let print = fingerprint(&raw);
    let offset = match &body.page.token {
        None => 0,
        Some(t) if t.is_empty() => 0,
        Some(t) => match t.split_once('.') {
            Some((n, f)) if f == print => n
                .parse::<usize>()
                .map_err(|_| ApiError::bad_request("page.token is not one this server issued"))?,
            _ => {
                return Err(ApiError::bad_request(
                    "page.token does not belong to this search: the request changed since it was issued",
                ))
            }
        },
    };
    let limit = body.page.limit.unwrap_or(MAX_PAGE).clamp(1, MAX_PAGE) as usize;
    let no_action = Map::new();
    let request = crate::service::authzen::SearchRequest {
        kind,
        template: tollgate_policy::GeneralRequest {
            subject_type: &body.subject.kind,
            subject_id: &subject_id,
            subject_properties: &body.subject.properties,
            action: &action,
            action_properties: body.action.as_ref().map_or(&no_action, |a| &a.properties),
            resource_type: &body.resource.kind,
            resource_id: &resource_id,
            resource_properties: &body.resource.properties,
            context: &body.context,
        },
        offset,
        limit,
    };
    let found = crate::service::authzen::search(state, pep, &request).await?;
    let count = found.results.len();
    let results = found
        .results
        .into_iter()
        .map(|id| match kind {
            SearchKind::Subject => Found::Entity {
                kind: body.subject.kind.clone(),
                id,
            },
            SearchKind::Resource => Found::Entity {
                kind: body.resource.kind.clone(),
                id,
            },
            SearchKind::Action => Found::Action { name: id },
        })
        .collect();
    // A page object only when the answer is not the whole result set, or
    // when the caller is paging (its last page says so with "").
    let page = if found.more {
        Some(PageAnswer {
            next_token: format!("{}.{print}", offset + count),
            count,
        })
    } else if body.page.token.is_some() {
        Some(PageAnswer {
            next_token: String::new(),
            count,
        })
    } else {
        None
    };
    Ok(SearchResults { page, results })
}

/// Subject search (AuthZEN 1.0 §8.1): which subjects of `subject.type` may
/// do `action` on `resource`.
#[utoipa::path(post, path = "/access/v1/search/subject", request_body = SearchBody, responses(
    (status = 200, description = "The subjects allowed (the pack's entities of that type), by id; `page` when more follow", body = SearchResults),
    JsonBody,
    Secured,
), security(("pep" = [])))]
pub async fn search_subject(
    pep: PepAuth,
    State(state): State<Shared>,
    AuthzenJson(raw): AuthzenJson<Value>,
) -> Result<Json<SearchResults>, ApiError> {
    use crate::service::authzen::SearchKind;
    search(&state, &pep.0.name, SearchKind::Subject, raw)
        .await
        .map(Json)
}

/// Resource search (AuthZEN 1.0 §8.2): which resources of `resource.type`
/// `subject` may do `action` on.
#[utoipa::path(post, path = "/access/v1/search/resource", request_body = SearchBody, responses(
    (status = 200, description = "The resources allowed (the pack's entities of that type), by id; `page` when more follow", body = SearchResults),
    JsonBody,
    Secured,
), security(("pep" = [])))]
pub async fn search_resource(
    pep: PepAuth,
    State(state): State<Shared>,
    AuthzenJson(raw): AuthzenJson<Value>,
) -> Result<Json<SearchResults>, ApiError> {
    use crate::service::authzen::SearchKind;
    search(&state, &pep.0.name, SearchKind::Resource, raw)
        .await
        .map(Json)
}

/// Action search (AuthZEN 1.0 §8.3): which actions `subject` may do on
/// `resource` (the schema's actions between the two types).
#[utoipa::path(post, path = "/access/v1/search/action", request_body = SearchBody, responses(
    (status = 200, description = "The actions allowed, by name; `page` when more follow", body = SearchResults),
    JsonBody,
    Secured,
), security(("pep" = [])))]
pub async fn search_action(
    pep: PepAuth,
    State(state): State<Shared>,
    AuthzenJson(raw): AuthzenJson<Value>,
) -> Result<Json<SearchResults>, ApiError> {
    use crate::service::authzen::SearchKind;
    search(&state, &pep.0.name, SearchKind::Action, raw)
        .await
        .map(Json)
}
