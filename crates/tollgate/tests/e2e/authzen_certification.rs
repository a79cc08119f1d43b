//! The OpenID AuthZEN working group's conformance certification scenario
//! (openid/authzen `certification/authorization-api-1_0-scenario.md`, every
//! level: Basic, Batch, Search and Discovery, Core and Properties), run
//! against a server on `examples/authzen-certification`, the scenario's
//! required fixture as a pack. Each case names its test id in the scenario
//! and checks what the scenario's harness checks (see
//! `authzen-interop/CERTIFICATION-NOTES.md`).

use crate::harness::*;
use serde_json::{json, Value};

/// What a case's answer must be.
enum Expect {
    /// 200 and exactly this `decision` (a fixture rule).
    Decision(bool),
    /// 200 and a boolean `decision`, any value.
    AnyDecision,
    /// 200 and an `evaluations` array of these decisions, in order, and no
    /// top-level `decision`.
    Evaluations(&'static [Option<bool>]),
    /// 200 and `results` including at least these (ids, or action names),
    /// every result of the requested type.
    Includes(&'static [&'static str]),
    /// 200 and `{"results": []}`.
    NoResults,
    /// 400 and the API's error body.
    BadRequest,
}

fn u(id: &str) -> Value {
    json!({"type": "user", "id": id})
}
fn rec(id: &str) -> Value {
    json!({"type": "record", "id": id})
}
fn act(name: &str) -> Value {
    json!({"name": name})
}
fn eval(subject: Value, action: Value, resource: Value) -> Value {
    json!({"subject": subject, "action": action, "resource": resource})
}

fn cases() -> Vec<(String, &'static str, Value, Expect)> {
    use Expect::*;
    let one = "/access/v1/evaluation";
    let many = "/access/v1/evaluations";
    let (ss, rs, asr) = (
        "/access/v1/search/subject",
        "/access/v1/search/resource",
        "/access/v1/search/action",
    );
    let bob_admin = json!({"type": "user", "id": "bob", "properties": {"role": "admin"}});
    let archived =
        json!({"type": "record", "id": "record-2", "properties": {"status": "archived"}});
    let with_context = |mut v: Value| {
        v["context"] = json!({"time": "2025-06-27T18:03-07:00", "ip": "192.168.1.1"});
        v
    };
    let cases = vec![
        // Basic: the eight fixture rules (c-1-4), without context.
        (
            "c-2-2-1 rule 1",
            one,
            eval(u("alice"), act("read"), rec("record-1")),
            Decision(true),
        ),
        (
            "rule 2",
            one,
            eval(u("alice"), act("write"), rec("record-1")),
            Decision(true),
        ),
        (
            "rule 3",
            one,
            eval(u("bob"), act("read"), rec("record-1")),
            Decision(true),
        ),
        (
            "c-2-2-2 rule 4",
            one,
            eval(u("bob"), act("write"), rec("record-1")),
            Decision(false),
        ),
        (
            "c-2-2-4 rule 5",
            one,
            eval(u("alice"), act("write"), archived.clone()),
            Decision(false),
        ),
        (
            "c-2-2-5 rule 6",
            one,
            eval(bob_admin.clone(), act("write"), archived.clone()),
            Decision(true),
        ),
        (
            "c-2-2-6 rule 7",
            one,
            eval(
                u("alice"),
                json!({"name": "delete", "properties": {"soft": true}}),
                rec("record-1"),
            ),
            Decision(true),
        ),
        (
            "c-2-2-7 rule 8",
            one,
            eval(
                u("alice"),
                json!({"name": "delete", "properties": {"soft": false}}),
                rec("record-1"),
            ),
            Decision(false),
        ),
        (
            "c-2-2-8 more properties",
            one,
            json!({
                "subject": {"type": "user", "id": "alice", "properties": {"department": "Sales", "role": "manager"}},
                "action": {"name": "read", "properties": {"method": "GET"}},
                "resource": {"type": "record", "id": "record-1", "properties": {"status": "active", "owner": "bob"}},
            }),
            Decision(true),
        ),
        (
            "c-2-2-9 unknown fields",
            one,
            json!({
                "subject": u("alice"), "action": act("read"), "resource": rec("record-1"),
                "foo": "bar", "futureField": {"nested": true},
            }),
            Decision(true),
        ),
        // c-2-4: whole-request errors.
        (
            "c-2-4-1 no subject",
            one,
            json!({"action": act("read"), "resource": rec("record-1")}),
            BadRequest,
        ),
        (
            "c-2-4-1 no action",
            one,
            json!({"subject": u("alice"), "resource": rec("record-1")}),
            BadRequest,
        ),
        (
            "c-2-4-1 no resource",
            one,
            json!({"subject": u("alice"), "action": act("read")}),
            BadRequest,
        ),
        (
            "c-2-4-2 subject.type",
            one,
            eval(json!({"id": "alice"}), act("read"), rec("record-1")),
            BadRequest,
        ),
        (
            "c-2-4-2 subject.id",
            one,
            eval(json!({"type": "user"}), act("read"), rec("record-1")),
            BadRequest,
        ),
        (
            "c-2-4-2 action.name",
            one,
            eval(u("alice"), json!({}), rec("record-1")),
            BadRequest,
        ),
        (
            "c-2-4-2 resource.type",
            one,
            eval(u("alice"), act("read"), json!({"id": "record-1"})),
            BadRequest,
        ),
        (
            "c-2-4-2 resource.id",
            one,
            eval(u("alice"), act("read"), json!({"type": "record"})),
            BadRequest,
        ),
        (
            "c-2-4-6 subject string",
            one,
            eval(json!("alice"), act("read"), rec("record-1")),
            BadRequest,
        ),
        (
            "c-2-4-6 action.name number",
            one,
            eval(u("alice"), json!({"name": 123}), rec("record-1")),
            BadRequest,
        ),
        // Batch (c-3).
        (
            "c-3-2-1 defaults",
            many,
            json!({
                "subject": u("alice"), "action": act("read"),
                "evaluations": [{"resource": rec("record-1")}, {"resource": rec("record-2")}],
            }),
            Evaluations(&[None, None]),
        ),
        (
            "c-3-2-2 order",
            many,
            json!({
                "subject": u("bob"), "resource": rec("record-1"),
                "evaluations": [{"action": act("read")}, {"action": act("write")}],
            }),
            Evaluations(&[Some(true), Some(false)]),
        ),
        (
            "c-3-2-3 resource properties",
            many,
            json!({
                "subject": u("alice"), "action": act("write"),
                "evaluations": [
                    {"resource": {"type": "record", "id": "record-1", "properties": {"status": "active"}}},
                    {"resource": archived.clone()},
                ],
            }),
            Evaluations(&[Some(true), Some(false)]),
        ),
        (
            "c-3-2-4 subject properties",
            many,
            json!({
                "action": act("write"), "resource": archived.clone(),
                "evaluations": [{"subject": u("alice")}, {"subject": bob_admin.clone()}],
            }),
            Evaluations(&[Some(false), Some(true)]),
        ),
        (
            "c-3-2-5 no defaults",
            many,
            json!({"evaluations": [
                eval(u("alice"), act("read"), rec("record-1")),
                eval(u("bob"), act("write"), rec("record-1")),
            ]}),
            Evaluations(&[Some(true), Some(false)]),
        ),
        (
            "c-3-2-6 context inheritance",
            many,
            json!({
                "subject": u("alice"), "action": act("read"), "context": {"time": "2025-06-27T18:03-07:00"},
                "evaluations": [
                    {"resource": rec("record-1")},
                    {"resource": rec("record-2"), "context": {"time": "2025-06-27T19:00-07:00", "source": "batch-override"}},
                ],
            }),
            Evaluations(&[None, None]),
        ),
        (
            "c-3-2-7 entity-level merge",
            many,
            json!({
                "subject": u("alice"), "action": act("write"), "resource": {"type": "record"},
                "evaluations": [
                    {"resource": {"id": "record-1", "properties": {"status": "active"}}},
                    {"resource": archived.clone()},
                ],
            }),
            Evaluations(&[Some(true), Some(false)]),
        ),
        (
            "c-3-4-1 a bad item",
            many,
            json!({
                "subject": u("alice"), "action": act("read"),
                "evaluations": [{"resource": rec("record-1")}, {}],
            }),
            Evaluations(&[None, Some(false)]),
        ),
        (
            "c-3-4-2 no evaluations",
            many,
            eval(u("alice"), act("read"), rec("record-1")),
            Decision(true),
        ),
        (
            "c-3-4-3 empty evaluations",
            many,
            json!({
                "subject": u("alice"), "action": act("read"), "resource": rec("record-1"), "evaluations": [],
            }),
            Decision(true),
        ),
        (
            "c-3 no evaluations, no resource",
            many,
            json!({"subject": u("alice"), "action": act("read")}),
            BadRequest,
        ),
        // Search (c-4).
        (
            "c-4-2-1 subjects",
            ss,
            json!({"subject": {"type": "user"}, "action": act("read"), "resource": rec("record-1")}),
            Includes(&["alice", "bob"]),
        ),
        (
            "c-4-2-4 subjects by properties",
            ss,
            json!({"subject": {"type": "user"}, "action": act("write"), "resource": archived.clone()}),
            Includes(&["bob"]),
        ),
        (
            "c-4-3-1 resources",
            rs,
            json!({"subject": u("alice"), "action": act("read"), "resource": {"type": "record"}}),
            Includes(&["record-1"]),
        ),
        (
            "c-4-3-3 resources by properties",
            rs,
            json!({"subject": bob_admin.clone(), "action": act("write"), "resource": {"type": "record"}}),
            Includes(&["record-2"]),
        ),
        (
            "c-4-4-1 actions",
            asr,
            json!({"subject": u("alice"), "resource": rec("record-1")}),
            Includes(&["read", "write"]),
        ),
        (
            "c-4-4-3 actions by properties",
            asr,
            json!({"subject": bob_admin.clone(), "resource": archived.clone()}),
            Includes(&["write"]),
        ),
        (
            "c-4-6-1 unknown subject",
            asr,
            json!({"subject": u("nonexistent-user"), "resource": rec("record-1")}),
            NoResults,
        ),
        (
            "c-4-6-2 unknown type",
            ss,
            json!({"subject": {"type": "spaceship"}, "action": act("read"), "resource": rec("record-1")}),
            NoResults,
        ),
        (
            "c-4-7-1 subject search, no action",
            ss,
            json!({"subject": {"type": "user"}, "resource": rec("record-1")}),
            BadRequest,
        ),
        (
            "c-4-7-1 resource search, no subject",
            rs,
            json!({"action": act("read"), "resource": {"type": "record"}}),
            BadRequest,
        ),
        (
            "c-4-7-1 action search, no resource",
            asr,
            json!({"subject": u("alice")}),
            BadRequest,
        ),
        (
            "c-4-7-2 subject search, resource.id",
            ss,
            json!({"subject": {"type": "user"}, "action": act("read"), "resource": {"type": "record"}}),
            BadRequest,
        ),
        (
            "c-4-7-2 resource search, subject.id",
            rs,
            json!({"subject": {"type": "user"}, "action": act("read"), "resource": {"type": "record"}}),
            BadRequest,
        ),
    ];
    // "The eight required decisions MUST hold regardless of whether context
    // is present" (c-1-6), and c-2-2-3, c-4-2-2 and c-4-4-2 send one.
    let with: Vec<_> = cases
        .iter()
        .filter(|(id, path, _, e)| {
            (id.contains("rule") || id.starts_with("c-4-2-1") || id.starts_with("c-4-4-1"))
                && !matches!(e, BadRequest)
                && path.starts_with("/access")
        })
        .map(|(id, path, body, e)| {
            let e = match e {
                Decision(d) => Decision(*d),
                Includes(i) => Includes(i),
                _ => AnyDecision,
            };
            (
                format!("{id} with context"),
                *path,
                with_context(body.clone()),
                e,
            )
        })
        .collect();
    assert_eq!(with.len(), 10);
    let mut all: Vec<_> = cases
        .into_iter()
        .map(|(id, p, b, e)| (id.to_string(), p, b, e))
        .collect();
    all.extend(with);
    all
}

/// Why the answer does not meet the expectation, if it does not.
fn check(expect: &Expect, status: u16, answer: &Value, request: &Value) -> Option<String> {
    let results = || answer["results"].as_array().cloned().unwrap_or_default();
    let ok = match expect {
        Expect::Decision(d) => status == 200 && answer["decision"] == *d,
        Expect::AnyDecision => status == 200 && answer["decision"].is_boolean(),
        Expect::Evaluations(want) => {
            let got = answer["evaluations"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            status == 200
                && answer.get("decision").is_none()
                && got.len() == want.len()
                && got.iter().zip(want.iter()).all(|(g, w)| {
                    g["decision"].is_boolean()
                        && w.is_none_or(|w| g["decision"] == w)
                        && g.get("context").is_none_or(Value::is_object)
                })
        }
        Expect::Includes(want) => {
            let rs = results();
            let searched_type = if request.get("action").is_none() {
                None
            } else if request["subject"].get("id").is_none() {
                request["subject"]["type"].as_str()
            } else {
                request["resource"]["type"].as_str()
            };
            let names: Vec<&str> = rs
                .iter()
                .filter_map(|r| r["id"].as_str().or(r["name"].as_str()))
                .collect();
            status == 200
                && rs
                    .iter()
                    .all(|r| searched_type.is_none_or(|t| r["type"] == t))
                && want.iter().all(|w| names.contains(w))
        }
        Expect::NoResults => status == 200 && *answer == json!({"results": []}),
        Expect::BadRequest => status == 400 && answer["error"]["message"].is_string(),
    };
    (!ok).then(|| format!("{status} {answer}"))
}

#[test]
fn authzen_certification_scenario_passes_at_every_level() {
    // The example pack, served under an https public URL (as behind a
    // TLS-terminating proxy), for Discovery.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("pack");
    copy_dir(&root.join("examples/authzen-certification"), &config);
    let yaml = config.join("tollgate.yaml");
    let mut text = std::fs::read_to_string(&yaml).unwrap();
    text.push_str("public_url: https://pdp.certification.test\n");
    std::fs::write(&yaml, text).unwrap();
    let s = Server::start_with_config(&config, &tmp.path().join("data"));
    let (ok, out, err) = s.cli(&["pep", "add", "certification"]);
    assert!(ok, "{err}");
    let key = printed_key(&out);

    let mut failed = Vec::new();
    let all = cases();
    for (id, path, body, expect) in &all {
        let (status, answer) = s.post(path, Some(&key), body);
        if let Some(why) = check(expect, status, &answer, body) {
            failed.push(format!("{id}: {body} -> {why}"));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} failed:\n{}",
        failed.len(),
        all.len(),
        failed.join("\n")
    );

    // c-2-4-3..5: not JSON, malformed JSON, an empty body: 400.
    let alice_reads = eval(u("alice"), act("read"), rec("record-1")).to_string();
    for (content_type, body) in [
        ("text/plain", alice_reads.as_str()),
        ("application/json", "{\"subject\": "),
        ("application/json", ""),
    ] {
        for path in ["/access/v1/evaluation", "/access/v1/evaluations"] {
            let (status, answer) = s.post_raw(path, Some(&key), content_type, body);
            assert_eq!(status, 400, "{path} {content_type} {body:?}: {answer}");
        }
    }

    // c-2-5: X-Request-ID echoed, on answers and on errors; its absence is
    // no failure. c-5: JSON out. c-2-6: the same decision every time.
    for body in [alice_reads.as_str(), "{}"] {
        let resp = agent()
            .post(&s.url("/access/v1/evaluation"))
            .header("authorization", &format!("Bearer {key}"))
            .header("content-type", "application/json")
            .header("x-request-id", "cert-42")
            .send(body)
            .unwrap();
        assert_eq!(resp.headers()["x-request-id"], "cert-42");
        assert!(resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"));
    }
    for _ in 0..5 {
        let (status, answer) = s.post_raw(
            "/access/v1/evaluation",
            Some(&key),
            "application/json",
            &alice_reads,
        );
        assert_eq!((status, answer), (200, json!({"decision": true})));
    }

    // c-4-5: a page limit, then the token alone; the last page says so
    // with an empty token.
    let search =
        json!({"subject": {"type": "user"}, "action": act("read"), "resource": rec("record-1")});
    let mut first = search.clone();
    first["page"] = json!({"limit": 1});
    let (status, a) = s.post("/access/v1/search/subject", Some(&key), &first);
    assert_eq!(status, 200, "{a}");
    assert_eq!(a["results"], json!([u("alice")]));
    let token = a["page"]["next_token"].as_str().unwrap().to_string();
    assert!(!token.is_empty(), "{a}");
    let mut next = search.clone();
    next["page"] = json!({"token": token});
    let (status, b) = s.post("/access/v1/search/subject", Some(&key), &next);
    assert_eq!(status, 200, "{b}");
    assert_eq!(b["results"], json!([u("bob")]));
    assert_eq!(b["page"]["next_token"], "", "{b}");
    // A token is bound to its search: another action is refused.
    let mut other = next.clone();
    other["action"] = act("write");
    assert_eq!(
        s.post("/access/v1/search/subject", Some(&key), &other).0,
        400
    );

    // c-6: discovery, from the configured base URL.
    let (status, meta) = s.get("/.well-known/authzen-configuration", None);
    assert_eq!(status, 200);
    assert_eq!(
        meta["policy_decision_point"],
        "https://pdp.certification.test"
    );
    for (k, v) in meta.as_object().unwrap() {
        if k.ends_with("_endpoint") {
            assert!(
                v.as_str()
                    .unwrap()
                    .starts_with("https://pdp.certification.test/access/v1/"),
                "{k}: {v}"
            );
        }
    }
    assert!(meta
        .get("capabilities")
        .is_none_or(|c| c.as_array().is_some_and(|a| a.iter().all(Value::is_string))));

    // Every evaluation was audited, the refused ones too.
    let refused = s
        .audit("kind=authzen.decision")
        .into_iter()
        .filter(|e| e["event"]["outcome"] == "refused")
        .count();
    assert!(refused >= 1, "refused evaluations are audited");
}
