//! Operating the gateway: kill switch, policy reload, CLI, health, metrics, OpenAPI.

use crate::harness::*;
use serde_json::{json, Value};

#[test]
fn freeze_denies_everything_and_survives_a_restart() {
    let s = Server::start();
    let svid = s.enrol(IR);
    let (_, cred) = s.open_task(&svid);
    let (ok, out, err) = s.cli(&["freeze"]);
    assert!(ok, "{out}{err}");
    let (_, d) = s.authorize(&cred, "edr.read_alerts", host("web-1"));
    assert_eq!(d["decision"], "deny");
    assert!(d["reasons"][0].as_str().unwrap().contains("frozen"), "{d}");
    let (status, _) = s.post("/v1/tasks", Some(&svid), &incident_task());
    assert_eq!(status, 403, "a task opened while frozen");

    let s = s.restart();
    let (_, d) = s.authorize(&cred, "edr.read_alerts", host("web-1"));
    assert_eq!(
        d["decision"], "deny",
        "the freeze did not survive a restart: {d}"
    );
    let (ok, _, _) = s.cli(&["unfreeze"]);
    assert!(ok);
    let (_, d) = s.authorize(&cred, "edr.read_alerts", host("web-1"));
    assert_eq!(d["decision"], "allow", "{d}");
    let kinds: Vec<String> = s
        .audit("")
        .iter()
        .map(|e| e["event"]["kind"].as_str().unwrap().to_string())
        .collect();
    assert!(kinds.contains(&"freeze".to_string()) && kinds.contains(&"unfreeze".to_string()));
}

#[test]
fn policy_reload_swaps_valid_packs_and_keeps_the_old_one_on_error() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("pack");
    let out = std::process::Command::new(bin())
        .arg("init")
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let out = std::process::Command::new(bin())
        .args(["policy", "validate"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("ok: ")
            && String::from_utf8_lossy(&out.stdout).contains(" policies, 11 catalog operations"),
        "{out:?}"
    );

    let s = Server::start_with_config(&config, &tmp.path().join("data"));
    let svid = s.enrol(IR);
    let (_, cred) = s.open_task(&svid);
    assert_eq!(
        s.authorize(&cred, "edr.read_alerts", host("web-1")).1["decision"],
        "allow"
    );

    // A pack with a type error is refused with file:line, offline and by the server.
    let bad = config.join("policies/50-bad.cedar");
    std::fs::write(
        &bad,
        "// broken\npermit (principal, action, resource)\nwhen { principal.role > 3 };\n",
    )
    .unwrap();
    let out = std::process::Command::new(bin())
        .args(["policy", "validate"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("policies/50-bad.cedar:3:"), "{stderr}");
    let (status, v) = s.post("/v1/policies/reload", Some(&s.admin.clone()), &json!({}));
    assert_eq!(status, 422, "{v}");
    assert_eq!(v["error"]["code"], "policy_invalid");
    assert_eq!(
        v["error"]["diagnostics"][0]["file"],
        "policies/50-bad.cedar"
    );
    assert_eq!(v["error"]["diagnostics"][0]["line"], 3);
    // The old pack is still live.
    assert_eq!(
        s.authorize(&cred, "edr.read_alerts", host("web-1")).1["decision"],
        "allow"
    );

    // A valid change goes live atomically, by API...
    std::fs::write(&bad, "@id(\"no-edr-reads\")\n@reason(\"edr is under maintenance\")\nforbid (principal, action == Action::\"edr.read_alerts\", resource);\n").unwrap();
    let (ok, out, err) = s.cli(&["policy", "reload"]);
    assert!(ok, "{out}{err}");
    let (_, d) = s.authorize(&cred, "edr.read_alerts", host("web-1"));
    assert_eq!(d["decision"], "deny");
    assert_eq!(d["policies"], json!(["no-edr-reads"]));

    // ... and by SIGHUP.
    std::fs::remove_file(&bad).unwrap();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &s.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut decision = String::new();
    for _ in 0..100 {
        decision = s.authorize(&cred, "edr.read_alerts", host("web-1")).1["decision"]
            .as_str()
            .unwrap()
            .to_string();
        if decision == "allow" {
            break;
        }
        // Waiting on another process's signal handling; there is no clock to move.
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(decision, "allow", "SIGHUP did not reload");
    let loads = s
        .audit("")
        .iter()
        .filter(|e| e["event"]["kind"] == "policy.loaded")
        .count();
    let rejects = s
        .audit("")
        .iter()
        .filter(|e| e["event"]["kind"] == "policy.rejected")
        .count();
    assert_eq!((loads, rejects), (3, 1));
}

#[test]
fn cli_drives_the_running_server() {
    let s = Server::start();
    let (ok, out, err) = s.cli(&["agent", "add", IR, "--owner", "alice@acme.test"]);
    assert!(ok, "{err}");
    let token = out
        .lines()
        .find_map(|l| l.strip_prefix("join token:"))
        .unwrap()
        .trim()
        .to_string();
    let (status, v) = s.post("/v1/agents/attest", None, &json!({"join_token": token}));
    assert_eq!(status, 200, "{v}");
    let (task_id, cred) = s.open_task(v["svid"].as_str().unwrap());
    s.authorize(&cred, "edr.read_alerts", host("web-1"));

    let (ok, out, _) = s.cli(&["task", "list", "--status", "active"]);
    assert!(ok);
    assert!(out.contains(&task_id) && out.contains("INC-4711"), "{out}");
    let (ok, out, _) = s.cli(&["task", "show", &task_id]);
    assert!(ok && out.contains("contain-malware"), "{out}");
    let (ok, out, _) = s.cli(&["audit", "tail", "-n", "3"]);
    assert!(ok);
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(
        out.contains("decision") && out.contains("edr.read_alerts Host::web-1"),
        "{out}"
    );
    let (ok, out, _) = s.cli(&["audit", "tail", "--task", &task_id, "--json"]);
    assert!(ok);
    let first: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(first["event"]["kind"], "task.opened");
    let (ok, _, _) = s.cli(&["task", "revoke", &task_id, "--reason", "drill"]);
    assert!(ok);
    assert_eq!(s.authorize(&cred, "edr.read_alerts", host("web-1")).0, 401);
    // Errors from the server reach the user.
    let (ok, _, err) = s.cli(&["task", "revoke", &task_id]);
    assert!(!ok);
    assert!(
        err.contains("409") && err.contains("already revoked"),
        "{err}"
    );
    let out = std::process::Command::new(bin())
        .args(["freeze"])
        .env("TOLLGATE_ADDR", &s.addr)
        .env("TOLLGATE_TOKEN", "tga_wrong")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
}

#[test]
fn health_metrics_and_openapi() {
    let s = Server::start();
    let (status, v) = s.get("/healthz", None);
    assert_eq!((status, v["status"].as_str()), (200, Some("ok")));
    let svid = s.enrol(IR);
    let (_, cred) = s.open_task(&svid);
    s.authorize(&cred, "edr.read_alerts", host("web-1"));
    s.authorize(
        &cred,
        "logs.delete",
        json!({"type": "LogStream", "id": "x"}),
    );
    let (_, metrics) = s.get("/metrics", None);
    let metrics = metrics.as_str().unwrap().to_string();
    assert!(
        metrics.contains("tollgate_decisions_total{kind=\"decision\",outcome=\"allow\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tollgate_decisions_total{kind=\"decision\",outcome=\"deny\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tollgate_decision_seconds_count 3"),
        "{metrics}"
    );
    let (_, api) = s.get("/openapi.json", None);
    for path in [
        "/v1/agents",
        "/v1/agents/attest",
        "/v1/tasks",
        "/v1/authorize",
        "/v1/tasks/{id}/close",
        "/access/v1/evaluation",
        "/v1/freeze",
        "/v1/audit",
    ] {
        assert!(api["paths"][path].is_object(), "openapi lacks {path}");
    }
    assert!(api["components"]["securitySchemes"]["task"].is_object());
}

#[test]
fn policy_test_runs_the_packs_traces_and_fails_on_a_broken_expectation() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config_dir(tmp.path(), "");
    let out = std::process::Command::new(bin())
        .args(["policy", "test"])
        .arg(&config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("chain-egress.yaml") && stdout.contains(", 0 failed"),
        "{stdout}"
    );
    let broken = std::fs::read_to_string(config.join("tests/chain-egress.yaml"))
        .unwrap()
        .replace("expect: deny", "expect: allow");
    std::fs::write(config.join("tests/broken.yaml"), broken).unwrap();
    let out = std::process::Command::new(bin())
        .args(["policy", "test"])
        .arg(&config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        stdout.contains("FAIL")
            && stdout.contains("step 3")
            && stdout.contains("expected allow, got deny"),
        "{stdout}"
    );
}

/// `bench http` for 2 s with 2 clients over 2 tasks, and `extra`: its
/// report, once it has succeeded and found no stale decision.
fn short_bench_http(s: &Server, extra: &[&str]) -> String {
    let mut args = vec![
        "bench",
        "http",
        "--duration-secs",
        "2",
        "--clients",
        "2",
        "--tasks",
        "2",
    ];
    args.extend_from_slice(extra);
    let (ok, out, err) = s.cli(&args);
    assert!(ok, "{out}{err}");
    assert!(out.contains("stale decisions after revocation: 0"), "{out}");
    out
}

#[test]
fn bench_http_reports_and_finds_no_stale_decision() {
    let s = Server::start();
    let out = short_bench_http(&s, &[]);
    assert!(out.contains("decisions/s") && out.contains("p99"), "{out}");
    assert!(
        out.contains("server memory:") && out.contains("MB resident"),
        "{out}"
    );
}

/// `bench http --rate` paces the clients: 20 decisions/s for 2 s is at most
/// 40 requests (unpaced, two clients send hundreds), and the report says so.
#[test]
fn bench_http_rate_paces_the_load() {
    let s = Server::start();
    let out = short_bench_http(&s, &["--rate", "20"]);
    assert!(out.contains("paced at 20 decisions/s"), "{out}");
    let sent: usize = out
        .lines()
        .find_map(|l| l.strip_prefix("requests:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no request count in {out}"));
    assert!(
        (20..=40).contains(&sent),
        "{sent} requests at 20/s for 2 s: {out}"
    );
    let (ok, _, err) = s.cli(&["bench", "http", "--rate", "0"]);
    assert!(!ok && err.contains("--rate"), "{err}");
}

/// The OpenAPI document describes what the server answers: every operation
/// behind a credential lists 401, every JSON body brings 400, 413 and 415,
/// every answer with a JSON body has its schema, every reference resolves,
/// and the MCP gateway is there. (`.ci/contract` checks the live answers
/// against it.)
#[test]
fn openapi_documents_every_status_and_body() {
    let s = Server::start();
    let (status, api) = s.get("/openapi.json", None);
    assert_eq!(status, 200);
    let mut problems = Vec::new();
    let mut operations = 0;
    for (path, item) in api["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if !["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                continue;
            }
            operations += 1;
            let at = format!("{} {path}", method.to_uppercase());
            let responses = op["responses"].as_object().unwrap();
            let secured = op["security"].as_array().is_some_and(|s| {
                s.iter()
                    .any(|r| r.as_object().is_some_and(|r| !r.is_empty()))
            });
            if secured && !responses.contains_key("401") {
                problems.push(format!("{at}: secured, but no 401"));
            }
            if op.get("requestBody").is_some() {
                for status in ["400", "413", "415"] {
                    if !responses.contains_key(status) {
                        problems.push(format!("{at}: takes a body, but no {status}"));
                    }
                }
            }
            for (status, response) in responses {
                let content = response["content"].as_object();
                if content.is_none() && !["202", "204"].contains(&status.as_str()) {
                    problems.push(format!("{at}: {status} has no body described"));
                }
                for (media, body) in content.into_iter().flatten() {
                    if media.contains("json") && body.get("schema").is_none() {
                        problems.push(format!("{at}: {status} {media} has no schema"));
                    }
                }
            }
            // Every `{param}` in the path is declared as a path parameter.
            let declared: Vec<&str> = op["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["in"] == "path")
                .filter_map(|p| p["name"].as_str())
                .collect();
            for segment in path.split('/').filter(|s| s.starts_with('{')) {
                let name = segment.trim_matches(['{', '}']);
                if !declared.contains(&name) {
                    problems.push(format!("{at}: path parameter {name} is not declared"));
                }
            }
        }
    }
    for method in ["post", "get", "delete"] {
        if !api["paths"]["/mcp"][method].is_object() {
            problems.push(format!("/mcp: no {method}"));
        }
    }
    // Every reference resolves.
    fn refs<'a>(v: &'a serde_json::Value, out: &mut Vec<&'a str>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v.as_str()) {
                        ("$ref", Some(r)) => out.push(r),
                        _ => refs(v, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    refs(&api, &mut all);
    for r in all {
        let name = r.trim_start_matches("#/components/schemas/");
        if !api["components"]["schemas"][name].is_object() {
            problems.push(format!("dangling reference {r}"));
        }
    }
    assert!(operations >= 45, "only {operations} operations");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // The shared shapes are real schemas, not bare objects.
    let schemas = &api["components"]["schemas"];
    for (name, field) in [
        ("ResourceRef", "type"),
        ("IncidentRef", "severity"),
        ("ErrorBody", "error"),
    ] {
        assert!(
            schemas[name]["properties"][field].is_object(),
            "{name}: {}",
            schemas[name]
        );
    }
    assert_eq!(schemas["Id"]["maxLength"], 256);
    let approvals = &api["paths"]["/v1/approvals"]["get"]["parameters"];
    assert!(
        approvals
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "status" && p["in"] == "query"),
        "{approvals}"
    );
}

/// At `info`, one log line per decision with what an operator needs and no
/// parameter; `TOLLGATE_LOG_FORMAT=json` makes every line a JSON object,
/// with no terminal colour codes when stderr is a file.
#[test]
fn the_server_logs_one_json_line_per_decision_without_secrets() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config_dir(tmp.path(), "");
    let log = tmp.path().join("server.log");
    let mut s = Server::start_logging_with_env(
        &config,
        &tmp.path().join("data"),
        &log,
        &[("TOLLGATE_LOG", "info"), ("TOLLGATE_LOG_FORMAT", "json")],
    );
    let svid = s.enrol(IR);
    let (task, cred) = s.open_task(&svid);
    let (_, d) = s.post(
        "/v1/authorize",
        Some(&cred),
        &json!({"action": "iam.disable_account", "resource": {"type": "Account", "id": "jdoe"},
                "intent": "e2e", "parameters": {"reason": "hunter2-is-not-logged"}}),
    );
    assert_eq!(d["decision"], "approval_required", "{d}");
    s.terminate(10).expect("the server stops");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains('\u{1b}'), "colour codes in a log file");
    assert!(!text.contains("hunter2"), "a parameter reached the log");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    let decisions: Vec<&Value> = lines
        .iter()
        .filter(|l| l["target"] == "tollgate::decision")
        .collect();
    assert_eq!(decisions.len(), 1, "{text}");
    let f = &decisions[0]["fields"];
    assert_eq!(f["decision"], "approval_required", "{f}");
    assert_eq!(f["request"], d["request_id"], "{f}");
    for (key, want) in [
        ("action", "iam.disable_account"),
        ("resource", "Account::jdoe"),
        ("agent", IR),
        ("task", task.as_str()),
    ] {
        assert!(f[key].as_str().unwrap_or("").contains(want), "{key}: {f}");
    }
    assert!(
        f["policies"]
            .as_str()
            .unwrap_or("")
            .contains("identity-change-needs-approval"),
        "{f}"
    );
    assert!(f["latency_ms"].as_f64().is_some(), "{f}");
}

/// `--json` prints the server's answer as sent, parseable, on the commands
/// that print data.
#[test]
fn the_cli_prints_json_wherever_it_prints_data() {
    let s = Server::start();
    let json_of = |args: &[&str]| -> Value {
        let (ok, out, err) = s.cli(args);
        assert!(ok, "{args:?}: {err}");
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {out}"))
    };
    let agent = json_of(&[
        "agent",
        "add",
        "spiffe://acme.test/agent/ir-responder/j-1",
        "--owner",
        "a@acme.test",
        "--json",
    ]);
    assert!(
        agent["join_token"].as_str().unwrap().starts_with("tgj_"),
        "{agent}"
    );
    let ivan = json_of(&[
        "approver",
        "add",
        "ivan@acme.test",
        "--role",
        "identity",
        "--json",
    ]);
    assert!(ivan["key"].as_str().unwrap().starts_with("tgr_"), "{ivan}");
    let pep = json_of(&["pep", "add", "iam-proxy", "--json"]);
    assert!(pep["key"].as_str().unwrap().starts_with("tgp_"), "{pep}");
    let svid = s.enrol(IR);
    let (_, cred) = s.open_task(&svid);
    let (_, d) = s.post(
        "/v1/authorize",
        Some(&cred),
        &json!({"action": "iam.disable_account", "resource": {"type": "Account", "id": "jdoe"}, "intent": "e2e", "parameters": {"reason": "x"}}),
    );
    let id = d["approval_id"].as_str().unwrap();
    let shown = json_of(&["approvals", "show", id, "--json"]);
    assert_eq!(
        (shown["id"].as_str(), shown["status"].as_str()),
        (Some(id), Some("pending"))
    );
    // A vote, as the approver it needs (the identity role).
    let voted = {
        let key = ivan["key"].as_str().unwrap();
        let (ok, out, err) = s.cli_as(
            key,
            &["approvals", "approve", id, "--reason", "checked", "--json"],
        );
        assert!(ok, "{err}");
        serde_json::from_str::<Value>(&out).unwrap()
    };
    assert_eq!(voted["status"], "approved", "{voted}");
    let reloaded = json_of(&["policy", "reload", "--json"]);
    assert!(reloaded["policies"].as_u64().unwrap() > 0, "{reloaded}");
    let verified = json_of(&["audit", "verify", "--json"]);
    assert_eq!(
        (&verified["ok"], &verified["covered_by_checkpoint"]),
        (&json!(true), &json!(true)),
        "{verified}"
    );
    assert!(verified["entries"].as_u64().unwrap() > 5, "{verified}");
    let timeline = json_of(&["audit", "timeline", "--incident", "INC-4711", "--json"]);
    let entries = timeline["entries"].as_array().unwrap();
    assert!(
        entries
            .iter()
            .any(|e| e["entry"]["event"]["kind"] == "task.opened"
                && e["line"].as_str().unwrap().contains("opened task")),
        "{timeline}"
    );
    let task_id = entries
        .iter()
        .find_map(|e| e["entry"]["event"]["task_id"].as_str())
        .unwrap()
        .to_string();
    let revoked = json_of(&["task", "revoke", &task_id, "--reason", "e2e", "--json"]);
    assert_eq!(revoked["revoked_tasks"], json!([task_id]), "{revoked}");
    let agent_revoked = json_of(&[
        "agent",
        "revoke",
        "spiffe://acme.test/agent/ir-responder/j-1",
        "--json",
    ]);
    assert!(agent_revoked["revoked_tasks"].is_array(), "{agent_revoked}");
    let changed = json_of(&[
        "incident",
        "update",
        "INC-4711",
        "--severity",
        "critical",
        "--json",
    ]);
    assert_eq!(changed["incident"]["severity"], "critical", "{changed}");
    let resolved = json_of(&["incident", "resolve", "INC-4711", "--json"]);
    assert_eq!(resolved["incident"]["status"], "resolved", "{resolved}");

    // Offline pack commands: a valid pack, a broken one, its test traces.
    let pack = tempfile::tempdir().unwrap();
    let dir = pack.path().join("cfg");
    let (ok, _, err) = s.cli(&["init", dir.to_str().unwrap()]);
    assert!(ok, "{err}");
    let valid = json_of(&["policy", "validate", dir.to_str().unwrap(), "--json"]);
    assert_eq!(valid["ok"], true, "{valid}");
    let tests = {
        let (ok, out, err) = s.cli(&["policy", "test", dir.to_str().unwrap(), "--json"]);
        assert!(ok, "{err}");
        out.lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .collect::<Vec<_>>()
    };
    let summary = tests.last().unwrap();
    assert_eq!(summary["failed"], 0, "{summary}");
    assert_eq!(
        summary["passed"].as_u64().unwrap() as usize,
        tests.len() - 1,
        "{tests:?}"
    );
    assert!(
        tests[0]["file"].as_str().unwrap().ends_with(".yaml"),
        "{tests:?}"
    );
    std::fs::write(
        dir.join("policies/99-broken.cedar"),
        "permit (principal, action, resource) when { nonsense };\n",
    )
    .unwrap();
    let (ok, out, _) = s.cli(&["policy", "validate", dir.to_str().unwrap(), "--json"]);
    assert!(!ok, "a broken pack validated");
    let broken: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(broken["ok"], false, "{broken}");
    let problem = &broken["problems"][0];
    assert!(
        problem["file"]
            .as_str()
            .unwrap()
            .ends_with("99-broken.cedar")
            && problem["line"].as_u64() == Some(1),
        "{broken}"
    );
}

/// Named contexts: `context set` and `use` once, then commands need no
/// address or token; `--context` picks another; an unknown one is an error.
#[test]
fn contexts_hold_the_address_and_token_file() {
    let s = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let profile = tmp.path().join("config.yaml");
    let token_file = tmp.path().join("admin.token");
    std::fs::write(&token_file, &s.admin).unwrap();
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(bin())
            .args(args)
            .env("TOLLGATE_PROFILE", &profile)
            .env_remove("TOLLGATE_ADDR")
            .env_remove("TOLLGATE_TOKEN")
            .env_remove("TOLLGATE_DATA")
            .env_remove("TOLLGATE_CONTEXT")
            .current_dir(tmp.path())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (ok, out, err) = cli(&[
        "context",
        "set",
        "lab",
        "--addr",
        &s.addr,
        "--token-file",
        token_file.to_str().unwrap(),
    ]);
    assert!(ok, "{out}{err}");
    // The first context becomes the current one.
    let (ok, out, err) = cli(&["task", "list"]);
    assert!(ok, "{out}{err}");
    let (ok, _, err) = cli(&["freeze"]);
    assert!(ok, "{err}");
    assert_eq!(s.get("/healthz", None).1["frozen"], true);
    // A second context that points nowhere: picked by --context, it fails
    // and says where it tried.
    let (ok, _, err) = cli(&[
        "context",
        "set",
        "nowhere",
        "--addr",
        "http://127.0.0.1:9",
        "--token-file",
        token_file.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let (ok, _, err) = cli(&["unfreeze", "--context", "nowhere"]);
    assert!(
        !ok && err.contains("127.0.0.1:9") && err.contains("tollgate serve"),
        "{err}"
    );
    let (ok, out, _) = cli(&["context", "list"]);
    assert!(
        ok && out.contains("* lab") && out.contains("  nowhere"),
        "{out}"
    );
    let (ok, out, _) = cli(&["context", "list", "--json"]);
    let listed: Value = serde_json::from_str(&out).unwrap();
    assert!(
        ok && listed["current-context"] == "lab"
            && listed["contexts"]["nowhere"]["addr"] == "http://127.0.0.1:9",
        "{out}"
    );
    let (ok, _, err) = cli(&["unfreeze", "--context", "staging"]);
    assert!(!ok && err.contains("no context \"staging\""), "{err}");
    // The token stays in its file: the profile names the file only.
    let text = std::fs::read_to_string(&profile).unwrap();
    assert!(
        !text.contains(&s.admin) && text.contains("token_file"),
        "{text}"
    );
    let (ok, _, err) = cli(&["unfreeze"]);
    assert!(ok, "{err}");
    assert_eq!(s.get("/healthz", None).1["frozen"], false);
}
