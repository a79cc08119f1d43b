//! The tool catalog: every operation an agent may ask for, with the facts
//! policy needs (tier, reversibility, sensitivity labels, blast radius) that
//! the agent must not be trusted to declare. An action absent from the
//! catalog is denied before policy is even consulted.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog is not valid yaml: {0}")]
    Yaml(String),
    #[error("operation {op:?}: {problem}")]
    Operation { op: String, problem: String },
}

/// How much an operation can change, from observing to destroying.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    Read,
    Contain,
    Change,
    Destructive,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Read => "read",
            Tier::Contain => "contain",
            Tier::Change => "change",
            Tier::Destructive => "destructive",
        }
    }
}

/// One tool operation. The map key in the catalog is its Cedar action id
/// (`edr.isolate_host`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Operation {
    #[serde(default)]
    pub description: String,
    pub tier: Tier,
    /// Cedar entity types this operation may act on (`Host`, `Account`, …).
    pub resource_types: Vec<String>,
    #[serde(default)]
    pub reversible: bool,
    /// The operation that undoes this one (rollback), if any.
    #[serde(default)]
    pub compensation: Option<String>,
    /// Sensitivity labels: `reads-secret`, `egress-external`, `modifies-identity`, …
    #[serde(default)]
    pub labels: Vec<String>,
    /// How far a mistake reaches: `single`, `service`, `environment`, `organization`.
    #[serde(default = "default_blast_radius")]
    pub blast_radius: String,
    /// Parameter names whose values are secrets and must never be stored in clear.
    #[serde(default)]
    pub sensitive_parameters: Vec<String>,
    /// Weight against a task tree's risk budget; default by tier
    /// (read 0, contain 5, change 10, destructive 25: looking is free).
    #[serde(default)]
    pub risk: Option<i64>,
    /// The MCP tool that performs this operation, for the MCP gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<ToolBinding>,
}

/// Where an operation is performed: a tool of an upstream MCP server, and
/// which of its arguments names the resource. The gateway never takes the
/// resource from anywhere else, so a call cannot act on one thing while
/// policy judged another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolBinding {
    /// The upstream's name in `tollgate.yaml` (`mcp.upstreams[].name`).
    pub server: String,
    /// The upstream's tool name; agents see and call the tool by this name.
    pub name: String,
    /// The argument whose (string) value is the resource id.
    pub resource_argument: String,
    /// The resource type, when the operation acts on more than one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_type: Option<String>,
    /// Resource attributes the gateway derives from the call's arguments
    /// (an MCP caller sends none of its own), e.g. `domain: {host_of: url}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub resource_attributes: BTreeMap<String, AttributeSource>,
}

/// How one resource attribute is read from a tool call's arguments:
/// exactly one of the fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttributeSource {
    /// The argument's value, as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argument: Option<String>,
    /// The host name of the URL in this argument, lowercased, without port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_of: Option<String>,
}

/// Why a tool call's arguments cannot give the resource attributes its
/// binding declares. The call is refused: a guardrail written against an
/// attribute must never see a request without it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttributeError {
    #[error("argument {argument:?} is required: it gives the resource attribute {attribute:?}")]
    Missing { attribute: String, argument: String },
    #[error("argument {argument:?} must be an absolute URL with a host name (it gives the resource attribute {attribute:?}): {why}")]
    NotAUrl {
        attribute: String,
        argument: String,
        why: String,
    },
}

/// The resource attributes a call's arguments give, and the arguments as
/// they must be forwarded for those attributes to hold.
#[derive(Debug, Clone, PartialEq)]
pub struct Derived {
    pub attributes: serde_json::Map<String, serde_json::Value>,
    /// The call's arguments, with every `host_of` URL replaced by its
    /// WHATWG serialisation: the tool then parses the very URL whose host
    /// policy judged, however the agent spelled it.
    pub arguments: serde_json::Map<String, serde_json::Value>,
}

/// The host name of an absolute URL as a WHATWG URL parser (browsers,
/// most HTTP clients) reads it: lowercased, IDNA to punycode, without
/// port, brackets or a trailing dot; and the URL re-serialised.
pub fn parse_url_host(text: &str) -> Result<(String, String), String> {
    let url = url::Url::parse(text).map_err(|e| e.to_string())?;
    // Only for these does the WHATWG parser normalise the host (case,
    // percent-encoding, IDNA); any other scheme's host is opaque text
    // (`sftp://PASTEBIN.COM`) that a guardrail would compare as written.
    if !matches!(url.scheme(), "http" | "https" | "ws" | "wss" | "ftp") {
        return Err(format!(
            "scheme {:?} is not http, https, ws, wss or ftp",
            url.scheme()
        ));
    }
    let host = match url.host() {
        Some(url::Host::Domain(d)) => d.trim_end_matches('.').to_string(),
        Some(url::Host::Ipv4(a)) => a.to_string(),
        Some(url::Host::Ipv6(a)) => a.to_string(),
        None => return Err("it has no host".into()),
    };
    if host.is_empty() {
        return Err("it has no host".into());
    }
    Ok((host, url.into()))
}

/// The host of a URL, when it has one (see [`parse_url_host`]).
pub fn url_host(url: &str) -> Option<String> {
    parse_url_host(url).ok().map(|(h, _)| h)
}

/// `Type::id` (the resource key audit entries hold) split into type and id,
/// at the longest of `types` that prefixes it, so neither a namespaced type
/// (`Acme::Host`) nor an id containing `::` is cut in the wrong place; at
/// the first `::` when no type fits.
pub fn split_resource_key<'a>(key: &'a str, types: &[String]) -> Option<(&'a str, &'a str)> {
    types
        .iter()
        .filter_map(|t| {
            let id = key.strip_prefix(t.as_str())?.strip_prefix("::")?;
            Some((&key[..t.len()], id))
        })
        .max_by_key(|(t, _)| t.len())
        .or_else(|| key.split_once("::"))
}

impl Operation {
    pub fn risk_weight(&self) -> i64 {
        self.risk.unwrap_or(match self.tier {
            Tier::Read => 0,
            Tier::Contain => 5,
            Tier::Change => 10,
            Tier::Destructive => 25,
        })
    }
}

fn default_blast_radius() -> String {
    "single".to_string()
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    pub operations: BTreeMap<String, Operation>,
}

const BLAST_RADII: [&str; 4] = ["single", "service", "environment", "organization"];

impl Catalog {
    /// Parse and validate a catalog. Validation is strict because the catalog
    /// is trusted input to every decision: a typo in a label silently
    /// disabling a rule is worse than a refused load.
    pub fn from_yaml(text: &str) -> Result<Self, CatalogError> {
        let cat: Catalog =
            serde_yaml_ng::from_str(text).map_err(|e| CatalogError::Yaml(e.to_string()))?;
        cat.validate()?;
        Ok(cat)
    }

    /// Parameter names that some operation declares sensitive. A name that
    /// is secret anywhere is treated as secret everywhere: agents send
    /// `new_value` or `body` to operations that do not declare it too, and
    /// the value is no less a secret for being sent to the wrong place.
    pub fn sensitive_anywhere(&self) -> std::collections::BTreeSet<&str> {
        self.operations
            .values()
            .flat_map(|op| op.sensitive_parameters.iter().map(String::as_str))
            .collect()
    }

    pub fn validate(&self) -> Result<(), CatalogError> {
        let bad = |op: &str, problem: String| CatalogError::Operation {
            op: op.to_string(),
            problem,
        };
        // Tool name -> operation: agents call tools by name, so one name
        // must mean one operation, whichever upstream serves it.
        let mut tools: BTreeMap<&str, &str> = BTreeMap::new();
        for (name, op) in &self.operations {
            let name_ok = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
            if !name_ok {
                return Err(bad(name, "name must match [a-z0-9._-]+".into()));
            }
            if name.starts_with("task.") || name == "approve" {
                return Err(bad(
                    name,
                    "names under task. and 'approve' are reserved".into(),
                ));
            }
            if op.resource_types.is_empty() {
                return Err(bad(name, "resource_types must not be empty".into()));
            }
            for label in &op.labels {
                let ok = !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
                if !ok {
                    return Err(bad(name, format!("label {label:?} must be kebab-case")));
                }
            }
            if op.risk.is_some_and(|r| !(0..=1000).contains(&r)) {
                return Err(bad(name, "risk must be 0 to 1000".into()));
            }
            if !BLAST_RADII.contains(&op.blast_radius.as_str()) {
                return Err(bad(
                    name,
                    format!("blast_radius must be one of {}", BLAST_RADII.join(", ")),
                ));
            }
            if let Some(t) = &op.tool {
                validate_tool(name, op, t, &mut tools).map_err(|p| bad(name, p))?;
            }
            match (&op.compensation, op.reversible) {
                (Some(c), _) if !self.operations.contains_key(c) => {
                    return Err(bad(
                        name,
                        format!("compensation {c:?} is not in the catalog"),
                    ));
                }
                (Some(_), false) => {
                    return Err(bad(
                        name,
                        "an irreversible operation cannot name a compensation".into(),
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }

    pub fn operation(&self, action: &str) -> Option<&Operation> {
        self.operations.get(action)
    }

    /// The operation a tool name is bound to, with its binding.
    pub fn by_tool(&self, tool: &str) -> Option<(&str, &Operation, &ToolBinding)> {
        self.operations.iter().find_map(|(name, op)| {
            op.tool
                .as_ref()
                .filter(|t| t.name == tool)
                .map(|t| (name.as_str(), op, t))
        })
    }
}

impl ToolBinding {
    /// The resource type a call of this tool acts on.
    /// The resource attributes this binding derives from `arguments`;
    /// an attribute whose argument is missing or unusable is left out.
    /// The resource attributes this call's arguments give. Every declared
    /// attribute is required: a missing argument or a `host_of` argument
    /// that is not an absolute URL with a host refuses the call.
    pub fn derive_attributes(
        &self,
        arguments: serde_json::Map<String, serde_json::Value>,
    ) -> Result<Derived, AttributeError> {
        let mut attributes = serde_json::Map::new();
        let mut arguments = arguments;
        for (attr, src) in &self.resource_attributes {
            match (&src.argument, &src.host_of) {
                (Some(a), None) => {
                    let v = arguments.get(a).ok_or_else(|| AttributeError::Missing {
                        attribute: attr.clone(),
                        argument: a.clone(),
                    })?;
                    attributes.insert(attr.clone(), v.clone());
                }
                (None, Some(a)) => {
                    let not_url = |why: String| AttributeError::NotAUrl {
                        attribute: attr.clone(),
                        argument: a.clone(),
                        why,
                    };
                    let text = match arguments.get(a) {
                        None => {
                            return Err(AttributeError::Missing {
                                attribute: attr.clone(),
                                argument: a.clone(),
                            })
                        }
                        Some(serde_json::Value::String(s)) => s.clone(),
                        Some(_) => return Err(not_url("it is not a string".into())),
                    };
                    let (host, canonical) = parse_url_host(&text).map_err(not_url)?;
                    attributes.insert(attr.clone(), serde_json::Value::String(host));
                    arguments.insert(a.clone(), serde_json::Value::String(canonical));
                }
                // `validate_tool` admits exactly one of the two.
                _ => {}
            }
        }
        Ok(Derived {
            attributes,
            arguments,
        })
    }

    pub fn resource_type<'a>(&'a self, op: &'a Operation) -> &'a str {
        match &self.resource_type {
            Some(t) => t,
            None => op.resource_types.first().map_or("", String::as_str),
        }
    }
}

fn validate_tool<'a>(
    op_name: &'a str,
    op: &Operation,
    t: &'a ToolBinding,
    seen: &mut BTreeMap<&'a str, &'a str>,
) -> Result<(), String> {
    for (what, v) in [
        ("tool.server", &t.server),
        ("tool.name", &t.name),
        ("tool.resource_argument", &t.resource_argument),
    ] {
        if v.is_empty() || v.len() > 128 {
            return Err(format!("{what} must be 1 to 128 characters"));
        }
    }
    if t.name.starts_with("tollgate_") {
        // The gateway's own tools (`tollgate_rollback`) answer to these names.
        return Err(format!(
            "tool.name {:?}: names starting with tollgate_ are reserved for Tollgate's own tools",
            t.name
        ));
    }
    match &t.resource_type {
        Some(rt) if !op.resource_types.contains(rt) => {
            return Err(format!(
                "tool.resource_type {rt:?} is not one of the operation's resource_types"
            ))
        }
        None if op.resource_types.len() > 1 => {
            return Err(
                "tool.resource_type is required when an operation has several resource_types"
                    .into(),
            )
        }
        _ => {}
    }
    for (attr, src) in &t.resource_attributes {
        match (&src.argument, &src.host_of) {
            (Some(a), None) | (None, Some(a)) if !a.is_empty() && a.len() <= 128 => {}
            _ => {
                return Err(format!(
                    "tool.resource_attributes.{attr}: give exactly one of argument or host_of, naming an argument (1 to 128 characters)"
                ))
            }
        }
    }
    if let Some(other) = seen.insert(&t.name, op_name) {
        return Err(format!("tool {:?} is already bound to {other:?}", t.name));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
operations:
  edr.isolate_host:
    tier: contain
    resource_types: [Host]
    reversible: true
    compensation: edr.release_host
    labels: [network-change]
  edr.release_host:
    tier: contain
    resource_types: [Host]
    reversible: true
"#;

    #[test]
    fn tool_bindings_are_checked() {
        let bound = SAMPLE.replace(
            "labels: [network-change]",
            "labels: [network-change]\n    tool: {server: edr, name: isolate, resource_argument: host}",
        );
        let c = Catalog::from_yaml(&bound).unwrap();
        let (op, _, t) = c.by_tool("isolate").unwrap();
        assert_eq!(op, "edr.isolate_host");
        assert_eq!(t.resource_type(c.operation(op).unwrap()), "Host");
        assert!(c.by_tool("release").is_none());
        let twice = bound.replace(
            "  edr.release_host:\n",
            "  edr.release_host:\n    tool: {server: edr, name: isolate, resource_argument: host}\n",
        );
        assert!(Catalog::from_yaml(&twice)
            .unwrap_err()
            .to_string()
            .contains("already bound"));
        let two = bound.replace(
            "resource_argument: host}",
            "resource_argument: host, resource_attributes: {env: {argument: a, host_of: b}}}",
        );
        assert!(Catalog::from_yaml(&two)
            .unwrap_err()
            .to_string()
            .contains("exactly one of argument or host_of"));
        let wrong_type = bound.replace(
            "resource_argument: host}",
            "resource_argument: host, resource_type: Account}",
        );
        assert!(Catalog::from_yaml(&wrong_type)
            .unwrap_err()
            .to_string()
            .contains("not one of"));
        let empty = bound.replace("resource_argument: host", "resource_argument: ''");
        assert!(Catalog::from_yaml(&empty).is_err());
        let reserved = bound.replace("name: isolate", "name: tollgate_rollback");
        assert!(Catalog::from_yaml(&reserved)
            .unwrap_err()
            .to_string()
            .contains("reserved"));
    }

    #[test]
    fn resource_attributes_come_from_arguments() {
        let bound = SAMPLE.replace(
            "labels: [network-change]",
            "labels: [network-change]\n    tool: {server: edr, name: isolate, resource_argument: host, resource_attributes: {domain: {host_of: url}, environment: {argument: env}}}",
        );
        let c = Catalog::from_yaml(&bound).unwrap();
        let (_, _, t) = c.by_tool("isolate").unwrap();
        let args =
            serde_json::json!({"url": "https://User@PasteBin.com.:443/raw?x=1", "env": "prod"});
        let d = t
            .derive_attributes(args.as_object().unwrap().clone())
            .unwrap();
        assert_eq!(d.attributes["domain"], "pastebin.com");
        assert_eq!(d.attributes["environment"], "prod");
        // Forwarded as parsed: the tool sees the URL whose host was judged.
        assert_eq!(d.arguments["url"], "https://User@pastebin.com./raw?x=1");
        assert_eq!(
            t.derive_attributes(serde_json::Map::new()).unwrap_err(),
            AttributeError::Missing {
                attribute: "domain".into(),
                argument: "url".into()
            }
        );
        assert_eq!(url_host("http://[::1]:8080/x").as_deref(), Some("::1"));
        assert_eq!(
            url_host("https://LOCALHOST.:8080/x").as_deref(),
            Some("localhost")
        );
    }

    #[test]
    fn resource_keys_split_at_the_longest_known_type() {
        let types = vec!["Acme".to_string(), "Acme::Host".to_string()];
        assert_eq!(
            split_resource_key("Acme::Host::h1", &types),
            Some(("Acme::Host", "h1"))
        );
        assert_eq!(
            split_resource_key("Host::a::b", &["Host".into()]),
            Some(("Host", "a::b"))
        );
        assert_eq!(split_resource_key("Url::x", &[]), Some(("Url", "x")));
        assert_eq!(split_resource_key("nothing", &[]), None);
    }

    #[test]
    fn url_hosts_are_read_as_http_clients_read_them() {
        // Spellings that a hand-rolled parser gets wrong: each must name
        // pastebin.com, or refuse the call; never another host, never none.
        for spelling in [
            "https://pastebin.com/raw",
            "HTTPS://PASTEBIN.COM/raw",
            "https:pastebin.com/raw",
            "https:///pastebin.com/raw",
            "https://pastebin.com\\@example.org/",
            "https://%70astebin.com/raw",
            "https://ｐａｓｔｅｂｉｎ.com/raw",
            "https://paste\tbin.com/raw",
            " https://pastebin.com/raw ",
            "https://pastebin.com.:443/raw",
            "https://u:p@pastebin.com/raw",
        ] {
            assert_eq!(
                url_host(spelling).as_deref(),
                Some("pastebin.com"),
                "{spelling:?}"
            );
        }
        for refused in [
            "pastebin.com/raw",
            "mailto:x@pastebin.com",
            "",
            "https://",
            "data:text/plain,x",
            "sftp://PASTEBIN.COM/raw",
            "x://pastebin.com/",
        ] {
            assert_eq!(url_host(refused), None, "{refused:?}");
        }
        assert_eq!(
            url_host("http://127.0.0.1:9/x").as_deref(),
            Some("127.0.0.1")
        );
        assert_eq!(url_host("http://0x7f.1/x").as_deref(), Some("127.0.0.1"));
    }

    #[test]
    fn parses_a_valid_catalog() {
        let c = Catalog::from_yaml(SAMPLE).unwrap();
        let op = c.operation("edr.isolate_host").unwrap();
        assert_eq!(op.tier, Tier::Contain);
        assert_eq!(op.blast_radius, "single");
        assert!(c.operation("edr.delete_everything").is_none());
    }

    #[test]
    fn rejects_dangling_compensation_unknown_fields_and_bad_labels() {
        let dangling = SAMPLE.replace("compensation: edr.release_host", "compensation: edr.nope");
        assert!(Catalog::from_yaml(&dangling)
            .unwrap_err()
            .to_string()
            .contains("edr.nope"));
        let unknown = SAMPLE.replace(
            "reversible: true\n    compensation",
            "reversable: true\n    compensation",
        );
        assert!(matches!(
            Catalog::from_yaml(&unknown),
            Err(CatalogError::Yaml(_))
        ));
        let label = SAMPLE.replace("network-change", "Network Change");
        assert!(Catalog::from_yaml(&label)
            .unwrap_err()
            .to_string()
            .contains("kebab"));
        let tier = SAMPLE.replace("tier: contain", "tier: nuke");
        assert!(matches!(
            Catalog::from_yaml(&tier),
            Err(CatalogError::Yaml(_))
        ));
    }
}
