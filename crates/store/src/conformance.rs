//! The behaviour every [`Store`] backend must show. Backends call
//! [`run_all`] from their own tests. Checks use fresh ids, so they also pass
//! against a database that already holds data (a shared PostgreSQL).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::{AuditQuery, Batch, Change, JoinToken, Store, StoreError, TaskFilter};
use std::sync::atomic::{AtomicU64, Ordering};
use tollgate_audit::AuditEvent;
use tollgate_core::{Agent, Incident, IncidentStatus, Scope, Severity, Task, TaskStatus};

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
    action_history_is_per_tree_and_windowed(store).await;
}

pub async fn action_history_is_per_tree_and_windowed(s: &dyn Store) {
    let root = unique("root");
    let rec = |task: &str, action: &str, ts| crate::ActionRecord {
        root_task_id: root.clone(),
        task_id: task.into(),
        agent: format!("spiffe://acme.test/agent/{task}/{root}"),
        request_id: unique("req"),
        action: action.into(),
        resource: "Host::web-1".into(),
        tier: "read".into(),
        labels: vec!["reads-secret".into()],
        outcome: "allow".into(),
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
    denied.outcome = "deny".into();
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

impl CloneWithRequest for crate::ActionRecord {
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
    assert!(matches!(
        s.commit(result("failed")).await,
        Err(StoreError::Conflict(_))
    ));
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
    let head = s.audit_head().await.unwrap();
    assert_eq!(head.size, before + 180);
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
    use tollgate_core::{Approval, ApprovalStatus, Vote};
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
    assert!(matches!(
        s.commit(Batch::default().change(Change::InsertApproval(twin)))
            .await,
        Err(StoreError::Conflict(_))
    ));
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
    assert!(matches!(
        s.commit(update(&use2, 1)).await,
        Err(StoreError::Conflict(_))
    ));
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
    assert!(
        matches!(s.commit(consume(600)).await, Err(StoreError::Conflict(_))),
        "expired token consumed"
    );
    s.commit(consume(200)).await.unwrap();
    assert_eq!(s.join_token(&h).await.unwrap().unwrap().used_at, Some(200));
    assert!(
        matches!(s.commit(consume(201)).await, Err(StoreError::Conflict(_))),
        "token used twice"
    );
    let unknown = Batch::default().change(Change::ConsumeJoinToken {
        token_hash: unique("nope"),
        now: 1,
    });
    assert!(matches!(
        s.commit(unknown).await,
        Err(StoreError::Conflict(_))
    ));
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
    assert!(matches!(
        s.commit(Batch::default().change(Change::InsertTask(t.clone())))
            .await,
        Err(StoreError::Conflict(_))
    ));
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
    assert!(
        matches!(s.commit(guard(400)).await, Err(StoreError::Conflict(_))),
        "an expired task passed the guard"
    );
    s.commit(end(TaskStatus::Completed)).await.unwrap();
    assert!(
        matches!(s.commit(guard(300)).await, Err(StoreError::Conflict(_))),
        "a closed task passed the guard"
    );
    let got = s.task(&id).await.unwrap().unwrap();
    assert_eq!(got.status, TaskStatus::Completed);
    assert_eq!(got.status_reason.as_deref(), Some("done"));
    assert!(matches!(
        s.commit(end(TaskStatus::Revoked)).await,
        Err(StoreError::Conflict(_))
    ));
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
    assert!(
        matches!(
            s.commit(renew(1001, 300)).await,
            Err(StoreError::Conflict(_))
        ),
        "renewed past max"
    );
    assert!(
        matches!(
            s.commit(renew(900, 800)).await,
            Err(StoreError::Conflict(_))
        ),
        "renewed an expired task"
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
    assert!(matches!(
        s.commit(Batch::default().change(Change::RecordIncident(other)))
            .await,
        Err(StoreError::Conflict(_))
    ));
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
