//! The video state machine: which state changes a caller may ask for, and
//! how each pipeline event moves a video. Pure; the store applies it.

use crate::proto::{Video, VideoState};

/// Longest failure reason kept.
pub const MAX_REASON: usize = 1024;

/// True if a caller may move a video from `from` to `to` (UpdateVideo):
/// uploaded -> transcoding -> ready | failed, and failed -> transcoding
/// (a retry). Staying in a state is allowed.
#[must_use]
pub fn may_move(from: VideoState, to: VideoState) -> bool {
    use VideoState::{Failed, Ready, Transcoding, Unspecified, Uploaded};
    match (from, to) {
        (_, Unspecified) | (Unspecified, _) => false,
        (a, b) if a == b => true,
        (Uploaded | Failed, Transcoding) | (Uploaded | Transcoding, Failed) => true,
        (Transcoding, Ready) => true,
        _ => false,
    }
}

/// A pipeline event, as it bears on a video's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A transcode attempt began.
    Started,
    /// A transcode produced the renditions.
    Completed,
    /// A transcode attempt failed.
    Failed(String),
}

/// The state after `step` from `state`, or `None` when the event changes
/// nothing. Events may come late or twice (at-least-once delivery):
/// success is final, so a stale start or failure never undoes it, and a
/// completion is accepted from any earlier state.
#[must_use]
pub fn after(state: VideoState, step: &Step) -> Option<VideoState> {
    use VideoState::{Failed, Ready, Transcoding, Uploaded};
    match (state, step) {
        (Ready, _) => None,
        (Uploaded | Failed, Step::Started) => Some(Transcoding),
        (Uploaded | Transcoding | Failed, Step::Completed) => Some(Ready),
        (Uploaded | Transcoding | Failed, Step::Failed(_)) => Some(Failed),
        _ => None,
    }
}

/// Moves `v` by `step` at `now_ms`, as both catalog back ends apply an
/// event: the new state, the failure reason (clipped; cleared otherwise),
/// `fill` on reaching READY, the update time. False (nothing changed) when
/// the step is not allowed from `v`'s state.
pub fn advance(v: &mut Video, step: &Step, now_ms: i64, fill: impl FnOnce(&mut Video)) -> bool {
    let from = VideoState::try_from(v.state).unwrap_or(VideoState::Unspecified);
    let Some(to) = after(from, step) else {
        return false;
    };
    v.state = to as i32;
    v.failure_reason = match step {
        Step::Failed(reason) => clip_reason(reason),
        _ => String::new(),
    };
    v.updated_at_ms = v.updated_at_ms.max(now_ms);
    if to == VideoState::Ready {
        fill(v);
        v.ready_at_ms = v.updated_at_ms;
    }
    true
}

/// `reason` cut to [`MAX_REASON`] bytes on a character boundary.
#[must_use]
pub fn clip_reason(reason: &str) -> String {
    crate::text::prefix(reason, MAX_REASON).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn state() -> impl Strategy<Value = VideoState> {
        prop_oneof![
            Just(VideoState::Uploaded),
            Just(VideoState::Transcoding),
            Just(VideoState::Ready),
            Just(VideoState::Failed),
        ]
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            Just(Step::Started),
            Just(Step::Completed),
            "[a-z]{0,8}".prop_map(Step::Failed),
        ]
    }

    proptest! {
        /// Whatever order and repetition events arrive in, once a
        /// completion is seen the video is ready and stays ready, and the
        /// state only ever makes moves a caller could make too.
        #[test]
        fn events_converge_and_stay_legal(steps in prop::collection::vec(step(), 0..20)) {
            let mut s = VideoState::Uploaded;
            let mut completed = false;
            for step in &steps {
                if let Some(next) = after(s, step) {
                    prop_assert!(may_move(s, next) || (next == VideoState::Ready), "{s:?} -> {next:?}");
                    s = next;
                }
                completed |= *step == Step::Completed;
                prop_assert_eq!(completed, s == VideoState::Ready);
            }
        }

        #[test]
        fn unspecified_is_never_a_target(from in state()) {
            prop_assert!(!may_move(from, VideoState::Unspecified));
        }
    }

    #[test]
    fn ready_is_final_for_callers() {
        assert!(!may_move(VideoState::Ready, VideoState::Uploaded));
        assert!(!may_move(VideoState::Ready, VideoState::Failed));
        assert!(may_move(VideoState::Failed, VideoState::Transcoding));
        assert_eq!(clip_reason(&"é".repeat(600)).len(), 1024);
    }
}
