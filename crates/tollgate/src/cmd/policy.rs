//! `tollgate policy validate|test|schema|reload|shadow`: all offline on a
//! pack directory but `reload` and `shadow`, which ask the running server.

use crate::client::Client;
use crate::Conn;
use anyhow::{anyhow, bail, Context, Result};
use clap::Subcommand;
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub enum PolicyCmd {
    /// Validate a pack directory offline; prints file:line:column errors.
    Validate {
        /// The pack directory (tollgate.yaml, schema, catalog, policies/).
        #[arg(default_value = "tollgate-config")]
        dir: PathBuf,
        /// Print the result as JSON (counts and digest, or the problems with
        /// file, line and column) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run test traces (YAML: requests with expected decisions) against a pack
    /// offline; by default every file in DIR/tests. Exits non-zero on a failure.
    Test {
        /// The pack directory (tollgate.yaml, schema, catalog, policies/, tests/).
        #[arg(default_value = "tollgate-config")]
        dir: PathBuf,
        /// Test files to run instead of DIR/tests/*.yaml.
        files: Vec<PathBuf>,
        /// Print one JSON object per test file and a summary instead of text.
        #[arg(long)]
        json: bool,
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
    /// A shadow pack on the running server: evaluated beside the enforced
    /// pack on every decision, never enforced; each disagreement audited.
    Shadow {
        #[command(subcommand)]
        cmd: super::shadow::ShadowCmd,
    },
    /// Re-decide the recorded decisions of the audit log (verified first)
    /// against a candidate pack, each with the facts it had at the time,
    /// and print what would change; exits 1 if anything would. Reads a
    /// stopped server's --data directory, or the running server's log.
    Replay {
        /// The candidate pack directory.
        #[arg(long)]
        pack: PathBuf,
        /// Only decisions at or after this time (RFC 3339, or Unix seconds).
        #[arg(long)]
        since: Option<String>,
        /// Only this incident's decisions.
        #[arg(long)]
        incident: Option<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Ask the running server to reload its pack.
    Reload {
        /// Print the server's JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Conn,
    },
}

pub fn run(cmd: PolicyCmd) -> Result<()> {
    match cmd {
        PolicyCmd::Validate { dir, json } => validate(&dir, json),
        PolicyCmd::Test { dir, files, json } => test(&dir, files, json),
        PolicyCmd::Schema {
            from_mcp,
            server,
            headers,
            ca_file,
            out,
        } => super::tools::schema_from_mcp(
            &from_mcp,
            &server,
            &headers,
            ca_file.as_deref(),
            out.as_deref(),
        ),
        PolicyCmd::Shadow { cmd } => super::shadow::run(cmd),
        PolicyCmd::Replay {
            pack,
            since,
            incident,
            json,
            conn,
        } => replay(&pack, since.as_deref(), incident, json, &conn),
        PolicyCmd::Reload { json, conn } => {
            let reloaded = Client::new(&conn)?.reload_policy()?;
            if json {
                return crate::print_json(&reloaded.json);
            }
            println!(
                "reloaded: {} policies, digest {}",
                reloaded.value.policies, reloaded.value.digest
            );
            Ok(())
        }
    }
}

fn replay(
    dir: &Path,
    since: Option<&str>,
    incident: Option<String>,
    json: bool,
    conn: &Conn,
) -> Result<()> {
    let pack = load(dir)?;
    let filter = super::replay::Filter {
        since: since.map(super::shadow::parse_time).transpose()?,
        incident,
    };
    let entries = super::audit::verified_entries(conn)
        .context("the audit log did not verify; nothing was replayed")?;
    let replayed = super::replay::replay(&entries, &pack, &filter);
    let report = super::replay::report(&replayed);
    if json {
        crate::print_json(&report)?;
    } else {
        super::replay::print(&report)?;
    }
    // For CI pipelines of policy repositories: a change fails the step.
    if !replayed.changes.is_empty() {
        bail!(
            "{} of {} replayed decisions would change",
            replayed.changes.len(),
            replayed.replayed
        );
    }
    Ok(())
}

/// A diagnostic with its file named by the path given, not relative to the pack.
fn d_with_dir(dir: &Path, d: &tollgate_policy::Diagnostic) -> String {
    format!("{}/{}", dir.display(), d)
}

/// The limits a server configured by the `tollgate.yaml` beside the pack
/// would load it under (`tollgate init` puts them together), or the
/// defaults for a pack without one.
fn load_options(dir: &Path) -> Result<tollgate_policy::LoadOptions> {
    let config = dir.join("tollgate.yaml");
    if !config.exists() {
        return Ok(tollgate_policy::LoadOptions::default());
    }
    let text = std::fs::read_to_string(&config)
        .with_context(|| format!("reading {}", config.display()))?;
    let config = tollgate_server::config::ServerConfig::from_yaml(&text).map_err(|e| anyhow!(e))?;
    Ok(config.pack_options())
}

fn validate(dir: &Path, json: bool) -> Result<()> {
    match tollgate_policy::PolicyPack::load_dir_with(dir, load_options(dir)?) {
        Ok(p) if json => crate::print_json(&serde_json::json!({
            "ok": true,
            "policies": p.policy_count(),
            "operations": p.catalog().operations.len(),
            "digest": p.digest(),
        })),
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
            if json {
                let problems: Vec<_> = diags
                    .iter()
                    .map(|d| {
                        serde_json::json!({
                            "file": dir.join(&d.file).display().to_string(),
                            "line": d.line,
                            "column": d.column,
                            "message": d.message,
                        })
                    })
                    .collect();
                crate::print_json(&serde_json::json!({"ok": false, "problems": problems}))?;
            } else {
                for d in &diags {
                    eprintln!("{}", d_with_dir(dir, d));
                }
            }
            bail!("{} problem(s) in {}", diags.len(), dir.display())
        }
        Err(e) => Err(e.into()),
    }
}

/// The pack in `dir`; its problems on stderr if it does not validate.
fn load(dir: &Path) -> Result<tollgate_policy::PolicyPack> {
    match tollgate_policy::PolicyPack::load_dir_with(dir, load_options(dir)?) {
        Ok(p) => Ok(p),
        Err(tollgate_policy::PolicyError::Invalid(diags)) => {
            for d in &diags {
                eprintln!("{}", d_with_dir(dir, d));
            }
            bail!("the pack in {} does not validate", dir.display())
        }
        Err(e) => Err(e.into()),
    }
}

fn test(dir: &Path, mut files: Vec<PathBuf>, json: bool) -> Result<()> {
    let pack = load(dir)?;
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
        if json {
            let failures: Vec<_> = failures
                .iter()
                .map(|x| serde_json::json!({"step": x.step, "message": x.message}))
                .collect();
            crate::print_json_line(&serde_json::json!({
                "file": f.display().to_string(),
                "name": t.name,
                "steps": t.steps.len(),
                "ok": failures.is_empty(),
                "failures": failures,
            }))?;
            if failures.is_empty() {
                passed += 1;
            } else {
                failed += 1;
            }
        } else if failures.is_empty() {
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
    if json {
        crate::print_json_line(&serde_json::json!({"passed": passed, "failed": failed}))?;
    } else {
        println!("{passed} passed, {failed} failed");
    }
    if failed > 0 {
        bail!("{failed} policy test file(s) failed");
    }
    Ok(())
}
