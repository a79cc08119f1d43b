//! Delegation (reference scenario step 7), incident lifecycle (step 8),
//! introspection and rollback plans.

use crate::harness::*;
use serde_json::{json, Value};

const FORENSICS: &str = "spiffe://acme.test/agent/forensics/i-2";
/// Further forensics instances: an agent never delegates to itself, so each
/// hop of a chain goes to another one.
const FORENSICS_3: &str = "spiffe://acme.test/agent/forensics/i-3";
const FORENSICS_4: &str = "spiffe://acme.test/agent/forensics/i-4";

fn delegate(s: &Server, cred: &str, task_id: &str, body: Value) -> (u16, Value) {
    s.post(&format!("/v1/tasks/{task_id}/delegate"), Some(cred), &body)
}

fn claims(token: &str) -> Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

#[test]
fn step_7_delegation_narrows_scope_and_dies_with_the_parent() {
    let s = Server::start();
    let svid = s.enrol(IR);
    s.enrol(FORENSICS);
    s.enrol(FORENSICS_3);
    s.enrol(FORENSICS_4);
    let (parent_id, parent) = s.open_task(&svid);
    let image = json!({
        "agent": FORENSICS, "actions": ["forensics.image_host"], "resources": ["Host::web-1"],
        "ttl_seconds": 120, "intent": "collect a forensic image of web-1",
    });
    let (status, child) = delegate(&s, &parent, &parent_id, image.clone());
    assert_eq!(status, 201, "{child}");
    let child_id = child["task_id"].as_str().unwrap().to_string();
    let child_cred = child["credential"].as_str().unwrap().to_string();
    // The child credential carries the actor chain (RFC 8693).
    let c = claims(&child_cred);
    assert_eq!(
        (c["sub"].as_str(), c["act"]["sub"].as_str()),
        (Some(FORENSICS), Some(IR))
    );
    assert_eq!(c["scope"]["actions"], json!(["forensics.image_host"]));

    // Within scope: allowed. Outside the delegated scope: denied.
    assert_eq!(
        s.authorize(&child_cred, "forensics.image_host", host("web-1"))
            .1["decision"],
        "allow"
    );
    let (_, d) = s.authorize(
        &child_cred,
        "logs.delete",
        json!({"type": "LogStream", "id": "web-1/auth"}),
    );
    assert_eq!(d["decision"], "deny");
    assert!(
        d["reasons"][0]
            .as_str()
            .unwrap()
            .contains("outside the task's scope"),
        "{d}"
    );
    assert_eq!(
        s.authorize(&child_cred, "forensics.image_host", host("web-2"))
            .1["decision"],
        "deny"
    );

    // Delegation can only narrow, and policy decides who gets what.
    let (status, v) = delegate(
        &s,
        &child_cred,
        &child_id,
        json!({"agent": FORENSICS_3, "actions": ["edr.isolate_host"], "resources": ["Host::web-1"], "ttl_seconds": 60, "intent": "widen"}),
    );
    assert_eq!(status, 403, "a child widened its scope: {v}");
    assert!(
        v["reasons"][0]
            .as_str()
            .unwrap()
            .contains("outside the parent task's scope"),
        "{v}"
    );
    let (status, v) = delegate(
        &s,
        &parent,
        &parent_id,
        json!({"agent": FORENSICS, "actions": ["edr.isolate_host"], "resources": ["Host::web-1"], "ttl_seconds": 60, "intent": "contain"}),
    );
    assert_eq!(
        status, 403,
        "policy should refuse contain-tier delegation: {v}"
    );
    assert!(
        v["policies"].as_array().unwrap().is_empty()
            && v["reasons"][0] == "no policy permits this request",
        "{v}"
    );
    let (status, v) = delegate(
        &s,
        &parent,
        &parent_id,
        json!({"agent": "spiffe://acme.test/agent/forensics/ghost", "actions": ["forensics.image_host"], "resources": ["Host::web-1"], "ttl_seconds": 60, "intent": "x"}),
    );
    assert_eq!(status, 400, "{v}");
    // The child's lifetime never passes the parent's.
    let (_, long) = delegate(
        &s,
        &parent,
        &parent_id,
        json!({"agent": FORENSICS, "actions": ["forensics.image_host"], "resources": ["Host::web-1"], "ttl_seconds": 100_000, "intent": "long"}),
    );
    let (_, p) = s.get(&format!("/v1/tasks/{parent_id}"), Some(&s.admin.clone()));
    assert!(
        long["expires_at"].as_str().unwrap() <= p["expires_at"].as_str().unwrap(),
        "{long} {p}"
    );
    // Depth is bounded (max 2 by default): child of child of child is refused.
    let to = |agent: &str| {
        let mut d = image.clone();
        d["agent"] = json!(agent);
        d
    };
    let (status, grandchild) = delegate(&s, &child_cred, &child_id, to(FORENSICS_3));
    assert_eq!(status, 201, "{grandchild}");
    let gc = claims(grandchild["credential"].as_str().unwrap());
    assert_eq!(
        gc["act"]["act"]["sub"], IR,
        "the actor chain nests each hop"
    );
    let (status, _) = delegate(
        &s,
        grandchild["credential"].as_str().unwrap(),
        grandchild["task_id"].as_str().unwrap(),
        to(FORENSICS_4),
    );
    assert_eq!(status, 403, "depth 3 was allowed");

    // Closing the parent kills every descendant at once.
    let (status, _) = s.post(
        &format!("/v1/tasks/{parent_id}/close"),
        Some(&parent),
        &json!({"outcome": "completed"}),
    );
    assert_eq!(status, 200);
    let (status, v) = s.authorize(&child_cred, "forensics.image_host", host("web-1"));
    assert_eq!(status, 401, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("parent task {parent_id} was closed")),
        "{v}"
    );
    assert_eq!(
        s.authorize(
            grandchild["credential"].as_str().unwrap(),
            "forensics.image_host",
            host("web-1")
        )
        .0,
        401
    );

    // Every hop is on the record with the parent task as correlation id.
    let hops: Vec<Value> = s
        .audit("")
        .into_iter()
        .filter(|e| e["event"]["kind"] == "task.delegated")
        .collect();
    assert_eq!(hops.len(), 3);
    assert_eq!(hops[0]["event"]["parent_task_id"], parent_id.as_str());
    let refusals = s
        .audit("")
        .iter()
        .filter(|e| e["event"]["kind"] == "task.delegation_refused")
        .count();
    // contain-tier, widening, unknown agent, too deep
    assert_eq!(refusals, 4);
}

#[test]
fn step_8_resolving_the_incident_kills_every_credential() {
    let s = Server::start();
    let svid = s.enrol(IR);
    s.enrol(FORENSICS);
    let (t1, c1) = s.open_task(&svid);
    let (_, c2) = s.open_task(&svid);
    let (_, child) = delegate(
        &s,
        &c1,
        &t1,
        json!({"agent": FORENSICS, "actions": ["forensics.image_host"], "resources": ["Host::web-1"], "ttl_seconds": 60, "intent": "image"}),
    );
    let cc = child["credential"].as_str().unwrap().to_string();
    let (ok, out, err) = s.cli(&[
        "incident",
        "resolve",
        "INC-4711",
        "--reason",
        "beacon removed",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("resolved"), "{out}");
    for c in [&c1, &c2, &cc] {
        let (status, v) = s.authorize(c, "edr.read_alerts", host("web-1"));
        assert_eq!(status, 401, "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("incident INC-4711 was resolved"),
            "{v}"
        );
    }
    // New tasks on a resolved incident are refused with the reason.
    let (status, v) = s.post("/v1/tasks", Some(&svid), &incident_task());
    assert_eq!(status, 403);
    assert!(
        v["reasons"][0].as_str().unwrap().contains("resolved"),
        "{v}"
    );
}

#[test]
fn reclassification_revokes_what_policy_no_longer_allows() {
    let s = Server::start();
    let ir = s.enrol(IR);
    let fx = s.enrol(FORENSICS);
    let (ir_task, ir_cred) = s.open_task(&ir);
    // Forensics investigates (read-only playbook for any incident class).
    let mut body = incident_task();
    body["playbook"] = json!("investigate");
    let (status, v) = s.post("/v1/tasks", Some(&fx), &body);
    assert_eq!(status, 201, "{v}");
    let (fx_task, fx_cred) = (
        v["task_id"].as_str().unwrap().to_string(),
        v["credential"].as_str().unwrap().to_string(),
    );
    // ddos is not a class incident responders work; forensics works any class at medium+.
    let r = s.admin_post(
        "/v1/incidents/INC-4711",
        &json!({"class": "ddos", "reason": "it was a ddos after all"}),
    );
    assert_eq!(r["revoked_tasks"], json!([ir_task]));
    assert_eq!(r["kept_tasks"], json!([fx_task]));
    let (status, v) = s.authorize(&ir_cred, "edr.read_alerts", host("web-1"));
    assert_eq!(status, 401);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("reclassified"),
        "{v}"
    );
    assert_eq!(
        s.authorize(&fx_cred, "edr.read_alerts", host("web-1")).1["decision"],
        "allow"
    );
    // Downgrading to low ends the forensics task too.
    let r = s.admin_post("/v1/incidents/INC-4711", &json!({"severity": "low"}));
    assert_eq!(r["revoked_tasks"], json!([fx_task]));
    assert_eq!(
        s.authorize(&fx_cred, "edr.read_alerts", host("web-1")).0,
        401
    );
    let (status, _) = s.post(
        "/v1/incidents/INC-9",
        Some(&s.admin.clone()),
        &json!({"status": "closed"}),
    );
    assert_eq!(status, 404);
}

#[test]
fn introspection_reflects_revocation_immediately() {
    let s = Server::start();
    let svid = s.enrol(IR);
    let (task_id, cred) = s.open_task(&svid);
    let (ok, out, _) = s.cli(&["pep", "add", "firewall-api"]);
    assert!(ok);
    let pep = out
        .lines()
        .find_map(|l| l.strip_prefix("key:"))
        .unwrap()
        .trim()
        .to_string();
    let (status, v) = s.post("/v1/introspect", Some(&pep), &json!({"token": cred}));
    assert_eq!(status, 200);
    assert_eq!(
        (
            v["active"].as_bool(),
            v["task_id"].as_str(),
            v["sub"].as_str()
        ),
        (Some(true), Some(task_id.as_str()), Some(IR))
    );
    assert_eq!(
        s.post("/v1/introspect", None, &json!({"token": cred})).0,
        401,
        "introspection needs a PEP key"
    );
    assert_eq!(
        s.post("/v1/introspect", Some(&pep), &json!({"token": "garbage"}))
            .1,
        json!({"active": false})
    );
    s.admin_post("/v1/revocations", &json!({"task_id": task_id}));
    assert_eq!(
        s.post("/v1/introspect", Some(&pep), &json!({"token": cred}))
            .1,
        json!({"active": false})
    );
}

#[test]
fn rollback_plan_lists_compensations_newest_first() {
    let s = Server::start();
    let ident = s.approver("ivan@acme.test", "identity");
    let svid = s.enrol(IR);
    let (task_id, cred) = s.open_task(&svid);
    let ev = |id: &str| {
        s.post(&format!("/v1/tasks/{task_id}/evidence"), Some(&cred), &json!({"resource": host(id), "kind": "memory", "sha256": tollgate_core::sha256_hex(id.as_bytes())}))
    };
    let result = |d: &Value, command: &str| {
        let (status, v) = s.post(
            &format!("/v1/actions/{}/result", d["request_id"].as_str().unwrap()),
            Some(&cred),
            &json!({"status": "succeeded", "command": command}),
        );
        assert_eq!(status, 204, "{v}");
    };
    ev("web-1");
    ev("web-2");
    let (_, d1) = s.authorize(&cred, "edr.isolate_host", host("web-1"));
    result(&d1, "edr isolate web-1");
    let (_, d2) = s.authorize(&cred, "edr.isolate_host", host("web-2"));
    result(&d2, "edr isolate web-2");
    let disable = json!({"action": "iam.disable_account", "resource": {"type": "Account", "id": "jdoe"}, "intent": "x", "parameters": {"reason": "compromised"}});
    let (_, pending) = s.post("/v1/authorize", Some(&cred), &disable);
    let id = pending["approval_id"].as_str().unwrap();
    s.post(
        &format!("/v1/approvals/{id}/decision"),
        Some(&ident),
        &json!({"approve": true, "reason": "ok"}),
    );
    let mut retry = disable.clone();
    retry["approval_id"] = json!(id);
    let (_, d3) = s.post("/v1/authorize", Some(&cred), &retry);
    result(&d3, "iam disable jdoe");
    // A read has no compensation and does not appear.
    let (_, d4) = s.authorize(&cred, "edr.read_alerts", host("web-1"));
    result(&d4, "edr alerts web-1");

    let (_, plan) = s.get(
        &format!("/v1/tasks/{task_id}/rollback"),
        Some(&s.admin.clone()),
    );
    let steps: Vec<(String, String)> = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|st| {
            (
                st["compensation"]["action"].as_str().unwrap().to_string(),
                st["compensation"]["resource"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        steps,
        [
            (
                "iam.enable_account".to_string(),
                "Account::jdoe".to_string()
            ),
            ("edr.release_host".to_string(), "Host::web-2".to_string()),
            ("edr.release_host".to_string(), "Host::web-1".to_string()),
        ]
    );
    assert_eq!(
        plan["steps"][0]["compensation"]["parameters"]["reason"],
        "compromised"
    );
    let (ok, out, _) = s.cli(&["task", "rollback", &task_id]);
    assert!(ok);
    assert!(
        out.starts_with("1. iam.enable_account Account::jdoe"),
        "{out}"
    );
}
