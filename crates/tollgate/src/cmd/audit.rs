//! `tollgate audit verify|export|timeline|checkpoint|hash|tail`.

mod export;
mod ocsf_ai;
mod verify;

use crate::api_types::{AuditLine, Verbatim};
use crate::client::{AuditFilter, Client};
use crate::Conn;
use anyhow::Result;
use clap::Subcommand;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub enum AuditCmd {
    /// Recompute the hash chain and Merkle roots and check every signed
    /// checkpoint: over the API, offline with --data DIR, or on an export (--file).
    Verify {
        /// An export written by `audit export --format jsonl`.
        #[arg(long)]
        file: Option<PathBuf>,
        /// Trust only this Ed25519 key (hex), instead of the one the source names.
        #[arg(long)]
        public_key: Option<String>,
        /// A checkpoint you saved earlier (`audit checkpoint > cp.json`): catches
        /// truncation and rewrites even if stored checkpoints were deleted.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        /// Print the result as one JSON object (`"ok": false` with the error
        /// when verification fails; the exit code is non-zero then too).
        #[arg(long)]
        json: bool,
    },
    /// Export entries: jsonl (the whole log with its checkpoints, verifiable)
    /// or ocsf (OCSF API Activity events, filterable by incident).
    Export {
        /// jsonl: the whole log, verifiable with `audit verify --file`; ocsf: OCSF API Activity events.
        #[arg(long, default_value = "jsonl", value_parser = ["jsonl", "ocsf"])]
        format: String,
        /// The OCSF schema version: 1.3 (1.3.0), or 1.9 (1.9.0, with its
        /// AI agent, delegation, security control and record integrity
        /// vocabulary; 1.9-dev is taken for it too).
        #[arg(long, default_value = "1.3", value_parser = ["1.3", "1.3.0", "1.9", "1.9.0", "1.9-dev"])]
        ocsf_version: String,
        /// Only this incident's entries (ocsf only: a jsonl export is the whole chain).
        #[arg(long)]
        incident: Option<String>,
    },
    /// The story of an incident: who did what, why, decided by which policy,
    /// approved by whom, executed as which command.
    Timeline {
        /// The incident id (e.g. INC-4711).
        #[arg(long)]
        incident: String,
        /// Print the checkpoint and every entry (with its line of text) as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the newest signed checkpoint (save it to verify against later).
    Checkpoint,
    /// The keyed hash a secret value is logged as.
    Hash {
        /// The secret value (e.g. a parameter); prints hmac-sha256:… as the log shows it.
        value: String,
    },
    /// Show the newest entries (optionally filtered), or follow new ones.
    Tail {
        /// Only this incident's entries.
        #[arg(long)]
        incident: Option<String>,
        /// Only this task's entries.
        #[arg(long)]
        task: Option<String>,
        /// Only entries about this agent (SPIFFE ID).
        #[arg(long)]
        agent: Option<String>,
        /// How many entries.
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: usize,
        /// Keep polling for new entries.
        #[arg(short, long)]
        follow: bool,
        /// Print each entry as JSON, one per line.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: AuditCmd, conn: &Conn) -> Result<()> {
    match cmd {
        AuditCmd::Verify {
            file,
            public_key,
            checkpoint,
            json,
        } => {
            let result = verify(conn, file, public_key.as_deref(), checkpoint.as_deref());
            verify::report(result, json)
        }
        AuditCmd::Export {
            format,
            incident,
            ocsf_version,
        } => export::export(
            &Client::new(conn)?,
            &format,
            incident.as_deref(),
            ocsf_version.starts_with("1.9"),
        ),
        AuditCmd::Timeline { incident, json } => {
            export::timeline(&Client::new(conn)?, &incident, json)
        }
        // As the server sent it: `audit verify --checkpoint` reads this back.
        AuditCmd::Checkpoint => crate::print_json(&Client::new(conn)?.checkpoint()?.json),
        AuditCmd::Hash { value } => {
            println!("{}", Client::new(conn)?.audit_hash(&value)?.hash);
            Ok(())
        }
        AuditCmd::Tail {
            incident,
            task,
            agent,
            lines,
            follow,
            json,
        } => {
            let filter = AuditFilter {
                incident,
                task,
                agent,
            };
            tail(&Client::new(conn)?, &filter, lines, follow, json)
        }
    }
}

/// Verify an export file (`--file`), a stopped server's data directory
/// (`--data`), or else the log of the running server.
fn verify(
    conn: &Conn,
    file: Option<PathBuf>,
    public_key: Option<&str>,
    checkpoint: Option<&Path>,
) -> Result<verify::Verified> {
    match file {
        Some(f) => verify::verify_file(&f, public_key, checkpoint),
        None => verify_log(conn, public_key, checkpoint, &mut |_| {}),
    }
}

/// Verify the log of a stopped server's data directory (`--data`), or else
/// of the running server, handing each verified entry to `sink`.
fn verify_log(
    conn: &Conn,
    public_key: Option<&str>,
    checkpoint: Option<&Path>,
    sink: &mut dyn FnMut(&tollgate_audit::AuditEntry),
) -> Result<verify::Verified> {
    match &conn.data {
        Some(dir) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(verify::verify_data(dir, public_key, checkpoint, sink)),
        None => verify::verify_api(&Client::new(conn)?, public_key, checkpoint, sink),
    }
}

/// Every entry of the log (`--data` or the running server's), read only
/// once the whole log verified: hash chain, Merkle roots and every signed
/// checkpoint.
pub fn verified_entries(conn: &Conn) -> Result<Vec<tollgate_audit::AuditEntry>> {
    let mut entries = Vec::new();
    verify_log(conn, None, None, &mut |e| entries.push(e.clone()))?;
    Ok(entries)
}

/// An entry as the server sent it (`--json`) and as a line reads it.
type TailEntry = Verbatim<AuditLine>;

fn tail(c: &Client, filter: &AuditFilter, lines: usize, follow: bool, json: bool) -> Result<()> {
    // Walk pages to the end, keeping the last `lines` entries.
    let mut after = 0u64;
    let mut window: VecDeque<TailEntry> = VecDeque::new();
    loop {
        let page = c.audit::<TailEntry>(filter, after)?;
        for e in page.entries {
            after = e.value.seq;
            window.push_back(e);
            if window.len() > lines {
                window.pop_front();
            }
        }
        if page.next_after.is_none() {
            break;
        }
    }
    for e in &window {
        print_entry(e, json)?;
    }
    if !follow {
        return Ok(());
    }
    loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
        for e in c.audit::<TailEntry>(filter, after)?.entries {
            after = e.value.seq;
            print_entry(&e, json)?;
        }
    }
}

/// Write a line to stdout; a closed pipe (`| head`) ends the program quietly.
fn emit(line: &str) -> Result<()> {
    use std::io::Write;
    match writeln!(
        std::io::stdout().lock(),
        "{}",
        crate::term::escape_controls(line)
    ) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        other => Ok(other?),
    }
}

fn print_entry(entry: &TailEntry, json: bool) -> Result<()> {
    use crate::term::printable;
    if json {
        return emit(&serde_json::to_string(&entry.json)?);
    }
    let AuditLine { seq, event } = &entry.value;
    let ts = tollgate_core::clock::rfc3339(event.ts);
    // Agent-controlled fields, each escaped whole so none can forge a line.
    let detail = &event.detail;
    let what = match (&detail.action, &detail.resource) {
        (Some(a), Some(r)) => format!("{} {}", printable(a), printable(r)),
        _ => String::new(),
    };
    let why = detail
        .reasons
        .iter()
        .map(|r| printable(r).into_owned())
        .collect::<Vec<_>>()
        .join("; ");
    // `seq` unpadded, as `tail` has always printed it.
    emit(&format!(
        "{seq} {} {:<18} {:<18} {:<34} {} {}{}",
        ts,
        event.kind,
        event.outcome.as_deref().unwrap_or("-"),
        event.task_id.as_deref().unwrap_or("-"),
        printable(&event.actor),
        what,
        if why.is_empty() {
            String::new()
        } else {
            format!(" ({why})")
        }
    ))
}
