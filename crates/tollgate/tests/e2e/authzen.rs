//! The AuthZEN Authorization API 1.0 for trusted enforcement points.

use crate::harness::*;
use serde_json::json;

#[test]
fn authzen_evaluations_use_the_same_policies() {
    let s = Server::start();
    let svid = s.enrol(IR);
    let (task_id, cred) = s.open_task(&svid);
    let (ok, out, _) = s.cli(&["pep", "add", "edr-proxy"]);
    assert!(ok);
    let key = printed_key(&out);

    let (status, meta) = s.get("/.well-known/authzen-configuration", None);
    assert_eq!(status, 200);
    // Absolute URLs under the address it serves on, whatever Host says.
    assert_eq!(meta["policy_decision_point"], s.addr.as_str(), "{meta}");
    let spoofed: serde_json::Value = agent()
        .get(&s.url("/.well-known/authzen-configuration"))
        .header("host", "evil.example")
        .call()
        .unwrap()
        .body_mut()
        .read_json()
        .unwrap();
    assert!(!spoofed.to_string().contains("evil.example"), "{spoofed}");
    assert!(meta["access_evaluation_endpoint"]
        .as_str()
        .unwrap()
        .ends_with("/access/v1/evaluation"));
    assert!(meta["access_evaluations_endpoint"]
        .as_str()
        .unwrap()
        .ends_with("/access/v1/evaluations"));

    let subject = json!({"type": "agent", "id": IR});
    let eval = |action: &str, id: &str| {
        json!({
            "subject": subject, "action": {"name": action}, "resource": {"type": "Host", "id": id},
            "context": {"task_id": task_id},
        })
    };
    // Without a PEP key: refused. An agent's credential is not a PEP key.
    assert_eq!(
        s.post(
            "/access/v1/evaluation",
            None,
            &eval("edr.read_alerts", "web-1")
        )
        .0,
        401
    );
    assert_eq!(
        s.post(
            "/access/v1/evaluation",
            Some(&cred),
            &eval("edr.read_alerts", "web-1")
        )
        .0,
        401
    );

    let (status, v) = s.post(
        "/access/v1/evaluation",
        Some(&key),
        &eval("edr.read_alerts", "web-1"),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["decision"], true);
    assert_eq!(v["context"]["outcome"], "allow");
    let (_, v) = s.post(
        "/access/v1/evaluation",
        Some(&key),
        &eval("edr.isolate_host", "web-1"),
    );
    assert_eq!(v["decision"], false);
    assert_eq!(v["context"]["obligations"], json!(["evidence-before"]));
    // approval_required is not a permit.
    let (_, v) = s.post("/access/v1/evaluation", Some(&key), &json!({
        "subject": subject, "action": {"name": "iam.disable_account"}, "resource": {"type": "Account", "id": "jdoe"},
        "context": {"task_id": task_id},
    }));
    assert_eq!(
        (v["decision"].as_bool(), v["context"]["outcome"].as_str()),
        (Some(false), Some("approval_required"))
    );
    // No task, or another agent's task: decision false with an error, never an error status.
    let (status, v) = s.post("/access/v1/evaluation", Some(&key), &json!({"subject": subject, "action": {"name": "edr.read_alerts"}, "resource": {"type": "Host", "id": "w"}}));
    assert_eq!((status, v["decision"].as_bool()), (200, Some(false)));
    assert_eq!(v["context"]["error"]["status"], 400);
    let (_, v) = s.post("/access/v1/evaluation", Some(&key), &json!({"subject": {"type": "agent", "id": "spiffe://acme.test/agent/ir-responder/other"}, "action": {"name": "edr.read_alerts"}, "resource": {"type": "Host", "id": "w"}, "context": {"task_id": task_id}}));
    assert_eq!(v["decision"], false);
    // Missing required members: 400.
    assert_eq!(
        s.post(
            "/access/v1/evaluation",
            Some(&key),
            &json!({"subject": subject})
        )
        .0,
        400
    );

    // Batches: defaults, per-item overrides, and the three semantics.
    let batch = |semantic: &str| {
        json!({
            "subject": subject, "context": {"task_id": task_id},
            "action": {"name": "edr.read_alerts"},
            "options": {"evaluations_semantic": semantic},
            "evaluations": [
                {"resource": {"type": "Host", "id": "web-1"}},
                {"action": {"name": "logs.delete"}, "resource": {"type": "LogStream", "id": "auth"}},
                {"resource": {"type": "Host", "id": "web-2"}},
            ],
        })
    };
    let decisions = |semantic: &str| -> Vec<bool> {
        let (status, v) = s.post("/access/v1/evaluations", Some(&key), &batch(semantic));
        assert_eq!(status, 200, "{v}");
        v["evaluations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["decision"].as_bool().unwrap())
            .collect()
    };
    assert_eq!(decisions("execute_all"), [true, false, true]);
    assert_eq!(decisions("deny_on_first_deny"), [true, false]);
    assert_eq!(decisions("permit_on_first_permit"), [true]);

    // X-Request-ID is echoed.
    let resp = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent()
        .post(&s.url("/access/v1/evaluation"))
        .header("authorization", &format!("Bearer {key}"))
        .header("x-request-id", "pep-req-42")
        .send_json(eval("edr.read_alerts", "web-1"))
        .unwrap();
    assert_eq!(resp.headers().get("x-request-id").unwrap(), "pep-req-42");
    // On errors too (here: no PEP key), and on every other endpoint.
    for (path, token) in [
        ("/access/v1/evaluation", None),
        ("/v1/approvals", Some("not-a-key")),
        ("/no/such/endpoint", None),
    ] {
        let mut req = agent()
            .post(&s.url(path))
            .header("x-request-id", "pep-req-43");
        if let Some(t) = token {
            req = req.header("authorization", &format!("Bearer {t}"));
        }
        let resp = req.send_json(json!({})).unwrap();
        assert!(resp.status().as_u16() >= 400, "{path}");
        assert_eq!(
            resp.headers().get("x-request-id").unwrap(),
            "pep-req-43",
            "{path}"
        );
    }

    // No `evaluations` (or an empty list): one evaluation of the defaults,
    // answered in the single shape.
    for batch in [
        json!({"subject": subject, "action": {"name": "edr.read_alerts"},
               "resource": {"type": "Host", "id": "web-1"}, "context": {"task_id": task_id}}),
        json!({"subject": subject, "action": {"name": "edr.read_alerts"},
               "resource": {"type": "Host", "id": "web-1"}, "context": {"task_id": task_id},
               "evaluations": []}),
    ] {
        let (status, v) = s.post("/access/v1/evaluations", Some(&key), &batch);
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["decision"], true, "{v}");
        assert!(v.get("evaluations").is_none(), "{v}");
    }

    // Every evaluation is audited, attributed to the PEP.
    let entries = s.audit(&format!("task={task_id}"));
    let authzen: Vec<_> = entries
        .iter()
        .filter(|e| e["event"]["kind"] == "authzen.decision")
        .collect();
    // (the two single-shape evaluations above included)
    assert_eq!(authzen.len(), 3 + 3 + 2 + 1 + 1 + 2);
    assert!(authzen
        .iter()
        .all(|e| e["event"]["actor"] == "pep:edr-proxy"));
}

#[test]
fn authzen_metadata_uses_the_configured_public_url() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config_dir(tmp.path(), "public_url: https://tollgate.acme.test\n");
    let s = Server::start_with_config(&config, &tmp.path().join("data"));
    let (_, meta) = s.get("/.well-known/authzen-configuration", None);
    assert_eq!(meta["policy_decision_point"], "https://tollgate.acme.test");
    assert_eq!(
        meta["access_evaluations_endpoint"],
        "https://tollgate.acme.test/access/v1/evaluations"
    );
    // A malformed one is refused at start, with the reason.
    let err = serve_refuses("public_url: tollgate.acme.test/\n");
    assert!(err.contains("public_url"), "{err}");
}

/// A server on one of the example AuthZEN packs, with a PEP key.
fn pdp(example: &str) -> (Server, String, tempfile::TempDir) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start_with_config(
        &root.join("examples").join(example),
        &tmp.path().join("data"),
    );
    let (ok, out, err) = s.cli(&["pep", "add", "interop"]);
    assert!(ok, "{err}");
    let key = printed_key(&out);
    (s, key, tmp)
}

/// A vector file of the working group's, from `authzen-interop/vectors`.
fn vectors(file: &str) -> serde_json::Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/e2e/authzen-interop/vectors")
        .join(file);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The OpenID AuthZEN working group's Todo interop decisions, sent
/// unchanged to a server on `examples/authzen-todo`, pass under the group's
/// own comparison: a single evaluation by its `decision`, a batch by its
/// `evaluations` array compared exactly (`[{"decision": true}, …]`, nothing
/// else in an element). The vectors are the group's (MIT, see
/// `authzen-interop/LICENSE-vectors`).
#[test]
fn authzen_todo_interop_decisions_pass_unchanged() {
    let (s, key, _tmp) = pdp("authzen-todo");
    let (mut passed, mut failed) = (0, Vec::new());
    for file in [
        "decisions-1.0-implementers-draft.json",
        "decisions-1.1-preview.json",
    ] {
        let v = vectors(file);
        for case in v["evaluation"].as_array().unwrap() {
            let (status, answer) = s.post("/access/v1/evaluation", Some(&key), &case["request"]);
            if status == 200 && answer["decision"] == case["expected"] {
                passed += 1;
            } else {
                failed.push(format!("{file}: {} -> {status} {answer}", case["request"]));
            }
        }
        for case in v["evaluations"].as_array().into_iter().flatten() {
            let (status, answer) = s.post("/access/v1/evaluations", Some(&key), &case["request"]);
            // The runner compares JSON.stringify of both arrays: the same
            // elements, in order, each exactly `{"decision": …}` (one key, so
            // key order cannot differ).
            if status == 200 && answer["evaluations"] == case["expected"] {
                passed += 1;
            } else {
                failed.push(format!("{file}: {} -> {status} {answer}", case["request"]));
            }
        }
    }
    assert!(
        failed.is_empty(),
        "{} failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
    assert_eq!(passed, 40 + 40 + 3);

    // The interop requests name only ids: the pack's entity data decides.
    // A subject it does not know is denied; so is a tool operation or a
    // task action asked for a non-agent subject (agents decide within a task).
    let (_, unknown) = s.post(
        "/access/v1/evaluation",
        Some(&key),
        &json!({"subject": {"type": "user", "id": "nobody"}, "action": {"name": "can_create_todo"},
                "resource": {"type": "todo", "id": "t"}}),
    );
    assert_eq!(unknown["decision"], false, "{unknown}");
    let (_, agentish) = s.post(
        "/access/v1/evaluation",
        Some(&key),
        &json!({"subject": {"type": "user", "id": "x"}, "action": {"name": "task.open"},
                "resource": {"type": "Incident", "id": "INC-1"}}),
    );
    assert_eq!(agentish["decision"], false, "{agentish}");
    assert_eq!(agentish["context"]["error"]["status"], 400, "{agentish}");
    // An agent subject without a task is refused before any decision, and
    // recorded all the same.
    let (_, no_task) = s.post(
        "/access/v1/evaluation",
        Some(&key),
        &json!({"subject": {"type": "agent", "id": "spiffe://todo.test/agent/x/1"},
                "action": {"name": "can_read_todos"}, "resource": {"type": "todo", "id": "t"}}),
    );
    assert_eq!(no_task["context"]["error"]["status"], 400, "{no_task}");

    // Every evaluation is audited before its answer, the refused one too,
    // with ids and the verdict only.
    let entries = s.audit("");
    let authzen: Vec<_> = entries
        .iter()
        .filter(|e| e["event"]["kind"] == "authzen.decision")
        .collect();
    assert_eq!(authzen.len(), 40 + 40 + 3 * 2 + 3, "{}", authzen.len());
    assert!(authzen.iter().all(|e| e["event"]["actor"] == "pep:interop"));
    let refused = authzen
        .iter()
        .find(|e| e["event"]["outcome"] == "refused")
        .unwrap();
    assert_eq!(refused["event"]["detail"]["action"], "task.open");
    assert!(authzen.iter().any(|e| e["event"]["outcome"] == "refused"
        && e["event"]["detail"]["action"] == "can_read_todos"
        && e["event"]["detail"]["status"] == 400));
    let owner_rule = authzen
        .iter()
        .find(|e| e["event"]["detail"]["policies"] == json!(["todo-own"]))
        .unwrap();
    assert_eq!(owner_rule["event"]["outcome"], "allow");
    assert!(owner_rule["event"]["detail"]["subject"]
        .as_str()
        .unwrap()
        .starts_with("user::"));
}

/// The working group's search vectors (subject, resource and action search)
/// against `examples/authzen-search`, compared as the group's runner
/// compares them: `results` only, both sides sorted (by type then id, or
/// by name), action names filtered to the scenario's three. Then paging.
#[test]
fn authzen_search_interop_vectors_pass_and_pages_follow_the_spec() {
    let (s, key, _tmp) = pdp("authzen-search");
    let sorted = |v: &serde_json::Value, actions: bool| -> Vec<String> {
        let mut items: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| {
                !actions || ["view", "edit", "delete"].contains(&r["name"].as_str().unwrap_or(""))
            })
            .map(|r| r.to_string())
            .collect();
        items.sort();
        items
    };
    let mut searched = 0;
    let mut failed = Vec::new();
    for kind in ["subject", "resource", "action"] {
        let v = vectors(&format!("search/{kind}/results.json"));
        for case in v["evaluation"].as_array().unwrap() {
            let (status, answer) = s.post(
                &format!("/access/v1/search/{kind}"),
                Some(&key),
                &case["request"],
            );
            searched += 1;
            let actions = kind == "action";
            // The raw text too: each result must be exactly {"type","id"}
            // in that order, or {"name"}.
            let exact = answer["results"].as_array().is_some_and(|rs| {
                rs.iter().all(|r| {
                    r.as_object()
                        .is_some_and(|o| o.len() == if actions { 1 } else { 2 })
                })
            });
            if status != 200
                || !exact
                || answer.get("page").is_some()
                || sorted(&answer["results"], actions)
                    != sorted(&case["expected"]["results"], actions)
            {
                failed.push(format!("{kind}: {} -> {status} {answer}", case["request"]));
            }
        }
    }
    assert!(
        failed.is_empty(),
        "{} failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
    assert_eq!(searched, 60 + 18 + 120);

    // `type` before `id`, on the wire.
    let text = agent()
        .post(&s.url("/access/v1/search/subject"))
        .header("authorization", &format!("Bearer {key}"))
        .send_json(
            json!({"subject": {"type": "user"}, "action": {"name": "delete"},
                          "resource": {"type": "record", "id": "105"}}),
        )
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    assert_eq!(text, r#"{"results":[{"type":"user","id":"erin"}]}"#);

    // Paging: three at a time through Alice's eleven viewable records,
    // the last page says so with an empty token.
    let ask = |page: serde_json::Value| {
        s.post(
            "/access/v1/search/resource",
            Some(&key),
            &json!({"subject": {"type": "user", "id": "alice"}, "action": {"name": "view"},
                    "resource": {"type": "record"}, "page": page}),
        )
    };
    let (_, all) = ask(json!({}));
    let everything = sorted(&all["results"], false);
    let (mut pages, mut seen, mut token) = (0, Vec::new(), None::<String>);
    loop {
        let page = match &token {
            None => json!({"limit": 3}),
            Some(t) => json!({"limit": 3, "token": t}),
        };
        let (status, answer) = ask(page);
        assert_eq!(status, 200, "{answer}");
        pages += 1;
        seen.extend(sorted(&answer["results"], false));
        let next = answer["page"]["next_token"].as_str().unwrap().to_string();
        if next.is_empty() {
            break;
        }
        token = Some(next);
    }
    seen.sort();
    assert_eq!(seen, everything);
    assert_eq!(pages, everything.len().div_ceil(3));
    // A token is bound to its search: another subject with it is refused.
    let (_, first) = ask(json!({"limit": 3}));
    let token = first["page"]["next_token"].as_str().unwrap();
    let (status, refused) = s.post(
        "/access/v1/search/resource",
        Some(&key),
        &json!({"subject": {"type": "user", "id": "bob"}, "action": {"name": "view"},
                "resource": {"type": "record"}, "page": {"limit": 3, "token": token}}),
    );
    assert_eq!(status, 400, "{refused}");
    // Missing the id a search needs is a 400; an unknown type finds nothing.
    let (status, _) = s.post(
        "/access/v1/search/subject",
        Some(&key),
        &json!({"subject": {"type": "user"}, "action": {"name": "view"}, "resource": {"type": "record"}}),
    );
    assert_eq!(status, 400);
    let (status, none) = s.post(
        "/access/v1/search/resource",
        Some(&key),
        &json!({"subject": {"type": "user", "id": "alice"}, "action": {"name": "view"}, "resource": {"type": "nothing"}}),
    );
    assert_eq!((status, none), (200, json!({"results": []})));

    // The metadata names the search endpoints; each search is audited once.
    let (_, meta) = s.get("/.well-known/authzen-configuration", None);
    assert!(meta["search_action_endpoint"]
        .as_str()
        .unwrap()
        .ends_with("/access/v1/search/action"));
    let searches = s
        .audit("")
        .into_iter()
        .filter(|e| e["event"]["kind"] == "authzen.search")
        .count();
    assert!(searches >= 60 + 18 + 120 + 1 + 1 + pages, "{searches}");
}
