//! The parts of the OpenAPI document every handler shares: the error
//! answers each kind of operation can give (one place, mirroring the
//! extractors that produce them), the id rule as a schema, and schemas of
//! types defined in crates that do not depend on utoipa. Each of those is
//! checked against the real type by the tests at the bottom, so the
//! document cannot drift from what the server sends.

use crate::api::error::ErrorBody;
use serde::Serialize;
use std::borrow::Cow;
use std::collections::BTreeMap;
use tollgate_core::text::MAX_ID_BYTES;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Response, ResponseBuilder};
use utoipa::{IntoResponses, PartialSchema, ToSchema};

fn error(description: &str) -> RefOr<Response> {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name(ErrorBody::name())))
                .build(),
        )
        .build()
        .into()
}

fn responses(list: &[(u16, &str)]) -> BTreeMap<String, RefOr<Response>> {
    list.iter()
        .map(|(status, what)| (status.to_string(), error(what)))
        .collect()
}

const BAD_REQUEST: &str =
    "Bad request: malformed JSON (`invalid_json`), a body that does not match the schema \
     (`invalid_body`), a path or query parameter that breaks the id rule or does not parse \
     (`invalid_path`, `invalid_query`), or a value the operation refuses (`bad_request`, \
     `invalid_request`). Nothing is changed.";

/// 401, 403 and 503: what every operation behind a credential can answer.
/// The credential extractors (`crate::auth`) refuse with 401 or 403 and
/// audit the refusal, which needs the store (503 when it cannot commit).
pub struct Secured;

impl IntoResponses for Secured {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        responses(&[
            (401, "The bearer credential is missing, malformed, expired, revoked, of another kind, or names a task that can no longer act (`unauthorized`)."),
            (403, "The caller is known but may not do this: a revoked agent, another task's credential, a PEP key reading approvals, an approver the `approve` policy refuses (`forbidden`)."),
            (503, "The store cannot answer or commit: failing closed (`unavailable`)."),
        ])
    }
}

/// 400, 413 and 415: what every operation with a JSON body can answer
/// (`crate::api::auth::ApiJson`, under the router's body limit).
pub struct JsonBody;

impl IntoResponses for JsonBody {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        responses(&[
            (400, BAD_REQUEST),
            (413, "The body is larger than 64 KiB (`payload_too_large`)."),
            (
                415,
                "The body is not `application/json` (`unsupported_media_type`).",
            ),
        ])
    }
}

/// 400: a path or query parameter that breaks the id rule or does not parse
/// (`crate::api::auth::ApiPath`, `crate::api::auth::ApiQuery`), or a value refused.
pub struct BadInput;

impl IntoResponses for BadInput {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        responses(&[(400, BAD_REQUEST)])
    }
}

/// 404: the id named in the path (or body) is not known.
pub struct NotFound;

impl IntoResponses for NotFound {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        responses(&[(404, "Nothing with that id (`not_found`).")])
    }
}

/// 409: the state does not allow it (already ended, already decided, raced).
pub struct Conflict;

impl IntoResponses for Conflict {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        responses(&[(409, "The current state does not allow this: already ended, already decided or used, or changed concurrently (`conflict`).")])
    }
}

/// 503 for operations that use the store without a credential.
pub struct Unavailable;

impl IntoResponses for Unavailable {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        responses(&[(
            503,
            "The store cannot answer or commit: failing closed (`unavailable`).",
        )])
    }
}

/// The basic-plane code points the id rule refuses
/// (`tollgate_core::text::is_invisible_or_control`), as inclusive ranges,
/// derived from the rule itself so the document cannot drift from it. The
/// rule's refusals outside the basic plane (tags, private use planes,
/// noncharacters) are named in the description: a JSON Schema pattern
/// cannot portably name astral code points.
fn refused_in_ids() -> &'static [(u32, u32)] {
    static RANGES: std::sync::OnceLock<Vec<(u32, u32)>> = std::sync::OnceLock::new();
    RANGES.get_or_init(|| {
        let mut ranges: Vec<(u32, u32)> = Vec::new();
        for c in (0..=0xFFFFu32).filter_map(char::from_u32) {
            if !tollgate_core::text::is_invisible_or_control(c) {
                continue;
            }
            let u = c as u32;
            match ranges.last_mut() {
                Some((_, end)) if *end + 1 == u => *end = u,
                _ => ranges.push((u, u)),
            }
        }
        ranges
    })
}

fn id_pattern() -> String {
    let class: String = refused_in_ids()
        .iter()
        .map(|(a, b)| {
            if a == b {
                format!("\\u{a:04X}")
            } else {
                format!("\\u{a:04X}-\\u{b:04X}")
            }
        })
        .collect();
    format!("^[^{class}]+$")
}

/// The id rule (`tollgate_core::text`): what every incident, task, agent,
/// resource, action and name sent by a caller must be.
pub struct Id;

impl PartialSchema for Id {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(MAX_ID_BYTES))
            .pattern(Some(id_pattern()))
            .description(Some(format!(
                "An identifier: 1 to {MAX_ID_BYTES} bytes of visible text, not only whitespace, \
                 with no leading or trailing white space and no control or invisible characters \
                 (C0/C1 controls, bidi marks, overrides and isolates, zero-width marks, BOM, \
                 variation selectors, fillers, private use, noncharacters, and outside the \
                 basic plane tags and supplementary private use). Anything else is refused with 400."
            )))
            .into()
    }
}

impl ToSchema for Id {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Id")
    }
}

/// A free-form JSON object.
pub struct Object;

impl PartialSchema for Object {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new().schema_type(Type::Object).into()
    }
}

impl ToSchema for Object {}

/// `tollgate_policy::ResourceRef`: the resource an action targets.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResourceRef {
    /// Cedar entity type, e.g. `Host`, `Account`.
    #[serde(rename = "type")]
    #[schema(value_type = Id)]
    pub kind: String,
    #[schema(value_type = Id)]
    pub id: String,
    /// Attributes, checked against the schema's declaration of the type.
    #[schema(value_type = Object, required = false)]
    pub attributes: serde_json::Value,
}

/// `tollgate_core::IncidentRef`: what an agent says about the incident when
/// it opens a task (the first report records it).
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IncidentRef {
    /// An id (see `Id`) of at most 128 bytes.
    #[schema(min_length = 1, max_length = 128)]
    pub id: String,
    /// `malware`, `credential-leak`, …: an id of at most 64 bytes.
    #[schema(min_length = 1, max_length = 64)]
    pub class: String,
    pub severity: Severity,
}

pub use crate::views::{ApprovalStatus, IncidentStatus, Outcome, Severity, TaskStatus};

/// Which approvals to list: a status, or `all`.
pub struct ApprovalStatusFilter;

impl PartialSchema for ApprovalStatusFilter {
    fn schema() -> RefOr<Schema> {
        let mut names: Vec<String> = ApprovalStatus::ALL
            .iter()
            .filter_map(|s| serde_json::to_value(s).ok())
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        names.push("all".into());
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(names))
            .into()
    }
}

impl ToSchema for ApprovalStatusFilter {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("ApprovalStatusFilter")
    }
}

/// `tollgate_core::Scope`: what a task may touch beyond what policy allows.
/// Absent: whatever policy permits; a list narrows it.
#[derive(Serialize, ToSchema)]
pub struct Scope {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actions: Option<Vec<String>>,
    /// Resources as `Type::id`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resources: Option<Vec<String>>,
}

/// `tollgate_core::Incident`.
#[derive(Serialize, ToSchema)]
pub struct Incident {
    pub id: String,
    pub class: String,
    pub severity: Severity,
    pub status: IncidentStatus,
    /// Unix seconds.
    pub updated_at: i64,
}

/// `tollgate_audit::checkpoint::Checkpoint`: a signed Merkle checkpoint.
#[derive(Serialize, ToSchema)]
pub struct Checkpoint {
    pub origin: String,
    pub tree_size: u64,
    /// Lowercase hex Merkle root of the first `tree_size` entries.
    pub root_hash: String,
    /// Unix seconds.
    pub timestamp: i64,
    pub key_id: String,
    /// Base64 Ed25519 signature over the checkpoint body.
    pub signature: String,
}

/// `tollgate_audit::AuditEvent`: what happened.
#[derive(Serialize, ToSchema)]
pub struct AuditEvent {
    /// Unix seconds.
    pub ts: i64,
    /// Dotted event kind: `agent.registered`, `task.opened`, `decision`, …
    pub kind: String,
    /// Who caused it: a SPIFFE ID, `admin`, `pep:<name>`, or `anonymous`.
    pub actor: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub incident_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_task_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// `allow`, `deny`, `approval_required`, `refused`, …
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// Kind-specific detail (free-form; secrets appear only as keyed hashes).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub detail: Option<serde_json::Value>,
}

/// `tollgate_audit::AuditEntry`: an event as stored, numbered and chained.
#[derive(Serialize, ToSchema)]
pub struct AuditEntry {
    pub seq: u64,
    /// Lowercase hex SHA-256 of the previous entry.
    pub prev_hash: String,
    /// Lowercase hex SHA-256 of this entry.
    pub hash: String,
    pub event: AuditEvent,
}

/// `tollgate_identity::Actor`: RFC 8693 actor claim, nested for each hop.
#[derive(Serialize, ToSchema)]
pub struct Actor {
    pub sub: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(no_recursion)]
    pub act: Option<Box<Actor>>,
}

/// `tollgate_policy::Diagnostic`: one problem in a policy pack.
#[derive(Serialize, ToSchema)]
pub struct Diagnostic {
    pub file: String,
    pub line: u64,
    pub column: u64,
    pub message: String,
}

/// One public key (RFC 7517), Ed25519.
#[derive(Serialize, ToSchema)]
pub struct Jwk {
    /// `OKP`.
    pub kty: String,
    /// `Ed25519`.
    pub crv: String,
    pub x: String,
    pub kid: String,
    /// `EdDSA`.
    pub alg: String,
    #[serde(rename = "use")]
    pub use_: String,
}

/// Why an MCP upstream is down, and when it is tried again.
#[derive(Serialize, ToSchema)]
pub struct UpstreamFailure {
    pub last_error: String,
    pub retry_after_ms: u64,
}

/// A tool an MCP upstream offers.
#[derive(Serialize, ToSchema)]
pub struct UpstreamTool {
    pub name: String,
    /// The catalog operation it is bound to; `null`: not offered to agents.
    pub operation: Option<String>,
}

/// An MCP upstream server as the gateway sees it.
#[derive(Serialize, ToSchema)]
pub struct UpstreamStatus {
    pub name: String,
    /// `stdio` or `http`.
    pub transport: String,
    /// The program or URL (never arguments, headers or secrets).
    pub target: String,
    /// `connected`, `connecting`, `closed` or `not connected`.
    pub state: String,
    pub ever_connected: bool,
    pub failure: Option<UpstreamFailure>,
    /// The tools, when connected.
    pub tools: Option<Vec<UpstreamTool>>,
}

/// What was executed (from the `action.result` entry).
#[derive(Serialize, ToSchema)]
pub struct Executed {
    #[schema(value_type = Option<String>)]
    pub action: serde_json::Value,
    #[schema(value_type = Option<String>)]
    pub resource: serde_json::Value,
    #[schema(value_type = Option<String>)]
    pub command: serde_json::Value,
    /// `succeeded`, `failed`, or `unknown` (a forwarded call that timed out).
    pub outcome: Option<String>,
}

/// One step of a rollback plan: an executed reversible action and what undoes it.
#[derive(Serialize, ToSchema)]
pub struct RollbackStep {
    pub task_id: String,
    pub request_id: Option<String>,
    pub executed_at: String,
    pub executed: Executed,
    /// The compensating operation: `{action, resource, resource_type, resource_id, parameters}`.
    #[schema(value_type = Object)]
    pub compensation: serde_json::Value,
    /// The compensation has since run and succeeded.
    pub done: bool,
}

/// One server-sent event of a `text/event-stream` answer: `data` is a
/// JSON-RPC message (empty on the stream's priming event).
#[derive(Serialize, ToSchema)]
pub struct SseEvent {
    pub data: Option<String>,
    pub event: Option<String>,
    pub id: Option<String>,
    /// Milliseconds before a client reconnects.
    pub retry: Option<u64>,
}

/// A JSON-RPC 2.0 message of the Model Context Protocol: a request, a
/// notification or a response.
#[derive(Serialize, ToSchema)]
#[schema(examples(json!({
    "jsonrpc": "2.0", "id": 1, "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "agent", "version": "1.0"}},
})))]
pub struct JsonRpcMessage {
    /// `2.0`.
    pub jsonrpc: String,
    #[schema(value_type = Option<Object>)]
    pub id: Option<serde_json::Value>,
    pub method: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub params: Option<serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    use std::collections::BTreeSet;

    fn props<T: PartialSchema>() -> BTreeSet<String> {
        match T::schema() {
            RefOr::T(Schema::Object(o)) => o.properties.keys().cloned().collect(),
            other => panic!("not an object schema: {}", json!(other)),
        }
    }

    fn keys(v: Value) -> BTreeSet<String> {
        v.as_object().unwrap().keys().cloned().collect()
    }

    #[test]
    fn the_id_pattern_refuses_exactly_what_the_id_rule_refuses() {
        for c in (0..=0xFFFFu32).filter_map(char::from_u32) {
            let refused = refused_in_ids()
                .iter()
                .any(|(a, b)| (*a..=*b).contains(&(c as u32)));
            assert_eq!(
                refused,
                tollgate_core::text::is_invisible_or_control(c),
                "U+{:04X}",
                c as u32
            );
        }
        assert!(id_pattern().starts_with("^[^\\u0000-\\u001F\\u007F-\\u009F\\u00AD"));
    }

    #[test]
    fn mirrored_enums_serialise_like_the_real_ones() {
        use tollgate_core as c;
        for s in [
            c::Severity::Low,
            c::Severity::Medium,
            c::Severity::High,
            c::Severity::Critical,
        ] {
            assert_eq!(json!(Severity::from(s)), json!(s));
        }
        for s in [
            c::IncidentStatus::Open,
            c::IncidentStatus::Resolved,
            c::IncidentStatus::Closed,
        ] {
            assert_eq!(json!(IncidentStatus::from(s)), json!(s));
        }
        for s in [
            c::TaskStatus::Active,
            c::TaskStatus::Completed,
            c::TaskStatus::Failed,
            c::TaskStatus::Revoked,
        ] {
            assert_eq!(json!(TaskStatus::from(s)), json!(s));
            assert_eq!(json!(s).as_str(), Some(s.as_str()));
        }
        for m in ApprovalStatus::ALL {
            let name = json!(m);
            let real: c::ApprovalStatus = name.as_str().unwrap().parse().unwrap();
            assert_eq!(ApprovalStatus::from(real), *m);
            assert_eq!(real.as_str(), name.as_str().unwrap());
        }
        for o in [
            c::Outcome::Allow,
            c::Outcome::Deny,
            c::Outcome::ApprovalRequired,
        ] {
            assert_eq!(json!(Outcome::from(o)), json!(o));
            assert_eq!(json!(o).as_str(), Some(o.as_str()));
        }
        assert_eq!(Severity::ALL.len(), 4);
        assert_eq!(IncidentStatus::ALL.len(), 3);
        assert_eq!(TaskStatus::ALL.len(), 4);
    }

    #[test]
    fn mirrored_structs_have_the_real_types_fields() {
        let resource = tollgate_policy::ResourceRef {
            kind: "Host".into(),
            id: "web-1".into(),
            attributes: Default::default(),
        };
        assert_eq!(props::<ResourceRef>(), keys(json!(resource)));
        let incident = tollgate_core::IncidentRef {
            id: "INC-1".into(),
            class: "malware".into(),
            severity: tollgate_core::Severity::High,
        };
        assert_eq!(props::<IncidentRef>(), keys(json!(incident)));
        let scope = tollgate_core::Scope {
            actions: Some(Default::default()),
            resources: Some(Default::default()),
        };
        assert_eq!(props::<Scope>(), keys(json!(scope)));
        let full = tollgate_core::Incident {
            id: "INC-1".into(),
            class: "malware".into(),
            severity: tollgate_core::Severity::High,
            status: tollgate_core::IncidentStatus::Open,
            updated_at: 1,
        };
        assert_eq!(props::<Incident>(), keys(json!(full)));
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let cp = tollgate_audit::checkpoint::Checkpoint::sign("o", 1, &[0; 32], 1, &key);
        assert_eq!(props::<Checkpoint>(), keys(json!(cp)));
        let event = tollgate_audit::AuditEvent::new(1, tollgate_core::EventKind::Decision, "a")
            .incident("i")
            .task("t")
            .parent_task(Some("p".into()))
            .request("r")
            .agent("g")
            .outcome("o")
            .detail(json!({"x": 1}));
        assert_eq!(props::<AuditEvent>(), keys(json!(event)));
        let entry = tollgate_audit::chain(1, tollgate_audit::GENESIS, event);
        assert_eq!(props::<AuditEntry>(), keys(json!(entry)));
        let actor = tollgate_identity::Actor {
            sub: "a".into(),
            act: Some(Box::new(tollgate_identity::Actor {
                sub: "b".into(),
                act: None,
            })),
        };
        assert_eq!(props::<Actor>(), keys(json!(actor)));
        let diag = tollgate_policy::Diagnostic {
            file: "f".into(),
            line: 1,
            column: 2,
            message: "m".into(),
        };
        assert_eq!(props::<Diagnostic>(), keys(json!(diag)));
        let (pair, _) = tollgate_identity::SigningKeyPair::generate().unwrap();
        assert_eq!(props::<Jwk>(), keys(pair.public_jwk().clone()));
    }
}
