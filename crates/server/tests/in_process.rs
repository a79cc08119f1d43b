//! In-process tests of the router with a controlled clock and a store that
//! can be made to fail: fail-closed behaviour and TTL rules without sleeping.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tollgate_audit::AuditEntry;
use tollgate_core::{Agent, Approval, Incident, ManualClock, Task};
use tollgate_identity::{SigningKeyPair, Tokens};
use tollgate_server::config::ServerConfig;
use tollgate_server::metrics::Metrics;
use tollgate_server::AppState;
use tollgate_store::{
    ApprovalFilter, Approver, AuditQuery, Batch, JoinToken, Pep, SqliteStore, Store, StoreError,
    TaskFilter,
};
use tower::ServiceExt;

/// A store whose commits fail on demand, as a full disk or a lost database would.
struct FlakyStore {
    inner: SqliteStore,
    fail_commits: AtomicBool,
}

#[async_trait]
impl Store for FlakyStore {
    async fn commit(&self, batch: Batch) -> Result<Vec<u64>, StoreError> {
        if self.fail_commits.load(Ordering::SeqCst) {
            return Err(StoreError::Backend("disk full".into()));
        }
        self.inner.commit(batch).await
    }
    async fn agent(&self, id: &str) -> Result<Option<Agent>, StoreError> {
        self.inner.agent(id).await
    }
    async fn join_token(&self, h: &str) -> Result<Option<JoinToken>, StoreError> {
        self.inner.join_token(h).await
    }
    async fn incident(&self, id: &str) -> Result<Option<Incident>, StoreError> {
        self.inner.incident(id).await
    }
    async fn task(&self, id: &str) -> Result<Option<Task>, StoreError> {
        self.inner.task(id).await
    }
    async fn tasks(&self, f: TaskFilter) -> Result<Vec<Task>, StoreError> {
        self.inner.tasks(f).await
    }
    async fn setting(&self, k: &str) -> Result<Option<String>, StoreError> {
        self.inner.setting(k).await
    }
    async fn pep_by_key_hash(&self, h: &str) -> Result<Option<Pep>, StoreError> {
        self.inner.pep_by_key_hash(h).await
    }
    async fn has_evidence(&self, t: &str, r: &str) -> Result<bool, StoreError> {
        self.inner.has_evidence(t, r).await
    }
    async fn evidence_for_task(
        &self,
        t: &str,
    ) -> Result<Vec<tollgate_store::Evidence>, StoreError> {
        self.inner.evidence_for_task(t).await
    }
    async fn lineage(&self, id: &str) -> Result<Option<tollgate_core::Lineage>, StoreError> {
        self.inner.lineage(id).await
    }
    async fn credential_holder(
        &self,
        id: &str,
        agent: &str,
    ) -> Result<(Option<tollgate_core::Lineage>, Option<Agent>), StoreError> {
        self.inner.credential_holder(id, agent).await
    }
    async fn descendants(&self, id: &str) -> Result<Vec<Task>, StoreError> {
        self.inner.descendants(id).await
    }
    async fn decision_facts(
        &self,
        q: &tollgate_store::FactsQuery,
    ) -> Result<Option<tollgate_store::StoredFacts>, StoreError> {
        self.inner.decision_facts(q).await
    }
    async fn actions_in_tree(
        &self,
        r: &str,
        since: i64,
    ) -> Result<Vec<tollgate_store::ActionRecord>, StoreError> {
        self.inner.actions_in_tree(r, since).await
    }
    async fn count_allowed_by_agent(
        &self,
        a: &str,
        since: i64,
        tier: Option<&str>,
        action: Option<&str>,
    ) -> Result<u64, StoreError> {
        self.inner
            .count_allowed_by_agent(a, since, tier, action)
            .await
    }
    async fn check_consistency(&self) -> Result<(), StoreError> {
        self.inner.check_consistency().await
    }
    async fn audit_head(&self) -> Result<tollgate_store::AuditHead, StoreError> {
        self.inner.audit_head().await
    }
    async fn audit_leaf_hashes(&self, n: u64) -> Result<Vec<[u8; 32]>, StoreError> {
        self.inner.audit_leaf_hashes(n).await
    }
    async fn checkpoints(&self) -> Result<Vec<tollgate_audit::checkpoint::Checkpoint>, StoreError> {
        self.inner.checkpoints().await
    }
    async fn audit_by_request(&self, r: &str) -> Result<Vec<AuditEntry>, StoreError> {
        self.inner.audit_by_request(r).await
    }
    async fn approval(&self, id: &str) -> Result<Option<Approval>, StoreError> {
        self.inner.approval(id).await
    }
    async fn approvals(&self, f: ApprovalFilter) -> Result<Vec<Approval>, StoreError> {
        self.inner.approvals(f).await
    }
    async fn approver_by_key_hash(&self, h: &str) -> Result<Option<Approver>, StoreError> {
        self.inner.approver_by_key_hash(h).await
    }
    async fn peps(&self) -> Result<Vec<tollgate_store::Pep>, StoreError> {
        self.inner.peps().await
    }
    async fn approvers(&self) -> Result<Vec<Approver>, StoreError> {
        self.inner.approvers().await
    }
    async fn audit(&self, q: AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
        self.inner.audit(q).await
    }
    async fn console_session(
        &self,
        id_hash: &str,
    ) -> Result<Option<tollgate_store::ConsoleSession>, StoreError> {
        self.inner.console_session(id_hash).await
    }
    async fn outbox_due(
        &self,
        created_by: i64,
        now: i64,
        limit: usize,
    ) -> Result<Vec<tollgate_store::OutboxMessage>, StoreError> {
        self.inner.outbox_due(created_by, now, limit).await
    }
    async fn mcp_session(
        &self,
        id: &str,
    ) -> Result<Option<tollgate_store::McpSession>, StoreError> {
        self.inner.mcp_session(id).await
    }
    async fn abandoned_held_calls(
        &self,
        now: i64,
        limit: usize,
    ) -> Result<Vec<tollgate_store::HeldCall>, StoreError> {
        self.inner.abandoned_held_calls(now, limit).await
    }
}

const ADMIN: &str = "tga_test-admin";
const START: i64 = 1_800_000_000;

struct Harness {
    state: Arc<AppState>,
    store: Arc<FlakyStore>,
    clock: Arc<ManualClock>,
    /// The issuer key, so a second gateway over the same store can share it.
    key_der: Vec<u8>,
}

impl Harness {
    fn new() -> Self {
        let store = Arc::new(FlakyStore {
            inner: SqliteStore::open_in_memory().unwrap(),
            fail_commits: AtomicBool::new(false),
        });
        let clock = Arc::new(ManualClock::new(START));
        let (_, key_der) = SigningKeyPair::generate().unwrap();
        Self::over(store, clock, key_der)
    }

    /// A second gateway process over the same store, clock and issuer key,
    /// as a replica would be: nothing in memory is shared with `self`.
    fn beside(&self) -> Self {
        Self::over(self.store.clone(), self.clock.clone(), self.key_der.clone())
    }

    fn over(store: Arc<FlakyStore>, clock: Arc<ManualClock>, key_der: Vec<u8>) -> Self {
        let key = SigningKeyPair::from_pkcs8_der(&key_der).unwrap();
        let config = ServerConfig {
            task_ttl_seconds: 300,
            task_max_ttl_seconds: 600,
            approvals: tollgate_server::config::ApprovalsConfig {
                default_ttl_seconds: 450,
                escalate_after_seconds: 200,
                ..Default::default()
            },
            ..Default::default()
        };
        let state = Arc::new(AppState {
            store: store.clone(),
            pack: arc_swap::ArcSwap::from_pointee(
                tollgate_server::embedded::pack(Default::default()).unwrap(),
            ),
            shadow: arc_swap::ArcSwapOption::empty(),
            tokens: Tokens::new(key, &config.issuer, &config.trust_domain, &config.audience),
            clock: clock.clone(),
            config,
            config_dir: None,
            admin_token_hash: tollgate_core::sha256_hex(ADMIN.as_bytes()),
            metrics: Metrics::default(),
            oidc: None,
            approval_events: tokio::sync::Notify::new(),
            outbox_ready: tokio::sync::Notify::new(),
            stopping: Default::default(),
            audit: tollgate_server::audit::AuditKeys {
                signing: ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]),
                hmac: [5u8; 32],
                origin: "tollgate test".into(),
            },
            checkpoint: std::sync::Mutex::new(None),
            readiness: Default::default(),
            refusals: Default::default(),
            replica: "replica_test".into(),
            upstreams: tollgate_server::upstream::Upstreams::default(),
            bundle_endpoints: tollgate_server::bundles::BundleEndpoints::default(),
            listen_url: std::sync::OnceLock::new(),
            telemetry: tollgate_server::telemetry::Telemetry::default(),
        });
        Self {
            state,
            store,
            clock,
            key_der,
        }
    }

    async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        let req = Request::post(path)
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {token}"))
            .body(Body::from(body.to_string()))
            .unwrap();
        let resp = tollgate_server::app(self.state.clone())
            .oneshot(req)
            .await
            .unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn open_task(&self) -> (String, String) {
        let agent = "spiffe://acme.test/agent/ir-responder/i-1";
        let (_, reg) = self
            .post(
                "/v1/agents",
                ADMIN,
                json!({"spiffe_id": agent, "owner": "alice"}),
            )
            .await;
        let (_, att) = self
            .post(
                "/v1/agents/attest",
                "",
                json!({"join_token": reg["join_token"]}),
            )
            .await;
        let svid = att["svid"].as_str().unwrap().to_string();
        let (status, t) = self
            .post("/v1/tasks", &svid, json!({"incident": {"id": "INC-4711", "class": "malware", "severity": "high"}, "environment": "prod", "playbook": "contain-malware", "intent": "contain"}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{t}");
        (
            t["task_id"].as_str().unwrap().to_string(),
            t["credential"].as_str().unwrap().to_string(),
        )
    }

    async fn read(&self, cred: &str) -> (StatusCode, Value) {
        self.post("/v1/authorize", cred, json!({"action": "edr.read_alerts", "resource": {"type": "Host", "id": "web-1"}, "intent": "look"})).await
    }

    async fn audit_len(&self) -> usize {
        self.store
            .audit(AuditQuery {
                limit: 1_000_000,
                ..Default::default()
            })
            .await
            .unwrap()
            .len()
    }
}

#[tokio::test]
async fn no_decision_without_a_durable_audit_entry() {
    let h = Harness::new();
    let (_, cred) = h.open_task().await;
    assert_eq!(h.read(&cred).await.1["decision"], "allow");

    h.store.fail_commits.store(true, Ordering::SeqCst);
    let before = h.audit_len().await;
    let (status, body) = h.read(&cred).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "unavailable");
    assert!(
        body.get("decision").is_none(),
        "a decision escaped without its audit entry: {body}"
    );
    // Nor can a task be opened, an agent registered, or the kill switch flipped unaudited.
    let (status, _) = h
        .post(
            "/v1/agents",
            ADMIN,
            json!({"spiffe_id": "spiffe://acme.test/agent/x/y", "owner": "o"}),
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let (status, _) = h.post("/v1/freeze", ADMIN, json!({})).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        !h.state.is_frozen().await.unwrap(),
        "the brake moved although the store refused"
    );
    assert_eq!(h.audit_len().await, before);

    h.store.fail_commits.store(false, Ordering::SeqCst);
    assert_eq!(h.read(&cred).await.1["decision"], "allow");
}

/// Two gateways over one store agree on everything that decides an
/// outcome: the brake, a quarantine, the tree's history and an approval
/// spent on the other one. Nothing of it is kept per process.
#[tokio::test]
async fn two_gateways_over_one_store_decide_alike() {
    let a = Harness::new();
    let b = a.beside();
    let (task_id, cred) = a.open_task().await;
    assert_eq!(b.read(&cred).await.1["decision"], "allow");

    // Frozen through one, the other denies at once.
    assert_eq!(
        a.post("/v1/freeze", ADMIN, json!({})).await.0,
        StatusCode::OK
    );
    let (_, d) = b.read(&cred).await;
    assert_eq!(d["decision"], "deny", "{d}");
    assert!(d["reasons"][0].as_str().unwrap().contains("frozen"), "{d}");
    assert_eq!(
        b.post("/v1/unfreeze", ADMIN, json!({})).await.0,
        StatusCode::OK
    );
    assert_eq!(a.read(&cred).await.1["decision"], "allow");

    // History recorded by one is what the other's chain rules see: a secret
    // read on A, then egress on B, is denied by the exfiltration rule.
    let secret = json!({"action": "vault.read_secret", "resource": {"type": "Secret", "id": "db-password"}, "intent": "read the db password"});
    let (_, d) = a.post("/v1/authorize", &cred, secret).await;
    assert_eq!(d["decision"], "allow", "{d}");
    let egress = json!({"action": "http.post", "resource": {"type": "Url", "id": "https://paste.example/x", "attributes": {"domain": "paste.example"}}, "intent": "send it out"});
    let (_, d) = b.post("/v1/authorize", &cred, egress).await;
    assert_eq!(d["decision"], "deny", "{d}");
    assert!(
        d["policies"]
            .to_string()
            .contains("no-egress-after-secret-read"),
        "{d}"
    );

    // The rule revoked the task through B: A refuses its credential.
    let (status, body) = a.read(&cred).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(body.to_string().contains(&task_id), "{body}");
}

/// Background work (approval expiry and escalation, checkpoints) runs in
/// one replica at a time: the one holding the store's `background` lease.
/// A replica that stops renewing it is replaced once it lapses.
#[tokio::test]
async fn background_work_has_one_leader_across_gateways() {
    use tollgate_server::service::gateway::lead_background;
    let a = Harness::new();
    let b = a.beside();
    assert!(lead_background(&a.state, "replica-a").await.unwrap());
    assert!(!lead_background(&b.state, "replica-b").await.unwrap());
    // A renews every second and keeps it.
    a.clock.advance(3);
    assert!(lead_background(&a.state, "replica-a").await.unwrap());
    assert!(!lead_background(&b.state, "replica-b").await.unwrap());
    // A dies (stops renewing): B takes over once the lease lapses, and A,
    // back, finds it taken.
    a.clock.advance(6);
    assert!(lead_background(&b.state, "replica-b").await.unwrap());
    assert!(!lead_background(&a.state, "replica-a").await.unwrap());
}

#[tokio::test]
async fn credentials_expire_and_renewal_stops_at_the_hard_maximum() {
    let h = Harness::new();
    let (task_id, cred) = h.open_task().await;
    // Within TTL (plus the 30 s skew allowance) the credential works; past it, it does not.
    h.clock.advance(290);
    assert_eq!(h.read(&cred).await.0, StatusCode::OK);
    let (status, renewed) = h
        .post(&format!("/v1/tasks/{task_id}/renew"), &cred, json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{renewed}");
    let cred2 = renewed["credential"].as_str().unwrap().to_string();
    // The renewal reaches only to the 600 s maximum from task open, not 290 + 300.
    let exp = time::OffsetDateTime::parse(
        renewed["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert_eq!(exp.unix_timestamp(), START + 590);
    h.clock.advance(45); // 335 s after open: past the first credential's exp + 30 s skew
    assert_eq!(h.read(&cred).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(h.read(&cred2).await.0, StatusCode::OK);
    h.clock.advance(300); // 630 s: past the hard maximum
    let (status, body) = h.read(&cred2).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, _) = h
        .post(&format!("/v1/tasks/{task_id}/renew"), &cred2, json!({}))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn join_tokens_expire() {
    let h = Harness::new();
    let (_, reg) = h
        .post(
            "/v1/agents",
            ADMIN,
            json!({"spiffe_id": "spiffe://acme.test/agent/ir-responder/i-2", "owner": "o"}),
        )
        .await;
    h.clock.advance(3601);
    let (status, body) = h
        .post(
            "/v1/agents/attest",
            "",
            json!({"join_token": reg["join_token"]}),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["message"], "join token expired");
}

#[test]
fn the_embedded_pack_is_the_example_directory() {
    // Every file of examples/incident-response must be compiled in, or
    // `tollgate serve` and `tollgate init` would silently drift from it.
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/incident-response");
    let mut on_disk = vec![];
    for entry in walk(&dir) {
        on_disk.push(entry.strip_prefix(&dir).unwrap().display().to_string());
    }
    on_disk.sort();
    let mut embedded: Vec<String> = tollgate_server::embedded::FILES
        .iter()
        .map(|(n, _)| n.to_string())
        .collect();
    embedded.sort();
    assert_eq!(on_disk, embedded);
    for (name, text) in tollgate_server::embedded::FILES {
        assert_eq!(&std::fs::read_to_string(dir.join(name)).unwrap(), text);
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test]
async fn approvals_escalate_then_expire_on_the_clock() {
    let h = Harness::new();
    let (_, cred) = h.open_task().await;
    let (_, approver) = h
        .post(
            "/v1/approvers",
            ADMIN,
            json!({"name": "ivan", "role": "identity"}),
        )
        .await;
    let key = approver["key"].as_str().unwrap().to_string();
    let ask = json!({"action": "iam.disable_account", "resource": {"type": "Account", "id": "jdoe"}, "intent": "x", "parameters": {"reason": "r"}});
    let (_, d) = h.post("/v1/authorize", &cred, ask.clone()).await;
    let id = d["approval_id"].as_str().unwrap().to_string();
    let kinds = |h: &Harness| {
        let store = h.store.clone();
        async move {
            store
                .audit(AuditQuery {
                    limit: 10_000,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_iter()
                .map(|e| e.event.kind)
                .collect::<Vec<_>>()
        }
    };
    // Nothing happens before the escalation delay ...
    h.clock.advance(199);
    tollgate_server::service::approvals::sweep(&h.state)
        .await
        .unwrap();
    assert!(!kinds(&h).await.contains(&"approval.escalated".to_string()));
    // ... then it escalates, once.
    h.clock.advance(2);
    tollgate_server::service::approvals::sweep(&h.state)
        .await
        .unwrap();
    tollgate_server::service::approvals::sweep(&h.state)
        .await
        .unwrap();
    assert_eq!(
        kinds(&h)
            .await
            .iter()
            .filter(|k| *k == "approval.escalated")
            .count(),
        1
    );
    // Renew the task so it outlives the approval, which expires at 450 s.
    let task_id = h.state.store.approval(&id).await.unwrap().unwrap().task_id;
    h.clock.advance(49);
    let (status, renewed) = h
        .post(&format!("/v1/tasks/{task_id}/renew"), &cred, json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{renewed}");
    let cred = renewed["credential"].as_str().unwrap().to_string();
    h.clock.advance(200);
    let (status, v) = h
        .post(
            &format!("/v1/approvals/{id}/decision"),
            &key,
            json!({"approve": true, "reason": "late"}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("expired"),
        "{v}"
    );
    let mut retry = ask.clone();
    retry["approval_id"] = json!(id);
    let (_, d) = h.post("/v1/authorize", &cred, retry).await;
    assert_eq!(d["decision"], "deny", "{d}");
    assert_eq!(
        kinds(&h)
            .await
            .iter()
            .filter(|k| *k == "approval.expired")
            .count(),
        1
    );
}
