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
pub(crate) struct Schema {
    url: String,
    pub(crate) name: String,
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

    pub(crate) fn psql(&self, sql: &str) -> (bool, String) {
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

/// `TOLLGATE_TEST_PG`, or `None` after saying the test was skipped.
fn pg_url() -> Option<String> {
    match std::env::var("TOLLGATE_TEST_PG") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            eprintln!("skipped: TOLLGATE_TEST_PG is not set");
            None
        }
    }
}

/// Three replicas. Fields drop in order: the replicas are killed first
/// (even when the test fails), then the schema is dropped, then the data dir.
pub(crate) struct Cluster {
    pub(crate) nodes: Vec<Server>,
    pub(crate) schema: Schema,
    _tmp: tempfile::TempDir,
}

impl Cluster {
    /// `None` (the test is skipped) without `TOLLGATE_TEST_PG`.
    fn start() -> Option<Self> {
        Self::start_with(None, |url| url.to_string())
    }

    /// Three replicas of `tollgate init`'s config with `extra` appended
    /// (`None`: the embedded defaults), reaching PostgreSQL at
    /// `route(TOLLGATE_TEST_PG)` (a proxy, for the fault tests).
    fn start_with(extra: Option<&str>, route: impl Fn(&str) -> String) -> Option<Self> {
        Self::launch(|tmp| extra.map(|extra| config_dir(tmp, extra)), route)
    }

    /// [`start`](Self::start), every replica reading `config` (a config dir).
    pub(crate) fn start_with_config(config: Option<&std::path::Path>) -> Option<Self> {
        Self::launch(
            |_| config.map(std::path::Path::to_path_buf),
            |u| u.to_string(),
        )
    }

    fn launch(
        config: impl FnOnce(&std::path::Path) -> Option<std::path::PathBuf>,
        route: impl Fn(&str) -> String,
    ) -> Option<Self> {
        let url = pg_url()?;
        let schema = Schema::new(&url);
        let tmp = tempfile::tempdir().unwrap();
        let config = config(tmp.path());
        let url = route(&url);
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
            let s = match &config {
                Some(config) => Server::start_with_config_env(config, &data, &env),
                None => Server::start_with_env(&data, &env),
            };
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
    pub(crate) fn sql(&self, query: &str) -> String {
        let (ok, out) = self.schema.psql(&format!(
            "SET search_path TO \"{}\"; {query}",
            self.schema.name
        ));
        assert!(ok, "{query}: {out}");
        out.trim().to_string()
    }

    pub(crate) fn a(&self) -> &Server {
        &self.nodes[0]
    }
    pub(crate) fn b(&self) -> &Server {
        &self.nodes[1]
    }
    pub(crate) fn c(&self) -> &Server {
        &self.nodes[2]
    }

    /// `tollgate audit verify` over the API of `node`, as the admin.
    pub(crate) fn verify_audit(&self, node: &Server) -> String {
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
pub(crate) fn wait_live(s: &Server) {
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

    // An incident resolved on C: A and B refuse its task on the very next request.
    let mut other = incident_task();
    other["incident"]["id"] = json!("INC-5000");
    let (status, v) = a.post("/v1/tasks", Some(&svid), &other);
    assert_eq!(status, 201, "{v}");
    let cred3 = v["credential"].as_str().unwrap().to_string();
    for s in [a, b] {
        assert_eq!(
            decision(&s.authorize(&cred3, "edr.read_alerts", host("web-1"))),
            "allow"
        );
    }
    let r = c.admin_post(
        "/v1/incidents/INC-5000",
        &json!({"status": "resolved", "reason": "contained"}),
    );
    assert_eq!(r["incident"]["status"], "resolved", "{r}");
    for (name, s) in [("A", a), ("B", b)] {
        refused(
            &s.authorize(&cred3, "edr.read_alerts", host("web-1")),
            "resolved",
            &format!("incident resolved on C, task used on {name}"),
        );
    }

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

#[test]
fn replicas_rate_limits_and_quarantine_count_across_replicas() {
    // Two reads a minute per agent, whichever replica and task they go
    // through; the third quarantines the agent everywhere.
    let extra = "  - name: two-reads-a-minute\n    scope: agent\n    action: edr.read_alerts\n    max: 2\n    per_seconds: 60\n    on_exceed: quarantine\n";
    let Some(cl) = Cluster::start_with(Some(extra), |u| u.to_string()) else {
        return;
    };
    let (a, b, c) = (cl.a(), cl.b(), cl.c());
    let svid = a.enrol(IR);
    let (_, t1) = a.open_task(&svid);
    let (_, t2) = b.open_task(&svid);
    assert_eq!(
        decision(&a.authorize(&t1, "edr.read_alerts", host("web-1"))),
        "allow"
    );
    assert_eq!(
        decision(&b.authorize(&t2, "edr.read_alerts", host("web-2"))),
        "allow"
    );
    // The third read, on C in the first task: over the agent's limit.
    let got = c.authorize(&t1, "edr.read_alerts", host("web-3"));
    assert_eq!(decision(&got), "deny", "{}", got.1);
    assert_eq!(got.1["policies"], json!(["rate-limit:two-reads-a-minute"]));
    // Quarantined by C: A and B deny anything the agent asks, in any task.
    let siem = json!({"type": "SiemIndex", "id": "main"});
    for (name, s, cred) in [("A", a, &t2), ("B", b, &t2)] {
        let got = s.authorize(cred, "siem.query", siem.clone());
        assert_eq!(decision(&got), "deny", "{name}: {}", got.1);
        assert!(
            got.1["reasons"].to_string().contains("quarantined"),
            "{name}: {}",
            got.1
        );
    }
    // Released on A: B allows again (the limit still counts the two reads).
    let (ok, out, err) = a.cli(&["agent", "release", IR, "--reason", "storm understood"]);
    assert!(ok && out.contains("released"), "{out}{err}");
    let (_, t3) = c.open_task(&svid);
    assert_eq!(
        decision(&b.authorize(&t3, "siem.query", siem.clone())),
        "allow"
    );
    let got = b.authorize(&t3, "edr.read_alerts", host("web-4"));
    assert_eq!(decision(&got), "deny", "{}", got.1);
    cl.verify_audit(c);
}

/// A webhook endpoint whose answers the test controls: every POST body is
/// reported; it is answered 200, or, while `hold` is set, left unanswered
/// (the connection kept open) until the test lets go of it.
struct Hook {
    url: String,
    bodies: std::sync::mpsc::Receiver<Value>,
    hold: Arc<std::sync::atomic::AtomicBool>,
    held: Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Hook {
    fn start() -> Self {
        use std::io::{BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let (tx, bodies) = std::sync::mpsc::channel();
        let hold = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let held = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (h, k) = (hold.clone(), held.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let Some((_, body)) = read_request(&mut reader) else {
                    continue;
                };
                if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                    let _ = tx.send(v);
                }
                if h.load(std::sync::atomic::Ordering::SeqCst) {
                    k.lock().unwrap().push(stream);
                } else {
                    let _ = stream.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                    );
                }
            }
        });
        Self {
            url,
            bodies,
            hold,
            held,
        }
    }

    /// The approval id of the next delivery, waiting at most `secs`.
    fn next(&self, secs: u64) -> Option<String> {
        self.bodies
            .recv_timeout(std::time::Duration::from_secs(secs))
            .ok()
            .map(|v| v["approval"]["id"].as_str().unwrap_or("").to_string())
    }
}

/// An approval request (a fresh reason: a fresh request hash) through `s`.
fn ask_approval(s: &Server, cred: &str, n: usize) -> String {
    let (_, d) = s.post(
        "/v1/authorize",
        Some(cred),
        &json!({
            "action": "iam.disable_account", "resource": {"type": "Account", "id": "jdoe"},
            "intent": "jdoe's session launched the beacon",
            "parameters": {"reason": format!("compromised-{n}")},
        }),
    );
    assert_eq!(d["decision"], "approval_required", "{d}");
    d["approval_id"].as_str().unwrap().to_string()
}

#[test]
fn replicas_send_each_webhook_once_even_when_the_sender_dies() {
    let hook = Hook::start();
    let extra = format!(
        "webhooks:\n  - name: pager\n    url: {}\n    events: [approval.created]\n",
        hook.url
    );
    let Some(mut cl) = Cluster::start_with(Some(&extra), |u| u.to_string()) else {
        return;
    };
    let svid = cl.a().enrol(IR);
    let (_, cred) = cl.b().open_task(&svid);

    // One approval through each replica: each notification arrives once.
    let mut asked: Vec<String> = cl
        .nodes
        .iter()
        .enumerate()
        .map(|(n, s)| ask_approval(s, &cred, n))
        .collect();
    let mut got: Vec<String> = (0..3)
        .map(|_| hook.next(10).expect("a webhook was not sent"))
        .collect();
    asked.sort();
    got.sort();
    assert_eq!(got, asked);
    // Sent and dequeued; nobody sends them again, the pollers included
    // (they look every second at messages older than two).
    assert_eq!(cl.sql("SELECT count(*) FROM outbox"), "0");
    assert_eq!(hook.next(4), None, "a webhook was sent twice");

    // The replica sending a notification dies before the endpoint answers:
    // once its claim lapses another replica sends it; it is never lost.
    hook.hold.store(true, std::sync::atomic::Ordering::SeqCst);
    let id = ask_approval(cl.a(), &cred, 3);
    assert_eq!(hook.next(10).as_deref(), Some(id.as_str()));
    drop(cl.nodes.remove(0)); // SIGKILL, reaped
    hook.hold.store(false, std::sync::atomic::Ordering::SeqCst);
    hook.held.lock().unwrap().clear(); // the dead sender's connection
    assert_eq!(
        hook.next(40).as_deref(),
        Some(id.as_str()),
        "the notification of a replica that died while sending it was never sent"
    );
    let started = std::time::Instant::now();
    while cl.sql("SELECT count(*) FROM outbox") != "0" {
        assert!(
            started.elapsed().as_secs() < 10,
            "the message stayed queued"
        );
        std::thread::sleep(std::time::Duration::from_millis(100)); // polling
    }
    assert_eq!(hook.next(3), None, "sent again after it was answered");
    let failed = cl.sql("SELECT count(*) FROM audit WHERE kind = 'webhook.failed'");
    assert_eq!(failed, "0");
    cl.verify_audit(cl.b());
}

/// A TCP proxy in front of PostgreSQL that the test can take down (every
/// connection through it cut, new ones closed at once) and bring back:
/// what the replicas see when the database stops and restarts.
struct PgProxy {
    addr: String,
    up: Arc<std::sync::atomic::AtomicBool>,
    open: Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl PgProxy {
    fn start(target: String) -> Self {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let open = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (u, o) = (up.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if !u.load(Ordering::SeqCst) {
                    continue; // dropped: closed at once
                }
                let Ok(server) = std::net::TcpStream::connect(&target) else {
                    continue;
                };
                {
                    // Checked again under the lock `down` takes: a connection
                    // made while the proxy went down is cut here, never left
                    // open past the cut.
                    let mut open = o.lock().unwrap();
                    if !u.load(Ordering::SeqCst) {
                        let _ = client.shutdown(std::net::Shutdown::Both);
                        let _ = server.shutdown(std::net::Shutdown::Both);
                        continue;
                    }
                    open.push(client.try_clone().unwrap());
                    open.push(server.try_clone().unwrap());
                }
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Self { addr, up, open }
    }

    fn down(&self) {
        let mut open = self.open.lock().unwrap();
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        for s in open.drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// `host:port` of a postgres:// URL, and the URL with it replaced.
fn authority(url: &str) -> (String, impl Fn(&str) -> String) {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let after_user = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let host = after_user.split(['/', '?']).next().unwrap().to_string();
    let (from, url) = (host.clone(), url.to_string());
    (host, move |with: &str| url.replacen(&from, with, 1))
}

fn readyz(s: &Server) -> u16 {
    match agent().get(&s.url("/readyz")).call() {
        Ok(mut r) => {
            let _ = r.body_mut().read_to_string();
            r.status().as_u16()
        }
        Err(_) => 0,
    }
}

#[test]
fn replicas_fail_closed_while_postgresql_is_away_and_recover_without_restart() {
    use std::sync::atomic::{AtomicU8, Ordering};
    use std::time::{Duration, Instant};
    let Some(url) = pg_url() else { return };
    let (target, _) = authority(&url);
    let proxy = PgProxy::start(target);
    let via = proxy.addr.clone();
    let Some(cl) = Cluster::start_with(None, move |u| {
        let (_, route) = authority(u);
        route(&via)
    }) else {
        return;
    };
    let svid = cl.a().enrol(IR);
    let creds: Vec<String> = cl.nodes.iter().map(|s| s.open_task(&svid).1).collect();
    let urls: Vec<String> = cl.nodes.iter().map(|s| s.url("/v1/authorize")).collect();
    // 0: up, 1: going down, 2: down, 3: coming back, 4: back, 5: stop
    // (255: a request that spanned two phases).
    let phase = Arc::new(AtomicU8::new(0));
    let handles: Vec<_> = (0..3)
        .map(|t| {
            let (urls, creds, phase) = (urls.clone(), creds.clone(), phase.clone());
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .timeout_global(Some(Duration::from_secs(20)))
                    // A new connection per request: a replica may close a
                    // connection after a 503 whose body it did not read, and a
                    // reused one would then fail on the client's side.
                    .max_idle_connections(0)
                    .build()
                    .into();
                // (phase when sent, replica, status, decision, request id)
                let mut seen: Vec<(u8, usize, u16, String, String)> = Vec::new();
                let mut j = 0usize;
                loop {
                    let p = phase.load(Ordering::SeqCst);
                    if p == 5 {
                        return seen;
                    }
                    let n = (t + j) % 3;
                    j += 1;
                    let body = json!({"action": "edr.read_alerts", "resource": host(&format!("web-{t}-{j}")), "intent": "sweep"});
                    let resp = agent
                        .post(&urls[n])
                        .header("content-type", "application/json")
                        .header("authorization", &format!("Bearer {}", creds[n]))
                        .send(body.to_string());
                    let (status, v) = match resp {
                        Ok(mut r) => {
                            let text = r.body_mut().read_to_string().unwrap_or_default();
                            (r.status().as_u16(), serde_json::from_str::<Value>(&text).unwrap_or(Value::Null))
                        }
                        Err(_) => (0, Value::Null),
                    };
                    let d = v["decision"].as_str().unwrap_or("").to_string();
                    let id = v["request_id"].as_str().unwrap_or("").to_string();
                    // A request that spans a change of phase (sent while the
                    // database was away, answered after it came back) belongs
                    // to neither: it is labelled 255.
                    let p = if phase.load(Ordering::SeqCst) == p { p } else { 255 };
                    seen.push((p, n, status, d, id));
                    if p == 2 {
                        std::thread::sleep(Duration::from_millis(20)); // pace the outage
                    }
                }
            })
        })
        .collect();

    std::thread::sleep(Duration::from_secs(1)); // load with the database up
    phase.store(1, Ordering::SeqCst);
    proxy.down();
    std::thread::sleep(Duration::from_millis(500)); // requests in flight at the cut end
    phase.store(2, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(1500)); // load with the database away

    // Every replica reports itself not ready (a fresh probe after the TTL).
    for s in &cl.nodes {
        assert_eq!(
            readyz(s),
            503,
            "{} says it is ready without its database",
            s.addr
        );
    }
    phase.store(3, Ordering::SeqCst);
    proxy.restore();
    let started = Instant::now();
    for s in &cl.nodes {
        while readyz(s) != 200 {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{} did not recover when the database came back",
                s.addr
            );
            std::thread::sleep(Duration::from_millis(100)); // polling
        }
    }
    phase.store(4, Ordering::SeqCst);
    std::thread::sleep(Duration::from_secs(1)); // load after recovery
    phase.store(5, Ordering::SeqCst);
    let seen: Vec<(u8, usize, u16, String, String)> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();

    // While the database was away, every answer was a 503, never a decision.
    let down: Vec<_> = seen.iter().filter(|s| s.0 == 2).collect();
    assert!(
        down.len() >= 20,
        "only {} requests during the outage",
        down.len()
    );
    let not_503: Vec<_> = down.iter().filter(|s| s.2 != 503).collect();
    assert!(
        not_503.is_empty(),
        "answers while the database was away: {not_503:?}"
    );
    // Before and after, all three replicas allowed.
    for p in [0u8, 4] {
        for n in 0..3 {
            assert!(
                seen.iter().any(|s| s.0 == p && s.1 == n && s.3 == "allow"),
                "replica {n} allowed nothing in phase {p}"
            );
        }
    }
    // Nothing odd at any time: a decision or a 503.
    let odd: Vec<_> = seen
        .iter()
        .filter(|s| !(s.2 == 503 || (s.2 == 200 && s.3 == "allow")))
        .collect();
    assert!(odd.is_empty(), "{odd:?}");
    // Every acknowledged decision is in the one log, which verifies.
    let acked: std::collections::BTreeSet<&str> = seen
        .iter()
        .filter(|s| s.2 == 200)
        .map(|s| s.4.as_str())
        .collect();
    let logged = cl.sql(&format!(
        "SELECT count(DISTINCT request_id) FROM audit WHERE kind = 'decision' AND request_id IN ({})",
        acked.iter().map(|id| format!("'{id}'")).collect::<Vec<_>>().join(",")
    ));
    assert_eq!(
        logged,
        acked.len().to_string(),
        "acknowledged decisions missing from the log"
    );
    for s in &cl.nodes {
        cl.verify_audit(s);
    }
}

#[test]
fn replicas_expire_and_escalate_each_approval_once() {
    // Approvals escalate after 1 s and expire after 3 s; all three replicas
    // run the sweep's loop, but only the lease holder sweeps, so each
    // approval is escalated once and expired once, and so is its webhook.
    let hook = Hook::start();
    let tmp = tempfile::tempdir().unwrap();
    let config = config_dir(
        tmp.path(),
        &format!(
            "webhooks:\n  - name: pager\n    url: {}\n    events: [approval.escalated, approval.expired]\n",
            hook.url
        ),
    );
    let yaml = std::fs::read_to_string(config.join("tollgate.yaml")).unwrap();
    let yaml = yaml
        .replace("default_ttl_seconds: 900", "default_ttl_seconds: 3")
        .replace("escalate_after_seconds: 300", "escalate_after_seconds: 1");
    std::fs::write(config.join("tollgate.yaml"), yaml).unwrap();
    let Some(cl) = Cluster::start_with_config(Some(&config)) else {
        return;
    };
    let svid = cl.a().enrol(IR);
    let (_, cred) = cl.b().open_task(&svid);
    let mut asked: Vec<String> = cl
        .nodes
        .iter()
        .enumerate()
        .map(|(n, s)| ask_approval(s, &cred, n))
        .collect();
    asked.sort();
    // Wait until every one is expired (as any replica shows it).
    let started = std::time::Instant::now();
    for id in &asked {
        loop {
            let (_, v) = cl
                .c()
                .get(&format!("/v1/approvals/{id}"), Some(&cl.c().admin.clone()));
            if v["status"] == "expired" {
                break;
            }
            assert!(started.elapsed().as_secs() < 30, "{id} never expired: {v}");
            std::thread::sleep(std::time::Duration::from_millis(200)); // polling
        }
    }
    // Once each in the log...
    for kind in ["approval.escalated", "approval.expired"] {
        let ids = cl.sql(&format!(
            "SELECT string_agg(event::json->'detail'->>'approval_id', ',' ORDER BY event::json->'detail'->>'approval_id') FROM audit WHERE kind = '{kind}'"
        ));
        assert_eq!(ids, asked.join(","), "{kind} entries");
    }
    // ... and once each at the webhook (six messages, then nothing more).
    let mut got: Vec<String> = (0..6)
        .map(|_| {
            let v = hook
                .bodies
                .recv_timeout(std::time::Duration::from_secs(10))
                .expect("a webhook was not sent");
            format!(
                "{} {}",
                v["event"].as_str().unwrap(),
                v["approval"]["id"].as_str().unwrap()
            )
        })
        .collect();
    got.sort();
    let mut want: Vec<String> = asked
        .iter()
        .flat_map(|id| {
            [
                format!("approval.escalated {id}"),
                format!("approval.expired {id}"),
            ]
        })
        .collect();
    want.sort();
    assert_eq!(got, want);
    assert_eq!(hook.next(4), None, "a webhook was sent twice");
    cl.verify_audit(cl.a());
}

/// `bench audit` appends to and verifies the PostgreSQL store named by
/// `TOLLGATE_STORE` / `TOLLGATE_STORE_SCHEMA`, and refuses one whose audit
/// log already holds entries (it must never write into a store in use).
#[test]
fn replicas_bench_audit_runs_on_postgres_and_refuses_a_used_log() {
    let Some(url) = pg_url() else { return };
    let schema = Schema::new(&url);
    let run = || {
        Command::new(bin())
            .args(["bench", "audit", "--entries", "300", "--concurrency", "8"])
            .env("TOLLGATE_STORE", &url)
            .env("TOLLGATE_STORE_SCHEMA", &schema.name)
            .output()
            .unwrap()
    };
    let first = run();
    let out = String::from_utf8_lossy(&first.stdout).to_string();
    let err = String::from_utf8_lossy(&first.stderr).to_string();
    assert!(first.status.success(), "{out}{err}");
    assert!(
        out.contains(&format!("PostgreSQL store (schema {})", schema.name)),
        "{out}"
    );
    assert!(out.contains("(600 entries, 1 checkpoint)"), "{out}");
    let (ok, count) = schema.psql(&format!("SELECT count(*) FROM \"{}\".audit", schema.name));
    assert!(ok, "{count}");
    assert_eq!(
        count.trim(),
        "600",
        "the bench's entries are in the schema it was given"
    );

    let second = run();
    let err = String::from_utf8_lossy(&second.stderr).to_string();
    assert!(!second.status.success());
    assert!(err.contains("already holds 600 audit entries"), "{err}");
    let (_, count) = schema.psql(&format!("SELECT count(*) FROM \"{}\".audit", schema.name));
    assert_eq!(count.trim(), "600", "a refused run writes nothing");
}
