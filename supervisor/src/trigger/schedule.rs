//! Clock and counter triggers: `schedule` (times of day), `interval` (age) and
//! `requests`, each limit with a per-worker jitter.
//!
//! IIS recycles every 29 h *from process start*, so the recycle time drifts by five
//! hours a day. appvisor's `schedule` is a wall-clock time of day, recomputed from the
//! local clock at every fire, so it never drifts. Daylight-saving transitions:
//!
//! - a time that does not exist that day (in the spring-forward gap, e.g. 02:30 when
//!   clocks jump from 02:00 to 03:00) fires once, at the same distance past the gap
//!   (03:30) — the day still gets its recycle, as with cron;
//! - a time that occurs twice (in the fall-back fold) fires once, at its first
//!   occurrence.
//!
//! Clock jumps (an NTP step, a hand-set clock, a VM resumed): [`ScheduleTimer`] sleeps
//! on the monotonic clock and re-reads the wall clock when it wakes, so a schedule
//! fires once per time of day — late after a forward jump past it, at the wall time
//! after a backward jump — never zero or twice. `interval` never reads the wall clock:
//! its deadline is an [`Instant`] (monotonic) from the worker's start.
//!
//! Jitter spreads workers apart so that a pool of N workers started together does not
//! recycle all at once: each worker draws its own extra in `0..=jitter`.

use std::time::{Duration, Instant};

use appvisor_config::TimeOfDay;
use jiff::civil;
use jiff::{ToSpan, Zoned};

use crate::reason::RecycleReason;

/// The first instant strictly after `now` at which one of `times` (local times of day in
/// `now`'s time zone) occurs, or `None` when `times` is empty.
pub fn next_schedule_fire(now: &Zoned, times: &[TimeOfDay]) -> Option<Zoned> {
    let tz = now.time_zone();
    let today = now.date();
    let mut best: Option<Zoned> = None;
    // Today and tomorrow always hold a candidate unless every time fell into a gap and
    // was mapped to an instant ≤ now; the day after is a safe bound.
    for days in 0..3i64 {
        let Ok(date) = today.checked_add(days.days()) else {
            continue;
        };
        for t in times {
            let Ok(time) = civil::Time::new(t.hour as i8, t.minute as i8, t.second as i8, 0) else {
                continue;
            };
            // `compatible`: gap → the later side (02:30 → 03:30), fold → the earlier
            // occurrence. See the module docs.
            let Ok(at) = tz.to_ambiguous_zoned(date.to_datetime(time)).compatible() else {
                continue;
            };
            if at.timestamp() > now.timestamp()
                && best.as_ref().is_none_or(|b| at.timestamp() < b.timestamp())
            {
                best = Some(at);
            }
        }
        if best.is_some() {
            break;
        }
    }
    best
}

/// How long from `now` until `at` (zero if `at` is not in the future). The pool sleeps
/// this long, then re-reads the wall clock before firing, so a clock step while it
/// slept never makes it fire early.
pub fn duration_until(now: &Zoned, at: &Zoned) -> Duration {
    let nanos = at.timestamp().as_nanosecond() - now.timestamp().as_nanosecond();
    Duration::from_nanos(u64::try_from(nanos.max(0)).unwrap_or(u64::MAX))
}

/// The `schedule` trigger of one app: the next fire as a monotonic deadline and the
/// wall-clock time it stands for. The clocks are read by the caller and passed in
/// (`Zoned::now()` and `Instant::now()` in the pool, fakes in tests): that is the
/// seam that lets a test jump the wall clock.
#[derive(Debug, Clone)]
pub struct ScheduleTimer {
    times: Vec<TimeOfDay>,
    next: Option<(Instant, Zoned)>,
}

impl ScheduleTimer {
    /// Armed for the first of `times` after `wall`; `mono` is the same moment on the
    /// monotonic clock.
    pub fn arm(times: &[TimeOfDay], wall: &Zoned, mono: Instant) -> ScheduleTimer {
        let mut timer = ScheduleTimer {
            times: times.to_vec(),
            next: None,
        };
        timer.arm_after(wall, mono);
        timer
    }

    fn arm_after(&mut self, wall: &Zoned, mono: Instant) {
        self.next =
            next_schedule_fire(wall, &self.times).map(|at| (mono + duration_until(wall, &at), at));
    }

    /// When to wake (monotonic), if any time is scheduled.
    pub fn deadline(&self) -> Option<Instant> {
        self.next.as_ref().map(|(t, _)| *t)
    }

    /// The wall-clock time of the next fire.
    pub fn next_fire(&self) -> Option<&Zoned> {
        self.next.as_ref().map(|(_, at)| at)
    }

    /// The deadline passed: the time to fire for, or `None` if the wall clock moved
    /// back while we slept (then re-armed for the rest of the wait). After a fire the
    /// next time is strictly after `wall`, so one time of day never fires twice.
    pub fn on_deadline(&mut self, wall: &Zoned, mono: Instant) -> Option<Zoned> {
        let (t, at) = self.next.clone()?;
        if mono < t {
            return None;
        }
        if wall.timestamp() < at.timestamp() {
            self.next = Some((mono + duration_until(wall, &at), at));
            return None;
        }
        self.arm_after(wall, mono);
        Some(at)
    }
}

/// The instant a worker started at `start` reaches its `interval` age, plus its own
/// jitter drawn uniformly in `0..=jitter`.
pub fn interval_deadline(
    start: Instant,
    interval: Duration,
    jitter: Duration,
    rng: &mut JitterRng,
) -> Instant {
    start + interval + rng.duration_up_to(jitter)
}

/// A worker's request limit: `limit` plus its own jitter drawn uniformly in
/// `0..=jitter`.
pub fn requests_limit(limit: u64, jitter: u64, rng: &mut JitterRng) -> u64 {
    limit.saturating_add(rng.up_to(jitter))
}

/// The decision for a request count against this worker's (jittered) limit.
pub fn requests_reached(count: u64, limit: u64) -> Option<RecycleReason> {
    (count >= limit).then_some(RecycleReason::Requests { count, limit })
}

/// The decision for a worker's age against its (jittered) interval.
pub fn age_reached(age: Duration, limit: Duration) -> Option<RecycleReason> {
    (age >= limit).then(|| RecycleReason::Age {
        age_ms: u64::try_from(age.as_millis()).unwrap_or(u64::MAX),
        limit_ms: u64::try_from(limit.as_millis()).unwrap_or(u64::MAX),
    })
}

/// A tiny pseudo-random generator (SplitMix64) for jitter. Jitter only has to differ
/// between workers, not resist an adversary, so a seed from the clock, the pid and a
/// process-wide counter is enough and needs no dependency.
#[derive(Debug, Clone)]
pub struct JitterRng {
    state: u64,
}

impl JitterRng {
    /// A generator with a fixed seed (tests, reproducible runs).
    pub fn seeded(seed: u64) -> Self {
        JitterRng { state: seed }
    }

    /// A generator seeded from the wall clock, the pid and a counter, so two generators
    /// made in the same nanosecond still differ.
    pub fn from_entropy() -> Self {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let pid = u64::from(std::process::id());
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        JitterRng::seeded(nanos ^ (pid << 32) ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..=max` (multiply-shift; the bias is below 2⁻⁶⁴ × max, irrelevant
    /// for jitter).
    pub fn up_to(&mut self, max: u64) -> u64 {
        if max == u64::MAX {
            return self.next_u64();
        }
        ((u128::from(self.next_u64()) * (u128::from(max) + 1)) >> 64) as u64
    }

    /// A duration uniform in `0..=max`, at nanosecond resolution.
    pub fn duration_up_to(&mut self, max: Duration) -> Duration {
        let max = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(self.up_to(max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::tz::TimeZone;

    fn tod(hour: u8, minute: u8) -> TimeOfDay {
        TimeOfDay {
            hour,
            minute,
            second: 0,
        }
    }

    /// US Eastern, as a POSIX rule so the test does not depend on the host's tzdb.
    fn eastern() -> TimeZone {
        TimeZone::posix("EST5EDT,M3.2.0,M11.1.0").unwrap()
    }

    fn at(tz: &TimeZone, y: i16, mo: i8, d: i8, h: i8, mi: i8) -> Zoned {
        tz.to_ambiguous_zoned(civil::date(y, mo, d).at(h, mi, 0, 0))
            .compatible()
            .unwrap()
    }

    #[test]
    fn later_today_or_tomorrow() {
        let tz = TimeZone::fixed(jiff::tz::offset(2));
        let now = at(&tz, 2025, 6, 10, 12, 0);
        let times = [tod(3, 0), tod(15, 30)];
        let next = next_schedule_fire(&now, &times).unwrap();
        assert_eq!(next.datetime(), civil::date(2025, 6, 10).at(15, 30, 0, 0));
        let after = next_schedule_fire(&next, &times).unwrap();
        assert_eq!(after.datetime(), civil::date(2025, 6, 11).at(3, 0, 0, 0));
        // Exactly at a fire time: the next one, never the same one again.
        let again = next_schedule_fire(&after, &times).unwrap();
        assert_eq!(again.datetime(), civil::date(2025, 6, 11).at(15, 30, 0, 0));
    }

    #[test]
    fn no_times_no_fire() {
        let now = at(&eastern(), 2025, 6, 10, 12, 0);
        assert!(next_schedule_fire(&now, &[]).is_none());
    }

    #[test]
    fn daily_fires_never_drift() {
        let tz = eastern();
        let times = [tod(3, 0)];
        let mut now = at(&tz, 2025, 1, 1, 0, 0);
        for day in 0..400 {
            let next = next_schedule_fire(&now, &times).unwrap();
            assert_eq!(
                (next.hour(), next.minute(), next.second()),
                (3, 0, 0),
                "day {day}"
            );
            now = next;
        }
    }

    #[test]
    fn spring_forward_gap_fires_once_after_the_gap() {
        // 2025-03-09: 02:00 EST jumps to 03:00 EDT; 02:30 does not exist.
        let tz = eastern();
        let now = at(&tz, 2025, 3, 9, 1, 0);
        let times = [tod(2, 30)];
        let next = next_schedule_fire(&now, &times).unwrap();
        assert_eq!(next.datetime(), civil::date(2025, 3, 9).at(3, 30, 0, 0));
        assert_eq!(duration_until(&now, &next), Duration::from_secs(90 * 60));
        let after = next_schedule_fire(&next, &times).unwrap();
        assert_eq!(after.datetime(), civil::date(2025, 3, 10).at(2, 30, 0, 0));
    }

    #[test]
    fn fall_back_fold_fires_once() {
        // 2025-11-02: 02:00 EDT falls back to 01:00 EST; 01:30 happens twice.
        let tz = eastern();
        let now = at(&tz, 2025, 11, 2, 0, 0);
        let times = [tod(1, 30)];
        let first = next_schedule_fire(&now, &times).unwrap();
        assert_eq!(first.datetime(), civil::date(2025, 11, 2).at(1, 30, 0, 0));
        assert_eq!(first.offset(), jiff::tz::offset(-4));
        let next = next_schedule_fire(&first, &times).unwrap();
        assert_eq!(next.datetime(), civil::date(2025, 11, 3).at(1, 30, 0, 0));
    }

    #[test]
    fn jitter_stays_in_range_and_varies() {
        let mut rng = JitterRng::seeded(7);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..10_000 {
            let v = requests_limit(1000, 10, &mut rng);
            assert!((1000..=1010).contains(&v));
            seen.insert(v);
        }
        assert_eq!(seen.len(), 11, "every value in 0..=jitter is drawn");
        assert_eq!(requests_limit(1000, 0, &mut rng), 1000);

        let start = Instant::now();
        let jitter = Duration::from_secs(60);
        for _ in 0..1000 {
            let d = interval_deadline(start, Duration::from_secs(3600), jitter, &mut rng);
            let extra = d - start - Duration::from_secs(3600);
            assert!(extra <= jitter);
        }
        assert_ne!(
            JitterRng::from_entropy().next_u64(),
            JitterRng::from_entropy().next_u64()
        );
    }

    #[test]
    fn count_and_age_decisions() {
        assert_eq!(requests_reached(9, 10), None);
        assert_eq!(
            requests_reached(10, 10),
            Some(RecycleReason::Requests {
                count: 10,
                limit: 10
            })
        );
        assert_eq!(
            age_reached(Duration::from_secs(59), Duration::from_secs(60)),
            None
        );
        assert_eq!(
            age_reached(Duration::from_millis(60_500), Duration::from_secs(60)),
            Some(RecycleReason::Age {
                age_ms: 60_500,
                limit_ms: 60_000
            })
        );
    }

    /// Drives a [`ScheduleTimer`] for `horizon` of monotonic time with a wall clock
    /// that starts at 2025-06-10 02:00 (UTC+2) and steps by `jump` seconds once
    /// `jump_after` has passed; returns the wall times it fired for.
    fn drive(jump_after: Duration, jump: i64, horizon: Duration) -> Vec<civil::DateTime> {
        let tz = TimeZone::fixed(jiff::tz::offset(2));
        let start_wall = at(&tz, 2025, 6, 10, 2, 0);
        let start = Instant::now();
        let wall = |mono: Instant| {
            let elapsed = (mono - start).as_secs() as i64;
            let step = if mono - start >= jump_after { jump } else { 0 };
            start_wall.checked_add((elapsed + step).seconds()).unwrap()
        };
        let mut timer = ScheduleTimer::arm(&[tod(3, 0)], &wall(start), start);
        let mut fired = Vec::new();
        for _ in 0..1000 {
            let Some(t) = timer.deadline() else { break };
            if t - start > horizon {
                break;
            }
            // A wake exactly at the deadline (the pool's sleep_until).
            if let Some(at) = timer.on_deadline(&wall(t), t) {
                fired.push(at.datetime());
            }
        }
        fired
    }

    #[test]
    fn schedule_fires_once_per_day_across_wall_clock_jumps() {
        let day = Duration::from_secs(24 * 3600);
        let three = |d: i8| civil::date(2025, 6, d).at(3, 0, 0, 0);
        // No jump: 03:00 today and tomorrow.
        assert_eq!(
            drive(day * 10, 0, day + Duration::from_secs(3600)),
            [three(10), three(11)]
        );
        // Back 30 min at 02:59 (monotonic 59 min): the sleep ends at wall 02:30 and
        // waits the rest; still once.
        assert_eq!(drive(Duration::from_secs(59 * 60), -1800, day), [three(10)]);
        // Forward 2 h at 02:30, past 03:00: today's fires once (late, at wall 05:00),
        // not zero times; tomorrow's at its wall time (22 h of monotonic time later).
        let fired = drive(Duration::from_secs(30 * 60), 7200, day);
        assert_eq!(fired, [three(10), three(11)]);
        // Back 1 h just after the fire (03:00:01 → 02:00:01): 03:00 does not fire
        // again today; tomorrow's does, once.
        assert_eq!(
            drive(
                Duration::from_secs(3601),
                -3600,
                day + Duration::from_secs(2 * 3600)
            ),
            [three(10), three(11)]
        );
        // Forward a whole day and more: one fire, not one per skipped day.
        assert_eq!(
            drive(Duration::from_secs(1800), 3 * 24 * 3600, day / 2).len(),
            1
        );
    }

    /// `interval` is measured on the monotonic clock: its deadline is an `Instant`
    /// from the worker's start and reads no wall clock, so a wall-clock step cannot
    /// move it.
    #[test]
    fn interval_deadline_is_monotonic() {
        let start = Instant::now();
        let mut rng = JitterRng::seeded(1);
        let d = interval_deadline(start, Duration::from_secs(3600), Duration::ZERO, &mut rng);
        assert_eq!(d - start, Duration::from_secs(3600));
        assert!(age_reached(d - start, Duration::from_secs(3600)).is_some());
    }
}
