//! The `schedule` scenario: the next firing of 10,000 jobs spread over cron
//! shapes and time zones, computed as the scheduler does each tick (its
//! parsed schedule, then [`next_after`]); and, once, with the parsing a
//! tick did before schedules were kept parsed.

use std::time::Instant;

use anyhow::Context;
use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;

use super::figures::{Metric, Sampled, Target};
use super::project::{CRONS, TIME_ZONES};
use crate::schedule::{cron_parser, next_after};
use crate::scheduler::parsed_schedule;

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
    // The scheduler's first tick parses and keeps every schedule; the measured ticks are the later ones.
    tick(&specs, after);
    for _ in 0..repeats {
        let started = Instant::now();
        let parsed = parse_all(&specs)?;
        let parse_ms = started.elapsed().as_secs_f64() * 1000.0;
        let started = Instant::now();
        let firings = fire_all(&parsed, after);
        let next_ms = started.elapsed().as_secs_f64() * 1000.0;
        let started = Instant::now();
        let ticked = tick(&specs, after);
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

/// What a scheduler tick computes per job: its kept schedule, then the next firing.
fn tick(specs: &[(String, &str)], after: DateTime<Utc>) -> Vec<Option<DateTime<Utc>>> {
    specs
        .iter()
        .map(|(cron, tz)| parsed_schedule(cron, tz).and_then(|(cron, tz)| next_after(&cron, tz, after)))
        .collect()
}

fn fire_all(parsed: &[(croner::Cron, Tz)], after: DateTime<Utc>) -> Vec<Option<DateTime<Utc>>> {
    parsed.iter().map(|(cron, tz)| next_after(cron, *tz, after)).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_small_round_fires_every_job() {
        let report = super::run(100, 1).unwrap();
        assert_eq!(report.per_repeat.len(), 1);
    }
}
