//! The runtime seam: the only module that touches time, spawning, randomness
//! and sockets. Real tokio normally, madsim under `cfg(madsim)`, so the same
//! service code runs in production and in the deterministic simulator.
//!
//! `clippy.toml` bans the direct calls everywhere else; this file is allowed
//! to make them.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use std::time::Instant;

pub mod coverage;
pub mod faults;
#[cfg(not(madsim))]
pub mod process;
pub mod trace;
pub mod transport;
pub mod watch;

#[cfg(not(madsim))]
mod edge;
#[cfg(not(madsim))]
pub mod mtls;
#[cfg(madsim)]
mod sim_transport;

#[cfg(madsim)]
pub use madsim::task::{JoinError, JoinHandle};
/// A spawned task's handle (abort it, or await its result).
#[cfg(not(madsim))]
pub use tokio::task::{JoinError, JoinHandle};

/// A boxed error, as tower and tonic pass them around.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The deadline of [`timeout`] passed before the future completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("deadline elapsed")]
pub struct Elapsed;

/// The current instant of the runtime's monotonic clock (tokio's clock, so
/// paused-time tests see it move; madsim's simulated clock in simulation).
#[must_use]
pub fn now() -> Instant {
    #[cfg(not(madsim))]
    {
        tokio::time::Instant::now().into_std()
    }
    #[cfg(madsim)]
    {
        madsim::time::Instant::now()
    }
}

/// The wall clock (simulated under madsim).
#[must_use]
pub fn system_now() -> SystemTime {
    #[cfg(not(madsim))]
    {
        SystemTime::now()
    }
    #[cfg(madsim)]
    {
        madsim::time::TimeHandle::current().now_time()
    }
}

/// Milliseconds since the Unix epoch on the runtime's wall clock.
#[must_use]
pub fn unix_ms() -> u64 {
    unix_ms_of(system_now())
}

/// The runtime's wall clock as an HTTP-date (`Date` of a response).
#[must_use]
pub fn http_date_now() -> String {
    httpdate::fmt_http_date(system_now())
}

/// Nanoseconds since the Unix epoch on the runtime's wall clock (span
/// timestamps).
#[must_use]
pub fn unix_nanos() -> u64 {
    system_now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Milliseconds since the Unix epoch of `time` (a file's modification
/// time, say); 0 before it.
#[must_use]
pub fn unix_ms_of(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Sleeps for `duration` on the runtime's clock.
pub async fn sleep(duration: Duration) {
    #[cfg(not(madsim))]
    tokio::time::sleep(duration).await;
    #[cfg(madsim)]
    madsim::time::sleep(duration).await;
}

/// Sleeps until `deadline` on the runtime's clock.
pub async fn sleep_until(deadline: Instant) {
    #[cfg(not(madsim))]
    tokio::time::sleep_until(deadline.into()).await;
    #[cfg(madsim)]
    madsim::time::sleep_until(deadline).await;
}

/// Runs `fut` for at most `duration`.
///
/// # Errors
/// [`Elapsed`] when the duration passed first; `fut` is dropped then.
pub async fn timeout<F: Future>(duration: Duration, fut: F) -> Result<F::Output, Elapsed> {
    #[cfg(not(madsim))]
    let result = tokio::time::timeout(duration, fut).await;
    #[cfg(madsim)]
    let result = madsim::time::timeout(duration, fut).await;
    result.map_err(|_| Elapsed)
}

/// Runs `fut` until `deadline` at the latest: a future with a name, so a
/// layer's response future can hold it without a box (the server deadline
/// layer runs on every call).
///
/// # Errors
/// [`Elapsed`] when the deadline passed first (polled after `fut`, so a
/// future ready at the deadline wins, as with tokio's and madsim's own).
pub fn timeout_at<F: Future>(deadline: Instant, fut: F) -> TimeoutAt<F> {
    #[cfg(not(madsim))]
    let sleep = tokio::time::sleep_until(deadline.into());
    #[cfg(madsim)]
    let sleep = madsim::time::sleep_until(deadline);
    TimeoutAt { fut, sleep }
}

#[cfg(not(madsim))]
type Sleep = tokio::time::Sleep;
#[cfg(madsim)]
type Sleep = madsim::time::Sleep;

pin_project_lite::pin_project! {
    /// See [`timeout_at`].
    #[must_use = "futures do nothing unless polled"]
    pub struct TimeoutAt<F> {
        #[pin]
        fut: F,
        #[pin]
        sleep: Sleep,
    }
}

impl<F> std::fmt::Debug for TimeoutAt<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimeoutAt").finish_non_exhaustive()
    }
}

impl<F: Future> Future for TimeoutAt<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = self.project();
        if let std::task::Poll::Ready(out) = this.fut.poll(cx) {
            return std::task::Poll::Ready(Ok(out));
        }
        this.sleep.poll(cx).map(|()| Err(Elapsed))
    }
}

/// Spawns a task on the runtime (on the current simulated node under madsim).
pub fn spawn<F>(fut: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    #[cfg(not(madsim))]
    {
        tokio::spawn(fut)
    }
    #[cfg(madsim)]
    {
        madsim::task::spawn(fut)
    }
}

/// Runs blocking work (file I/O, SQLite) off the async workers; under the
/// simulator it runs inline, keeping the run deterministic (after the
/// delay of a slow disk, when the simulation put one on the node). In
/// fuzzing builds (`cargo fuzz` sets `--cfg fuzzing`) it runs inline too:
/// the harnesses drive in-memory stores on one thread, where a hand-off to
/// the blocking pool and back was about a tenth of each execution, and a
/// panic in the closure is then the fuzzer's finding rather than an error.
///
/// # Errors
/// The closure panicked (normal runtime only).
pub async fn blocking<F, T>(f: F) -> Result<T, JoinError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    #[cfg(all(fuzzing, not(madsim)))]
    {
        Ok(f())
    }
    #[cfg(not(any(fuzzing, madsim)))]
    {
        tokio::task::spawn_blocking(f).await
    }
    #[cfg(madsim)]
    {
        // A slow disk (a simulated fault) makes disk work take longer.
        if let Some(faults::DiskFault::Slow(d)) = faults::disk_fault() {
            madsim::time::sleep(d).await;
        }
        Ok(f())
    }
}

/// The runtime's random number generator: OS-seeded normally, driven by the
/// simulation seed under madsim. Pass it to the sans-I/O cores as `&mut impl Rng`.
#[must_use]
pub fn rng() -> impl rand::RngCore {
    #[cfg(not(madsim))]
    {
        rand::thread_rng()
    }
    #[cfg(madsim)]
    {
        madsim::rand::thread_rng()
    }
}

/// A random `u64` from [`rng`].
#[must_use]
pub fn random_u64() -> u64 {
    rng().next_u64()
}

/// A random 128-bit identifier as 32 lowercase hex digits.
#[must_use]
pub fn random_hex128() -> String {
    let mut rng = rng();
    format!("{:016x}{:016x}", rng.next_u64(), rng.next_u64())
}

use rand::RngCore as _;
