//! `cargo bench -p tollgate-policy`: in-process decisions (history summary,
//! request building, sliced evaluation, annotations, playbook) against the
//! example pack grown to 1,000 and 10,000 policies, beside stock Cedar's
//! `is_authorized` over the same full set. `tollgate bench policy` prints
//! the same comparison as percentiles.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use std::path::PathBuf;
use tollgate_policy::synthetic::{with_agent_policies, Workload};

fn decisions(c: &mut Criterion) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/incident-response");
    let mut group = c.benchmark_group("decision");
    for size in [21, 1_000, 10_000] {
        let (pack, generated) = with_agent_policies(&dir, "acme.test", size).unwrap();
        let work = Workload::new("acme.test", generated).unwrap();
        let mut k = 0;
        group.bench_with_input(BenchmarkId::new("tollgate", size), &size, |b, _| {
            b.iter(|| {
                k += 1;
                let history = tollgate_core::HistorySummary::from_records(
                    &work.past,
                    pack.catalog(),
                    work.now,
                );
                let rules = work.rules(k, pack.rules());
                pack.decide_action(&work.facts(k, &history, &rules))
                    .unwrap()
            })
        });
        let history =
            tollgate_core::HistorySummary::from_records(&work.past, pack.catalog(), work.now);
        let built: Vec<_> = (0..64)
            .map(|k| {
                let rules = work.rules(k, pack.rules());
                let f = work.facts(k, &history, &rules);
                pack.action_request(&f, pack.catalog().operation(f.action).unwrap())
                    .unwrap()
            })
            .collect();
        let authorizer = cedar_policy::Authorizer::new();
        let mut k = 0;
        group.bench_with_input(BenchmarkId::new("stock-cedar", size), &size, |b, _| {
            b.iter(|| {
                k += 1;
                let (req, ents) = &built[k % built.len()];
                authorizer.is_authorized(req, pack.policy_set(), ents)
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(3));
    targets = decisions
}
criterion_main!(benches);
