//! Tokens and bad input: every forgery is refused, nothing changes, and the
//! refusal is audited.

use crate::harness::*;
use base64::Engine;
use serde_json::{json, Value};

fn b64(v: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

#[test]
fn forged_tokens_are_refused() {
    let s = Server::start();
    let svid = s.enrol(IR);
    let (task_id, cred) = s.open_task(&svid);
    let (_, jwks) = s.get("/.well-known/jwks.json", None);
    let kid = jwks["keys"][0]["kid"].as_str().unwrap();
    assert_eq!(jwks["keys"][0]["kty"], "OKP");
    let now = now();
    let task_claims = |aud: &str, exp: i64| {
        json!({
            "iss": "tollgate", "sub": IR, "aud": aud, "exp": exp, "iat": now - 10, "jti": "forged",
            "task_id": task_id, "incident_id": "INC-4711", "scope": {},
        })
    };

    // Wrong key: a fresh Ed25519 key that claims the server's kid.
    let (_, other_der) = tollgate_identity::SigningKeyPair::generate().unwrap();
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    h.kid = Some(kid.to_string());
    h.typ = Some("tollgate-task+jwt".into());
    let wrong_key = jsonwebtoken::encode(
        &h,
        &task_claims("tollgate/task", now + 300),
        &jsonwebtoken::EncodingKey::from_ed_der(&other_der),
    )
    .unwrap();
    // alg none.
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "tollgate-task+jwt", "kid": kid})),
        b64(&task_claims("tollgate/task", now + 300))
    );
    // HS256 keyed with the public key (algorithm confusion).
    let mut hh = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    hh.kid = Some(kid.to_string());
    hh.typ = Some("tollgate-task+jwt".into());
    let hmac = jsonwebtoken::encode(
        &hh,
        &task_claims("tollgate/task", now + 300),
        &jsonwebtoken::EncodingKey::from_secret(jwks["keys"][0]["x"].as_str().unwrap().as_bytes()),
    )
    .unwrap();
    // Validly signed, but expired / for another audience.
    let expired = sign_with_server_key(
        &s,
        "tollgate-task+jwt",
        &task_claims("tollgate/task", now - 120),
    );
    let wrong_aud = sign_with_server_key(
        &s,
        "tollgate-task+jwt",
        &task_claims("someone-else", now + 300),
    );
    // An SVID is not a task credential, and a task credential is not an SVID.
    let cases = [
        ("wrong key", wrong_key),
        ("alg none", none),
        ("hs256", hmac),
        ("expired", expired),
        ("wrong audience", wrong_aud),
        ("svid as credential", svid.clone()),
        ("garbage", "not.a.jwt".into()),
    ];
    for (name, token) in &cases {
        let (status, v) = s.authorize(token, "edr.read_alerts", host("web-1"));
        assert_eq!(status, 401, "{name} was accepted: {v}");
        assert_eq!(v["error"]["code"], "unauthorized", "{name}");
    }
    let (status, _) = s.post("/v1/tasks", Some(&cred), &incident_task());
    assert_eq!(status, 401, "a task credential opened a task");
    // No token at all.
    let (status, _) = s.authorize("", "edr.read_alerts", host("web-1"));
    assert_eq!(status, 401);
    // The real credential still works, and each forgery is in the audit
    // log: its own entry, or counted in its second's aggregate (written by
    // the once-a-second loop).
    let (_, d) = s.authorize(&cred, "edr.read_alerts", host("web-1"));
    assert_eq!(d["decision"], "allow");
    std::thread::sleep(std::time::Duration::from_millis(2200));
    let refused: u64 = s
        .audit("")
        .into_iter()
        .filter(|e| e["event"]["kind"] == "auth.refused")
        .map(|e| e["event"]["detail"]["count"].as_u64().unwrap_or(1))
        .sum();
    assert!(
        refused >= cases.len() as u64,
        "only {refused} refusals audited"
    );
    // Forged SVIDs: unregistered agent signed by the real key, and expired.
    let unregistered = sign_with_server_key(
        &s,
        "JWT",
        &json!({"iss": "tollgate", "sub": "spiffe://acme.test/agent/ir-responder/ghost", "aud": ["tollgate"], "exp": now + 300}),
    );
    let (status, v) = s.post("/v1/tasks", Some(&unregistered), &incident_task());
    assert_eq!(status, 401, "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("not registered"));
    let expired_svid = sign_with_server_key(
        &s,
        "JWT",
        &json!({"iss": "tollgate", "sub": IR, "aud": ["tollgate"], "exp": now - 100}),
    );
    let (status, _) = s.post("/v1/tasks", Some(&expired_svid), &incident_task());
    assert_eq!(status, 401);
    let foreign = sign_with_server_key(
        &s,
        "JWT",
        &json!({"sub": "spiffe://evil.test/agent/ir-responder/x", "aud": ["tollgate"], "exp": now + 300}),
    );
    let (status, v) = s.post("/v1/tasks", Some(&foreign), &incident_task());
    assert_eq!(status, 401, "{v}");
}

#[test]
fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let s = Server::start();
    let svid = s.enrol(IR);
    let admin = s.admin.clone();
    let tasks_before = s.get("/v1/tasks", Some(&admin)).1.as_array().unwrap().len();
    let cases: Vec<(&str, &str, String, u16, &str)> = vec![
        ("malformed json", "application/json", "{\"incident\": ".into(), 400, "invalid_json"),
        ("unknown field", "application/json", json!({"incident": {"id": "I", "class": "malware", "severity": "high"}, "environment": "prod", "playbook": "p", "intent": "i", "root": true}).to_string(), 400, "invalid_body"),
        ("bad severity", "application/json", json!({"incident": {"id": "I", "class": "malware", "severity": "apocalyptic"}, "environment": "prod", "playbook": "p", "intent": "i"}).to_string(), 400, "invalid_body"),
        ("empty intent", "application/json", json!({"incident": {"id": "I", "class": "malware", "severity": "high"}, "environment": "prod", "playbook": "p", "intent": " "}).to_string(), 400, "bad_request"),
        ("oversize", "application/json", format!("{{\"intent\": \"{}\"}}", "x".repeat(100 * 1024)), 413, "payload_too_large"),
        ("wrong content type", "text/plain", incident_task().to_string(), 415, "unsupported_media_type"),
    ];
    for (name, ct, body, want, code) in cases {
        let (status, v) = s.post_raw("/v1/tasks", Some(&svid), ct, &body);
        assert_eq!(status, want, "{name}: {v}");
        assert_eq!(v["error"]["code"], code, "{name}: {v}");
        assert!(!v["error"]["message"].as_str().unwrap().is_empty());
    }
    assert_eq!(
        s.get("/v1/tasks", Some(&admin)).1.as_array().unwrap().len(),
        tasks_before,
        "bad input created a task"
    );

    // Requests that do not fit the schema are refused, and audited as refused.
    let (_, cred) = s.open_task(&svid);
    let (status, v) = s.post("/v1/authorize", Some(&cred), &json!({"action": "edr.read_alerts", "resource": host("web-1"), "intent": "x", "parameters": {"rm": "-rf"}}));
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("rm"),
        "{v}"
    );
    let (status, v) = s.post("/v1/authorize", Some(&cred), &json!({"action": "edr.read_alerts", "resource": {"type": "Host", "id": "w", "attributes": {"environment": 7}}, "intent": "x"}));
    assert_eq!(status, 400, "{v}");
    assert!(s
        .audit("")
        .iter()
        .any(|e| e["event"]["kind"] == "decision" && e["event"]["outcome"] == "refused"));
    // Bad admin calls.
    let (status, v) = s.post(
        "/v1/agents",
        Some(&admin),
        &json!({"spiffe_id": "spiffe://acme.test", "owner": "x"}),
    );
    assert_eq!(status, 400, "{v}");
    let (status, _) = s.post(
        "/v1/agents",
        Some("tga_wrong"),
        &json!({"spiffe_id": IR, "owner": "x"}),
    );
    assert_eq!(status, 401);
    let (status, v) = s.post(
        "/v1/revocations",
        Some(&admin),
        &json!({"task_id": "a", "agent": IR}),
    );
    assert_eq!(status, 400, "{v}");
    let (status, v) = s.get("/v1/nope", None);
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
}

#[test]
fn revocation_takes_effect_on_the_next_request() {
    let s = Server::start();
    let svid = s.enrol(IR);
    let (t1, c1) = s.open_task(&svid);
    let (_, c2) = s.open_task(&svid);
    assert_eq!(
        s.authorize(&c1, "edr.read_alerts", host("web-1")).1["decision"],
        "allow"
    );

    // Revoking one task kills only that task.
    s.admin_post(
        "/v1/revocations",
        &json!({"task_id": t1, "reason": "suspicious"}),
    );
    let (status, v) = s.authorize(&c1, "edr.read_alerts", host("web-1"));
    assert_eq!(status, 401);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("suspicious"),
        "{v}"
    );
    assert_eq!(
        s.authorize(&c2, "edr.read_alerts", host("web-1")).1["decision"],
        "allow"
    );

    // Revoking the agent kills all its tasks, its SVID, and new tasks.
    let r = s.admin_post("/v1/revocations", &json!({"agent": IR}));
    assert_eq!(r["revoked_tasks"].as_array().unwrap().len(), 1);
    assert_eq!(s.authorize(&c2, "edr.read_alerts", host("web-1")).0, 401);
    let (status, _) = s.post("/v1/tasks", Some(&svid), &incident_task());
    assert_eq!(status, 403);
    let (status, _) = s.post("/v1/agents/svid", Some(&svid), &json!({}));
    assert_eq!(status, 403);
    // Re-enrolment restores it.
    let svid2 = s.enrol(IR);
    let (_, c3) = s.open_task(&svid2);
    assert_eq!(
        s.authorize(&c3, "edr.read_alerts", host("web-1")).1["decision"],
        "allow"
    );
    // Revoking by incident kills every task on it.
    let r = s.admin_post("/v1/revocations", &json!({"incident_id": "INC-4711"}));
    assert_eq!(r["revoked_tasks"].as_array().unwrap().len(), 1);
    assert_eq!(s.authorize(&c3, "edr.read_alerts", host("web-1")).0, 401);
}

#[test]
fn external_spiffe_issuers_are_trusted_per_trust_domain() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("config");
    let out = std::process::Command::new(bin())
        .arg("init")
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success());
    let (partner, der) = tollgate_identity::SigningKeyPair::generate().unwrap();
    std::fs::create_dir_all(config.join("bundles")).unwrap();
    std::fs::write(
        config.join("bundles/partner.test.json"),
        json!({"keys": [partner.public_jwk()]}).to_string(),
    )
    .unwrap();
    let yaml = std::fs::read_to_string(config.join("tollgate.yaml")).unwrap();
    std::fs::write(config.join("tollgate.yaml"), format!("{yaml}trust_bundles:\n  - trust_domain: partner.test\n    jwks_file: bundles/partner.test.json\n")).unwrap();
    let s = Server::start_with_config(&config, &tmp.path().join("data"));

    let agent = "spiffe://partner.test/agent/ir-responder/p-1";
    let reg = s.admin_post(
        "/v1/agents",
        &json!({"spiffe_id": agent, "owner": "partner-soc"}),
    );
    assert!(
        reg["join_token"].is_null(),
        "external agents need no join token"
    );
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    h.kid = Some(partner.kid().to_string());
    let key = jsonwebtoken::EncodingKey::from_ed_der(&der);
    let svid = jsonwebtoken::encode(
        &h,
        &json!({"sub": agent, "aud": ["tollgate"], "exp": now() + 60}),
        &key,
    )
    .unwrap();
    let (task_id, cred) = s.open_task(&svid);
    assert!(task_id.starts_with("task_"));
    assert_eq!(
        s.authorize(&cred, "edr.read_alerts", host("web-1")).1["decision"],
        "allow"
    );
    // The partner's key cannot vouch for our trust domain, nor for a wrong audience.
    let spoof = jsonwebtoken::encode(
        &h,
        &json!({"sub": IR, "aud": ["tollgate"], "exp": now() + 60}),
        &key,
    )
    .unwrap();
    assert_eq!(s.post("/v1/tasks", Some(&spoof), &incident_task()).0, 401);
    let wrong_aud = jsonwebtoken::encode(
        &h,
        &json!({"sub": agent, "aud": ["elsewhere"], "exp": now() + 60}),
        &key,
    )
    .unwrap();
    assert_eq!(
        s.post("/v1/tasks", Some(&wrong_aud), &incident_task()).0,
        401
    );
    let no_kid = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA),
        &json!({"sub": agent, "aud": ["tollgate"], "exp": now() + 60}),
        &key,
    )
    .unwrap();
    assert_eq!(s.post("/v1/tasks", Some(&no_kid), &incident_task()).0, 401);
}

/// A bundle endpoint's stand-in: plain HTTP on 127.0.0.1 answering every
/// request with the current body (or 503 while it is `None`). Put behind
/// [`tls_proxy`] for https.
struct BundleServer {
    body: std::sync::Arc<std::sync::Mutex<Option<String>>>,
    addr: String,
}

impl BundleServer {
    fn start(first: &Value) -> Self {
        use std::io::Write;
        let body = std::sync::Arc::new(std::sync::Mutex::new(Some(first.to_string())));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let serving = body.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
                if read_request(&mut reader).is_none() {
                    continue;
                }
                let answer = match serving.lock().unwrap().clone() {
                    Some(b) => format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{b}",
                        b.len()
                    ),
                    None => "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".into(),
                };
                let _ = conn.write_all(answer.as_bytes());
            }
        });
        Self { body, addr }
    }

    fn serve(&self, body: Option<&Value>) {
        *self.body.lock().unwrap() = body.map(Value::to_string);
    }
}

/// A partner's signing key, and SVIDs it signs.
struct PartnerKey {
    pair: tollgate_identity::SigningKeyPair,
    der: Vec<u8>,
}

impl PartnerKey {
    fn new() -> Self {
        let (pair, der) = tollgate_identity::SigningKeyPair::generate().unwrap();
        Self { pair, der }
    }

    /// Its JWK as a SPIFFE bundle lists a JWT-SVID key.
    fn jwk(&self) -> Value {
        let mut k = self.pair.public_jwk().clone();
        k["use"] = json!("jwt-svid");
        k
    }

    fn svid(&self, agent: &str) -> String {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        h.kid = Some(self.pair.kid().to_string());
        jsonwebtoken::encode(
            &h,
            &json!({"sub": agent, "aud": ["tollgate"], "exp": now() + 120}),
            &jsonwebtoken::EncodingKey::from_ed_der(&self.der),
        )
        .unwrap()
    }
}

fn spiffe_bundle(sequence: u64, keys: &[&PartnerKey]) -> Value {
    json!({
        "spiffe_sequence": sequence,
        "spiffe_refresh_hint": 1,
        "keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>(),
    })
}

fn metrics_text(s: &Server) -> String {
    s.get("/metrics", None).1.as_str().unwrap().to_string()
}

/// The value of a metric line, e.g. `tollgate_trust_bundle_keys{…}`.
fn metric(s: &Server, name: &str) -> Option<f64> {
    let text = metrics_text(s);
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
}

/// Poll (the refresh interval is one second) until `f` holds; 15 s at most.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while std::time::Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    panic!("{what}: not within 15 s");
}

#[test]
fn a_spiffe_bundle_endpoint_rotates_keys_without_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, c) = (PartnerKey::new(), PartnerKey::new(), PartnerKey::new());
    let bundles = BundleServer::start(&spiffe_bundle(1, &[&a]));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (port, ca_pem) = tls_proxy(&rt, bundles.addr.clone());
    let config = config_dir(
        tmp.path(),
        &format!(
            "trust_bundles:\n  - trust_domain: partner.test\n    bundle_endpoint:\n      url: https://localhost:{port}/bundle\n      ca_file: bundle-ca.pem\n"
        ),
    );
    std::fs::write(config.join("bundle-ca.pem"), &ca_pem).unwrap();
    let data = tmp.path().join("data");
    let mut s = Server::start_with_config(&config, &data);
    let agent = "spiffe://partner.test/agent/ir-responder/p-1";
    s.admin_post(
        "/v1/agents",
        &json!({"spiffe_id": agent, "owner": "partner-soc"}),
    );
    let opens = |s: &Server, key: &PartnerKey| {
        s.post("/v1/tasks", Some(&key.svid(agent)), &incident_task())
            .0
    };

    // Fetched before the first request: A is trusted at once, B is not.
    assert_eq!(opens(&s, &a), 201);
    assert_eq!(opens(&s, &b), 401);
    let label = "{trust_domain=\"partner.test\"}";
    assert_eq!(
        metric(&s, &format!("tollgate_trust_bundle_keys{label}")),
        Some(1.0)
    );
    let age = metric(&s, &format!("tollgate_trust_bundle_age_seconds{label}")).unwrap();
    assert!((0.0..5.0).contains(&age), "age {age}");

    // Rotation at the issuer: B is added, then A retired; each reaches the
    // running server at the next refresh (the bundle asks for one a second).
    bundles.serve(Some(&spiffe_bundle(2, &[&a, &b])));
    eventually("B trusted", || opens(&s, &b) == 201);
    bundles.serve(Some(&spiffe_bundle(3, &[&b])));
    eventually("A retired", || opens(&s, &a) == 401);
    assert_eq!(opens(&s, &b), 201);

    // An old bundle replayed (a lower sequence) is refused: A stays retired.
    let failures = |s: &Server| {
        metric(
            s,
            &format!("tollgate_trust_bundle_refresh_failures_total{label}"),
        )
        .unwrap()
    };
    let before = failures(&s);
    bundles.serve(Some(&spiffe_bundle(1, &[&a])));
    eventually("the replay counted as a failure", || failures(&s) > before);
    assert_eq!(opens(&s, &a), 401);

    // The endpoint down: the last good bundle is kept, the failures counted.
    bundles.serve(None);
    let before = failures(&s);
    eventually("the outage counted", || failures(&s) > before);
    assert_eq!(opens(&s, &b), 201);

    // A restart while it is still down: the saved copy is trusted.
    s.restart_in_place();
    assert_eq!(opens(&s, &b), 201);
    assert_eq!(opens(&s, &a), 401);

    // A plain JWK Set (no SPIFFE fields) is a bundle too.
    bundles.serve(Some(&json!({"keys": [c.pair.public_jwk()]})));
    eventually("C trusted", || opens(&s, &c) == 201);
    assert_eq!(opens(&s, &b), 401);

    // Every change of keys is in the audit log, with the ids before and after.
    let updates: Vec<Value> = s
        .audit("")
        .into_iter()
        .filter(|e| e["event"]["kind"] == "trust_bundle.updated")
        .map(|e| e["event"]["detail"].clone())
        .collect();
    let kids = |k: &PartnerKey| json!([k.pair.kid()]);
    assert_eq!(updates[0]["key_ids"], kids(&a), "{updates:?}");
    assert_eq!(updates[0]["previous_key_ids"], json!([]));
    assert_eq!(updates.last().unwrap()["key_ids"], kids(&c), "{updates:?}");
    assert!(
        updates
            .iter()
            .any(|u| u["key_ids"] == kids(&b) && u["sequence"] == 3),
        "{updates:?}"
    );
}

#[test]
fn a_bundle_endpoint_with_an_untrusted_certificate_is_never_believed() {
    let tmp = tempfile::tempdir().unwrap();
    let a = PartnerKey::new();
    let bundles = BundleServer::start(&spiffe_bundle(1, &[&a]));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (port, _) = tls_proxy(&rt, bundles.addr.clone());
    // Another CA than the one that signed the endpoint's certificate.
    let (_, other_ca) = tls_proxy(&rt, bundles.addr.clone());
    let config = config_dir(
        tmp.path(),
        &format!(
            "trust_bundles:\n  - trust_domain: partner.test\n    bundle_endpoint:\n      url: https://localhost:{port}/bundle\n      ca_file: other-ca.pem\n"
        ),
    );
    std::fs::write(config.join("other-ca.pem"), other_ca).unwrap();
    let s = Server::start_with_config(&config, &tmp.path().join("data"));
    let agent = "spiffe://partner.test/agent/ir-responder/p-1";
    s.admin_post(
        "/v1/agents",
        &json!({"spiffe_id": agent, "owner": "partner-soc"}),
    );
    let (status, body) = s.post("/v1/tasks", Some(&a.svid(agent)), &incident_task());
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no trust bundle"),
        "{body}"
    );
    let label = "{trust_domain=\"partner.test\"}";
    assert!(
        metric(
            &s,
            &format!("tollgate_trust_bundle_refresh_failures_total{label}")
        )
        .unwrap()
            >= 1.0
    );
    assert_eq!(
        metric(&s, &format!("tollgate_trust_bundle_keys{label}")),
        Some(0.0)
    );
    // Nothing was saved to be trusted later.
    assert!(!tmp.path().join("data/bundles/partner.test.json").exists());
}
