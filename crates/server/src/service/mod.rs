//! The service layer: every domain operation of the gateway, whatever
//! protocol asked for it. `api/` (HTTP, AuthZEN) and `mcp/` (the MCP
//! gateway) are adapters that parse, call one function here, and map its
//! [`Error`] to their protocol in one place.
//!
//! Architecture invariants:
//! - Knows nothing of HTTP, JSON-RPC or sessions: no axum or rmcp type
//!   appears here, and nothing here imports `crate::api` or `crate::mcp`
//!   (a test in `lib.rs` checks the imports).
//! - Every outcome-deciding fact is read from the store, never from this
//!   process: the frozen flag, quarantines, task liveness, approvals and
//!   history. Two processes over one database give the same answers.
//! - A decision is `gather` (one read of the store), `judge` (pure, in
//!   `judge/`), `commit` (one atomic batch with typed preconditions); a
//!   failed precondition means gather and judge again, never a patched-up
//!   answer (`decide.rs`).
//! - The gateway-wide checks (freeze, quarantine, dead delegation chain,
//!   incident state) exist once, in `gate.rs`, and every entry point uses
//!   them; a policy evaluation's result is treated one way (`gate::Evaluated`):
//!   a malformed request is the caller's error, a failed evaluation denies and
//!   its text goes only to the log.
//! - Every change and the audit entries that record it are one commit, and
//!   nothing is answered before that commit is durable. Effects (webhooks,
//!   waking long-polls) run only after it.

// Public for the wiring in `lib.rs`, the binary and tests (the once-a-second
// loop: `approvals::sweep`, `checkpoints::maybe_checkpoint`; reload and the
// brake: `gateway`); the rest is for the adapters.
pub(crate) mod admin;
pub mod approvals;
pub(crate) mod authzen;
pub mod checkpoints;
pub(crate) mod console;
pub(crate) mod decide;
mod error;
pub(crate) mod gate;
pub mod gateway;
pub(crate) mod identity;
pub(crate) mod judge;
pub(crate) mod lifecycle;
pub(crate) mod results;
pub(crate) mod tasks;

pub use error::Error;

/// A new, time-ordered id (`req_…`, `task_…`, `apr_…`).
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}
