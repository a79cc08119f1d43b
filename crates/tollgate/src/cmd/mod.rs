//! One module per command group. Each talks to the server through
//! [`crate::client::Client`] (or works offline on files) and prints through
//! the crate's escaping `println!` family.

pub mod agent;
pub mod approvals;
pub mod approver;
pub mod audit;
pub mod bench;
pub mod bench_rules;
pub mod demo;
pub mod freeze;
pub mod incident;
pub mod init;
pub mod mcp;
pub mod pep;
pub mod policy;
pub mod replay;
pub mod serve;
pub mod shadow;
pub mod store;
pub mod task;
pub mod tools;
