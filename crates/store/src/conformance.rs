//! The behaviour every [`Store`] backend must show. Backends call
//! [`run_all`] from their own tests. Checks use fresh ids, so they also pass
//! against a database that already holds data (a shared PostgreSQL).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::{
    ActionRecord, AgentCount, AuditQuery, Batch, Change, Conflict, ConsoleSession, FactsQuery,
    HistoryScan, JoinToken, OutboxMessage, ScanScope, Store, StoreError, TaskFilter,
};
use std::sync::atomic::{AtomicU64, Ordering};
use tollgate_audit::AuditEvent;
use tollgate_core::{
    Agent, Approval, ApprovalStatus, Incident, IncidentStatus, Outcome, Scope, Severity, Task,
    TaskStatus, Tier,
};

/// The conflict a commit failed with; panics on success or another error.
async fn conflict(s: &dyn Store, batch: Batch) -> Conflict {
    match s.commit(batch).await {
        Err(StoreError::Conflict(c)) => c,
        other => panic!("expected a conflict, got {other:?}"),
    }
}

fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}-{t}-{}", N.fetch_add(1, Ordering::SeqCst))
}

fn task(id: &str, agent: &str, incident: &str) -> Task {
    Task {
        id: id.into(),
        agent: agent.into(),
        incident_id: incident.into(),
        environment: "prod".into(),
        playbook: "contain-malware".into(),
        intent: "contain".into(),
        scope: Scope::default(),
        parent_task_id: None,
        created_at: 100,
        expires_at: 400,
        max_expires_at: 1000,
        status: TaskStatus::Active,
        status_reason: None,
    }
}

pub async fn run_all(store: &dyn Store) {
    join_tokens_are_single_use(store).await;
    tasks_round_trip_and_end_once(store).await;
    renew_never_passes_max_and_needs_active(store).await;
    failed_batches_change_nothing(store).await;
    audit_is_chained_in_commit_order_and_filterable(store).await;
    agents_incidents_settings_and_peps(store).await;
    evidence_is_per_task_and_resource(store).await;
    approvals_update_optimistically(store).await;
    merkle_head_checkpoints_and_request_lookup(store).await;
    concurrent_commits_all_land_and_failures_stay_isolated(store).await;
    concurrent_decisions_on_an_ended_task_fail_alone(store).await;
    action_history_is_per_tree_and_windowed(store).await;
    lineage_walks_up_to_the_root(store).await;
    credential_holder_is_the_lineage_and_the_agent(store).await;
    descendants_come_parent_first(store).await;
    decision_facts_are_one_snapshot_of_everything(store).await;
    decision_facts_see_every_commit_between_calls(store).await;
    decision_facts_history_equals_the_full_read(store).await;
    history_scans_read_an_agent_an_incident_or_a_resource(store).await;
    leases_have_one_holder_until_they_expire(store).await;
    outbox_messages_wait_until_claimed_and_dequeued(store).await;
    mcp_sessions_are_registered_touched_and_expired(store).await;
    held_calls_of_a_dead_replica_are_found(store).await;
    console_sessions_start_end_and_expire(store).await;
}

/// An MCP session row: registered once (an id is never taken over), read
/// back by any process, touched forward only, ended by id or by idleness.
pub async fn mcp_sessions_are_registered_touched_and_expired(s: &dyn Store) {
    use crate::McpSession;
    // Far in the past and in the future of every other check's times, so
    // the idle sweep below removes only this check's old session.
    let old = McpSession {
        id: unique("mcp-old"),
        task_id: unique("task"),
        init: r#"{"protocolVersion":"2025-06-18"}"#.into(),
        created_at: -5_000,
        last_seen: -5_000,
    };
    let live = McpSession {
        id: unique("mcp-live"),
        last_seen: 9_000_000_000,
        created_at: 9_000_000_000,
        ..old.clone()
    };
    assert_eq!(s.mcp_session(&old.id).await.unwrap(), None);
    s.commit(
        Batch::default()
            .change(Change::PutMcpSession(old.clone()))
            .change(Change::PutMcpSession(live.clone())),
    )
    .await
    .unwrap();
    assert_eq!(s.mcp_session(&old.id).await.unwrap(), Some(old.clone()));
    // Another task cannot register the same id: the first owner stays.
    let thief = McpSession {
        task_id: unique("task-thief"),
        ..old.clone()
    };
    assert_eq!(
        conflict(s, Batch::default().change(Change::PutMcpSession(thief))).await,
        Conflict::McpSessionExists {
            session_id: old.id.clone()
        }
    );
    assert_eq!(
        s.mcp_session(&old.id).await.unwrap().unwrap().task_id,
        old.task_id
    );
    // Touched forward, never back.
    let touch = |id: &str, at: i64| {
        Batch::default().change(Change::TouchMcpSession {
            session_id: id.into(),
            at,
        })
    };
    s.commit(touch(&old.id, -4_000)).await.unwrap();
    s.commit(touch(&old.id, -4_500)).await.unwrap();
    assert_eq!(
        s.mcp_session(&old.id).await.unwrap().unwrap().last_seen,
        -4_000
    );
    // Touching a session that is gone brings nothing back.
    let gone = unique("mcp-gone");
    s.commit(touch(&gone, 10)).await.unwrap();
    assert_eq!(s.mcp_session(&gone).await.unwrap(), None);
    // Idle ones go; the live one stays.
    s.commit(Batch::default().change(Change::EndIdleMcpSessions { before: -3_000 }))
        .await
        .unwrap();
    assert_eq!(s.mcp_session(&old.id).await.unwrap(), None);
    assert_eq!(s.mcp_session(&live.id).await.unwrap(), Some(live.clone()));
    // Ended by id.
    s.commit(Batch::default().change(Change::EndMcpSession {
        session_id: live.id.clone(),
    }))
    .await
    .unwrap();
    assert_eq!(s.mcp_session(&live.id).await.unwrap(), None);
}

/// A held call is found abandoned once its replica's lease is missing or
/// expired, not before; ending it forgets it; expired replica leases can be
/// dropped without touching live ones or other keys.
pub async fn held_calls_of_a_dead_replica_are_found(s: &dyn Store) {
    use crate::{replica_lease_key, HeldCall, REPLICA_LEASE_PREFIX};
    let (alive, dead, never) = (unique("rep-alive"), unique("rep-dead"), unique("rep-never"));
    let lease = |replica: &str, until: i64| {
        Batch::default().change(Change::AcquireLease {
            key: replica_lease_key(replica),
            holder: replica.into(),
            until,
            now: 0,
        })
    };
    s.commit(lease(&alive, 1_000)).await.unwrap();
    s.commit(lease(&dead, 500)).await.unwrap();
    let held = |replica: &str| HeldCall {
        request_id: unique("req"),
        approval_id: unique("apr"),
        replica: replica.into(),
        task_id: unique("task"),
        agent: "spiffe://acme.test/agent/a/1".into(),
        held_at: 400,
    };
    let (on_alive, on_dead, on_never) = (held(&alive), held(&dead), held(&never));
    for h in [&on_alive, &on_dead, &on_never] {
        s.commit(Batch::default().change(Change::PutHeldCall(h.clone())))
            .await
            .unwrap();
    }
    let mine = |found: Vec<HeldCall>| -> Vec<String> {
        let ours = [
            &on_alive.request_id,
            &on_dead.request_id,
            &on_never.request_id,
        ];
        found
            .into_iter()
            .filter(|h| ours.contains(&&h.request_id))
            .map(|h| h.request_id)
            .collect()
    };
    // At 600: the dead replica's lease expired, the other never had one.
    let mut found = mine(s.abandoned_held_calls(600, 10_000).await.unwrap());
    found.sort();
    let mut want = vec![on_dead.request_id.clone(), on_never.request_id.clone()];
    want.sort();
    assert_eq!(found, want);
    // At 400 the dead one was still alive.
    assert_eq!(
        mine(s.abandoned_held_calls(400, 10_000).await.unwrap()),
        vec![on_never.request_id.clone()]
    );
    // Moved to a live replica (upsert), a call is no longer abandoned.
    s.commit(Batch::default().change(Change::PutHeldCall(HeldCall {
        replica: alive.clone(),
        ..on_never.clone()
    })))
    .await
    .unwrap();
    assert_eq!(
        mine(s.abandoned_held_calls(600, 10_000).await.unwrap()),
        vec![on_dead.request_id.clone()]
    );
    // Ended, it is forgotten.
    s.commit(Batch::default().change(Change::EndHeldCall {
        request_id: on_dead.request_id.clone(),
    }))
    .await
    .unwrap();
    assert!(mine(s.abandoned_held_calls(600, 10_000).await.unwrap()).is_empty());
    // Dropping expired replica leases leaves the live one and other keys.
    let other = unique("rollback");
    s.commit(Batch::default().change(Change::AcquireLease {
        key: other.clone(),
        holder: "h".into(),
        until: 10,
        now: 0,
    }))
    .await
    .unwrap();
    s.commit(Batch::default().change(Change::DropExpiredLeases {
        prefix: REPLICA_LEASE_PREFIX.into(),
        now: 600,
    }))
    .await
    .unwrap();
    // The dead replica's lease is gone: anyone may take its key at once.
    s.commit(Batch::default().change(Change::AcquireLease {
        key: replica_lease_key(&dead),
        holder: "someone".into(),
        until: 700,
        now: 0,
    }))
    .await
    .unwrap();
    // The live one's is still held (taking it at 0 conflicts) and so is the other key.
    assert!(matches!(
        conflict(
            s,
            lease(&unique("x"), 1).change(Change::AcquireLease {
                key: replica_lease_key(&alive),
                holder: "someone".into(),
                until: 700,
                now: 0,
            })
        )
        .await,
        Conflict::LeaseHeld { .. }
    ));
    assert!(matches!(
        conflict(
            s,
            Batch::default().change(Change::AcquireLease {
                key: other,
                holder: "someone".into(),
                until: 700,
                now: 0,
            })
        )
        .await,
        Conflict::LeaseHeld { .. }
    ));
}

/// A console session is found by its hash until it is ended or purged
/// after expiry; a second put of the same hash changes nothing.
pub async fn console_sessions_start_end_and_expire(s: &dyn Store) {
    let session = |id: &str, expires_at: i64| ConsoleSession {
        id_hash: id.into(),
        principal: "ivan@acme.test".into(),
        role: "identity".into(),
        via: "key".into(),
        created_at: 100,
        expires_at,
    };
    let (a, b) = (unique("sess"), unique("sess"));
    s.commit(
        Batch::default()
            .change(Change::PutConsoleSession(session(&a, 1000)))
            .change(Change::PutConsoleSession(session(&b, 200))),
    )
    .await
    .unwrap();
    s.commit(
        Batch::default().change(Change::PutConsoleSession(ConsoleSession {
            principal: "mallory".into(),
            ..session(&a, 9999)
        })),
    )
    .await
    .unwrap();
    assert_eq!(
        s.console_session(&a).await.unwrap(),
        Some(session(&a, 1000))
    );
    assert_eq!(s.console_session(&b).await.unwrap(), Some(session(&b, 200)));
    assert_eq!(s.console_session("nobody").await.unwrap(), None);
    s.commit(Batch::default().change(Change::PurgeConsoleSessions { before: 500 }))
        .await
        .unwrap();
    assert_eq!(s.console_session(&b).await.unwrap(), None);
    assert!(s.console_session(&a).await.unwrap().is_some());
    s.commit(Batch::default().change(Change::EndConsoleSession { id_hash: a.clone() }))
        .await
        .unwrap();
    assert_eq!(s.console_session(&a).await.unwrap(), None);
}

/// A lease has one holder at a time, across every process over the store;
/// an expired lease is taken over, and only its holder gives it back.
pub async fn leases_have_one_holder_until_they_expire(s: &dyn Store) {
    let key = unique("rollback");
    let take = |holder: &str, until: i64, now: i64| {
        Batch::default().change(Change::AcquireLease {
            key: key.clone(),
            holder: holder.into(),
            until,
            now,
        })
    };
    s.commit(take("a", 200, 100)).await.unwrap();
    // The holder may extend it; another may not take it while it lasts.
    s.commit(take("a", 300, 150)).await.unwrap();
    match conflict(s, take("b", 400, 299)).await {
        Conflict::LeaseHeld { holder, until, .. } => {
            assert_eq!((holder.as_str(), until), ("a", 300));
        }
        other => panic!("expected LeaseHeld, got {other:?}"),
    }
    // Giving back someone else's lease does nothing.
    s.commit(Batch::default().change(Change::ReleaseLease {
        key: key.clone(),
        holder: "b".into(),
    }))
    .await
    .unwrap();
    assert!(matches!(
        conflict(s, take("b", 400, 299)).await,
        Conflict::LeaseHeld { .. }
    ));
    // Expired: taken over.
    s.commit(take("b", 500, 300)).await.unwrap();
    s.commit(Batch::default().change(Change::ReleaseLease {
        key: key.clone(),
        holder: "b".into(),
    }))
    .await
    .unwrap();
    s.commit(take("c", 600, 301)).await.unwrap();
}

fn message(id: &str, created_at: i64) -> OutboxMessage {
    OutboxMessage {
        id: id.into(),
        sink: "pager".into(),
        event: "approval.created".into(),
        subject: format!("apr-{id}"),
        body: r#"{"event":"approval.created"}"#.into(),
        created_at,
    }
}

fn claim(id: &str, holder: &str, until: i64, now: i64) -> Batch {
    Batch::default().change(Change::AcquireLease {
        key: OutboxMessage::lease_key(id),
        holder: holder.into(),
        until,
        now,
    })
}

/// Ids among `due` that belong to this test (a shared store holds others).
fn ids_of(due: &[OutboxMessage], ours: &[&str]) -> Vec<String> {
    due.iter()
        .filter(|m| ours.contains(&m.id.as_str()))
        .map(|m| m.id.clone())
        .collect()
}

/// A queued notification is committed with its batch or not at all, is due
/// once old enough, is hidden while a claim lease on it lasts, comes back
/// when that lease expires (its claimer died), and is gone once dequeued.
pub async fn outbox_messages_wait_until_claimed_and_dequeued(s: &dyn Store) {
    let (m1, m2, m3) = (unique("msg"), unique("msg"), unique("msg"));
    let ours = [m1.as_str(), m2.as_str(), m3.as_str()];
    s.commit(
        Batch::audit_only(AuditEvent::new(
            100,
            tollgate_core::EventKind::ApprovalCreated,
            "t",
        ))
        .change(Change::Enqueue(message(&m1, 100)))
        .change(Change::Enqueue(message(&m2, 200))),
    )
    .await
    .unwrap();
    // Queued again (a retried commit): still one message.
    s.commit(Batch::default().change(Change::Enqueue(message(&m1, 100))))
        .await
        .unwrap();
    // A batch that fails queues nothing.
    let t = task(&unique("task"), "spiffe://acme.test/agent/x/1", "INC-O");
    s.commit(Batch::default().change(Change::InsertTask(t.clone())))
        .await
        .unwrap();
    conflict(
        s,
        Batch::default()
            .change(Change::Enqueue(message(&m3, 100)))
            .change(Change::InsertTask(t)),
    )
    .await;

    let due = |by: i64, now: i64| async move { s.outbox_due(by, now, 10_000).await.unwrap() };
    assert_eq!(ids_of(&due(150, 100).await, &ours), vec![m1.clone()]);
    let both = due(200, 100).await;
    assert_eq!(ids_of(&both, &ours), vec![m1.clone(), m2.clone()]);
    let got = both.iter().find(|m| m.id == m2).unwrap();
    assert_eq!(got, &message(&m2, 200));

    // Claimed: hidden from everyone while the lease lasts, and a second
    // claimer is refused.
    s.commit(claim(&m1, "a", 300, 100)).await.unwrap();
    assert_eq!(ids_of(&due(200, 150).await, &ours), vec![m2.clone()]);
    assert!(matches!(
        conflict(s, claim(&m1, "b", 400, 150)).await,
        Conflict::LeaseHeld { .. }
    ));
    // The claimer died: the message is due again at the lease's end.
    assert_eq!(
        ids_of(&due(200, 300).await, &ours),
        vec![m1.clone(), m2.clone()]
    );
    // Dequeued (with its lease): gone for good.
    s.commit(Batch::default().change(Change::Dequeue { id: m1.clone() }))
        .await
        .unwrap();
    assert_eq!(ids_of(&due(200, 300).await, &ours), vec![m2.clone()]);
    s.commit(Batch::default().change(Change::Dequeue { id: m2.clone() }))
        .await
        .unwrap();
    assert!(ids_of(&due(i64::MAX, 300).await, &ours).is_empty());
}

pub async fn action_history_is_per_tree_and_windowed(s: &dyn Store) {
    let root = unique("root");
    let rec = |task: &str, action: &str, ts| ActionRecord {
        root_task_id: root.clone().into(),
        task_id: task.into(),
        agent: format!("spiffe://acme.test/agent/{task}/{root}").into(),
        request_id: unique("req"),
        action: action.into(),
        resource: "Host::web-1".into(),
        tier: Tier::Read,
        labels: vec!["reads-secret".into()].into(),
        outcome: Outcome::Allow,
        ts,
    };
    for (task, action, ts) in [
        ("p", "vault.read_secret", 100),
        ("child", "forensics.image_host", 200),
        ("p", "edr.read_alerts", 300),
    ] {
        s.commit(Batch::default().change(Change::RecordAction(rec(task, action, ts))))
            .await
            .unwrap();
    }
    let all = s.actions_in_tree(&root, 0).await.unwrap();
    assert_eq!(
        all.iter().map(|a| a.action.as_str()).collect::<Vec<_>>(),
        [
            "vault.read_secret",
            "forensics.image_host",
            "edr.read_alerts"
        ]
    );
    assert_eq!(
        all[0],
        rec("p", "vault.read_secret", 100).clone_with_request(&all[0].request_id)
    );
    let recent = s.actions_in_tree(&root, 200).await.unwrap();
    assert_eq!(recent.len(), 2);
    assert!(s
        .actions_in_tree(&unique("other"), 0)
        .await
        .unwrap()
        .is_empty());
    // Agent-wide counts of allowed actions, filtered as rate limits are;
    // a denied action does not count.
    let mut denied = rec("p", "edr.read_alerts", 400);
    denied.outcome = Outcome::Deny;
    s.commit(Batch::default().change(Change::RecordAction(denied)))
        .await
        .unwrap();
    let agent = format!("spiffe://acme.test/agent/p/{root}");
    let count = |since, tier, action| {
        let agent = agent.clone();
        let s = &s;
        async move {
            s.count_allowed_by_agent(&agent, since, tier, action)
                .await
                .unwrap()
        }
    };
    assert_eq!(count(0, None, None).await, 2);
    assert_eq!(count(0, Some("read"), None).await, 2);
    assert_eq!(count(0, Some("contain"), None).await, 0);
    assert_eq!(count(0, None, Some("edr.read_alerts")).await, 1);
    assert_eq!(count(0, Some("read"), Some("vault.read_secret")).await, 1);
    assert_eq!(count(101, None, None).await, 1);
    assert_eq!(count(301, None, None).await, 0);
    assert_eq!(
        s.count_allowed_by_agent("spiffe://acme.test/agent/p/nobody", 0, None, None)
            .await
            .unwrap(),
        0
    );
}

trait CloneWithRequest {
    fn clone_with_request(self, request_id: &str) -> Self;
}

impl CloneWithRequest for ActionRecord {
    fn clone_with_request(mut self, request_id: &str) -> Self {
        self.request_id = request_id.to_string();
        self
    }
}

pub async fn merkle_head_checkpoints_and_request_lookup(s: &dyn Store) {
    use tollgate_audit::merkle;
    let req = unique("req");
    s.commit(Batch::audit_only(
        AuditEvent::new(1, "decision", "a").request(&req),
    ))
    .await
    .unwrap();
    s.commit(Batch::audit_only(
        AuditEvent::new(2, "action.result", "a").request(&req),
    ))
    .await
    .unwrap();
    let head = s.audit_head().await.unwrap();
    let leaves = s.audit_leaf_hashes(head.size).await.unwrap();
    assert_eq!(leaves.len() as u64, head.size);
    assert_eq!(merkle::root(&leaves), head.root_hash);
    let by_req = s.audit_by_request(&req).await.unwrap();
    assert_eq!(
        by_req
            .iter()
            .map(|e| e.event.kind.as_str())
            .collect::<Vec<_>>(),
        ["decision", "action.result"]
    );
    assert_eq!(by_req[1].hash, head.last_hash);
    let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    let cp =
        tollgate_audit::checkpoint::Checkpoint::sign("test", head.size, &head.root_hash, 3, &key);
    s.commit(Batch::default().change(Change::PutCheckpoint(cp.clone())))
        .await
        .unwrap();
    s.commit(Batch::default().change(Change::PutCheckpoint(cp.clone())))
        .await
        .unwrap();
    let cps = s.checkpoints().await.unwrap();
    assert_eq!(cps.iter().filter(|c| **c == cp).count(), 1);
    // One result per decision.
    let result = |status: &str| {
        Batch::default().change(Change::RecordActionResult {
            request_id: req.clone(),
            task_id: "t".into(),
            status: status.into(),
            at: 5,
        })
    };
    s.commit(result("succeeded")).await.unwrap();
    let c = conflict(s, result("failed")).await;
    assert_eq!(
        c,
        Conflict::ResultRecorded {
            request_id: req.clone()
        }
    );
    assert_eq!(
        c.to_string(),
        format!("a result for {req} was already recorded")
    );
}

pub async fn concurrent_commits_all_land_and_failures_stay_isolated(s: &dyn Store) {
    let tag = unique("burst");
    let before = s.audit_head().await.unwrap().size;
    let mut futures = Vec::new();
    for i in 0..200 {
        let mut batch = Batch::audit_only(AuditEvent::new(i, "burst", tag.clone()).task(&tag));
        if i % 10 == 0 {
            // Every tenth batch fails its precondition; it must take nothing else down.
            batch = batch.change(Change::ConsumeJoinToken {
                token_hash: unique("missing"),
                now: 1,
            });
        }
        futures.push(s.commit(batch));
    }
    let results = futures_join(futures).await;
    assert_eq!(results.iter().filter(|r| r.is_err()).count(), 20);
    let mut seqs: Vec<u64> = results
        .into_iter()
        .filter_map(|r| r.ok())
        .flatten()
        .collect();
    seqs.sort();
    seqs.dedup();
    assert_eq!(seqs.len(), 180);
    let mine = s
        .audit(AuditQuery {
            task_id: Some(tag),
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(mine.len(), 180);
    assert_eq!(whole_log_size(s).await, before + 180);
}

/// Decision batches (a task-live check, a history row, an entry) arrive
/// together, every third on a task that ended: those fail with
/// `TaskNotLive` and leave no row or entry, whatever their place in the
/// group, and the others land in one verifiable chain.
pub async fn concurrent_decisions_on_an_ended_task_fail_alone(s: &dyn Store) {
    let live = task(&unique("task"), "spiffe://acme.test/agent/d/1", "INC-1");
    let ended = task(&unique("task"), "spiffe://acme.test/agent/d/2", "INC-1");
    insert_tasks(s, &[&live, &ended]).await;
    s.commit(Batch::default().change(Change::EndTask {
        task_id: ended.id.clone(),
        status: TaskStatus::Completed,
        reason: "done".into(),
    }))
    .await
    .unwrap();
    let before = s.audit_head().await.unwrap().size;
    let mut futures = Vec::new();
    for i in 0..150 {
        let t = if i % 3 == 1 { &ended } else { &live };
        let batch = Batch::audit_only(AuditEvent::new(150, "decision", "tollgate").task(&t.id))
            .change(Change::RequireTaskLive {
                task_id: t.id.clone(),
                now: 150,
            })
            .change(Change::RecordAction(record(
                t,
                t,
                "edr.isolate_host",
                Outcome::Allow,
                150,
            )));
        futures.push(s.commit(batch));
    }
    let results = futures_join(futures).await;
    for (i, r) in results.iter().enumerate() {
        match (i % 3 == 1, r) {
            (true, Err(StoreError::Conflict(Conflict::TaskNotLive { task_id }))) => {
                assert_eq!(task_id, &ended.id)
            }
            (false, Ok(seqs)) => assert_eq!(seqs.len(), 1),
            (_, other) => panic!("decision {i}: {other:?}"),
        }
    }
    assert_eq!(s.actions_in_tree(&live.id, 0).await.unwrap().len(), 100);
    assert_eq!(s.actions_in_tree(&ended.id, 0).await.unwrap(), vec![]);
    assert_eq!(whole_log_size(s).await, before + 100);
}

/// The head's size, once the whole log verifies as one chain and its
/// Merkle root is the head's.
async fn whole_log_size(s: &dyn Store) -> u64 {
    let head = s.audit_head().await.unwrap();
    let all = s
        .audit(AuditQuery {
            limit: 10_000_000,
            ..Default::default()
        })
        .await
        .unwrap();
    tollgate_audit::verify_run(1, tollgate_audit::GENESIS, &all).unwrap();
    let leaves = s.audit_leaf_hashes(head.size).await.unwrap();
    assert_eq!(tollgate_audit::merkle::root(&leaves), head.root_hash);
    head.size
}

/// Run commits concurrently on the current runtime without extra dependencies.
async fn futures_join<T: Send + 'static>(
    futures: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + '_>>>,
) -> Vec<T> {
    let mut out = Vec::with_capacity(futures.len());
    // Poll all of them together so the writer sees them queued at once.
    let mut pending: Vec<_> = futures.into_iter().map(Some).collect();
    let mut results: Vec<Option<T>> = (0..pending.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for (i, slot) in pending.iter_mut().enumerate() {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        results[i] = Some(v);
                        *slot = None;
                    }
                    std::task::Poll::Pending => done = false,
                }
            }
        }
        if done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    out.extend(results.into_iter().flatten());
    out
}

pub async fn approvals_update_optimistically(s: &dyn Store) {
    use tollgate_core::Vote;
    let task_id = unique("task");
    let a = Approval {
        id: unique("apr"),
        version: 0,
        request_hash: unique("hash"),
        request_id: "req".into(),
        task_id: task_id.clone(),
        agent: "spiffe://acme.test/agent/a/1".into(),
        agent_owner: "alice".into(),
        incident_id: "INC-1".into(),
        action: "iam.disable_account".into(),
        resource: "Account::jdoe".into(),
        request: serde_json::json!({"parameters": {"reason": "x"}}),
        required: 1,
        deny_threshold: 1,
        policies: vec!["p".into()],
        reasons: vec![],
        status: ApprovalStatus::Pending,
        votes: vec![],
        created_at: 10,
        expires_at: 910,
        escalated: false,
        decided_at: None,
        used_at: None,
        used_by: None,
    };
    s.commit(Batch::default().change(Change::InsertApproval(a.clone())))
        .await
        .unwrap();
    // One pending approval per (task, request hash).
    let mut twin = a.clone();
    twin.id = unique("apr");
    assert_eq!(
        conflict(s, Batch::default().change(Change::InsertApproval(twin))).await,
        Conflict::ApprovalPending {
            task_id: task_id.clone(),
            request_hash: a.request_hash.clone(),
            existing_id: a.id.clone(),
        }
    );
    // An id is never reused, pending or not.
    let mut again = a.clone();
    again.request_hash = unique("hash");
    again.status = ApprovalStatus::Denied;
    assert_eq!(
        conflict(s, Batch::default().change(Change::InsertApproval(again))).await,
        Conflict::ApprovalExists {
            approval_id: a.id.clone()
        }
    );
    assert_eq!(s.approval(&a.id).await.unwrap(), Some(a.clone()));
    let mut approved = a.clone();
    approved
        .cast(
            Vote {
                approver: "bob".into(),
                role: "secops".into(),
                approve: true,
                reason: "ok".into(),
                ts: 11,
            },
            11,
        )
        .unwrap();
    let update = |ap: &Approval, expected| {
        Batch::default().change(Change::UpdateApproval {
            approval: ap.clone(),
            expected_version: expected,
        })
    };
    s.commit(update(&approved, 0)).await.unwrap();
    // Two racing uses both read version 1; exactly one commits.
    let mut use1 = approved.clone();
    use1.consume(&a.request_hash, &task_id, "r1", 12).unwrap();
    let mut use2 = approved.clone();
    use2.consume(&a.request_hash, &task_id, "r2", 12).unwrap();
    s.commit(update(&use1, 1)).await.unwrap();
    let c = conflict(s, update(&use2, 1)).await;
    assert_eq!(
        c,
        Conflict::ApprovalVersion {
            approval_id: a.id.clone(),
            expected: 1
        }
    );
    assert_eq!(
        c.to_string(),
        format!("approval {} changed concurrently", a.id)
    );
    let stored = s.approval(&a.id).await.unwrap().unwrap();
    assert_eq!(
        (stored.status, stored.used_by.as_deref()),
        (ApprovalStatus::Used, Some("r1"))
    );
    // Filters.
    let by_task = s
        .approvals(crate::ApprovalFilter {
            task_id: Some(task_id.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(by_task.len(), 1);
    let pending = s
        .approvals(crate::ApprovalFilter {
            task_id: Some(task_id),
            status: Some(ApprovalStatus::Pending),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(pending.is_empty());
    // Approvers by key hash.
    let ap = crate::Approver {
        name: unique("bob"),
        role: "secops".into(),
        key_hash: unique("kh"),
        created_at: 1,
        expires_at: Some(1_000),
        disabled: false,
        last_used_at: None,
    };
    s.commit(Batch::default().change(Change::PutApprover(ap.clone())))
        .await
        .unwrap();
    assert_eq!(
        s.approver_by_key_hash(&ap.key_hash).await.unwrap(),
        Some(ap.clone())
    );
    assert_eq!(s.approver_by_key_hash(&unique("none")).await.unwrap(), None);
    assert!(s.approvers().await.unwrap().contains(&ap));
    // Offboarding: disable, touch, enable, remove.
    s.commit(Batch::default().change(Change::SetApproverDisabled {
        name: ap.name.clone(),
        disabled: true,
    }))
    .await
    .unwrap();
    s.commit(Batch::default().change(Change::TouchApprover {
        name: ap.name.clone(),
        at: 77,
    }))
    .await
    .unwrap();
    let got = s.approver_by_key_hash(&ap.key_hash).await.unwrap().unwrap();
    assert!(got.disabled);
    assert_eq!(got.last_used_at, Some(77));
    assert!(got.refusal(2).is_some());
    s.commit(Batch::default().change(Change::SetApproverDisabled {
        name: ap.name.clone(),
        disabled: false,
    }))
    .await
    .unwrap();
    let got = s.approver_by_key_hash(&ap.key_hash).await.unwrap().unwrap();
    assert_eq!(got.refusal(999), None);
    assert!(got.refusal(1_000).is_some(), "expired at expires_at");
    s.commit(Batch::default().change(Change::RemoveApprover {
        name: ap.name.clone(),
    }))
    .await
    .unwrap();
    assert_eq!(s.approver_by_key_hash(&ap.key_hash).await.unwrap(), None);
    // Removing or disabling someone who is not there changes nothing.
    for c in [
        Change::RemoveApprover {
            name: ap.name.clone(),
        },
        Change::SetApproverDisabled {
            name: ap.name.clone(),
            disabled: true,
        },
    ] {
        assert!(matches!(
            s.commit(Batch::default().change(c)).await,
            Err(StoreError::NotFound(_))
        ));
    }
}

pub async fn evidence_is_per_task_and_resource(s: &dyn Store) {
    let task_id = unique("task");
    assert!(!s.has_evidence(&task_id, "Host::web-1").await.unwrap());
    let ev = crate::Evidence {
        id: unique("ev"),
        task_id: task_id.clone(),
        resource: "Host::web-1".into(),
        kind: "memory-snapshot".into(),
        sha256: "00".repeat(32),
        content: Some("proc list".into()),
        created_at: 1,
    };
    s.commit(Batch::default().change(Change::PutEvidence(ev.clone())))
        .await
        .unwrap();
    assert!(s.has_evidence(&task_id, "Host::web-1").await.unwrap());
    assert_eq!(s.evidence_for_task(&task_id).await.unwrap(), vec![ev]);
    assert!(!s.has_evidence(&task_id, "Host::web-2").await.unwrap());
    assert!(!s
        .has_evidence(&unique("task"), "Host::web-1")
        .await
        .unwrap());
}

pub async fn join_tokens_are_single_use(s: &dyn Store) {
    let h = unique("jt");
    s.commit(Batch::default().change(Change::PutJoinToken(JoinToken {
        token_hash: h.clone(),
        spiffe_id: "spiffe://acme.test/agent/a/1".into(),
        expires_at: 500,
        used_at: None,
    })))
    .await
    .unwrap();
    assert_eq!(s.join_token(&h).await.unwrap().unwrap().used_at, None);
    let consume = |now| {
        Batch::default().change(Change::ConsumeJoinToken {
            token_hash: h.clone(),
            now,
        })
    };
    let spent = Conflict::JoinTokenSpent {
        token_hash: h.clone(),
    };
    assert_eq!(
        conflict(s, consume(600)).await,
        spent,
        "expired token consumed"
    );
    s.commit(consume(200)).await.unwrap();
    assert_eq!(s.join_token(&h).await.unwrap().unwrap().used_at, Some(200));
    assert_eq!(conflict(s, consume(201)).await, spent, "token used twice");
    assert_eq!(spent.to_string(), "join token is unknown, used or expired");
    let nope = unique("nope");
    let unknown = Batch::default().change(Change::ConsumeJoinToken {
        token_hash: nope.clone(),
        now: 1,
    });
    assert_eq!(
        conflict(s, unknown).await,
        Conflict::JoinTokenSpent { token_hash: nope }
    );
}

pub async fn tasks_round_trip_and_end_once(s: &dyn Store) {
    let id = unique("task");
    let agent = unique("spiffe://acme.test/agent/x");
    let mut t = task(&id, &agent, "INC-1");
    t.scope.actions = Some(["edr.read_alerts".to_string()].into());
    s.commit(Batch::default().change(Change::InsertTask(t.clone())))
        .await
        .unwrap();
    assert_eq!(s.task(&id).await.unwrap().unwrap(), t);
    let c = conflict(s, Batch::default().change(Change::InsertTask(t.clone()))).await;
    assert_eq!(
        c,
        Conflict::TaskExists {
            task_id: id.clone()
        }
    );
    assert_eq!(c.to_string(), format!("task {id} exists"));
    let not_live = Conflict::TaskNotLive {
        task_id: id.clone(),
    };
    assert_eq!(not_live.to_string(), format!("task {id} is not active"));
    let end = |status| {
        Batch::default().change(Change::EndTask {
            task_id: id.clone(),
            status,
            reason: "done".into(),
        })
    };
    let guard = |now| {
        Batch::default().change(Change::RequireTaskLive {
            task_id: id.clone(),
            now,
        })
    };
    s.commit(guard(300)).await.unwrap();
    assert_eq!(
        conflict(s, guard(400)).await,
        not_live,
        "an expired task passed the guard"
    );
    s.commit(end(TaskStatus::Completed)).await.unwrap();
    assert_eq!(
        conflict(s, guard(300)).await,
        not_live,
        "a closed task passed the guard"
    );
    let missing = unique("task");
    assert_eq!(
        conflict(
            s,
            Batch::default().change(Change::RequireTaskLive {
                task_id: missing.clone(),
                now: 1
            })
        )
        .await,
        Conflict::TaskNotLive { task_id: missing }
    );
    let got = s.task(&id).await.unwrap().unwrap();
    assert_eq!(got.status, TaskStatus::Completed);
    assert_eq!(got.status_reason.as_deref(), Some("done"));
    assert_eq!(conflict(s, end(TaskStatus::Revoked)).await, not_live);
    // Filters.
    let id2 = unique("task");
    s.commit(Batch::default().change(Change::InsertTask(task(&id2, &agent, "INC-2"))))
        .await
        .unwrap();
    let all = s
        .tasks(TaskFilter {
            agent: Some(agent.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 2);
    let active = s
        .tasks(TaskFilter {
            agent: Some(agent.clone()),
            status: Some(TaskStatus::Active),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        active.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
        vec![id2.as_str()]
    );
    // Children by parent.
    let child_id = unique("task");
    let mut child = task(&child_id, "spiffe://acme.test/agent/forensics/i-2", "INC-2");
    child.parent_task_id = Some(id2.clone());
    s.commit(Batch::default().change(Change::InsertTask(child.clone())))
        .await
        .unwrap();
    let children = s
        .tasks(TaskFilter {
            parent_task_id: Some(id2.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(children, vec![child.clone()]);
    // Ending descendants reaches grandchildren and leaves the root alone.
    let grandchild_id = unique("task");
    let mut grandchild = task(
        &grandchild_id,
        "spiffe://acme.test/agent/forensics/i-3",
        "INC-2",
    );
    grandchild.parent_task_id = Some(child_id.clone());
    s.commit(Batch::default().change(Change::InsertTask(grandchild)))
        .await
        .unwrap();
    s.commit(Batch::default().change(Change::EndDescendants {
        root_id: id2.clone(),
        reason: "parent closed".into(),
    }))
    .await
    .unwrap();
    assert_eq!(
        s.task(&child_id).await.unwrap().unwrap().status,
        TaskStatus::Revoked
    );
    let gc = s.task(&grandchild_id).await.unwrap().unwrap();
    assert_eq!(
        (gc.status, gc.status_reason.as_deref()),
        (TaskStatus::Revoked, Some("parent closed"))
    );
    assert_eq!(
        s.task(&id2).await.unwrap().unwrap().status,
        TaskStatus::Active
    );
    // Revoking an already-ended task is not an error and changes nothing.
    s.commit(Batch::default().change(Change::RevokeTask {
        task_id: child_id.clone(),
        reason: "again".into(),
    }))
    .await
    .unwrap();
    assert_eq!(
        s.task(&child_id)
            .await
            .unwrap()
            .unwrap()
            .status_reason
            .as_deref(),
        Some("parent closed")
    );
    // Ending all of an agent's tasks touches only active ones.
    s.commit(Batch::default().change(Change::EndAgentTasks {
        spiffe_id: agent.clone(),
        reason: "agent revoked".into(),
    }))
    .await
    .unwrap();
    assert_eq!(
        s.task(&id2).await.unwrap().unwrap().status,
        TaskStatus::Revoked
    );
    assert_eq!(
        s.task(&id).await.unwrap().unwrap().status,
        TaskStatus::Completed
    );
}

pub async fn renew_never_passes_max_and_needs_active(s: &dyn Store) {
    let id = unique("task");
    s.commit(Batch::default().change(Change::InsertTask(task(&id, "a", "INC-1"))))
        .await
        .unwrap();
    let renew = |expires_at, now| {
        Batch::default().change(Change::RenewTask {
            task_id: id.clone(),
            expires_at,
            now,
        })
    };
    s.commit(renew(700, 300)).await.unwrap();
    assert_eq!(s.task(&id).await.unwrap().unwrap().expires_at, 700);
    assert_eq!(
        conflict(s, renew(1001, 300)).await,
        Conflict::RenewPastMax {
            task_id: id.clone(),
            max_expires_at: 1000
        },
        "renewed past max"
    );
    assert_eq!(
        conflict(s, renew(900, 800)).await,
        Conflict::TaskNotLive {
            task_id: id.clone()
        },
        "renewed an expired task"
    );
    // Not live wins over past max: it is checked first.
    assert_eq!(
        conflict(s, renew(1001, 800)).await,
        Conflict::TaskNotLive {
            task_id: id.clone()
        }
    );
}

pub async fn failed_batches_change_nothing(s: &dyn Store) {
    let id = unique("task");
    let before = s
        .audit(AuditQuery {
            after: 0,
            limit: 1_000_000,
            ..Default::default()
        })
        .await
        .unwrap()
        .len();
    let bad = Batch::default()
        .change(Change::InsertTask(task(&id, "a", "INC-1")))
        .change(Change::ConsumeJoinToken {
            token_hash: unique("missing"),
            now: 1,
        })
        .event(AuditEvent::new(1, "task.opened", "a").task(&id));
    assert!(s.commit(bad).await.is_err());
    assert_eq!(
        s.task(&id).await.unwrap(),
        None,
        "a failed batch left its task behind"
    );
    let after = s
        .audit(AuditQuery {
            after: 0,
            limit: 1_000_000,
            ..Default::default()
        })
        .await
        .unwrap()
        .len();
    assert_eq!(before, after, "a failed batch left an audit entry behind");
    // And the chain continues cleanly after the failure.
    let seqs = s
        .commit(Batch::audit_only(AuditEvent::new(
            2,
            "test.after_failure",
            "a",
        )))
        .await
        .unwrap();
    let all = s
        .audit(AuditQuery {
            after: seqs[0] - 1,
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all[0].event.kind, "test.after_failure");
}

pub async fn audit_is_chained_in_commit_order_and_filterable(s: &dyn Store) {
    let task_id = unique("task");
    let mut seqs = vec![];
    for i in 0..5 {
        let ev = AuditEvent::new(i, "decision", "agent")
            .task(&task_id)
            .request(format!("r{i}"));
        seqs.extend(s.commit(Batch::audit_only(ev)).await.unwrap());
    }
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1) || seqs.windows(2).all(|w| w[1] > w[0]));
    let mine = s
        .audit(AuditQuery {
            task_id: Some(task_id.clone()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(mine.len(), 5);
    assert_eq!(mine.iter().map(|e| e.seq).collect::<Vec<_>>(), seqs);
    // The whole log verifies from genesis.
    let everything = s
        .audit(AuditQuery {
            after: 0,
            limit: 10_000_000,
            ..Default::default()
        })
        .await
        .unwrap();
    tollgate_audit::verify_run(everything[0].seq, everything[0].prev_hash, &everything).unwrap();
    // Paging with `after`.
    let page = s
        .audit(AuditQuery {
            task_id: Some(task_id),
            after: seqs[2],
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        page.iter().map(|e| e.seq).collect::<Vec<_>>(),
        seqs[3..].to_vec()
    );
}

pub async fn agents_incidents_settings_and_peps(s: &dyn Store) {
    let id = unique("spiffe://acme.test/agent/r");
    let a = Agent {
        spiffe_id: id.clone(),
        owner: "alice".into(),
        created_at: 5,
        revoked: false,
    };
    s.commit(Batch::default().change(Change::UpsertAgent(a.clone())))
        .await
        .unwrap();
    assert_eq!(s.agent(&id).await.unwrap(), Some(a));
    s.commit(Batch::default().change(Change::SetAgentRevoked {
        spiffe_id: id.clone(),
        revoked: true,
    }))
    .await
    .unwrap();
    assert!(s.agent(&id).await.unwrap().unwrap().revoked);
    let missing = Batch::default().change(Change::SetAgentRevoked {
        spiffe_id: unique("nobody"),
        revoked: true,
    });
    assert!(matches!(
        s.commit(missing).await,
        Err(StoreError::NotFound(_))
    ));

    let inc_id = unique("INC");
    let mut inc = Incident {
        id: inc_id.clone(),
        class: "malware".into(),
        severity: Severity::High,
        status: IncidentStatus::Open,
        updated_at: 1,
    };
    s.commit(Batch::default().change(Change::UpsertIncident(inc.clone())))
        .await
        .unwrap();
    inc.status = IncidentStatus::Resolved;
    s.commit(Batch::default().change(Change::UpsertIncident(inc.clone())))
        .await
        .unwrap();
    assert_eq!(s.incident(&inc_id).await.unwrap(), Some(inc.clone()));
    // First report wins: recording again agrees or conflicts, never overwrites.
    s.commit(Batch::default().change(Change::RecordIncident(inc.clone())))
        .await
        .unwrap();
    let mut other = inc.clone();
    other.class = "ddos".into();
    let c = conflict(s, Batch::default().change(Change::RecordIncident(other))).await;
    assert_eq!(
        c,
        Conflict::IncidentDiffers {
            incident_id: inc_id.clone(),
            class: "malware".into(),
            severity: "high".into()
        }
    );
    assert_eq!(
        c.to_string(),
        format!("incident {inc_id} is recorded as class malware severity high")
    );
    assert_eq!(s.incident(&inc_id).await.unwrap(), Some(inc));

    let key = unique("k");
    s.commit(Batch::default().change(Change::PutSetting {
        key: key.clone(),
        value: "1".into(),
    }))
    .await
    .unwrap();
    s.commit(Batch::default().change(Change::PutSetting {
        key: key.clone(),
        value: "0".into(),
    }))
    .await
    .unwrap();
    assert_eq!(s.setting(&key).await.unwrap().as_deref(), Some("0"));
    assert_eq!(s.setting(&unique("none")).await.unwrap(), None);

    let pep = crate::Pep {
        name: unique("pep"),
        key_hash: unique("h"),
        created_at: 3,
    };
    s.commit(Batch::default().change(Change::PutPep(pep.clone())))
        .await
        .unwrap();
    assert_eq!(
        s.pep_by_key_hash(&pep.key_hash).await.unwrap(),
        Some(pep.clone())
    );
    assert!(s.peps().await.unwrap().contains(&pep));
    s.commit(Batch::default().change(Change::RemovePep {
        name: pep.name.clone(),
    }))
    .await
    .unwrap();
    assert_eq!(s.pep_by_key_hash(&pep.key_hash).await.unwrap(), None);
    assert!(matches!(
        s.commit(Batch::default().change(Change::RemovePep { name: pep.name }))
            .await,
        Err(StoreError::NotFound(_))
    ));
}

fn child_of(parent: &Task, agent: &str) -> Task {
    let mut t = task(&unique("task"), agent, &parent.incident_id);
    t.parent_task_id = Some(parent.id.clone());
    t
}

fn record(task: &Task, root: &Task, action: &str, outcome: Outcome, ts: i64) -> ActionRecord {
    ActionRecord {
        root_task_id: root.id.clone().into(),
        task_id: task.id.clone().into(),
        agent: task.agent.clone().into(),
        request_id: unique("req"),
        action: action.into(),
        resource: "Host::web-1".into(),
        tier: Tier::Contain,
        labels: vec!["network-change".into()].into(),
        outcome,
        ts,
    }
}

fn pending_approval(task: &Task, request_hash: &str) -> Approval {
    Approval {
        id: unique("apr"),
        version: 0,
        request_hash: request_hash.into(),
        request_id: unique("req"),
        task_id: task.id.clone(),
        agent: task.agent.clone(),
        agent_owner: "alice".into(),
        incident_id: task.incident_id.clone(),
        action: "iam.disable_account".into(),
        resource: "Account::jdoe".into(),
        request: serde_json::json!({}),
        required: 1,
        deny_threshold: 1,
        policies: vec!["p".into()],
        reasons: vec![],
        status: ApprovalStatus::Pending,
        votes: vec![],
        created_at: 150,
        expires_at: 900,
        escalated: false,
        decided_at: None,
        used_at: None,
        used_by: None,
    }
}

async fn insert_tasks(s: &dyn Store, tasks: &[&Task]) {
    let mut b = Batch::default();
    for t in tasks {
        b = b.change(Change::InsertTask((*t).clone()));
    }
    s.commit(b).await.unwrap();
}

async fn put_setting(s: &dyn Store, key: &str, value: &str) {
    s.commit(Batch::default().change(Change::PutSetting {
        key: key.into(),
        value: value.into(),
    }))
    .await
    .unwrap();
}

fn facts_query(task: &Task) -> FactsQuery {
    FactsQuery {
        task_id: task.id.clone(),
        resource: "Host::web-1".into(),
        presented_approval: None,
        request_hash: unique("hash"),
        agent_counts: vec![],
        scans: vec![],
    }
}

pub async fn lineage_walks_up_to_the_root(s: &dyn Store) {
    let root = task(&unique("task"), "spiffe://acme.test/agent/root/1", "INC-1");
    let child = child_of(&root, "spiffe://acme.test/agent/child/1");
    let grandchild = child_of(&child, "spiffe://acme.test/agent/grandchild/1");
    insert_tasks(s, &[&root, &child, &grandchild]).await;
    let l = s.lineage(&grandchild.id).await.unwrap().unwrap();
    assert_eq!(l.task, grandchild);
    assert_eq!(l.ancestors, vec![child.clone(), root.clone()]);
    assert_eq!(l.missing_parent, None);
    assert_eq!(
        (l.root().id.as_str(), l.depth(), l.dead()),
        (root.id.as_str(), 2, None)
    );
    assert_eq!(
        l.agents(),
        [&grandchild.agent, &child.agent, &root.agent].map(String::clone)
    );
    let top = s.lineage(&root.id).await.unwrap().unwrap();
    assert_eq!((top.root(), top.depth()), (&root, 0));
    // An ended ancestor is read as it is now.
    s.commit(Batch::default().change(Change::EndTask {
        task_id: child.id.clone(),
        status: TaskStatus::Completed,
        reason: "done".into(),
    }))
    .await
    .unwrap();
    let l = s.lineage(&grandchild.id).await.unwrap().unwrap();
    assert_eq!(
        l.dead(),
        Some(format!("parent task {} is completed", child.id))
    );
    // A missing parent stops the walk.
    let gone = unique("task");
    let mut orphan = task(&unique("task"), "spiffe://acme.test/agent/o/1", "INC-1");
    orphan.parent_task_id = Some(gone.clone());
    insert_tasks(s, &[&orphan]).await;
    let l = s.lineage(&orphan.id).await.unwrap().unwrap();
    assert_eq!(
        (l.ancestors.len(), l.missing_parent.as_deref(), l.depth()),
        (0, Some(gone.as_str()), 1)
    );
    assert_eq!(l.dead(), Some(format!("parent task {gone} is missing")));
    assert_eq!(s.lineage(&unique("task")).await.unwrap(), None);
    // 64 ancestors are read; a 65th is refused.
    let mut chain = vec![task(
        &unique("task"),
        "spiffe://acme.test/agent/c/0",
        "INC-1",
    )];
    for i in 1..=65 {
        let next = child_of(&chain[i - 1], &format!("spiffe://acme.test/agent/c/{i}"));
        chain.push(next);
    }
    insert_tasks(s, &chain.iter().collect::<Vec<_>>()).await;
    let l = s.lineage(&chain[64].id).await.unwrap().unwrap();
    assert_eq!((l.depth(), l.root()), (64, &chain[0]));
    match s.lineage(&chain[65].id).await {
        Err(StoreError::Backend(m)) => assert_eq!(m, "delegation chain too deep"),
        other => panic!("a chain of 65 ancestors was read: {other:?}"),
    }
}

pub async fn credential_holder_is_the_lineage_and_the_agent(s: &dyn Store) {
    let agent = Agent {
        spiffe_id: unique("spiffe://acme.test/agent/holder"),
        owner: "alice".into(),
        created_at: 5,
        revoked: false,
    };
    let root = task(&unique("task"), "spiffe://acme.test/agent/root/1", "INC-1");
    let child = child_of(&root, &agent.spiffe_id);
    s.commit(Batch::default().change(Change::UpsertAgent(agent.clone())))
        .await
        .unwrap();
    insert_tasks(s, &[&root, &child]).await;
    let (lineage, holder) = s
        .credential_holder(&child.id, &agent.spiffe_id)
        .await
        .unwrap();
    assert_eq!(lineage, s.lineage(&child.id).await.unwrap());
    assert_eq!(lineage.map(|l| l.ancestors), Some(vec![root.clone()]));
    assert_eq!(holder, Some(agent.clone()));
    // A revoked agent is read as it is now; an unknown task or agent is None.
    s.commit(Batch::default().change(Change::SetAgentRevoked {
        spiffe_id: agent.spiffe_id.clone(),
        revoked: true,
    }))
    .await
    .unwrap();
    let (_, holder) = s
        .credential_holder(&child.id, &agent.spiffe_id)
        .await
        .unwrap();
    assert!(holder.unwrap().revoked);
    let (lineage, holder) = s
        .credential_holder(&unique("task"), &unique("spiffe://acme.test/agent/x"))
        .await
        .unwrap();
    assert_eq!((lineage, holder), (None, None));
    let (lineage, holder) = s
        .credential_holder(&root.id, &unique("spiffe://acme.test/agent/x"))
        .await
        .unwrap();
    assert_eq!(
        (lineage.map(|l| l.task), holder),
        (Some(root.clone()), None)
    );
}

pub async fn descendants_come_parent_first(s: &dyn Store) {
    let root = task(&unique("task"), "spiffe://acme.test/agent/root/1", "INC-1");
    // Creation times that a plain sort would put before their parents.
    let mut a = child_of(&root, "spiffe://acme.test/agent/a/1");
    a.created_at = 300;
    let mut b = child_of(&root, "spiffe://acme.test/agent/b/1");
    b.created_at = 50;
    let mut a1 = child_of(&a, "spiffe://acme.test/agent/a1/1");
    a1.created_at = 10;
    let mut b1 = child_of(&b, "spiffe://acme.test/agent/b1/1");
    b1.created_at = 20;
    b1.status = TaskStatus::Revoked;
    let mut b11 = child_of(&b1, "spiffe://acme.test/agent/b11/1");
    b11.created_at = 5;
    let unrelated = task(&unique("task"), "spiffe://acme.test/agent/u/1", "INC-1");
    insert_tasks(s, &[&b11, &b1, &a1, &a, &b, &root, &unrelated]).await;
    let got = s.descendants(&root.id).await.unwrap();
    let mut ids: Vec<&str> = got.iter().map(|t| t.id.as_str()).collect();
    for (i, t) in got.iter().enumerate() {
        if let Some(p) = &t.parent_task_id {
            if *p != root.id {
                let at = ids.iter().position(|id| id == p).unwrap();
                assert!(at < i, "{} came before its parent {p}", t.id);
            }
        }
    }
    assert!(got.contains(&b1), "ended descendants are included");
    ids.sort();
    let mut want = vec![
        a.id.as_str(),
        b.id.as_str(),
        a1.id.as_str(),
        b1.id.as_str(),
        b11.id.as_str(),
    ];
    want.sort();
    assert_eq!(ids, want);
    assert_eq!(
        s.descendants(&b.id).await.unwrap(),
        vec![b1.clone(), b11.clone()]
    );
    assert!(s.descendants(&a1.id).await.unwrap().is_empty());
    assert!(s.descendants(&unique("task")).await.unwrap().is_empty());
}

pub async fn decision_facts_are_one_snapshot_of_everything(s: &dyn Store) {
    let incident = Incident {
        id: unique("INC"),
        class: "malware".into(),
        severity: Severity::High,
        status: IncidentStatus::Open,
        updated_at: 1,
    };
    let root = task(
        &unique("task"),
        &unique("spiffe://acme.test/agent/root"),
        &incident.id,
    );
    let child = child_of(&root, &unique("spiffe://acme.test/agent/child"));
    let agent = Agent {
        spiffe_id: child.agent.clone(),
        owner: "alice".into(),
        created_at: 5,
        revoked: false,
    };
    let other_root = task(
        &unique("task"),
        &unique("spiffe://acme.test/agent/other"),
        &incident.id,
    );
    let hash = unique("hash");
    let pending = pending_approval(&child, &hash);
    let foreign = pending_approval(&other_root, &unique("hash"));
    let in_tree = [
        record(&root, &root, "edr.isolate_host", Outcome::Allow, 150),
        record(&child, &root, "edr.isolate_host", Outcome::Deny, 160),
        record(&child, &root, "edr.isolate_host", Outcome::Allow, 170),
    ];
    let mut b = Batch::default()
        .change(Change::UpsertIncident(incident.clone()))
        .change(Change::UpsertAgent(agent.clone()))
        .change(Change::InsertTask(root.clone()))
        .change(Change::InsertTask(child.clone()))
        .change(Change::InsertTask(other_root.clone()))
        .change(Change::InsertApproval(pending.clone()))
        .change(Change::InsertApproval(foreign.clone()))
        .change(Change::PutEvidence(crate::Evidence {
            id: unique("ev"),
            task_id: child.id.clone(),
            resource: "Host::web-1".into(),
            kind: "memory-snapshot".into(),
            sha256: "00".repeat(32),
            content: None,
            created_at: 120,
        }))
        // Before the root was created: not the tree's history.
        .change(Change::RecordAction(record(
            &root,
            &root,
            "edr.read_alerts",
            Outcome::Allow,
            99,
        )))
        .change(Change::RecordAction(record(
            &other_root,
            &other_root,
            "edr.isolate_host",
            Outcome::Allow,
            150,
        )));
    for r in &in_tree {
        b = b.change(Change::RecordAction(r.clone()));
    }
    s.commit(b).await.unwrap();
    let q = FactsQuery {
        scans: vec![],
        task_id: child.id.clone(),
        resource: "Host::web-1".into(),
        presented_approval: Some(foreign.id.clone()),
        request_hash: hash.clone(),
        agent_counts: vec![
            AgentCount::default(),
            AgentCount {
                since: 170,
                tier: Some("contain".into()),
                action: None,
            },
            AgentCount {
                since: 171,
                tier: None,
                action: Some("edr.isolate_host".into()),
            },
        ],
    };
    let f = s.decision_facts(&q).await.unwrap().unwrap();
    assert_eq!(f.lineage, s.lineage(&child.id).await.unwrap().unwrap());
    assert_eq!(f.lineage.root(), &root);
    assert_eq!(f.agent, Some(agent));
    assert_eq!(f.incident, Some(incident));
    assert_eq!(
        f.frozen,
        s.setting(crate::FROZEN_KEY).await.unwrap().as_deref() == Some("true")
    );
    assert_eq!(f.quarantine, None);
    assert!(f.evidence_present);
    assert_eq!(*f.history, in_tree.to_vec());
    assert_eq!(f.agent_counts, [1, 1, 0]);
    assert_eq!(f.presented_approval, Some(foreign), "any task's approval");
    assert_eq!(f.pending_approvals, vec![pending]);
    // Another resource has no evidence; the root's agent is not registered.
    let f = s
        .decision_facts(&FactsQuery {
            resource: "Host::web-2".into(),
            ..facts_query(&root)
        })
        .await
        .unwrap()
        .unwrap();
    assert!(!f.evidence_present);
    assert_eq!(f.agent, None);
    assert!(f.pending_approvals.is_empty() && f.presented_approval.is_none());
    assert_eq!(*f.history, in_tree.to_vec(), "the root sees the whole tree");
    assert!(s
        .decision_facts(&facts_query(&task(&unique("task"), "a", "INC-1")))
        .await
        .unwrap()
        .is_none());
}

pub async fn decision_facts_see_every_commit_between_calls(s: &dyn Store) {
    let root = task(
        &unique("task"),
        &unique("spiffe://acme.test/agent/r"),
        "INC-1",
    );
    let child = child_of(&root, &unique("spiffe://acme.test/agent/c"));
    let root2 = task(
        &unique("task"),
        &unique("spiffe://acme.test/agent/r2"),
        "INC-1",
    );
    insert_tasks(s, &[&root, &child, &root2]).await;
    let hash = unique("hash");
    let mut a = pending_approval(&child, &hash);
    let q = FactsQuery {
        presented_approval: Some(a.id.clone()),
        request_hash: hash.clone(),
        ..facts_query(&child)
    };
    let facts = |q: FactsQuery| async move { s.decision_facts(&q).await.unwrap().unwrap() };
    let f = facts(q.clone()).await;
    assert!(f.history.is_empty() && f.presented_approval.is_none());
    // History appended, per tree, with the two trees read in turns.
    let mut want1 = vec![];
    let mut want2 = vec![];
    for i in 0..4 {
        let r1 = record(&child, &root, "edr.isolate_host", Outcome::Allow, 200 + i);
        let r2 = record(&root2, &root2, "edr.read_alerts", Outcome::Deny, 200 + i);
        s.commit(
            Batch::default()
                .change(Change::RecordAction(r1.clone()))
                .change(Change::RecordAction(r2.clone())),
        )
        .await
        .unwrap();
        want1.push(r1);
        want2.push(r2);
        assert_eq!(*facts(q.clone()).await.history, want1);
        assert_eq!(*facts(facts_query(&root2)).await.history, want2);
        assert_eq!(*facts(facts_query(&root)).await.history, want1);
    }
    // A record from a clock that went back sorts into place.
    let early = record(&root, &root, "edr.isolate_host", Outcome::Allow, 150);
    s.commit(Batch::default().change(Change::RecordAction(early.clone())))
        .await
        .unwrap();
    want1.insert(0, early);
    assert_eq!(*facts(q.clone()).await.history, want1);
    assert_eq!(
        *facts(q.clone()).await.history,
        s.actions_in_tree(&root.id, root.created_at).await.unwrap()
    );
    // An approval opened, then spent.
    s.commit(Batch::default().change(Change::InsertApproval(a.clone())))
        .await
        .unwrap();
    let f = facts(q.clone()).await;
    assert_eq!(f.presented_approval.as_ref(), Some(&a));
    assert_eq!(f.pending_approvals, vec![a.clone()]);
    let mut used = a.clone();
    used.status = ApprovalStatus::Used;
    used.version = 1;
    used.used_by = Some("req".into());
    s.commit(Batch::default().change(Change::UpdateApproval {
        approval: used.clone(),
        expected_version: 0,
    }))
    .await
    .unwrap();
    let f = facts(q.clone()).await;
    assert_eq!(f.presented_approval, Some(used));
    assert!(f.pending_approvals.is_empty());
    a.id = unique("apr");
    // Quarantine set, then released.
    let key = crate::quarantine_key(&child.agent);
    put_setting(s, &key, "retry storm").await;
    assert_eq!(
        facts(q.clone()).await.quarantine.as_deref(),
        Some("retry storm")
    );
    assert_eq!(
        facts(facts_query(&root)).await.quarantine,
        None,
        "per agent"
    );
    put_setting(s, &key, "").await;
    assert_eq!(facts(q.clone()).await.quarantine, None);
    // Frozen, then thawed (a global setting: left as it was found).
    let was = s.setting(crate::FROZEN_KEY).await.unwrap();
    put_setting(s, crate::FROZEN_KEY, "true").await;
    assert!(facts(q.clone()).await.frozen);
    put_setting(s, crate::FROZEN_KEY, "false").await;
    assert!(!facts(q.clone()).await.frozen);
    if let Some(v) = was {
        put_setting(s, crate::FROZEN_KEY, &v).await;
    }
    // The parent revoked, then the task itself.
    s.commit(Batch::default().change(Change::RevokeTask {
        task_id: root.id.clone(),
        reason: "r".into(),
    }))
    .await
    .unwrap();
    let f = facts(q.clone()).await;
    assert_eq!(
        f.lineage.dead(),
        Some(format!("parent task {} is revoked", root.id))
    );
    assert_eq!(f.lineage.task.status, TaskStatus::Active);
    s.commit(Batch::default().change(Change::RevokeTask {
        task_id: child.id.clone(),
        reason: "r".into(),
    }))
    .await
    .unwrap();
    assert_eq!(
        facts(q.clone()).await.lineage.task.status,
        TaskStatus::Revoked
    );
}

/// A small deterministic generator, so the interleavings are the same on
/// every run and every backend.
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Whether `sub` appears in `all` in the same order (request ids are unique).
fn is_subsequence(sub: &[ActionRecord], all: &[ActionRecord]) -> bool {
    let mut rest = all.iter();
    sub.iter().all(|r| rest.any(|a| a == r))
}

/// Temporal rules read past actions beyond the task's tree: every action of
/// an agent, of an incident (whichever agent took it), or on a resource,
/// in a window, oldest first, each record as it was committed.
pub async fn history_scans_read_an_agent_an_incident_or_a_resource(s: &dyn Store) {
    let incident = unique("INC");
    let other_incident = unique("INC");
    let agent = format!("spiffe://acme.test/agent/{}/1", unique("a"));
    let first = task(&unique("task"), &agent, &incident);
    let second = task(&unique("task"), &agent, &other_incident);
    let helper = task(
        &unique("task"),
        "spiffe://acme.test/agent/helper/9",
        &incident,
    );
    insert_tasks(s, &[&first, &second, &helper]).await;
    let resource = format!("Host::{}", unique("h"));
    let on = |t: &Task, action: &str, ts: i64, res: &str| {
        let mut r = record(t, t, action, Outcome::Allow, ts);
        r.resource = res.to_string().into();
        r
    };
    let records = [
        on(&first, "edr.isolate_host", 110, &resource),
        on(&second, "vault.read_secret", 120, "Secret::db"),
        on(&helper, "forensics.image_host", 130, &resource),
        on(&first, "edr.release_host", 140, "Host::other"),
    ];
    let mut b = Batch::default();
    for r in &records {
        b = b.change(Change::RecordAction(r.clone()));
    }
    s.commit(b).await.unwrap();
    let mut q = facts_query(&first);
    let scan = |scope, key: &str, since, actions: Option<&[&str]>| HistoryScan {
        scope,
        key: key.to_string(),
        since,
        actions: actions.map(|a| a.iter().map(|x| x.to_string()).collect()),
        outcomes: None,
    };
    q.scans = vec![
        scan(ScanScope::Agent, &agent, 0, None),
        scan(ScanScope::Incident, &incident, 0, None),
        scan(ScanScope::Resource, &resource, 0, None),
        scan(ScanScope::Agent, &agent, 120, None),
        scan(ScanScope::Incident, &unique("INC"), 0, None),
        // Only the actions the rules look for.
        scan(
            ScanScope::Agent,
            &agent,
            0,
            Some(&["edr.isolate_host", "edr.release_host", "siem.query"]),
        ),
        scan(
            ScanScope::Incident,
            &incident,
            0,
            Some(&["forensics.image_host"]),
        ),
        scan(ScanScope::Resource, &resource, 0, Some(&[])),
        scan(
            ScanScope::Agent,
            &agent,
            120,
            Some(&["edr.isolate_host", "edr.release_host"]),
        ),
        HistoryScan {
            outcomes: Some(vec!["deny".into()]),
            ..scan(ScanScope::Agent, &agent, 0, Some(&["edr.isolate_host"]))
        },
        HistoryScan {
            outcomes: Some(vec!["allow".into(), "deny".into()]),
            ..scan(ScanScope::Agent, &agent, 0, Some(&["edr.isolate_host"]))
        },
    ];
    let f = s.decision_facts(&q).await.unwrap().unwrap();
    let ids = |v: &[ActionRecord]| v.iter().map(|r| r.request_id.clone()).collect::<Vec<_>>();
    let want = |idx: &[usize]| {
        idx.iter()
            .map(|i| records[*i].request_id.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(f.scanned.len(), 11);
    assert_eq!(
        ids(&f.scanned[0]),
        want(&[0, 1, 3]),
        "by agent, across tasks"
    );
    assert_eq!(
        ids(&f.scanned[1]),
        want(&[0, 2, 3]),
        "by incident, across agents"
    );
    assert_eq!(ids(&f.scanned[2]), want(&[0, 2]), "by resource");
    assert_eq!(ids(&f.scanned[3]), want(&[1, 3]), "since is inclusive");
    assert!(f.scanned[4].is_empty());
    assert_eq!(
        f.scanned[0][0], records[0],
        "records come back as committed"
    );
    assert_eq!(ids(&f.scanned[5]), want(&[0, 3]), "by agent, named actions");
    assert_eq!(ids(&f.scanned[6]), want(&[2]), "by incident, named actions");
    assert!(f.scanned[7].is_empty(), "no action named: nothing read");
    assert_eq!(ids(&f.scanned[8]), want(&[3]), "named actions since");
    assert!(f.scanned[9].is_empty(), "only denials: none");
    assert_eq!(ids(&f.scanned[10]), want(&[0]), "named outcomes");
}

pub async fn decision_facts_history_equals_the_full_read(s: &dyn Store) {
    history_equals_the_full_read_on(s, s).await;
}

/// Commits and decision reads spread over two handles of one database (two
/// replicas, each with its own history cache): every read's history is
/// still exactly what a full read in its snapshot gives.
pub async fn decision_facts_history_is_exact_across_replicas(a: &dyn Store, b: &dyn Store) {
    history_equals_the_full_read_on(a, b).await;
}

/// Random commits and decision reads, each on `a` or `b` at random.
async fn history_equals_the_full_read_on(a: &dyn Store, b: &dyn Store) {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let trees: Vec<(Task, Task)> = (0..3)
        .map(|i| {
            let root = task(
                &unique("task"),
                &format!("spiffe://acme.test/agent/r/{i}"),
                "INC-1",
            );
            let child = child_of(&root, &format!("spiffe://acme.test/agent/c/{i}"));
            (root, child)
        })
        .collect();
    for (root, child) in &trees {
        insert_tasks(a, &[root, child]).await;
    }
    let tiers = [Tier::Read, Tier::Contain, Tier::Change, Tier::Destructive];
    let outcomes = [Outcome::Allow, Outcome::Deny, Outcome::ApprovalRequired];
    let random_record = |rng: &mut XorShift| {
        let (root, child) = &trees[rng.below(3) as usize];
        let by = if rng.below(2) == 0 { root } else { child };
        // Times around the roots' creation (100), going back and forth,
        // often equal: some fall before it and are not the tree's.
        let ts = 90 + rng.below(60) as i64;
        let mut r = record(
            by,
            root,
            "edr.isolate_host",
            outcomes[rng.below(3) as usize],
            ts,
        );
        r.tier = tiers[rng.below(4) as usize];
        r
    };
    let full = |root: &Task| {
        let id = root.id.clone();
        async move { a.actions_in_tree(&id, 100).await.unwrap() }
    };
    let pick = |rng: &mut XorShift| {
        let (root, child) = &trees[rng.below(3) as usize];
        let t = if rng.below(2) == 0 { root } else { child };
        (root.clone(), t.clone())
    };
    for _ in 0..250 {
        match rng.below(10) {
            0..=4 => {
                let s = if rng.below(2) == 0 { a } else { b };
                let mut batch = Batch::default();
                for _ in 0..=rng.below(3) {
                    batch = batch.change(Change::RecordAction(random_record(&mut rng)));
                }
                s.commit(batch).await.unwrap();
            }
            5..=8 => {
                let s = if rng.below(2) == 0 { a } else { b };
                let (root, t) = pick(&mut rng);
                let f = s.decision_facts(&facts_query(&t)).await.unwrap().unwrap();
                assert_eq!(*f.history, full(&root).await);
            }
            _ => {
                // Reads racing commits: each sees one snapshot (a
                // subsequence of what is there after), with everything
                // committed before it began.
                let (root, t) = pick(&mut rng);
                let before = full(&root).await;
                type Read<'a> = std::pin::Pin<
                    Box<dyn std::future::Future<Output = Option<Vec<ActionRecord>>> + Send + 'a>,
                >;
                let mut futures: Vec<Read<'_>> = Vec::new();
                for i in 0..8 {
                    let s = if rng.below(2) == 0 { a } else { b };
                    if i % 2 == 0 {
                        let batch =
                            Batch::default().change(Change::RecordAction(random_record(&mut rng)));
                        futures.push(Box::pin(async move {
                            s.commit(batch).await.unwrap();
                            None
                        }));
                    } else {
                        let q = facts_query(&t);
                        futures.push(Box::pin(async move {
                            Some(
                                s.decision_facts(&q)
                                    .await
                                    .unwrap()
                                    .unwrap()
                                    .history
                                    .to_vec(),
                            )
                        }));
                    }
                }
                let seen = futures_join(futures).await;
                let after = full(&root).await;
                for h in seen.into_iter().flatten() {
                    assert!(is_subsequence(&h, &after), "a read mixed snapshots");
                    assert!(is_subsequence(&before, &h), "a read missed a commit");
                }
                for s in [a, b] {
                    let f = s.decision_facts(&facts_query(&t)).await.unwrap().unwrap();
                    assert_eq!(*f.history, after);
                }
            }
        }
    }
    for (root, child) in &trees {
        for t in [root, child] {
            for s in [a, b] {
                let f = s.decision_facts(&facts_query(t)).await.unwrap().unwrap();
                assert_eq!(*f.history, full(root).await);
            }
        }
    }
}

/// Run `a` and `b` concurrently, `a` polled first on even rounds and `b`
/// on odd ones, so neither side always gets the head start.
async fn race<A, B>(
    round: usize,
    a: impl std::future::Future<Output = A>,
    b: impl std::future::Future<Output = B>,
) -> (A, B) {
    if round.is_multiple_of(2) {
        tokio::join!(a, b)
    } else {
        let (rb, ra) = tokio::join!(b, a);
        (ra, rb)
    }
}

/// How many times each race is run, with fresh ids each time.
const RACE_ROUNDS: usize = 20;

/// Races between two processes over one database, each side committing
/// through its own store handle (`a` and `b`; the same handle twice for a
/// backend that has one writer per database). Every race has exactly one
/// winner and leaves a consistent state. The audit race checks that its
/// entries got contiguous sequence numbers, so nothing else may commit to
/// the store while this runs.
pub async fn run_races(a: &dyn Store, b: &dyn Store) {
    delegation_racing_revocation_leaves_no_live_child(a, b).await;
    one_approval_is_spent_once_across_replicas(a, b).await;
    quorum_votes_on_two_replicas_both_count(a, b).await;
    two_replicas_append_to_one_chain(a, b).await;
    two_replicas_claim_each_message_once(a, b).await;
    decision_facts_history_is_exact_across_replicas(a, b).await;
}

/// Both replicas try to claim every due message at once (as each one's
/// delivery worker does): each message is claimed by exactly one.
pub async fn two_replicas_claim_each_message_once(a: &dyn Store, b: &dyn Store) {
    let ids: Vec<String> = (0..20).map(|_| unique("race-msg")).collect();
    let mut batch = Batch::default();
    for id in &ids {
        batch = batch.change(Change::Enqueue(message(id, 50)));
    }
    a.commit(batch).await.unwrap();
    let (won_a, won_b) = race(
        0,
        async {
            let mut won = 0;
            for id in &ids {
                if a.commit(claim(id, "replica-a", 10_000, 100)).await.is_ok() {
                    won += 1;
                }
            }
            won
        },
        async {
            let mut won = 0;
            for id in ids.iter().rev() {
                if b.commit(claim(id, "replica-b", 10_000, 100)).await.is_ok() {
                    won += 1;
                }
            }
            won
        },
    )
    .await;
    assert_eq!(
        won_a + won_b,
        ids.len(),
        "every message claimed exactly once"
    );
    for id in &ids {
        a.commit(Batch::default().change(Change::Dequeue { id: id.clone() }))
            .await
            .unwrap();
    }
}

/// A delegates from a parent (`RequireTaskLive` + `InsertTask`) while B
/// revokes it and sweeps its descendants: either the delegation loses
/// (`TaskNotLive`) and the child was never created, or it won and the
/// sweep revoked the child. Never an active child of a revoked parent.
pub async fn delegation_racing_revocation_leaves_no_live_child(a: &dyn Store, b: &dyn Store) {
    let (mut delegated, mut refused) = (0, 0);
    for round in 0..RACE_ROUNDS {
        let parent = task(&unique("task"), "spiffe://acme.test/agent/p/1", "INC-1");
        insert_tasks(a, &[&parent]).await;
        let child = child_of(&parent, "spiffe://acme.test/agent/c/1");
        let delegate = Batch::default()
            .change(Change::RequireTaskLive {
                task_id: parent.id.clone(),
                now: 150,
            })
            .change(Change::InsertTask(child.clone()))
            .event(AuditEvent::new(150, "task.delegated", &child.agent).task(&child.id));
        let revoke = Batch::default()
            .change(Change::EndTask {
                task_id: parent.id.clone(),
                status: TaskStatus::Revoked,
                reason: "compromised".into(),
            })
            .change(Change::EndDescendants {
                root_id: parent.id.clone(),
                reason: "parent revoked".into(),
            })
            .event(AuditEvent::new(150, "task.revoked", "admin").task(&parent.id));
        let (da, rb) = race(round, a.commit(delegate), b.commit(revoke)).await;
        rb.unwrap();
        let child_won = match da {
            Ok(_) => {
                delegated += 1;
                true
            }
            Err(StoreError::Conflict(c)) => {
                assert_eq!(
                    c,
                    Conflict::TaskNotLive {
                        task_id: parent.id.clone()
                    }
                );
                refused += 1;
                false
            }
            Err(e) => panic!("delegation failed with {e:?}"),
        };
        for s in [a, b] {
            assert_eq!(
                s.task(&parent.id).await.unwrap().unwrap().status,
                TaskStatus::Revoked
            );
            let stored = s.task(&child.id).await.unwrap();
            if child_won {
                assert_eq!(
                    stored.map(|t| t.status),
                    Some(TaskStatus::Revoked),
                    "a child delegated before the revocation escaped the sweep"
                );
            } else {
                assert_eq!(stored, None, "a refused delegation left its child");
            }
            let live = s
                .tasks(TaskFilter {
                    parent_task_id: Some(parent.id.clone()),
                    status: Some(TaskStatus::Active),
                    limit: 10,
                    ..Default::default()
                })
                .await
                .unwrap();
            assert!(live.is_empty(), "an active child of a revoked parent");
            // The audit entry exists exactly when the child does.
            let logged = s
                .audit(AuditQuery {
                    task_id: Some(child.id.clone()),
                    limit: 10,
                    ..Default::default()
                })
                .await
                .unwrap();
            assert_eq!(logged.len(), usize::from(child_won));
        }
    }
    eprintln!("delegation vs revocation: {delegated} delegated first, {refused} refused");
}

/// An approval as read through `s` at version 1, spent on `req`: the
/// commit a replica would send.
async fn spent(s: &dyn Store, id: &str, hash: &str, task_id: &str, req: &str) -> Batch {
    let mut read = s.approval(id).await.unwrap().unwrap();
    assert_eq!(read.version, 1);
    read.consume(hash, task_id, req, 170).unwrap();
    Batch::default().change(Change::UpdateApproval {
        approval: read,
        expected_version: 1,
    })
}

/// Two replicas spend one approval, both having read the same version:
/// exactly one commit lands, the other learns `ApprovalVersion`, and the
/// stored approval is used once, by the winner's request.
pub async fn one_approval_is_spent_once_across_replicas(a: &dyn Store, b: &dyn Store) {
    use tollgate_core::Vote;
    for round in 0..RACE_ROUNDS {
        let t = task(&unique("task"), "spiffe://acme.test/agent/s/1", "INC-1");
        let hash = unique("hash");
        let mut ap = pending_approval(&t, &hash);
        a.commit(Batch::default().change(Change::InsertApproval(ap.clone())))
            .await
            .unwrap();
        ap.cast(
            Vote {
                approver: "bob".into(),
                role: "secops".into(),
                approve: true,
                reason: "ok".into(),
                ts: 160,
            },
            160,
        )
        .unwrap();
        a.commit(Batch::default().change(Change::UpdateApproval {
            approval: ap.clone(),
            expected_version: 0,
        }))
        .await
        .unwrap();
        let (req_a, req_b) = (unique("req"), unique("req"));
        // Both replicas have read version 1 before either commits.
        let use_a = spent(a, &ap.id, &hash, &t.id, &req_a).await;
        let use_b = spent(b, &ap.id, &hash, &t.id, &req_b).await;
        let (ra, rb) = race(round, a.commit(use_a), b.commit(use_b)).await;
        let winner = match (ra, rb) {
            (Ok(_), Err(StoreError::Conflict(c))) => (req_a, c),
            (Err(StoreError::Conflict(c)), Ok(_)) => (req_b, c),
            other => panic!("expected exactly one spend to win, got {other:?}"),
        };
        assert_eq!(
            winner.1,
            Conflict::ApprovalVersion {
                approval_id: ap.id.clone(),
                expected: 1
            }
        );
        let stored_a = a.approval(&ap.id).await.unwrap().unwrap();
        let stored_b = b.approval(&ap.id).await.unwrap().unwrap();
        assert_eq!(stored_a, stored_b);
        assert_eq!(
            (stored_a.status, stored_a.version, stored_a.used_at),
            (ApprovalStatus::Used, 2, Some(170))
        );
        assert_eq!(stored_a.used_by, Some(winner.0), "used by the loser");
    }
}

/// Vote on an approval as the server does: read, cast, update at the
/// version read, and on `ApprovalVersion` read again and retry. Returns how
/// many times it retried.
async fn vote(s: &dyn Store, id: &str, approver: &str) -> usize {
    use tollgate_core::Vote;
    for attempt in 0..10 {
        let mut read = s.approval(id).await.unwrap().unwrap();
        let expected = read.version;
        read.cast(
            Vote {
                approver: approver.into(),
                role: "secops".into(),
                approve: true,
                reason: "ok".into(),
                ts: 160,
            },
            160,
        )
        .unwrap();
        match s
            .commit(Batch::default().change(Change::UpdateApproval {
                approval: read,
                expected_version: expected,
            }))
            .await
        {
            Ok(_) => return attempt,
            Err(StoreError::Conflict(Conflict::ApprovalVersion {
                approval_id,
                expected: e,
            })) => assert_eq!((approval_id.as_str(), e), (id, expected)),
            Err(e) => panic!("vote by {approver} failed with {e:?}"),
        }
    }
    panic!("vote by {approver} kept losing");
}

/// An approval needs two votes; two approvers vote at once, one through
/// each replica, each doing what the server does: read, cast, update at the
/// version read, and on `ApprovalVersion` read again and retry. Both votes
/// count, the approval is approved, and its version moved by exactly two.
pub async fn quorum_votes_on_two_replicas_both_count(a: &dyn Store, b: &dyn Store) {
    let mut retries = 0;
    for round in 0..RACE_ROUNDS {
        let t = task(&unique("task"), "spiffe://acme.test/agent/q/1", "INC-1");
        let mut ap = pending_approval(&t, &unique("hash"));
        ap.required = 2;
        ap.deny_threshold = 2;
        a.commit(Batch::default().change(Change::InsertApproval(ap.clone())))
            .await
            .unwrap();
        let (ra, rb) = race(round, vote(a, &ap.id, "alice"), vote(b, &ap.id, "carol")).await;
        retries += ra + rb;
        let stored = b.approval(&ap.id).await.unwrap().unwrap();
        assert_eq!(a.approval(&ap.id).await.unwrap().unwrap(), stored);
        let mut voters: Vec<&str> = stored.votes.iter().map(|v| v.approver.as_str()).collect();
        voters.sort();
        assert_eq!(voters, ["alice", "carol"]);
        assert_eq!(
            (stored.status, stored.version, stored.decided_at),
            (ApprovalStatus::Approved, 2, Some(160))
        );
    }
    eprintln!("quorum votes: {retries} retries over {RACE_ROUNDS} rounds");
}

/// [`PER_SIDE`] audit-only batches committed at once through `s`.
async fn burst(s: &dyn Store, side: &str, tag: &str) -> Vec<Result<Vec<u64>, StoreError>> {
    let futures = (0..PER_SIDE)
        .map(|i| {
            s.commit(Batch::audit_only(
                AuditEvent::new(i as i64, "race", side).task(tag),
            ))
        })
        .collect();
    futures_join(futures).await
}

const PER_SIDE: u64 = 30;

/// Both replicas append audit-only batches at once (2×30): every entry
/// lands, the new ones numbered contiguously after the old head, in one
/// chain that verifies from genesis, seen the same through either handle.
pub async fn two_replicas_append_to_one_chain(a: &dyn Store, b: &dyn Store) {
    let tag = unique("append");
    let before = a.audit_head().await.unwrap().size;
    let (ra, rb) = race(0, burst(a, "a", &tag), burst(b, "b", &tag)).await;
    let mut seqs: Vec<u64> = ra.into_iter().chain(rb).flat_map(|r| r.unwrap()).collect();
    seqs.sort();
    assert_eq!(
        seqs,
        (before + 1..=before + 2 * PER_SIDE).collect::<Vec<u64>>(),
        "a seq was reused or skipped"
    );
    let head = a.audit_head().await.unwrap();
    assert_eq!(head, b.audit_head().await.unwrap());
    assert_eq!(head.size, before + 2 * PER_SIDE);
    for s in [a, b] {
        let mine = s
            .audit(AuditQuery {
                task_id: Some(tag.clone()),
                limit: 1000,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(mine.len() as u64, 2 * PER_SIDE);
        let all = s
            .audit(AuditQuery {
                limit: 10_000_000,
                ..Default::default()
            })
            .await
            .unwrap();
        let (next, last) = tollgate_audit::verify_run(1, tollgate_audit::GENESIS, &all).unwrap();
        assert_eq!((next - 1, last), (head.size, head.last_hash));
        let leaves = s.audit_leaf_hashes(head.size).await.unwrap();
        assert_eq!(tollgate_audit::merkle::root(&leaves), head.root_hash);
    }
}
