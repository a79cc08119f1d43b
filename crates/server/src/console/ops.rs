//! Operations, for the admin: incidents and their task trees, revocation,
//! resolving an incident, the brake (with a confirmation step), releasing
//! a quarantined agent, the audit log's state and the MCP upstreams.

use super::pages::{self, Flash, IncidentTree, Ops};
use super::session::{change_form, Console};
use super::{error_page, html};
use crate::api::auth::Shared;
use crate::service::console::Principal;
use crate::service::lifecycle::{self, IncidentChange, Target};
use crate::service::{admin, gateway, Error};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use std::collections::BTreeMap;
use tollgate_core::{IncidentStatus, Task};
use tollgate_store::TaskFilter;

/// Most tasks the page lists (newest first by id, which is time-ordered).
const TASKS: usize = 500;

fn admin_only(c: &Console) -> Result<(), Response> {
    if c.session.principal == Principal::Admin {
        Ok(())
    } else {
        Err(error_page(
            Some(&c.session),
            Error::Forbidden("operations are for the admin; approvers decide approvals".into()),
        ))
    }
}

/// Tasks of one incident as a tree: roots, then each task's delegations
/// below it (depth-first), so a delegation is seen under its parent.
fn tree(tasks: Vec<Task>) -> Vec<(usize, Task)> {
    let ids: std::collections::HashSet<String> = tasks.iter().map(|t| t.id.clone()).collect();
    let mut children: BTreeMap<Option<String>, Vec<Task>> = BTreeMap::new();
    for t in tasks {
        // A parent outside the listed set: show the task as a root.
        let parent = t.parent_task_id.clone().filter(|p| ids.contains(p));
        children.entry(parent).or_default().push(t);
    }
    let mut out = Vec::new();
    let mut stack: Vec<(usize, Task)> = children
        .remove(&None)
        .unwrap_or_default()
        .into_iter()
        .rev()
        .map(|t| (0, t))
        .collect();
    while let Some((depth, t)) = stack.pop() {
        if let Some(kids) = children.remove(&Some(t.id.clone())) {
            stack.extend(kids.into_iter().rev().map(|k| (depth + 1, k)));
        }
        out.push((depth, t));
    }
    out
}

async fn gather(state: &Shared) -> Result<Ops, Error> {
    let frozen = state
        .store
        .setting(tollgate_store::FROZEN_KEY)
        .await?
        .is_some_and(|v| v == "true");
    let tasks = state
        .store
        .tasks(TaskFilter {
            limit: TASKS,
            ..Default::default()
        })
        .await?;
    let mut by_incident: BTreeMap<String, Vec<Task>> = BTreeMap::new();
    for t in tasks {
        by_incident
            .entry(t.incident_id.clone())
            .or_default()
            .push(t);
    }
    let mut incidents = Vec::new();
    for (id, tasks) in by_incident.into_iter().rev() {
        let i = state.store.incident(&id).await?;
        incidents.push(IncidentTree {
            status: i
                .as_ref()
                .map_or("unknown", |i| i.status.as_str())
                .to_string(),
            class: i.as_ref().map(|i| i.class.clone()).unwrap_or_default(),
            severity: i.as_ref().map_or("", |i| i.severity.as_str()).to_string(),
            id,
            tasks: tree(tasks),
        });
    }
    let head = state.store.audit_head().await?;
    let newest = state.store.checkpoints().await?.pop();
    let checkpoint = newest.map(|c| {
        // The signature, checked now against this server's audit key; the
        // root, against the log when nothing was appended since (every
        // checkpoint's root was checked against the log at startup).
        let signature = c.verify(&state.audit.signing.verifying_key());
        let root = (c.tree_size == head.size).then(|| c.root_hash == hex::encode(head.root_hash));
        pages::CheckpointState {
            size: c.tree_size,
            at: tollgate_core::clock::rfc3339(c.timestamp),
            signature_ok: signature.is_ok(),
            root_matches_now: root,
        }
    });
    let pack = state.pack.load_full();
    let upstreams = state
        .upstreams
        .iter()
        .map(|u| u.status(pack.catalog()))
        .collect();
    Ok(Ops {
        frozen,
        incidents,
        audit_size: head.size,
        checkpoint,
        upstreams,
    })
}

async fn render(state: &Shared, c: &Console, flash: Option<&Flash>) -> Response {
    match gather(state).await {
        Ok(o) => {
            let status = match flash {
                Some(Flash::Refused(_)) => StatusCode::CONFLICT,
                _ => StatusCode::OK,
            };
            html(status, pages::ops(&c.session, &o, flash))
        }
        Err(e) => error_page(Some(&c.session), e),
    }
}

pub async fn page(c: Console, State(state): State<Shared>) -> Response {
    if let Err(r) = admin_only(&c) {
        return r;
    }
    render(&state, &c, None).await
}

/// Parse, check the origin and token, and that the caller is the admin.
fn admitted<T: serde::de::DeserializeOwned>(
    c: &Console,
    headers: &HeaderMap,
    body: &Bytes,
    csrf: impl Fn(&T) -> &str,
) -> Result<T, Response> {
    let f = change_form(headers, c, body, csrf)?;
    admin_only(c)?;
    Ok(f)
}

/// After a change: the page again, saying what happened (or why not).
async fn after(state: &Shared, c: &Console, result: Result<String, Error>) -> Response {
    match result {
        Ok(done) => render(state, c, Some(&Flash::Done(done))).await,
        Err(Error::Conflict(m) | Error::NotFound(m) | Error::Forbidden(m)) => {
            render(state, c, Some(&Flash::Refused(m))).await
        }
        Err(Error::Invalid { message, .. }) => {
            render(state, c, Some(&Flash::Refused(message))).await
        }
        Err(e) => error_page(Some(&c.session), e),
    }
}

/// Most entries the timeline shows.
const TIMELINE: usize = 1000;

/// One incident's audit entries, oldest first.
pub async fn timeline(c: Console, State(state): State<Shared>, Path(id): Path<String>) -> Response {
    if let Err(r) = admin_only(&c) {
        return r;
    }
    if id.len() > 256 {
        return error_page(Some(&c.session), Error::NotFound("incident".into()));
    }
    let entries = state
        .store
        .audit(tollgate_store::AuditQuery {
            incident_id: Some(id.clone()),
            limit: TIMELINE + 1,
            ..Default::default()
        })
        .await;
    match entries {
        Ok(mut entries) => {
            let more = entries.len() > TIMELINE;
            entries.truncate(TIMELINE);
            html(
                StatusCode::OK,
                pages::timeline(&c.session, &id, &entries, more),
            )
        }
        Err(e) => error_page(Some(&c.session), e.into()),
    }
}

#[derive(Deserialize)]
pub struct FreezeForm {
    csrf: String,
    what: String,
    #[serde(default)]
    confirm: Option<String>,
}

/// The brake: the first post asks to confirm; the confirmed one acts.
pub async fn freeze(
    c: Console,
    State(state): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let f: FreezeForm = match admitted(&c, &headers, &body, |f: &FreezeForm| &f.csrf) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let freeze = match f.what.as_str() {
        "freeze" => true,
        "unfreeze" => false,
        _ => {
            return error_page(
                Some(&c.session),
                Error::invalid("what must be freeze or unfreeze"),
            )
        }
    };
    if f.confirm.as_deref() != Some("yes") {
        return html(StatusCode::OK, pages::confirm_freeze(&c.session, freeze));
    }
    let result = gateway::set_frozen(&state, freeze, "admin (console)")
        .await
        .map(|()| {
            if freeze {
                "Frozen: every decision is denied.".into()
            } else {
                "Unfrozen.".into()
            }
        });
    after(&state, &c, result).await
}

#[derive(Deserialize)]
pub struct RevokeForm {
    csrf: String,
    #[serde(default)]
    reason: Option<String>,
}

pub async fn revoke_task(
    c: Console,
    State(state): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let f: RevokeForm = match admitted(&c, &headers, &body, |f: &RevokeForm| &f.csrf) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let reason = f
        .reason
        .unwrap_or_else(|| "revoked from the console".into());
    let result = lifecycle::revoke(&state, Target::Task(id.clone()), &reason)
        .await
        .map(|ids| format!("Revoked {} task(s): {}.", ids.len(), ids.join(", ")));
    after(&state, &c, result).await
}

#[derive(Deserialize)]
pub struct AgentForm {
    csrf: String,
    agent: String,
}

pub async fn revoke_agent(
    c: Console,
    State(state): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let f: AgentForm = match admitted(&c, &headers, &body, |f: &AgentForm| &f.csrf) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let result = lifecycle::revoke(
        &state,
        Target::Agent(f.agent.trim().to_string()),
        "revoked from the console",
    )
    .await
    .map(|ids| format!("Agent revoked with {} task(s).", ids.len()));
    after(&state, &c, result).await
}

pub async fn release_agent(
    c: Console,
    State(state): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let f: AgentForm = match admitted(&c, &headers, &body, |f: &AgentForm| &f.csrf) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let result = admin::release_agent(
        &state,
        f.agent.trim(),
        Some("released from the console".into()),
    )
    .await
    .map(|id| format!("Released {id}."));
    after(&state, &c, result).await
}

pub async fn resolve_incident(
    c: Console,
    State(state): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let f: super::session::CsrfOnly =
        match admitted(&c, &headers, &body, |f: &super::session::CsrfOnly| &f.csrf) {
            Ok(f) => f,
            Err(r) => return r,
        };
    let _ = f;
    let change = IncidentChange {
        status: Some(IncidentStatus::Resolved),
        class: None,
        severity: None,
        reason: Some("resolved from the console".into()),
    };
    let result = lifecycle::update_incident(&state, &id, change)
        .await
        .map(|c| {
            format!(
                "Incident {} resolved; {} task(s) revoked.",
                c.incident.id,
                c.revoked_tasks.len()
            )
        });
    after(&state, &c, result).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str, parent: Option<&str>) -> Task {
        Task {
            id: id.into(),
            agent: "a".into(),
            incident_id: "I".into(),
            environment: "prod".into(),
            playbook: "p".into(),
            intent: "i".into(),
            scope: Default::default(),
            parent_task_id: parent.map(str::to_string),
            created_at: 0,
            expires_at: 1,
            max_expires_at: 1,
            status: tollgate_core::TaskStatus::Active,
            status_reason: None,
        }
    }

    #[test]
    fn delegations_sit_under_their_parents() {
        let got: Vec<(usize, String)> = tree(vec![
            task("c", Some("b")),
            task("b", Some("a")),
            task("a", None),
            task("d", None),
            task("e", Some("gone")),
        ])
        .into_iter()
        .map(|(d, t)| (d, t.id))
        .collect();
        assert_eq!(
            got,
            vec![
                (0, "a".to_string()),
                (1, "b".to_string()),
                (2, "c".to_string()),
                (0, "d".to_string()),
                (0, "e".to_string()),
            ]
        );
    }
}
