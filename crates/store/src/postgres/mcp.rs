//! The MCP gateway's rows on PostgreSQL, as `sqlite/mcp.rs`: sessions that
//! any replica can serve, and calls held for approval with the replica
//! that holds each.

use super::{exec, get, opt, rows};
use crate::{Change, Conflict, HeldCall, McpSession, StoreError};
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;
use tollgate_core::UnixTime;

/// The migration that adds them, appended to `MIGRATIONS`.
pub(super) const MIGRATION: &str = r#"
CREATE TABLE mcp_sessions (
  id TEXT COLLATE "C" PRIMARY KEY, task_id TEXT COLLATE "C" NOT NULL, init TEXT NOT NULL,
  created_at BIGINT NOT NULL, last_seen BIGINT NOT NULL);
CREATE INDEX mcp_sessions_last_seen ON mcp_sessions(last_seen);
CREATE TABLE mcp_held_calls (
  request_id TEXT COLLATE "C" PRIMARY KEY, approval_id TEXT COLLATE "C" NOT NULL,
  replica TEXT COLLATE "C" NOT NULL, task_id TEXT COLLATE "C" NOT NULL,
  agent TEXT COLLATE "C" NOT NULL, held_at BIGINT NOT NULL);
CREATE INDEX mcp_held_calls_replica ON mcp_held_calls(replica);
"#;

/// Apply one of the MCP changes; `Ok(false)` for any other change.
pub(super) async fn apply<C: GenericClient>(tx: &C, change: &Change) -> Result<bool, StoreError> {
    match change {
        Change::DropExpiredLeases { prefix, now } => {
            // substr, not LIKE: the prefix is matched literally.
            exec(
                tx,
                "DELETE FROM leases WHERE substr(key, 1, length($1)) = $1 AND until <= $2",
                &[prefix, now],
            )
            .await?;
        }
        Change::PutMcpSession(s) => {
            // ON CONFLICT DO NOTHING and the count: a failed statement would
            // abort the whole group's transaction.
            let n = exec(
                tx,
                "INSERT INTO mcp_sessions(id, task_id, init, created_at, last_seen)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT(id) DO NOTHING",
                &[&s.id, &s.task_id, &s.init, &s.created_at, &s.last_seen],
            )
            .await?;
            if n == 0 {
                return Err(Conflict::McpSessionExists {
                    session_id: s.id.clone(),
                }
                .into());
            }
        }
        Change::TouchMcpSession { session_id, at } => {
            exec(
                tx,
                "UPDATE mcp_sessions SET last_seen = $2 WHERE id = $1 AND last_seen < $2",
                &[session_id, at],
            )
            .await?;
        }
        Change::EndMcpSession { session_id } => {
            exec(tx, "DELETE FROM mcp_sessions WHERE id = $1", &[session_id]).await?;
        }
        Change::EndIdleMcpSessions { before } => {
            exec(
                tx,
                "DELETE FROM mcp_sessions WHERE last_seen < $1",
                &[before],
            )
            .await?;
        }
        Change::PutHeldCall(h) => {
            exec(
                tx,
                "INSERT INTO mcp_held_calls(request_id, approval_id, replica, task_id, agent, held_at)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT(request_id) DO UPDATE SET approval_id = excluded.approval_id,
                   replica = excluded.replica, task_id = excluded.task_id, agent = excluded.agent,
                   held_at = excluded.held_at",
                &[&h.request_id, &h.approval_id, &h.replica, &h.task_id, &h.agent, &h.held_at],
            )
            .await?;
        }
        Change::EndHeldCall { request_id } => {
            exec(
                tx,
                "DELETE FROM mcp_held_calls WHERE request_id = $1",
                &[request_id],
            )
            .await?;
        }
        _ => return Ok(false),
    }
    Ok(true)
}

pub(super) async fn session<C: GenericClient>(
    c: &C,
    id: &str,
) -> Result<Option<McpSession>, StoreError> {
    let Some(r) = opt(
        c,
        "SELECT id, task_id, init, created_at, last_seen FROM mcp_sessions WHERE id = $1",
        &[&id],
    )
    .await?
    else {
        return Ok(None);
    };
    Ok(Some(McpSession {
        id: get(&r, 0)?,
        task_id: get(&r, 1)?,
        init: get(&r, 2)?,
        created_at: get(&r, 3)?,
        last_seen: get(&r, 4)?,
    }))
}

fn held_from_row(r: &Row) -> Result<HeldCall, StoreError> {
    Ok(HeldCall {
        request_id: get(r, 0)?,
        approval_id: get(r, 1)?,
        replica: get(r, 2)?,
        task_id: get(r, 3)?,
        agent: get(r, 4)?,
        held_at: get(r, 5)?,
    })
}

pub(super) async fn abandoned_held_calls<C: GenericClient>(
    c: &C,
    now: UnixTime,
    limit: i64,
) -> Result<Vec<HeldCall>, StoreError> {
    rows(
        c,
        "SELECT h.request_id, h.approval_id, h.replica, h.task_id, h.agent, h.held_at
         FROM mcp_held_calls h
         WHERE NOT EXISTS (SELECT 1 FROM leases l WHERE l.key = $1 || h.replica AND l.until > $2)
         ORDER BY h.held_at, h.request_id LIMIT $3",
        &[&crate::REPLICA_LEASE_PREFIX, &now, &limit],
    )
    .await?
    .iter()
    .map(held_from_row)
    .collect()
}
