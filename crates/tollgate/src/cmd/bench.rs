//! `tollgate bench http|policy|mcp|audit|rules`: benchmarks on this machine
//! (`rules` in `bench_rules.rs`).
//!
//! `bench audit`: durable append throughput (one fsync per commit versus
//! group commit) and verification speed, in one run.

use crate::api_types::{Decision, Svid, TaskCredential};
use crate::client::{Client, IncidentRef, OpenTask};
use crate::Conn;
use anyhow::{anyhow, Result};
use clap::Subcommand;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tollgate_audit::checkpoint::Checkpoint;
use tollgate_audit::verify::LogVerifier;
use tollgate_audit::AuditEvent;
use tollgate_store::{AuditQuery, Batch, Change, SqliteStore, Store};

#[derive(Subcommand)]
pub enum BenchCmd {
    /// Load a running server over HTTP: open tasks, mixed allow / deny /
    /// approval traffic, a revocation mid-run; latency percentiles,
    /// throughput, stale decisions after the revocation, server memory.
    Http {
        /// How long to load the server.
        #[arg(long, default_value_t = 10)]
        duration_secs: u64,
        /// Client threads asking at once.
        #[arg(long, default_value_t = 16)]
        clients: usize,
        /// Tasks to spread the requests over (one is revoked half-way).
        #[arg(long, default_value_t = 8)]
        tasks: usize,
        /// Another replica over the same store (repeatable): the clients are
        /// spread over every address in turn, like a load balancer would;
        /// tasks are opened and revoked through `--addr`.
        #[arg(long = "replica", value_name = "URL")]
        replicas: Vec<String>,
        /// Send at most this many decisions per second in all, evenly paced
        /// across the clients, instead of each client asking again as soon
        /// as it is answered. Latency then counts from when a request was
        /// due, so a server that falls behind shows its queue.
        #[arg(long, value_name = "PER_SECOND", value_parser = clap::value_parser!(u32).range(1..))]
        rate: Option<u32>,
        #[command(flatten)]
        conn: Conn,
    },
    /// In-process decisions against packs grown to N policies with
    /// per-agent policies, beside stock Cedar on the same set and requests.
    Policy {
        /// The pack to grow (default: the embedded example pack).
        #[arg(long)]
        pack: Option<PathBuf>,
        /// Pack sizes to measure, in policies.
        #[arg(long, value_delimiter = ',', default_value = "21,1000,10000")]
        policies: Vec<usize>,
        /// Decisions timed per pack size.
        #[arg(long, default_value_t = 20_000)]
        decisions: usize,
        /// Instead of measuring, write the example configuration with its
        /// pack grown to the largest size into this directory (for
        /// `serve --config DIR` under `bench http`).
        #[arg(long)]
        write: Option<PathBuf>,
    },
    /// What the MCP gateway adds to a tool call: the same allowed call direct to
    /// the example tool server and through an in-process gateway.
    Mcp {
        /// Tool calls per measurement.
        #[arg(long, default_value_t = 2_000)]
        calls: usize,
        /// Clients calling at once.
        #[arg(long, default_value_t = 4)]
        clients: usize,
    },
    /// What temporal rules cost as the stored history grows: a decision's
    /// facts read with and without the scans of three rules, and the rules
    /// evaluated, at each history size (SQLite).
    Rules {
        /// History sizes to measure, in stored past actions.
        #[arg(long, value_delimiter = ',', default_values_t = [0, 10_000, 100_000, 1_000_000])]
        history: Vec<usize>,
        /// Decisions timed per size.
        #[arg(long, default_value_t = 2_000)]
        decisions: usize,
    },
    /// Durable audit append throughput (serial vs group commit) and
    /// verification speed: on a fresh SQLite file, or on the PostgreSQL
    /// store `TOLLGATE_STORE` and `TOLLGATE_STORE_SCHEMA` name (whose
    /// audit log must be empty: the bench writes into it).
    Audit {
        /// Entries to append.
        #[arg(long, default_value_t = 100_000)]
        entries: u64,
        /// Concurrent writers for the group-commit run.
        #[arg(long, default_value_t = 64)]
        concurrency: u64,
    },
}

pub fn run(cmd: BenchCmd) -> Result<()> {
    match cmd {
        BenchCmd::Http {
            duration_secs,
            clients,
            tasks,
            replicas,
            rate,
            conn,
        } => http(
            &conn,
            &replicas,
            duration_secs,
            clients.max(1),
            tasks.max(2),
            rate,
        ),
        BenchCmd::Policy {
            policies,
            write: Some(dir),
            ..
        } => write_grown_pack(&dir, &policies),
        BenchCmd::Policy {
            pack,
            policies,
            decisions,
            write: None,
        } => {
            let example = tempfile::tempdir()?;
            let dir = match pack {
                Some(dir) => dir,
                None => {
                    super::init::write_example(example.path())?;
                    example.path().to_path_buf()
                }
            };
            policy(&dir, &policies, decisions.max(1))
        }
        BenchCmd::Audit {
            entries,
            concurrency,
        } => audit(entries, concurrency.max(1)),
        BenchCmd::Mcp { calls, clients } => mcp(calls.max(1), clients.max(1)),
        BenchCmd::Rules { history, decisions } => {
            let mut sizes = history;
            sizes.sort_unstable();
            super::bench_rules::rules(&sizes, decisions.max(1))
        }
    }
}

/// `bench policy --write DIR`: the example configuration with its pack grown
/// to the largest of `sizes` policies.
fn write_grown_pack(dir: &std::path::Path, sizes: &[usize]) -> Result<()> {
    super::init::write_example(dir)?;
    let extra = sizes.iter().max().copied().unwrap_or(0).saturating_sub(
        tollgate_server::embedded::pack(Default::default())
            .map_err(|e| anyhow!("{e}"))?
            .policy_count(),
    );
    std::fs::write(
        dir.join("policies/zz-agents.cedar"),
        tollgate_policy::synthetic::agent_policies("acme.test", extra),
    )?;
    println!(
        "wrote {} with {extra} generated agent policies",
        dir.display()
    );
    Ok(())
}

/// A decision-sized event (~600 bytes of JSON), like the gateway writes.
fn event(i: u64) -> AuditEvent {
    AuditEvent::new(1_800_000_000 + i as i64, "decision", "spiffe://acme.test/agent/ir-responder/i-1")
        .agent("spiffe://acme.test/agent/ir-responder/i-1")
        .task(format!("task_{:032x}", i / 100))
        .incident("INC-4711")
        .request(format!("req_{i:032x}"))
        .outcome("allow")
        .detail(json!({
            "action": "edr.read_alerts", "resource": "Host::web-1", "resource_attributes": {},
            "intent": "read EDR alerts for the beacon", "parameters": {"window_minutes": 60},
            "policies": ["read-during-task"], "reasons": ["read-only diagnostics are allowed during any task"],
            "obligations": [], "approvals_required": 0, "approval_id": null,
            "request_hash": "9f2c0b5e1c1f0f1a6d3b0e5c2f4a7b8c9d0e1f2a3b4c5d6e7f8091a2b3c4d5e6",
            "policy_digest": "7f637eafb6ee6b9839fc4c4427a6e48423aedc310adc69377e51b4c82ed5095d",
        }))
}

async fn append(store: &Arc<dyn Store>, total: u64, concurrency: u64, offset: u64) -> Result<f64> {
    let started = Instant::now();
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let (s, done) = (store.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while i < total {
                s.commit(Batch::audit_only(event(offset + i))).await?;
                done.fetch_add(1, Ordering::Relaxed);
                i += concurrency;
            }
            Ok::<_, tollgate_store::StoreError>(())
        }));
    }
    let ticker = progress_ticker("entries appended", done);
    for t in tasks {
        t.await??;
    }
    stop_ticker(ticker).await;
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// On a terminal, `label: N…` on stderr every quarter second, N read from
/// `done`, until [`stop_ticker`].
fn progress_ticker(label: &'static str, done: Arc<AtomicU64>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut progress = crate::term::Progress::new(label);
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            progress.tick(done.load(Ordering::Relaxed));
        }
    })
}

/// Stop a [`progress_ticker`]; its line is erased as it ends.
async fn stop_ticker(ticker: tokio::task::JoinHandle<()>) {
    ticker.abort();
    let _ = ticker.await;
}

/// The store `bench audit` appends to: PostgreSQL when `TOLLGATE_STORE`
/// names it (as `serve` reads it), else a fresh SQLite file in `dir`; and
/// how to describe it. A PostgreSQL log that already holds entries is
/// refused: the bench must not write into a store someone uses.
async fn bench_store(dir: &std::path::Path) -> Result<(Arc<dyn Store>, String)> {
    let config =
        tollgate_server::config::StoreConfig::default().with_env(|k| std::env::var(k).ok());
    if config.postgres_url().is_none() {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.join("bench.db"))?);
        return Ok((store, "SQLite WAL synchronous=FULL".into()));
    }
    config
        .validate()
        .map_err(|e| anyhow!("TOLLGATE_STORE: {e}"))?;
    let (store, name) =
        tollgate_server::state::open_store(&config, std::path::Path::new("."), dir).await?;
    let head = store.audit_head().await?;
    if head.size > 0 {
        return Err(anyhow!(
            "{name} already holds {} audit entries; bench audit writes into the store, so give it an empty one: set TOLLGATE_STORE_SCHEMA to a new schema",
            head.size
        ));
    }
    Ok((store, name))
}

pub fn audit(entries: u64, concurrency: u64) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let dir = tempfile::tempdir()?;
        let (store, what) = bench_store(dir.path()).await?;
        println!("tollgate bench audit: {entries} entries, {concurrency} concurrent writers, {what}");
        let serial_n = entries.min(2_000);
        let serial = append(&store, serial_n, 1, 0).await?;
        println!("append, one writer (an fsync per entry):   {serial:>10.0} entries/s  ({serial_n} entries)");
        let grouped = append(&store, entries, concurrency, serial_n).await?;
        println!("append, {concurrency} writers (group commit):       {grouped:>10.0} entries/s  ({:.1}x)", grouped / serial);

        let head = store.audit_head().await?;
        let key = ed25519_dalek::SigningKey::from_bytes(&[1u8; 32]);
        let cp = Checkpoint::sign("bench", head.size, &head.root_hash, 0, &key);
        store.commit(Batch::default().change(Change::PutCheckpoint(cp.clone()))).await?;

        // Verification as `audit verify --data` does it: read pages, stream.
        let started = Instant::now();
        let mut v = LogVerifier::new(vec![cp.clone()], &key.verifying_key()).map_err(|e| anyhow!("{e}"))?;
        let mut after = 0;
        let mut all = Vec::with_capacity(head.size as usize);
        loop {
            let page = store.audit(AuditQuery { after, limit: 20_000, ..Default::default() }).await?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            for e in &page {
                v.push(e).map_err(|e| anyhow!("{e}"))?;
            }
            all.extend(page);
        }
        let report = v.finish().map_err(|e| anyhow!("{e}"))?;
        let with_reads = report.entries as f64 / started.elapsed().as_secs_f64();
        // The verifier alone, entries already in memory.
        let started = Instant::now();
        let mut v = LogVerifier::new(vec![cp], &key.verifying_key()).map_err(|e| anyhow!("{e}"))?;
        for e in &all {
            v.push(e).map_err(|e| anyhow!("{e}"))?;
        }
        v.finish().map_err(|e| anyhow!("{e}"))?;
        let pure = report.entries as f64 / started.elapsed().as_secs_f64();
        println!("verify, reading the store (audit verify --data): {with_reads:>7.0} entries/s  ({} entries, 1 checkpoint)", report.entries);
        println!("verify, entries in memory (chain + Merkle):   {pure:>7.0} entries/s");
        Ok(())
    })
}

/// `tollgate bench http`: load a running server the way agents do.
pub fn http(
    conn: &Conn,
    replicas: &[String],
    duration_secs: u64,
    clients: usize,
    tasks: usize,
    rate: Option<u32>,
) -> Result<()> {
    let admin = Client::new(conn)?;
    let base = conn.resolve()?.addr.trim_end_matches('/').to_string();
    let mut bases = vec![base.clone()];
    bases.extend(replicas.iter().map(|r| r.trim_end_matches('/').to_string()));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let creds = open_bench_tasks(&admin, &agent, &base, tasks)?;
    let load = HttpLoad {
        admin: &admin,
        agent: &agent,
        bases: &bases,
        creds: &creds,
        requests: [
            json!({"action": "siem.query", "resource": {"type": "SiemIndex", "id": "main"}, "intent": "bench"}),
            json!({"action": "edr.read_alerts", "resource": {"type": "Host", "id": "web-1"}, "intent": "bench"}),
            json!({"action": "logs.delete", "resource": {"type": "LogStream", "id": "auth"}, "intent": "bench"}),
            json!({"action": "iam.disable_account", "resource": {"type": "Account", "id": "jdoe"}, "intent": "bench", "parameters": {"reason": "bench"}}),
        ],
    };
    let started = Instant::now();
    let pace = rate.map(|r| Pace::new(r, clients));
    let tally = load.run(Duration::from_secs(duration_secs), clients, pace)?;
    let elapsed = started.elapsed().as_secs_f64();
    let count = tally.latencies.len();
    let [p50, p90, p99] = percentiles(tally.latencies).map(|s| s * 1e3);
    let paced = rate.map_or_else(
        || "as fast as answered".to_string(),
        |r| format!("paced at {r} decisions/s, latency from when each was due"),
    );
    println!(
        "tollgate bench http: {clients} clients, {tasks} tasks, {duration_secs} s, {paced}, against {}",
        bases.join(", ")
    );
    println!(
        "requests:    {} in {elapsed:.1} s = {:.0} decisions/s",
        count,
        count as f64 / elapsed
    );
    println!(
        "latency:     p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms",
        p50, p90, p99
    );
    println!("outcomes:    {:?}", tally.outcomes);
    println!("stale decisions after revocation: {}", tally.stale);
    for b in &bases {
        let metrics = agent
            .get(&format!("{b}/metrics"))
            .call()
            .ok()
            .and_then(|mut r| r.body_mut().read_to_string().ok())
            .unwrap_or_default();
        let rss = metrics
            .lines()
            .find_map(|line| line.strip_prefix("tollgate_process_resident_memory_bytes "))
            .and_then(|v| v.trim().parse::<f64>().ok());
        match rss {
            Some(bytes) => println!("server memory: {:.1} MB resident ({b})", bytes / 1e6),
            None => println!("server memory: not reported ({b})"),
        }
    }
    Ok(())
}

/// POST as an agent with the bench's own HTTP agent (not [`Client`]): the
/// status and body are reported as they are, whatever they are.
fn post_as(
    agent: &ureq::Agent,
    base: &str,
    path: &str,
    token: &str,
    body: &Value,
) -> Result<(u16, Value)> {
    let mut r = agent
        .post(&format!("{base}{path}"))
        .header("authorization", &format!("Bearer {token}"))
        .send_json(body)
        .map_err(|e| anyhow!("{path}: {e}"))?;
    let status = r.status().as_u16();
    let v: Value = r.body_mut().read_json().unwrap_or(Value::Null);
    Ok((status, v))
}

/// One agent instance with `tasks` tasks on one incident: (task id, credential) each.
fn open_bench_tasks(
    admin: &Client,
    agent: &ureq::Agent,
    base: &str,
    tasks: usize,
) -> Result<Vec<(String, String)>> {
    let id = format!(
        "spiffe://acme.test/agent/ir-responder/bench-{}",
        std::process::id()
    );
    let registered = admin.register_agent(&id, "bench@acme.test")?;
    let (_, att) = post_as(
        agent,
        base,
        "/v1/agents/attest",
        "",
        &json!({"join_token": registered.value.join_token}),
    )?;
    let svid = Svid::deserialize(&att)
        .map_err(|_| anyhow!("attest failed: {att}"))?
        .svid;
    let mut creds = Vec::new();
    for _ in 0..tasks {
        let (status, t) = post_as(
            agent,
            base,
            "/v1/tasks",
            &svid,
            &json!({"incident": {"id": "INC-BENCH", "class": "malware", "severity": "high"}, "environment": "prod",
                    "playbook": "contain-malware", "intent": "bench", "ttl_seconds": 3600}),
        )?;
        if status != 201 {
            return Err(anyhow!("task open refused: {t}"));
        }
        let task = TaskCredential::deserialize(&t).map_err(|e| anyhow!("task open: {e}: {t}"))?;
        creds.push((task.task_id, task.credential));
    }
    Ok(creds)
}

/// The load of `bench http`: clients asking for decisions on the bench's tasks.
struct HttpLoad<'a> {
    admin: &'a Client,
    agent: &'a ureq::Agent,
    /// Every replica's address; client `c` asks `bases[c % len]`.
    bases: &'a [String],
    /// (task id, credential); the first task is revoked half-way through.
    creds: &'a [(String, String)],
    /// The decision requests, sent in the order of [`MIX`].
    requests: [Value; 4],
}

/// Mostly allowed reads and some approval requests. Denials (`requests[2]`)
/// are left out of the mix: the example pack's retry-storm rule would
/// quarantine the bench agent after ten of them, which measures the rule,
/// not the gateway.
const MIX: [usize; 10] = [0, 1, 0, 1, 0, 1, 0, 1, 0, 3];

/// When each client's requests are due under `bench http --rate`: client
/// `c` sends its `n`th request at `start + (n + c / clients) * interval`,
/// so the clients together send `rate` per second, evenly spread.
#[derive(Clone, Copy)]
struct Pace {
    /// Time between two requests of one client.
    interval: Duration,
    clients: u32,
}

impl Pace {
    fn new(rate: u32, clients: usize) -> Self {
        let clients = u32::try_from(clients).unwrap_or(u32::MAX).max(1);
        Self {
            interval: Duration::from_secs(1) * clients / rate.max(1),
            clients,
        }
    }

    /// When client `c`'s `n`th request is due.
    fn due(&self, start: Instant, c: usize, n: u32) -> Instant {
        let c = u32::try_from(c).unwrap_or(0) % self.clients;
        start + self.interval * n + self.interval * c / self.clients
    }
}

/// What the clients saw.
struct HttpTally {
    /// Seconds, one per request.
    latencies: Vec<f64>,
    outcomes: BTreeMap<String, u64>,
    /// Allowed decisions for the revoked task asked after its revocation answered.
    stale: u64,
}

impl HttpLoad<'_> {
    /// `clients` threads asking for `duration`; one task is revoked half-way.
    fn run(&self, duration: Duration, clients: usize, pace: Option<Pace>) -> Result<HttpTally> {
        let latencies = Mutex::new(Vec::<f64>::new());
        let outcomes = Mutex::new(BTreeMap::<String, u64>::new());
        let stale = AtomicU64::new(0);
        let revoked = AtomicBool::new(false);
        let start = Instant::now();
        let end = start + duration;
        let victim = &self.creds[0].0;
        std::thread::scope(|s| -> Result<()> {
            for c in 0..clients {
                let (latencies, outcomes, stale, revoked) =
                    (&latencies, &outcomes, &stale, &revoked);
                s.spawn(move || {
                    let mut i = c;
                    let mut sent: u32 = 0;
                    while Instant::now() < end {
                        // Paced: wait until this request is due, and count
                        // its latency from then (a late start is queueing).
                        let due = pace.map(|p| p.due(start, c, sent));
                        sent = sent.saturating_add(1);
                        if let Some(due) = due {
                            if due >= end {
                                break;
                            }
                            std::thread::sleep(due.saturating_duration_since(Instant::now()));
                        }
                        let (task_id, cred) = &self.creds[i % self.creds.len()];
                        // Only requests that start after the revocation answered count as stale.
                        let after_revocation = revoked.load(Ordering::SeqCst) && task_id == victim;
                        let base = &self.bases[c % self.bases.len()];
                        let (elapsed, outcome) = self.decide(base, cred, i);
                        let elapsed = due.map_or(elapsed, |due| due.elapsed().as_secs_f64());
                        if after_revocation && outcome == "allow" {
                            stale.fetch_add(1, Ordering::SeqCst);
                        }
                        if let Ok(mut l) = latencies.lock() {
                            l.push(elapsed);
                        }
                        if let Ok(mut o) = outcomes.lock() {
                            *o.entry(outcome).or_default() += 1;
                        }
                        i += clients;
                    }
                });
            }
            // Revoke one task half-way through, while the load runs; on a
            // terminal, show the requests answered so far.
            let half_way = Instant::now() + duration / 2;
            let mut progress = crate::term::Progress::new("requests answered");
            while Instant::now() < end {
                std::thread::sleep(Duration::from_millis(100));
                if !revoked.load(Ordering::SeqCst) && Instant::now() >= half_way {
                    self.admin.revoke_task(victim, Some("bench revocation"))?;
                    revoked.store(true, Ordering::SeqCst);
                }
                progress.tick(latencies.lock().map_or(0, |l| l.len() as u64));
            }
            Ok(())
        })?;
        Ok(HttpTally {
            latencies: latencies.into_inner().map_err(|_| anyhow!("lock"))?,
            outcomes: outcomes.into_inner().map_err(|_| anyhow!("lock"))?,
            stale: stale.load(Ordering::SeqCst),
        })
    }

    /// Request number `i` of the mix with `cred`: its latency in seconds, and
    /// the decision or what went wrong.
    fn decide(&self, base: &str, cred: &str, i: usize) -> (f64, String) {
        let body = &self.requests[MIX[i % MIX.len()]];
        let t = Instant::now();
        let r = self
            .agent
            .post(&format!("{base}/v1/authorize"))
            .header("authorization", &format!("Bearer {cred}"))
            .send_json(body);
        let elapsed = t.elapsed().as_secs_f64();
        let outcome = match r {
            Ok(mut resp) if resp.status().as_u16() == 200 => resp
                .body_mut()
                .read_json::<Decision>()
                .map_or_else(|_| "?".to_string(), |d| d.decision),
            Ok(resp) => format!("http {}", resp.status().as_u16()),
            Err(_) => "error".to_string(),
        };
        (elapsed, outcome)
    }
}

pub(super) fn percentiles(mut v: Vec<f64>) -> [f64; 3] {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| {
        v.get(((v.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    [at(0.5), at(0.9), at(0.99)]
}

/// `tollgate bench policy`: in-process decisions (context building, the
/// tree's history summary, sliced Cedar evaluation, annotations, playbook)
/// against packs grown with per-agent policies, side by side with stock
/// Cedar's `is_authorized` over the same full set and the same requests.
pub fn policy(pack_dir: &std::path::Path, sizes: &[usize], decisions: usize) -> Result<()> {
    use tollgate_policy::synthetic;

    const TD: &str = "acme.test";
    println!(
        "tollgate bench policy: {decisions} decisions per size; pack {}",
        pack_dir.display()
    );
    println!(
        "{:>8} {:>9} {:>8}  {:>26}  {:>26}  {:>9}",
        "policies",
        "load ms",
        "pack MB",
        "tollgate p50/p90/p99 µs",
        "stock cedar p50/p90/p99 µs",
        "p99 ratio"
    );
    let mut base_p99 = None;
    for &size in sizes {
        let rss = || tollgate_server::metrics::resident_memory_bytes().unwrap_or(0);
        let before = rss();
        let started = Instant::now();
        let (pack, generated) =
            synthetic::with_agent_policies(pack_dir, TD, size).map_err(|e| anyhow!("{e}"))?;
        let load_ms = started.elapsed().as_secs_f64() * 1e3;
        let pack_mb = rss().saturating_sub(before) as f64 / 1e6;
        let agents = generated.clamp(1, decisions);
        let work = synthetic::Workload::new(TD, agents).map_err(|e| anyhow!("{e}"))?;
        let mut ours = Vec::with_capacity(decisions);
        let mut outcomes = [0usize; 3];
        let mut progress = crate::term::Progress::new("decisions");
        for k in 0..decisions {
            progress.tick(k as u64);
            let t = Instant::now();
            // The summary and the rules are part of the decision: computed
            // from the tree's past.
            let history =
                tollgate_core::HistorySummary::from_records(&work.past, pack.catalog(), work.now);
            let rules = work.rules(k, pack.rules());
            let d = pack
                .decide_action(&work.facts(k, &history, &rules))
                .map_err(|e| anyhow!("{e}"))?;
            ours.push(t.elapsed().as_secs_f64() * 1e6);
            outcomes[match d.outcome {
                tollgate_core::Outcome::Allow => 0,
                tollgate_core::Outcome::ApprovalRequired => 1,
                tollgate_core::Outcome::Deny => 2,
            }] += 1;
        }
        // Stock Cedar evaluates the full set; it is given requests already
        // built (its figure leaves out the context building ours includes).
        let stock_n = (2_000_000 / pack.policy_count().max(1)).clamp(100, decisions);
        let authorizer = cedar_policy::Authorizer::new();
        let history =
            tollgate_core::HistorySummary::from_records(&work.past, pack.catalog(), work.now);
        let mut stock = Vec::with_capacity(stock_n);
        for k in 0..stock_n {
            let rules = work.rules(k, pack.rules());
            let f = work.facts(k, &history, &rules);
            let op = pack
                .catalog()
                .operation(f.action)
                .ok_or_else(|| anyhow!("{} is not in the catalog", f.action))?;
            let (req, ents) = pack.action_request(&f, op).map_err(|e| anyhow!("{e}"))?;
            let t = Instant::now();
            let r = authorizer.is_authorized(&req, pack.policy_set(), &ents);
            stock.push(t.elapsed().as_secs_f64() * 1e6);
            std::hint::black_box(r);
        }
        drop(progress);
        let [o50, o90, o99] = percentiles(ours);
        let [s50, s90, s99] = percentiles(stock);
        let base = *base_p99.get_or_insert(o99);
        println!(
            "{:>8} {:>9.1} {:>8.1}  {:>8.1} {:>8.1} {:>8.1}  {:>8.1} {:>8.1} {:>8.1}  {:>8.1}x   (allow {}, approval {}, deny {}; stock n={stock_n}; p99 {:.2}x the first size's)",
            pack.policy_count(),
            load_ms,
            pack_mb,
            o50,
            o90,
            o99,
            s50,
            s90,
            s99,
            s99 / o99,
            outcomes[0],
            outcomes[1],
            outcomes[2],
            o99 / base,
        );
    }
    Ok(())
}

/// `tollgate bench mcp`: what the MCP gateway adds to a tool call. The same
/// allowed read (`edr_read_alerts`) is called directly on the example tool
/// server and through an in-process gateway in front of another copy of it
/// (decision, two durable audit commits, forwarding, redaction), from the
/// same number of concurrent clients, in one run. (Denied calls are not
/// measured: the example pack quarantines an agent after ten denials.)
pub fn mcp(calls: usize, clients: usize) -> Result<()> {
    use rmcp::model::CallToolRequestParams;
    use rmcp::service::RunningService;
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
    use rmcp::{RoleClient, ServiceExt};

    let dir = tempfile::tempdir()?;
    let (config, data, _) = super::demo::write_config(dir.path())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;

    /// Run `calls` calls of `tool` from `clients` peers; latencies in ms.
    async fn load(
        peers: &[rmcp::Peer<RoleClient>],
        calls: usize,
        tool: &str,
        args: serde_json::Value,
        expect_error: bool,
    ) -> Result<(Vec<f64>, f64)> {
        let per = calls.div_ceil(peers.len());
        let started = Instant::now();
        let done = Arc::new(AtomicU64::new(0));
        let ticker = progress_ticker("calls", done.clone());
        let mut handles = Vec::new();
        for peer in peers {
            let (peer, tool, args) = (peer.clone(), tool.to_string(), args.clone());
            let done = done.clone();
            handles.push(tokio::spawn(async move {
                let mut lat = Vec::with_capacity(per);
                let arguments = args.as_object().cloned().unwrap_or_default();
                for _ in 0..per {
                    let t = Instant::now();
                    let r = peer
                        .call_tool(
                            CallToolRequestParams::new(tool.clone())
                                .with_arguments(arguments.clone()),
                        )
                        .await?;
                    if (r.is_error == Some(true)) != expect_error {
                        return Err(anyhow!("unexpected answer to {tool}: {:?}", r.content));
                    }
                    lat.push(t.elapsed().as_secs_f64() * 1e3);
                    done.fetch_add(1, Ordering::Relaxed);
                }
                anyhow::Ok(lat)
            }));
        }
        let mut all = Vec::new();
        for h in handles {
            all.extend(h.await??);
        }
        stop_ticker(ticker).await;
        let rate = all.len() as f64 / started.elapsed().as_secs_f64();
        Ok((all, rate))
    }

    rt.block_on(async move {
        // Direct: one client of the example tool server on stdio, shared by
        // `clients` tasks (as the gateway shares its one upstream connection).
        let token = tollgate_server::state::random_token("irt_");
        let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
        cmd.args(["tools", "example", "--state"])
            .arg(dir.path().join("direct-world.json"))
            .env(tollgate_example_tools::TOKEN_ENV, &token);
        let direct: RunningService<RoleClient, ()> =
            ().serve(rmcp::transport::TokioChildProcess::new(cmd)?).await?;
        let direct_peers = vec![direct.peer().clone(); clients];
        let read = json!({"host": "web-1"});
        load(&direct_peers, clients * 5, "edr_read_alerts", read.clone(), false).await?; // warm-up
        let (direct_lat, direct_rate) =
            load(&direct_peers, calls, "edr_read_alerts", read.clone(), false).await?;

        // Through the gateway: the demo's configuration, in this process.
        let addr = super::demo::serve_in_process(&config, &data).await?;
        let conn = Conn {
            addr: Some(addr.clone()),
            context: None,
            token: None,
            data: Some(data.clone()),
        };
        let admin = Client::new(&conn)?;
        let agent = "spiffe://acme.test/agent/ir-responder/bench-mcp";
        let registered = admin.register_agent(agent, "bench@acme.test")?;
        let join_token = registered.value.join_token.ok_or_else(|| anyhow!("no join token for {agent}"))?;
        let as_agent = admin.with_token(&admin.attest(&join_token)?.svid);
        // One task and one MCP session per client: each its own delegation tree.
        let mut sessions = Vec::new();
        for _ in 0..clients {
            let task = as_agent.open_task(&OpenTask {
                incident: IncidentRef { id: "INC-4711", class: "malware", severity: "high" },
                environment: "prod",
                playbook: "contain-malware",
                intent: "bench mcp",
            })?;
            let t = StreamableHttpClientTransportConfig::with_uri(format!("{addr}/mcp")).auth_header(task.credential);
            sessions.push(().serve(rmcp::transport::StreamableHttpClientTransport::from_config(t)).await?);
        }
        let peers: Vec<_> = sessions.iter().map(|s| s.peer().clone()).collect();
        load(&peers, clients * 5, "edr_read_alerts", read.clone(), false).await?; // warm-up
        let (gw_lat, gw_rate) = load(&peers, calls, "edr_read_alerts", read.clone(), false).await?;

        let [d50, d90, d99] = percentiles(direct_lat);
        let [g50, g90, g99] = percentiles(gw_lat);
        println!("tollgate bench mcp: {calls} tools/call per row, {clients} concurrent clients, example tool server on stdio");
        println!("                                   calls/s     p50 ms   p90 ms   p99 ms");
        println!("direct to the tool server      {direct_rate:>10.0}   {d50:>8.2} {d90:>8.2} {d99:>8.2}");
        println!("through the gateway (allowed)  {gw_rate:>10.0}   {g50:>8.2} {g90:>8.2} {g99:>8.2}");
        println!(
            "gateway overhead on an allowed call: p50 +{:.2} ms ({:.1}x), throughput {:.2}x of direct",
            g50 - d50,
            g50 / d50.max(1e-9),
            gw_rate / direct_rate.max(1e-9)
        );
        drop(sessions);
        let _ = direct.cancel().await;
        anyhow::Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paced_clients_send_the_rate_evenly_between_them() {
        let start = Instant::now();
        let pace = Pace::new(100, 4);
        // Each client every 40 ms, the four 10 ms apart.
        assert_eq!(pace.interval, Duration::from_millis(40));
        let due = |c, n| pace.due(start, c, n).duration_since(start);
        assert_eq!(due(0, 0), Duration::ZERO);
        assert_eq!(due(1, 0), Duration::from_millis(10));
        assert_eq!(due(3, 2), Duration::from_millis(110));
        // In one second the clients have 100 requests due, no more.
        let second = Duration::from_secs(1);
        let count = (0..4)
            .flat_map(|c| (0..1000).map(move |n| (c, n)))
            .filter(|&(c, n)| due(c, n) < second)
            .count();
        assert_eq!(count, 100);
    }
}
