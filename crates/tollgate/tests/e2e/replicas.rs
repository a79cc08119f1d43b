//! Three `tollgate serve` replicas over one PostgreSQL schema: whatever one
//! replica decides or changes, the others see on their very next request
//! (join tokens, revocations, closes, the brake, chain-rule history, approval
//! use), and the three write one audit log.
//!
//! Needs `TOLLGATE_TEST_PG` (e.g. `postgres://postgres@127.0.0.1:5432/test`)
//! and the `psql` client; without the variable each test says it was skipped
//! and passes. With it, an unreachable server fails the test. Each test works
//! in a fresh schema of its own, dropped at the end.

use crate::harness::*;
use serde_json::{json, Value};
use std::process::Command;
use std::sync::{Arc, Barrier};

/// A PostgreSQL schema that lives as long as the test: dropped (with every
/// table in it) by `Drop`, after the replicas using it are gone.
struct Schema {
    url: String,
    name: String,
}

impl Schema {
    fn new(url: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let s = Self {
            url: url.to_string(),
            name: format!("tg_e2e_{nanos:x}_{}_{n}", std::process::id()),
        };
        // Set but unreachable is a failure, with a message that says so.
        let (ok, out) = s.psql("SELECT 1");
        assert!(ok, "TOLLGATE_TEST_PG={url} is set but unusable: {out}");
        s
    }

    fn psql(&self, sql: &str) -> (bool, String) {
        let out = Command::new("psql")
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(["-d", &self.url, "-c", sql])
            .env("PGCONNECT_TIMEOUT", "5")
            .output()
            .expect("running psql");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let (ok, out) = self.psql(&format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.name));
        if !ok {
            eprintln!("could not drop schema {}: {out}", self.name);
        }
    }
}

/// Three replicas. Fields drop in order: the replicas are killed first
/// (even when the test fails), then the schema is dropped, then the data dir.
struct Cluster {
    nodes: Vec<Server>,
    schema: Schema,
    _tmp: tempfile::TempDir,
}

impl Cluster {
    /// `None` (the test is skipped) without `TOLLGATE_TEST_PG`.
    fn start() -> Option<Self> {
        let url = match std::env::var("TOLLGATE_TEST_PG") {
            Ok(u) if !u.is_empty() => u,
            _ => {
                eprintln!("skipped: TOLLGATE_TEST_PG is not set");
                return None;
            }
        };
        let schema = Schema::new(&url);
        let tmp = tempfile::tempdir().unwrap();
        // One data dir for all: the issuer key, admin token and audit keys
        // are shared. The first replica creates them (and the schema, and
        // its tables); the others start once it answers.
        let data = tmp.path().join("data");
        let env = [
            ("TOLLGATE_STORE", url.as_str()),
            ("TOLLGATE_STORE_SCHEMA", schema.name.as_str()),
        ];
        let mut nodes = Vec::new();
        for _ in 0..3 {
            let s = Server::start_with_env(&data, &env);
            wait_live(&s);
            nodes.push(s);
        }
        let c = Self {
            nodes,
            schema,
            _tmp: tmp,
        };
        // Truly three processes on three ports, over the PostgreSQL store:
        // no SQLite file in the shared data dir, and the tables in the schema.
        let addrs: std::collections::HashSet<&str> =
            c.nodes.iter().map(|s| s.addr.as_str()).collect();
        assert_eq!(addrs.len(), 3);
        assert!(
            !data.join("tollgate.db").exists(),
            "a replica opened SQLite"
        );
        assert_eq!(c.sql("SELECT count(*) FROM audit_head"), "1");
        Some(c)
    }

    /// One value from the replicas' schema.
    fn sql(&self, query: &str) -> String {
        let (ok, out) = self.schema.psql(&format!(
            "SET search_path TO \"{}\"; {query}",
            self.schema.name
        ));
        assert!(ok, "{query}: {out}");
        out.trim().to_string()
    }

    fn a(&self) -> &Server {
        &self.nodes[0]
    }
    fn b(&self) -> &Server {
        &self.nodes[1]
    }
    fn c(&self) -> &Server {
        &self.nodes[2]
    }

    /// `tollgate audit verify` over the API of `node`, as the admin.
    fn verify_audit(&self, node: &Server) -> String {
        let out = Command::new(bin())
            .args(["audit", "verify"])
            .env("TOLLGATE_ADDR", &node.addr)
            .env("TOLLGATE_TOKEN", &node.admin)
            .env_remove("TOLLGATE_DATA")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && text.contains("hash chain intact"),
            "audit verify against {} refused the log: {text}",
            node.addr
        );
        text
    }
}

/// Poll `GET /livez` (the first line is printed once the listener is
/// bound, so this normally answers at once).
fn wait_live(s: &Server) {
    let started = std::time::Instant::now();
    loop {
        if let Ok(mut r) = agent().get(&s.url("/livez")).call() {
            if r.status() == 200 {
                let _ = r.body_mut().read_to_string();
                return;
            }
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "{} never answered /livez",
            s.addr
        );
        std::thread::sleep(std::time::Duration::from_millis(20)); // polling, not timing
    }
}

fn register(s: &Server, spiffe_id: &str) -> String {
    let reg = s.admin_post(
        "/v1/agents",
        &json!({"spiffe_id": spiffe_id, "owner": "alice@acme.test"}),
    );
    reg["join_token"].as_str().unwrap().to_string()
}

fn attest(s: &Server, join: &str) -> (u16, Value) {
    s.post("/v1/agents/attest", None, &json!({"join_token": join}))
}

fn decision(got: &(u16, Value)) -> &str {
    assert_eq!(got.0, 200, "{}", got.1);
    got.1["decision"].as_str().unwrap_or("")
}

fn refused(got: &(u16, Value), why: &str, who: &str) {
    assert_eq!(got.0, 401, "{who}: expected 401, got {} {}", got.0, got.1);
    let msg = got.1["error"]["message"].as_str().unwrap_or("");
    assert!(msg.contains(why), "{who}: {msg:?} does not say {why:?}");
}

/// Send `body` to `/v1/authorize` on each of `urls` at the same moment.
fn race(urls: Vec<String>, cred: &str, body: &Value) -> Vec<Value> {
    let barrier = Arc::new(Barrier::new(urls.len()));
    let handles: Vec<_> = urls
        .into_iter()
        .map(|url| {
            let (cred, body, barrier) = (cred.to_string(), body.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                post_json(&url, Some(&cred), &body)
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| {
            let (status, v) = h.join().unwrap();
            assert_eq!(status, 200, "{v}");
            v
        })
        .collect()
}

#[test]
fn replicas_a_join_token_works_once_across_replicas() {
    let Some(cl) = Cluster::start() else { return };
    let (a, b, c) = (cl.a(), cl.b(), cl.c());
    let join = register(a, IR);
    let (status, attested) = attest(a, &join);
    assert_eq!(status, 200, "{attested}");
    let svid = attested["svid"].as_str().unwrap().to_string();
    for (name, s) in [("B", b), ("C", c)] {
        let (status, again) = attest(s, &join);
        assert_eq!(
            status, 401,
            "a join token used on A worked again on {name}: {again}"
        );
        assert_eq!(again["error"]["code"], "unauthorized", "{again}");
    }
    // The SVID A issued is good on B (one issuer key); a task opened on B
    // is usable on C.
    let (_, cred) = b.open_task(&svid);
    assert_eq!(
        decision(&c.authorize(&cred, "edr.read_alerts", host("web-1"))),
        "allow"
    );

    // A fresh token presented to all three at the same moment: one wins.
    let fx = "spiffe://acme.test/agent/forensics/i-2";
    let join = register(b, fx);
    let barrier = Arc::new(Barrier::new(3));
    let handles: Vec<_> = cl
        .nodes
        .iter()
        .map(|s| {
            let (url, join, barrier) = (s.url("/v1/agents/attest"), join.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                post_json(&url, None, &json!({"join_token": join})).0
            })
        })
        .collect();
    let mut statuses: Vec<u16> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    statuses.sort_unstable();
    assert_eq!(
        statuses,
        [200, 401, 401],
        "one join token, three simultaneous attestations"
    );
    cl.verify_audit(c);
}

#[test]
fn replicas_a_revocation_or_close_on_one_is_refused_on_the_others() {
    let Some(cl) = Cluster::start() else { return };
    let (a, b, c) = (cl.a(), cl.b(), cl.c());
    let svid = a.enrol(IR);

    // Revoked on A: B and C refuse on the very next request. Both have
    // seen the credential (and allowed it) just before.
    let (t1, cred1) = a.open_task(&svid);
    for s in [b, c] {
        assert_eq!(
            decision(&s.authorize(&cred1, "edr.read_alerts", host("web-1"))),
            "allow"
        );
    }
    a.admin_post("/v1/revocations", &json!({"task_id": t1}));
    refused(
        &b.authorize(&cred1, "edr.read_alerts", host("web-1")),
        "revoked",
        "task revoked on A, used on B",
    );
    refused(
        &c.authorize(&cred1, "edr.read_alerts", host("web-1")),
        "revoked",
        "task revoked on A, used on C",
    );

    // Closed on B: C (and A) refuse on the very next request.
    let (t2, cred2) = c.open_task(&svid);
    for s in [a, c] {
        assert_eq!(
            decision(&s.authorize(&cred2, "edr.read_alerts", host("web-1"))),
            "allow"
        );
    }
    let (status, closed) = b.post(
        &format!("/v1/tasks/{t2}/close"),
        Some(&cred2),
        &json!({"outcome": "completed", "summary": "done"}),
    );
    assert_eq!(status, 200, "{closed}");
    refused(
        &c.authorize(&cred2, "edr.read_alerts", host("web-1")),
        "completed",
        "task closed on B, used on C",
    );
    refused(
        &a.authorize(&cred2, "edr.read_alerts", host("web-1")),
        "completed",
        "task closed on B, used on A",
    );

    // A revoked agent opens no task anywhere.
    a.admin_post("/v1/revocations", &json!({"agent": IR}));
    for (name, s) in [("B", b), ("C", c)] {
        let (status, v) = s.post("/v1/tasks", Some(&svid), &incident_task());
        assert_eq!(
            status, 403,
            "agent revoked on A opened a task on {name}: {v}"
        );
    }
    cl.verify_audit(a);
}

#[test]
fn replicas_freeze_on_one_denies_on_all_and_unfreeze_anywhere_restores() {
    let Some(cl) = Cluster::start() else { return };
    let (a, b, c) = (cl.a(), cl.b(), cl.c());
    let svid = a.enrol(IR);
    let (_, cred) = a.open_task(&svid);
    let frozen = |s: &Server| s.get("/healthz", None).1["frozen"].as_bool().unwrap();
    for s in [a, b, c] {
        assert_eq!(
            decision(&s.authorize(&cred, "edr.read_alerts", host("web-1"))),
            "allow"
        );
        assert!(!frozen(s));
    }

    a.admin_post("/v1/freeze", &json!({}));
    for (name, s) in [("B", b), ("C", c)] {
        let got = s.authorize(&cred, "edr.read_alerts", host("web-1"));
        assert_eq!(
            decision(&got),
            "deny",
            "frozen on A, {name} still allowed: {}",
            got.1
        );
        assert!(
            got.1["reasons"].to_string().contains("frozen"),
            "{name}: {}",
            got.1
        );
        assert!(frozen(s), "{name}'s /healthz does not say frozen");
    }

    c.admin_post("/v1/unfreeze", &json!({}));
    for (name, s) in [("A", a), ("B", b)] {
        let got = s.authorize(&cred, "edr.read_alerts", host("web-1"));
        assert_eq!(
            decision(&got),
            "allow",
            "unfrozen on C, {name} still denies: {}",
            got.1
        );
        assert!(!frozen(s));
    }
    cl.verify_audit(b);
}

#[test]
fn replicas_a_secret_read_on_one_blocks_egress_on_another() {
    let Some(cl) = Cluster::start() else { return };
    let (a, b, c) = (cl.a(), cl.b(), cl.c());
    let svid = a.enrol(IR);
    let (_, cred) = c.open_task(&svid);
    let egress = json!({"type": "Url", "id": "https://ticket.acme.test/x", "attributes": {"domain": "ticket.acme.test"}});
    // Before any secret is read, egress through B only needs a human.
    assert_eq!(
        decision(&b.authorize(&cred, "http.post", egress.clone())),
        "approval_required"
    );

    let read = a.authorize(
        &cred,
        "vault.read_secret",
        json!({"type": "Secret", "id": "db-password"}),
    );
    assert_eq!(decision(&read), "allow", "{}", read.1);
    let got = b.authorize(&cred, "http.post", egress);
    assert_eq!(
        decision(&got),
        "deny",
        "egress on B after a secret read on A: {}",
        got.1
    );
    assert!(
        got.1["policies"]
            .to_string()
            .contains("no-egress-after-secret-read"),
        "{}",
        got.1
    );
    // The reason names the read A allowed.
    let why = got.1["reasons"].to_string();
    assert!(
        why.contains(read.1["request_id"].as_str().unwrap())
            && why.contains("vault.read_secret on Secret::db-password"),
        "{why}"
    );
    // The rule revoked the task: C refuses it next.
    refused(
        &c.authorize(&cred, "edr.read_alerts", host("web-1")),
        "revoked for deviation",
        "task revoked by a chain rule on B, used on C",
    );
    cl.verify_audit(a);
}

#[test]
fn replicas_an_approval_presented_to_all_three_at_once_is_spent_once() {
    let Some(cl) = Cluster::start() else { return };
    let (a, b, c) = (cl.a(), cl.b(), cl.c());
    let ivan = a.approver("ivan@acme.test", "identity");
    let svid = b.enrol(IR);
    let (_, cred) = c.open_task(&svid);
    let urls: Vec<String> = cl.nodes.iter().map(|s| s.url("/v1/authorize")).collect();
    // Three rounds: six losing uses stay under the retry-storm chain rule,
    // three allowed changes under the identity-change rate limit.
    for round in 0..3 {
        let mut ask = json!({
            "action": "iam.disable_account", "resource": {"type": "Account", "id": "jdoe"},
            "intent": "jdoe's session launched the beacon",
            "parameters": {"reason": format!("compromised-{round}")},
        });
        let (_, d) = a.post("/v1/authorize", Some(&cred), &ask);
        assert_eq!(d["decision"], "approval_required", "{d}");
        let id = d["approval_id"].as_str().unwrap().to_string();
        let (status, v) = b.post(
            &format!("/v1/approvals/{id}/decision"),
            Some(&ivan),
            &json!({"approve": true, "reason": "confirmed"}),
        );
        assert_eq!(
            (status, v["status"].as_str()),
            (200, Some("approved")),
            "{v}"
        );
        let (_, shown) = c.get(&format!("/v1/approvals/{id}"), Some(&cred));
        assert_eq!(shown["status"], "approved", "{shown}");

        ask["approval_id"] = json!(id);
        let answers = race(urls.clone(), &cred, &ask);
        let outcomes: Vec<&str> = answers
            .iter()
            .map(|v| v["decision"].as_str().unwrap())
            .collect();
        let allows: Vec<&Value> = answers
            .iter()
            .filter(|v| v["decision"] == "allow")
            .collect();
        assert_eq!(
            (
                allows.len(),
                outcomes.iter().filter(|o| **o == "deny").count()
            ),
            (1, 2),
            "round {round}: A, B, C answered {outcomes:?}: {answers:?}"
        );
        // Every replica says it was used, by the request that was allowed.
        for s in &cl.nodes {
            let (_, shown) = s.get(&format!("/v1/approvals/{id}"), Some(&cred));
            assert_eq!(
                (shown["status"].as_str(), shown["used_by"].as_str()),
                (Some("used"), allows[0]["request_id"].as_str()),
                "{shown}"
            );
        }
    }
    cl.verify_audit(b);
}

#[test]
fn replicas_write_one_log_without_fork_or_gap() {
    let Some(cl) = Cluster::start() else { return };
    let svid = cl.a().enrol(IR);
    let (_, cred) = cl.b().open_task(&svid);
    // All three append at once, to the one chain.
    let handles: Vec<_> = cl
        .nodes
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let (url, cred) = (s.url("/v1/authorize"), cred.clone());
            std::thread::spawn(move || {
                for j in 0..20 {
                    let (status, d) = post_json(
                        &url,
                        Some(&cred),
                        &json!({"action": "edr.read_alerts", "resource": host(&format!("web-{i}-{j}")), "intent": "sweep"}),
                    );
                    assert_eq!((status, d["decision"].as_str()), (200, Some("allow")), "{d}");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }

    // Every replica serves the same log: seq 1..n, each entry linked to
    // the one before it.
    let read_all = |s: &Server| -> Vec<Value> {
        let mut out: Vec<Value> = Vec::new();
        loop {
            let after = out.last().map(|e| e["seq"].as_u64().unwrap()).unwrap_or(0);
            let (status, v) = s.get(
                &format!("/v1/audit?limit=1000&after={after}"),
                Some(&s.admin.clone()),
            );
            assert_eq!(status, 200, "{v}");
            let page = v["entries"].as_array().unwrap().clone();
            if page.is_empty() {
                return out;
            }
            out.extend(page);
        }
    };
    let logs: Vec<Vec<Value>> = cl.nodes.iter().map(read_all).collect();
    let log = &logs[0];
    assert!(log.len() >= 62, "{} entries", log.len());
    for (i, e) in log.iter().enumerate() {
        assert_eq!(e["seq"].as_u64(), Some(i as u64 + 1), "gap at {e}");
        if i > 0 {
            assert_eq!(e["prev_hash"], log[i - 1]["hash"], "fork at {e}");
        }
    }
    let decisions = log
        .iter()
        .filter(|e| e["event"]["kind"] == "decision")
        .count();
    assert_eq!(decisions, 60);
    // ... which is the one in PostgreSQL.
    let stored = cl.sql("SELECT count(*) || ' ' || max(seq) FROM audit");
    let (count, max): (u64, u64) = {
        let mut it = stored.split(' ').map(|n| n.parse::<u64>().unwrap());
        (it.next().unwrap(), it.next().unwrap())
    };
    assert!(count == max && count >= log.len() as u64, "{stored}");
    for (name, other) in ["B", "C"].iter().zip(&logs[1..]) {
        // The others may already hold a later entry or two (e.g. their own
        // background work): what they share with A is identical.
        assert!(other.len() >= log.len(), "{name} sees a shorter log");
        assert_eq!(&other[..log.len()], &log[..], "{name} serves another log");
    }

    // And the CLI accepts it through every replica: each signs (or finds) a
    // checkpoint over the whole log and checks every checkpoint so far.
    for s in &cl.nodes {
        let out = cl.verify_audit(s);
        assert!(out.contains("ok: "), "{out}");
    }
}

/// What one load thread saw, per replica (indexed like `Cluster::nodes`
/// before the kill).
#[derive(Default)]
struct Seen {
    /// Request ids of the decisions answered with a 200: acknowledged.
    acked: Vec<String>,
    /// 200s per replica for requests sent after the kill was complete.
    after_kill: [u32; 3],
    /// Requests that failed at the connection level, per replica.
    failed: [u32; 3],
    /// Answers other than a 200 allow (status, body), per replica.
    odd: Vec<(usize, u16, Value)>,
}

#[test]
fn replicas_a_killed_replica_loses_no_acknowledged_decision() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;
    let Some(mut cl) = Cluster::start() else {
        return;
    };
    let svid = cl.a().enrol(IR);
    // One task per replica, so the load is not one task's history alone.
    let creds: Vec<String> = cl.nodes.iter().map(|s| s.open_task(&svid).1).collect();
    let urls: Vec<String> = cl.nodes.iter().map(|s| s.url("/v1/authorize")).collect();
    let (killed, stop) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );

    // Six threads, each going round the three replicas in turn.
    let handles: Vec<_> = (0..6)
        .map(|t| {
            let (urls, creds) = (urls.clone(), creds.clone());
            let (killed, stop) = (killed.clone(), stop.clone());
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .timeout_global(Some(Duration::from_secs(5)))
                    .build()
                    .into();
                let mut seen = Seen::default();
                let mut j = 0usize;
                while !stop.load(Ordering::SeqCst) {
                    let n = (t + j) % 3;
                    let after = killed.load(Ordering::SeqCst);
                    let body = json!({
                        "action": "edr.read_alerts",
                        "resource": host(&format!("web-{t}-{j}")),
                        "intent": "sweep",
                    });
                    j += 1;
                    let sent = agent
                        .post(&urls[n])
                        .header("content-type", "application/json")
                        .header("authorization", &format!("Bearer {}", creds[(t + j) % 3]))
                        .send(body.to_string());
                    let mut resp = match sent {
                        Ok(r) => r,
                        Err(_) => {
                            seen.failed[n] += 1;
                            continue;
                        }
                    };
                    let status = resp.status().as_u16();
                    // A reset while reading the body is no acknowledgement.
                    let Ok(text) = resp.body_mut().read_to_string() else {
                        seen.failed[n] += 1;
                        continue;
                    };
                    let v: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
                    match (status, v["decision"].as_str(), v["request_id"].as_str()) {
                        (200, Some("allow"), Some(id)) => {
                            seen.acked.push(id.to_string());
                            if after {
                                seen.after_kill[n] += 1;
                            }
                        }
                        _ => seen.odd.push((n, status, v)),
                    }
                }
                seen
            })
        })
        .collect();

    std::thread::sleep(Duration::from_secs(1)); // load duration
                                                // kill -9 the first replica (the one that created the schema): dropping
                                                // a `Server` SIGKILLs the child and reaps it.
    drop(cl.nodes.remove(0));
    killed.store(true, Ordering::SeqCst);
    std::thread::sleep(Duration::from_secs(1)); // load on the two survivors
    stop.store(true, Ordering::SeqCst);
    let seen: Vec<Seen> = handles.into_iter().map(|h| h.join().unwrap()).collect();

    let sum = |f: &dyn Fn(&Seen) -> [u32; 3]| {
        seen.iter().fold([0u32; 3], |acc, s| {
            std::array::from_fn(|i| acc[i] + f(s)[i])
        })
    };
    let (after_kill, failed) = (sum(&|s| s.after_kill), sum(&|s| s.failed));
    let odd: Vec<&(usize, u16, Value)> = seen.iter().flat_map(|s| &s.odd).collect();
    let acked: Vec<&str> = seen
        .iter()
        .flat_map(|s| s.acked.iter().map(String::as_str))
        .collect();
    let summary = format!(
        "{} acknowledged; 200s after the kill per replica {after_kill:?}; \
         connection failures per replica {failed:?}",
        acked.len()
    );
    eprintln!("{summary}");
    // Every answer was a 200 allow: no replica, before or after the kill,
    // answered an error.
    assert!(odd.is_empty(), "{summary}; other answers: {odd:?}");
    // The killed replica is gone (its requests fail) and the survivors kept
    // answering, without a connection failure.
    assert!(
        failed[0] > 0,
        "the killed replica still answered: {summary}"
    );
    assert_eq!(&failed[1..], &[0, 0], "a survivor failed: {summary}");
    assert_eq!(after_kill[0], 0, "the killed replica answered: {summary}");
    assert!(
        after_kill[1] > 0 && after_kill[2] > 0,
        "a survivor stopped answering after the kill: {summary}"
    );
    let unique: std::collections::HashSet<&str> = acked.iter().copied().collect();
    assert_eq!(
        unique.len(),
        acked.len(),
        "a request id was acknowledged twice"
    );

    // Every acknowledged decision is in the log, read whole through a
    // survivor; the log has no gap and no fork.
    let survivor = &cl.nodes[0];
    let mut log: Vec<Value> = Vec::new();
    loop {
        let after = log.last().map(|e| e["seq"].as_u64().unwrap()).unwrap_or(0);
        let page = survivor.audit(&format!("after={after}"));
        if page.is_empty() {
            break;
        }
        log.extend(page);
    }
    for (i, e) in log.iter().enumerate() {
        assert_eq!(e["seq"].as_u64(), Some(i as u64 + 1), "gap at {e}");
        if i > 0 {
            assert_eq!(e["prev_hash"], log[i - 1]["hash"], "fork at {e}");
        }
    }
    let logged: std::collections::HashSet<&str> = log
        .iter()
        .filter(|e| e["event"]["kind"] == "decision")
        .filter_map(|e| e["event"]["request_id"].as_str())
        .collect();
    let lost: Vec<&str> = acked
        .iter()
        .copied()
        .filter(|id| !logged.contains(id))
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged decision(s) missing from the log of {} entries \
         ({summary}), e.g. {:?}",
        lost.len(),
        log.len(),
        &lost[..lost.len().min(5)]
    );
    // The other survivor finds them too, one by one (a sample).
    let other = &cl.nodes[1];
    for id in acked.iter().step_by((acked.len() / 20).max(1)) {
        let found = other.audit(&format!("request={id}"));
        assert!(
            found.iter().any(|e| e["event"]["kind"] == "decision"),
            "{id} not found by request id through the other survivor"
        );
    }

    // And the CLI accepts the log through both survivors.
    for s in &cl.nodes {
        cl.verify_audit(s);
    }
}
