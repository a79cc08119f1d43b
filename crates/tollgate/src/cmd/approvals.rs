//! `tollgate approvals list|show|approve|deny` (as an approver:
//! TOLLGATE_TOKEN is the approver's key).

use crate::api_types::Approval;
use crate::client::Client;
use crate::term::printable;
use crate::Conn;
use anyhow::{bail, Result};
use clap::Subcommand;

#[derive(Subcommand)]
pub enum ApprovalsCmd {
    /// Approvals with intent, evidence and the task's chain of actions.
    List {
        /// Which approvals.
        #[arg(long, default_value = "pending", value_parser = ["pending", "approved", "denied", "expired", "used", "withdrawn", "all"])]
        status: String,
        /// Print the server's JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show one approval.
    Show {
        /// The approval id (apr_…).
        id: String,
        /// Print the server's JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Vote to approve.
    Approve {
        /// The approval id (apr_…).
        id: String,
        /// Why (required; recorded in the audit log and shown to the other approvers).
        #[arg(long)]
        reason: String,
        /// Print the server's JSON (the approval's tally) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Vote to deny.
    Deny {
        /// The approval id (apr_…).
        id: String,
        /// Why (required; recorded in the audit log and shown to the other approvers).
        #[arg(long)]
        reason: String,
        /// Print the server's JSON (the approval's tally) instead of text.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: ApprovalsCmd, conn: &Conn) -> Result<()> {
    let c = Client::new(conn)?;
    match cmd {
        ApprovalsCmd::List { status, json } => list(&c, &status, json),
        ApprovalsCmd::Show { id, json } => {
            let a = c.approval(&id)?;
            if json {
                return crate::print_json(&a.json);
            }
            print_approval(&a.value)
        }
        ApprovalsCmd::Approve { id, reason, .. } | ApprovalsCmd::Deny { id, reason, .. }
            if reason.trim().is_empty() =>
        {
            bail!("approval {id}: --reason must not be empty")
        }
        ApprovalsCmd::Approve { id, reason, json } => {
            let tally = c.vote(&id, true, &reason)?;
            if json {
                return crate::print_json(&tally.json);
            }
            let t = tally.value;
            println!(
                "voted approve on {id}: now {} ({}/{} approvals)",
                t.status, t.approvals, t.required
            );
            Ok(())
        }
        ApprovalsCmd::Deny { id, reason, json } => {
            let tally = c.vote(&id, false, &reason)?;
            if json {
                return crate::print_json(&tally.json);
            }
            println!("voted deny on {id}: now {}", tally.value.status);
            Ok(())
        }
    }
}

fn list(c: &Client, status: &str, json: bool) -> Result<()> {
    let approvals = c.approvals(status)?.approvals;
    if json {
        return crate::print_json(&approvals.json);
    }
    if approvals.value.is_empty() {
        println!("no {status} approvals");
    }
    for a in &approvals.value {
        print_approval(a)?;
    }
    Ok(())
}

fn print_approval(a: &Approval) -> Result<()> {
    // Agent-controlled text, each field escaped whole (newlines included).
    let text = |v: Option<&str>| printable(v.unwrap_or("")).into_owned();
    println!(
        "{}  {}  {}/{} approvals  expires {}",
        printable(&a.id),
        printable(&a.status),
        a.approvals,
        a.required,
        printable(&a.expires_at)
    );
    println!("  agent:    {}", printable(&a.agent));
    println!(
        "  wants:    {} on {} (tier {}, labels {})",
        printable(&a.action),
        printable(&a.resource),
        text(a.tier.as_deref()),
        serde_json::to_string(&a.labels)?
    );
    println!("  intent:   {}", text(a.request.intent.as_deref()));
    println!("  params:   {}", a.request.parameters);
    println!(
        "  task:     {} incident {} ({})",
        printable(&a.task_id),
        printable(&a.incident_id),
        text(a.task.as_ref().map(|t| t.intent.as_str()))
    );
    let reasons: Vec<_> = a
        .reasons
        .iter()
        .map(|r| printable(r).into_owned())
        .collect();
    println!("  policy:   {}", reasons.join("; "));
    for e in &a.evidence {
        println!(
            "  evidence: {} {} sha256:{}",
            printable(&e.kind),
            printable(&e.resource),
            printable(&e.sha256)
        );
    }
    for step in &a.chain {
        println!(
            "  chain:    {} {} {} -> {}",
            printable(&step.at),
            text(step.action.as_deref()),
            text(step.resource.as_deref()),
            text(step.outcome.as_deref())
        );
    }
    for v in &a.votes {
        println!(
            "  vote:     {} ({}) {}: {}",
            printable(&v.approver),
            printable(&v.role),
            if v.approve { "approve" } else { "deny" },
            printable(&v.reason)
        );
    }
    Ok(())
}
