//! `tollgate policy shadow load|show|clear|report`: a second pack evaluated
//! beside the enforced one by the running server, and what it would have
//! changed, summarised from the `decision.shadow_diff` audit entries.

use crate::client::{AuditFilter, Client};
use crate::Conn;
use anyhow::Result;
use clap::Subcommand;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use tollgate_audit::AuditEntry;

#[derive(Subcommand)]
pub enum ShadowCmd {
    /// Load a pack directory (on the server, relative to its config
    /// directory) as the shadow pack, replacing any.
    Load {
        /// The pack directory, as the server sees it.
        path: String,
        /// Print the server's JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show the shadow pack, if one is loaded.
    Show {
        /// Print the server's JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Stop shadowing.
    Clear {
        #[command(flatten)]
        conn: Conn,
    },
    /// Summarise the disagreements: by enforced and shadow outcome and by
    /// the policies that differ, with the request ids.
    Report {
        /// Only disagreements at or after this time (RFC 3339, or Unix seconds).
        #[arg(long)]
        since: Option<String>,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Conn,
    },
}

pub fn run(cmd: ShadowCmd) -> Result<()> {
    match cmd {
        ShadowCmd::Load { path, json, conn } => {
            show(&Client::new(&conn)?.load_shadow(&path)?, json)
        }
        ShadowCmd::Show { json, conn } => show(&Client::new(&conn)?.shadow()?, json),
        ShadowCmd::Clear { conn } => {
            Client::new(&conn)?.clear_shadow()?;
            println!("no shadow pack");
            Ok(())
        }
        ShadowCmd::Report { since, json, conn } => {
            let since = since.as_deref().map(parse_time).transpose()?;
            let report = report(&read_diffs(&Client::new(&conn)?, since)?);
            if json {
                return crate::print_json(&report);
            }
            print_report(&report);
            Ok(())
        }
    }
}

fn show(s: &crate::api_types::Verbatim<crate::api_types::ShadowStatus>, json: bool) -> Result<()> {
    if json {
        return crate::print_json(&s.json);
    }
    let v = &s.value;
    match (&v.digest, &v.source) {
        (Some(digest), Some(source)) if v.loaded => println!(
            "shadow pack: {source}, {} policies, digest {digest}, loaded {}",
            v.policies.unwrap_or(0),
            v.loaded_at.as_deref().unwrap_or("?")
        ),
        _ => println!("no shadow pack"),
    }
    Ok(())
}

/// RFC 3339 or Unix seconds.
pub fn parse_time(s: &str) -> Result<i64> {
    if let Ok(n) = s.parse::<i64>() {
        return Ok(n);
    }
    tollgate_core::clock::parse_rfc3339(s).ok_or_else(|| {
        anyhow::anyhow!("--since {s:?}: expected RFC 3339 (2026-12-01T00:00:00Z) or Unix seconds")
    })
}

/// Every `decision.shadow_diff` entry (at or after `since`).
fn read_diffs(c: &Client, since: Option<i64>) -> Result<Vec<AuditEntry>> {
    let mut out = Vec::new();
    let mut after = 0u64;
    loop {
        let page = c.audit::<AuditEntry>(&AuditFilter::default(), after)?;
        out.extend(page.entries.into_iter().filter(|e| {
            e.event.kind == "decision.shadow_diff" && since.is_none_or(|t| e.event.ts >= t)
        }));
        match page.next_after {
            Some(n) => after = n,
            None => break,
        }
    }
    Ok(out)
}

/// The policies one side names and the other does not.
fn changed_policies(d: &Value) -> Vec<String> {
    use super::replay::{differing, strings};
    differing(
        &strings(&d["enforced"]["policies"]),
        &strings(&d["shadow"]["policies"]),
    )
}

/// Disagreements grouped by (enforced outcome, shadow outcome, changed policies).
pub fn report(diffs: &[AuditEntry]) -> Value {
    let mut groups: BTreeMap<(String, String, Vec<String>), Vec<String>> = BTreeMap::new();
    for e in diffs {
        let d = &e.event.detail;
        let side = |s: &str| d[s]["outcome"].as_str().unwrap_or("?").to_string();
        groups
            .entry((side("enforced"), side("shadow"), changed_policies(d)))
            .or_default()
            .push(e.event.request_id.clone().unwrap_or_default());
    }
    let mut groups: Vec<Value> = groups
        .into_iter()
        .map(|((enforced, shadow, policies), requests)| {
            json!({"enforced": enforced, "shadow": shadow, "policies": policies,
                   "count": requests.len(), "requests": requests})
        })
        .collect();
    groups.sort_by_key(|g| std::cmp::Reverse(g["count"].as_u64()));
    json!({"disagreements": diffs.len(), "groups": groups})
}

fn print_report(r: &Value) {
    let total = r["disagreements"].as_u64().unwrap_or(0);
    if total == 0 {
        println!("no disagreements: the shadow pack decided every shadowed action as the enforced one did");
        return;
    }
    println!("{total} decisions the shadow pack would have made otherwise:");
    for g in r["groups"].as_array().into_iter().flatten() {
        let list = |k: &str| {
            g[k].as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default()
        };
        println!(
            "  {} -> {}: {}  (policies: {})",
            g["enforced"].as_str().unwrap_or("?"),
            g["shadow"].as_str().unwrap_or("?"),
            g["count"],
            match list("policies") {
                p if p.is_empty() => "none named".to_string(),
                p => p,
            }
        );
        println!("    requests: {}", list("requests"));
    }
}
