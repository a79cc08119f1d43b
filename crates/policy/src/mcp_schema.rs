//! A starting schema and catalog for an upstream MCP server, from its
//! `tools/list` (`tollgate policy schema --from-mcp`).
//!
//! Why not `cedar-policy-mcp-schema-generator`: it pins an exact
//! `cedar-policy-core` (which would hold the whole workspace's Cedar back)
//! and models a tool call with the raw tool input as the action's context.
//! Tollgate's model differs: an action is a catalog operation on a typed
//! resource (named by one argument), and the other arguments reach Cedar as
//! `context.parameters` beside the gateway's own facts (`ActionContext`).
//! So this generator writes that shape: one entity type per resource
//! argument, one `Parameters` record covering every other argument, one
//! action per tool, and the catalog entries binding each tool.
//!
//! It is a draft for an author to edit, never loaded as is: the tier of an
//! operation is a judgement (guessed from the MCP tool annotations), and the
//! resource argument is guessed as the first required string argument.

use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write;

/// One tool as an MCP server describes it.
#[derive(Debug, Clone)]
pub struct McpTool {
    pub name: String,
    pub description: String,
    /// JSON Schema of the arguments.
    pub input_schema: Value,
    /// MCP annotations (`readOnlyHint`, `destructiveHint`), if any.
    pub annotations: Value,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    /// Cedar schema declarations to merge into the pack's schema.
    pub schema: String,
    /// `operations:` entries to merge into catalog.yaml.
    pub catalog: String,
}

fn camel(name: &str) -> String {
    name.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut cs = p.chars();
            cs.next()
                .map(|f| f.to_ascii_uppercase().to_string() + cs.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// `edr_read_alerts` → `edr.read_alerts`; a name without `_` goes under the server.
fn action_name(server: &str, tool: &str) -> String {
    match tool.split_once(['_', '-', '.']) {
        Some((ns, rest)) if !ns.is_empty() && !rest.is_empty() => format!("{ns}.{rest}"),
        _ => format!("{server}.{tool}"),
    }
}

/// Nesting deeper than this is left out: a draft, not a proof.
const MAX_DEPTH: usize = 8;

/// The Cedar type of a JSON Schema property, when Cedar has one: strings
/// (also `enum`/`const` of strings), integers, booleans, arrays of those
/// (`Set<…>`), objects with declared properties (records; a property that
/// is not `required` is optional). `Err` says why not: a Cedar record
/// cannot hold undeclared attributes, so an object with an untyped property
/// is left out whole rather than typed wrongly.
fn cedar_type(prop: &Value, depth: usize) -> Result<String, String> {
    if depth > MAX_DEPTH {
        return Err("nested too deeply".into());
    }
    let ty = match prop.get("type") {
        Some(Value::String(t)) => Some(t.as_str()),
        // ["string", "null"]: nullable; an absent optional value is Cedar's null.
        Some(Value::Array(ts)) => {
            let named: Vec<&str> = ts
                .iter()
                .filter_map(Value::as_str)
                .filter(|t| *t != "null")
                .collect();
            match named.as_slice() {
                [one] => Some(*one),
                _ => return Err(format!("type {} is a union", Value::Array(ts.clone()))),
            }
        }
        _ => None,
    };
    let all_strings = |v: Option<&Value>| match v {
        Some(Value::Array(a)) => !a.is_empty() && a.iter().all(Value::is_string),
        Some(Value::String(_)) => true,
        _ => false,
    };
    match ty {
        Some("string") => Ok("String".into()),
        Some("integer") => Ok("Long".into()),
        Some("boolean") => Ok("Bool".into()),
        Some("array") => {
            let items = prop.get("items").unwrap_or(&Value::Null);
            cedar_type(items, depth + 1)
                .map(|t| format!("Set<{t}>"))
                .map_err(|why| format!("its items: {why}"))
        }
        Some("object") => {
            let Some(props) = prop.get("properties").and_then(Value::as_object) else {
                return Err("an object without declared properties".into());
            };
            let required: Vec<&str> = prop
                .get("required")
                .and_then(Value::as_array)
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let mut fields = Vec::new();
            for (name, p) in props {
                let t = cedar_type(p, depth + 1).map_err(|why| format!("{name}: {why}"))?;
                let optional = if required.contains(&name.as_str()) {
                    ""
                } else {
                    "?"
                };
                fields.push(format!("{}{optional}: {t}", quote(name)));
            }
            Ok(format!("{{ {} }}", fields.join(", ")))
        }
        None if all_strings(prop.get("enum")) || all_strings(prop.get("const")) => {
            Ok("String".into())
        }
        Some(other) => Err(format!("\"{other}\" has no Cedar type")),
        None => Err("no type".into()),
    }
}

fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// Draft a schema fragment and catalog entries for `tools` of upstream `server`.
pub fn generate(server: &str, tools: &[McpTool]) -> Generated {
    let mut entities = std::collections::BTreeSet::new();
    let mut parameters: BTreeMap<String, String> = BTreeMap::new();
    let mut skipped: BTreeMap<String, String> = BTreeMap::new();
    let mut actions = String::new();
    let mut catalog = String::from("operations:\n");
    for tool in tools {
        let props = tool
            .input_schema
            .get("properties")
            .and_then(Value::as_object);
        let required: Vec<&str> = tool
            .input_schema
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let is_string = |name: &str| {
            props
                .and_then(|p| p.get(name))
                .is_some_and(|p| p.get("type").and_then(Value::as_str) == Some("string"))
        };
        let resource_arg = required.iter().copied().find(|a| is_string(a));
        let action = action_name(server, &tool.name);
        let (entity, arg_line) = match resource_arg {
            Some(a) => (camel(a), format!(", resource_argument: {a}")),
            None => {
                // No argument names what the call acts on: the server itself is the resource.
                (
                    camel(server) + "Server",
                    ", resource_argument: TODO".to_string(),
                )
            }
        };
        entities.insert(entity.clone());
        for (name, prop) in props.into_iter().flatten() {
            if Some(name.as_str()) == resource_arg {
                continue;
            }
            match cedar_type(prop, 0) {
                Ok(t) => match parameters.get(name) {
                    Some(existing) if *existing != t => {
                        skipped.insert(
                            name.clone(),
                            format!("typed {existing} and {t} by different tools"),
                        );
                    }
                    _ => {
                        parameters.insert(name.clone(), t);
                    }
                },
                Err(why) => {
                    skipped.insert(name.clone(), why);
                }
            }
        }
        let hint = |k: &str| tool.annotations.get(k).and_then(Value::as_bool);
        let (tier, reversible) = if hint("readOnlyHint") == Some(true) {
            ("read", true)
        } else if hint("destructiveHint") == Some(true) {
            ("destructive", false)
        } else {
            ("change", false)
        };
        let _ = writeln!(
            actions,
            "action {} appliesTo {{ principal: Agent, resource: [{entity}], context: ActionContext }};",
            quote(&action)
        );
        let description = tool.description.lines().next().unwrap_or_default();
        let _ = write!(
            catalog,
            "  {action}:\n    description: {}\n    tier: {tier}   # guessed from the tool's annotations: read | contain | change | destructive\n    resource_types: [{entity}]\n    tool: {{server: {server}, name: {}{arg_line}}}\n    reversible: {reversible}\n",
            quote(description),
            tool.name
        );
    }
    for name in skipped.keys() {
        parameters.remove(name);
    }
    let mut schema = format!(
        "// Drafted by `tollgate policy schema --from-mcp` from upstream {} ({} tools).\n// Merge into schema.cedarschema: Agent and ActionContext come from the pack's base schema,\n// and `Parameters` (what ActionContext.parameters holds) replaces or extends the pack's.\n\n",
        quote(server),
        tools.len()
    );
    for e in &entities {
        let _ = writeln!(schema, "entity {e};");
    }
    schema.push_str("\ntype Parameters = {\n");
    for (name, t) in &parameters {
        let _ = writeln!(schema, "  {}?: {t},", quote(name));
    }
    for (name, why) in &skipped {
        let _ = writeln!(schema, "  // {name}: left out ({why})");
    }
    schema.push_str("};\n\n");
    schema.push_str(&actions);
    Generated { schema, catalog }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tools() -> Vec<McpTool> {
        vec![
            McpTool {
                name: "edr_read_alerts".into(),
                description: "Read the EDR alerts of a host.".into(),
                input_schema: json!({"type": "object", "properties": {"host": {"type": "string"}, "window_minutes": {"type": "integer"}}, "required": ["host"]}),
                annotations: json!({"readOnlyHint": true}),
            },
            McpTool {
                name: "wipe".into(),
                description: "Wipe it all.\nReally.".into(),
                input_schema: json!({"type": "object", "properties": {"force": {"type": "boolean"}, "opts": {"type": "object"}, "tags": {"type": "array", "items": {"type": "string"}},
                    "target": {"type": "object", "required": ["path"], "properties": {"path": {"type": "string"}, "depth": {"type": ["integer", "null"]}, "mode": {"enum": ["fast", "safe"]}}},
                    "ratio": {"type": "number"}, "filters": {"type": "array", "items": {"type": "object", "properties": {"key": {"type": "string"}, "value": {}}}}}}),
                annotations: json!({"destructiveHint": true}),
            },
            McpTool {
                name: "iam_disable_account".into(),
                description: "Disable an account.".into(),
                input_schema: json!({"type": "object", "properties": {"account": {"type": "string"}, "window_minutes": {"type": "string"}}, "required": ["account"]}),
                annotations: Value::Null,
            },
        ]
    }

    #[test]
    fn drafts_entities_parameters_actions_and_bindings() {
        let g = generate("ir-tools", &tools());
        assert!(g.schema.contains("entity Host;") && g.schema.contains("entity Account;"));
        assert!(g.schema.contains("entity IrToolsServer;"), "{}", g.schema);
        assert!(
            g.schema.contains("\"force\"?: Bool,") && g.schema.contains("\"tags\"?: Set<String>,")
        );
        assert!(
            g.schema
                .contains("// opts: left out (an object without declared properties)"),
            "{}",
            g.schema
        );
        // Objects with declared properties become records, required ones mandatory.
        assert!(
            g.schema
                .contains(r#""target"?: { "path": String, "depth"?: Long, "mode"?: String },"#),
            "{}",
            g.schema
        );
        assert!(
            g.schema
                .contains(r#"// ratio: left out ("number" has no Cedar type)"#),
            "{}",
            g.schema
        );
        assert!(
            g.schema
                .contains("// filters: left out (its items: value: no type)"),
            "{}",
            g.schema
        );
        // One argument typed two ways is left out rather than guessed.
        assert!(
            g.schema
                .contains("// window_minutes: left out (typed Long and String"),
            "{}",
            g.schema
        );
        assert!(g.schema.contains(
            "action \"edr.read_alerts\" appliesTo { principal: Agent, resource: [Host], context: ActionContext };"
        ));
        assert!(g.schema.contains("action \"ir-tools.wipe\""));
        assert!(g.catalog.contains("  edr.read_alerts:\n    description: \"Read the EDR alerts of a host.\"\n    tier: read"));
        assert!(g.catalog.contains(
            "tool: {server: ir-tools, name: iam_disable_account, resource_argument: account}"
        ));
        assert!(g.catalog.contains("    tier: destructive"));

        // The draft is valid Cedar once the base schema's types are there.
        let base = "entity Agent; type ActionContext = { parameters: Parameters };\n";
        let text = format!("{base}{}", g.schema);
        let (_schema, _warnings) = cedar_policy::Schema::from_cedarschema_str(&text)
            .map_err(|e| format!("{e:?}"))
            .unwrap();
        // And the catalog is valid YAML a catalog can be read from (after
        // TODOs are filled in and the server-level resource is kept).
        let catalog = tollgate_core::Catalog::from_yaml(&g.catalog).unwrap();
        assert!(catalog.by_tool("edr_read_alerts").is_some());
    }
}
