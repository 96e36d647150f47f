//! The server's clock: wall time plus an offset that tests can advance.
//!
//! Token TTLs, lease expiry and JWT `exp` checks all read this clock, so a test can move time
//! forward by an hour without sleeping. Latency injection and socket timeouts use real time.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::Deserialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Movement of the server's clock between calls to [`Clock::advance`].
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ClockMode {
    /// Wall time plus the advanced offset: TTLs also run out in real time.
    #[default]
    System,
    /// Time stays at the start time and moves only by [`Clock::advance`].
    Frozen,
}

/// A shared clock. Clones see the same time.
#[derive(Clone, Debug)]
pub struct Clock {
    inner: Arc<Mutex<ClockState>>,
}

#[derive(Debug)]
struct ClockState {
    mode: ClockMode,
    start: SystemTime,
    offset: Duration,
}

impl Clock {
    /// Creates a clock that starts at the current wall time.
    pub fn new(mode: ClockMode) -> Clock {
        Clock {
            inner: Arc::new(Mutex::new(ClockState {
                mode,
                start: SystemTime::now(),
                offset: Duration::ZERO,
            })),
        }
    }

    /// Returns the current time on this clock.
    pub fn now(&self) -> SystemTime {
        let state = self.inner.lock();
        let base = match state.mode {
            ClockMode::System => SystemTime::now(),
            ClockMode::Frozen => state.start,
        };
        base + state.offset
    }

    /// Moves the clock forward. Tokens and leases whose expiry passes are expired on the next
    /// request or control call that looks at them.
    pub fn advance(&self, by: Duration) {
        self.inner.lock().offset += by;
    }
}

/// Seconds since the Unix epoch, as Vault's `creation_time` and `server_time_utc` report.
pub(crate) fn unix_seconds(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// RFC 3339 in UTC with nanoseconds, the form of Vault's `created_time` and `expire_time`.
pub(crate) fn rfc3339(at: SystemTime) -> String {
    OffsetDateTime::from(at)
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// Seconds from `now` until `until`, rounded to the nearest second as Vault rounds TTLs;
/// zero when `until` has passed.
pub(crate) fn seconds_until(now: SystemTime, until: SystemTime) -> u64 {
    let left = until.duration_since(now).unwrap_or_default();
    (left + Duration::from_millis(500)).as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frozen_clock_moves_only_when_advanced() {
        let clock = Clock::new(ClockMode::Frozen);
        let first = clock.now();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(clock.now(), first);
        clock.advance(Duration::from_secs(90));
        assert_eq!(clock.now(), first + Duration::from_secs(90));
    }

    #[test]
    fn system_clock_adds_offset_to_wall_time() {
        let clock = Clock::new(ClockMode::System);
        clock.advance(Duration::from_secs(3600));
        let ahead = clock.now().duration_since(SystemTime::now()).unwrap();
        assert!(ahead > Duration::from_secs(3590), "offset lost: {ahead:?}");
    }

    #[test]
    fn rfc3339_is_utc_with_z_suffix() {
        let at = UNIX_EPOCH + Duration::new(1_521_685_446, 945_319_214);
        assert_eq!(rfc3339(at), "2018-03-22T02:24:06.945319214Z");
    }
}
