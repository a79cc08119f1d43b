//! `tollgate approver add|list|remove|disable|enable` (admin).

use crate::client::Client;
use crate::term::printable;
use crate::Conn;
use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum ApproverCmd {
    /// Register an approver (or replace their key) and print the API key (shown once).
    Add {
        /// The approver's name, e.g. an email address.
        name: String,
        /// The role policy sees as `principal.role` (e.g. secops, sre-lead).
        #[arg(long)]
        role: String,
        /// The key stops working after this long: 3600s, 12h, 90d.
        #[arg(long, value_parser = parse_duration)]
        expires_in: Option<i64>,
        /// Print the server's JSON (with the key) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Approvers with their role, status (active, disabled, expired) and last use.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Offboard an approver: the key fails at once; votes already cast stay as cast.
    Remove {
        /// The approver's name.
        name: String,
    },
    /// Refuse an approver's key until it is enabled again.
    Disable {
        /// The approver's name.
        name: String,
    },
    /// Accept a disabled approver's key again.
    Enable {
        /// The approver's name.
        name: String,
    },
}

/// `90d`, `12h`, `30m`, `3600s` or plain seconds.
fn parse_duration(s: &str) -> Result<i64, String> {
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: i64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 3600s, 12h or 90d"))?;
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("unknown unit in {s:?}; use s, m, h or d")),
    };
    match n.checked_mul(unit) {
        Some(v) if v > 0 => Ok(v),
        _ => Err(format!("{s:?} must be a positive duration")),
    }
}

pub fn run(cmd: ApproverCmd, conn: &Conn) -> Result<()> {
    let c = Client::new(conn)?;
    match cmd {
        ApproverCmd::Add {
            name,
            role,
            expires_in,
            json,
        } => {
            let answer = c.add_approver(&name, &role, expires_in)?;
            if json {
                return crate::print_json(&answer.json);
            }
            let added = answer.value;
            println!("approver: {} (role {})", added.name, added.role);
            println!("key:      {}", added.key);
            if let Some(expires_at) = added.expires_at {
                println!("expires:  {expires_at}");
            }
            println!("(shown once; the approver sets TOLLGATE_TOKEN to it)");
            Ok(())
        }
        ApproverCmd::List { json } => list(&c, json),
        ApproverCmd::Remove { name } => {
            c.remove_approver(&name)?;
            println!("removed approver {name}: their key no longer works");
            Ok(())
        }
        ApproverCmd::Disable { name } => {
            c.set_approver_disabled(&name, true)?;
            println!("disabled approver {name}");
            Ok(())
        }
        ApproverCmd::Enable { name } => {
            c.set_approver_disabled(&name, false)?;
            println!("enabled approver {name}");
            Ok(())
        }
    }
}

fn list(c: &Client, json: bool) -> Result<()> {
    let approvers = c.approvers()?.approvers;
    if json {
        return crate::print_json(&approvers.json);
    }
    if approvers.value.is_empty() {
        println!("no approvers registered with a key");
    }
    let or_dash = |v: &Option<String>| printable(v.as_deref().unwrap_or("-")).into_owned();
    for a in &approvers.value {
        println!(
            "{:<32} {:<12} {:<9} expires {:<20} last used {}",
            printable(&a.name),
            printable(&a.role),
            printable(&a.status),
            or_dash(&a.expires_at),
            or_dash(&a.last_used_at)
        );
    }
    Ok(())
}
