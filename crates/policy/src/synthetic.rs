//! Synthetic packs for benchmarks: a real pack plus generated per-agent
//! policies, the shape that grows large in practice (one or two policies per
//! enrolled agent, as template links or generated files would give).

use crate::{PolicyError, PolicyPack, SourceFile};
use std::path::Path;

/// The SPIFFE ID of generated agent `i`.
pub fn agent_id(trust_domain: &str, i: usize) -> String {
    format!("spiffe://{trust_domain}/agent/ir-responder/i-{i}")
}

/// Load the pack in `dir` and add generated per-agent policies until it
/// holds `total` policies (never fewer than the pack's own). Agent `i`
/// may read its own host `web-{i}`; every tenth agent is also forbidden
/// destructive actions.
pub fn with_agent_policies(
    dir: &Path,
    trust_domain: &str,
    total: usize,
) -> Result<PolicyPack, PolicyError> {
    let base = PolicyPack::load_dir(dir)?;
    let extra = total.saturating_sub(base.policy_count());
    if extra == 0 {
        return Ok(base);
    }
    let read = |name: &str| -> Result<SourceFile, PolicyError> {
        let text = std::fs::read_to_string(dir.join(name))
            .map_err(|e| PolicyError::Io(format!("{name}: {e}")))?;
        Ok(SourceFile {
            name: name.into(),
            text,
        })
    };
    let mut policies = Vec::new();
    let pdir = dir.join("policies");
    let mut names: Vec<String> = std::fs::read_dir(&pdir)
        .map_err(|e| PolicyError::Io(format!("{}: {e}", pdir.display())))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".cedar"))
        .collect();
    names.sort();
    for n in names {
        policies.push(read(&format!("policies/{n}"))?);
    }
    policies.push(SourceFile {
        name: "policies/zz-agents.cedar".into(),
        text: agent_policies(trust_domain, extra),
    });
    let pack = PolicyPack::from_sources(
        &read("schema.cedarschema")?,
        &policies,
        &read("catalog.yaml")?,
    )?;
    if dir.join("playbooks.yaml").exists() {
        return pack.with_playbooks(&read("playbooks.yaml")?);
    }
    Ok(pack)
}

/// `count` per-agent policies, about ten per cent of them forbids.
pub fn agent_policies(trust_domain: &str, count: usize) -> String {
    let mut text = String::with_capacity(count * 200);
    for i in 0..count {
        let agent = agent_id(trust_domain, i);
        if i % 10 == 9 {
            text.push_str(&format!(
                "@id(\"agent-{i}-no-destructive\")\n@reason(\"agent {i} never runs destructive actions\")\nforbid (principal == Agent::\"{agent}\", action in Action::\"destructive\", resource);\n"
            ));
        } else {
            text.push_str(&format!(
                "@id(\"agent-{i}-own-host\")\n@reason(\"agent {i} may read its own host\")\npermit (principal == Agent::\"{agent}\", action in Action::\"read\", resource == Host::\"web-{i}\")\nwhen {{ context.incident.severity_rank >= 1 }};\n"
            ));
        }
    }
    text
}
