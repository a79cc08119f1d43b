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

/// A shadow disagreement: what was enforced, what the shadow pack said.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShadowLabels {
    pub enforced: String,
    pub shadow: String,
}

pub struct Metrics {
    registry: Registry,
    pub decisions: Family<DecisionLabels, Counter>,
    pub shadow_diffs: Family<ShadowLabels, Counter>,
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
        let shadow_diffs = Family::<ShadowLabels, Counter>::default();
        registry.register(
            "shadow_disagreements",
            "Decisions the shadow pack would have made otherwise, by enforced and shadow outcome",
            shadow_diffs.clone(),
        );
        Self {
            registry,
            decisions,
            shadow_diffs,
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

    pub fn shadow_diff(&self, enforced: &str, shadow: &str) {
        self.shadow_diffs
            .get_or_create(&ShadowLabels {
                enforced: enforced.into(),
                shadow: shadow.into(),
            })
            .inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
