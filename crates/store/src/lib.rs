//! Persistence behind one trait, [`Store`].
//!
//! Architecture invariants:
//! - Every state change and the audit events that record it are committed in
//!   one transaction ([`Store::commit`]): there is never a task without the
//!   audit entry that opened it, nor an audit entry for a change that did not
//!   happen.
//! - Audit entries are chained (see `tollgate-audit`) inside that transaction,
//!   under the store's write lock, so chain order is commit order.
//! - Preconditions (single-use join tokens, only-active tasks) are checked in
//!   the same transaction, so races resolve to exactly one winner; the loser
//!   learns which precondition failed ([`Conflict`]).
//! - A commit returns only once it is durable (SQLite: WAL with
//!   `synchronous=FULL`). Concurrent commits are grouped into one
//!   transaction, each batch in its own savepoint, so durability costs one
//!   fsync per group rather than per decision (group commit).
//! - Knows nothing of HTTP, policy or tokens.
//!
//! Every backend must pass [`conformance`] (enabled with the `conformance`
//! feature).

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tollgate_audit::checkpoint::Checkpoint;
use tollgate_audit::{AuditEntry, AuditEvent};
use tollgate_core::{
    Agent, Approval, ApprovalStatus, Incident, Lineage, Task, TaskStatus, UnixTime,
};

pub use tollgate_core::ActionRecord;

mod pg_tls;
mod postgres;
mod sqlite;
mod tree_cache;
pub use pg_tls::{tls_mode, CaFile, TlsMode, TlsOptions};
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// The setting that freezes every decision when it is `true`.
pub const FROZEN_KEY: &str = "frozen";

/// The setting that quarantines an agent (its reason; empty once released).
pub fn quarantine_key(agent: &str) -> String {
    format!("quarantine:{agent}")
}

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A precondition failed: the token was used, the task is not active, …
    #[error("conflict: {0}")]
    Conflict(Conflict),
    #[error("not found: {0}")]
    NotFound(String),
    /// The backend failed; callers must fail closed.
    #[error("storage failure: {0}")]
    Backend(String),
}

/// Which precondition of a [`Change`] failed, and on what. The messages are
/// the ones API callers see in a 409 body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Conflict {
    /// [`Change::ConsumeJoinToken`]: the token is unknown, already used, or
    /// expired (one conditional update checks all three at once).
    #[error("join token is unknown, used or expired")]
    JoinTokenSpent { token_hash: String },
    /// [`Change::RecordIncident`]: the incident is recorded with another
    /// class or severity (first report wins); these are the recorded ones.
    #[error("incident {incident_id} is recorded as class {class} severity {severity}")]
    IncidentDiffers {
        incident_id: String,
        class: String,
        severity: String,
    },
    /// [`Change::InsertTask`]: a task with this id exists.
    #[error("task {task_id} exists")]
    TaskExists { task_id: String },
    /// [`Change::RenewTask`], [`Change::RequireTaskLive`] (the task is
    /// missing, ended, or expired at `now`) and [`Change::EndTask`] (the task
    /// is missing or ended).
    #[error("task {task_id} is not active")]
    TaskNotLive { task_id: String },
    /// [`Change::RenewTask`]: the task is live, but the new expiry is past
    /// its hard maximum.
    #[error("task {task_id} cannot be renewed past {max_expires_at}")]
    RenewPastMax {
        task_id: String,
        max_expires_at: UnixTime,
    },
    /// [`Change::InsertApproval`]: another approval of the same request
    /// (task and request hash) is pending.
    #[error("an approval for this request is already pending ({existing_id})")]
    ApprovalPending {
        task_id: String,
        request_hash: String,
        existing_id: String,
    },
    /// [`Change::InsertApproval`]: an approval with this id exists.
    #[error("approval {approval_id} exists")]
    ApprovalExists { approval_id: String },
    /// [`Change::UpdateApproval`]: the approval is missing or its stored
    /// version is not `expected` (another transition won).
    #[error("approval {approval_id} changed concurrently")]
    ApprovalVersion { approval_id: String, expected: u64 },
    /// [`Change::RecordActionResult`]: a result for this request was recorded.
    #[error("a result for {request_id} was already recorded")]
    ResultRecorded { request_id: String },
    /// [`Change::AcquireLease`]: another holder's lease on `key` is unexpired.
    #[error("{key} is held by {holder} until {until}")]
    LeaseHeld {
        key: String,
        holder: String,
        until: UnixTime,
    },
    /// [`Change::PutMcpSession`]: a session with this id exists.
    #[error("MCP session {session_id} exists")]
    McpSessionExists { session_id: String },
}

/// Which precondition failed, decided the same way by every backend from
/// what it read in the failing transaction.
impl Conflict {
    /// A `RenewTask` that changed nothing: past the hard maximum if the task
    /// is still live (`live_max` is its `max_expires_at`), else not live.
    pub fn of_renewal(task_id: &str, expires_at: UnixTime, live_max: Option<UnixTime>) -> Self {
        match live_max {
            Some(max_expires_at) if expires_at > max_expires_at => Conflict::RenewPastMax {
                task_id: task_id.to_string(),
                max_expires_at,
            },
            _ => Conflict::TaskNotLive {
                task_id: task_id.to_string(),
            },
        }
    }

    /// An `AcquireLease` refused: another holder's lease (`held`: holder and
    /// expiry, as stored) is unexpired at `now`.
    pub fn of_lease(
        key: &str,
        holder: &str,
        held: Option<(String, UnixTime)>,
        now: UnixTime,
    ) -> Option<Self> {
        held.filter(|(h, until)| h != holder && *until > now)
            .map(|(other, until)| Conflict::LeaseHeld {
                key: key.to_string(),
                holder: other,
                until,
            })
    }
}

impl From<Conflict> for StoreError {
    fn from(c: Conflict) -> Self {
        StoreError::Conflict(c)
    }
}

/// One state change. Changes with preconditions fail the whole batch with
/// [`StoreError::Conflict`] naming the precondition when it does not hold.
#[derive(Debug, Clone)]
pub enum Change {
    UpsertAgent(Agent),
    SetAgentRevoked {
        spiffe_id: String,
        revoked: bool,
    },
    PutJoinToken(JoinToken),
    /// Delete an agent's join tokens that were never used.
    DropUnusedJoinTokens {
        spiffe_id: String,
    },
    /// Precondition: the token exists, is unused and unexpired at `now`
    /// ([`Conflict::JoinTokenSpent`]).
    ConsumeJoinToken {
        token_hash: String,
        now: UnixTime,
    },
    UpsertIncident(Incident),
    /// Record an incident unless it exists; if it exists with another class
    /// or severity the batch fails with [`Conflict::IncidentDiffers`] (first
    /// report wins).
    RecordIncident(Incident),
    /// Precondition: no task has this id ([`Conflict::TaskExists`]).
    InsertTask(Task),
    /// Precondition: the task is active and unexpired at `now`
    /// ([`Conflict::TaskNotLive`]), and `expires_at` is within its hard
    /// maximum ([`Conflict::RenewPastMax`]).
    RenewTask {
        task_id: String,
        expires_at: UnixTime,
        now: UnixTime,
    },
    /// Asserts the task is active and unexpired at `now`
    /// ([`Conflict::TaskNotLive`]); changes nothing. Decisions carry it so
    /// that a revocation racing a decision wins.
    RequireTaskLive {
        task_id: String,
        now: UnixTime,
    },
    /// Precondition: the task is active ([`Conflict::TaskNotLive`]).
    EndTask {
        task_id: String,
        status: TaskStatus,
        reason: String,
    },
    /// Revoke a task if it is still active (no precondition: revoking
    /// something that just ended on its own is not an error).
    RevokeTask {
        task_id: String,
        reason: String,
    },
    /// Revoke every active descendant of a task, found inside the commit, so
    /// a child delegated concurrently cannot slip through.
    EndDescendants {
        root_id: String,
        reason: String,
    },
    /// End every active task of an agent (no precondition).
    EndAgentTasks {
        spiffe_id: String,
        reason: String,
    },
    PutSetting {
        key: String,
        value: String,
    },
    PutPep(Pep),
    /// Precondition: the PEP exists (`NotFound` otherwise); its key stops
    /// working with this commit.
    RemovePep {
        name: String,
    },
    PutEvidence(Evidence),
    /// Precondition: no other approval of the same task and request hash is
    /// pending ([`Conflict::ApprovalPending`]) and the id is new
    /// ([`Conflict::ApprovalExists`]).
    InsertApproval(Approval),
    /// Optimistic update: fails with [`Conflict::ApprovalVersion`] unless the
    /// stored version is `expected_version`. The new value carries the
    /// incremented version.
    UpdateApproval {
        approval: Approval,
        expected_version: u64,
    },
    /// Adds an approver or replaces its key, role and expiry (enabling it).
    PutApprover(Approver),
    /// Precondition: the approver exists (`NotFound` otherwise). Its key
    /// stops working with this commit; votes it cast stay as cast.
    RemoveApprover {
        name: String,
    },
    /// Precondition: the approver exists (`NotFound` otherwise).
    SetApproverDisabled {
        name: String,
        disabled: bool,
    },
    /// Best effort bookkeeping: no precondition, no audit entry needed.
    TouchApprover {
        name: String,
        at: UnixTime,
    },
    RecordAction(ActionRecord),
    /// A signed checkpoint (idempotent per tree size).
    PutCheckpoint(Checkpoint),
    /// Take (or extend) a lease on `key` until `until`: how work that must
    /// run once at a time (a rollback of one delegation tree) is claimed
    /// across every process over this store. Precondition: no other
    /// holder's lease on `key` is unexpired at `now` ([`Conflict::LeaseHeld`]);
    /// an expired one is taken over, so a holder that died frees the key.
    AcquireLease {
        key: String,
        holder: String,
        until: UnixTime,
        now: UnixTime,
    },
    /// Give a lease back (no precondition: a lease that expired and was
    /// taken over by another holder is left to it).
    ReleaseLease {
        key: String,
        holder: String,
    },
    /// Start a console session (idempotent per id hash).
    PutConsoleSession(ConsoleSession),
    /// End a console session (sign-out; no precondition).
    EndConsoleSession {
        id_hash: String,
    },
    /// Forget console sessions that expired before `before`.
    PurgeConsoleSessions {
        before: UnixTime,
    },
    /// Queue a notification in the commit of what it reports, so it is
    /// neither lost when the process that committed dies nor sent by every
    /// process ([`OutboxMessage`]). Idempotent per id.
    Enqueue(OutboxMessage),
    /// Remove a delivered (or given up) notification and the lease that
    /// claimed it (no precondition).
    Dequeue {
        id: String,
    },
    /// Delete the leases on keys starting with `prefix` that expired at
    /// `now` (no precondition): replicas that died leave their
    /// `replica:<id>` lease behind.
    DropExpiredLeases {
        prefix: String,
        now: UnixTime,
    },
    /// Register an MCP session. Precondition: the id is new
    /// ([`Conflict::McpSessionExists`]), so a session is never taken over.
    PutMcpSession(McpSession),
    /// The session was used at `at` (no precondition; `last_seen` only moves
    /// forward, and a session already gone stays gone).
    TouchMcpSession {
        session_id: String,
        at: UnixTime,
    },
    /// Remove a session (no precondition).
    EndMcpSession {
        session_id: String,
    },
    /// Remove every session last seen before `before` (no precondition).
    EndIdleMcpSessions {
        before: UnixTime,
    },
    /// Record (or move) a call held for approval (upsert by request id).
    PutHeldCall(HeldCall),
    /// Forget a held call: it ended, one way or another (no precondition).
    EndHeldCall {
        request_id: String,
    },
    /// Precondition: no result was recorded for `request_id` yet
    /// ([`Conflict::ResultRecorded`]).
    RecordActionResult {
        request_id: String,
        task_id: String,
        status: String,
        at: UnixTime,
    },
}

/// The lease a live replica keeps renewed (`Change::AcquireLease`, with the
/// replica's id as holder): [`Store::abandoned_held_calls`] reads a held
/// call's replica as dead once this lease is missing or expired.
pub fn replica_lease_key(replica: &str) -> String {
    format!("{REPLICA_LEASE_PREFIX}{replica}")
}

/// The prefix of every [`replica_lease_key`].
pub const REPLICA_LEASE_PREFIX: &str = "replica:";

/// An MCP session of the gateway, in the store so that every replica can
/// serve it: who opened it, and what the client said when it did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpSession {
    pub id: String,
    /// The task whose credential opened the session; no other task's
    /// credential may use it.
    pub task_id: String,
    /// The client's `initialize` parameters (JSON), replayed by a replica
    /// that restores the session.
    pub init: String,
    pub created_at: UnixTime,
    /// The last request in it (kept to a few seconds).
    pub last_seen: UnixTime,
}

/// A `tools/call` held open for approval, and which replica holds it: if
/// that replica stops, the call is abandoned and its approval withdrawn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldCall {
    /// The request id of the decision that held it: one call.
    pub request_id: String,
    pub approval_id: String,
    /// The holding replica's id (its lease is [`replica_lease_key`]).
    pub replica: String,
    pub task_id: String,
    /// The calling agent's SPIFFE ID.
    pub agent: String,
    pub held_at: UnixTime,
}

/// The log's current extent: how many entries and their Merkle root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditHead {
    pub size: u64,
    pub root_hash: [u8; 32],
    pub last_hash: [u8; 32],
}

/// A human who may decide approvals, authenticated by an API key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approver {
    pub name: String,
    pub role: String,
    pub key_hash: String,
    pub created_at: UnixTime,
    /// After this the key no longer authenticates; `None` = no expiry.
    #[serde(default)]
    pub expires_at: Option<UnixTime>,
    /// A disabled approver's key is refused until re-enabled.
    #[serde(default)]
    pub disabled: bool,
    /// When the key last authenticated (kept to the minute).
    #[serde(default)]
    pub last_used_at: Option<UnixTime>,
}

impl Approver {
    /// Why this approver's key may not be used at `now`, if it may not.
    pub fn refusal(&self, now: UnixTime) -> Option<String> {
        if self.disabled {
            return Some(format!("approver {} is disabled", self.name));
        }
        match self.expires_at {
            Some(exp) if now >= exp => Some(format!("approver {}'s key has expired", self.name)),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct ApprovalFilter {
    pub status: Option<ApprovalStatus>,
    pub task_id: Option<String>,
    pub request_hash: Option<String>,
    pub limit: usize,
}

/// Diagnostic evidence attached to a task, content-addressed by SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    pub id: String,
    pub task_id: String,
    /// `Type::id` of the resource the evidence is about.
    pub resource: String,
    pub kind: String,
    pub sha256: String,
    pub content: Option<String>,
    pub created_at: UnixTime,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinToken {
    pub token_hash: String,
    pub spiffe_id: String,
    pub expires_at: UnixTime,
    pub used_at: Option<UnixTime>,
}

/// A policy enforcement point allowed to call the AuthZEN API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pep {
    pub name: String,
    pub key_hash: String,
    pub created_at: UnixTime,
}

/// A signed-in session of the web console. The browser holds a random
/// secret in a cookie; the store holds only its SHA-256, so reading the
/// database does not let anyone act as a signed-in approver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleSession {
    pub id_hash: String,
    /// The approver's name, or `admin`.
    pub principal: String,
    /// The approver's role (`admin` for the admin).
    pub role: String,
    /// How they signed in: `key`, `oidc` or `admin-token`.
    pub via: String,
    pub created_at: UnixTime,
    /// Not extended by use: a console session is short and ends on its own.
    pub expires_at: UnixTime,
}

/// A notification (a webhook delivery) waiting to be sent. Queued by
/// [`Change::Enqueue`] in the same commit as the change it reports; a
/// process claims it with the lease [`OutboxMessage::lease_key`] before
/// sending, and removes it with [`Change::Dequeue`] once sent: delivered at
/// least once, by one process at a time, whichever process queued it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxMessage {
    pub id: String,
    /// Where it goes: the webhook's name (its URL stays in configuration).
    pub sink: String,
    /// The event it reports (`approval.created`, …).
    pub event: String,
    /// What it is about (an approval id, a task id), for the audit entry
    /// that records a delivery given up.
    pub subject: String,
    /// The payload, as sent.
    pub body: String,
    pub created_at: UnixTime,
}

impl OutboxMessage {
    /// The lease that claims this message for delivery.
    pub fn lease_key(id: &str) -> String {
        format!("outbox:{id}")
    }
}

/// Changes and the audit events that record them, committed atomically.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub changes: Vec<Change>,
    pub audit: Vec<AuditEvent>,
}

impl Batch {
    pub fn audit_only(event: AuditEvent) -> Self {
        Self {
            changes: vec![],
            audit: vec![event],
        }
    }
    pub fn change(mut self, c: Change) -> Self {
        self.changes.push(c);
        self
    }
    pub fn event(mut self, e: AuditEvent) -> Self {
        self.audit.push(e);
        self
    }
}

#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    pub agent: Option<String>,
    /// Direct children of this task.
    pub parent_task_id: Option<String>,
    pub incident_id: Option<String>,
    pub status: Option<TaskStatus>,
    pub limit: usize,
}

#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub incident_id: Option<String>,
    pub task_id: Option<String>,
    pub agent: Option<String>,
    /// Only entries with `seq > after`.
    pub after: u64,
    pub limit: usize,
}

/// What [`Store::decision_facts`] reads for one decision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FactsQuery {
    pub task_id: String,
    /// `Type::id` of the resource, for evidence.
    pub resource: String,
    /// The approval the request presents, if any.
    pub presented_approval: Option<String>,
    pub request_hash: String,
    /// Agent-wide counts of allowed actions (rate limits), of the task's agent.
    pub agent_counts: Vec<AgentCount>,
    /// Past actions by scope, for temporal rules (see [`HistoryScan`]).
    pub scans: Vec<HistoryScan>,
}

/// Whose past actions a [`HistoryScan`] reads (the tree's are
/// [`StoredFacts::history`] already).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanScope {
    /// Every action of this agent (SPIFFE ID), in any task.
    Agent,
    /// Every action taken for this incident, by any agent.
    Incident,
    /// Every action on this resource (`Type::id`).
    Resource,
}

impl ScanScope {
    /// The `action_history` column it reads, indexed with `ts` in both stores.
    pub fn column(self) -> &'static str {
        match self {
            ScanScope::Agent => "agent",
            ScanScope::Incident => "incident_id",
            ScanScope::Resource => "resource",
        }
    }
}

/// The actions of one scope at or after `since`, oldest first: all of them,
/// or [`SCAN_LIMIT`] + 1 of them, which says the scope is too busy to read
/// whole (a rule over it fails closed; which ones come back then is not
/// specified).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryScan {
    pub scope: ScanScope,
    pub key: String,
    /// Inclusive.
    pub since: UnixTime,
    /// Only these actions (`None`: every action). The rules over a scope
    /// usually name what they look for (an action, or a label or tier the
    /// catalog resolves to actions), so a busy scope costs its matching
    /// rows, not all of them, on an index `(column, action, ts)`, and the
    /// limit counts matching rows only.
    pub actions: Option<Vec<String>>,
    /// With `actions`: only these outcomes (`allow`, `deny`,
    /// `approval_required`; `None`: any), on an index
    /// `(column, action, outcome, ts)`.
    pub outcomes: Option<Vec<String>>,
}

/// The outcomes a scan with named actions reads: those it names, or all.
pub(crate) fn scan_outcomes(q: &HistoryScan) -> Vec<String> {
    q.outcomes.clone().unwrap_or_else(|| {
        ["allow", "deny", "approval_required"]
            .map(String::from)
            .to_vec()
    })
}

/// The most past actions one scan returns whole.
pub const SCAN_LIMIT: usize = 10_000;

/// One agent-wide count of allowed actions (see [`Store::count_allowed_by_agent`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentCount {
    /// Inclusive.
    pub since: UnixTime,
    pub tier: Option<String>,
    pub action: Option<String>,
}

/// Everything a decision needs from the store, read in one transaction so
/// that every part describes the same moment.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredFacts {
    pub lineage: Lineage,
    /// The task's agent record.
    pub agent: Option<Agent>,
    /// The task's incident.
    pub incident: Option<Incident>,
    /// The setting `frozen` is `true`.
    pub frozen: bool,
    /// The setting `quarantine:<task's agent>`, if set and not empty.
    pub quarantine: Option<String>,
    /// The task holds evidence about the query's resource.
    pub evidence_present: bool,
    /// Every record of the tree (root = `lineage.root()`) since the root's
    /// `created_at`, oldest first, as [`Store::actions_in_tree`] orders them,
    /// with their series (what the summary and tree rules read).
    pub history: std::sync::Arc<tollgate_core::TreeHistory>,
    /// One count per [`FactsQuery::agent_counts`], in the same order.
    pub agent_counts: Vec<u64>,
    /// One list per [`FactsQuery::scans`], in the same order.
    pub scanned: Vec<Vec<ActionRecord>>,
    /// The presented approval by id, whatever task it belongs to (the
    /// caller checks that it fits).
    pub presented_approval: Option<Approval>,
    /// Pending approvals of (task, request hash), oldest first.
    pub pending_approvals: Vec<Approval>,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Apply `batch` atomically and durably; returns the audit sequence numbers.
    async fn commit(&self, batch: Batch) -> Result<Vec<u64>, StoreError>;

    async fn agent(&self, spiffe_id: &str) -> Result<Option<Agent>, StoreError>;
    async fn join_token(&self, token_hash: &str) -> Result<Option<JoinToken>, StoreError>;
    async fn incident(&self, id: &str) -> Result<Option<Incident>, StoreError>;
    async fn task(&self, id: &str) -> Result<Option<Task>, StoreError>;
    /// A task and its ancestors, read together (one snapshot). `None` if
    /// the task does not exist. A chain of more than
    /// [`tollgate_core::lineage::MAX_ANCESTORS`] ancestors is a `Backend` error.
    async fn lineage(&self, task_id: &str) -> Result<Option<Lineage>, StoreError>;
    /// What checking a task credential reads, in one snapshot: the task's
    /// lineage (as [`Store::lineage`]) and the agent `agent`, the
    /// credential's subject. Each is `None` if it does not exist.
    async fn credential_holder(
        &self,
        task_id: &str,
        agent: &str,
    ) -> Result<(Option<Lineage>, Option<Agent>), StoreError>;
    /// Every task delegated from `task_id` at any depth, ended ones
    /// included, a parent always before its children (one snapshot).
    async fn descendants(&self, task_id: &str) -> Result<Vec<Task>, StoreError>;
    /// Everything a decision on `q.task_id` needs, read in one transaction;
    /// `None` if the task does not exist.
    async fn decision_facts(&self, q: &FactsQuery) -> Result<Option<StoredFacts>, StoreError>;
    async fn tasks(&self, filter: TaskFilter) -> Result<Vec<Task>, StoreError>;
    async fn setting(&self, key: &str) -> Result<Option<String>, StoreError>;
    async fn pep_by_key_hash(&self, key_hash: &str) -> Result<Option<Pep>, StoreError>;
    /// Every PEP, by name.
    async fn peps(&self) -> Result<Vec<Pep>, StoreError>;
    /// Whether the task holds evidence about `resource` (`Type::id`).
    async fn has_evidence(&self, task_id: &str, resource: &str) -> Result<bool, StoreError>;
    /// Evidence attached to a task, oldest first.
    async fn evidence_for_task(&self, task_id: &str) -> Result<Vec<Evidence>, StoreError>;
    async fn approval(&self, id: &str) -> Result<Option<Approval>, StoreError>;
    /// Oldest first.
    async fn approvals(&self, filter: ApprovalFilter) -> Result<Vec<Approval>, StoreError>;
    async fn approver_by_key_hash(&self, key_hash: &str) -> Result<Option<Approver>, StoreError>;
    /// Every approver, by name.
    async fn approvers(&self) -> Result<Vec<Approver>, StoreError>;
    /// Actions of a delegation tree since `since` (inclusive), oldest first.
    async fn actions_in_tree(
        &self,
        root_task_id: &str,
        since: UnixTime,
    ) -> Result<Vec<ActionRecord>, StoreError>;
    /// How many actions one agent was allowed, across all its tasks, at or
    /// after `since`; only of `tier` and only `action` when given (the
    /// agent-wide rate limits). Counted in the store, so the cost follows
    /// the allowed actions that match, not everything the agent did.
    async fn count_allowed_by_agent(
        &self,
        agent: &str,
        since: UnixTime,
        tier: Option<&str>,
        action: Option<&str>,
    ) -> Result<u64, StoreError>;
    /// Check the stored log against itself and its stored checkpoints: no
    /// gaps, every entry re-hashed and linked, each checkpoint's root equal
    /// to the log's at its size. The server refuses to start on a log that
    /// fails this (signatures are `audit verify`'s job).
    async fn check_consistency(&self) -> Result<(), StoreError>;
    /// Size and Merkle root of the whole log, in O(log n).
    async fn audit_head(&self) -> Result<AuditHead, StoreError>;
    /// Merkle leaf hashes of the first `size` entries, for proofs.
    async fn audit_leaf_hashes(&self, size: u64) -> Result<Vec<[u8; 32]>, StoreError>;
    /// Signed checkpoints, ascending by tree size.
    async fn checkpoints(&self) -> Result<Vec<Checkpoint>, StoreError>;
    /// Entries carrying `request_id`, oldest first.
    async fn audit_by_request(&self, request_id: &str) -> Result<Vec<AuditEntry>, StoreError>;
    async fn audit(&self, query: AuditQuery) -> Result<Vec<AuditEntry>, StoreError>;
    /// A console session by the hash of its secret, if it exists (expired
    /// or not: the caller checks `expires_at`).
    async fn console_session(&self, id_hash: &str) -> Result<Option<ConsoleSession>, StoreError>;
    /// Queued notifications created at or before `created_by` whose claim
    /// lease is not held at `now`, oldest first, at most `limit`.
    async fn outbox_due(
        &self,
        created_by: UnixTime,
        now: UnixTime,
        limit: usize,
    ) -> Result<Vec<OutboxMessage>, StoreError>;
    /// One MCP session by id, expired or not (the caller judges idleness).
    async fn mcp_session(&self, id: &str) -> Result<Option<McpSession>, StoreError>;
    /// Held calls whose replica's lease ([`replica_lease_key`]) is missing
    /// or expired at `now`, oldest first, at most `limit`.
    async fn abandoned_held_calls(
        &self,
        now: UnixTime,
        limit: usize,
    ) -> Result<Vec<HeldCall>, StoreError>;
}
