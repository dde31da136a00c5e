//! `GET /v1/events?videos=<id>,<id>...`: server-sent events (SSE) of up to
//! [`MAX_VIDEOS`] videos' states, so the web app shows a video queued,
//! transcoding (with its percent), ready or failed (with its reason)
//! without polling.
//!
//! For each video the stream first sends its record (`event: video`, the
//! JSON of `GET /v1/videos/{id}`); while it is not ready or failed it
//! follows the video's transcode job through the worker's `WatchJob`
//! stream (`event: job`: its state and percent), and once the job ends it
//! reads the record again until the catalog has the outcome (a few reads,
//! backing off; the catalog learns it from the bus just after the job
//! ends) and sends it. A video deleted meanwhile sends `event: gone`; one
//! whose updates cannot be read (after a few tries), `event: error`. When
//! every video is settled the stream sends `event: end` and closes; after
//! [`MAX_STREAM`] too (`{"reason":"expired"}`: connect again). A comment
//! every [`KEEP_ALIVE`] keeps proxies from closing a quiet stream.
//!
//! The route sits behind the bearer check like the rest of the API: the
//! web app reads it with `fetch()` (which sends `Authorization`), not
//! `EventSource` (which cannot). A stream lives at most [`MAX_STREAM`], as
//! long as an access token, so a revoked token's stream ends with it. Open
//! streams are bounded per account ([`Streams`], 429 past it) and in all
//! (503), and each holds one place of the account's API requests in flight
//! (`limit.rs`), as any request does while its body is sent.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Extension;
use axum::extract::State;
use axum::http::Uri;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream::{BoxStream, SelectAll};
use futures::{StreamExt as _, stream};
use http::{HeaderValue, StatusCode, header};
use serde_json::{Value, json};

use super::bearer::AuthUser;
use super::error::ApiError;
use super::query::Query;
use super::videos::{enum_name, fresh, video_json};
use super::{Api, access};
use crate::HashMap;
use crate::proto::{JobProgress, JobState, Video, VideoState, WatchJobRequest};
use crate::rt::{self, Instant};
use crate::services::media;

/// Most videos one stream follows.
pub const MAX_VIDEOS: usize = 8;
/// Longest a stream lasts (an access token's life); the client connects
/// again.
pub const MAX_STREAM: Duration = Duration::from_secs(15 * 60);
/// A comment is sent after this long without an event.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Deadline of one `WatchJob` call (the worker's ceiling); a watch that
/// reaches it is made again.
pub const WATCH_CALL: Duration = Duration::from_secs(300);
/// Failures in a row (reads of the record, watches) before a video's
/// updates are given up (`event: error`).
pub const MAX_FAILURES: u32 = 6;
/// Reads of the record after its job ended, waiting for the outcome.
pub const SETTLE_READS: u32 = 8;
/// First wait after a failure or before the job exists; it doubles up to
/// [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Open streams allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Per account (a user's tabs and devices).
    pub per_account: usize,
    /// In all on this gateway (each follows up to [`MAX_VIDEOS`] jobs,
    /// the worker watches at most 1000 at once).
    pub total: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            per_account: 4,
            total: 100,
        }
    }
}

/// The streams open on this gateway, by account.
#[derive(Debug, Default)]
pub struct Streams {
    limits: Limits,
    open: Mutex<(usize, HashMap<String, usize>)>,
}

/// An open stream's place; given back when dropped.
#[derive(Debug)]
pub struct Slot {
    streams: Arc<Streams>,
    account: String,
}

impl Streams {
    /// No stream open yet, within `limits`.
    #[must_use]
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            open: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (usize, HashMap<String, usize>)> {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A place for a stream of `account`.
    ///
    /// # Errors
    /// 429 past the account's share, 503 past the total.
    pub fn open(self: &Arc<Self>, account: &str) -> Result<Slot, ApiError> {
        let mut open = self.lock();
        let (total, by_account) = &mut *open;
        if *total >= self.limits.total {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many event streams open: try again shortly",
            ));
        }
        let mine = by_account.entry(account.to_owned()).or_insert(0);
        if *mine >= self.limits.per_account {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "too many event streams open for this account (at most {}): close one first",
                    self.limits.per_account
                ),
            ));
        }
        *mine += 1;
        *total += 1;
        Ok(Slot {
            streams: self.clone(),
            account: account.to_owned(),
        })
    }

    /// Streams open now, in all.
    #[must_use]
    pub fn open_now(&self) -> usize {
        self.lock().0
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.streams.lock();
        let (total, by_account) = &mut *open;
        *total -= 1;
        if let Some(n) = by_account.get_mut(&self.account) {
            *n -= 1;
            if *n == 0 {
                by_account.remove(&self.account);
            }
        }
    }
}

/// The video ids of the query's `videos` (comma-separated, each once).
fn video_ids(query: &Query) -> Result<Vec<String>, ApiError> {
    let list = query.get("videos").unwrap_or_default();
    let mut ids: Vec<String> = Vec::new();
    for id in list.split(',').filter(|id| !id.is_empty()) {
        media::check_id("videos", id).map_err(ApiError::bad_request)?;
        if !ids.iter().any(|known| known == id) {
            ids.push(id.to_owned());
        }
    }
    if ids.is_empty() {
        return Err(ApiError::bad_request(
            "videos: name 1 to 8 video ids, comma-separated",
        ));
    }
    if ids.len() > MAX_VIDEOS {
        return Err(ApiError::bad_request(format!(
            "videos: at most {MAX_VIDEOS} per stream"
        )));
    }
    Ok(ids)
}

fn event(name: &'static str, data: &Value) -> Event {
    Event::default().event(name).data(data.to_string())
}

/// Whether the video has its outcome.
fn settled(v: &Video) -> bool {
    matches!(
        VideoState::try_from(v.state),
        Ok(VideoState::Ready | VideoState::Failed)
    )
}

/// A job update as the stream shows it.
#[must_use]
pub fn job_json(video_id: &str, p: &JobProgress) -> Value {
    let state = JobState::try_from(p.state).map_or("unspecified".to_owned(), |s| {
        enum_name(s.as_str_name(), "JOB_STATE_")
    });
    json!({
        "video_id": video_id,
        "job_id": p.job_id,
        "state": state,
        "progress_percent": p.progress_percent,
        "attempts": p.attempts,
        "message": p.message,
        "terminal": p.terminal,
    })
}

/// Where one video's follower is.
enum Step {
    /// Read the record (`settling`: the job ended, this many reads made).
    Read { settling: Option<u32> },
    /// Start watching the job.
    Watch,
    /// Follow the watch.
    Follow(Box<tonic::Streaming<JobProgress>>),
    /// Nothing more to send.
    Done,
}

/// One video's updates.
struct Follower {
    api: Api,
    user: String,
    video_id: String,
    step: Step,
    /// The last record sent (its state and reason), to send only changes.
    sent: Option<(i32, String)>,
    failures: u32,
    backoff: Duration,
}

impl Follower {
    /// Waits the backoff (then doubles it).
    async fn back_off(&mut self) {
        rt::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    /// A failure: `None` to go on, or the error event that ends it.
    fn failed(&mut self, e: &ApiError) -> Option<Event> {
        self.failures += 1;
        if self.failures < MAX_FAILURES {
            return None;
        }
        self.step = Step::Done;
        Some(event(
            "error",
            &json!({"video_id": self.video_id, "error": e.message}),
        ))
    }

    /// The next event, `None` once done.
    async fn next(&mut self) -> Option<Event> {
        loop {
            match std::mem::replace(&mut self.step, Step::Done) {
                Step::Done => return None,
                Step::Read { settling } => {
                    if let Some(n @ 1..) = settling {
                        rt::sleep(Duration::from_millis(100 << n.min(4))).await;
                    }
                    let video = match fresh(&self.api, &self.video_id).await {
                        Ok(v) if access::may_view(&v, Some(&self.user)) => v,
                        Err(e) if e.status != StatusCode::NOT_FOUND => {
                            if let Some(end) = self.failed(&e) {
                                return Some(end);
                            }
                            self.back_off().await;
                            self.step = Step::Read { settling };
                            continue;
                        }
                        // Deleted, or no longer visible to this user.
                        _ => {
                            return Some(event("gone", &json!({"video_id": self.video_id})));
                        }
                    };
                    self.failures = 0;
                    let done = settled(&video) || settling.is_some_and(|n| n >= SETTLE_READS);
                    self.step = match settling {
                        _ if done => Step::Done,
                        Some(n) => Step::Read {
                            settling: Some(n + 1),
                        },
                        None => Step::Watch,
                    };
                    let now = (video.state, video.failure_reason.clone());
                    if self.sent.as_ref() != Some(&now) || done {
                        self.sent = Some(now);
                        return Some(event("video", &video_json(&video)));
                    }
                }
                Step::Watch => {
                    let mut req = tonic::Request::new(WatchJobRequest {
                        job_id: media::transcode_job_id(&self.video_id),
                    });
                    req.set_timeout(WATCH_CALL);
                    let watched = match self.api.runtime.pool.worker().await {
                        Ok(mut worker) => worker.watch_job(req).await.map_err(ApiError::from),
                        Err(e) => Err(ApiError::from(e)),
                    };
                    match watched {
                        Ok(watch) => {
                            self.backoff = FIRST_BACKOFF;
                            self.step = Step::Follow(Box::new(watch.into_inner()));
                        }
                        Err(e) => {
                            // NOT_FOUND: the job is not submitted yet (the
                            // video is queued); look again a little later.
                            if e.status != StatusCode::NOT_FOUND
                                && let Some(end) = self.failed(&e)
                            {
                                return Some(end);
                            }
                            self.back_off().await;
                            self.step = Step::Read { settling: None };
                        }
                    }
                }
                Step::Follow(mut watch) => match watch.message().await {
                    Ok(Some(update)) => {
                        self.failures = 0;
                        self.step = if update.terminal {
                            Step::Read { settling: Some(0) }
                        } else {
                            Step::Follow(watch)
                        };
                        return Some(event("job", &job_json(&self.video_id, &update)));
                    }
                    // The watch ended before the job did: read the record
                    // and watch again, after a pause.
                    Ok(None) => {
                        self.back_off().await;
                        self.step = Step::Read { settling: None };
                    }
                    Err(status)
                        if matches!(
                            status.code(),
                            tonic::Code::DeadlineExceeded | tonic::Code::Aborted
                        ) =>
                    {
                        self.step = Step::Watch;
                    }
                    Err(status) => {
                        if let Some(end) = self.failed(&ApiError::from(status)) {
                            return Some(end);
                        }
                        self.back_off().await;
                        self.step = Step::Read { settling: None };
                    }
                },
            }
        }
    }
}

/// Every video's updates, merged, with keep-alives, an end and a life.
struct Feed {
    videos: SelectAll<BoxStream<'static, Event>>,
    until: Instant,
    done: bool,
    _slot: Slot,
}

fn end(reason: &str) -> Event {
    event("end", &json!({ "reason": reason }))
}

async fn next_event(mut feed: Feed) -> Option<(Result<Event, Infallible>, Feed)> {
    if feed.done {
        return None;
    }
    let now = rt::now();
    let left = feed.until.saturating_duration_since(now);
    let ev = match rt::timeout(KEEP_ALIVE.min(left), feed.videos.next()).await {
        Ok(Some(ev)) => ev,
        Ok(None) => {
            feed.done = true;
            end("settled")
        }
        Err(_) if rt::now() >= feed.until => {
            feed.done = true;
            end("expired")
        }
        Err(_) => Event::default().comment("keep-alive"),
    };
    Some((Ok(ev), feed))
}

/// `GET /v1/events?videos=<id>,...`
pub async fn events(
    State(api): State<Api>,
    user: Option<Extension<AuthUser>>,
    uri: Uri,
) -> Result<Response, ApiError> {
    let Some(user) = access::user_of(user.as_ref()).map(str::to_owned) else {
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "sign in first"));
    };
    let ids = video_ids(&Query::parse(uri.query())?)?;
    let slot = api.streams.open(&user)?;
    for id in &ids {
        access::viewable(&api, id, Some(&user)).await?;
    }
    let mut videos = SelectAll::new();
    for video_id in ids {
        let follower = Follower {
            api: api.clone(),
            user: user.clone(),
            video_id,
            step: Step::Read { settling: None },
            sent: None,
            failures: 0,
            backoff: FIRST_BACKOFF,
        };
        videos.push(
            stream::unfold(follower, |mut f| async move {
                let ev = f.next().await?;
                Some((ev, f))
            })
            .boxed(),
        );
    }
    let feed = Feed {
        videos,
        until: rt::now() + MAX_STREAM,
        done: false,
        _slot: slot,
    };
    let mut res = Sse::new(stream::unfold(feed, next_event)).into_response();
    let headers = res.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // nginx would otherwise hold the events back in its buffer.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_bounded_per_account_and_in_all() {
        let streams = Arc::new(Streams::new(Limits {
            per_account: 2,
            total: 3,
        }));
        let a1 = streams.open("a").expect("a 1");
        let _a2 = streams.open("a").expect("a 2");
        let e = streams.open("a").expect_err("a's share");
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        let _b1 = streams.open("b").expect("b has its own");
        let e = streams.open("c").expect_err("the total");
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(streams.open_now(), 3);
        drop(a1);
        let _a3 = streams.open("a").expect("given back");
        assert_eq!(streams.lock().1.len(), 2, "a and b");
    }

    #[test]
    fn the_query_names_one_to_eight_videos() {
        let ids = |q: &str| video_ids(&Query::parse(Some(q)).expect("query"));
        assert_eq!(ids("videos=a,b,a").expect("ok"), vec!["a", "b"]);
        assert_eq!(ids("videos=a,,b,").expect("ok"), vec!["a", "b"]);
        for bad in ["", "videos=", "videos=a/b", "videos=1,2,3,4,5,6,7,8,9"] {
            let e = ids(bad).expect_err(bad);
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad}");
        }
    }

    #[test]
    fn job_updates_render_lower_case() {
        let p = JobProgress {
            job_id: "transcode-v1".into(),
            state: JobState::Leased as i32,
            progress_percent: 42,
            ..JobProgress::default()
        };
        let j = job_json("v1", &p);
        assert_eq!(j["state"], "leased");
        assert_eq!(j["progress_percent"], 42);
        assert_eq!(j["video_id"], "v1");
    }
}
