//! Time, injected. Every TTL decision in Tollgate reads a [`Clock`], never the
//! system time directly, so tests move time instead of sleeping.

use std::sync::atomic::{AtomicI64, Ordering};

/// Seconds since the Unix epoch (UTC).
pub type UnixTime = i64;

pub trait Clock: Send + Sync {
    fn now(&self) -> UnixTime;
}

/// The real wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> UnixTime {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            // A clock before 1970 is a broken host; 0 makes every token look expired,
            // which fails closed.
            .unwrap_or(0)
    }
}

/// A clock tests set and advance by hand.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(start: UnixTime) -> Self {
        Self(AtomicI64::new(start))
    }
    pub fn advance(&self, seconds: i64) {
        self.0.fetch_add(seconds, Ordering::SeqCst);
    }
    pub fn set(&self, now: UnixTime) {
        self.0.store(now, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> UnixTime {
        self.0.load(Ordering::SeqCst)
    }
}

/// RFC 3339 rendering of a Unix time, for API answers and logs.
pub fn rfc3339(t: UnixTime) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| t.to_string())
}

/// The Unix time an RFC 3339 timestamp names, if it is one.
pub fn parse_rfc3339(s: &str) -> Option<UnixTime> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(time::OffsetDateTime::unix_timestamp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::new(1_000);
        assert_eq!(c.now(), 1_000);
        c.advance(30);
        assert_eq!(c.now(), 1_030);
        c.set(5);
        assert_eq!(c.now(), 5);
    }

    #[test]
    fn rfc3339_renders_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(parse_rfc3339("1970-01-01T00:01:00+00:00"), Some(60));
        assert_eq!(parse_rfc3339(&rfc3339(1_795_321_672)), Some(1_795_321_672));
        assert_eq!(parse_rfc3339("yesterday"), None);
    }
}
