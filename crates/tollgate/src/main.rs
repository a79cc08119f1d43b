//! `tollgate`: the one binary. `serve` runs the gateway; every other command
//! either works offline on files (`init`, `policy validate`) or talks to a
//! running server's API, like `vault` does, found through `TOLLGATE_ADDR`
//! and `TOLLGATE_TOKEN`.

// Every line the CLI prints passes through `term`, which escapes terminal
// controls: much of what is printed is text an agent wrote. Defined before
// the modules so that they, and every module under `cmd/`, use these, not std's.
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

// jemalloc instead of glibc's allocator: glibc kept the memory freed after
// loading a large pack, and per-thread arenas, resident (a 10,000-policy
// server at 232 MB where jemalloc, returning freed pages after a second,
// holds about 140 MB; README, Performance). Its settings are built in from
// `.cargo/config.toml`. It also stands in for C's `malloc`, so SQLite's
// allocations go there: under glibc, a reader connection's page cache, freed
// whenever another connection had committed, was trimmed back to the OS
// (`madvise`) and faulted in again on the next read, at every decision.
#[cfg(all(target_os = "linux", not(target_env = "musl")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod api_types;
mod client;
mod cmd;
mod profile;
mod term;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

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
    /// Server address (default: the context's, else http://127.0.0.1:8181).
    #[arg(long, env = "TOLLGATE_ADDR", global = true)]
    addr: Option<String>,
    /// A context of the profile (~/.config/tollgate/config.yaml): its address and token file.
    #[arg(long, env = "TOLLGATE_CONTEXT", global = true)]
    context: Option<String>,
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
        /// Directory to write (refused if it holds a tollgate.yaml already).
        #[arg(default_value = "tollgate-config")]
        dir: PathBuf,
    },
    /// Run the gateway.
    Serve {
        /// Config directory (tollgate.yaml, schema, catalog, policies/); default: the built-in example pack.
        #[arg(long, env = "TOLLGATE_CONFIG")]
        config: Option<PathBuf>,
        /// Data directory: keys, the admin token, and the SQLite store (created if missing).
        #[arg(long, env = "TOLLGATE_DATA", default_value = "tollgate-data")]
        data: PathBuf,
        /// Address to listen on (host:port; port 0 picks a free one).
        #[arg(long, env = "TOLLGATE_LISTEN", default_value = "127.0.0.1:8181")]
        listen: String,
    },
    /// The store: apply migrations by hand.
    Store {
        #[command(subcommand)]
        cmd: cmd::store::StoreCmd,
    },
    /// Agent instances.
    Agent {
        #[command(subcommand)]
        cmd: cmd::agent::AgentCmd,
        #[command(flatten)]
        conn: Conn,
    },
    /// Tasks.
    Task {
        #[command(subcommand)]
        cmd: cmd::task::TaskCmd,
        #[command(flatten)]
        conn: Conn,
    },
    /// Incidents: resolve or reclassify.
    Incident {
        #[command(subcommand)]
        cmd: cmd::incident::IncidentCmd,
        #[command(flatten)]
        conn: Conn,
    },
    /// Kill switch: every agent decision denies until unfreeze.
    Freeze {
        #[command(flatten)]
        conn: Conn,
    },
    /// Lift the kill switch: decisions follow policy again.
    Unfreeze {
        #[command(flatten)]
        conn: Conn,
    },
    /// Policy packs.
    Policy {
        #[command(subcommand)]
        cmd: cmd::policy::PolicyCmd,
    },
    /// The audit log.
    Audit {
        #[command(subcommand)]
        cmd: cmd::audit::AuditCmd,
        #[command(flatten)]
        conn: Conn,
    },
    /// Human approvers (admin).
    Approver {
        #[command(subcommand)]
        cmd: cmd::approver::ApproverCmd,
        #[command(flatten)]
        conn: Conn,
    },
    /// Decide pending approvals (as an approver: TOLLGATE_TOKEN = your approver key).
    Approvals {
        #[command(subcommand)]
        cmd: cmd::approvals::ApprovalsCmd,
        #[command(flatten)]
        conn: Conn,
    },
    /// Benchmarks on this machine.
    Bench {
        #[command(subcommand)]
        cmd: cmd::bench::BenchCmd,
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
        cmd: cmd::mcp::McpCmd,
        #[command(flatten)]
        conn: Conn,
    },
    /// Example tool servers to put behind the MCP gateway.
    Tools {
        #[command(subcommand)]
        cmd: cmd::tools::ToolsCmd,
    },
    /// Print a shell completion script: `tollgate completion bash > /etc/bash_completion.d/tollgate`.
    Completion {
        /// The shell to complete in.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), or write one page per command into --dir.
    Man {
        /// Write `tollgate.1`, `tollgate-serve.1`, … into this directory instead.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Named contexts (address and token file), like kubectl's: list, use, set, delete.
    Context {
        #[command(subcommand)]
        cmd: profile::ContextCmd,
    },
    /// Policy enforcement points (AuthZEN callers).
    Pep {
        #[command(subcommand)]
        cmd: cmd::pep::PepCmd,
        #[command(flatten)]
        conn: Conn,
    },
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The chain of causes on one line, escaped like all output
            // (server errors quote what agents sent); a backtrace only when
            // asked for with TOLLGATE_DEBUG=1 (RUST_BACKTRACE alone does not).
            if std::env::var("TOLLGATE_DEBUG").is_ok_and(|v| v == "1") {
                eprintln!("error: {e:?}");
            } else {
                eprintln!("error: {e:#}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    // Before any HTTP client exists (MCP upstreams, `--from-mcp`, the demo).
    tollgate_server::mcp::install_crypto_provider();
    match Cli::parse().command {
        Command::Init { dir } => cmd::init::run(&dir),
        Command::Serve {
            config,
            data,
            listen,
        } => cmd::serve::run(config, data, listen),
        Command::Store { cmd: sub } => cmd::store::run(sub),
        Command::Agent { cmd: sub, conn } => cmd::agent::run(sub, &conn),
        Command::Task { cmd: sub, conn } => cmd::task::run(sub, &conn),
        Command::Incident { cmd: sub, conn } => cmd::incident::run(sub, &conn),
        Command::Freeze { conn } => cmd::freeze::freeze(&conn),
        Command::Unfreeze { conn } => cmd::freeze::unfreeze(&conn),
        Command::Policy { cmd: sub } => cmd::policy::run(sub),
        Command::Audit { cmd: sub, conn } => cmd::audit::run(sub, &conn),
        Command::Approver { cmd: sub, conn } => cmd::approver::run(sub, &conn),
        Command::Approvals { cmd: sub, conn } => cmd::approvals::run(sub, &conn),
        Command::Bench { cmd: sub } => cmd::bench::run(sub),
        Command::Demo { dir } => cmd::demo::run(dir),
        Command::Mcp { cmd: sub, conn } => cmd::mcp::run(sub, &conn),
        Command::Tools { cmd: sub } => cmd::tools::run(sub),
        Command::Pep { cmd: sub, conn } => cmd::pep::run(sub, &conn),
        Command::Context { cmd: sub } => profile::run(sub),
        Command::Completion { shell } => {
            let mut cli = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cli, "tollgate", &mut std::io::stdout());
            Ok(())
        }
        Command::Man { dir } => man(dir),
    }
}

/// The man page from the clap definitions: one page to stdout, or every
/// command's page into `dir`.
fn man(dir: Option<PathBuf>) -> Result<()> {
    let cli = <Cli as clap::CommandFactory>::command();
    match dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir)?;
            clap_mangen::generate_to(cli, &dir)?;
            println!("man pages written to {}", dir.display());
        }
        None => {
            // Written as bytes: roff is not text an agent wrote, and the
            // terminal filter would escape nothing in it anyway.
            let mut page = Vec::new();
            clap_mangen::Man::new(cli).render(&mut page)?;
            use std::io::Write;
            std::io::stdout().write_all(&page)?;
        }
    }
    Ok(())
}

impl Conn {
    /// The address and credentials to use: flags and environment first,
    /// then the profile's context, then the defaults.
    fn resolve(&self) -> Result<profile::Resolved> {
        let p = profile::load()?;
        profile::resolve(
            &p,
            self.context.as_deref(),
            self.addr.as_deref(),
            self.token.as_deref(),
            self.data.as_deref(),
        )
    }
}

/// Print `value` as indented JSON: the `--json` output, the server's answer as sent.
fn print_json(value: &serde_json::Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// One JSON value on one line, for output read line by line (`jq -c`, logs).
fn print_json_line(value: &serde_json::Value) -> Result<()> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}

#[cfg(test)]
mod help_tests {
    use super::Cli;
    use clap::CommandFactory;

    /// Every command and every flag says what it is, so `--help`, the man
    /// page and completions all explain themselves.
    #[test]
    fn every_command_and_flag_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let here = format!("{path} {}", cmd.get_name()).trim().to_string();
            if cmd.get_about().is_none()
                && here != "tollgate help"
                && !here.starts_with("tollgate help ")
            {
                missing.push(format!("command `{here}`"));
            }
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if arg.get_help().is_none() {
                    missing.push(format!("`{here}` argument `{id}`"));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &here, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "", &mut missing);
        assert!(missing.is_empty(), "no help text:\n{}", missing.join("\n"));
    }

    #[test]
    fn completions_and_the_man_page_come_from_the_same_definitions() {
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "tollgate", &mut out);
            let text = String::from_utf8(out).unwrap();
            for word in ["approvals", "freeze", "--addr"] {
                assert!(text.contains(word), "{shell:?} completion lacks {word}");
            }
        }
        let mut page = Vec::new();
        clap_mangen::Man::new(Cli::command())
            .render(&mut page)
            .unwrap();
        let page = String::from_utf8(page).unwrap();
        assert!(
            page.contains(".TH tollgate") && page.contains("approvals"),
            "{page}"
        );
        let dir = tempfile::tempdir().unwrap();
        clap_mangen::generate_to(Cli::command(), dir.path()).unwrap();
        assert!(dir.path().join("tollgate-approvals-approve.1").exists());
    }
}
