//! The `schedule` scenario: the next firing of 10,000 jobs spread over cron
//! shapes and time zones, computed as the scheduler does each tick (each
//! compiled job's [`Schedule`], parsed once when the job was compiled);
//! and, for reference, parsing them all (what compiling the jobs costs).

use std::time::Instant;

use anyhow::Context;
use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;

use super::figures::{Metric, Sampled, Target};
use super::project::{CRONS, TIME_ZONES};
use crate::schedule::{Schedule, cron_parser, next_after};

/// Jobs per repeat.
pub const JOBS: usize = 10_000;
const METRICS: [Metric; 3] = [
    Metric { name: "scheduler tick (next fire), ms", target: Some(Target::at_most(50.0)) },
    Metric { name: "next fire of parsed crons, ms", target: Some(Target::at_most(50.0)) },
    Metric { name: "parsing 10,000 crons, ms", target: None },
];

/// Measures `repeats` rounds over `jobs` jobs.
pub fn run(jobs: usize, repeats: u32) -> anyhow::Result<Sampled> {
    // Just before a spring DST change in Europe, so wall-clock schedules take their slow path now and then.
    let after = Utc.with_ymd_and_hms(2026, 3, 28, 22, 17, 0).single().context("a valid instant")?;
    let specs: Vec<(String, &str)> = (0..jobs)
        .map(|n| (CRONS[n % CRONS.len()].to_owned(), TIME_ZONES[(n / CRONS.len()) % TIME_ZONES.len()]))
        .collect();
    let mut repeats_out = Vec::new();
    // Jobs are compiled once (at start and on reload): every tick reads their schedules.
    let compiled: Vec<Schedule> = specs
        .iter()
        .map(|(cron, tz)| Schedule::parse(cron, tz).map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<_>>()?;
    for _ in 0..repeats {
        let started = Instant::now();
        let parsed = parse_all(&specs)?;
        let parse_ms = started.elapsed().as_secs_f64() * 1000.0;
        let started = Instant::now();
        let firings = fire_all(&parsed, after);
        let next_ms = started.elapsed().as_secs_f64() * 1000.0;
        let started = Instant::now();
        let ticked = tick(&compiled, after);
        let tick_ms = started.elapsed().as_secs_f64() * 1000.0;
        anyhow::ensure!(firings == ticked && firings.iter().all(Option::is_some), "every job has a next firing");
        repeats_out.push(vec![tick_ms, next_ms, parse_ms]);
    }
    let setup = format!("{jobs} jobs, {} cron shapes x {} time zones", CRONS.len(), TIME_ZONES.len());
    Ok(Sampled::new("schedule", setup, &METRICS, &repeats_out))
}

fn parse_all(specs: &[(String, &str)]) -> anyhow::Result<Vec<(croner::Cron, Tz)>> {
    let parser = cron_parser();
    specs
        .iter()
        .map(|(cron, tz)| {
            let cron = parser.parse(cron).with_context(|| format!("cannot parse `{cron}`"))?;
            let tz: Tz = tz.parse().map_err(|_| anyhow::anyhow!("unknown time zone {tz}"))?;
            Ok((cron, tz))
        })
        .collect()
}

/// What a scheduler tick computes per job: the next firing of its compiled schedule.
fn tick(compiled: &[Schedule], after: DateTime<Utc>) -> Vec<Option<DateTime<Utc>>> {
    compiled.iter().map(|schedule| schedule.next_after(after)).collect()
}

fn fire_all(parsed: &[(croner::Cron, Tz)], after: DateTime<Utc>) -> Vec<Option<DateTime<Utc>>> {
    parsed.iter().map(|(cron, tz)| next_after(cron, *tz, after)).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_small_round_fires_every_job_and_measures_each_figure() {
        // `run` itself fails unless every job has a next firing and the tick agrees with the parsed crons.
        let report = super::run(100, 2).unwrap();
        assert_eq!(report.per_repeat.len(), 2);
        assert!(
            report.per_repeat.iter().all(|figures| figures.len() == 3 && figures.values().all(|ms| *ms > 0.0)),
            "{:?}",
            report.per_repeat
        );
    }
}
