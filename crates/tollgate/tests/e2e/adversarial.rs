//! Adversarial end-to-end suite: forged and misused tokens, join-token and
//! registration abuse, approval forgery and replay, delegation escalation,
//! hostile input, crashes, broken policy reloads, the kill switch and
//! revocation. Every case asserts the exact fail-closed answer (status,
//! error code or `deny`) and that nothing changed. Cases are table-driven,
//! many per server, each named in its assertion message.

use crate::harness::*;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::process::Command;
use std::time::Duration;

const TASK_TYP: &str = "tollgate-task+jwt";
const FORENSICS: &str = "spiffe://acme.test/agent/forensics/i-2";
const GHOST: &str = "spiffe://acme.test/agent/ir-responder/ghost";

// ---------------------------------------------------------------- helpers

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn b64_json(v: &Value) -> String {
    b64(v.to_string().as_bytes())
}

/// The decoded payload (claims) of a JWT, without any verification.
fn payload(token: &str) -> Value {
    let part = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

/// `token` with its payload edited and its original signature kept.
fn edit_payload(token: &str, f: impl FnOnce(&mut Value)) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    let mut claims = payload(token);
    f(&mut claims);
    format!("{}.{}.{}", parts[0], b64_json(&claims), parts[2])
}

/// Sign `claims` with an Ed25519 PKCS#8 key and the given `kid` and `typ`.
fn sign_ed(der: &[u8], kid: Option<&str>, typ: Option<&str>, claims: &Value) -> String {
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    h.kid = kid.map(str::to_string);
    h.typ = typ.map(str::to_string);
    jsonwebtoken::encode(&h, claims, &jsonwebtoken::EncodingKey::from_ed_der(der)).unwrap()
}

/// HS256 keyed with `secret` (the algorithm-confusion attack when the
/// secret is the server's public key).
fn sign_hs256(secret: &[u8], kid: &str, typ: &str, claims: &Value) -> String {
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    h.kid = Some(kid.to_string());
    h.typ = Some(typ.to_string());
    jsonwebtoken::encode(&h, claims, &jsonwebtoken::EncodingKey::from_secret(secret)).unwrap()
}

/// The server's issuer key (PKCS#8 DER), its kid and its public `x`.
fn server_key(s: &Server) -> (Vec<u8>, String, String) {
    let der = std::fs::read(s.data.join("issuer-key.der")).unwrap();
    let (_, jwks) = s.get("/.well-known/jwks.json", None);
    (
        der,
        jwks["keys"][0]["kid"].as_str().unwrap().to_string(),
        jwks["keys"][0]["x"].as_str().unwrap().to_string(),
    )
}

/// One HTTP/1.1 exchange over a raw socket, with exactly the headers given
/// (plus host, connection and content-length), so that malformed or absent
/// headers can be sent. Written from another thread: the server may answer
/// and close before it has read everything.
fn raw(
    s: &Server,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> (u16, Value) {
    let hostport = s.addr.trim_start_matches("http://").to_string();
    let stream = std::net::TcpStream::connect(&hostport).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {hostport}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    let mut w = stream.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(&bytes);
    });
    let mut resp = Vec::new();
    let mut r = stream;
    // A reset after the answer ends the read; what came before is kept.
    let _ = r.read_to_end(&mut resp);
    let _ = writer.join();
    parse_response(&resp)
}

fn parse_response(resp: &[u8]) -> (u16, Value) {
    let Some(split) = resp.windows(4).position(|w| w == b"\r\n\r\n") else {
        return (0, Value::Null);
    };
    let head = String::from_utf8_lossy(&resp[..split]).to_string();
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let mut body = resp[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = Vec::new();
        let mut rest = &body[..];
        while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
            let n = usize::from_str_radix(String::from_utf8_lossy(&rest[..eol]).trim(), 16)
                .unwrap_or(0);
            if n == 0 || rest.len() < eol + 2 + n {
                break;
            }
            out.extend_from_slice(&rest[eol + 2..eol + 2 + n]);
            rest = &rest[(eol + 4 + n).min(rest.len())..];
        }
        body = out;
    }
    let text = String::from_utf8_lossy(&body).to_string();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn bearer(token: &str) -> Vec<(&'static str, String)> {
    vec![("authorization", format!("Bearer {token}"))]
}

/// The exact error answer: status, `error.code`, and a message.
#[track_caller]
fn expect_error(case: &str, got: &(u16, Value), status: u16, code: &str) {
    let (st, v) = got;
    assert_eq!(*st, status, "{case}: wrong status; body {v}");
    assert_eq!(
        v["error"]["code"].as_str(),
        Some(code),
        "{case}: wrong error code; body {v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.trim().is_empty()),
        "{case}: error without a message: {v}"
    );
}

/// A denial (200, `decision: deny`); returns its request id.
#[track_caller]
fn expect_deny(case: &str, got: &(u16, Value)) -> String {
    let (st, v) = got;
    assert_eq!(*st, 200, "{case}: wrong status; body {v}");
    assert_eq!(v["decision"], "deny", "{case}: not denied: {v}");
    v["request_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{case}: denial without a request id: {v}"))
        .to_string()
}

/// A refusal that carries the decision (403 with `decision: deny`).
#[track_caller]
fn expect_refused_decision(case: &str, got: &(u16, Value), code: &str) {
    expect_error(case, got, 403, code);
    assert_eq!(got.1["decision"], "deny", "{case}: {}", got.1);
}

/// Every audit entry, paged.
fn audit_all(s: &Server) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let (status, v) = s.get(
            &format!("/v1/audit?limit=1000&after={after}"),
            Some(s.admin.as_str()),
        );
        assert_eq!(status, 200, "{v}");
        out.extend(v["entries"].as_array().unwrap().iter().cloned());
        match v["next_after"].as_u64() {
            Some(n) => after = n,
            None => return out,
        }
    }
}

fn count(entries: &[Value], kind: &str) -> usize {
    entries
        .iter()
        .filter(|e| e["event"]["kind"] == kind)
        .count()
}

fn count_outcome(entries: &[Value], kind: &str, outcome: &str) -> usize {
    entries
        .iter()
        .filter(|e| e["event"]["kind"] == kind && e["event"]["outcome"] == outcome)
        .count()
}

fn task_count(s: &Server) -> usize {
    let (status, v) = s.get("/v1/tasks?limit=1000", Some(s.admin.as_str()));
    assert_eq!(status, 200, "{v}");
    v.as_array().unwrap().len()
}

fn pep_key(s: &Server, name: &str) -> String {
    s.admin_post("/v1/peps", &json!({"name": name}))["key"]
        .as_str()
        .unwrap()
        .to_string()
}

fn approver_key(s: &Server, name: &str, role: &str) -> String {
    s.admin_post("/v1/approvers", &json!({"name": name, "role": role}))["key"]
        .as_str()
        .unwrap()
        .to_string()
}

fn open_task_with(s: &Server, svid: &str, playbook: &str) -> (String, String) {
    let mut body = incident_task();
    body["playbook"] = json!(playbook);
    let (status, v) = s.post("/v1/tasks", Some(svid), &body);
    assert_eq!(status, 201, "{v}");
    (
        v["task_id"].as_str().unwrap().to_string(),
        v["credential"].as_str().unwrap().to_string(),
    )
}

fn delegate(s: &Server, cred: &str, task_id: &str, body: &Value) -> (u16, Value) {
    s.post(&format!("/v1/tasks/{task_id}/delegate"), Some(cred), body)
}

fn image(agent: &str, resource: &str, ttl: i64) -> Value {
    json!({"agent": agent, "actions": ["forensics.image_host"], "resources": [resource], "ttl_seconds": ttl, "intent": "collect a forensic image"})
}

fn disable(reason: &str) -> Value {
    json!({"action": "iam.disable_account", "resource": {"type": "Account", "id": "jdoe"},
           "intent": "jdoe's session launched the beacon", "parameters": {"reason": reason}})
}

fn with_approval(mut body: Value, id: &str) -> Value {
    body["approval_id"] = json!(id);
    body
}

fn read_alerts() -> Value {
    json!({"action": "edr.read_alerts", "resource": host("web-1"), "intent": "look"})
}

// ------------------------------------------------------------------ tokens

#[test]
fn forged_and_misused_task_credentials_are_refused() {
    let s = Server::start();
    let svid = s.enrol(IR);
    let fx_svid = s.enrol(FORENSICS);
    let (task_id, cred) = s.open_task(&svid);
    let (other_id, other_cred) = s.open_task(&svid);
    let (fx_task, _) = open_task_with(&s, &fx_svid, "investigate");
    let (status, child) = delegate(&s, &cred, &task_id, &image(FORENSICS, "Host::web-1", 120));
    assert_eq!(status, 201, "{child}");
    let child_cred = child["credential"].as_str().unwrap().to_string();
    let approver = approver_key(&s, "bob@acme.test", "secops");
    let pep = pep_key(&s, "edge-proxy");
    let unused_join = s.admin_post(
        "/v1/agents",
        &json!({"spiffe_id": "spiffe://acme.test/agent/ir-responder/i-9", "owner": "alice@acme.test"}),
    )["join_token"]
        .as_str()
        .unwrap()
        .to_string();
    let tasks_before = task_count(&s);
    let (der, kid, x) = server_key(&s);
    let (other_key, other_der) = tollgate_identity::SigningKeyPair::generate().unwrap();
    let now = now();
    let claims = |sub: &str, task: &str, aud: Value, exp: i64| {
        json!({"iss": "tollgate", "sub": sub, "aud": aud, "exp": exp, "iat": now - 5, "jti": "cred_forged",
               "task_id": task, "incident_id": "INC-4711", "scope": {}})
    };
    let good = claims(IR, &task_id, json!("tollgate/task"), now + 240);

    // Control: the forging machinery is right, so each case below fails
    // only for the one thing it changes.
    let control = sign_ed(&der, Some(&kid), Some(TASK_TYP), &good);
    let (status, d) = s.authorize(&control, "edr.read_alerts", host("web-1"));
    assert_eq!(
        (status, d["decision"].as_str()),
        (200, Some("allow")),
        "{d}"
    );
    let control_request = d["request_id"].as_str().unwrap().to_string();

    let parts: Vec<&str> = cred.split('.').collect();
    let other_parts: Vec<&str> = other_cred.split('.').collect();
    let none_header = json!({"alg": "none", "typ": TASK_TYP, "kid": kid});
    let alg_none = format!("{}.{}.", b64_json(&none_header), b64_json(&good));
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = good.clone();
        f(&mut c);
        sign_ed(&der, Some(&kid), Some(TASK_TYP), &c)
    };
    let cases: Vec<(&str, String)> = vec![
        ("alg none, empty signature", alg_none.clone()),
        (
            "alg none, a real signature kept",
            format!("{}.{}.{}", b64_json(&none_header), parts[1], parts[2]),
        ),
        (
            "HS256 keyed with the JWK's x (algorithm confusion)",
            sign_hs256(x.as_bytes(), &kid, TASK_TYP, &good),
        ),
        (
            "HS256 keyed with the raw public key (algorithm confusion)",
            sign_hs256(&URL_SAFE_NO_PAD.decode(&x).unwrap(), &kid, TASK_TYP, &good),
        ),
        (
            "signed by another key claiming our kid",
            sign_ed(&other_der, Some(&kid), Some(TASK_TYP), &good),
        ),
        (
            "signed by our key under another key's kid",
            sign_ed(&der, Some(other_key.kid()), Some(TASK_TYP), &good),
        ),
        (
            "signed by our key under an unknown kid",
            sign_ed(&der, Some("kid-0"), Some(TASK_TYP), &good),
        ),
        (
            "signed by our key without a kid",
            sign_ed(&der, None, Some(TASK_TYP), &good),
        ),
        (
            "expired two minutes ago",
            sign_ed(
                &der,
                Some(&kid),
                Some(TASK_TYP),
                &claims(IR, &task_id, json!("tollgate/task"), now - 120),
            ),
        ),
        ("nbf an hour ahead", with(&|c| c["nbf"] = json!(now + 3600))),
        ("iat an hour ahead", with(&|c| c["iat"] = json!(now + 3600))),
        ("audience of SVIDs", with(&|c| c["aud"] = json!("tollgate"))),
        (
            "audience of another service",
            with(&|c| c["aud"] = json!(["elsewhere"])),
        ),
        ("no expiry", with(&|c| c["exp"] = Value::Null)),
        (
            "typ of an SVID",
            sign_ed(&der, Some(&kid), Some("JWT"), &good),
        ),
        ("no typ", sign_ed(&der, Some(&kid), None, &good)),
        ("an SVID", svid.clone()),
        ("truncated signature", cred[..cred.len() - 6].to_string()),
        ("extra segment", format!("{cred}.{}", parts[2])),
        ("two segments", format!("{}.{}", parts[0], parts[1])),
        ("garbage base64", "!!!.@@@.###".to_string()),
        (
            "another credential's signature spliced on",
            format!("{}.{}.{}", parts[0], parts[1], other_parts[2]),
        ),
        (
            "another credential's payload under this signature",
            format!("{}.{}.{}", parts[0], other_parts[1], parts[2]),
        ),
        (
            "scope widened after signing",
            edit_payload(&child_cred, |c| {
                c["scope"]["actions"] =
                    json!(["edr.isolate_host", "forensics.image_host", "logs.delete"])
            }),
        ),
        (
            "task_id swapped to another task after signing",
            edit_payload(&cred, |c| c["task_id"] = json!(other_id)),
        ),
        (
            "exp extended after signing",
            edit_payload(&cred, |c| c["exp"] = json!(now + 86_400)),
        ),
        (
            "sub swapped to the parent agent after signing",
            edit_payload(&child_cred, |c| c["sub"] = json!(IR)),
        ),
        (
            "validly signed for an unregistered agent",
            sign_ed(
                &der,
                Some(&kid),
                Some(TASK_TYP),
                &claims(GHOST, &task_id, json!("tollgate/task"), now + 240),
            ),
        ),
        (
            "validly signed for a task that does not exist",
            sign_ed(
                &der,
                Some(&kid),
                Some(TASK_TYP),
                &claims(
                    IR,
                    "task_00000000000000000000000000000000",
                    json!("tollgate/task"),
                    now + 240,
                ),
            ),
        ),
        (
            "validly signed for another agent's task",
            sign_ed(
                &der,
                Some(&kid),
                Some(TASK_TYP),
                &claims(IR, &fx_task, json!("tollgate/task"), now + 240),
            ),
        ),
        ("the admin token", s.admin.clone()),
        ("an approver key", approver.clone()),
        ("a PEP key", pep.clone()),
        ("an unused join token", unused_join.clone()),
        (
            "a 60 KiB forged token",
            format!("{}.{}.AAAA", parts[0], "A".repeat(60 * 1024)),
        ),
    ];
    for (name, token) in &cases {
        let got = s.authorize(token, "edr.read_alerts", host("web-1"));
        expect_error(
            &format!("task credential: {name}"),
            &got,
            401,
            "unauthorized",
        );
    }

    // The Authorization header itself, malformed or of another scheme.
    let body = read_alerts().to_string();
    let ct = ("content-type", "application/json".to_string());
    let headers: Vec<(&str, Vec<(&str, String)>)> = vec![
        ("no Authorization header", vec![]),
        ("an empty bearer", vec![("authorization", "Bearer ".into())]),
        ("the scheme alone", vec![("authorization", "Bearer".into())]),
        (
            "Basic scheme with the real credential",
            vec![("authorization", format!("Basic {cred}"))],
        ),
        (
            "Basic scheme with user:credential",
            vec![(
                "authorization",
                format!("Basic {}", b64(format!("agent:{cred}").as_bytes())),
            )],
        ),
        (
            "Token scheme with the real credential",
            vec![("authorization", format!("Token {cred}"))],
        ),
        (
            "lowercase bearer with an alg-none forgery",
            vec![("authorization", format!("bearer {alg_none}"))],
        ),
        (
            "the real credential followed by junk",
            vec![("authorization", format!("Bearer {cred} junk"))],
        ),
        (
            "two credentials in one header",
            vec![("authorization", format!("Bearer {cred},{other_cred}"))],
        ),
    ];
    for (name, mut hs) in headers {
        hs.push(ct.clone());
        let got = raw(&s, "POST", "/v1/authorize", &hs, body.as_bytes());
        expect_error(&format!("header: {name}"), &got, 401, "unauthorized");
    }
    // A 1 MiB bearer token: refused by the HTTP layer, and the server lives on.
    let got = raw(
        &s,
        "POST",
        "/v1/authorize",
        &[
            ("authorization", format!("Bearer {}", "A".repeat(1 << 20))),
            ct.clone(),
        ],
        body.as_bytes(),
    );
    assert_eq!(got.0, 431, "1 MiB token: {:?}", got.1);
    let (status, health) = s.get("/healthz", None);
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")));

    // Nothing was decided for any forgery; the real credential still works.
    let (_, d) = s.authorize(&cred, "edr.read_alerts", host("web-1"));
    assert_eq!(d["decision"], "allow", "{d}");
    let entries = audit_all(&s);
    let decided: Vec<&str> = entries
        .iter()
        .filter(|e| e["event"]["kind"] == "decision")
        .map(|e| e["event"]["request_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        decided,
        [control_request.as_str(), d["request_id"].as_str().unwrap()],
        "a forged token reached a decision"
    );
    assert_eq!(
        task_count(&s),
        tasks_before,
        "a forged token changed the tasks"
    );
}

#[test]
fn forged_and_misused_svids_cannot_open_tasks() {
    let s = Server::start();
    let svid = s.enrol(IR);
    let fx_svid = s.enrol(FORENSICS);
    let revoked_id = "spiffe://acme.test/agent/ir-responder/i-8";
    let revoked_svid = s.enrol(revoked_id);
    s.admin_post("/v1/revocations", &json!({"agent": revoked_id}));
    let (der, kid, x) = server_key(&s);
    let (_, other_der) = tollgate_identity::SigningKeyPair::generate().unwrap();
    let now = now();
    let claims = |sub: &str| json!({"iss": "tollgate", "sub": sub, "aud": ["tollgate"], "exp": now + 120, "iat": now, "jti": "svid_forged"});
    let good = claims(IR);

    // Control: a well-formed SVID signed with the server's key opens a task.
    let control = sign_ed(&der, Some(&kid), Some("JWT"), &good);
    let (status, v) = s.post("/v1/tasks", Some(&control), &incident_task());
    assert_eq!(status, 201, "{v}");
    let cred = v["credential"].as_str().unwrap().to_string();
    let tasks_before = task_count(&s);
    let opened_before = count(&audit_all(&s), "task.opened");

    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = good.clone();
        f(&mut c);
        sign_ed(&der, Some(&kid), Some("JWT"), &c)
    };
    let parts: Vec<&str> = svid.split('.').collect();
    let fx_parts: Vec<&str> = fx_svid.split('.').collect();
    let cases: Vec<(&str, String)> = vec![
        (
            "alg none",
            format!(
                "{}.{}.",
                b64_json(&json!({"alg": "none", "typ": "JWT", "kid": kid})),
                b64_json(&good)
            ),
        ),
        (
            "HS256 keyed with the public key",
            sign_hs256(x.as_bytes(), &kid, "JWT", &good),
        ),
        (
            "signed by another key claiming our kid",
            sign_ed(&other_der, Some(&kid), Some("JWT"), &good),
        ),
        (
            "signed by our key under an unknown kid",
            sign_ed(&der, Some("kid-0"), Some("JWT"), &good),
        ),
        (
            "signed by our key without a kid",
            sign_ed(&der, None, Some("JWT"), &good),
        ),
        ("expired", with(&|c| c["exp"] = json!(now - 120))),
        ("nbf an hour ahead", with(&|c| c["nbf"] = json!(now + 3600))),
        ("iat an hour ahead", with(&|c| c["iat"] = json!(now + 3600))),
        (
            "audience of task credentials",
            with(&|c| c["aud"] = json!(["tollgate/task"])),
        ),
        (
            "no audience",
            with(&|c| {
                c.as_object_mut().unwrap().remove("aud");
            }),
        ),
        (
            "no expiry",
            with(&|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
        ),
        (
            "typ of a task credential",
            sign_ed(&der, Some(&kid), Some(TASK_TYP), &good),
        ),
        ("a task credential", cred.clone()),
        ("an unregistered agent", with(&|c| c["sub"] = json!(GHOST))),
        (
            "a foreign trust domain",
            with(&|c| c["sub"] = json!("spiffe://evil.test/agent/ir-responder/i-1")),
        ),
        (
            "a subject that is no SPIFFE ID",
            with(&|c| c["sub"] = json!("admin")),
        ),
        (
            "a subject with path traversal",
            with(&|c| c["sub"] = json!("spiffe://acme.test/agent/../ir-responder/i-1")),
        ),
        (
            "sub swapped to another agent after signing",
            edit_payload(&svid, |c| c["sub"] = json!(FORENSICS)),
        ),
        (
            "another SVID's signature spliced on",
            format!("{}.{}.{}", parts[0], parts[1], fx_parts[2]),
        ),
        ("truncated", svid[..svid.len() - 6].to_string()),
        ("the admin token", s.admin.clone()),
        ("garbage", "a.b.c".to_string()),
    ];
    for (name, token) in &cases {
        let got = s.post("/v1/tasks", Some(token), &incident_task());
        expect_error(&format!("open task with {name}"), &got, 401, "unauthorized");
    }
    // A valid SVID of an agent revoked since: forbidden, for tasks and refreshes.
    expect_error(
        "open task as a revoked agent",
        &s.post("/v1/tasks", Some(&revoked_svid), &incident_task()),
        403,
        "forbidden",
    );
    expect_error(
        "refresh the SVID of a revoked agent",
        &s.post("/v1/agents/svid", Some(&revoked_svid), &json!({})),
        403,
        "forbidden",
    );
    for (name, token) in [("alg none", &cases[0].1), ("a task credential", &cred)] {
        expect_error(
            &format!("refresh an SVID with {name}"),
            &s.post("/v1/agents/svid", Some(token), &json!({})),
            401,
            "unauthorized",
        );
    }
    expect_error(
        "open task without a token",
        &s.post("/v1/tasks", None, &incident_task()),
        401,
        "unauthorized",
    );

    let entries = audit_all(&s);
    assert_eq!(task_count(&s), tasks_before, "a forged SVID opened a task");
    assert_eq!(count(&entries, "task.opened"), opened_before);
    assert_eq!(
        count(&entries, "svid.issued"),
        0,
        "a forged SVID was refreshed"
    );
}

// ------------------------------------------------------- identity, join tokens

#[test]
fn join_tokens_and_agent_registration_cannot_be_abused() {
    let s = Server::start();
    let admin = s.admin.clone();
    let approver = approver_key(&s, "bob@acme.test", "secops");
    let pep = pep_key(&s, "edge-proxy");
    let svid = s.enrol(IR);
    let (_, cred) = s.open_task(&svid);
    let register = |id: &str| {
        s.admin_post(
            "/v1/agents",
            &json!({"spiffe_id": id, "owner": "alice@acme.test"}),
        )["join_token"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let attest = |t: &Value| s.post("/v1/agents/attest", None, &json!({"join_token": t}));
    let (ir2, ir3, ir4) = (
        "spiffe://acme.test/agent/ir-responder/i-2",
        "spiffe://acme.test/agent/ir-responder/i-3",
        "spiffe://acme.test/agent/ir-responder/i-4",
    );
    let used = register(ir2);
    assert_eq!(attest(&json!(used)).0, 200);
    let voided = register(ir3);
    let fresh = register(ir3); // re-enrolment voids the first token
    let orphan = register(ir4);
    s.admin_post("/v1/revocations", &json!({"agent": ir4}));
    let attested_before = count(&audit_all(&s), "agent.attested");

    let cases: Vec<(&str, Value, u16, &str)> = vec![
        (
            "reusing a spent join token",
            json!(used),
            401,
            "unauthorized",
        ),
        (
            "a token voided by re-enrolment",
            json!(voided),
            401,
            "unauthorized",
        ),
        (
            "a made-up join token",
            json!(format!("tgj_{}", "A".repeat(43))),
            401,
            "unauthorized",
        ),
        ("the admin token", json!(admin), 401, "unauthorized"),
        (
            "a valid token with a trailing space",
            json!(format!("{fresh} ")),
            401,
            "unauthorized",
        ),
        (
            "a prefix of a valid token",
            json!(&fresh[..fresh.len() - 1]),
            401,
            "unauthorized",
        ),
        (
            "the token of an agent revoked since",
            json!(orphan),
            403,
            "forbidden",
        ),
        (
            "a join token as a number",
            json!(12345),
            400,
            "invalid_body",
        ),
        ("a join token as null", Value::Null, 400, "invalid_body"),
    ];
    for (name, token, status, code) in &cases {
        expect_error(&format!("attest: {name}"), &attest(token), *status, code);
    }
    expect_error(
        "attest: a valid token with a smuggled spiffe_id",
        &s.post(
            "/v1/agents/attest",
            None,
            &json!({"join_token": fresh, "spiffe_id": IR}),
        ),
        400,
        "invalid_body",
    );
    // None of that consumed the fresh token, which still yields its own identity only.
    let (status, v) = attest(&json!(fresh));
    assert_eq!((status, v["spiffe_id"].as_str()), (200, Some(ir3)), "{v}");
    assert_eq!(
        count(&audit_all(&s), "agent.attested"),
        attested_before + 1,
        "a refused attestation issued an SVID"
    );

    // Malformed SPIFFE IDs are never registered.
    let registered_before = count(&audit_all(&s), "agent.registered");
    let bad_ids = [
        (
            "path traversal",
            "spiffe://acme.test/agent/../admin".to_string(),
        ),
        (
            "a '..' instance",
            "spiffe://acme.test/agent/ir-responder/..".into(),
        ),
        ("a '.' segment", "spiffe://acme.test/agent/./i-5".into()),
        (
            "percent-encoded traversal",
            "spiffe://acme.test/agent/%2e%2e/i-5".into(),
        ),
        (
            "an uppercase trust domain",
            "spiffe://ACME.test/agent/ir-responder/i-5".into(),
        ),
        (
            "a query string",
            "spiffe://acme.test/agent/ir-responder/i-5?admin=true".into(),
        ),
        (
            "a fragment",
            "spiffe://acme.test/agent/ir-responder/i-5#x".into(),
        ),
        (
            "a port",
            "spiffe://acme.test:443/agent/ir-responder/i-5".into(),
        ),
        (
            "userinfo",
            "spiffe://root@acme.test/agent/ir-responder/i-5".into(),
        ),
        ("an empty segment", "spiffe://acme.test/agent//i-5".into()),
        (
            "a space",
            "spiffe://acme.test/agent/ir responder/i-5".into(),
        ),
        ("no path", "spiffe://acme.test".into()),
        ("a bare slash", "spiffe://acme.test/".into()),
        (
            "another scheme",
            "https://acme.test/agent/ir-responder/i-5".into(),
        ),
        (
            "an untrusted trust domain",
            "spiffe://evil.test/agent/ir-responder/i-5".into(),
        ),
    ];
    for (name, id) in &bad_ids {
        let got = s.post(
            "/v1/agents",
            Some(&admin),
            &json!({"spiffe_id": id, "owner": "alice@acme.test"}),
        );
        expect_error(&format!("register {name}"), &got, 400, "bad_request");
    }
    let ir5 = "spiffe://acme.test/agent/ir-responder/i-5";
    let bodies = [
        (
            "spiffe_id as a number",
            json!({"spiffe_id": 5, "owner": "x"}),
            "invalid_body",
        ),
        ("no owner", json!({"spiffe_id": ir5}), "invalid_body"),
        (
            "an unknown field",
            json!({"spiffe_id": ir5, "owner": "x", "revoked": false}),
            "invalid_body",
        ),
    ];
    for (name, body, code) in &bodies {
        expect_error(
            &format!("register with {name}"),
            &s.post("/v1/agents", Some(&admin), body),
            400,
            code,
        );
    }
    // Only the admin registers agents.
    let body = json!({"spiffe_id": ir5, "owner": "mallory@acme.test"});
    let callers: Vec<(&str, Option<String>)> = vec![
        ("no token", None),
        ("an agent SVID", Some(svid.clone())),
        ("a task credential", Some(cred.clone())),
        ("an approver key", Some(approver.clone())),
        ("a PEP key", Some(pep.clone())),
        (
            "a made-up admin token",
            Some(format!("tga_{}", "A".repeat(43))),
        ),
        ("the admin token with a suffix", Some(format!("{admin}x"))),
        (
            "a prefix of the admin token",
            Some(admin[..admin.len() - 1].to_string()),
        ),
    ];
    for (name, token) in &callers {
        expect_error(
            &format!("register as {name}"),
            &s.post("/v1/agents", token.as_deref(), &body),
            401,
            "unauthorized",
        );
    }
    expect_error(
        "register with the admin token under the Basic scheme",
        &raw(
            &s,
            "POST",
            "/v1/agents",
            &[
                ("authorization", format!("Basic {admin}")),
                ("content-type", "application/json".into()),
            ],
            body.to_string().as_bytes(),
        ),
        401,
        "unauthorized",
    );
    assert_eq!(
        count(&audit_all(&s), "agent.registered"),
        registered_before,
        "a refused registration was recorded"
    );
    expect_error(
        "the refused agent does not exist",
        &s.post("/v1/revocations", Some(&admin), &json!({"agent": ir5})),
        404,
        "not_found",
    );
}

// ---------------------------------------------------------------- approvals

#[test]
fn approvals_cannot_be_self_granted_forged_or_replayed() {
    let s = Server::start();
    let admin = s.admin.clone();
    let ivan = approver_key(&s, "ivan@acme.test", "identity");
    let bob = approver_key(&s, "bob@acme.test", "secops");
    let carol = approver_key(&s, "carol@acme.test", "secops");
    // alice@acme.test owns the agent (Server::enrol).
    let owner = approver_key(&s, "alice@acme.test", "secops-lead");
    let pep = pep_key(&s, "iam-proxy");
    // Registering an approver again rotates their key: the old one is dead.
    let rotated_out = approver_key(&s, "dave@acme.test", "identity");
    approver_key(&s, "dave@acme.test", "identity");
    let svid = s.enrol(IR);
    let (_, c1) = s.open_task(&svid);
    let (_, c2) = s.open_task(&svid);
    let (_, d) = s.post("/v1/authorize", Some(&c1), &disable("compromised"));
    assert_eq!(d["decision"], "approval_required", "{d}");
    let a1 = d["approval_id"].as_str().unwrap().to_string();
    let vote_path = format!("/v1/approvals/{a1}/decision");
    let yes = json!({"approve": true, "reason": "verified"});

    // Votes from anyone who may not decide, or in a shape that is refused.
    let votes: Vec<(&str, &str, String, Value, u16, &str)> = vec![
        (
            "the agent with its own task credential",
            &c1,
            vote_path.clone(),
            yes.clone(),
            401,
            "unauthorized",
        ),
        (
            "the agent with its SVID",
            &svid,
            vote_path.clone(),
            yes.clone(),
            401,
            "unauthorized",
        ),
        (
            "a PEP key",
            &pep,
            vote_path.clone(),
            yes.clone(),
            401,
            "unauthorized",
        ),
        (
            "the admin token",
            &admin,
            vote_path.clone(),
            yes.clone(),
            401,
            "unauthorized",
        ),
        (
            "a rotated-out approver key",
            &rotated_out,
            vote_path.clone(),
            yes.clone(),
            401,
            "unauthorized",
        ),
        (
            "the agent's owner",
            &owner,
            vote_path.clone(),
            yes.clone(),
            403,
            "forbidden",
        ),
        (
            "an approver of the wrong team",
            &bob,
            vote_path.clone(),
            yes.clone(),
            403,
            "forbidden",
        ),
        (
            "an empty reason",
            &ivan,
            vote_path.clone(),
            json!({"approve": true, "reason": " "}),
            400,
            "bad_request",
        ),
        (
            "approve as a string",
            &ivan,
            vote_path.clone(),
            json!({"approve": "yes", "reason": "x"}),
            400,
            "invalid_body",
        ),
        (
            "a smuggled quorum field",
            &ivan,
            vote_path.clone(),
            json!({"approve": true, "reason": "x", "required": 0}),
            400,
            "invalid_body",
        ),
        (
            "a made-up approval id",
            &ivan,
            "/v1/approvals/apr_00000000000000000000000000000000/decision".into(),
            yes.clone(),
            404,
            "not_found",
        ),
    ];
    for (name, key, path, body, status, code) in &votes {
        expect_error(
            &format!("vote by {name}"),
            &s.post(path, Some(key), body),
            *status,
            code,
        );
    }
    let (_, shown) = s.get(&format!("/v1/approvals/{a1}"), Some(&ivan));
    assert_eq!(
        (
            shown["status"].as_str(),
            shown["votes"].as_array().unwrap().len()
        ),
        (Some("pending"), 0),
        "a refused vote counted: {shown}"
    );
    // The agent peeks at approvals: only its own task's, and never the list.
    expect_error(
        "another task's agent reads the approval",
        &s.get(&format!("/v1/approvals/{a1}"), Some(&c2)),
        404,
        "not_found",
    );
    expect_error(
        "an agent lists approvals",
        &s.get("/v1/approvals", Some(&c1)),
        403,
        "forbidden",
    );
    // A pending approval is not a grant.
    let r = s.post(
        "/v1/authorize",
        Some(&c1),
        &with_approval(disable("compromised"), &a1),
    );
    expect_deny("presenting a pending approval", &r);
    assert!(r.1["reasons"].to_string().contains("pending"), "{}", r.1);

    let (status, v) = s.post(&vote_path, Some(&ivan), &yes);
    assert_eq!(
        (status, v["status"].as_str()),
        (200, Some("approved")),
        "{v}"
    );

    // Uses that do not match the approved request: denied, approval unspent.
    let mut other_resource = disable("compromised");
    other_resource["resource"]["id"] = json!("jsmith");
    let mut other_action = disable("compromised");
    other_action["action"] = json!("iam.enable_account");
    let mut extra_attribute = disable("compromised");
    extra_attribute["resource"]["attributes"] = json!({"privileged": true});
    let mut extra_parameter = disable("compromised");
    extra_parameter["parameters"]["window_minutes"] = json!(5);
    let misuses: Vec<(&str, &str, Value)> = vec![
        (
            "another task presents it",
            &c2,
            with_approval(disable("compromised"), &a1),
        ),
        (
            "different parameters",
            &c1,
            with_approval(disable("something else"), &a1),
        ),
        (
            "an added parameter",
            &c1,
            with_approval(extra_parameter, &a1),
        ),
        (
            "a different resource",
            &c1,
            with_approval(other_resource, &a1),
        ),
        ("a different action", &c1, with_approval(other_action, &a1)),
        (
            "an added resource attribute",
            &c1,
            with_approval(extra_attribute, &a1),
        ),
        (
            "a made-up approval id",
            &c1,
            with_approval(
                disable("compromised"),
                "apr_00000000000000000000000000000000",
            ),
        ),
    ];
    for (name, cred, body) in &misuses {
        expect_deny(
            &format!("approval misuse: {name}"),
            &s.post("/v1/authorize", Some(cred), body),
        );
    }
    let (_, shown) = s.get(&format!("/v1/approvals/{a1}"), Some(&ivan));
    assert_eq!(
        shown["status"], "approved",
        "a refused use spent the approval: {shown}"
    );

    // The one legitimate use, then replays.
    let (_, used) = s.post(
        "/v1/authorize",
        Some(&c1),
        &with_approval(disable("compromised"), &a1),
    );
    assert_eq!(used["decision"], "allow", "{used}");
    for (name, cred) in [
        ("replay by the same task", &c1),
        ("replay by another task", &c2),
    ] {
        expect_deny(
            name,
            &s.post(
                "/v1/authorize",
                Some(cred),
                &with_approval(disable("compromised"), &a1),
            ),
        );
    }
    expect_error(
        "a vote on a used approval",
        &s.post(&vote_path, Some(&ivan), &yes),
        409,
        "conflict",
    );

    // Quorum: the same approver twice counts once; a denial ends it.
    let (_, c3) = s.open_task(&svid);
    let rotate = json!({"action": "vault.rotate_secret", "resource": {"type": "Secret", "id": "prod-db"}, "intent": "rotate"});
    let (_, d) = s.post("/v1/authorize", Some(&c3), &rotate);
    assert_eq!(d["approvals_required"], 2, "{d}");
    let a2 = d["approval_id"].as_str().unwrap().to_string();
    let a2_path = format!("/v1/approvals/{a2}/decision");
    assert_eq!(s.post(&a2_path, Some(&bob), &yes).0, 200);
    expect_error(
        "voting twice with the same key",
        &s.post(&a2_path, Some(&bob), &yes),
        409,
        "conflict",
    );
    expect_deny(
        "using a half-approved approval",
        &s.post(
            "/v1/authorize",
            Some(&c3),
            &with_approval(rotate.clone(), &a2),
        ),
    );
    let (status, v) = s.post(
        &a2_path,
        Some(&carol),
        &json!({"approve": false, "reason": "not yet"}),
    );
    assert_eq!((status, v["status"].as_str()), (200, Some("denied")), "{v}");
    expect_error(
        "approving after a denial",
        &s.post(
            &a2_path,
            Some(&bob),
            &json!({"approve": true, "reason": "again"}),
        ),
        409,
        "conflict",
    );
    expect_deny(
        "using a denied approval",
        &s.post(
            "/v1/authorize",
            Some(&c3),
            &with_approval(rotate.clone(), &a2),
        ),
    );

    // An approval whose task has ended can no longer be voted on.
    let (t4, c4) = s.open_task(&svid);
    let (_, d) = s.post("/v1/authorize", Some(&c4), &disable("t4"));
    let a3 = d["approval_id"].as_str().unwrap().to_string();
    s.post(
        &format!("/v1/tasks/{t4}/close"),
        Some(&c4),
        &json!({"outcome": "completed"}),
    );
    expect_error(
        "a vote on the approval of a closed task",
        &s.post(&format!("/v1/approvals/{a3}/decision"), Some(&ivan), &yes),
        409,
        "conflict",
    );

    // Exactly one use of one approval was ever allowed.
    let (_, shown) = s.get(&format!("/v1/approvals/{a1}"), Some(&ivan));
    assert_eq!(
        (
            shown["status"].as_str(),
            shown["used_by"].as_str(),
            shown["votes"].as_array().unwrap().len()
        ),
        (Some("used"), used["request_id"].as_str(), 1),
        "{shown}"
    );
    let (_, shown) = s.get(&format!("/v1/approvals/{a2}"), Some(&bob));
    assert_eq!(shown["votes"].as_array().unwrap().len(), 2, "{shown}");
    let (_, shown) = s.get(&format!("/v1/approvals/{a3}"), Some(&ivan));
    assert_eq!(
        (
            shown["status"].as_str(),
            shown["votes"].as_array().unwrap().len()
        ),
        (Some("pending"), 0)
    );
    let entries = audit_all(&s);
    assert_eq!(count(&entries, "approval.used"), 1);
    assert_eq!(
        count_outcome(&entries, "decision", "allow"),
        1,
        "only the approved use may be allowed"
    );
}

// --------------------------------------------------------------- delegation

#[test]
fn delegation_cannot_widen_outlive_or_outlast_its_parent() {
    let s = Server::start();
    let admin = s.admin.clone();
    let fx2 = "spiffe://acme.test/agent/forensics/i-3";
    let fx3 = "spiffe://acme.test/agent/forensics/i-4";
    let fx_revoked = "spiffe://acme.test/agent/forensics/i-5";
    let ir2 = "spiffe://acme.test/agent/ir-responder/i-2";
    let svid = s.enrol(IR);
    for a in [FORENSICS, fx2, fx3, fx_revoked, ir2] {
        s.enrol(a);
    }
    s.admin_post("/v1/revocations", &json!({"agent": fx_revoked}));
    let (p, pc) = s.open_task(&svid);
    let (p_other, _) = s.open_task(&svid);
    let (status, child) = delegate(&s, &pc, &p, &image(FORENSICS, "Host::web-1", 120));
    assert_eq!(status, 201, "{child}");
    let (c, cc) = (
        child["task_id"].as_str().unwrap().to_string(),
        child["credential"].as_str().unwrap().to_string(),
    );

    let mut no_intent = image(fx2, "Host::web-1", 60);
    no_intent["intent"] = json!(" ");
    let mut smuggled = image(fx2, "Host::web-1", 60);
    smuggled["scope"] = json!("*");
    let mut not_a_list = image(fx2, "Host::web-1", 60);
    not_a_list["actions"] = json!("forensics.image_host");
    let cases: Vec<(&str, &str, &str, Value, u16, &str)> = vec![
        (
            "a child asks for an action outside its scope",
            &cc,
            &c,
            json!({"agent": fx2, "actions": ["edr.read_alerts"], "resources": ["Host::web-1"], "ttl_seconds": 60, "intent": "widen"}),
            403,
            "delegation_refused",
        ),
        (
            "a child asks for a resource outside its scope",
            &cc,
            &c,
            image(fx2, "Host::web-2", 60),
            403,
            "delegation_refused",
        ),
        (
            "zero ttl",
            &pc,
            &p,
            image(FORENSICS, "Host::web-1", 0),
            403,
            "delegation_refused",
        ),
        (
            "negative ttl",
            &pc,
            &p,
            image(FORENSICS, "Host::web-1", -60),
            403,
            "delegation_refused",
        ),
        (
            "no actions",
            &pc,
            &p,
            json!({"agent": FORENSICS, "actions": [], "resources": ["Host::web-1"], "ttl_seconds": 60, "intent": "x"}),
            403,
            "delegation_refused",
        ),
        (
            "no resources",
            &pc,
            &p,
            json!({"agent": FORENSICS, "actions": ["forensics.image_host"], "resources": [], "ttl_seconds": 60, "intent": "x"}),
            403,
            "delegation_refused",
        ),
        (
            "an unregistered agent",
            &pc,
            &p,
            image(GHOST, "Host::web-1", 60),
            400,
            "bad_request",
        ),
        (
            "a revoked agent",
            &pc,
            &p,
            image(fx_revoked, "Host::web-1", 60),
            403,
            "forbidden",
        ),
        (
            "a malformed agent id",
            &pc,
            &p,
            image("spiffe://acme.test/agent/../x", "Host::web-1", 60),
            400,
            "bad_request",
        ),
        (
            "an agent of a role policy does not allow",
            &pc,
            &p,
            image(ir2, "Host::web-1", 60),
            403,
            "delegation_refused",
        ),
        (
            "containment handed to forensics",
            &pc,
            &p,
            json!({"agent": FORENSICS, "actions": ["edr.isolate_host"], "resources": ["Host::web-1"], "ttl_seconds": 60, "intent": "x"}),
            403,
            "delegation_refused",
        ),
        (
            "a secret read handed to forensics",
            &pc,
            &p,
            json!({"agent": FORENSICS, "actions": ["vault.read_secret"], "resources": ["Secret::prod-db"], "ttl_seconds": 60, "intent": "x"}),
            403,
            "delegation_refused",
        ),
        (
            "the parent's credential on another task's path",
            &pc,
            &p_other,
            image(FORENSICS, "Host::web-1", 60),
            403,
            "forbidden",
        ),
        (
            "the child's credential on its parent's path",
            &cc,
            &p,
            image(fx2, "Host::web-1", 60),
            403,
            "forbidden",
        ),
        ("an empty intent", &pc, &p, no_intent, 400, "bad_request"),
        (
            "a smuggled scope field",
            &pc,
            &p,
            smuggled,
            400,
            "invalid_body",
        ),
        (
            "actions as a string",
            &pc,
            &p,
            not_a_list,
            400,
            "invalid_body",
        ),
    ];
    for (name, cred, task, body, status, code) in &cases {
        let got = delegate(&s, cred, task, body);
        expect_error(&format!("delegation: {name}"), &got, *status, code);
        if *code == "delegation_refused" {
            assert_eq!(got.1["decision"], "deny", "{name}: {}", got.1);
        }
    }

    // A longer TTL than the parent's is cut to the parent's lifetime.
    let (status, gc) = delegate(&s, &cc, &c, &image(fx2, "Host::web-1", 100_000));
    assert_eq!(status, 201, "{gc}");
    let expiry = |id: &str| {
        s.get(&format!("/v1/tasks/{id}"), Some(&admin)).1["max_expires_at"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (gc_id, gcc) = (
        gc["task_id"].as_str().unwrap().to_string(),
        gc["credential"].as_str().unwrap().to_string(),
    );
    assert!(
        expiry(&gc_id) <= expiry(&c)
            && payload(&gcc)["exp"].as_i64() <= payload(&cc)["exp"].as_i64(),
        "a grandchild outlives its parent: {} > {}",
        expiry(&gc_id),
        expiry(&c)
    );
    // Depth is bounded.
    let got = delegate(&s, &gcc, &gc_id, &image(fx3, "Host::web-1", 30));
    expect_refused_decision(
        "delegation beyond the maximum depth",
        &got,
        "delegation_refused",
    );

    // The child acts only within its scope.
    let outside: Vec<(&str, &str, Value)> = vec![
        (
            "an action outside its scope",
            "logs.delete",
            json!({"type": "LogStream", "id": "web-1/auth"}),
        ),
        (
            "containment outside its scope",
            "edr.isolate_host",
            host("web-1"),
        ),
        (
            "a resource outside its scope",
            "forensics.image_host",
            host("web-2"),
        ),
    ];
    for (name, action, resource) in &outside {
        expect_deny(
            &format!("child: {name}"),
            &s.authorize(&cc, action, resource.clone()),
        );
    }
    assert_eq!(
        s.authorize(&cc, "forensics.image_host", host("web-1")).1["decision"],
        "allow"
    );

    // Delegating from a closed parent.
    let (p2, p2c) = s.open_task(&svid);
    assert_eq!(
        s.post(
            &format!("/v1/tasks/{p2}/close"),
            Some(&p2c),
            &json!({"outcome": "completed"})
        )
        .0,
        200
    );
    expect_error(
        "delegation from a closed parent",
        &delegate(&s, &p2c, &p2, &image(FORENSICS, "Host::web-1", 60)),
        401,
        "unauthorized",
    );
    // Revoking the parent ends the whole subtree on the next request.
    s.admin_post("/v1/revocations", &json!({"task_id": p}));
    let after_revoke: Vec<(&str, (u16, Value))> = vec![
        (
            "the child acts",
            s.authorize(&cc, "forensics.image_host", host("web-1")),
        ),
        (
            "the grandchild acts",
            s.authorize(&gcc, "forensics.image_host", host("web-1")),
        ),
        (
            "the child delegates",
            delegate(&s, &cc, &c, &image(fx3, "Host::web-1", 30)),
        ),
        (
            "the child renews",
            s.post(&format!("/v1/tasks/{c}/renew"), Some(&cc), &json!({})),
        ),
        (
            "the parent delegates",
            delegate(&s, &pc, &p, &image(FORENSICS, "Host::web-1", 30)),
        ),
    ];
    for (name, got) in &after_revoke {
        expect_error(
            &format!("after the parent's revocation, {name}"),
            got,
            401,
            "unauthorized",
        );
    }

    let entries = audit_all(&s);
    assert_eq!(
        count(&entries, "task.delegated"),
        2,
        "only the two allowed hops exist"
    );
    // p, p_other, p2, the child and the grandchild.
    assert_eq!(task_count(&s), 5);
}

// ----------------------------------------------------------------- bad input

#[test]
fn hostile_input_to_identity_and_admin_endpoints_changes_nothing() {
    let s = Server::start();
    let admin = s.admin.clone();
    let svid = s.enrol(IR);
    let (task_id, _) = s.open_task(&svid);
    let tasks_before = task_count(&s);
    let entries_before = audit_all(&s);

    let task = incident_task();
    let with = |f: &dyn Fn(&mut Value)| {
        let mut b = task.clone();
        f(&mut b);
        b.to_string()
    };
    let nested = format!(
        "{{\"incident\": {{\"id\": \"INC-4711\", \"class\": \"malware\", \"severity\": \"high\"}}, \"environment\": \"prod\", \"playbook\": \"contain-malware\", \"intent\": {}{}}}",
        "[".repeat(300),
        "]".repeat(300)
    );
    let json_ct = "application/json";
    let cases: Vec<(&str, &str, String, u16, &str)> = vec![
        (
            "malformed JSON",
            json_ct,
            "{\"incident\": ".into(),
            400,
            "invalid_json",
        ),
        ("an empty body", json_ct, String::new(), 400, "invalid_json"),
        (
            "a top-level array",
            json_ct,
            "[]".into(),
            400,
            "invalid_body",
        ),
        (
            "text/plain",
            "text/plain",
            task.to_string(),
            415,
            "unsupported_media_type",
        ),
        (
            "form-encoded",
            "application/x-www-form-urlencoded",
            "incident=x".into(),
            415,
            "unsupported_media_type",
        ),
        (
            "a body over 64 KiB",
            json_ct,
            with(&|b| b["intent"] = json!("x".repeat(70 * 1024))),
            413,
            "payload_too_large",
        ),
        (
            "an unknown field",
            json_ct,
            with(&|b| b["root"] = json!(true)),
            400,
            "invalid_body",
        ),
        (
            "a duplicate field",
            json_ct,
            format!(
                "{{\"playbook\": \"investigate\", {}",
                &task.to_string()[1..]
            ),
            400,
            "invalid_body",
        ),
        (
            "ttl as a string",
            json_ct,
            with(&|b| b["ttl_seconds"] = json!("300")),
            400,
            "invalid_body",
        ),
        (
            "ttl beyond i64",
            json_ct,
            task.to_string()
                .replacen('}', "}, \"ttl_seconds\": 9223372036854775808", 1),
            400,
            "invalid_body",
        ),
        (
            "incident as a string",
            json_ct,
            with(&|b| b["incident"] = json!("INC-4711")),
            400,
            "invalid_body",
        ),
        (
            "no intent",
            json_ct,
            with(&|b| {
                b.as_object_mut().unwrap().remove("intent");
            }),
            400,
            "invalid_body",
        ),
        (
            "an unknown severity",
            json_ct,
            with(&|b| b["incident"]["severity"] = json!("apocalyptic")),
            400,
            "invalid_body",
        ),
        (
            "a raw NUL byte in a string",
            json_ct,
            task.to_string()
                .replace("contain the beacon", "contain\u{0}the beacon"),
            400,
            "invalid_json",
        ),
        // Every field is typed: the first nested array is already the wrong type.
        ("JSON nested 300 deep", json_ct, nested, 400, "invalid_body"),
        (
            "zero ttl",
            json_ct,
            with(&|b| b["ttl_seconds"] = json!(0)),
            400,
            "bad_request",
        ),
        (
            "negative ttl",
            json_ct,
            with(&|b| b["ttl_seconds"] = json!(-300)),
            400,
            "bad_request",
        ),
        (
            "an intent over 2048 bytes",
            json_ct,
            with(&|b| b["intent"] = json!("x".repeat(3000))),
            400,
            "bad_request",
        ),
    ];
    for (name, ct, body, status, code) in &cases {
        let got = s.post_raw("/v1/tasks", Some(&svid), ct, body);
        expect_error(&format!("open task: {name}"), &got, *status, code);
    }
    expect_error(
        "open task: no content type",
        &raw(
            &s,
            "POST",
            "/v1/tasks",
            &bearer(&svid),
            task.to_string().as_bytes(),
        ),
        415,
        "unsupported_media_type",
    );
    // Well-formed, but policy or the stored incident says no.
    let refusals: Vec<(&str, String)> = vec![
        (
            "a ttl over the hard maximum",
            with(&|b| b["ttl_seconds"] = json!(7200)),
        ),
        (
            "a ttl of i64::MAX",
            with(&|b| b["ttl_seconds"] = json!(i64::MAX)),
        ),
        (
            "a playbook that does not exist",
            with(&|b| b["playbook"] = json!("rm-rf")),
        ),
        (
            "a playbook for another incident class",
            with(&|b| b["playbook"] = json!("credential-leak")),
        ),
        (
            "a downgraded severity of a recorded incident",
            with(&|b| b["incident"]["severity"] = json!("low")),
        ),
        (
            "another class for a recorded incident",
            with(&|b| b["incident"]["class"] = json!("phishing")),
        ),
    ];
    for (name, body) in &refusals {
        let got = s.post_raw("/v1/tasks", Some(&svid), json_ct, body);
        expect_refused_decision(&format!("open task: {name}"), &got, "task_refused");
    }

    // Admin endpoints: bad input is refused, even with the admin token.
    let admin_cases: Vec<(&str, &str, Value, u16, &str)> = vec![
        (
            "revocation with two targets",
            "/v1/revocations",
            json!({"task_id": task_id, "agent": IR}),
            400,
            "bad_request",
        ),
        (
            "revocation with no target",
            "/v1/revocations",
            json!({"reason": "x"}),
            400,
            "bad_request",
        ),
        (
            "revocation of an unknown task",
            "/v1/revocations",
            json!({"task_id": "task_nope"}),
            404,
            "not_found",
        ),
        (
            "revocation of a malformed agent id",
            "/v1/revocations",
            json!({"agent": "spiffe://acme.test/../x"}),
            400,
            "bad_request",
        ),
        (
            "revocation with an unknown field",
            "/v1/revocations",
            json!({"task_id": task_id, "all": true}),
            400,
            "invalid_body",
        ),
        (
            "incident with an unknown status",
            "/v1/incidents/INC-4711",
            json!({"status": "bogus"}),
            400,
            "invalid_body",
        ),
        (
            "incident with an unknown field",
            "/v1/incidents/INC-4711",
            json!({"owner": "x"}),
            400,
            "invalid_body",
        ),
        (
            "an unknown incident without class",
            "/v1/incidents/INC-0",
            json!({"status": "resolved"}),
            404,
            "not_found",
        ),
        (
            "an approver named like an agent",
            "/v1/approvers",
            json!({"name": IR, "role": "secops"}),
            400,
            "bad_request",
        ),
        (
            "an approver with an uppercase role",
            "/v1/approvers",
            json!({"name": "eve@acme.test", "role": "SECOPS"}),
            400,
            "bad_request",
        ),
        (
            "a PEP name with a slash",
            "/v1/peps",
            json!({"name": "a/b"}),
            400,
            "bad_request",
        ),
        (
            "release of an agent that is not quarantined",
            "/v1/agents/release",
            json!({"agent": IR}),
            409,
            "conflict",
        ),
    ];
    for (name, path, body, status, code) in &admin_cases {
        expect_error(
            &format!("admin: {name}"),
            &s.post(path, Some(&admin), body),
            *status,
            code,
        );
    }

    // Nothing changed: no task, no revocation, no incident change, no new principal.
    assert_eq!(task_count(&s), tasks_before, "bad input created a task");
    let (_, t) = s.get(&format!("/v1/tasks/{task_id}"), Some(&admin));
    assert_eq!(t["status"], "active", "{t}");
    let entries = audit_all(&s);
    for kind in [
        "task.opened",
        "task.revoked",
        "incident.updated",
        "incident.recorded",
        "approver.registered",
        "pep.registered",
        "agent.revoked",
        "agent.released",
    ] {
        assert_eq!(
            count(&entries, kind),
            count(&entries_before, kind),
            "bad input left a {kind} entry"
        );
    }
    assert_eq!(count(&entries, "task.refused"), refusals.len());
}

#[test]
fn hostile_input_to_task_endpoints_decides_nothing() {
    let s = Server::start();
    let svid = s.enrol(IR);
    let (task_id, cred) = s.open_task(&svid);
    let (other_id, _) = s.open_task(&svid);

    let ask = read_alerts();
    let with = |f: &dyn Fn(&mut Value)| {
        let mut b = ask.clone();
        f(&mut b);
        b.to_string()
    };
    let nested = format!(
        "{{\"action\": \"edr.read_alerts\", \"resource\": {{\"type\": \"Host\", \"id\": \"web-1\"}}, \"intent\": \"x\", \"parameters\": {{\"reason\": {}{}}}}}",
        "[".repeat(300),
        "]".repeat(300)
    );
    let many_keys: serde_json::Map<String, Value> =
        (0..4000).map(|i| (format!("k{i}"), json!(i))).collect();
    let json_ct = "application/json";
    let cases: Vec<(&str, &str, String, u16, &str)> = vec![
        ("malformed JSON", json_ct, "{\"action\": \"edr.read_alerts\",".into(), 400, "invalid_json"),
        ("an empty body", json_ct, String::new(), 400, "invalid_json"),
        ("a top-level array", json_ct, "[]".into(), 400, "invalid_body"),
        ("text/plain", "text/plain", ask.to_string(), 415, "unsupported_media_type"),
        ("a JSON look-alike content type", "application/jsonx", ask.to_string(), 415, "unsupported_media_type"),
        ("a body over 64 KiB", json_ct, with(&|b| b["intent"] = json!("x".repeat(70 * 1024))), 413, "payload_too_large"),
        ("an unknown field", json_ct, with(&|b| b["admin"] = json!(true)), 400, "invalid_body"),
        ("an unknown resource field", json_ct, with(&|b| b["resource"]["owner"] = json!("me")), 400, "invalid_body"),
        ("a resource without id", json_ct, with(&|b| { b["resource"].as_object_mut().unwrap().remove("id"); }), 400, "invalid_body"),
        ("the action as a number", json_ct, with(&|b| b["action"] = json!(7)), 400, "invalid_body"),
        ("parameters as an array", json_ct, with(&|b| b["parameters"] = json!(["reason"])), 400, "invalid_body"),
        ("an approval id as an object", json_ct, with(&|b| b["approval_id"] = json!({"id": "x"})), 400, "invalid_body"),
        (
            "a duplicate action field",
            json_ct,
            "{\"action\": \"edr.read_alerts\", \"action\": \"logs.delete\", \"resource\": {\"type\": \"LogStream\", \"id\": \"auth\"}, \"intent\": \"x\"}".into(),
            400, "invalid_body",
        ),
        ("a raw NUL byte in a string", json_ct, ask.to_string().replace("look", "lo\u{0}ok"), 400, "invalid_json"),
        ("JSON nested 300 deep", json_ct, nested, 400, "invalid_json"),
        ("an intent over 2048 bytes", json_ct, with(&|b| b["intent"] = json!("x".repeat(3000))), 400, "bad_request"),
        ("an undeclared parameter", json_ct, with(&|b| b["parameters"] = json!({"rm": "-rf /"})), 400, "invalid_request"),
        ("an escaped NUL in a parameter name", json_ct, with(&|b| b["parameters"] = json!({"rea\u{0}son": "x"})), 400, "invalid_request"),
        ("a parameter of the wrong type", json_ct, with(&|b| b["parameters"] = json!({"window_minutes": "ten"})), 400, "invalid_request"),
        ("a huge array as a parameter", json_ct, with(&|b| b["parameters"] = json!({"query": vec![1; 15_000]})), 400, "invalid_request"),
        ("4000 undeclared parameters", json_ct, with(&|b| b["parameters"] = Value::Object(many_keys.clone())), 400, "invalid_request"),
        ("a resource attribute of the wrong type", json_ct, with(&|b| b["resource"]["attributes"] = json!({"environment": 7})), 400, "invalid_request"),
        ("an undeclared resource attribute", json_ct, with(&|b| b["resource"]["attributes"] = json!({"root": true})), 400, "invalid_request"),
    ];
    for (name, ct, body, status, code) in &cases {
        let got = s.post_raw("/v1/authorize", Some(&cred), ct, body);
        expect_error(&format!("authorize: {name}"), &got, *status, code);
    }
    expect_error(
        "authorize: no content type",
        &raw(
            &s,
            "POST",
            "/v1/authorize",
            &bearer(&cred),
            ask.to_string().as_bytes(),
        ),
        415,
        "unsupported_media_type",
    );
    // Well-formed but meaningless requests are denials, not errors.
    let denials: Vec<(&str, &str, Value)> = vec![
        ("an action not in the catalog", "shell.exec", host("web-1")),
        (
            "a resource type not in the schema",
            "edr.read_alerts",
            json!({"type": "Spaceship", "id": "web-1"}),
        ),
        (
            "a resource type the action does not act on",
            "edr.read_alerts",
            json!({"type": "Account", "id": "jdoe"}),
        ),
        ("a tier group as an action", "destructive", host("web-1")),
        (
            "the task-open action",
            "task.open",
            json!({"type": "Incident", "id": "INC-4711"}),
        ),
    ];
    let mut denied = Vec::new();
    for (name, action, resource) in &denials {
        denied.push(expect_deny(
            &format!("authorize: {name}"),
            &s.authorize(&cred, action, resource.clone()),
        ));
    }

    // Evidence, close and results: bad input changes nothing.
    let ev = |body: Value| s.post(&format!("/v1/tasks/{task_id}/evidence"), Some(&cred), &body);
    let sha = tollgate_core::sha256_hex(b"memory");
    let evidence_cases: Vec<(&str, (u16, Value), u16, &str)> = vec![
        (
            "evidence with a short sha256",
            ev(json!({"resource": host("web-1"), "kind": "memory", "sha256": "abc"})),
            400,
            "bad_request",
        ),
        (
            "evidence with an uppercase sha256",
            ev(json!({"resource": host("web-1"), "kind": "memory", "sha256": sha.to_uppercase()})),
            400,
            "bad_request",
        ),
        (
            "evidence whose content does not hash",
            ev(
                json!({"resource": host("web-1"), "kind": "memory", "sha256": sha, "content": "other"}),
            ),
            400,
            "bad_request",
        ),
        (
            "evidence with an unknown field",
            ev(
                json!({"resource": host("web-1"), "kind": "memory", "sha256": sha, "trusted": true}),
            ),
            400,
            "invalid_body",
        ),
        (
            "evidence for another task",
            s.post(
                &format!("/v1/tasks/{other_id}/evidence"),
                Some(&cred),
                &json!({"resource": host("web-1"), "kind": "memory", "sha256": sha}),
            ),
            403,
            "forbidden",
        ),
        (
            "close with an unknown outcome",
            s.post(
                &format!("/v1/tasks/{task_id}/close"),
                Some(&cred),
                &json!({"outcome": "succeeded"}),
            ),
            400,
            "invalid_body",
        ),
        (
            "close another task",
            s.post(
                &format!("/v1/tasks/{other_id}/close"),
                Some(&cred),
                &json!({"outcome": "failed"}),
            ),
            403,
            "forbidden",
        ),
        (
            "renew another task",
            s.post(
                &format!("/v1/tasks/{other_id}/renew"),
                Some(&cred),
                &json!({}),
            ),
            403,
            "forbidden",
        ),
        (
            "a result for a denied decision",
            s.post(
                &format!("/v1/actions/{}/result", denied[0]),
                Some(&cred),
                &json!({"status": "succeeded", "command": "rm -rf /"}),
            ),
            409,
            "conflict",
        ),
        (
            "a result for a made-up decision",
            s.post(
                "/v1/actions/req_00000000000000000000000000000000/result",
                Some(&cred),
                &json!({"status": "succeeded", "command": "x"}),
            ),
            409,
            "conflict",
        ),
        (
            "a result with an empty command",
            s.post(
                &format!("/v1/actions/{}/result", denied[0]),
                Some(&cred),
                &json!({"status": "succeeded", "command": " "}),
            ),
            400,
            "bad_request",
        ),
    ];
    for (name, got, status, code) in &evidence_cases {
        expect_error(name, got, *status, code);
    }

    // Routing: unknown paths and wrong methods get JSON errors.
    for path in [
        "/v1/nope",
        "/V1/AUTHORIZE",
        "/v1/authorize/extra",
        "/v1/tasks/x/y/z",
        "/admin",
        "/v1/audit/../agents",
    ] {
        expect_error(
            &format!("unknown path {path}"),
            &raw(
                &s,
                "POST",
                path,
                &[
                    ("authorization", format!("Bearer {cred}")),
                    ("content-type", json_ct.to_string()),
                ],
                ask.to_string().as_bytes(),
            ),
            404,
            "not_found",
        );
    }
    for (method, path) in [
        ("GET", "/v1/authorize"),
        ("PUT", "/v1/tasks"),
        ("DELETE", "/v1/agents"),
        ("PATCH", "/v1/freeze"),
    ] {
        let got = raw(&s, method, path, &bearer(&s.admin.clone()), b"");
        expect_error(
            &format!("wrong method {method} {path}"),
            &got,
            405,
            "method_not_allowed",
        );
    }

    // Nothing was allowed, recorded or closed by any of it.
    let entries = audit_all(&s);
    assert_eq!(
        count_outcome(&entries, "decision", "allow"),
        0,
        "hostile input was allowed"
    );
    assert_eq!(count_outcome(&entries, "decision", "deny"), denials.len());
    for kind in [
        "evidence.recorded",
        "task.closed",
        "task.renewed",
        "action.result",
    ] {
        assert_eq!(
            count(&entries, kind),
            0,
            "hostile input left a {kind} entry"
        );
    }
    let (_, t) = s.get(&format!("/v1/tasks/{other_id}"), Some(s.admin.as_str()));
    assert_eq!(t["status"], "active");
    // And the task still works.
    assert_eq!(
        s.authorize(&cred, "edr.read_alerts", host("web-1")).1["decision"],
        "allow"
    );
}

// -------------------------------------------------------------------- faults

#[test]
fn kill_9_loses_no_answered_decision_and_the_log_verifies_offline() {
    let s = Server::start();
    let svid = s.enrol(IR);
    let (task_id, cred) = s.open_task(&svid);
    let (revoked_id, revoked_cred) = s.open_task(&svid);
    s.post(
        &format!("/v1/tasks/{task_id}/evidence"),
        Some(&cred),
        &json!({"resource": host("web-1"), "kind": "memory", "sha256": tollgate_core::sha256_hex(b"m")}),
    );
    let mut answered: Vec<(String, String)> = Vec::new();
    let mut ask = |action: &str, resource: Value| {
        let (status, d) = s.authorize(&cred, action, resource);
        assert_eq!(status, 200, "{d}");
        answered.push((
            d["request_id"].as_str().unwrap().to_string(),
            d["decision"].as_str().unwrap().to_string(),
        ));
    };
    for i in 0..24 {
        if i % 6 == 5 {
            ask(
                "logs.delete",
                json!({"type": "LogStream", "id": "web-1/auth"}),
            );
        } else {
            ask("edr.read_alerts", host(&format!("web-{i}")));
        }
    }
    ask("edr.isolate_host", host("web-1"));
    let (_, d) = s.post("/v1/authorize", Some(&cred), &disable("compromised"));
    answered.push((
        d["request_id"].as_str().unwrap().to_string(),
        d["decision"].as_str().unwrap().to_string(),
    ));
    s.admin_post("/v1/revocations", &json!({"task_id": revoked_id}));
    let outcomes: Vec<&str> = answered.iter().map(|(_, o)| o.as_str()).collect();
    assert!(
        outcomes.contains(&"allow")
            && outcomes.contains(&"deny")
            && outcomes.contains(&"approval_required"),
        "{outcomes:?}"
    );

    // kill -9, then verify the files of the dead server offline.
    let status = Command::new("kill")
        .args(["-9", &s.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let hostport = s.addr.trim_start_matches("http://").to_string();
    let mut dead = false;
    for _ in 0..100 {
        if std::net::TcpStream::connect(&hostport).is_err() {
            dead = true;
            break;
        }
        // Waiting for another process to die; there is no clock to move.
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(dead, "the server survived kill -9");
    let (ok, out) = verify_offline(&s.data);
    assert!(ok, "offline verify after kill -9 failed: {out}");
    assert!(out.contains("ok: "), "{out}");

    // Restart on the same data: every answered decision is on the record
    // with the answer given, and what was refused before stays refused.
    let s = s.restart();
    let admin = s.admin.clone();
    for (id, outcome) in &answered {
        let (_, v) = s.get(&format!("/v1/audit?request={id}"), Some(&admin));
        let decisions: Vec<&Value> = v["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["event"]["kind"] == "decision")
            .collect();
        assert_eq!(
            decisions.len(),
            1,
            "answered decision {id} is not in the log once: {v}"
        );
        assert_eq!(decisions[0]["event"]["outcome"], outcome.as_str(), "{id}");
    }
    expect_error(
        "a credential revoked before the crash",
        &s.authorize(&revoked_cred, "edr.read_alerts", host("web-1")),
        401,
        "unauthorized",
    );
    expect_deny(
        "a denial before the crash is still a denial",
        &s.authorize(
            &cred,
            "logs.delete",
            json!({"type": "LogStream", "id": "web-1/auth"}),
        ),
    );
    assert_eq!(
        s.authorize(&cred, "edr.read_alerts", host("web-1")).1["decision"],
        "allow"
    );
    let (ok, out, err) = s.cli(&["audit", "verify"]);
    assert!(ok, "online verify after restart failed: {out}{err}");
}

/// Breaks one file of a policy pack; returns the file's old content
/// (`None`: the file is new and is removed afterwards).
type Breakage<'a> = Box<dyn Fn() -> Option<String> + 'a>;

#[test]
fn a_broken_policy_pack_is_refused_and_the_old_one_stays_live() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config_dir(tmp.path(), "");
    let s = Server::start_with_config(&config, &tmp.path().join("data"));
    let admin = s.admin.clone();
    let svid = s.enrol(IR);
    let approver = approver_key(&s, "bob@acme.test", "secops");

    // What the live pack answers, in a fresh task each time (so no chain
    // rule sees the earlier rounds): outcome, policies and pack digest.
    let answers = || {
        let (_, cred) = s.open_task(&svid);
        let asks = [
            read_alerts(),
            json!({"action": "logs.delete", "resource": {"type": "LogStream", "id": "auth"}, "intent": "x"}),
            disable("compromised"),
        ];
        asks.iter()
            .map(|a| {
                let (status, d) = s.post("/v1/authorize", Some(&cred), a);
                assert_eq!(status, 200, "{d}");
                let (_, v) = s.get(
                    &format!("/v1/audit?request={}", d["request_id"].as_str().unwrap()),
                    Some(&admin),
                );
                (
                    d["decision"].as_str().unwrap().to_string(),
                    d["policies"].clone(),
                    v["entries"][0]["event"]["detail"]["policy_digest"]
                        .as_str()
                        .unwrap()
                        .to_string(),
                )
            })
            .collect::<Vec<_>>()
    };
    let baseline = answers();
    assert_eq!(
        baseline
            .iter()
            .map(|(d, _, _)| d.as_str())
            .collect::<Vec<_>>(),
        ["allow", "deny", "approval_required"]
    );

    let append = |file: &str, text: &str| {
        let path = config.join(file);
        let old = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, format!("{old}{text}")).unwrap();
        old
    };
    let replace = |file: &str, text: &str| {
        let path = config.join(file);
        let old = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text).unwrap();
        old
    };
    let bad_policy = "policies/50-bad.cedar";
    let breakages: Vec<(&str, &str, Breakage)> = vec![
        (
            "a Cedar syntax error",
            bad_policy,
            Box::new(|| {
                std::fs::write(
                    config.join(bad_policy),
                    "permit (principal, action, resource) when { ;\n",
                )
                .unwrap();
                None
            }),
        ),
        (
            "a Cedar type error",
            bad_policy,
            Box::new(|| {
                std::fs::write(
                    config.join(bad_policy),
                    "permit (principal, action, resource) when { principal.role > 3 };\n",
                )
                .unwrap();
                None
            }),
        ),
        (
            "a permit for an action the schema does not know",
            bad_policy,
            Box::new(|| {
                std::fs::write(
                    config.join(bad_policy),
                    "permit (principal, action == Action::\"shell.exec\", resource);\n",
                )
                .unwrap();
                None
            }),
        ),
        (
            "a catalog that is not YAML",
            "catalog.yaml",
            Box::new(|| Some(replace("catalog.yaml", "operations: [\n"))),
        ),
        (
            "a catalog operation with an unknown tier",
            "catalog.yaml",
            Box::new(|| {
                Some(append("catalog.yaml", "  shell.exec:\n    description: run anything\n    tier: omnipotent\n    resource_types: [Host]\n"))
            }),
        ),
        (
            "a schema that does not parse",
            "schema.cedarschema",
            Box::new(|| Some(replace("schema.cedarschema", "entity Agent = {\n"))),
        ),
        (
            "a playbook step that is not in the catalog",
            "playbooks.yaml",
            Box::new(|| {
                Some(append("playbooks.yaml", "  rogue:\n    description: x\n    incident_classes: [malware]\n    max_severity: critical\n    on_deviation: deny\n    steps:\n      - action: shell.exec\n"))
            }),
        ),
    ];
    for (name, file, apply) in &breakages {
        let old = apply();
        let got = s.post("/v1/policies/reload", Some(&admin), &json!({}));
        expect_error(&format!("reload with {name}"), &got, 422, "policy_invalid");
        assert!(
            got.1["error"]["diagnostics"]
                .as_array()
                .is_some_and(|d| !d.is_empty()),
            "{name}: no diagnostics: {}",
            got.1
        );
        // Restore the file before asking, so only the live pack can answer.
        match old {
            Some(text) => std::fs::write(config.join(file), text).unwrap(),
            None => std::fs::remove_file(config.join(file)).unwrap(),
        }
        assert_eq!(answers(), baseline, "{name}: the decisions changed");
    }

    // A reload only the admin may trigger.
    std::fs::write(
        config.join(bad_policy),
        "@id(\"allow-all\")\npermit (principal, action, resource);\n",
    )
    .unwrap();
    for (name, token) in [("an agent SVID", &svid), ("an approver key", &approver)] {
        expect_error(
            &format!("reload by {name}"),
            &s.post("/v1/policies/reload", Some(token), &json!({})),
            401,
            "unauthorized",
        );
    }
    assert_eq!(
        answers(),
        baseline,
        "a refused reload changed the decisions"
    );
    std::fs::remove_file(config.join(bad_policy)).unwrap();

    // SIGHUP with a broken pack on disk: refused too, old pack live.
    let rejected = |s: &Server| count(&audit_all(s), "policy.rejected");
    let before = rejected(&s);
    std::fs::write(
        config.join(bad_policy),
        "permit (principal, action, resource) when { ;\n",
    )
    .unwrap();
    let status = Command::new("kill")
        .args(["-HUP", &s.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut seen = before;
    for _ in 0..100 {
        seen = rejected(&s);
        if seen > before {
            break;
        }
        // Waiting on another process's signal handling; there is no clock to move.
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        seen,
        before + 1,
        "SIGHUP with a broken pack was not refused"
    );
    assert_eq!(
        answers(),
        baseline,
        "SIGHUP with a broken pack changed the decisions"
    );
    std::fs::remove_file(config.join(bad_policy)).unwrap();

    let entries = audit_all(&s);
    assert_eq!(
        count(&entries, "policy.loaded"),
        1,
        "a broken pack was loaded"
    );
    assert_eq!(count(&entries, "policy.rejected"), breakages.len() + 1);
}

// ------------------------------------------------------- freeze, revocation

#[test]
fn freeze_close_and_revocation_take_effect_on_the_next_request() {
    let s = Server::start();
    let admin = s.admin.clone();
    let ivan = approver_key(&s, "ivan@acme.test", "identity");
    let pep = pep_key(&s, "edge-proxy");
    let svid = s.enrol(IR);
    s.enrol(FORENSICS);
    let (t1, c1) = s.open_task(&svid);
    s.post(
        &format!("/v1/tasks/{t1}/evidence"),
        Some(&c1),
        &json!({"resource": host("web-1"), "kind": "memory", "sha256": tollgate_core::sha256_hex(b"m")}),
    );
    let (_, d) = s.post("/v1/authorize", Some(&c1), &disable("compromised"));
    let a = d["approval_id"].as_str().unwrap().to_string();
    let (status, _) = s.post(
        &format!("/v1/approvals/{a}/decision"),
        Some(&ivan),
        &json!({"approve": true, "reason": "ok"}),
    );
    assert_eq!(status, 200);
    let frozen = || s.get("/healthz", None).1["frozen"].as_bool().unwrap();

    // Only the admin pulls the kill switch, either way.
    let impostors: Vec<(&str, Option<&str>)> = vec![
        ("no token", None),
        ("an agent SVID", Some(svid.as_str())),
        ("a task credential", Some(c1.as_str())),
        ("an approver key", Some(ivan.as_str())),
        ("a PEP key", Some(pep.as_str())),
    ];
    for (name, token) in &impostors {
        expect_error(
            &format!("freeze by {name}"),
            &s.post("/v1/freeze", *token, &json!({})),
            401,
            "unauthorized",
        );
    }
    assert!(!frozen());
    s.admin_post("/v1/freeze", &json!({}));
    assert!(frozen());

    // Frozen: every agent decision denies, nothing opens, nothing is spent.
    let authzen = |task: &str| {
        s.post(
            "/access/v1/evaluation",
            Some(&pep),
            &json!({"subject": {"type": "agent", "id": IR}, "action": {"name": "edr.read_alerts"},
                    "resource": {"type": "Host", "id": "web-1"}, "context": {"task_id": task}}),
        )
    };
    let frozen_asks: Vec<(&str, (u16, Value))> = vec![
        ("a read", s.authorize(&c1, "edr.read_alerts", host("web-1"))),
        (
            "containment with evidence",
            s.authorize(&c1, "edr.isolate_host", host("web-1")),
        ),
        (
            "an approved approval",
            s.post(
                "/v1/authorize",
                Some(&c1),
                &with_approval(disable("compromised"), &a),
            ),
        ),
    ];
    for (name, got) in &frozen_asks {
        expect_deny(&format!("frozen: {name}"), got);
        assert!(
            got.1["reasons"].to_string().contains("frozen"),
            "{name}: {}",
            got.1
        );
    }
    let (status, v) = authzen(&t1);
    assert_eq!(
        (
            status,
            v["decision"].as_bool(),
            v["context"]["outcome"].as_str()
        ),
        (200, Some(false), Some("deny")),
        "frozen: AuthZEN {v}"
    );
    expect_refused_decision(
        "frozen: opening a task",
        &s.post("/v1/tasks", Some(&svid), &incident_task()),
        "task_refused",
    );
    expect_refused_decision(
        "frozen: delegating",
        &delegate(&s, &c1, &t1, &image(FORENSICS, "Host::web-1", 60)),
        "delegation_refused",
    );
    let (_, shown) = s.get(&format!("/v1/approvals/{a}"), Some(&ivan));
    assert_eq!(
        shown["status"], "approved",
        "a frozen request spent the approval"
    );
    for (name, token) in &impostors {
        expect_error(
            &format!("unfreeze by {name}"),
            &s.post("/v1/unfreeze", *token, &json!({})),
            401,
            "unauthorized",
        );
    }
    assert!(frozen(), "an impostor unfroze the gateway");
    s.admin_post("/v1/unfreeze", &json!({}));
    assert_eq!(
        s.post(
            "/v1/authorize",
            Some(&c1),
            &with_approval(disable("compromised"), &a)
        )
        .1["decision"],
        "allow",
        "the approval should have survived the freeze unspent"
    );

    // A closed task's credential dies on the next request, for every use.
    assert_eq!(
        s.post(
            &format!("/v1/tasks/{t1}/close"),
            Some(&c1),
            &json!({"outcome": "completed"})
        )
        .0,
        200
    );
    let closed: Vec<(&str, (u16, Value))> = vec![
        ("authorize", s.authorize(&c1, "edr.read_alerts", host("web-1"))),
        ("renew", s.post(&format!("/v1/tasks/{t1}/renew"), Some(&c1), &json!({}))),
        ("evidence", s.post(&format!("/v1/tasks/{t1}/evidence"), Some(&c1), &json!({"resource": host("web-2"), "kind": "memory", "sha256": tollgate_core::sha256_hex(b"n")}))),
        ("delegate", delegate(&s, &c1, &t1, &image(FORENSICS, "Host::web-1", 60))),
        ("close again", s.post(&format!("/v1/tasks/{t1}/close"), Some(&c1), &json!({"outcome": "failed"}))),
        ("view its approval", s.get(&format!("/v1/approvals/{a}"), Some(&c1))),
    ];
    for (name, got) in &closed {
        expect_error(&format!("closed task: {name}"), got, 401, "unauthorized");
    }
    let (_, v) = authzen(&t1);
    assert_eq!(
        (
            v["decision"].as_bool(),
            v["context"]["error"]["status"].as_u64()
        ),
        (Some(false), Some(403)),
        "closed task over AuthZEN: {v}"
    );

    // Revoking the agent ends all its tasks and what they delegated.
    let (t2, c2) = s.open_task(&svid);
    let (_, c3) = s.open_task(&svid);
    let (status, child) = delegate(&s, &c2, &t2, &image(FORENSICS, "Host::web-1", 60));
    assert_eq!(status, 201, "{child}");
    let cc = child["credential"].as_str().unwrap().to_string();
    for (name, token) in [
        ("the agent itself", &c2),
        ("an approver", &ivan),
        ("a PEP", &pep),
    ] {
        expect_error(
            &format!("revocation by {name}"),
            &s.post("/v1/revocations", Some(token), &json!({"agent": IR})),
            401,
            "unauthorized",
        );
    }
    assert_eq!(
        s.authorize(&c2, "edr.read_alerts", host("web-1")).1["decision"],
        "allow"
    );
    let r = s.admin_post("/v1/revocations", &json!({"agent": IR}));
    assert_eq!(r["revoked_tasks"].as_array().unwrap().len(), 3, "{r}");
    let revoked: Vec<(&str, (u16, Value), u16, &str)> = vec![
        (
            "its first task",
            s.authorize(&c2, "edr.read_alerts", host("web-1")),
            401,
            "unauthorized",
        ),
        (
            "its second task",
            s.authorize(&c3, "edr.read_alerts", host("web-1")),
            401,
            "unauthorized",
        ),
        (
            "the task it delegated",
            s.authorize(&cc, "forensics.image_host", host("web-1")),
            401,
            "unauthorized",
        ),
        (
            "a renewal",
            s.post(&format!("/v1/tasks/{t2}/renew"), Some(&c2), &json!({})),
            401,
            "unauthorized",
        ),
        (
            "a new task",
            s.post("/v1/tasks", Some(&svid), &incident_task()),
            403,
            "forbidden",
        ),
        (
            "an SVID refresh",
            s.post("/v1/agents/svid", Some(&svid), &json!({})),
            403,
            "forbidden",
        ),
    ];
    for (name, got, status, code) in &revoked {
        expect_error(&format!("revoked agent: {name}"), got, *status, code);
    }
    let (_, v) = authzen(&t2);
    assert_eq!(
        (
            v["decision"].as_bool(),
            v["context"]["error"]["status"].as_u64()
        ),
        (Some(false), Some(403)),
        "revoked task over AuthZEN: {v}"
    );

    let entries = audit_all(&s);
    // The approved use after unfreezing and the one read before revocation.
    assert_eq!(count_outcome(&entries, "decision", "allow"), 2);
    assert_eq!(count_outcome(&entries, "authzen.decision", "allow"), 0);
    let (_, tasks) = s.get(&format!("/v1/tasks?agent={IR}&status=active"), Some(&admin));
    assert_eq!(tasks.as_array().unwrap().len(), 0, "{tasks}");
}

// ------------------------------------------------------- enforcement points

#[test]
fn enforcement_point_calls_cannot_be_forged_or_misdirected() {
    let s = Server::start();
    let pep = pep_key(&s, "edge-proxy");
    let approver = approver_key(&s, "bob@acme.test", "secops");
    let svid = s.enrol(IR);
    let fx_svid = s.enrol(FORENSICS);
    let (task_id, cred) = s.open_task(&svid);
    let (fx_task, _) = open_task_with(&s, &fx_svid, "investigate");
    let (closed_id, closed_cred) = s.open_task(&svid);
    s.post(
        &format!("/v1/tasks/{closed_id}/close"),
        Some(&closed_cred),
        &json!({"outcome": "completed"}),
    );
    let eval = |subject: &str, action: &str, context: Value| {
        json!({"subject": {"type": "agent", "id": subject}, "action": {"name": action},
               "resource": {"type": "Host", "id": "web-1"}, "context": context})
    };
    let good = eval(IR, "edr.read_alerts", json!({"task_id": task_id}));

    // Only a PEP key may ask.
    for (name, token) in [
        ("a task credential", Some(cred.as_str())),
        ("an agent SVID", Some(svid.as_str())),
        ("the admin token", Some(s.admin.as_str())),
        ("an approver key", Some(approver.as_str())),
        ("no token", None),
    ] {
        expect_error(
            &format!("AuthZEN as {name}"),
            &s.post("/access/v1/evaluation", token, &good),
            401,
            "unauthorized",
        );
        expect_error(
            &format!("introspection as {name}"),
            &s.post("/v1/introspect", token, &json!({"token": cred})),
            401,
            "unauthorized",
        );
    }
    // A PEP may not decide for another agent's task, a closed one, or without a task.
    let mut user = eval(IR, "edr.read_alerts", json!({"task_id": task_id}));
    user["subject"]["type"] = json!("user");
    let misdirected: Vec<(&str, Value, u64)> = vec![
        (
            "another agent's task",
            eval(IR, "edr.read_alerts", json!({"task_id": fx_task})),
            404,
        ),
        (
            "a task named for another subject",
            eval(FORENSICS, "edr.read_alerts", json!({"task_id": task_id})),
            404,
        ),
        (
            "a task that does not exist",
            eval(IR, "edr.read_alerts", json!({"task_id": "task_nope"})),
            404,
        ),
        ("no task", eval(IR, "edr.read_alerts", json!({})), 400),
        (
            "a closed task",
            eval(IR, "edr.read_alerts", json!({"task_id": closed_id})),
            403,
        ),
        ("a subject that is not an agent", user, 400),
        (
            "an undeclared parameter",
            eval(
                IR,
                "edr.read_alerts",
                json!({"task_id": task_id, "parameters": {"rm": "-rf"}}),
            ),
            400,
        ),
    ];
    for (name, body, want) in &misdirected {
        let (status, v) = s.post("/access/v1/evaluation", Some(&pep), body);
        assert_eq!(
            (
                status,
                v["decision"].as_bool(),
                v["context"]["error"]["status"].as_u64()
            ),
            (200, Some(false), Some(*want)),
            "AuthZEN: {name}: {v}"
        );
    }
    let (status, v) = s.post(
        "/access/v1/evaluation",
        Some(&pep),
        &eval(IR, "shell.exec", json!({"task_id": task_id})),
    );
    assert_eq!(
        (
            status,
            v["decision"].as_bool(),
            v["context"]["outcome"].as_str()
        ),
        (200, Some(false), Some("deny")),
        "AuthZEN: an action not in the catalog: {v}"
    );
    let too_many: Vec<Value> = (0..101).map(|_| json!({})).collect();
    expect_error(
        "AuthZEN: more than 100 evaluations",
        &s.post("/access/v1/evaluations", Some(&pep), &json!({"subject": good["subject"], "action": good["action"], "resource": good["resource"], "context": good["context"], "evaluations": too_many})),
        400,
        "bad_request",
    );
    expect_error(
        "AuthZEN: malformed JSON",
        &s.post_raw(
            "/access/v1/evaluation",
            Some(&pep),
            "application/json",
            "{\"subject\":",
        ),
        400,
        "invalid_json",
    );
    // Introspection never vouches for a forgery or a dead credential.
    let forged = edit_payload(&cred, |c| c["task_id"] = json!(fx_task));
    let none = format!(
        "{}.{}.",
        b64_json(&json!({"alg": "none", "typ": TASK_TYP})),
        cred.split('.').nth(1).unwrap()
    );
    for (name, token) in [
        ("an edited credential", forged.as_str()),
        ("an alg-none credential", none.as_str()),
        ("a closed task's credential", closed_cred.as_str()),
        ("an SVID", svid.as_str()),
        ("garbage", "x"),
    ] {
        let (status, v) = s.post("/v1/introspect", Some(&pep), &json!({"token": token}));
        assert_eq!(
            (status, &v),
            (200, &json!({"active": false})),
            "introspection of {name}"
        );
    }
    let entries = audit_all(&s);
    assert_eq!(
        count_outcome(&entries, "authzen.decision", "allow"),
        0,
        "a misdirected evaluation was allowed"
    );
    // The real thing still works.
    let (_, v) = s.post("/access/v1/evaluation", Some(&pep), &good);
    assert_eq!(v["decision"], true, "{v}");
}

#[test]
fn quarantine_and_incident_resolution_cannot_be_escaped() {
    let s = Server::start();
    let admin = s.admin.clone();
    let svid = s.enrol(IR);
    s.enrol(FORENSICS);
    let (ta, ca) = s.open_task(&svid);
    let (_, cb) = s.open_task(&svid);

    // Evidence recorded in one task does not unlock containment in another.
    s.post(
        &format!("/v1/tasks/{ta}/evidence"),
        Some(&ca),
        &json!({"resource": host("web-1"), "kind": "memory", "sha256": tollgate_core::sha256_hex(b"m")}),
    );
    let got = s.authorize(&cb, "edr.isolate_host", host("web-1"));
    expect_deny("containment on another task's evidence", &got);
    assert_eq!(
        got.1["obligations"],
        json!(["evidence-before"]),
        "{}",
        got.1
    );

    // A retry storm in one task quarantines the agent (and ends that task).
    let delete_logs = json!({"type": "LogStream", "id": "web-1/auth"});
    let mut stormed = false;
    for _ in 0..15 {
        let got = s.authorize(&cb, "logs.delete", delete_logs.clone());
        expect_deny("a retry storm", &got);
        if got.1["reasons"].to_string().contains("retry storm") {
            stormed = true;
            break;
        }
    }
    assert!(stormed, "15 denials did not trigger the retry-storm rule");
    assert_eq!(count(&audit_all(&s), "agent.quarantined"), 1);

    // No way around the quarantine: other tasks, new tasks, delegation,
    // re-enrolment, or releasing oneself.
    let quarantined: Vec<(&str, (u16, Value))> = vec![
        (
            "the agent's other task reads",
            s.authorize(&ca, "edr.read_alerts", host("web-1")),
        ),
        (
            "the agent's other task contains with evidence",
            s.authorize(&ca, "edr.isolate_host", host("web-1")),
        ),
    ];
    for (name, got) in &quarantined {
        expect_deny(&format!("quarantined: {name}"), got);
        assert!(
            got.1["reasons"].to_string().contains("quarantined"),
            "{name}: {}",
            got.1
        );
    }
    expect_error(
        "quarantined: the storming task",
        &s.authorize(&cb, "edr.read_alerts", host("web-1")),
        401,
        "unauthorized",
    );
    expect_refused_decision(
        "quarantined: a new task",
        &s.post("/v1/tasks", Some(&svid), &incident_task()),
        "task_refused",
    );
    expect_refused_decision(
        "quarantined: a delegation",
        &delegate(&s, &ca, &ta, &image(FORENSICS, "Host::web-1", 60)),
        "delegation_refused",
    );
    let fresh_svid = s.enrol(IR);
    expect_refused_decision(
        "quarantined: a new task after re-enrolment",
        &s.post("/v1/tasks", Some(&fresh_svid), &incident_task()),
        "task_refused",
    );
    for (name, token) in [("its SVID", &fresh_svid), ("its task credential", &ca)] {
        expect_error(
            &format!("quarantined: the agent releases itself with {name}"),
            &s.post("/v1/agents/release", Some(token), &json!({"agent": IR})),
            401,
            "unauthorized",
        );
    }
    let entries = audit_all(&s);
    assert_eq!(count_outcome(&entries, "decision", "allow"), 0);
    assert_eq!(
        count(&entries, "task.opened"),
        2,
        "a quarantined agent opened a task"
    );
    assert_eq!(count(&entries, "task.delegated"), 0);
    s.admin_post(
        "/v1/agents/release",
        &json!({"agent": IR, "reason": "reviewed"}),
    );
    assert_eq!(
        s.authorize(&ca, "edr.read_alerts", host("web-1")).1["decision"],
        "allow"
    );

    // Resolving the incident ends everything bound to it; reopening it
    // revives no credential.
    let (tc, cc) = s.open_task(&fresh_svid);
    let (status, child) = delegate(&s, &cc, &tc, &image(FORENSICS, "Host::web-1", 60));
    assert_eq!(status, 201, "{child}");
    let child_cred = child["credential"].as_str().unwrap().to_string();
    s.admin_post(
        "/v1/incidents/INC-4711",
        &json!({"status": "resolved", "reason": "beacon removed"}),
    );
    expect_refused_decision(
        "a new task on a resolved incident",
        &s.post("/v1/tasks", Some(&fresh_svid), &incident_task()),
        "task_refused",
    );
    s.admin_post(
        "/v1/incidents/INC-4711",
        &json!({"status": "open", "reason": "it came back"}),
    );
    for (name, cred, action) in [
        ("a task from before the quarantine", &ca, "edr.read_alerts"),
        ("a task opened after the release", &cc, "edr.read_alerts"),
        ("its delegated child", &child_cred, "forensics.image_host"),
    ] {
        let got = s.authorize(cred, action, host("web-1"));
        expect_error(
            &format!("after resolve and reopen: {name}"),
            &got,
            401,
            "unauthorized",
        );
        assert!(
            got.1["error"]["message"]
                .as_str()
                .unwrap()
                .contains("resolved"),
            "{name}: {}",
            got.1
        );
    }
    // A fresh task on the reopened incident is the legitimate way back.
    let (_, fresh) = s.open_task(&fresh_svid);
    assert_eq!(
        s.authorize(&fresh, "edr.read_alerts", host("web-1")).1["decision"],
        "allow"
    );
    let (_, tasks) = s.get("/v1/tasks?status=active", Some(&admin));
    assert_eq!(tasks.as_array().unwrap().len(), 1, "{tasks}");
}
