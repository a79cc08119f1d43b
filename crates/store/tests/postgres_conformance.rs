#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The PostgreSQL backend against the shared conformance suite.
//!
//! Needs `TOLLGATE_TEST_PG` (e.g. `postgres://postgres@127.0.0.1:5432/test`);
//! without it each test says it was skipped and passes. With it, a server
//! that cannot be reached fails the test. Each test works in a fresh schema
//! of its own, dropped at the end, so runs may overlap.

use std::time::Instant;
use tollgate_audit::AuditEvent;
use tollgate_store::{conformance, AuditQuery, Batch, PostgresStore, Store};

fn url() -> Option<String> {
    match std::env::var("TOLLGATE_TEST_PG") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            eprintln!("skipped: TOLLGATE_TEST_PG is not set");
            None
        }
    }
}

/// A schema that exists for one test: dropped by [`Schema::drop_now`] (a
/// test that panics leaves it for inspection; names never collide).
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
        // Random enough across concurrent runs: time, process, and a counter.
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Self {
            url: url.to_string(),
            name: format!("tg_test_{nanos:x}_{}_{n}", std::process::id()),
        }
    }

    async fn drop_now(self) {
        let (client, conn) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .unwrap();
        let task = tokio::spawn(conn);
        client
            .batch_execute(&format!("DROP SCHEMA \"{}\" CASCADE", self.name))
            .await
            .unwrap();
        drop(client);
        let _ = task.await;
    }
}

async fn all_entries(s: &PostgresStore) -> Vec<tollgate_audit::AuditEntry> {
    s.audit(AuditQuery {
        limit: 10_000_000,
        ..Default::default()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn postgres_conforms_and_chain_survives_reopen() {
    let Some(url) = url() else { return };
    let schema = Schema::new(&url);
    let started = Instant::now();
    {
        let s = PostgresStore::connect(&url, Some(&schema.name))
            .await
            .unwrap();
        conformance::run_all(&s).await;
        s.check_consistency().await.unwrap();
    }
    eprintln!("postgres conformance: {:?}", started.elapsed());
    // A second store over the same schema (as after a restart): the
    // migrations are not applied twice and the chain continues.
    let s = PostgresStore::connect(&url, Some(&schema.name))
        .await
        .unwrap();
    let before = s.audit_head().await.unwrap();
    let seqs = s
        .commit(Batch::audit_only(AuditEvent::new(9, "reopened", "t")))
        .await
        .unwrap();
    assert_eq!(seqs, vec![before.size + 1]);
    let all = all_entries(&s).await;
    let (next, last) = tollgate_audit::verify_run(1, tollgate_audit::GENESIS, &all).unwrap();
    let head = s.audit_head().await.unwrap();
    assert_eq!((next - 1, last), (head.size, head.last_hash));
    s.check_consistency().await.unwrap();
    schema.drop_now().await;
}

/// Two stores with their own pools, as two processes over one database,
/// appending at once: every commit lands, in one chain, with no fork and
/// no gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_append_to_one_chain() {
    let Some(url) = url() else { return };
    let schema = Schema::new(&url);
    // Connecting at once also races the migrations (the advisory lock).
    let (a, b) = tokio::join!(
        PostgresStore::connect(&url, Some(&schema.name)),
        PostgresStore::connect(&url, Some(&schema.name)),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let started = Instant::now();
    let mut handles = Vec::new();
    for (name, s) in [("a", a.clone()), ("b", b.clone())] {
        for i in 0..50 {
            let s = s.clone();
            handles.push(tokio::spawn(async move {
                s.commit(Batch::audit_only(
                    AuditEvent::new(i, "race", name).task(format!("{name}-{i}")),
                ))
                .await
                .unwrap()
            }));
        }
    }
    let mut seqs = Vec::new();
    for h in handles {
        seqs.extend(h.await.unwrap());
    }
    eprintln!("2x50 concurrent commits: {:?}", started.elapsed());
    seqs.sort();
    assert_eq!(
        seqs,
        (1..=100).collect::<Vec<u64>>(),
        "a seq was reused or skipped"
    );
    for s in [&a, &b] {
        let all = all_entries(s).await;
        assert_eq!(all.len(), 100);
        tollgate_audit::verify_run(1, tollgate_audit::GENESIS, &all).unwrap();
        let head = s.audit_head().await.unwrap();
        assert_eq!((head.size, head.last_hash), (100, all[99].hash));
        let leaves = s.audit_leaf_hashes(100).await.unwrap();
        assert_eq!(tollgate_audit::merkle::root(&leaves), head.root_hash);
        s.check_consistency().await.unwrap();
    }
    drop((a, b));
    schema.drop_now().await;
}

/// The races between replicas: two stores with their own pools over one
/// fresh schema, as two processes over one database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_race_to_one_winner() {
    let Some(url) = url() else { return };
    let schema = Schema::new(&url);
    let a = PostgresStore::connect(&url, Some(&schema.name))
        .await
        .unwrap();
    let b = PostgresStore::connect(&url, Some(&schema.name))
        .await
        .unwrap();
    let started = Instant::now();
    conformance::run_races(&a, &b).await;
    eprintln!("postgres races: {:?}", started.elapsed());
    a.check_consistency().await.unwrap();
    b.check_consistency().await.unwrap();
    drop((a, b));
    schema.drop_now().await;
}

#[tokio::test]
async fn an_unreachable_server_is_an_error() {
    if url().is_none() {
        return;
    }
    // Nothing listens on port 1: connecting must fail, not hang or pass.
    let r = PostgresStore::connect("postgres://postgres@127.0.0.1:1/test", None).await;
    assert!(r.is_err());
}

/// An entry edited in place, or a head row that no longer matches the
/// log, stops `check_consistency`.
#[tokio::test]
async fn an_edited_log_fails_the_consistency_check() {
    let Some(url) = url() else { return };
    let schema = Schema::new(&url);
    let s = PostgresStore::connect(&url, Some(&schema.name))
        .await
        .unwrap();
    for i in 0..3 {
        s.commit(Batch::audit_only(AuditEvent::new(i, "decision", "a")))
            .await
            .unwrap();
    }
    s.check_consistency().await.unwrap();
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let task = tokio::spawn(conn);
    let edit = |sql: &str| format!("SET search_path = {}; {sql}", schema.name);
    client
        .batch_execute(&edit(
            "UPDATE audit SET event = replace(event, '\"decision\"', '\"decisioN\"') WHERE seq = 2",
        ))
        .await
        .unwrap();
    assert!(
        s.check_consistency().await.is_err(),
        "an edited entry passed"
    );
    client
        .batch_execute(&edit(
            "UPDATE audit SET event = replace(event, '\"decisioN\"', '\"decision\"') WHERE seq = 2",
        ))
        .await
        .unwrap();
    s.check_consistency().await.unwrap();
    client
        .batch_execute(&edit("DELETE FROM audit WHERE seq = 3"))
        .await
        .unwrap();
    assert!(
        s.check_consistency().await.is_err(),
        "a truncated log passed"
    );
    drop(client);
    let _ = task.await;
    drop(s);
    schema.drop_now().await;
}
