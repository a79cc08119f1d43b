//! One `tools/call` through the gateway: map it to a catalog operation and
//! resource, decide (holding the call open while a human approves), forward,
//! and record what was executed.
//!
//! Every way a call can fail reaches the agent as an MCP tool error (a
//! result with `isError`), never as a protocol error: clients show tool
//! errors to the model, which can then explain or change course.

use super::{live_audited, ROLLBACK_TOOL};
use crate::api::auth::{Shared, TaskAuth};
use crate::service::approvals;
use crate::service::decide::{decide_action, decision_json, Decided};
use crate::service::judge::ActionAsk;
use crate::service::results::{record_result, ExecutedAction};
use crate::upstream::Upstream;
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ContentBlock, ProgressNotificationParam, ProgressToken,
};
use rmcp::service::RequestContext;
use rmcp::RoleServer;
use serde_json::{json, Map, Value};
use std::time::Duration;
use tollgate_audit::AuditEvent;
use tollgate_core::{Approval, ApprovalStatus, Operation, Outcome, ToolBinding};
use tollgate_policy::ResourceRef;
use tollgate_store::{Batch, Change};

/// `_meta` key an agent may set on a call to state why it makes it.
pub const INTENT_META: &str = "tollgate/intent";
/// `_meta` key on every answer that passed a decision: its request id.
pub const REQUEST_ID_META: &str = "tollgate/request_id";

fn tool_error(text: String, structured: Option<Value>) -> CallToolResult {
    let mut r = CallToolResult::error(vec![ContentBlock::text(text)]);
    r.structured_content = structured;
    r
}

fn with_request_id(mut r: CallToolResult, request_id: &str) -> CallToolResult {
    r.meta
        .get_or_insert_with(Default::default)
        .0
        .insert(REQUEST_ID_META.into(), json!(request_id));
    r
}

/// Why and under what trace a call is made.
struct CallMeta {
    intent: String,
    traceparent: Option<String>,
    /// For a rollback step: the executed action it undoes.
    compensates: Option<String>,
}

fn meta_of(request: &CallToolRequestParams, ctx: &RequestContext<RoleServer>) -> CallMeta {
    let get = |key: &str| {
        request
            .meta
            .as_ref()
            .and_then(|m| m.0 .0.get(key))
            .or_else(|| ctx.meta.0 .0.get(key))
            .and_then(Value::as_str)
            .map(|s| s.chars().take(2048).collect::<String>())
            .filter(|s| !s.trim().is_empty())
    };
    CallMeta {
        intent: get(INTENT_META).unwrap_or_else(|| format!("mcp tools/call {}", request.name)),
        traceparent: get("traceparent"),
        compensates: None,
    }
}

/// The answer to one `tools/call`.
pub async fn call_tool(
    state: &Shared,
    auth: &TaskAuth,
    request: CallToolRequestParams,
    ctx: &RequestContext<RoleServer>,
) -> CallToolResult {
    if request.name == ROLLBACK_TOOL {
        let args = request.arguments.unwrap_or_default();
        return rollback(state, auth, args, ctx).await;
    }
    let meta = meta_of(&request, ctx);
    let args = request.arguments.unwrap_or_default();
    governed(state, auth, &request.name, args, meta, ctx)
        .await
        .result
}

struct Called {
    result: CallToolResult,
    request_id: Option<String>,
    /// Forwarded, and the upstream reported success.
    succeeded: bool,
}

impl Called {
    fn refused(result: CallToolResult, request_id: Option<String>) -> Self {
        Self {
            result,
            request_id,
            succeeded: false,
        }
    }
}

/// Audit a call refused before any decision could be made (unknown tool,
/// missing resource argument), then answer it.
async fn refuse_unmapped(state: &Shared, auth: &TaskAuth, tool: &str, reason: String) -> Called {
    // The name is the agent's: recorded as sent only when it is a valid id.
    let tool = match tollgate_core::text::check_id(tool) {
        Ok(()) => tool.to_string(),
        Err(e) => format!("(a tool name that {e})"),
    };
    let ev = AuditEvent::new(
        state.now(),
        tollgate_core::EventKind::McpCallRefused,
        auth.agent.spiffe_id.clone(),
    )
    .agent(auth.agent.spiffe_id.clone())
    .task(auth.task.id.clone())
    .incident(auth.task.incident_id.clone())
    .outcome("refused")
    .detail(json!({"tool": tool, "reason": reason}));
    let text = match state.store.commit(Batch::audit_only(ev)).await {
        Ok(_) => format!("refused by Tollgate: {reason}"),
        Err(e) => {
            format!("refused by Tollgate: {reason} (and the refusal could not be audited: {e})")
        }
    };
    Called::refused(tool_error(text, None), None)
}

/// A call mapped to its catalog operation and upstream, ready to decide.
struct Mapped<'s> {
    upstream: &'s Upstream,
    action: String,
    resource: ResourceRef,
    /// What is forwarded: the arguments the attributes were read from.
    args: Map<String, Value>,
    /// What policy sees as parameters: every argument but the resource's.
    parameters: Map<String, Value>,
    /// Names of secret parameters.
    sensitive: Vec<String>,
}

/// Map a call to its catalog operation, upstream and resource; `Err` is the
/// audited refusal of a call that cannot be.
async fn map_call<'s>(
    state: &'s Shared,
    auth: &TaskAuth,
    tool: &str,
    args: Map<String, Value>,
) -> Result<Mapped<'s>, Called> {
    let pack = state.pack.load_full();
    let Some((action, op, binding)) = pack.catalog().by_tool(tool) else {
        return Err(refuse_unmapped(
            state,
            auth,
            tool,
            format!("tool {tool:?} is not bound to any catalog operation, so this gateway does not offer it"),
        )
        .await);
    };
    let Some(upstream) = state.upstreams.get(&binding.server) else {
        return Err(refuse_unmapped(
            state,
            auth,
            tool,
            format!(
                "the catalog binds {tool:?} to upstream {:?}, which tollgate.yaml does not configure",
                binding.server
            ),
        )
        .await);
    };
    // The attributes policy sees come from the arguments, and the arguments
    // forwarded are the ones they were read from (URLs re-serialised).
    let derived = match binding.derive_attributes(args) {
        Ok(d) => d,
        Err(e) => return Err(refuse_unmapped(state, auth, tool, e.to_string()).await),
    };
    let args = derived.arguments;
    let resource_id = match resource_id(&args, binding, op) {
        Ok(id) => id,
        Err(reason) => return Err(refuse_unmapped(state, auth, tool, reason).await),
    };
    let resource = ResourceRef {
        kind: binding.resource_type(op).to_string(),
        id: resource_id,
        attributes: derived.attributes,
    };
    let mut parameters = args.clone();
    parameters.remove(&binding.resource_argument);
    Ok(Mapped {
        upstream,
        action: action.to_string(),
        resource,
        args,
        parameters,
        // Secret anywhere, secret everywhere (as for `/v1/authorize`).
        sensitive: state.pack.load().secret_parameters().to_vec(),
    })
}

/// The id of the resource the call acts on; `Err` says why there is none.
fn resource_id(
    args: &Map<String, Value>,
    binding: &ToolBinding,
    op: &Operation,
) -> Result<String, String> {
    match args.get(&binding.resource_argument) {
        Some(Value::String(s)) if !s.trim().is_empty() => {
            // The same rule as every id at the HTTP edge.
            tollgate_core::text::check_id(s)
                .map_err(|e| format!("argument {:?}: id {e}", binding.resource_argument))?;
            Ok(s.clone())
        }
        _ => Err(format!(
            "argument {:?} names the {} this call acts on; it is required and must be a non-empty string",
            binding.resource_argument,
            binding.resource_type(op)
        )),
    }
}

/// Decide a mapped call in `task`; with `approval_id`, the retry of a held one.
async fn decide_call(
    state: &Shared,
    auth: &TaskAuth,
    call: &Mapped<'_>,
    meta: &CallMeta,
    approval_id: Option<String>,
    task: tollgate_core::Task,
) -> Result<Decided, crate::service::Error> {
    decide_action(
        state,
        ActionAsk {
            task: &task,
            agent: &auth.agent,
            action: &call.action,
            resource: &call.resource,
            intent: &meta.intent,
            parameters: &call.parameters,
            actor: auth.agent.spiffe_id.clone(),
            kind: tollgate_core::EventKind::Decision,
            traceparent: meta.traceparent.clone(),
            approval_id: approval_id.as_deref(),
        },
    )
    .await
}

/// A call that could not be decided (the store failed, say).
fn undecided(e: impl std::fmt::Display) -> Called {
    Called::refused(tool_error(format!("refused by Tollgate: {e}"), None), None)
}

async fn governed(
    state: &Shared,
    auth: &TaskAuth,
    tool: &str,
    args: Map<String, Value>,
    meta: CallMeta,
    ctx: &RequestContext<RoleServer>,
) -> Called {
    let call = match map_call(state, auth, tool, args).await {
        Ok(call) => call,
        Err(refused) => return refused,
    };
    let mut decided = match decide_call(state, auth, &call, &meta, None, auth.task.clone()).await {
        Ok(d) => d,
        Err(e) => return undecided(e),
    };
    // Progress notifications Tollgate sent while holding the call; the
    // tool's own are relayed above them.
    let mut progress_sent = 0;
    if decided.decision.outcome == Outcome::ApprovalRequired {
        let approval_id = match hold(state, auth, &decided, ctx).await {
            Ok((id, sent)) => {
                progress_sent = sent;
                id
            }
            Err(result) => return Called::refused(result, Some(decided.request_id)),
        };
        // The task may have changed (or ended) while the call was held.
        let task = match state.store.task(&auth.task.id).await {
            Ok(Some(t)) => t,
            Ok(None) => {
                return refuse_unmapped(
                    state,
                    auth,
                    tool,
                    format!("task {} is gone after its call was approved", auth.task.id),
                )
                .await
            }
            Err(e) => return undecided(e),
        };
        decided = match decide_call(state, auth, &call, &meta, Some(approval_id), task).await {
            Ok(d) => d,
            Err(e) => return undecided(e),
        };
    }
    if decided.decision.outcome != Outcome::Allow {
        return Called::refused(denied(&decided), Some(decided.request_id));
    }
    let command = json!({"mcp": {
        "server": call.upstream.name, "tool": tool, "arguments": state.audit.redact(&call.args, &call.sensitive),
    }})
    .to_string();
    let secrets = secret_values(&call.args, &call.sensitive);
    let started = std::time::SystemTime::now();
    let upstream = call.upstream.name.clone();
    let called = forward(
        state,
        auth,
        call.upstream,
        tool,
        call.args,
        &secrets,
        &decided.request_id,
        decided.entry.as_ref(),
        &command,
        meta.compensates,
        ctx,
        progress_sent,
    )
    .await;
    state.telemetry.forward(crate::telemetry::ForwardSpan {
        traceparent: meta.traceparent.as_deref(),
        started,
        upstream: &upstream,
        tool,
        request: &decided.request_id,
        task: &auth.task.id,
        outcome: if called.succeeded {
            "succeeded"
        } else {
            "failed"
        },
    });
    called
}

/// The values of the secret arguments, longest first.
///
/// An upstream's error can quote the arguments (a validator's "input
/// value" in a JSON-RPC error's data): its text is stored and answered
/// with every secret argument's value cut out.
fn secret_values(args: &Map<String, Value>, sensitive: &[String]) -> Vec<String> {
    let mut secrets: Vec<String> = sensitive
        .iter()
        .filter_map(|name| args.get(name))
        .map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .filter(|s| s.len() >= 2)
        .collect();
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    secrets
}

fn denied(d: &Decided) -> CallToolResult {
    let what = match d.decision.outcome {
        Outcome::Deny => "denied",
        _ => "not allowed",
    };
    let mut text = format!("{what} by Tollgate (request {})", d.request_id);
    if !d.decision.reasons.is_empty() {
        text.push_str(": ");
        text.push_str(&d.decision.reasons.join("; "));
    }
    if !d.decision.policies.is_empty() {
        text.push_str(&format!(" [policies: {}]", d.decision.policies.join(", ")));
    }
    with_request_id(tool_error(text, Some(decision_json(d))), &d.request_id)
}

/// Hold the call open until its approval is decided. `Ok` carries the
/// granted approval's id and how many progress notifications were sent;
/// `Err` the answer for the agent.
///
/// While it is held, the store records which replica holds it
/// ([`super::held`]): if this process dies, the call is abandoned and its
/// approval withdrawn by whichever replica does the background work.
async fn hold(
    state: &Shared,
    auth: &TaskAuth,
    first: &Decided,
    ctx: &RequestContext<RoleServer>,
) -> Result<(String, u32), CallToolResult> {
    let Some(approval) = &first.approval else {
        return Err(denied(first));
    };
    let id = approval.id.clone();
    let record = super::held::Record::put(
        state,
        &first.request_id,
        &id,
        &auth.task.id,
        &auth.agent.spiffe_id,
    )
    .await;
    let record = match record {
        Ok(r) => r,
        Err(e) => {
            // A hold nothing would end if this process died is not started.
            let why = format!("the held call could not be recorded: {e}");
            abandon(state, auth, first, &id, &why).await;
            return Err(with_request_id(
                tool_error(
                    format!("refused by Tollgate: {why}"),
                    Some(decision_json(first)),
                ),
                &first.request_id,
            ));
        }
    };
    let held = wait_for_approval(state, auth, first, &id, ctx).await;
    record.end().await;
    held
}

/// The wait of [`hold`]: until the approval is settled, the task ends, or
/// the client leaves (which abandons the call).
async fn wait_for_approval(
    state: &Shared,
    auth: &TaskAuth,
    first: &Decided,
    id: &str,
    ctx: &RequestContext<RoleServer>,
) -> Result<(String, u32), CallToolResult> {
    let id = id.to_string();
    let fail = |text: String| {
        with_request_id(
            tool_error(text, Some(decision_json(first))),
            &first.request_id,
        )
    };
    let token = ctx.meta.get_progress_token();
    // Cancelled when the client's HTTP connection for this call closes.
    let gone = ctx
        .extensions
        .get::<http::request::Parts>()
        .and_then(|p| p.extensions.get::<super::ConnectionGone>())
        .map(|g| g.0.clone())
        .unwrap_or_default();
    let every = Duration::from_secs(state.config.mcp.progress_every_seconds);
    let mut next_progress = tokio::time::Instant::now();
    let mut sent = 0u32;
    loop {
        // Registered before the read, so an approval decided in between wakes us.
        let notified = state.approval_events.notified();
        // A task closed or revoked while its call waits stops waiting now,
        // not when the approval expires.
        if let Err(why) = task_still_live(state, auth, &id).await {
            return Err(fail(why));
        }
        let a = match state.store.approval(&id).await {
            Ok(Some(a)) => a,
            Ok(None) => return Err(fail(format!("approval {id} no longer exists"))),
            Err(e) => return Err(fail(format!("approval {id} could not be read: {e}"))),
        };
        // Checked before an approval is acted on too: a grant that arrives
        // after the client left must not run the tool for nobody.
        if gone.is_cancelled() || ctx.ct.is_cancelled() {
            abandon(
                state,
                auth,
                first,
                &id,
                "the client's connection closed or the call was cancelled while it waited for approval",
            )
            .await;
            return Err(fail(
                "the connection closed or the call was cancelled while waiting for approval".into(),
            ));
        }
        match settled(&id, &a, &first.request_id) {
            None => {}
            Some(Ok(())) => return Ok((id, sent)),
            Some(Err(why)) => return Err(fail(why)),
        }
        if let Some(token) = &token {
            if tokio::time::Instant::now() >= next_progress {
                sent += 1;
                let note = held_note(token, sent, &id, &a);
                // A client that stopped listening is noticed through cancellation.
                let _ = ctx.peer.notify_progress(note).await;
                next_progress += every;
            }
        }
        tokio::select! {
            // Cancellation first: a vote and a departure arriving together
            // must not let the call run for nobody.
            biased;
            _ = ctx.ct.cancelled() => {
                abandon(state, auth, first, &id, "the client cancelled the call while it waited for approval").await;
                return Err(fail("cancelled while waiting for approval".into()));
            }
            _ = gone.cancelled() => {
                abandon(state, auth, first, &id, "the client's connection closed while the call waited for approval").await;
                return Err(fail("the connection closed while waiting for approval".into()));
            }
            _ = tokio::time::timeout(Duration::from_secs(1), notified) => {}
        }
    }
}

/// Ok while the held call's task is live; `Err` the answer when it is not.
async fn task_still_live(state: &Shared, auth: &TaskAuth, approval_id: &str) -> Result<(), String> {
    match state.store.task(&auth.task.id).await {
        Ok(Some(t)) if t.is_live(state.now()) => Ok(()),
        Ok(_) => Err(format!(
            "refused by Tollgate: task {} ended while the call waited for approval {approval_id}",
            auth.task.id
        )),
        Err(e) => Err(format!("task {} could not be read: {e}", auth.task.id)),
    }
}

/// How a held call's wait ends once its approval is decided: `Ok` when
/// granted, `Err` the answer when not; `None` while it is pending.
fn settled(id: &str, a: &Approval, request_id: &str) -> Option<Result<(), String>> {
    let reasons = || {
        a.votes
            .iter()
            .filter(|v| !v.approve)
            .map(|v| format!("{}: {}", v.approver, v.reason))
            .collect::<Vec<_>>()
            .join("; ")
    };
    let why = match a.status {
        ApprovalStatus::Pending => return None,
        ApprovalStatus::Approved => return Some(Ok(())),
        ApprovalStatus::Withdrawn => format!(
            "approval {id} was withdrawn: its request was abandoned (request {request_id})"
        ),
        ApprovalStatus::Denied => format!(
            "denied by Tollgate: approval {id} was refused by its approvers ({}) (request {request_id})",
            reasons()
        ),
        ApprovalStatus::Expired => format!(
            "denied by Tollgate: approval {id} expired before enough approvers agreed (request {request_id})"
        ),
        ApprovalStatus::Used => format!(
            "approval {id} was already used by another request (request {request_id})"
        ),
    };
    Some(Err(why))
}

/// The `sent`th progress notification of a held call: where its approval stands.
fn held_note(
    token: &ProgressToken,
    sent: u32,
    id: &str,
    a: &Approval,
) -> ProgressNotificationParam {
    let granted = a.votes.iter().filter(|v| v.approve).count();
    ProgressNotificationParam::new(token.clone(), f64::from(sent)).with_message(format!(
        "held by Tollgate for human approval {id}: {granted} of {} approvals so far; expires {}",
        a.required,
        tollgate_core::clock::rfc3339(a.expires_at)
    ))
}

/// A held call nobody waits for any more: withdraw its approval (so a vote
/// cast later grants nothing) and record the abandonment, in one commit.
/// Nobody is left to answer, so a failure is only logged.
async fn abandon(
    state: &Shared,
    auth: &TaskAuth,
    first: &Decided,
    approval_id: &str,
    reason: &str,
) {
    let agent = &auth.agent.spiffe_id;
    let abandoned = |now| {
        AuditEvent::new(
            now,
            tollgate_core::EventKind::McpCallAbandoned,
            agent.clone(),
        )
        .agent(agent.clone())
        .task(auth.task.id.clone())
        .incident(auth.task.incident_id.clone())
        .request(first.request_id.clone())
        .outcome("abandoned")
        .detail(json!({"approval_id": approval_id, "reason": reason}))
    };
    let w = approvals::Withdrawal {
        task: &auth.task,
        agent,
        actor: agent,
        reason,
    };
    match approvals::withdraw(state, approval_id, &w, abandoned).await {
        Ok(()) => {}
        Err(crate::service::Error::Conflict(_)) => tracing::error!(
            approval_id,
            "could not withdraw an abandoned call's approval after 3 tries"
        ),
        Err(e) => tracing::error!(error = %e, "could not record an abandoned call"),
    }
}

/// Forward an allowed call and record what happened as the executed action.
#[allow(clippy::too_many_arguments)]
async fn forward(
    state: &Shared,
    auth: &TaskAuth,
    upstream: &Upstream,
    tool: &str,
    args: Map<String, Value>,
    secrets: &[String],
    request_id: &str,
    decision: Option<&crate::service::decide::DecisionEntry>,
    command: &str,
    compensates: Option<String>,
    ctx: &RequestContext<RoleServer>,
    progress_held: u32,
) -> Called {
    let timeout = state.upstreams.call_timeout;
    let outcome = match live_audited(state, upstream, Some(&auth.task)).await {
        Ok(live) => {
            let params = CallToolRequestParams::new(tool.to_string()).with_arguments(args);
            // The tool's own progress reaches the agent, if it asked for progress.
            let progress = ctx.meta.get_progress_token().map(|token| {
                crate::upstream::ProgressRoute::new(ctx.peer.clone(), token, progress_held)
            });
            upstream.call(&live, params, timeout, progress).await
        }
        Err(e) => Err(e),
    };
    let mut extra = json!({"via": "mcp", "server": upstream.name, "tool": tool});
    if let Some(c) = &compensates {
        extra["compensates"] = json!(c);
    }
    let (mut result, status, digest) = match outcome {
        Ok(result) => {
            // The digest is of the result exactly as the agent receives it
            // (after redaction, before Tollgate's own `_meta`).
            let digest =
                tollgate_core::sha256_hex(&serde_json::to_vec(&result).unwrap_or_default());
            let status = if result.is_error == Some(true) {
                "failed"
            } else {
                "succeeded"
            };
            (result, status, Some(digest))
        }
        Err(e) => {
            let error = crate::redact::cut(&e.to_string(), secrets);
            extra["error"] = json!(error);
            // A call that timed out or was cut off may have acted: its
            // outcome is unknown, not failed, and its compensation is kept
            // so the rollback plan can still undo it.
            let status = if e.may_have_acted() {
                "unknown"
            } else {
                "failed"
            };
            let text = format!("{error} (request {request_id})");
            (tool_error(text, None), status, None)
        }
    };
    let done = ExecutedAction {
        status,
        command,
        output_digest: digest.as_deref(),
        extra,
    };
    // The call already happened: its record is retried on a transient
    // storage failure, and the agent learns its result either way.
    let mut attempt = 0;
    loop {
        // A retry after an outage may find the first attempt committed after all.
        if attempt > 0 && already_recorded(state, request_id).await {
            break;
        }
        match record_result(state, &auth.task, request_id, decision, done.clone()).await {
            Ok(()) => break,
            Err(crate::service::Error::Unavailable(_)) if attempt < 3 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
            }
            Err(e) => {
                tracing::error!(error = %e, request_id, "could not record an executed MCP call");
                result.content.push(ContentBlock::text(format!(
                    "warning from Tollgate: this call was executed, but its result could not be recorded in the audit log ({e}); tell an administrator (request {request_id})"
                )));
                break;
            }
        }
    }
    Called {
        result: with_request_id(result, request_id),
        request_id: Some(request_id.to_string()),
        succeeded: status == "succeeded",
    }
}

/// Whether an `action.result` for this decision is in the audit log.
async fn already_recorded(state: &Shared, request_id: &str) -> bool {
    state
        .store
        .audit_by_request(request_id)
        .await
        .is_ok_and(|entries| entries.iter().any(|e| e.event.kind == "action.result"))
}

/// `tollgate_rollback`: run the compensations of this task's rollback plan
/// (or of one executed action), newest first, each through [`governed`].
async fn rollback(
    state: &Shared,
    auth: &TaskAuth,
    args: Map<String, Value>,
    ctx: &RequestContext<RoleServer>,
) -> CallToolResult {
    let only = match args.get("request_id") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return tool_error("request_id must be a string".into(), None),
    };
    if let Some(k) = args.keys().find(|k| *k != "request_id") {
        return tool_error(format!("unknown argument {k:?}"), None);
    }
    let claim = match RollbackClaim::take(state, &auth.task).await {
        Ok(claim) => claim,
        Err(refusal) => return refusal,
    };
    let result = run_rollback(state, auth, only, &claim, ctx).await;
    // Given back before answering, so a rollback asked right after this one
    // finds the tree free.
    claim.release().await;
    result
}

/// The rollback itself, under the claim.
async fn run_rollback(
    state: &Shared,
    auth: &TaskAuth,
    only: Option<String>,
    claim: &RollbackClaim,
    ctx: &RequestContext<RoleServer>,
) -> CallToolResult {
    let plan = match crate::service::lifecycle::rollback_plan(state, &auth.task).await {
        Ok(p) => p,
        Err(e) => return tool_error(format!("rollback plan unavailable: {e}"), None),
    };
    let steps: Vec<&Value> = plan
        .iter()
        .filter(|s| s["done"] != json!(true))
        .filter(|s| only.as_deref().is_none_or(|r| s["request_id"] == json!(r)))
        .collect();
    if steps.is_empty() {
        let what = match &only {
            Some(r) => format!("executed action {r} has no compensation left to run in this task"),
            None => "nothing to roll back: no reversible action of this task is left undone".into(),
        };
        return tool_error(what, None);
    }
    let pack = state.pack.load_full();
    let mut report = Vec::new();
    let mut all_ok = true;
    for step in steps {
        let undoes = step["request_id"].as_str().unwrap_or_default().to_string();
        if let Err(lost) = claim.extend().await {
            report.push(json!({"undoes": undoes, "outcome": "skipped", "reason": lost}));
            all_ok = false;
            break;
        }
        let comp = &step["compensation"];
        let action = comp["action"].as_str().unwrap_or_default();
        let resource = comp["resource"].as_str().unwrap_or_default();
        let op = pack.catalog().operation(action);
        let binding = op.and_then(|op| op.tool.clone());
        // Entries recorded before compensations carried `resource_id` hold
        // only the `Type::id` key: split it at the operation's types.
        let id = comp["resource_id"]
            .as_str()
            .or_else(|| {
                let types = op.map_or(&[][..], |op| &op.resource_types[..]);
                tollgate_core::split_resource_key(resource, types).map(|(_, id)| id)
            })
            .filter(|id| !id.is_empty());
        let (binding, id) = match (binding, id) {
            (Some(b), Some(id)) => (b, id),
            (b, _) => {
                // Not run, and on the record: an auditor sees what a rollback left undone.
                let reason = match b {
                    None => format!(
                        "cannot undo {undoes}: {action} has no MCP tool binding in the catalog"
                    ),
                    Some(_) => format!(
                        "cannot undo {undoes}: the recorded compensation names no resource id"
                    ),
                };
                refuse_unmapped(state, auth, ROLLBACK_TOOL, reason.clone()).await;
                all_ok = false;
                report.push(
                    json!({"undoes": undoes, "action": action, "resource": resource,
                    "outcome": "skipped", "reason": reason}),
                );
                continue;
            }
        };
        let mut call_args = comp["parameters"].as_object().cloned().unwrap_or_default();
        call_args.insert(binding.resource_argument.clone(), json!(id));
        let meta = CallMeta {
            intent: format!(
                "rollback: undo {undoes} ({} on {resource})",
                step["executed"]["action"].as_str().unwrap_or_default()
            ),
            traceparent: None,
            compensates: Some(undoes.clone()),
        };
        let called = governed(state, auth, &binding.name, call_args, meta, ctx).await;
        let text: Vec<String> = called
            .result
            .content
            .iter()
            .filter_map(|c| c.as_text().map(|t| t.text.clone()))
            .collect();
        all_ok &= called.succeeded;
        report.push(json!({
            "undoes": undoes, "action": action, "resource": resource,
            "request_id": called.request_id,
            "outcome": if called.succeeded { "succeeded" } else { "failed" },
            "answer": text.join("\n"),
        }));
    }
    let summary = json!({"rolled_back": report});
    let mut r = if all_ok {
        CallToolResult::success(vec![ContentBlock::text(summary.to_string())])
    } else {
        CallToolResult::error(vec![ContentBlock::text(summary.to_string())])
    };
    r.structured_content = Some(summary);
    r
}

/// A running rollback of one delegation tree: plans of a task and of its
/// sub-tasks overlap, and two runs would undo a step twice. The claim is a
/// lease in the store (`Change::AcquireLease`), so it holds across every
/// process over the same database; it is extended before each step, given
/// back when dropped, and expires on its own if this process dies mid-run.
struct RollbackClaim {
    state: Shared,
    key: String,
    holder: String,
    released: bool,
}

impl RollbackClaim {
    /// Claim the rollback of `task`'s tree, or the tool error to answer.
    async fn take(state: &Shared, task: &tollgate_core::Task) -> Result<Self, CallToolResult> {
        let root = match state.store.lineage(&task.id).await {
            Ok(Some(lineage)) => lineage.root().id.clone(),
            Ok(None) => {
                return Err(tool_error(
                    "rollback plan unavailable: the task is gone".into(),
                    None,
                ))
            }
            Err(e) => return Err(tool_error(format!("rollback plan unavailable: {e}"), None)),
        };
        let claim = Self {
            state: state.clone(),
            key: format!("rollback:{root}"),
            holder: crate::service::new_id("rollback"),
            released: false,
        };
        match claim.extend().await {
            Ok(()) => Ok(claim),
            Err(why) => Err(tool_error(format!("refused by Tollgate: {why}"), None)),
        }
    }

    /// Give the lease back now (`Drop` does it in the background otherwise).
    async fn release(mut self) {
        self.released = true;
        let release = Change::ReleaseLease {
            key: self.key.clone(),
            holder: self.holder.clone(),
        };
        if let Err(e) = self
            .state
            .store
            .commit(Batch::default().change(release))
            .await
        {
            tracing::warn!(error = %e, "could not give back a rollback lease; it expires on its own");
        }
    }

    /// Hold the lease for one more step: as long as a step can take (an
    /// approval's whole wait, then the call), so a live run never loses it.
    async fn extend(&self) -> Result<(), String> {
        let now = self.state.now();
        let hold = self.state.config.approvals.default_ttl_seconds.max(0) as u64
            + self.state.upstreams.call_timeout.as_secs()
            + 60;
        let lease = Change::AcquireLease {
            key: self.key.clone(),
            holder: self.holder.clone(),
            until: now.saturating_add(i64::try_from(hold).unwrap_or(i64::MAX)),
            now,
        };
        match self.state.store.commit(Batch::default().change(lease)).await {
            Ok(_) => Ok(()),
            Err(tollgate_store::StoreError::Conflict(_)) => Err(
                "a rollback of this task's delegation tree is already running; wait for it to finish".into(),
            ),
            Err(e) => Err(format!("rollback could not be claimed: {e}")),
        }
    }
}

impl Drop for RollbackClaim {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        // Given back in the background: `drop` cannot wait, and a release
        // that fails leaves a lease that expires on its own.
        let (state, key, holder) = (self.state.clone(), self.key.clone(), self.holder.clone());
        tokio::spawn(async move {
            let release = Change::ReleaseLease { key, holder };
            if let Err(e) = state.store.commit(Batch::default().change(release)).await {
                tracing::warn!(error = %e, "could not give back a rollback lease; it expires on its own");
            }
        });
    }
}
