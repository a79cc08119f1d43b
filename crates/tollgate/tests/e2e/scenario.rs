//! Reference scenario, steps 1–3, then closing the task.

use crate::harness::*;
use serde_json::json;

#[test]
fn reference_scenario_steps_1_to_3_then_close() {
    let s = Server::start();

    // 1. The admin registers the agent; the agent attests once.
    let reg = s.admin_post(
        "/v1/agents",
        &json!({"spiffe_id": IR, "owner": "alice@acme.test"}),
    );
    let join = reg["join_token"].as_str().unwrap().to_string();
    let (status, attested) = s.post("/v1/agents/attest", None, &json!({"join_token": join}));
    assert_eq!(status, 200, "{attested}");
    assert_eq!(attested["spiffe_id"], IR);
    let svid = attested["svid"].as_str().unwrap().to_string();
    let (status, again) = s.post("/v1/agents/attest", None, &json!({"join_token": join}));
    assert_eq!(status, 401, "a join token worked twice: {again}");
    assert_eq!(again["error"]["code"], "unauthorized");
    // The SVID refreshes.
    let (status, fresh) = s.post("/v1/agents/svid", Some(&svid), &json!({}));
    assert_eq!(status, 200, "{fresh}");
    assert_ne!(fresh["svid"], attested["svid"]);

    // ... and opens a task with playbook contain-malware.
    let (task_id, cred) = s.open_task(&svid);
    let (status, task) = s.get(&format!("/v1/tasks/{task_id}"), Some(&s.admin.clone()));
    assert_eq!(status, 200);
    assert_eq!(task["status"], "active");
    assert_eq!(task["playbook"], "contain-malware");

    // 2. Reads are allowed.
    let (status, d) = s.authorize(&cred, "edr.read_alerts", host("web-1"));
    assert_eq!(
        (status, d["decision"].as_str()),
        (200, Some("allow")),
        "{d}"
    );
    assert_eq!(d["policies"], json!(["read-during-task"]));
    let (_, d) = s.post("/v1/authorize", Some(&cred), &json!({
        "action": "siem.query", "resource": {"type": "SiemIndex", "id": "main"},
        "intent": "find other beacons", "parameters": {"query": "dst=203.0.113.7", "window_minutes": 60},
    }));
    assert_eq!(d["decision"], "allow", "{d}");

    // 3. Isolation is denied until evidence for web-1 is recorded, then allowed.
    let (_, d) = s.authorize(&cred, "edr.isolate_host", host("web-1"));
    assert_eq!(d["decision"], "deny", "{d}");
    assert_eq!(d["obligations"], json!(["evidence-before"]));
    let content = "pid 4242 beacon.exe -> 203.0.113.7:443";
    let sha = tollgate_core::sha256_hex(content.as_bytes());
    let (status, bad_ev) = s.post(&format!("/v1/tasks/{task_id}/evidence"), Some(&cred), &json!({
        "resource": host("web-1"), "kind": "process-list", "sha256": "00".repeat(32), "content": content,
    }));
    assert_eq!(
        status, 400,
        "evidence with a wrong hash was accepted: {bad_ev}"
    );
    let (status, ev) = s.post(
        &format!("/v1/tasks/{task_id}/evidence"),
        Some(&cred),
        &json!({
            "resource": host("web-1"), "kind": "process-list", "sha256": sha, "content": content,
        }),
    );
    assert_eq!(status, 201, "{ev}");
    // Evidence is per resource: web-2 still needs its own.
    let (_, d) = s.authorize(&cred, "edr.isolate_host", host("web-2"));
    assert_eq!(d["decision"], "deny");
    let (_, d) = s.authorize(&cred, "edr.isolate_host", host("web-1"));
    assert_eq!(d["decision"], "allow", "{d}");

    // Step 4's first half: identity changes need a human.
    let (_, d) = s.post(
        "/v1/authorize",
        Some(&cred),
        &json!({
            "action": "iam.disable_account", "resource": {"type": "Account", "id": "jdoe"},
            "intent": "jdoe's session launched the beacon", "parameters": {"reason": "compromised"},
        }),
    );
    assert_eq!(d["decision"], "approval_required", "{d}");
    assert_eq!(d["approvals_required"], 1);
    // A guardrail: logs are never deleted, whatever else permits.
    let (_, d) = s.authorize(
        &cred,
        "logs.delete",
        json!({"type": "LogStream", "id": "web-1/auth"}),
    );
    assert_eq!(d["decision"], "deny");
    assert_eq!(d["policies"], json!(["never-delete-logs"]));
    assert_eq!(
        d["reasons"],
        json!(["agents never delete logs: they are the evidence"])
    );
    // An action outside the catalog is denied before policy.
    let (_, d) = s.authorize(&cred, "edr.wipe_host", host("web-1"));
    assert_eq!(d["decision"], "deny");

    // Renewal hands out a new credential.
    let (status, renewed) = s.post(
        &format!("/v1/tasks/{task_id}/renew"),
        Some(&cred),
        &json!({}),
    );
    assert_eq!(status, 200, "{renewed}");
    let cred2 = renewed["credential"].as_str().unwrap().to_string();

    // Closing kills every credential of the task on the very next call.
    let (status, closed) = s.post(
        &format!("/v1/tasks/{task_id}/close"),
        Some(&cred2),
        &json!({"outcome": "completed", "summary": "contained"}),
    );
    assert_eq!(status, 200, "{closed}");
    for c in [&cred, &cred2] {
        let (status, refused) = s.authorize(c, "edr.read_alerts", host("web-1"));
        assert_eq!(
            status, 401,
            "a closed task's credential still works: {refused}"
        );
        assert!(
            refused["error"]["message"]
                .as_str()
                .unwrap()
                .contains("completed"),
            "{refused}"
        );
    }
    let (status, _) = s.post(
        &format!("/v1/tasks/{task_id}/renew"),
        Some(&cred2),
        &json!({}),
    );
    assert_eq!(status, 401);

    // Every step is in the audit log, in order, with correlation ids.
    let entries = s.audit(&format!("task={task_id}"));
    let kinds: Vec<&str> = entries
        .iter()
        .map(|e| e["event"]["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.first(), Some(&"task.opened"));
    assert!(kinds.contains(&"evidence.recorded"));
    assert!(kinds.contains(&"task.renewed"));
    assert_eq!(kinds.last(), Some(&"task.closed"));
    let decisions: Vec<&str> = entries
        .iter()
        .filter(|e| e["event"]["kind"] == "decision")
        .map(|e| e["event"]["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        decisions,
        [
            "allow",
            "allow",
            "deny",
            "deny",
            "allow",
            "approval_required",
            "deny",
            "deny"
        ]
    );
    for e in &entries {
        assert_eq!(e["event"]["incident_id"], "INC-4711");
        assert_eq!(e["event"]["agent"], IR);
    }
    // Decision entries record the request id the agent was given.
    assert!(entries
        .iter()
        .any(|e| e["event"]["request_id"] == d["request_id"]));
    // The refused calls after close are audited too (each on its own, or
    // counted in its second's aggregate, written within a second).
    std::thread::sleep(std::time::Duration::from_millis(2200));
    let refused: u64 = s
        .audit("")
        .into_iter()
        .filter(|e| e["event"]["kind"] == "auth.refused")
        .map(|e| e["event"]["detail"]["count"].as_u64().unwrap_or(1))
        .sum();
    assert!(refused >= 3, "refusals not audited");
}
