use super::*;
use serde_json::{json, Map, Value};
use std::path::PathBuf;
use tollgate_core::{
    Incident, IncidentStatus, Outcome, Scope, Severity, SpiffeId, Task, TaskStatus,
};

fn pack_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/incident-response")
}

fn pack() -> PolicyPack {
    PolicyPack::load_dir(&pack_dir()).unwrap()
}

/// The example's temporal rules over an empty past (all false or 0): what
/// every request of these tests carries as `context.rules`.
fn example_rules() -> &'static Map<String, Value> {
    static RULES: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
    RULES.get_or_init(|| pack().rules().sample())
}

/// A pack from `sources()`-style texts, with the example's rule file (its
/// schema declares `rules: TemporalRules`).
fn with_rules(
    schema: &SourceFile,
    policies: &[SourceFile],
    catalog: &SourceFile,
) -> Result<PolicyPack, PolicyError> {
    let rules = SourceFile {
        name: "rules/history.tgr".into(),
        text: std::fs::read_to_string(pack_dir().join("rules/history.tgr")).unwrap(),
    };
    PolicyPack::from_sources_with_rules(schema, policies, catalog, &[rules], LoadOptions::default())
}

fn incident(class: &str, severity: Severity) -> Incident {
    Incident {
        id: "INC-4711".into(),
        class: class.into(),
        severity,
        status: IncidentStatus::Open,
        updated_at: 0,
    }
}

fn task() -> Task {
    Task {
        id: "task_1".into(),
        agent: "spiffe://acme.test/agent/ir-responder/i-1".into(),
        incident_id: "INC-4711".into(),
        environment: "prod".into(),
        playbook: "contain-malware".into(),
        intent: "contain the beacon on web-1".into(),
        scope: Scope::default(),
        parent_task_id: None,
        created_at: 0,
        expires_at: 300,
        max_expires_at: 3600,
        status: TaskStatus::Active,
        status_reason: None,
    }
}

struct Case {
    agent: &'static str,
    action: &'static str,
    resource: Value,
    parameters: Value,
    evidence: bool,
}

fn decide(p: &PolicyPack, c: &Case) -> Result<tollgate_core::Decision, PolicyError> {
    with_facts(c, |f| p.decide_action(f))
}

fn with_facts<R>(c: &Case, run: impl FnOnce(&ActionFacts<'_>) -> R) -> R {
    let id = SpiffeId::parse(c.agent).unwrap();
    let resource: ResourceRef = serde_json::from_value(c.resource.clone()).unwrap();
    let params: Map<String, Value> = serde_json::from_value(c.parameters.clone()).unwrap();
    let t = task();
    let inc = incident("malware", Severity::High);
    run(&ActionFacts {
        agent: AgentFacts {
            spiffe_id: &id,
            owner: "alice",
        },
        task: &t,
        incident: &inc,
        action: c.action,
        resource: &resource,
        intent: "test",
        parameters: &params,
        evidence_present: c.evidence,
        history: &tollgate_core::HistorySummary::default(),
        rules: example_rules(),
        now: 1_800_000_000,
    })
}

const IR: &str = "spiffe://acme.test/agent/ir-responder/i-1";
const FORENSICS: &str = "spiffe://acme.test/agent/forensics/i-2";

fn cases() -> Vec<(&'static str, Case)> {
    let host = json!({"type": "Host", "id": "web-1", "attributes": {"environment": "prod"}});
    let c = |agent, action, resource: &Value, parameters: Value, evidence| Case {
        agent,
        action,
        resource: resource.clone(),
        parameters,
        evidence,
    };
    vec![
        (
            "read alerts",
            c(IR, "edr.read_alerts", &host, json!({}), false),
        ),
        (
            "siem query",
            c(
                IR,
                "siem.query",
                &json!({"type": "SiemIndex", "id": "main"}),
                json!({"query": "beacon", "window_minutes": 60}),
                false,
            ),
        ),
        (
            "isolate without evidence",
            c(IR, "edr.isolate_host", &host, json!({}), false),
        ),
        (
            "isolate with evidence",
            c(IR, "edr.isolate_host", &host, json!({}), true),
        ),
        (
            "forensics cannot isolate",
            c(FORENSICS, "edr.isolate_host", &host, json!({}), true),
        ),
        (
            "disable account",
            c(
                IR,
                "iam.disable_account",
                &json!({"type": "Account", "id": "jdoe"}),
                json!({"reason": "compromised"}),
                false,
            ),
        ),
        (
            "rotate secret",
            c(
                IR,
                "vault.rotate_secret",
                &json!({"type": "Secret", "id": "prod-db"}),
                json!({}),
                false,
            ),
        ),
        (
            "delete logs",
            c(
                IR,
                "logs.delete",
                &json!({"type": "LogStream", "id": "web-1/auth"}),
                json!({}),
                false,
            ),
        ),
        (
            "post to paste site",
            c(
                IR,
                "http.post",
                &json!({"type": "Url", "id": "https://pastebin.com/x", "attributes": {"domain": "pastebin.com"}}),
                json!({}),
                false,
            ),
        ),
        (
            "post elsewhere",
            c(
                IR,
                "http.post",
                &json!({"type": "Url", "id": "https://ticket.acme.test/1", "attributes": {"domain": "ticket.acme.test"}}),
                json!({}),
                false,
            ),
        ),
        (
            "read secret",
            c(
                IR,
                "vault.read_secret",
                &json!({"type": "Secret", "id": "prod-db"}),
                json!({}),
                false,
            ),
        ),
        (
            "forensics cannot read secrets",
            c(
                FORENSICS,
                "vault.read_secret",
                &json!({"type": "Secret", "id": "prod-db"}),
                json!({}),
                false,
            ),
        ),
        (
            "unknown action",
            c(IR, "edr.wipe_host", &host, json!({}), false),
        ),
        (
            "wrong resource type",
            c(
                IR,
                "edr.isolate_host",
                &json!({"type": "Account", "id": "jdoe"}),
                json!({}),
                true,
            ),
        ),
    ]
}

/// Golden file of the example pack's decisions. Regenerate with
/// `TOLLGATE_BLESS=1 cargo test -p tollgate-policy` and review the diff.
#[test]
fn example_pack_decisions_match_golden() {
    let p = pack();
    let mut got = serde_json::Map::new();
    for (name, case) in cases() {
        let d = decide(&p, &case).unwrap();
        got.insert(name.to_string(), serde_json::to_value(d).unwrap());
    }
    let got = serde_json::to_string_pretty(&got).unwrap() + "\n";
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/decisions.json");
    if std::env::var_os("TOLLGATE_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &got).unwrap();
    }
    let want =
        std::fs::read_to_string(&path).expect("golden file missing; run with TOLLGATE_BLESS=1");
    assert_eq!(
        got, want,
        "decisions changed; if intended, re-bless and review"
    );
}

/// The direct request builder is taken for every golden case and builds
/// exactly what Cedar's JSON parser builds; escapes fall back to the parser.
#[test]
fn direct_request_building_matches_the_json_parser() {
    let p = pack();
    let sorted = |e: &cedar_policy::Entities| {
        let mut v = e.to_json_value().unwrap().as_array().unwrap().clone();
        v.sort_by_key(|x| x["uid"].to_string());
        v
    };
    let mut cases = cases();
    cases.push((
        "escaped parameter",
        Case {
            agent: IR,
            action: "siem.query",
            resource: json!({"type": "SiemIndex", "id": "main"}),
            parameters: json!({"query": {"__extn": {"fn": "ip", "arg": "10.0.0.1"}}}),
            evidence: false,
        },
    ));
    let mut refused = Vec::new();
    for (name, case) in cases {
        with_facts(&case, |f| {
            let Some(op) = p.catalog().operation(f.action) else {
                return;
            };
            let (principal, resource, entities, context) =
                crate::request::action_parts(f, op).unwrap();
            let direct = p.build_direct(&principal, f.action, &resource, &entities, &context);
            let json = p.build_json(principal, f.action, resource, entities, context);
            match (direct, json) {
                (Some((dr, de)), Ok((jr, je))) => {
                    assert_eq!(format!("{dr:?}"), format!("{jr:?}"), "{name}");
                    assert_eq!(sorted(&de), sorted(&je), "{name}");
                }
                // Requests the schema refuses: the JSON path reports why.
                (None, Err(_)) => refused.push(name),
                (d, j) => panic!("{name}: direct {:?} json {:?}", d.is_some(), j.is_ok()),
            }
        });
    }
    assert_eq!(refused, vec!["wrong resource type", "escaped parameter"]);
}

#[test]
fn outcomes_of_the_reference_scenario() {
    let p = pack();
    let by_name: std::collections::HashMap<_, _> = cases().into_iter().collect();
    let outcome = |n: &str| decide(&p, &by_name[n]).unwrap();
    assert_eq!(outcome("read alerts").outcome, Outcome::Allow);
    let no_ev = outcome("isolate without evidence");
    assert_eq!(no_ev.outcome, Outcome::Deny);
    assert_eq!(no_ev.obligations, vec!["evidence-before"]);
    assert_eq!(outcome("isolate with evidence").outcome, Outcome::Allow);
    let disable = outcome("disable account");
    assert_eq!(
        (disable.outcome, disable.approvals_required),
        (Outcome::ApprovalRequired, 1)
    );
    assert_eq!(outcome("rotate secret").approvals_required, 2);
    let logs = outcome("delete logs");
    assert_eq!(logs.outcome, Outcome::Deny);
    assert_eq!(logs.policies, vec!["never-delete-logs"]);
    assert_eq!(outcome("post to paste site").outcome, Outcome::Deny);
    assert_eq!(outcome("unknown action").outcome, Outcome::Deny);
}

#[test]
fn requests_that_do_not_fit_the_schema_are_bad_requests() {
    let p = pack();
    let host = json!({"type": "Host", "id": "web-1"});
    let undeclared_param = Case {
        agent: IR,
        action: "edr.read_alerts",
        resource: host.clone(),
        parameters: json!({"rm_rf": true}),
        evidence: false,
    };
    assert!(matches!(
        decide(&p, &undeclared_param),
        Err(PolicyError::BadRequest(_))
    ));
    let wrong_type = Case {
        agent: IR,
        action: "siem.query",
        resource: json!({"type": "SiemIndex", "id": "m"}),
        parameters: json!({"window_minutes": "sixty"}),
        evidence: false,
    };
    assert!(matches!(
        decide(&p, &wrong_type),
        Err(PolicyError::BadRequest(_))
    ));
    let bad_attr = Case {
        agent: IR,
        action: "edr.read_alerts",
        resource: json!({"type": "Host", "id": "w", "attributes": {"owner": 1}}),
        parameters: json!({}),
        evidence: false,
    };
    assert!(matches!(
        decide(&p, &bad_attr),
        Err(PolicyError::BadRequest(_))
    ));
}

#[test]
fn task_scope_narrows_what_policy_allows() {
    let p = pack();
    let id = SpiffeId::parse(FORENSICS).unwrap();
    let mut t = task();
    t.scope = Scope {
        actions: Some(["forensics.image_host".to_string()].into()),
        resources: Some(["Host::web-1".to_string()].into()),
    };
    let inc = incident("malware", Severity::High);
    let empty = Map::new();
    let decide = |action: &str, rid: &str| {
        let r: ResourceRef = serde_json::from_value(json!({"type": "Host", "id": rid})).unwrap();
        p.decide_action(&ActionFacts {
            agent: AgentFacts {
                spiffe_id: &id,
                owner: "o",
            },
            task: &t,
            incident: &inc,
            action,
            resource: &r,
            intent: "i",
            parameters: &empty,
            evidence_present: false,
            history: &tollgate_core::HistorySummary::default(),
            rules: example_rules(),
            now: 0,
        })
        .unwrap()
    };
    assert_eq!(
        decide("forensics.image_host", "web-1").outcome,
        Outcome::Allow
    );
    assert_eq!(
        decide("forensics.image_host", "web-2").outcome,
        Outcome::Deny
    );
    assert_eq!(decide("edr.read_alerts", "web-1").outcome, Outcome::Deny);
}

#[test]
fn task_open_follows_role_class_and_ttl() {
    let p = pack();
    let open = |agent: &str, class: &str, sev, ttl| {
        let id = SpiffeId::parse(agent).unwrap();
        let inc = incident(class, sev);
        p.decide_task_open(&TaskOpenFacts {
            agent: AgentFacts {
                spiffe_id: &id,
                owner: "o",
            },
            incident: &inc,
            environment: "prod",
            // Forensics works read-only investigations of any class.
            playbook: if agent == FORENSICS {
                "investigate"
            } else {
                "contain-malware"
            },
            intent: "i",
            ttl_seconds: ttl,
            now: 0,
        })
        .unwrap()
        .outcome
    };
    assert_eq!(open(IR, "malware", Severity::High, 300), Outcome::Allow);
    assert_eq!(open(IR, "ddos", Severity::High, 300), Outcome::Deny);
    assert_eq!(open(IR, "malware", Severity::High, 7200), Outcome::Deny);
    assert_eq!(open(FORENSICS, "ddos", Severity::Low, 300), Outcome::Deny);
    assert_eq!(
        open(FORENSICS, "ddos", Severity::Medium, 300),
        Outcome::Allow
    );
    assert_eq!(
        open(
            "spiffe://acme.test/agent/intern/i-9",
            "malware",
            Severity::Low,
            300
        ),
        Outcome::Deny
    );
}

fn sources() -> (SourceFile, Vec<SourceFile>, SourceFile) {
    let dir = pack_dir();
    let read = |rel: &str| SourceFile {
        name: rel.into(),
        text: std::fs::read_to_string(dir.join(rel)).unwrap(),
    };
    (
        read("schema.cedarschema"),
        vec![read("policies/10-actions.cedar")],
        read("catalog.yaml"),
    )
}

#[test]
fn invalid_packs_report_file_and_line() {
    let (schema, mut policies, catalog) = sources();
    // A type error on line 3 of a new file: role is a String.
    policies.push(SourceFile {
        name: "policies/bad.cedar".into(),
        text: "// c\n\npermit (principal, action, resource) when { principal.role > 3 };\n".into(),
    });
    let err = with_rules(&schema, &policies, &catalog).err().unwrap();
    let PolicyError::Invalid(diags) = err else {
        panic!("expected Invalid")
    };
    assert!(
        diags
            .iter()
            .any(|d| d.file == "policies/bad.cedar" && d.line == 3),
        "{diags:?}"
    );

    // A syntax error.
    policies.pop();
    policies.push(SourceFile {
        name: "policies/syntax.cedar".into(),
        text: "permit (principal, action resource);".into(),
    });
    let PolicyError::Invalid(diags) = with_rules(&schema, &policies, &catalog).err().unwrap()
    else {
        panic!()
    };
    assert_eq!(diags[0].file, "policies/syntax.cedar");
    assert_eq!(diags[0].line, 1);

    // Bad annotations, an unknown obligation, duplicate ids.
    policies.pop();
    policies.push(SourceFile { name: "policies/ann.cedar".into(), text: "@approval(\"many\")\npermit (principal, action, resource);\n@id(\"read-during-task\")\n@obligation(\"pray\")\npermit (principal, action, resource);\n".into() });
    let PolicyError::Invalid(diags) = with_rules(&schema, &policies, &catalog).err().unwrap()
    else {
        panic!()
    };
    let text: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
    assert!(text.iter().any(|t| t.contains("@approval")), "{text:?}");
    // Each policy is located at its own first line and column.
    assert!(
        text.iter()
            .any(|t| t.starts_with("policies/ann.cedar:1:1: ") && t.contains("@approval")),
        "{text:?}"
    );
    assert!(
        text.iter()
            .any(|t| t.starts_with("policies/ann.cedar:3:1: ") && t.contains("unknown obligation")),
        "{text:?}"
    );
    assert!(
        text.iter().any(|t| t.contains("unknown obligation")),
        "{text:?}"
    );
    assert!(text.iter().any(|t| t.contains("defined twice")), "{text:?}");
}

#[test]
fn catalog_operations_must_be_schema_actions() {
    let (schema, policies, mut catalog) = sources();
    catalog
        .text
        .push_str("  dns.sinkhole:\n    tier: contain\n    resource_types: [Host]\n");
    let PolicyError::Invalid(diags) = with_rules(&schema, &policies, &catalog).err().unwrap()
    else {
        panic!()
    };
    assert!(diags[0].message.contains("dns.sinkhole"));
}

#[test]
fn digest_changes_with_any_source() {
    let (schema, policies, catalog) = sources();
    let a = with_rules(&schema, &policies, &catalog).unwrap();
    let mut p2 = policies.clone();
    p2[0].text.push_str("\n// comment\n");
    let b = with_rules(&schema, &p2, &catalog).unwrap();
    assert_ne!(a.digest(), b.digest());
    assert_eq!(a.policy_count(), 6);
}

#[test]
fn a_schema_that_drifted_from_the_gateway_is_refused_at_load() {
    let (mut schema, policies, catalog) = sources();
    // The gateway always sends hour_utc; a schema without it would turn every request into a 400.
    schema.text = schema.text.replace("  hour_utc: Long,\n", "");
    let PolicyError::Invalid(diags) = with_rules(&schema, &policies, &catalog).err().unwrap()
    else {
        panic!()
    };
    assert!(
        diags
            .iter()
            .any(|d| d.message.contains("does not accept") && d.message.contains("hour_utc")),
        "{diags:?}"
    );
}

#[test]
fn approval_annotations_reach_the_decision() {
    let (schema, mut policies, catalog) = sources();
    policies[0].text = policies[0].text.replace(
        "@approval(\"2\")",
        "@approval(\"2\")\n@approval_ttl(\"10m\")\n@deny_threshold(\"2\")",
    );
    let p = with_rules(&schema, &policies, &catalog).unwrap();
    let c = Case {
        agent: IR,
        action: "vault.rotate_secret",
        resource: json!({"type": "Secret", "id": "db"}),
        parameters: json!({}),
        evidence: false,
    };
    let d = decide(&p, &c).unwrap();
    assert_eq!(
        (
            d.approvals_required,
            d.approval_ttl_seconds,
            d.deny_threshold
        ),
        (2, Some(600), Some(2))
    );
    for bad in [
        "@approval_ttl(\"soon\")",
        "@approval_ttl(\"0\")",
        "@deny_threshold(\"0\")",
        "@owner_may_approve(\"yes\")",
    ] {
        let mut ps = policies.clone();
        ps[0].text = ps[0]
            .text
            .replace("@approval(\"2\")", &format!("@approval(\"2\")\n{bad}"));
        assert!(
            with_rules(&schema, &ps, &catalog).is_err(),
            "{bad} was accepted"
        );
    }
}

#[test]
fn example_pack_traces_pass_and_a_broken_expectation_fails() {
    let p = pack();
    let dir = pack_dir().join("tests");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    assert!(names.len() >= 5);
    for path in &names {
        let t = crate::testing::parse(&std::fs::read_to_string(path).unwrap()).unwrap();
        let failures = crate::testing::run(&p, &t).unwrap();
        assert!(failures.is_empty(), "{}: {failures:?}", path.display());
    }
    let broken = std::fs::read_to_string(dir.join("chain-egress.yaml"))
        .unwrap()
        .replace("expect: deny", "expect: allow");
    let failures = crate::testing::run(&p, &crate::testing::parse(&broken).unwrap()).unwrap();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0].step, 3);
}

#[test]
fn playbooks_admit_tasks_and_answer_deviations() {
    let p = pack();
    let id = SpiffeId::parse(IR).unwrap();
    let open = |playbook: &str, class: &str| {
        let inc = incident(class, Severity::High);
        p.decide_task_open(&TaskOpenFacts {
            agent: AgentFacts {
                spiffe_id: &id,
                owner: "o",
            },
            incident: &inc,
            environment: "prod",
            playbook,
            intent: "i",
            ttl_seconds: 300,
            now: 0,
        })
        .unwrap()
    };
    assert_eq!(open("contain-malware", "malware").outcome, Outcome::Allow);
    let wrong = open("contain-malware", "credential-leak");
    assert_eq!(wrong.outcome, Outcome::Deny);
    assert!(
        wrong.reasons[0].contains("is for malware incidents"),
        "{wrong:?}"
    );
    assert!(open("no-such-playbook", "malware").reasons[0].contains("does not exist"));

    let inc = incident("credential-leak", Severity::High);
    let decide = |playbook: &str, action: &str, rtype: &str, done: &[&str]| {
        let mut t = task();
        t.playbook = playbook.into();
        let h = tollgate_core::HistorySummary {
            actions_allowed: done.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let r: ResourceRef = serde_json::from_value(json!({"type": rtype, "id": "x"})).unwrap();
        p.decide_action(&ActionFacts {
            agent: AgentFacts {
                spiffe_id: &id,
                owner: "o",
            },
            task: &t,
            incident: &inc,
            action,
            resource: &r,
            intent: "i",
            parameters: &Map::new(),
            evidence_present: true,
            history: &h,
            rules: example_rules(),
            now: 0,
        })
        .unwrap()
    };
    // deny mode: off-playbook action denied even though policy allows it.
    let d = decide("investigate", "edr.isolate_host", "Host", &[]);
    assert_eq!((d.outcome, d.revoke_task), (Outcome::Deny, false));
    assert!(
        d.policies.contains(&"playbook:investigate".to_string()),
        "{d:?}"
    );
    // step-up mode: off-playbook, or out of order, needs a human.
    let d = decide("credential-leak", "edr.read_alerts", "Host", &[]);
    assert_eq!(
        (d.outcome, d.approvals_required),
        (Outcome::ApprovalRequired, 1)
    );
    let d = decide("credential-leak", "vault.rotate_secret", "Secret", &[]);
    assert!(
        d.reasons
            .iter()
            .any(|r| r.contains("only after vault.read_secret")),
        "{d:?}"
    );
    // a step with its own approval count raises policy's.
    let d = decide(
        "credential-leak",
        "vault.rotate_secret",
        "Secret",
        &["vault.read_secret"],
    );
    assert_eq!(
        (d.outcome, d.approvals_required),
        (Outcome::ApprovalRequired, 2)
    );
    // revoke mode.
    let d = decide("quarantine-host", "edr.isolate_host", "Host", &[]);
    assert_eq!((d.outcome, d.revoke_task), (Outcome::Deny, true));
    assert_eq!(
        decide(
            "quarantine-host",
            "edr.isolate_host",
            "Host",
            &["forensics.image_host"]
        )
        .outcome,
        Outcome::Allow
    );
}

#[test]
fn may_permit_follows_permit_scopes_and_unconditional_forbids() {
    let (schema, mut policies, catalog) = sources();
    let id = SpiffeId::parse("spiffe://acme.test/agent/ir-responder/i-1").unwrap();
    let agent = AgentFacts {
        spiffe_id: &id,
        owner: "secops",
    };
    let p = with_rules(&schema, &policies, &catalog).unwrap();
    // Every catalog action has some permit in the example pack.
    for action in [
        "edr.read_alerts",
        "edr.isolate_host",
        "http.post",
        "logs.delete",
    ] {
        assert!(p.may_permit(agent, action), "{action}");
    }
    assert!(!p.may_permit(agent, "no.such_action"));
    assert!(!p.may_permit(agent, "task.open_nonexistent"));
    // An unconditional forbid on any resource takes the action off the list;
    // a conditional one (or one naming a resource) does not.
    policies.push(SourceFile {
        name: "99-extra.cedar".into(),
        text: "forbid (principal, action == Action::\"http.post\", resource);\n\
               forbid (principal, action == Action::\"edr.isolate_host\", resource) when { context.now > 0 };\n"
            .into(),
    });
    let p = with_rules(&schema, &policies, &catalog).unwrap();
    assert!(!p.may_permit(agent, "http.post"));
    assert!(p.may_permit(agent, "edr.isolate_host"));
}

/// A value an agent might send: of the right type or not, an escape.
fn any_value() -> impl proptest::strategy::Strategy<Value = Value> {
    use proptest::prelude::*;
    prop_oneof![
        "[a-z]{0,6}".prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<bool>().prop_map(Value::from),
        Just(json!(1.5)),
        Just(json!(["a", "b"])),
        Just(json!({"__entity": {"type": "Host", "id": "x"}})),
        Just(json!({"__extn": {"fn": "ip", "arg": "10.0.0.1"}})),
        Just(json!({"nested": "record"})),
        Just(Value::Null),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

    /// A request built without Cedar's schema validation is one the
    /// validation accepts, and it is decided exactly as the validated one;
    /// input the shapes are not sure of takes the validated path.
    #[test]
    fn unchecked_requests_are_valid_and_decide_as_checked_ones(
        op_index in 0usize..11,
        params in proptest::collection::btree_map(
            proptest::sample::select(vec!["query", "window_minutes", "reason", "body", "index", "rotation", "nope"]),
            any_value(),
            0..3,
        ),
        attrs in proptest::collection::btree_map(
            proptest::sample::select(vec!["environment", "criticality", "privileged", "domain", "nope"]),
            any_value(),
            0..2,
        ),
        evidence in proptest::prelude::any::<bool>(),
    ) {
        let p = example_pack();
        let (action, op) = p.catalog().operations.iter().nth(op_index % p.catalog().operations.len()).unwrap();
        for kind in &op.resource_types {
            let case = Case {
                agent: IR,
                action: Box::leak(action.clone().into_boxed_str()),
                resource: json!({"type": kind, "id": "r-1", "attributes": attrs.clone()}),
                parameters: Value::Object(params.clone().into_iter().map(|(k, v)| (k.to_string(), v)).collect()),
                evidence,
            };
            with_facts(&case, |f| {
                let checked = p.action_request_checked(f, op);
                let everything = crate::context_use::ContextUse::everything();
                let pruned = p.build_unchecked(f, op);
                proptest::prop_assert_eq!(pruned.is_some(), p.build_unchecked_reading(f, op, &everything).is_some());
                if let (Some((pr, pe)), Ok((cr, ce))) = (&pruned, &checked) {
                    // The context cut down to what the pack reads decides
                    // exactly as the whole validated one.
                    let pruned = p.evaluate(pr, pe, evidence);
                    let validated = p.evaluate(cr, ce, evidence);
                    proptest::prop_assert_eq!(format!("{pruned:?}"), format!("{validated:?}"));
                }
                if let Some((ur, ue)) = p.build_unchecked_reading(f, op, &everything) {
                    let (cr, ce) = checked.expect("the unchecked path took a request validation refuses");
                    // The same request and, but for the schema's other
                    // actions, the same entities.
                    let others = |e: &cedar_policy::Entities| {
                        let mut v: Vec<Value> = e.to_json_value().unwrap().as_array().unwrap()
                            .iter().filter(|x| x["uid"]["type"] != "Action").cloned().collect();
                        v.sort_by_key(|x| x["uid"].to_string());
                        v
                    };
                    proptest::prop_assert_eq!(format!("{ur:?}"), format!("{cr:?}"));
                    proptest::prop_assert_eq!(others(&ue), others(&ce));
                    let unchecked = p.evaluate(&ur, &ue, evidence);
                    let validated = p.evaluate(&cr, &ce, evidence);
                    proptest::prop_assert_eq!(format!("{unchecked:?}"), format!("{validated:?}"));
                }
                Ok(())
            })?;
        }
    }
}

/// The example pack, loaded once for the property tests.
fn example_pack() -> &'static PolicyPack {
    static PACK: std::sync::OnceLock<PolicyPack> = std::sync::OnceLock::new();
    PACK.get_or_init(pack)
}

#[test]
fn the_unchecked_path_is_taken_for_ordinary_requests() {
    let p = example_pack();
    let by_name: std::collections::HashMap<_, _> = cases().into_iter().collect();
    for name in [
        "read alerts",
        "isolate with evidence",
        "disable account",
        "rotate secret",
    ] {
        with_facts(&by_name[name], |f| {
            let op = p.catalog().operation(f.action).unwrap();
            assert!(p.build_unchecked(f, op).is_some(), "{name}");
        });
    }
    with_facts(&by_name["wrong resource type"], |f| {
        let op = p.catalog().operation(f.action).unwrap();
        assert!(p.build_unchecked(f, op).is_none());
    });
}

/// Packs that read the context in every way a policy can (a field, a whole
/// record, `has`, the context itself): the request cut down to what each
/// pack reads decides every case as the validated, whole request does, and
/// something really was left out where the pack allows it.
#[test]
fn a_pruned_context_decides_as_the_whole_one() {
    let acts =
        r#"action in [Action::"read", Action::"contain", Action::"change", Action::"destructive"]"#;
    let extras = [
        // Reads nothing new: the example's own reads.
        ("", true),
        (
            "forbid (principal, ACTS, resource) when { context.task.intent like \"*drop*\" || context.hour_utc == 25 };",
            true,
        ),
        (
            "forbid (principal, ACTS, resource) when { (if context.evidence_for_resource then context.history else context.history).risk_spent > 50 && context.history.labels_10m.contains(\"reads-telemetry\") };",
            true,
        ),
        (
            "forbid (principal, ACTS, resource) when { context.parameters has query && context.parameters.query like \"*drop*\" };",
            true,
        ),
        (
            "permit (principal, ACTS, resource) when { context.intent == \"test\" && context.now > 0 };",
            true,
        ),
        // The context as a value: nothing may be left out.
        (
            "forbid (principal, ACTS, resource) when { (if context.evidence_for_resource then context else context).intent == \"drop\" };",
            false,
        ),
    ];
    let mut src = PackSources::read(&pack_dir()).unwrap();
    let base = src.policies.clone();
    for (extra, prunes) in extras {
        src.policies = base.clone();
        src.policies.push(SourceFile {
            name: "policies/99-reads.cedar".into(),
            text: extra.replace("ACTS", acts),
        });
        let p = PolicyPack::from_pack_sources(&src, LoadOptions::default())
            .unwrap_or_else(|e| panic!("{extra}: {e}"));
        let mut pruned_somewhere = false;
        let mut compared = 0;
        for (name, case) in cases() {
            for history in [
                tollgate_core::HistorySummary::default(),
                tollgate_core::HistorySummary {
                    risk_spent: 90,
                    previous_action: "edr.read_alerts".into(),
                    labels_10m: ["reads-telemetry".to_string()].into(),
                    ..Default::default()
                },
            ] {
                with_facts(&case, |f| {
                    let f = ActionFacts {
                        history: &history,
                        ..*f
                    };
                    let Some(op) = p.catalog().operation(f.action) else {
                        return;
                    };
                    let (Some((pr, pe)), Ok((cr, ce))) =
                        (p.build_unchecked(&f, op), p.action_request_checked(&f, op))
                    else {
                        return;
                    };
                    compared += 1;
                    pruned_somewhere |= pr.context().map(|c| c.clone().into_iter().count())
                        != cr.context().map(|c| c.clone().into_iter().count());
                    let pruned = p.evaluate(&pr, &pe, f.evidence_present);
                    let whole = p.evaluate(&cr, &ce, f.evidence_present);
                    assert_eq!(
                        format!("{pruned:?}"),
                        format!("{whole:?}"),
                        "{name} with {extra}"
                    );
                });
            }
        }
        assert!(compared > 10, "{extra}: only {compared} cases compared");
        assert_eq!(pruned_somewhere, prunes, "{extra}");
    }
}
