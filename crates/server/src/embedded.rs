//! The example incident-response pack, compiled in: `tollgate serve` with no
//! `--config` runs on it, and `tollgate init DIR` writes it out.

pub const FILES: &[(&str, &str)] = &[
    (
        "tollgate.yaml",
        include_str!("../../../examples/incident-response/tollgate.yaml"),
    ),
    (
        "schema.cedarschema",
        include_str!("../../../examples/incident-response/schema.cedarschema"),
    ),
    (
        "playbooks.yaml",
        include_str!("../../../examples/incident-response/playbooks.yaml"),
    ),
    (
        "catalog.yaml",
        include_str!("../../../examples/incident-response/catalog.yaml"),
    ),
    (
        "policies/00-tasks.cedar",
        include_str!("../../../examples/incident-response/policies/00-tasks.cedar"),
    ),
    (
        "policies/10-actions.cedar",
        include_str!("../../../examples/incident-response/policies/10-actions.cedar"),
    ),
    (
        "policies/20-approvals.cedar",
        include_str!("../../../examples/incident-response/policies/20-approvals.cedar"),
    ),
    (
        "policies/30-delegation.cedar",
        include_str!("../../../examples/incident-response/policies/30-delegation.cedar"),
    ),
    (
        "policies/40-chain-rules.cedar",
        include_str!("../../../examples/incident-response/policies/40-chain-rules.cedar"),
    ),
    (
        "policies/45-across-tasks.cedar",
        include_str!("../../../examples/incident-response/policies/45-across-tasks.cedar"),
    ),
    (
        "policies/90-guardrails.cedar",
        include_str!("../../../examples/incident-response/policies/90-guardrails.cedar"),
    ),
    (
        "rules/history.tgr",
        include_str!("../../../examples/incident-response/rules/history.tgr"),
    ),
    (
        "tests/actions.yaml",
        include_str!("../../../examples/incident-response/tests/actions.yaml"),
    ),
    (
        "tests/chain-contain-rate.yaml",
        include_str!("../../../examples/incident-response/tests/chain-contain-rate.yaml"),
    ),
    (
        "tests/chain-destructive-rate.yaml",
        include_str!("../../../examples/incident-response/tests/chain-destructive-rate.yaml"),
    ),
    (
        "tests/chain-egress-window.yaml",
        include_str!("../../../examples/incident-response/tests/chain-egress-window.yaml"),
    ),
    (
        "tests/chain-incident-disables.yaml",
        include_str!("../../../examples/incident-response/tests/chain-incident-disables.yaml"),
    ),
    (
        "tests/chain-release-after-imaging.yaml",
        include_str!("../../../examples/incident-response/tests/chain-release-after-imaging.yaml"),
    ),
    (
        "tests/chain-second-irreversible.yaml",
        include_str!("../../../examples/incident-response/tests/chain-second-irreversible.yaml"),
    ),
    (
        "tests/chain-egress.yaml",
        include_str!("../../../examples/incident-response/tests/chain-egress.yaml"),
    ),
    (
        "tests/chain-retry-storm.yaml",
        include_str!("../../../examples/incident-response/tests/chain-retry-storm.yaml"),
    ),
    (
        "tests/chain-risk-budget.yaml",
        include_str!("../../../examples/incident-response/tests/chain-risk-budget.yaml"),
    ),
];

fn file(name: &str) -> tollgate_policy::SourceFile {
    let text = FILES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, t)| t.to_string())
        .unwrap_or_default();
    tollgate_policy::SourceFile {
        name: name.to_string(),
        text,
    }
}

pub fn pack(
    options: tollgate_policy::LoadOptions,
) -> Result<tollgate_policy::PolicyPack, tollgate_policy::PolicyError> {
    let under = |dir: &str| -> Vec<_> {
        FILES
            .iter()
            .filter(|(n, _)| n.starts_with(dir))
            .map(|(n, _)| file(n))
            .collect()
    };
    tollgate_policy::PolicyPack::from_sources_with_rules(
        &file("schema.cedarschema"),
        &under("policies/"),
        &file("catalog.yaml"),
        &under("rules/"),
        options,
    )?
    .with_playbooks(&file("playbooks.yaml"))
}

pub fn config_text() -> &'static str {
    FILES[0].1
}
