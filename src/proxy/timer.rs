//! One timer per client connection for the waits of its requests, which never overlap: the
//! wait for the next request, and on the fast path the waits for the upstream (sending the
//! request, its answer, its body).
//!
//! A tokio timer made for each wait is registered with the runtime's timer wheel when it is
//! first polled and taken out again when it is dropped, with a clock read each: for the two
//! waits of a request, about 700 instructions (measured: 28,418 → 27,740 a request, see
//! bench/RESULTS.md). [`Timer`] keeps one registered timer instead and moves it
//! lazily: a wait whose deadline is later than the timer's leaves it where it is, and when it
//! fires early the wait's own deadline is looked at and the timer set to it. Waits of a busy
//! connection then touch the wheel about once per timeout period instead of twice per
//! request; a wait that ends at its first poll reads no clock and arms nothing.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// A connection's timer (see the module documentation). Nothing is allocated until a wait
/// has to wait.
#[derive(Debug, Default)]
pub struct Timer {
    /// The registered timer: fires at or before `want` while a wait is on.
    sleep: Option<Pin<Box<Sleep>>>,
    /// The deadline of the wait in progress (or of the last one).
    want: Option<Instant>,
}

/// A wait ran past its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimedOut;

impl Timer {
    /// A timer with nothing armed.
    pub fn new() -> Timer {
        Timer::default()
    }

    /// Runs `fut` for at most `limit` from the moment it first has to wait: `Err(TimedOut)`
    /// when it is still not done by then (it is dropped). A `fut` that is ready at its first
    /// poll costs no clock read and no timer.
    pub async fn within<F: Future>(
        &mut self,
        limit: Duration,
        fut: F,
    ) -> Result<F::Output, TimedOut> {
        let mut fut = std::pin::pin!(fut);
        let mut armed = false;
        std::future::poll_fn(|cx| {
            if let Poll::Ready(v) = fut.as_mut().poll(cx) {
                return Poll::Ready(Ok(v));
            }
            if !armed {
                armed = true;
                self.arm(Instant::now() + limit);
            }
            self.poll_expired(cx)
        })
        .await
    }

    /// Makes the timer fire by `want`: moved only when it would fire later.
    fn arm(&mut self, want: Instant) {
        self.want = Some(want);
        match self.sleep.as_mut() {
            Some(s) if s.deadline() <= want => {}
            Some(s) => s.as_mut().reset(want),
            None => self.sleep = Some(Box::pin(tokio::time::sleep_until(want))),
        }
    }

    /// `Ready` once the wait's deadline has passed; a timer that fired early is set again to
    /// the deadline.
    fn poll_expired<T>(&mut self, cx: &mut Context<'_>) -> Poll<Result<T, TimedOut>> {
        let (Some(sleep), Some(want)) = (self.sleep.as_mut(), self.want) else {
            return Poll::Pending;
        };
        while sleep.as_mut().poll(cx).is_ready() {
            if Instant::now() >= want {
                return Poll::Ready(Err(TimedOut));
            }
            sleep.as_mut().reset(want);
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Times out after `limit` on `t`, not before: the elapsed time.
    async fn timed_out(t: &mut Timer, limit: Duration) -> Duration {
        let start = Instant::now();
        let never = std::future::pending::<()>();
        assert_eq!(t.within(limit, never).await, Err(TimedOut));
        let took = start.elapsed();
        assert!(took >= limit, "timed out after {took:?}, before {limit:?}");
        took
    }

    /// A ready future needs no timer; a wait times out at its own deadline, also when the
    /// timer was left at an earlier one (it fires early and is moved on) or at a much later
    /// one (moved back); a wait that ends in time returns its value.
    #[tokio::test]
    async fn waits_end_at_their_own_deadline() {
        let mut t = Timer::new();
        assert_eq!(t.within(Duration::from_secs(1), async { 7 }).await, Ok(7));
        assert!(t.sleep.is_none(), "nothing armed for a ready future");

        timed_out(&mut t, Duration::from_millis(100)).await;

        t.arm(Instant::now() + Duration::from_millis(20));
        timed_out(&mut t, Duration::from_millis(200)).await;

        t.arm(Instant::now() + Duration::from_secs(60));
        let took = timed_out(&mut t, Duration::from_millis(100)).await;
        assert!(took < Duration::from_secs(30), "moved back: {took:?}");

        let soon = tokio::time::sleep(Duration::from_millis(50));
        assert_eq!(t.within(Duration::from_secs(10), soon).await, Ok(()));
    }
}
