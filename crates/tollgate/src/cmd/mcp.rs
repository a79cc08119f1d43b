//! `tollgate mcp upstreams`: the MCP gateway's upstream servers, as the
//! running server sees them.

use crate::client::Client;
use crate::Conn;
use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum McpCmd {
    /// Each upstream: connected or why not, and its tools with the catalog
    /// operation each is bound to ("-": not bound, so never offered).
    Upstreams {
        /// Print the server's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: McpCmd, conn: &Conn) -> Result<()> {
    match cmd {
        McpCmd::Upstreams { json } => upstreams(&Client::new(conn)?, json),
    }
}

fn upstreams(c: &Client, json: bool) -> Result<()> {
    let answer = c.mcp_upstreams()?;
    if json {
        return crate::print_json(&answer.json);
    }
    let upstreams = &answer.value.upstreams;
    if upstreams.is_empty() {
        println!("no MCP upstreams configured (mcp.upstreams in tollgate.yaml)");
    }
    for u in upstreams {
        println!("{} ({} {}): {}", u.name, u.transport, u.target, u.state);
        if let Some(f) = &u.failure {
            println!(
                "  last failure: {} (the first use after {} ms tries again)",
                f.last_error, f.retry_after_ms
            );
        }
        for t in u.tools.iter().flatten() {
            println!("  {:<28} {}", t.name, t.operation.as_deref().unwrap_or("-"));
        }
    }
    Ok(())
}
