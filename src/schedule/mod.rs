//! Scheduling's one home: cron expressions in time zones (a job's
//! [`Schedule`], parsed once), firing instants across DST changes, what to do
//! with instants missed while the daemon was down, and the firing loop
//! ([`firing`]) that turns due instants into runs.
//!
//! Daylight saving time follows one rule, decided by the hour field:
//!
//! - A schedule that names hours (`30 2 * * *`, `0 9,17 * * *`,
//!   `0 */2 * * *`) names wall-clock times. A wall-clock time that occurs
//!   twice (autumn) fires once, at its first occurrence. One that does not
//!   exist (spring) fires at the first instant after the clock jumps: a 02:30
//!   job in Europe/Berlin fires at 03:00 CEST on 2026-03-29. Missing times
//!   that land on the same instant fire once.
//! - A schedule whose hour field covers every hour (`0 * * * *`,
//!   `*/15 * * * *`) measures real time: it fires at both occurrences of a
//!   repeated hour, which are distinct hours of real time, and nothing in the
//!   skipped hour, through which no real time passed.
//!
//! croner 4 applies the first rule only to a single fixed time: it fires a
//! list or step of hours (`30 2,14 * * *`) twice in autumn and not at all in
//! spring. So schedules that name hours are walked on the wall clock here and
//! mapped to instants by the rule above; croner keeps the real-time ones.

use std::collections::VecDeque;
use std::fmt;

use chrono::{DateTime, LocalResult, NaiveDateTime, TimeDelta, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

use crate::manifest::CatchUp;

pub mod firing;

pub use firing::{RunStarter, Scheduler};

/// A job's cron expression in its time zone, parsed once (when the job is
/// compiled), with the text it came from. A stage without `schedule:` has
/// no expression: it never fires on the clock, only after its upstream run.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// The parsed expression; `None` for a stage that fires after its upstream.
    pub cron: Option<Cron>,
    /// The time zone it is read in.
    pub timezone: Tz,
    /// The expression as written, e.g. `30 6 * * *`.
    pub text: String,
}

impl Schedule {
    /// `cron` in `timezone`; the reason when either is invalid.
    pub fn parse(cron: &str, timezone: &str) -> Result<Schedule, String> {
        let parsed = cron_parser().parse(cron).map_err(|e| format!("invalid cron expression `{cron}`: {e}"))?;
        let tz: Tz = timezone.parse().map_err(|_| format!("unknown time zone `{timezone}`"))?;
        Ok(Schedule { cron: Some(parsed), timezone: tz, text: cron.to_owned() })
    }

    /// The schedule of a stage that fires when a run of `upstream` completes.
    pub fn after(upstream: &str) -> Schedule {
        Schedule { cron: None, timezone: Tz::UTC, text: format!("after {upstream}") }
    }

    /// The schedule of a job that runs only when its queue flushes (`enqueue:`).
    pub fn on_demand() -> Schedule {
        Schedule { cron: None, timezone: Tz::UTC, text: "on demand".to_owned() }
    }

    /// Whether it fires on the clock (a stage without `schedule:` does not).
    pub fn is_timed(&self) -> bool {
        self.cron.is_some()
    }

    /// The first firing strictly after `after` ([`next_after`]).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        next_after(self.cron.as_ref()?, self.timezone, after)
    }

    /// Firings in `(after, until]`, the newest `cap` ([`due_between`]).
    pub fn due_between(&self, after: DateTime<Utc>, until: DateTime<Utc>, cap: usize) -> Vec<DateTime<Utc>> {
        self.cron.as_ref().map_or_else(Vec::new, |cron| due_between(cron, self.timezone, after, until, cap))
    }

    /// Whether it fires at least twice on the local day of `around` (its
    /// runs then carry the time in their custom_ids, not only the date).
    pub fn fires_more_than_once_on_the_day_of(&self, around: DateTime<Utc>) -> bool {
        use chrono::NaiveTime;
        if !self.is_timed() {
            // A stage fires after each run of its upstream, a queue at each flush: maybe several a day.
            return true;
        }
        let tz = self.timezone;
        let day = around.with_timezone(&tz).date_naive();
        let start_of = |date: chrono::NaiveDate| {
            date.and_time(NaiveTime::MIN).and_local_timezone(tz).earliest().map(|t| t.with_timezone(&Utc))
        };
        let (Some(start), Some(end)) = (start_of(day), day.succ_opt().and_then(start_of)) else {
            return false;
        };
        let first = self.next_after(start - chrono::Duration::seconds(1));
        let second = first.and_then(|first| self.next_after(first));
        matches!(second, Some(second) if second < end)
    }
}

/// The parser for manifests: standard 5 fields, no seconds, no year.
pub fn cron_parser() -> CronParser {
    CronParser::builder().seconds(Seconds::Disallowed).year(Year::Disallowed).build()
}

/// The first firing strictly after `after`, or `None` if the expression never
/// fires. Daylight saving time follows the rule in the module docs.
pub fn next_after(cron: &Cron, timezone: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    if follows_real_time(cron) {
        cron.find_next_occurrence(&after.with_timezone(&timezone), false).ok().map(|next| next.with_timezone(&Utc))
    } else {
        next_by_wall_clock(cron, timezone, after)
    }
}

/// Whether the hour field covers every hour: then the schedule measures real
/// time instead of naming wall-clock times.
fn follows_real_time(cron: &Cron) -> bool {
    (0..24).all(|hour| cron.pattern.hour_match(hour).unwrap_or(false))
}

/// `next_after` for a schedule that names hours: the wall clock's next
/// matching time, mapped to the one instant it fires at.
fn next_by_wall_clock(cron: &Cron, timezone: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let mut wall = after.with_timezone(&timezone).naive_local();
    loop {
        wall = cron.find_next_occurrence(&wall, false).ok()?;
        // A later wall-clock time can still map to an earlier instant: when
        // `after` is in the second pass of a repeated hour, the rest of that
        // hour already fired in the first pass.
        if let Some(instant) = instant_of(timezone, wall)
            && instant > after
        {
            return Some(instant);
        }
    }
}

/// The one instant at which a named wall-clock time fires.
fn instant_of(timezone: Tz, wall: NaiveDateTime) -> Option<DateTime<Utc>> {
    match timezone.from_local_datetime(&wall) {
        LocalResult::Single(instant) => Some(instant.with_timezone(&Utc)),
        // A time that occurs twice fires once, at its first occurrence.
        LocalResult::Ambiguous(first, _) => Some(first.with_timezone(&Utc)),
        LocalResult::None => landing_after_gap(timezone, wall),
    }
}

/// The longest jump of a clock searched for: Samoa skipped a whole day in 2011.
const MAX_GAP_MINUTES: i64 = 2 * 24 * 60;

/// For a wall-clock time that the clock skips: the first instant whose
/// wall-clock time is past it, where the jump lands.
fn landing_after_gap(timezone: Tz, wall: NaiveDateTime) -> Option<DateTime<Utc>> {
    // Whole minutes find the first minute after the jump cheaply...
    let mut landing = (1..=MAX_GAP_MINUTES)
        .find_map(|minutes| {
            timezone.from_local_datetime(&wall.checked_add_signed(TimeDelta::minutes(minutes))?).earliest()
        })?
        .with_timezone(&Utc);
    // ...and seconds back from it find the jump itself, for historic offsets
    // that were not whole minutes.
    while let Some(before) = landing.checked_sub_signed(TimeDelta::seconds(1))
        && before.with_timezone(&timezone).naive_local() > wall
    {
        landing = before;
    }
    Some(landing)
}

/// Every firing instant `t` with `after < t <= until`, oldest first, at most
/// `cap` of them.
///
/// When more than `cap` fire, only the newest `cap` are returned: after a long
/// downtime the recent instants are the ones worth acting on, and an
/// every-minute schedule down for a year would otherwise list half a million.
/// The work is bounded by `cap` as well, not by the length of the downtime:
/// the search covers a window ending at `until` and doubles it until it holds
/// `cap` firings or reaches back to `after`.
pub fn due_between(
    cron: &Cron,
    timezone: Tz,
    after: DateTime<Utc>,
    until: DateTime<Utc>,
    cap: usize,
) -> Vec<DateTime<Utc>> {
    if cap == 0 {
        return Vec::new();
    }
    let mut window = TimeDelta::hours(1);
    loop {
        let start = until.checked_sub_signed(window).map_or(after, |start| start.max(after));
        let due = newest_between(cron, timezone, start, until, cap);
        if due.len() >= cap || start == after {
            return due;
        }
        window = window.checked_mul(2).unwrap_or(TimeDelta::MAX);
    }
}

/// The newest `cap` (at least 1) firings in `(after, until]`, oldest first,
/// holding no more than `cap` at a time.
fn newest_between(
    cron: &Cron,
    timezone: Tz,
    after: DateTime<Utc>,
    until: DateTime<Utc>,
    cap: usize,
) -> Vec<DateTime<Utc>> {
    let mut due = VecDeque::new();
    let mut cursor = after;
    while let Some(next) = next_after(cron, timezone, cursor)
        && next <= until
    {
        if due.len() == cap {
            due.pop_front();
        }
        due.push_back(next);
        cursor = next;
    }
    due.into()
}

/// Why a missed instant does not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SkipReason {
    /// The manifest says `catch_up: none`.
    CatchUpNone,
    /// `catch_up: latest`, and a newer instant was missed too.
    NotLatest,
    /// Its deadline had passed by the time the daemon could run it.
    DeadlinePassed,
    /// More instants were missed than are caught up; for callers that cap
    /// the instants they look at, as [`due_between`] does.
    TooMany,
}

impl SkipReason {
    /// The stable name, for storage and machine-readable output.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::CatchUpNone => "catch_up_none",
            Self::NotLatest => "not_latest",
            Self::DeadlinePassed => "deadline_passed",
            Self::TooMany => "too_many",
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::CatchUpNone => "Missed while the daemon was down, and the job's catch_up is none.",
            Self::NotLatest => {
                "Missed while the daemon was down; catch_up latest runs only the most recent missed instant."
            }
            Self::DeadlinePassed => "Missed while the daemon was down, and its deadline had already passed.",
            Self::TooMany => "Missed while the daemon was down, among more missed instants than are caught up.",
        })
    }
}

/// What to do with instants missed while the daemon was down.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CatchUpPlan {
    /// The instants to run now, oldest first.
    pub fire: Vec<DateTime<Utc>>,
    /// The instants not to run, oldest first, each with its reason.
    pub skipped: Vec<(DateTime<Utc>, SkipReason)>,
}

/// Applies a manifest's `catch_up` policy to `missed`, the instants (oldest
/// first) that passed while the daemon was down.
///
/// - `latest` runs the most recent instant if its deadline (`instant +
///   deadline`) is still ahead of `now`; the others are skipped as
///   [`SkipReason::NotLatest`], and the latest as
///   [`SkipReason::DeadlinePassed`] if its deadline is over.
/// - `all` runs every instant, oldest first, even those whose deadline is
///   over: the manifest asked for completeness, and a late result is what it
///   chose over a missing one.
/// - `none` runs nothing; every instant is skipped as
///   [`SkipReason::CatchUpNone`].
pub fn plan_catch_up(
    missed: &[DateTime<Utc>],
    policy: CatchUp,
    now: DateTime<Utc>,
    deadline: std::time::Duration,
) -> CatchUpPlan {
    debug_assert!(missed.is_sorted(), "missed instants must be oldest first");
    let mut plan = CatchUpPlan::default();
    match policy {
        CatchUp::None => plan.skip(missed, SkipReason::CatchUpNone),
        CatchUp::All => plan.fire.extend_from_slice(missed),
        CatchUp::Latest => {
            if let Some((&latest, older)) = missed.split_last() {
                plan.skip(older, SkipReason::NotLatest);
                if deadline_ahead(latest, deadline, now) {
                    plan.fire.push(latest);
                } else {
                    plan.skip(&[latest], SkipReason::DeadlinePassed);
                }
            }
        }
    }
    plan
}

impl CatchUpPlan {
    /// Records `instants` as skipped for `reason`.
    fn skip(&mut self, instants: &[DateTime<Utc>], reason: SkipReason) {
        self.skipped.extend(instants.iter().map(|&instant| (instant, reason)));
    }
}

/// Whether a run for `instant` can still finish by its deadline. A deadline
/// too far away to represent is never over.
fn deadline_ahead(instant: DateTime<Utc>, deadline: std::time::Duration, now: DateTime<Utc>) -> bool {
    let deadline = TimeDelta::from_std(deadline).unwrap_or(TimeDelta::MAX);
    instant.checked_add_signed(deadline).is_none_or(|end| end > now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{NaiveDate, Timelike};
    use chrono_tz::America::New_York;
    use chrono_tz::Europe::Berlin;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
    }

    fn cron(expression: &str) -> Cron {
        cron_parser().parse(expression).unwrap()
    }

    /// Every firing in `(after, until]`, uncapped.
    fn all_due(expression: &str, zone: Tz, after: &str, until: &str) -> Vec<DateTime<Utc>> {
        due_between(&cron(expression), zone, utc(after), utc(until), usize::MAX)
    }

    /// Instants as local wall-clock times with the zone's abbreviation, which
    /// tells the two passes of a repeated hour apart.
    fn walls(instants: &[DateTime<Utc>], zone: Tz) -> Vec<String> {
        instants.iter().map(|instant| instant.with_timezone(&zone).format("%m-%d %H:%M %Z").to_string()).collect()
    }

    #[test]
    fn fires_in_the_jobs_time_zone_across_dst() {
        let cron = cron("30 9 * * *");
        // Before the spring change 09:30 Berlin is 08:30 UTC, after it 07:30.
        assert_eq!(next_after(&cron, Berlin, utc("2026-03-28T12:00:00Z")), Some(utc("2026-03-29T07:30:00Z")));
        assert_eq!(next_after(&cron, Berlin, utc("2026-03-27T12:00:00Z")), Some(utc("2026-03-28T08:30:00Z")));
    }

    #[test]
    fn rejects_six_fields_and_never_firing_expressions() {
        assert!(cron_parser().parse("0 0 6 * * *").is_err());
        let never = cron_parser().parse("0 0 31 2 *").unwrap();
        assert_eq!(next_after(&never, Tz::UTC, utc("2026-01-01T00:00:00Z")), None);
        let daily = cron_parser().parse("@daily").unwrap();
        assert_eq!(next_after(&daily, Tz::UTC, utc("2026-01-01T06:00:00Z")), Some(utc("2026-01-02T00:00:00Z")));
    }

    #[test]
    fn a_daily_time_in_the_spring_gap_fires_once_when_the_clock_lands() {
        let berlin = all_due("30 2 * * *", Berlin, "2026-03-27T12:00:00Z", "2026-03-30T12:00:00Z");
        assert_eq!(walls(&berlin, Berlin), ["03-28 02:30 CET", "03-29 03:00 CEST", "03-30 02:30 CEST"]);
        assert_eq!(berlin[1], utc("2026-03-29T01:00:00Z"));

        let new_york = all_due("30 2 * * *", New_York, "2026-03-07T00:00:00Z", "2026-03-09T12:00:00Z");
        assert_eq!(walls(&new_york, New_York), ["03-07 02:30 EST", "03-08 03:00 EDT", "03-09 02:30 EDT"]);
        assert_eq!(new_york[1], utc("2026-03-08T07:00:00Z"));
    }

    #[test]
    fn a_daily_time_in_the_repeated_hour_fires_once_at_its_first_pass() {
        let berlin = all_due("30 2 * * *", Berlin, "2026-10-24T00:00:00Z", "2026-10-26T12:00:00Z");
        assert_eq!(walls(&berlin, Berlin), ["10-24 02:30 CEST", "10-25 02:30 CEST", "10-26 02:30 CET"]);

        // New York repeats 01:00-02:00; its 02:30 occurs once, in EST.
        let new_york = all_due("30 1 * * *", New_York, "2026-10-31T00:00:00Z", "2026-11-02T12:00:00Z");
        assert_eq!(walls(&new_york, New_York), ["10-31 01:30 EDT", "11-01 01:30 EDT", "11-02 01:30 EST"]);
        let new_york = all_due("30 2 * * *", New_York, "2026-11-01T00:00:00Z", "2026-11-01T12:00:00Z");
        assert_eq!(walls(&new_york, New_York), ["11-01 02:30 EST"]);

        // Asked from the second pass, or right after the first firing, the
        // repeated time does not fire again.
        let daily = cron("30 2 * * *");
        for after in ["2026-10-25T00:30:00Z", "2026-10-25T01:00:00Z", "2026-10-25T01:29:59Z"] {
            assert_eq!(next_after(&daily, Berlin, utc(after)), Some(utc("2026-10-26T01:30:00Z")), "after {after}");
        }
    }

    /// Why schedules that name hours do not go to croner directly: croner 4
    /// applies the DST rule only to a single fixed time. Should an upgrade
    /// fail this test, the wall-clock walk may be redundant.
    #[test]
    fn croner_alone_fires_lists_of_hours_twice_in_autumn_and_never_in_spring() {
        let cron = cron("30 2,14 * * *");
        let next = |after: &str| cron.find_next_occurrence(&utc(after).with_timezone(&Berlin), false).unwrap();
        // Spring: the missing 02:30 is dropped, and the next firing is 14:30.
        assert_eq!(next("2026-03-28T14:00:00Z"), utc("2026-03-29T12:30:00Z"));
        // Autumn: 02:30 CEST, then 02:30 CET an hour later.
        assert_eq!(next("2026-10-25T00:00:00Z"), utc("2026-10-25T00:30:00Z"));
        assert_eq!(next("2026-10-25T00:30:00Z"), utc("2026-10-25T01:30:00Z"));
    }

    #[test]
    fn lists_and_steps_of_hours_follow_the_rule_for_named_times() {
        let spring = all_due("30 2,14 * * *", Berlin, "2026-03-28T13:00:00Z", "2026-03-29T23:00:00Z");
        assert_eq!(walls(&spring, Berlin), ["03-28 14:30 CET", "03-29 03:00 CEST", "03-29 14:30 CEST"]);
        let autumn = all_due("30 2,14 * * *", Berlin, "2026-10-24T12:00:00Z", "2026-10-25T23:00:00Z");
        assert_eq!(walls(&autumn, Berlin), ["10-24 14:30 CEST", "10-25 02:30 CEST", "10-25 14:30 CET"]);

        let spring = all_due("30 2,14 * * *", New_York, "2026-03-08T05:00:00Z", "2026-03-09T00:00:00Z");
        assert_eq!(walls(&spring, New_York), ["03-08 03:00 EDT", "03-08 14:30 EDT"]);
        let autumn = all_due("30 1,13 * * *", New_York, "2026-11-01T04:00:00Z", "2026-11-02T00:00:00Z");
        assert_eq!(walls(&autumn, New_York), ["11-01 01:30 EDT", "11-01 13:30 EST"]);

        let spring = all_due("0 */2 * * *", Berlin, "2026-03-28T22:00:00Z", "2026-03-29T02:00:00Z");
        assert_eq!(walls(&spring, Berlin), ["03-29 00:00 CET", "03-29 03:00 CEST", "03-29 04:00 CEST"]);
        let autumn = all_due("0 */2 * * *", Berlin, "2026-10-24T21:00:00Z", "2026-10-25T03:00:00Z");
        assert_eq!(walls(&autumn, Berlin), ["10-25 00:00 CEST", "10-25 02:00 CEST", "10-25 04:00 CET"]);
    }

    #[test]
    fn missing_times_that_land_on_the_same_instant_fire_once() {
        let spring = all_due("*/20 2 * * *", Berlin, "2026-03-28T12:00:00Z", "2026-03-30T12:00:00Z");
        assert_eq!(
            walls(&spring, Berlin),
            ["03-29 03:00 CEST", "03-30 02:00 CEST", "03-30 02:20 CEST", "03-30 02:40 CEST"]
        );
        let autumn = all_due("*/20 2 * * *", Berlin, "2026-10-24T23:00:00Z", "2026-10-25T12:00:00Z");
        assert_eq!(walls(&autumn, Berlin), ["10-25 02:00 CEST", "10-25 02:20 CEST", "10-25 02:40 CEST"]);
    }

    /// Samoa skipped 2011-12-30 entirely; Monrovia jumped 44 minutes 30
    /// seconds in 1972, from an offset that was not whole minutes.
    #[test]
    fn long_and_odd_jumps_land_exactly_where_the_clock_lands() {
        let apia: Tz = "Pacific/Apia".parse().unwrap();
        let due = all_due("0 12 * * *", apia, "2011-12-29T12:00:00Z", "2011-12-31T00:00:00Z");
        assert_eq!(due, [utc("2011-12-29T22:00:00Z"), utc("2011-12-30T10:00:00Z"), utc("2011-12-30T22:00:00Z")]);
        assert_eq!(due[1].with_timezone(&apia).to_rfc3339(), "2011-12-31T00:00:00+14:00");

        let monrovia: Tz = "Africa/Monrovia".parse().unwrap();
        let due = all_due("30 0 * * *", monrovia, "1972-01-06T00:00:00Z", "1972-01-08T12:00:00Z");
        assert_eq!(due, [utc("1972-01-06T01:14:30Z"), utc("1972-01-07T00:44:30Z"), utc("1972-01-08T00:30:00Z")]);
    }

    const TRANSITIONS: [(Tz, &str); 4] =
        [(Berlin, "2026-03-29"), (Berlin, "2026-10-25"), (New_York, "2026-03-08"), (New_York, "2026-11-01")];

    /// Every firing from the day before `day` to the day after, in UTC.
    fn around(expression: &str, zone: Tz, day: &str) -> Vec<DateTime<Utc>> {
        let midnight = utc(&format!("{day}T00:00:00Z"));
        due_between(&cron(expression), zone, midnight - TimeDelta::days(1), midnight + TimeDelta::days(2), usize::MAX)
    }

    #[test]
    fn hourly_fires_every_real_hour_so_transition_days_have_23_and_25() {
        for ((zone, day), expected) in TRANSITIONS.into_iter().zip([23, 25, 23, 25]) {
            let due = around("0 * * * *", zone, day);
            // Every real hour, once: 24 per UTC day, whatever the local clock does.
            assert!(due.windows(2).all(|pair| pair[1] - pair[0] == TimeDelta::hours(1)), "{zone} {day}");
            let date: NaiveDate = day.parse().unwrap();
            let local_day = due.iter().filter(|instant| instant.with_timezone(&zone).date_naive() == date).count();
            assert_eq!(local_day, expected, "{zone} {day}");
        }
        let autumn = all_due("0 * * * *", Berlin, "2026-10-24T22:30:00Z", "2026-10-25T02:00:00Z");
        assert_eq!(
            walls(&autumn, Berlin),
            ["10-25 01:00 CEST", "10-25 02:00 CEST", "10-25 02:00 CET", "10-25 03:00 CET"]
        );
        let spring = all_due("0 * * * *", New_York, "2026-03-08T05:30:00Z", "2026-03-08T08:00:00Z");
        assert_eq!(walls(&spring, New_York), ["03-08 01:00 EST", "03-08 03:00 EDT", "03-08 04:00 EDT"]);
    }

    #[test]
    fn a_daily_time_outside_the_transition_stays_put_on_the_local_clock() {
        let utc_hours = [(8, 7), (7, 8), (14, 13), (13, 14)];
        for ((zone, day), (before, after)) in TRANSITIONS.into_iter().zip(utc_hours) {
            let due = around("0 9 * * *", zone, day);
            assert_eq!(due.len(), 3, "{zone} {day}");
            assert!(walls(&due, zone).iter().all(|wall| wall.contains(" 09:00 ")), "{zone} {day}");
            // The UTC hour moves with the offset: the day before, then the day itself.
            assert_eq!((due[0].hour(), due[1].hour()), (before, after), "{zone} {day}");
        }
    }

    #[test]
    fn every_quarter_hour_runs_on_real_time_without_duplicates_or_gaps() {
        // The local hour each transition skips or repeats, and how many
        // quarter hours it holds: none when skipped, two passes when repeated.
        let changed_hours = [(2, 0), (2, 8), (2, 0), (1, 8)];
        for ((zone, day), (hour, expected)) in TRANSITIONS.into_iter().zip(changed_hours) {
            let due = around("*/15 * * * *", zone, day);
            assert!(due.windows(2).all(|pair| pair[1] - pair[0] == TimeDelta::minutes(15)), "{zone} {day}");
            let date: NaiveDate = day.parse().unwrap();
            let in_hour = due
                .iter()
                .map(|instant| instant.with_timezone(&zone))
                .filter(|local| local.date_naive() == date && local.hour() == hour)
                .count();
            assert_eq!(in_hour, expected, "{zone} {day}");
        }
    }

    /// Starting anywhere, even inside a skipped or repeated hour, continues
    /// the same sequence: the windowed search in `due_between` relies on it.
    #[test]
    fn next_after_agrees_with_the_sequence_from_any_starting_instant() {
        let expressions = ["*/15 * * * *", "0 * * * *", "30 2 * * *", "30 1,2,14 * * *", "*/20 2 * * *", "0 */2 * * *"];
        for expression in expressions {
            let cron = cron(expression);
            for (zone, day) in TRANSITIONS {
                let due = around(expression, zone, day);
                let first = utc(&format!("{day}T00:00:00Z")) - TimeDelta::days(1);
                for step in 0..(2 * 24 * 24) {
                    let start = first + TimeDelta::seconds(150 * step);
                    let expected = due.iter().copied().find(|&instant| instant > start);
                    assert_eq!(next_after(&cron, zone, start), expected, "{expression} {zone} from {start}");
                }
            }
        }
    }

    #[test]
    fn due_between_excludes_after_and_includes_until() {
        let due = all_due("0 * * * *", Tz::UTC, "2026-01-01T00:00:00Z", "2026-01-01T03:00:00Z");
        assert_eq!(due, [utc("2026-01-01T01:00:00Z"), utc("2026-01-01T02:00:00Z"), utc("2026-01-01T03:00:00Z")]);
        assert!(all_due("0 * * * *", Tz::UTC, "2026-01-01T03:00:00Z", "2026-01-01T03:00:00Z").is_empty());
        assert!(all_due("0 * * * *", Tz::UTC, "2026-01-01T04:00:00Z", "2026-01-01T03:00:00Z").is_empty());
        assert!(all_due("0 0 31 2 *", Tz::UTC, "2026-01-01T00:00:00Z", "2027-01-01T00:00:00Z").is_empty());
    }

    #[test]
    fn due_between_keeps_the_newest_cap_after_a_long_downtime() {
        let every_minute = cron("* * * * *");
        let (after, until) = (utc("2025-01-01T00:00:00Z"), utc("2026-01-01T00:00:00Z"));
        let due = due_between(&every_minute, Berlin, after, until, 3);
        assert_eq!(due, [utc("2025-12-31T23:58:00Z"), utc("2025-12-31T23:59:00Z"), until]);
        assert!(due_between(&every_minute, Berlin, after, until, 0).is_empty());

        for expression in ["*/15 * * * *", "30 2,14 * * *", "0 9 * * 1"] {
            let (after, until) = ("2026-03-01T00:00:00Z", "2026-11-30T00:00:00Z");
            let uncapped = all_due(expression, Berlin, after, until);
            for cap in [1, 7, 100, uncapped.len(), uncapped.len() + 1] {
                let capped = due_between(&cron(expression), Berlin, utc(after), utc(until), cap);
                assert_eq!(capped, uncapped[uncapped.len().saturating_sub(cap)..], "{expression} cap {cap}");
            }
        }
    }

    fn hours(count: i64) -> DateTime<Utc> {
        utc("2026-01-01T00:00:00Z") + TimeDelta::hours(count)
    }

    const HOUR: std::time::Duration = std::time::Duration::from_secs(3600);
    const TEN_MINUTES: std::time::Duration = std::time::Duration::from_secs(600);

    #[test]
    fn latest_fires_the_most_recent_instant_while_its_deadline_holds() {
        let missed = [hours(0), hours(1), hours(2)];
        let now = hours(2) + TimeDelta::minutes(30);
        let plan = plan_catch_up(&missed, CatchUp::Latest, now, HOUR);
        assert_eq!(plan.fire, [hours(2)]);
        assert_eq!(plan.skipped, [(hours(0), SkipReason::NotLatest), (hours(1), SkipReason::NotLatest)]);

        let plan = plan_catch_up(&missed, CatchUp::Latest, now, TEN_MINUTES);
        assert!(plan.fire.is_empty());
        let reasons: Vec<_> = plan.skipped.iter().map(|(_, reason)| *reason).collect();
        assert_eq!(reasons, [SkipReason::NotLatest, SkipReason::NotLatest, SkipReason::DeadlinePassed]);

        // A deadline reached exactly is over; one too large to represent never is.
        let plan = plan_catch_up(&missed, CatchUp::Latest, hours(3), HOUR);
        assert_eq!(plan.skipped.last(), Some(&(hours(2), SkipReason::DeadlinePassed)));
        let plan = plan_catch_up(&missed, CatchUp::Latest, hours(3), std::time::Duration::MAX);
        assert_eq!(plan.fire, [hours(2)]);
    }

    #[test]
    fn all_fires_every_instant_oldest_first_even_past_its_deadline() {
        let missed = [hours(0), hours(1), hours(2)];
        let plan = plan_catch_up(&missed, CatchUp::All, hours(5), TEN_MINUTES);
        assert_eq!(plan, CatchUpPlan { fire: missed.to_vec(), skipped: Vec::new() });
    }

    #[test]
    fn none_skips_every_instant() {
        let missed = [hours(0), hours(1)];
        let plan = plan_catch_up(&missed, CatchUp::None, hours(1), HOUR);
        assert!(plan.fire.is_empty());
        assert_eq!(plan.skipped, [(hours(0), SkipReason::CatchUpNone), (hours(1), SkipReason::CatchUpNone)]);
    }

    #[test]
    fn nothing_missed_plans_nothing() {
        for policy in [CatchUp::Latest, CatchUp::All, CatchUp::None] {
            assert_eq!(plan_catch_up(&[], policy, hours(0), HOUR), CatchUpPlan::default(), "{policy:?}");
        }
    }

    #[test]
    fn skip_reasons_have_stable_names_and_sentences() {
        let reasons = [SkipReason::CatchUpNone, SkipReason::NotLatest, SkipReason::DeadlinePassed, SkipReason::TooMany];
        let names: Vec<_> = reasons.iter().map(SkipReason::as_str).collect();
        assert_eq!(names, ["catch_up_none", "not_latest", "deadline_passed", "too_many"]);
        assert!(
            reasons.iter().all(|reason| reason.to_string().starts_with("Missed") && reason.to_string().ends_with('.'))
        );
    }
}
