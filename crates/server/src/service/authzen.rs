//! AuthZEN evaluations of non-agent subjects (the general PDP): decided
//! by the pack (`PolicyPack::decide_general`) and audited before the
//! answer, refusals included. Agent subjects go through `decide.rs`, like
//! `/v1/authorize`.

use super::Error;
use crate::state::AppState;
use serde_json::json;
use tollgate_audit::AuditEvent;
use tollgate_core::{Decision, EventKind};
use tollgate_policy::{GeneralRequest, PolicyError};
use tollgate_store::Batch;

/// Decide `r` for the enforcement point `pep`, and record it (or its
/// refusal) durably first. A request that cannot be decided is
/// [`Error::Invalid`], recorded with outcome `refused`.
pub async fn decide_general(
    state: &AppState,
    pep: &str,
    r: &GeneralRequest<'_>,
    traceparent: Option<&str>,
) -> Result<Decision, Error> {
    let started = std::time::SystemTime::now();
    let pack = state.pack.load_full();
    let request_id = super::new_id("req");
    let decided = pack.decide_general(r);
    let (outcome, reasons, policies) = match &decided {
        Ok(d) => (d.outcome.as_str(), d.reasons.clone(), d.policies.clone()),
        Err(e) => ("refused", vec![e.to_string()], Vec::new()),
    };
    // Ids and the verdict only: properties and context are the PEP's data
    // and may hold anything.
    let event = AuditEvent::new(
        state.now(),
        EventKind::AuthzenDecision,
        format!("pep:{pep}"),
    )
    .request(request_id.clone())
    .outcome(outcome)
    .detail(json!({
        "subject": format!("{}::{}", r.subject_type, r.subject_id),
        "action": r.action,
        "resource": format!("{}::{}", r.resource_type, r.resource_id),
        "reasons": reasons,
        "policies": policies,
        "policy_digest": pack.digest(),
    }));
    state.store.commit(Batch::audit_only(event)).await?;
    let subject = format!("{}::{}", r.subject_type, r.subject_id);
    state.telemetry.decision(crate::telemetry::DecisionSpan {
        traceparent,
        started,
        via: "authzen.decision",
        outcome,
        action: r.action,
        resource: format!("{}::{}", r.resource_type, r.resource_id),
        policies: &policies,
        task: "",
        incident: "",
        agent: &subject,
        request: &request_id,
    });
    match decided {
        Ok(decision) => Ok(decision),
        Err(PolicyError::BadRequest(message)) => Err(Error::Invalid {
            code: "invalid_request",
            message,
        }),
        Err(e) => Err(Error::Internal(e.to_string())),
    }
}

/// Which of the three AuthZEN searches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchKind {
    Subject,
    Resource,
    Action,
}

impl SearchKind {
    fn as_str(self) -> &'static str {
        match self {
            SearchKind::Subject => "subject",
            SearchKind::Resource => "resource",
            SearchKind::Action => "action",
        }
    }
}

/// A search: the evaluation with the searched-for part left open.
pub struct SearchRequest<'a> {
    pub kind: SearchKind,
    /// The evaluation every candidate fills in (its open part ignored).
    pub template: GeneralRequest<'a>,
    /// Where this page starts, from the previous page's token.
    pub offset: usize,
    pub limit: usize,
}

/// One page of matches: ids (subjects, resources) or action names, and
/// whether more follow.
pub struct SearchPage {
    pub results: Vec<String>,
    pub more: bool,
}

/// Evaluate every candidate of a search (the pack's entities of the
/// searched type, or the schema's actions between the two types) and
/// return the page of those allowed. One audit entry records the search,
/// committed before the answer. Candidates are few (the pack's entity
/// data) and each is a pure, in-process Cedar evaluation.
pub async fn search(
    state: &AppState,
    pep: &str,
    s: &SearchRequest<'_>,
) -> Result<SearchPage, Error> {
    let pack = state.pack.load_full();
    let t = &s.template;
    let candidates = match s.kind {
        SearchKind::Subject => pack.entity_ids(t.subject_type),
        SearchKind::Resource => pack.entity_ids(t.resource_type),
        SearchKind::Action => pack.actions_between(t.subject_type, t.resource_type),
    };
    let mut allowed = Vec::new();
    for c in &candidates {
        let mut r = GeneralRequest { ..*t };
        match s.kind {
            SearchKind::Subject => r.subject_id = c,
            SearchKind::Resource => r.resource_id = c,
            SearchKind::Action => r.action = c,
        }
        // A candidate the pack cannot decide is not a match.
        if pack
            .decide_general(&r)
            .is_ok_and(|d| d.outcome == tollgate_core::Outcome::Allow)
        {
            allowed.push(c.clone());
        }
    }
    let page: Vec<String> = allowed
        .iter()
        .skip(s.offset)
        .take(s.limit)
        .cloned()
        .collect();
    let more = s.offset + page.len() < allowed.len();
    let event = AuditEvent::new(state.now(), EventKind::AuthzenSearch, format!("pep:{pep}"))
        .request(super::new_id("req"))
        .outcome("searched")
        .detail(json!({
            "search": s.kind.as_str(),
            "subject": format!("{}::{}", t.subject_type, t.subject_id),
            "action": t.action,
            "resource": format!("{}::{}", t.resource_type, t.resource_id),
            "candidates": candidates.len(),
            "matches": allowed.len(),
            "page": page,
            "policy_digest": pack.digest(),
        }));
    state.store.commit(Batch::audit_only(event)).await?;
    Ok(SearchPage {
        results: page,
        more,
    })
}

/// Record an evaluation refused before it could be decided (ids that break
/// the API's rules, no live task for an agent, a request that does not fit
/// the schema): every evaluation leaves an entry, committed before the
/// answer. Only the refused request's ids and the reason are kept.
pub async fn record_refused(state: &AppState, pep: &str, what: Refused<'_>) -> Result<(), Error> {
    let event = AuditEvent::new(
        state.now(),
        EventKind::AuthzenDecision,
        format!("pep:{pep}"),
    )
    .request(super::new_id("req"))
    .outcome("refused")
    .detail(json!({
        "subject": what.subject,
        "action": what.action,
        "resource": what.resource,
        "reasons": [what.reason],
        "policies": [],
        "status": what.status,
    }));
    state.store.commit(Batch::audit_only(event)).await?;
    Ok(())
}

/// An evaluation refused before a decision: `Type::id` of its subject and
/// resource, its action, why, and the HTTP status it stands for.
pub struct Refused<'a> {
    pub subject: String,
    pub action: &'a str,
    pub resource: String,
    pub reason: &'a str,
    pub status: u16,
}
