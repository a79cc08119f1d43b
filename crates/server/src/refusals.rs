//! Refused credentials and join tokens, recorded at a bounded cost.
//!
//! Every refusal is evidence (someone probed with a forged or stale token),
//! but writing each one as its own fsync'd audit entry lets anyone without
//! a credential spend the gateway's write capacity, and crowd out the
//! decisions it exists to record. So refusals are aggregated per source
//! (peer address), per kind of refusal, per second:
//!
//! - the first refusal of a source in a second is committed at once, as
//!   before, with its reason;
//! - the rest of that second are counted, with up to [`MAX_REASONS`]
//!   distinct reasons, and committed as one entry (`detail.aggregated:
//!   true`, `detail.count`) when the second is over: by the once-a-second
//!   loop, or by the source's next refusal, whichever comes first.
//!
//! A source therefore costs at most two entries a second per kind, and at
//! most [`MAX_SOURCES`] sources are tracked per second (past that, all
//! further sources share one `*` window). The key holds nothing an
//! attacker can vary freely (not the reason, which can quote a `kid`), so
//! varying the forgery does not escape aggregation.
//!
//! What is lost if the process dies: the counts of the current second for
//! sources already recorded once in it. Nothing here decides an outcome:
//! the refusal itself is answered the same either way.

use serde_json::json;
use std::collections::HashMap;
use std::sync::Mutex;
use tollgate_audit::AuditEvent;

/// Distinct reasons kept in one aggregated entry.
pub const MAX_REASONS: usize = 8;
/// Sources tracked at once before they share one window.
pub const MAX_SOURCES: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    source: String,
    /// Audit event kind plus the credential expected (`auth.refused/admin`).
    kind: String,
}

struct Window {
    second: i64,
    /// Refusals after the first one of this second.
    suppressed: u64,
    reasons: Vec<(String, u64)>,
    /// The first refusal's event, as the template of the aggregate.
    template: AuditEvent,
}

#[derive(Default)]
pub struct RefusalLog {
    windows: Mutex<HashMap<Key, Window>>,
}

impl RefusalLog {
    /// The entries to commit for this refusal now: the event itself when it
    /// is its source's first of this second (preceded by the summary of the
    /// source's previous second, if it had one), or nothing when it is
    /// counted into the current window.
    pub fn admit(
        &self,
        source: &str,
        kind: &str,
        reason: &str,
        event: AuditEvent,
    ) -> Vec<AuditEvent> {
        let now = event.ts;
        let Ok(mut windows) = self.windows.lock() else {
            // A poisoned lock: fall back to recording every refusal.
            return vec![event];
        };
        let mut key = Key {
            source: source.to_string(),
            kind: kind.to_string(),
        };
        if !windows.contains_key(&key) && windows.len() >= MAX_SOURCES {
            key.source = "*".into();
        }
        let mut out = Vec::new();
        if let Some(w) = windows.get_mut(&key) {
            if w.second == now {
                w.suppressed += 1;
                let full = w.reasons.len() >= MAX_REASONS;
                match w.reasons.iter_mut().find(|(r, _)| r == reason) {
                    Some((_, n)) => *n += 1,
                    None if !full => w.reasons.push((reason.to_string(), 1)),
                    None => {}
                }
                return out;
            }
            if let Some(w) = windows.remove(&key) {
                out.extend(summary(&key, w));
            }
        }
        windows.insert(
            key,
            Window {
                second: now,
                suppressed: 0,
                reasons: Vec::new(),
                template: event.clone(),
            },
        );
        out.push(event);
        out
    }

    /// Summaries of every window whose second is over at `now`; the windows
    /// are dropped, so an idle source is forgotten.
    pub fn flush(&self, now: i64) -> Vec<AuditEvent> {
        let Ok(mut windows) = self.windows.lock() else {
            return Vec::new();
        };
        let done: Vec<Key> = windows
            .iter()
            .filter(|(_, w)| w.second < now)
            .map(|(k, _)| k.clone())
            .collect();
        let mut out = Vec::new();
        for k in done {
            if let Some(w) = windows.remove(&k) {
                out.extend(summary(&k, w));
            }
        }
        out
    }
}

/// One entry for the refusals counted in a window, if there were any.
fn summary(key: &Key, w: Window) -> Option<AuditEvent> {
    if w.suppressed == 0 {
        return None;
    }
    let mut ev = w.template;
    ev.detail = json!({
        "aggregated": true,
        "count": w.suppressed,
        "source": key.source,
        "second": w.second,
        "reasons": w.reasons.iter().map(|(r, n)| json!({"reason": r, "count": n})).collect::<Vec<_>>(),
        "first": ev.detail,
    });
    Some(ev)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(ts: i64, reason: &str) -> AuditEvent {
        AuditEvent::new(ts, tollgate_core::EventKind::AuthRefused, "anonymous")
            .detail(json!({"reason": reason}))
    }

    #[test]
    fn a_flood_costs_two_entries_a_second_and_keeps_the_count() {
        let log = RefusalLog::default();
        assert_eq!(
            log.admit("1.2.3.4", "auth.refused/admin", "bad", ev(10, "bad"))
                .len(),
            1
        );
        for i in 0..156 {
            // Reasons vary (a forged kid, say): still one window.
            let r = format!("kid {}", i % 20);
            assert!(log
                .admit("1.2.3.4", "auth.refused/admin", &r, ev(10, &r))
                .is_empty());
        }
        // Another source is recorded on its own.
        assert_eq!(
            log.admit("5.6.7.8", "auth.refused/admin", "bad", ev(10, "bad"))
                .len(),
            1
        );
        // Nothing is flushed while the second lasts.
        assert!(log.flush(10).is_empty());
        let out = log.flush(11);
        assert_eq!(out.len(), 1, "only the flooding source had more than one");
        let d = &out[0].detail;
        assert_eq!(d["aggregated"], true);
        assert_eq!(d["count"], 156);
        assert_eq!(d["source"], "1.2.3.4");
        assert_eq!(d["reasons"].as_array().unwrap().len(), MAX_REASONS);
        assert_eq!(d["first"]["reason"], "bad");
        // Total evidence: 1 + 156 + 1 refusals in 3 entries.
        assert!(log.flush(12).is_empty());
    }

    #[test]
    fn the_next_second_reports_the_last_one_first() {
        let log = RefusalLog::default();
        log.admit("a", "k", "r", ev(1, "r"));
        log.admit("a", "k", "r", ev(1, "r"));
        let out = log.admit("a", "k", "r", ev(2, "r"));
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].detail["count"], 1);
        assert_eq!(out[1].detail["reason"], "r");
    }

    #[test]
    fn sources_beyond_the_cap_share_one_window() {
        let log = RefusalLog::default();
        for i in 0..MAX_SOURCES {
            assert_eq!(log.admit(&format!("s{i}"), "k", "r", ev(1, "r")).len(), 1);
        }
        assert_eq!(log.admit("late-1", "k", "r", ev(1, "r")).len(), 1);
        assert!(log.admit("late-2", "k", "r", ev(1, "r")).is_empty());
    }
}
