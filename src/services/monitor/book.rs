//! The alert book: every alert the monitor raised, newest last, at most a
//! fixed number (the oldest resolved ones go first), with at most one
//! firing alert per service; paged listing and acknowledgement.

use std::collections::BTreeMap;

use super::health::Severity;
use crate::proto;

/// Alerts kept by default.
pub const MAX_ALERTS: usize = 1000;

/// One alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Order of raising, increasing; page tokens continue from it.
    pub seq: u64,
    /// Its id (1..=64 chars of `[A-Za-z0-9_-]`).
    pub id: String,
    /// The service concerned.
    pub service: String,
    /// Its severity (never shrinks while firing).
    pub severity: Severity,
    /// A one-line summary.
    pub title: String,
    /// More about it.
    pub detail: String,
    /// When it fired, Unix ms.
    pub raised_ms: u64,
    /// When it resolved, Unix ms; `None` while firing.
    pub resolved_ms: Option<u64>,
    /// Who acknowledged it and when (Unix ms).
    pub acknowledged: Option<(String, u64)>,
}

impl Record {
    /// Whether it still fires.
    #[must_use]
    pub fn is_firing(&self) -> bool {
        self.resolved_ms.is_none()
    }

    /// Its protocol form.
    #[must_use]
    pub fn to_proto(&self) -> proto::Alert {
        let ms = |t: u64| i64::try_from(t).unwrap_or(i64::MAX);
        let (by, at) = self
            .acknowledged
            .as_ref()
            .map_or((String::new(), 0), |(by, at)| (by.clone(), ms(*at)));
        let state = if self.is_firing() {
            proto::AlertState::Firing
        } else {
            proto::AlertState::Resolved
        };
        proto::Alert {
            id: self.id.clone(),
            severity: self.severity.to_proto().into(),
            state: state.into(),
            service_name: self.service.clone(),
            title: self.title.clone(),
            detail: self.detail.clone(),
            raised_at_ms: ms(self.raised_ms),
            resolved_at_ms: self.resolved_ms.map_or(0, ms),
            acknowledged: self.acknowledged.is_some(),
            acknowledged_by: by,
            acknowledged_at_ms: at,
            labels: Default::default(),
        }
    }
}

/// Which alerts a listing wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Filter {
    /// Resolved ones too (otherwise firing only).
    pub include_resolved: bool,
    /// At least this severity (`None`: any).
    pub min_severity: Option<Severity>,
}

impl Filter {
    /// Whether `r` passes.
    #[must_use]
    pub fn admits(&self, r: &Record) -> bool {
        (self.include_resolved || r.is_firing())
            && self.min_severity.is_none_or(|m| r.severity >= m)
    }
}

/// The alert is not in the book (never raised, or dropped as too old).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no alert {0:?}")]
pub struct Unknown(pub String);

/// The alerts, bounded.
#[derive(Debug, Clone)]
pub struct Book {
    capacity: usize,
    next_seq: u64,
    records: BTreeMap<u64, Record>,
    by_id: BTreeMap<String, u64>,
    firing: BTreeMap<String, u64>,
}

impl Default for Book {
    fn default() -> Self {
        Self::new(MAX_ALERTS)
    }
}

impl Book {
    /// An empty book keeping at most `capacity` (at least 1) alerts.
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            next_seq: 1,
            records: BTreeMap::new(),
            by_id: BTreeMap::new(),
            firing: BTreeMap::new(),
        }
    }

    /// Alerts held.
    #[must_use]
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether it holds none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Alerts firing.
    #[must_use]
    pub fn firing_count(&self) -> usize {
        self.firing.len()
    }

    /// The firing alert of `service`.
    #[must_use]
    pub fn firing_of(&self, service: &str) -> Option<&Record> {
        self.firing.get(service).and_then(|s| self.records.get(s))
    }

    /// The firing alerts, oldest first.
    pub fn firing(&self) -> impl Iterator<Item = &Record> {
        let mut seqs: Vec<u64> = self.firing.values().copied().collect();
        seqs.sort_unstable();
        seqs.into_iter().filter_map(|s| self.records.get(&s))
    }

    /// Records a new firing alert `id` for `service`, making room if full.
    /// A service already firing keeps its alert (returned unchanged).
    pub fn raise(
        &mut self,
        id: String,
        service: &str,
        severity: Severity,
        title: String,
        detail: String,
        now_ms: u64,
    ) -> &Record {
        if let Some(&seq) = self.firing.get(service) {
            return &self.records[&seq];
        }
        while self.records.len() >= self.capacity && self.evict() {}
        let seq = self.next_seq;
        self.next_seq += 1;
        self.by_id.insert(id.clone(), seq);
        self.firing.insert(service.to_owned(), seq);
        self.records.entry(seq).or_insert(Record {
            seq,
            id,
            service: service.to_owned(),
            severity,
            title,
            detail,
            raised_ms: now_ms,
            resolved_ms: None,
            acknowledged: None,
        })
    }

    /// Drops the oldest resolved alert (or, if every alert fires, which
    /// only a capacity below the number of services allows, the oldest).
    fn evict(&mut self) -> bool {
        let victim = self
            .records
            .values()
            .find(|r| !r.is_firing())
            .or_else(|| self.records.values().next())
            .map(|r| (r.seq, r.id.clone(), r.service.clone()));
        let Some((seq, id, service)) = victim else {
            return false;
        };
        self.records.remove(&seq);
        self.by_id.remove(&id);
        if self.firing.get(&service) == Some(&seq) {
            self.firing.remove(&service);
        }
        true
    }

    /// Raises the severity of `service`'s firing alert.
    pub fn escalate(&mut self, service: &str, severity: Severity) -> Option<&Record> {
        let seq = *self.firing.get(service)?;
        let r = self.records.get_mut(&seq)?;
        r.severity = r.severity.max(severity);
        Some(r)
    }

    /// Resolves `service`'s firing alert at `now_ms`.
    pub fn resolve(&mut self, service: &str, now_ms: u64) -> Option<&Record> {
        let seq = self.firing.remove(service)?;
        let r = self.records.get_mut(&seq)?;
        r.resolved_ms = Some(now_ms);
        Some(r)
    }

    /// Acknowledges alert `id` by `by` at `now_ms`; acknowledging again
    /// changes nothing (the first acknowledgement stands). Returns the
    /// alert and whether it changed.
    ///
    /// # Errors
    /// [`Unknown`] when the book does not hold `id`.
    pub fn acknowledge(
        &mut self,
        id: &str,
        by: &str,
        now_ms: u64,
    ) -> Result<(&Record, bool), Unknown> {
        let seq = *self.by_id.get(id).ok_or_else(|| Unknown(id.to_owned()))?;
        let r = self
            .records
            .get_mut(&seq)
            .ok_or_else(|| Unknown(id.to_owned()))?;
        let changed = r.acknowledged.is_none();
        if changed {
            r.acknowledged = Some((by.to_owned(), now_ms));
        }
        Ok((r, changed))
    }

    /// Up to `limit` alerts passing `filter`, newest first, raised before
    /// `before` (a seq; `None`: from the newest). Also the seq to continue
    /// before, if more may follow.
    #[must_use]
    pub fn page(
        &self,
        filter: Filter,
        before: Option<u64>,
        limit: usize,
    ) -> (Vec<&Record>, Option<u64>) {
        let mut hits = self
            .records
            .range(..before.unwrap_or(u64::MAX))
            .rev()
            .map(|(_, r)| r)
            .filter(|r| filter.admits(r));
        let page: Vec<&Record> = hits.by_ref().take(limit).collect();
        let more = hits.next().is_some();
        let next = if more {
            page.last().map(|r| r.seq)
        } else {
            None
        };
        (page, next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn raise(book: &mut Book, n: u64, service: &str) -> u64 {
        let sev = Severity::Critical;
        book.raise(format!("a{n}"), service, sev, "t".into(), String::new(), n)
            .seq
    }

    #[test]
    fn one_firing_alert_per_service_and_acks_are_idempotent() {
        let mut book = Book::default();
        let first = raise(&mut book, 1, "cache");
        assert_eq!(raise(&mut book, 2, "cache"), first, "still the same alert");
        assert_eq!(book.len(), 1);
        let (r, changed) = book.acknowledge("a1", "ops", 5).unwrap();
        assert!(changed && r.acknowledged == Some(("ops".into(), 5)));
        let (r, changed) = book.acknowledge("a1", "someone-else", 9).unwrap();
        assert!(!changed && r.acknowledged == Some(("ops".into(), 5)));
        assert_eq!(
            book.acknowledge("nope", "ops", 1),
            Err(Unknown("nope".into()))
        );
        assert_eq!(book.resolve("cache", 7).unwrap().resolved_ms, Some(7));
        assert!(book.resolve("cache", 8).is_none());
        assert_ne!(raise(&mut book, 3, "cache"), first, "a new episode");
    }

    #[test]
    fn pages_newest_first_with_filters() {
        let mut book = Book::default();
        for n in 0..5 {
            raise(&mut book, n, &format!("s{n}"));
        }
        book.resolve("s1", 10);
        book.escalate("s3", Severity::Critical);
        let all = Filter {
            include_resolved: true,
            min_severity: None,
        };
        let (page, next) = book.page(all, None, 2);
        assert_eq!(
            page.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["a4", "a3"]
        );
        let (page, next) = book.page(all, next, 2);
        assert_eq!(
            page.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["a2", "a1"]
        );
        let (page, next) = book.page(all, next, 2);
        assert_eq!((page.len(), next), (1, None));
        let (firing, _) = book.page(Filter::default(), None, 100);
        assert_eq!(firing.len(), 4, "resolved left out");
    }

    proptest! {
        #[test]
        fn bounded_and_never_drops_a_firing_alert_while_resolved_ones_remain(
            ops in prop::collection::vec((0u8..8, any::<bool>()), 0..400),
            capacity in 8usize..40,
        ) {
            let mut book = Book::new(capacity);
            for (i, (service, resolve)) in ops.into_iter().enumerate() {
                let service = format!("s{service}");
                if resolve {
                    book.resolve(&service, i as u64);
                } else {
                    raise(&mut book, i as u64, &service);
                }
                prop_assert!(book.len() <= capacity);
                prop_assert!(book.firing_count() <= 8);
                for r in book.firing() {
                    prop_assert_eq!(book.firing_of(&r.service).map(|f| f.seq), Some(r.seq));
                }
                let all = Filter { include_resolved: true, min_severity: None };
                let (page, _) = book.page(all, None, capacity);
                prop_assert_eq!(page.len(), book.len());
                prop_assert!(page.windows(2).all(|w| w[0].seq > w[1].seq));
            }
        }
    }
}
