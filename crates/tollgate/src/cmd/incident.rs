//! `tollgate incident resolve|update`.

use crate::client::{Client, IncidentChange};
use crate::Conn;
use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum IncidentCmd {
    /// Mark an incident resolved: every task bound to it is revoked at once.
    Resolve {
        /// The incident id (e.g. INC-4711).
        id: String,
        /// Why (recorded in the audit log).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Change status, class or severity; open tasks are re-evaluated.
    Update {
        /// The incident id (e.g. INC-4711).
        id: String,
        /// New status; resolved and closed revoke every task bound to it.
        #[arg(long, value_parser = ["open", "resolved", "closed"])]
        status: Option<String>,
        /// New class (e.g. malware, ddos); tasks whose playbook no longer fits are revoked.
        #[arg(long)]
        class: Option<String>,
        /// New severity.
        #[arg(long, value_parser = ["low", "medium", "high", "critical"])]
        severity: Option<String>,
        /// Why (recorded in the audit log).
        #[arg(long)]
        reason: Option<String>,
    },
}

pub fn run(cmd: IncidentCmd, conn: &Conn) -> Result<()> {
    let c = Client::new(conn)?;
    let (id, change) = match cmd {
        IncidentCmd::Resolve { id, reason } => (
            id,
            IncidentChange {
                status: Some("resolved".into()),
                class: None,
                severity: None,
                reason,
            },
        ),
        IncidentCmd::Update {
            id,
            status,
            class,
            severity,
            reason,
        } => (
            id,
            IncidentChange {
                status,
                class,
                severity,
                reason,
            },
        ),
    };
    let updated = c.update_incident(&id, &change)?;
    let incident = &updated.incident;
    println!(
        "incident {}: {} / {} / {}",
        id, incident.status, incident.class, incident.severity
    );
    println!(
        "revoked tasks: {}",
        serde_json::to_string(&updated.revoked_tasks)?
    );
    println!(
        "kept tasks:    {}",
        serde_json::to_string(&updated.kept_tasks)?
    );
    Ok(())
}
