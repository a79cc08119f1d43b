//! The shapes an agent's input must have, read from the schema once at
//! load, for a check that is either sure or says nothing.
//!
//! Cedar's schema validation of a request was most of a decision's cost,
//! and most of what it validates is built by the gateway in shapes the
//! load-time probe already checked (the probe builds each catalog action's
//! request for each of its resource types). What the agent supplies, its
//! parameters and the resource's attributes, still needs checking on every
//! request: [`Shapes::admits`] answers `true` only when they surely fit
//! (strings, longs, booleans, sets and records, as declared), and the
//! request then skips Cedar's validation. Anything else (an entity
//! reference, an extension value, a type this module does not model, a
//! value that does not fit) answers `false`, and the schema-checked path
//! decides and words the error, exactly as before.
//!
//! Invariant: `admits` never says `true` for input Cedar's validation would
//! refuse (a differential test in `tests.rs` holds it to that).

use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap, HashSet};

/// A Cedar type as far as the fast path models it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Shape {
    String,
    Long,
    Bool,
    Set(Box<Shape>),
    Record {
        /// Each attribute's shape and whether it is required.
        attributes: BTreeMap<String, (Shape, bool)>,
        /// `additionalAttributes`: undeclared attributes are allowed.
        open: bool,
    },
    /// Anything else: entity references, extension types, what the schema
    /// JSON says in a form this module does not read.
    Unknown,
}

impl Shape {
    /// Whether `v` surely has this shape.
    fn admits(&self, v: &Value) -> bool {
        match (self, v) {
            (Shape::String, Value::String(_)) | (Shape::Bool, Value::Bool(_)) => true,
            (Shape::Long, Value::Number(n)) => n.is_i64(),
            (Shape::Set(element), Value::Array(items)) => items.iter().all(|i| element.admits(i)),
            (Shape::Record { attributes, open }, Value::Object(m)) => {
                record_admits(attributes, *open, m)
            }
            _ => false,
        }
    }
}

fn record_admits(
    attributes: &BTreeMap<String, (Shape, bool)>,
    open: bool,
    m: &Map<String, Value>,
) -> bool {
    // `__entity` and `__extn` escapes are not attributes: never sure.
    if open || m.keys().any(|k| k.starts_with("__")) {
        return false;
    }
    m.iter()
        .all(|(k, v)| attributes.get(k).is_some_and(|(shape, _)| shape.admits(v)))
        && attributes
            .iter()
            .all(|(k, (_, required))| !required || m.contains_key(k))
}

/// What the agent-supplied parts of a request must look like, per action
/// and per entity type, and which (action, resource type) pairs the
/// load-time probe accepted.
#[derive(Debug, Clone, Default)]
pub(crate) struct Shapes {
    /// Per action: the shape of `context.parameters`.
    parameters: HashMap<String, Shape>,
    /// Per entity type: the shape of its attributes.
    entities: HashMap<String, Shape>,
    /// (action, resource type) pairs whose gateway-built request the
    /// schema accepted at load.
    probed: HashSet<(String, String)>,
}

impl Shapes {
    /// Read the shapes from the schema's JSON form. A schema with a named
    /// namespace is not read (every request takes the checked path).
    pub(crate) fn from_schema_json(json: &Value) -> Self {
        let mut out = Self::default();
        let Some(root) = json.as_object() else {
            return out;
        };
        if root.keys().any(|ns| !ns.is_empty()) {
            return out;
        }
        let Some(ns) = root.get("").and_then(Value::as_object) else {
            return out;
        };
        let empty = Map::new();
        let common = ns
            .get("commonTypes")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let entity_types = ns
            .get("entityTypes")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let reader = Reader {
            common,
            entity_types,
        };
        for (name, def) in entity_types {
            let shape = match def.get("shape") {
                Some(t) => reader.shape(t, 0),
                None => Shape::Record {
                    attributes: BTreeMap::new(),
                    open: false,
                },
            };
            out.entities.insert(name.clone(), shape);
        }
        for (name, def) in ns
            .get("actions")
            .and_then(Value::as_object)
            .unwrap_or(&empty)
        {
            let context = def
                .get("appliesTo")
                .and_then(|a| a.get("context"))
                .map(|t| reader.shape(t, 0));
            if let Some(Shape::Record { attributes, .. }) = context {
                if let Some((shape, true)) = attributes.get("parameters") {
                    out.parameters.insert(name.clone(), shape.clone());
                }
            }
        }
        out
    }

    /// Record that the schema accepted the gateway's request for `action`
    /// on a resource of type `kind` (the load-time probe).
    pub(crate) fn probed(&mut self, action: &str, kind: &str) {
        self.probed.insert((action.to_string(), kind.to_string()));
    }

    /// Whether a request for `action` on a `kind` resource with these
    /// attributes and parameters surely fits the schema.
    pub(crate) fn admits(
        &self,
        action: &str,
        kind: &str,
        attributes: &Map<String, Value>,
        parameters: &Map<String, Value>,
    ) -> bool {
        let record = |shape: Option<&Shape>, m: &Map<String, Value>| match shape {
            Some(Shape::Record { attributes, open }) => record_admits(attributes, *open, m),
            _ => false,
        };
        self.probed
            .contains(&(action.to_string(), kind.to_string()))
            && record(self.entities.get(kind), attributes)
            && record(self.parameters.get(action), parameters)
    }
}

/// Resolves type references against the namespace's common and entity types.
struct Reader<'a> {
    common: &'a Map<String, Value>,
    entity_types: &'a Map<String, Value>,
}

impl Reader<'_> {
    fn shape(&self, t: &Value, depth: usize) -> Shape {
        // Cedar refuses cyclic common types; the bound only keeps a
        // malformed document from recursing without end.
        if depth > 32 {
            return Shape::Unknown;
        }
        let Some(kind) = t.get("type").and_then(Value::as_str) else {
            return Shape::Unknown;
        };
        match kind {
            "String" => Shape::String,
            "Long" => Shape::Long,
            "Boolean" => Shape::Bool,
            "Set" => match t.get("element") {
                Some(e) => Shape::Set(Box::new(self.shape(e, depth + 1))),
                None => Shape::Unknown,
            },
            "Record" => {
                let mut attributes = BTreeMap::new();
                if let Some(attrs) = t.get("attributes").and_then(Value::as_object) {
                    for (name, a) in attrs {
                        let required = a.get("required").and_then(Value::as_bool).unwrap_or(true);
                        attributes.insert(name.clone(), (self.shape(a, depth + 1), required));
                    }
                }
                Shape::Record {
                    attributes,
                    open: t
                        .get("additionalAttributes")
                        .and_then(Value::as_bool)
                        .unwrap_or(false),
                }
            }
            "EntityOrCommon" => match t.get("name").and_then(Value::as_str) {
                Some(name) => self.named(name, depth),
                None => Shape::Unknown,
            },
            "Entity" | "Extension" => Shape::Unknown,
            other => self.named(other, depth),
        }
    }

    /// A type by name, resolved as Cedar does: a common type, else an
    /// entity type (a reference: unknown here), else a primitive.
    fn named(&self, name: &str, depth: usize) -> Shape {
        if let Some(t) = self.common.get(name) {
            return self.shape(t, depth + 1);
        }
        if self.entity_types.contains_key(name) {
            return Shape::Unknown;
        }
        match name.strip_prefix("__cedar::").unwrap_or(name) {
            "String" => Shape::String,
            "Long" => Shape::Long,
            "Bool" | "Boolean" => Shape::Bool,
            _ => Shape::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn shapes() -> Shapes {
        let schema = json!({"": {
            "commonTypes": {
                "Params": {"type": "Record", "attributes": {
                    "reason": {"type": "String", "required": false},
                    "window": {"type": "Long", "required": false},
                    "tags": {"type": "Set", "element": {"type": "String"}, "required": false},
                    "deep": {"type": "Record", "required": false, "attributes": {
                        "on": {"type": "Boolean"}
                    }},
                    "owner": {"type": "Entity", "name": "User", "required": false},
                }},
                "Ctx": {"type": "Record", "attributes": {
                    "parameters": {"type": "EntityOrCommon", "name": "Params"},
                    "now": {"type": "Long"},
                }}
            },
            "entityTypes": {
                "Host": {"shape": {"type": "Record", "attributes": {
                    "env": {"type": "EntityOrCommon", "name": "String", "required": false}
                }}},
                "Url": {"shape": {"type": "Record", "attributes": {"domain": {"type": "String"}}}},
                "Bare": {},
            },
            "actions": {"go": {"appliesTo": {"context": {"type": "Ctx"}}}}
        }});
        let mut s = Shapes::from_schema_json(&schema);
        s.probed("go", "Host");
        s.probed("go", "Url");
        s.probed("go", "Bare");
        s
    }

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn sure_only_of_what_fits() {
        let s = shapes();
        let ok = |kind: &str, attrs: Value, params: Value| {
            s.admits("go", kind, &obj(attrs), &obj(params))
        };
        assert!(ok("Host", json!({}), json!({})));
        assert!(ok(
            "Host",
            json!({"env": "prod"}),
            json!({"reason": "r", "window": 3, "tags": ["a"], "deep": {"on": true}})
        ));
        // Types, unknown and missing attributes.
        assert!(!ok("Host", json!({"env": 1}), json!({})));
        assert!(!ok("Host", json!({"other": "x"}), json!({})));
        assert!(!ok("Url", json!({}), json!({})));
        assert!(ok("Url", json!({"domain": "a.test"}), json!({})));
        assert!(!ok("Host", json!({}), json!({"window": "3"})));
        assert!(!ok("Host", json!({}), json!({"window": 1.5})));
        assert!(!ok("Host", json!({}), json!({"tags": ["a", 1]})));
        assert!(!ok("Host", json!({}), json!({"deep": {}})));
        assert!(!ok("Host", json!({}), json!({"extra": "x"})));
        // Entity references and escapes: never sure.
        assert!(!ok("Host", json!({}), json!({"owner": "alice"})));
        assert!(!ok(
            "Host",
            json!({}),
            json!({"__entity": {"type": "User", "id": "a"}})
        ));
        assert!(ok("Bare", json!({}), json!({})));
        assert!(!ok("Bare", json!({"x": 1}), json!({})));
        // Never probed: never sure.
        assert!(!s.admits("go", "Secret", &Map::new(), &Map::new()));
        assert!(!s.admits("stop", "Host", &Map::new(), &Map::new()));
    }

    #[test]
    fn a_named_namespace_is_not_read() {
        let s = Shapes::from_schema_json(&json!({"Acme": {"entityTypes": {}, "actions": {}}}));
        assert!(s.entities.is_empty() && s.parameters.is_empty());
    }
}
