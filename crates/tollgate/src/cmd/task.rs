//! `tollgate task list|show|revoke|rollback`.

use crate::client::{Client, TaskFilter};
use crate::Conn;
use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum TaskCmd {
    /// List tasks, newest first.
    List {
        /// Only this agent's tasks (SPIFFE ID).
        #[arg(long)]
        agent: Option<String>,
        /// Only tasks of this incident.
        #[arg(long)]
        incident: Option<String>,
        /// Only tasks in this state.
        #[arg(long, value_parser = ["active", "completed", "failed", "revoked"])]
        status: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print the server's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One task: its scope, lifetime, lineage and state.
    Show {
        /// The task id (task_…).
        id: String,
    },
    /// Revoke a task and every task delegated from it.
    Revoke {
        /// The task id (task_…).
        id: String,
        /// Why (recorded in the audit log).
        #[arg(long)]
        reason: Option<String>,
        /// Print the server's JSON (with every task that ended) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The rollback plan: compensations of the task's executed actions, newest first.
    Rollback {
        /// The task id (task_…).
        id: String,
        /// Print the server's JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: TaskCmd, conn: &Conn) -> Result<()> {
    let c = Client::new(conn)?;
    match cmd {
        TaskCmd::List {
            agent,
            incident,
            status,
            limit,
            json,
        } => {
            let filter = TaskFilter {
                agent,
                incident,
                status,
                limit,
            };
            list(&c, &filter, json)
        }
        // The task as the server shows it, every field.
        TaskCmd::Show { id } => crate::print_json(&c.task(&id)?.json),
        TaskCmd::Rollback { id, json } => rollback(&c, &id, json),
        TaskCmd::Revoke { id, reason, json } => {
            let revoked = c.revoke_task(&id, reason.as_deref())?;
            if json {
                return crate::print_json(&revoked.json);
            }
            println!(
                "revoked task {id}; tasks ended: {}",
                serde_json::to_string(&revoked.value.revoked_tasks)?
            );
            Ok(())
        }
    }
}

fn list(c: &Client, filter: &TaskFilter, json: bool) -> Result<()> {
    let tasks = c.tasks(filter)?;
    if json {
        return crate::print_json(&tasks.json);
    }
    println!(
        "{:<40} {:<10} {:<12} {:<22} AGENT",
        "TASK", "STATUS", "INCIDENT", "EXPIRES"
    );
    for t in &tasks.value {
        println!(
            "{:<40} {:<10} {:<12} {:<22} {}",
            t.id, t.status, t.incident_id, t.expires_at, t.agent
        );
    }
    Ok(())
}

fn rollback(c: &Client, id: &str, json: bool) -> Result<()> {
    let plan = c.rollback_plan(id)?;
    if json {
        return crate::print_json(&plan.json);
    }
    let steps = &plan.value.steps;
    if steps.is_empty() {
        println!("nothing to roll back for task {id}");
    }
    for (i, step) in steps.iter().enumerate() {
        println!(
            "{}. {} {}   (undoes {} at {}: `{}`){}",
            i + 1,
            step.compensation.action.as_deref().unwrap_or(""),
            step.compensation.resource.as_deref().unwrap_or(""),
            step.executed.action.as_deref().unwrap_or(""),
            step.executed_at,
            step.executed.command.as_deref().unwrap_or(""),
            if step.done { "   [done]" } else { "" }
        );
    }
    Ok(())
}
