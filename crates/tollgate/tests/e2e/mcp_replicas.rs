//! MCP sessions across replicas, and held calls whose replica dies.
//!
//! Three `tollgate serve` replicas over one PostgreSQL schema, each with
//! the example tools as its stdio upstream: a session opened on one is
//! served by the others (the registry is in the store), stays bound to its
//! task everywhere, and ends everywhere when it is deleted on any; a call
//! held for approval on a replica that is killed ends as abandoned, its
//! approval withdrawn, audited. Needs `TOLLGATE_TEST_PG` (skipped, and
//! passing, without it), like `replicas.rs`.
//!
//! One test needs no PostgreSQL: a single SQLite server killed with a call
//! held finds, once restarted, that call abandoned and the session still
//! usable.

use crate::harness::*;
use crate::mcp::{raw_mcp, Gateway};
use crate::replicas::Cluster;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// A config dir whose `tollgate.yaml` runs the example tools as the
/// `ir-tools` upstream (stdio), on a state file in `dir`.
fn mcp_config(dir: &std::path::Path) -> std::path::PathBuf {
    let config = dir.join("config");
    let out = std::process::Command::new(bin())
        .arg("init")
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let token = format!("ir-tools-secret-{}", now());
    let token_file = config.join("ir-tools.token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let world = dir.join("world.json");
    let mut yaml = std::fs::read_to_string(config.join("tollgate.yaml")).unwrap();
    yaml.push_str(&format!(
        "mcp:\n  call_timeout_seconds: 5\n  progress_every_seconds: 1\n  upstreams:\n    - name: ir-tools\n      stdio:\n        command: tollgate\n        args: [tools, example, --state, {world:?}, --token-file, {token_file:?}]\n        env:\n          IR_TOOLS_TOKEN: {{file: ir-tools.token}}\n",
        world = world.display().to_string(),
        token_file = token_file.display().to_string(),
    ));
    std::fs::write(config.join("tollgate.yaml"), yaml).unwrap();
    config
}

fn initialize(id: u64) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "raw", "version": "0"}}})
}

/// Open a session on `s` (initialize, then the initialized notification).
fn open_session(s: &Server, cred: &str) -> String {
    let (st, session, body) = raw_mcp(s, cred, None, &initialize(1));
    assert_eq!(st, 200, "{body}");
    let session = session.expect("no session id");
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let (st, _, body) = raw_mcp(s, cred, Some(&session), &initialized);
    assert!((200..300).contains(&st), "{st} {body}");
    session
}

/// The JSON-RPC answer with `id` in an SSE (or JSON) body.
fn answer(body: &str, id: u64) -> Value {
    body.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .chain(std::iter::once(body))
        .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
        .find(|v| v["id"] == json!(id))
        .unwrap_or_else(|| panic!("no answer {id} in {body}"))
}

fn list(id: u64) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/list"})
}

/// A `tools/call` of a tool that needs a human approval (change tier).
fn disable_account(id: u64) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {
        "name": "iam_disable_account", "arguments": {"account": "jdoe", "reason": "beacon"}}})
}

/// `DELETE /mcp` of a session: the status.
fn delete_session(s: &Server, cred: &str, session: &str) -> u16 {
    agent()
        .delete(&s.url("/mcp"))
        .header("authorization", &format!("Bearer {cred}"))
        .header("mcp-session-id", session)
        .call()
        .unwrap()
        .status()
        .as_u16()
}

/// Send a call that will be held, on a thread of its own: its connection
/// dies with the server, so its outcome is not looked at.
fn send_held_call(s: &Server, cred: &str, session: &str) {
    let (url, cred, session) = (s.url("/mcp"), cred.to_string(), session.to_string());
    std::thread::spawn(move || {
        let _ = agent()
            .post(&url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("authorization", &format!("Bearer {cred}"))
            .header("mcp-session-id", &session)
            .send(disable_account(7).to_string())
            .and_then(|mut r| r.body_mut().read_to_string());
    });
}

/// The first pending approval `approver` sees on `s`, once there is one.
fn pending_approval(s: &Server, approver: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, v) = s.get("/v1/approvals?status=pending", Some(approver));
        if let Some(id) = v["approvals"][0]["id"].as_str() {
            return id.to_string();
        }
        assert!(Instant::now() < deadline, "no pending approval: {v}");
        std::thread::sleep(Duration::from_millis(100)); // polling, not timing
    }
}

/// Poll `s` until `approval` is withdrawn (its replica's lease lasts 10 s,
/// the background lease 5 s: well within 60 s).
fn await_withdrawn(s: &Server, approver: &str, approval: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, v) = s.get(&format!("/v1/approvals/{approval}"), Some(approver));
        if v["status"] == "withdrawn" {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "the held call of the dead server was not abandoned: {v}"
        );
        std::thread::sleep(Duration::from_millis(250)); // polling, not timing
    }
}

fn events(s: &Server, kind: &str) -> Vec<Value> {
    s.audit("")
        .into_iter()
        .filter(|e| e["event"]["kind"] == kind)
        .map(|e| e["event"].clone())
        .collect()
}

/// The abandonment entry of `approval`, written because a server stopped.
fn abandoned_because_stopped(s: &Server, approval: &str) -> Value {
    let abandoned: Vec<Value> = events(s, "mcp.call_abandoned")
        .into_iter()
        .filter(|e| e["detail"]["approval_id"] == approval)
        .collect();
    assert_eq!(abandoned.len(), 1, "{abandoned:?}");
    let reason = abandoned[0]["detail"]["reason"].as_str().unwrap();
    assert!(reason.contains("stopped"), "{reason}");
    assert_eq!(abandoned[0]["actor"], "tollgate");
    let withdrawn: Vec<Value> = events(s, "approval.withdrawn")
        .into_iter()
        .filter(|e| e["detail"]["approval_id"] == approval)
        .collect();
    assert_eq!(withdrawn.len(), 1, "{withdrawn:?}");
    abandoned[0].clone()
}

#[test]
fn mcp_replicas_a_session_opened_on_one_is_served_by_all_and_ends_on_all() {
    let tmp = tempfile::tempdir().unwrap();
    let config = mcp_config(tmp.path());
    let Some(c) = Cluster::start_with_config(Some(&config)) else {
        return;
    };
    let svid = c.a().enrol(IR);
    let (task, cred) = c.a().open_task(&svid);
    let (_, other_cred) = c.a().open_task(&svid);

    let session = open_session(c.a(), &cred);
    assert_eq!(
        c.sql(&format!(
            "SELECT task_id FROM mcp_sessions WHERE id = '{session}'"
        )),
        task
    );
    // B and C never saw this session: they restore it from the store.
    let (st, _, body) = raw_mcp(c.b(), &cred, Some(&session), &list(2));
    assert_eq!(st, 200, "{body}");
    let tools = answer(&body, 2);
    assert!(
        tools["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "edr_read_alerts"),
        "{tools}"
    );
    let read = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {
        "name": "edr_read_alerts", "arguments": {"host": "web-1"}}});
    let (st, _, body) = raw_mcp(c.c(), &cred, Some(&session), &read);
    assert_eq!(st, 200, "{body}");
    let called = answer(&body, 3);
    assert_ne!(called["result"]["isError"], true, "{called}");
    assert!(called["result"]["content"].is_array(), "{called}");

    // Bound to its task on every replica, audited where it was refused.
    let (st, _, body) = raw_mcp(c.c(), &other_cred, Some(&session), &list(4));
    assert_eq!(st, 403, "{body}");
    assert!(body.contains("belongs to another task"), "{body}");
    let refused = events(c.c(), "auth.refused");
    assert!(
        refused
            .iter()
            .any(|e| e["detail"]["reason"] == "MCP session belongs to another task"),
        "{refused:?}"
    );
    // Unknown and hostile ids are 404 everywhere, the long one without a query.
    for node in &c.nodes {
        let (st, _, body) = raw_mcp(node, &cred, Some("not-a-session"), &list(5));
        assert_eq!(st, 404, "{body}");
        let (st, _, body) = raw_mcp(node, &cred, Some(&"x".repeat(4000)), &list(5));
        assert_eq!(st, 404, "{body}");
    }

    // Ended on B: gone from the store, and A (which made it) answers 404.
    assert_eq!(delete_session(c.b(), &cred, &session), 204);
    assert_eq!(
        c.sql(&format!(
            "SELECT count(*) FROM mcp_sessions WHERE id = '{session}'"
        )),
        "0"
    );
    for node in [c.a(), c.c(), c.b()] {
        let (st, _, body) = raw_mcp(node, &cred, Some(&session), &list(6));
        assert_eq!(
            st, 404,
            "{} still serves a deleted session: {body}",
            node.addr
        );
    }
    // A new session works as before.
    let again = open_session(c.c(), &cred);
    let (st, _, body) = raw_mcp(c.a(), &cred, Some(&again), &list(7));
    assert_eq!(st, 200, "{body}");
    c.verify_audit(c.b());
}

#[test]
fn mcp_replicas_a_call_held_on_a_replica_that_dies_is_abandoned() {
    let tmp = tempfile::tempdir().unwrap();
    let config = mcp_config(tmp.path());
    let Some(mut c) = Cluster::start_with_config(Some(&config)) else {
        return;
    };
    let ivan = c.a().approver("ivan@acme.test", "identity");
    let svid = c.a().enrol(IR);
    let (_, cred) = c.a().open_task(&svid);
    let session = open_session(c.a(), &cred);
    send_held_call(c.a(), &cred, &session);
    let approval = pending_approval(c.b(), &ivan);
    // The store knows which replica holds it.
    let holder = c.sql(&format!(
        "SELECT replica FROM mcp_held_calls WHERE approval_id = '{approval}'"
    ));
    assert!(holder.starts_with("replica_"), "{holder:?}");

    c.nodes[0].kill();
    let withdrawn = await_withdrawn(c.b(), &ivan, &approval);
    assert_eq!(withdrawn["status"], "withdrawn");
    let entry = abandoned_because_stopped(c.b(), &approval);
    assert_eq!(entry["detail"]["replica"], holder);
    assert_eq!(
        c.sql(&format!(
            "SELECT count(*) FROM mcp_held_calls WHERE approval_id = '{approval}'"
        )),
        "0"
    );
    // A vote now grants nothing.
    let (st, v) = c.b().post(
        &format!("/v1/approvals/{approval}/decision"),
        Some(&ivan),
        &json!({"approve": true, "reason": "too late"}),
    );
    assert_ne!(st, 200, "a withdrawn approval took a vote: {v}");
    // The session outlives the replica that made it.
    let (st, _, body) = raw_mcp(c.c(), &cred, Some(&session), &list(8));
    assert_eq!(st, 200, "{body}");
    c.verify_audit(c.b());
}

/// One SQLite server: killed with a call held, it is a new replica when it
/// starts again and finds its previous incarnation's call abandoned.
#[test]
fn a_call_held_when_a_single_server_is_killed_is_abandoned_after_restart() {
    let mut g = Gateway::start();
    let ivan = g.server.approver("ivan@acme.test", "identity");
    let svid = g.server.enrol(IR);
    let (_, cred) = g.server.open_task(&svid);
    let session = open_session(&g.server, &cred);
    send_held_call(&g.server, &cred, &session);
    let approval = pending_approval(&g.server, &ivan);

    g.server.restart_in_place();
    let withdrawn = await_withdrawn(&g.server, &ivan, &approval);
    assert_eq!(withdrawn["status"], "withdrawn");
    abandoned_because_stopped(&g.server, &approval);
    // The session survived the restart (its row is in the database).
    let (st, _, body) = raw_mcp(&g.server, &cred, Some(&session), &list(9));
    assert_eq!(st, 200, "{body}");
    let (ok, out, err) = g.server.cli(&["audit", "verify"]);
    assert!(ok && out.contains("hash chain intact"), "{out}{err}");
}
