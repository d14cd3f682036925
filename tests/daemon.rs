//! The daemon's scheduling loop on a manual clock: DST transitions,
//! catch-up after downtime, and overlap policies, days in milliseconds.

use std::time::Duration;

use chrono::{DateTime, Utc};
use orchestrator::clock::Clock;
use orchestrator::daemon::Daemon;
use orchestrator::daemon::sdnotify::Notifier;
use orchestrator::sim::SimConfig;

use crate::support::harness::{Harness, harness_at};

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
}

fn daemon(h: &Harness) -> Daemon {
    Daemon::new(h.engine.clone(), Notifier::disabled()).with_max_sleep(Duration::from_secs(3600))
}

/// Runs the daemon as `serve` does until the clock reaches `end`.
async fn serve_until(h: &Harness, daemon: &Daemon, end: DateTime<Utc>) {
    crate::support::harness::serve_until(h, daemon, end, 60).await;
}

/// Scheduled instants of every run, in order.
fn fired(h: &Harness) -> Vec<DateTime<Utc>> {
    let db = h.db();
    let mut statement = db.prepare("SELECT scheduled_for FROM runs ORDER BY scheduled_for").unwrap();
    let rows = statement.query_map([], |row| row.get::<_, i64>(0)).unwrap();
    rows.map(|ms| DateTime::from_timestamp_millis(ms.unwrap()).unwrap()).collect()
}

async fn dst_case(cron: &str, zone: &str, from: &str, to: &str) -> Vec<DateTime<Utc>> {
    let head = format!("schedule: {{ cron: '{cron}', timezone: {zone} }}\ntier: soft\ndeadline: 1h\n");
    let h = harness_at(&head, 1, SimConfig::default(), at(from)).await;
    let daemon = daemon(&h);
    serve_until(&h, &daemon, at(to)).await;
    assert_eq!(h.count("SELECT COUNT(*) FROM runs WHERE state <> 'completed' AND scheduled_for < (SELECT MAX(scheduled_for) FROM runs)"), 0);
    let runs = fired(&h);
    h.sim.shutdown().await;
    runs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn berlin_fall_back_fires_a_repeated_local_time_once() {
    let runs = dst_case("30 2 * * *", "Europe/Berlin", "2026-10-24T12:00:00Z", "2026-10-27T00:00:00Z").await;
    // 02:30 CEST on the 25th (00:30 UTC), not again at 02:30 CET; then 02:30 CET (01:30 UTC).
    assert_eq!(runs, [at("2026-10-25T00:30:00Z"), at("2026-10-26T01:30:00Z")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn berlin_spring_forward_fires_a_missing_local_time_at_the_next_valid_instant() {
    let runs = dst_case("30 2 * * *", "Europe/Berlin", "2026-03-28T12:00:00Z", "2026-03-31T00:00:00Z").await;
    // 02:30 does not exist on the 29th: it fires when the clock jumps to 03:00 CEST.
    assert_eq!(runs, [at("2026-03-29T01:00:00Z"), at("2026-03-30T00:30:00Z")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_york_transitions_fire_once_each() {
    let spring = dst_case("30 2 * * *", "America/New_York", "2026-03-07T12:00:00Z", "2026-03-10T00:00:00Z").await;
    assert_eq!(spring, [at("2026-03-08T07:00:00Z"), at("2026-03-09T06:30:00Z")]);
    // In New York the repeated hour is 01:xx.
    let fall = dst_case("30 1 * * *", "America/New_York", "2026-10-31T12:00:00Z", "2026-11-03T00:00:00Z").await;
    assert_eq!(fall, [at("2026-11-01T05:30:00Z"), at("2026-11-02T06:30:00Z")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hourly_job_runs_both_passes_of_the_repeated_hour_each_with_its_own_ids() {
    // Europe/Berlin, 2026-10-25: 25 hours of real time, 02:00 twice.
    let head = "schedule: { cron: '0 * * * *', timezone: Europe/Berlin }\ntier: realtime\ndeadline: 10m\n";
    let h = harness_at(head, 2, SimConfig::default(), at("2026-10-24T21:59:30Z")).await;
    let daemon = daemon(&h);
    serve_until(&h, &daemon, at("2026-10-25T23:00:30Z")).await;
    assert_eq!(fired(&h).len(), 26, "midnight to midnight, both ends, is 26 firings on a 25-hour day");
    assert_eq!(
        h.count("SELECT COUNT(*) FROM runs WHERE state = 'completed'"),
        26,
        "{:?}",
        h.ids("SELECT run_key || ' ' || state || ' ' || COALESCE(reason, '') FROM runs WHERE state <> 'completed'")
    );
    let repeated = h.ids("SELECT run_key FROM runs WHERE run_key LIKE 'bulk-20261025T02%' ORDER BY scheduled_for");
    assert_eq!(repeated, ["bulk-20261025T0200", "bulk-20261025T0200B"]);
    let ids = h.ids("SELECT custom_id FROM requests WHERE custom_id LIKE 'bulk-20261025T0200%' ORDER BY custom_id");
    assert_eq!(
        ids,
        ["bulk-20261025T0200-001", "bulk-20261025T0200-002", "bulk-20261025T0200B-001", "bulk-20261025T0200B-002"]
    );
    assert_eq!(h.count("SELECT COUNT(*) FROM deliveries"), 52, "every run's results reached the sink");
    assert_eq!(h.count("SELECT COUNT(*) FROM events WHERE kind IN ('run_failed', 'run_start_failed')"), 0);
    h.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instant_whose_run_cannot_be_created_is_reported_and_fired_once_it_can() {
    let head = "schedule: { cron: '0 * * * *' }\ntier: realtime\ndeadline: 10m\n";
    let h = harness_at(head, 1, SimConfig::default(), at("2026-11-22T05:59:30Z")).await;
    // The state database refuses new runs (as a full disk would), but still records events.
    h.db()
        .execute_batch(
            "CREATE TRIGGER refuse BEFORE INSERT ON runs BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;",
        )
        .unwrap();
    let daemon = daemon(&h);
    serve_until(&h, &daemon, at("2026-11-22T06:05:00Z")).await;
    assert_eq!(fired(&h), Vec::<DateTime<Utc>>::new());
    assert_eq!(
        h.count("SELECT COUNT(*) FROM events WHERE kind = 'run_start_failed'"),
        1,
        "reported once, though tried again"
    );
    let report = orchestrator::status::collect(
        &orchestrator::store::Store::open(&h.dir.path().join("state/orchestrator.db")).unwrap(),
        None,
        &Default::default(),
        h.clock.now(),
    )
    .unwrap();
    assert_eq!(report.schedules[0].start_failed_for, Some(at("2026-11-22T06:00:00Z")));
    assert!(
        report.schedules[0].start_error.as_deref().unwrap_or("").contains("refused by the test"),
        "{:?}",
        report.schedules
    );
    assert!(orchestrator::status::render_text(&report).contains("could not start the run for 2026-11-22 06:00:00 UTC"));
    assert!(report.recent.iter().any(|e| e.kind == "run_start_failed"));
    // The cause goes away: the instant was not consumed, its run starts now.
    h.db().execute_batch("DROP TRIGGER refuse;").unwrap();
    serve_until(&h, &daemon, at("2026-11-22T06:10:00Z")).await;
    assert_eq!(fired(&h), [at("2026-11-22T06:00:00Z")]);
    assert_eq!(h.count("SELECT COUNT(*) FROM runs WHERE state = 'completed'"), 1);
    assert_eq!(
        h.count("SELECT COUNT(*) FROM schedules WHERE start_failed_for IS NOT NULL OR start_error IS NOT NULL"),
        0
    );
    h.sim.shutdown().await;
}

/// Runs a daily 06:00 UTC job, stops the daemon for three days, starts it
/// again; returns the scheduled instants of the runs and the skipped events.
async fn downtime(policy: &str) -> (Vec<DateTime<Utc>>, Vec<String>) {
    let head = format!("schedule: {{ cron: '0 6 * * *' }}\ntier: soft\ndeadline: 12h\ncatch_up: {policy}\n");
    let h = harness_at(&head, 1, SimConfig::default(), at("2026-11-22T07:00:00Z")).await;
    let first = daemon(&h);
    serve_until(&h, &first, at("2026-11-22T08:00:00Z")).await;
    drop(first);
    h.clock.advance(Duration::from_secs(3 * 86_400));
    let second = daemon(&h);
    serve_until(&h, &second, at("2026-11-25T09:00:00Z")).await;
    let reasons = h.ids("SELECT json_extract(detail, '$.reason') FROM events WHERE kind = 'run_skipped' ORDER BY id");
    let runs = fired(&h);
    h.sim.shutdown().await;
    (runs, reasons)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_latest_runs_only_the_most_recent_missed_instant() {
    let (runs, skipped) = downtime("latest").await;
    assert_eq!(runs, [at("2026-11-25T06:00:00Z")]);
    assert_eq!(skipped, ["not_latest", "not_latest"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_all_runs_every_missed_instant_oldest_first() {
    let (runs, skipped) = downtime("all").await;
    assert_eq!(runs, [at("2026-11-23T06:00:00Z"), at("2026-11-24T06:00:00Z"), at("2026-11-25T06:00:00Z")]);
    assert!(skipped.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_none_records_every_missed_instant_as_skipped() {
    let (runs, skipped) = downtime("none").await;
    assert!(runs.is_empty());
    assert_eq!(skipped, ["catch_up_none", "catch_up_none", "catch_up_none"]);
}

/// A job every 15 minutes whose batches never end, so each run stays open
/// until its fallback (about 50 minutes in).
async fn overlapping(policy: &str) -> Harness {
    let head = format!("schedule: {{ cron: '*/15 * * * *' }}\ntier: batch\ndeadline: 1h\noverlap: {policy}\n");
    let sim = SimConfig { never_end: true, ..SimConfig::default() };
    let h = harness_at(&head, 2, sim, at("2026-11-22T05:59:00Z")).await;
    let daemon = daemon(&h);
    serve_until(&h, &daemon, at("2026-11-22T07:10:00Z")).await;
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlap_skip_records_the_skipped_instants() {
    let h = overlapping("skip").await;
    // 06:00 runs until its fallback near 06:55; 06:15, 06:30, 06:45 are skipped; 07:00 runs.
    assert_eq!(fired(&h), [at("2026-11-22T06:00:00Z"), at("2026-11-22T07:00:00Z")]);
    assert_eq!(
        h.ids("SELECT json_extract(detail, '$.reason') FROM events WHERE kind = 'run_skipped'"),
        ["overlap", "overlap", "overlap"]
    );
    h.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlap_queue_starts_the_next_run_when_the_open_one_closes() {
    let h = overlapping("queue").await;
    let runs = fired(&h);
    assert_eq!(runs[..2], [at("2026-11-22T06:00:00Z"), at("2026-11-22T06:15:00Z")]);
    let (first_finished, second_created): (i64, i64) = h
        .db()
        .query_row(
            "SELECT (SELECT finished_at FROM runs ORDER BY scheduled_for LIMIT 1),
                    (SELECT created_at FROM runs ORDER BY scheduled_for LIMIT 1 OFFSET 1)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!(second_created >= first_finished, "the queued run waited for the open one");
    // 06:15 queued behind 06:00, then 06:30 behind 06:15: each recorded once.
    let queued =
        h.ids("SELECT json_extract(detail, '$.scheduled_for') FROM events WHERE kind = 'run_queued' ORDER BY id");
    assert_eq!(queued, ["2026-11-22T06:15:00+00:00", "2026-11-22T06:30:00+00:00"]);
    assert_eq!(h.count("SELECT COUNT(*) FROM events WHERE kind = 'run_skipped'"), 0);
    h.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlap_allow_starts_every_instant_while_earlier_runs_are_open() {
    let h = overlapping("allow").await;
    // Every quarter hour from 06:00 to 07:00 fires, whatever is still open.
    let expected: Vec<_> = (0..5).map(|n| at("2026-11-22T06:00:00Z") + chrono::Duration::minutes(15 * n)).collect();
    assert_eq!(fired(&h), expected);
    // Each run started while the one before it was still open (batches never
    // end; the fallback of 06:00 comes near 06:55).
    let db = h.db();
    let mut statement = db.prepare("SELECT created_at, finished_at FROM runs ORDER BY scheduled_for").unwrap();
    let lives: Vec<(i64, Option<i64>)> =
        statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?))).unwrap().map(Result::unwrap).collect();
    for pair in lives.windows(2) {
        let (started, (_, earlier_finished)) = (pair[1].0, pair[0]);
        assert!(earlier_finished.is_none_or(|finished| started < finished), "side by side: {lives:?}");
    }
    assert_eq!(h.count("SELECT COUNT(*) FROM events WHERE kind IN ('run_skipped', 'run_queued')"), 0);
    // Each run has its own requests and its own batch.
    assert_eq!(h.count("SELECT COUNT(DISTINCT run_id) FROM batches"), 5);
    assert_eq!(h.count("SELECT COUNT(*) FROM requests"), 10);
    h.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_finds_another_epoch_in_the_leadership_row_steps_down() {
    let h = harness_at(
        "schedule: { cron: '0 6 * * *' }\ntier: soft\ndeadline: 1h\n",
        1,
        SimConfig::default(),
        at("2026-11-22T00:00:00Z"),
    )
    .await;
    let daemon = Daemon::new(h.engine.clone(), Notifier::disabled())
        .with_max_sleep(Duration::from_secs(60))
        .with_renewal_every(Duration::ZERO);
    let (control, _reload) = orchestrator::daemon::Control::new();
    let options = orchestrator::daemon::Options { run_now: false, grace: Duration::from_secs(1) };
    let keep = || None;
    let served = daemon.run_until(options, control, &keep, orchestrator::daemon::Services::default());
    let usurper = async {
        crate::support::wait_until("the daemon's lead", Duration::from_secs(30), || {
            h.count("SELECT COUNT(*) FROM leadership WHERE epoch = 1") == 1
        })
        .await;
        // Another process records itself as leader, as only a bypassed lock allows.
        let mut store = orchestrator::store::Store::open(&h.dir.path().join("state/orchestrator.db")).unwrap();
        store.take_leadership(999_999, "elsewhere", Utc::now()).unwrap()
    };
    let (served, usurper) =
        tokio::time::timeout(Duration::from_secs(60), futures_util::future::join(served, usurper)).await.unwrap();
    assert_eq!(usurper.epoch, 2);
    match served {
        Err(orchestrator::store::StoreError::Superseded { epoch: 1, .. }) => {}
        other => panic!("the replaced leader stepped down with Superseded, not {other:?}"),
    }
    assert_eq!(h.count("SELECT pid FROM leadership"), 999_999, "it wrote nothing over the new leader's row");
}
