//! The approvals queue (live), one approval's page, and the vote.

use super::pages::{self, Flash, QueueItem};
use super::session::{change_form, Console};
use super::{error_page, html};
use crate::api::auth::Shared;
use crate::service::approvals::{describe, load, vote as cast_vote};
use crate::service::console::Principal;
use crate::service::Error;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use std::time::Duration;
use tollgate_core::{ApprovalStatus, Tier};
use tollgate_store::ApprovalFilter;

/// Most approvals the queue shows.
const QUEUE: usize = 200;

fn risk(tier: Option<Tier>) -> u8 {
    match tier {
        Some(Tier::Destructive) => 4,
        None => 3, // not in the catalog any more: treat as risky
        Some(Tier::Change) => 2,
        Some(Tier::Contain) => 1,
        Some(Tier::Read) => 0,
    }
}

/// Pending approvals, highest risk first, then newest.
async fn pending(state: &Shared) -> Result<Vec<QueueItem>, Error> {
    let now = state.now();
    let pack = state.pack.load();
    let mut list: Vec<(u8, i64, QueueItem)> = state
        .store
        .approvals(ApprovalFilter {
            status: Some(ApprovalStatus::Pending),
            limit: 10_000,
            ..Default::default()
        })
        .await?
        .into_iter()
        // Past due: the sweep expires it within a second; never offer it.
        .filter(|a| a.expires_at > now)
        .map(|a| {
            let op = pack.catalog().operation(&a.action);
            let (yes, no) = a.tally();
            let item = QueueItem {
                tier: op.map_or("unknown", |o| o.tier.as_str()).to_string(),
                reversible: op.map(|o| o.reversible),
                intent: a.request["intent"].as_str().unwrap_or("").to_string(),
                id: a.id,
                action: a.action,
                resource: a.resource,
                agent: a.agent,
                approvals: yes,
                required: a.required,
                denials: no,
                seconds_left: a.expires_at - now,
                escalated: a.escalated,
            };
            (risk(op.map(|o| o.tier)), a.created_at, item)
        })
        .collect();
    list.sort_by(|x, y| y.0.cmp(&x.0).then(y.1.cmp(&x.1)));
    Ok(list.into_iter().take(QUEUE).map(|(_, _, i)| i).collect())
}

pub async fn queue_page(c: Console, State(state): State<Shared>) -> Response {
    match pending(&state).await {
        Ok(items) => html(StatusCode::OK, pages::queue(&c.session, &items)),
        Err(e) => error_page(Some(&c.session), e),
    }
}

/// The queue's list alone, fetched by the page's script on every update.
pub async fn queue_fragment(c: Console, State(state): State<Shared>) -> Response {
    match pending(&state).await {
        Ok(items) => html(StatusCode::OK, pages::queue_list(&items)),
        Err(e) => error_page(Some(&c.session), e),
    }
}

/// What identifies the pending set: ids and versions (a vote bumps it).
async fn fingerprint(state: &Shared) -> Result<String, Error> {
    let list = state
        .store
        .approvals(ApprovalFilter {
            status: Some(ApprovalStatus::Pending),
            limit: 10_000,
            ..Default::default()
        })
        .await?;
    let now = state.now();
    let mut text = String::new();
    for a in list.iter().filter(|a| a.expires_at > now) {
        text.push_str(&a.id);
        text.push(':');
        text.push_str(&a.version.to_string());
        text.push(',');
    }
    Ok(tollgate_core::sha256_hex(text.as_bytes()))
}

/// Server-sent events: `approvals` whenever the pending set changes
/// (opened, voted on, decided, expired, spent), on this replica or any
/// other: this process's changes wake it at once, and the store is read at
/// least every second for everyone else's. Ends with the session.
pub async fn events(c: Console, State(state): State<Shared>) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(4);
    let secret = c.secret;
    tokio::spawn(async move {
        let mut last = String::new();
        let mut beat = 0u32;
        loop {
            // Signed out, expired or disabled: stop.
            if !matches!(
                crate::service::console::session(&state, &secret).await,
                Ok(Some(_))
            ) {
                return;
            }
            let frame = match fingerprint(&state).await {
                Ok(f) if f != last => {
                    last = f;
                    Some(format!("event: approvals\ndata: {last}\n\n"))
                }
                Ok(_) => {
                    beat += 1;
                    // A comment every 15 s keeps proxies from closing the stream.
                    beat.is_multiple_of(15)
                        .then(|| ": keep-alive\n\n".to_string())
                }
                Err(_) => Some("event: unavailable\ndata: store\n\n".to_string()),
            };
            if let Some(frame) = frame {
                if tx.send(Ok(frame)).await.is_err() {
                    return; // the browser went away
                }
            }
            let notified = state.approval_events.notified();
            tokio::select! {
                // The server is stopping: end the stream so it can.
                () = state.stopping.cancelled() => return,
                _ = tokio::time::timeout(Duration::from_secs(1), notified) => {}
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

async fn render_detail(state: &Shared, c: &Console, id: &str, flash: Option<&Flash>) -> Response {
    let result = async {
        let a = load(state, id).await?;
        let pack = state.pack.load();
        let d = describe(state, &pack, &a).await?;
        Ok::<_, Error>((d, a.expires_at - state.now()))
    }
    .await;
    match result {
        Ok((d, left)) => {
            let status = match flash {
                Some(Flash::Refused(_)) => StatusCode::FORBIDDEN,
                _ => StatusCode::OK,
            };
            html(status, pages::detail(&c.session, &d, left, flash))
        }
        Err(e) => error_page(Some(&c.session), e),
    }
}

pub async fn detail_page(
    c: Console,
    State(state): State<Shared>,
    Path(id): Path<String>,
) -> Response {
    if id.len() > 128 {
        return error_page(Some(&c.session), Error::NotFound("approval".into()));
    }
    render_detail(&state, &c, &id, None).await
}

#[derive(Deserialize)]
struct VoteForm {
    csrf: String,
    reason: String,
    decision: String,
}

/// An approver's vote through the same operation as the API's: policy's
/// refusals (wrong role, separation of duties, a second vote, too late) are
/// shown on the page, never swallowed.
pub async fn vote(
    c: Console,
    State(state): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let f: VoteForm = match change_form(&headers, &c, &body, |f: &VoteForm| &f.csrf) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let Principal::Approver(voter) = &c.session.principal else {
        let why =
            Flash::Refused("the admin token cannot vote; sign in with an approver key".into());
        return render_detail(&state, &c, &id, Some(&why)).await;
    };
    let approve = match f.decision.as_str() {
        "approve" => true,
        "deny" => false,
        _ => {
            return error_page(
                Some(&c.session),
                Error::invalid("decision must be approve or deny"),
            )
        }
    };
    let reason = f.reason.trim();
    if reason.is_empty() || reason.len() > 2048 {
        let why = Flash::Refused("a reason of 1 to 2048 bytes is required".into());
        return render_detail(&state, &c, &id, Some(&why)).await;
    }
    // The audit entry says the vote came through the console, and how its
    // caster signed in.
    let voter = crate::service::approvals::Voter {
        via: if voter.via == "oidc" {
            "console/oidc"
        } else {
            "console/key"
        },
        ..voter.clone()
    };
    let flash = match cast_vote(&state, &id, &voter, approve, reason).await {
        Ok(a) => Flash::Done(format!(
            "Your {} vote is recorded; the approval is {}.",
            if approve { "approve" } else { "deny" },
            a.status.as_str()
        )),
        Err(Error::Forbidden(m) | Error::Conflict(m)) => Flash::Refused(m),
        Err(e) => return error_page(Some(&c.session), e),
    };
    render_detail(&state, &c, &id, Some(&flash)).await
}
