//! The transcoder's pure bookkeeping: every transcode's state, progress and
//! idempotency key, bounded by evicting the oldest finished ones.

use std::collections::BTreeMap;

use super::error::TranscoderError;
use super::hls::Rendition;

/// Transcodes remembered by default.
pub const CAPACITY: usize = 10_000;

/// Where a transcode is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Accepted, waiting for a slot.
    Pending,
    /// Working.
    Running,
    /// Every rendition produced.
    Succeeded,
    /// Failed; see the error.
    Failed,
    /// Cancelled.
    Cancelled,
}

impl Phase {
    /// No further change happens.
    #[must_use]
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

/// One transcode as the table knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Transcode {
    /// Its id.
    pub id: String,
    /// The video.
    pub video_id: String,
    /// The idempotency key it was started with (may be empty).
    pub key: String,
    /// Its phase.
    pub phase: Phase,
    /// 0..=100.
    pub progress: u32,
    /// Renditions being made (set when work starts), finished on success.
    pub renditions: Vec<Rendition>,
    /// Why it failed or was cancelled.
    pub error: String,
    /// Unix ms it started work, 0 = not yet.
    pub started_ms: u64,
    /// Unix ms of the last change.
    pub updated_ms: u64,
    /// Unix ms it finished, 0 = not yet.
    pub finished_ms: u64,
    seq: u64,
}

/// What [`Table::admit`] decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Admitted {
    /// A new transcode to run.
    New(Transcode),
    /// The key's earlier transcode, still running or done.
    Existing(Transcode),
}

/// Every transcode, by id, and the idempotency keys.
#[derive(Debug)]
pub struct Table {
    capacity: usize,
    entries: BTreeMap<String, Transcode>,
    by_key: BTreeMap<String, String>,
    order: BTreeMap<u64, String>,
    next_seq: u64,
}

impl Default for Table {
    fn default() -> Self {
        Self::new(CAPACITY)
    }
}

impl Table {
    /// A table remembering at most `capacity` transcodes (at least 1).
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            entries: BTreeMap::new(),
            by_key: BTreeMap::new(),
            order: BTreeMap::new(),
            next_seq: 0,
        }
    }

    /// The transcode `id`.
    #[must_use]
    pub fn get(&self, id: &str) -> Option<&Transcode> {
        self.entries.get(id)
    }

    /// How many are remembered.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none is.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Admits a transcode of `video_id` under `id`. A `key` seen before
    /// returns that transcode unless it failed or was cancelled: a retry
    /// then starts a new one that takes the key over.
    ///
    /// # Errors
    /// The key belongs to another video; the table is full of unfinished work.
    pub fn admit(
        &mut self,
        id: &str,
        video_id: &str,
        key: &str,
        now_ms: u64,
    ) -> Result<Admitted, TranscoderError> {
        if let Some(existing) = self.by_key.get(key).and_then(|id| self.entries.get(id)) {
            if existing.video_id != video_id {
                return Err(TranscoderError::KeyReused(key.to_owned()));
            }
            if !matches!(existing.phase, Phase::Failed | Phase::Cancelled) {
                return Ok(Admitted::Existing(existing.clone()));
            }
        }
        while self.entries.len() >= self.capacity {
            let oldest = self
                .order
                .iter()
                .find(|(_, id)| self.entries.get(*id).is_some_and(|t| t.phase.is_terminal()))
                .map(|(seq, _)| *seq);
            let Some(seq) = oldest else {
                return Err(TranscoderError::Busy(self.capacity));
            };
            self.evict(seq);
        }
        let t = Transcode {
            id: id.to_owned(),
            video_id: video_id.to_owned(),
            key: key.to_owned(),
            phase: Phase::Pending,
            progress: 0,
            renditions: Vec::new(),
            error: String::new(),
            started_ms: 0,
            updated_ms: now_ms,
            finished_ms: 0,
            seq: self.next_seq,
        };
        self.next_seq += 1;
        if !key.is_empty() {
            self.by_key.insert(key.to_owned(), id.to_owned());
        }
        self.order.insert(t.seq, id.to_owned());
        self.entries.insert(id.to_owned(), t.clone());
        Ok(Admitted::New(t))
    }

    fn evict(&mut self, seq: u64) {
        let Some(id) = self.order.remove(&seq) else {
            return;
        };
        if let Some(t) = self.entries.remove(&id)
            && self.by_key.get(&t.key) == Some(&id)
        {
            self.by_key.remove(&t.key);
        }
    }

    /// Pending → running; false if it is no longer pending (cancelled).
    pub fn start(&mut self, id: &str, now_ms: u64) -> bool {
        match self.entries.get_mut(id) {
            Some(t) if t.phase == Phase::Pending => {
                t.phase = Phase::Running;
                t.started_ms = now_ms;
                t.updated_ms = now_ms;
                true
            }
            _ => false,
        }
    }

    /// Records the renditions a running transcode makes.
    pub fn plan(&mut self, id: &str, renditions: &[Rendition], now_ms: u64) {
        if let Some(t) = self
            .entries
            .get_mut(id)
            .filter(|t| t.phase == Phase::Running)
        {
            renditions.clone_into(&mut t.renditions);
            t.updated_ms = now_ms;
        }
    }

    /// Records progress of a running transcode (it never goes back).
    pub fn progress(&mut self, id: &str, percent: u32, now_ms: u64) {
        if let Some(t) = self
            .entries
            .get_mut(id)
            .filter(|t| t.phase == Phase::Running)
        {
            let percent = percent.min(100);
            if percent > t.progress {
                t.progress = percent;
                t.updated_ms = now_ms;
            }
        }
    }

    /// Ends a running transcode: `Ok` with its renditions or `Err` with the
    /// reason. False if it had already ended (cancelled meanwhile).
    pub fn finish(
        &mut self,
        id: &str,
        result: Result<Vec<Rendition>, String>,
        now_ms: u64,
    ) -> bool {
        let Some(t) = self.entries.get_mut(id).filter(|t| !t.phase.is_terminal()) else {
            return false;
        };
        match result {
            Ok(renditions) => {
                t.phase = Phase::Succeeded;
                t.progress = 100;
                t.renditions = renditions;
            }
            Err(reason) => {
                t.phase = Phase::Failed;
                t.error = reason;
            }
        }
        t.updated_ms = now_ms;
        t.finished_ms = now_ms;
        true
    }

    /// Cancels an unfinished transcode; returns it.
    ///
    /// # Errors
    /// Unknown id; already finished.
    pub fn cancel(
        &mut self,
        id: &str,
        reason: &str,
        now_ms: u64,
    ) -> Result<Transcode, TranscoderError> {
        let t = self
            .entries
            .get_mut(id)
            .ok_or_else(|| TranscoderError::NotFound(id.to_owned()))?;
        if t.phase.is_terminal() {
            return Err(TranscoderError::Finished(id.to_owned(), t.phase));
        }
        t.phase = Phase::Cancelled;
        t.error = if reason.is_empty() {
            "cancelled".to_owned()
        } else {
            format!("cancelled: {reason}")
        };
        t.updated_ms = now_ms;
        t.finished_ms = now_ms;
        Ok(t.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_id(a: Admitted) -> String {
        match a {
            Admitted::New(t) => t.id,
            Admitted::Existing(t) => panic!("expected a new transcode, got {t:?}"),
        }
    }

    #[test]
    fn a_key_returns_the_live_transcode_and_restarts_a_failed_one() {
        let mut t = Table::new(10);
        let a = new_id(t.admit("a", "v1", "k", 1).unwrap());
        assert!(matches!(t.admit("b", "v1", "k", 2).unwrap(), Admitted::Existing(x) if x.id == a));
        assert!(matches!(
            t.admit("c", "v2", "k", 2),
            Err(TranscoderError::KeyReused(_))
        ));
        assert!(t.start("a", 3));
        t.progress("a", 40, 4);
        t.progress("a", 20, 5);
        assert_eq!(t.get("a").unwrap().progress, 40);
        assert!(t.finish("a", Err("boom".into()), 6));
        assert!(!t.finish("a", Ok(vec![]), 7), "terminal states are final");
        let b = new_id(t.admit("b", "v1", "k", 8).unwrap());
        assert_eq!(b, "b");
        assert_eq!(t.get("a").unwrap().phase, Phase::Failed, "history kept");
        assert!(t.start("b", 9));
        assert!(t.finish("b", Ok(vec![]), 10));
        assert!(
            matches!(t.admit("c", "v1", "k", 11).unwrap(), Admitted::Existing(x) if x.id == "b")
        );
        assert!(matches!(
            t.cancel("b", "", 12),
            Err(TranscoderError::Finished(..))
        ));
        assert!(matches!(
            t.cancel("zz", "", 12),
            Err(TranscoderError::NotFound(_))
        ));
    }

    #[test]
    fn the_oldest_finished_are_evicted_and_unfinished_work_is_bounded() {
        let mut t = Table::new(2);
        new_id(t.admit("a", "v", "", 1).unwrap());
        new_id(t.admit("b", "v", "", 1).unwrap());
        assert!(matches!(
            t.admit("c", "v", "", 1),
            Err(TranscoderError::Busy(2))
        ));
        t.cancel("b", "no", 2).unwrap();
        assert_eq!(t.get("b").unwrap().error, "cancelled: no");
        assert!(!t.start("b", 3), "a cancelled transcode never starts");
        new_id(t.admit("c", "v", "", 3).unwrap());
        assert!(t.get("b").is_none());
        assert_eq!(t.len(), 2);
    }
}
