//! `tollgate tools example`: the example incident-response MCP server, an
//! ordinary upstream for the MCP gateway (see docs/mcp-gateway.md); and
//! `tollgate policy schema --from-mcp`, which drafts policy for a server's tools.

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::time::Duration;
use tollgate_example_tools::{ExampleTools, Settings, StateFile, TOKEN_ENV};

#[derive(Subcommand)]
pub enum ToolsCmd {
    /// An MCP server of incident-response tools (EDR, SIEM, IAM, vault, HTTP post)
    /// acting on a local JSON state file.
    Example(ExampleArgs),
}

pub fn run(cmd: ToolsCmd) -> Result<()> {
    match cmd {
        ToolsCmd::Example(args) => example(args),
    }
}

#[derive(Args)]
pub struct ExampleArgs {
    /// The JSON state file the tools act on; the reference world is written there if it is missing.
    #[arg(long, default_value = "ir-world.json")]
    state: PathBuf,
    /// A file holding the API token callers must present (stdio: in IR_TOOLS_TOKEN;
    /// HTTP: as a bearer token). Without it the server accepts anyone.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Serve streamable HTTP at http://ADDR/mcp instead of MCP on stdin/stdout.
    #[arg(long)]
    listen: Option<String>,
    /// Write this process's id here (tests kill it to see the gateway restart it).
    #[arg(long)]
    pid_file: Option<PathBuf>,
    /// Make TOOL answer only after SECONDS (TOOL=SECONDS), to try call timeouts.
    #[arg(long, value_parser = parse_slow)]
    slow: Vec<(String, Duration)>,
    /// Put the credential each call was made with into its answer, like a careless
    /// server would; the gateway must redact it.
    #[arg(long)]
    echo_credential: bool,
    /// Exit (as a crash would) when TOOL is called, before answering (stdio), to try
    /// a server dying in the middle of a call.
    #[arg(long, value_name = "TOOL")]
    crash_on: Vec<String>,
    /// Answer TOOL with a malformed JSON-RPC message instead of its result (stdio
    /// only), to try how the gateway handles a broken server.
    #[arg(long, value_name = "TOOL")]
    malformed: Vec<String>,
    /// Leave TOOL out of tools/list until the first call, which then announces
    /// that the tool list changed.
    #[arg(long, value_name = "TOOL")]
    late_tool: Vec<String>,
    /// Answer TOOL with a JSON-RPC "invalid params" error quoting the arguments,
    /// as a validating server does.
    #[arg(long, value_name = "TOOL")]
    invalid_params: Vec<String>,
}

fn parse_slow(s: &str) -> Result<(String, Duration), String> {
    let (tool, secs) = s.split_once('=').ok_or("expected TOOL=SECONDS")?;
    let secs: f64 = secs.parse().map_err(|_| "SECONDS must be a number")?;
    if !(0.0..=3600.0).contains(&secs) {
        return Err("SECONDS must be between 0 and 3600".into());
    }
    Ok((tool.to_string(), Duration::from_secs_f64(secs)))
}

fn example(args: ExampleArgs) -> Result<()> {
    let state = StateFile::open(&args.state)
        .with_context(|| format!("opening state file {}", args.state.display()))?;
    let token = match &args.token_file {
        Some(p) => {
            let t = std::fs::read_to_string(p)
                .with_context(|| format!("reading token file {}", p.display()))?;
            let t = t.trim().to_string();
            if t.is_empty() {
                bail!("token file {} is empty", p.display());
            }
            Some(t)
        }
        None => None,
    };
    if let Some(p) = &args.pid_file {
        std::fs::write(p, std::process::id().to_string())
            .with_context(|| format!("writing pid file {}", p.display()))?;
    }
    let settings = Settings {
        token,
        slow: args.slow,
        echo_credential: args.echo_credential,
        crash_on: args.crash_on,
        malformed: if args.listen.is_some() && !args.malformed.is_empty() {
            bail!("--malformed works on stdio only");
        } else {
            args.malformed
        },
        late_tools: args.late_tool,
        invalid_params: args.invalid_params,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match args.listen {
            None => {
                // stdout is the protocol channel: say nothing there.
                let tools = ExampleTools::new(state, settings, std::env::var(TOKEN_ENV).ok());
                tollgate_example_tools::serve_stdio(tools)
                    .await
                    .map_err(anyhow::Error::msg)
            }
            Some(addr) => {
                let listener = tokio::net::TcpListener::bind(&addr)
                    .await
                    .with_context(|| format!("binding {addr}"))?;
                println!(
                    "ir-tools MCP server on http://{}/mcp",
                    listener.local_addr()?
                );
                let tools = ExampleTools::new(state, settings, None);
                tollgate_example_tools::serve_http(tools, listener, async {
                    let _ = tokio::signal::ctrl_c().await;
                })
                .await?;
                Ok(())
            }
        }
    })
}

/// `tollgate policy schema --from-mcp`: read an MCP server's tools/list and
/// draft the schema and catalog entries that govern them.
pub fn schema_from_mcp(
    target: &str,
    server: &str,
    headers: &[String],
    ca_file: Option<&std::path::Path>,
    out: Option<&std::path::Path>,
) -> Result<()> {
    let is_http = target.starts_with("http://") || target.starts_with("https://");
    if ca_file.is_some() && !target.starts_with("https://") {
        bail!("--ca-file is for https:// servers");
    }
    use rmcp::ServiceExt;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let tools = rt.block_on(async {
        let client = if is_http {
            use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
            let mut map = std::collections::HashMap::new();
            for h in headers {
                let (name, value) = h
                    .split_once(':')
                    .with_context(|| format!("header {h:?}: expected \"Name: value\""))?;
                map.insert(
                    http::HeaderName::from_bytes(name.trim().as_bytes())?,
                    http::HeaderValue::from_str(value.trim())?,
                );
            }
            let config = StreamableHttpClientTransportConfig::with_uri(target).custom_headers(map);
            // The same client the gateway makes: the CA file's roots, no redirects.
            let http =
                tollgate_server::mcp::mcp_http_client(ca_file).map_err(anyhow::Error::msg)?;
            ().serve(rmcp::transport::StreamableHttpClientTransport::with_client(
                http, config,
            ))
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "connecting to {target}: {}",
                    tollgate_server::mcp::handshake_error(&e)
                )
            })?
        } else {
            if !headers.is_empty() {
                bail!("--header is for http(s) servers; a stdio server reads its environment");
            }
            let mut words = target.split_whitespace();
            let program = words.next().context("--from-mcp is empty")?;
            let mut cmd = tokio::process::Command::new(program);
            cmd.args(words);
            let transport = rmcp::transport::TokioChildProcess::new(cmd)
                .with_context(|| format!("starting {program}"))?;
            ().serve(transport)
                .await
                .with_context(|| format!("MCP handshake with {program}"))?
        };
        let tools = client.list_all_tools().await.context("tools/list")?;
        let _ = client.cancel().await;
        anyhow::Ok(tools)
    })?;
    let described: Vec<tollgate_policy::mcp_schema::McpTool> = tools
        .iter()
        .map(|t| tollgate_policy::mcp_schema::McpTool {
            name: t.name.to_string(),
            description: t.description.as_deref().unwrap_or_default().to_string(),
            input_schema: serde_json::Value::Object((*t.input_schema).clone()),
            annotations: serde_json::to_value(&t.annotations).unwrap_or_default(),
        })
        .collect();
    let g = tollgate_policy::mcp_schema::generate(server, &described);
    match out {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            let (schema, catalog) = (dir.join("mcp.cedarschema"), dir.join("mcp-catalog.yaml"));
            std::fs::write(&schema, &g.schema)?;
            std::fs::write(&catalog, &g.catalog)?;
            println!(
                "{} tools: wrote {} and {}; merge them into the pack, then `tollgate policy validate`",
                tools.len(),
                schema.display(),
                catalog.display()
            );
        }
        None => {
            println!("{}", g.schema);
            println!("# ---- catalog.yaml entries ----");
            print!("{}", g.catalog);
        }
    }
    Ok(())
}
