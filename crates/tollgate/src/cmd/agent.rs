//! `tollgate agent add|release|revoke`.

use crate::client::Client;
use crate::Conn;
use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum AgentCmd {
    /// Register an agent instance and print its single-use join token.
    Add {
        /// The instance's SPIFFE ID (spiffe://TRUST-DOMAIN/agent/CLASS/INSTANCE).
        spiffe_id: String,
        /// Who answers for this agent (an email); they may not approve its requests.
        #[arg(long)]
        owner: String,
        /// Print the server's JSON (with the join token) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Lift an agent's quarantine (set by a retry-storm chain rule).
    Release {
        /// The quarantined agent's SPIFFE ID.
        spiffe_id: String,
        /// Why (recorded in the audit log).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Revoke an agent: all its tasks end, and it gets no SVID until re-added.
    Revoke {
        /// The agent's SPIFFE ID.
        spiffe_id: String,
        /// Why (recorded in the audit log).
        #[arg(long)]
        reason: Option<String>,
        /// Print the server's JSON (with the tasks that ended) instead of text.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: AgentCmd, conn: &Conn) -> Result<()> {
    let c = Client::new(conn)?;
    match cmd {
        AgentCmd::Add {
            spiffe_id,
            owner,
            json,
        } => add(&c, &spiffe_id, &owner, json),
        AgentCmd::Release { spiffe_id, reason } => {
            c.release_agent(&spiffe_id, reason.as_deref())?;
            println!("released {spiffe_id}: its decisions are judged by policy again");
            Ok(())
        }
        AgentCmd::Revoke {
            spiffe_id,
            reason,
            json,
        } => {
            let revoked = c.revoke_agent(&spiffe_id, reason.as_deref())?;
            if json {
                return crate::print_json(&revoked.json);
            }
            println!(
                "revoked {spiffe_id}; tasks ended: {}",
                serde_json::to_string(&revoked.value.revoked_tasks)?
            );
            Ok(())
        }
    }
}

fn add(c: &Client, spiffe_id: &str, owner: &str, json: bool) -> Result<()> {
    let answer = c.register_agent(spiffe_id, owner)?;
    if json {
        return crate::print_json(&answer.json);
    }
    let registered = answer.value;
    println!("agent:       {}", registered.spiffe_id);
    match registered.join_token {
        Some(token) => {
            println!("join token:  {token}");
            println!("expires at:  {}", registered.expires_at.unwrap_or_default());
            println!("(single use: the agent exchanges it at POST /v1/agents/attest)");
        }
        None => println!("external trust domain: the agent brings JWT-SVIDs from its own issuer"),
    }
    Ok(())
}
