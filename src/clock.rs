//! Time, injected: everything that reads the time or waits takes a `Clock`,
//! so tests can drive hours of schedule in milliseconds.
//!
//! [`ManualClock`] is the clock tests move. It moves by itself, to the
//! earliest pending sleep, at the moment every task that registered with
//! [`Clock::enter`] is asleep on it: virtual time never passes while any of
//! them is working (an HTTP call, a database write), so hours of deadlines,
//! polling and backoff run in milliseconds, in a deterministic order.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use chrono::{DateTime, Utc};

/// `duration` as a calendar span, saturating instead of failing on absurd lengths.
pub fn span(duration: Duration) -> chrono::Duration {
    chrono::Duration::from_std(duration).unwrap_or(chrono::Duration::MAX)
}

/// `YYYY-MM-DD` (midnight UTC) or RFC 3339, in the years 1 to 9999 (so a
/// window computed from it cannot overflow).
pub fn parse_instant(text: &str) -> Result<DateTime<Utc>, String> {
    let invalid = || format!("`{text}` is not a date: write `2026-11-01` or `2026-11-01T06:00:00Z`");
    let instant = match chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        Ok(date) => date.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc(),
        Err(_) => DateTime::parse_from_rfc3339(text).map_err(|_| invalid())?.with_timezone(&Utc),
    };
    if !(1..=9999).contains(&chrono::Datelike::year(&instant)) {
        return Err(invalid());
    }
    Ok(instant)
}

/// Midnight UTC of `now`'s day.
pub fn day_start(now: DateTime<Utc>) -> DateTime<Utc> {
    now.date_naive().and_hms_opt(0, 0, 0).map_or(now, |t| t.and_utc())
}

/// A source of "now" and a way to wait.
pub trait Clock: Send + Sync + 'static {
    /// The current instant.
    fn now(&self) -> DateTime<Utc>;
    /// Waits for `duration` of this clock's time.
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>>;
    /// Registers the calling task as one that works between sleeps, until the
    /// returned guard drops. Only a [`ManualClock`] cares.
    fn enter(&self) -> Presence {
        Presence(None)
    }
}

/// Proof that a task is registered with a clock; dropping it deregisters.
#[must_use = "the task counts as present only while the guard lives"]
pub struct Presence(Option<Arc<Mutex<ManualState>>>);

impl Drop for Presence {
    fn drop(&mut self) {
        if let Some(shared) = self.0.take() {
            let mut state = lock(&shared);
            state.present -= 1;
            state.advance_if_idle();
        }
    }
}

impl std::fmt::Debug for Presence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Presence(manual)" } else { "Presence(real)" })
    }
}

/// The real clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        Box::pin(tokio::time::sleep(duration))
    }
}

/// The real clock, shifted to start at another instant and running `scale`
/// times as fast: `serve --simulate --clock-start ... --clock-scale ...`
/// rehearses a night of schedule (a DST change, a deadline) in seconds.
#[derive(Debug, Clone, Copy)]
pub struct ScaledClock {
    started: std::time::Instant,
    origin: DateTime<Utc>,
    scale: f64,
}

impl ScaledClock {
    /// A clock reading `origin` now and running `scale` (> 0) times real time.
    pub fn new(origin: DateTime<Utc>, scale: f64) -> ScaledClock {
        ScaledClock { started: std::time::Instant::now(), origin, scale: if scale > 0.0 { scale } else { 1.0 } }
    }
}

impl Clock for ScaledClock {
    fn now(&self) -> DateTime<Utc> {
        let elapsed = self.started.elapsed().mul_f64(self.scale);
        self.origin + span(elapsed)
    }

    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        Box::pin(tokio::time::sleep(duration.div_f64(self.scale)))
    }
}

/// A clock that only moves when every registered task sleeps, or when told to.
#[derive(Clone)]
pub struct ManualClock {
    shared: Arc<Mutex<ManualState>>,
}

struct ManualState {
    now: DateTime<Utc>,
    present: usize,
    sleepers: BTreeMap<(DateTime<Utc>, u64), Waker>,
    next_id: u64,
}

impl ManualState {
    /// Moves to the earliest sleep when every present task is asleep, and wakes it.
    fn advance_if_idle(&mut self) {
        if self.present == 0 || self.sleepers.len() < self.present {
            return;
        }
        if let Some(&(earliest, _)) = self.sleepers.keys().next() {
            self.now = self.now.max(earliest);
            self.wake_due();
        }
    }

    fn wake_due(&mut self) {
        while let Some(entry) = self.sleepers.first_entry() {
            if entry.key().0 > self.now {
                break;
            }
            entry.remove().wake();
        }
    }
}

fn lock(shared: &Mutex<ManualState>) -> MutexGuard<'_, ManualState> {
    shared.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: DateTime<Utc>) -> ManualClock {
        let state = ManualState { now: start, present: 0, sleepers: BTreeMap::new(), next_id: 0 };
        ManualClock { shared: Arc::new(Mutex::new(state)) }
    }

    /// Moves the clock forward by `duration` and wakes every sleep that is due.
    pub fn advance(&self, duration: Duration) {
        let mut state = lock(&self.shared);
        state.now += span(duration);
        state.wake_due();
    }
}

impl std::fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = lock(&self.shared);
        f.debug_struct("ManualClock").field("now", &state.now).field("present", &state.present).finish()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        lock(&self.shared).now
    }

    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        let mut state = lock(&self.shared);
        let until = state.now + span(duration);
        state.next_id += 1;
        Box::pin(ManualSleep { shared: Arc::clone(&self.shared), key: (until, state.next_id), registered: false })
    }

    fn enter(&self) -> Presence {
        lock(&self.shared).present += 1;
        Presence(Some(Arc::clone(&self.shared)))
    }
}

struct ManualSleep {
    shared: Arc<Mutex<ManualState>>,
    key: (DateTime<Utc>, u64),
    registered: bool,
}

impl Future for ManualSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let shared = Arc::clone(&self.shared);
        let mut state = lock(&shared);
        if state.now >= self.key.0 {
            state.sleepers.remove(&self.key);
            self.registered = false;
            return Poll::Ready(());
        }
        state.sleepers.insert(self.key, cx.waker().clone());
        self.registered = true;
        state.advance_if_idle();
        if state.now >= self.key.0 {
            state.sleepers.remove(&self.key);
            self.registered = false;
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

impl Drop for ManualSleep {
    fn drop(&mut self) {
        if self.registered {
            lock(&self.shared).sleepers.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-22T06:00:00Z").unwrap().with_timezone(&Utc)
    }

    #[tokio::test]
    async fn moves_only_when_every_present_task_sleeps() {
        let clock = ManualClock::new(start());
        let presence = clock.enter();
        let worker_clock = clock.clone();
        let worker_presence = clock.enter();
        let worker = tokio::spawn(async move {
            let _presence = worker_presence;
            // Real work that takes real time: the clock must not move meanwhile.
            tokio::time::sleep(Duration::from_millis(30)).await;
            let seen = worker_clock.now();
            worker_clock.sleep(Duration::from_secs(60)).await;
            seen
        });
        clock.sleep(Duration::from_secs(3600)).await;
        assert_eq!(worker.await.unwrap(), start(), "time passed while the worker was busy");
        assert_eq!(clock.now(), start() + chrono::Duration::hours(1));
        drop(presence);
    }

    #[tokio::test]
    async fn sleeps_wake_in_order_of_their_deadlines() {
        let clock = ManualClock::new(start());
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for secs in [30u64, 10, 20] {
            let (clock, order, presence) = (clock.clone(), Arc::clone(&order), clock.enter());
            tasks.push(tokio::spawn(async move {
                let _presence = presence;
                clock.sleep(Duration::from_secs(secs)).await;
                order.lock().unwrap().push((secs, clock.now()));
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let seen = order.lock().unwrap().clone();
        let expected: Vec<_> =
            [10, 20, 30].iter().map(|&s| (s, start() + chrono::Duration::seconds(s as i64))).collect();
        assert_eq!(seen, expected);
    }

    #[tokio::test]
    async fn a_scaled_clock_starts_where_told_and_runs_faster() {
        let clock = ScaledClock::new(start(), 1000.0);
        let before = clock.now();
        assert!(before >= start() && before < start() + chrono::Duration::seconds(60));
        clock.sleep(Duration::from_secs(50)).await;
        let slept = clock.now() - before;
        assert!(slept >= chrono::Duration::seconds(50), "a sleep of 50 s of its time lasted {slept}");
        assert!(slept < chrono::Duration::seconds(3600), "and took about 50 ms of real time: {slept}");
    }

    #[tokio::test]
    async fn a_dropped_sleep_does_not_hold_the_clock() {
        let clock = ManualClock::new(start());
        let _presence = clock.enter();
        let short = clock.sleep(Duration::from_secs(5));
        drop(clock.sleep(Duration::from_secs(1)));
        short.await;
        assert_eq!(clock.now(), start() + chrono::Duration::seconds(5));
        clock.advance(Duration::from_secs(10));
        assert_eq!(clock.now(), start() + chrono::Duration::seconds(15));
    }
}
