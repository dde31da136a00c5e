//! What every worker job store must do, whatever keeps the jobs: run by the
//! SQLite store's unit tests and by `tests/nats_job_queue.rs` on JetStream.
//! Each check takes an empty store whose limit on unfinished jobs is
//! [`MAX_ACTIVE`].

use streamgate::rt;
use streamgate::services::worker::WorkerError;
use streamgate::services::worker::queue::{Job, JobState};
use streamgate::services::worker::store::{Filter, Store};

/// The limit on unfinished jobs the checks expect.
pub const MAX_ACTIVE: u64 = 5;

/// A queued job `id`, due `delay_ms` from now.
#[must_use]
pub fn job(id: &str, max_attempts: u32, delay_ms: u64) -> Job {
    Job::new(
        id.to_owned(),
        "transcode".to_owned(),
        "{}".to_owned(),
        max_attempts,
        String::new(),
        rt::unix_ms(),
        delay_ms,
    )
}

/// A second submission with a known id returns the stored job unchanged;
/// past the limit nothing is stored; a finished job frees its place.
///
/// # Panics
/// When the store breaks the rule.
pub async fn submissions_deduplicate_and_respect_the_limit(store: &Store) {
    let (first, dup) = store.submit(job("same", 3, 0), MAX_ACTIVE).await.unwrap();
    assert!(!dup, "a new job is not a duplicate");
    let (again, dup) = store.submit(job("same", 5, 0), MAX_ACTIVE).await.unwrap();
    assert!(dup, "a known id is a duplicate");
    assert_eq!(again, first, "the stored job is returned unchanged");
    for i in 1..MAX_ACTIVE {
        store
            .submit(job(&format!("fill{i}"), 3, 0), MAX_ACTIVE)
            .await
            .unwrap();
    }
    assert_eq!(
        store.submit(job("over", 3, 0), MAX_ACTIVE).await,
        Err(WorkerError::Full(MAX_ACTIVE))
    );
    assert_eq!(
        store.get("over").await.unwrap(),
        None,
        "refused, not stored"
    );
    store
        .update("same", |j| j.cancel(rt::unix_ms(), ""))
        .await
        .unwrap();
    let (over, dup) = store.submit(job("over", 3, 0), MAX_ACTIVE).await.unwrap();
    assert!(!dup && over.state == JobState::Queued, "{over:?}");
}

/// Lists are newest first, page by the returned sequence number, filter by
/// state and kind.
///
/// # Panics
/// When the store breaks the rule.
pub async fn lists_page_newest_first_with_filters(store: &Store) {
    for i in 0..5 {
        store
            .submit(job(&format!("j{i}"), 3, 0), MAX_ACTIVE)
            .await
            .unwrap();
    }
    store
        .update("j1", |j| j.cancel(rt::unix_ms(), ""))
        .await
        .unwrap();
    let (page, next) = store.list(Filter::default(), 2).await.unwrap();
    let ids: Vec<_> = page.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(ids, ["j4", "j3"]);
    let rest = Filter {
        before_seq: next,
        ..Filter::default()
    };
    let (page, next) = store.list(rest, 3).await.unwrap();
    let ids: Vec<_> = page.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(ids, ["j2", "j1", "j0"]);
    assert_eq!(next, None, "the last page says so");
    let cancelled = Filter {
        state: Some(JobState::Cancelled),
        ..Filter::default()
    };
    let (page, _) = store.list(cancelled, 10).await.unwrap();
    let ids: Vec<_> = page.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(ids, ["j1"]);
    let other = Filter {
        kind: Some("other".into()),
        ..Filter::default()
    };
    assert!(store.list(other, 10).await.unwrap().0.is_empty());
}
