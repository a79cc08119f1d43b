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
        /// Print the server's JSON instead of text.
        #[arg(long)]
        json: bool,
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
        /// Print the server's JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: IncidentCmd, conn: &Conn) -> Result<()> {
    let c = Client::new(conn)?;
    let (id, change, json) = match cmd {
        IncidentCmd::Resolve { id, reason, json } => (
            id,
            IncidentChange {
                status: Some("resolved".into()),
                class: None,
                severity: None,
                reason,
            },
            json,
        ),
        IncidentCmd::Update {
            id,
            status,
            class,
            severity,
            reason,
            json,
        } => (
            id,
            IncidentChange {
                status,
                class,
                severity,
                reason,
            },
            json,
        ),
    };
    let answer = c.update_incident(&id, &change)?;
    if json {
        return crate::print_json(&answer.json);
    }
    let updated = answer.value;
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
