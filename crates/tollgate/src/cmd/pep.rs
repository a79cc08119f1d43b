//! `tollgate pep add|list|remove`: policy enforcement points (AuthZEN callers).

use crate::client::Client;
use crate::term::printable;
use crate::Conn;
use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum PepCmd {
    /// Register a PEP (or replace its key) and print the key (shown once).
    Add {
        /// The PEP's name: 1-64 of [A-Za-z0-9._-].
        name: String,
        /// Print the server's JSON (with the key) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Registered PEPs with when each was added.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Offboard a PEP: its key fails on the next request.
    Remove {
        /// The PEP's name.
        name: String,
    },
}

pub fn run(cmd: PepCmd, conn: &Conn) -> Result<()> {
    let c = Client::new(conn)?;
    match cmd {
        PepCmd::Add { name, json } => {
            let answer = c.add_pep(&name)?;
            if json {
                return crate::print_json(&answer.json);
            }
            let added = answer.value;
            println!("pep:  {}", added.name);
            println!("key:  {}", added.key);
            println!("(shown once; the PEP sends it as bearer token to /access/v1/*)");
            Ok(())
        }
        PepCmd::List { json } => {
            let peps = c.peps()?.peps;
            if json {
                return crate::print_json(&peps.json);
            }
            for p in &peps.value {
                println!("{:<32} added {}", printable(&p.name), p.created_at);
            }
            Ok(())
        }
        PepCmd::Remove { name } => {
            c.remove_pep(&name)?;
            println!("removed pep {name}: its key no longer works");
            Ok(())
        }
    }
}
