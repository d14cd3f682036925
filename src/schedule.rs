//! Cron expressions in time zones: parsing and next firing instants.
//!
//! croner does the calendar work, including DST: a local time that occurs
//! twice fires once, a local time that does not exist fires at the next
//! valid instant.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

/// The parser for manifests: standard 5 fields, no seconds, no year.
pub fn cron_parser() -> CronParser {
    CronParser::builder().seconds(Seconds::Disallowed).year(Year::Disallowed).build()
}

/// The first firing strictly after `after`, or `None` if the expression never fires.
pub fn next_after(cron: &Cron, timezone: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    cron.find_next_occurrence(&after.with_timezone(&timezone), false).ok().map(|next| next.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn fires_in_the_jobs_time_zone_across_dst() {
        let cron = cron_parser().parse("30 9 * * *").unwrap();
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        // Before the spring change 09:30 Berlin is 08:30 UTC, after it 07:30.
        assert_eq!(next_after(&cron, berlin, utc("2026-03-28T12:00:00Z")), Some(utc("2026-03-29T07:30:00Z")));
        assert_eq!(next_after(&cron, berlin, utc("2026-03-27T12:00:00Z")), Some(utc("2026-03-28T08:30:00Z")));
    }

    #[test]
    fn rejects_six_fields_and_never_firing_expressions() {
        assert!(cron_parser().parse("0 0 6 * * *").is_err());
        let never = cron_parser().parse("0 0 31 2 *").unwrap();
        assert_eq!(next_after(&never, Tz::UTC, utc("2026-01-01T00:00:00Z")), None);
        assert!(cron_parser().parse("@daily").is_ok());
    }
}
