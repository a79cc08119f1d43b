//! A PostgreSQL backend, for several Tollgate processes over one database.
//!
//! Same semantics as [`crate::SqliteStore`] (the reference): the same
//! tables, the same preconditions and [`Conflict`]s, the same read orders.
//! What differs is where the single writer lives. The audit chain is shared
//! by every process, so its head (size, last hash, Merkle right edge) is a
//! one-row table, `audit_head`, and every commit transaction starts by
//! locking that row (`SELECT … FOR UPDATE`): commits are serialised across
//! all processes, chain order is commit order, and each precondition is read
//! after every earlier commit. Within a process, one writer task groups the
//! waiting [`Batch`]es into one transaction (a savepoint each, one lock of
//! the head, one durable commit), as `SqliteStore`'s writer does.
//!
//! TLS to the server is `crate::pg_tls` (libpq's `sslmode`/`sslrootcert`).
//!
//! Not yet: a per-tree history cache (each `decision_facts` reads the
//! tree's whole history; correct, not cheap).

use crate::pg_tls::TlsOptions;
use crate::tree_cache::TreeCache;
use crate::{
    ActionRecord, ApprovalFilter, Approver, AuditHead, AuditQuery, Batch, Change, Conflict,
    ConsoleSession, Evidence, FactsQuery, JoinToken, OutboxMessage, Pep, Store, StoreError,
    StoredFacts, TaskFilter,
};
use crate::{HeldCall, McpSession};
use async_trait::async_trait;
use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::types::ToSql;
use tokio_postgres::{IsolationLevel, NoTls, Row};
use tollgate_audit::checkpoint::Checkpoint;
use tollgate_audit::merkle::{leaf_hash, CompactRange};
use tollgate_audit::{AuditEntry, AuditEvent, GENESIS};
use tollgate_core::lineage::MAX_ANCESTORS;
use tollgate_core::{Agent, Approval, Incident, Lineage, Scope, Task, TaskStatus};

/// Versioned migrations, applied in order at connect; never edit one that
/// has shipped, add the next. Text columns use the "C" collation so that
/// `ORDER BY … id` sorts bytewise, as SQLite's BINARY does, whatever the
/// database's locale.
mod mcp;

const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        r#"
CREATE TABLE agents (
  spiffe_id TEXT COLLATE "C" PRIMARY KEY, owner TEXT COLLATE "C" NOT NULL, created_at BIGINT NOT NULL,
  revoked BOOLEAN NOT NULL);
CREATE TABLE join_tokens (
  token_hash TEXT COLLATE "C" PRIMARY KEY, spiffe_id TEXT COLLATE "C" NOT NULL, expires_at BIGINT NOT NULL,
  used_at BIGINT);
CREATE TABLE incidents (
  id TEXT COLLATE "C" PRIMARY KEY, class TEXT COLLATE "C" NOT NULL, severity TEXT COLLATE "C" NOT NULL,
  status TEXT COLLATE "C" NOT NULL, updated_at BIGINT NOT NULL);
CREATE TABLE tasks (
  id TEXT COLLATE "C" PRIMARY KEY, agent TEXT COLLATE "C" NOT NULL, incident_id TEXT COLLATE "C" NOT NULL,
  environment TEXT COLLATE "C" NOT NULL, playbook TEXT COLLATE "C" NOT NULL, intent TEXT COLLATE "C" NOT NULL,
  scope TEXT COLLATE "C" NOT NULL, parent_task_id TEXT COLLATE "C",
  created_at BIGINT NOT NULL, expires_at BIGINT NOT NULL, max_expires_at BIGINT NOT NULL,
  status TEXT COLLATE "C" NOT NULL, status_reason TEXT COLLATE "C");
CREATE INDEX tasks_agent ON tasks(agent);
CREATE INDEX tasks_incident ON tasks(incident_id);
CREATE INDEX tasks_parent ON tasks(parent_task_id);
CREATE TABLE settings (key TEXT COLLATE "C" PRIMARY KEY, value TEXT COLLATE "C" NOT NULL);
CREATE TABLE peps (
  name TEXT COLLATE "C" PRIMARY KEY, key_hash TEXT COLLATE "C" NOT NULL UNIQUE, created_at BIGINT NOT NULL);
CREATE TABLE evidence (
  id TEXT COLLATE "C" PRIMARY KEY, task_id TEXT COLLATE "C" NOT NULL, resource TEXT COLLATE "C" NOT NULL,
  kind TEXT COLLATE "C" NOT NULL, sha256 TEXT COLLATE "C" NOT NULL, content TEXT COLLATE "C",
  created_at BIGINT NOT NULL);
CREATE INDEX evidence_task ON evidence(task_id, resource);
CREATE TABLE approvals (
  id TEXT COLLATE "C" PRIMARY KEY, version BIGINT NOT NULL, status TEXT COLLATE "C" NOT NULL,
  task_id TEXT COLLATE "C" NOT NULL, request_hash TEXT COLLATE "C" NOT NULL, created_at BIGINT NOT NULL,
  body TEXT COLLATE "C" NOT NULL);
CREATE INDEX approvals_status ON approvals(status);
CREATE INDEX approvals_task ON approvals(task_id, request_hash);
CREATE UNIQUE INDEX approvals_one_pending ON approvals(task_id, request_hash) WHERE status = 'pending';
CREATE TABLE approvers (
  name TEXT COLLATE "C" PRIMARY KEY, role TEXT COLLATE "C" NOT NULL, key_hash TEXT COLLATE "C" NOT NULL UNIQUE,
  created_at BIGINT NOT NULL, expires_at BIGINT, disabled BOOLEAN NOT NULL DEFAULT false, last_used_at BIGINT);
-- id stands in for SQLite's rowid: the tie-break of equal times. Rows are
-- inserted only under the audit_head lock, so ids grow in commit order.
CREATE TABLE action_history (
  id BIGSERIAL PRIMARY KEY,
  root_task_id TEXT COLLATE "C" NOT NULL, task_id TEXT COLLATE "C" NOT NULL, agent TEXT COLLATE "C" NOT NULL,
  request_id TEXT COLLATE "C" NOT NULL, action TEXT COLLATE "C" NOT NULL, resource TEXT COLLATE "C" NOT NULL,
  tier TEXT COLLATE "C" NOT NULL, labels TEXT COLLATE "C" NOT NULL, outcome TEXT COLLATE "C" NOT NULL,
  ts BIGINT NOT NULL);
CREATE INDEX action_history_tree ON action_history(root_task_id, ts, id);
CREATE INDEX action_history_agent ON action_history(agent, ts);
CREATE INDEX action_history_agent_allowed_tier ON action_history(agent, tier, ts) WHERE outcome = 'allow';
CREATE INDEX action_history_agent_allowed_action ON action_history(agent, action, ts) WHERE outcome = 'allow';
CREATE TABLE checkpoints (tree_size BIGINT PRIMARY KEY, body TEXT COLLATE "C" NOT NULL);
CREATE TABLE leases (key TEXT COLLATE "C" PRIMARY KEY, holder TEXT COLLATE "C" NOT NULL, until BIGINT NOT NULL);
CREATE TABLE action_results (
  request_id TEXT COLLATE "C" PRIMARY KEY, task_id TEXT COLLATE "C" NOT NULL, status TEXT COLLATE "C" NOT NULL,
  created_at BIGINT NOT NULL);
-- event is the hashed JSON exactly as serialised, so the hash verifies
-- byte for byte; the other columns are unhashed indexes, checked on read.
CREATE TABLE audit (
  seq BIGINT PRIMARY KEY, ts BIGINT NOT NULL, kind TEXT COLLATE "C" NOT NULL,
  incident_id TEXT COLLATE "C", task_id TEXT COLLATE "C", agent TEXT COLLATE "C", request_id TEXT COLLATE "C",
  prev_hash TEXT COLLATE "C" NOT NULL, hash TEXT COLLATE "C" NOT NULL, event TEXT NOT NULL);
CREATE INDEX audit_incident ON audit(incident_id);
CREATE INDEX audit_task ON audit(task_id);
CREATE INDEX audit_agent ON audit(agent);
CREATE INDEX audit_request ON audit(request_id);
-- The chain head shared by every process: one row, locked by every commit.
-- peaks: the Merkle right edge, one 32-byte hash per set bit of size.
CREATE TABLE audit_head (
  id BOOLEAN PRIMARY KEY DEFAULT true CHECK (id), size BIGINT NOT NULL, last_hash BYTEA NOT NULL,
  peaks BYTEA NOT NULL);
INSERT INTO audit_head(id, size, last_hash, peaks)
  VALUES (true, 0, '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea, ''::bytea);
"#,
    ),
    (
        2,
        r#"
-- Notifications queued in the commit of what they report (webhooks).
CREATE TABLE outbox (
  id TEXT COLLATE "C" PRIMARY KEY, sink TEXT COLLATE "C" NOT NULL, event TEXT COLLATE "C" NOT NULL,
  subject TEXT COLLATE "C" NOT NULL, body TEXT NOT NULL, created_at BIGINT NOT NULL);
CREATE INDEX outbox_created ON outbox(created_at, id);
"#,
    ),
    // MCP sessions and held calls (`postgres/mcp.rs`).
    (3, mcp::MIGRATION),
    (
        4,
        r#"
-- Web console sessions: the hash of the browser's secret, never the secret.
CREATE TABLE console_sessions (
  id_hash TEXT COLLATE "C" PRIMARY KEY, principal TEXT COLLATE "C" NOT NULL, role TEXT COLLATE "C" NOT NULL,
  via TEXT COLLATE "C" NOT NULL, created_at BIGINT NOT NULL, expires_at BIGINT NOT NULL);
CREATE INDEX console_sessions_expiry ON console_sessions(expires_at);
"#,
    ),
    (
        5,
        r#"
-- Temporal rules read the history by incident and by resource.
ALTER TABLE action_history ADD COLUMN incident_id TEXT COLLATE "C" NOT NULL DEFAULT '';
UPDATE action_history h SET incident_id = t.incident_id FROM tasks t WHERE t.id = h.task_id;
CREATE INDEX action_history_incident ON action_history(incident_id, ts, id);
CREATE INDEX action_history_resource ON action_history(resource, ts, id);
"#,
    ),
    (
        6,
        r#"
-- Temporal rule scans name the actions they look for.
CREATE INDEX action_history_agent_action ON action_history(agent, action, outcome, ts, id);
CREATE INDEX action_history_incident_action ON action_history(incident_id, action, outcome, ts, id);
CREATE INDEX action_history_resource_action ON action_history(resource, action, outcome, ts, id);
"#,
    ),
    (
        7,
        r#"
-- The history cache reads a tree's rows after the newest it holds as one
-- range; `(root_task_id, ts, id)` made that walk every row of the tree.
CREATE INDEX action_history_tree_rows ON action_history(root_task_id, id);
DROP INDEX action_history_tree;
-- Agent-wide counts of one action: `action_history_agent_action` serves them.
DROP INDEX action_history_agent_allowed_action;
"#,
    ),
];

/// Serialises migrations of every process over the database (any schema).
const MIGRATION_LOCK: i64 = 0x746f_6c6c_6761_7465; // "tollgate"

/// Connections per process. The writer task uses one at a time; the rest
/// bound how many reads run at once.
const POOL_SIZE: usize = 16;

/// Batches waiting for this process's writer. A full queue fails a commit
/// at once (shed load, fail closed) rather than queueing without bound.
const QUEUE: usize = 4096;

/// Most batches in one group transaction: bounds how long the head lock is
/// held, so other processes' groups and this group's first batch wait little.
const MAX_GROUP: usize = 256;

type Reply = tokio::sync::oneshot::Sender<Result<Vec<u64>, StoreError>>;

struct Job {
    batch: Batch,
    reply: Reply,
}

#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    writer: tokio::sync::mpsc::Sender<Job>,
    /// Each task tree's history as last read, so a decision reads only the
    /// rows committed since ([`tree_history`]).
    trees: Arc<TreeCache>,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// A PostgreSQL error with the server's message (the plain `Display` of a
/// server error says only "db error").
fn pg(e: tokio_postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(db) => backend(format!("postgres: {} ({})", db.message(), db.code().code())),
        None => backend(format!("postgres: {}", with_sources(&e))),
    }
}

/// An error's message followed by its causes' (tokio-postgres and deadpool
/// leave the cause, e.g. which certificate check failed, out of `Display`).
pub(crate) fn with_sources(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let m = c.to_string();
        if !msg.contains(&m) {
            msg.push_str(": ");
            msg.push_str(&m);
        }
        cause = c.source();
    }
    msg
}

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

async fn rows<C: GenericClient>(c: &C, sql: &str, p: Params<'_>) -> Result<Vec<Row>, StoreError> {
    let st = c.prepare_cached(sql).await.map_err(pg)?;
    c.query(&st, p).await.map_err(pg)
}

async fn opt<C: GenericClient>(c: &C, sql: &str, p: Params<'_>) -> Result<Option<Row>, StoreError> {
    let st = c.prepare_cached(sql).await.map_err(pg)?;
    c.query_opt(&st, p).await.map_err(pg)
}

async fn one<C: GenericClient>(c: &C, sql: &str, p: Params<'_>) -> Result<Row, StoreError> {
    let st = c.prepare_cached(sql).await.map_err(pg)?;
    c.query_one(&st, p).await.map_err(pg)
}

async fn exec<C: GenericClient>(c: &C, sql: &str, p: Params<'_>) -> Result<u64, StoreError> {
    let st = c.prepare_cached(sql).await.map_err(pg)?;
    c.execute(&st, p).await.map_err(pg)
}

fn get<'a, T: tokio_postgres::types::FromSql<'a>>(r: &'a Row, i: usize) -> Result<T, StoreError> {
    r.try_get(i).map_err(pg)
}

fn hash32(s: &str) -> Result<[u8; 32], StoreError> {
    let mut h = [0u8; 32];
    hex::decode_to_slice(s, &mut h).map_err(backend)?;
    Ok(h)
}

fn bytes32(b: &[u8]) -> Result<[u8; 32], StoreError> {
    <[u8; 32]>::try_from(b).map_err(|_| backend("a stored hash is not 32 bytes"))
}

/// A schema name used unquoted in startup options and quoted in DDL: only
/// lower-case letters, digits and underscores, so neither can be escaped out
/// of, and both name the same schema (an unquoted name is folded to lower case).
fn valid_schema(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !s.starts_with(|c: char| c.is_ascii_digit())
}

impl PostgresStore {
    /// Connect a pool to `url` (a `postgres://` URL or key=value string).
    /// With `schema`, every connection works in it (created if missing).
    /// Applies pending migrations before returning, so a store that
    /// connects is ready; an unreachable server is an error.
    pub async fn connect(url: &str, schema: Option<&str>) -> Result<Self, StoreError> {
        Self::connect_with_password(url, schema, None).await
    }

    /// Whether a connection string carries a password (operators keep it
    /// out of URLs and configuration: it comes from a file or the
    /// environment instead).
    pub fn url_has_password(url: &str) -> bool {
        crate::pg_tls::parse_without_tls(url).is_ok_and(|c| c.get_password().is_some())
    }

    /// [`connect`](Self::connect) with the password given apart from the URL.
    pub async fn connect_with_password(
        url: &str,
        schema: Option<&str>,
        password: Option<&str>,
    ) -> Result<Self, StoreError> {
        Self::connect_with(url, schema, password, &TlsOptions::default()).await
    }

    /// [`connect_with_password`](Self::connect_with_password) with TLS
    /// settings given apart from the URL (see `crate::pg_tls` for the modes
    /// and the default).
    pub async fn connect_with(
        url: &str,
        schema: Option<&str>,
        password: Option<&str>,
        tls: &TlsOptions,
    ) -> Result<Self, StoreError> {
        let crate::pg_tls::Resolved {
            mut config,
            mode,
            by_default,
            connector,
        } = crate::pg_tls::resolve(url, tls)?;
        if let Some(p) = password {
            config.password(p);
        }
        // Set at connection start, so every pooled connection has them
        // before its first statement: a bounded statement time (a stuck
        // lock fails closed rather than hanging a request), durable commits
        // whatever the server's default (a commit returns once durable),
        // and the schema.
        let mut options = config.get_options().unwrap_or_default().to_string();
        options.push_str(" -c statement_timeout=10000 -c synchronous_commit=on");
        if let Some(s) = schema {
            if !valid_schema(s) {
                return Err(backend(format!(
                    "schema name {s:?}: use lower-case letters, digits and underscores"
                )));
            }
            options.push_str(&format!(" -c search_path={s}"));
        }
        config.options(options.trim());
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        let pool_of = |size: usize| {
            let mc = ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            };
            let manager = match &connector {
                Some(tls) => Manager::from_config(config.clone(), tls.clone(), mc),
                None => Manager::from_config(config.clone(), NoTls, mc),
            };
            Pool::builder(manager)
                .max_size(size)
                .runtime(Runtime::Tokio1)
                .create_timeout(Some(Duration::from_secs(10)))
                .wait_timeout(Some(Duration::from_secs(30)))
                .build()
                .map_err(backend)
        };
        let pool = pool_of(POOL_SIZE)?;
        let writer_pool = pool_of(1)?;
        // The writer thread lives as long as a clone of the store does: when
        // the last sender is dropped, its queue closes and it returns.
        let (writer, rx) = tokio::sync::mpsc::channel(QUEUE);
        let store = Self {
            pool,
            writer,
            trees: Arc::default(),
        };
        store
            .migrate(schema)
            .await
            .map_err(|e| crate::pg_tls::explain(e, mode, by_default))?;
        // The writer runs on a thread and runtime of its own, with its own
        // connection (created there, so the connection's task runs there
        // too). Why: a group's statements are round trips one after another,
        // and on the shared runtime each answer waited for a worker busy
        // with requests before the writer could send the next; the writer is
        // the one serial part of every commit of every replica.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(backend)?;
        std::thread::Builder::new()
            .name("tollgate-pg-writer".into())
            .spawn(move || runtime.block_on(writer_loop(writer_pool, rx)))
            .map_err(backend)?;
        Ok(store)
    }

    async fn client(&self) -> Result<deadpool_postgres::Client, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|e| backend(format!("postgres pool: {}", with_sources(&e))))
    }

    /// Apply the migrations not yet recorded, in one transaction under an
    /// advisory lock, so processes starting together apply each once.
    async fn migrate(&self, schema: Option<&str>) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(pg)?;
        if let Some(s) = schema {
            tx.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS \"{s}\""))
                .await
                .map_err(pg)?;
        }
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
               version INT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
        )
        .await
        .map_err(pg)?;
        let applied: Vec<i32> = tx
            .query("SELECT version FROM schema_migrations", &[])
            .await
            .map_err(pg)?
            .iter()
            .map(|r| get(r, 0))
            .collect::<Result<_, _>>()?;
        let newest = MIGRATIONS.last().map_or(0, |m| m.0);
        if let Some(v) = applied.iter().find(|v| **v > newest) {
            return Err(backend(format!(
                "the database has schema version {v}, newer than this build knows ({newest})"
            )));
        }
        for (version, sql) in MIGRATIONS {
            if applied.contains(version) {
                continue;
            }
            tx.batch_execute(sql).await.map_err(pg)?;
            tx.execute(
                "INSERT INTO schema_migrations(version) VALUES ($1)",
                &[version],
            )
            .await
            .map_err(pg)?;
        }
        tx.commit().await.map_err(pg)
    }

    /// Check the stored log against itself, its head row and its stored
    /// checkpoints: sequence numbers without gaps, every entry re-hashed and
    /// linked, the head equal to the log, and the Merkle root at every
    /// checkpoint's size equal to the signed one. One snapshot.
    async fn verify_log(&self) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = snapshot(&mut client).await?;
        let r = one(&tx, "SELECT count(*), max(seq) FROM audit", &[]).await?;
        let (count, max): (i64, Option<i64>) = (get(&r, 0)?, get(&r, 1)?);
        if count != max.unwrap_or(0) {
            return Err(backend(format!(
                "the audit log has {count} entries but its last is number {}: entries were removed",
                max.unwrap_or(0)
            )));
        }
        let mut cps: Vec<Checkpoint> = Vec::new();
        for r in rows(
            &tx,
            "SELECT body FROM checkpoints ORDER BY tree_size DESC",
            &[],
        )
        .await?
        {
            cps.push(serde_json::from_str(&get::<String>(&r, 0)?).map_err(backend)?);
        }
        if let Some(cp) = cps.first() {
            if cp.tree_size > count as u64 {
                return Err(backend(format!(
                    "the audit log ends at entry {count} but a signed checkpoint covers {}: it was truncated",
                    cp.tree_size
                )));
            }
        }
        let mut range = CompactRange::default();
        let (mut next, mut prev) = (1u64, GENESIS);
        // Paged by seq, so a long log is never held in memory at once.
        loop {
            let page = rows(
                &tx,
                &format!("SELECT {ENTRY_COLS} FROM audit WHERE seq >= $1 ORDER BY seq LIMIT 10000"),
                &[&(next as i64)],
            )
            .await?;
            if page.is_empty() {
                break;
            }
            for row in &page {
                let entry = entry_from_row(row)?;
                (next, prev) = tollgate_audit::verify_run(next, prev, std::iter::once(&entry))
                    .map_err(|e| backend(format!("{e}")))?;
                range.push(leaf_hash(&entry.hash));
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
        }
        // The head row is where the next commit chains from: it must be the log's.
        let (head_range, head_last) = read_head(&tx, false).await?;
        if head_range != range || head_last != prev {
            return Err(backend(format!(
                "the audit head (size {}) does not match the log (size {})",
                head_range.size(),
                range.size()
            )));
        }
        tx.commit().await.map_err(pg)
    }
}

/// A read-only transaction over one snapshot.
async fn snapshot(
    client: &mut deadpool_postgres::Client,
) -> Result<deadpool_postgres::Transaction<'_>, StoreError> {
    client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(pg)
}

/// The chain head: the Merkle right edge (its size is the entry count) and
/// the last entry's hash. `lock` takes the row lock that serialises commits.
async fn read_head<C: GenericClient>(
    c: &C,
    lock: bool,
) -> Result<(CompactRange, [u8; 32]), StoreError> {
    let sql = if lock {
        "SELECT size, last_hash, peaks FROM audit_head FOR UPDATE"
    } else {
        "SELECT size, last_hash, peaks FROM audit_head"
    };
    let r = one(c, sql, &[]).await?;
    let size: i64 = get(&r, 0)?;
    let last: &[u8] = get(&r, 1)?;
    let peaks: &[u8] = get(&r, 2)?;
    let hashes = peaks
        .chunks(32)
        .map(bytes32)
        .collect::<Result<Vec<_>, _>>()?;
    let range = u64::try_from(size)
        .ok()
        .and_then(|size| CompactRange::from_peaks(size, &hashes))
        .ok_or_else(|| backend("the audit head row is malformed"))?;
    Ok((range, bytes32(last)?))
}

/// This process's single writer: takes the first waiting batch and whatever
/// else waits (up to [`MAX_GROUP`]), commits them as one group, and answers
/// each only after that commit.
async fn writer_loop(pool: Pool, mut rx: tokio::sync::mpsc::Receiver<Job>) {
    let mut jobs = Vec::with_capacity(MAX_GROUP);
    while rx.recv_many(&mut jobs, MAX_GROUP).await > 0 {
        let (batches, replies): (Vec<Batch>, Vec<Reply>) =
            jobs.drain(..).map(|j| (j.batch, j.reply)).unzip();
        let results = commit_group(&pool, batches).await;
        for (reply, result) in replies.into_iter().zip(results) {
            // The caller may have gone (a dropped request); its batch stands.
            let _ = reply.send(result);
        }
    }
}

/// Several batches in one transaction, one answer each. If the transaction
/// itself fails (connection, lock, savepoint, head update or COMMIT), no
/// batch of the group is acknowledged: every one gets `Backend`.
async fn commit_group(pool: &Pool, batches: Vec<Batch>) -> Vec<Result<Vec<u64>, StoreError>> {
    let n = batches.len();
    let outcome = match pool.get().await {
        Ok(mut client) => group_transaction(&mut client, batches).await,
        Err(e) => Err(backend(format!("postgres pool: {e}"))),
    };
    match outcome {
        Ok(results) => results,
        Err(e) => {
            let why = e.to_string();
            (0..n)
                .map(|_| Err(backend(format!("group commit abandoned: {why}"))))
                .collect()
        }
    }
}

/// The group's transaction. Its first statement locks the chain head, which
/// serialises this group against every other commit of every process over
/// this database: chain order is commit order, sequence-assigned ids
/// (action_history) are commit ordered, and preconditions read everything
/// committed before. The lock and the WAL flush are paid once per group.
///
/// Each batch runs in its own savepoint. A batch that fails (a precondition,
/// or a statement error, which in PostgreSQL aborts everything after it until
/// rolled back) is rolled back to its savepoint and the chain state restored,
/// so it leaves no trace and the others proceed; a rollback that itself
/// fails means the transaction is unusable, and the whole group fails.
async fn group_transaction(
    client: &mut deadpool_postgres::Client,
    batches: Vec<Batch>,
) -> Result<Vec<Result<Vec<u64>, StoreError>>, StoreError> {
    // READ COMMITTED (whatever the server default): after waiting for the
    // lock, each later statement sees the previous holder's commit.
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::ReadCommitted)
        .start()
        .await
        .map_err(pg)?;
    let (mut range, mut prev) = read_head(&tx, true).await?;
    let size_before = range.size();
    let mut results = Vec::with_capacity(batches.len());
    for batch in batches {
        let saved = (range.clone(), prev);
        // The savepoint goes out with the batch's first statement instead of
        // a round trip ahead of it: `join!` polls it first, so its request
        // is queued on the connection first, and PostgreSQL runs a
        // connection's statements in the order they arrive. If it failed,
        // the batch's statements fail too (and the group with them). A
        // batch that succeeds is not released: savepoints of one name
        // nest, `ROLLBACK TO` undoes only the newest, and COMMIT releases
        // them all, which saves another round trip per batch.
        let (savepoint, applied) = tokio::join!(
            tx.batch_execute("SAVEPOINT batch"),
            apply_batch(&tx, batch, &mut range, &mut prev)
        );
        savepoint.map_err(pg)?;
        match applied {
            Ok(seqs) => results.push(Ok(seqs)),
            Err(e) => {
                tx.batch_execute("ROLLBACK TO SAVEPOINT batch")
                    .await
                    .map_err(pg)?;
                (range, prev) = saved;
                results.push(Err(e));
            }
        }
    }
    if range.size() != size_before {
        let peaks: Vec<u8> = range.peak_hashes().flatten().copied().collect();
        exec(
            &tx,
            "UPDATE audit_head SET size = $1, last_hash = $2, peaks = $3",
            &[&(range.size() as i64), &&prev[..], &peaks],
        )
        .await?;
    }
    // Dropping `tx` on an earlier error rolls the whole group back.
    tx.commit().await.map_err(pg)?;
    Ok(results)
}

/// One batch's changes and audit entries, chained after `range`/`prev`
/// (advanced as entries are added; the caller restores them on failure).
///
/// The entries' inserts are issued beside the changes rather than after
/// them, so they travel with the changes' statements instead of costing
/// round trips of their own. That is safe because no change reads the
/// audit table, and a change that fails fails the batch, whose savepoint
/// the caller rolls back with the entries in it (a change's error is
/// reported before an entry's: after a failed statement every later one
/// fails too).
async fn apply_batch<C: GenericClient>(
    tx: &C,
    batch: Batch,
    range: &mut CompactRange,
    prev: &mut [u8; 32],
) -> Result<Vec<u64>, StoreError> {
    let Batch { changes, audit } = batch;
    // A leading `RequireTaskLive` (every decision's first change) only
    // checks, so it goes out together with the changes after it instead of
    // a round trip ahead of them: it is queued first, so it sees the state
    // before them, and if it fails the caller rolls the batch's savepoint
    // back, undoing them. Its conflict is reported first, as if it had run
    // alone.
    let (check, rest) = match changes.split_first() {
        Some((check @ Change::RequireTaskLive { .. }, rest)) => (Some(check), rest),
        _ => (None, &changes[..]),
    };
    let changed = async {
        let (checked, applied) = tokio::join!(
            async {
                match check {
                    Some(c) => apply(tx, c).await,
                    None => Ok(()),
                }
            },
            async {
                for c in rest {
                    apply(tx, c).await?;
                }
                Ok::<(), StoreError>(())
            }
        );
        checked?;
        applied
    };
    let chained = async {
        let mut seqs = Vec::with_capacity(audit.len());
        for event in audit {
            let seq = range.size() + 1;
            let entry = tollgate_audit::chain(seq, *prev, event);
            let body = serde_json::to_string(&entry.event).map_err(backend)?;
            let e = &entry.event;
            exec(
                tx,
                "INSERT INTO audit(seq, ts, kind, incident_id, task_id, agent, request_id, prev_hash, hash, event)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                &[
                    &(seq as i64), &e.ts, &e.kind, &e.incident_id, &e.task_id, &e.agent, &e.request_id,
                    &hex::encode(entry.prev_hash), &hex::encode(entry.hash), &body,
                ],
            )
            .await?;
            range.push(leaf_hash(&entry.hash));
            *prev = entry.hash;
            seqs.push(seq);
        }
        Ok(seqs)
    };
    let (changed, chained) = tokio::join!(changed, chained);
    changed?;
    chained
}

/// One change, with its precondition, as `sqlite.rs`'s `apply`. A failed
/// statement aborts a PostgreSQL transaction, so a constraint is not caught
/// after the fact: inserts that may collide use `ON CONFLICT DO NOTHING`
/// and look at the count (the head lock makes that free of races).
async fn apply<C: GenericClient>(tx: &C, change: &Change) -> Result<(), StoreError> {
    match change {
        Change::DropExpiredLeases { .. }
        | Change::PutMcpSession(_)
        | Change::TouchMcpSession { .. }
        | Change::EndMcpSession { .. }
        | Change::EndIdleMcpSessions { .. }
        | Change::PutHeldCall(_)
        | Change::EndHeldCall { .. } => {
            mcp::apply(tx, change).await?;
        }
        Change::UpsertAgent(a) => {
            exec(
                tx,
                "INSERT INTO agents(spiffe_id, owner, created_at, revoked) VALUES ($1, $2, $3, $4)
                 ON CONFLICT(spiffe_id) DO UPDATE SET owner = excluded.owner, revoked = excluded.revoked,
                   created_at = excluded.created_at",
                &[&a.spiffe_id, &a.owner, &a.created_at, &a.revoked],
            )
            .await?;
        }
        Change::SetAgentRevoked { spiffe_id, revoked } => {
            let n = exec(
                tx,
                "UPDATE agents SET revoked = $2 WHERE spiffe_id = $1",
                &[spiffe_id, revoked],
            )
            .await?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("agent {spiffe_id}")));
            }
        }
        Change::PutJoinToken(t) => {
            exec(
                tx,
                "INSERT INTO join_tokens(token_hash, spiffe_id, expires_at, used_at) VALUES ($1, $2, $3, NULL)",
                &[&t.token_hash, &t.spiffe_id, &t.expires_at],
            )
            .await?;
        }
        Change::DropUnusedJoinTokens { spiffe_id } => {
            exec(
                tx,
                "DELETE FROM join_tokens WHERE spiffe_id = $1 AND used_at IS NULL",
                &[spiffe_id],
            )
            .await?;
        }
        Change::RecordIncident(i) => {
            exec(
                tx,
                "INSERT INTO incidents(id, class, severity, status, updated_at) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT(id) DO NOTHING",
                &[&i.id, &i.class, &i.severity.as_str(), &i.status.as_str(), &i.updated_at],
            )
            .await?;
            let r = one(
                tx,
                "SELECT class, severity FROM incidents WHERE id = $1",
                &[&i.id],
            )
            .await?;
            let (class, severity): (String, String) = (get(&r, 0)?, get(&r, 1)?);
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
                "UPDATE join_tokens SET used_at = $2 WHERE token_hash = $1 AND used_at IS NULL AND expires_at > $2",
                &[token_hash, now],
            )
            .await?;
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
                "INSERT INTO incidents(id, class, severity, status, updated_at) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT(id) DO UPDATE SET class = excluded.class, severity = excluded.severity,
                 status = excluded.status, updated_at = excluded.updated_at",
                &[&i.id, &i.class, &i.severity.as_str(), &i.status.as_str(), &i.updated_at],
            )
            .await?;
        }
        Change::InsertTask(t) => {
            let scope = serde_json::to_string(&t.scope).map_err(backend)?;
            let n = exec(
                tx,
                "INSERT INTO tasks(id, agent, incident_id, environment, playbook, intent, scope, parent_task_id,
                   created_at, expires_at, max_expires_at, status, status_reason)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) ON CONFLICT(id) DO NOTHING",
                &[
                    &t.id, &t.agent, &t.incident_id, &t.environment, &t.playbook, &t.intent, &scope,
                    &t.parent_task_id, &t.created_at, &t.expires_at, &t.max_expires_at,
                    &t.status.as_str(), &t.status_reason,
                ],
            )
            .await?;
            if n == 0 {
                return Err(Conflict::TaskExists {
                    task_id: t.id.clone(),
                }
                .into());
            }
        }
        Change::RenewTask {
            task_id,
            expires_at,
            now,
        } => {
            let n = exec(
                tx,
                "UPDATE tasks SET expires_at = $2 WHERE id = $1 AND status = 'active' AND expires_at > $3
                 AND $2 <= max_expires_at",
                &[task_id, expires_at, now],
            )
            .await?;
            if n == 0 {
                // Which of the two preconditions failed, read in the same transaction.
                let max: Option<i64> = match opt(
                    tx,
                    "SELECT max_expires_at FROM tasks WHERE id = $1 AND status = 'active' AND expires_at > $2",
                    &[task_id, now],
                )
                .await?
                {
                    Some(r) => Some(get(&r, 0)?),
                    None => None,
                };
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
                "UPDATE tasks SET status = $2, status_reason = $3 WHERE id = $1 AND status = 'active'",
                &[task_id, &status.as_str(), reason],
            )
            .await?;
            if n == 0 {
                return Err(Conflict::TaskNotLive {
                    task_id: task_id.clone(),
                }
                .into());
            }
        }
        Change::RequireTaskLive { task_id, now } => {
            let r = one(
                tx,
                "SELECT EXISTS(SELECT 1 FROM tasks WHERE id = $1 AND status = 'active' AND expires_at > $2)",
                &[task_id, now],
            )
            .await?;
            if !get::<bool>(&r, 0)? {
                return Err(Conflict::TaskNotLive {
                    task_id: task_id.clone(),
                }
                .into());
            }
        }
        Change::RevokeTask { task_id, reason } => {
            exec(
                tx,
                "UPDATE tasks SET status = 'revoked', status_reason = $2 WHERE id = $1 AND status = 'active'",
                &[task_id, reason],
            )
            .await?;
        }
        Change::EndDescendants { root_id, reason } => {
            exec(
                tx,
                "WITH RECURSIVE sub(id) AS (
                   SELECT id FROM tasks WHERE parent_task_id = $1
                   UNION SELECT t.id FROM tasks t JOIN sub ON t.parent_task_id = sub.id)
                 UPDATE tasks SET status = 'revoked', status_reason = $2
                 WHERE id IN (SELECT id FROM sub) AND status = 'active'",
                &[root_id, reason],
            )
            .await?;
        }
        Change::EndAgentTasks { spiffe_id, reason } => {
            exec(
                tx,
                "UPDATE tasks SET status = 'revoked', status_reason = $2 WHERE agent = $1 AND status = 'active'",
                &[spiffe_id, reason],
            )
            .await?;
        }
        Change::PutSetting { key, value } => {
            exec(
                tx,
                "INSERT INTO settings(key, value) VALUES ($1, $2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                &[key, value],
            )
            .await?;
        }
        Change::PutPep(p) => {
            exec(
                tx,
                "INSERT INTO peps(name, key_hash, created_at) VALUES ($1, $2, $3)
                 ON CONFLICT(name) DO UPDATE SET key_hash = excluded.key_hash, created_at = excluded.created_at",
                &[&p.name, &p.key_hash, &p.created_at],
            )
            .await?;
        }
        Change::RemovePep { name } => {
            if exec(tx, "DELETE FROM peps WHERE name = $1", &[name]).await? == 0 {
                return Err(StoreError::NotFound(format!("pep {name}")));
            }
        }
        Change::PutEvidence(e) => {
            exec(
                tx,
                "INSERT INTO evidence(id, task_id, resource, kind, sha256, content, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[
                    &e.id,
                    &e.task_id,
                    &e.resource,
                    &e.kind,
                    &e.sha256,
                    &e.content,
                    &e.created_at,
                ],
            )
            .await?;
        }
        Change::InsertApproval(a) => {
            let body = serde_json::to_string(a).map_err(backend)?;
            // No conflict target: either unique index (the id, or one
            // pending per task and request hash) turns the insert into nothing.
            let n = exec(
                tx,
                "INSERT INTO approvals(id, version, status, task_id, request_hash, created_at, body)
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
                &[&a.id, &(a.version as i64), &a.status.as_str(), &a.task_id, &a.request_hash, &a.created_at, &body],
            )
            .await?;
            if n == 0 {
                return Err(approval_conflict(tx, a).await);
            }
        }
        Change::UpdateApproval {
            approval: a,
            expected_version,
        } => {
            let body = serde_json::to_string(a).map_err(backend)?;
            let n = exec(
                tx,
                "UPDATE approvals SET version = $2, status = $3, body = $4 WHERE id = $1 AND version = $5",
                &[&a.id, &(a.version as i64), &a.status.as_str(), &body, &(*expected_version as i64)],
            )
            .await?;
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
                "INSERT INTO action_history(root_task_id, task_id, request_id, action, resource, tier, labels,
                   outcome, ts, agent, incident_id)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10,
                   COALESCE((SELECT incident_id FROM tasks WHERE id = $2), ''))",
                &[
                    &a.root_task_id.as_str(), &a.task_id.as_str(), &a.request_id, &a.action.as_str(),
                    &a.resource.as_str(), &a.tier.as_str(), &labels, &a.outcome.as_str(), &a.ts,
                    &a.agent.as_str(),
                ],
            )
            .await?;
        }
        Change::PutCheckpoint(cp) => {
            let body = serde_json::to_string(cp).map_err(backend)?;
            exec(
                tx,
                "INSERT INTO checkpoints(tree_size, body) VALUES ($1, $2) ON CONFLICT(tree_size) DO NOTHING",
                &[&(cp.tree_size as i64), &body],
            )
            .await?;
        }
        Change::AcquireLease {
            key,
            holder,
            until,
            now,
        } => {
            let held = match opt(
                tx,
                "SELECT holder, until FROM leases WHERE key = $1",
                &[key],
            )
            .await?
            {
                Some(r) => Some((get::<String>(&r, 0)?, get::<i64>(&r, 1)?)),
                None => None,
            };
            if let Some(c) = Conflict::of_lease(key, holder, held, *now) {
                return Err(c.into());
            }
            exec(
                tx,
                "INSERT INTO leases(key, holder, until) VALUES ($1, $2, $3)
                 ON CONFLICT(key) DO UPDATE SET holder = excluded.holder, until = excluded.until",
                &[key, holder, until],
            )
            .await?;
        }
        Change::ReleaseLease { key, holder } => {
            exec(
                tx,
                "DELETE FROM leases WHERE key = $1 AND holder = $2",
                &[key, holder],
            )
            .await?;
        }
        Change::PutConsoleSession(c) => {
            exec(
                tx,
                "INSERT INTO console_sessions(id_hash, principal, role, via, created_at, expires_at)
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT(id_hash) DO NOTHING",
                &[&c.id_hash, &c.principal, &c.role, &c.via, &c.created_at, &c.expires_at],
            )
            .await?;
        }
        Change::EndConsoleSession { id_hash } => {
            exec(
                tx,
                "DELETE FROM console_sessions WHERE id_hash = $1",
                &[id_hash],
            )
            .await?;
        }
        Change::PurgeConsoleSessions { before } => {
            exec(
                tx,
                "DELETE FROM console_sessions WHERE expires_at < $1",
                &[before],
            )
            .await?;
        }
        Change::Enqueue(m) => {
            exec(
                tx,
                "INSERT INTO outbox(id, sink, event, subject, body, created_at) VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT(id) DO NOTHING",
                &[&m.id, &m.sink, &m.event, &m.subject, &m.body, &m.created_at],
            )
            .await?;
        }
        Change::Dequeue { id } => {
            exec(tx, "DELETE FROM outbox WHERE id = $1", &[id]).await?;
            exec(
                tx,
                "DELETE FROM leases WHERE key = $1",
                &[&OutboxMessage::lease_key(id)],
            )
            .await?;
        }
        Change::RecordActionResult {
            request_id,
            task_id,
            status,
            at,
        } => {
            let n = exec(
                tx,
                "INSERT INTO action_results(request_id, task_id, status, created_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT(request_id) DO NOTHING",
                &[request_id, task_id, status, at],
            )
            .await?;
            if n == 0 {
                return Err(Conflict::ResultRecorded {
                    request_id: request_id.clone(),
                }
                .into());
            }
        }
        Change::PutApprover(a) => {
            exec(
                tx,
                "INSERT INTO approvers(name, role, key_hash, created_at, expires_at, disabled, last_used_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT(name) DO UPDATE SET role = excluded.role, key_hash = excluded.key_hash,
                   created_at = excluded.created_at, expires_at = excluded.expires_at,
                   disabled = excluded.disabled, last_used_at = excluded.last_used_at",
                &[&a.name, &a.role, &a.key_hash, &a.created_at, &a.expires_at, &a.disabled, &a.last_used_at],
            )
            .await?;
        }
        Change::RemoveApprover { name } => {
            if exec(tx, "DELETE FROM approvers WHERE name = $1", &[name]).await? == 0 {
                return Err(StoreError::NotFound(format!("approver {name}")));
            }
        }
        Change::SetApproverDisabled { name, disabled } => {
            let n = exec(
                tx,
                "UPDATE approvers SET disabled = $2 WHERE name = $1",
                &[name, disabled],
            )
            .await?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("approver {name}")));
            }
        }
        Change::TouchApprover { name, at } => {
            exec(
                tx,
                "UPDATE approvers SET last_used_at = $2 WHERE name = $1",
                &[name, at],
            )
            .await?;
        }
    }
    Ok(())
}

/// Which precondition an approval insert broke, read in the same transaction.
async fn approval_conflict<C: GenericClient>(tx: &C, a: &Approval) -> StoreError {
    let exists = opt(tx, "SELECT 1 FROM approvals WHERE id = $1", &[&a.id]).await;
    match exists {
        Ok(Some(_)) => {
            return Conflict::ApprovalExists {
                approval_id: a.id.clone(),
            }
            .into()
        }
        Ok(None) => {}
        Err(e) => return e,
    }
    let pending = opt(
        tx,
        "SELECT id FROM approvals WHERE task_id = $1 AND request_hash = $2 AND status = 'pending'",
        &[&a.task_id, &a.request_hash],
    )
    .await;
    match pending {
        Ok(Some(r)) => match get::<String>(&r, 0) {
            Ok(existing_id) => Conflict::ApprovalPending {
                task_id: a.task_id.clone(),
                request_hash: a.request_hash.clone(),
                existing_id,
            }
            .into(),
            Err(e) => e,
        },
        Ok(None) => backend(format!("approval {} was not inserted", a.id)),
        Err(e) => e,
    }
}

const ENTRY_COLS: &str = "seq, prev_hash, hash, event, incident_id, task_id, agent, request_id";

/// An audit row, checked as `sqlite.rs`'s `decode_entry` does: the event
/// must parse, and the unhashed index columns must say what it says.
fn entry_from_row(r: &Row) -> Result<AuditEntry, StoreError> {
    let seq: i64 = get(r, 0)?;
    let prev_hash = hash32(get(r, 1)?)?;
    let hash = hash32(get(r, 2)?)?;
    let event: AuditEvent = serde_json::from_str(get(r, 3)?).map_err(|e| {
        backend(format!(
            "audit entry {seq} does not parse (it was modified): {e}"
        ))
    })?;
    let columns: (
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
    ) = (get(r, 4)?, get(r, 5)?, get(r, 6)?, get(r, 7)?);
    if columns
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
        hash,
        event,
    })
}

const TASK_COLS: &str = "id, agent, incident_id, environment, playbook, intent, scope, parent_task_id, created_at, expires_at, max_expires_at, status, status_reason";

fn task_from_row(r: &Row) -> Result<Task, StoreError> {
    let scope: &str = get(r, 6)?;
    let status: &str = get(r, 11)?;
    Ok(Task {
        id: get(r, 0)?,
        agent: get(r, 1)?,
        incident_id: get(r, 2)?,
        environment: get(r, 3)?,
        playbook: get(r, 4)?,
        intent: get(r, 5)?,
        scope: serde_json::from_str::<Scope>(scope).unwrap_or_else(|_| Scope {
            // An unreadable scope must not widen into "anything": narrow to nothing.
            actions: Some(Default::default()),
            resources: Some(Default::default()),
        }),
        parent_task_id: get(r, 7)?,
        created_at: get(r, 8)?,
        expires_at: get(r, 9)?,
        max_expires_at: get(r, 10)?,
        status: status.parse().unwrap_or(TaskStatus::Revoked),
        status_reason: get(r, 12)?,
    })
}

fn parse_enum<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, StoreError> {
    serde_json::from_value(serde_json::Value::String(s.to_string())).map_err(backend)
}

const ACTION_COLS: &str =
    "root_task_id, task_id, agent, request_id, action, resource, tier, labels, outcome, ts";

/// One `action_history` row. A tier or outcome that is not one of ours is
/// a storage failure: history must never be guessed.
fn action_from_row(r: &Row) -> Result<ActionRecord, StoreError> {
    let tier: &str = get(r, 6)?;
    let labels: &str = get(r, 7)?;
    let outcome: &str = get(r, 8)?;
    Ok(ActionRecord {
        root_task_id: get::<&str>(r, 0)?.into(),
        task_id: get::<&str>(r, 1)?.into(),
        agent: get::<&str>(r, 2)?.into(),
        request_id: get(r, 3)?,
        action: get::<&str>(r, 4)?.into(),
        resource: get::<&str>(r, 5)?.into(),
        tier: parse_enum(tier)
            .map_err(|_| backend(format!("action history holds an unknown tier {tier:?}")))?,
        labels: serde_json::from_str(labels).map_err(backend)?,
        outcome: parse_enum(outcome).map_err(|_| {
            backend(format!(
                "action history holds an unknown outcome {outcome:?}"
            ))
        })?,
        ts: get(r, 9)?,
    })
}

/// A tree's records at or after `since` with an id above `after`, in id
/// (commit) order, and the highest id among them (or `after`).
async fn tree_actions<C: GenericClient>(
    c: &C,
    root: &str,
    since: i64,
    after: i64,
) -> Result<(Vec<ActionRecord>, i64), StoreError> {
    let found = rows(
        c,
        &format!(
            "SELECT {ACTION_COLS}, id FROM action_history
             WHERE root_task_id = $1 AND id > $3 AND ts >= $2 ORDER BY id"
        ),
        &[&root, &since, &after],
    )
    .await?;
    let (mut out, mut max) = (Vec::with_capacity(found.len()), after);
    for r in &found {
        max = max.max(get::<i64>(r, 10)?);
        out.push(action_from_row(r)?);
    }
    Ok((out, max))
}

/// A tree's history (every record at or after `since`, oldest first), from
/// this process's cached copy plus the rows committed since it was read.
///
/// Exact for the same reason as SQLite's (`tree_history` in `sqlite.rs`),
/// argued here for several processes: `action_history` rows are only ever
/// inserted, by the writer, inside a commit transaction that first locks
/// the `audit_head` row, so every id is drawn (`nextval`) under that lock
/// and transactions holding it commit one after another, database-wide.
/// PostgreSQL makes a transaction visible before it releases its locks, so
/// the next holder's rows become visible only after every row with a lower
/// id (ids rolled back with a failed group are never seen by anyone). So
/// any snapshot that holds the row `m` holds every committed row with an
/// id up to `m`, and the cached copy (read up to `m`) plus the rows above
/// `m` is the full read. A copy read in a newer snapshot than the caller's
/// (row `m` not visible here) is not used: the tree is read in full.
async fn tree_history<C: GenericClient>(
    c: &C,
    trees: &TreeCache,
    root: &str,
    since: i64,
) -> Result<Arc<tollgate_core::TreeHistory>, StoreError> {
    let cached = trees.get(root, since);
    let after = cached.as_ref().map_or(0, |c| c.max_rowid);
    // The visibility check and the delta read go out together (one round
    // trip's wait); the delta is thrown away in the rare case the copy is
    // newer than this snapshot.
    let (visible, read) = tokio::join!(
        async {
            match after {
                0 => Ok(true),
                id => row_visible(c, id).await,
            }
        },
        tree_actions(c, root, since, after)
    );
    let (cached, (delta, max_id)) = match visible? {
        true => (cached, read?),
        false => (None, tree_actions(c, root, since, 0).await?),
    };
    Ok(trees.extend(root, since, cached, delta, max_id))
}

async fn row_visible<C: GenericClient>(c: &C, id: i64) -> Result<bool, StoreError> {
    let row = one(
        c,
        "SELECT EXISTS(SELECT 1 FROM action_history WHERE id = $1)",
        &[&id],
    )
    .await?;
    get(&row, 0)
}

/// A [`HistoryScan`]: the newest `SCAN_LIMIT + 1` rows of the scope at or
/// after `since` (index `(column, ts, id)`), returned oldest first.
async fn scan<C: GenericClient>(
    c: &C,
    q: &crate::HistoryScan,
) -> Result<Vec<ActionRecord>, StoreError> {
    let limit = i64::try_from(crate::SCAN_LIMIT + 1).unwrap_or(i64::MAX);
    let column = q.scope.column();
    let found = match &q.actions {
        None => {
            rows(
                c,
                &format!(
                    "SELECT {ACTION_COLS} FROM action_history WHERE {column} = $1 AND ts >= $2 ORDER BY ts DESC, id DESC LIMIT $3"
                ),
                &[&q.key, &q.since, &limit],
            )
            .await?
        }
        Some(actions) if actions.is_empty() => vec![],
        Some(actions) => {
            // Not a prepared statement: PostgreSQL plans an unnamed one for
            // the values bound, while a prepared one soon gets a generic plan,
            // which cannot see how few rows the named actions match and walks
            // every action of the key in the window instead of the
            // `(…, action, outcome, ts, id)` index (2–7 ms a scan, growing
            // with the history, seen with `EXPLAIN ANALYZE` under `bench
            // http`). The parse costs one more round trip, which the facts
            // read overlaps with its other queries.
            c.query(
                format!(
                    "SELECT {ACTION_COLS} FROM action_history WHERE {column} = $1 AND action = ANY($4) AND outcome = ANY($5) AND ts >= $2 ORDER BY ts DESC, id DESC LIMIT $3"
                )
                .as_str(),
                &[&q.key, &q.since, &limit, actions, &crate::scan_outcomes(q)],
            )
            .await
            .map_err(pg)?
        }
    };
    let mut out = found
        .iter()
        .map(action_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    out.reverse();
    Ok(out)
}

async fn count_allowed<C: GenericClient>(
    c: &C,
    agent: &str,
    since: i64,
    tier: Option<&str>,
    action: Option<&str>,
) -> Result<u64, StoreError> {
    // One statement per filter combination, each able to use an index that
    // starts with every column it fixes, so a limit costs about its own
    // count. Those naming an action are unnamed statements, as the rule
    // scans with action lists are (`scan`): a generic plan walked the
    // agent's `(agent, ts)` rows instead of `(agent, action, outcome, ts, id)`.
    const BASE: &str =
        "SELECT COUNT(*) FROM action_history WHERE outcome = 'allow' AND agent = $1 AND ts >= $2";
    let r = match (tier, action) {
        (None, None) => one(c, BASE, &[&agent, &since]).await?,
        (Some(t), None) => one(c, &format!("{BASE} AND tier = $3"), &[&agent, &since, &t]).await?,
        (None, Some(a)) => c
            .query_one(
                format!("{BASE} AND action = $3").as_str(),
                &[&agent, &since, &a],
            )
            .await
            .map_err(pg)?,
        (Some(t), Some(a)) => c
            .query_one(
                format!("{BASE} AND tier = $3 AND action = $4").as_str(),
                &[&agent, &since, &t, &a],
            )
            .await
            .map_err(pg)?,
    };
    Ok(u64::try_from(get::<i64>(&r, 0)?).unwrap_or(0))
}

async fn agent_by_id<C: GenericClient>(c: &C, id: &str) -> Result<Option<Agent>, StoreError> {
    let Some(r) = opt(
        c,
        "SELECT spiffe_id, owner, created_at, revoked FROM agents WHERE spiffe_id = $1",
        &[&id],
    )
    .await?
    else {
        return Ok(None);
    };
    Ok(Some(Agent {
        spiffe_id: get(&r, 0)?,
        owner: get(&r, 1)?,
        created_at: get(&r, 2)?,
        revoked: get(&r, 3)?,
    }))
}

async fn incident_by_id<C: GenericClient>(c: &C, id: &str) -> Result<Option<Incident>, StoreError> {
    let Some(r) = opt(
        c,
        "SELECT id, class, severity, status, updated_at FROM incidents WHERE id = $1",
        &[&id],
    )
    .await?
    else {
        return Ok(None);
    };
    Ok(Some(Incident {
        id: get(&r, 0)?,
        class: get(&r, 1)?,
        severity: parse_enum(get(&r, 2)?)?,
        status: parse_enum(get(&r, 3)?)?,
        updated_at: get(&r, 4)?,
    }))
}

async fn task_by_id<C: GenericClient>(c: &C, id: &str) -> Result<Option<Task>, StoreError> {
    opt(
        c,
        &format!("SELECT {TASK_COLS} FROM tasks WHERE id = $1"),
        &[&id],
    )
    .await?
    .map(|r| task_from_row(&r))
    .transpose()
}

async fn setting_by_key<C: GenericClient>(c: &C, key: &str) -> Result<Option<String>, StoreError> {
    opt(c, "SELECT value FROM settings WHERE key = $1", &[&key])
        .await?
        .map(|r| get(&r, 0))
        .transpose()
}

async fn evidence_exists<C: GenericClient>(
    c: &C,
    task_id: &str,
    resource: &str,
) -> Result<bool, StoreError> {
    let r = one(
        c,
        "SELECT EXISTS(SELECT 1 FROM evidence WHERE task_id = $1 AND resource = $2)",
        &[&task_id, &resource],
    )
    .await?;
    get(&r, 0)
}

fn approval_from_row(r: &Row) -> Result<Approval, StoreError> {
    serde_json::from_str(get(r, 0)?).map_err(backend)
}

async fn approval_by_id<C: GenericClient>(c: &C, id: &str) -> Result<Option<Approval>, StoreError> {
    opt(c, "SELECT body FROM approvals WHERE id = $1", &[&id])
        .await?
        .map(|r| approval_from_row(&r))
        .transpose()
}

/// Pending approvals of one request of one task, oldest first.
async fn pending_approvals<C: GenericClient>(
    c: &C,
    task_id: &str,
    request_hash: &str,
) -> Result<Vec<Approval>, StoreError> {
    rows(
        c,
        "SELECT body FROM approvals WHERE task_id = $1 AND request_hash = $2 AND status = 'pending'
         ORDER BY created_at, id",
        &[&task_id, &request_hash],
    )
    .await?
    .iter()
    .map(approval_from_row)
    .collect()
}

/// A task and its ancestors, walked up by id; run it in a snapshot
/// transaction. Stops at a missing parent, and refuses a chain longer than
/// [`MAX_ANCESTORS`] (only corrupt rows make one, a cycle among them included).
async fn lineage_of<C: GenericClient>(c: &C, task_id: &str) -> Result<Option<Lineage>, StoreError> {
    let Some(task) = task_by_id(c, task_id).await? else {
        return Ok(None);
    };
    let mut ancestors: Vec<Task> = Vec::new();
    let mut missing_parent = None;
    let mut next = task.parent_task_id.clone();
    while let Some(parent) = next {
        if ancestors.len() >= MAX_ANCESTORS {
            return Err(backend("delegation chain too deep"));
        }
        match task_by_id(c, &parent).await? {
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

/// [`Store::decision_facts`], inside the caller's snapshot transaction.
async fn facts<C: GenericClient>(
    c: &C,
    trees: &TreeCache,
    q: &FactsQuery,
) -> Result<Option<StoredFacts>, StoreError> {
    let Some(lineage) = lineage_of(c, &q.task_id).await? else {
        return Ok(None);
    };
    let task = &lineage.task;
    let root = lineage.root();
    // Everything below depends only on the lineage: issued at once, so the
    // connection pipelines the queries (one round trip's wait instead of a
    // dozen), all still in the caller's snapshot.
    let agent_counts = async {
        let mut counts = Vec::with_capacity(q.agent_counts.len());
        for ac in &q.agent_counts {
            counts.push(
                count_allowed(
                    c,
                    &task.agent,
                    ac.since,
                    ac.tier.as_deref(),
                    ac.action.as_deref(),
                )
                .await?,
            );
        }
        Ok(counts)
    };
    let presented_approval = async {
        match &q.presented_approval {
            Some(id) => approval_by_id(c, id).await,
            None => Ok(None),
        }
    };
    let scanned = async {
        let mut scanned = Vec::with_capacity(q.scans.len());
        for h in &q.scans {
            scanned.push(scan(c, h).await?);
        }
        Ok(scanned)
    };
    let quarantine_key = crate::quarantine_key(&task.agent);
    let (
        history,
        agent_counts,
        presented_approval,
        scanned,
        agent,
        incident,
        frozen,
        quarantine,
        evidence_present,
        pending_approvals,
    ) = tokio::try_join!(
        tree_history(c, trees, &root.id, root.created_at),
        agent_counts,
        presented_approval,
        scanned,
        agent_by_id(c, &task.agent),
        incident_by_id(c, &task.incident_id),
        setting_by_key(c, crate::FROZEN_KEY),
        setting_by_key(c, &quarantine_key),
        evidence_exists(c, &task.id, &q.resource),
        pending_approvals(c, &task.id, &q.request_hash),
    )?;
    Ok(Some(StoredFacts {
        scanned,
        agent,
        incident,
        frozen: frozen.as_deref() == Some("true"),
        quarantine: quarantine.filter(|r| !r.is_empty()),
        evidence_present,
        history,
        agent_counts,
        presented_approval,
        pending_approvals,
        lineage,
    }))
}

fn pep_from_row(r: &Row) -> Result<Pep, StoreError> {
    Ok(Pep {
        name: get(r, 0)?,
        key_hash: get(r, 1)?,
        created_at: get(r, 2)?,
    })
}

const APPROVER_COLS: &str = "name, role, key_hash, created_at, expires_at, disabled, last_used_at";

fn approver_from_row(r: &Row) -> Result<Approver, StoreError> {
    Ok(Approver {
        name: get(r, 0)?,
        role: get(r, 1)?,
        key_hash: get(r, 2)?,
        created_at: get(r, 3)?,
        expires_at: get(r, 4)?,
        disabled: get(r, 5)?,
        last_used_at: get(r, 6)?,
    })
}

fn limit_of(limit: usize) -> i64 {
    i64::try_from(if limit == 0 { 100 } else { limit }).unwrap_or(i64::MAX)
}

#[async_trait]
impl Store for PostgresStore {
    async fn commit(&self, batch: Batch) -> Result<Vec<u64>, StoreError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.writer
            .try_send(Job { batch, reply })
            .map_err(|e| match e {
                tokio::sync::mpsc::error::TrySendError::Full(_) => {
                    backend("the store's write queue is full")
                }
                tokio::sync::mpsc::error::TrySendError::Closed(_) => {
                    backend("the store's writer has stopped")
                }
            })?;
        answer
            .await
            .map_err(|_| backend("the store's writer dropped a commit"))?
    }

    async fn agent(&self, spiffe_id: &str) -> Result<Option<Agent>, StoreError> {
        agent_by_id(&self.client().await?, spiffe_id).await
    }

    async fn join_token(&self, token_hash: &str) -> Result<Option<JoinToken>, StoreError> {
        let c = self.client().await?;
        let Some(r) = opt(
            &c,
            "SELECT token_hash, spiffe_id, expires_at, used_at FROM join_tokens WHERE token_hash = $1",
            &[&token_hash],
        )
        .await?
        else {
            return Ok(None);
        };
        Ok(Some(JoinToken {
            token_hash: get(&r, 0)?,
            spiffe_id: get(&r, 1)?,
            expires_at: get(&r, 2)?,
            used_at: get(&r, 3)?,
        }))
    }

    async fn incident(&self, id: &str) -> Result<Option<Incident>, StoreError> {
        incident_by_id(&self.client().await?, id).await
    }

    async fn task(&self, id: &str) -> Result<Option<Task>, StoreError> {
        task_by_id(&self.client().await?, id).await
    }

    async fn lineage(&self, task_id: &str) -> Result<Option<Lineage>, StoreError> {
        let mut client = self.client().await?;
        let tx = snapshot(&mut client).await?;
        let out = lineage_of(&tx, task_id).await?;
        tx.commit().await.map_err(pg)?;
        Ok(out)
    }

    async fn credential_holder(
        &self,
        task_id: &str,
        agent: &str,
    ) -> Result<(Option<Lineage>, Option<Agent>), StoreError> {
        let mut client = self.client().await?;
        let tx = snapshot(&mut client).await?;
        // Issued together: the connection pipelines the agent's row with the
        // lineage's first, in the one snapshot.
        let out = tokio::try_join!(lineage_of(&tx, task_id), agent_by_id(&tx, agent))?;
        tx.commit().await.map_err(pg)?;
        Ok(out)
    }

    /// One recursive query (UNION, so even a cycle in corrupt rows ends),
    /// then ordered breadth first from `task_id`, siblings by creation.
    async fn descendants(&self, task_id: &str) -> Result<Vec<Task>, StoreError> {
        let c = self.client().await?;
        let found = rows(
            &c,
            &format!(
                "WITH RECURSIVE sub(id) AS (
                   SELECT id FROM tasks WHERE parent_task_id = $1
                   UNION SELECT t.id FROM tasks t JOIN sub ON t.parent_task_id = sub.id)
                 SELECT {TASK_COLS} FROM tasks WHERE id IN (SELECT id FROM sub) AND id != $1
                 ORDER BY created_at, id"
            ),
            &[&task_id],
        )
        .await?;
        let mut children: std::collections::HashMap<String, Vec<Task>> = Default::default();
        for r in &found {
            let t = task_from_row(r)?;
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

    async fn decision_facts(&self, q: &FactsQuery) -> Result<Option<StoredFacts>, StoreError> {
        let mut client = self.client().await?;
        let tx = snapshot(&mut client).await?;
        let out = facts(&tx, &self.trees, q).await?;
        tx.commit().await.map_err(pg)?;
        Ok(out)
    }

    async fn tasks(&self, f: TaskFilter) -> Result<Vec<Task>, StoreError> {
        let c = self.client().await?;
        let status = f.status.map(|s| s.as_str());
        rows(
            &c,
            &format!(
                "SELECT {TASK_COLS} FROM tasks WHERE ($1::text IS NULL OR agent = $1)
                 AND ($2::text IS NULL OR incident_id = $2) AND ($3::text IS NULL OR status = $3)
                 AND ($5::text IS NULL OR parent_task_id = $5) ORDER BY created_at, id LIMIT $4"
            ),
            &[
                &f.agent,
                &f.incident_id,
                &status,
                &limit_of(f.limit),
                &f.parent_task_id,
            ],
        )
        .await?
        .iter()
        .map(task_from_row)
        .collect()
    }

    async fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        setting_by_key(&self.client().await?, key).await
    }

    async fn pep_by_key_hash(&self, key_hash: &str) -> Result<Option<Pep>, StoreError> {
        let c = self.client().await?;
        opt(
            &c,
            "SELECT name, key_hash, created_at FROM peps WHERE key_hash = $1",
            &[&key_hash],
        )
        .await?
        .map(|r| pep_from_row(&r))
        .transpose()
    }

    async fn peps(&self) -> Result<Vec<Pep>, StoreError> {
        let c = self.client().await?;
        rows(
            &c,
            "SELECT name, key_hash, created_at FROM peps ORDER BY name",
            &[],
        )
        .await?
        .iter()
        .map(pep_from_row)
        .collect()
    }

    async fn has_evidence(&self, task_id: &str, resource: &str) -> Result<bool, StoreError> {
        evidence_exists(&self.client().await?, task_id, resource).await
    }

    async fn evidence_for_task(&self, task_id: &str) -> Result<Vec<Evidence>, StoreError> {
        let c = self.client().await?;
        rows(
            &c,
            "SELECT id, task_id, resource, kind, sha256, content, created_at FROM evidence
             WHERE task_id = $1 ORDER BY created_at, id",
            &[&task_id],
        )
        .await?
        .iter()
        .map(|r| {
            Ok(Evidence {
                id: get(r, 0)?,
                task_id: get(r, 1)?,
                resource: get(r, 2)?,
                kind: get(r, 3)?,
                sha256: get(r, 4)?,
                content: get(r, 5)?,
                created_at: get(r, 6)?,
            })
        })
        .collect()
    }

    async fn approval(&self, id: &str) -> Result<Option<Approval>, StoreError> {
        approval_by_id(&self.client().await?, id).await
    }

    async fn mcp_session(&self, id: &str) -> Result<Option<McpSession>, StoreError> {
        mcp::session(&self.client().await?, id).await
    }

    async fn abandoned_held_calls(
        &self,
        now: tollgate_core::UnixTime,
        limit: usize,
    ) -> Result<Vec<HeldCall>, StoreError> {
        mcp::abandoned_held_calls(&self.client().await?, now, limit_of(limit)).await
    }

    async fn approvals(&self, f: ApprovalFilter) -> Result<Vec<Approval>, StoreError> {
        let c = self.client().await?;
        let status = f.status.map(|s| s.as_str());
        rows(
            &c,
            "SELECT body FROM approvals WHERE ($1::text IS NULL OR status = $1)
             AND ($2::text IS NULL OR task_id = $2) AND ($3::text IS NULL OR request_hash = $3)
             ORDER BY created_at, id LIMIT $4",
            &[&status, &f.task_id, &f.request_hash, &limit_of(f.limit)],
        )
        .await?
        .iter()
        .map(approval_from_row)
        .collect()
    }

    async fn approver_by_key_hash(&self, key_hash: &str) -> Result<Option<Approver>, StoreError> {
        let c = self.client().await?;
        opt(
            &c,
            &format!("SELECT {APPROVER_COLS} FROM approvers WHERE key_hash = $1"),
            &[&key_hash],
        )
        .await?
        .map(|r| approver_from_row(&r))
        .transpose()
    }

    async fn approvers(&self) -> Result<Vec<Approver>, StoreError> {
        let c = self.client().await?;
        rows(
            &c,
            &format!("SELECT {APPROVER_COLS} FROM approvers ORDER BY name"),
            &[],
        )
        .await?
        .iter()
        .map(approver_from_row)
        .collect()
    }

    async fn actions_in_tree(
        &self,
        root_task_id: &str,
        since: i64,
    ) -> Result<Vec<ActionRecord>, StoreError> {
        // In id order from the store; oldest first, as the history is.
        let mut found = tree_actions(&self.client().await?, root_task_id, since, 0)
            .await?
            .0;
        found.sort_by_key(|r| r.ts);
        Ok(found)
    }

    async fn count_allowed_by_agent(
        &self,
        agent: &str,
        since: i64,
        tier: Option<&str>,
        action: Option<&str>,
    ) -> Result<u64, StoreError> {
        count_allowed(&self.client().await?, agent, since, tier, action).await
    }

    /// From the head row: O(log n), and shared by every process.
    async fn check_consistency(&self) -> Result<(), StoreError> {
        self.verify_log().await
    }

    async fn audit_head(&self) -> Result<AuditHead, StoreError> {
        let (range, last_hash) = read_head(&self.client().await?, false).await?;
        Ok(AuditHead {
            size: range.size(),
            root_hash: range.root(),
            last_hash,
        })
    }

    async fn audit_leaf_hashes(&self, size: u64) -> Result<Vec<[u8; 32]>, StoreError> {
        let c = self.client().await?;
        let size = i64::try_from(size).unwrap_or(i64::MAX);
        rows(
            &c,
            "SELECT hash FROM audit WHERE seq <= $1 ORDER BY seq",
            &[&size],
        )
        .await?
        .iter()
        .map(|r| Ok(leaf_hash(&hash32(get(r, 0)?)?)))
        .collect()
    }

    async fn checkpoints(&self) -> Result<Vec<Checkpoint>, StoreError> {
        let c = self.client().await?;
        rows(&c, "SELECT body FROM checkpoints ORDER BY tree_size", &[])
            .await?
            .iter()
            .map(|r| serde_json::from_str(get(r, 0)?).map_err(backend))
            .collect()
    }

    async fn audit_by_request(&self, request_id: &str) -> Result<Vec<AuditEntry>, StoreError> {
        let c = self.client().await?;
        rows(
            &c,
            &format!("SELECT {ENTRY_COLS} FROM audit WHERE request_id = $1 ORDER BY seq"),
            &[&request_id],
        )
        .await?
        .iter()
        .map(entry_from_row)
        .collect()
    }

    async fn audit(&self, q: AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
        let c = self.client().await?;
        let after = i64::try_from(q.after).unwrap_or(i64::MAX);
        rows(
            &c,
            &format!(
                "SELECT {ENTRY_COLS} FROM audit WHERE seq > $1
                 AND ($2::text IS NULL OR incident_id = $2) AND ($3::text IS NULL OR task_id = $3)
                 AND ($4::text IS NULL OR agent = $4) ORDER BY seq LIMIT $5"
            ),
            &[
                &after,
                &q.incident_id,
                &q.task_id,
                &q.agent,
                &limit_of(q.limit),
            ],
        )
        .await?
        .iter()
        .map(entry_from_row)
        .collect()
    }

    async fn console_session(&self, id_hash: &str) -> Result<Option<ConsoleSession>, StoreError> {
        let c = self.client().await?;
        let row = opt(
            &c,
            "SELECT id_hash, principal, role, via, created_at, expires_at FROM console_sessions WHERE id_hash = $1",
            &[&id_hash],
        )
        .await?;
        row.map(|r| {
            Ok(ConsoleSession {
                id_hash: get(&r, 0)?,
                principal: get(&r, 1)?,
                role: get(&r, 2)?,
                via: get(&r, 3)?,
                created_at: get(&r, 4)?,
                expires_at: get(&r, 5)?,
            })
        })
        .transpose()
    }

    async fn outbox_due(
        &self,
        created_by: i64,
        now: i64,
        limit: usize,
    ) -> Result<Vec<OutboxMessage>, StoreError> {
        let c = self.client().await?;
        rows(
            &c,
            "SELECT o.id, o.sink, o.event, o.subject, o.body, o.created_at FROM outbox o
             LEFT JOIN leases l ON l.key = 'outbox:' || o.id AND l.until > $2
             WHERE o.created_at <= $1 AND l.key IS NULL ORDER BY o.created_at, o.id LIMIT $3",
            &[&created_by, &now, &limit_of(limit)],
        )
        .await?
        .iter()
        .map(|r| {
            Ok(OutboxMessage {
                id: get(r, 0)?,
                sink: get(r, 1)?,
                event: get(r, 2)?,
                subject: get(r, 3)?,
                body: get(r, 4)?,
                created_at: get(r, 5)?,
            })
        })
        .collect()
    }
}
