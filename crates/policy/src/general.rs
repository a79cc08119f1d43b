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
#[derive(Clone, Copy)]
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
        if agents_only(self, r.action) {
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

/// Whether `action` is decided only for agents (never by the general PDP).
fn agents_only(pack: &PolicyPack, action: &str) -> bool {
    pack.catalog().operation(action).is_some() || action.starts_with("task.") || action == "approve"
}

impl PolicyPack {
    /// The ids of the pack's entities of type `kind`, sorted: the
    /// candidates of an AuthZEN subject or resource search.
    pub fn entity_ids(&self, kind: &str) -> Vec<String> {
        let mut ids: Vec<String> = self
            .entities()
            .iter()
            .filter(|e| e.uid().type_name().to_string() == kind)
            .map(|e| e.uid().id().unescaped().to_string())
            .collect();
        ids.sort();
        ids
    }

    /// The actions the schema lets `principal` do to `resource` (entity
    /// type names), agent-only ones left out, sorted: the candidates of
    /// an AuthZEN action search.
    pub fn actions_between(&self, principal: &str, resource: &str) -> Vec<String> {
        let mut names: Vec<String> = self
            .schema()
            .actions()
            .filter(|a| {
                let named = |types: Option<Vec<String>>, want: &str| {
                    types.is_some_and(|t| t.iter().any(|n| n == want))
                };
                named(
                    self.schema()
                        .principals_for_action(a)
                        .map(|i| i.map(ToString::to_string).collect()),
                    principal,
                ) && named(
                    self.schema()
                        .resources_for_action(a)
                        .map(|i| i.map(ToString::to_string).collect()),
                    resource,
                )
            })
            .map(|a| a.id().unescaped().to_string())
            .filter(|name| !agents_only(self, name))
            .collect();
        names.sort();
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn todo_pack() -> PolicyPack {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/authzen-todo");
        PolicyPack::load_dir(&dir).unwrap()
    }

    const MORTY: &str = "CiRmZDE2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs";
    const BETH: &str = "CiRmZDM2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs";

    fn ask(
        pack: &PolicyPack,
        subject: &str,
        subject_properties: &Map<String, Value>,
        action: &str,
        owner: &str,
    ) -> Result<Decision, PolicyError> {
        let empty = Map::new();
        let resource = json!({"ownerID": owner});
        pack.decide_general(&GeneralRequest {
            subject_type: "user",
            subject_id: subject,
            subject_properties,
            action,
            action_properties: &empty,
            resource_type: "todo",
            resource_id: "t-1",
            resource_properties: resource.as_object().unwrap(),
            context: &empty,
        })
    }

    #[test]
    fn the_packs_entity_data_decides_and_wins_over_what_a_caller_claims() {
        let pack = todo_pack();
        let none = Map::new();
        let allow =
            |d: Result<Decision, PolicyError>| d.unwrap().outcome == tollgate_core::Outcome::Allow;
        assert!(allow(ask(
            &pack,
            MORTY,
            &none,
            "can_update_todo",
            "morty@the-citadel.com"
        )));
        assert!(!allow(ask(
            &pack,
            MORTY,
            &none,
            "can_update_todo",
            "rick@the-citadel.com"
        )));
        // Beth is a viewer in entities.json; claiming admin changes nothing.
        let claims = json!({"email": "beth@the-smiths.com", "roles": ["admin", "editor"]});
        let claims = claims.as_object().unwrap();
        assert!(!allow(ask(&pack, BETH, claims, "can_create_todo", "")));
        // A subject the pack does not hold is described by the request.
        assert!(allow(ask(&pack, "new-hire", claims, "can_create_todo", "")));
        // Unknown and undescribed: the policy cannot evaluate, so it denies.
        assert!(!allow(ask(&pack, "nobody", &none, "can_create_todo", "")));
    }

    #[test]
    fn agent_actions_are_refused_and_search_candidates_come_from_the_pack() {
        let pack = todo_pack();
        let none = Map::new();
        for action in ["task.open", "task.delegate", "approve"] {
            assert!(matches!(
                ask(&pack, MORTY, &none, action, ""),
                Err(PolicyError::BadRequest(_))
            ));
        }
        assert_eq!(pack.entity_ids("user").len(), 5);
        assert!(pack.entity_ids("todo").is_empty());
        assert_eq!(
            pack.actions_between("user", "todo"),
            [
                "can_create_todo",
                "can_delete_todo",
                "can_read_todos",
                "can_update_todo"
            ]
        );
        assert_eq!(pack.actions_between("user", "user"), ["can_read_user"]);
        assert!(pack.actions_between("Agent", "Incident").is_empty());
    }
}
