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

    pub fn validate(&self) -> Result<(), CatalogError> {
        let bad = |op: &str, problem: String| CatalogError::Operation {
            op: op.to_string(),
            problem,
        };
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
