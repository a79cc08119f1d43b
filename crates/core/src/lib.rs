//! Tollgate's pure core: domain types, the tool catalog and decisions.
//!
//! Architecture invariant: this crate does no IO and knows nothing of HTTP,
//! storage, Cedar or tokens. Time enters only through the [`Clock`] trait so
//! that every TTL rule can be tested without sleeping.

pub mod approval;
pub mod catalog;
pub mod clock;
pub mod decision;
pub mod events;
pub mod history;
pub mod lineage;
pub mod model;
pub mod playbook;
pub mod shared_str;
pub mod spiffe;
pub mod temporal;
pub mod text;
pub mod tree_history;

pub use approval::{Approval, ApprovalError, ApprovalStatus, Vote};
pub use catalog::{
    parse_url_host, split_resource_key, url_host, AttributeError, AttributeSource, Catalog,
    CatalogError, Derived, Operation, Tier, ToolBinding,
};
pub use clock::{Clock, ManualClock, SystemClock, UnixTime};
pub use decision::{Decision, Outcome};
pub use events::EventKind;
pub use history::{ActionRecord, HistorySummary};
pub use lineage::Lineage;
pub use model::{
    check_receiver, child_lifetime, Agent, DelegationError, Incident, IncidentRef, IncidentStatus,
    Scope, Severity, Task, TaskStatus,
};
pub use playbook::{DeviationResponse, Playbooks, StepVerdict};
pub use shared_str::{SharedStr, SharedStrs};
pub use spiffe::{SpiffeId, SpiffeIdError};
pub use tree_history::TreeHistory;

/// Lowercase hex SHA-256 of `data`; used for token hashes and content addresses.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}
