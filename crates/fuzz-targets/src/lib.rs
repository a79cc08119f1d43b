//! The fuzz targets: every parser of untrusted input, one public function
//! each, taking arbitrary bytes. A target returns on any input it refuses and
//! panics only when an invariant breaks (a panic is what a fuzzer reports).
//!
//! Two drivers call these functions: the cargo-fuzz crate in `fuzz/`
//! (`cargo +nightly fuzz run <target>`, coverage-guided) and the seeded
//! mutation harness in `harness.rs` (stable; run by `cargo test --workspace`,
//! and for a bounded time with `TOLLGATE_FUZZ_SECONDS`).

use std::sync::OnceLock;
use tollgate_core::{Incident, IncidentStatus, Scope, Severity, SpiffeId, Task, TaskStatus};
use tollgate_identity::{SigningKeyPair, Tokens};
use tollgate_policy::{ActionFacts, AgentFacts, PolicyPack, ResourceRef};

#[cfg(test)]
mod harness;

/// A fuzz target: returns on any input, panics only on a broken invariant.
pub type Target = fn(&[u8]);

/// Every target, by the name cargo-fuzz knows it under.
pub const TARGETS: &[(&str, Target)] = &[
    ("token_verify", token_verify),
    ("spiffe_id", spiffe_id),
    ("catalog_yaml", catalog_yaml),
    ("trust_bundle", trust_bundle),
    ("action_request", action_request),
    ("authzen_body", authzen_body),
    ("mcp_tool_arguments", mcp_tool_arguments),
];

/// The verifier `token_verify` checks against: a fresh key, so no input can
/// carry a signature it accepts.
#[allow(clippy::panic, reason = "setup failure must stop the fuzzer")]
fn tokens() -> &'static Tokens {
    static T: OnceLock<Tokens> = OnceLock::new();
    T.get_or_init(|| {
        let (key, _) = SigningKeyPair::generate()
            .unwrap_or_else(|e| panic!("cannot generate a signing key: {e}"));
        Tokens::new(key, "tollgate", "acme.test", "tollgate")
    })
}

/// Bearer tokens arrive from anyone: neither verifier may panic, and nothing
/// random may verify.
pub fn token_verify(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data) {
        assert!(
            tokens().verify_svid(s, 1_800_000_000).is_err(),
            "a random SVID verified: {s:?}"
        );
        assert!(
            tokens().verify_task_credential(s, 1_800_000_000).is_err(),
            "a random task credential verified: {s:?}"
        );
    }
}

/// Whatever parses as a SPIFFE ID prints back to itself.
pub fn spiffe_id(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(id) = SpiffeId::parse(s) {
            assert_eq!(id.to_string(), s);
        }
    }
}

/// A tool catalog (operator YAML): no panic, whatever the text.
pub fn catalog_yaml(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = tollgate_core::Catalog::from_yaml(s);
    }
}

/// An external trust domain's JWK Set (fetched or configured): no panic.
pub fn trust_bundle(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = tollgate_identity::TrustBundle::from_jwks("partner.test", s);
    }
}

#[allow(clippy::panic, reason = "setup failure must stop the fuzzer")]
fn pack() -> &'static PolicyPack {
    static P: OnceLock<PolicyPack> = OnceLock::new();
    P.get_or_init(|| {
        tollgate_server::embedded::pack(Default::default())
            .unwrap_or_else(|e| panic!("the embedded pack does not load: {e}"))
    })
}

#[derive(serde::Deserialize)]
struct ActionBody {
    action: String,
    resource: ResourceRef,
    #[serde(default)]
    parameters: serde_json::Map<String, serde_json::Value>,
}

/// The agent-controlled parts of a decision (resource, attributes,
/// parameters, action name) against the example pack: no panic, ever.
#[allow(clippy::panic, reason = "setup failure must stop the fuzzer")]
pub fn action_request(data: &[u8]) {
    let Ok(body) = serde_json::from_slice::<ActionBody>(data) else {
        return;
    };
    let id = SpiffeId::parse("spiffe://acme.test/agent/ir-responder/i-1")
        .unwrap_or_else(|e| panic!("the agent's SPIFFE ID does not parse: {e}"));
    let task = Task {
        id: "t".into(),
        agent: id.to_string(),
        incident_id: "I".into(),
        environment: "prod".into(),
        playbook: "p".into(),
        intent: "i".into(),
        scope: Scope::default(),
        parent_task_id: None,
        created_at: 0,
        expires_at: 10,
        max_expires_at: 10,
        status: TaskStatus::Active,
        status_reason: None,
    };
    let incident = Incident {
        id: "I".into(),
        class: "malware".into(),
        severity: Severity::High,
        status: IncidentStatus::Open,
        updated_at: 0,
    };
    let _ = pack().decide_action(&ActionFacts {
        agent: AgentFacts {
            spiffe_id: &id,
            owner: "o",
        },
        task: &task,
        incident: &incident,
        action: &body.action,
        resource: &body.resource,
        intent: "fuzz",
        parameters: &body.parameters,
        evidence_present: data.len().is_multiple_of(2),
        history: &tollgate_core::HistorySummary::default(),
        rules: &serde_json::Map::new(),
        now: 0,
    });
}

/// An AuthZEN request body (one evaluation or a batch): no panic.
pub fn authzen_body(data: &[u8]) {
    let _ = serde_json::from_slice::<tollgate_server::api::authzen::Evaluations>(data);
    let _ = serde_json::from_slice::<tollgate_server::api::authzen::Evaluation>(data);
}

fn catalog() -> &'static tollgate_core::Catalog {
    static C: OnceLock<tollgate_core::Catalog> = OnceLock::new();
    C.get_or_init(|| pack().catalog().clone())
}

/// The arguments of an agent's MCP `tools/call`, mapped through every tool
/// binding of the example catalog (resource attributes derived from them,
/// `host_of` URLs parsed and re-serialised): no panic, and a derived host
/// is what parsing the forwarded URL again gives (the tool sees the host
/// that policy judged).
#[allow(clippy::panic, reason = "a broken invariant must crash the fuzzer")]
pub fn mcp_tool_arguments(data: &[u8]) {
    let Ok(serde_json::Value::Object(args)) = serde_json::from_slice(data) else {
        return;
    };
    for op in catalog().operations.values() {
        let Some(binding) = &op.tool else { continue };
        let Ok(derived) = binding.derive_attributes(args.clone()) else {
            continue;
        };
        for (attr, src) in &binding.resource_attributes {
            if let Some(arg) = &src.host_of {
                let Some(forwarded) = derived.arguments[arg].as_str() else {
                    panic!("forwarded {arg:?} is not a string: {derived:?}");
                };
                assert_eq!(
                    tollgate_core::url_host(forwarded).as_deref(),
                    derived.attributes[attr].as_str(),
                    "{forwarded:?}"
                );
            }
        }
    }
}
