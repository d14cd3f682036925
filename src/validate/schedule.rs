//! Checks of `schedule` and `deadline`.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

use crate::catalog::Catalog;
use crate::diagnostics::{Code, Diagnostic};
use crate::manifest::{Lane, Parsed, Tier, format_duration, parse_duration};
use crate::schedule::{cron_parser, next_after};
use crate::suggest;

/// Below this, even one synchronous call may not fit.
const MIN_REALTIME_DEADLINE: Duration = Duration::from_secs(10);

pub(super) fn check(job: &Parsed, catalog: &Catalog, now: DateTime<Utc>, out: &mut Vec<Diagnostic>) {
    check_enqueue(job, out);
    let Some(schedule) = &job.manifest.schedule else {
        // A stage may go without (it fires after each completed upstream
        // run), and so may a queue (it fires when it flushes).
        let stage = job.manifest.items.as_ref().is_some_and(|items| items.from.is_some());
        if !stage && job.manifest.enqueue.is_none() {
            out.push(job.missing_top_level(
                "schedule",
                "add `schedule: { cron: \"30 6 * * *\", timezone: UTC }`, `items: { from: JOB }` for a stage that runs after JOB, \
                 or `enqueue: { max_items: 1000, max_wait: 30m }` for items posted to the daemon",
            ));
        }
        check_policies_off_the_clock(job, out);
        check_deadline(job, catalog, None, out);
        return;
    };
    let timezone = check_timezone(job, schedule, out);
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

/// W075: `overlap` and `catch_up` rule what happens at a cron instant; a
/// stage without a schedule starts a run for each completed upstream run,
/// and a queue for each flush, whatever they say.
fn check_policies_off_the_clock(job: &Parsed, out: &mut Vec<Diagnostic>) {
    for key in ["overlap", "catch_up"] {
        if job.spans.get(key).is_some() {
            out.push(
                job.at_key(
                    Code::PolicyWithoutSchedule,
                    key,
                    format!("`{key}` applies at the instants of a `schedule:`, and this job has none"),
                )
                .help(format!(
                    "remove `{key}` (a stage runs once per completed upstream run, a queue once per flush), or add a `schedule:`"
                )),
            );
        }
    }
}

/// E069 and E073: a queue's items come from the enqueue endpoint alone,
/// and its flush rules must be able to fire.
fn check_enqueue(job: &Parsed, out: &mut Vec<Diagnostic>) {
    let Some(rules) = &job.manifest.enqueue else { return };
    if job.manifest.items.is_some() {
        out.push(
            job.at_key(Code::EnqueueWithItems, "items", "a job with `enqueue:` takes its items from its queue, not from `items:`")
                .help("remove `items:` (post items with `orchestrator enqueue` or `POST /api/v1/jobs/{job}/items`), or make a second job for the file"),
        );
    }
    if rules.max_items == 0 {
        out.push(
            job.at_value(Code::InvalidEnqueue, "enqueue.max_items", "enqueue.max_items must be at least 1")
                .help("write e.g. `max_items: 1000`"),
        );
    }
    match parse_duration(&rules.max_wait) {
        Ok(wait) if !wait.is_zero() => {}
        Ok(_) => out.push(
            job.at_value(Code::InvalidEnqueue, "enqueue.max_wait", "enqueue.max_wait must be longer than zero")
                .help("write e.g. `max_wait: 30m`"),
        ),
        Err(reason) => out.push(
            job.at_value(
                Code::InvalidEnqueue,
                "enqueue.max_wait",
                format!("invalid max_wait `{}`: {reason}", rules.max_wait),
            )
            .help("write a duration such as `90s`, `30m` or `2h`"),
        ),
    }
}

fn check_timezone(job: &Parsed, schedule: &crate::manifest::Schedule, out: &mut Vec<Diagnostic>) -> Option<Tz> {
    let name = &schedule.timezone;
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

fn check_deadline(job: &Parsed, catalog: &Catalog, cadence: Option<Duration>, out: &mut Vec<Diagnostic>) {
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
    let deadline = Deadline { length: deadline, written: text.trim() };
    check_deadline_for_tier(job, catalog, deadline, out);
    check_deadline_against_expiry(job, catalog, deadline, out);
    check_deadline_against_cadence(job, deadline, cadence, out);
}

/// A parsed deadline and how the manifest wrote it: messages echo the
/// user's `36h`, not a normalised `1d12h`.
#[derive(Debug, Clone, Copy)]
struct Deadline<'a> {
    length: Duration,
    written: &'a str,
}

/// W021 and N080: what the tier's lane can do with the deadline.
fn check_deadline_for_tier(job: &Parsed, catalog: &Catalog, deadline: Deadline<'_>, out: &mut Vec<Diagnostic>) {
    let tier = job.manifest.tier;
    if crate::plan::batch_eligible(tier, deadline.length) {
        out.push(
            job.at_value(
                Code::BatchEligible,
                "tier",
                format!(
                    "a realtime job with a {} deadline could run on the batch lane at half price",
                    deadline.written
                ),
            )
            .help("set `tier: soft` (the sync fallback still holds the deadline); `orchestrator estimate` shows the saving"),
        );
    }
    if tier == Tier::Realtime && deadline.length < MIN_REALTIME_DEADLINE {
        out.push(
            job.at_value(
                Code::DeadlineTierMismatch,
                "deadline",
                format!("a deadline of {} may be shorter than one synchronous call", deadline.written),
            )
            .help("give realtime jobs at least `10s`"),
        );
    }
    if tier.lane() == Lane::Batch
        && let Some(turnaround) = goes_straight_to_sync(job, catalog, deadline.length)
    {
        out.push(
            job.at_value(
                Code::DeadlineTierMismatch,
                "deadline",
                format!(
                    "a deadline of {} leaves no time for a batch to end (a batch of `{}` is expected to take {}): \
                     runs will go straight to the sync lane at full price",
                    deadline.written,
                    job.manifest.provider,
                    format_duration(turnaround)
                ),
            )
            .help(format!(
                "use `tier: realtime`, or a deadline of at least `{}` (the batch's time and the fallback's margin)",
                format_duration(min_batch_deadline(turnaround))
            )),
        );
    }
}

/// W022: a batch-lane deadline longer than the provider keeps a batch.
fn check_deadline_against_expiry(job: &Parsed, catalog: &Catalog, deadline: Deadline<'_>, out: &mut Vec<Diagnostic>) {
    let tier = job.manifest.tier;
    let expiry =
        catalog.providers.get(&job.manifest.provider).and_then(|provider| parse_duration(&provider.batch_expiry).ok());
    if let Some(expiry) = expiry.filter(|expiry| tier.lane() == Lane::Batch && deadline.length > *expiry) {
        out.push(
            job.at_value(
                Code::DeadlineOverBatchExpiry,
                "deadline",
                format!(
                    "the deadline {} is longer than the provider keeps a batch ({})",
                    deadline.written,
                    format_duration(expiry)
                ),
            )
            .help(format!(
                "requests not run by then expire and the fallback re-runs them at full price; use at most `{}`",
                format_duration(expiry)
            )),
        );
    }
}

/// W023: a deadline longer than the time between firings.
fn check_deadline_against_cadence(
    job: &Parsed,
    deadline: Deadline<'_>,
    cadence: Option<Duration>,
    out: &mut Vec<Diagnostic>,
) {
    if let Some(cadence) = cadence.filter(|cadence| deadline.length > *cadence) {
        out.push(
            job.at_value(
                Code::DeadlineOverCadence,
                "deadline",
                format!(
                    "the deadline {} is longer than the {} between firings, so runs will overlap",
                    deadline.written,
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

/// The batch turnaround the planner assumes for the job's provider, when
/// even a run of one request would go straight to the sync lane because no
/// batch could end in time: the engine's own rule
/// ([`batch_worthwhile`](crate::plan::batch_worthwhile)) with the
/// catalog's figures, as a fresh engine that has measured nothing uses them.
fn goes_straight_to_sync(job: &Parsed, catalog: &Catalog, deadline: Duration) -> Option<Duration> {
    use crate::plan::{SyncLoad, batch_worthwhile, safety_margin, sync_estimate};
    let turnaround = catalog
        .providers
        .get(&job.manifest.provider)
        .and_then(crate::catalog::Provider::batch_turnaround)
        .unwrap_or(crate::plan::DEFAULT_BATCH_TURNAROUND);
    let output_tokens = job.manifest.max_tokens as f64 / 2.0;
    let latency = catalog
        .model(&job.manifest.provider, &job.manifest.model)
        .and_then(|(_, model)| model.sync_latency(output_tokens))
        .unwrap_or(Duration::ZERO);
    let one = SyncLoad { remaining: 1, input_tokens: 0.0, output_tokens, latency };
    let estimate = sync_estimate(one, crate::plan::SyncLimits::default());
    let start = DateTime::<Utc>::UNIX_EPOCH;
    let deadline_at = start + crate::clock::span(deadline);
    let margin = safety_margin(start, deadline_at, crate::plan::DEFAULT_MAX_SAFETY_MARGIN);
    (!batch_worthwhile(start, deadline_at, margin, estimate, turnaround)).then_some(turnaround)
}

/// The shortest deadline for which a batch can end before the fallback
/// must start: the turnaround plus the margin (a tenth of the window), rounded up to a minute.
fn min_batch_deadline(turnaround: Duration) -> Duration {
    let secs = (turnaround.as_secs_f64() / 0.9 / 60.0).ceil() as u64 * 60;
    Duration::from_secs(secs.max(60))
}
