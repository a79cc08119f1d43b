//! `tollgate`: the one binary. `serve` runs the gateway; every other command
//! either works offline on files (`init`, `policy validate`) or talks to a
//! running server's API, like `vault` does, found through `TOLLGATE_ADDR`
//! and `TOLLGATE_TOKEN`.

// Every line the CLI prints passes through `term`, which escapes terminal
// controls: much of what is printed is text an agent wrote. Defined before
// the modules so they use these, not std's.
macro_rules! println {
    () => { $crate::term::emit(false, "\n") };
    ($($arg:tt)*) => { $crate::term::emit(false, &format!("{}\n", format_args!($($arg)*))) };
}
macro_rules! print {
    ($($arg:tt)*) => { $crate::term::emit(false, &format!($($arg)*)) };
}
macro_rules! eprintln {
    () => { $crate::term::emit(true, "\n") };
    ($($arg:tt)*) => { $crate::term::emit(true, &format!("{}\n", format_args!($($arg)*))) };
}
#[allow(unused_macros)]
macro_rules! eprint {
    ($($arg:tt)*) => { $crate::term::emit(true, &format!($($arg)*)) };
}

mod audit_cmd;
mod bench;
mod client;
mod demo;
mod term;
mod tools;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use client::Client;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "tollgate",
    version,
    about = "Runtime governance gateway for autonomous agents"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct Conn {
    /// Server address.
    #[arg(
        long,
        env = "TOLLGATE_ADDR",
        default_value = "http://127.0.0.1:8181",
        global = true
    )]
    addr: String,
    /// Admin token; default: the token file in --data.
    #[arg(long, env = "TOLLGATE_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// Data directory holding admin.token (when --token is not given);
    /// default ./tollgate-data. `audit verify --data DIR` reads DIR directly.
    #[arg(long = "data", env = "TOLLGATE_DATA", global = true)]
    data: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Write the example policy pack into DIR, to edit and serve with --config.
    Init {
        #[arg(default_value = "tollgate-config")]
        dir: PathBuf,
    },
    /// Run the gateway.
    Serve {
        /// Config directory (tollgate.yaml, schema, catalog, policies/); default: the built-in example pack.
        #[arg(long, env = "TOLLGATE_CONFIG")]
        config: Option<PathBuf>,
        #[arg(long, env = "TOLLGATE_DATA", default_value = "tollgate-data")]
        data: PathBuf,
        #[arg(long, default_value = "127.0.0.1:8181")]
        listen: String,
    },
    /// Agent instances.
    Agent {
        #[command(subcommand)]
        cmd: AgentCmd,
        #[command(flatten)]
        conn: Conn,
    },
    /// Tasks.
    Task {
        #[command(subcommand)]
        cmd: TaskCmd,
        #[command(flatten)]
        conn: Conn,
    },
    /// Incidents: resolve or reclassify.
    Incident {
        #[command(subcommand)]
        cmd: IncidentCmd,
        #[command(flatten)]
        conn: Conn,
    },
    /// Kill switch: every agent decision denies until unfreeze.
    Freeze {
        #[command(flatten)]
        conn: Conn,
    },
    Unfreeze {
        #[command(flatten)]
        conn: Conn,
    },
    /// Policy packs.
    Policy {
        #[command(subcommand)]
        cmd: PolicyCmd,
    },
    /// The audit log.
    Audit {
        #[command(subcommand)]
        cmd: AuditCmd,
        #[command(flatten)]
        conn: Conn,
    },
    /// Human approvers (admin).
    Approver {
        #[command(subcommand)]
        cmd: ApproverCmd,
        #[command(flatten)]
        conn: Conn,
    },
    /// Decide pending approvals (as an approver: TOLLGATE_TOKEN = your approver key).
    Approvals {
        #[command(subcommand)]
        cmd: ApprovalsCmd,
        #[command(flatten)]
        conn: Conn,
    },
    /// Benchmarks on this machine.
    Bench {
        #[command(subcommand)]
        cmd: BenchCmd,
    },
    /// Run the reference scenario through the MCP gateway: an in-process server,
    /// the example tool server, a scripted agent and approver.
    Demo {
        /// Keep the config, data and tool state here (a new directory) instead of a
        /// temporary one.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// The MCP gateway's upstream servers, as the running server sees them.
    Mcp {
        #[command(subcommand)]
        cmd: McpCmd,
        #[command(flatten)]
        conn: Conn,
    },
    /// Example tool servers to put behind the MCP gateway.
    Tools {
        #[command(subcommand)]
        cmd: ToolsCmd,
    },
    /// Policy enforcement points (AuthZEN callers).
    Pep {
        #[command(subcommand)]
        cmd: PepCmd,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Subcommand)]
enum AgentCmd {
    /// Register an agent instance and print its single-use join token.
    Add {
        spiffe_id: String,
        #[arg(long)]
        owner: String,
    },
    /// Lift an agent's quarantine (set by a retry-storm chain rule).
    Release {
        spiffe_id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Revoke an agent: all its tasks end, and it gets no SVID until re-added.
    Revoke {
        spiffe_id: String,
        #[arg(long)]
        reason: Option<String>,
    },
}

#[derive(Subcommand)]
enum TaskCmd {
    List {
        #[arg(long)]
        agent: Option<String>,
        #[arg(long)]
        incident: Option<String>,
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    Show {
        id: String,
    },
    Revoke {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// The rollback plan: compensations of the task's executed actions, newest first.
    Rollback {
        id: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum IncidentCmd {
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

#[derive(Subcommand)]
enum PolicyCmd {
    /// Validate a pack directory offline; prints file:line:column errors.
    Validate {
        #[arg(default_value = "tollgate-config")]
        dir: PathBuf,
    },
    /// Run test traces (YAML: requests with expected decisions) against a pack
    /// offline; by default every file in DIR/tests. Exits non-zero on a failure.
    Test {
        #[arg(default_value = "tollgate-config")]
        dir: PathBuf,
        /// Test files to run instead of DIR/tests/*.yaml.
        files: Vec<PathBuf>,
    },
    /// Draft a Cedar schema fragment and catalog entries for an MCP server's
    /// tools, from its tools/list (see docs/mcp-gateway.md).
    Schema {
        /// The server: an http(s):// streamable-HTTP URL, or a command line that
        /// runs it on stdio (e.g. "tollgate tools example --state w.json").
        #[arg(long = "from-mcp")]
        from_mcp: String,
        /// The upstream's name in tollgate.yaml, used in the tool bindings.
        #[arg(long, default_value = "upstream")]
        server: String,
        /// HTTP header to send, "Name: value" (repeatable), e.g. an API key.
        #[arg(long = "header")]
        headers: Vec<String>,
        /// For an https:// server: trust only the CAs in this PEM file
        /// (default: the system's roots).
        #[arg(long)]
        ca_file: Option<PathBuf>,
        /// Write mcp.cedarschema and mcp-catalog.yaml into this directory
        /// instead of printing them.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Ask the running server to reload its pack.
    Reload {
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Subcommand)]
enum AuditCmd {
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
    },
    /// Export entries: jsonl (the whole log with its checkpoints, verifiable)
    /// or ocsf (OCSF API Activity events, filterable by incident).
    Export {
        #[arg(long, default_value = "jsonl")]
        format: String,
        #[arg(long)]
        incident: Option<String>,
    },
    /// The story of an incident: who did what, why, decided by which policy,
    /// approved by whom, executed as which command.
    Timeline {
        #[arg(long)]
        incident: String,
    },
    /// Print the newest signed checkpoint (save it to verify against later).
    Checkpoint,
    /// The keyed hash a secret value is logged as.
    Hash { value: String },
    /// Show the newest entries (optionally filtered), or follow new ones.
    Tail {
        #[arg(long)]
        incident: Option<String>,
        #[arg(long)]
        task: Option<String>,
        #[arg(long)]
        agent: Option<String>,
        /// How many entries.
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: usize,
        /// Keep polling for new entries.
        #[arg(short, long)]
        follow: bool,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ApproverCmd {
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

#[derive(Subcommand)]
enum ApprovalsCmd {
    /// Approvals with intent, evidence and the task's chain of actions.
    List {
        /// pending, approved, denied, expired, used or all.
        #[arg(long, default_value = "pending")]
        status: String,
        #[arg(long)]
        json: bool,
    },
    /// Show one approval.
    Show { id: String },
    /// Vote to approve.
    Approve {
        id: String,
        #[arg(long)]
        reason: String,
    },
    /// Vote to deny.
    Deny {
        id: String,
        #[arg(long)]
        reason: String,
    },
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Load a running server over HTTP: open tasks, mixed allow / deny /
    /// approval traffic, a revocation mid-run; latency percentiles,
    /// throughput, stale decisions after the revocation, server memory.
    Http {
        #[arg(long, default_value_t = 10)]
        duration_secs: u64,
        #[arg(long, default_value_t = 16)]
        clients: usize,
        #[arg(long, default_value_t = 8)]
        tasks: usize,
        #[command(flatten)]
        conn: Conn,
    },
    /// In-process decisions against packs grown to N policies with
    /// per-agent policies, beside stock Cedar on the same set and requests.
    Policy {
        /// The pack to grow (default: the embedded example pack).
        #[arg(long)]
        pack: Option<PathBuf>,
        /// Pack sizes to measure, in policies.
        #[arg(long, value_delimiter = ',', default_value = "21,1000,10000")]
        policies: Vec<usize>,
        #[arg(long, default_value_t = 20_000)]
        decisions: usize,
        /// Instead of measuring, write the example configuration with its
        /// pack grown to the largest size into this directory (for
        /// `serve --config DIR` under `bench http`).
        #[arg(long)]
        write: Option<PathBuf>,
    },
    /// What the MCP gateway adds to a tool call: the same allowed call direct to
    /// the example tool server and through an in-process gateway.
    Mcp {
        #[arg(long, default_value_t = 2_000)]
        calls: usize,
        #[arg(long, default_value_t = 4)]
        clients: usize,
    },
    /// Durable audit append throughput (serial vs group commit) and verification speed.
    Audit {
        #[arg(long, default_value_t = 100_000)]
        entries: u64,
        #[arg(long, default_value_t = 64)]
        concurrency: u64,
    },
}

#[derive(Subcommand)]
enum ToolsCmd {
    /// An MCP server of incident-response tools (EDR, SIEM, IAM, vault, HTTP post)
    /// acting on a local JSON state file.
    Example(tools::ExampleArgs),
}

#[derive(Subcommand)]
enum McpCmd {
    /// Each upstream: connected or why not, and its tools with the catalog
    /// operation each is bound to ("-": not bound, so never offered).
    Upstreams {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum PepCmd {
    /// Register a PEP (or replace its key) and print the key (shown once).
    Add {
        /// The PEP's name: 1-64 of [A-Za-z0-9._-].
        name: String,
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

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The chain of causes on one line, escaped like all output
            // (server errors quote what agents sent); never a backtrace.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    // Before any HTTP client exists (MCP upstreams, `--from-mcp`, the demo).
    tollgate_server::mcp::install_crypto_provider();
    let cli = Cli::parse();
    match cli.command {
        Command::Init { dir } => init(&dir),
        Command::Tools {
            cmd: ToolsCmd::Example(args),
        } => tools::example(args),
        Command::Demo { dir } => demo::run(dir),
        Command::Serve {
            config,
            data,
            listen,
        } => serve(config, data, listen),
        Command::Agent { cmd, conn } => {
            let c = Client::new(&conn)?;
            match cmd {
                AgentCmd::Add { spiffe_id, owner } => {
                    let r = c.post(
                        "/v1/agents",
                        &json!({"spiffe_id": spiffe_id, "owner": owner}),
                    )?;
                    println!(
                        "agent:       {}",
                        r["spiffe_id"].as_str().unwrap_or_default()
                    );
                    match r["join_token"].as_str() {
                        Some(t) => {
                            println!("join token:  {t}");
                            println!(
                                "expires at:  {}",
                                r["expires_at"].as_str().unwrap_or_default()
                            );
                            println!(
                                "(single use: the agent exchanges it at POST /v1/agents/attest)"
                            );
                        }
                        None => println!(
                            "external trust domain: the agent brings JWT-SVIDs from its own issuer"
                        ),
                    }
                    Ok(())
                }
                AgentCmd::Release { spiffe_id, reason } => {
                    c.post(
                        "/v1/agents/release",
                        &json!({"agent": spiffe_id, "reason": reason}),
                    )?;
                    println!("released {spiffe_id}: its decisions are judged by policy again");
                    Ok(())
                }
                AgentCmd::Revoke { spiffe_id, reason } => {
                    let r = c.post(
                        "/v1/revocations",
                        &json!({"agent": spiffe_id, "reason": reason}),
                    )?;
                    println!("revoked {spiffe_id}; tasks ended: {}", r["revoked_tasks"]);
                    Ok(())
                }
            }
        }
        Command::Task { cmd, conn } => {
            let c = Client::new(&conn)?;
            match cmd {
                TaskCmd::List {
                    agent,
                    incident,
                    status,
                    limit,
                    json,
                } => {
                    let mut q = vec![format!("limit={limit}")];
                    for (k, v) in [("agent", agent), ("incident", incident), ("status", status)] {
                        if let Some(v) = v {
                            q.push(format!("{k}={}", client::encode(&v)));
                        }
                    }
                    let r = c.get(&format!("/v1/tasks?{}", q.join("&")))?;
                    if json {
                        println!("{}", serde_json::to_string_pretty(&r)?);
                        return Ok(());
                    }
                    println!(
                        "{:<40} {:<10} {:<12} {:<22} AGENT",
                        "TASK", "STATUS", "INCIDENT", "EXPIRES"
                    );
                    for t in r.as_array().into_iter().flatten() {
                        println!(
                            "{:<40} {:<10} {:<12} {:<22} {}",
                            t["id"].as_str().unwrap_or(""),
                            t["status"].as_str().unwrap_or(""),
                            t["incident_id"].as_str().unwrap_or(""),
                            t["expires_at"].as_str().unwrap_or(""),
                            t["agent"].as_str().unwrap_or("")
                        );
                    }
                    Ok(())
                }
                TaskCmd::Show { id } => {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(
                            &c.get(&format!("/v1/tasks/{}", client::encode(&id)))?
                        )?
                    );
                    Ok(())
                }
                TaskCmd::Rollback { id, json } => {
                    let r = c.get(&format!("/v1/tasks/{}/rollback", client::encode(&id)))?;
                    if json {
                        println!("{}", serde_json::to_string_pretty(&r)?);
                        return Ok(());
                    }
                    let steps = r["steps"].as_array().cloned().unwrap_or_default();
                    if steps.is_empty() {
                        println!("nothing to roll back for task {id}");
                    }
                    for (i, st) in steps.iter().enumerate() {
                        println!(
                            "{}. {} {}   (undoes {} at {}: `{}`){}",
                            i + 1,
                            st["compensation"]["action"].as_str().unwrap_or(""),
                            st["compensation"]["resource"].as_str().unwrap_or(""),
                            st["executed"]["action"].as_str().unwrap_or(""),
                            st["executed_at"].as_str().unwrap_or(""),
                            st["executed"]["command"].as_str().unwrap_or(""),
                            if st["done"] == json!(true) {
                                "   [done]"
                            } else {
                                ""
                            }
                        );
                    }
                    Ok(())
                }
                TaskCmd::Revoke { id, reason } => {
                    c.post("/v1/revocations", &json!({"task_id": id, "reason": reason}))?;
                    println!("revoked task {id}");
                    Ok(())
                }
            }
        }
        Command::Incident { cmd, conn } => {
            let c = Client::new(&conn)?;
            let (id, body) = match cmd {
                IncidentCmd::Resolve { id, reason } => {
                    (id, json!({"status": "resolved", "reason": reason}))
                }
                IncidentCmd::Update {
                    id,
                    status,
                    class,
                    severity,
                    reason,
                } => (
                    id,
                    json!({"status": status, "class": class, "severity": severity, "reason": reason}),
                ),
            };
            let r = c.post(&format!("/v1/incidents/{}", client::encode(&id)), &body)?;
            let inc = &r["incident"];
            println!(
                "incident {}: {} / {} / {}",
                id,
                inc["status"].as_str().unwrap_or(""),
                inc["class"].as_str().unwrap_or(""),
                inc["severity"].as_str().unwrap_or("")
            );
            println!("revoked tasks: {}", r["revoked_tasks"]);
            println!("kept tasks:    {}", r["kept_tasks"]);
            Ok(())
        }
        Command::Freeze { conn } => {
            Client::new(&conn)?.post("/v1/freeze", &json!({}))?;
            println!("frozen: every agent decision now denies");
            Ok(())
        }
        Command::Unfreeze { conn } => {
            Client::new(&conn)?.post("/v1/unfreeze", &json!({}))?;
            println!("unfrozen");
            Ok(())
        }
        Command::Policy { cmd } => match cmd {
            PolicyCmd::Validate { dir } => match tollgate_policy::PolicyPack::load_dir(&dir) {
                Ok(p) => {
                    println!(
                        "ok: {} policies, {} catalog operations, digest {}",
                        p.policy_count(),
                        p.catalog().operations.len(),
                        p.digest()
                    );
                    Ok(())
                }
                Err(tollgate_policy::PolicyError::Invalid(diags)) => {
                    for d in &diags {
                        eprintln!("{}", d_with_dir(&dir, d));
                    }
                    bail!("{} problem(s) in {}", diags.len(), dir.display())
                }
                Err(e) => Err(e.into()),
            },
            PolicyCmd::Test { dir, files } => policy_test(&dir, files),
            PolicyCmd::Schema {
                from_mcp,
                server,
                headers,
                ca_file,
                out,
            } => tools::schema_from_mcp(
                &from_mcp,
                &server,
                &headers,
                ca_file.as_deref(),
                out.as_deref(),
            ),
            PolicyCmd::Reload { conn } => {
                let r = Client::new(&conn)?.post("/v1/policies/reload", &json!({}))?;
                println!(
                    "reloaded: {} policies, digest {}",
                    r["policies"],
                    r["digest"].as_str().unwrap_or_default()
                );
                Ok(())
            }
        },
        Command::Audit {
            cmd:
                AuditCmd::Verify {
                    file,
                    public_key,
                    checkpoint,
                },
            conn,
        } => match (file, &conn.data) {
            (Some(f), _) => {
                audit_cmd::verify_file(&f, public_key.as_deref(), checkpoint.as_deref())
            }
            (None, Some(dir)) => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(audit_cmd::verify_data(
                    dir,
                    public_key.as_deref(),
                    checkpoint.as_deref(),
                )),
            (None, None) => audit_cmd::verify_api(
                &Client::new(&conn)?,
                public_key.as_deref(),
                checkpoint.as_deref(),
            ),
        },
        Command::Audit { cmd, conn } => {
            let c = Client::new(&conn)?;
            match cmd {
                AuditCmd::Verify { .. } => Ok(()),
                AuditCmd::Export { format, incident } => {
                    audit_cmd::export(&c, &format, incident.as_deref())
                }
                AuditCmd::Timeline { incident } => audit_cmd::timeline(&c, &incident),
                AuditCmd::Checkpoint => {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&c.get("/v1/audit/checkpoint")?)?
                    );
                    Ok(())
                }
                AuditCmd::Hash { value } => {
                    println!(
                        "{}",
                        c.post("/v1/audit/hash", &json!({"value": value}))?["hash"]
                            .as_str()
                            .unwrap_or_default()
                    );
                    Ok(())
                }
                AuditCmd::Tail {
                    incident,
                    task,
                    agent,
                    lines,
                    follow,
                    json,
                } => audit_tail(&c, incident, task, agent, lines, follow, json),
            }
        }
        Command::Approver { cmd, conn } => {
            let c = Client::new(&conn)?;
            match cmd {
                ApproverCmd::Add {
                    name,
                    role,
                    expires_in,
                } => {
                    let mut body = json!({"name": name, "role": role});
                    if let Some(secs) = expires_in {
                        body["expires_in_seconds"] = json!(secs);
                    }
                    let r = c.post("/v1/approvers", &body)?;
                    println!(
                        "approver: {} (role {})",
                        r["name"].as_str().unwrap_or_default(),
                        r["role"].as_str().unwrap_or_default()
                    );
                    println!("key:      {}", r["key"].as_str().unwrap_or_default());
                    if let Some(exp) = r["expires_at"].as_str() {
                        println!("expires:  {exp}");
                    }
                    println!("(shown once; the approver sets TOLLGATE_TOKEN to it)");
                    Ok(())
                }
                ApproverCmd::List { json } => {
                    let r = c.get("/v1/approvers")?;
                    if json {
                        println!("{}", serde_json::to_string_pretty(&r["approvers"])?);
                        return Ok(());
                    }
                    let list = r["approvers"].as_array().cloned().unwrap_or_default();
                    if list.is_empty() {
                        println!("no approvers registered with a key");
                    }
                    let s = |v: &Value| term::printable(v.as_str().unwrap_or("-")).into_owned();
                    for a in &list {
                        println!(
                            "{:<32} {:<12} {:<9} expires {:<20} last used {}",
                            s(&a["name"]),
                            s(&a["role"]),
                            s(&a["status"]),
                            s(&a["expires_at"]),
                            s(&a["last_used_at"])
                        );
                    }
                    Ok(())
                }
                ApproverCmd::Remove { name } => {
                    c.delete(&format!("/v1/approvers/{}", client::encode(&name)))?;
                    println!("removed approver {name}: their key no longer works");
                    Ok(())
                }
                ApproverCmd::Disable { name } => {
                    c.post(
                        &format!("/v1/approvers/{}/disable", client::encode(&name)),
                        &json!({}),
                    )?;
                    println!("disabled approver {name}");
                    Ok(())
                }
                ApproverCmd::Enable { name } => {
                    c.post(
                        &format!("/v1/approvers/{}/enable", client::encode(&name)),
                        &json!({}),
                    )?;
                    println!("enabled approver {name}");
                    Ok(())
                }
            }
        }
        Command::Approvals { cmd, conn } => {
            let c = Client::new(&conn)?;
            match cmd {
                ApprovalsCmd::List { status, json } => {
                    let r = c.get(&format!("/v1/approvals?status={}", client::encode(&status)))?;
                    if json {
                        println!("{}", serde_json::to_string_pretty(&r["approvals"])?);
                        return Ok(());
                    }
                    let list = r["approvals"].as_array().cloned().unwrap_or_default();
                    if list.is_empty() {
                        println!("no {status} approvals");
                    }
                    for a in &list {
                        print_approval(a);
                    }
                    Ok(())
                }
                ApprovalsCmd::Show { id } => {
                    print_approval(&c.get(&format!("/v1/approvals/{}", client::encode(&id)))?);
                    Ok(())
                }
                ApprovalsCmd::Approve { id, reason } | ApprovalsCmd::Deny { id, reason }
                    if reason.trim().is_empty() =>
                {
                    bail!("approval {id}: --reason must not be empty")
                }
                ApprovalsCmd::Approve { id, reason } => {
                    let r = c.post(
                        &format!("/v1/approvals/{}/decision", client::encode(&id)),
                        &json!({"approve": true, "reason": reason}),
                    )?;
                    println!(
                        "voted approve on {id}: now {} ({}/{} approvals)",
                        r["status"].as_str().unwrap_or(""),
                        r["approvals"],
                        r["required"]
                    );
                    Ok(())
                }
                ApprovalsCmd::Deny { id, reason } => {
                    let r = c.post(
                        &format!("/v1/approvals/{}/decision", client::encode(&id)),
                        &json!({"approve": false, "reason": reason}),
                    )?;
                    println!(
                        "voted deny on {id}: now {}",
                        r["status"].as_str().unwrap_or("")
                    );
                    Ok(())
                }
            }
        }
        Command::Bench {
            cmd:
                BenchCmd::Http {
                    duration_secs,
                    clients,
                    tasks,
                    conn,
                },
        } => bench::http(&conn, duration_secs, clients.max(1), tasks.max(2)),
        Command::Bench {
            cmd:
                BenchCmd::Policy {
                    pack,
                    policies,
                    decisions,
                    write,
                },
        } => {
            if let Some(dir) = write {
                write_example(&dir)?;
                let extra = policies.iter().max().copied().unwrap_or(0).saturating_sub(
                    tollgate_server::embedded::pack()
                        .map_err(|e| anyhow::anyhow!("{e}"))?
                        .policy_count(),
                );
                std::fs::write(
                    dir.join("policies/zz-agents.cedar"),
                    tollgate_policy::synthetic::agent_policies("acme.test", extra),
                )?;
                println!(
                    "wrote {} with {extra} generated agent policies",
                    dir.display()
                );
                return Ok(());
            }
            let example = tempfile::tempdir()?;
            let dir = match pack {
                Some(dir) => dir,
                None => {
                    write_example(example.path())?;
                    example.path().to_path_buf()
                }
            };
            bench::policy(&dir, &policies, decisions.max(1))
        }
        Command::Bench {
            cmd:
                BenchCmd::Audit {
                    entries,
                    concurrency,
                },
        } => bench::audit(entries, concurrency.max(1)),
        Command::Bench {
            cmd: BenchCmd::Mcp { calls, clients },
        } => bench::mcp(calls.max(1), clients.max(1)),
        Command::Mcp {
            cmd: McpCmd::Upstreams { json },
            conn,
        } => {
            let r = Client::new(&conn)?.get("/v1/mcp/upstreams")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
                return Ok(());
            }
            let upstreams = r["upstreams"].as_array().cloned().unwrap_or_default();
            if upstreams.is_empty() {
                println!("no MCP upstreams configured (mcp.upstreams in tollgate.yaml)");
            }
            for u in upstreams {
                let s = |k: &str| u[k].as_str().unwrap_or_default().to_string();
                println!(
                    "{} ({} {}): {}",
                    s("name"),
                    s("transport"),
                    s("target"),
                    s("state")
                );
                if let Some(f) = u["failure"].as_object() {
                    println!(
                        "  last failure: {} (the first use after {} ms tries again)",
                        f["last_error"].as_str().unwrap_or_default(),
                        f["retry_after_ms"]
                    );
                }
                for t in u["tools"].as_array().into_iter().flatten() {
                    println!(
                        "  {:<28} {}",
                        t["name"].as_str().unwrap_or_default(),
                        t["operation"].as_str().unwrap_or("-")
                    );
                }
            }
            Ok(())
        }
        Command::Pep { cmd, conn } => {
            let c = Client::new(&conn)?;
            match cmd {
                PepCmd::Add { name } => {
                    let r = c.post("/v1/peps", &json!({"name": name}))?;
                    println!("pep:  {}", r["name"].as_str().unwrap_or_default());
                    println!("key:  {}", r["key"].as_str().unwrap_or_default());
                    println!("(shown once; the PEP sends it as bearer token to /access/v1/*)");
                    Ok(())
                }
                PepCmd::List { json } => {
                    let r = c.get("/v1/peps")?;
                    if json {
                        println!("{}", serde_json::to_string_pretty(&r["peps"])?);
                        return Ok(());
                    }
                    for p in r["peps"].as_array().into_iter().flatten() {
                        println!(
                            "{:<32} added {}",
                            term::printable(p["name"].as_str().unwrap_or("")),
                            p["created_at"].as_str().unwrap_or("")
                        );
                    }
                    Ok(())
                }
                PepCmd::Remove { name } => {
                    c.delete(&format!("/v1/peps/{}", client::encode(&name)))?;
                    println!("removed pep {name}: its key no longer works");
                    Ok(())
                }
            }
        }
    }
}

fn d_with_dir(dir: &std::path::Path, d: &tollgate_policy::Diagnostic) -> String {
    format!("{}/{}", dir.display(), d)
}

/// Write the embedded example pack and configuration into `dir`.
fn write_example(dir: &std::path::Path) -> Result<()> {
    for (name, text) in tollgate_server::embedded::FILES {
        let p = dir.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

fn init(dir: &std::path::Path) -> Result<()> {
    if dir.join("tollgate.yaml").exists() {
        bail!(
            "{} already holds a tollgate.yaml; not overwriting",
            dir.display()
        );
    }
    write_example(dir)?;
    println!(
        "wrote the example incident-response pack to {}",
        dir.display()
    );
    println!("validate: tollgate policy validate {}", dir.display());
    println!("serve:    tollgate serve --config {}", dir.display());
    Ok(())
}

fn serve(config: Option<PathBuf>, data: PathBuf, listen: String) -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TOLLGATE_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        // Every line is scrubbed of the secrets the server registers
        // (upstream credentials, the admin token), whoever logs it.
        .with_writer(|| tollgate_server::redact::RedactingStderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let opts = tollgate_server::Options {
            config_dir: config.clone(),
            data_dir: data.clone(),
        };
        let state =
            tollgate_server::AppState::open(&opts, Arc::new(tollgate_core::SystemClock)).await?;
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        let addr = listener.local_addr()?;
        let pack = state.pack.load();
        println!("tollgate listening on http://{addr}");
        println!(
            "policy pack: {} ({} policies, digest {})",
            config
                .as_ref()
                .map(|c| c.display().to_string())
                .unwrap_or_else(|| "built-in example".into()),
            pack.policy_count(),
            &pack.digest()[..12]
        );
        println!("data dir: {}", data.display());
        println!(
            "admin token: {}",
            data.join(tollgate_server::state::ADMIN_TOKEN_FILE)
                .display()
        );
        if state.is_frozen() {
            println!("FROZEN: every agent decision denies until `tollgate unfreeze`");
        }
        use std::io::Write;
        std::io::stdout().flush()?;
        let shutdown = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        tollgate_server::serve(state, listener, shutdown).await?;
        Ok(())
    })
}

fn audit_tail(
    c: &Client,
    incident: Option<String>,
    task: Option<String>,
    agent: Option<String>,
    lines: usize,
    follow: bool,
    json: bool,
) -> Result<()> {
    let mut filter = String::new();
    for (k, v) in [("incident", incident), ("task", task), ("agent", agent)] {
        if let Some(v) = v {
            filter.push_str(&format!("&{k}={}", client::encode(&v)));
        }
    }
    // Walk pages to the end, keeping the last `lines` entries.
    let mut after = 0u64;
    let mut window: std::collections::VecDeque<Value> = Default::default();
    loop {
        let r = c.get(&format!("/v1/audit?after={after}&limit=1000{filter}"))?;
        let entries = r["entries"].as_array().cloned().unwrap_or_default();
        for e in entries {
            after = e["seq"].as_u64().unwrap_or(after);
            window.push_back(e);
            if window.len() > lines {
                window.pop_front();
            }
        }
        if r["next_after"].is_null() {
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
        let r = c.get(&format!("/v1/audit?after={after}&limit=1000{filter}"))?;
        for e in r["entries"].as_array().into_iter().flatten() {
            after = e["seq"].as_u64().unwrap_or(after);
            print_entry(e, json)?;
        }
    }
}

/// Write a line to stdout; a closed pipe (`| head`) ends the program quietly.
fn emit(line: &str) -> Result<()> {
    use std::io::Write;
    match writeln!(std::io::stdout().lock(), "{}", term::escape_controls(line)) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        other => Ok(other?),
    }
}

fn print_entry(e: &Value, json: bool) -> Result<()> {
    if json {
        return emit(&serde_json::to_string(e)?);
    }
    let ev = &e["event"];
    let ts = ev["ts"]
        .as_i64()
        .map(tollgate_core::clock::rfc3339)
        .unwrap_or_default();
    let d = &ev["detail"];
    // Agent-controlled fields, each escaped whole so none can forge a line.
    let p = |v: &Value| term::printable(v.as_str().unwrap_or("")).into_owned();
    let what = match (d["action"].as_str(), d["resource"].as_str()) {
        (Some(a), Some(r)) => format!("{} {}", term::printable(a), term::printable(r)),
        _ => String::new(),
    };
    let why = d["reasons"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter_map(Value::as_str)
                .map(|x| term::printable(x).into_owned())
                .collect::<Vec<_>>()
                .join("; ")
        })
        .unwrap_or_default();
    emit(&format!(
        "{:>6} {} {:<18} {:<18} {:<34} {} {}{}",
        e["seq"],
        ts,
        ev["kind"].as_str().unwrap_or(""),
        ev["outcome"].as_str().unwrap_or("-"),
        ev["task_id"].as_str().unwrap_or("-"),
        p(&ev["actor"]),
        what,
        if why.is_empty() {
            String::new()
        } else {
            format!(" ({why})")
        }
    ))
}

fn print_approval(a: &Value) {
    // Agent-controlled text, each field escaped whole (newlines included).
    let s = |v: &Value| term::printable(v.as_str().unwrap_or("")).into_owned();
    println!(
        "{}  {}  {}/{} approvals  expires {}",
        s(&a["id"]),
        s(&a["status"]),
        a["approvals"],
        a["required"],
        s(&a["expires_at"])
    );
    println!("  agent:    {}", s(&a["agent"]));
    println!(
        "  wants:    {} on {} (tier {}, labels {})",
        s(&a["action"]),
        s(&a["resource"]),
        s(&a["tier"]),
        a["labels"]
    );
    println!("  intent:   {}", s(&a["request"]["intent"]));
    println!("  params:   {}", a["request"]["parameters"]);
    println!(
        "  task:     {} incident {} ({})",
        s(&a["task_id"]),
        s(&a["incident_id"]),
        s(&a["task"]["intent"])
    );
    println!(
        "  policy:   {}",
        a["reasons"]
            .as_array()
            .map(|r| r.iter().map(&s).collect::<Vec<_>>().join("; "))
            .unwrap_or_default()
    );
    for e in a["evidence"].as_array().into_iter().flatten() {
        println!(
            "  evidence: {} {} sha256:{}",
            s(&e["kind"]),
            s(&e["resource"]),
            s(&e["sha256"])
        );
    }
    for c in a["chain"].as_array().into_iter().flatten() {
        println!(
            "  chain:    {} {} {} -> {}",
            s(&c["at"]),
            s(&c["action"]),
            s(&c["resource"]),
            s(&c["outcome"])
        );
    }
    for v in a["votes"].as_array().into_iter().flatten() {
        println!(
            "  vote:     {} ({}) {}: {}",
            s(&v["approver"]),
            s(&v["role"]),
            if v["approve"].as_bool() == Some(true) {
                "approve"
            } else {
                "deny"
            },
            s(&v["reason"])
        );
    }
}

fn policy_test(dir: &std::path::Path, mut files: Vec<PathBuf>) -> Result<()> {
    let pack = match tollgate_policy::PolicyPack::load_dir(dir) {
        Ok(p) => p,
        Err(tollgate_policy::PolicyError::Invalid(diags)) => {
            for d in &diags {
                eprintln!("{}", d_with_dir(dir, d));
            }
            bail!("the pack in {} does not validate", dir.display())
        }
        Err(e) => return Err(e.into()),
    };
    if files.is_empty() {
        let tests = dir.join("tests");
        files = std::fs::read_dir(&tests)
            .with_context(|| format!("reading {}", tests.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
            .collect();
        files.sort();
    }
    let (mut passed, mut failed) = (0, 0);
    for f in &files {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        let t = tollgate_policy::testing::parse(&text)
            .map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
        let failures = tollgate_policy::testing::run(&pack, &t)
            .map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
        if failures.is_empty() {
            passed += 1;
            println!(
                "ok    {} ({} steps): {}",
                f.display(),
                t.steps.len(),
                t.name
            );
        } else {
            failed += 1;
            println!("FAIL  {}: {}", f.display(), t.name);
            for x in failures {
                println!("      step {}: {}", x.step, x.message);
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        bail!("{failed} policy test file(s) failed");
    }
    Ok(())
}
