//! OpenTelemetry: with `telemetry.otlp_endpoint` set, each decision and each
//! MCP forward is a span exported over OTLP/HTTP (JSON) to an in-process
//! receiver, inside the caller's trace, carrying ids and the decision but
//! never parameters, intent or tool output.

use crate::harness::*;
use serde_json::{json, Value};
use std::io::{BufReader, Write};
use std::sync::{Arc, Mutex};

/// An OTLP/HTTP receiver on 127.0.0.1: keeps every body POSTed to it.
struct OtlpReceiver {
    url: String,
    bodies: Arc<Mutex<Vec<String>>>,
}

impl OtlpReceiver {
    fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/v1/traces", listener.local_addr().unwrap());
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let kept = bodies.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let kept = kept.clone();
                std::thread::spawn(move || serve(conn, &kept));
            }
        });
        Self { url, bodies }
    }

    /// Every span received so far, flattened out of the OTLP JSON.
    fn spans(&self) -> Vec<Value> {
        let bodies = self.bodies.lock().unwrap().clone();
        let mut out = Vec::new();
        for b in bodies {
            let v: Value = serde_json::from_str(&b).unwrap();
            for rs in v["resourceSpans"].as_array().into_iter().flatten() {
                for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                    out.extend(ss["spans"].as_array().into_iter().flatten().cloned());
                }
            }
        }
        out
    }

    fn raw(&self) -> String {
        self.bodies.lock().unwrap().join("\n")
    }

    /// The first span named `name` that `f` accepts, within 20 s (spans are
    /// exported in batches, every few seconds).
    fn wait_for(&self, name: &str, f: impl Fn(&Value) -> bool) -> Value {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            if let Some(s) = self.spans().into_iter().find(|s| s["name"] == name && f(s)) {
                return s;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no {name} span within 20 s; received: {}",
                self.raw()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

/// Answer each HTTP/1.1 request on `conn` with 200 `{}`, keeping its body.
fn serve(conn: std::net::TcpStream, kept: &Mutex<Vec<String>>) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut writer = conn;
    while let Some((_, body)) = read_request(&mut reader) {
        kept.lock()
            .unwrap()
            .push(String::from_utf8_lossy(&body).into_owned());
        let answer =
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
        if writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// A span attribute's string value.
fn attr(span: &Value, key: &str) -> String {
    span["attributes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["key"] == key)
        .and_then(|a| a["value"]["stringValue"].as_str())
        .unwrap_or_default()
        .to_string()
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

#[test]
fn decisions_and_mcp_forwards_are_spans_in_the_callers_trace() {
    let otlp = OtlpReceiver::start();
    let tmp = tempfile::tempdir().unwrap();
    let world = tmp.path().join("world.json");
    let config = config_dir(
        tmp.path(),
        &format!(
            "telemetry:\n  otlp_endpoint: {}\nmcp:\n  upstreams:\n    - name: ir-tools\n      stdio:\n        command: tollgate\n        args: [tools, example, --state, {:?}]\n",
            otlp.url,
            world.display().to_string()
        ),
    );
    let s = Server::start_with_config(&config, &tmp.path().join("data"));
    let svid = s.enrol(IR);
    let (task_id, cred) = s.open_task(&svid);

    // A decision asked inside the agent's trace, with a secret parameter.
    let secret = "hunter2-never-in-a-span";
    let intent = "an intent that stays out of traces";
    let answer: Value = agent()
        .post(&s.url("/v1/authorize"))
        .header("authorization", &format!("Bearer {cred}"))
        .header("traceparent", &format!("00-{TRACE}-{PARENT}-01"))
        .send_json(
            json!({"action": "siem.query", "resource": {"type": "SiemIndex", "id": "main"},
                          "intent": intent, "parameters": {"query": secret}}),
        )
        .unwrap()
        .body_mut()
        .read_json()
        .unwrap();
    assert_eq!(answer["decision"], "allow", "{answer}");
    let request_id = answer["request_id"].as_str().unwrap().to_string();
    let span = otlp.wait_for("tollgate.decision", |s| {
        attr(s, "tollgate.request_id") == request_id
    });
    assert_eq!(span["traceId"], TRACE, "{span}");
    assert_eq!(span["parentSpanId"], PARENT, "{span}");
    assert_eq!(span["kind"], 2, "a server span: {span}");
    assert_eq!(attr(&span, "tollgate.decision"), "allow");
    assert_eq!(attr(&span, "tollgate.action"), "siem.query");
    assert_eq!(attr(&span, "tollgate.resource"), "SiemIndex::main");
    assert_eq!(attr(&span, "tollgate.policies"), "read-during-task");
    assert_eq!(attr(&span, "tollgate.task_id"), task_id);
    assert_eq!(attr(&span, "tollgate.incident_id"), "INC-4711");
    assert_eq!(attr(&span, "tollgate.agent"), IR);

    // Without a traceparent (or with a malformed one) a trace of its own.
    let (_, denied) = s.authorize(
        &cred,
        "logs.delete",
        json!({"type": "LogStream", "id": "x"}),
    );
    let denied_id = denied["request_id"].as_str().unwrap().to_string();
    let span = otlp.wait_for("tollgate.decision", |s| {
        attr(s, "tollgate.request_id") == denied_id
    });
    assert_eq!(attr(&span, "tollgate.decision"), "deny");
    assert_ne!(span["traceId"], TRACE);
    assert!(
        span["parentSpanId"].as_str().unwrap_or("").is_empty(),
        "{span}"
    );

    // An MCP call with `_meta.traceparent`: its decision and its forward.
    let mcp = |session: Option<&str>, body: Value| {
        let mut req = agent()
            .post(&s.url("/mcp"))
            .header("authorization", &format!("Bearer {cred}"))
            .header("accept", "application/json, text/event-stream");
        if let Some(id) = session {
            req = req.header("mcp-session-id", id);
        }
        let mut resp = req.send_json(body).unwrap();
        let session = resp
            .headers()
            .get("mcp-session-id")
            .map(|v| v.to_str().unwrap().to_string());
        let text = resp.body_mut().read_to_string().unwrap();
        let data = text
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(str::trim)
            .find(|d| !d.is_empty())
            .and_then(|d| serde_json::from_str::<Value>(d).ok())
            .unwrap_or(Value::Null);
        (session, data)
    };
    let (session, _) = mcp(
        None,
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "e2e", "version": "1"}}}),
    );
    let session = session.expect("no MCP session id");
    mcp(
        Some(&session),
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    );
    let mcp_trace = "0af7651916cd43dd8448eb211c80319c";
    let (_, called) = mcp(
        Some(&session),
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
        "name": "edr_read_alerts", "arguments": {"host": "web-1"},
        "_meta": {"traceparent": format!("00-{mcp_trace}-b7ad6b7169203331-01")}}}),
    );
    assert_eq!(called["result"]["isError"], false, "{called}");
    let forward = otlp.wait_for("tollgate.mcp.forward", |s| s["traceId"] == mcp_trace);
    assert_eq!(forward["parentSpanId"], "b7ad6b7169203331");
    assert_eq!(forward["kind"], 3, "a client span: {forward}");
    assert_eq!(attr(&forward, "tollgate.mcp.upstream"), "ir-tools");
    assert_eq!(attr(&forward, "tollgate.mcp.tool"), "edr_read_alerts");
    assert_eq!(attr(&forward, "tollgate.outcome"), "succeeded");
    let decided = otlp.wait_for("tollgate.decision", |s| s["traceId"] == mcp_trace);
    assert_eq!(attr(&decided, "tollgate.action"), "edr.read_alerts");
    assert_eq!(
        attr(&decided, "tollgate.request_id"),
        attr(&forward, "tollgate.request_id")
    );

    // Nothing the agent wrote, nor any credential, went out.
    let raw = otlp.raw();
    for leak in [
        secret,
        intent,
        &cred,
        &svid,
        &s.admin,
        "beacon to 203.0.113.7",
    ] {
        assert!(!raw.contains(leak), "{leak:?} reached the trace exporter");
    }
}

#[test]
fn a_malformed_otlp_endpoint_is_refused_at_start() {
    // A malformed endpoint stops the server at start, saying why.
    let err = serve_refuses("telemetry:\n  otlp_endpoint: collector:4318\n");
    assert!(err.contains("telemetry.otlp_endpoint"), "{err}");
}
