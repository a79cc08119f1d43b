//! MCP sessions in the store, so that any replica can serve any session.
//!
//! rmcp keeps a session's live state (its worker, its open SSE streams) in
//! the process that created it; with a `SessionStore` configured it saves
//! the client's `initialize` parameters and, on a replica that has no such
//! session in memory, replays the handshake from them ("restore"). This
//! module is that `SessionStore` over Tollgate's [`Store`](tollgate_store::Store),
//! and the registry the `/mcp` middleware consults on every request:
//!
//! - The store row is the truth. A session without a row (never opened,
//!   ended by a `DELETE` on any replica, idle too long) is 404 on every
//!   replica, and a copy still in this process's memory is closed.
//! - The row names the task that opened the session; another task's
//!   credential presenting it is refused (the middleware audits that).
//! - `last_seen` moves at most every [`TOUCH_EVERY`] seconds per session,
//!   so a busy session costs one write every few seconds, not one per
//!   request; rows idle for `mcp.session_idle_seconds` are deleted by
//!   [`sweep`], which only the holder of the `background` lease runs.

use crate::state::AppState;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::session::{
    SessionId, SessionManager, SessionState, SessionStore, SessionStoreError,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tollgate_store::{Batch, Change, McpSession, StoreError};

/// Longest session id looked up in the store. rmcp's are UUIDs (36 bytes);
/// anything longer was not made here and is not worth a query.
pub const MAX_SESSION_ID: usize = 128;

/// Largest `initialize` parameters kept for a session (JSON bytes): what a
/// client declares about itself, bounded so a row cannot grow the store.
const MAX_INIT_BYTES: usize = 64 * 1024;

/// How stale `last_seen` may get before a request moves it (seconds).
const TOUCH_EVERY: i64 = 5;

/// Sessions handed to rmcp's restore but not yet registered: at most this
/// many (each is registered by the request that created it, at once).
const MAX_PENDING: usize = 1024;

/// Whether a header value could be a session id of ours: bounded, and only
/// the visible ASCII the MCP specification allows in one.
pub fn plausible_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_SESSION_ID && id.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

/// What the store says of a session presented with a task's credential.
pub enum Known {
    /// Opened by this task, and live.
    Own,
    /// No such session (or it idled out): 404, so the client starts anew.
    Unknown,
    /// Another task's.
    Other,
}

/// The session registry of this process, shared by the middleware and
/// rmcp (as its `SessionStore`).
pub struct Registry {
    state: Arc<AppState>,
    /// This process's live sessions, to close the ones whose row is gone.
    local: Arc<LocalSessionManager>,
    /// Session id → its `SessionState` as JSON, between rmcp saving it
    /// (after the handshake) and the middleware registering the session
    /// with its task (before the answer leaves).
    pending: Mutex<HashMap<String, String>>,
}

impl Registry {
    pub fn new(state: Arc<AppState>, local: Arc<LocalSessionManager>) -> Self {
        Self {
            state,
            local,
            pending: Mutex::default(),
        }
    }

    fn idle(&self) -> i64 {
        i64::try_from(self.state.config.mcp.session_idle_seconds).unwrap_or(i64::MAX)
    }

    /// Look a presented session up for `task_id`, moving its `last_seen`
    /// when it is stale. A session unknown to the store but alive in this
    /// process (ended elsewhere) is closed here.
    pub async fn check(&self, id: &str, task_id: &str) -> Result<Known, StoreError> {
        let now = self.state.now();
        let row = self.state.store.mcp_session(id).await?;
        let row = match row {
            Some(r) if r.last_seen.saturating_add(self.idle()) > now => r,
            _ => {
                self.close_local(id).await;
                return Ok(Known::Unknown);
            }
        };
        if row.task_id != task_id {
            return Ok(Known::Other);
        }
        if now.saturating_sub(row.last_seen) >= TOUCH_EVERY {
            let touch = Change::TouchMcpSession {
                session_id: id.to_string(),
                at: now,
            };
            // A lost touch only shortens the session's idle time.
            if let Err(e) = self
                .state
                .store
                .commit(Batch::default().change(touch))
                .await
            {
                tracing::warn!(error = %e, "could not record an MCP session's use");
            }
        }
        Ok(Known::Own)
    }

    /// Register a session rmcp just created for `task_id`. On failure the
    /// session is closed here too: a session no replica can find must not
    /// be handed out.
    pub async fn register(&self, id: &str, task_id: &str) -> Result<(), crate::service::Error> {
        let init = self.pending.lock().ok().and_then(|mut p| p.remove(id));
        let Some(init) = init else {
            self.close_local(id).await;
            return Err(crate::service::Error::Internal(
                "the MCP session's initialize parameters were not kept".into(),
            ));
        };
        let now = self.state.now();
        let row = McpSession {
            id: id.to_string(),
            task_id: task_id.to_string(),
            init,
            created_at: now,
            last_seen: now,
        };
        let put = Batch::default().change(Change::PutMcpSession(row));
        if let Err(e) = self.state.store.commit(put).await {
            self.close_local(id).await;
            return Err(e.into());
        }
        Ok(())
    }

    /// End a session everywhere (its `DELETE` succeeded here).
    pub async fn end(&self, id: &str) -> Result<(), crate::service::Error> {
        let end = Change::EndMcpSession {
            session_id: id.to_string(),
        };
        self.state
            .store
            .commit(Batch::default().change(end))
            .await?;
        Ok(())
    }

    /// Close this process's copy of a session, if it has one.
    async fn close_local(&self, id: &str) {
        let sid = SessionId::from(id);
        if self.local.has_session(&sid).await.unwrap_or(false) {
            if let Err(e) = self.local.close_session(&sid).await {
                tracing::warn!(error = %e, "could not close an ended MCP session");
            }
        }
    }
}

#[async_trait::async_trait]
impl SessionStore for Registry {
    async fn load(&self, session_id: &str) -> Result<Option<SessionState>, SessionStoreError> {
        // The middleware has checked the row (owner, idleness) already.
        let Some(row) = self.state.store.mcp_session(session_id).await? else {
            return Ok(None);
        };
        Ok(Some(serde_json::from_str(&row.init)?))
    }

    async fn store(&self, session_id: &str, state: &SessionState) -> Result<(), SessionStoreError> {
        let json = serde_json::to_string(state)?;
        if json.len() > MAX_INIT_BYTES {
            // Not kept: the middleware finds nothing to register and refuses the session.
            return Err(format!(
                "initialize parameters of {} bytes exceed {MAX_INIT_BYTES}",
                json.len()
            )
            .into());
        }
        let mut pending = self
            .pending
            .lock()
            .map_err(|_| "session registry lock poisoned")?;
        if pending.len() >= MAX_PENDING {
            // Only requests still in flight have entries; so many means
            // something left them behind: start over rather than grow.
            pending.clear();
        }
        pending.insert(session_id.to_string(), json);
        Ok(())
    }

    async fn delete(&self, _session_id: &str) -> Result<(), SessionStoreError> {
        // The middleware removes the row after rmcp answered the `DELETE`,
        // so that a failure to remove it is answered, not only logged.
        Ok(())
    }
}

/// Delete the sessions idle longer than `mcp.session_idle_seconds`, and
/// the leases that replicas which died left behind (background work: the
/// holder of the `background` lease runs it now and then).
pub async fn sweep(state: &AppState) -> Result<(), crate::service::Error> {
    let now = state.now();
    let idle = i64::try_from(state.config.mcp.session_idle_seconds).unwrap_or(i64::MAX);
    let batch = Batch::default()
        .change(Change::EndIdleMcpSessions {
            before: now.saturating_sub(idle),
        })
        .change(Change::DropExpiredLeases {
            prefix: tollgate_store::REPLICA_LEASE_PREFIX.into(),
            now,
        });
    state.store.commit(batch).await?;
    Ok(())
}
