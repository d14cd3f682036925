//! Checks of `schedule` and `deadline`.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

use crate::catalog::Catalog;
use crate::diagnostics::{Code, Diagnostic};
use crate::manifest::{Job, Lane, Tier, format_duration, parse_duration};
use crate::schedule::{cron_parser, next_after};
use crate::suggest;

/// Below this, a batch-lane run cannot expect a batch to finish: it goes to
/// the sync lane at full price.
const MIN_BATCH_DEADLINE: Duration = Duration::from_secs(10 * 60);
/// Below this, even one synchronous call may not fit.
const MIN_REALTIME_DEADLINE: Duration = Duration::from_secs(10);

pub(super) fn check(job: &Job, catalog: &Catalog, now: DateTime<Utc>, out: &mut Vec<Diagnostic>) {
    let schedule = &job.manifest.schedule;
    let timezone = check_timezone(job, out);
    let cron = match cron_parser().parse(&schedule.cron) {
        Ok(cron) => Some(cron),
        Err(err) => {
            out.push(
                job.at_value(Code::InvalidCron, "schedule.cron", format!("invalid cron expression `{}`: {err}", schedule.cron))
                    .help("write five fields `minute hour day-of-month month day-of-week`, e.g. `30 6 * * *`, or a nickname like `@daily`"),
            );
            None
        }
    };
    let mut cadence = None;
    if let (Some(cron), Some(tz)) = (cron, timezone) {
        match next_after(&cron, tz, now).and_then(|first| next_after(&cron, tz, first).map(|second| (first, second))) {
            Some((first, second)) => cadence = (second - first).to_std().ok(),
            None => out.push(
                job.at_value(
                    Code::CronNeverFires,
                    "schedule.cron",
                    format!("cron expression `{}` never fires", schedule.cron),
                )
                .help("check day-of-month against month (February has no 30th or 31st)"),
            ),
        }
    }
    check_deadline(job, catalog, cadence, out);
}

fn check_timezone(job: &Job, out: &mut Vec<Diagnostic>) -> Option<Tz> {
    let name = &job.manifest.schedule.timezone;
    match Tz::from_str(name) {
        Ok(tz) => Some(tz),
        Err(_) => {
            let names = chrono_tz::TZ_VARIANTS.iter().map(|tz| tz.name());
            let help = suggest::did_you_mean(name, names)
                .unwrap_or_else(|| "use an IANA name such as `Europe/Berlin`, `America/New_York` or `UTC`".to_owned());
            out.push(
                job.at_value(Code::UnknownTimezone, "schedule.timezone", format!("unknown time zone `{name}`"))
                    .help(help),
            );
            None
        }
    }
}

fn check_deadline(job: &Job, catalog: &Catalog, cadence: Option<Duration>, out: &mut Vec<Diagnostic>) {
    let Some(text) = job.manifest.deadline.as_deref() else {
        return;
    };
    let deadline = match parse_duration(text) {
        Ok(deadline) if !deadline.is_zero() => deadline,
        Ok(_) => {
            out.push(
                job.at_value(Code::InvalidDeadline, "deadline", "the deadline must be longer than zero")
                    .help("write e.g. `45m` or `6h`"),
            );
            return;
        }
        Err(reason) => {
            out.push(
                job.at_value(Code::InvalidDeadline, "deadline", format!("invalid deadline `{text}`: {reason}"))
                    .help("write a duration such as `90s`, `45m`, `6h` or `1d`"),
            );
            return;
        }
    };
    let tier = job.manifest.tier;
    if crate::cost::estimate::batch_eligible(job) {
        out.push(
            job.at_value(
                Code::BatchEligible,
                "tier",
                format!(
                    "a realtime job with a {} deadline could run on the batch lane at half price",
                    format_duration(deadline)
                ),
            )
            .help("set `tier: soft` (the sync fallback still holds the deadline); `orchestrator estimate` shows the saving"),
        );
    }
    if tier == Tier::Realtime && deadline < MIN_REALTIME_DEADLINE {
        out.push(
            job.at_value(
                Code::DeadlineTierMismatch,
                "deadline",
                format!("a deadline of {} may be shorter than one synchronous call", format_duration(deadline)),
            )
            .help("give realtime jobs at least `10s`"),
        );
    }
    if tier.lane() == Lane::Batch && deadline < MIN_BATCH_DEADLINE {
        out.push(job.at_value(Code::DeadlineTierMismatch, "deadline", format!("a deadline of {} is too short for the batch lane: runs will go straight to the sync lane at full price", format_duration(deadline)))
            .help(format!("use `tier: realtime`, or a deadline of at least `{}`", format_duration(MIN_BATCH_DEADLINE))));
    }
    let expiry =
        catalog.providers.get(&job.manifest.provider).and_then(|provider| parse_duration(&provider.batch_expiry).ok());
    if let Some(expiry) = expiry.filter(|expiry| tier.lane() == Lane::Batch && deadline > *expiry) {
        out.push(
            job.at_value(
                Code::DeadlineOverBatchExpiry,
                "deadline",
                format!(
                    "the deadline {} is longer than the provider keeps a batch ({})",
                    format_duration(deadline),
                    format_duration(expiry)
                ),
            )
            .help(format!(
                "requests not run by then expire and the fallback re-runs them at full price; use at most `{}`",
                format_duration(expiry)
            )),
        );
    }
    if let Some(cadence) = cadence.filter(|cadence| deadline > *cadence) {
        out.push(
            job.at_value(
                Code::DeadlineOverCadence,
                "deadline",
                format!(
                    "the deadline {} is longer than the {} between firings, so runs will overlap",
                    format_duration(deadline),
                    format_duration(cadence)
                ),
            )
            .help(format!(
                "use a deadline of at most `{}`, or set `overlap:` to say what happens",
                format_duration(cadence)
            )),
        );
    }
}
