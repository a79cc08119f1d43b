#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The SQLite backend against the shared conformance suite, in memory and on disk.

use tollgate_store::{conformance, SqliteStore, Store};

#[tokio::test]
async fn sqlite_in_memory_conforms() {
    let s = SqliteStore::open_in_memory().unwrap();
    conformance::run_all(&s).await;
}

#[tokio::test]
async fn sqlite_file_conforms_and_chain_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    {
        let s = SqliteStore::open(&path).unwrap();
        conformance::run_all(&s).await;
    }
    // Reopening resumes the chain where it stopped.
    let s = SqliteStore::open(&path).unwrap();
    s.commit(tollgate_store::Batch::audit_only(
        tollgate_audit::AuditEvent::new(9, "reopened", "t"),
    ))
    .await
    .unwrap();
    let all = s
        .audit(tollgate_store::AuditQuery {
            limit: 100_000,
            ..Default::default()
        })
        .await
        .unwrap();
    tollgate_audit::verify_run(1, tollgate_audit::GENESIS, &all).unwrap();
}

/// The races between replicas. SQLite has one writer per database, so a
/// second process is not how it is deployed: the "two sides" are the same
/// on-disk store passed twice, racing through one writer (one process).
#[tokio::test]
async fn sqlite_races_resolve_to_one_winner() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&dir.path().join("races.db")).unwrap();
    conformance::run_races(&s, &s).await;
}
