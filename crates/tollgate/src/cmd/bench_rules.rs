//! `tollgate bench rules`: what temporal rules cost as history grows. The
//! store holds N past actions (spread over 10,000 agents, each on one of
//! 1,000 incidents, 10,000 resources and 30 days); each measured decision reads its facts in
//! one store transaction, as the gateway does, with and without the scans
//! three rules need (an agent's last 24 hours, an incident's last 30 days, a
//! resource's last 7 days), and evaluates the rules over what was read.

use anyhow::{anyhow, Result};
use std::time::Instant;
use tollgate_core::temporal::{Past, RuleSet, Subject, DEFAULT_MAX_WINDOW};
use tollgate_core::{ActionRecord, Outcome, Scope, Task, TaskStatus, Tier};
use tollgate_store::{Batch, Change, FactsQuery, HistoryScan, ScanScope, SqliteStore, Store};

const RULES: &str = r#"
rule agent_read_secret_24h = formerly { label "reads-secret" and decision allow } within 24h by agent;
rule disables_in_incident = count { action "iam.disable_account" and decision allow } within 30d by incident;
rule imaged_since_isolated = { action "forensics.image_host" } since { action "edr.isolate_host" } within 7d by resource;
"#;

const NOW: i64 = 1_800_000_000;
const AGENTS: usize = 10_000;
const INCIDENTS: usize = 1_000;
const RESOURCES: usize = 10_000;
const SPAN: i64 = 30 * 86_400;

fn agent(i: usize) -> String {
    format!("spiffe://bench.test/agent/ir-responder/i-{}", i % AGENTS)
}

/// The n-th action's task: its agent's one task, on the agent's incident.
fn task_of(n: usize) -> Task {
    let (a, i) = (n % AGENTS, (n % AGENTS) % INCIDENTS);
    Task {
        id: format!("task_{a}_{i}"),
        agent: agent(a),
        incident_id: format!("INC-{i}"),
        environment: "prod".into(),
        playbook: "bench".into(),
        intent: "bench".into(),
        scope: Scope::default(),
        parent_task_id: None,
        created_at: NOW - SPAN - 1,
        expires_at: NOW + 86_400,
        max_expires_at: NOW + 86_400,
        status: TaskStatus::Active,
        status_reason: None,
    }
}

fn action(n: usize) -> ActionRecord {
    let task = task_of(n);
    let actions = [
        "edr.read_alerts",
        "vault.read_secret",
        "edr.isolate_host",
        "forensics.image_host",
        "iam.disable_account",
    ];
    // Every agent, incident and resource does a bit of everything over
    // time (`n % 5` alone would give each agent one kind of action).
    let act = actions[(n / AGENTS + n / 7) % actions.len()];
    ActionRecord {
        root_task_id: task.id.clone().into(),
        task_id: task.id.clone().into(),
        agent: task.agent.into(),
        request_id: format!("req_{n:032x}"),
        action: act.into(),
        resource: format!("Host::h-{}", (n / 7) % RESOURCES).into(),
        tier: Tier::Read,
        labels: if act == "vault.read_secret" {
            vec!["reads-secret".into()].into()
        } else {
            vec![].into()
        },
        outcome: Outcome::Allow,
        // Spread over the 30 days before now, in order.
        ts: NOW - SPAN + (n as i64 * 7919) % SPAN,
    }
}

/// Grow the store's history to `to` actions (from `from`), in commits of
/// 5,000.
async fn grow(store: &SqliteStore, from: usize, to: usize) -> Result<()> {
    let mut n = from;
    while n < to {
        let end = (n + 5_000).min(to);
        let mut b = Batch::default();
        for k in n..end {
            b = b.change(Change::RecordAction(action(k)));
        }
        store.commit(b).await?;
        n = end;
    }
    Ok(())
}

/// The actions the store reads for rule `i`, as the gateway asks
/// (`Rule::scan_actions`, labels resolved through the example catalog).
fn scan_actions(set: &RuleSet, i: usize, catalog: &tollgate_core::Catalog) -> Option<Vec<String>> {
    set.rules
        .get(i)?
        .scan_actions(catalog)
        .map(|a| a.into_iter().collect())
}

/// The outcomes the store reads for rule `i`.
fn scan_outcomes(set: &RuleSet, i: usize) -> Option<Vec<String>> {
    set.rules
        .get(i)?
        .scan_outcomes()
        .map(|o| o.into_iter().map(|o| o.as_str().to_string()).collect())
}

pub fn rules(sizes: &[usize], decisions: usize) -> Result<()> {
    let mut set = RuleSet::default();
    set.parse_file("bench.tgr", RULES, DEFAULT_MAX_WINDOW)
        .map_err(|e| anyhow!("{e:?}"))?;
    let catalog = tollgate_server::embedded::pack(Default::default())
        .map_err(|e| anyhow!("{e}"))?
        .catalog()
        .clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let dir = tempfile::tempdir()?;
        let store = SqliteStore::open(&dir.path().join("bench.db"))?;
        // Every task the history names, once.
        let mut tasks = Batch::default();
        for a in 0..AGENTS {
            tasks = tasks.change(Change::InsertTask(task_of(a)));
        }
        store.commit(tasks).await?;
        println!(
            "tollgate bench rules: {decisions} decisions per size, SQLite, 3 rules (agent 24h, incident 30d, resource 7d)"
        );
        println!(
            "{:>10}  {:>22}  {:>22}  {:>8}  {:>16}",
            "history", "facts p50 / p99 µs", "+ rules p50 / p99 µs", "ratio", "rows read"
        );
        let mut grown = 0;
        let mut first: Option<f64> = None;
        for &size in sizes {
            grow(&store, grown, size).await?;
            grown = grown.max(size);
            let probe = task_of(0);
            let resource = action(0).resource.to_string();
            let plain = FactsQuery {
                task_id: probe.id.clone(),
                resource: resource.clone(),
                request_hash: "bench".into(),
                ..FactsQuery::default()
            };
            let with_scans = FactsQuery {
                scans: vec![
                    HistoryScan { scope: ScanScope::Agent, key: probe.agent.clone(), since: NOW - 86_400, actions: scan_actions(&set, 0, &catalog), outcomes: scan_outcomes(&set, 0) },
                    HistoryScan { scope: ScanScope::Incident, key: probe.incident_id.clone(), since: NOW - 30 * 86_400, actions: scan_actions(&set, 1, &catalog), outcomes: scan_outcomes(&set, 1) },
                    HistoryScan { scope: ScanScope::Resource, key: resource.clone(), since: NOW - 7 * 86_400, actions: scan_actions(&set, 2, &catalog), outcomes: scan_outcomes(&set, 2) },
                ],
                ..plain.clone()
            };
            let mut without = Vec::with_capacity(decisions);
            let mut with = Vec::with_capacity(decisions);
            let mut rows = 0;
            for _ in 0..decisions {
                let started = Instant::now();
                store.decision_facts(&plain).await?.ok_or_else(|| anyhow!("no task"))?;
                without.push(started.elapsed().as_secs_f64() * 1e6);

                let started = Instant::now();
                let facts = store.decision_facts(&with_scans).await?.ok_or_else(|| anyhow!("no task"))?;
                let subject = Subject {
                    root_task_id: &probe.id,
                    agent: &probe.agent,
                    incident_id: &probe.incident_id,
                    resource: &resource,
                };
                for (rule, records) in set.rules.iter().zip(&facts.scanned) {
                    let past: Vec<Past<'_>> = records
                        .iter()
                        .map(|record| Past { record, incident_id: &probe.incident_id })
                        .collect();
                    std::hint::black_box(rule.evaluate(&past, &subject, NOW));
                }
                with.push(started.elapsed().as_secs_f64() * 1e6);
                rows = facts.scanned.iter().map(Vec::len).sum::<usize>();
            }
            let [p50, _, p99] = super::bench::percentiles(without);
            let [r50, _, r99] = super::bench::percentiles(with);
            let base = *first.get_or_insert(r50);
            println!(
                "{size:>10}  {p50:>10.0} / {p99:>9.0}  {r50:>10.0} / {r99:>9.0}  {:>7.2}x  {rows:>16}",
                r50 / base
            );
        }
        println!("ratio: the median with rules against the first size's; rows read: by the three scans");
        Ok(())
    })
}
