//! Human approval gates: reference scenario steps 4 and 5, separation of
//! duties, deny threshold, single use under concurrency, webhooks, OIDC
//! approvers and the AuthZEN requestable denial.

use crate::harness::*;
use serde_json::{json, Value};

fn disable_jdoe(reason: &str) -> Value {
    json!({
        "action": "iam.disable_account", "resource": {"type": "Account", "id": "jdoe"},
        "intent": "jdoe's session launched the beacon", "parameters": {"reason": reason},
    })
}

fn rotate_db() -> Value {
    json!({"action": "vault.rotate_secret", "resource": {"type": "Secret", "id": "prod-db"}, "intent": "the beacon read the db password"})
}

fn with_approval(mut body: Value, id: &str) -> Value {
    body["approval_id"] = json!(id);
    body
}

#[test]
fn step_4_one_approval_allows_exactly_one_identical_request() {
    let s = Server::start();
    let ident = s.approver("ivan@acme.test", "identity");
    let svid = s.enrol(IR);
    let (task_id, cred) = s.open_task(&svid);
    let (_, other_cred) = s.open_task(&svid);

    let (_, d) = s.post("/v1/authorize", Some(&cred), &disable_jdoe("compromised"));
    assert_eq!(d["decision"], "approval_required", "{d}");
    assert_eq!(d["approval_status"], "pending");
    let id = d["approval_id"].as_str().unwrap().to_string();
    // Asking again for the same request finds the same pending approval.
    let (_, again) = s.post("/v1/authorize", Some(&cred), &disable_jdoe("compromised"));
    assert_eq!(again["approval_id"], id.as_str());

    // The approver sees what they need to decide.
    let (ok, out, err) = s.cli_as(&ident, &["approvals", "list"]);
    assert!(ok, "{err}");
    assert!(
        out.contains(&id)
            && out.contains("iam.disable_account on Account::jdoe")
            && out.contains("jdoe's session launched the beacon"),
        "{out}"
    );
    assert!(out.contains("modifies-identity"), "{out}");
    let (_, listed) = s.get("/v1/approvals?status=pending", Some(&ident));
    let item = &listed["approvals"][0];
    assert_eq!(item["request"]["parameters"]["reason"], "compromised");
    assert_eq!(item["tier"], "change");
    assert_eq!(item["chain"].as_array().unwrap().len(), 2, "{item}");

    // The agent long-polls while the approver approves.
    let poll = {
        let (url, cred, id) = (s.url(""), cred.clone(), id.clone());
        std::thread::spawn(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .build()
                .into();
            let started = std::time::Instant::now();
            let mut resp = agent
                .get(&format!("{url}/v1/approvals/{id}?wait=20"))
                .header("authorization", &format!("Bearer {cred}"))
                .call()
                .unwrap();
            let v: Value = resp.body_mut().read_json().unwrap();
            (v, started.elapsed())
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(300)); // let the poll start waiting
    let (ok, out, err) = s.cli_as(
        &ident,
        &[
            "approvals",
            "approve",
            &id,
            "--reason",
            "confirmed with the user's manager",
        ],
    );
    assert!(ok, "{err}");
    assert!(out.contains("now approved"), "{out}");
    let (polled, waited) = poll.join().unwrap();
    assert_eq!(polled["status"], "approved", "{polled}");
    assert!(
        waited < std::time::Duration::from_secs(10),
        "the long-poll did not return on approval ({waited:?})"
    );

    // A changed parameter, another task, or a missing approval id: refused.
    let (_, changed) = s.post(
        "/v1/authorize",
        Some(&cred),
        &with_approval(disable_jdoe("bored"), &id),
    );
    assert_eq!(changed["decision"], "deny", "{changed}");
    let (_, other_task) = s.post(
        "/v1/authorize",
        Some(&other_cred),
        &with_approval(disable_jdoe("compromised"), &id),
    );
    assert_eq!(other_task["decision"], "deny", "{other_task}");
    let (_, other_resource) = s.post("/v1/authorize", Some(&cred), &with_approval(json!({
        "action": "iam.disable_account", "resource": {"type": "Account", "id": "root"}, "intent": "x", "parameters": {"reason": "compromised"},
    }), &id));
    assert_eq!(other_resource["decision"], "deny");
    // The exact request: allowed, once.
    let (_, used) = s.post(
        "/v1/authorize",
        Some(&cred),
        &with_approval(disable_jdoe("compromised"), &id),
    );
    assert_eq!(used["decision"], "allow", "{used}");
    assert!(
        used["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "approved by ivan@acme.test"),
        "{used}"
    );
    let (_, replay) = s.post(
        "/v1/authorize",
        Some(&cred),
        &with_approval(disable_jdoe("compromised"), &id),
    );
    assert_eq!(replay["decision"], "deny", "a replay was allowed: {replay}");
    let (_, shown) = s.get(&format!("/v1/approvals/{id}"), Some(&cred));
    assert_eq!(
        (shown["status"].as_str(), shown["used_by"].as_str()),
        (Some("used"), used["request_id"].as_str())
    );

    // Every step is audited with the approval id and the request hash.
    let entries = s.audit(&format!("task={task_id}"));
    let kinds: Vec<&str> = entries
        .iter()
        .map(|e| e["event"]["kind"].as_str().unwrap())
        .collect();
    for k in [
        "approval.created",
        "approval.vote",
        "approval.decided",
        "approval.used",
        "approval.refused",
    ] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }
    let hash = shown["request_hash"].as_str().unwrap();
    for e in entries.iter().filter(|e| {
        e["event"]["kind"]
            .as_str()
            .unwrap()
            .starts_with("approval.")
            && e["event"]["kind"] != "approval.refused"
    }) {
        assert_eq!(e["event"]["detail"]["approval_id"], id.as_str());
        assert_eq!(e["event"]["detail"]["request_hash"], hash);
    }
    let refusals = entries
        .iter()
        .filter(|e| e["event"]["kind"] == "approval.refused")
        .count();
    assert_eq!(refusals, 3, "changed parameter, other resource and replay (the other task's refusal is on its own task)");
}

#[test]
fn step_5_destructive_needs_two_distinct_approvers() {
    let s = Server::start();
    let bob = s.approver("bob@acme.test", "secops");
    let carol = s.approver("carol@acme.test", "secops");
    let svid = s.enrol(IR);
    let (_, cred) = s.open_task(&svid);
    let (_, d) = s.post("/v1/authorize", Some(&cred), &rotate_db());
    assert_eq!(
        (d["decision"].as_str(), d["approvals_required"].as_u64()),
        (Some("approval_required"), Some(2))
    );
    let id = d["approval_id"].as_str().unwrap().to_string();
    let vote = |key: &str| {
        s.post(
            &format!("/v1/approvals/{id}/decision"),
            Some(key),
            &json!({"approve": true, "reason": "rotation is the fix"}),
        )
    };
    let (status, v) = vote(&bob);
    assert_eq!(
        (status, v["status"].as_str(), v["approvals"].as_u64()),
        (200, Some("pending"), Some(1))
    );
    // The same person twice counts once.
    let (status, v) = vote(&bob);
    assert_eq!(status, 409, "{v}");
    let (_, still) = s.post(
        "/v1/authorize",
        Some(&cred),
        &with_approval(rotate_db(), &id),
    );
    assert_eq!(
        still["decision"], "deny",
        "one approver was enough: {still}"
    );
    let (status, v) = vote(&carol);
    assert_eq!(
        (status, v["status"].as_str()),
        (200, Some("approved")),
        "{v}"
    );
    let (_, used) = s.post(
        "/v1/authorize",
        Some(&cred),
        &with_approval(rotate_db(), &id),
    );
    assert_eq!(used["decision"], "allow", "{used}");
}

#[test]
fn separation_of_duties_and_approve_policy() {
    let s = Server::start();
    // alice@acme.test owns the agent (see Server::enrol).
    let owner = s.approver("alice@acme.test", "secops-lead");
    let secops = s.approver("bob@acme.test", "secops");
    let svid = s.enrol(IR);
    let (_, cred) = s.open_task(&svid);
    let (_, d) = s.post("/v1/authorize", Some(&cred), &disable_jdoe("compromised"));
    let id = d["approval_id"].as_str().unwrap().to_string();
    let body = json!({"approve": true, "reason": "lgtm"});
    let path = format!("/v1/approvals/{id}/decision");
    // The agent itself, with its credential or its SVID: not an approver at all.
    assert_eq!(s.post(&path, Some(&cred), &body).0, 401);
    assert_eq!(s.post(&path, Some(&svid), &body).0, 401);
    // Nor the admin: can-execute and can-decide stay apart.
    assert_eq!(s.post(&path, Some(&s.admin.clone()), &body).0, 401);
    // The agent's owner may not approve its requests.
    let (status, v) = s.post(&path, Some(&owner), &body);
    assert_eq!(status, 403, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("owns the requesting agent"),
        "{v}"
    );
    // Policy: identity changes are for the identity team, not secops.
    let (status, v) = s.post(&path, Some(&secops), &body);
    assert_eq!(status, 403, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("may not decide"),
        "{v}"
    );
    // An approver name cannot be a SPIFFE ID.
    let (status, _) = s.post(
        "/v1/approvers",
        Some(&s.admin.clone()),
        &json!({"name": IR, "role": "secops"}),
    );
    assert_eq!(status, 400);
    let (_, shown) = s.get(&format!("/v1/approvals/{id}"), Some(&secops));
    assert_eq!(
        (
            shown["status"].as_str(),
            shown["votes"].as_array().unwrap().len()
        ),
        (Some("pending"), 0)
    );
    let refused = s
        .audit("")
        .iter()
        .filter(|e| e["event"]["kind"] == "approval.vote_refused")
        .count();
    assert_eq!(refused, 2);
}

#[test]
fn one_eligible_denial_ends_the_request() {
    let s = Server::start();
    let bob = s.approver("bob@acme.test", "secops");
    let svid = s.enrol(IR);
    let (_, cred) = s.open_task(&svid);
    let (_, d) = s.post("/v1/authorize", Some(&cred), &rotate_db());
    let id = d["approval_id"].as_str().unwrap().to_string();
    let (ok, out, err) = s.cli_as(
        &bob,
        &[
            "approvals",
            "deny",
            &id,
            "--reason",
            "rotate after the forensic image",
        ],
    );
    assert!(ok, "{err}");
    assert!(out.contains("now denied"), "{out}");
    let (_, used) = s.post(
        "/v1/authorize",
        Some(&cred),
        &with_approval(rotate_db(), &id),
    );
    assert_eq!(used["decision"], "deny");
    let (status, _) = s.post(
        &format!("/v1/approvals/{id}/decision"),
        Some(&bob),
        &json!({"approve": true, "reason": "changed my mind"}),
    );
    assert_eq!(status, 409);
    // Asking again opens a fresh approval.
    let (_, again) = s.post("/v1/authorize", Some(&cred), &rotate_db());
    assert_ne!(again["approval_id"], id.as_str());
}

#[test]
fn two_simultaneous_uses_of_one_approval_allow_exactly_one() {
    let s = Server::start();
    let ident = s.approver("ivan@acme.test", "identity");
    let svid = s.enrol(IR);
    let (_, cred) = s.open_task(&svid);
    // Three rounds: nine losing uses stay under the retry-storm chain rule.
    for round in 0..3 {
        let reason = format!("compromised-{round}");
        let (_, d) = s.post("/v1/authorize", Some(&cred), &disable_jdoe(&reason));
        let id = d["approval_id"].as_str().unwrap().to_string();
        let (status, _) = s.post(
            &format!("/v1/approvals/{id}/decision"),
            Some(&ident),
            &json!({"approve": true, "reason": "ok"}),
        );
        assert_eq!(status, 200);
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(4));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let (url, cred, body, barrier) = (
                    s.url("/v1/authorize"),
                    cred.clone(),
                    with_approval(disable_jdoe(&reason), &id),
                    barrier.clone(),
                );
                std::thread::spawn(move || {
                    let agent: ureq::Agent = ureq::Agent::config_builder()
                        .http_status_as_error(false)
                        .build()
                        .into();
                    barrier.wait();
                    let mut r = agent
                        .post(&url)
                        .header("authorization", &format!("Bearer {cred}"))
                        .send_json(body)
                        .unwrap();
                    r.body_mut().read_json::<Value>().unwrap()["decision"]
                        .as_str()
                        .unwrap()
                        .to_string()
                })
            })
            .collect();
        let outcomes: Vec<String> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(
            outcomes.iter().filter(|o| *o == "allow").count(),
            1,
            "round {round}: {outcomes:?}"
        );
    }
}

#[test]
fn webhooks_see_created_and_decided_approvals() {
    let tmp = tempfile::tempdir().unwrap();
    let hook = receiver();
    let slack = receiver();
    let config = config_dir(
        tmp.path(),
        &format!("webhooks:\n  - name: test\n    url: {}\n  - name: chat\n    url: {}\n    format: slack\n    events: [approval.decided]\n", hook.url, slack.url),
    );
    let s = Server::start_with_config(&config, &tmp.path().join("data"));
    let bob = s.approver("bob@acme.test", "secops");
    let svid = s.enrol(IR);
    let (_, cred) = s.open_task(&svid);
    let (_, d) = s.post("/v1/authorize", Some(&cred), &rotate_db());
    let id = d["approval_id"].as_str().unwrap();
    let created = hook.next();
    assert_eq!(
        (
            created["event"].as_str(),
            created["approval"]["id"].as_str()
        ),
        (Some("approval.created"), Some(id))
    );
    assert_eq!(created["approval"]["action"], "vault.rotate_secret");
    s.post(
        &format!("/v1/approvals/{id}/decision"),
        Some(&bob),
        &json!({"approve": false, "reason": "not yet"}),
    );
    let decided = hook.next();
    assert_eq!(
        (
            decided["event"].as_str(),
            decided["approval"]["status"].as_str()
        ),
        (Some("approval.decided"), Some("denied"))
    );
    let text = slack.next()["text"].as_str().unwrap().to_string();
    assert!(
        text.contains("approval.decided") && text.contains(id) && text.contains("denied"),
        "{text}"
    );
}

#[test]
fn webhook_failures_block_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    // Nothing listens on port 9 of loopback: every delivery fails.
    let config = config_dir(
        tmp.path(),
        "webhooks:\n  - name: dead\n    url: http://127.0.0.1:9/hook\n",
    );
    let s = Server::start_with_config(&config, &tmp.path().join("data"));
    let ivan = s.approver("ivan@acme.test", "identity");
    let svid = s.enrol(IR);
    let (_, cred) = s.open_task(&svid);
    let (_, d) = s.post("/v1/authorize", Some(&cred), &disable_jdoe("x"));
    let id = d["approval_id"].as_str().unwrap();
    let (status, _) = s.post(
        &format!("/v1/approvals/{id}/decision"),
        Some(&ivan),
        &json!({"approve": true, "reason": "ok"}),
    );
    assert_eq!(status, 200);
    assert_eq!(
        s.post(
            "/v1/authorize",
            Some(&cred),
            &with_approval(disable_jdoe("x"), id)
        )
        .1["decision"],
        "allow"
    );
    // The failures end up audited (after retries with backoff).
    let mut failed = 0;
    for _ in 0..100 {
        failed = s
            .audit("")
            .iter()
            .filter(|e| e["event"]["kind"] == "webhook.failed")
            .count();
        if failed >= 2 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100)); // background retries: real time passes
    }
    assert_eq!(
        failed, 2,
        "created and decided deliveries should each fail once, audited"
    );
}

#[test]
fn oidc_approvers_and_the_authzen_requestable_denial() {
    let tmp = tempfile::tempdir().unwrap();
    let (idp, der) = tollgate_identity::SigningKeyPair::generate().unwrap();
    let config = config_dir(
        tmp.path(),
        "approver_oidc:\n  issuer: https://login.acme.test\n  audience: tollgate\n  jwks_file: oidc.json\n",
    );
    std::fs::write(
        config.join("oidc.json"),
        json!({"keys": [idp.public_jwk()]}).to_string(),
    )
    .unwrap();
    let s = Server::start_with_config(&config, &tmp.path().join("data"));
    let svid = s.enrol(IR);
    let (task_id, _) = s.open_task(&svid);
    let (ok, out, _) = s.cli(&["pep", "add", "iam-proxy"]);
    assert!(ok);
    let pep = out
        .lines()
        .find_map(|l| l.strip_prefix("key:"))
        .unwrap()
        .trim()
        .to_string();
    let eval =
        |approval: Option<&str>| {
            let mut ctx = json!({"task_id": task_id, "parameters": {"reason": "compromised"}});
            if let Some(a) = approval {
                ctx["approval"] = json!({"id": a});
            }
            s.post("/access/v1/evaluation", Some(&pep), &json!({
            "subject": {"type": "agent", "id": IR}, "action": {"name": "iam.disable_account"},
            "resource": {"type": "Account", "id": "jdoe"}, "context": ctx,
        }))
        .1
        };
    let denied = eval(None);
    assert_eq!(denied["decision"], false);
    assert_eq!(denied["context"]["reason"], "approval_required");
    let handle = denied["context"]["access_request"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        denied["context"]["access_request"]["status_endpoint"],
        format!("/v1/approvals/{handle}")
    );

    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    h.kid = Some(idp.kid().to_string());
    let id_token = |role: &str, iss: &str| {
        jsonwebtoken::encode(&h, &json!({
        "iss": iss, "aud": "tollgate", "sub": "00u1", "email": "ivan@acme.test", "tollgate_role": role, "exp": now() + 300,
    }), &jsonwebtoken::EncodingKey::from_ed_der(&der)).unwrap()
    };
    let path = format!("/v1/approvals/{handle}/decision");
    let body = json!({"approve": true, "reason": "verified by phone"});
    assert_eq!(
        s.post(
            &path,
            Some(&id_token("identity", "https://evil.test")),
            &body
        )
        .0,
        401
    );
    assert_eq!(
        s.post(
            &path,
            Some(&id_token("secops", "https://login.acme.test")),
            &body
        )
        .0,
        403
    );
    let (status, v) = s.post(
        &path,
        Some(&id_token("identity", "https://login.acme.test")),
        &body,
    );
    assert_eq!(
        (status, v["status"].as_str()),
        (200, Some("approved")),
        "{v}"
    );
    assert_eq!(v["votes"][0]["approver"], "ivan@acme.test");

    let allowed = eval(Some(&handle));
    assert_eq!(allowed["decision"], true, "{allowed}");
    assert_eq!(
        eval(Some(&handle))["decision"],
        false,
        "an approval was used twice over AuthZEN"
    );
    let votes: Vec<Value> = s
        .audit("")
        .into_iter()
        .filter(|e| e["event"]["kind"] == "approval.vote")
        .collect();
    assert_eq!(votes[0]["event"]["detail"]["via"], "oidc");
}
