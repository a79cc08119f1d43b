//! The MCP gateway end to end: a real MCP client (rmcp, and the official
//! Python SDK) talks to `tollgate serve` at /mcp, which runs the example
//! tool server (`tollgate tools example`) as its stdio upstream. What the
//! tools did is read back from the tool server's own state file.

use crate::harness::*;
use rmcp::model::{CallToolRequestParams, CallToolResult, ProgressNotificationParam};
use rmcp::service::{NotificationContext, RunningService};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use serde_json::{json, Map, Value};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// A gateway with one stdio upstream (the example tools, which need their
/// token and echo back the credential they were called with).
pub struct Gateway {
    pub server: Server,
    pub world: PathBuf,
    pub token: String,
    pub pid_file: PathBuf,
    /// The server's stderr, when started with `log`.
    pub log: PathBuf,
    _tmp: tempfile::TempDir,
}

/// How the gateway reaches the example tools.
enum Upstream {
    Stdio,
    /// Already serving streamable HTTP at this URL (`https://` with the
    /// PEM file of its CA, if given, as `ca_file`).
    Http(String, Option<PathBuf>),
}

/// The example tool server on streamable HTTP, killed on drop.
struct HttpTools {
    child: std::process::Child,
    url: String,
}

impl HttpTools {
    fn start(world: &std::path::Path, token_file: &std::path::Path) -> Self {
        use std::io::BufRead;
        let mut child = std::process::Command::new(bin())
            .args([
                "tools",
                "example",
                "--listen",
                "127.0.0.1:0",
                "--echo-credential",
                "--state",
            ])
            .arg(world)
            .arg("--token-file")
            .arg(token_file)
            .stdout(std::process::Stdio::piped())
            // It prints the credential it was called with (on purpose).
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .trim()
            .strip_prefix("ir-tools MCP server on ")
            .unwrap_or_else(|| panic!("unexpected {line:?}"))
            .to_string();
        Self { child, url }
    }
}

impl Drop for HttpTools {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_secret(path: &std::path::Path, text: &str) {
    std::fs::write(path, text).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
}

impl Gateway {
    pub fn start() -> Self {
        Self::start_with(|_, _| Upstream::Stdio, &[], false)
    }

    /// `extra`: more arguments for the stdio tool server; `log`: keep the
    /// gateway's whole log (trace) in `self.log`.
    fn start_with(
        upstream: impl FnOnce(&std::path::Path, &std::path::Path) -> Upstream,
        extra: &[&str],
        log: bool,
    ) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let config = tmp.path().join("config");
        let out = std::process::Command::new(bin())
            .arg("init")
            .arg(&config)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let token = format!("ir-tools-secret-{}", now());
        let token_file = config.join("ir-tools.token");
        write_secret(&token_file, &format!("{token}\n"));
        let world = tmp.path().join("world.json");
        let pid_file = tmp.path().join("ir-tools.pid");
        let mut yaml = std::fs::read_to_string(config.join("tollgate.yaml")).unwrap();
        if let Upstream::Http(url, ca) = upstream(&world, &token_file) {
            let ca = ca
                .map(|p| format!("        ca_file: {:?}\n", p.display().to_string()))
                .unwrap_or_default();
            yaml.push_str(&format!(
                "mcp:\n  upstreams:\n    - name: ir-tools\n      http:\n        url: {url}\n{ca}        headers:\n          Authorization: {{file: ir-tools.token, prefix: \"Bearer \"}}\n"
            ));
        } else {
            yaml.push_str(&format!(
            "mcp:\n  call_timeout_seconds: 3\n  progress_every_seconds: 1\n  upstreams:\n    - name: ir-tools\n      stdio:\n        command: tollgate\n        args: [tools, example, --state, {world:?}, --token-file, {token_file:?}, --pid-file, {pid_file:?}, --echo-credential, --slow, forensics_image_host=30{extra}]\n        env:\n          IR_TOOLS_TOKEN: {{file: ir-tools.token}}\n",
            world = world.display().to_string(),
            token_file = token_file.display().to_string(),
            pid_file = pid_file.display().to_string(),
            extra = extra.iter().map(|a| format!(", {a}")).collect::<String>(),
        ));
        }
        std::fs::write(config.join("tollgate.yaml"), yaml).unwrap();
        let log_path = tmp.path().join("gateway.log");
        let server = if log {
            Server::start_logging_to(&config, &tmp.path().join("data"), &log_path)
        } else {
            Server::start_with_config(&config, &tmp.path().join("data"))
        };
        Self {
            server,
            world,
            token,
            pid_file,
            log: log_path,
            _tmp: tmp,
        }
    }

    pub fn world(&self) -> Value {
        serde_json::from_str(&std::fs::read_to_string(&self.world).unwrap()).unwrap()
    }
}

/// Records progress notifications.
#[derive(Clone, Default)]
struct Progress(Arc<Mutex<Vec<String>>>);

impl ClientHandler for Progress {
    async fn on_progress(&self, p: ProgressNotificationParam, _: NotificationContext<RoleClient>) {
        self.0.lock().unwrap().push(p.message.unwrap_or_default());
    }

    async fn on_tool_list_changed(&self, _: NotificationContext<RoleClient>) {
        self.0.lock().unwrap().push("tools/list_changed".into());
    }
}

async fn connect(s: &Server, cred: &str) -> (RunningService<RoleClient, Progress>, Progress) {
    tollgate_server::mcp::install_crypto_provider();
    let progress = Progress::default();
    let config =
        StreamableHttpClientTransportConfig::with_uri(s.url("/mcp")).auth_header(cred.to_string());
    let client = progress
        .clone()
        .serve(StreamableHttpClientTransport::from_config(config))
        .await
        .unwrap();
    (client, progress)
}

fn args(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

async fn call(c: &RunningService<RoleClient, Progress>, tool: &str, a: Value) -> CallToolResult {
    c.call_tool(CallToolRequestParams::new(tool.to_string()).with_arguments(args(a)))
        .await
        .unwrap()
}

fn text(r: &CallToolResult) -> String {
    r.content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Audit events of one kind (the `event` of each entry).
fn events(s: &Server, kind: &str) -> Vec<Value> {
    s.audit("")
        .into_iter()
        .filter(|e| e["event"]["kind"] == kind)
        .map(|e| e["event"].clone())
        .collect()
}

/// Call `tool`, which must answer with a tool error saying `needle`.
async fn tool_error(
    c: &RunningService<RoleClient, Progress>,
    tool: &str,
    a: Value,
    needle: &str,
) -> CallToolResult {
    let r = call(c, tool, a).await;
    assert_eq!(r.is_error, Some(true), "{tool}: {}", text(&r));
    assert!(text(&r).contains(needle), "{tool}: {}", text(&r));
    r
}

/// Call `tool` in the background (it may be held for approval).
fn spawn_call(
    c: &RunningService<RoleClient, Progress>,
    tool: &'static str,
    a: Value,
) -> tokio::task::JoinHandle<Result<CallToolResult, rmcp::ServiceError>> {
    let peer = c.peer().clone();
    tokio::spawn(async move {
        peer.call_tool(CallToolRequestParams::new(tool).with_arguments(args(a)))
            .await
    })
}

/// The id of the first pending approval `approver` sees, once there is one
/// (within 30 s).
async fn pending_approval(s: &Server, approver: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (_, v) = s.get("/v1/approvals?status=pending", Some(approver));
        if let Some(id) = v["approvals"][0]["id"].as_str() {
            return id.to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no pending approval: {v}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Record evidence for `host` (REST), then isolate it through the gateway;
/// the host is isolated in the tool server's state afterwards.
async fn isolate_with_evidence(
    g: &Gateway,
    c: &RunningService<RoleClient, Progress>,
    task_id: &str,
    cred: &str,
    host_id: &str,
) -> CallToolResult {
    let content = format!("pid 4242 beacon.exe on {host_id} -> 203.0.113.7:443");
    let (st, ev) = g.server.post(
        &format!("/v1/tasks/{task_id}/evidence"),
        Some(cred),
        &json!({"resource": host(host_id), "kind": "process-list",
                "sha256": tollgate_core::sha256_hex(content.as_bytes()), "content": content}),
    );
    assert_eq!(st, 201, "{ev}");
    let r = call(
        c,
        "edr_isolate_host",
        json!({"host": host_id, "reason": "beacon"}),
    )
    .await;
    assert_eq!(
        g.world()["hosts"][host_id]["isolated"],
        true,
        "{}",
        text(&r)
    );
    r
}

fn names(tools: &[rmcp::model::Tool]) -> Vec<String> {
    let mut n: Vec<String> = tools.iter().map(|t| t.name.to_string()).collect();
    n.sort();
    n
}

#[test]
fn an_rmcp_client_gets_every_tool_call_governed() {
    let g = Gateway::start();
    let s = &g.server;
    let ivan = s.approver("ivan@acme.test", "identity");
    let svid = s.enrol(IR);
    let (task_id, cred) = s.open_task(&svid);
    // A second task on the read-only `investigate` playbook.
    let (status, v) = s.post(
        "/v1/tasks",
        Some(&svid),
        &json!({"incident": {"id": "INC-4711", "class": "malware", "severity": "high"},
                "environment": "prod", "playbook": "investigate", "intent": "look around"}),
    );
    assert_eq!(status, 201, "{v}");
    let reader_cred = v["credential"].as_str().unwrap().to_string();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut answers = Vec::new();

    rt.block_on(async {
        let (c, progress) = connect(s, &cred).await;

        // tools/list: the catalog's tools this task's playbook allows, with
        // the upstream's descriptions; logs_delete is no step of contain-malware.
        let tools = c.list_all_tools().await.unwrap();
        let listed = names(&tools);
        for t in [
            "edr_read_alerts",
            "edr_isolate_host",
            "iam_disable_account",
            "http_post",
            "tollgate_rollback",
        ] {
            assert!(
                listed.contains(&t.to_string()),
                "{t} missing from {listed:?}"
            );
        }
        assert!(!listed.contains(&"logs_delete".to_string()), "{listed:?}");
        let isolate = tools.iter().find(|t| t.name == "edr_isolate_host").unwrap();
        assert!(isolate
            .description
            .as_deref()
            .unwrap()
            .contains("Cut a host off"));
        let (reader, _) = connect(s, &reader_cred).await;
        let read_only = names(&reader.list_all_tools().await.unwrap());
        assert_eq!(
            read_only,
            [
                "edr_read_alerts",
                "forensics_image_host",
                "siem_query",
                "tollgate_rollback"
            ],
        );
        // Calling a tool that is not offered is decided (and denied) all the same.
        let r = call(&reader, "edr_isolate_host", json!({"host": "web-1"})).await;
        assert_eq!(r.is_error, Some(true));
        assert!(text(&r).contains("denied by Tollgate"), "{}", text(&r));
        assert_eq!(g.world()["hosts"]["web-1"]["isolated"], false);
        answers.push(serde_json::to_string(&r).unwrap());

        // An allowed read reaches the tool, which got its credential from Tollgate.
        let r = call(&c, "edr_read_alerts", json!({"host": "web-1"})).await;
        assert_ne!(r.is_error, Some(true), "{}", text(&r));
        assert!(text(&r).contains("beacon"), "{}", text(&r));
        assert!(
            text(&r).contains("[redacted]"),
            "the echoed credential was not cut out: {}",
            text(&r)
        );
        answers.push(serde_json::to_string(&r).unwrap());

        // Denied: isolation before evidence. The tool is not called.
        let r = call(
            &c,
            "edr_isolate_host",
            json!({"host": "web-2", "reason": "beacon"}),
        )
        .await;
        assert_eq!(r.is_error, Some(true));
        let t = text(&r);
        assert!(
            t.contains("denied by Tollgate (request req_") && t.contains("evidence"),
            "{t}"
        );
        assert_eq!(r.structured_content.as_ref().unwrap()["decision"], "deny");
        assert_eq!(g.world()["hosts"]["web-2"]["isolated"], false);
        answers.push(serde_json::to_string(&r).unwrap());

        // With evidence recorded, the same call is allowed and the host is isolated.
        let r = isolate_with_evidence(&g, &c, &task_id, &cred, "web-2").await;
        assert_ne!(r.is_error, Some(true), "{}", text(&r));
        let isolate_request = r.meta.as_ref().unwrap().0["tollgate/request_id"]
            .as_str()
            .unwrap()
            .to_string();
        answers.push(serde_json::to_string(&r).unwrap());

        // Denied by a guardrail on an attribute the gateway derived from the
        // URL argument (the agent sends no resource attributes).
        let r = call(
            &c,
            "http_post",
            json!({"url": "https://PasteBin.com/raw", "body": "the dump"}),
        )
        .await;
        assert_eq!(r.is_error, Some(true));
        assert!(text(&r).contains("no-paste-sites"), "{}", text(&r));
        assert_eq!(g.world()["posts"], json!([]));
        answers.push(serde_json::to_string(&r).unwrap());

        // Approval: the call is held open, with progress notifications, until
        // a human approves; only then does it reach the tool.
        let held = spawn_call(
            &c,
            "iam_disable_account",
            json!({"account": "jdoe", "reason": "jdoe's session launched the beacon"}),
        );
        let approval_id = pending_approval(s, &ivan).await;
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        assert_eq!(
            g.world()["accounts"]["jdoe"]["enabled"],
            true,
            "acted before approval"
        );
        assert!(!held.is_finished());
        let (st, v) = s.post(
            &format!("/v1/approvals/{approval_id}/decision"),
            Some(&ivan),
            &json!({"approve": true, "reason": "confirmed with the account owner"}),
        );
        assert_eq!(st, 200, "{v}");
        let r = held.await.unwrap().unwrap();
        assert_ne!(r.is_error, Some(true), "{}", text(&r));
        assert_eq!(g.world()["accounts"]["jdoe"]["enabled"], false);
        let notes = progress.0.lock().unwrap().clone();
        assert!(
            notes.iter().any(|n| n.contains(&format!(
                "held by Tollgate for human approval {approval_id}"
            ))),
            "{notes:?}"
        );
        answers.push(serde_json::to_string(&r).unwrap());

        // Rollback through the gateway: the isolation's compensation runs,
        // authorised and audited like any call (once the host was imaged
        // since it was isolated: the example pack's release-only-after-imaging).
        imaged(s, &cred, "web-2");
        let r = call(
            &c,
            "tollgate_rollback",
            json!({"request_id": isolate_request}),
        )
        .await;
        assert_ne!(r.is_error, Some(true), "{}", text(&r));
        assert_eq!(g.world()["hosts"]["web-2"]["isolated"], false);
        let again = call(
            &c,
            "tollgate_rollback",
            json!({"request_id": isolate_request}),
        )
        .await;
        assert_eq!(again.is_error, Some(true), "undone twice: {}", text(&again));
        answers.push(serde_json::to_string(&r).unwrap());

        // A slow upstream becomes a clear tool error; the gateway keeps serving.
        // While it works, its progress reaches the agent, scrubbed.
        progress.0.lock().unwrap().clear();
        let r = call(&c, "forensics_image_host", json!({"host": "web-1"})).await;
        assert_eq!(r.is_error, Some(true));
        assert!(
            text(&r).contains("did not answer within 3 s"),
            "{}",
            text(&r)
        );
        let notes = progress.0.lock().unwrap().clone();
        assert!(
            notes
                .iter()
                .any(|n| n.starts_with("forensics_image_host: working, step 2")),
            "{notes:?}"
        );
        assert!(notes.iter().all(|n| !n.contains(&g.token)), "{notes:?}");
        assert!(notes.iter().any(|n| n.contains("[redacted]")), "{notes:?}");

        // The upstream crashes: the next call restarts it.
        let pid = std::fs::read_to_string(&g.pid_file).unwrap();
        let killed = std::process::Command::new("kill")
            .arg("-9")
            .arg(pid.trim())
            .status()
            .unwrap();
        assert!(killed.success());
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let r = call(&c, "edr_read_alerts", json!({"host": "web-1"})).await;
        assert_ne!(r.is_error, Some(true), "{}", text(&r));
        assert_ne!(
            std::fs::read_to_string(&g.pid_file).unwrap(),
            pid,
            "not restarted"
        );
        answers.push(serde_json::to_string(&r).unwrap());

        // A call held for approval ends when its task is revoked, not when
        // the approval expires; and the tool is not called.
        let held = spawn_call(
            &c,
            "iam_enable_account",
            json!({"account": "jdoe", "reason": "false alarm"}),
        );
        pending_approval(s, &ivan).await;
        // Revoked: the held call ends, and the next request is refused before any decision.
        s.admin_post(
            "/v1/revocations",
            &json!({"task_id": task_id, "reason": "done"}),
        );
        let r = held.await.unwrap().unwrap();
        assert_eq!(r.is_error, Some(true));
        assert!(
            text(&r).contains("ended while the call waited"),
            "{}",
            text(&r)
        );
        assert_eq!(g.world()["accounts"]["jdoe"]["enabled"], false);
        let refused = c
            .call_tool(
                CallToolRequestParams::new("edr_read_alerts")
                    .with_arguments(args(json!({"host": "web-1"}))),
            )
            .await;
        assert!(refused.is_err(), "{refused:?}");
        let (st, _) = s.post(
            "/mcp",
            Some(&cred),
            &json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}),
        );
        assert_eq!(st, 401);
    });

    for a in &answers {
        assert!(!a.contains(&g.token), "the upstream credential leaked: {a}");
    }

    // The audit log: each forwarded call is an executed action with its exact
    // call (secrets hashed) and result digest; refusals and restarts are there too.
    let results = events(s, "action.result");
    let isolate = results
        .iter()
        .find(|e| e["detail"]["tool"] == "edr_isolate_host")
        .unwrap();
    assert_eq!(isolate["outcome"], "succeeded");
    assert_eq!(isolate["detail"]["via"], "mcp");
    let command: Value =
        serde_json::from_str(isolate["detail"]["command"].as_str().unwrap()).unwrap();
    assert_eq!(
        command["mcp"]["arguments"],
        json!({"host": "web-2", "reason": "beacon"})
    );
    assert_eq!(
        isolate["detail"]["output_digest"].as_str().unwrap().len(),
        64
    );
    assert_eq!(
        isolate["detail"]["compensation"]["action"],
        "edr.release_host"
    );
    // The result names its allowing decision by sequence number (the
    // gateway records it from the decision it committed, without reading
    // it back), and the compensation carries that decision's parameters.
    let all = s.audit("");
    let decision = all
        .iter()
        .find(|e| e["seq"] == isolate["detail"]["decision_seq"])
        .unwrap_or_else(|| panic!("no entry {}", isolate["detail"]["decision_seq"]));
    assert_eq!(decision["event"]["kind"], "decision");
    assert_eq!(decision["event"]["outcome"], "allow");
    assert_eq!(decision["event"]["request_id"], isolate["request_id"]);
    assert_eq!(decision["event"]["task_id"], isolate["task_id"]);
    assert_eq!(
        isolate["detail"]["compensation"]["parameters"],
        decision["event"]["detail"]["parameters"]
    );
    assert!(isolate["detail"]["compensation"]["parameters"].is_object());
    let release = results
        .iter()
        .find(|e| e["detail"]["tool"] == "edr_release_host")
        .unwrap();
    assert_eq!(release["detail"]["compensates"], isolate["request_id"]);
    let slow = results
        .iter()
        .find(|e| e["detail"]["tool"] == "forensics_image_host")
        .unwrap();
    // It may have acted: unknown, not failed.
    assert_eq!(slow["outcome"], "unknown");
    let post = events(s, "decision")
        .into_iter()
        .find(|e| e["detail"]["action"] == "http.post")
        .unwrap();
    assert_eq!(post["outcome"], "deny");
    assert_eq!(
        post["detail"]["resource_attributes"]["domain"],
        "pastebin.com"
    );
    assert_ne!(
        post["detail"]["parameters"]["body"], "the dump",
        "secret parameter logged raw"
    );
    assert!(!events(s, "mcp.upstream_restarted").is_empty());
    let all = serde_json::to_string(&s.audit("")).unwrap();
    assert!(
        !all.contains(&g.token),
        "the upstream credential reached the audit log"
    );
}

/// One raw JSON-RPC request to /mcp: status, the session id it was
/// answered under, and the body.
pub(crate) fn raw_mcp(
    s: &Server,
    cred: &str,
    session: Option<&str>,
    body: &Value,
) -> (u16, Option<String>, String) {
    let agent = agent();
    let mut req = agent
        .post(&s.url("/mcp"))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("authorization", &format!("Bearer {cred}"));
    if let Some(id) = session {
        req = req.header("mcp-session-id", id);
    }
    let mut resp = req.send(body.to_string()).unwrap();
    let session = resp
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let status = resp.status().as_u16();
    (
        status,
        session,
        resp.body_mut().read_to_string().unwrap_or_default(),
    )
}

#[test]
fn broken_upstreams_odd_arguments_and_repeated_rollbacks_are_handled() {
    let g = Gateway::start_with(
        |_, _| Upstream::Stdio,
        &[
            "--malformed",
            "siem_query",
            "--crash-on",
            "vault_read_secret",
        ],
        true,
    );
    let s = &g.server;
    let ivan = s.approver("ivan@acme.test", "identity");
    let svid = s.enrol(IR);
    let (task_id, cred) = s.open_task(&svid);
    let (_, other_cred) = s.open_task(&svid);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (c, notes) = connect(s, &cred).await;

        // Refused before any decision, and audited: no resource argument;
        // a URL that is not absolute (so it has no host to judge).
        let hots = json!({"hots": "web-1"});
        tool_error(
            &c,
            "edr_read_alerts",
            hots,
            "argument \"host\" names the Host",
        )
        .await;
        let relative = json!({"url": "pastebin.com/raw", "body": "x"});
        tool_error(&c, "http_post", relative, "must be an absolute URL").await;
        // Spellings a hand-rolled URL parser misreads are judged by the host an
        // HTTP client would reach, and forwarded as parsed.
        for url in [
            "https:pastebin.com/raw",
            "https:///pastebin.com/raw",
            "https://pastebin.com\\@example.org/",
            "https://%70astebin.com/raw",
        ] {
            let r = call(&c, "http_post", json!({"url": url, "body": "the dump"})).await;
            assert_eq!(r.is_error, Some(true), "{url}");
            assert!(text(&r).contains("no-paste-sites"), "{url}: {}", text(&r));
        }
        assert_eq!(g.world()["posts"], json!([]));

        // A held call that its approver refuses ends with the refusal; the tool is not called.
        let held = spawn_call(
            &c,
            "iam_disable_account",
            json!({"account": "jdoe", "reason": "beacon"}),
        );
        let approval_id = pending_approval(s, &ivan).await;
        let (st, v) = s.post(
            &format!("/v1/approvals/{approval_id}/decision"),
            Some(&ivan),
            &json!({"approve": false, "reason": "jdoe is the on-call engineer"}),
        );
        assert_eq!(st, 200, "{v}");
        let r = held.await.unwrap().unwrap();
        assert_eq!(r.is_error, Some(true));
        assert!(
            text(&r).contains("refused by its approvers"),
            "{}",
            text(&r)
        );
        assert!(
            text(&r).contains("jdoe is the on-call engineer"),
            "{}",
            text(&r)
        );
        assert_eq!(g.world()["accounts"]["jdoe"]["enabled"], true);

        // The whole rollback plan, twice: the second run has nothing left to
        // do (undoing the undo would isolate the host again).
        let r = isolate_with_evidence(&g, &c, &task_id, &cred, "db-1").await;
        assert_ne!(r.is_error, Some(true), "{}", text(&r));
        imaged(s, &cred, "db-1");
        let r = call(&c, "tollgate_rollback", json!({})).await;
        assert_ne!(r.is_error, Some(true), "{}", text(&r));
        assert_eq!(g.world()["hosts"]["db-1"]["isolated"], false);
        let r = call(&c, "tollgate_rollback", json!({})).await;
        assert_eq!(r.is_error, Some(true), "{}", text(&r));
        assert!(text(&r).contains("nothing to roll back"), "{}", text(&r));
        assert_eq!(g.world()["hosts"]["db-1"]["isolated"], false);
        let (_, plan) = s.get(&format!("/v1/tasks/{task_id}/rollback"), Some(&s.admin));
        let steps = plan["steps"].as_array().unwrap();
        assert_eq!(steps.len(), 1, "{plan}");
        assert_eq!(steps[0]["done"], true);

        // While one task's call hangs at the upstream (it has reached the
        // tool: its progress arrives), another task is served.
        notes.0.lock().unwrap().clear();
        let slow = spawn_call(&c, "forensics_image_host", json!({"host": "web-1"}));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !notes
            .0
            .lock()
            .unwrap()
            .iter()
            .any(|n| n.contains("working, step 1"))
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the slow call never reached the tool"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let (other, _) = connect(s, &other_cred).await;
        let r = call(&other, "edr_read_alerts", json!({"host": "web-2"})).await;
        assert_ne!(r.is_error, Some(true), "{}", text(&r));
        // Answered while the other call still waits for its 3 s timeout.
        assert!(
            !slow.is_finished(),
            "the other task waited for the slow call"
        );
        let r = slow.await.unwrap().unwrap();
        assert!(
            text(&r).contains("did not answer within 3 s"),
            "{}",
            text(&r)
        );

        // A malformed answer is a clear tool error, and other calls go on.
        let query = json!({"index": "main", "query": "dst=203.0.113.7"});
        tool_error(
            &c,
            "siem_query",
            query,
            "upstream ir-tools sent a malformed answer",
        )
        .await;
        let r = call(&c, "edr_read_alerts", json!({"host": "web-1"})).await;
        assert_ne!(r.is_error, Some(true), "{}", text(&r));

        // The server dies in the middle of a call: the call may have acted,
        // and says so; the next call gets a restarted server.
        let secret = json!({"secret": "prod-db"});
        tool_error(
            &c,
            "vault_read_secret",
            secret,
            "may or may not have taken effect",
        )
        .await;
        let r = call(&c, "edr_read_alerts", json!({"host": "web-1"})).await;
        assert_ne!(r.is_error, Some(true), "{}", text(&r));

        // An MCP session belongs to the task that opened it.
        let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "raw", "version": "0"}}});
        let (st, session, body) = raw_mcp(s, &cred, None, &init);
        assert_eq!(st, 200, "{body}");
        let session = session.expect("no session id");
        let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
        let (st, _, body) = raw_mcp(s, &other_cred, Some(&session), &list);
        assert_eq!(st, 403, "{body}");
        assert!(body.contains("belongs to another task"), "{body}");
        let (st, _, body) = raw_mcp(s, &cred, Some("not-a-session"), &list);
        assert_eq!(st, 404, "{body}");
    });

    let results = events(s, "action.result");
    let outcome = |tool: &str| {
        results
            .iter()
            .filter(|e| e["detail"]["tool"] == tool)
            .map(|e| e["outcome"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(outcome("siem_query"), ["unknown"]);
    assert_eq!(outcome("vault_read_secret"), ["unknown"]);
    assert_eq!(outcome("iam_disable_account"), Vec::<String>::new());
    assert_eq!(outcome("edr_release_host"), ["succeeded"]);
    let refused = events(s, "mcp.call_refused");
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert!(!events(s, "mcp.upstream_restarted").is_empty());
    let posts = events(s, "decision")
        .into_iter()
        .filter(|e| e["detail"]["action"] == "http.post")
        .collect::<Vec<_>>();
    assert_eq!(posts.len(), 4);
    for p in &posts {
        assert_eq!(p["outcome"], "deny");
        assert_eq!(p["detail"]["resource_attributes"]["domain"], "pastebin.com");
    }
    assert!(events(s, "auth.refused")
        .iter()
        .any(|e| e["detail"]["reason"] == "MCP session belongs to another task"));

    // The tool server printed its credential on stderr and rmcp logged whole
    // messages at trace: the gateway's log has neither the credential nor
    // its admin token.
    let log = std::fs::read_to_string(&g.log).unwrap();
    assert!(
        log.contains("ir-tools: edr_read_alerts called with credential"),
        "upstream stderr not logged"
    );
    assert!(
        !log.contains(&g.token),
        "the upstream credential reached the log"
    );
    assert!(!log.contains(&s.admin), "the admin token reached the log");
}

#[test]
fn an_https_upstream_is_reached_only_through_its_trusted_ca() {
    let tools_dir = tempfile::tempdir().unwrap();
    let token = "https-upstream-secret-4711";
    let token_file = tools_dir.path().join("token");
    write_secret(&token_file, token);
    let tools = HttpTools::start(&tools_dir.path().join("world.json"), &token_file);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let plain = tools
        .url
        .trim_start_matches("http://")
        .trim_end_matches("/mcp")
        .to_string();
    let (port, ca_pem) = tls_proxy(&rt, plain);
    let ca_file = tools_dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca_pem).unwrap();
    let url = format!("https://localhost:{port}/mcp");

    // Trusting the private CA: calls go through over TLS, credential injected.
    let g = Gateway::start_with(
        |_, config_token| {
            write_secret(config_token, token);
            Upstream::Http(url.clone(), Some(ca_file.clone()))
        },
        &[],
        false,
    );
    let s = &g.server;
    let svid = s.enrol(IR);
    let (_, cred) = s.open_task(&svid);
    rt.block_on(async {
        let (c, _) = connect(s, &cred).await;
        let r = call(&c, "edr_read_alerts", json!({"host": "web-1"})).await;
        assert_ne!(r.is_error, Some(true), "{}", text(&r));
        let answer = serde_json::to_string(&r).unwrap();
        assert!(
            answer.contains("beacon") && !answer.contains(token),
            "{answer}"
        );
    });
    assert_eq!(events(s, "action.result")[0]["outcome"], "succeeded");
    // The operator's view: connected, with each tool's catalog operation.
    let (ok, out, err) = s.cli(&["mcp", "upstreams"]);
    assert!(ok, "{err}");
    assert!(
        out.starts_with(&format!("ir-tools (http {url}): connected")),
        "{out}"
    );
    assert!(out.contains("edr_read_alerts"), "{out}");
    assert!(out.contains("edr.read_alerts"), "{out}");
    assert!(!out.contains(token), "{out}");
    drop(g);

    // `policy schema --from-mcp` reaches the same server with the same trust.
    let draft = |ca: Option<&std::path::Path>| {
        let mut cmd = std::process::Command::new(bin());
        cmd.args([
            "policy",
            "schema",
            "--from-mcp",
            &url,
            "--server",
            "ir-tools",
        ])
        .args(["--header", &format!("Authorization: Bearer {token}")]);
        if let Some(ca) = ca {
            cmd.arg("--ca-file").arg(ca);
        }
        cmd.output().unwrap()
    };
    let out = draft(Some(&ca_file));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("action \"edr.read_alerts\""), "{stdout}");
    let out = draft(None);
    assert!(
        !out.status.success(),
        "trusted a CA the system does not know"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("UnknownIssuer"), "{stderr}");

    // The system's roots do not know that CA: the upstream is unreachable,
    // its tools are not offered, and a call says why.
    let g = Gateway::start_with(
        |_, config_token| {
            write_secret(config_token, token);
            Upstream::Http(url.clone(), None)
        },
        &[],
        false,
    );
    let s = &g.server;
    let svid = s.enrol(IR);
    let (_, cred) = s.open_task(&svid);
    rt.block_on(async {
        let (c, _) = connect(s, &cred).await;
        let listed = names(&c.list_all_tools().await.unwrap());
        assert_eq!(listed, ["tollgate_rollback"]);
        let r = call(&c, "edr_read_alerts", json!({"host": "web-1"})).await;
        assert_eq!(r.is_error, Some(true));
        assert!(
            text(&r).contains("upstream ir-tools could not be reached"),
            "{}",
            text(&r)
        );
        assert!(text(&r).contains("UnknownIssuer"), "{}", text(&r));
    });
    assert_eq!(events(s, "action.result")[0]["outcome"], "failed");
    // The operator sees why.
    let (_, v) = s.get("/v1/mcp/upstreams", Some(&s.admin));
    let u = &v["upstreams"][0];
    assert_eq!(u["state"], "not connected", "{v}");
    assert!(
        u["failure"]["last_error"]
            .as_str()
            .unwrap()
            .contains("UnknownIssuer"),
        "{v}"
    );
    assert_eq!(u["tools"], Value::Null);
    let (st, _) = s.get("/v1/mcp/upstreams", Some(&cred));
    assert_eq!(st, 401, "an agent may not see the upstreams");
}

/// The host was imaged (an allowed `forensics.image_host` decision, asked
/// over HTTP: the harness's image tool is deliberately slow), so the example
/// pack lets its isolation be released.
fn imaged(s: &Server, cred: &str, host_id: &str) {
    let (_, d) = s.authorize(cred, "forensics.image_host", host(host_id));
    assert_eq!(d["decision"], "allow", "{d}");
}

/// Test-only policies: responders may delegate containment to forensics
/// agents, who may then isolate and release hosts.
const DELEGATED_CONTAINMENT: &str = r#"
@id("test-delegate-containment")
permit (principal, action == Action::"task.delegate", resource)
when { principal.role == "ir-responder" && resource.role == "forensics" };

@id("test-forensics-contain")
permit (principal, action in [Action::"edr.isolate_host", Action::"edr.release_host"], resource)
when { principal.role == "forensics" };
"#;

#[test]
fn a_step_the_parent_undid_is_not_undone_again_by_the_child() {
    const FORENSICS: &str = "spiffe://acme.test/agent/forensics/i-2";
    let g = Gateway::start_with(
        |_, token_file| {
            let policies = token_file.parent().unwrap().join("policies");
            std::fs::write(
                policies.join("50-test-delegation.cedar"),
                DELEGATED_CONTAINMENT,
            )
            .unwrap();
            Upstream::Stdio
        },
        &[],
        false,
    );
    let s = &g.server;
    let svid = s.enrol(IR);
    s.enrol(FORENSICS);
    let (parent_id, parent_cred) = s.open_task(&svid);
    let (st, child) = s.post(
        &format!("/v1/tasks/{parent_id}/delegate"),
        Some(&parent_cred),
        &json!({"agent": FORENSICS, "actions": ["edr.isolate_host", "edr.release_host"],
                "resources": ["Host::web-1"], "ttl_seconds": 120, "intent": "isolate web-1"}),
    );
    assert_eq!(st, 201, "{child}");
    let child_id = child["task_id"].as_str().unwrap().to_string();
    let child_cred = child["credential"].as_str().unwrap().to_string();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (child_mcp, _) = connect(s, &child_cred).await;
        let r = call(
            &child_mcp,
            "edr_isolate_host",
            json!({"host": "web-1", "reason": "beacon"}),
        )
        .await;
        assert_ne!(r.is_error, Some(true), "{}", text(&r));
        assert_eq!(g.world()["hosts"]["web-1"]["isolated"], true);

        // The parent's plan holds the child's step; the parent undoes it
        // (a release is containment too: evidence first).
        let content = "web-1 process list";
        let (st, ev) = s.post(
            &format!("/v1/tasks/{parent_id}/evidence"),
            Some(&parent_cred),
            &json!({"resource": host("web-1"), "kind": "process-list",
                    "sha256": tollgate_core::sha256_hex(content.as_bytes()), "content": content}),
        );
        assert_eq!(st, 201, "{ev}");
        imaged(s, &parent_cred, "web-1");
        let (parent_mcp, _) = connect(s, &parent_cred).await;
        let r = call(&parent_mcp, "tollgate_rollback", json!({})).await;
        assert_ne!(r.is_error, Some(true), "{}", text(&r));
        assert_eq!(g.world()["hosts"]["web-1"]["isolated"], false);

        // For the child it is done as well: nothing left to undo.
        let (_, plan) = s.get(&format!("/v1/tasks/{child_id}/rollback"), Some(&s.admin));
        assert_eq!(plan["steps"][0]["done"], true, "{plan}");
        let r = call(&child_mcp, "tollgate_rollback", json!({})).await;
        assert_eq!(r.is_error, Some(true), "{}", text(&r));
        assert!(text(&r).contains("nothing to roll back"), "{}", text(&r));
    });
    let releases = events(s, "action.result")
        .into_iter()
        .filter(|e| e["detail"]["tool"] == "edr_release_host")
        .count();
    assert_eq!(releases, 1);
}

#[test]
fn a_tool_an_upstream_adds_is_offered_and_agents_are_told() {
    let g = Gateway::start_with(
        |_, _| Upstream::Stdio,
        &["--late-tool", "siem_query"],
        false,
    );
    let s = &g.server;
    let svid = s.enrol(IR);
    let (_, cred) = s.open_task(&svid);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (c, seen) = connect(s, &cred).await;
        let before = names(&c.list_all_tools().await.unwrap());
        assert!(
            before.contains(&"edr_read_alerts".to_string()),
            "{before:?}"
        );
        assert!(!before.contains(&"siem_query".to_string()), "{before:?}");
        // The first call makes the tool server add siem_query and say so.
        let r = call(&c, "edr_read_alerts", json!({"host": "web-1"})).await;
        assert_ne!(r.is_error, Some(true), "{}", text(&r));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let told = seen
                .0
                .lock()
                .unwrap()
                .iter()
                .any(|n| n == "tools/list_changed");
            let now = names(&c.list_all_tools().await.unwrap());
            if told && now.contains(&"siem_query".to_string()) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "told: {told}, tools: {now:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let r = call(&c, "siem_query", json!({"index": "auth", "query": "jdoe"})).await;
        assert_ne!(r.is_error, Some(true), "{}", text(&r));
        assert!(text(&r).contains("203.0.113.7"), "{}", text(&r));
    });
}

/// The pinned official MCP Python SDK in a virtualenv kept between runs
/// (`$HOME/.cache/tollgate-mcp-venv`), installed from PyPI on first use.
fn python_with_mcp_sdk() -> Option<PathBuf> {
    const SDK: &str = "mcp==2.3.0";
    if std::env::var_os("TOLLGATE_SKIP_PYTHON_MCP").is_some() {
        eprintln!("SKIPPED: the Python MCP SDK test (TOLLGATE_SKIP_PYTHON_MCP is set)");
        return None;
    }
    let home = PathBuf::from(std::env::var_os("HOME").expect("HOME"));
    let venv = home.join(".cache/tollgate-mcp-venv");
    let python = venv.join("bin/python");
    let ready = || {
        std::process::Command::new(&python)
            .args([
                "-c",
                "import importlib.metadata as m; assert m.version('mcp') == '2.3.0'",
            ])
            .status()
            .is_ok_and(|s| s.success())
    };
    if !ready() {
        let made = std::process::Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .expect(
                "python3 is needed for the Python MCP SDK test (or set TOLLGATE_SKIP_PYTHON_MCP=1)",
            );
        assert!(made.success(), "python3 -m venv failed");
        let pip = std::process::Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check", SDK])
            .status()
            .unwrap();
        assert!(pip.success(), "pip install {SDK} failed");
        assert!(ready(), "{SDK} not importable after install");
    }
    Some(python)
}

#[test]
fn the_official_python_sdk_gets_every_tool_call_governed() {
    let Some(python) = python_with_mcp_sdk() else {
        return;
    };
    let g = Gateway::start();
    let s = &g.server;
    let ivan = s.approver("ivan@acme.test", "identity");
    let svid = s.enrol(IR);
    let (task_id, cred) = s.open_task(&svid);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/mcp_python_client.py");
    let config = json!({
        "url": s.addr, "cred": cred, "task_id": task_id, "approver": ivan,
        "admin": s.admin, "world": g.world,
    });
    let out = std::process::Command::new(python)
        .arg(&script)
        .arg(config.to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "python client failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains(r#"{"ok": true}"#), "{stdout}");
    assert!(
        !stdout.contains(&g.token) && !stderr.contains(&g.token),
        "the upstream credential leaked"
    );
    // What the Python agent did is what the tools did.
    let w = g.world();
    assert_eq!(w["hosts"]["web-2"]["isolated"], true);
    assert_eq!(w["accounts"]["jdoe"]["enabled"], false);
    assert_eq!(w["posts"], json!([]));
}

#[test]
fn an_http_upstream_gets_its_header_and_a_schema_is_drafted_from_it() {
    let tools_dir = tempfile::tempdir().unwrap();
    let token = "http-upstream-secret-4711";
    let token_file = tools_dir.path().join("token");
    write_secret(&token_file, token);
    let world = tools_dir.path().join("world.json");
    let tools = HttpTools::start(&world, &token_file);
    // Without the token the tool server itself refuses.
    let (st, _) = crate::harness::post_json(&tools.url, None, &json!({}));
    assert_eq!(st, 401);

    let url = tools.url.clone();
    let g = Gateway::start_with(
        |_, config_token| {
            write_secret(config_token, token);
            Upstream::Http(url, None)
        },
        &[],
        false,
    );
    let s = &g.server;
    let svid = s.enrol(IR);
    let (task_id, cred) = s.open_task(&svid);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let answer = rt.block_on(async {
        let (c, _) = connect(s, &cred).await;
        let r = call(&c, "edr_read_alerts", json!({"host": "web-1"})).await;
        assert_ne!(r.is_error, Some(true), "{}", text(&r));
        serde_json::to_string(&r).unwrap()
    });
    assert!(
        answer.contains("[redacted]") && !answer.contains(token),
        "{answer}"
    );
    let result = events(s, "action.result");
    assert_eq!(result[0]["task_id"], task_id.as_str());
    assert_eq!(result[0]["outcome"], "succeeded");

    // `policy schema --from-mcp` drafts the schema from the same server...
    let auth = format!("Authorization: Bearer {token}");
    let (ok, out, err) = s.cli(&[
        "policy",
        "schema",
        "--from-mcp",
        &tools.url,
        "--server",
        "ir-tools",
        "--header",
        &auth,
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("action \"edr.isolate_host\" appliesTo { principal: Agent, resource: [Host], context: ActionContext };"), "{out}");
    assert!(
        out.contains(
            "tool: {server: ir-tools, name: vault_rotate_secret, resource_argument: secret}"
        ),
        "{out}"
    );
    // ... and from a stdio command line.
    let out_dir = tools_dir.path().join("draft");
    let command = format!("{} tools example --state {}", bin(), world.display());
    let (ok, out, err) = s.cli(&[
        "policy",
        "schema",
        "--from-mcp",
        &command,
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("11 tools"), "{out}");
    let schema = std::fs::read_to_string(out_dir.join("mcp.cedarschema")).unwrap();
    assert!(
        schema.contains("entity Host;") && schema.contains("\"window_minutes\"?: Long,"),
        "{schema}"
    );
}

#[test]
fn the_demo_runs_the_reference_scenario_through_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let keep = dir.path().join("demo");
    let out = std::process::Command::new(bin())
        .args(["demo", "--dir"])
        .arg(&keep)
        .env("TOLLGATE_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "tollgate ← refused: denied by Tollgate",
        "state file: web-1 isolated = true",
        "state file: jdoe enabled = false",
        "state file: posts sent = []",
        "refused with HTTP 401 before any decision",
        "Audit: ",
    ] {
        assert!(stdout.contains(line), "{line:?} missing from:\n{stdout}");
    }
    // What it kept verifies offline.
    let verify = std::process::Command::new(bin())
        .args(["audit", "verify", "--data"])
        .arg(keep.join("data"))
        .output()
        .unwrap();
    assert!(verify.status.success(), "{verify:?}");
    let world: Value =
        serde_json::from_str(&std::fs::read_to_string(keep.join("ir-world.json")).unwrap())
            .unwrap();
    assert_eq!(world["accounts"]["jdoe"]["enabled"], false);
}

/// Hardening finding 11: a call held for approval whose client went away
/// (the connection closed, no protocol cancel) stayed pending, and a later
/// approval ran the tool for nobody. Now the call is abandoned and its
/// approval withdrawn, audited; and `DELETE /mcp` answers 204, which MCP
/// clients take for a terminated session (rmcp's 202 reads as a failure).
#[test]
fn a_held_call_whose_client_leaves_is_abandoned_and_its_approval_withdrawn() {
    use std::io::{Read, Write};
    let g = Gateway::start();
    let s = &g.server;
    let ivan = s.approver("ivan@acme.test", "identity");
    let svid = s.enrol(IR);
    let (_, cred) = s.open_task(&svid);
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "raw", "version": "0"}}});
    let (st, session, body) = raw_mcp(s, &cred, None, &init);
    assert_eq!(st, 200, "{body}");
    let session = session.expect("no session id");
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let (st, _, body) = raw_mcp(s, &cred, Some(&session), &initialized);
    assert!((200..300).contains(&st), "{st} {body}");

    // The call, on a connection of its own that the client then closes.
    let call = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {
        "name": "iam_disable_account", "arguments": {"account": "jdoe", "reason": "beacon"}}})
    .to_string();
    let addr = s.addr.trim_start_matches("http://").to_string();
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        conn,
        "POST /mcp HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\naccept: application/json, text/event-stream\r\nauthorization: Bearer {cred}\r\nmcp-session-id: {session}\r\ncontent-length: {}\r\n\r\n{call}",
        call.len()
    )
    .unwrap();
    // Wait until the call is held (its approval exists), then leave.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let approval = loop {
        let (_, v) = s.get("/v1/approvals?status=pending", Some(&ivan));
        if let Some(id) = v["approvals"][0]["id"].as_str() {
            break id.to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no pending approval: {v}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    conn.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut first = [0u8; 64];
    let n = conn.read(&mut first).unwrap();
    assert!(
        String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&first[..n])
    );
    conn.shutdown(std::net::Shutdown::Both).unwrap();
    drop(conn);

    // The gateway notices (at the latest at its next keep-alive write) and
    // withdraws the approval.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(40);
    let withdrawn = loop {
        let (_, v) = s.get(&format!("/v1/approvals/{approval}"), Some(&ivan));
        if v["status"] == "withdrawn" {
            break v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the held call was not abandoned: {v}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert_eq!(withdrawn["status"], "withdrawn");
    let abandoned = events(s, "mcp.call_abandoned");
    assert_eq!(abandoned.len(), 1, "{abandoned:?}");
    assert!(abandoned[0]["detail"]["reason"]
        .as_str()
        .unwrap()
        .contains("connection closed"));
    assert_eq!(events(s, "approval.withdrawn").len(), 1);
    // A vote now grants nothing, and the tool never ran.
    let (st, v) = s.post(
        &format!("/v1/approvals/{approval}/decision"),
        Some(&ivan),
        &json!({"approve": true, "reason": "too late"}),
    );
    assert_ne!(st, 200, "a withdrawn approval took a vote: {v}");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(g.world()["accounts"]["jdoe"]["enabled"], true);
    assert!(events(s, "action.result").is_empty());

    // Ending the session: 204, as MCP clients expect.
    let agent = agent();
    let resp = agent
        .delete(&s.url("/mcp"))
        .header("authorization", &format!("Bearer {cred}"))
        .header("mcp-session-id", &session)
        .call()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
}

/// Hardening finding 8, for `/mcp`: the MCP transport's own errors (rmcp
/// answers them in plain text) come in the API's error shape too.
#[test]
fn mcp_transport_errors_have_the_error_shape() {
    let s = Server::start();
    let svid = s.enrol(IR);
    let (_, cred) = s.open_task(&svid);
    let agent = agent();
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "raw", "version": "0"}}});
    let cases: [(&str, &str, &str); 3] = [
        ("no accept header", "", "application/json"),
        (
            "not json-rpc",
            "application/json, text/event-stream",
            "application/json",
        ),
        (
            "wrong content type",
            "application/json, text/event-stream",
            "text/plain",
        ),
    ];
    for (what, accept, content_type) in cases {
        let mut req = agent
            .post(&s.url("/mcp"))
            .header("content-type", content_type)
            .header("authorization", &format!("Bearer {cred}"));
        if !accept.is_empty() {
            req = req.header("accept", accept);
        }
        let body = if what == "not json-rpc" {
            "{\"hello\": 1}".to_string()
        } else {
            init.to_string()
        };
        let mut resp = req
            .send(body)
            .unwrap_or_else(|e| panic!("CASE {what}: {e:?}"));
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap();
        assert!(status >= 400, "{what}: {status} {text}");
        let v: Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("{what}: {status} answered {text:?}"));
        assert!(v["error"]["code"].as_str().is_some(), "{what}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{what}: {v}"
        );
    }
}

/// The gateway reads a request's whole body before rmcp does (so that a
/// request rmcp refuses unread leaves the connection usable), bounded at
/// rmcp's own 4 MiB: past it, 413 in the API's error shape.
#[test]
fn an_mcp_body_over_four_mib_is_refused_in_the_error_shape() {
    let s = Server::start();
    let svid = s.enrol(IR);
    let (_, cred) = s.open_task(&svid);
    let padding = "x".repeat(4 * 1024 * 1024);
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "raw", "version": padding}}});
    let mut resp = agent()
        .post(&s.url("/mcp"))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("authorization", &format!("Bearer {cred}"))
        .send(body.to_string())
        .unwrap();
    assert_eq!(resp.status().as_u16(), 413);
    let v: Value = serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(v["error"]["code"], "payload_too_large", "{v}");
}

/// Found in review of finding 1's class: an upstream's JSON-RPC error can
/// quote the call's arguments (a validator's `input_value`), and the error
/// text is stored with the executed action. Secret arguments are cut out of
/// it before it is stored or answered.
#[test]
fn an_upstream_error_quoting_a_secret_argument_stores_no_secret() {
    let g = Gateway::start_with(
        |_, _| Upstream::Stdio,
        &["--invalid-params", "edr_read_alerts"],
        false,
    );
    let s = &g.server;
    let svid = s.enrol(IR);
    let (_, cred) = s.open_task(&svid);
    let secret = "SECRET-quoted-by-upstream-7Hq2";
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (c, _) = connect(s, &cred).await;
        // `new_value` is secret on vault.rotate_secret, so on every call.
        let r = call(
            &c,
            "edr_read_alerts",
            json!({"host": "web-1", "new_value": secret}),
        )
        .await;
        assert_eq!(r.is_error, Some(true), "{}", text(&r));
        assert!(text(&r).contains("[redacted]"), "{}", text(&r));
        assert!(!text(&r).contains(secret), "{}", text(&r));
    });
    let results = events(s, "action.result");
    assert_eq!(results.len(), 1, "{results:?}");
    let error = results[0]["detail"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("arguments do not validate"), "{error}");
    assert!(!error.contains(secret), "{error}");
    let (ok, export, _) = s.cli(&["audit", "export"]);
    assert!(ok);
    assert!(!export.contains(secret), "the secret is in the export");
}
