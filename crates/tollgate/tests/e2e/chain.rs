//! Chain rules over a task tree's history: reference scenario step 6, a
//! restart in the middle, no laundering through sub-agents, budgets and storms.

use crate::harness::*;
use serde_json::{json, Value};

fn read_secret(s: &Server, cred: &str) -> Value {
    let (_, d) = s.authorize(
        cred,
        "vault.read_secret",
        json!({"type": "Secret", "id": "prod-db"}),
    );
    assert_eq!(d["decision"], "allow", "{d}");
    d
}

fn post(s: &Server, cred: &str, domain: &str) -> (u16, Value) {
    s.authorize(cred, "http.post", json!({"type": "Url", "id": format!("https://{domain}/x"), "attributes": {"domain": domain}}))
}

#[test]
fn step_6_secret_read_then_egress_is_denied_and_the_task_revoked() {
    let tmp = tempfile::tempdir().unwrap();
    let hook = receiver();
    let config = config_dir(
        tmp.path(),
        &format!(
            "webhooks:\n  - name: alerts\n    url: {}\n    events: [task.revoked]\n",
            hook.url
        ),
    );
    let s = Server::start_with_config(&config, &tmp.path().join("data"));
    let svid = s.enrol(IR);
    let (_, cred) = s.open_task(&svid);
    // Before any secret is read, egress only needs a human.
    assert_eq!(
        post(&s, &cred, "ticket.acme.test").1["decision"],
        "approval_required"
    );
    let read = read_secret(&s, &cred);
    let (_, d) = post(&s, &cred, "pastebin.com");
    assert_eq!(d["decision"], "deny", "{d}");
    let policies: Vec<&str> = d["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(policies.contains(&"no-egress-after-secret-read"), "{d}");
    // The decision names the earlier action that triggered the rule.
    let why = d["reasons"].to_string();
    assert!(
        why.contains(read["request_id"].as_str().unwrap())
            && why.contains("vault.read_secret on Secret::prod-db"),
        "{why}"
    );
    // The task was revoked in the same commit: the next call fails.
    let (status, v) = s.authorize(&cred, "edr.read_alerts", host("web-1"));
    assert_eq!(status, 401);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("revoked for deviation"),
        "{v}"
    );
    let kinds: Vec<String> = s
        .audit("")
        .iter()
        .map(|e| e["event"]["kind"].as_str().unwrap().to_string())
        .collect();
    assert!(kinds.contains(&"task.revoked".to_string()));
    // The alert webhook fired.
    let alert = hook.next();
    assert_eq!(alert["event"], "task.revoked");
    assert_eq!(alert["alert"]["action"], "http.post");
    assert!(alert["alert"]["policies"]
        .to_string()
        .contains("no-egress-after-secret-read"));
}

#[test]
fn a_restart_between_the_read_and_the_egress_still_denies() {
    let s = Server::start();
    let svid = s.enrol(IR);
    let (_, cred) = s.open_task(&svid);
    read_secret(&s, &cred);
    let s = s.restart();
    let (_, d) = post(&s, &cred, "ticket.acme.test");
    assert_eq!(
        d["decision"], "deny",
        "the window was lost in the restart: {d}"
    );
}

#[test]
fn a_sub_agent_cannot_launder_egress_after_its_parent_read_a_secret() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config_dir(tmp.path(), "");
    // This pack also lets responders hand egress to a forensics agent.
    std::fs::write(
        config.join("policies/50-egress-delegation.cedar"),
        "permit (principal, action == Action::\"task.delegate\", resource)\nwhen { principal.role == \"ir-responder\" && resource.role == \"forensics\" && context.actions.contains(\"http.post\") };\n\
         permit (principal, action == Action::\"http.post\", resource) when { principal.role == \"forensics\" };\n",
    )
    .unwrap();
    let s = Server::start_with_config(&config, &tmp.path().join("data"));
    let svid = s.enrol(IR);
    s.enrol("spiffe://acme.test/agent/forensics/i-2");
    let (task_id, cred) = s.open_task(&svid);
    let (status, child) = s.post(&format!("/v1/tasks/{task_id}/delegate"), Some(&cred), &json!({
        "agent": "spiffe://acme.test/agent/forensics/i-2", "actions": ["http.post"],
        "resources": ["Url::https://ticket.acme.test/x"], "ttl_seconds": 120, "intent": "file the report",
    }));
    assert_eq!(status, 201, "{child}");
    let child_cred = child["credential"].as_str().unwrap().to_string();
    // Before the parent reads anything, the child may post.
    assert_eq!(
        post(&s, &child_cred, "ticket.acme.test").1["decision"],
        "allow"
    );
    read_secret(&s, &cred);
    let (_, d) = post(&s, &child_cred, "ticket.acme.test");
    assert_eq!(
        d["decision"], "deny",
        "egress laundered through a sub-agent: {d}"
    );
    assert!(d["policies"]
        .to_string()
        .contains("no-egress-after-secret-read"));
}

#[test]
fn destructive_rate_and_risk_budget_are_counted_over_the_tree() {
    let s = Server::start();
    let bob = s.approver("bob@acme.test", "secops");
    let carol = s.approver("carol@acme.test", "secops");
    let svid = s.enrol(IR);
    let (_, cred) = s.open_task(&svid);
    // Each rotation is destructive (risk 25) and needs two approvers.
    let rotate = |i: u32| {
        let ask = json!({"action": "vault.rotate_secret", "resource": {"type": "Secret", "id": format!("db-{i}")}, "intent": "rotate"});
        let (_, d) = s.post("/v1/authorize", Some(&cred), &ask);
        if d["decision"] != "approval_required" {
            return d;
        }
        let id = d["approval_id"].as_str().unwrap().to_string();
        for k in [&bob, &carol] {
            s.post(
                &format!("/v1/approvals/{id}/decision"),
                Some(k),
                &json!({"approve": true, "reason": "ok"}),
            );
        }
        let mut retry = ask.clone();
        retry["approval_id"] = json!(id);
        s.post("/v1/authorize", Some(&cred), &retry).1
    };
    for i in 0..3 {
        assert_eq!(rotate(i)["decision"], "allow", "rotation {i}");
    }
    // The 4th destructive action within the hour needs a third approver.
    let (_, d) = s.post("/v1/authorize", Some(&cred), &json!({"action": "vault.rotate_secret", "resource": {"type": "Secret", "id": "db-3"}, "intent": "rotate"}));
    assert_eq!(
        (d["decision"].as_str(), d["approvals_required"].as_u64()),
        (Some("approval_required"), Some(3)),
        "{d}"
    );
    assert!(
        d["policies"]
            .to_string()
            .contains("destructive-fourth-needs-three"),
        "{d}"
    );
    // 75 of 100 risk spent; each isolation (contain) weighs 5: five more
    // fit, the sixth crosses the budget.
    let mut spent = 75;
    let mut crossed = None;
    for i in 0..10 {
        s.post(&format!("/v1/tasks/{}/evidence", task_of(&cred)), Some(&cred), &json!({"resource": host(&format!("h{i}")), "kind": "memory", "sha256": tollgate_core::sha256_hex(format!("h{i}").as_bytes())}));
        let (_, d) = s.authorize(&cred, "edr.isolate_host", host(&format!("h{i}")));
        if d["decision"] == "allow" {
            spent += 5;
        } else {
            crossed = Some(d);
            break;
        }
    }
    let crossed = crossed.expect("the risk budget was never reached");
    assert!(
        crossed["policies"].to_string().contains("risk-budget"),
        "{crossed}"
    );
    assert_eq!(spent, 100);
}

fn task_of(cred: &str) -> String {
    use base64::Engine;
    let payload = cred.split('.').nth(1).unwrap();
    let v: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    v["task_id"].as_str().unwrap().to_string()
}

#[test]
fn a_retry_storm_quarantines_the_agent_until_an_admin_releases_it() {
    let s = Server::start();
    let svid = s.enrol(IR);
    let (_, cred) = s.open_task(&svid);
    for _ in 0..10 {
        let d = s
            .authorize(
                &cred,
                "logs.delete",
                json!({"type": "LogStream", "id": "auth"}),
            )
            .1;
        assert_eq!(d["decision"], "deny");
    }
    // The 11th call meets the storm rule: the task ends and the agent is quarantined.
    let (_, d) = s.authorize(
        &cred,
        "logs.delete",
        json!({"type": "LogStream", "id": "auth"}),
    );
    assert!(d["policies"].to_string().contains("retry-storm"), "{d}");
    assert_eq!(s.authorize(&cred, "edr.read_alerts", host("web-1")).0, 401);
    let (status, v) = s.post("/v1/tasks", Some(&svid), &incident_task());
    assert_eq!(status, 403, "{v}");
    assert!(
        v["reasons"][0].as_str().unwrap().contains("quarantined"),
        "{v}"
    );
    // Only an admin lifts it.
    let (ok, out, err) = s.cli(&[
        "agent",
        "release",
        IR,
        "--reason",
        "looked at it: a bad prompt",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("released"));
    let (_, cred) = s.open_task(&svid);
    assert_eq!(
        s.authorize(&cred, "edr.read_alerts", host("web-1")).1["decision"],
        "allow"
    );
    let (ok, _, err) = s.cli(&["agent", "release", IR]);
    assert!(!ok && err.contains("not quarantined"), "{err}");
    let kinds: Vec<String> = s
        .audit("")
        .iter()
        .map(|e| e["event"]["kind"].as_str().unwrap().to_string())
        .collect();
    assert!(
        kinds.contains(&"agent.quarantined".to_string())
            && kinds.contains(&"agent.released".to_string())
    );
}

fn open_with(s: &Server, svid: &str, playbook: &str, class: &str) -> (String, String) {
    let mut body = incident_task();
    body["playbook"] = json!(playbook);
    body["incident"]["class"] = json!(class);
    body["incident"]["id"] = json!(format!("INC-{class}"));
    let (status, v) = s.post("/v1/tasks", Some(svid), &body);
    assert_eq!(status, 201, "{v}");
    (
        v["task_id"].as_str().unwrap().to_string(),
        v["credential"].as_str().unwrap().to_string(),
    )
}

#[test]
fn playbook_deviations_are_denied_stepped_up_or_revoked() {
    let s = Server::start();
    let svid = s.enrol(IR);
    // A playbook must fit the incident.
    let mut body = incident_task();
    body["playbook"] = json!("credential-leak");
    let (status, v) = s.post("/v1/tasks", Some(&svid), &body);
    assert_eq!(status, 403);
    assert!(
        v["reasons"][0]
            .as_str()
            .unwrap()
            .contains("is for credential-leak incidents"),
        "{v}"
    );

    // deny: an investigation does not isolate hosts.
    let (_, inv) = open_with(&s, &svid, "investigate", "malware");
    s.post(
        &format!("/v1/tasks/{}/evidence", task_of(&inv)),
        Some(&inv),
        &json!({"resource": host("web-1"), "kind": "m", "sha256": tollgate_core::sha256_hex(b"m")}),
    );
    let (_, d) = s.authorize(&inv, "edr.isolate_host", host("web-1"));
    assert_eq!(d["decision"], "deny", "{d}");
    assert!(
        d["reasons"]
            .to_string()
            .contains("not a step of playbook investigate"),
        "{d}"
    );
    assert_eq!(
        s.authorize(&inv, "edr.read_alerts", host("web-1")).1["decision"],
        "allow",
        "deny mode keeps the task"
    );

    // step-up: off the credential-leak path, a human must approve.
    let (_, leak) = open_with(&s, &svid, "credential-leak", "credential-leak");
    let (_, d) = s.authorize(&leak, "edr.read_alerts", host("web-1"));
    assert_eq!(
        (d["decision"].as_str(), d["approvals_required"].as_u64()),
        (Some("approval_required"), Some(1)),
        "{d}"
    );
    assert!(d["approval_id"].is_string());

    // revoke: the task ends at the first deviation (out of order here).
    let (_, q) = open_with(&s, &svid, "quarantine-host", "phishing");
    s.post(
        &format!("/v1/tasks/{}/evidence", task_of(&q)),
        Some(&q),
        &json!({"resource": host("web-1"), "kind": "m", "sha256": tollgate_core::sha256_hex(b"m")}),
    );
    let (_, d) = s.authorize(&q, "edr.isolate_host", host("web-1"));
    assert_eq!(d["decision"], "deny", "{d}");
    assert!(
        d["reasons"]
            .to_string()
            .contains("only after forensics.image_host"),
        "{d}"
    );
    let (status, v) = s.authorize(&q, "edr.read_alerts", host("web-1"));
    assert_eq!(status, 401, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("revoked for deviation"),
        "{v}"
    );
}

#[test]
fn rate_limits_count_per_agent_across_tasks_and_per_operation() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config_dir(
        tmp.path(),
        "  - name: two-reads-a-minute\n    scope: agent\n    action: edr.read_alerts\n    max: 2\n    per_seconds: 60\n    on_exceed: quarantine\n",
    );
    // The example config ends with the rate_limits list, so the test's entry joins it.
    let s = Server::start_with_config(&config, &tmp.path().join("data"));
    let svid = s.enrol(IR);
    let (_, a) = s.open_task(&svid);
    let (_, b) = s.open_task(&svid);
    assert_eq!(
        s.authorize(&a, "edr.read_alerts", host("web-1")).1["decision"],
        "allow"
    );
    assert_eq!(
        s.authorize(&b, "edr.read_alerts", host("web-2")).1["decision"],
        "allow"
    );
    // Other operations are not counted by this limit.
    assert_eq!(
        s.authorize(&b, "siem.query", json!({"type": "SiemIndex", "id": "main"}))
            .1["decision"],
        "allow"
    );
    // The third read by this agent, in either task, exceeds the limit.
    let (_, d) = s.authorize(&a, "edr.read_alerts", host("web-3"));
    assert_eq!(d["decision"], "deny", "{d}");
    assert_eq!(d["policies"], json!(["rate-limit:two-reads-a-minute"]));
    assert!(
        d["reasons"][0]
            .as_str()
            .unwrap()
            .contains("this agent already did 2"),
        "{d}"
    );
    // on_exceed: quarantine — every decision of the agent now denies.
    let (_, d) = s.authorize(&b, "siem.query", json!({"type": "SiemIndex", "id": "main"}));
    assert_eq!(d["decision"], "deny");
    assert!(
        d["reasons"][0].as_str().unwrap().contains("quarantined"),
        "{d}"
    );
    // A quarantined agent cannot hand work to another agent either.
    s.enrol("spiffe://acme.test/agent/forensics/i-2");
    let tb = {
        use base64::Engine;
        let payload = b.split('.').nth(1).unwrap();
        let v: Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .unwrap(),
        )
        .unwrap();
        v["task_id"].as_str().unwrap().to_string()
    };
    let (status, v) = s.post(
        &format!("/v1/tasks/{tb}/delegate"),
        Some(&b),
        &json!({
            "agent": "spiffe://acme.test/agent/forensics/i-2", "actions": ["forensics.image_host"],
            "resources": ["Host::web-1"], "ttl_seconds": 60, "intent": "launder",
        }),
    );
    assert_eq!(status, 403, "{v}");
    assert!(
        v["reasons"][0].as_str().unwrap().contains("quarantined"),
        "{v}"
    );
}
