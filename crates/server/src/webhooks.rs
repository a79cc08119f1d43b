//! Notifications (webhooks) through an outbox in the store.
//!
//! A notification is queued ([`Change::Enqueue`]) in the same commit as the
//! change it reports, so it exists exactly when that change does: a process
//! that dies right after committing cannot lose it, and a commit that fails
//! sends nothing. Every process runs a delivery worker ([`run_worker`]); a
//! worker claims a message with a short lease before sending it, so with
//! several replicas over one store each message is sent by one of them (at
//! least once: a claimer that dies mid-delivery leaves its lease to expire,
//! and another sends the message again).
//!
//! A webhook that fails never blocks, allows or denies anything by itself:
//! after its attempts it leaves a `webhook.failed` audit entry and a log line.

use crate::config::{ServerConfig, WebhookConfig, WebhookFormat};
use crate::state::AppState;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tollgate_audit::AuditEvent;
use tollgate_core::{Approval, EventKind, UnixTime};
use tollgate_store::{Batch, Change, OutboxMessage, StoreError};

/// Attempts per claim, with backoff between them (250 ms, 1 s).
const ATTEMPTS: u32 = 3;
/// How long a claim lasts: longer than every attempt with its timeout and
/// backoff (3 × 5 s + 1.25 s), so a live claimer is never overtaken, and
/// short, since a claimer that died delays its messages this long.
const CLAIM_SECONDS: i64 = 20;
/// How often a worker looks for messages nobody is sending (queued by a
/// replica that died, or whose claimer died).
const POLL: Duration = Duration::from_secs(1);
/// A polling worker leaves messages younger than this to the process that
/// queued them, which sends them at once (it is woken by its own commit).
const GRACE_SECONDS: i64 = 2;
/// Most messages one pass claims.
const PASS: usize = 64;

/// Agent-chosen strings must not become Slack links or mentions.
fn slack_escape(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn payload(
    hook: &WebhookConfig,
    event: &str,
    approval: &Approval,
    view: &crate::views::ApprovalView,
) -> Value {
    match hook.format {
        WebhookFormat::Json => json!({"event": event, "approval": view}),
        WebhookFormat::Slack => {
            let (yes, no) = approval.tally();
            json!({"text": format!(
                "[tollgate] {event}: {} wants {} on {} (incident {}); {}/{} approvals, {} denials; status {}; approval id {}",
                slack_escape(&approval.agent), slack_escape(&approval.action), slack_escape(&approval.resource), slack_escape(&approval.incident_id),
                yes, approval.required, no, approval.status.as_str(), approval.id
            )})
        }
    }
}

fn deliver(url: &str, body: &str) -> Result<(), String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .http_status_as_error(false)
        .build()
        .into();
    let resp = agent
        .post(url)
        .header("content-type", "application/json")
        .send(body)
        .map_err(|e| e.to_string())?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(format!("status {}", resp.status()))
    }
}

/// The messages that tell every webhook that wants it about `event` on
/// `approval`; the caller commits them with the change they report.
pub fn approval_messages(
    config: &ServerConfig,
    event: EventKind,
    approval: &Approval,
    now: UnixTime,
) -> Vec<Change> {
    let view = crate::views::view(approval);
    messages(config, event, &approval.id, now, |hook| {
        payload(hook, event.as_str(), approval, &view)
    })
}

/// The messages of an alert (`task.revoked`, `agent.quarantined`) with `detail`.
pub fn alert_messages(
    config: &ServerConfig,
    event: EventKind,
    subject: &str,
    text: &str,
    detail: &Value,
    now: UnixTime,
) -> Vec<Change> {
    messages(config, event, subject, now, |hook| match hook.format {
        WebhookFormat::Json => json!({"event": event.as_str(), "alert": detail}),
        WebhookFormat::Slack => {
            json!({"text": format!("[tollgate] {}: {}", event.as_str(), slack_escape(text))})
        }
    })
}

fn messages(
    config: &ServerConfig,
    event: EventKind,
    subject: &str,
    now: UnixTime,
    body_for: impl Fn(&WebhookConfig) -> Value,
) -> Vec<Change> {
    config
        .webhooks
        .iter()
        .filter(|h| h.events.is_empty() || h.events.iter().any(|e| e == event.as_str()))
        .map(|hook| {
            Change::Enqueue(OutboxMessage {
                id: format!("msg_{}", uuid::Uuid::now_v7().simple()),
                sink: hook.name.clone(),
                event: event.as_str().to_string(),
                subject: subject.to_string(),
                body: body_for(hook).to_string(),
                created_at: now,
            })
        })
        .collect()
}

/// Deliver queued messages until the process ends: at once when this
/// process queued some ([`AppState::outbox_ready`]), and every [`POLL`]
/// for those nobody else is sending. Runs only where webhooks are configured.
pub async fn run_worker(state: Arc<AppState>) {
    if state.config.webhooks.is_empty() {
        return;
    }
    loop {
        let woken = tokio::select! {
            () = state.outbox_ready.notified() => true,
            () = tokio::time::sleep(POLL) => false,
        };
        let now = state.now();
        let created_by = if woken { now } else { now - GRACE_SECONDS };
        match state.store.outbox_due(created_by, now, PASS).await {
            Ok(due) => {
                for m in due {
                    let state = state.clone();
                    tokio::spawn(async move { send_claimed(&state, m).await });
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the webhook outbox"),
        }
    }
}

/// Claim `m`, send it, and dequeue it (with a `webhook.failed` entry if
/// every attempt failed). Another process holding the claim: nothing to do.
async fn send_claimed(state: &AppState, m: OutboxMessage) {
    let now = state.now();
    // A holder per claim, so two passes of this process cannot both
    // claim one message either.
    let claim = Change::AcquireLease {
        key: OutboxMessage::lease_key(&m.id),
        holder: format!("claim_{}", uuid::Uuid::now_v7().simple()),
        until: now.saturating_add(CLAIM_SECONDS),
        now,
    };
    match state.store.commit(Batch::default().change(claim)).await {
        Ok(_) => {}
        Err(StoreError::Conflict(_)) => return,
        Err(e) => {
            tracing::warn!(error = %e, "cannot claim a webhook message");
            return;
        }
    }
    let failure = match state.config.webhooks.iter().find(|h| h.name == m.sink) {
        None => Some(format!(
            "webhook {} is not configured on this replica",
            m.sink
        )),
        Some(hook) => send_with_retries(&hook.url, &m.body).await.err(),
    };
    let mut batch = Batch::default().change(Change::Dequeue { id: m.id.clone() });
    if let Some(error) = failure {
        tracing::warn!(webhook = %m.sink, %error, "webhook delivery failed");
        batch = batch.event(
            AuditEvent::new(state.now(), EventKind::WebhookFailed, "tollgate")
                .outcome("failed")
                .detail(json!({
                    "webhook": m.sink, "event": m.event, "subject": m.subject,
                    "error": error, "attempts": ATTEMPTS,
                })),
        );
    }
    // If this fails the claim expires and another pass sends it again:
    // at least once, never silently dropped.
    if let Err(e) = state.store.commit(batch).await {
        tracing::error!(error = %e, "cannot dequeue a sent webhook message");
    }
}

/// Up to [`ATTEMPTS`] posts with backoff; the last error if all fail.
async fn send_with_retries(url: &str, body: &str) -> Result<(), String> {
    let mut last_err = String::new();
    for n in 0..ATTEMPTS {
        if n > 0 {
            tokio::time::sleep(Duration::from_millis(250 * 4u64.pow(n - 1))).await;
        }
        let (url, b) = (url.to_string(), body.to_string());
        match tokio::task::spawn_blocking(move || deliver(&url, &b)).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => last_err = e,
            Err(e) => last_err = e.to_string(),
        }
    }
    Err(last_err)
}
