//! Policy slicing: evaluate only the policies whose scope can match.
//!
//! Stock Cedar evaluates every policy of a set on every request, so a pack
//! with thousands of per-agent policies costs milliseconds per decision. The
//! index splits the set in two, by each policy's scope:
//!
//! - *shared* policies name no particular principal or resource (their
//!   principal and resource constraints are `Any` or `is Type`). They are
//!   sliced by action: one prebuilt `PolicySet` per action (and that
//!   action's ancestors), built on first use and kept.
//! - *specific* policies name a principal or resource entity (`==`, `in`,
//!   `is … in`). They are found through hash maps keyed by that entity, so
//!   a request only meets the ones keyed by its principal, its resource or
//!   their ancestors, and only those whose whole scope matches are kept.
//!
//! The two slices are evaluated separately and their answers combined with
//! Cedar's own rule (any satisfied `forbid` denies; otherwise any satisfied
//! `permit` allows; otherwise deny), which gives exactly the decision,
//! determining policies and erroring policies of evaluating the full set:
//! a policy whose scope does not match is never evaluated by Cedar either,
//! so leaving it out changes nothing. `tests::sliced_equals_stock` checks
//! this against `Authorizer::is_authorized` on random sets and requests.
//!
//! Invariant: the index never decides on its own; every policy whose scope
//! could match is handed to Cedar.

use cedar_policy::{
    ActionConstraint, Authorizer, Decision, Entities, EntityTypeName, EntityUid, Policy, PolicyId,
    PolicySet, PrincipalConstraint, Request, ResourceConstraint,
};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

/// How many distinct specific slices (and action slices) are kept. A slice
/// is a handful of policies; past the bound the cache starts over, which
/// costs one rebuild per slice and never changes an answer.
const MAX_CACHED_SLICES: usize = 4096;

/// One scope constraint, the same shape for principal, action and resource.
#[derive(Debug, Clone)]
enum Constraint {
    Any,
    Eq(EntityUid),
    In(Vec<EntityUid>),
    Is(EntityTypeName),
    IsIn(EntityTypeName, EntityUid),
}

impl Constraint {
    fn of_principal(c: PrincipalConstraint) -> Self {
        match c {
            PrincipalConstraint::Any => Self::Any,
            PrincipalConstraint::Eq(u) => Self::Eq(u),
            PrincipalConstraint::In(u) => Self::In(vec![u]),
            PrincipalConstraint::Is(t) => Self::Is(t),
            PrincipalConstraint::IsIn(t, u) => Self::IsIn(t, u),
        }
    }
    fn of_resource(c: ResourceConstraint) -> Self {
        match c {
            ResourceConstraint::Any => Self::Any,
            ResourceConstraint::Eq(u) => Self::Eq(u),
            ResourceConstraint::In(u) => Self::In(vec![u]),
            ResourceConstraint::Is(t) => Self::Is(t),
            ResourceConstraint::IsIn(t, u) => Self::IsIn(t, u),
        }
    }
    fn of_action(c: ActionConstraint) -> Self {
        match c {
            ActionConstraint::Any => Self::Any,
            ActionConstraint::Eq(u) => Self::Eq(u),
            ActionConstraint::In(us) => Self::In(us),
        }
    }

    /// Cedar's scope semantics: `in` holds for the entity itself and every
    /// ancestor the request's entities give it.
    fn matches(&self, who: &Subject<'_>) -> bool {
        match self {
            Self::Any => true,
            Self::Eq(u) => u == who.uid,
            Self::In(us) => us.iter().any(|u| who.is_in(u)),
            Self::Is(t) => t == who.uid.type_name(),
            Self::IsIn(t, u) => t == who.uid.type_name() && who.is_in(u),
        }
    }

    /// The entities this constraint is keyed by, when it names any.
    fn keys(&self) -> &[EntityUid] {
        match self {
            Self::Any | Self::Is(_) => &[],
            Self::Eq(u) | Self::IsIn(_, u) => std::slice::from_ref(u),
            Self::In(us) => us,
        }
    }
}

/// A request's principal, action or resource with its ancestors.
struct Subject<'a> {
    uid: &'a EntityUid,
    ancestors: Vec<&'a EntityUid>,
}

impl<'a> Subject<'a> {
    fn new(uid: &'a EntityUid, entities: &'a Entities) -> Self {
        let ancestors = entities
            .ancestors(uid)
            .map(|a| a.collect())
            .unwrap_or_default();
        Self { uid, ancestors }
    }
    fn is_in(&self, u: &EntityUid) -> bool {
        u == self.uid || self.ancestors.contains(&u)
    }
    /// The entity and its ancestors: every key an `==` or `in` could use.
    fn keys(&self) -> impl Iterator<Item = &'a EntityUid> + '_ {
        std::iter::once(self.uid).chain(self.ancestors.iter().copied())
    }
}

struct Scope {
    principal: Constraint,
    action: Constraint,
    resource: Constraint,
}

/// The result of evaluating a sliced set: what Tollgate reads from Cedar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlicedResponse {
    pub decision: Decision,
    /// The determining policies, sorted.
    pub reasons: Vec<PolicyId>,
    /// Policies whose evaluation failed, sorted.
    pub errored: Vec<PolicyId>,
}

/// A policy set indexed by scope. Immutable after construction apart from
/// its slice caches, which only ever hold sets built from the index.
pub struct PolicyIndex {
    policies: Vec<Policy>,
    scopes: Vec<Scope>,
    /// Policies naming no principal or resource entity.
    shared: Vec<u32>,
    /// Specific policies by the principal entity their scope names.
    by_principal: HashMap<EntityUid, Vec<u32>>,
    /// Specific policies naming no principal entity, by their resource entity.
    by_resource: HashMap<EntityUid, Vec<u32>>,
    /// Shared slice per (action, its ancestors).
    action_slices: Mutex<HashMap<Vec<EntityUid>, Arc<PolicySet>>>,
    /// Specific slice per list of policy positions.
    specific_slices: Mutex<HashMap<Vec<u32>, Arc<PolicySet>>>,
    authorizer: Authorizer,
}

impl PolicyIndex {
    /// Index every static policy of `set` (templates are not indexed;
    /// Tollgate packs have none).
    pub fn new(set: &PolicySet) -> Self {
        let mut index = Self {
            policies: Vec::new(),
            scopes: Vec::new(),
            shared: Vec::new(),
            by_principal: HashMap::new(),
            by_resource: HashMap::new(),
            action_slices: Mutex::new(HashMap::new()),
            specific_slices: Mutex::new(HashMap::new()),
            authorizer: Authorizer::new(),
        };
        for policy in set.policies().filter(|p| p.is_static()) {
            let Ok(pos) = u32::try_from(index.policies.len()) else {
                break;
            };
            let scope = Scope {
                principal: Constraint::of_principal(policy.principal_constraint()),
                action: Constraint::of_action(policy.action_constraint()),
                resource: Constraint::of_resource(policy.resource_constraint()),
            };
            if !scope.principal.keys().is_empty() {
                for k in scope.principal.keys() {
                    index.by_principal.entry(k.clone()).or_default().push(pos);
                }
            } else if !scope.resource.keys().is_empty() {
                for k in scope.resource.keys() {
                    index.by_resource.entry(k.clone()).or_default().push(pos);
                }
            } else {
                index.shared.push(pos);
            }
            index.scopes.push(scope);
            index.policies.push(policy.clone());
        }
        index
    }

    pub fn len(&self) -> usize {
        self.policies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// Whether some `permit` policy's principal and action constraints
    /// match: a necessary condition for `principal` ever being allowed
    /// `action`, on any resource and in any context. It trims what an agent
    /// is offered (the MCP gateway's `tools/list`); it never decides.
    pub fn may_permit(
        &self,
        principal: &EntityUid,
        action: &EntityUid,
        entities: &Entities,
    ) -> bool {
        let principal = Subject::new(principal, entities);
        let action = Subject::new(action, entities);
        let applies =
            |scope: &Scope| scope.principal.matches(&principal) && scope.action.matches(&action);
        let mut permitted = false;
        for (policy, scope) in self.policies.iter().zip(&self.scopes) {
            if !applies(scope) {
                continue;
            }
            match policy.effect() {
                cedar_policy::Effect::Permit => permitted = true,
                // A forbid with no condition and any resource always wins.
                cedar_policy::Effect::Forbid
                    if matches!(scope.resource, Constraint::Any)
                        && !policy.has_non_scope_constraint() =>
                {
                    return false
                }
                cedar_policy::Effect::Forbid => {}
            }
        }
        permitted
    }

    /// Evaluate `request` against the policies whose scope can match it.
    /// A request without a known principal, action or resource (Cedar
    /// allows unknowns only in partial evaluation) is evaluated against
    /// the full set, so the index never guesses.
    pub fn is_authorized(&self, request: &Request, entities: &Entities) -> SlicedResponse {
        let (Some(p), Some(a), Some(r)) =
            (request.principal(), request.action(), request.resource())
        else {
            let all = PolicySet::from_policies(self.policies.iter().cloned())
                .unwrap_or_else(|_| PolicySet::new());
            return respond(&[self.authorizer.is_authorized(request, &all, entities)]);
        };
        let principal = Subject::new(p, entities);
        let action = Subject::new(a, entities);
        let resource = Subject::new(r, entities);

        let shared = self.action_slice(&action);
        let specific = self.specific_slice(&principal, &action, &resource);
        let mut responses = vec![self.authorizer.is_authorized(request, &shared, entities)];
        if let Some(set) = specific {
            responses.push(self.authorizer.is_authorized(request, &set, entities));
        }
        respond(&responses)
    }

    /// The shared policies whose action constraint matches this action.
    fn action_slice(&self, action: &Subject<'_>) -> Arc<PolicySet> {
        let key: Vec<EntityUid> = action.keys().cloned().collect();
        if let Some(set) = lock(&self.action_slices).get(&key) {
            return Arc::clone(set);
        }
        let chosen: Vec<u32> = self
            .shared
            .iter()
            .copied()
            .filter(|&i| self.scope(i).is_some_and(|s| s.action.matches(action)))
            .collect();
        let set = Arc::new(self.build_action_free(&chosen));
        let mut cache = lock(&self.action_slices);
        if cache.len() >= MAX_CACHED_SLICES {
            cache.clear();
        }
        cache.insert(key, Arc::clone(&set));
        set
    }

    /// The specific policies whose whole scope matches, if any.
    fn specific_slice(
        &self,
        principal: &Subject<'_>,
        action: &Subject<'_>,
        resource: &Subject<'_>,
    ) -> Option<Arc<PolicySet>> {
        let mut chosen: BTreeSet<u32> = BTreeSet::new();
        let keyed = principal
            .keys()
            .filter_map(|k| self.by_principal.get(k))
            .chain(resource.keys().filter_map(|k| self.by_resource.get(k)));
        for list in keyed {
            for &i in list {
                if self.scope(i).is_some_and(|s| {
                    s.principal.matches(principal)
                        && s.action.matches(action)
                        && s.resource.matches(resource)
                }) {
                    chosen.insert(i);
                }
            }
        }
        if chosen.is_empty() {
            return None;
        }
        let key: Vec<u32> = chosen.into_iter().collect();
        if let Some(set) = lock(&self.specific_slices).get(&key) {
            return Some(Arc::clone(set));
        }
        let set = Arc::new(self.build(&key));
        let mut cache = lock(&self.specific_slices);
        if cache.len() >= MAX_CACHED_SLICES {
            cache.clear();
        }
        cache.insert(key, Arc::clone(&set));
        Some(set)
    }

    fn scope(&self, i: u32) -> Option<&Scope> {
        self.scopes.get(i as usize)
    }

    fn build(&self, positions: &[u32]) -> PolicySet {
        let mut set = PolicySet::new();
        for p in positions
            .iter()
            .filter_map(|&i| self.policies.get(i as usize))
        {
            // Ids are unique in the indexed set, so adding cannot fail.
            let _ = set.add(p.clone());
        }
        set
    }
}

impl PolicyIndex {
    /// An action slice. Each of its policies was chosen because its action
    /// constraint matches the action and the ancestors this slice is keyed
    /// by, the same facts Cedar's `in` reads from the request's entities, so
    /// the constraint is dropped (made `action`): Cedar would otherwise build
    /// the constraint's entity set and search it for every policy on every
    /// request, about a quarter of evaluating the example pack. Everything
    /// else (id, annotations, effect, principal, resource, conditions) is
    /// the policy's own; a policy Cedar cannot rewrite is kept as it is.
    fn build_action_free(&self, positions: &[u32]) -> PolicySet {
        let mut set = PolicySet::new();
        for p in positions
            .iter()
            .filter_map(|&i| self.policies.get(i as usize))
        {
            let p = action_free(p).unwrap_or_else(|| p.clone());
            // Ids are unique in the indexed set, so adding cannot fail.
            let _ = set.add(p);
        }
        set
    }
}

/// `p` with its action constraint made `action` (`None`: it already is, or
/// Cedar could not round-trip it).
fn action_free(p: &Policy) -> Option<Policy> {
    if matches!(p.action_constraint(), ActionConstraint::Any) {
        return None;
    }
    let mut json = p.to_json().ok()?;
    *json.get_mut("action")? = serde_json::json!({"op": "All"});
    Policy::from_json(Some(p.id().clone()), json).ok()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves only a cache behind; keep using it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Combine the answers of disjoint slices with Cedar's rule.
fn respond(responses: &[cedar_policy::Response]) -> SlicedResponse {
    let mut forbids = BTreeSet::new();
    let mut permits = BTreeSet::new();
    let mut errored = BTreeSet::new();
    for r in responses {
        let reasons = r.diagnostics().reason().cloned();
        match r.decision() {
            // A deny with reasons is a satisfied forbid; one without is
            // only "no permit here", which other slices may still supply.
            Decision::Deny => forbids.extend(reasons),
            Decision::Allow => permits.extend(reasons),
        }
        for e in r.diagnostics().errors() {
            let cedar_policy::AuthorizationError::PolicyEvaluationError(pe) = e;
            errored.insert(pe.policy_id().clone());
        }
    }
    let (decision, reasons) = if !forbids.is_empty() {
        (Decision::Deny, forbids)
    } else if !permits.is_empty() {
        (Decision::Allow, permits)
    } else {
        (Decision::Deny, BTreeSet::new())
    };
    SlicedResponse {
        decision,
        reasons: reasons.into_iter().collect(),
        errored: errored.into_iter().collect(),
    }
}

/// Stock Cedar's answer in the same shape, for comparisons and benchmarks.
pub fn stock_response(request: &Request, set: &PolicySet, entities: &Entities) -> SlicedResponse {
    respond(&[Authorizer::new().is_authorized(request, set, entities)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use cedar_policy::Context;
    use proptest::prelude::*;
    use serde_json::json;
    use std::str::FromStr;

    const PRINCIPALS: [&str; 7] = [
        "",
        "principal == User::\"u0\"",
        "principal == User::\"u1\"",
        "principal in Group::\"g0\"",
        "principal in User::\"u2\"",
        "principal is User",
        "principal is User in Group::\"g1\"",
    ];
    const ACTIONS: [&str; 5] = [
        "",
        "action == Action::\"a0\"",
        "action == Action::\"a1\"",
        "action in [Action::\"a2\", Action::\"ag\"]",
        "action in Action::\"ag\"",
    ];
    const RESOURCES: [&str; 6] = [
        "",
        "resource == Doc::\"d0\"",
        "resource in Folder::\"f0\"",
        "resource is Doc",
        "resource is Doc in Folder::\"f1\"",
        "resource == Folder::\"f1\"",
    ];
    // The second one errors when the principal has no `level`.
    const CONDITIONS: [&str; 4] = [
        "",
        "when { principal.level > 1 }",
        "when { context.flag }",
        "unless { resource == Doc::\"d1\" }",
    ];
    const REQ_PRINCIPALS: [(&str, &str); 5] = [
        ("User", "u0"),
        ("User", "u1"),
        ("User", "u2"),
        ("User", "u3"),
        ("Group", "g0"),
    ];
    const REQ_RESOURCES: [(&str, &str); 4] = [
        ("Doc", "d0"),
        ("Doc", "d1"),
        ("Doc", "d2"),
        ("Folder", "f1"),
    ];

    fn policy_text(spec: &[(bool, usize, usize, usize, usize)]) -> String {
        spec.iter()
            .map(|&(permit, p, a, r, c)| {
                let or = |s: &'static str, bare: &'static str| if s.is_empty() { bare } else { s };
                let scope = [
                    or(PRINCIPALS[p], "principal"),
                    or(ACTIONS[a], "action"),
                    or(RESOURCES[r], "resource"),
                ];
                format!(
                    "{}({}, {}, {}) {};\n",
                    if permit { "permit" } else { "forbid" },
                    scope[0],
                    scope[1],
                    scope[2],
                    CONDITIONS[c]
                )
            })
            .collect()
    }

    /// Entities with a random hierarchy: bit i of `parents` puts entity i
    /// under its candidate parent.
    fn entities(parents: u32, levels: u8) -> Entities {
        let bit = |i: u32| parents & (1 << i) != 0;
        let mut list = Vec::new();
        for (i, u) in ["u0", "u1", "u2", "u3"].iter().enumerate() {
            let mut ps = Vec::new();
            if bit(i as u32) {
                ps.push(json!({"type": "Group", "id": "g0"}));
            }
            if bit(i as u32 + 4) {
                ps.push(json!({"type": "Group", "id": "g1"}));
            }
            if bit(i as u32 + 8) && *u != "u2" {
                ps.push(json!({"type": "User", "id": "u2"}));
            }
            let attrs = if levels & (1 << i) != 0 {
                json!({"level": i})
            } else {
                json!({})
            };
            list.push(json!({"uid": {"type": "User", "id": u}, "attrs": attrs, "parents": ps}));
        }
        list.push(json!({"uid": {"type": "Group", "id": "g0"}, "attrs": {"level": 3}, "parents": if bit(12) { vec![json!({"type": "Group", "id": "g1"})] } else { vec![] }}));
        for (i, d) in ["d0", "d1", "d2"].iter().enumerate() {
            let mut ps = Vec::new();
            if bit(i as u32 + 13) {
                ps.push(json!({"type": "Folder", "id": "f0"}));
            }
            if bit(i as u32 + 16) {
                ps.push(json!({"type": "Folder", "id": "f1"}));
            }
            list.push(json!({"uid": {"type": "Doc", "id": d}, "attrs": {}, "parents": ps}));
        }
        list.push(json!({"uid": {"type": "Folder", "id": "f1"}, "attrs": {}, "parents": if bit(19) { vec![json!({"type": "Folder", "id": "f0"})] } else { vec![] }}));
        for (i, a) in ["a0", "a1", "a2"].iter().enumerate() {
            let ps = if bit(i as u32 + 20) {
                vec![json!({"type": "Action", "id": "ag"})]
            } else {
                vec![]
            };
            list.push(json!({"uid": {"type": "Action", "id": a}, "attrs": {}, "parents": ps}));
        }
        Entities::from_json_value(json!(list), None).unwrap()
    }

    fn request(p: usize, a: usize, r: usize, flag: bool) -> Request {
        let (pt, pi) = REQ_PRINCIPALS[p];
        let (rt, ri) = REQ_RESOURCES[r];
        let uid = |t: &str, i: &str| EntityUid::from_json(json!({"type": t, "id": i})).unwrap();
        Request::new(
            uid(pt, pi),
            uid("Action", ["a0", "a1", "a2", "ag"][a]),
            uid(rt, ri),
            Context::from_json_value(json!({"flag": flag}), None).unwrap(),
            None,
        )
        .unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        /// The differential test: the sliced evaluation gives stock Cedar's
        /// decision, determining policies and errors, for random policy
        /// sets, hierarchies and requests.
        #[test]
        fn sliced_equals_stock(
            spec in prop::collection::vec((any::<bool>(), 0..PRINCIPALS.len(), 0..ACTIONS.len(), 0..RESOURCES.len(), 0..CONDITIONS.len()), 0..40),
            parents in any::<u32>(),
            levels in any::<u8>(),
            requests in prop::collection::vec((0..REQ_PRINCIPALS.len(), 0..4usize, 0..REQ_RESOURCES.len(), any::<bool>()), 1..12),
        ) {
            let set = PolicySet::from_str(&policy_text(&spec)).unwrap();
            let index = PolicyIndex::new(&set);
            prop_assert_eq!(index.len(), spec.len());
            let ents = entities(parents, levels);
            for (p, a, r, flag) in requests {
                let req = request(p, a, r, flag);
                prop_assert_eq!(index.is_authorized(&req, &ents), stock_response(&req, &set, &ents));
                // Served from the caches the second time: still the same.
                prop_assert_eq!(index.is_authorized(&req, &ents), stock_response(&req, &set, &ents));
            }
        }
    }

    #[test]
    fn a_request_meets_only_its_own_specific_policies() {
        let mut text = String::new();
        for i in 0..1000 {
            text.push_str(&format!(
                "permit(principal == User::\"u{i}\", action, resource);\n"
            ));
        }
        text.push_str("forbid(principal, action == Action::\"a1\", resource);\n");
        let set = PolicySet::from_str(&text).unwrap();
        let index = PolicyIndex::new(&set);
        let ents = entities(0, 0);
        let allow = index.is_authorized(&request(1, 0, 0, false), &ents);
        assert_eq!(allow.decision, Decision::Allow);
        assert_eq!(allow.reasons, vec![PolicyId::new("policy1")]);
        let deny = index.is_authorized(&request(1, 1, 0, false), &ents);
        assert_eq!(deny.decision, Decision::Deny);
        assert_eq!(deny.reasons, vec![PolicyId::new("policy1000")]);
        // The action slices hold their policies without the action
        // constraint, which the slice already settled.
        for slice in lock(&index.action_slices).values() {
            for p in slice.policies() {
                assert!(
                    matches!(p.action_constraint(), ActionConstraint::Any),
                    "{p}"
                );
            }
        }
        // One specific slice (u1's policy) and two action slices were built.
        assert_eq!(lock(&index.specific_slices).len(), 1);
        assert_eq!(lock(&index.action_slices).len(), 2);
        assert_eq!(
            lock(&index.specific_slices)
                .values()
                .next()
                .unwrap()
                .policies()
                .count(),
            1
        );
    }
}
