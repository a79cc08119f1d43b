//! Decisions for subjects that are not agents: AuthZEN's general PDP
//! (users, services, any entity type the pack declares).
//!
//! The Cedar request is the AuthZEN request, type for type:
//! - principal `<subject.type>::"<subject.id>"`, resource
//!   `<resource.type>::"<resource.id>"`, action `Action::"<action.name>"`;
//! - entities: the pack's `entities.json`, plus the subject and the
//!   resource as the request describes them (`properties` become their
//!   attributes) when the pack holds no entity of that id: the pack's data
//!   wins over what a caller claims;
//! - context: the request's `context`, with `action.properties` (if any)
//!   as `context.action`.
//!
//! Agent semantics stay with agents: a tool-catalog operation or a
//! `task.*` action is refused here (it is decided only within a task), and
//! so is a subject of the pack's `Agent` type. Everything else fails
//! closed: a request Cedar cannot evaluate is a deny naming the failing
//! policies, never an error that could be read as a permit.

use crate::{PolicyError, PolicyPack};
use cedar_policy::{Context, Entities, EntityUid, Request};
use serde_json::{json, Map, Value};
use tollgate_core::Decision;

/// One AuthZEN evaluation of a non-agent subject.
pub struct GeneralRequest<'a> {
    pub subject_type: &'a str,
    pub subject_id: &'a str,
    pub subject_properties: &'a Map<String, Value>,
    pub action: &'a str,
    pub action_properties: &'a Map<String, Value>,
    pub resource_type: &'a str,
    pub resource_id: &'a str,
    pub resource_properties: &'a Map<String, Value>,
    pub context: &'a Map<String, Value>,
}

fn uid(kind: &str, id: &str) -> Result<EntityUid, PolicyError> {
    EntityUid::from_json(json!({"type": kind, "id": id}))
        .map_err(|e| PolicyError::BadRequest(format!("{kind}::{id:?} is not an entity id: {e}")))
}

impl PolicyPack {
    /// Decide a general AuthZEN evaluation (see the module docs).
    pub fn decide_general(&self, r: &GeneralRequest<'_>) -> Result<Decision, PolicyError> {
        if self.catalog().operation(r.action).is_some()
            || r.action.starts_with("task.")
            || r.action == "approve"
        {
            return Err(PolicyError::BadRequest(format!(
                "action {:?} is decided for agents within a task; use subject type \"agent\" and context.task_id",
                r.action
            )));
        }
        if r.subject_type == "Agent" {
            return Err(PolicyError::BadRequest(
                "subject type Agent is an agent: use subject type \"agent\" and context.task_id"
                    .into(),
            ));
        }
        let principal = uid(r.subject_type, r.subject_id)?;
        let resource = uid(r.resource_type, r.resource_id)?;
        let action = uid("Action", r.action)?;
        let known = |u: &EntityUid| self.entities().get(u).is_some();
        let mut described = Vec::new();
        for (u, props) in [
            (&principal, r.subject_properties),
            (&resource, r.resource_properties),
        ] {
            // The same entity named twice (a user reading their own record)
            // is described once.
            if !known(u) && !described.iter().any(|(d, _): &(EntityUid, _)| d == u) {
                described.push((u.clone(), props));
            }
        }
        let described: Vec<Value> = described
            .into_iter()
            .map(|(u, props)| {
                json!({
                    "uid": {"type": u.type_name().to_string(), "id": u.id().unescaped()},
                    "attrs": props,
                    "parents": [],
                })
            })
            .collect();
        // What a caller describes is checked against nothing but Cedar's
        // own grammar: the schema does not know the attributes a PEP sends.
        let extra = Entities::from_json_value(Value::Array(described), None)
            .map_err(|e| PolicyError::BadRequest(format!("subject or resource properties: {e}")))?;
        let entities = self
            .entities()
            .clone()
            .add_entities(extra, None)
            .map_err(|e| PolicyError::BadRequest(format!("entities: {e}")))?;
        let mut context = r.context.clone();
        if !r.action_properties.is_empty() {
            context.insert("action".into(), Value::Object(r.action_properties.clone()));
        }
        let context = Context::from_json_value(Value::Object(context), None)
            .map_err(|e| PolicyError::BadRequest(format!("context: {e}")))?;
        let request = Request::new(principal, action, resource, context, None)
            .map_err(|e| PolicyError::BadRequest(format!("request: {e}")))?;
        Ok(self.evaluate(&request, &entities, false))
    }
}
