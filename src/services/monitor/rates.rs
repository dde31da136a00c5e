//! Event rates: per publishing service and event type, a ring of per-second
//! counts over the last minute (fixed memory whatever the traffic). Pure:
//! the caller passes the current second.

use std::collections::BTreeMap;

use crate::bus::EventType;

/// Seconds the counts cover.
pub const WINDOW_S: u64 = 60;
/// Weight of each older second in the smoothed rate (time constant ~10 s).
const DECAY: f64 = 0.9;

/// Per-second counts of one event type, the last [`WINDOW_S`] seconds.
#[derive(Debug, Clone)]
struct Ring {
    /// (second, count) at index `second % WINDOW_S`.
    buckets: [(u64, u64); WINDOW_S as usize],
}

impl Default for Ring {
    fn default() -> Self {
        Self {
            buckets: [(0, 0); WINDOW_S as usize],
        }
    }
}

impl Ring {
    fn slot(second: u64) -> usize {
        usize::try_from(second % WINDOW_S).unwrap_or(0)
    }

    fn add(&mut self, now_s: u64) {
        let bucket = &mut self.buckets[Self::slot(now_s)];
        if bucket.0 != now_s {
            *bucket = (now_s, 0);
        }
        bucket.1 = bucket.1.saturating_add(1);
    }

    /// The count of the second `age` seconds before `now_s`.
    fn at(&self, now_s: u64, age: u64) -> u64 {
        let Some(second) = now_s.checked_sub(age) else {
            return 0;
        };
        match self.buckets[Self::slot(second)] {
            (s, count) if s == second => count,
            _ => 0,
        }
    }

    fn last_minute(&self, now_s: u64) -> u64 {
        (0..WINDOW_S).map(|age| self.at(now_s, age)).sum()
    }

    /// Events per second, exponentially weighted over the completed
    /// seconds of the window (a steady rate r gives r).
    #[allow(clippy::cast_precision_loss)] // counts far below 2^52
    fn smoothed(&self, now_s: u64) -> f64 {
        let (mut sum, mut weights, mut w) = (0.0, 0.0, 1.0);
        for age in 1..WINDOW_S {
            sum += w * self.at(now_s, age) as f64;
            weights += w;
            w *= DECAY;
        }
        sum / weights
    }
}

/// The rate of one event type from one service.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// The event type.
    pub kind: EventType,
    /// Events in the last [`WINDOW_S`] seconds.
    pub last_minute: u64,
    /// Smoothed events per second.
    pub per_second: f64,
}

/// Counts of every event type per known publishing service.
#[derive(Debug, Clone, Default)]
pub struct Rates {
    by_source: BTreeMap<String, Vec<Ring>>,
    ignored: u64,
}

fn index(kind: EventType) -> usize {
    EventType::ALL
        .iter()
        .position(|k| *k == kind)
        .unwrap_or_default()
}

impl Rates {
    /// Counters for events published by `sources` (others are only
    /// counted as ignored, so that memory stays bounded).
    #[must_use]
    pub fn new<'a>(sources: impl IntoIterator<Item = &'a str>) -> Self {
        Self {
            by_source: sources
                .into_iter()
                .map(|s| (s.to_owned(), vec![Ring::default(); EventType::ALL.len()]))
                .collect(),
            ignored: 0,
        }
    }

    /// Counts one event of `kind` from `source` in second `now_s`.
    pub fn record(&mut self, source: &str, kind: EventType, now_s: u64) {
        match self.by_source.get_mut(source) {
            Some(rings) => rings[index(kind)].add(now_s),
            None => self.ignored = self.ignored.saturating_add(1),
        }
    }

    /// Events seen from sources the monitor does not know.
    #[must_use]
    pub fn ignored(&self) -> u64 {
        self.ignored
    }

    /// The rates of the event types `source` published in the last
    /// minute, in [`EventType::ALL`] order.
    #[must_use]
    pub fn of(&self, source: &str, now_s: u64) -> Vec<Rate> {
        let Some(rings) = self.by_source.get(source) else {
            return Vec::new();
        };
        EventType::ALL
            .iter()
            .zip(rings)
            .filter_map(|(&kind, ring)| {
                let last_minute = ring.last_minute(now_s);
                (last_minute > 0).then(|| Rate {
                    kind,
                    last_minute,
                    per_second: ring.smoothed(now_s),
                })
            })
            .collect()
    }
}

/// The wire name of an event type (e.g. `file_uploaded`).
#[must_use]
pub fn type_name(kind: EventType) -> String {
    match serde_json::to_value(kind) {
        Ok(serde_json::Value::String(s)) => s,
        _ => format!("{kind:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn counts_the_last_minute_only() {
        let mut rates = Rates::new(["upload"]);
        rates.record("upload", EventType::FileUploaded, 10);
        rates.record("upload", EventType::FileUploaded, 10);
        rates.record("upload", EventType::MetadataCreated, 30);
        rates.record("nobody", EventType::FileUploaded, 30);
        assert_eq!(rates.ignored(), 1);
        let at = |s| {
            rates
                .of("upload", s)
                .iter()
                .map(|r| (type_name(r.kind), r.last_minute))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            at(30),
            [
                ("file_uploaded".to_owned(), 2),
                ("metadata_created".to_owned(), 1)
            ]
        );
        assert_eq!(at(69).len(), 2, "second 10 is 59 s old: still in");
        assert_eq!(at(70), [("metadata_created".to_owned(), 1)]);
        assert!(at(200).is_empty());
        assert!(rates.of("nobody", 30).is_empty());
    }

    #[test]
    fn a_steady_rate_is_its_smoothed_rate() {
        let mut rates = Rates::new(["worker"]);
        for second in 0..200 {
            for _ in 0..3 {
                rates.record("worker", EventType::JobCompleted, second);
            }
        }
        let rate = rates.of("worker", 200)[0];
        assert_eq!(rate.last_minute, 3 * 59, "second 200 has none yet");
        assert!((rate.per_second - 3.0).abs() < 1e-9, "{}", rate.per_second);
    }

    proptest! {
        #[test]
        fn matches_a_model(events in prop::collection::vec((0usize..14, 0u64..5), 0..500)) {
            let mut rates = Rates::new(["s"]);
            let mut now = 0;
            let mut seen = Vec::new();
            for (kind, dt) in events {
                now += dt;
                rates.record("s", EventType::ALL[kind], now);
                seen.push((kind, now));
                for r in rates.of("s", now) {
                    let want = seen.iter().filter(|(k, t)| EventType::ALL[*k] == r.kind && now - t < WINDOW_S).count() as u64;
                    prop_assert_eq!(r.last_minute, want);
                    prop_assert!(r.per_second >= 0.0);
                }
            }
        }
    }
}
