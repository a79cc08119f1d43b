//! Approval notifications. Delivery runs in the background with retries; a
//! webhook that fails never blocks, allows or denies anything by itself, it
//! only leaves a `webhook.failed` audit entry and a log line.

use crate::config::{WebhookConfig, WebhookFormat};
use crate::state::AppState;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tollgate_audit::AuditEvent;
use tollgate_core::Approval;
use tollgate_store::Batch;

const ATTEMPTS: u32 = 3;

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

fn deliver(url: &str, body: &Value) -> Result<(), String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .http_status_as_error(false)
        .build()
        .into();
    let resp = agent.post(url).send_json(body).map_err(|e| e.to_string())?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(format!("status {}", resp.status()))
    }
}

/// Send `event` about `approval` to every webhook that wants it.
pub fn fire(state: &Arc<AppState>, event: &'static str, approval: &Approval) {
    let view = crate::views::view(approval);
    let bodies = |hook: &WebhookConfig| payload(hook, event, approval, &view);
    send(state, event, approval.id.clone(), bodies);
}

/// Send an alert (`task.revoked`, `agent.quarantined`) with `detail`.
pub fn alert(
    state: &Arc<AppState>,
    event: &'static str,
    subject: String,
    text: String,
    detail: Value,
) {
    let bodies = |hook: &WebhookConfig| match hook.format {
        WebhookFormat::Json => json!({"event": event, "alert": detail}),
        WebhookFormat::Slack => {
            json!({"text": format!("[tollgate] {event}: {}", slack_escape(&text))})
        }
    };
    send(state, event, subject, bodies);
}

fn send(
    state: &Arc<AppState>,
    event: &'static str,
    subject: String,
    body_for: impl Fn(&WebhookConfig) -> Value,
) {
    for hook in state
        .config
        .webhooks
        .iter()
        .filter(|h| h.events.is_empty() || h.events.iter().any(|e| e == event))
    {
        let body = body_for(hook);
        let (hook, state, subject) = (hook.clone(), state.clone(), subject.clone());
        tokio::spawn(async move {
            let mut last_err = String::new();
            for attempt in 0..ATTEMPTS {
                if attempt > 0 {
                    tokio::time::sleep(Duration::from_millis(250 * 4u64.pow(attempt - 1))).await;
                }
                let (url, b) = (hook.url.clone(), body.clone());
                match tokio::task::spawn_blocking(move || deliver(&url, &b)).await {
                    Ok(Ok(())) => return,
                    Ok(Err(e)) => last_err = e,
                    Err(e) => last_err = e.to_string(),
                }
            }
            tracing::warn!(webhook = %hook.name, error = %last_err, "webhook delivery failed");
            let ev = AuditEvent::new(state.now(), tollgate_core::EventKind::WebhookFailed, "tollgate").outcome("failed").detail(json!({
                "webhook": hook.name, "event": event, "subject": subject, "error": last_err, "attempts": ATTEMPTS,
            }));
            if let Err(e) = state.store.commit(Batch::audit_only(ev)).await {
                tracing::error!(error = %e, "cannot audit a failed webhook");
            }
        });
    }
}
