//! Regression tests for what an adversarial review found (issue: hardening).
//! Each test names the finding it covers and fails on the code before the fix.

use crate::harness::*;
use serde_json::{json, Value};
use std::path::Path;

/// Audit entries of one kind.
fn entries_of(s: &Server, kind: &str) -> Vec<Value> {
    s.audit("")
        .into_iter()
        .filter(|e| e["event"]["kind"] == kind)
        .collect()
}

/// No file of the data dir holds `secret` in clear.
fn assert_not_stored(data: &Path, secret: &str) {
    for f in std::fs::read_dir(data).unwrap() {
        let path = f.unwrap().path();
        if path.is_dir() {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{secret:?} is stored in clear in {}",
            path.display()
        );
    }
}

/// Finding 1: secrets reached the log through malformed shapes and through
/// secret-named parameters on operations that do not declare them.
#[test]
fn secrets_never_reach_errors_or_storage_by_side_doors() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let s = Server::start_with_config(&config_dir(tmp.path(), ""), &data);
    let svid = s.enrol(IR);
    let (_, cred) = s.open_task(&svid);
    let secret = "MY-SECRET-7f3Kq9";
    // A sensitive parameter in a shape the schema refuses: the 400 and its
    // audit entry name the parameter, never the value.
    for bad in [
        json!({"__extn": {"fn": "ip", "arg": secret}}),
        json!({"__extn": {"fn": "decimal", "arg": secret}}),
        json!({"__entity": {"type": "Host", "id": secret}}),
        json!([secret]),
        json!({"nested": secret}),
        json!(7),
    ] {
        let (status, v) = s.post(
            "/v1/authorize",
            Some(&cred),
            &json!({"action": "vault.rotate_secret", "resource": {"type": "Secret", "id": "prod-db"},
                    "intent": "rotate", "parameters": {"new_value": bad}}),
        );
        assert_eq!(status, 400, "{bad}: {v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(
            !msg.contains(secret),
            "{bad}: the secret is in the error: {msg}"
        );
        assert!(msg.contains("new_value"), "{msg}");
    }
    // A bad non-secret parameter beside a secret: the error is about the
    // non-secret one and still does not quote the secret.
    let (status, v) = s.post(
        "/v1/authorize",
        Some(&cred),
        &json!({"action": "vault.rotate_secret", "resource": {"type": "Secret", "id": "prod-db"},
                "intent": "rotate", "parameters": {"new_value": secret, "window_minutes": "soon"}}),
    );
    assert_eq!(status, 400, "{v}");
    assert!(!v["error"]["message"].as_str().unwrap().contains(secret));
    // Secret-named parameters on operations that do not declare them, and on
    // an operation not in the catalog: hashed all the same.
    for (action, resource, name) in [
        (
            "siem.query",
            json!({"type": "SiemIndex", "id": "main"}),
            "new_value",
        ),
        ("edr.read_alerts", host("web-1"), "body"),
        ("no.such.operation", host("web-1"), "new_value"),
    ] {
        let (status, v) = s.post(
            "/v1/authorize",
            Some(&cred),
            &json!({"action": action, "resource": resource, "intent": "x",
                    "parameters": {name: secret}}),
        );
        assert_eq!(status, 200, "{action}: {v}");
    }
    let (ok, export, _) = s.cli(&["audit", "export"]);
    assert!(ok);
    assert!(!export.contains(secret), "the secret is in the export");
    assert!(
        export.contains("hmac-sha256:"),
        "secret parameters are logged as keyed hashes"
    );
    drop(s);
    assert_not_stored(&data, secret);
}

/// Finding 2: terminal control characters reached the operator's terminal.
#[test]
fn ids_with_controls_are_refused_and_free_text_is_escaped_in_every_output() {
    let s = Server::start();
    let svid = s.enrol(IR);
    // Ids carrying controls are refused at the edge, with a 400 that does
    // not echo them.
    let mut bad_task = incident_task();
    bad_task["incident"]["id"] = json!("INC-\u{1b}[2J");
    let (status, v) = s.post("/v1/tasks", Some(&svid), &bad_task);
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["code"], "invalid_body");
    assert!(!v.to_string().contains('\u{1b}'));
    let (_, cred) = s.open_task(&svid);
    for (what, body) in [
        (
            "resource id with ESC",
            json!({"action": "edr.read_alerts", "resource": host("web-1\u{1b}]0;pwned\u{7}"), "intent": "x"}),
        ),
        (
            "resource id with CR",
            json!({"action": "edr.read_alerts", "resource": host("web-1\rFORGED"), "intent": "x"}),
        ),
        (
            "action with bidi override",
            json!({"action": "edr.read_alerts\u{202e}", "resource": host("web-1"), "intent": "x"}),
        ),
        (
            "resource id of 300 bytes",
            json!({"action": "edr.read_alerts", "resource": host(&"a".repeat(300)), "intent": "x"}),
        ),
        (
            "empty resource id",
            json!({"action": "edr.read_alerts", "resource": host(" "), "intent": "x"}),
        ),
    ] {
        let (status, v) = s.post("/v1/authorize", Some(&cred), &body);
        assert_eq!(status, 400, "{what}: {v}");
    }
    let (status, v) = s.post(
        "/v1/agents",
        Some(&s.admin),
        &json!({"spiffe_id": IR, "owner": "mallory\u{7}@acme.test"}),
    );
    assert_eq!(status, 400, "{v}");
    // Path and query ids follow the same rule.
    let (status, v) = s.get("/v1/tasks/task_%1B%5B2J", Some(&s.admin));
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (400, Some("invalid_path")),
        "{v}"
    );
    let (status, v) = s.get("/v1/audit?incident=INC%0D4711", Some(&s.admin));
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (400, Some("invalid_query")),
        "{v}"
    );

    // Free text (intent, parameters) is accepted, and every human-readable
    // output escapes it.
    let hostile = "isolate\u{1b}[2J\u{1b}]0;owned\u{7}\rFORGED LINE\nsecond \u{202e}txt";
    let (status, d) = s.post(
        "/v1/authorize",
        Some(&cred),
        &json!({"action": "iam.disable_account", "resource": {"type": "Account", "id": "jdoe"},
                "intent": hostile, "parameters": {"reason": hostile}}),
    );
    assert_eq!(status, 200, "{d}");
    assert_eq!(d["decision"], "approval_required", "{d}");
    let approval = d["approval_id"].as_str().unwrap().to_string();
    let outputs = [
        s.cli(&["audit", "tail", "-n", "20"]),
        s.cli(&["audit", "timeline", "--incident", "INC-4711"]),
        s.cli(&["approvals", "list"]),
        s.cli(&["approvals", "show", &approval]),
        // An error from the server quoting agent text, printed by the CLI.
        s.cli(&["task", "show", "task_nope\u{1b}[31m"]),
    ];
    for (i, (_, out, err)) in outputs.iter().enumerate() {
        for text in [out, err] {
            assert!(
                !text.chars().any(
                    |c| c != '\n' && (c.is_control() || ('\u{2028}'..='\u{202e}').contains(&c))
                ),
                "output {i} carries a raw control character: {text:?}"
            );
        }
    }
    let (_, shown, _) = &outputs[3];
    assert!(shown.contains("isolate\\u{1b}[2J"), "{shown}");
    assert!(
        !shown.lines().any(|l| l.starts_with("FORGED")),
        "a field forged a line: {shown}"
    );
    assert!(
        !shown.lines().any(|l| l.starts_with("second")),
        "a field forged a line: {shown}"
    );
}

/// Finding 3: `iss` was never compared with the configured issuer.
#[test]
fn tokens_of_another_issuer_are_refused() {
    let s = Server::start();
    let svid = s.enrol(IR);
    let (task_id, cred) = s.open_task(&svid);
    // The server's own key, the right audience and type, the wrong issuer.
    let evil_svid = sign_with_server_key(
        &s,
        "JWT",
        &json!({"iss": "evil-issuer", "sub": IR, "aud": ["tollgate"], "exp": now() + 300, "iat": now()}),
    );
    let (status, v) = s.post("/v1/tasks", Some(&evil_svid), &incident_task());
    assert_eq!(status, 401, "{v}");
    let (status, v) = s.post("/v1/agents/svid", Some(&evil_svid), &json!({}));
    assert_eq!(status, 401, "{v}");
    let claims = |iss: Value| {
        let mut c = json!({"sub": IR, "aud": "tollgate/task", "exp": now() + 300, "iat": now(),
                           "jti": "cred_forged", "task_id": task_id, "incident_id": "INC-4711"});
        if !iss.is_null() {
            c["iss"] = iss;
        }
        c
    };
    for (what, iss) in [
        ("evil issuer", json!("evil-issuer")),
        ("no issuer", Value::Null),
        ("issuer as a number", json!(1)),
    ] {
        let forged = sign_with_server_key(&s, "tollgate-task+jwt", &claims(iss));
        let (status, v) = s.authorize(&forged, "edr.read_alerts", host("web-1"));
        assert_eq!(status, 401, "{what}: {v}");
    }
    // A token issued in the future is refused too.
    let mut future = claims(json!("tollgate"));
    future["iat"] = json!(now() + 3600);
    let forged = sign_with_server_key(&s, "tollgate-task+jwt", &future);
    assert_eq!(
        s.authorize(&forged, "edr.read_alerts", host("web-1")).0,
        401
    );
    // The genuine credential still works: only the forgeries were refused.
    assert_eq!(
        s.authorize(&cred, "edr.read_alerts", host("web-1")).1["decision"],
        "allow"
    );
}

/// Findings 4 and 5: a delegation ttl near i64::MAX wrapped into the past,
/// and an agent could delegate to itself.
#[test]
fn delegation_lifetimes_cannot_overflow_and_agents_cannot_delegate_to_themselves() {
    let s = Server::start();
    let svid = s.enrol(IR);
    let forensics = "spiffe://acme.test/agent/forensics/i-2";
    s.enrol(forensics);
    let (task_id, cred) = s.open_task(&svid);
    let (_, parent) = s.get(&format!("/v1/tasks/{task_id}"), Some(&s.admin));
    let parent_exp = parent["expires_at"].as_str().unwrap().to_string();
    let delegate = |agent: &str, ttl: Value| {
        s.post(
            &format!("/v1/tasks/{task_id}/delegate"),
            Some(&cred),
            &json!({"agent": agent, "actions": ["forensics.image_host"], "resources": ["Host::web-1"],
                    "ttl_seconds": ttl, "intent": "image web-1"}),
        )
    };
    for ttl in [
        json!(i64::MAX),
        json!(i64::MAX - 1),
        json!(9_000_000_000_000_000_000i64),
    ] {
        let (status, v) = delegate(forensics, ttl.clone());
        assert_eq!(status, 201, "{ttl}: {v}");
        let exp = v["expires_at"].as_str().unwrap();
        assert!(
            exp <= parent_exp.as_str(),
            "child {exp} outlives parent {parent_exp}"
        );
        assert!(exp > "2026", "child expiry {exp} is in the past");
        let child = v["task_id"].as_str().unwrap();
        let (_, c) = s.get(&format!("/v1/tasks/{child}"), Some(&s.admin));
        assert_eq!(c["status"], "active", "{c}");
    }
    for ttl in [json!(0), json!(-1), json!(i64::MIN)] {
        let (status, v) = delegate(forensics, ttl.clone());
        assert_eq!(status, 403, "{ttl}: {v}");
    }
    // To itself: refused, audited, nothing created.
    let before = entries_of(&s, "task.delegated").len();
    let (status, v) = delegate(IR, json!(60));
    assert_eq!(status, 403, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("delegate to itself"),
        "{v}"
    );
    assert_eq!(entries_of(&s, "task.delegated").len(), before);
    assert!(s
        .audit(&format!("task={task_id}"))
        .iter()
        .any(|e| e["event"]["kind"] == "task.delegation_refused"
            && e["event"]["detail"]["reasons"][0]
                .as_str()
                .unwrap_or("")
                .contains("itself")));
    // Nor back up the chain: the child cannot hand work to its parent's agent.
    let (status, v) = delegate(forensics, json!(60));
    assert_eq!(status, 201, "{v}");
    let child = v["task_id"].as_str().unwrap().to_string();
    let child_cred = v["credential"].as_str().unwrap().to_string();
    let (status, v) = s.post(
        &format!("/v1/tasks/{child}/delegate"),
        Some(&child_cred),
        &json!({"agent": IR, "actions": ["forensics.image_host"], "resources": ["Host::web-1"],
                "ttl_seconds": 30, "intent": "back to you"}),
    );
    assert_eq!(status, 403, "{v}");
    assert!(
        v["reasons"][0]
            .as_str()
            .unwrap()
            .contains("already acts in this delegation chain"),
        "{v}"
    );
}

/// Finding 6: a PEP key could read every approval.
#[test]
fn a_pep_key_reads_no_approval() {
    let s = Server::start();
    let pep = s.admin_post("/v1/peps", &json!({"name": "gateway"}))["key"]
        .as_str()
        .unwrap()
        .to_string();
    let svid = s.enrol(IR);
    let (_, cred) = s.open_task(&svid);
    let (_, d) = s.post(
        "/v1/authorize",
        Some(&cred),
        &json!({"action": "iam.disable_account", "resource": {"type": "Account", "id": "jdoe"}, "intent": "x"}),
    );
    let id = d["approval_id"].as_str().unwrap();
    let (status, v) = s.get(&format!("/v1/approvals/{id}"), Some(&pep));
    assert_eq!(status, 403, "{v}");
    assert!(v.get("request").is_none());
    let (status, _) = s.get("/v1/approvals", Some(&pep));
    assert_eq!(status, 403);
    // The agent of the task and the admin still can.
    assert_eq!(s.get(&format!("/v1/approvals/{id}"), Some(&cred)).0, 200);
    assert_eq!(s.get(&format!("/v1/approvals/{id}"), Some(&s.admin)).0, 200);
}

/// Finding 8: query, path and method errors answered text/plain or nothing.
#[test]
fn every_error_has_the_documented_shape() {
    let s = Server::start();
    let admin = s.admin.clone();
    for (path, code) in [
        ("/v1/audit?limit=-1", "invalid_query"),
        ("/v1/audit?after=x", "invalid_query"),
        ("/v1/tasks?limit=abc", "invalid_query"),
        ("/v1/approvals/apr_x?wait=-3", "invalid_query"),
        ("/v1/audit/proof/abc", "invalid_path"),
        ("/v1/audit/proof/-1", "invalid_path"),
        ("/v1/audit/consistency?first=a&second=2", "invalid_query"),
        ("/v1/audit/consistency", "invalid_query"),
    ] {
        let (status, v) = s.get(path, Some(&admin));
        assert_eq!(status, 400, "{path}: {v}");
        assert_eq!(v["error"]["code"], code, "{path}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{path}: {v}"
        );
    }
    let (status, v) = s.get("/v1/authorize", Some(&admin));
    assert_eq!(status, 405, "{v}");
    assert_eq!(v["error"]["code"], "method_not_allowed");
    let (status, v) = s.post("/v1/audit", Some(&admin), &json!({}));
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (405, Some("method_not_allowed"))
    );
    let (status, v) = s.get("/v1/nothing-here", None);
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
}

/// Finding 7: health said ok while every write failed. Needs a tmpfs
/// (root, or a sandbox that allows mounts); skipped with a message otherwise.
#[test]
fn readiness_fails_when_the_store_cannot_commit() {
    let s = Server::start();
    for path in ["/livez", "/readyz", "/healthz"] {
        let (status, v) = s.get(path, None);
        assert_eq!(status, 200, "{path}: {v}");
    }
    drop(s);

    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=6m", "tmpfs"])
        .arg(&mnt)
        .status()
        .is_ok_and(|st| st.success());
    if !mounted {
        eprintln!("SKIPPED full-disk part of readiness_fails_when_the_store_cannot_commit: cannot mount a tmpfs here (needs root)");
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _guard = Unmount(mnt.clone());
    let data = mnt.join("data");
    let s = Server::start_with_config(&config_dir(tmp.path(), ""), &data);
    let svid = s.enrol(IR);
    let (_, cred) = s.open_task(&svid);
    assert_eq!(s.authorize(&cred, "edr.read_alerts", host("web-1")).0, 200);
    // Fill the disk.
    let filler = mnt.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }
    // Decisions cannot be audited, so they fail closed; readiness says so.
    let mut refused = 0;
    for _ in 0..50 {
        let (status, v) = s.authorize(&cred, "edr.read_alerts", host("web-1"));
        assert_ne!(v["decision"], "allow", "an allow on a full disk: {v}");
        if status == 503 {
            refused += 1;
        }
    }
    assert!(refused > 0, "no decision failed on a full disk");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    for path in ["/readyz", "/healthz"] {
        let (status, v) = s.get(path, None);
        assert_eq!(status, 503, "{path} on a full disk: {v}");
        assert_eq!(v["error"]["code"], "unavailable", "{v}");
    }
    assert_eq!(s.get("/livez", None).0, 200);
    // Space back: ready again without a restart.
    std::fs::remove_file(&filler).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let (status, v) = s.get("/readyz", None);
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        s.authorize(&cred, "edr.read_alerts", host("web-1")).1["decision"],
        "allow"
    );
}

/// Finding 12: an approver could be replaced but never removed or disabled.
#[test]
fn approvers_can_be_offboarded() {
    let s = Server::start();
    let bob = s.approver("bob@acme.test", "secops");
    let carol = s.approver("carol@acme.test", "secops");
    let svid = s.enrol(IR);
    let (_, cred) = s.open_task(&svid);
    // Two approvals are needed to rotate the secret; bob votes, then leaves.
    let ask = json!({"action": "vault.rotate_secret", "resource": {"type": "Secret", "id": "prod-db"}, "intent": "rotate"});
    let (_, d) = s.post("/v1/authorize", Some(&cred), &ask);
    let id = d["approval_id"].as_str().unwrap().to_string();
    let vote = |key: &str| {
        s.post(
            &format!("/v1/approvals/{id}/decision"),
            Some(key),
            &json!({"approve": true, "reason": "rotation is due"}),
        )
    };
    assert_eq!(vote(&bob).0, 200);
    let (ok, out, err) = s.cli(&["approver", "list"]);
    assert!(ok, "{err}");
    let bob_line = out
        .lines()
        .find(|l| l.starts_with("bob@acme.test"))
        .unwrap();
    assert!(
        bob_line.contains("active") && !bob_line.ends_with("last used -"),
        "{out}"
    );
    let (ok, _, err) = s.cli(&["approver", "remove", "bob@acme.test"]);
    assert!(ok, "{err}");
    // The removed key fails at once, everywhere an approver key is accepted.
    let (status, v) = s.get("/v1/approvals", Some(&bob));
    assert_eq!(status, 401, "{v}");
    assert_eq!(vote(&bob).0, 401);
    // Removing again is a clear 404 that changes nothing.
    let (ok, _, err) = s.cli(&["approver", "remove", "bob@acme.test"]);
    assert!(!ok && err.contains("404"), "{err}");
    // Bob's vote stays as cast: carol's completes the quorum.
    let (status, v) = vote(&carol);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["status"], "approved", "{v}");
    // Disable and enable.
    let (ok, _, _) = s.cli(&["approver", "disable", "carol@acme.test"]);
    assert!(ok);
    assert_eq!(s.get("/v1/approvals", Some(&carol)).0, 401);
    let (_, out, _) = s.cli(&["approver", "list", "--json"]);
    let list: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list[0]["name"], "carol@acme.test");
    assert_eq!(list[0]["status"], "disabled");
    assert!(list[0].get("key_hash").is_none(), "{list}");
    let (ok, _, _) = s.cli(&["approver", "enable", "carol@acme.test"]);
    assert!(ok);
    assert_eq!(s.get("/v1/approvals", Some(&carol)).0, 200);
    // Each change is audited.
    for kind in ["approver.removed", "approver.disabled", "approver.enabled"] {
        assert_eq!(entries_of(&s, kind).len(), 1, "{kind}");
    }
    // A key with an expiry is refused once it has passed (1 s here).
    let (ok, out, err) = s.cli(&[
        "approver",
        "add",
        "dave@acme.test",
        "--role",
        "secops",
        "--expires-in",
        "1s",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("expires:"), "{out}");
    let dave = printed_key(&out);
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let (status, v) = s.get("/v1/approvals", Some(&dave));
    assert_eq!(status, 401, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("expired"),
        "{v}"
    );
}

/// Finding 10: every refused credential cost one fsync'd entry, so anyone
/// could flood the log. Now a source's refusals are one entry per second
/// plus one aggregate with the count: bounded cost, no evidence lost.
#[test]
fn refused_credentials_are_aggregated_without_losing_the_count() {
    let s = Server::start();
    let sent = 300;
    let started = std::time::Instant::now();
    for i in 0..sent {
        let token = format!("tga_forged_{i}");
        let (status, _) = s.get("/v1/tasks", Some(&token));
        assert_eq!(status, 401);
    }
    for i in 0..20 {
        let (status, _) = s.post(
            "/v1/agents/attest",
            None,
            &json!({"join_token": format!("tgj_nope_{i}")}),
        );
        assert_eq!(status, 401);
    }
    let seconds = started.elapsed().as_secs() as usize + 1;
    // The once-a-second loop writes the last aggregate.
    std::thread::sleep(std::time::Duration::from_millis(2200));
    let count = |kind: &str| {
        let entries = entries_of(&s, kind);
        let total: u64 = entries
            .iter()
            .map(|e| e["event"]["detail"]["count"].as_u64().unwrap_or(1))
            .sum();
        (entries.len(), total)
    };
    let (entries, total) = count("auth.refused");
    assert_eq!(total, sent as u64, "every refusal is counted");
    assert!(
        entries <= 2 * seconds + 2,
        "{entries} entries for {sent} refusals in {seconds} s: not aggregated"
    );
    let aggregate = entries_of(&s, "auth.refused")
        .into_iter()
        .find(|e| e["event"]["detail"]["aggregated"] == true)
        .expect("an aggregated entry");
    assert_eq!(aggregate["event"]["detail"]["source"], "127.0.0.1");
    assert_eq!(aggregate["event"]["detail"]["first"]["expected"], "admin");
    let (entries, total) = count("agent.attest_refused");
    assert_eq!(total, 20);
    assert!(entries <= 2 * seconds + 2, "{entries}");
    // And the log still verifies.
    let (ok, out, err) = s.cli(&["audit", "verify"]);
    assert!(ok, "{out}{err}");
}

/// Found by the adversarial suite: an SVID issued before an agent was
/// revoked worked again once the agent was registered again, so a stolen
/// SVID outlived the revocation (and could be refreshed forever).
#[test]
fn an_svid_from_before_a_revocation_stays_dead_after_re_registration() {
    let s = Server::start();
    let old = s.enrol(IR);
    assert_eq!(s.post("/v1/tasks", Some(&old), &incident_task()).0, 201);
    s.admin_post("/v1/revocations", &json!({"agent": IR}));
    assert_eq!(s.post("/v1/tasks", Some(&old), &incident_task()).0, 403);
    // Registration happens in a later second than the old SVID's issue.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let reg = s.admin_post(
        "/v1/agents",
        &json!({"spiffe_id": IR, "owner": "alice@acme.test"}),
    );
    let (status, v) = s.post("/v1/tasks", Some(&old), &incident_task());
    assert_eq!(status, 401, "the old SVID opened a task: {v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("before agent"),
        "{v}"
    );
    let (status, v) = s.post("/v1/agents/svid", Some(&old), &json!({}));
    assert_eq!(status, 401, "the old SVID was refreshed: {v}");
    // The new registration's SVID works.
    let (status, v) = s.post(
        "/v1/agents/attest",
        None,
        &json!({"join_token": reg["join_token"]}),
    );
    assert_eq!(status, 200, "{v}");
    let new = v["svid"].as_str().unwrap();
    assert_eq!(s.post("/v1/tasks", Some(new), &incident_task()).0, 201);
}

/// Finding 12's class: an enforcement point, like an approver, could be
/// registered but never offboarded.
#[test]
fn peps_can_be_offboarded() {
    let s = Server::start();
    let (ok, out, err) = s.cli(&["pep", "add", "edge-gw"]);
    assert!(ok, "{err}");
    let key = printed_key(&out);
    let body = json!({"subject": {"type": "agent", "id": IR}, "action": {"name": "edr.read_alerts"},
                      "resource": {"type": "Host", "id": "web-1"}, "context": {"task_id": "task_none"}});
    assert_eq!(s.post("/access/v1/evaluation", Some(&key), &body).0, 200);
    let (ok, out, _) = s.cli(&["pep", "list"]);
    assert!(ok && out.contains("edge-gw"), "{out}");
    let (ok, _, err) = s.cli(&["pep", "remove", "edge-gw"]);
    assert!(ok, "{err}");
    // The key fails at once, and removing again is a 404 that changes nothing.
    let (status, v) = s.post("/access/v1/evaluation", Some(&key), &body);
    assert_eq!(status, 401, "{v}");
    let (ok, _, err) = s.cli(&["pep", "remove", "edge-gw"]);
    assert!(!ok && err.contains("404"), "{err}");
    assert_eq!(entries_of(&s, "pep.removed").len(), 1);
}

/// An orchestrator stops a replica with SIGTERM: the server stops accepting,
/// finishes, and exits cleanly (status 0) instead of being cut off.
#[cfg(unix)]
#[test]
fn sigterm_stops_the_server_cleanly() {
    let mut s = Server::start();
    assert_eq!(s.get("/livez", None).0, 200);
    let status = s.terminate(10).expect("the server exits after SIGTERM");
    assert!(status.success(), "exit status after SIGTERM: {status}");
}
