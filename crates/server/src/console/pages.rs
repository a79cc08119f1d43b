//! The console's HTML. Every value interpolated with `(…)` is escaped by
//! maud for where it lands; nothing here is pre-escaped. Agent-controlled
//! strings (intent, ids, parameters, reasons) are only ever text.

use crate::service::console::{Principal, Session};
use crate::views::ApprovalDetail;
use axum::http::StatusCode;
use maud::{html, Markup, DOCTYPE};
use serde_json::Value;

/// One pending approval in the queue.
pub struct QueueItem {
    pub id: String,
    pub action: String,
    pub resource: String,
    pub agent: String,
    pub intent: String,
    /// The operation's tier, or `unknown` when it left the catalog.
    pub tier: String,
    pub reversible: Option<bool>,
    pub approvals: u32,
    pub required: u32,
    pub denials: u32,
    pub seconds_left: i64,
    pub escalated: bool,
}

/// A result or refusal shown above an approval's form.
pub enum Flash {
    Done(String),
    Refused(String),
}

fn layout(session: Option<&Session>, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Tollgate" }
                link rel="stylesheet" href="/console/assets/console.css";
                script src="/console/assets/console.js" defer {}
            }
            body {
                a class="skip" href="#main" { "Skip to content" }
                header class="top" {
                    span class="brand" { "Tollgate" }
                    @if let Some(s) = session {
                        nav aria-label="Console" {
                            a href="/console/approvals" { "Approvals" }
                            @if s.principal == Principal::Admin {
                                a href="/console/ops" { "Operations" }
                            }
                        }
                        span class="who" {
                            "Signed in as " strong { (s.principal.name()) }
                            @if let Principal::Approver(v) = &s.principal { " (" (v.role) ")" }
                        }
                        form method="post" action="/console/signout" class="inline" {
                            input type="hidden" name="csrf" value=(s.csrf);
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main id="main" { (body) }
            }
        }
    }
}

/// The sign-in page; `with_idp`: the issuer's login page is configured.
pub fn signin(error: Option<&str>, with_idp: bool) -> Markup {
    layout(
        None,
        "Sign in",
        html! {
            h1 { "Sign in" }
            @if let Some(e) = error { p class="alert" role="alert" { (e) } }
            @if with_idp {
                p class="card" { a href="/console/oidc/start" class="idp" { "Sign in with your identity provider" } }
                p class="hint" { "Or paste a credential:" }
            }
            form method="post" action="/console/signin" class="card" {
                label for="credential" { "Approver key, ID token or admin token" }
                input id="credential" name="credential" type="password" autocomplete="off" required autofocus;
                p class="hint" { "The credential is sent once, in this form, and never kept in the browser: the console keeps a session of its own, which ends when you sign out or after a short while." }
                button type="submit" { "Sign in" }
            }
        },
    )
}

pub fn message(title: &str, text: &str) -> Markup {
    layout(
        None,
        title,
        html! { h1 { (title) } p class="alert" role="alert" { (text) } },
    )
}

pub fn error(session: Option<&Session>, status: StatusCode, text: &str) -> Markup {
    let title = status.canonical_reason().unwrap_or("Error");
    layout(
        session,
        title,
        html! {
            h1 { (title) }
            p class="alert" role="alert" { (text) }
            p { a href="/console/approvals" { "Back to the approvals" } }
        },
    )
}

fn time_left(seconds: i64) -> String {
    match seconds {
        s if s <= 0 => "expired".into(),
        s if s < 120 => format!("{s} s left"),
        s if s < 7200 => format!("{} min left", s / 60),
        s => format!("{} h left", s / 3600),
    }
}

/// The list the queue page shows and the live updates replace.
pub fn queue_list(items: &[QueueItem]) -> Markup {
    html! {
        @if items.is_empty() {
            p class="empty" { "Nothing is waiting for a decision." }
        } @else {
            ol class="queue" {
                @for a in items {
                    li class={ "item tier-" (a.tier) } {
                        a href={ "/console/approvals/" (a.id) } class="item-link" {
                            span class="tier" { (a.tier) @if a.reversible == Some(false) { ", irreversible" } }
                            @if a.escalated { span class="tier escalated" { "escalated" } }
                            strong class="what" { (a.action) " on " (a.resource) }
                        }
                        p class="intent" { "“" (a.intent) "”" }
                        p class="meta" {
                            span { (a.agent) }
                            span { (a.approvals) " of " (a.required) " approvals" @if a.denials > 0 { ", " (a.denials) " denied" } }
                            span { (time_left(a.seconds_left)) }
                        }
                    }
                }
            }
        }
    }
}

pub fn queue(session: &Session, items: &[QueueItem]) -> Markup {
    layout(
        Some(session),
        "Approvals",
        html! {
            h1 { "Waiting for a decision" }
            p class="hint" { "Highest risk first, then newest. This list updates by itself." }
            div id="queue" data-live="/console/approvals/queue" aria-live="polite" { (queue_list(items)) }
        },
    )
}

/// A JSON value as text: strings as they are, anything else compact JSON.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "—".into(),
        other => other.to_string(),
    }
}

fn status_of<T: serde::Serialize>(s: &T) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

pub fn detail(
    session: &Session,
    d: &ApprovalDetail,
    seconds_left: i64,
    flash: Option<&Flash>,
) -> Markup {
    let a = &d.approval;
    let status = status_of(&a.status);
    let empty = serde_json::Map::new();
    let params = a.request["parameters"].as_object().unwrap_or(&empty);
    let attrs = a.request["resource"]["attributes"]
        .as_object()
        .unwrap_or(&empty);
    html! {
        (layout(Some(session), &format!("Approval {}", a.id), html! {
            p { a href="/console/approvals" { "← All approvals" } }
            h1 { (a.action) " on " (a.resource) }
            @match flash {
                Some(Flash::Done(m)) => p class="notice" role="status" { (m) },
                Some(Flash::Refused(m)) => p class="alert" role="alert" { "Refused: " (m) },
                None => {},
            }
            p class={ "status status-" (status) } { "Status: " strong { (status) }
                @if status == "pending" { " · " (time_left(seconds_left)) } }
            section class="card" aria-labelledby="who" {
                h2 id="who" { "Who asks, and why" }
                dl {
                    dt { "Agent" } dd { code { (a.agent) } }
                    dt { "Intent" } dd class="intent" { (text(&a.request["intent"])) }
                    dt { "Incident" } dd { (a.incident_id) }
                    dt { "Task" } dd { code { (a.task_id) }
                        @if let Some(t) = &d.task { " · " (t.playbook) " in " (t.environment) ", " (status_of(&t.status)) } }
                    @if let Some(t) = &d.task { dt { "Task intent" } dd { (t.intent) } }
                    dt { "Request" } dd { code { (a.request_id) } }
                }
            }
            section class="card" aria-labelledby="what" {
                h2 id="what" { "What the action does" }
                dl {
                    dt { "Tier" } dd { (d.tier.as_deref().unwrap_or("unknown (not in the catalog)")) }
                    dt { "Reversible" } dd { (match d.reversible { Some(true) => "yes", Some(false) => "no", None => "unknown" }) }
                    dt { "Blast radius" } dd { (d.blast_radius.as_deref().unwrap_or("unknown")) }
                    @if let Some(l) = &d.labels { @if !l.is_empty() { dt { "Labels" } dd { (l.join(", ")) } } }
                }
                h3 { "Parameters" }
                @if params.is_empty() { p class="hint" { "None." } } @else {
                    table { thead { tr { th scope="col" { "Name" } th scope="col" { "Value" } } }
                        tbody { @for (k, v) in params { tr { td { code { (k) } } td { (text(v)) } } } } }
                    p class="hint" { "Secret parameters are shown only as their keyed hash." }
                }
                @if !attrs.is_empty() {
                    h3 { "Resource attributes" }
                    table { tbody { @for (k, v) in attrs { tr { td { code { (k) } } td { (text(v)) } } } } }
                }
            }
            section class="card" aria-labelledby="why" {
                h2 id="why" { "Why it needs approval" }
                ul { @for r in &a.reasons { li { (r) } } }
                p class="hint" { "Policies: " (a.policies.join(", ")) }
            }
            section class="card" aria-labelledby="evidence" {
                h2 id="evidence" { "Evidence" }
                @if d.evidence.is_empty() { p { "No evidence recorded for this task." } } @else {
                    ul { @for e in &d.evidence { li { (e.kind) " about " (e.resource) " · sha256 " code { (e.sha256.get(..16).unwrap_or(&e.sha256)) } "…" } } }
                }
            }
            section class="card" aria-labelledby="chain" {
                h2 id="chain" { "What the task did so far" }
                @if d.chain.is_empty() { p { "Nothing yet." } } @else {
                    table { thead { tr { th scope="col" { "#" } th scope="col" { "When" } th scope="col" { "Action" } th scope="col" { "Resource" } th scope="col" { "Decision" } } }
                        tbody { @for c in &d.chain { tr {
                            td { (c.seq) } td { (c.at) } td { (text(&c.action)) } td { (text(&c.resource)) }
                            td class={ "outcome-" (c.outcome.as_deref().unwrap_or("")) } { (c.outcome.as_deref().unwrap_or("—")) }
                        } } } }
                }
            }
            section class="card" aria-labelledby="votes" {
                h2 id="votes" { "Votes: " (a.approvals) " of " (a.required) " approvals, " (a.denials) " of " (a.deny_threshold) " denials" }
                @if a.votes.is_empty() { p { "No votes yet." } } @else {
                    ul { @for v in &a.votes { li {
                        strong { (if v.approve { "Approved" } else { "Denied" }) } " by " (v.approver) " (" (v.role) "), " (v.at) ": " (v.reason)
                    } } }
                }
            }
            @if status == "pending" {
                @match &session.principal {
                    Principal::Approver(_) => {
                        form method="post" class="card vote" {
                            h2 { "Your decision" }
                            input type="hidden" name="csrf" value=(session.csrf);
                            label for="reason" { "Reason (recorded in the audit log and shown to the other approvers)" }
                            textarea id="reason" name="reason" required maxlength="2048" rows="3" {}
                            div class="buttons" {
                                button type="submit" name="decision" value="approve" class="approve" { "Approve" }
                                button type="submit" name="decision" value="deny" class="deny" { "Deny" }
                            }
                        }
                    }
                    Principal::Admin => p class="hint" { "The admin token cannot vote: sign in with an approver key." },
                }
            }
        }))
    }
}

/// What the operations page shows.
pub struct Ops {
    pub frozen: bool,
    pub incidents: Vec<IncidentTree>,
    pub audit_size: u64,
    pub checkpoint: Option<CheckpointState>,
    pub upstreams: Vec<Value>,
}

/// The newest signed checkpoint, as checked for the page.
pub struct CheckpointState {
    pub size: u64,
    pub at: String,
    pub signature_ok: bool,
    /// Whether its root is the log's root now (`None`: the log grew since).
    pub root_matches_now: Option<bool>,
}

pub struct IncidentTree {
    pub id: String,
    pub status: String,
    pub class: String,
    pub severity: String,
    /// (depth, task); parents before their children.
    pub tasks: Vec<(usize, tollgate_core::Task)>,
}

pub fn ops(session: &Session, o: &Ops, flash: Option<&Flash>) -> Markup {
    layout(
        Some(session),
        "Operations",
        html! {
            h1 { "Operations" }
            @match flash {
                Some(Flash::Done(m)) => p class="notice" role="status" { (m) },
                Some(Flash::Refused(m)) => p class="alert" role="alert" { "Refused: " (m) },
                None => {},
            }
            section class="card" aria-labelledby="brake" {
                h2 id="brake" { "The brake" }
                @if o.frozen {
                    p class="alert" { strong { "FROZEN" } ": every decision is denied." }
                    (confirmable(session, "/console/ops/freeze", "unfreeze", "Unfreeze…"))
                } @else {
                    p { "Not frozen: decisions follow policy." }
                    (confirmable(session, "/console/ops/freeze", "freeze", "Freeze every decision…"))
                }
            }
            section class="card" aria-labelledby="incidents" {
                h2 id="incidents" { "Incidents and their tasks" }
                @if o.incidents.is_empty() { p { "No tasks." } }
                @for i in &o.incidents {
                    article class="incident" {
                        h3 { (i.id) " · " (i.status) " · " (i.class) ", " (i.severity) }
                        p { a href={ "/console/ops/incidents/" (i.id) } { "Timeline of " (i.id) } }
                        @if i.status == "open" {
                            form method="post" action={ "/console/ops/incidents/" (i.id) "/resolve" } class="inline" {
                                input type="hidden" name="csrf" value=(session.csrf);
                                button type="submit" { "Resolve incident (revokes its tasks)" }
                            }
                        }
                        ul class="tree" {
                            @for (depth, t) in &i.tasks {
                                li class={ "depth-" (depth.min(&8)) } {
                                    @if *depth > 0 { span class="delegated" { "↳ delegated: " } }
                                    code { (t.id) } " · " (t.agent) " · " (t.playbook) " · " strong { (t.status.as_str()) }
                                    @if t.status == tollgate_core::TaskStatus::Active {
                                        form method="post" action={ "/console/ops/tasks/" (t.id) "/revoke" } class="inline" {
                                            input type="hidden" name="csrf" value=(session.csrf);
                                            input type="hidden" name="reason" value="revoked from the console";
                                            button type="submit" { "Revoke task" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            section class="card" aria-labelledby="agents" {
                h2 id="agents" { "Agents" }
                form method="post" action="/console/ops/agents/revoke" class="row" {
                    input type="hidden" name="csrf" value=(session.csrf);
                    label for="revoke-agent" { "Revoke an agent (SPIFFE ID) and all its tasks" }
                    input id="revoke-agent" name="agent" required placeholder="spiffe://…";
                    button type="submit" { "Revoke agent" }
                }
                form method="post" action="/console/ops/agents/release" class="row" {
                    input type="hidden" name="csrf" value=(session.csrf);
                    label for="release-agent" { "Release a quarantined agent (SPIFFE ID)" }
                    input id="release-agent" name="agent" required placeholder="spiffe://…";
                    button type="submit" { "Release" }
                }
            }
            section class="card" aria-labelledby="audit" {
                h2 id="audit" { "Audit log" }
                p { (o.audit_size) " entries in one hash chain. This replica checked the chain and every checkpoint's root against it when it started (it refuses to start on a log that fails)." }
                @match &o.checkpoint {
                    Some(c) => {
                        p { "Newest signed checkpoint: " (c.size) " entries, signed " (c.at) "." }
                        ul {
                            li { "Signature: " strong { (if c.signature_ok { "valid" } else { "INVALID" }) } " (checked now with this server's audit key)" }
                            li { "Root: " @match c.root_matches_now {
                                Some(true) => strong { "matches the log now" },
                                Some(false) => strong { "DOES NOT MATCH the log" },
                                None => { (o.audit_size.saturating_sub(c.size)) " entries appended since; the next checkpoint covers them" },
                            } }
                        }
                        p class="hint" { "Verify the whole log independently with " code { "tollgate audit verify" } "." }
                    }
                    None => p { "No signed checkpoint yet." },
                }
            }
            section class="card" aria-labelledby="upstreams" {
                h2 id="upstreams" { "MCP upstreams" }
                @if o.upstreams.is_empty() { p { "None configured." } } @else {
                    table { thead { tr { th scope="col" { "Server" } th scope="col" { "State" } th scope="col" { "Last error" } } }
                        tbody { @for u in &o.upstreams { tr {
                            td { (text(&u["name"])) } td { (text(&u["state"])) } td { (text(&u["failure"]["last_error"])) }
                        } } } }
                }
            }
        },
    )
}

/// A button whose change needs a second, explicit step.
fn confirmable(session: &Session, action: &str, what: &str, label: &str) -> Markup {
    html! {
        form method="post" action=(action) class="inline" {
            input type="hidden" name="csrf" value=(session.csrf);
            input type="hidden" name="what" value=(what);
            button type="submit" class="danger" { (label) }
        }
    }
}

/// The second step of the brake.
pub fn confirm_freeze(session: &Session, freeze: bool) -> Markup {
    let (title, what, warn) = if freeze {
        (
            "Freeze every decision?",
            "freeze",
            "Every agent's every request will be denied until someone unfreezes.",
        )
    } else {
        (
            "Unfreeze?",
            "unfreeze",
            "Decisions will follow policy again.",
        )
    };
    layout(
        Some(session),
        title,
        html! {
            h1 { (title) }
            p class="alert" role="alert" { (warn) }
            form method="post" action="/console/ops/freeze" class="card" {
                input type="hidden" name="csrf" value=(session.csrf);
                input type="hidden" name="what" value=(what);
                input type="hidden" name="confirm" value="yes";
                div class="buttons" {
                    button type="submit" class="danger" { "Yes, " (what) }
                    a href="/console/ops" { "Cancel" }
                }
            }
        },
    )
}

/// One incident's audit entries, oldest first: what happened, who did it.
pub fn timeline(
    session: &Session,
    incident: &str,
    entries: &[tollgate_audit::AuditEntry],
    more: bool,
) -> Markup {
    layout(
        Some(session),
        &format!("Incident {incident}"),
        html! {
            p { a href="/console/ops" { "← Operations" } }
            h1 { "Timeline of " (incident) }
            @if entries.is_empty() { p { "No audit entries name this incident." } } @else {
                table {
                    thead { tr { th scope="col" { "#" } th scope="col" { "When" } th scope="col" { "What" } th scope="col" { "Who" } th scope="col" { "Task" } th scope="col" { "Outcome" } th scope="col" { "Detail" } } }
                    tbody { @for e in entries { tr {
                        td { (e.seq) }
                        td { (tollgate_core::clock::rfc3339(e.event.ts)) }
                        td { code { (e.event.kind) } }
                        td { (e.event.actor) }
                        td { code { (e.event.task_id.as_deref().unwrap_or("")) } }
                        td { (e.event.outcome.as_deref().unwrap_or("")) }
                        td class="detail" { (summary(&e.event.detail)) }
                    } } }
                }
                @if more { p class="hint" { "The first 1000 entries; " code { "tollgate audit export --format ocsf --incident " (incident) } " has them all." } }
            }
        },
    )
}

/// An entry's detail in a line: the fields people read first, as text.
fn summary(detail: &Value) -> String {
    let mut out = Vec::new();
    for key in [
        "action",
        "resource",
        "reason",
        "reasons",
        "approval_id",
        "status",
    ] {
        if let Some(v) = detail.get(key) {
            let t = text(v);
            let t: String = t.chars().take(200).collect();
            out.push(format!("{key}: {t}"));
        }
    }
    out.join("; ")
}

/// After signing in through the issuer: a page that moves on by itself. A
/// redirect would not do: the browser came here from the issuer's site, and
/// a `SameSite=Strict` cookie is not sent on a redirect that started there;
/// a navigation this page starts is same-site.
pub fn signed_in() -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta http-equiv="refresh" content="0;url=/console/approvals";
                title { "Signed in · Tollgate" }
                link rel="stylesheet" href="/console/assets/console.css";
            }
            body { main id="main" { p { "Signed in. " a href="/console/approvals" { "Continue to the approvals" } } } }
        }
    }
}
