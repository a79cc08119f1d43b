//! Prometheus metrics: decisions by outcome and decision latency.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub kind: String,
    pub outcome: String,
}

/// Resident memory of this process in bytes, from `/proc/self/statm`
/// (Linux; `None` elsewhere).
pub fn resident_memory_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

pub struct Metrics {
    registry: Registry,
    pub decisions: Family<DecisionLabels, Counter>,
    pub decision_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("tollgate");
        let decisions = Family::<DecisionLabels, Counter>::default();
        // 50 µs … ~1.6 s, doubling.
        let decision_seconds = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.00005, 2.0, 16),
        );
        registry.register(
            "decisions",
            "Decisions returned, by kind and outcome",
            decisions.clone(),
        );
        registry.register(
            "decision_seconds",
            "Time to decide and audit, seconds",
            decision_seconds.clone(),
        );
        Self {
            registry,
            decisions,
            decision_seconds,
        }
    }
}

impl Metrics {
    pub fn record(&self, kind: &str, outcome: &str, seconds: f64) {
        self.decisions
            .get_or_create(&DecisionLabels {
                kind: kind.into(),
                outcome: outcome.into(),
            })
            .inc();
        self.decision_seconds.observe(seconds);
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
