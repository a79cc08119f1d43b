//! The incident-response world the example tools act on: hosts, accounts,
//! secrets, alerts, SIEM events, log streams and outbound posts, kept in one
//! JSON file so a test or a person can see exactly what a tool call changed.
//!
//! Pure: `World::apply` turns a tool call into a new world and an answer;
//! reading and writing the file is `Store`'s job (atomic rename, so a reader
//! never sees half a file).

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct World {
    #[serde(default)]
    pub hosts: BTreeMap<String, HostState>,
    #[serde(default)]
    pub accounts: BTreeMap<String, AccountState>,
    #[serde(default)]
    pub secrets: BTreeMap<String, SecretState>,
    #[serde(default)]
    pub alerts: Vec<Alert>,
    /// SIEM events per index.
    #[serde(default)]
    pub siem: BTreeMap<String, Vec<Value>>,
    #[serde(default)]
    pub log_streams: BTreeMap<String, LogStreamState>,
    /// Every outbound POST, as sent.
    #[serde(default)]
    pub posts: Vec<Post>,
    /// Every change a tool made, in order.
    #[serde(default)]
    pub journal: Vec<Value>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HostState {
    pub isolated: bool,
    #[serde(default)]
    pub images: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AccountState {
    pub enabled: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SecretState {
    pub value: String,
    pub version: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Alert {
    pub host: String,
    pub severity: String,
    pub rule: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LogStreamState {
    pub deleted: bool,
    pub lines: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Post {
    pub url: String,
    pub method: String,
    pub body: String,
}

/// Why a tool call did nothing.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ToolError {
    #[error("unknown tool {0}")]
    UnknownTool(String),
    #[error("argument {0} is required and must be a string")]
    MissingArgument(&'static str),
    #[error("argument {0} must be {1}")]
    BadArgument(&'static str, &'static str),
    #[error("{0}")]
    NotFound(String),
    #[error("state file: {0}")]
    State(String),
}

/// One tool the server offers: name, description, and JSON Schema of its arguments.
pub struct ToolSpec {
    pub name: &'static str,
    pub description: &'static str,
    /// (argument, JSON type, description, required)
    pub arguments: &'static [(&'static str, &'static str, &'static str, bool)],
}

pub const TOOLS: &[ToolSpec] = &[
    ToolSpec {
        name: "edr_read_alerts",
        description: "Read the EDR alerts raised for a host.",
        arguments: &[("host", "string", "host name, e.g. web-1", true)],
    },
    ToolSpec {
        name: "siem_query",
        description: "Search a SIEM index; returns the events whose JSON contains the query text.",
        arguments: &[
            ("index", "string", "SIEM index, e.g. auth", true),
            ("query", "string", "text to look for", true),
            ("window_minutes", "integer", "how far back to look", false),
        ],
    },
    ToolSpec {
        name: "vault_read_secret",
        description: "Read a secret's current value from the vault.",
        arguments: &[("secret", "string", "secret name, e.g. prod-db", true)],
    },
    ToolSpec {
        name: "forensics_image_host",
        description: "Take a forensic disk and memory image of a host.",
        arguments: &[
            ("host", "string", "host name", true),
            ("snapshot", "string", "label for the image", false),
        ],
    },
    ToolSpec {
        name: "edr_isolate_host",
        description: "Cut a host off the network, keeping the EDR channel open.",
        arguments: &[
            ("host", "string", "host name", true),
            ("reason", "string", "why", false),
        ],
    },
    ToolSpec {
        name: "edr_release_host",
        description: "Undo a host isolation.",
        arguments: &[
            ("host", "string", "host name", true),
            ("reason", "string", "why", false),
        ],
    },
    ToolSpec {
        name: "iam_disable_account",
        description: "Disable a user account and end its sessions.",
        arguments: &[
            ("account", "string", "account name, e.g. jdoe", true),
            ("reason", "string", "why", false),
        ],
    },
    ToolSpec {
        name: "iam_enable_account",
        description: "Re-enable a user account.",
        arguments: &[
            ("account", "string", "account name", true),
            ("reason", "string", "why", false),
        ],
    },
    ToolSpec {
        name: "vault_rotate_secret",
        description: "Rotate a secret to a new value; the old value stops working.",
        arguments: &[
            ("secret", "string", "secret name", true),
            ("new_value", "string", "the new value", true),
        ],
    },
    ToolSpec {
        name: "http_post",
        description: "POST a body to an external URL.",
        arguments: &[
            ("url", "string", "where to post", true),
            ("body", "string", "what to send", true),
            ("method", "string", "HTTP method (default POST)", false),
        ],
    },
    ToolSpec {
        name: "logs_delete",
        description: "Delete a log stream.",
        arguments: &[("stream", "string", "log stream, e.g. prod/web-1/auth", true)],
    },
];

impl ToolSpec {
    /// The tool's `inputSchema`: a JSON Schema object.
    pub fn input_schema(&self) -> Map<String, Value> {
        let mut properties = Map::new();
        let mut required = Vec::new();
        for (name, kind, description, needed) in self.arguments {
            properties.insert(
                (*name).to_string(),
                json!({"type": kind, "description": description}),
            );
            if *needed {
                required.push(json!(name));
            }
        }
        let mut schema = Map::new();
        schema.insert("type".into(), json!("object"));
        schema.insert("properties".into(), Value::Object(properties));
        schema.insert("required".into(), Value::Array(required));
        schema.insert("additionalProperties".into(), json!(false));
        schema
    }
}

fn text<'a>(args: &'a Map<String, Value>, name: &'static str) -> Result<&'a str, ToolError> {
    args.get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or(ToolError::MissingArgument(name))
}

fn optional_text<'a>(
    args: &'a Map<String, Value>,
    name: &'static str,
) -> Result<Option<&'a str>, ToolError> {
    match args.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ToolError::BadArgument(name, "a string")),
    }
}

impl World {
    /// The world of the reference scenario (incident INC-4711: a beacon on web-1).
    pub fn reference() -> Self {
        let mut w = World::default();
        for h in ["web-1", "web-2", "db-1"] {
            w.hosts.insert(h.into(), HostState::default());
        }
        for a in ["jdoe", "asmith"] {
            w.accounts.insert(a.into(), AccountState { enabled: true });
        }
        w.secrets.insert(
            "prod-db".into(),
            SecretState {
                value: "db-password-v1".into(),
                version: 1,
            },
        );
        w.alerts.push(Alert {
            host: "web-1".into(),
            severity: "high".into(),
            rule: "beacon to 203.0.113.7 every 60 s".into(),
        });
        w.siem.insert(
            "auth".into(),
            vec![
                json!({"user": "jdoe", "event": "login", "host": "web-1", "src": "203.0.113.7"}),
                json!({"user": "asmith", "event": "login", "host": "web-2", "src": "10.0.0.8"}),
            ],
        );
        w.log_streams.insert(
            "prod/web-1/auth".into(),
            LogStreamState {
                deleted: false,
                lines: 1200,
            },
        );
        w
    }

    /// Run one tool call. Reads leave the world as it was; changes append
    /// to the journal. Returns the answer the tool gives.
    pub fn apply(&mut self, tool: &str, args: &Map<String, Value>) -> Result<Value, ToolError> {
        let answer = match tool {
            "edr_read_alerts" => {
                let host = self.host(text(args, "host")?)?;
                let alerts: Vec<&Alert> = self.alerts.iter().filter(|a| a.host == host).collect();
                return Ok(json!({"host": host, "alerts": alerts}));
            }
            "siem_query" => {
                let index = text(args, "index")?;
                let query = text(args, "query")?;
                if let Some(v) = args.get("window_minutes") {
                    if !v.is_u64() {
                        return Err(ToolError::BadArgument("window_minutes", "a whole number"));
                    }
                }
                let events = self
                    .siem
                    .get(index)
                    .ok_or_else(|| ToolError::NotFound(format!("no SIEM index {index}")))?;
                let hits: Vec<&Value> = events
                    .iter()
                    .filter(|e| e.to_string().contains(query))
                    .collect();
                return Ok(json!({"index": index, "query": query, "events": hits}));
            }
            "vault_read_secret" => {
                let name = text(args, "secret")?;
                let s = self.secret(name)?;
                return Ok(json!({"secret": name, "value": s.value, "version": s.version}));
            }
            "forensics_image_host" => {
                let host = self.host(text(args, "host")?)?.to_string();
                let label = optional_text(args, "snapshot")?.unwrap_or("image");
                let h = self.hosts.entry(host.clone()).or_default();
                h.images += 1;
                json!({"host": host, "image": format!("{host}-{label}-{}", h.images)})
            }
            "edr_isolate_host" | "edr_release_host" => {
                let host = self.host(text(args, "host")?)?.to_string();
                optional_text(args, "reason")?;
                let isolate = tool == "edr_isolate_host";
                let h = self.hosts.entry(host.clone()).or_default();
                let changed = h.isolated != isolate;
                h.isolated = isolate;
                json!({"host": host, "isolated": isolate, "changed": changed})
            }
            "iam_disable_account" | "iam_enable_account" => {
                let name = text(args, "account")?.to_string();
                optional_text(args, "reason")?;
                let enable = tool == "iam_enable_account";
                let a = self
                    .accounts
                    .get_mut(&name)
                    .ok_or_else(|| ToolError::NotFound(format!("no account {name}")))?;
                let changed = a.enabled != enable;
                a.enabled = enable;
                json!({"account": name, "enabled": enable, "changed": changed})
            }
            "vault_rotate_secret" => {
                let name = text(args, "secret")?.to_string();
                let value = text(args, "new_value")?.to_string();
                let s = self
                    .secrets
                    .get_mut(&name)
                    .ok_or_else(|| ToolError::NotFound(format!("no secret {name}")))?;
                s.value = value;
                s.version += 1;
                json!({"secret": name, "version": s.version})
            }
            "http_post" => {
                let url = text(args, "url")?.to_string();
                let body = text(args, "body")?.to_string();
                let method = optional_text(args, "method")?.unwrap_or("POST").to_string();
                self.posts.push(Post {
                    url: url.clone(),
                    method: method.clone(),
                    body,
                });
                json!({"url": url, "method": method, "status": 200})
            }
            "logs_delete" => {
                let name = text(args, "stream")?.to_string();
                let s = self
                    .log_streams
                    .get_mut(&name)
                    .ok_or_else(|| ToolError::NotFound(format!("no log stream {name}")))?;
                s.deleted = true;
                s.lines = 0;
                json!({"stream": name, "deleted": true})
            }
            other => return Err(ToolError::UnknownTool(other.to_string())),
        };
        self.journal.push(json!({"tool": tool, "result": answer}));
        Ok(answer)
    }

    fn host<'a>(&self, name: &'a str) -> Result<&'a str, ToolError> {
        if self.hosts.contains_key(name) {
            Ok(name)
        } else {
            Err(ToolError::NotFound(format!("no host {name}")))
        }
    }

    fn secret(&self, name: &str) -> Result<&SecretState, ToolError> {
        self.secrets
            .get(name)
            .ok_or_else(|| ToolError::NotFound(format!("no secret {name}")))
    }
}

/// The world on disk. Every call reads the file, applies, and (for a change)
/// writes it back through a temporary file and a rename.
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    /// Open `path`, writing the reference world there if it does not exist.
    pub fn open(path: &Path) -> Result<Self, ToolError> {
        let file = Self {
            path: path.to_path_buf(),
        };
        if !path.exists() {
            file.write(&World::reference())?;
        }
        file.read()?;
        Ok(file)
    }

    pub fn read(&self) -> Result<World, ToolError> {
        let text = std::fs::read_to_string(&self.path)
            .map_err(|e| ToolError::State(format!("{}: {e}", self.path.display())))?;
        serde_json::from_str(&text)
            .map_err(|e| ToolError::State(format!("{}: {e}", self.path.display())))
    }

    pub fn write(&self, world: &World) -> Result<(), ToolError> {
        let tmp = self.path.with_extension("json.tmp");
        let text =
            serde_json::to_string_pretty(world).map_err(|e| ToolError::State(e.to_string()))?;
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &self.path))
            .map_err(|e| ToolError::State(format!("{}: {e}", self.path.display())))
    }

    /// Apply one call and persist the world if it changed.
    pub fn call(&self, tool: &str, args: &Map<String, Value>) -> Result<Value, ToolError> {
        let mut world = self.read()?;
        let before = world.journal.len();
        let answer = world.apply(tool, args)?;
        if world.journal.len() != before {
            self.write(&world)?;
        }
        Ok(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn every_tool_has_a_handler() {
        for t in TOOLS {
            let err = World::reference().apply(t.name, &Map::new());
            assert!(
                !matches!(err, Err(ToolError::UnknownTool(_))),
                "{} has no handler",
                t.name
            );
        }
    }

    #[test]
    fn isolation_changes_the_world_and_reads_do_not() {
        let mut w = World::reference();
        let before = w.clone();
        w.apply("edr_read_alerts", &args(json!({"host": "web-1"})))
            .unwrap();
        assert_eq!(w, before);
        let out = w
            .apply("edr_isolate_host", &args(json!({"host": "web-1"})))
            .unwrap();
        assert_eq!(out["changed"], true);
        assert!(w.hosts["web-1"].isolated);
        w.apply("edr_release_host", &args(json!({"host": "web-1"})))
            .unwrap();
        assert!(!w.hosts["web-1"].isolated);
        assert_eq!(w.journal.len(), 2);
    }

    #[test]
    fn bad_arguments_change_nothing() {
        let mut w = World::reference();
        let before = w.clone();
        assert_eq!(
            w.apply("edr_isolate_host", &args(json!({"host": 7}))),
            Err(ToolError::MissingArgument("host"))
        );
        assert!(matches!(
            w.apply("iam_disable_account", &args(json!({"account": "nobody"}))),
            Err(ToolError::NotFound(_))
        ));
        assert_eq!(
            w.apply(
                "http_post",
                &args(json!({"url": "u", "body": "b", "method": 1}))
            ),
            Err(ToolError::BadArgument("method", "a string"))
        );
        assert_eq!(w, before);
    }

    #[test]
    fn state_file_round_trips_and_persists_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("world.json");
        let file = StateFile::open(&path).unwrap();
        file.call("iam_disable_account", &args(json!({"account": "jdoe"})))
            .unwrap();
        assert!(!StateFile::open(&path).unwrap().read().unwrap().accounts["jdoe"].enabled);
    }
}
