//! The work-queue contract: what the worker's JetStream job store relies on
//! of its stream and consumer ([`WorkQueue`]), run against the real NATS
//! server (in `tests/nats_job_queue.rs`) and against the simulator's
//! modelled node ([`crate::queue_node`], in `sim/`), so the model cannot
//! drift from the server. The surprises the team met on the real server
//! are cases here: a NAK with a zero delay is held until the ack wait, and
//! a delayed NAK's redelivery counts as a delivery.

use std::time::Duration;

use streamgate::rt;
use streamgate::services::worker::store::jetstream::queue::{
    Delivery, Published, QueueError, Settle, WorkQueue,
};

/// Most messages the queue under test holds (and its max ack pending).
pub const MAX_MESSAGES: u64 = 4;
/// The ack wait of the queue under test.
pub const ACK_WAIT: Duration = Duration::from_secs(1);
/// Slack on the server's timers (the real server checks ack waits on its
/// own ticks).
const SLACK: Duration = Duration::from_millis(600);

/// A queue under test: the seam, and the name its subjects begin with.
#[derive(Clone, Copy)]
pub struct Queue<'a> {
    /// The seam.
    pub queue: &'a dyn WorkQueue,
    /// Its subjects are `<name>.dispatch.*`.
    pub name: &'a str,
}

impl Queue<'_> {
    fn subject(&self, id: &str) -> String {
        format!("{}.dispatch.{id}", self.name)
    }

    async fn publish(&self, id: &str) -> Result<Published, QueueError> {
        self.queue.publish(&self.subject(id)).await
    }

    async fn fetch(&self) -> Option<Delivery> {
        self.queue.fetch().await.expect("fetch")
    }

    async fn settle(&self, d: &Delivery, how: Settle) {
        self.queue.settle(d, how, true).await.expect("settle");
    }

    /// Takes the one message `id` the queue should deliver now.
    async fn take(&self, id: &str, delivered: u64, why: &str) -> Delivery {
        let d = self
            .fetch()
            .await
            .unwrap_or_else(|| panic!("{why}: nothing"));
        assert_eq!(
            (d.subject.as_str(), d.delivered),
            (self.subject(id).as_str(), delivered),
            "{why}"
        );
        d
    }

    async fn nothing(&self, why: &str) {
        let got = self.fetch().await;
        assert!(got.is_none(), "{why}: got {got:?}");
    }
}

/// Runs every case on `q`, which must be empty, take the subjects
/// `<name>.dispatch.*`, and hold [`MAX_MESSAGES`] with an ack wait of
/// [`ACK_WAIT`].
pub async fn run_all(q: Queue<'_>) {
    one_message_per_subject_and_a_limit_in_all(q).await;
    an_unsettled_message_comes_back_after_the_ack_wait(q).await;
    progress_restarts_the_ack_wait(q).await;
    a_nak_gives_back_at_once_or_after_its_delay(q).await;
    a_zero_delay_nak_is_held_until_the_ack_wait(q).await;
    a_purge_removes_a_delivered_message(q).await;
}

/// A subject holds one message; the stream `MAX_MESSAGES`; both refuse
/// more; an acknowledged message is gone and frees both.
pub async fn one_message_per_subject_and_a_limit_in_all(q: Queue<'_>) {
    q.nothing("an empty queue delivers nothing").await;
    assert_eq!(q.publish("a1").await, Ok(Published::Queued));
    assert_eq!(
        q.publish("a1").await,
        Ok(Published::AlreadyQueued),
        "one message per subject"
    );
    for i in 2..=MAX_MESSAGES {
        assert_eq!(q.publish(&format!("a{i}")).await, Ok(Published::Queued));
    }
    assert_eq!(
        q.publish("a_over").await,
        Ok(Published::Full),
        "the stream is full"
    );
    let mut seen = Vec::new();
    for _ in 0..MAX_MESSAGES {
        let d = q.fetch().await.expect("a queued message");
        assert_eq!(d.delivered, 1, "first delivery of {}", d.subject);
        seen.push(d);
    }
    let mut subjects: Vec<&str> = seen.iter().map(|d| d.subject.as_str()).collect();
    subjects.sort_unstable();
    let want: Vec<String> = (1..=MAX_MESSAGES)
        .map(|i| q.subject(&format!("a{i}")))
        .collect();
    assert_eq!(subjects, want, "each message delivered once, in order");
    q.nothing("every message is out").await;
    for d in &seen {
        q.settle(d, Settle::Ack).await;
    }
    q.nothing("acknowledged messages are gone").await;
    assert_eq!(
        q.publish("a1").await,
        Ok(Published::Queued),
        "an acknowledged message frees its subject"
    );
    let d = q.take("a1", 1, "a new message on a used subject").await;
    q.settle(&d, Settle::Ack).await;
}

/// A delivered message no one settles is delivered again once the ack wait
/// ends, counted as a second delivery.
pub async fn an_unsettled_message_comes_back_after_the_ack_wait(q: Queue<'_>) {
    assert_eq!(q.publish("b1").await, Ok(Published::Queued));
    let _first = q.take("b1", 1, "first delivery").await;
    q.nothing("a delivered message waits for its ack wait")
        .await;
    rt::sleep(ACK_WAIT + SLACK).await;
    let again = q.take("b1", 2, "delivered again after the ack wait").await;
    q.settle(&again, Settle::Ack).await;
    q.nothing("acknowledged").await;
}

/// Progress restarts the ack wait: a message kept in progress is not
/// delivered again past its first ack wait, and is once progress stops.
pub async fn progress_restarts_the_ack_wait(q: Queue<'_>) {
    assert_eq!(q.publish("c1").await, Ok(Published::Queued));
    let d = q.take("c1", 1, "first delivery").await;
    let step = ACK_WAIT * 6 / 10;
    rt::sleep(step).await;
    q.settle(&d, Settle::Progress).await;
    rt::sleep(step).await;
    q.settle(&d, Settle::Progress).await;
    q.nothing("in progress past its first ack wait").await;
    rt::sleep(ACK_WAIT + SLACK).await;
    let again = q.take("c1", 2, "progress stopped").await;
    q.settle(&again, Settle::Ack).await;
}

/// A plain NAK makes the message due at once; one with a delay after the
/// delay, and that redelivery counts.
pub async fn a_nak_gives_back_at_once_or_after_its_delay(q: Queue<'_>) {
    assert_eq!(q.publish("d1").await, Ok(Published::Queued));
    let d = q.take("d1", 1, "first delivery").await;
    q.settle(&d, Settle::Nak(None)).await;
    let d = q.take("d1", 2, "a plain NAK gives it back at once").await;
    let delay = ACK_WAIT / 2;
    q.settle(
        &d,
        Settle::Nak(Some(u64::try_from(delay.as_millis()).unwrap_or(500))),
    )
    .await;
    q.nothing("a delayed NAK holds it").await;
    rt::sleep(delay + SLACK).await;
    let d = q.take("d1", 3, "due after the NAK's delay").await;
    q.settle(&d, Settle::Ack).await;
}

/// nats-server 2.9 holds a message NAKed with a zero delay until the ack
/// wait ends (why the store sends a plain NAK for a due time passed).
pub async fn a_zero_delay_nak_is_held_until_the_ack_wait(q: Queue<'_>) {
    assert_eq!(q.publish("e1").await, Ok(Published::Queued));
    let d = q.take("e1", 1, "first delivery").await;
    q.settle(&d, Settle::Nak(Some(0))).await;
    q.nothing("a zero-delay NAK is not redelivered at once")
        .await;
    rt::sleep(ACK_WAIT + SLACK).await;
    let d = q.take("e1", 2, "due after the ack wait").await;
    q.settle(&d, Settle::Ack).await;
}

/// A purge removes a subject's message even while it is delivered; the
/// old delivery's settlement then changes nothing, not even a new message
/// on the same subject.
pub async fn a_purge_removes_a_delivered_message(q: Queue<'_>) {
    assert_eq!(q.publish("f1").await, Ok(Published::Queued));
    let old = q.take("f1", 1, "first delivery").await;
    q.queue.purge(&q.subject("f1")).await.expect("purge");
    assert_eq!(
        q.publish("f1").await,
        Ok(Published::Queued),
        "the purge freed the subject"
    );
    q.settle(&old, Settle::Ack).await;
    let new = q
        .take("f1", 1, "the new message outlives the old ack")
        .await;
    q.settle(&new, Settle::Ack).await;
    q.queue
        .purge(&q.subject("none"))
        .await
        .expect("purging nothing");
    q.nothing("all settled").await;
}
