//! End-to-end tests: each starts the real `tollgate` binary on a free port
//! with its own data directory and drives it over HTTP and the CLI.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod adversarial;
mod approvals;
mod audit;
mod authzen;
mod authzen_certification;
mod chain;
mod console;
mod hardening;
mod harness;
mod identity;
mod lifecycle;
mod mcp;
mod mcp_replicas;
mod ocsf;
mod operations;
mod policy_changes;
mod replicas;
mod scenario;
mod telemetry;
mod walkthrough;
