//! Tamper evidence end to end: tampering named precisely, nothing answered
//! lost to a crash, secrets never stored, results bound to decisions,
//! proofs that verify.

use crate::harness::*;
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;

/// Some history: a task with allowed, denied and approval-required decisions.
fn history(s: &Server) -> (String, String) {
    let svid = s.enrol(IR);
    let (task_id, cred) = s.open_task(&svid);
    for _ in 0..5 {
        s.authorize(&cred, "edr.read_alerts", host("web-1"));
        s.authorize(
            &cred,
            "logs.delete",
            json!({"type": "LogStream", "id": "auth"}),
        );
    }
    s.post("/v1/authorize", Some(&cred), &json!({"action": "iam.disable_account", "resource": {"type": "Account", "id": "jdoe"}, "intent": "x", "parameters": {"reason": "r"}}));
    (task_id, cred)
}

fn tamper(data: &Path, sql: &str) {
    let conn = rusqlite::Connection::open(data.join("tollgate.db")).unwrap();
    let n = conn.execute(sql, []).unwrap();
    assert!(n > 0, "tampering changed nothing: {sql}");
}

#[test]
fn tampering_with_the_database_is_detected_and_named() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let s = Server::start_with_config(&config_dir(tmp.path(), ""), &data);
    history(&s);
    let (_, cp) = s.get("/v1/audit/checkpoint", Some(&s.admin.clone()));
    let size = cp["checkpoint"]["tree_size"].as_u64().unwrap();
    assert!(size > 15, "{cp}");
    drop(s);

    let (ok, out) = verify_offline(&data);
    assert!(ok, "an untouched log failed: {out}");
    assert!(out.contains(&format!("ok: {size} entries")), "{out}");

    // An UPDATE of one entry's content.
    let edited = tmp.path().join("edited");
    copy_dir(&data, &edited);
    tamper(&edited, "UPDATE audit SET event = replace(event, '\"outcome\":\"deny\"', '\"outcome\":\"allow\"') WHERE seq = (SELECT min(seq) FROM audit WHERE event LIKE '%\"outcome\":\"deny\"%')");
    let victim: i64 = rusqlite::Connection::open(data.join("tollgate.db"))
        .unwrap()
        .query_row(
            "SELECT min(seq) FROM audit WHERE event LIKE '%\"outcome\":\"deny\"%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let (ok, out) = verify_offline(&edited);
    assert!(!ok);
    assert!(
        out.contains(&format!("entry {victim}: content does not match its hash")),
        "{out}"
    );

    // A DELETE of another.
    let deleted = tmp.path().join("deleted");
    copy_dir(&data, &deleted);
    tamper(&deleted, "DELETE FROM audit WHERE seq = 7");
    let (ok, out) = verify_offline(&deleted);
    assert!(!ok);
    assert!(out.contains("entry 8: sequence gap, expected 7"), "{out}");

    // Truncation behind the signed checkpoint.
    let truncated = tmp.path().join("truncated");
    copy_dir(&data, &truncated);
    tamper(
        &truncated,
        &format!("DELETE FROM audit WHERE seq > {}", size - 3),
    );
    let (ok, out) = verify_offline(&truncated);
    assert!(!ok);
    assert!(out.contains("truncated"), "{out}");

    // And the server refuses to append to a log that no longer matches what it signed.
    let mut child = Command::new(bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(&truncated)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut exited = None;
    for _ in 0..200 {
        if let Some(status) = child.try_wait().unwrap() {
            exited = Some(status);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50)); // another process; no clock to move
    }
    let Some(status) = exited else {
        child.kill().unwrap();
        panic!("the server started on a truncated audit log");
    };
    assert!(!status.success());
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(
        err.contains("truncated") && err.contains("refusing to start"),
        "{err}"
    );

    // A careful rewrite (content and every later hash recomputed) is caught
    // by the signed checkpoint, even if the stored checkpoints are deleted,
    // when the auditor kept one.
    let saved = tmp.path().join("cp.json");
    std::fs::write(&saved, cp.to_string()).unwrap();
    let rewritten = tmp.path().join("rewritten");
    copy_dir(&data, &rewritten);
    {
        let conn = rusqlite::Connection::open(rewritten.join("tollgate.db")).unwrap();
        let mut rows: Vec<(i64, String, String)> = {
            let mut st = conn
                .prepare("SELECT seq, prev_hash, event FROM audit ORDER BY seq")
                .unwrap();
            st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .unwrap()
                .map(Result::unwrap)
                .collect()
        };
        let mut prev = [0u8; 32];
        for (seq, _, event) in rows.iter_mut() {
            let mut ev: tollgate_audit::AuditEvent = serde_json::from_str(event).unwrap();
            if *seq == 10 {
                ev.actor = "someone-else".into();
            }
            let e = tollgate_audit::chain(*seq as u64, prev, ev);
            conn.execute(
                "UPDATE audit SET prev_hash = ?2, hash = ?3, event = ?4 WHERE seq = ?1",
                rusqlite::params![
                    *seq,
                    hex::encode(e.prev_hash),
                    hex::encode(e.hash),
                    serde_json::to_string(&e.event).unwrap()
                ],
            )
            .unwrap();
            prev = e.hash;
        }
        conn.execute("DELETE FROM checkpoints", []).unwrap();
    }
    let out = Command::new(bin())
        .args(["audit", "verify", "--data"])
        .arg(&rewritten)
        .arg("--checkpoint")
        .arg(&saved)
        .env_remove("TOLLGATE_DATA")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a consistent rewrite went unnoticed");
    assert!(text.contains("were rewritten"), "{text}");
}

#[test]
fn a_crash_loses_no_answered_decision() {
    let s = Server::start();
    let svid = s.enrol(IR);
    let (_, cred) = s.open_task(&svid);
    let (url, c) = (s.url("/v1/authorize"), cred.clone());
    let client = std::thread::spawn(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut answered = Vec::new();
        for _ in 0..100_000 {
            let r = agent
                .post(&url)
                .header("authorization", &format!("Bearer {c}"))
                .send_json(json!({"action": "edr.read_alerts", "resource": {"type": "Host", "id": "web-1"}, "intent": "crash test"}));
            match r {
                Ok(mut resp) => match resp.body_mut().read_json::<Value>() {
                    Ok(v) if v["request_id"].is_string() => {
                        answered.push(v["request_id"].as_str().unwrap().to_string())
                    }
                    _ => break,
                },
                Err(_) => break,
            }
        }
        answered
    });
    // Let decisions flow, then kill -9 mid-stream.
    let mut seen = 0;
    for _ in 0..200 {
        std::thread::sleep(std::time::Duration::from_millis(25));
        seen = s
            .audit("")
            .iter()
            .filter(|e| e["event"]["kind"] == "decision")
            .count();
        if seen >= 50 {
            break;
        }
    }
    assert!(seen >= 50, "too few decisions before the crash");
    let s = s.restart();
    let answered = client.join().unwrap();
    assert!(answered.len() >= 50);
    let admin = s.admin.clone();
    for id in &answered {
        let (_, v) = s.get(&format!("/v1/audit?request={id}"), Some(&admin));
        let kinds: Vec<&str> = v["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["event"]["kind"].as_str().unwrap())
            .collect();
        assert_eq!(
            kinds,
            ["decision"],
            "answered decision {id} has no audit entry after the crash"
        );
    }
    let (ok, out, err) = s.cli(&["audit", "verify"]);
    assert!(ok, "{out}{err}");
}

#[test]
fn secrets_never_reach_the_database_or_exports() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let s = Server::start_with_config(&config_dir(tmp.path(), ""), &data);
    let bob = s.approver("bob@acme.test", "secops");
    let carol = s.approver("carol@acme.test", "secops");
    let svid = s.enrol(IR);
    let (_, cred) = s.open_task(&svid);
    let secret = "hunter2-Zq8v-NEW-DB-PASSWORD";
    let ask = json!({"action": "vault.rotate_secret", "resource": {"type": "Secret", "id": "prod-db"}, "intent": "rotate", "parameters": {"new_value": secret}});
    let (_, d) = s.post("/v1/authorize", Some(&cred), &ask);
    let id = d["approval_id"].as_str().unwrap().to_string();
    // The approver sees the keyed hash, not the value.
    let (_, list) = s.get("/v1/approvals", Some(&bob));
    let shown = list["approvals"][0]["request"]["parameters"]["new_value"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(shown.starts_with("hmac-sha256:"), "{shown}");
    for k in [&bob, &carol] {
        s.post(
            &format!("/v1/approvals/{id}/decision"),
            Some(k),
            &json!({"approve": true, "reason": "ok"}),
        );
    }
    let mut retry = ask.clone();
    retry["approval_id"] = json!(id);
    assert_eq!(
        s.post("/v1/authorize", Some(&cred), &retry).1["decision"],
        "allow",
        "the hash must still bind the approval"
    );
    // A wrong secret does not match the approval.
    let mut wrong = retry.clone();
    wrong["parameters"]["new_value"] = json!("another");
    assert_eq!(
        s.post("/v1/authorize", Some(&cred), &wrong).1["decision"],
        "deny"
    );
    // A type error must not echo the secret into the log either.
    s.post("/v1/authorize", Some(&cred), &json!({"action": "vault.rotate_secret", "resource": {"type": "Secret", "id": "prod-db"}, "intent": "x", "parameters": {"new_value": secret, "window_minutes": secret}}));

    // An auditor with the key can check a known value.
    let (ok, hashed, _) = s.cli(&["audit", "hash", secret]);
    assert!(ok);
    assert_eq!(hashed.trim(), shown);
    let (ok, export, _) = s.cli(&["audit", "export"]);
    assert!(ok);
    let (ok, ocsf, _) = s.cli(&["audit", "export", "--format", "ocsf"]);
    assert!(ok);
    assert!(export.contains(&shown));
    drop(s);
    for text in [export, ocsf] {
        assert!(!text.contains(secret), "the secret leaked into an export");
    }
    for f in std::fs::read_dir(&data).unwrap() {
        let bytes = std::fs::read(f.unwrap().path()).unwrap();
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "the secret is stored in clear"
        );
    }
}

#[test]
fn action_results_are_bound_to_allowing_decisions() {
    let s = Server::start();
    let svid = s.enrol(IR);
    let (task_id, cred) = s.open_task(&svid);
    let (_, other) = s.open_task(&svid);
    s.post(&format!("/v1/tasks/{task_id}/evidence"), Some(&cred), &json!({"resource": host("web-1"), "kind": "memory", "sha256": tollgate_core::sha256_hex(b"m")}));
    let (_, allowed) = s.authorize(&cred, "edr.isolate_host", host("web-1"));
    assert_eq!(allowed["decision"], "allow");
    let (_, denied) = s.authorize(
        &cred,
        "logs.delete",
        json!({"type": "LogStream", "id": "auth"}),
    );
    let result = |c: &str, req: &Value| {
        s.post(&format!("/v1/actions/{}/result", req["request_id"].as_str().unwrap()), Some(c), &json!({
        "status": "succeeded", "command": "edr isolate --host web-1 --keep-edr", "output_digest": tollgate_core::sha256_hex(b"isolated"),
    }))
    };
    assert_eq!(
        result(&cred, &denied).0,
        409,
        "a result for a denied action was accepted"
    );
    assert_eq!(
        result(&other, &allowed).0,
        409,
        "another task recorded a result for this decision"
    );
    assert_eq!(result(&cred, &allowed).0, 204);
    assert_eq!(
        result(&cred, &allowed).0,
        409,
        "two results for one decision"
    );
    let (_, v) = s.get(
        &format!(
            "/v1/audit?request={}",
            allowed["request_id"].as_str().unwrap()
        ),
        Some(&s.admin.clone()),
    );
    let entries = v["entries"].as_array().unwrap();
    let kinds: Vec<&str> = entries
        .iter()
        .map(|e| e["event"]["kind"].as_str().unwrap())
        .collect();
    // The other task's attempt and the duplicate are on the record too.
    assert_eq!(
        kinds,
        [
            "decision",
            "action.result_refused",
            "action.result",
            "action.result_refused"
        ]
    );
    let r = &entries[2]["event"];
    assert_eq!(
        (r["kind"].as_str(), r["outcome"].as_str()),
        (Some("action.result"), Some("succeeded"))
    );
    assert_eq!(
        r["detail"]["command"],
        "edr isolate --host web-1 --keep-edr"
    );
    assert_eq!(r["detail"]["compensation"]["action"], "edr.release_host");
    assert_eq!(r["detail"]["compensation"]["resource"], "Host::web-1");
    let refused = s
        .audit("")
        .iter()
        .filter(|e| e["event"]["kind"] == "action.result_refused")
        .count();
    assert_eq!(refused, 3);
    // The timeline tells the story.
    let (ok, story, _) = s.cli(&["audit", "timeline", "--incident", "INC-4711"]);
    assert!(ok);
    assert!(story.contains("executed `edr isolate --host web-1 --keep-edr` for edr.isolate_host on Host::web-1 -> succeeded"), "{story}");
    assert!(
        story.contains("asked to logs.delete LogStream::auth") && story.contains("-> deny"),
        "{story}"
    );
}

#[test]
fn inclusion_and_consistency_proofs_verify() {
    use tollgate_audit::merkle;
    let s = Server::start();
    history(&s);
    let admin = s.admin.clone();
    let (_, first) = s.get("/v1/audit/checkpoint", Some(&admin));
    let m = first["checkpoint"]["tree_size"].as_u64().unwrap();
    history(&s);
    let (_, second) = s.get("/v1/audit/checkpoint", Some(&admin));
    let n = second["checkpoint"]["tree_size"].as_u64().unwrap();
    assert!(n > m);
    let h = |v: &Value| -> [u8; 32] {
        hex::decode(v.as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap()
    };
    for seq in [1, m / 2, m, n] {
        let (_, p) = s.get(&format!("/v1/audit/proof/{seq}"), Some(&admin));
        let path: Vec<[u8; 32]> = p["audit_path"].as_array().unwrap().iter().map(h).collect();
        assert_eq!(p["root_hash"], second["checkpoint"]["root_hash"]);
        assert!(
            merkle::verify_inclusion(seq - 1, n, &h(&p["leaf_hash"]), &path, &h(&p["root_hash"])),
            "seq {seq}"
        );
        assert!(
            !merkle::verify_inclusion(seq % n, n, &h(&p["leaf_hash"]), &path, &h(&p["root_hash"]))
                || n == 1
        );
    }
    let (_, c) = s.get(
        &format!("/v1/audit/consistency?first={m}&second={n}"),
        Some(&admin),
    );
    let proof: Vec<[u8; 32]> = c["proof"].as_array().unwrap().iter().map(h).collect();
    assert!(merkle::verify_consistency(
        m,
        n,
        &h(&first["checkpoint"]["root_hash"]),
        &h(&second["checkpoint"]["root_hash"]),
        &proof
    ));
    // The signed checkpoint verifies with the published key.
    let key = ed25519_dalek::VerifyingKey::from_bytes(&h(&second["public_key"])).unwrap();
    let cp: tollgate_audit::checkpoint::Checkpoint =
        serde_json::from_value(second["checkpoint"].clone()).unwrap();
    cp.verify(&key).unwrap();
}
