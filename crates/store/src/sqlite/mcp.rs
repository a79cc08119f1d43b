//! The MCP gateway's rows on SQLite: sessions (so a restarted process
//! serves the sessions it had) and calls held for approval (so a restarted
//! process finds its previous incarnation's held calls abandoned).

use super::{backend, exec, query_one};
use crate::{Change, Conflict, HeldCall, McpSession, StoreError};
use rusqlite::{params, Connection, OptionalExtension};
use tollgate_core::UnixTime;

/// Created at open, after the main schema (`IF NOT EXISTS`: an older
/// database gains the tables, a current one is left as it is).
pub(super) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS mcp_sessions (
  id TEXT PRIMARY KEY, task_id TEXT NOT NULL, init TEXT NOT NULL,
  created_at INTEGER NOT NULL, last_seen INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS mcp_sessions_last_seen ON mcp_sessions(last_seen);
CREATE TABLE IF NOT EXISTS mcp_held_calls (
  request_id TEXT PRIMARY KEY, approval_id TEXT NOT NULL, replica TEXT NOT NULL,
  task_id TEXT NOT NULL, agent TEXT NOT NULL, held_at INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS mcp_held_calls_replica ON mcp_held_calls(replica);
"#;

/// Apply one of the MCP changes (the caller matched them); `Ok(false)` for
/// any other change.
pub(super) fn apply(tx: &Connection, change: &Change) -> Result<bool, StoreError> {
    match change {
        Change::DropExpiredLeases { prefix, now } => {
            // substr, not LIKE: the prefix is matched literally.
            exec(
                tx,
                "DELETE FROM leases WHERE substr(key, 1, length(?1)) = ?1 AND until <= ?2",
                params![prefix, now],
            )
            .map_err(backend)?;
        }
        Change::PutMcpSession(s) => {
            let exists = query_one(
                tx,
                "SELECT 1 FROM mcp_sessions WHERE id = ?1",
                params![s.id],
                |_| Ok(()),
            )
            .optional()
            .map_err(backend)?
            .is_some();
            if exists {
                return Err(Conflict::McpSessionExists {
                    session_id: s.id.clone(),
                }
                .into());
            }
            exec(
                tx,
                "INSERT INTO mcp_sessions(id, task_id, init, created_at, last_seen) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![s.id, s.task_id, s.init, s.created_at, s.last_seen],
            )
            .map_err(backend)?;
        }
        Change::TouchMcpSession { session_id, at } => {
            exec(
                tx,
                "UPDATE mcp_sessions SET last_seen = ?2 WHERE id = ?1 AND last_seen < ?2",
                params![session_id, at],
            )
            .map_err(backend)?;
        }
        Change::EndMcpSession { session_id } => {
            exec(
                tx,
                "DELETE FROM mcp_sessions WHERE id = ?1",
                params![session_id],
            )
            .map_err(backend)?;
        }
        Change::EndIdleMcpSessions { before } => {
            exec(
                tx,
                "DELETE FROM mcp_sessions WHERE last_seen < ?1",
                params![before],
            )
            .map_err(backend)?;
        }
        Change::PutHeldCall(h) => {
            exec(
                tx,
                "INSERT INTO mcp_held_calls(request_id, approval_id, replica, task_id, agent, held_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT(request_id) DO UPDATE SET approval_id = excluded.approval_id,
                   replica = excluded.replica, task_id = excluded.task_id, agent = excluded.agent,
                   held_at = excluded.held_at",
                params![h.request_id, h.approval_id, h.replica, h.task_id, h.agent, h.held_at],
            )
            .map_err(backend)?;
        }
        Change::EndHeldCall { request_id } => {
            exec(
                tx,
                "DELETE FROM mcp_held_calls WHERE request_id = ?1",
                params![request_id],
            )
            .map_err(backend)?;
        }
        _ => return Ok(false),
    }
    Ok(true)
}

pub(super) fn session(conn: &Connection, id: &str) -> Result<Option<McpSession>, StoreError> {
    conn.query_row(
        "SELECT id, task_id, init, created_at, last_seen FROM mcp_sessions WHERE id = ?1",
        params![id],
        |r| {
            Ok(McpSession {
                id: r.get(0)?,
                task_id: r.get(1)?,
                init: r.get(2)?,
                created_at: r.get(3)?,
                last_seen: r.get(4)?,
            })
        },
    )
    .optional()
    .map_err(backend)
}

pub(super) fn abandoned_held_calls(
    conn: &Connection,
    now: UnixTime,
    limit: usize,
) -> Result<Vec<HeldCall>, StoreError> {
    let limit = i64::try_from(if limit == 0 { 100 } else { limit }).unwrap_or(i64::MAX);
    let mut stmt = conn
        .prepare(
            "SELECT h.request_id, h.approval_id, h.replica, h.task_id, h.agent, h.held_at
             FROM mcp_held_calls h
             WHERE NOT EXISTS (SELECT 1 FROM leases l WHERE l.key = ?1 || h.replica AND l.until > ?2)
             ORDER BY h.held_at, h.request_id LIMIT ?3",
        )
        .map_err(backend)?;
    let rows = stmt
        .query_map(params![crate::REPLICA_LEASE_PREFIX, now, limit], |r| {
            Ok(HeldCall {
                request_id: r.get(0)?,
                approval_id: r.get(1)?,
                replica: r.get(2)?,
                task_id: r.get(3)?,
                agent: r.get(4)?,
                held_at: r.get(5)?,
            })
        })
        .map_err(backend)?;
    rows.map(|r| r.map_err(backend)).collect()
}
