//! Request bodies that must arrive whole by a deadline: every body but an
//! upload's (which has its own rule: 60 s without a byte) is wrapped by the
//! router's limits, so a client that sends part of a JSON body and goes
//! quiet is answered 408 instead of holding its request open. The deadline
//! runs on the runtime's clock, so it holds in the simulator too.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http_body::{Frame, SizeHint};

use crate::rt::{self, BoxError, Instant};

/// The body did not arrive whole in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("body: not received whole within {} ms", .after.as_millis())]
pub struct BodyTimedOut {
    /// The time it had.
    pub after: Duration,
}

impl BodyTimedOut {
    /// The deadline error somewhere in `e`'s chain, if that is why it failed.
    #[must_use]
    pub fn find(e: &(dyn std::error::Error + 'static)) -> Option<Self> {
        std::iter::successors(Some(e), |e| e.source())
            .find_map(|e| e.downcast_ref::<Self>().copied())
    }
}

type Sleep = Pin<Box<dyn Future<Output = ()> + Send>>;

pin_project_lite::pin_project! {
    /// A body that fails with [`BodyTimedOut`] unless it ends by its deadline.
    pub struct Deadline {
        #[pin]
        inner: Body,
        deadline: Instant,
        after: Duration,
        // Made when the body first has to wait: a body that is there at
        // once costs no timer.
        sleep: Option<Sleep>,
        done: bool,
    }
}

impl Deadline {
    /// `inner`, to end within `after` from now.
    #[must_use]
    pub fn new(inner: Body, after: Duration) -> Self {
        Self {
            inner,
            deadline: rt::now() + after,
            after,
            sleep: None,
            done: false,
        }
    }
}

impl http_body::Body for Deadline {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if *this.done {
            return Poll::Ready(None);
        }
        if let Poll::Ready(frame) = this.inner.poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(BoxError::from)));
        }
        let deadline = *this.deadline;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(rt::sleep_until(deadline)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                *this.done = true;
                Poll::Ready(Some(Err(Box::new(BodyTimedOut { after: *this.after }))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt as _;
    use http_body_util::BodyExt as _;

    fn stalled() -> Body {
        let first: Result<Bytes, std::io::Error> = Ok(Bytes::from_static(b"{\"email\":"));
        Body::from_stream(futures::stream::iter([first]).chain(futures::stream::pending()))
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stops_fails_at_its_deadline() {
        let after = Duration::from_secs(10);
        let started = rt::now();
        let err = Body::new(Deadline::new(stalled(), after))
            .collect()
            .await
            .expect_err("never ends");
        assert_eq!(rt::now() - started, after);
        assert_eq!(BodyTimedOut::find(&err), Some(BodyTimedOut { after }));
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_in_time_is_untouched() {
        let slow = futures::stream::unfold(0, |n| async move {
            if n == 3 {
                return None;
            }
            rt::sleep(Duration::from_secs(2)).await;
            Some((Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; 4])), n + 1))
        });
        let body = Body::new(Deadline::new(
            Body::from_stream(slow),
            Duration::from_secs(10),
        ));
        let bytes = body.collect().await.expect("in time").to_bytes();
        assert_eq!(bytes.len(), 12);
        let other = Body::new(Deadline::new(
            Body::from_stream(futures::stream::iter([Err::<Bytes, _>(
                std::io::Error::other("reset"),
            )])),
            Duration::from_secs(10),
        ))
        .collect()
        .await
        .expect_err("the body's own error");
        assert_eq!(BodyTimedOut::find(&other), None, "not a timeout");
    }
}
