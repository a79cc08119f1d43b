//! Policy: load, validate and evaluate a Cedar policy pack, and turn Cedar's
//! answer plus Tollgate's annotations into a [`Decision`].
//!
//! Architecture invariants:
//! - A [`PolicyPack`] is immutable and only exists if it validated: schema
//!   parses, every policy validates in strict mode, annotations are well
//!   formed, every catalog operation is a schema action. Reload builds a new
//!   pack and swaps it in; a failed build leaves the old one live.
//! - Evaluation fails closed: any evaluation error in any policy turns the
//!   answer into `deny`, because Cedar itself skips erroring policies, which
//!   would let a broken `forbid` silently stop forbidding.
//! - The Cedar request is built here from facts the gateway verified
//!   ([`ActionFacts`]); the agent contributes only the action name, the
//!   resource, its intent and parameters, all checked against the schema.
//! - The only IO is [`PolicyPack::load_dir`], which reads files and hands
//!   their text to the pure [`PolicyPack::from_sources`].

mod context_use;
mod general;
pub mod index;
pub mod mcp_schema;
mod pack;
mod request;
mod shape;
pub mod synthetic;
pub mod testing;

pub use general::GeneralRequest;
pub use pack::{
    Diagnostic, LoadOptions, PackSources, PolicyError, PolicyPack, RuleReads, SourceFile,
    OBLIGATION_EVIDENCE_BEFORE,
};
pub use request::{
    ActionFacts, AgentFacts, ApproveFacts, DelegateFacts, ResourceRef, TaskOpenFacts,
};

#[cfg(test)]
mod tests;
