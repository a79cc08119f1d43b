//! `tollgate audit export --format ocsf` writes events that validate against
//! the OCSF 1.3.0 API Activity class, and with `--ocsf-version 1.9` against
//! OCSF 1.9.0's: compiled copies of the schema are in
//! `ocsf/api_activity-{1.3.0,1.9.0}.json` (see `ocsf/README.md`), and the validator
//! below checks every attribute of every event against it: known
//! attributes only (besides `unmapped`), required ones present (profile
//! attributes only when the profile is declared), types, enum values,
//! `at_least_one` / `just_one` constraints, no nulls, and the class's
//! `type_uid` arithmetic.

use crate::harness::*;
use serde_json::{json, Map, Value};

const SCHEMA_1_3: &str = include_str!("ocsf/api_activity-1.3.0.json");
const SCHEMA_1_9: &str = include_str!("ocsf/api_activity-1.9.0.json");

struct Validator {
    schema: Value,
}

impl Validator {
    fn new() -> Self {
        Self::of(SCHEMA_1_3)
    }

    fn of(schema: &str) -> Self {
        Self {
            schema: serde_json::from_str(schema).unwrap(),
        }
    }

    /// Every way `event` breaks the class, as `path: problem` lines.
    fn check(&self, event: &Value) -> Vec<String> {
        let class = &self.schema["class"];
        let mut errors = Vec::new();
        let profiles: Vec<String> = event["metadata"]["profiles"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| p.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        self.object(
            class["attributes"].as_object().unwrap(),
            None,
            event,
            "",
            &profiles,
            &mut errors,
        );
        let int = |k: &str| event[k].as_i64().unwrap_or(-1);
        if int("class_uid") != class["uid"].as_i64().unwrap() {
            errors.push(format!(
                "class_uid: {} is not {}",
                event["class_uid"], class["uid"]
            ));
        }
        if int("category_uid") != class["category_uid"].as_i64().unwrap() {
            errors.push("category_uid: not the class's category".into());
        }
        if int("type_uid") != int("class_uid") * 100 + int("activity_id") {
            errors.push("type_uid: not class_uid * 100 + activity_id".into());
        }
        errors
    }

    fn object(
        &self,
        attributes: &Map<String, Value>,
        constraints: Option<&Value>,
        value: &Value,
        path: &str,
        profiles: &[String],
        errors: &mut Vec<String>,
    ) {
        let Some(fields) = value.as_object() else {
            errors.push(format!("{path}: not an object"));
            return;
        };
        let at = |k: &str| {
            if path.is_empty() {
                k.to_string()
            } else {
                format!("{path}.{k}")
            }
        };
        for (k, v) in fields {
            if path.is_empty() && k == "unmapped" {
                if !v.is_object() {
                    errors.push("unmapped: not an object".into());
                }
                continue;
            }
            let Some(a) = attributes.get(k) else {
                errors.push(format!("{}: not an attribute of this object", at(k)));
                continue;
            };
            if v.is_null() {
                errors.push(format!("{}: null (leave the attribute out)", at(k)));
                continue;
            }
            if a["is_array"] == true {
                match v.as_array() {
                    Some(items) => {
                        for (i, item) in items.iter().enumerate() {
                            self.single(a, item, &format!("{}[{i}]", at(k)), profiles, errors);
                        }
                    }
                    None => errors.push(format!("{}: not an array", at(k))),
                }
            } else {
                self.single(a, v, &at(k), profiles, errors);
            }
        }
        for (k, a) in attributes {
            let applies = match a["profile"].as_str() {
                Some(p) => profiles.iter().any(|x| x == p),
                None => true,
            };
            let present = fields.get(k).is_some_and(|v| !v.is_null());
            if a["requirement"] == "required" && applies && !present {
                errors.push(format!("{}: required", at(k)));
            }
        }
        if let Some(c) = constraints {
            let count = |list: &Value| {
                list.as_array()
                    .map(|l| {
                        l.iter()
                            .filter(|n| fields.get(n.as_str().unwrap_or("")).is_some())
                            .count()
                    })
                    .unwrap_or(0)
            };
            if c.get("at_least_one").is_some() && count(&c["at_least_one"]) == 0 {
                errors.push(format!("{path}: needs one of {}", c["at_least_one"]));
            }
            if c.get("just_one").is_some() && count(&c["just_one"]) != 1 {
                errors.push(format!("{path}: needs exactly one of {}", c["just_one"]));
            }
        }
    }

    fn single(
        &self,
        a: &Value,
        v: &Value,
        path: &str,
        profiles: &[String],
        errors: &mut Vec<String>,
    ) {
        let kind = a["type"].as_str().unwrap();
        if a["object"] == true {
            if kind == "object" {
                if !v.is_object() {
                    errors.push(format!("{path}: not an object"));
                }
                return;
            }
            let object = &self.schema["objects"][kind];
            let Some(attributes) = object["attributes"].as_object() else {
                errors.push(format!(
                    "{path}: object type {kind} is not in the schema copy"
                ));
                return;
            };
            self.object(
                attributes,
                object.get("constraints"),
                v,
                path,
                profiles,
                errors,
            );
            return;
        }
        let base = self.schema["types"][kind]["base"].as_str().unwrap_or(kind);
        let fits = match base {
            "string_t" => v.is_string(),
            "integer_t" | "long_t" => v.is_i64() || v.is_u64(),
            "float_t" => v.is_number(),
            "boolean_t" => v.is_boolean(),
            "json_t" => true,
            other => panic!("{path}: type {other} not handled by the validator"),
        };
        if !fits {
            errors.push(format!("{path}: {v} is not a {kind}"));
        }
        if let Some(allowed) = a["enum"].as_object() {
            let key = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            if !allowed.contains_key(&key) {
                errors.push(format!("{path}: {v} is not one of the enum's values"));
            }
        }
    }
}

/// A minimal valid event, to show the validator accepts what it should.
fn minimal() -> Value {
    json!({
        "class_uid": 6003, "category_uid": 6, "activity_id": 1, "type_uid": 600301,
        "time": 1_795_319_894_000_i64, "severity_id": 1,
        "actor": {"user": {"uid": "admin", "type_id": 2}},
        "src_endpoint": {"uid": "admin"},
        "api": {"operation": "task.open"},
        "metadata": {"version": "1.3.0", "product": {"name": "Tollgate", "vendor_name": "Tollgate"}},
    })
}

#[test]
fn ocsf_validator_finds_what_the_schema_forbids() {
    let v = Validator::new();
    assert_eq!(v.check(&minimal()), Vec::<String>::new());
    let broken = |f: &dyn Fn(&mut Value)| {
        let mut e = minimal();
        f(&mut e);
        v.check(&e).join("; ")
    };
    type Change<'a> = &'a dyn Fn(&mut Value);
    let cases: [(Change, &str); 9] = [
        (
            &|e| drop(e.as_object_mut().unwrap().remove("src_endpoint")),
            "src_endpoint: required",
        ),
        (
            &|e| e["src_endpoint"] = json!({"port": 1}),
            "src_endpoint: needs one of",
        ),
        (
            &|e| e["api"]["request"] = json!({"uid": null}),
            "api.request.uid: null",
        ),
        (
            &|e| e["api"]["request"] = json!({}),
            "api.request.uid: required",
        ),
        (&|e| e["status_id"] = json!(7), "status_id: 7 is not one of"),
        (&|e| e["actor"]["user"]["type"] = json!("Service"), ""),
        (
            &|e| e["type_uid"] = json!(600302),
            "type_uid: not class_uid",
        ),
        (
            &|e| e["time"] = json!("2026-11-22T03:58:14Z"),
            "time: \"2026-11-22T03:58:14Z\" is not a timestamp_t",
        ),
        (&|e| e["policy"] = json!("x"), "policy: not an attribute"),
    ];
    for (change, want) in cases {
        let found = broken(change);
        if want.is_empty() {
            // A free-text caption is not checked against the enum's captions.
            assert_eq!(found, "");
        } else {
            assert!(found.contains(want), "wanted {want:?}, found {found:?}");
        }
    }
    // A profile's attributes are required only when the profile is declared.
    let mut cloud = minimal();
    cloud["metadata"]["profiles"] = json!(["cloud"]);
    assert!(v.check(&cloud).join("; ").contains("cloud: required"));
}

/// The demo's log (decisions, approvals and votes, evidence, MCP calls,
/// a rollback, a chain-rule revocation), served, plus a delegation,
/// refusals, revocations and admin changes on top.
fn scenario() -> (Server, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let demo = demo_dir(tmp.path());
    let s = Server::start_with_config(&demo.join("config"), &demo.join("data"));
    let svid = s.enrol(IR);
    let (task_id, cred) = s.open_task(&svid);
    s.enrol("spiffe://acme.test/agent/forensics/i-2");
    let (status, child) = s.post(
        &format!("/v1/tasks/{task_id}/delegate"),
        Some(&cred),
        &json!({"agent": "spiffe://acme.test/agent/forensics/i-2", "actions": ["forensics.image_host"],
                "resources": ["Host::web-1"], "ttl_seconds": 120, "intent": "collect a forensic image"}),
    );
    assert_eq!(status, 201, "{child}");
    s.authorize(
        &cred,
        "logs.delete",
        json!({"type": "LogStream", "id": "web-1/auth"}),
    );
    assert_eq!(s.post("/v1/tasks", Some("forged"), &incident_task()).0, 401);
    let ivan = s.approver("ivan@acme.test", "identity");
    let (_, d) = s.authorize(
        &cred,
        "iam.disable_account",
        json!({"type": "Account", "id": "jdoe"}),
    );
    let approval = d["approval_id"].as_str().unwrap().to_string();
    let (ok, _, err) = s.cli_as(
        &ivan,
        &["approvals", "deny", &approval, "--reason", "not yet"],
    );
    assert!(ok, "{err}");
    s.admin_post(
        "/v1/revocations",
        &json!({"task_id": task_id, "reason": "done"}),
    );
    let (ok, _, err) = s.cli(&["freeze"]);
    assert!(ok, "{err}");
    let (ok, _, err) = s.cli(&["unfreeze"]);
    assert!(ok, "{err}");
    (s, tmp)
}

/// Every problem of every event, under `schema`.
fn problems(events: &[Value], schema: &str) -> Vec<String> {
    let v = Validator::of(schema);
    let mut problems = Vec::new();
    for e in events {
        for p in v.check(e) {
            problems.push(format!(
                "{} ({}): {p}",
                e["metadata"]["uid"], e["unmapped"]["kind"]
            ));
        }
    }
    problems
}

fn export(s: &Server, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["audit", "export", "--format", "ocsf"];
    all.extend_from_slice(args);
    let (ok, text, err) = s.cli(&all);
    assert!(ok, "{err}");
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn ocsf_export_of_a_whole_scenario_validates_against_1_3_0() {
    let (s, _tmp) = scenario();
    let events = export(&s, &[]);
    assert!(events.len() > 35, "{} events", events.len());
    let problems = problems(&events, SCHEMA_1_3);
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );

    // The kinds an analyst filters on map to the right activity and status.
    let of = |kind: &str| -> Vec<&Value> {
        events
            .iter()
            .filter(|e| e["unmapped"]["kind"] == kind)
            .collect()
    };
    let shape = |e: &Value| {
        (
            e["activity_name"].as_str().unwrap().to_string(),
            e["status"].as_str().unwrap().to_string(),
        )
    };
    let votes = of("approval.vote");
    assert!(votes.len() >= 2, "{votes:?}");
    for vote in votes {
        // An approve and a deny vote alike: a vote cast is a successful Create.
        assert_eq!(shape(vote), ("Create".into(), "Success".into()), "{vote}");
    }
    let refused = of("auth.refused");
    assert!(!refused.is_empty());
    for r in refused {
        assert_eq!(r["status_id"], 2, "{r}");
        assert_eq!(r["severity_id"], 3, "{r}");
    }
    for kind in ["task.revoked", "freeze", "unfreeze"] {
        let found = of(kind);
        assert!(!found.is_empty(), "no {kind}");
        for e in found {
            assert_eq!(shape(e), ("Update".into(), "Success".into()), "{e}");
        }
    }
    let decisions = of("decision");
    let denied = decisions
        .iter()
        .find(|e| e["status_detail"] == "deny" && e["api"]["operation"] == "logs.delete")
        .unwrap();
    assert_eq!(shape(denied), ("Delete".into(), "Failure".into()));
    let held = decisions
        .iter()
        .find(|e| e["status_detail"] == "approval_required")
        .unwrap();
    assert_eq!(
        (held["status_id"].clone(), held["status"].clone()),
        (json!(99), json!("approval_required"))
    );
    let read = decisions
        .iter()
        .find(|e| e["api"]["operation"] == "edr.read_alerts" && e["status_detail"] == "allow")
        .unwrap();
    assert_eq!(shape(read), ("Read".into(), "Success".into()));
    // Agents are users of type Other ("Agent"), with the SPIFFE ID as uid.
    assert_eq!(read["actor"]["user"]["type_id"], 99);
    assert!(read["actor"]["user"]["uid"]
        .as_str()
        .unwrap()
        .starts_with("spiffe://"));
    // `unmapped` keeps one shape: policies and reasons are always arrays.
    assert!(events
        .iter()
        .all(|e| e["unmapped"]["policies"].is_array() && e["unmapped"]["reasons"].is_array()));
}

/// SHA-256 of the JCS form of an exported event without its attestations'
/// fingerprints and signatures: OCSF 1.9's record-integrity fingerprint,
/// recomputed here as a consumer would.
fn ocsf_fingerprint(event: &Value) -> String {
    use sha2::Digest;
    let mut bare = event.clone();
    for a in bare["attestation_list"].as_array_mut().unwrap() {
        let a = a.as_object_mut().unwrap();
        a.remove("fingerprint");
        a.remove("signatures");
    }
    let canonical = serde_json_canonicalizer::to_vec(&bare).unwrap();
    hex::encode(sha2::Sha256::digest(&canonical))
}

#[test]
fn ocsf_1_9_export_carries_the_agent_the_decision_and_a_verifiable_chain() {
    let (s, _tmp) = scenario();
    let events = export(&s, &["--ocsf-version", "1.9"]);
    assert!(events.len() > 35, "{} events", events.len());
    let found = problems(&events, SCHEMA_1_9);
    assert!(
        found.is_empty(),
        "{} problems:\n{}",
        found.len(),
        found.join("\n")
    );
    // The same events are not 1.3.0 any more (the validator can tell).
    assert!(!problems(&events, SCHEMA_1_3).is_empty());

    let of = |kind: &str, outcome: &str| -> Vec<&Value> {
        events
            .iter()
            .filter(|e| {
                e["unmapped"]["kind"] == kind
                    && (outcome.is_empty() || e["status_detail"] == outcome)
            })
            .collect()
    };
    // Decisions: who (the agent), what the gateway did, by which policies.
    let allowed = of("decision", "allow");
    let read = allowed
        .iter()
        .find(|e| e["api"]["operation"] == "edr.read_alerts")
        .unwrap();
    assert_eq!(read["metadata"]["version"], "1.9.0");
    assert_eq!(read["ai_agent"]["uid"], read["actor"]["user"]["uid"]);
    assert_eq!(read["ai_agent"]["name"], "ir-responder");
    assert_eq!(
        read["ai_agent"]["instance_uid"],
        read["metadata"]["correlation_uid"]
    );
    assert_eq!(read["actor"]["user"]["type"], "Service");
    assert_eq!(
        (read["action_id"].clone(), read["disposition_id"].clone()),
        (json!(1), json!(1))
    );
    assert_eq!(
        read["authorizations"][0]["policy"]["uid"],
        "read-during-task"
    );
    assert!(read["policy"]["uid"].as_str().unwrap().len() >= 16);
    let held = of("decision", "approval_required");
    assert!(held
        .iter()
        .all(|e| e["disposition_id"] == 14 && e["action"] == "Approval Required"));
    let denied = of("decision", "deny");
    assert!(!denied.is_empty() && denied.iter().all(|e| e["disposition_id"] == 2));
    // A vote is a human's: approve/deny dispositions, no ai_agent.
    for vote in of("approval.vote", "") {
        let want = if vote["status_detail"] == "approve" {
            8
        } else {
            25
        };
        assert_eq!(vote["disposition_id"], want, "{vote}");
        assert!(vote.get("ai_agent").is_none(), "{vote}");
    }
    assert!(of("task.revoked", "")
        .iter()
        .all(|e| e["disposition_id"] == 24));
    // The delegation names the child task and the task it came from.
    let delegated = of("task.delegated", "");
    assert_eq!(delegated.len(), 1);
    let d = &delegated[0]["delegation"];
    assert_eq!(d["uid"], delegated[0]["unmapped"]["task_id"]);
    assert!(
        d["parent_uid"].as_str().unwrap().starts_with("task_"),
        "{d}"
    );
    assert!(d["created_time"].is_i64());

    // Record integrity: every fingerprint recomputes, each event names the
    // one before it, the entry's own hash is raw_data_hash, and the signed
    // checkpoint's root is the second attestation's digest.
    let mut prev: Option<&Value> = None;
    for e in &events {
        let link = &e["attestation_list"][0];
        assert_eq!(
            link["fingerprint"]["value"].as_str().unwrap(),
            ocsf_fingerprint(e),
            "{e}"
        );
        match prev {
            None => assert!(link.get("prev_event").is_none()),
            Some(p) => {
                assert_eq!(link["prev_event"]["uid"], p["metadata"]["uid"]);
                assert_eq!(link["prev_event"]["type_uid"], p["type_uid"]);
                assert_eq!(
                    link["prev_event"]["fingerprint"]["value"],
                    p["attestation_list"][0]["fingerprint"]["value"]
                );
            }
        }
        assert_eq!(e["raw_data_hash"]["value"], e["unmapped"]["entry_hash"]);
        let signed = &e["attestation_list"][1]["signatures"][0];
        assert_eq!(signed["algorithm"], "Ed25519");
        assert_eq!(
            signed["digest"]["value"],
            e["unmapped"]["checkpoint"]["root_hash"]
        );
        prev = Some(e);
    }
    // An edit anywhere in an event no longer matches its fingerprint.
    let mut edited = events[3].clone();
    edited["status_detail"] = json!("allow");
    edited["message"] = json!("nothing happened");
    assert_ne!(
        edited["attestation_list"][0]["fingerprint"]["value"]
            .as_str()
            .unwrap(),
        ocsf_fingerprint(&edited)
    );
    // A filtered export is its own chain.
    let incident = export(&s, &["--ocsf-version", "1.9", "--incident", "INC-4711"]);
    assert!(!incident.is_empty());
    assert!(incident[0]["attestation_list"][0]
        .get("prev_event")
        .is_none());
    assert!(incident[0]["attestation_list"][0]["chain_uid"]
        .as_str()
        .unwrap()
        .ends_with(":incident:INC-4711"));
}
