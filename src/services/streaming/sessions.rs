//! Viewing sessions in memory: a bounded table of live sessions and a bounded
//! memory of stopped ones, so a repeated stop returns the original answer.

use std::collections::VecDeque;

use crate::HashMap;

use super::StreamingError;

/// Most sessions live at once; more are refused.
pub const MAX_LIVE_SESSIONS: usize = 100_000;

/// A live session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The video watched.
    pub video_id: String,
    /// When it started, Unix epoch ms.
    pub started_at_ms: u64,
}

/// The answer of a stop, remembered for repeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped {
    /// Wall-clock length of the session.
    pub duration_ms: u64,
    /// When it stopped, Unix epoch ms.
    pub stopped_at_ms: u64,
}

/// What a stop did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// The session was live and is now stopped.
    First(Session, Stopped),
    /// It had been stopped before: the original answer.
    Repeat(Stopped),
}

/// The session table.
#[derive(Debug)]
pub struct Sessions {
    live: HashMap<String, Session>,
    stopped: HashMap<String, Stopped>,
    /// Stop order, oldest first, to forget the oldest beyond the bound.
    stop_order: VecDeque<String>,
    max_live: usize,
}

impl Sessions {
    /// A table of at most `max_live` live sessions that also remembers the
    /// last `max_live` stops.
    #[must_use]
    pub fn new(max_live: usize) -> Self {
        Self {
            live: HashMap::default(),
            stopped: HashMap::default(),
            stop_order: VecDeque::new(),
            max_live,
        }
    }

    /// Records a new live session `id`.
    ///
    /// # Errors
    /// [`StreamingError::TooManySessions`] when the table is full.
    pub fn start(&mut self, id: String, session: Session) -> Result<(), StreamingError> {
        if self.live.len() >= self.max_live {
            return Err(StreamingError::TooManySessions(self.max_live));
        }
        // Ids are 128 random bits: a collision is a broken random source.
        assert!(
            !self.live.contains_key(&id) && !self.stopped.contains_key(&id),
            "session id {id} drawn twice"
        );
        self.live.insert(id, session);
        Ok(())
    }

    /// Stops session `id` at `now_ms`; a repeat returns the first answer.
    ///
    /// # Errors
    /// [`StreamingError::NoSession`] for an unknown (or long forgotten) id.
    pub fn stop(&mut self, id: &str, now_ms: u64) -> Result<Stop, StreamingError> {
        if let Some(done) = self.stopped.get(id) {
            return Ok(Stop::Repeat(*done));
        }
        let session = self
            .live
            .remove(id)
            .ok_or_else(|| StreamingError::NoSession(id.to_owned()))?;
        let done = Stopped {
            duration_ms: now_ms.saturating_sub(session.started_at_ms),
            stopped_at_ms: now_ms.max(session.started_at_ms),
        };
        if self.stop_order.len() >= self.max_live
            && let Some(oldest) = self.stop_order.pop_front()
        {
            self.stopped.remove(&oldest);
        }
        self.stopped.insert(id.to_owned(), done);
        self.stop_order.push_back(id.to_owned());
        Ok(Stop::First(session, done))
    }

    /// Live sessions.
    #[must_use]
    pub fn live(&self) -> usize {
        self.live.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(at: u64) -> Session {
        Session {
            video_id: "v1".into(),
            started_at_ms: at,
        }
    }

    #[test]
    fn a_stop_is_idempotent() {
        let mut s = Sessions::new(4);
        s.start("a".into(), session(1_000)).expect("start");
        let Stop::First(started, first) = s.stop("a", 1_500).expect("stop") else {
            panic!("first stop")
        };
        assert_eq!(started, session(1_000));
        assert_eq!(first.duration_ms, 500);
        assert_eq!(s.stop("a", 9_999).expect("again"), Stop::Repeat(first));
        assert!(matches!(s.stop("b", 1), Err(StreamingError::NoSession(_))));
        assert_eq!(s.live(), 0);
    }

    #[test]
    fn the_tables_are_bounded() {
        let mut s = Sessions::new(2);
        s.start("a".into(), session(0)).expect("a");
        s.start("b".into(), session(0)).expect("b");
        assert!(matches!(
            s.start("c".into(), session(0)),
            Err(StreamingError::TooManySessions(2))
        ));
        for (id, at) in [("a", 1), ("b", 2)] {
            s.stop(id, at).expect("stop");
        }
        s.start("c".into(), session(0)).expect("room again");
        s.stop("c", 3).expect("stop c");
        // The oldest stop ("a") is forgotten; the newer ones are kept.
        assert!(matches!(s.stop("a", 4), Err(StreamingError::NoSession(_))));
        assert!(matches!(s.stop("c", 4), Ok(Stop::Repeat(_))));
        assert_eq!(s.stopped.len(), 2);
    }

    #[test]
    fn a_clock_step_back_never_underflows() {
        let mut s = Sessions::new(1);
        s.start("a".into(), session(5_000)).expect("start");
        let Stop::First(_, done) = s.stop("a", 4_000).expect("stop") else {
            panic!("first stop")
        };
        assert_eq!(done.duration_ms, 0);
        assert_eq!(done.stopped_at_ms, 5_000);
    }
}
