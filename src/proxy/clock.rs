//! Cheap clock readings for what needs no better than a few milliseconds: the ages of idle
//! upstream connections and the `Date` header of fast-path responses.
//!
//! A precise reading (`Instant::now`, `SystemTime::now`) reads the CPU's time-stamp counter
//! through the vDSO: 29 ns a call on the bench VM, and a request read the clock about 11
//! times. The coarse clocks (`CLOCK_MONOTONIC_COARSE`, `CLOCK_REALTIME_COARSE`) return the
//! time of the kernel's last tick without touching the counter: 7 ns (same program, same VM:
//! bench/RESULTS.md, session 8). They lag the precise clocks by at most one tick (1-4 ms).

use std::cell::Cell;
use std::time::{Duration, UNIX_EPOCH};

/// Reads `clock` (the clocks used here are always available on Linux: it never fails).
fn read(clock: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; clock_gettime writes only into it.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// Monotonic time (since boot) as of the kernel's last tick: for ages of seconds.
pub fn coarse_monotonic() -> Duration {
    read(libc::CLOCK_MONOTONIC_COARSE)
}

/// Length of an HTTP date: `Mon, 30 Nov 2026 17:33:00 GMT`.
pub const HTTP_DATE_LEN: usize = 29;

thread_local! {
    /// The second the cached date is for, and the date.
    static DATE: Cell<(u64, [u8; HTTP_DATE_LEN])> = const { Cell::new((u64::MAX, [0; HTTP_DATE_LEN])) };
}

/// The current time as an HTTP date (IMF-fixdate), formatted once per second per thread.
pub fn http_date() -> [u8; HTTP_DATE_LEN] {
    let secs = read(libc::CLOCK_REALTIME_COARSE).as_secs();
    DATE.with(|d| {
        let (at, date) = d.get();
        if at == secs {
            return date;
        }
        let date = format_date(secs);
        d.set((secs, date));
        date
    })
}

/// `secs` since the epoch as an HTTP date.
fn format_date(secs: u64) -> [u8; HTTP_DATE_LEN] {
    let s = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs));
    let mut out = [b' '; HTTP_DATE_LEN];
    // Always 29 bytes for years 1970-9999.
    let n = s.len().min(HTTP_DATE_LEN);
    out[..n].copy_from_slice(&s.as_bytes()[..n]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seconds since the epoch by the precise clock.
    fn precise_secs() -> u64 {
        std::time::SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    #[test]
    fn dates_are_http_dates_of_now() {
        assert_eq!(&format_date(0), b"Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(
            &format_date(1_796_060_000),
            b"Mon, 30 Nov 2026 17:33:20 GMT"
        );
        let before = precise_secs();
        let d = http_date();
        let after = precise_secs();
        // The coarse clock lags by at most a tick: the date is of `before - 1` at the earliest.
        let ok: Vec<_> = (before.saturating_sub(1)..=after)
            .map(format_date)
            .collect();
        assert!(
            ok.contains(&d),
            "{:?} is not about now",
            String::from_utf8_lossy(&d)
        );
        assert_eq!(http_date().len(), HTTP_DATE_LEN);
    }

    #[test]
    fn the_coarse_clock_follows_the_precise_one() {
        let precise = read(libc::CLOCK_MONOTONIC);
        let coarse = coarse_monotonic();
        // Never ahead of the precise clock, and behind it by at most a tick (10 ms at HZ=100).
        assert!(
            coarse <= precise + Duration::from_millis(1),
            "{coarse:?} vs {precise:?}"
        );
        assert!(precise - coarse.min(precise) < Duration::from_millis(50));
        std::thread::sleep(Duration::from_millis(30));
        assert!(coarse_monotonic() > coarse, "the coarse clock moves");
    }
}
