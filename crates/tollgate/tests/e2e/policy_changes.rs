//! Changing a pack with confidence: a shadow pack evaluated beside the
//! enforced one on live traffic, never enforced.

use crate::harness::*;
use serde_json::{json, Value};

/// A copy of the config's pack at `to`, plus one more policy file.
fn pack_with(config: &std::path::Path, to: &std::path::Path, extra_policy: &str) {
    copy_dir(config, to);
    std::fs::write(to.join("policies/95-candidate.cedar"), extra_policy).unwrap();
}

const NO_READS_ON_WEB_2: &str = r#"
@id("no-alert-reads-on-web-2")
@reason("alert reads on web-2 go through the EDR team")
forbid (principal, action == Action::"edr.read_alerts", resource == Host::"web-2");
"#;

fn shadow_diffs(s: &Server) -> Vec<Value> {
    s.audit("")
        .into_iter()
        .filter(|e| e["event"]["kind"] == "decision.shadow_diff")
        .collect()
}

#[test]
fn a_shadow_pack_is_evaluated_beside_the_enforced_one_and_never_enforced() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config_dir(tmp.path(), "shadow_pack: ../candidate\n");
    pack_with(&config, &tmp.path().join("candidate"), NO_READS_ON_WEB_2);
    let s = Server::start_with_config(&config, &tmp.path().join("data"));
    let svid = s.enrol(IR);
    let (_, cred) = s.open_task(&svid);

    // The enforced pack decides; the shadow only records where it differs.
    let (status, same) = s.authorize(&cred, "edr.read_alerts", host("web-1"));
    assert_eq!((status, same["decision"].as_str()), (200, Some("allow")));
    let (status, differs) = s.authorize(&cred, "edr.read_alerts", host("web-2"));
    assert_eq!(
        (status, differs["decision"].as_str()),
        (200, Some("allow")),
        "{differs}"
    );
    let diffs = shadow_diffs(&s);
    assert_eq!(diffs.len(), 1, "{diffs:?}");
    let ev = &diffs[0]["event"];
    assert_eq!(ev["request_id"], differs["request_id"]);
    assert_eq!(ev["outcome"], "allow->deny");
    assert_eq!(ev["detail"]["enforced"]["outcome"], "allow");
    assert_eq!(ev["detail"]["shadow"]["outcome"], "deny");
    assert_eq!(
        ev["detail"]["shadow"]["policies"],
        json!(["no-alert-reads-on-web-2"])
    );
    assert_eq!(ev["detail"]["resource"], "Host::web-2");
    assert_ne!(
        ev["detail"]["shadow"]["policy_digest"],
        ev["detail"]["enforced"]["policy_digest"]
    );
    // The decision's own entry comes first, the disagreement beside it.
    let entries = s.audit("");
    let at = |kind: &str| {
        entries
            .iter()
            .position(|e| {
                e["event"]["kind"] == kind && e["event"]["request_id"] == differs["request_id"]
            })
            .unwrap()
    };
    assert_eq!(at("decision.shadow_diff"), at("decision") + 1);
    assert!(entries
        .iter()
        .any(|e| e["event"]["kind"] == "policy.shadow_loaded"
            && e["event"]["detail"]["source"]
                .as_str()
                .unwrap()
                .ends_with("candidate")));
    let metrics = s.get("/metrics", None).1;
    assert!(
        metrics
            .as_str()
            .unwrap()
            .contains(r#"tollgate_shadow_disagreements_total{enforced="allow",shadow="deny"} 1"#),
        "{metrics}"
    );

    // The report groups them, with the policies that differ and the requests.
    let (ok, out, err) = s.cli(&["policy", "shadow", "report", "--json"]);
    assert!(ok, "{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["disagreements"], 1);
    let group = &report["groups"][0];
    assert_eq!(
        (group["enforced"].as_str(), group["shadow"].as_str()),
        (Some("allow"), Some("deny"))
    );
    assert_eq!(group["requests"], json!([differs["request_id"]]));
    assert!(group["policies"]
        .as_array()
        .unwrap()
        .contains(&json!("no-alert-reads-on-web-2")));
    let (ok, out, _) = s.cli(&["policy", "shadow", "report"]);
    assert!(ok);
    assert!(out.contains("allow -> deny: 1"), "{out}");
    let (ok, out, _) = s.cli(&[
        "policy",
        "shadow",
        "report",
        "--since",
        "2999-01-01T00:00:00Z",
    ]);
    assert!(ok);
    assert!(out.starts_with("no disagreements"), "{out}");

    // A pack that does not validate is refused; the shadow stays.
    let (_, shown) = s.get("/v1/policies/shadow", Some(&s.admin.clone()));
    let broken = tmp.path().join("broken");
    pack_with(
        &config,
        &broken,
        "permit (principal, action, resource) when { nonsense };",
    );
    let (status, refused) = s.post(
        "/v1/policies/shadow",
        Some(&s.admin.clone()),
        &json!({"path": broken.to_str().unwrap()}),
    );
    assert_eq!(status, 422, "{refused}");
    assert!(
        refused["error"]["diagnostics"][0]["file"]
            .as_str()
            .unwrap()
            .contains("95-candidate.cedar"),
        "{refused}"
    );
    assert_eq!(
        s.get("/v1/policies/shadow", Some(&s.admin.clone())).1,
        shown
    );

    // Cleared: nothing more is shadowed.
    let (ok, out, err) = s.cli(&["policy", "shadow", "clear"]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "no shadow pack");
    s.authorize(&cred, "edr.read_alerts", host("web-2"));
    assert_eq!(shadow_diffs(&s).len(), 1);
    assert!(s
        .audit("")
        .iter()
        .any(|e| e["event"]["kind"] == "policy.shadow_cleared"));

    // Loaded again through the CLI (relative to the config directory).
    let (ok, out, err) = s.cli(&["policy", "shadow", "load", "../candidate"]);
    assert!(ok, "{err}");
    assert!(out.starts_with("shadow pack: "), "{out}");
    let (_, again) = s.authorize(&cred, "edr.read_alerts", host("web-2"));
    assert_eq!(again["decision"], "allow");
    assert_eq!(shadow_diffs(&s).len(), 2);
    let (ok, out, _) = s.cli(&["policy", "shadow", "show", "--json"]);
    assert!(ok);
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["loaded"], true);
}

#[test]
fn a_shadow_pack_that_does_not_load_stops_the_server_at_start() {
    let err = serve_refuses("shadow_pack: no-such-pack\n");
    assert!(err.contains("shadow_pack"), "{err}");
}

/// `tollgate policy replay` with `args`, reading the log as `how` says.
fn replay(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = std::process::Command::new(bin())
        .args(["policy", "replay"])
        .args(args)
        .env_remove("TOLLGATE_DATA")
        .env_remove("TOLLGATE_ADDR")
        .env_remove("TOLLGATE_TOKEN")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn replaying_the_log_against_a_candidate_pack_shows_what_would_change() {
    // The demo's log: reads, containment denied then allowed after
    // evidence, an approval, a rollback, a chain rule that revokes.
    let tmp = tempfile::tempdir().unwrap();
    let demo = demo_dir(tmp.path());
    let (config, data) = (demo.join("config"), demo.join("data"));
    let data_arg = data.to_str().unwrap();

    // The pack that decided, replayed with the facts of the time (task,
    // incident, evidence, the tree's history), decides the same: nothing
    // changes, exit 0.
    let (ok, out, err) = replay(
        &[
            "--pack",
            config.to_str().unwrap(),
            "--data",
            data_arg,
            "--json",
        ],
        &[],
    );
    assert!(ok, "{out}\n{err}");
    let same: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(same["changed"], 0, "{same}");
    assert!(same["replayed"].as_u64().unwrap() >= 8, "{same}");

    // A candidate that forbids isolating hosts: each isolation the log
    // allowed would now be denied, by that policy, and the step fails.
    let candidate = tmp.path().join("candidate");
    pack_with(
        &config,
        &candidate,
        r#"@id("no-isolation") @reason("isolation goes through the EDR team")
forbid (principal, action == Action::"edr.isolate_host", resource);"#,
    );
    let (ok, out, err) = replay(
        &[
            "--pack",
            candidate.to_str().unwrap(),
            "--data",
            data_arg,
            "--json",
        ],
        &[],
    );
    assert!(!ok, "a change must fail the step");
    assert!(err.contains("would change"), "{err}");
    let changed: Value = serde_json::from_str(&out).unwrap();
    let groups = changed["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 1, "{changed}");
    let g = &groups[0];
    assert_eq!(
        (g["recorded"].as_str(), g["candidate"].as_str()),
        (Some("allow"), Some("deny"))
    );
    assert!(
        g["policies"]
            .as_array()
            .unwrap()
            .contains(&json!("no-isolation")),
        "{g}"
    );
    // The requests named are the log's allowed isolations, exactly.
    let s = Server::start_with_config(&config, &data);
    let isolations: Vec<Value> = s
        .audit("")
        .into_iter()
        .filter(|e| {
            e["event"]["kind"] == "decision"
                && e["event"]["outcome"] == "allow"
                && e["event"]["detail"]["action"] == "edr.isolate_host"
        })
        .map(|e| e["event"]["request_id"].clone())
        .collect();
    assert!(!isolations.is_empty());
    let named: Vec<Value> = g["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["request_id"].clone())
        .collect();
    assert_eq!(named, isolations);

    // Over the API of the running server, in text: the same finding.
    let token = std::fs::read_to_string(data.join("admin.token")).unwrap();
    let (ok, out, _) = replay(
        &["--pack", candidate.to_str().unwrap()],
        &[
            ("TOLLGATE_ADDR", s.addr.as_str()),
            ("TOLLGATE_TOKEN", token.trim()),
        ],
    );
    assert!(!ok);
    assert!(
        out.contains(&format!("allow -> deny: {}", isolations.len())),
        "{out}"
    );
    assert!(out.contains(isolations[0].as_str().unwrap()), "{out}");
    // Filters: another incident, or only the future, replay nothing.
    for filter in [
        ["--incident", "INC-0000"],
        ["--since", "2999-01-01T00:00:00Z"],
    ] {
        let mut args = vec![
            "--pack",
            candidate.to_str().unwrap(),
            "--data",
            data_arg,
            "--json",
        ];
        args.extend(filter);
        let (ok, out, err) = replay(&args, &[]);
        assert!(ok, "{err}");
        let r: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(r["replayed"], 0, "{filter:?}: {r}");
    }
    drop(s);

    // A log that does not verify is not replayed.
    let conn = rusqlite::Connection::open(data.join("tollgate.db")).unwrap();
    conn.execute(
        "UPDATE audit SET event = replace(event, '\"outcome\":\"deny\"', '\"outcome\":\"allow\"') \
         WHERE seq = (SELECT min(seq) FROM audit WHERE event LIKE '%\"outcome\":\"deny\"%')",
        [],
    )
    .unwrap();
    drop(conn);
    let (ok, out, err) = replay(
        &["--pack", config.to_str().unwrap(), "--data", data_arg],
        &[],
    );
    assert!(!ok && out.is_empty(), "{out}");
    assert!(err.contains("did not verify"), "{err}");
}

#[test]
fn temporal_rules_read_an_agents_past_across_tasks_and_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    // The example pack's rules (rules/history.tgr, policies/45-across-tasks.cedar).
    let config = config_dir(tmp.path(), "");
    let (ok, err) = validate(&config);
    assert!(ok, "{err}");
    // Its traces, positive and negative: `policy test` evaluates the rules
    // over each trace's own past.
    let o = std::process::Command::new(bin())
        .args(["policy", "test"])
        .arg(&config)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}");
    for trace in [
        "chain-egress-window",
        "chain-incident-disables",
        "chain-release-after-imaging",
        "chain-second-irreversible",
    ] {
        assert!(
            out.contains(&format!(
                "ok    {}",
                config.join("tests").join(trace).display()
            )),
            "{out}"
        );
    }
    let mut s = Server::start_with_config(&config, &tmp.path().join("data"));
    let svid = s.enrol(IR);
    let other = s.enrol("spiffe://acme.test/agent/ir-responder/i-2");
    let post = json!({"type": "Url", "id": "https://api.partner.test/ticket", "attributes": {"domain": "api.partner.test"}});

    // Before any secret read, egress needs an approval (the pack's rule).
    let (_, first) = s.open_task(&svid);
    let (_, d) = s.authorize(&first, "http.post", post.clone());
    assert_eq!(d["decision"], "approval_required", "{d}");
    let (_, d) = s.authorize(
        &first,
        "vault.read_secret",
        json!({"type": "Secret", "id": "prod-db"}),
    );
    assert_eq!(d["decision"], "allow", "{d}");

    // Another task of the same agent: its own tree, so the 10-minute chain
    // rule does not see the read; the 24-hour rule by agent does.
    let (_, second) = s.open_task(&svid);
    let (_, d) = s.authorize(&second, "http.post", post.clone());
    assert_eq!(d["decision"], "deny", "{d}");
    assert_eq!(
        d["policies"],
        json!(["no-egress-within-24h-of-a-secret-read"])
    );
    // Another agent never read a secret.
    let (_, theirs) = s.open_task(&other);
    let (_, d) = s.authorize(&theirs, "http.post", post.clone());
    assert_eq!(d["decision"], "approval_required", "{d}");

    // The past is in the store: a restart changes nothing.
    s.restart_in_place();
    let svid = s.enrol(IR);
    let (third_id, third) = s.open_task(&svid);
    let (_, d) = s.authorize(&third, "http.post", post);
    assert_eq!(d["decision"], "deny", "{d}");

    // By resource, across agents: a host is released only once imaged
    // since it was isolated, whoever did either.
    let (status, v) = s.post(
        &format!("/v1/tasks/{third_id}/evidence"),
        Some(&third),
        &json!({"resource": host("web-1"), "kind": "memory", "sha256": tollgate_core::sha256_hex(b"m")}),
    );
    assert!(status < 300, "{v}");
    let (status, v) = s.post(
        &format!("/v1/tasks/{third_id}/evidence"),
        Some(&third),
        &json!({"resource": host("web-2"), "kind": "memory", "sha256": tollgate_core::sha256_hex(b"m")}),
    );
    assert!(status < 300, "{v}");
    let (_, d) = s.authorize(&third, "edr.release_host", host("web-2"));
    assert_eq!(
        d["decision"], "allow",
        "never isolated, nothing to wait for: {d}"
    );
    let (_, d) = s.authorize(&third, "edr.isolate_host", host("web-1"));
    assert_eq!(d["decision"], "allow", "{d}");
    let (_, d) = s.authorize(&third, "edr.release_host", host("web-1"));
    assert_eq!(
        d["policies"],
        json!(["release-only-after-imaging"]),
        "not imaged yet: {d}"
    );
    let other = s.enrol("spiffe://acme.test/agent/ir-responder/i-2");
    let (_, theirs) = s.open_task(&other);
    let (_, d) = s.authorize(&theirs, "forensics.image_host", host("web-1"));
    assert_eq!(d["decision"], "allow", "{d}");
    let (_, d) = s.authorize(&third, "edr.release_host", host("web-1"));
    assert_eq!(d["decision"], "allow", "imaged by another agent since: {d}");
}

/// `tollgate policy validate DIR`: whether it passed, and its stderr.
fn validate(config: &std::path::Path) -> (bool, String) {
    let o = std::process::Command::new(bin())
        .args(["policy", "validate"])
        .arg(config)
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn a_temporal_rule_with_a_mistake_is_refused_with_its_place() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config_dir(tmp.path(), "");
    std::fs::write(
        config.join("rules/broken.tgr"),
        "rule ok = count { tier read } within 1h;\nrule late = formerly { label \"x\" } within 400d;\n",
    )
    .unwrap();
    let (ok, err) = validate(&config);
    assert!(!ok);
    assert!(
        err.contains("rules/broken.tgr:2:43: a window is more than 0 s and at most 90d"),
        "{err}"
    );
    std::fs::remove_file(config.join("rules/broken.tgr")).unwrap();

    // The longest window is the operator's: the example's 30-day rule does
    // not fit a 7-day maximum, for `policy validate` (which reads the
    // tollgate.yaml beside the pack) and for `serve` alike.
    let yaml = config.join("tollgate.yaml");
    let original = std::fs::read_to_string(&yaml).unwrap();
    std::fs::write(&yaml, format!("{original}max_rule_window_days: 7\n")).unwrap();
    let (ok, err) = validate(&config);
    assert!(!ok);
    assert!(
        err.contains("rules/history.tgr:15:")
            && err.contains("at most 7d (the configured maximum)"),
        "{err}"
    );
    let err = serve_refuses("max_rule_window_days: 7\n");
    assert!(err.contains("at most 7d (the configured maximum)"), "{err}");
    std::fs::write(&yaml, format!("{original}max_rule_window_days: 0\n")).unwrap();
    let (ok, err) = validate(&config);
    assert!(!ok);
    assert!(
        err.contains("max_rule_window_days is 1 to 3650, got 0"),
        "{err}"
    );
    std::fs::write(&yaml, format!("{original}max_rule_window_days: 30\n")).unwrap();
    let (ok, err) = validate(&config);
    assert!(ok, "{err}");

    // Rules without `rules: TemporalRules` in the context: said at load.
    for f in [
        "policies/40-chain-rules.cedar",
        "policies/45-across-tasks.cedar",
    ] {
        std::fs::remove_file(config.join(f)).unwrap();
    }
    let schema = config.join("schema.cedarschema");
    let text: String = std::fs::read_to_string(&schema)
        .unwrap()
        .lines()
        .filter(|l| !l.trim_start().starts_with("rules: TemporalRules"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&schema, text).unwrap();
    let (ok, err) = validate(&config);
    assert!(!ok);
    assert!(err.contains("declares `rules: TemporalRules`"), "{err}");
}

#[test]
fn bench_rules_reports_the_cost_at_each_history_size() {
    let o = std::process::Command::new(bin())
        .args([
            "bench",
            "rules",
            "--history",
            "0,20000",
            "--decisions",
            "20",
        ])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let rows: Vec<&str> = out
        .lines()
        .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
        .collect();
    assert_eq!(rows.len(), 2, "{out}");
    // At 0 nothing is read; at 20,000 the scans read the rows their rules name.
    let read = |row: &str| {
        row.split_whitespace()
            .last()
            .unwrap()
            .parse::<usize>()
            .unwrap()
    };
    assert_eq!(read(rows[0]), 0, "{out}");
    assert!(read(rows[1]) > 0, "{out}");
}
