//! `tollgate incident resolve|update`.

use crate::client::{Client, IncidentChange};
use crate::Conn;
use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum IncidentCmd {
    /// Mark an incident resolved: every task bound to it is revoked at once.
    Resolve {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Change status, class or severity; open tasks are re-evaluated.
    Update {
        id: String,
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        class: Option<String>,
        #[arg(long)]
        severity: Option<String>,
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
