//! Building the Cedar request from verified facts.

use crate::context_use::ContextUse;
use crate::{PolicyError, PolicyPack};
use cedar_policy::{
    Context, Entities, Entity, EntityId, EntityTypeName, EntityUid, Request, RestrictedExpression,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::str::FromStr;
use tollgate_core::{Decision, Incident, SpiffeId, Task, UnixTime};

/// The verified caller.
#[derive(Debug, Clone, Copy)]
pub struct AgentFacts<'a> {
    pub spiffe_id: &'a SpiffeId,
    pub owner: &'a str,
}

/// The resource an action targets, as the agent names it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceRef {
    #[serde(rename = "type")]
    #[serde(deserialize_with = "tollgate_core::text::id")]
    pub kind: String,
    #[serde(deserialize_with = "tollgate_core::text::id")]
    pub id: String,
    /// Attributes, checked against the schema's declaration of the type.
    #[serde(default)]
    pub attributes: Map<String, Value>,
}

impl ResourceRef {
    /// `Type::id`, the form scopes and audit entries use.
    pub fn key(&self) -> String {
        format!("{}::{}", self.kind, self.id)
    }
}

/// Everything a privileged-action decision is built from.
#[derive(Clone, Copy)]
pub struct ActionFacts<'a> {
    pub agent: AgentFacts<'a>,
    pub task: &'a Task,
    pub incident: &'a Incident,
    pub action: &'a str,
    pub resource: &'a ResourceRef,
    pub intent: &'a str,
    pub parameters: &'a Map<String, Value>,
    pub evidence_present: bool,
    /// What the task's delegation tree has done (`context.history`).
    pub history: &'a tollgate_core::HistorySummary,
    /// The value of each of the pack's temporal rules for this request
    /// (`context.rules`, present only when the pack has rules).
    pub rules: &'a Map<String, Value>,
    pub now: UnixTime,
}

/// Everything a decision on "may this approver decide this approval" is built from.
pub struct ApproveFacts<'a> {
    pub approver_name: &'a str,
    pub approver_role: &'a str,
    pub approval: &'a tollgate_core::Approval,
    pub incident: &'a Incident,
    /// The approver is the agent's registered owner.
    pub is_agent_owner: bool,
    pub now: UnixTime,
}

/// Everything a delegation decision is built from.
pub struct DelegateFacts<'a> {
    pub parent: AgentFacts<'a>,
    pub child: AgentFacts<'a>,
    pub task: &'a Task,
    pub incident: &'a Incident,
    pub actions: &'a std::collections::BTreeSet<String>,
    pub resources: &'a std::collections::BTreeSet<String>,
    pub ttl_seconds: i64,
    pub depth: u32,
    pub intent: &'a str,
}

/// Everything a task-open decision is built from.
pub struct TaskOpenFacts<'a> {
    pub agent: AgentFacts<'a>,
    pub incident: &'a Incident,
    pub environment: &'a str,
    pub playbook: &'a str,
    pub intent: &'a str,
    pub ttl_seconds: i64,
    pub now: UnixTime,
}

fn message(e: &dyn std::error::Error) -> String {
    let mut m = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        m.push_str(": ");
        m.push_str(&s.to_string());
        src = s.source();
    }
    m
}

pub(crate) fn uid(kind: &str, id: &str) -> Result<EntityUid, PolicyError> {
    let kind_name = EntityTypeName::from_str(kind).map_err(|e| {
        PolicyError::BadRequest(format!("bad entity {kind}::{id}: {}", message(&e)))
    })?;
    Ok(EntityUid::from_type_name_and_id(
        kind_name,
        EntityId::new(id),
    ))
}

/// A plain JSON value as a Cedar value: `None` for anything Cedar's
/// schema-directed JSON parser could read differently (`__entity` and
/// `__extn` escapes, non-integer numbers, null), so the caller falls back
/// to that parser.
fn plain(v: &Value) -> Option<RestrictedExpression> {
    Some(match v {
        Value::Bool(b) => RestrictedExpression::new_bool(*b),
        Value::Number(n) => RestrictedExpression::new_long(n.as_i64()?),
        Value::String(s) => RestrictedExpression::new_string(s.clone()),
        Value::Array(items) => {
            RestrictedExpression::new_set(items.iter().map(plain).collect::<Option<Vec<_>>>()?)
        }
        Value::Object(m) => RestrictedExpression::new_record(plain_pairs(m)?).ok()?,
        Value::Null => return None,
    })
}

fn plain_pairs(m: &Map<String, Value>) -> Option<Vec<(String, RestrictedExpression)>> {
    if m.keys().any(|k| k.starts_with("__")) {
        return None;
    }
    m.iter()
        .map(|(k, v)| Some((k.clone(), plain(v)?)))
        .collect()
}

/// [`agent_entity`] as a Cedar entity, without the JSON.
fn agent_entity_direct(uid: EntityUid, a: AgentFacts<'_>) -> Option<Entity> {
    let attrs = [
        ("role", a.spiffe_id.role()),
        ("trust_domain", a.spiffe_id.trust_domain()),
        ("owner", a.owner),
    ]
    .into_iter()
    .map(|(k, v)| {
        (
            k.to_string(),
            RestrictedExpression::new_string(v.to_string()),
        )
    })
    .collect();
    Entity::new(uid, attrs, Default::default()).ok()
}

fn agent_entity(a: AgentFacts<'_>) -> Value {
    json!({
        "uid": {"type": "Agent", "id": a.spiffe_id.to_string()},
        "attrs": {"role": a.spiffe_id.role(), "trust_domain": a.spiffe_id.trust_domain(), "owner": a.owner},
        "parents": []
    })
}

impl PolicyPack {
    fn build(
        &self,
        principal: EntityUid,
        action: &str,
        resource: EntityUid,
        entities: Value,
        context: Value,
    ) -> Result<(Request, Entities), PolicyError> {
        if let Some(built) = self.build_direct(&principal, action, &resource, &entities, &context) {
            return Ok(built);
        }
        self.build_json(principal, action, resource, entities, context)
    }

    /// Cedar's JSON parser, schema-directed: the reference for `build_direct`.
    pub(crate) fn build_json(
        &self,
        principal: EntityUid,
        action: &str,
        resource: EntityUid,
        entities: Value,
        context: Value,
    ) -> Result<(Request, Entities), PolicyError> {
        let (schema, _) = self.authorizer_inputs();
        let bad = |what: &str, e: &dyn std::error::Error| {
            PolicyError::BadRequest(format!("{what}: {}", message(e)))
        };
        let entities = Entities::from_json_value(entities, Some(schema))
            .map_err(|e| bad("entity does not fit the schema", &e))?;
        let action_uid = uid("Action", action)?;
        let context = Context::from_json_value(context, Some((schema, &action_uid)))
            .map_err(|e| bad("context does not fit the schema", &e))?;
        let request = Request::new(principal, action_uid, resource, context, Some(schema))
            .map_err(|e| bad("request does not fit the schema", &e))?;
        Ok((request, entities))
    }

    /// The same request built without Cedar's JSON parser, which was most
    /// of a decision's cost (it tries every escape form of every value and
    /// formats an error for each miss). The schema still checks entities
    /// and context. Any failure returns `None` and the JSON path decides,
    /// so answers and error messages are those of the JSON path; a value
    /// the JSON path would read differently (an entity reference or
    /// extension value the schema expects) fails the schema check here.
    pub(crate) fn build_direct(
        &self,
        principal: &EntityUid,
        action: &str,
        resource: &EntityUid,
        entities: &Value,
        context: &Value,
    ) -> Option<(Request, Entities)> {
        let (schema, _) = self.authorizer_inputs();
        let mut list = Vec::new();
        for e in entities.as_array()? {
            let id = e.get("uid")?;
            let id = uid(id.get("type")?.as_str()?, id.get("id")?.as_str()?).ok()?;
            if !e.get("parents")?.as_array()?.is_empty() {
                return None;
            }
            let attrs: std::collections::HashMap<String, RestrictedExpression> =
                plain_pairs(e.get("attrs")?.as_object()?)?
                    .into_iter()
                    .collect();
            list.push(Entity::new(id, attrs, std::collections::HashSet::new()).ok()?);
        }
        let entities = Entities::from_entities(list, Some(schema)).ok()?;
        let context = Context::from_pairs(plain_pairs(context.as_object()?)?).ok()?;
        let request = Request::new(
            principal.clone(),
            uid("Action", action).ok()?,
            resource.clone(),
            context,
            Some(schema),
        )
        .ok()?;
        Some((request, entities))
    }

    /// The same request without Cedar's schema validation, for a request
    /// whose agent-supplied parts [`Shapes`](crate::shape::Shapes) is sure
    /// of (everything else the load-time probe checked); `None` if it is
    /// not sure, and the checked path decides.
    pub(crate) fn build_unchecked(
        &self,
        f: &ActionFacts<'_>,
        op: &tollgate_core::Operation,
    ) -> Option<(Request, Entities)> {
        self.build_unchecked_reading(f, op, self.unchecked_inputs().2)
    }

    /// [`Self::build_unchecked`] with the context cut down to `reads`
    /// (the pack's own in use; everything, in the test that holds this path
    /// to the validated one request for request).
    pub(crate) fn build_unchecked_reading(
        &self,
        f: &ActionFacts<'_>,
        op: &tollgate_core::Operation,
        reads: &ContextUse,
    ) -> Option<(Request, Entities)> {
        let (shapes, actions, _) = self.unchecked_inputs();
        if !shapes.admits(
            f.action,
            &f.resource.kind,
            &f.resource.attributes,
            f.parameters,
        ) {
            return None;
        }
        // No schema: Cedar validates nothing (see `Shapes`).
        let schema_free: Option<&cedar_policy::Schema> = None;
        let principal = self
            .entity_uid("Agent", &f.agent.spiffe_id.to_string())
            .ok()?;
        let resource = self.entity_uid(&f.resource.kind, &f.resource.id).ok()?;
        let action = actions.get(f.action)?;
        let mut list = vec![agent_entity_direct(principal.clone(), f.agent)?];
        if resource != principal {
            let attrs = plain_pairs(&f.resource.attributes)?.into_iter().collect();
            list.push(Entity::new(resource.clone(), attrs, Default::default()).ok()?);
        }
        let entities = action.store.clone().add_entities(list, schema_free).ok()?;
        let context = Context::from_pairs(action_context_pairs(f, op, reads)?).ok()?;
        let request = Request::new(
            principal,
            action.uid.clone(),
            resource,
            context,
            schema_free,
        )
        .ok()?;
        Some((request, entities))
    }

    /// Decide a privileged action. `Err` means the request itself is
    /// malformed for this pack (a 400); every policy outcome is `Ok`.
    pub fn decide_action(&self, f: &ActionFacts<'_>) -> Result<Decision, PolicyError> {
        let Some(op) = self.catalog().operation(f.action) else {
            return Ok(Decision::deny(format!(
                "action {} is not in the tool catalog",
                f.action
            )));
        };
        if !op.resource_types.iter().any(|t| t == &f.resource.kind) {
            return Ok(Decision::deny(format!(
                "action {} acts on {}, not {}",
                f.action,
                op.resource_types.join(", "),
                f.resource.kind
            )));
        }
        if !f.task.scope.permits(f.action, &f.resource.key()) {
            return Ok(Decision::deny(format!(
                "{} on {} is outside the task's scope",
                f.action,
                f.resource.key()
            )));
        }
        let (req, ents) = self.action_request(f, op)?;
        let mut d = self.evaluate(&req, &ents, f.evidence_present);
        self.apply_playbook(&mut d, f);
        Ok(d)
    }

    /// Whether this agent could ever be allowed `action` by this pack: the
    /// action is in the catalog and some `permit` policy's scope matches the
    /// agent and the action. Conditions, forbids, resources and the playbook
    /// are left to the decision itself; this only trims what an agent is
    /// offered, so it errs towards offering.
    pub fn may_permit(&self, agent: AgentFacts<'_>, action: &str) -> bool {
        if self.catalog().operation(action).is_none() {
            return false;
        }
        let (Ok(principal), Ok(action)) = (
            uid("Agent", &agent.spiffe_id.to_string()),
            uid("Action", action),
        ) else {
            return false;
        };
        let (schema, _) = self.authorizer_inputs();
        let Ok(entities) =
            Entities::from_json_value(Value::Array(vec![agent_entity(agent)]), Some(schema))
        else {
            return false;
        };
        self.index().may_permit(&principal, &action, &entities)
    }

    /// The Cedar request and entities of a privileged action, schema-checked.
    ///
    /// A schema error can quote the value it choked on, so when the request
    /// carries secret parameters (`Catalog::sensitive_anywhere`) the error
    /// the caller gets is formed without them: the request is built again
    /// with the secrets left out, and either that build's error (about the
    /// other parameters) or a message naming only the secret parameters is
    /// returned. No message derived from a secret value leaves this function.
    pub fn action_request(
        &self,
        f: &ActionFacts<'_>,
        op: &tollgate_core::Operation,
    ) -> Result<(Request, Entities), PolicyError> {
        if let Some(built) = self.build_unchecked(f, op) {
            return Ok(built);
        }
        self.action_request_checked(f, op)
    }

    /// [`Self::action_request`] through Cedar's schema validation, always:
    /// the reference the unchecked path is tested against.
    pub(crate) fn action_request_checked(
        &self,
        f: &ActionFacts<'_>,
        op: &tollgate_core::Operation,
    ) -> Result<(Request, Entities), PolicyError> {
        let built = action_parts(f, op).and_then(|(p, r, e, c)| self.build(p, f.action, r, e, c));
        let Err(PolicyError::BadRequest(_)) = built else {
            return built;
        };
        let sensitive = self.secret_parameters();
        let secrets: Vec<&str> = f
            .parameters
            .keys()
            .map(String::as_str)
            .filter(|k| sensitive.iter().any(|s| s == k))
            .collect();
        if secrets.is_empty() {
            return built;
        }
        let without: Map<String, Value> = f
            .parameters
            .iter()
            .filter(|(k, _)| !sensitive.contains(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let public = ActionFacts {
            parameters: &without,
            ..*f
        };
        match action_parts(&public, op).and_then(|(p, r, e, c)| self.build(p, f.action, r, e, c)) {
            Err(PolicyError::BadRequest(m)) => Err(PolicyError::BadRequest(m)),
            _ => Err(PolicyError::BadRequest(format!(
                "secret parameter(s) {} do not fit the schema of action {}; values of secret parameters are never shown",
                secrets.join(", "),
                f.action
            ))),
        }
    }

    /// The task's playbook has its say after policy: steps may need
    /// approvals, and a deviation is denied, stepped up or revokes the task.
    fn apply_playbook(&self, d: &mut Decision, f: &ActionFacts<'_>) {
        use tollgate_core::{DeviationResponse, Outcome, StepVerdict};
        let Some(books) = self.playbooks() else {
            return;
        };
        let tag = format!("playbook:{}", f.task.playbook);
        match books.judge(&f.task.playbook, f.action, &f.history.actions_allowed) {
            None => {
                if d.outcome != Outcome::Deny {
                    *d = Decision::deny(format!(
                        "the task's playbook {} no longer exists",
                        f.task.playbook
                    ));
                }
            }
            Some(StepVerdict::Step { approval }) if approval > 0 && d.outcome != Outcome::Deny => {
                if approval > d.approvals_required {
                    d.outcome = Outcome::ApprovalRequired;
                    d.approvals_required = approval;
                    d.policies.push(tag);
                    d.reasons.push(format!(
                        "{} is a playbook step that needs {approval} approval(s)",
                        f.action
                    ));
                }
            }
            Some(StepVerdict::Step { .. }) => {}
            Some(StepVerdict::Deviation { reason, response }) => match response {
                DeviationResponse::Revoke => {
                    d.outcome = Outcome::Deny;
                    d.revoke_task = true;
                    d.policies.push(tag);
                    d.reasons.push(reason);
                }
                DeviationResponse::Deny if d.outcome != Outcome::Deny => {
                    d.outcome = Outcome::Deny;
                    d.approvals_required = 0;
                    d.policies.push(tag);
                    d.reasons.push(reason);
                }
                DeviationResponse::StepUp if d.outcome != Outcome::Deny => {
                    // Already human-gated by policy: the approvers see why.
                    d.outcome = Outcome::ApprovalRequired;
                    d.approvals_required = d.approvals_required.max(1);
                    d.policies.push(tag);
                    d.reasons.push(format!("{reason}; a human must approve"));
                }
                _ => {}
            },
        }
    }

    /// Check that the schema accepts the requests the gateway builds, for
    /// every catalog operation and for `task.open`, so that a pack whose
    /// schema drifted from the gateway is refused at load instead of
    /// answering every request with a 400. The resource entity is left out
    /// (its attributes come from agents), so only principal, action and
    /// context are probed. Also returns the (action, resource type) pairs
    /// whose requests the schema accepted.
    pub(crate) fn probe(&self) -> (Vec<String>, Vec<(String, String)>) {
        let mut problems = Vec::new();
        let mut probed = Vec::new();
        let Ok(id) = SpiffeId::parse("spiffe://probe.test/agent/probe/i-0") else {
            return (problems, probed);
        };
        let agent = AgentFacts {
            spiffe_id: &id,
            owner: "probe",
        };
        let incident = Incident {
            id: "probe".into(),
            class: "probe".into(),
            severity: tollgate_core::Severity::Low,
            status: tollgate_core::IncidentStatus::Open,
            updated_at: 0,
        };
        let task = Task {
            id: "probe".into(),
            agent: id.to_string(),
            incident_id: "probe".into(),
            environment: "probe".into(),
            playbook: "probe".into(),
            intent: "probe".into(),
            scope: tollgate_core::Scope::default(),
            parent_task_id: None,
            created_at: 0,
            expires_at: 1,
            max_expires_at: 1,
            status: tollgate_core::TaskStatus::Active,
            status_reason: None,
        };
        let params = Map::new();
        let history = tollgate_core::HistorySummary::default();
        let rules = self.rules().sample();
        for (name, op) in &self.catalog().operations {
            // Every resource type is probed: each one that passes lets
            // requests on it skip Cedar's validation (`Shapes`); only the
            // first one's failure is a load error, as it always was.
            for (i, kind) in op.resource_types.iter().enumerate() {
                let resource = ResourceRef {
                    kind: kind.clone(),
                    id: "probe".into(),
                    attributes: Map::new(),
                };
                let f = ActionFacts {
                    agent,
                    task: &task,
                    incident: &incident,
                    action: name,
                    resource: &resource,
                    intent: "probe",
                    parameters: &params,
                    evidence_present: false,
                    history: &history,
                    rules: &rules,
                    now: 0,
                };
                let built = uid("Agent", &id.to_string())
                    .and_then(|p| uid(kind, "probe").map(|r| (p, r)))
                    .and_then(|(p, r)| {
                        self.build(
                            p,
                            name,
                            r,
                            json!([agent_entity(agent)]),
                            action_context(&f, op),
                        )
                    });
                match built {
                    Ok(_) => probed.push((name.clone(), kind.clone())),
                    Err(e) if i == 0 => {
                        let hint = if rules.is_empty() {
                            ""
                        } else {
                            " (a pack with rules/*.tgr declares `rules: TemporalRules` in the context of every catalog action)"
                        };
                        problems.push(format!(
                            "the schema does not accept the requests Tollgate builds for {name}: {e}{hint}"
                        ));
                    }
                    Err(_) => {}
                }
            }
        }
        if let Some(name) = self.catalog().operations.keys().next() {
            let actions = [name.clone()].into();
            let resources = ["Probe::probe".to_string()].into();
            let f = DelegateFacts {
                parent: agent,
                child: agent,
                task: &task,
                incident: &incident,
                actions: &actions,
                resources: &resources,
                ttl_seconds: 1,
                depth: 1,
                intent: "probe",
            };
            if let Err(e) = self.decide_delegate(&f) {
                problems.push(format!("the schema does not accept the requests Tollgate builds for task.delegate: {e}"));
            }
        }
        let open = TaskOpenFacts {
            agent,
            incident: &incident,
            environment: "probe",
            playbook: "probe",
            intent: "probe",
            ttl_seconds: 1,
            now: 0,
        };
        if let Err(e) = self.decide_task_open(&open) {
            problems.push(format!(
                "the schema does not accept the requests Tollgate builds for task.open: {e}"
            ));
        }
        (problems, probed)
    }

    /// Decide whether an approver may vote on an approval (Cedar action
    /// `approve`, the approver as principal, the approval as resource).
    pub fn decide_approve(&self, f: &ApproveFacts<'_>) -> Result<Decision, PolicyError> {
        let (schema, catalog) = self.authorizer_inputs();
        if !schema.actions().any(|a| a.id().unescaped() == "approve") {
            return Ok(Decision::deny(
                "the policy pack declares no \"approve\" action, so nobody may approve",
            ));
        }
        let Some(op) = catalog.operation(&f.approval.action) else {
            return Ok(Decision::deny(format!(
                "action {} is no longer in the tool catalog",
                f.approval.action
            )));
        };
        let role = SpiffeId::parse(&f.approval.agent)
            .map(|id| id.role().to_string())
            .unwrap_or_default();
        let principal = uid("Approver", f.approver_name)?;
        let resource = uid("Approval", &f.approval.id)?;
        let resource_type = f.approval.resource.split("::").next().unwrap_or_default();
        let entities = json!([
            {"uid": {"type": "Approver", "id": f.approver_name}, "attrs": {"role": f.approver_role}, "parents": []},
            {"uid": {"type": "Approval", "id": f.approval.id}, "attrs": {
                "action": f.approval.action, "tier": op.tier.as_str(), "labels": op.labels,
                "agent": f.approval.agent, "agent_role": role, "agent_owner": f.approval.agent_owner,
                "incident_class": f.incident.class, "severity_rank": f.incident.severity.rank(),
                "required": f.approval.required, "resource_type": resource_type,
            }, "parents": []}
        ]);
        let context = json!({"now": f.now, "is_agent_owner": f.is_agent_owner});
        let (req, ents) = self.build(principal, "approve", resource, entities, context)?;
        Ok(self.evaluate(&req, &ents, false))
    }

    /// Decide whether an agent may delegate a (gateway-attenuated) scope to
    /// another agent (Cedar action `task.delegate`).
    pub fn decide_delegate(&self, f: &DelegateFacts<'_>) -> Result<Decision, PolicyError> {
        let (schema, catalog) = self.authorizer_inputs();
        if !schema
            .actions()
            .any(|a| a.id().unescaped() == "task.delegate")
        {
            return Ok(Decision::deny(
                "the policy pack declares no \"task.delegate\" action, so nobody may delegate",
            ));
        }
        let mut tiers = std::collections::BTreeSet::new();
        let mut labels = std::collections::BTreeSet::new();
        for a in f.actions {
            let Some(op) = catalog.operation(a) else {
                return Ok(Decision::deny(format!(
                    "action {a} is not in the tool catalog"
                )));
            };
            tiers.insert(op.tier.as_str());
            labels.extend(op.labels.iter().map(String::as_str));
        }
        let principal = uid("Agent", &f.parent.spiffe_id.to_string())?;
        let resource = uid("Agent", &f.child.spiffe_id.to_string())?;
        let mut entities = vec![agent_entity(f.parent)];
        if principal != resource {
            entities.push(agent_entity(f.child));
        }
        let context = json!({
            "actions": f.actions, "tiers": tiers, "labels": labels, "resources": f.resources,
            "ttl_seconds": f.ttl_seconds, "depth": f.depth, "intent": f.intent,
            "task": {
                "id": f.task.id, "playbook": f.task.playbook, "environment": f.task.environment,
                "intent": f.task.intent, "delegated": f.task.parent_task_id.is_some(),
            },
            "incident": {
                "id": f.incident.id, "class": f.incident.class,
                "severity": f.incident.severity.as_str(), "severity_rank": f.incident.severity.rank(),
            },
        });
        let (req, ents) = self.build(
            principal,
            "task.delegate",
            resource,
            Value::Array(entities),
            context,
        )?;
        Ok(self.evaluate(&req, &ents, false))
    }

    /// Decide whether an agent may open a task on an incident.
    pub fn decide_task_open(&self, f: &TaskOpenFacts<'_>) -> Result<Decision, PolicyError> {
        let principal = uid("Agent", &f.agent.spiffe_id.to_string())?;
        let resource = uid("Incident", &f.incident.id)?;
        let entities = json!([
            agent_entity(f.agent),
            {"uid": {"type": "Incident", "id": f.incident.id}, "attrs": {
                "class": f.incident.class, "severity": f.incident.severity.as_str(),
                "severity_rank": f.incident.severity.rank(), "status": f.incident.status.as_str(),
            }, "parents": []}
        ]);
        let context = json!({
            "environment": f.environment, "playbook": f.playbook, "intent": f.intent,
            "ttl_seconds": f.ttl_seconds, "now": f.now,
        });
        if let Some(books) = self.playbooks() {
            if let Err(why) = books.admits(f.playbook, &f.incident.class, f.incident.severity) {
                return Ok(Decision::deny(why));
            }
        }
        let (req, ents) = self.build(principal, "task.open", resource, entities, context)?;
        Ok(self.evaluate(&req, &ents, false))
    }
}

/// The context of a privileged-action request: only facts the gateway knows,
/// plus the agent's intent and parameters.
/// Principal, resource, entities and context of a privileged action.
pub(crate) fn action_parts(
    f: &ActionFacts<'_>,
    op: &tollgate_core::Operation,
) -> Result<(EntityUid, EntityUid, Value, Value), PolicyError> {
    let principal = uid("Agent", &f.agent.spiffe_id.to_string())?;
    let resource = uid(&f.resource.kind, &f.resource.id)?;
    let mut entities = vec![agent_entity(f.agent)];
    if resource != principal {
        entities.push(json!({"uid": {"type": f.resource.kind, "id": f.resource.id}, "attrs": f.resource.attributes, "parents": []}));
    }
    Ok((
        principal,
        resource,
        Value::Array(entities),
        action_context(f, op),
    ))
}

/// [`action_context`] built straight into Cedar expressions, without the
/// JSON in between, for the unchecked path, and only the parts `reads` keeps
/// (a test holds the two to the same decision, and to the same request when
/// everything is kept). `None` if the agent's parameters are not plain values.
fn action_context_pairs(
    f: &ActionFacts<'_>,
    op: &tollgate_core::Operation,
    reads: &ContextUse,
) -> Option<Vec<(String, RestrictedExpression)>> {
    use RestrictedExpression as E;
    let text = |v: &str| E::new_string(v.to_string());
    let set = |items: &mut dyn Iterator<Item = &String>| E::new_set(items.map(|i| text(i)));
    let tiers = |t: &tollgate_core::history::TierCounts| {
        E::new_record([
            ("read".to_string(), E::new_long(t.read)),
            ("contain".to_string(), E::new_long(t.contain)),
            ("change".to_string(), E::new_long(t.change)),
            ("destructive".to_string(), E::new_long(t.destructive)),
        ])
        .ok()
    };
    let h = f.history;
    let mut pairs = Vec::new();
    let mut task = Fields::new(reads, "task");
    task.add("id", || Some(text(&f.task.id)));
    task.add("playbook", || Some(text(&f.task.playbook)));
    task.add("environment", || Some(text(&f.task.environment)));
    task.add("intent", || Some(text(&f.task.intent)));
    task.add("delegated", || {
        Some(E::new_bool(f.task.parent_task_id.is_some()))
    });
    task.finish(&mut pairs)?;
    let mut incident = Fields::new(reads, "incident");
    incident.add("id", || Some(text(&f.incident.id)));
    incident.add("class", || Some(text(&f.incident.class)));
    incident.add("severity", || Some(text(f.incident.severity.as_str())));
    incident.add("severity_rank", || {
        Some(E::new_long(f.incident.severity.rank()))
    });
    incident.finish(&mut pairs)?;
    let mut operation = Fields::new(reads, "operation");
    operation.add("tier", || Some(text(op.tier.as_str())));
    operation.add("reversible", || Some(E::new_bool(op.reversible)));
    operation.add("labels", || Some(set(&mut op.labels.iter())));
    operation.add("blast_radius", || Some(text(&op.blast_radius)));
    operation.add("risk", || Some(E::new_long(op.risk_weight())));
    operation.finish(&mut pairs)?;
    if reads.keeps("intent") {
        pairs.push(("intent".to_string(), text(f.intent)));
    }
    if reads.keeps("parameters") {
        let record = E::new_record(plain_pairs(f.parameters)?).ok()?;
        pairs.push(("parameters".to_string(), record));
    }
    if reads.keeps("evidence_for_resource") {
        pairs.push((
            "evidence_for_resource".to_string(),
            E::new_bool(f.evidence_present),
        ));
    }
    let mut history = Fields::new(reads, "history");
    history.add("labels_10m", || Some(set(&mut h.labels_10m.iter())));
    history.add("labels_1h", || Some(set(&mut h.labels_1h.iter())));
    history.add("actions_1h", || Some(set(&mut h.actions_1h.iter())));
    history.add("tier_counts_1h", || tiers(&h.tier_counts_1h));
    history.add("tier_counts_1m", || tiers(&h.tier_counts_1m));
    history.add("denials_10m", || Some(E::new_long(h.denials_10m)));
    history.add("risk_spent", || Some(E::new_long(h.risk_spent)));
    history.add("previous_action", || Some(text(&h.previous_action)));
    history.finish(&mut pairs)?;
    if reads.keeps("now") {
        pairs.push(("now".to_string(), E::new_long(f.now)));
    }
    if reads.keeps("hour_utc") {
        let hour = f.now.rem_euclid(86_400) / 3_600;
        pairs.push(("hour_utc".to_string(), E::new_long(hour)));
    }
    if !f.rules.is_empty() {
        // As `plain_pairs`: a key the JSON path would read as an escape.
        if f.rules.keys().any(|k| k.starts_with("__")) {
            return None;
        }
        let mut rules = Fields::new(reads, "rules");
        for (name, value) in f.rules {
            rules.add(name, || plain(value));
        }
        rules.finish(&mut pairs)?;
    }
    Some(pairs)
}

/// One record of the context, holding only the fields `reads` keeps; left
/// out altogether when no policy reads it.
struct Fields<'a> {
    name: &'static str,
    kept: crate::context_use::Kept<'a>,
    fields: Vec<(String, RestrictedExpression)>,
    /// A field's value could not be built (`None` from its maker).
    failed: bool,
}

impl<'a> Fields<'a> {
    fn new(reads: &'a ContextUse, name: &'static str) -> Self {
        Self {
            name,
            kept: reads.record(name),
            fields: Vec::new(),
            failed: false,
        }
    }

    /// Add `field`, built by `make` only when it is kept.
    fn add(&mut self, field: &str, make: impl FnOnce() -> Option<RestrictedExpression>) {
        if self.kept.keeps(field) {
            match make() {
                Some(value) => self.fields.push((field.to_string(), value)),
                None => self.failed = true,
            }
        }
    }

    fn finish(self, pairs: &mut Vec<(String, RestrictedExpression)>) -> Option<()> {
        if self.failed {
            return None;
        }
        if self.kept.any() {
            let record = RestrictedExpression::new_record(self.fields).ok()?;
            pairs.push((self.name.to_string(), record));
        }
        Some(())
    }
}

fn action_context(f: &ActionFacts<'_>, op: &tollgate_core::Operation) -> Value {
    let hour = f.now.rem_euclid(86_400) / 3_600;
    let mut context = json!({
        "task": {
            "id": f.task.id, "playbook": f.task.playbook, "environment": f.task.environment,
            "intent": f.task.intent, "delegated": f.task.parent_task_id.is_some(),
        },
        "incident": {
            "id": f.incident.id, "class": f.incident.class,
            "severity": f.incident.severity.as_str(), "severity_rank": f.incident.severity.rank(),
        },
        "operation": {
            "tier": op.tier.as_str(), "reversible": op.reversible, "labels": op.labels,
            "blast_radius": op.blast_radius, "risk": op.risk_weight(),
        },
        "intent": f.intent,
        "parameters": f.parameters,
        "evidence_for_resource": f.evidence_present,
        "history": f.history,
        "now": f.now,
        "hour_utc": hour,
    });
    if !f.rules.is_empty() {
        context["rules"] = Value::Object(f.rules.clone());
    }
    context
}
