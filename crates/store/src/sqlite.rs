//! The embedded default backend: one SQLite file in WAL mode.
//!
//! One connection behind a mutex. SQLite allows a single writer anyway, and
//! keeping the chain head in the same critical section as the write is what
//! makes chain order equal commit order. Reads run on tokio's blocking pool;
//! commits go to a writer thread that groups whatever batches are waiting
//! into one transaction (group commit): one fsync for many decisions.

use crate::tree_cache::TreeCache;
use crate::{
    ActionRecord, ApprovalFilter, Approver, AuditHead, AuditQuery, Batch, Change, Conflict,
    ConsoleSession, FactsQuery, JoinToken, OutboxMessage, Pep, Store, StoreError, StoredFacts,
    TaskFilter,
};
use crate::{HeldCall, McpSession};
use async_trait::async_trait;
use rusqlite::config::DbConfig;
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;
use std::sync::{Arc, Mutex};
use tollgate_audit::checkpoint::Checkpoint;
use tollgate_audit::merkle::{leaf_hash, CompactRange};
use tollgate_audit::{AuditEntry, AuditEvent, GENESIS};
use tollgate_core::lineage::MAX_ANCESTORS;
use tollgate_core::{Agent, Approval, Incident, Lineage, Scope, SharedStr, Task, TaskStatus};

mod mcp;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS agents (
  spiffe_id TEXT PRIMARY KEY, owner TEXT NOT NULL, created_at INTEGER NOT NULL, revoked INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS join_tokens (
  token_hash TEXT PRIMARY KEY, spiffe_id TEXT NOT NULL, expires_at INTEGER NOT NULL, used_at INTEGER);
CREATE TABLE IF NOT EXISTS incidents (
  id TEXT PRIMARY KEY, class TEXT NOT NULL, severity TEXT NOT NULL, status TEXT NOT NULL, updated_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS tasks (
  id TEXT PRIMARY KEY, agent TEXT NOT NULL, incident_id TEXT NOT NULL, environment TEXT NOT NULL,
  playbook TEXT NOT NULL, intent TEXT NOT NULL, scope TEXT NOT NULL, parent_task_id TEXT,
  created_at INTEGER NOT NULL, expires_at INTEGER NOT NULL, max_expires_at INTEGER NOT NULL,
  status TEXT NOT NULL, status_reason TEXT);
CREATE INDEX IF NOT EXISTS tasks_agent ON tasks(agent);
CREATE INDEX IF NOT EXISTS tasks_incident ON tasks(incident_id);
CREATE INDEX IF NOT EXISTS tasks_parent ON tasks(parent_task_id);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS peps (name TEXT PRIMARY KEY, key_hash TEXT NOT NULL UNIQUE, created_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS evidence (
  id TEXT PRIMARY KEY, task_id TEXT NOT NULL, resource TEXT NOT NULL, kind TEXT NOT NULL,
  sha256 TEXT NOT NULL, content TEXT, created_at INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS evidence_task ON evidence(task_id, resource);
CREATE TABLE IF NOT EXISTS approvals (
  id TEXT PRIMARY KEY, version INTEGER NOT NULL, status TEXT NOT NULL, task_id TEXT NOT NULL,
  request_hash TEXT NOT NULL, created_at INTEGER NOT NULL, body TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS approvals_status ON approvals(status);
CREATE INDEX IF NOT EXISTS approvals_task ON approvals(task_id, request_hash);
CREATE UNIQUE INDEX IF NOT EXISTS approvals_one_pending ON approvals(task_id, request_hash) WHERE status = 'pending';
CREATE TABLE IF NOT EXISTS approvers (
  name TEXT PRIMARY KEY, role TEXT NOT NULL, key_hash TEXT NOT NULL UNIQUE, created_at INTEGER NOT NULL,
  expires_at INTEGER, disabled INTEGER NOT NULL DEFAULT 0, last_used_at INTEGER);
CREATE TABLE IF NOT EXISTS action_history (
  root_task_id TEXT NOT NULL, task_id TEXT NOT NULL, agent TEXT NOT NULL, request_id TEXT NOT NULL, action TEXT NOT NULL,
  resource TEXT NOT NULL, tier TEXT NOT NULL, labels TEXT NOT NULL, outcome TEXT NOT NULL, ts INTEGER NOT NULL);
-- A tree's rows by rowid (every index ends in the rowid): the history
-- cache reads the rows after the newest it holds as one range.
CREATE INDEX IF NOT EXISTS action_history_tree_rows ON action_history(root_task_id);
CREATE INDEX IF NOT EXISTS action_history_agent ON action_history(agent, ts);
CREATE INDEX IF NOT EXISTS action_history_agent_allowed_tier ON action_history(agent, tier, ts) WHERE outcome = 'allow';
CREATE TABLE IF NOT EXISTS checkpoints (tree_size INTEGER PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS leases (key TEXT PRIMARY KEY, holder TEXT NOT NULL, until INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS console_sessions (
  id_hash TEXT PRIMARY KEY, principal TEXT NOT NULL, role TEXT NOT NULL, via TEXT NOT NULL,
  created_at INTEGER NOT NULL, expires_at INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS console_sessions_expiry ON console_sessions(expires_at);
CREATE TABLE IF NOT EXISTS outbox (
  id TEXT PRIMARY KEY, sink TEXT NOT NULL, event TEXT NOT NULL, subject TEXT NOT NULL,
  body TEXT NOT NULL, created_at INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS outbox_created ON outbox(created_at, id);
CREATE TABLE IF NOT EXISTS action_results (
  request_id TEXT PRIMARY KEY, task_id TEXT NOT NULL, status TEXT NOT NULL, created_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS audit (
  seq INTEGER PRIMARY KEY, ts INTEGER NOT NULL, kind TEXT NOT NULL,
  incident_id TEXT, task_id TEXT, agent TEXT, request_id TEXT,
  prev_hash TEXT NOT NULL, hash TEXT NOT NULL, event TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS audit_incident ON audit(incident_id);
CREATE INDEX IF NOT EXISTS audit_task ON audit(task_id);
CREATE INDEX IF NOT EXISTS audit_agent ON audit(agent);
CREATE INDEX IF NOT EXISTS audit_request ON audit(request_id);
"#;

struct Inner {
    conn: Connection,
    /// (next seq, hash of the last entry), kept in step with the table.
    head: (u64, [u8; 32]),
    /// Merkle right edge of the log, kept in step with the table.
    range: CompactRange,
}

/// One batch waiting for the group-commit writer.
struct Job {
    batch: Batch,
    reply: tokio::sync::oneshot::Sender<Result<Vec<u64>, StoreError>>,
}

/// Most batches one transaction (one fsync) carries.
const MAX_GROUP: usize = 512;

/// Read-only connections, so reads never queue behind the writer's fsync
/// (WAL lets readers see every committed transaction concurrently).
struct Readers {
    conns: Vec<Mutex<Connection>>,
    next: std::sync::atomic::AtomicUsize,
}

const READERS: usize = 4;

impl Readers {
    /// Run `f` on a reader nobody holds, on this thread; `f` back if every
    /// reader is held.
    fn run_if_free<T, F>(&self, f: F) -> Result<Result<T, StoreError>, F>
    where
        F: FnOnce(&Connection) -> Result<T, StoreError>,
    {
        let n = self.conns.len();
        let start = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        for i in 0..n {
            if let Ok(conn) = self.conns[(start + i) % n].try_lock() {
                return Ok(f(&conn));
            }
        }
        Err(f)
    }
}

#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Mutex<Inner>>,
    /// `None` for an in-memory store, whose only database is the writer's.
    readers: Option<Arc<Readers>>,
    /// Commits go through one writer thread that groups concurrent batches
    /// into one durable transaction (group commit).
    writer: std::sync::mpsc::SyncSender<Job>,
    /// Each tree's action history as last read ([`Store::decision_facts`]).
    trees: Arc<TreeCache>,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// Execute `sql` through the connection's statement cache. `Connection::execute`
/// parses and plans its statement on every call: in the writer that was 5% of
/// the server's time under `bench http` (every decision inserts a few rows).
fn exec(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql)?.execute(params)
}

/// `Connection::query_row` through the statement cache, as [`exec`].
fn query_one<T>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    conn.prepare_cached(sql)?.query_row(params, f)
}

impl SqliteStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::init(Connection::open(path).map_err(backend)?, Some(path))
    }

    pub fn open_in_memory() -> Result<Self, StoreError> {
        Self::init(Connection::open_in_memory().map_err(backend)?, None)
    }

    fn init(conn: Connection, path: Option<&Path>) -> Result<Self, StoreError> {
        // FULL: the WAL is fsync'd at every commit, so a returned commit
        // survives power loss; that is the audit guarantee.
        // temp_store=MEMORY: a group commit gives each batch a savepoint,
        // whose sub-journal SQLite spills to a temporary file past 64 KiB;
        // it only serves rolling back one batch within the transaction, so
        // memory is enough, and the profile showed those writes at 4%.
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA busy_timeout=5000; PRAGMA temp_store=MEMORY;",
        )
        .map_err(backend)?;
        // As on the readers (`open_reader`): in memory, reads run here.
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
            .map_err(backend)?;
        // Every kind of change is one statement or two (`exec`); rusqlite's
        // default of 16 cached statements would evict the ones decisions use.
        conn.set_prepared_statement_cache_capacity(128);
        conn.execute_batch(SCHEMA).map_err(backend)?;
        conn.execute_batch(mcp::SCHEMA).map_err(backend)?;
        add_missing_columns(&conn)?;
        let head = conn
            .query_row(
                "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
                [],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
            )
            .optional()
            .map_err(backend)?;
        let head = match head {
            None => (1, GENESIS),
            Some((seq, hash)) => {
                let mut h = [0u8; 32];
                hex::decode_to_slice(&hash, &mut h).map_err(backend)?;
                (seq as u64 + 1, h)
            }
        };
        // Rebuild the Merkle right edge from the stored hashes (one pass).
        let mut range = CompactRange::default();
        {
            let mut stmt = conn
                .prepare("SELECT hash FROM audit ORDER BY seq")
                .map_err(backend)?;
            let mut rows = stmt.query([]).map_err(backend)?;
            while let Some(row) = rows.next().map_err(backend)? {
                let hash: String = row.get(0).map_err(backend)?;
                let mut h = [0u8; 32];
                hex::decode_to_slice(&hash, &mut h).map_err(backend)?;
                range.push(leaf_hash(&h));
            }
        }
        let inner = Arc::new(Mutex::new(Inner { conn, head, range }));
        let (writer, rx) = std::sync::mpsc::sync_channel::<Job>(4096);
        let w = inner.clone();
        std::thread::Builder::new()
            .name("tollgate-sqlite-writer".into())
            .spawn(move || writer_loop(&w, &rx))
            .map_err(backend)?;
        let readers = match path {
            None => None,
            Some(p) => {
                let mut conns = Vec::with_capacity(READERS);
                for _ in 0..READERS {
                    conns.push(Mutex::new(open_reader(p)?));
                }
                Some(Arc::new(Readers {
                    conns,
                    next: std::sync::atomic::AtomicUsize::new(0),
                }))
            }
        };
        Ok(Self {
            inner,
            readers,
            writer,
            trees: Arc::default(),
        })
    }

    /// Check the stored log against itself and its stored checkpoints:
    /// sequence numbers without gaps, and the Merkle root at every
    /// checkpoint's size equal to the signed one. The server refuses to
    /// start on a log that fails this (signatures are `audit verify`'s job).
    async fn verify_log(&self) -> Result<(), StoreError> {
        self.with(|inner| {
            let (count, max): (i64, Option<i64>) = inner
                .conn
                .query_row("SELECT count(*), max(seq) FROM audit", [], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(backend)?;
            if count != max.unwrap_or(0) {
                return Err(backend(format!(
                    "the audit log has {count} entries but its last is number {}: entries were removed",
                    max.unwrap_or(0)
                )));
            }
            let mut cps: Vec<Checkpoint> = {
                let mut stmt = inner.conn.prepare("SELECT body FROM checkpoints ORDER BY tree_size DESC").map_err(backend)?;
                let rows = stmt.query_map([], |r| r.get::<_, String>(0)).map_err(backend)?;
                let mut out = Vec::new();
                for row in rows {
                    out.push(serde_json::from_str::<Checkpoint>(&row.map_err(backend)?).map_err(backend)?);
                }
                out
            };
            if let Some(cp) = cps.first() {
                if cp.tree_size > count as u64 {
                    return Err(backend(format!(
                        "the audit log ends at entry {count} but a signed checkpoint covers {}: it was truncated",
                        cp.tree_size
                    )));
                }
            }
            let mut range = CompactRange::default();
            // Recompute every entry's hash and link, not only the roots: an
            // entry edited in place must stop the server too.
            let mut stmt = inner.conn.prepare(&format!("SELECT {ENTRY_COLS} FROM audit ORDER BY seq")).map_err(backend)?;
            let mut rows = stmt.query([]).map_err(backend)?;
            let (mut next, mut prev) = (1u64, GENESIS);
            while let Some(row) = rows.next().map_err(backend)? {
                let entry = decode_entry(entry_row(row).map_err(backend)?)?;
                (next, prev) = tollgate_audit::verify_run(next, prev, std::iter::once(&entry))
                    .map_err(|e| backend(format!("{e}")))?;
                let h = entry.hash;
                range.push(leaf_hash(&h));
                while cps.last().is_some_and(|c| c.tree_size == range.size()) {
                    if let Some(cp) = cps.pop() {
                        if cp.root_hash != hex::encode(range.root()) {
                            return Err(backend(format!(
                                "the first {} audit entries do not match their signed checkpoint: entries were rewritten",
                                cp.tree_size
                            )));
                        }
                    }
                }
                while cps.last().is_some_and(|c| c.tree_size == 0) {
                    cps.pop();
                }
            }
            Ok(())
        })
        .await
    }

    /// At most one row, looked up by one text key.
    async fn one<T: Send + 'static>(
        &self,
        sql: &'static str,
        key: &str,
        map: fn(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Option<T>, StoreError> {
        let key = key.to_string();
        self.point_read(move |conn| conn.query_row(sql, [key], map).optional().map_err(backend))
            .await
    }

    /// A read of a few rows by key, on a request's path (credential checks,
    /// a decision's facts): run on the calling thread when a reader is free.
    ///
    /// Why: such a read takes tens of microseconds, while handing it to the
    /// blocking pool and back costs two thread wake-ups, which on these
    /// virtual machines cost as much as the read; a decision made three such
    /// hand-offs before its commit. Only a free reader is taken (`try_lock`),
    /// so the async runtime never waits on a lock here; when all are busy the
    /// read goes to the blocking pool as every other read does. Reads whose
    /// size the caller chooses (lists, the audit log) always go there.
    async fn point_read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let f = match &self.readers {
            Some(readers) => match readers.run_if_free(f) {
                Ok(out) => return out,
                Err(f) => f,
            },
            None => f,
        };
        self.read(f).await
    }

    /// Run a read on a reader connection (or the writer's, in memory), off
    /// the async runtime.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let Some(readers) = self.readers.clone() else {
            return self.with(move |inner| f(&inner.conn)).await;
        };
        tokio::task::spawn_blocking(move || {
            // Take a free reader if there is one, else wait for one.
            let f = match readers.run_if_free(f) {
                Ok(out) => return out,
                Err(f) => f,
            };
            let n = readers.conns.len();
            let start = readers
                .next
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let conn = readers.conns[start % n]
                .lock()
                .map_err(|_| backend("reader lock poisoned"))?;
            f(&conn)
        })
        .await
        .map_err(backend)?
    }

    /// Run point reads ([`Self::point_read`]) in one transaction on one
    /// connection, so that they all see one snapshot (on disk: one WAL
    /// snapshot of a reader; in memory: the writer's connection, under its
    /// lock, between commits).
    async fn point_read_tx<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.point_read(move |conn| {
            let tx = conn.unchecked_transaction().map_err(backend)?;
            let out = f(&tx)?;
            tx.commit().map_err(backend)?;
            Ok(out)
        })
        .await
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Inner) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = inner.lock().map_err(|_| backend("store lock poisoned"))?;
            f(&mut guard)
        })
        .await
        .map_err(backend)?
    }
}

fn apply(tx: &Connection, change: &Change) -> Result<(), StoreError> {
    match change {
        Change::DropExpiredLeases { .. }
        | Change::PutMcpSession(_)
        | Change::TouchMcpSession { .. }
        | Change::EndMcpSession { .. }
        | Change::EndIdleMcpSessions { .. }
        | Change::PutHeldCall(_)
        | Change::EndHeldCall { .. } => {
            mcp::apply(tx, change)?;
        }
        Change::UpsertAgent(a) => {
            exec(
                tx,
                "INSERT INTO agents(spiffe_id, owner, created_at, revoked) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(spiffe_id) DO UPDATE SET owner = excluded.owner, revoked = excluded.revoked,
                   created_at = excluded.created_at",
                params![a.spiffe_id, a.owner, a.created_at, a.revoked],
            )
            .map_err(backend)?;
        }
        Change::SetAgentRevoked { spiffe_id, revoked } => {
            let n = exec(
                tx,
                "UPDATE agents SET revoked = ?2 WHERE spiffe_id = ?1",
                params![spiffe_id, revoked],
            )
            .map_err(backend)?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("agent {spiffe_id}")));
            }
        }
        Change::PutJoinToken(t) => {
            exec(
                tx,
                "INSERT INTO join_tokens(token_hash, spiffe_id, expires_at, used_at) VALUES (?1, ?2, ?3, NULL)",
                params![t.token_hash, t.spiffe_id, t.expires_at],
            )
            .map_err(backend)?;
        }
        Change::DropUnusedJoinTokens { spiffe_id } => {
            exec(
                tx,
                "DELETE FROM join_tokens WHERE spiffe_id = ?1 AND used_at IS NULL",
                params![spiffe_id],
            )
            .map_err(backend)?;
        }
        Change::RecordIncident(i) => {
            exec(
                tx,
                "INSERT INTO incidents(id, class, severity, status, updated_at) VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT(id) DO NOTHING",
                params![i.id, i.class, i.severity.as_str(), i.status.as_str(), i.updated_at],
            )
            .map_err(backend)?;
            let (class, severity): (String, String) = query_one(
                tx,
                "SELECT class, severity FROM incidents WHERE id = ?1",
                params![i.id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(backend)?;
            if class != i.class || severity != i.severity.as_str() {
                return Err(Conflict::IncidentDiffers {
                    incident_id: i.id.clone(),
                    class,
                    severity,
                }
                .into());
            }
        }
        Change::ConsumeJoinToken { token_hash, now } => {
            let n = exec(
                    tx,
                    "UPDATE join_tokens SET used_at = ?2 WHERE token_hash = ?1 AND used_at IS NULL AND expires_at > ?2",
                    params![token_hash, now],
                )
                .map_err(backend)?;
            if n == 0 {
                return Err(Conflict::JoinTokenSpent {
                    token_hash: token_hash.clone(),
                }
                .into());
            }
        }
        Change::UpsertIncident(i) => {
            exec(
                tx,
                "INSERT INTO incidents(id, class, severity, status, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(id) DO UPDATE SET class = excluded.class, severity = excluded.severity,
                 status = excluded.status, updated_at = excluded.updated_at",
                params![i.id, i.class, i.severity.as_str(), i.status.as_str(), i.updated_at],
            )
            .map_err(backend)?;
        }
        Change::InsertTask(t) => {
            let scope = serde_json::to_string(&t.scope).map_err(backend)?;
            exec(
                tx,
                "INSERT INTO tasks(id, agent, incident_id, environment, playbook, intent, scope, parent_task_id,
                   created_at, expires_at, max_expires_at, status, status_reason)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
                params![
                    t.id, t.agent, t.incident_id, t.environment, t.playbook, t.intent, scope,
                    t.parent_task_id, t.created_at, t.expires_at, t.max_expires_at,
                    t.status.as_str(), t.status_reason
                ],
            )
            .map_err(|e| match e {
                rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation => {
                    Conflict::TaskExists { task_id: t.id.clone() }.into()
                }
                e => backend(e),
            })?;
        }
        Change::RenewTask {
            task_id,
            expires_at,
            now,
        } => {
            let n = exec(
                    tx,
                    "UPDATE tasks SET expires_at = ?2 WHERE id = ?1 AND status = 'active' AND expires_at > ?3 AND ?2 <= max_expires_at",
                    params![task_id, expires_at, now],
                )
                .map_err(backend)?;
            if n == 0 {
                // Which of the two preconditions failed, read in the same savepoint.
                let max: Option<i64> = query_one(
                        tx,
                        "SELECT max_expires_at FROM tasks WHERE id = ?1 AND status = 'active' AND expires_at > ?2",
                        params![task_id, now],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(backend)?;
                return Err(Conflict::of_renewal(task_id, *expires_at, max).into());
            }
        }
        Change::EndTask {
            task_id,
            status,
            reason,
        } => {
            let n = exec(
                    tx,
                    "UPDATE tasks SET status = ?2, status_reason = ?3 WHERE id = ?1 AND status = 'active'",
                    params![task_id, status.as_str(), reason],
                )
                .map_err(backend)?;
            if n == 0 {
                return Err(Conflict::TaskNotLive {
                    task_id: task_id.clone(),
                }
                .into());
            }
        }
        Change::RequireTaskLive { task_id, now } => {
            let live: bool = query_one(
                    tx,
                    "SELECT EXISTS(SELECT 1 FROM tasks WHERE id = ?1 AND status = 'active' AND expires_at > ?2)",
                    params![task_id, now],
                    |r| r.get(0),
                )
                .map_err(backend)?;
            if !live {
                return Err(Conflict::TaskNotLive {
                    task_id: task_id.clone(),
                }
                .into());
            }
        }
        Change::RevokeTask { task_id, reason } => {
            exec(
                tx,
                "UPDATE tasks SET status = 'revoked', status_reason = ?2 WHERE id = ?1 AND status = 'active'",
                params![task_id, reason],
            )
            .map_err(backend)?;
        }
        Change::EndDescendants { root_id, reason } => {
            exec(
                tx,
                "WITH RECURSIVE sub(id) AS (
                   SELECT id FROM tasks WHERE parent_task_id = ?1
                   UNION SELECT t.id FROM tasks t JOIN sub ON t.parent_task_id = sub.id)
                 UPDATE tasks SET status = 'revoked', status_reason = ?2 WHERE id IN (SELECT id FROM sub) AND status = 'active'",
                params![root_id, reason],
            )
            .map_err(backend)?;
        }
        Change::EndAgentTasks { spiffe_id, reason } => {
            exec(
                tx,
                "UPDATE tasks SET status = 'revoked', status_reason = ?2 WHERE agent = ?1 AND status = 'active'",
                params![spiffe_id, reason],
            )
            .map_err(backend)?;
        }
        Change::PutSetting { key, value } => {
            exec(
                tx,
                "INSERT INTO settings(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )
            .map_err(backend)?;
        }
        Change::PutPep(p) => {
            exec(
                tx,
                "INSERT INTO peps(name, key_hash, created_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT(name) DO UPDATE SET key_hash = excluded.key_hash, created_at = excluded.created_at",
                params![p.name, p.key_hash, p.created_at],
            )
            .map_err(backend)?;
        }
        Change::RemovePep { name } => {
            let n = exec(tx, "DELETE FROM peps WHERE name = ?1", params![name]).map_err(backend)?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("pep {name}")));
            }
        }
        Change::PutEvidence(e) => {
            exec(
                tx,
                "INSERT INTO evidence(id, task_id, resource, kind, sha256, content, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![e.id, e.task_id, e.resource, e.kind, e.sha256, e.content, e.created_at],
            )
            .map_err(backend)?;
        }
        Change::InsertApproval(a) => {
            let body = serde_json::to_string(a).map_err(backend)?;
            exec(
                tx,
                "INSERT INTO approvals(id, version, status, task_id, request_hash, created_at, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![a.id, a.version as i64, a.status.as_str(), a.task_id, a.request_hash, a.created_at, body],
            )
            .map_err(|e| match e {
                rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation => {
                    approval_conflict(tx, a, e)
                }
                e => backend(e),
            })?;
        }
        Change::UpdateApproval {
            approval: a,
            expected_version,
        } => {
            let body = serde_json::to_string(a).map_err(backend)?;
            let n = exec(
                    tx,
                    "UPDATE approvals SET version = ?2, status = ?3, body = ?4 WHERE id = ?1 AND version = ?5",
                    params![a.id, a.version as i64, a.status.as_str(), body, *expected_version as i64],
                )
                .map_err(backend)?;
            if n == 0 {
                return Err(Conflict::ApprovalVersion {
                    approval_id: a.id.clone(),
                    expected: *expected_version,
                }
                .into());
            }
        }
        Change::RecordAction(a) => {
            let labels = serde_json::to_string(&a.labels).map_err(backend)?;
            exec(
                tx,
                "INSERT INTO action_history(root_task_id, task_id, request_id, action, resource, tier, labels, outcome, ts, agent, incident_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, COALESCE((SELECT incident_id FROM tasks WHERE id = ?2), ''))",
                params![a.root_task_id.as_str(), a.task_id.as_str(), a.request_id, a.action.as_str(),
                    a.resource.as_str(), a.tier.as_str(), labels, a.outcome.as_str(), a.ts, a.agent.as_str()],
            )
            .map_err(backend)?;
        }
        Change::PutCheckpoint(cp) => {
            let body = serde_json::to_string(cp).map_err(backend)?;
            exec(
                tx,
                "INSERT INTO checkpoints(tree_size, body) VALUES (?1, ?2) ON CONFLICT(tree_size) DO NOTHING",
                params![cp.tree_size as i64, body],
            )
            .map_err(backend)?;
        }
        Change::AcquireLease {
            key,
            holder,
            until,
            now,
        } => {
            let held: Option<(String, i64)> = query_one(
                tx,
                "SELECT holder, until FROM leases WHERE key = ?1",
                params![key],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(backend)?;
            if let Some(c) = Conflict::of_lease(key, holder, held, *now) {
                return Err(c.into());
            }
            exec(
                tx,
                "INSERT INTO leases(key, holder, until) VALUES (?1, ?2, ?3)
                 ON CONFLICT(key) DO UPDATE SET holder = excluded.holder, until = excluded.until",
                params![key, holder, until],
            )
            .map_err(backend)?;
        }
        Change::ReleaseLease { key, holder } => {
            exec(
                tx,
                "DELETE FROM leases WHERE key = ?1 AND holder = ?2",
                params![key, holder],
            )
            .map_err(backend)?;
        }
        Change::PutConsoleSession(c) => {
            exec(
                tx,
                "INSERT INTO console_sessions(id_hash, principal, role, via, created_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT(id_hash) DO NOTHING",
                params![c.id_hash, c.principal, c.role, c.via, c.created_at, c.expires_at],
            )
            .map_err(backend)?;
        }
        Change::EndConsoleSession { id_hash } => {
            exec(
                tx,
                "DELETE FROM console_sessions WHERE id_hash = ?1",
                params![id_hash],
            )
            .map_err(backend)?;
        }
        Change::PurgeConsoleSessions { before } => {
            exec(
                tx,
                "DELETE FROM console_sessions WHERE expires_at < ?1",
                params![before],
            )
            .map_err(backend)?;
        }
        Change::Enqueue(m) => {
            exec(
                tx,
                "INSERT INTO outbox(id, sink, event, subject, body, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT(id) DO NOTHING",
                params![m.id, m.sink, m.event, m.subject, m.body, m.created_at],
            )
            .map_err(backend)?;
        }
        Change::Dequeue { id } => {
            exec(tx, "DELETE FROM outbox WHERE id = ?1", params![id]).map_err(backend)?;
            exec(
                tx,
                "DELETE FROM leases WHERE key = ?1",
                params![OutboxMessage::lease_key(id)],
            )
            .map_err(backend)?;
        }
        Change::RecordActionResult {
            request_id,
            task_id,
            status,
            at,
        } => {
            exec(
                tx,
                "INSERT INTO action_results(request_id, task_id, status, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![request_id, task_id, status, at],
            )
            .map_err(|e| match e {
                rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation => {
                    Conflict::ResultRecorded { request_id: request_id.clone() }.into()
                }
                e => backend(e),
            })?;
        }
        Change::PutApprover(a) => {
            exec(
                tx,
                "INSERT INTO approvers(name, role, key_hash, created_at, expires_at, disabled, last_used_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT(name) DO UPDATE SET role = excluded.role, key_hash = excluded.key_hash,
                   created_at = excluded.created_at, expires_at = excluded.expires_at,
                   disabled = excluded.disabled, last_used_at = excluded.last_used_at",
                params![a.name, a.role, a.key_hash, a.created_at, a.expires_at, a.disabled, a.last_used_at],
            )
            .map_err(backend)?;
        }
        Change::RemoveApprover { name } => {
            let n = exec(tx, "DELETE FROM approvers WHERE name = ?1", params![name])
                .map_err(backend)?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("approver {name}")));
            }
        }
        Change::SetApproverDisabled { name, disabled } => {
            let n = exec(
                tx,
                "UPDATE approvers SET disabled = ?2 WHERE name = ?1",
                params![name, disabled],
            )
            .map_err(backend)?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("approver {name}")));
            }
        }
        Change::TouchApprover { name, at } => {
            exec(
                tx,
                "UPDATE approvers SET last_used_at = ?2 WHERE name = ?1",
                params![name, at],
            )
            .map_err(backend)?;
        }
    }
    Ok(())
}

/// Columns added after a table was first created: `CREATE TABLE IF NOT
/// EXISTS` leaves an older database's table as it was, so add them here.
fn add_missing_columns(conn: &Connection) -> Result<(), StoreError> {
    const ADDED: [(&str, &str, &str); 3] = [
        ("approvers", "expires_at", "INTEGER"),
        ("approvers", "disabled", "INTEGER NOT NULL DEFAULT 0"),
        ("approvers", "last_used_at", "INTEGER"),
    ];
    for (table, column, decl) in ADDED {
        let present: bool = conn
            .query_row(
                &format!("SELECT count(*) FROM pragma_table_info('{table}') WHERE name = ?1"),
                [column],
                |r| r.get::<_, i64>(0),
            )
            .map_err(backend)?
            > 0;
        if !present {
            conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {decl}"))
                .map_err(backend)?;
        }
    }
    // Temporal rules read the history by incident: a database from before
    // the column learns each row's incident from its task, once.
    let has_incident: bool = conn
        .query_row(
            "SELECT count(*) FROM pragma_table_info('action_history') WHERE name = 'incident_id'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map_err(backend)?
        > 0;
    if !has_incident {
        conn.execute_batch(
            "ALTER TABLE action_history ADD COLUMN incident_id TEXT NOT NULL DEFAULT '';
             UPDATE action_history SET incident_id =
               COALESCE((SELECT incident_id FROM tasks WHERE tasks.id = action_history.task_id), '');",
        )
        .map_err(backend)?;
    }
    conn.execute_batch(
        // `(root_task_id, ts)` made the history cache's delta read walk every
        // row of a tree since it began; `action_history_tree_rows` replaced it.
        // `agent_allowed_action` served what `agent_action` serves: one index
        // fewer to write on every decision.
        "DROP INDEX IF EXISTS action_history_tree;
         DROP INDEX IF EXISTS action_history_agent_allowed_action;
         CREATE INDEX IF NOT EXISTS action_history_incident ON action_history(incident_id, ts);
         CREATE INDEX IF NOT EXISTS action_history_resource ON action_history(resource, ts);
         CREATE INDEX IF NOT EXISTS action_history_agent_action ON action_history(agent, action, outcome, ts);
         CREATE INDEX IF NOT EXISTS action_history_incident_action ON action_history(incident_id, action, outcome, ts);
         CREATE INDEX IF NOT EXISTS action_history_resource_action ON action_history(resource, action, outcome, ts);",
    )
    .map_err(backend)?;
    Ok(())
}

/// A read-only connection for the reader pool.
fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let c = Connection::open(path).map_err(backend)?;
    c.execute_batch("PRAGMA busy_timeout=5000; PRAGMA query_only=1;")
        .map_err(backend)?;
    // A decision's read runs a dozen statements, and rule scans one per
    // list length: rusqlite's default of 16 cached statements had them
    // re-prepared over and over.
    c.set_prepared_statement_cache_capacity(128);
    // The query planner's stability guarantee: plans never depend on the
    // values bound. Without it SQLite marks a statement whose plan could
    // (a `LIMIT ?`, a `rowid > ?`, a term beside a partial index) to be
    // re-prepared when that parameter is bound again, and rusqlite clears
    // the bindings of every statement it returns to its cache, so each such
    // statement was parsed and planned anew on every decision: 14% of the
    // server's time under `bench http`. Our statements name their indexes
    // or have one obvious plan; none needs a value-dependent one.
    c.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
        .map_err(backend)?;
    Ok(c)
}

fn pep_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Pep> {
    Ok(Pep {
        name: r.get(0)?,
        key_hash: r.get(1)?,
        created_at: r.get(2)?,
    })
}

fn approver_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Approver> {
    Ok(Approver {
        name: r.get(0)?,
        role: r.get(1)?,
        key_hash: r.get(2)?,
        created_at: r.get(3)?,
        expires_at: r.get(4)?,
        disabled: r.get(5)?,
        last_used_at: r.get(6)?,
    })
}

fn writer_loop(inner: &Mutex<Inner>, rx: &std::sync::mpsc::Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let (batches, replies): (Vec<Batch>, Vec<_>) =
            jobs.into_iter().map(|j| (j.batch, j.reply)).unzip();
        let results = commit_group(inner, batches);
        for (reply, result) in replies.into_iter().zip(results) {
            let _ = reply.send(result);
        }
    }
}

/// Commit several batches in one transaction: each in its own savepoint (a
/// failing batch rolls back alone), one durable commit for all of them.
fn commit_group(inner: &Mutex<Inner>, batches: Vec<Batch>) -> Vec<Result<Vec<u64>, StoreError>> {
    let n = batches.len();
    let Ok(mut guard) = inner.lock() else {
        return (0..n)
            .map(|_| Err(backend("store lock poisoned")))
            .collect();
    };
    let inner = &mut *guard;
    let (mut seq, mut prev) = inner.head;
    let mut range = inner.range.clone();
    let mut tx = match inner.conn.transaction() {
        Ok(tx) => tx,
        Err(e) => return (0..n).map(|_| Err(backend(&e))).collect(),
    };
    let mut results = Vec::with_capacity(n);
    for batch in batches {
        let saved = (seq, prev, range.clone());
        let outcome = tx.savepoint().map_err(backend).and_then(|sp| {
            let seqs = apply_batch(&sp, batch, &mut seq, &mut prev, &mut range)?;
            sp.commit().map_err(backend)?;
            Ok(seqs)
        });
        if let Err(e) = &outcome {
            (seq, prev, range) = saved;
            // A precondition failure rolls back its own savepoint only. A
            // storage failure (I/O, full disk, busy) may have rolled back the
            // whole transaction, after which later savepoints would commit
            // on their own: abandon the group, and nothing is acknowledged.
            if matches!(e, StoreError::Backend(_)) || tx.is_autocommit() {
                let why = e.to_string();
                drop(tx);
                return (0..n)
                    .map(|_| Err(backend(format!("group commit abandoned: {why}"))))
                    .collect();
            }
        }
        results.push(outcome);
    }
    match tx.commit() {
        Ok(()) => {
            // Only after a durable commit does the in-memory head move.
            inner.head = (seq, prev);
            inner.range = range;
            results
        }
        Err(e) => results
            .into_iter()
            .map(|r| r.and(Err(backend(&e))))
            .collect(),
    }
}

const INSERT_AUDIT: &str =
    "INSERT INTO audit(seq, ts, kind, incident_id, task_id, agent, request_id, prev_hash, hash, event)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)";

fn apply_batch(
    conn: &Connection,
    batch: Batch,
    seq: &mut u64,
    prev: &mut [u8; 32],
    range: &mut CompactRange,
) -> Result<Vec<u64>, StoreError> {
    for c in &batch.changes {
        apply(conn, c)?;
    }
    let mut seqs = Vec::with_capacity(batch.audit.len());
    for event in batch.audit {
        let entry = tollgate_audit::chain(*seq, *prev, event);
        let body = serde_json::to_string(&entry.event).map_err(backend)?;
        exec(
            conn,
            INSERT_AUDIT,
            params![
                entry.seq as i64,
                entry.event.ts,
                entry.event.kind,
                entry.event.incident_id,
                entry.event.task_id,
                entry.event.agent,
                entry.event.request_id,
                hex::encode(entry.prev_hash),
                hex::encode(entry.hash),
                body
            ],
        )
        .map_err(backend)?;
        seqs.push(*seq);
        range.push(leaf_hash(&entry.hash));
        *prev = entry.hash;
        *seq += 1;
    }
    Ok(seqs)
}

/// Columns of an audit row: the chained entry plus the index columns that
/// filtered queries (timeline, rollback, result lookup) rely on.
type EntryRow = (
    i64,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

const ENTRY_COLS: &str = "seq, prev_hash, hash, event, incident_id, task_id, agent, request_id";

fn entry_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<EntryRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
    ))
}

fn decode_entry(
    (seq, prev, hash, event, incident, task, agent, request): EntryRow,
) -> Result<AuditEntry, StoreError> {
    let mut prev_hash = [0u8; 32];
    let mut h = [0u8; 32];
    hex::decode_to_slice(&prev, &mut prev_hash).map_err(backend)?;
    hex::decode_to_slice(&hash, &mut h).map_err(backend)?;
    let event: AuditEvent = serde_json::from_str(&event).map_err(|e| {
        backend(format!(
            "audit entry {seq} does not parse (it was modified): {e}"
        ))
    })?;
    // The index columns are not hashed; they must say what the hashed event says,
    // or an edit could hide an entry from (or move it into) a filtered view.
    if (incident, task, agent, request)
        != (
            event.incident_id.clone(),
            event.task_id.clone(),
            event.agent.clone(),
            event.request_id.clone(),
        )
    {
        return Err(backend(format!(
            "audit entry {seq}: its index columns disagree with its content (they were modified)"
        )));
    }
    Ok(AuditEntry {
        seq: seq as u64,
        prev_hash,
        hash: h,
        event,
    })
}

fn task_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Task> {
    let scope: String = r.get(6)?;
    let status: String = r.get(11)?;
    Ok(Task {
        id: r.get(0)?,
        agent: r.get(1)?,
        incident_id: r.get(2)?,
        environment: r.get(3)?,
        playbook: r.get(4)?,
        intent: r.get(5)?,
        scope: serde_json::from_str::<Scope>(&scope).unwrap_or_else(|_| Scope {
            // An unreadable scope must not widen into "anything": narrow to nothing.
            actions: Some(Default::default()),
            resources: Some(Default::default()),
        }),
        parent_task_id: r.get(7)?,
        created_at: r.get(8)?,
        expires_at: r.get(9)?,
        max_expires_at: r.get(10)?,
        status: status.parse().unwrap_or(TaskStatus::Revoked),
        status_reason: r.get(12)?,
    })
}

const TASK_COLS: &str = "id, agent, incident_id, environment, playbook, intent, scope, parent_task_id, created_at, expires_at, max_expires_at, status, status_reason";

fn parse_enum<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, StoreError> {
    serde_json::from_value(serde_json::Value::String(s.to_string())).map_err(backend)
}

/// Which precondition an approval insert broke, read in the same savepoint.
fn approval_conflict(tx: &Connection, a: &Approval, e: rusqlite::Error) -> StoreError {
    let exists: Result<bool, _> = tx.query_row(
        "SELECT EXISTS(SELECT 1 FROM approvals WHERE id = ?1)",
        [&a.id],
        |r| r.get(0),
    );
    match exists {
        Ok(true) => {
            return Conflict::ApprovalExists {
                approval_id: a.id.clone(),
            }
            .into()
        }
        Ok(false) => {}
        Err(e) => return backend(e),
    }
    let pending: Result<Option<String>, _> = tx
        .query_row(
            "SELECT id FROM approvals WHERE task_id = ?1 AND request_hash = ?2 AND status = 'pending'",
            [&a.task_id, &a.request_hash],
            |r| r.get(0),
        )
        .optional();
    match pending {
        Ok(Some(existing_id)) => Conflict::ApprovalPending {
            task_id: a.task_id.clone(),
            request_hash: a.request_hash.clone(),
            existing_id,
        }
        .into(),
        Ok(None) => backend(e),
        Err(e) => backend(e),
    }
}

// Reads on one connection. Each is one statement (or, for a lineage, a
// walk); callers that need several to agree run them in one transaction
// (`point_read_tx`).

const ACTION_COLS: &str =
    "root_task_id, task_id, agent, request_id, action, resource, tier, labels, outcome, ts, rowid";

/// Column `i` of `r` as shared text, read in place (one allocation).
fn shared_text(r: &rusqlite::Row<'_>, i: usize) -> Result<SharedStr, StoreError> {
    let value = r.get_ref(i).map_err(backend)?;
    value.as_str().map(SharedStr::from).map_err(backend)
}

/// One `action_history` row and its rowid. A tier or outcome that is not
/// one of ours is a storage failure: history must never be guessed.
fn action_row(r: &rusqlite::Row<'_>) -> Result<(i64, ActionRecord), StoreError> {
    let tier: String = r.get(6).map_err(backend)?;
    let labels: String = r.get(7).map_err(backend)?;
    let outcome: String = r.get(8).map_err(backend)?;
    let record = ActionRecord {
        root_task_id: shared_text(r, 0)?,
        task_id: shared_text(r, 1)?,
        agent: shared_text(r, 2)?,
        request_id: r.get(3).map_err(backend)?,
        action: shared_text(r, 4)?,
        resource: shared_text(r, 5)?,
        tier: parse_enum(&tier)
            .map_err(|_| backend(format!("action history holds an unknown tier {tier:?}")))?,
        labels: serde_json::from_str(&labels).map_err(backend)?,
        outcome: parse_enum(&outcome).map_err(|_| {
            backend(format!(
                "action history holds an unknown outcome {outcome:?}"
            ))
        })?,
        ts: r.get(9).map_err(backend)?,
    };
    Ok((r.get(10).map_err(backend)?, record))
}

/// One range of `action_history_tree_rows`: the tree's rows numbered above
/// `?3`, in rowid order, without visiting the rows at or below it.
fn tree_sql() -> String {
    format!(
        "SELECT {ACTION_COLS} FROM action_history INDEXED BY action_history_tree_rows
         WHERE root_task_id = ?1 AND rowid > ?3 AND ts >= ?2 ORDER BY rowid"
    )
}

/// A tree's records at or after `since` with a rowid above `after`, in
/// rowid (commit) order, and the highest rowid among them (or `after`).
fn tree_actions(
    conn: &Connection,
    root: &str,
    since: i64,
    after: i64,
) -> Result<(Vec<ActionRecord>, i64), StoreError> {
    // The (root_task_id, ts) index holds the rowid: rows at or below
    // `after` are skipped in the index, without reading them.
    let mut stmt = conn.prepare_cached(&tree_sql()).map_err(backend)?;
    let mut rows = stmt.query(params![root, since, after]).map_err(backend)?;
    let (mut out, mut max) = (Vec::new(), after);
    while let Some(r) = rows.next().map_err(backend)? {
        let (rowid, record) = action_row(r)?;
        max = max.max(rowid);
        out.push(record);
    }
    Ok((out, max))
}

/// A tree's history (every record at or after `since`, oldest first), from
/// the cached copy plus the rows committed since it was read.
///
/// Exact, not approximate: `action_history` rows are only ever inserted
/// (no statement updates or deletes them), and its rowid is SQLite's
/// implicit one, which the single writer assigns as max(rowid) + 1 (below
/// 2^63 rows). That reuses a number only after the row holding the maximum
/// is deleted, which never happens; a row rolled back (a failed savepoint
/// or group) gives its number back, but no snapshot ever saw it. (VACUUM
/// may renumber the rowids of a table without an INTEGER PRIMARY KEY:
/// Tollgate never runs it, and the cache lives only as long as the process,
/// so an offline VACUUM meets no cache.) So rowids
/// grow in commit order, and in any snapshot that holds the row numbered
/// `m`, the rows numbered up to `m` are exactly those of every snapshot
/// that holds it: the cached copy plus the rows above `m` is the full read.
/// The copy may come from a reader whose snapshot is newer than this one:
/// then row `m` is not visible here, and the tree is read in full. Every
/// part is read in the caller's transaction, so a stale copy never changes
/// an answer; at worst it costs a full read.
fn tree_history(
    conn: &Connection,
    trees: &TreeCache,
    root: &str,
    since: i64,
) -> Result<Arc<tollgate_core::TreeHistory>, StoreError> {
    let cached = match trees.get(root, since) {
        Some(c) if c.max_rowid == 0 || row_visible(conn, c.max_rowid)? => Some(c),
        _ => None,
    };
    let after = cached.as_ref().map_or(0, |c| c.max_rowid);
    let (delta, max_rowid) = tree_actions(conn, root, since, after)?;
    Ok(trees.extend(root, since, cached, delta, max_rowid))
}

fn row_visible(conn: &Connection, rowid: i64) -> Result<bool, StoreError> {
    conn.prepare_cached("SELECT EXISTS(SELECT 1 FROM action_history WHERE rowid = ?1)")
        .and_then(|mut s| s.query_row([rowid], |r| r.get(0)))
        .map_err(backend)
}

/// A [`HistoryScan`]: at most `SCAN_LIMIT + 1` rows of the scope at or
/// after `since` (index `(column, ts)`, or `(column, action, outcome, ts)`
/// with lists), returned oldest first.
fn scan(conn: &Connection, q: &crate::HistoryScan) -> Result<Vec<ActionRecord>, StoreError> {
    if q.actions.as_ref().is_some_and(|a| a.is_empty()) {
        return Ok(Vec::new());
    }
    let limit = i64::try_from(crate::SCAN_LIMIT + 1).unwrap_or(i64::MAX);
    // Literal `IN` lists on `(column, action, outcome, ts)`, walked once
    // per pair; every outcome is named when any will do, so the index
    // still applies.
    let outcomes = match q.actions {
        Some(_) => crate::scan_outcomes(q),
        None => Vec::new(),
    };
    let mut values: Vec<&dyn rusqlite::ToSql> = vec![&q.key, &q.since, &limit];
    values.extend(
        q.actions
            .iter()
            .flatten()
            .map(|a| a as &dyn rusqlite::ToSql),
    );
    values.extend(outcomes.iter().map(|o| o as &dyn rusqlite::ToSql));
    let mut stmt = conn.prepare_cached(&scan_sql(q)).map_err(backend)?;
    let mut rows = stmt.query(values.as_slice()).map_err(backend)?;
    let mut out = Vec::new();
    while let Some(r) = rows.next().map_err(backend)? {
        out.push(action_row(r)?);
    }
    // Oldest first. Sorted here, not by the statement: with `IN` lists,
    // `ORDER BY` made SQLite build a temporary b-tree on every decision,
    // even for no rows. Without it, more than the limit still reads
    // `SCAN_LIMIT + 1` rows, which the caller refuses whichever they are.
    out.sort_unstable_by_key(|(rowid, r)| (r.ts, *rowid));
    Ok(out.into_iter().map(|(_, r)| r).collect())
}

/// The statement of a [`HistoryScan`](crate::HistoryScan): one per scope and, when it
/// names actions, per length of its action and outcome lists.
fn scan_sql(q: &crate::HistoryScan) -> String {
    let column = q.scope.column();
    let Some(actions) = &q.actions else {
        return format!(
            "SELECT {ACTION_COLS} FROM action_history WHERE {column} = ?1 AND ts >= ?2 ORDER BY ts DESC, rowid DESC LIMIT ?3"
        );
    };
    let list = |from: usize, n: usize| {
        (from..from + n)
            .map(|i| format!("?{i}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    // Named: to serve `ORDER BY ts` the planner would rather walk
    // `(column, ts)` and look up each row's action and outcome.
    let index = match q.scope {
        crate::ScanScope::Agent => "action_history_agent_action",
        crate::ScanScope::Incident => "action_history_incident_action",
        crate::ScanScope::Resource => "action_history_resource_action",
    };
    format!(
        "SELECT {ACTION_COLS} FROM action_history INDEXED BY {index} WHERE {column} = ?1 AND action IN ({}) AND outcome IN ({}) AND ts >= ?2 LIMIT ?3",
        list(4, actions.len()),
        list(4 + actions.len(), crate::scan_outcomes(q).len()),
    )
}

/// Action history rows whose `column` equals `key`, since `since`, oldest first.
fn actions_where(
    conn: &Connection,
    column: &'static str,
    key: &str,
    since: i64,
) -> Result<Vec<ActionRecord>, StoreError> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {ACTION_COLS} FROM action_history WHERE {column} = ?1 AND ts >= ?2 ORDER BY ts, rowid"
        ))
        .map_err(backend)?;
    let mut rows = stmt.query(params![key, since]).map_err(backend)?;
    let mut out = Vec::new();
    while let Some(r) = rows.next().map_err(backend)? {
        out.push(action_row(r)?.1);
    }
    Ok(out)
}

/// The statement of an agent-wide count. One per filter combination, each
/// able to use an index that starts with every column it fixes (a partial
/// one over allowed actions for a tier, `(agent, action, outcome, ts)` for
/// an action), so a limit costs about its own count.
fn count_sql(tier: bool, action: bool) -> &'static str {
    match (tier, action) {
        (false, false) => "SELECT COUNT(*) FROM action_history WHERE outcome = 'allow' AND agent = ?1 AND ts >= ?2",
        (true, false) => "SELECT COUNT(*) FROM action_history WHERE outcome = 'allow' AND agent = ?1 AND ts >= ?2 AND tier = ?3",
        (false, true) => "SELECT COUNT(*) FROM action_history WHERE outcome = 'allow' AND agent = ?1 AND ts >= ?2 AND action = ?4",
        (true, true) => "SELECT COUNT(*) FROM action_history WHERE outcome = 'allow' AND agent = ?1 AND ts >= ?2 AND tier = ?3 AND action = ?4",
    }
}

fn count_allowed(
    conn: &Connection,
    agent: &str,
    since: i64,
    tier: Option<&str>,
    action: Option<&str>,
) -> Result<u64, StoreError> {
    let mut stmt = conn
        .prepare_cached(count_sql(tier.is_some(), action.is_some()))
        .map_err(backend)?;
    stmt.raw_bind_parameter(1, agent).map_err(backend)?;
    stmt.raw_bind_parameter(2, since).map_err(backend)?;
    if let Some(t) = tier {
        stmt.raw_bind_parameter(3, t).map_err(backend)?;
    }
    if let Some(a) = action {
        stmt.raw_bind_parameter(4, a).map_err(backend)?;
    }
    let mut rows = stmt.raw_query();
    let n: i64 = match rows.next().map_err(backend)? {
        Some(r) => r.get(0).map_err(backend)?,
        None => 0,
    };
    Ok(u64::try_from(n).unwrap_or(0))
}

fn agent_by_id(conn: &Connection, spiffe_id: &str) -> Result<Option<Agent>, StoreError> {
    conn.prepare_cached(
        "SELECT spiffe_id, owner, created_at, revoked FROM agents WHERE spiffe_id = ?1",
    )
    .and_then(|mut s| {
        s.query_row([spiffe_id], |r| {
            Ok(Agent {
                spiffe_id: r.get(0)?,
                owner: r.get(1)?,
                created_at: r.get(2)?,
                revoked: r.get(3)?,
            })
        })
        .optional()
    })
    .map_err(backend)
}

fn incident_by_id(conn: &Connection, id: &str) -> Result<Option<Incident>, StoreError> {
    let row = conn
        .prepare_cached(
            "SELECT id, class, severity, status, updated_at FROM incidents WHERE id = ?1",
        )
        .and_then(|mut s| {
            s.query_row([id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, i64>(4)?,
                ))
            })
            .optional()
        })
        .map_err(backend)?;
    row.map(|(id, class, severity, status, updated_at)| {
        Ok(Incident {
            id,
            class,
            severity: parse_enum(&severity)?,
            status: parse_enum(&status)?,
            updated_at,
        })
    })
    .transpose()
}

fn task_by_id(conn: &Connection, id: &str) -> Result<Option<Task>, StoreError> {
    conn.prepare_cached(&format!("SELECT {TASK_COLS} FROM tasks WHERE id = ?1"))
        .and_then(|mut s| s.query_row([id], task_from_row).optional())
        .map_err(backend)
}

fn setting_by_key(conn: &Connection, key: &str) -> Result<Option<String>, StoreError> {
    conn.prepare_cached("SELECT value FROM settings WHERE key = ?1")
        .and_then(|mut s| s.query_row([key], |r| r.get(0)).optional())
        .map_err(backend)
}

fn evidence_exists(conn: &Connection, task_id: &str, resource: &str) -> Result<bool, StoreError> {
    conn.prepare_cached(
        "SELECT EXISTS(SELECT 1 FROM evidence WHERE task_id = ?1 AND resource = ?2)",
    )
    .and_then(|mut s| s.query_row([task_id, resource], |r| r.get(0)))
    .map_err(backend)
}

fn approval_by_id(conn: &Connection, id: &str) -> Result<Option<Approval>, StoreError> {
    let body: Option<String> = conn
        .prepare_cached("SELECT body FROM approvals WHERE id = ?1")
        .and_then(|mut s| s.query_row([id], |r| r.get(0)).optional())
        .map_err(backend)?;
    body.map(|b| serde_json::from_str(&b).map_err(backend))
        .transpose()
}

/// Pending approvals of one request of one task, oldest first.
fn pending_approvals(
    conn: &Connection,
    task_id: &str,
    request_hash: &str,
) -> Result<Vec<Approval>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT body FROM approvals WHERE task_id = ?1 AND request_hash = ?2 AND status = 'pending'
             ORDER BY created_at, id",
        )
        .map_err(backend)?;
    let rows = stmt
        .query_map([task_id, request_hash], |r| r.get::<_, String>(0))
        .map_err(backend)?;
    let mut out = Vec::new();
    for row in rows {
        out.push(serde_json::from_str(&row.map_err(backend)?).map_err(backend)?);
    }
    Ok(out)
}

/// A task and its ancestors, walked up by id; run it in a transaction for
/// one snapshot. The walk stops at a missing parent, and refuses a chain
/// longer than [`MAX_ANCESTORS`] (it would only come from corrupt rows, a
/// cycle among them included).
fn lineage_of(conn: &Connection, task_id: &str) -> Result<Option<Lineage>, StoreError> {
    let Some(task) = task_by_id(conn, task_id)? else {
        return Ok(None);
    };
    let mut ancestors: Vec<Task> = Vec::new();
    let mut missing_parent = None;
    let mut next = task.parent_task_id.clone();
    while let Some(parent) = next {
        if ancestors.len() >= MAX_ANCESTORS {
            return Err(backend("delegation chain too deep"));
        }
        match task_by_id(conn, &parent)? {
            Some(t) => {
                next = t.parent_task_id.clone();
                ancestors.push(t);
            }
            None => {
                missing_parent = Some(parent);
                next = None;
            }
        }
    }
    Ok(Some(Lineage {
        task,
        ancestors,
        missing_parent,
    }))
}

/// Every task below `task_id`, a parent before its children: found by one
/// recursive query (UNION, so even a cycle in corrupt rows ends), then
/// ordered breadth first from `task_id`, siblings by creation.
fn descendants_of(conn: &Connection, task_id: &str) -> Result<Vec<Task>, StoreError> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "WITH RECURSIVE sub(id) AS (
               SELECT id FROM tasks WHERE parent_task_id = ?1
               UNION SELECT t.id FROM tasks t JOIN sub ON t.parent_task_id = sub.id)
             SELECT {TASK_COLS} FROM tasks WHERE id IN (SELECT id FROM sub) AND id != ?1
             ORDER BY created_at, id"
        ))
        .map_err(backend)?;
    let rows = stmt.query_map([task_id], task_from_row).map_err(backend)?;
    let mut children: std::collections::HashMap<String, Vec<Task>> = Default::default();
    for t in rows {
        let t = t.map_err(backend)?;
        if let Some(p) = t.parent_task_id.clone() {
            children.entry(p).or_default().push(t);
        }
    }
    let mut out = Vec::new();
    let mut queue = std::collections::VecDeque::from([task_id.to_string()]);
    while let Some(id) = queue.pop_front() {
        for t in children.remove(&id).unwrap_or_default() {
            queue.push_back(t.id.clone());
            out.push(t);
        }
    }
    Ok(out)
}

/// [`Store::decision_facts`], inside the caller's transaction.
fn facts(
    conn: &Connection,
    trees: &TreeCache,
    q: &FactsQuery,
) -> Result<Option<StoredFacts>, StoreError> {
    let Some(lineage) = lineage_of(conn, &q.task_id)? else {
        return Ok(None);
    };
    let task = &lineage.task;
    let root = lineage.root();
    let history = tree_history(conn, trees, &root.id, root.created_at)?;
    let agent_counts = q
        .agent_counts
        .iter()
        .map(|c| {
            count_allowed(
                conn,
                &task.agent,
                c.since,
                c.tier.as_deref(),
                c.action.as_deref(),
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let presented_approval = match &q.presented_approval {
        Some(id) => approval_by_id(conn, id)?,
        None => None,
    };
    let scanned = q
        .scans
        .iter()
        .map(|h| scan(conn, h))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(StoredFacts {
        scanned,
        agent: agent_by_id(conn, &task.agent)?,
        incident: incident_by_id(conn, &task.incident_id)?,
        frozen: setting_by_key(conn, crate::FROZEN_KEY)?.as_deref() == Some("true"),
        quarantine: setting_by_key(conn, &crate::quarantine_key(&task.agent))?
            .filter(|r| !r.is_empty()),
        evidence_present: evidence_exists(conn, &task.id, &q.resource)?,
        history,
        agent_counts,
        presented_approval,
        pending_approvals: pending_approvals(conn, &task.id, &q.request_hash)?,
        lineage,
    }))
}

#[async_trait]
impl Store for SqliteStore {
    async fn commit(&self, batch: Batch) -> Result<Vec<u64>, StoreError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        // Never block the async runtime on a full queue: shed load, fail closed.
        self.writer
            .try_send(Job { batch, reply })
            .map_err(|e| match e {
                std::sync::mpsc::TrySendError::Full(_) => {
                    backend("the store's write queue is full")
                }
                std::sync::mpsc::TrySendError::Disconnected(_) => {
                    backend("the store's writer has stopped")
                }
            })?;
        answer
            .await
            .map_err(|_| backend("the store's writer dropped a commit"))?
    }

    async fn actions_in_tree(
        &self,
        root_task_id: &str,
        since: i64,
    ) -> Result<Vec<ActionRecord>, StoreError> {
        let root = root_task_id.to_string();
        self.read(move |conn| actions_where(conn, "root_task_id", &root, since))
            .await
    }

    async fn count_allowed_by_agent(
        &self,
        agent: &str,
        since: i64,
        tier: Option<&str>,
        action: Option<&str>,
    ) -> Result<u64, StoreError> {
        let (agent, tier, action) = (
            agent.to_string(),
            tier.map(str::to_string),
            action.map(str::to_string),
        );
        self.read(move |conn| {
            count_allowed(conn, &agent, since, tier.as_deref(), action.as_deref())
        })
        .await
    }

    async fn lineage(&self, task_id: &str) -> Result<Option<Lineage>, StoreError> {
        let id = task_id.to_string();
        self.point_read_tx(move |conn| lineage_of(conn, &id)).await
    }

    async fn credential_holder(
        &self,
        task_id: &str,
        agent: &str,
    ) -> Result<(Option<Lineage>, Option<Agent>), StoreError> {
        let (task_id, agent) = (task_id.to_string(), agent.to_string());
        self.point_read_tx(move |conn| {
            Ok((lineage_of(conn, &task_id)?, agent_by_id(conn, &agent)?))
        })
        .await
    }

    async fn descendants(&self, task_id: &str) -> Result<Vec<Task>, StoreError> {
        let id = task_id.to_string();
        self.read(move |conn| descendants_of(conn, &id)).await
    }

    async fn decision_facts(&self, q: &FactsQuery) -> Result<Option<StoredFacts>, StoreError> {
        let (q, trees) = (q.clone(), self.trees.clone());
        self.point_read_tx(move |conn| facts(conn, &trees, &q))
            .await
    }

    async fn check_consistency(&self) -> Result<(), StoreError> {
        self.verify_log().await
    }

    async fn audit_head(&self) -> Result<AuditHead, StoreError> {
        self.with(|inner| {
            Ok(AuditHead {
                size: inner.range.size(),
                root_hash: inner.range.root(),
                last_hash: inner.head.1,
            })
        })
        .await
    }

    async fn audit_leaf_hashes(&self, size: u64) -> Result<Vec<[u8; 32]>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn
                .prepare("SELECT hash FROM audit WHERE seq <= ?1 ORDER BY seq")
                .map_err(backend)?;
            let mut rows = stmt.query([size as i64]).map_err(backend)?;
            let mut out = Vec::with_capacity(size as usize);
            while let Some(row) = rows.next().map_err(backend)? {
                let hash: String = row.get(0).map_err(backend)?;
                let mut h = [0u8; 32];
                hex::decode_to_slice(&hash, &mut h).map_err(backend)?;
                out.push(leaf_hash(&h));
            }
            Ok(out)
        })
        .await
    }

    async fn checkpoints(&self) -> Result<Vec<Checkpoint>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare("SELECT body FROM checkpoints ORDER BY tree_size")
                .map_err(backend)?;
            let rows = stmt
                .query_map([], |r| r.get::<_, String>(0))
                .map_err(backend)?;
            let mut out = Vec::new();
            for row in rows {
                out.push(serde_json::from_str(&row.map_err(backend)?).map_err(backend)?);
            }
            Ok(out)
        })
        .await
    }

    async fn audit_by_request(&self, request_id: &str) -> Result<Vec<AuditEntry>, StoreError> {
        let r = request_id.to_string();
        self.read(move |conn| {
            let mut stmt = conn
                .prepare(&format!(
                    "SELECT {ENTRY_COLS} FROM audit WHERE request_id = ?1 ORDER BY seq"
                ))
                .map_err(backend)?;
            let rows = stmt.query_map([r], entry_row).map_err(backend)?;
            rows.map(|row| row.map_err(backend).and_then(decode_entry))
                .collect()
        })
        .await
    }

    async fn agent(&self, spiffe_id: &str) -> Result<Option<Agent>, StoreError> {
        let id = spiffe_id.to_string();
        self.point_read(move |conn| agent_by_id(conn, &id)).await
    }

    async fn join_token(&self, token_hash: &str) -> Result<Option<JoinToken>, StoreError> {
        self.one("SELECT token_hash, spiffe_id, expires_at, used_at FROM join_tokens WHERE token_hash = ?1", token_hash, |r| {
            Ok(JoinToken { token_hash: r.get(0)?, spiffe_id: r.get(1)?, expires_at: r.get(2)?, used_at: r.get(3)? })
        })
        .await
    }

    async fn incident(&self, id: &str) -> Result<Option<Incident>, StoreError> {
        let id = id.to_string();
        self.point_read(move |conn| incident_by_id(conn, &id)).await
    }

    async fn task(&self, id: &str) -> Result<Option<Task>, StoreError> {
        let id = id.to_string();
        self.point_read(move |conn| task_by_id(conn, &id)).await
    }

    async fn tasks(&self, f: TaskFilter) -> Result<Vec<Task>, StoreError> {
        self.read(move |conn| {
            let limit = if f.limit == 0 { 100 } else { f.limit } as i64;
            let mut stmt = conn
                .prepare(&format!(
                    "SELECT {TASK_COLS} FROM tasks WHERE (?1 IS NULL OR agent = ?1) AND (?2 IS NULL OR incident_id = ?2)
                     AND (?3 IS NULL OR status = ?3) AND (?5 IS NULL OR parent_task_id = ?5) ORDER BY created_at, id LIMIT ?4"
                ))
                .map_err(backend)?;
            let rows = stmt
                .query_map(params![f.agent, f.incident_id, f.status.map(|s| s.as_str()), limit, f.parent_task_id], task_from_row)
                .map_err(backend)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(backend)
        })
        .await
    }

    async fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        let key = key.to_string();
        self.point_read(move |conn| setting_by_key(conn, &key))
            .await
    }

    async fn pep_by_key_hash(&self, key_hash: &str) -> Result<Option<Pep>, StoreError> {
        self.one(
            "SELECT name, key_hash, created_at FROM peps WHERE key_hash = ?1",
            key_hash,
            pep_row,
        )
        .await
    }

    async fn peps(&self) -> Result<Vec<Pep>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached("SELECT name, key_hash, created_at FROM peps ORDER BY name")
                .map_err(backend)?;
            let rows = stmt.query_map([], pep_row).map_err(backend)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(backend)
        })
        .await
    }

    async fn has_evidence(&self, task_id: &str, resource: &str) -> Result<bool, StoreError> {
        let (t, r) = (task_id.to_string(), resource.to_string());
        self.point_read(move |conn| evidence_exists(conn, &t, &r))
            .await
    }

    async fn evidence_for_task(&self, task_id: &str) -> Result<Vec<crate::Evidence>, StoreError> {
        let t = task_id.to_string();
        self.read(move |conn| {
            let mut stmt = conn
                .prepare("SELECT id, task_id, resource, kind, sha256, content, created_at FROM evidence WHERE task_id = ?1 ORDER BY created_at, id")
                .map_err(backend)?;
            let rows = stmt
                .query_map([t], |r| {
                    Ok(crate::Evidence {
                        id: r.get(0)?,
                        task_id: r.get(1)?,
                        resource: r.get(2)?,
                        kind: r.get(3)?,
                        sha256: r.get(4)?,
                        content: r.get(5)?,
                        created_at: r.get(6)?,
                    })
                })
                .map_err(backend)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(backend)
        })
        .await
    }

    async fn approval(&self, id: &str) -> Result<Option<Approval>, StoreError> {
        let id = id.to_string();
        self.point_read(move |conn| approval_by_id(conn, &id)).await
    }

    async fn mcp_session(&self, id: &str) -> Result<Option<McpSession>, StoreError> {
        let id = id.to_string();
        self.point_read(move |conn| mcp::session(conn, &id)).await
    }

    async fn abandoned_held_calls(
        &self,
        now: tollgate_core::UnixTime,
        limit: usize,
    ) -> Result<Vec<HeldCall>, StoreError> {
        self.read(move |conn| mcp::abandoned_held_calls(conn, now, limit))
            .await
    }

    async fn approvals(&self, f: ApprovalFilter) -> Result<Vec<Approval>, StoreError> {
        self.read(move |conn| {
            let limit = if f.limit == 0 { 100 } else { f.limit } as i64;
            let mut stmt = conn
                .prepare(
                    "SELECT body FROM approvals WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR task_id = ?2)
                     AND (?3 IS NULL OR request_hash = ?3) ORDER BY created_at, id LIMIT ?4",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map(params![f.status.map(|s| s.as_str()), f.task_id, f.request_hash, limit], |r| r.get::<_, String>(0))
                .map_err(backend)?;
            let mut out = Vec::new();
            for row in rows {
                out.push(serde_json::from_str(&row.map_err(backend)?).map_err(backend)?);
            }
            Ok(out)
        })
        .await
    }

    async fn approver_by_key_hash(&self, key_hash: &str) -> Result<Option<Approver>, StoreError> {
        self.one(
            "SELECT name, role, key_hash, created_at, expires_at, disabled, last_used_at FROM approvers WHERE key_hash = ?1",
            key_hash,
            approver_row,
        )
        .await
    }

    async fn approvers(&self) -> Result<Vec<Approver>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT name, role, key_hash, created_at, expires_at, disabled, last_used_at FROM approvers ORDER BY name",
                )
                .map_err(backend)?;
            let rows = stmt.query_map([], approver_row).map_err(backend)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(backend)
        })
        .await
    }

    async fn audit(&self, q: AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
        self.read(move |conn| {
            let limit = if q.limit == 0 { 100 } else { q.limit } as i64;
            let mut stmt = conn
                .prepare(&format!(
                    "SELECT {ENTRY_COLS} FROM audit WHERE seq > ?1
                     AND (?2 IS NULL OR incident_id = ?2) AND (?3 IS NULL OR task_id = ?3) AND (?4 IS NULL OR agent = ?4)
                     ORDER BY seq LIMIT ?5"
                ))
                .map_err(backend)?;
            let rows = stmt
                .query_map(params![q.after as i64, q.incident_id, q.task_id, q.agent, limit], entry_row)
                .map_err(backend)?;
            rows.map(|row| row.map_err(backend).and_then(decode_entry)).collect()
        })
        .await
    }

    async fn console_session(&self, id_hash: &str) -> Result<Option<ConsoleSession>, StoreError> {
        self.one(
            "SELECT id_hash, principal, role, via, created_at, expires_at FROM console_sessions WHERE id_hash = ?1",
            id_hash,
            |r| {
                Ok(ConsoleSession {
                    id_hash: r.get(0)?,
                    principal: r.get(1)?,
                    role: r.get(2)?,
                    via: r.get(3)?,
                    created_at: r.get(4)?,
                    expires_at: r.get(5)?,
                })
            },
        )
        .await
    }

    async fn outbox_due(
        &self,
        created_by: i64,
        now: i64,
        limit: usize,
    ) -> Result<Vec<OutboxMessage>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT o.id, o.sink, o.event, o.subject, o.body, o.created_at FROM outbox o
                     LEFT JOIN leases l ON l.key = 'outbox:' || o.id AND l.until > ?2
                     WHERE o.created_at <= ?1 AND l.key IS NULL ORDER BY o.created_at, o.id LIMIT ?3",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map(params![created_by, now, limit as i64], |r| {
                    Ok(OutboxMessage {
                        id: r.get(0)?,
                        sink: r.get(1)?,
                        event: r.get(2)?,
                        subject: r.get(3)?,
                        body: r.get(4)?,
                        created_at: r.get(5)?,
                    })
                })
                .map_err(backend)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(backend)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use tollgate_core::{Outcome, Tier};

    fn root_task(id: &str) -> Task {
        Task {
            id: id.into(),
            agent: "spiffe://acme.test/agent/a/1".into(),
            incident_id: "INC-1".into(),
            environment: "prod".into(),
            playbook: "p".into(),
            intent: "i".into(),
            scope: Scope::default(),
            parent_task_id: None,
            created_at: 100,
            expires_at: 1000,
            max_expires_at: 1000,
            status: TaskStatus::Active,
            status_reason: None,
        }
    }

    fn rec(n: u32, ts: i64) -> ActionRecord {
        ActionRecord {
            root_task_id: "root".into(),
            task_id: "root".into(),
            agent: "spiffe://acme.test/agent/a/1".into(),
            request_id: format!("req_{n}"),
            action: "edr.read_alerts".into(),
            resource: "Host::web-1".into(),
            tier: Tier::Read,
            labels: Default::default(),
            outcome: Outcome::Allow,
            ts,
        }
    }

    async fn record(s: &SqliteStore, r: ActionRecord) {
        s.commit(Batch::default().change(Change::RecordAction(r)))
            .await
            .unwrap();
    }

    fn query() -> FactsQuery {
        FactsQuery {
            task_id: "root".into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_decision_read_plans_its_statements_once_per_connection() {
        // rusqlite clears a statement's bindings when it caches it; unless
        // plans are kept independent of bound values, that re-prepares any
        // statement with a `LIMIT ?` or `rowid > ?` on every use.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let s = SqliteStore::open(&path).unwrap();
        s.commit(Batch::default().change(Change::InsertTask(root_task("root"))))
            .await
            .unwrap();
        record(&s, rec(1, 150)).await;
        let conn = open_reader(&path).unwrap();
        let trees = TreeCache::default();
        let scans = |key: &str| {
            vec![
                crate::HistoryScan {
                    scope: crate::ScanScope::Agent,
                    key: key.into(),
                    since: 0,
                    actions: None,
                    outcomes: None,
                },
                crate::HistoryScan {
                    scope: crate::ScanScope::Resource,
                    key: key.into(),
                    since: 0,
                    actions: Some(vec!["edr.read_alerts".into()]),
                    outcomes: Some(vec!["allow".into()]),
                },
            ]
        };
        for (round, key) in ["Host::web-1", "Host::web-2", "Host::web-1"]
            .iter()
            .enumerate()
        {
            let q = FactsQuery {
                scans: scans(key),
                ..query()
            };
            assert!(facts(&conn, &trees, &q).unwrap().is_some());
            // A new read of the tree, from the row after the cached copy.
            record(&s, rec(10 + round as u32, 150)).await;
        }
        let reprepared = |sql: &str| {
            conn.prepare_cached(sql)
                .unwrap()
                .get_status(rusqlite::StatementStatus::RePrepare)
        };
        for q in scans("x") {
            assert_eq!(reprepared(&scan_sql(&q)), 0, "{}", scan_sql(&q));
        }
        assert_eq!(reprepared(&tree_sql()), 0);
    }

    #[tokio::test]
    async fn the_writer_plans_a_decision_s_statements_once() {
        // `Connection::execute` parses and plans its statement on every
        // call; the writer goes through its statement cache instead.
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("t.db")).unwrap();
        let mut task = root_task("root");
        task.expires_at = i64::MAX;
        s.commit(Batch::default().change(Change::InsertTask(task)))
            .await
            .unwrap();
        for n in 0..3 {
            let decision = Batch::default()
                .change(Change::RequireTaskLive {
                    task_id: "root".into(),
                    now: 100,
                })
                .change(Change::RecordAction(rec(n, 100)))
                .event(AuditEvent::new(
                    100,
                    tollgate_core::EventKind::Decision,
                    "a",
                ));
            s.commit(decision).await.unwrap();
        }
        let inner = s.inner.lock().unwrap();
        let runs = inner
            .conn
            .prepare_cached(INSERT_AUDIT)
            .unwrap()
            .get_status(rusqlite::StatementStatus::Run);
        assert_eq!(
            runs, 3,
            "the audit insert was prepared anew for some commit"
        );
    }

    #[tokio::test]
    async fn later_reads_extend_the_cached_copy_in_place_when_nobody_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("t.db")).unwrap();
        s.commit(Batch::default().change(Change::InsertTask(root_task("root"))))
            .await
            .unwrap();
        record(&s, rec(1, 150)).await;
        let first = s.decision_facts(&query()).await.unwrap().unwrap().history;
        let cached = s.trees.get("root", 100).unwrap();
        assert!(Arc::ptr_eq(&cached.records, &first));
        assert_eq!(cached.max_rowid, 1);
        drop(cached);
        // Held by a caller: the next read copies, and the caller's answer stays.
        record(&s, rec(2, 160)).await;
        let second = s.decision_facts(&query()).await.unwrap().unwrap().history;
        assert_eq!((first.len(), second.len()), (1, 2));
        drop((first, second));
        // Held by nobody: extended in place.
        let before = Arc::as_ptr(&s.trees.get("root", 100).unwrap().records);
        record(&s, rec(3, 140)).await;
        let third = s.decision_facts(&query()).await.unwrap().unwrap().history;
        assert_eq!(Arc::as_ptr(&third), before);
        assert_eq!(*third, s.actions_in_tree("root", 100).await.unwrap());
        assert_eq!(s.trees.get("root", 100).unwrap().max_rowid, 3);
    }

    #[tokio::test]
    async fn a_copy_newer_than_the_reading_snapshot_is_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let s = SqliteStore::open(&path).unwrap();
        record(&s, rec(1, 150)).await;
        // A reader whose snapshot is taken now, before the second commit.
        let old = Connection::open(&path).unwrap();
        let tx = old.unchecked_transaction().unwrap();
        let n: i64 = tx
            .query_row("SELECT count(*) FROM action_history", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
        record(&s, rec(2, 160)).await;
        // A later reader caches both rows.
        let trees = TreeCache::default();
        let newer = Connection::open(&path).unwrap();
        assert_eq!(tree_history(&newer, &trees, "root", 100).unwrap().len(), 2);
        // The old snapshot reads its own truth, and leaves the newer copy.
        let got = tree_history(&tx, &trees, "root", 100).unwrap();
        assert_eq!(*got, vec![rec(1, 150)]);
        assert_eq!(trees.get("root", 100).unwrap().max_rowid, 2);
    }

    #[tokio::test]
    async fn the_delta_read_is_one_range_of_the_tree_s_rows() {
        let s = SqliteStore::open_in_memory().unwrap();
        let plan: Vec<String> = s
            .with(|inner| {
                let mut stmt = inner
                    .conn
                    .prepare(&format!("EXPLAIN QUERY PLAN {}", tree_sql()))
                    .map_err(backend)?;
                let rows = stmt
                    .query_map(params!["root", 0, 0], |r| r.get(3))
                    .map_err(backend)?;
                rows.collect::<Result<_, _>>().map_err(backend)
            })
            .await
            .unwrap();
        // Not a walk of the tree's index entries filtered by rowid, and no sort.
        assert_eq!(
            plan,
            ["SEARCH action_history USING INDEX action_history_tree_rows (root_task_id=? AND rowid>?)"],
        );
    }

    #[tokio::test]
    async fn agent_wide_counts_seek_an_index_on_every_column_they_fix() {
        let s = SqliteStore::open_in_memory().unwrap();
        let plans: Vec<String> = s
            .with(|inner| {
                [(false, true), (true, true), (true, false), (false, false)]
                    .into_iter()
                    .map(|(tier, action)| {
                        let sql = format!("EXPLAIN QUERY PLAN {}", count_sql(tier, action));
                        let mut stmt = inner.conn.prepare(&sql).map_err(backend)?;
                        for (i, v) in [(1, "x"), (3, "t"), (4, "a")] {
                            if i <= stmt.parameter_count() {
                                stmt.raw_bind_parameter(i, v).map_err(backend)?;
                            }
                        }
                        stmt.raw_bind_parameter(2, 0).map_err(backend)?;
                        let mut rows = stmt.raw_query();
                        let row = rows
                            .next()
                            .map_err(backend)?
                            .ok_or_else(|| backend("no plan"))?;
                        row.get::<_, String>(3).map_err(backend)
                    })
                    .collect()
            })
            .await
            .unwrap();
        let want = [
            "action_history_agent_action (agent=? AND action=? AND outcome=? AND ts>?)",
            "action_history_agent_action (agent=? AND action=? AND outcome=? AND ts>?)",
            "action_history_agent_allowed_tier (agent=? AND tier=? AND ts>?)",
            "(agent=? AND ts>?)",
        ];
        for (plan, want) in plans.iter().zip(want) {
            assert!(plan.contains(want), "{plan} does not use {want}");
        }
    }

    #[tokio::test]
    async fn a_stored_tier_or_outcome_that_is_not_ours_is_a_failure() {
        let s = SqliteStore::open_in_memory().unwrap();
        record(&s, rec(1, 150)).await;
        s.with(|inner| {
            inner
                .conn
                .execute("UPDATE action_history SET tier = 'Read'", [])
                .map_err(backend)
        })
        .await
        .unwrap();
        assert!(matches!(
            s.actions_in_tree("root", 0).await,
            Err(StoreError::Backend(_))
        ));
        s.with(|inner| {
            inner
                .conn
                .execute(
                    "UPDATE action_history SET tier = 'read', outcome = 'allowed'",
                    [],
                )
                .map_err(backend)
        })
        .await
        .unwrap();
        assert!(matches!(
            s.actions_in_tree("root", 0).await,
            Err(StoreError::Backend(_))
        ));
    }
}
