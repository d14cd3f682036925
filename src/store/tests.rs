use chrono::{DateTime, Duration, Utc};

use super::*;
use crate::outcome::{Outcome, Usage};

fn at(minutes: i64) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-22T06:00:00Z").unwrap().with_timezone(&Utc) + Duration::minutes(minutes)
}

fn open() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state/orchestrator.db")).unwrap();
    (dir, store)
}

/// A test run on SQLite and again on PostgreSQL, with a fresh `store` each.
macro_rules! both_engines {
    (fn $name:ident($store:ident) $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[test]
            #[allow(unused_mut)]
            fn sqlite() {
                let (_dir, mut $store) = open();
                $body
            }

            #[test]
            #[allow(unused_mut)]
            fn postgres() {
                let Some((_database, mut $store)) = crate::store::test_postgres::TestDatabase::with_store() else {
                    return;
                };
                $body
            }
        }
    };
}

/// The run `run_with_requests` creates.
fn feed_run() -> NewRun<'static> {
    NewRun {
        job: "feed",
        scheduled_for: at(0),
        run_key: "feed-20261122T0600",
        tier: "batch",
        deadline_at: at(600),
        lane: "batch",
        tags: &[],
    }
}

/// A run of `n` pending requests, all in one submitted batch (`msgbatch_1`).
fn submitted_batch(store: &mut Store, n: usize) -> (RunRow, Vec<String>, BatchRow) {
    let run = run_with_requests(store, n);
    let ids = store.request_ids(run.id, &[RequestState::Pending]).unwrap();
    let batch = store.record_batch_intent(run.id, "anthropic", &ids, at(1)).unwrap();
    store.mark_batch_submitted(batch.id, "msgbatch_1", at(2)).unwrap();
    (run, ids, batch)
}

fn run_with_requests(store: &mut Store, n: usize) -> RunRow {
    let new = feed_run();
    let (run, created) = store.create_run(&new, at(0)).unwrap();
    assert!(created);
    let requests: Vec<NewRequest> = (1..=n)
        .map(|seq| NewRequest {
            custom_id: format!("feed-2026-11-22-{seq:03}"),
            seq,
            item: "{}".into(),
            params: format!("{{\"n\":{seq}}}"),
        })
        .collect();
    store.insert_requests(run.id, &requests, at(0)).unwrap();
    run
}

/// A streamed batch success for `custom_id`, unpriced.
fn batch_success(custom_id: &str) -> IncomingResult {
    IncomingResult { custom_id: custom_id.to_owned(), outcome: success("batch"), price: None }
}

fn success(text: &str) -> Outcome {
    Outcome::Succeeded {
        message: format!("{{\"content\":[{{\"type\":\"text\",\"text\":\"{text}\"}}]}}"),
        stop_reason: Some("end_turn".into()),
        usage: Usage { input_tokens: 10, output_tokens: 5, ..Usage::default() },
    }
}

#[test]
fn a_new_database_is_private_migrated_and_in_wal_mode() {
    let (dir, store) = open();
    let path = dir.path().join("state/orchestrator.db");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }
    assert_eq!(store.schema_version().unwrap(), schema::MIGRATIONS.len());
    let mode: String = store.conn.query_row("PRAGMA journal_mode", [], |row| row.get(0)).unwrap();
    assert_eq!(mode, "wal");
    let fk: i64 = store.conn.query_row("PRAGMA foreign_keys", [], |row| row.get(0)).unwrap();
    assert_eq!(fk, 1);
    drop(store);
    assert_eq!(
        Store::open(&path).unwrap().schema_version().unwrap(),
        schema::MIGRATIONS.len(),
        "reopening is harmless"
    );
}

#[test]
fn a_database_from_a_newer_version_is_refused_and_left_alone() {
    let (dir, store) = open();
    let path = dir.path().join("state/orchestrator.db");
    store.sqlite_conn().pragma_update(None, "user_version", 99).unwrap();
    drop(store);
    let before = std::fs::read(&path).unwrap();
    let err = Store::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::TooNew { found: 99, .. }), "{err}");
    assert!(err.to_string().contains("not modified"));
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

both_engines! {
    fn a_run_is_created_once_per_key(store) {
        let first = run_with_requests(&mut store, 2);
        let new = feed_run();
        let (again, created) = store.create_run(&new, at(5)).unwrap();
        assert!(!created);
        assert_eq!(again.id, first.id);
        assert_eq!(store.open_runs().unwrap().len(), 1);
    }
}

both_engines! {
    fn intent_then_submission_moves_requests_through_the_states(store) {
        let run = run_with_requests(&mut store, 3);
        let ids = store.request_ids(run.id, &[RequestState::Pending]).unwrap();
        let batch = store.record_batch_intent(run.id, "anthropic", &ids, at(1)).unwrap();
        assert_eq!(batch.state, BatchState::Submitting);
        assert_eq!(store.request_counts(run.id).unwrap()["queued"], 3);
        assert_eq!(store.batches_in(&[BatchState::Submitting]).unwrap().len(), 1);
        store.mark_batch_submitted(batch.id, "msgbatch_1", at(2)).unwrap();
        assert_eq!(store.request_counts(run.id).unwrap()["in_flight"], 3);
        let mut seen = Vec::new();
        store.for_each_batch_request(batch.id, |id, params| seen.push((id.to_owned(), params.to_owned()))).unwrap();
        assert_eq!(seen.len(), 3);
        assert_eq!(seen[0], ("feed-2026-11-22-001".to_owned(), "{\"n\":1}".to_owned()));
        assert_eq!(store.request_attempts("feed-2026-11-22-001").unwrap(), 0, "submitting uses up no attempt");
    }
}

both_engines! {
    fn only_a_requests_own_failures_use_up_its_attempts(store) {
        let (_, ids, batch) = submitted_batch(&mut store, 5);
        let errored = |kind: &str| Outcome::Errored { error_type: kind.into(), message: String::new() };
        let lines = vec![
            (ids[0].clone(), errored("api_error")),
            (ids[1].clone(), errored("overloaded_error")),
            (ids[2].clone(), Outcome::Expired),
            (ids[3].clone(), Outcome::Canceled),
            (ids[4].clone(), success("a")),
        ];
        store.ingest_batch_results(batch.id, &lines, at(30)).unwrap();
        let used: Vec<u32> = ids.iter().map(|id| store.request_attempts(id).unwrap()).collect();
        assert_eq!(used, [1, 0, 0, 0, 0], "an api_error counts; overload, expiry and cancel do not");
        // The same on the sync lane: a transport failure counts, a success adds nothing.
        let attempt = store.record_attempt(&crate::store::NewAttempt::started("sync", "create_message", at(40))).unwrap();
        let timeout = Outcome::Errored { error_type: "transport_error".into(), message: "timed out".into() };
        store.record_sync_result(&ids[1], attempt, &timeout, at(41)).unwrap();
        store.record_sync_result(&ids[2], attempt, &success("b"), at(41)).unwrap();
        assert_eq!(store.request_attempts(&ids[1]).unwrap(), 1);
        assert_eq!(store.request_attempts(&ids[2]).unwrap(), 0);
    }
}

both_engines! {
    fn ingest_is_idempotent_and_settles_each_request(store) {
        let (run, ids, batch) = submitted_batch(&mut store, 4);
        let lines = vec![
            (ids[0].clone(), success("a")),
            (ids[1].clone(), Outcome::Errored { error_type: "invalid_request_error".into(), message: "bad".into() }),
            (ids[2].clone(), Outcome::Expired),
            ("someone-else-001".to_owned(), success("x")),
        ];
        let first = store.ingest_batch_results(batch.id, &lines, at(30)).unwrap();
        assert_eq!(first, ResultCounts { stored: 3, already_stored: 0, unknown: 1, duplicates: 0 });
        let again = store.ingest_batch_results(batch.id, &lines, at(31)).unwrap();
        assert_eq!(again, ResultCounts { stored: 0, already_stored: 3, unknown: 1, duplicates: 0 });
        store.mark_results_ingested(batch.id, at(32)).unwrap();
        let counts = store.request_counts(run.id).unwrap();
        assert_eq!(
            (counts["succeeded"], counts["permanent_failed"], counts["retryable_failed"], counts["in_flight"]),
            (1, 1, 2, 0)
        );
        assert_eq!(
            store.permanent_failures(run.id).unwrap(),
            vec![(ids[1].clone(), "invalid_request_error".into(), "bad".into())]
        );
        assert!(store.batch(batch.id).unwrap().unwrap().results_ingested);
    }
}

both_engines! {
    fn marking_a_batch_ingested_fails_only_its_own_requests_without_a_line(store) {
        let run = run_with_requests(&mut store, 4);
        let ids = store.request_ids(run.id, &[RequestState::Pending]).unwrap();
        let first = store.record_batch_intent(run.id, "anthropic", &ids[..2], at(1)).unwrap();
        store.mark_batch_submitted(first.id, "msgbatch_1", at(2)).unwrap();
        let second = store.record_batch_intent(run.id, "anthropic", &ids[2..], at(3)).unwrap();
        store.mark_batch_submitted(second.id, "msgbatch_2", at(4)).unwrap();
        store.ingest_batch_results(first.id, &[(ids[0].clone(), success("a"))], at(30)).unwrap();
        store.mark_results_ingested(first.id, at(31)).unwrap();
        let counts = store.request_counts(run.id).unwrap();
        // ids[1] had no line in its batch; ids[2..] are still at the provider in the other one.
        assert_eq!((counts["succeeded"], counts["retryable_failed"], counts["in_flight"]), (1, 1, 2));
    }
}

both_engines! {
    fn a_late_success_after_a_final_result_is_duplicate_spend(store) {
        let run = run_with_requests(&mut store, 1);
        let ids = store.request_ids(run.id, &[RequestState::Pending]).unwrap();
        let first = store.record_batch_intent(run.id, "anthropic", &ids, at(1)).unwrap();
        store.mark_batch_submitted(first.id, "msgbatch_1", at(2)).unwrap();
        store.ingest_batch_results(first.id, &[(ids[0].clone(), success("first"))], at(3)).unwrap();
        let second = store.record_batch_intent(run.id, "anthropic", &ids, at(4)).unwrap();
        store.mark_batch_submitted(second.id, "msgbatch_2", at(5)).unwrap();
        let counts = store.ingest_batch_results(second.id, &[(ids[0].clone(), success("second"))], at(6)).unwrap();
        assert_eq!(counts.duplicates, 1);
        let deliverable = store.undelivered_results(run.id, 100).unwrap();
        assert_eq!(deliverable.len(), 1);
        assert!(deliverable[0].message.contains("first"), "the first final result wins");
    }
}

both_engines! {
    fn deliveries_are_recorded_once(store) {
        let (run, ids, batch) = submitted_batch(&mut store, 2);
        store
            .ingest_batch_results(batch.id, &[(ids[0].clone(), success("a")), (ids[1].clone(), success("b"))], at(3))
            .unwrap();
        let first = store.undelivered_results(run.id, 1).unwrap();
        assert_eq!(
            first.iter().map(|r| r.custom_id.as_str()).collect::<Vec<_>>(),
            [ids[0].as_str()],
            "in order, a round at a time"
        );
        let pending = store.undelivered_results(run.id, 100).unwrap();
        assert_eq!(pending.len(), 2);
        assert!(store.record_delivery(&pending[0].custom_id, pending[0].result_id, "jsonl", "out/a.jsonl", at(4)).unwrap());
        assert!(
            !store.record_delivery(&pending[0].custom_id, pending[0].result_id, "jsonl", "out/a.jsonl", at(5)).unwrap()
        );
        assert_eq!(store.undelivered_results(run.id, 100).unwrap().len(), 1);
        assert_eq!(store.delivery_count(run.id).unwrap(), 1);
    }
}

both_engines! {
    fn a_round_of_deliveries_is_recorded_once_with_its_file_length_and_the_reference_checks_come_back_on(store) {
        let (run, ids, batch) = submitted_batch(&mut store, 2);
        store
            .ingest_batch_results(batch.id, &[(ids[0].clone(), success("a")), (ids[1].clone(), success("b"))], at(3))
            .unwrap();
        let round: Vec<(String, i64)> =
            store.undelivered_results(run.id, 100).unwrap().into_iter().map(|r| (r.custom_id, r.result_id)).collect();
        assert_eq!(round.len(), 2);
        store.record_deliveries(&round, "jsonl", "out/a.jsonl", Some(120), at(4)).unwrap();
        // A round recorded again (a retry after a failed commit was in fact committed) changes nothing.
        store.record_deliveries(&round, "jsonl", "out/a.jsonl", Some(240), at(5)).unwrap();
        assert_eq!(store.delivery_count(run.id).unwrap(), 2);
        assert!(store.undelivered_results(run.id, 100).unwrap().is_empty());
        assert_eq!(store.sink_file_length("out/a.jsonl").unwrap(), Some(240));
        // The checks are off only while the round is written (SQLite; PostgreSQL keeps them).
        if let Some(conn) = store.conn.as_sqlite() {
            let fk: i64 = conn.query_row("PRAGMA foreign_keys", [], |row| row.get(0)).unwrap();
            assert_eq!(fk, 1);
        }
    }
}

both_engines! {
    fn an_abandoned_intent_returns_its_requests_to_pending(store) {
        let run = run_with_requests(&mut store, 2);
        let ids = store.request_ids(run.id, &[RequestState::Pending]).unwrap();
        let batch = store.record_batch_intent(run.id, "anthropic", &ids, at(1)).unwrap();
        store.abandon_batch(batch.id, "create failed: 400 invalid_request_error", at(2)).unwrap();
        assert_eq!(store.request_ids(run.id, &[RequestState::Pending]).unwrap(), ids);
        assert_eq!(store.batch(batch.id).unwrap().unwrap().state, BatchState::Abandoned);
        let kinds: Vec<String> = store.events(Some(run.id)).unwrap().into_iter().map(|e| e.kind).collect();
        assert_eq!(kinds, ["run_created", "batch_intent", "batch_abandoned"]);
    }
}

both_engines! {
    fn finishing_a_run_closes_it_with_its_reason(store) {
        let run = run_with_requests(&mut store, 1);
        store.finish_run(run.id, RunState::Late, Some("deadline passed with 1 request open"), at(700)).unwrap();
        let row = store.run(run.id).unwrap().unwrap();
        assert_eq!((row.state, row.reason.as_deref()), (RunState::Late, Some("deadline passed with 1 request open")));
        assert!(store.open_runs().unwrap().is_empty());
    }
}

#[test]
fn a_version_2_database_keeps_its_runs_and_results_through_the_money_migration() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(schema::MIGRATIONS[0]).unwrap();
        conn.execute_batch(schema::MIGRATIONS[1]).unwrap();
        conn.execute_batch(
            "PRAGMA user_version = 2;
             INSERT INTO runs (id, job, scheduled_for, run_key, tier, deadline_at, state, created_at, lane)
                 VALUES (7, 'feed', 0, 'feed-19700101T0000', 'batch', 1000, 'completed', 0, 'batch');
             INSERT INTO requests (custom_id, run_id, seq, item, params, state, updated_at)
                 VALUES ('feed-1970-01-01-1', 7, 1, '{}', '{\"model\":\"claude-haiku-4-5\"}', 'succeeded', 0);
             INSERT INTO results (custom_id, lane, status, input_tokens, output_tokens, received_at)
                 VALUES ('feed-1970-01-01-1', 'batch', 'succeeded', 1000, 100, 0);",
        )
        .unwrap();
    }
    let mut store = Store::open(&path).unwrap();
    assert_eq!(store.schema_version().unwrap(), schema::MIGRATIONS.len());
    let run = store.run(7).unwrap().unwrap();
    assert_eq!((run.state, run.tags.len(), run.sync_blocked), (RunState::Completed, 0, None));
    let unpriced = store.unpriced_results(10).unwrap();
    assert_eq!(unpriced.len(), 1);
    assert_eq!(unpriced[0].model.as_deref(), Some("claude-haiku-4-5"));
    let fk: i64 = store.conn.query_row("PRAGMA foreign_keys", [], |row| row.get(0)).unwrap();
    assert_eq!(fk, 1, "references are enforced again after migrating");
    store.finish_run(7, RunState::Skipped, Some("budget"), at(0)).unwrap();
    assert_eq!(store.run(7).unwrap().unwrap().state, RunState::Skipped);
}

both_engines! {
    fn streamed_results_wait_for_the_settle_and_a_sync_result_in_between_wins(store) {
        let (run, ids, batch) = submitted_batch(&mut store, 3);
        let (sender, mut receiver) = tokio::sync::mpsc::channel(8);
        sender.try_send(vec![batch_success(&ids[0])]).unwrap();
        sender.try_send(vec![batch_success(&ids[1])]).unwrap();
        sender.try_send(vec![batch_success(&ids[2])]).unwrap();
        drop(sender);
        let mut commits = 0;
        let counts = store.store_batch_stream(batch.id, &mut receiver, 2, at(3), &mut || commits += 1).unwrap();
        assert_eq!((counts.stored, commits), (3, 2), "two lines per transaction, then the rest");
        assert_eq!(store.request_counts(run.id).unwrap()["in_flight"], 3, "states wait for the settle");
        // The fallback finished the first request before the settle: it keeps its sync result.
        let attempt = store.record_attempt(&NewAttempt::started("sync", "create_message", at(4))).unwrap();
        assert_eq!(store.record_sync_result(&ids[0], attempt, &success("sync"), at(4)).unwrap(), SyncSettle::Settled);
        assert_eq!(store.settle_batch_results(batch.id, at(5)).unwrap(), 1, "the batch success is duplicate spend");
        assert_eq!(store.settle_batch_results(batch.id, at(6)).unwrap(), 0, "settling again changes nothing");
        assert_eq!(store.request_counts(run.id).unwrap()["succeeded"], 3);
        let delivered: Vec<String> =
            store.undelivered_results(run.id, 100).unwrap().into_iter().map(|r| r.message).collect();
        assert_eq!(delivered.len(), 3);
        assert!(delivered[0].contains("sync") && delivered[1].contains("batch"), "{delivered:?}");
    }
}

both_engines! {
    fn whether_any_request_waits_agrees_with_the_list_of_those_that_wait(store) {
        let run = run_with_requests(&mut store, 3);
        let listed = |store: &Store, max_attempts| -> Vec<String> {
            store.waiting_requests(run.id, max_attempts).unwrap().into_iter().map(|w| w.custom_id).collect()
        };
        let ids = listed(&store, 3);
        assert_eq!(
            ids,
            ["feed-2026-11-22-001", "feed-2026-11-22-002", "feed-2026-11-22-003"],
            "pending, in sequence order"
        );
        assert!(store.has_waiting_requests(run.id, 3).unwrap());
        let batch = store.record_batch_intent(run.id, "anthropic", &ids, at(1)).unwrap();
        store.mark_batch_submitted(batch.id, "msgbatch_1", at(2)).unwrap();
        assert!(listed(&store, 3).is_empty() && !store.has_waiting_requests(run.id, 3).unwrap(), "all in flight");
        let api_error = Outcome::Errored { error_type: "api_error".into(), message: String::new() };
        let lines = [(ids[0].clone(), api_error), (ids[1].clone(), success("a")), (ids[2].clone(), success("b"))];
        store.ingest_batch_results(batch.id, &lines, at(30)).unwrap();
        // The failure used up one attempt: it waits only while more are allowed.
        for (max_attempts, waiting) in [(1, vec![]), (2, vec![ids[0].clone()])] {
            assert_eq!(listed(&store, max_attempts), waiting, "max_attempts {max_attempts}");
            assert_eq!(store.has_waiting_requests(run.id, max_attempts).unwrap(), !waiting.is_empty());
        }
    }
}

both_engines! {
    fn the_output_estimate_averages_the_winning_successes_of_the_jobs_runs(store) {
        let answered = |output_tokens| Outcome::Succeeded {
            message: "{}".into(),
            stop_reason: None,
            usage: Usage { input_tokens: 10, output_tokens, ..Usage::default() },
        };
        // An older run: one request answered with 10 output tokens by the batch.
        let (older, ids, batch) = submitted_batch(&mut store, 2);
        store.ingest_batch_results(batch.id, &[(ids[0].clone(), answered(10))], at(30)).unwrap();
        // A newer run: 30 tokens from the sync lane, then a late batch duplicate of 1,000 that won nothing.
        let newer = NewRun { scheduled_for: at(60), run_key: "feed-20261122T0700", ..feed_run() };
        let (newer, _) = store.create_run(&newer, at(60)).unwrap();
        let request =
            NewRequest { custom_id: "feed-20261122T0700-001".into(), seq: 1, item: "{}".into(), params: "{}".into() };
        store.insert_requests(newer.id, std::slice::from_ref(&request), at(60)).unwrap();
        let late =
            store.record_batch_intent(newer.id, "anthropic", std::slice::from_ref(&request.custom_id), at(61)).unwrap();
        store.mark_batch_submitted(late.id, "msgbatch_2", at(62)).unwrap();
        let attempt = store.record_attempt(&NewAttempt::started("sync", "create_message", at(63))).unwrap();
        store.record_sync_result(&request.custom_id, attempt, &answered(30), at(63)).unwrap();
        let counts = store.ingest_batch_results(late.id, &[(request.custom_id.clone(), answered(1000))], at(64)).unwrap();
        assert_eq!(counts.duplicates, 1);
        assert_eq!(store.token_averages(newer.id, "feed").unwrap().output_tokens, Some(20.0), "(10 + 30) / 2");
        assert_eq!(
            store.token_averages(older.id, "other").unwrap().output_tokens,
            None,
            "another job's results are not its own"
        );
    }
}

both_engines! {
    fn an_empty_chunk_commits_what_the_stream_has_sent_so_far(store) {
        let (_, ids, batch) = submitted_batch(&mut store, 2);
        let (sender, mut receiver) = tokio::sync::mpsc::channel(8);
        sender.try_send(vec![batch_success(&ids[0])]).unwrap();
        sender.try_send(Vec::new()).unwrap();
        sender.try_send(Vec::new()).unwrap();
        sender.try_send(vec![batch_success(&ids[1])]).unwrap();
        drop(sender);
        let mut commits = 0;
        let counts = store.store_batch_stream(batch.id, &mut receiver, 100, at(3), &mut || commits += 1).unwrap();
        assert_eq!(
            (counts.stored, commits),
            (2, 2),
            "one commit asked for, one at the end; a second ask finds nothing open"
        );
    }
}

// Batch successes priced as they are stored need no pricing pass; one
// that turns out to be duplicate spend keeps its cost and loses its saving.
both_engines! {
    fn a_batch_success_priced_as_it_is_stored_loses_its_saving_once_it_is_a_duplicate(store) {
        let (_, ids, batch) = submitted_batch(&mut store, 2);
        let price = AnswerPrice {
            model: "claude-haiku-4-5-20251001".into(),
            provider: Some("anthropic".into()),
            cost_micros: 30,
            sync_cost_micros: 60,
        };
        let (sender, mut receiver) = tokio::sync::mpsc::channel(8);
        let incoming =
            |id: &String| IncomingResult { custom_id: id.clone(), outcome: success("batch"), price: Some(price.clone()) };
        sender.try_send(ids.iter().map(incoming).collect()).unwrap();
        drop(sender);
        store.store_batch_stream(batch.id, &mut receiver, 10, at(3), &mut || {}).unwrap();
        assert!(store.unpriced_results(10).unwrap().is_empty(), "nothing is left to price");
        // The first request was answered by the sync lane before the settle.
        let attempt = store.record_attempt(&NewAttempt::started("sync", "create_message", at(4))).unwrap();
        store.record_sync_result(&ids[0], attempt, &success("sync"), at(4)).unwrap();
        assert_eq!(store.settle_batch_results(batch.id, at(5)).unwrap(), 1);
        let costs = |duplicate: i64| -> (String, String, i64, i64) {
            store
                .conn
                .query_row(
                    "SELECT model, provider, cost_micros, sync_cost_micros FROM results
                     WHERE lane = 'batch' AND duplicate = ?1",
                    [duplicate],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .unwrap()
        };
        assert_eq!(costs(0), ("claude-haiku-4-5-20251001".into(), "anthropic".into(), 30, 60));
        assert_eq!(costs(1), ("claude-haiku-4-5-20251001".into(), "anthropic".into(), 30, 0), "paid, saved nothing");
        assert_eq!(store.unpriced_results(10).unwrap().len(), 1, "only the sync result waits for the pricing pass");
    }
}

both_engines! {
    fn a_stored_batch_success_settles_a_request_whose_newer_sync_call_failed(store) {
        let (run, ids, batch) = submitted_batch(&mut store, 1);
        store.store_batch_results(batch.id, &[(ids[0].clone(), success("batch"))], at(3)).unwrap();
        // The fallback's call for it fails (newer than the stored batch line) before the settle.
        let attempt = store.record_attempt(&NewAttempt::started("sync", "create_message", at(4))).unwrap();
        let failed = Outcome::Errored { error_type: "api_error".into(), message: "boom".into() };
        store.record_sync_result(&ids[0], attempt, &failed, at(4)).unwrap();
        assert_eq!(store.request_counts(run.id).unwrap()["retryable_failed"], 1);
        store.settle_batch_results(batch.id, at(5)).unwrap();
        assert_eq!(store.request_counts(run.id).unwrap()["succeeded"], 1, "the paid success is not thrown away");
        let delivered = store.undelivered_results(run.id, 10).unwrap();
        assert!(delivered[0].message.contains("batch"), "{delivered:?}");
    }
}

both_engines! {
    fn only_an_unprepared_run_loses_its_requests_when_preparing_again(store) {
        let run = run_with_requests(&mut store, 3);
        assert_eq!(run.prepared_at, None, "a run is prepared only when told");
        assert_eq!(store.discard_unprepared_requests(run.id).unwrap(), 3);
        assert_eq!(store.request_counts(run.id).unwrap().values().sum::<u64>(), 0);
        let bodies: i64 = store.conn.query_row("SELECT COUNT(*) FROM request_bodies", [], |r| r.get(0)).unwrap();
        assert_eq!(bodies, 0, "the bodies go with their requests");

        let request =
            NewRequest { custom_id: "feed-2026-11-22-001".into(), seq: 1, item: "{}".into(), params: "{}".into() };
        store.insert_requests(run.id, &[request], at(1)).unwrap();
        store.mark_prepared(run.id, at(2)).unwrap();
        assert_eq!(store.run(run.id).unwrap().unwrap().prepared_at, Some(at(2)));
        assert_eq!(store.discard_unprepared_requests(run.id).unwrap(), 0);
        assert_eq!(store.request_counts(run.id).unwrap().values().sum::<u64>(), 1, "a prepared run keeps its requests");
    }
}

#[test]
fn migrating_to_v5_prepares_every_run_but_an_open_one_without_requests() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v4.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        for migration in &schema::MIGRATIONS[..4] {
            conn.execute_batch(migration).unwrap();
        }
        conn.execute_batch(
            "PRAGMA user_version = 4;
             INSERT INTO runs (id, job, scheduled_for, run_key, tier, deadline_at, state, created_at, lane)
                 VALUES (1, 'feed', 0, 'feed-a', 'batch', 1000, 'open', 10, 'batch'),
                        (2, 'feed', 1, 'feed-b', 'batch', 1000, 'open', 20, 'batch'),
                        (3, 'feed', 2, 'feed-c', 'batch', 1000, 'completed', 30, 'batch');
             INSERT INTO requests (custom_id, run_id, seq, state, updated_at) VALUES ('feed-a-1', 1, 1, 'pending', 0);
             INSERT INTO request_bodies (custom_id, item, params) VALUES ('feed-a-1', '{}', '{}');",
        )
        .unwrap();
    }
    let store = Store::open(&path).unwrap();
    let prepared = |id| store.run(id).unwrap().unwrap().prepared_at.map(|t| t.timestamp_millis());
    assert_eq!(prepared(1), Some(10), "an open run with requests was stored whole");
    assert_eq!(prepared(2), None, "an open run without requests was cut off: it is prepared again");
    assert_eq!(prepared(3), Some(30));
}

#[test]
fn migrating_to_v14_gives_every_stored_request_its_params_length_in_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v13.db");
    let params = "{\"prompt\":\"Größe über 5 €\"}";
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        for migration in &schema::MIGRATIONS[..13] {
            conn.execute_batch(migration).unwrap();
        }
        conn.execute_batch(&format!(
            "PRAGMA user_version = 13;
             INSERT INTO runs (id, job, scheduled_for, run_key, tier, deadline_at, state, created_at, lane, prepared_at)
                 VALUES (1, 'feed', 0, 'feed-a', 'batch', 1000, 'open', 10, 'batch', 10);
             INSERT INTO requests (custom_id, run_id, seq, state, updated_at)
                 VALUES ('feed-a-1', 1, 1, 'pending', 0), ('feed-a-2', 1, 2, 'pending', 0);
             INSERT INTO request_bodies (custom_id, item, params) VALUES ('feed-a-1', '{{}}', '{params}'), ('feed-a-2', '{{}}', '{{}}');"
        ))
        .unwrap();
    }
    let store = Store::open(&path).unwrap();
    let lengths: Vec<usize> = store.waiting_requests(1, 3).unwrap().iter().map(|w| w.params_len).collect();
    assert_eq!(lengths, [params.len(), 2], "bytes of the stored params");
    let averages = store.token_averages(1, "feed").unwrap();
    assert_eq!(averages.input_tokens, (params.len() + 2) as f64 / 2.0 / 4.0);
}

#[test]
fn sync_candidates_come_a_window_at_a_time_in_sequence_order() {
    let (_dir, store) = {
        let (dir, mut store) = open();
        run_with_requests(&mut store, 5);
        (dir, store)
    };
    let window: Vec<String> = store.sync_candidates(1, 3, 2).unwrap().into_iter().map(|w| w.custom_id).collect();
    assert_eq!(window, ["feed-2026-11-22-001", "feed-2026-11-22-002"]);
    assert_eq!(store.sync_candidates(1, 3, usize::MAX).unwrap().len(), 5);
}

both_engines! {
    fn the_latest_run_is_the_last_scheduled_even_when_an_older_one_is_open(store) {
        let older = store.create_run(&feed_run(), at(0)).unwrap().0;
        let newer = NewRun { scheduled_for: at(3600), run_key: "feed-20261122T0700", ..feed_run() };
        let newer = store.create_run(&newer, at(3600)).unwrap().0;
        store.finish_run(newer.id, RunState::Completed, None, at(3700)).unwrap();
        assert_eq!(store.run(older.id).unwrap().unwrap().state, RunState::Open);
        assert_eq!(store.latest_run("feed").unwrap().map(|r| r.id), Some(newer.id));
        assert_eq!(store.latest_run("other").unwrap(), None);
    }
}

both_engines! {
    fn a_waiting_requests_length_is_its_bytes_as_batch_limits_count_them(store) {
        let (run, _) = store.create_run(&feed_run(), at(0)).unwrap();
        let params = "{\"prompt\":\"Größe über 5 €\"}".to_owned();
        let request =
            NewRequest { custom_id: "feed-2026-11-22-001".into(), seq: 1, item: "{}".into(), params: params.clone() };
        store.insert_requests(run.id, &[request], at(0)).unwrap();
        let waiting = store.waiting_requests(run.id, 3).unwrap();
        assert_eq!(waiting[0].params_len, params.len(), "bytes, not the {} characters", params.chars().count());
        assert_ne!(params.len(), params.chars().count());
        let averages = store.token_averages(run.id, "feed").unwrap();
        assert_eq!(averages.input_tokens, params.len() as f64 / 4.0);
    }
}

both_engines! {
    fn each_takeover_raises_the_epoch_and_a_replaced_leader_renews_nothing(store) {
        assert_eq!(store.leader().unwrap(), None, "nobody has led a new database");
        let first = store.take_leadership(100, "host-a", at(0)).unwrap();
        assert_eq!((first.epoch, first.pid, first.host.as_str(), first.since), (1, 100, "host-a", at(0)));
        assert!(store.renew_leadership(1, at(1)).unwrap());
        assert_eq!(store.leader().unwrap().unwrap().renewed_at, at(1));
        let second = store.take_leadership(200, "host-b", at(2)).unwrap();
        assert_eq!((second.epoch, second.pid, second.since, second.renewed_at), (2, 200, at(2), at(2)));
        assert!(!store.renew_leadership(1, at(3)).unwrap(), "the first leader was replaced");
        store.release_leadership(1, at(3)).unwrap();
        assert_eq!(store.leader().unwrap().unwrap(), second, "its renewal and release wrote nothing");
        store.release_leadership(2, at(4)).unwrap();
        assert_eq!(store.leader().unwrap().unwrap().stopped_at, Some(at(4)));
        let third = store.take_leadership(300, "host-c", at(5)).unwrap();
        assert_eq!((third.epoch, third.stopped_at), (3, None), "a takeover clears the stop");
        let takeovers = store.recent_events(&["leader_took_over"], at(-60), 10).unwrap();
        assert_eq!(takeovers.len(), 1, "only the lead taken from a leader that never stopped: {takeovers:?}");
        assert_eq!(takeovers[0].detail["previous"]["pid"], 100);
        assert_eq!((takeovers[0].detail["epoch"].as_i64(), takeovers[0].at), (Some(2), at(2)));
    }
}

#[test]
fn a_database_that_cannot_be_reached_is_named_without_its_password() {
    // Port 1 on loopback: nothing listens, the connection is refused at once.
    let error = Store::open(Path::new("postgres://writer:hunter2@127.0.0.1:1/state")).unwrap_err();
    let text = error.to_string();
    assert!(matches!(error, StoreError::Connect { .. }), "{text}");
    assert!(text.contains("postgres://writer@127.0.0.1:1/state") && !text.contains("hunter2"), "{text}");
    assert!(!Path::new("postgres:").exists(), "nothing was created for it");
}

/// The tables, columns and named indexes of a store, as `table.column` and `index:name`.
fn schema_outline(store: &Store) -> std::collections::BTreeSet<String> {
    let sql = match store.conn.dialect() {
        sql::Dialect::Sqlite => {
            "SELECT m.name || '.' || c.name FROM sqlite_master m JOIN pragma_table_info(m.name) c WHERE m.type = 'table'
             UNION ALL SELECT 'index:' || name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
        }
        sql::Dialect::Postgres => {
            "SELECT table_name || '.' || column_name FROM information_schema.columns
             WHERE table_schema = 'public' AND table_name <> 'orchestrator_schema'
             UNION ALL SELECT 'index:' || indexname FROM pg_indexes
             WHERE schemaname = 'public' AND indexname NOT LIKE '%\\_pkey' AND indexname NOT LIKE '%\\_key'"
        }
    };
    let mut statement = store.conn.prepare(sql).unwrap();
    statement.query_map([], |row| row.get::<_, String>(0)).unwrap().map(Result::unwrap).collect()
}

#[test]
fn both_engines_have_the_same_tables_columns_and_indexes() {
    assert_eq!(
        schema_postgres::BASELINE_VERSION + schema_postgres::MIGRATIONS.len(),
        Store::supported_version(),
        "every SQLite migration has its PostgreSQL counterpart"
    );
    let Some((_database, postgres)) = test_postgres::TestDatabase::with_store() else { return };
    let (_dir, sqlite) = open();
    let outline = schema_outline(&sqlite);
    assert!(outline.len() > 130, "every table's columns are listed: {outline:?}");
    assert_eq!(schema_outline(&postgres), outline);
    assert_eq!(postgres.schema_version().unwrap(), Store::supported_version());
}

both_engines! {
    fn a_lease_is_taken_only_once_it_ran_out_or_was_released(store) {
        let lease = std::time::Duration::from_secs(10);
        let first = store.claim_lease(100, "host-a", at(0), lease).unwrap().expect("nobody leads yet");
        assert_eq!(first.epoch, 1);
        assert!(store.renew_leadership(1, at(1)).unwrap());
        let held = at(1) + Duration::seconds(9);
        assert_eq!(store.claim_lease(200, "host-b", held, lease).unwrap(), None, "renewed 9 s ago: still held");
        let second = store.claim_lease(200, "host-b", held + Duration::seconds(2), lease).unwrap().expect("ran out");
        assert_eq!((second.epoch, second.pid, second.host.as_str()), (2, 200, "host-b"));
        assert!(!store.renew_leadership(1, at(2)).unwrap(), "the first leader renews nothing now");
        store.release_leadership(2, at(3)).unwrap();
        let third = store.claim_lease(300, "host-c", at(3), lease).unwrap().expect("released: free at once");
        assert_eq!(third.epoch, 3);
        let takeovers = store.recent_events(&["leader_took_over"], at(-60), 10).unwrap();
        assert_eq!(takeovers.len(), 1, "only the lead taken from a leader that never stopped: {takeovers:?}");
        assert_eq!(takeovers[0].detail["previous"]["pid"], 100);
    }
}

/// On PostgreSQL every write of a process that leads is fenced by its
/// epoch: once another process took the lease, the old leader's writes
/// fail (and commit nothing) instead of racing the new one's.
#[test]
fn a_process_that_lost_the_lease_commits_nothing() {
    let Some(database) = test_postgres::TestDatabase::create() else { return };
    let mut old = Store::open(database.url()).unwrap();
    let mut new = Store::open(database.url()).unwrap();
    let lease = std::time::Duration::from_secs(10);
    let pid = std::process::id();
    old.claim_lease(pid, "old", at(0), lease).unwrap().expect("free");
    let (run, _) = old.create_run(&feed_run(), at(0)).unwrap();
    // The other process takes over after the lease ran out (it is another
    // process in production; here a pid that is not this one).
    let taken = new.claim_lease(pid + 1, "new", at(1), lease).unwrap().expect("ran out");
    assert_eq!(taken.epoch, 2);
    let error = old.finish_run(run.id, RunState::Completed, None, at(2)).unwrap_err();
    assert!(matches!(error, StoreError::Superseded { epoch: 1, .. }), "{error}");
    let error = old.renew_leadership(1, at(2)).unwrap_err();
    assert!(matches!(error, StoreError::Superseded { .. }), "{error}");
    assert_eq!(new.run(run.id).unwrap().unwrap().state, RunState::Open, "the fenced write committed nothing");
    sql::set_fence(database.url().to_str().unwrap(), None);
}

/// A session the server ended (a restart, a cut network, a session idle
/// in a transaction for too long) is opened again before the next
/// statement, not left failing every call until the process restarts.
#[test]
fn a_postgresql_session_the_server_ended_is_opened_again() {
    let Some((database, mut store)) = test_postgres::TestDatabase::with_store() else { return };
    store.create_run(&feed_run(), at(0)).unwrap();
    let other = Store::open(database.url()).unwrap();
    let ended: i64 = other
        .conn
        .query_row(
            "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(ended, 1, "the first store's session was ended");
    let (_, created) =
        store.create_run(&NewRun { run_key: "feed-b", scheduled_for: at(60), ..feed_run() }, at(1)).unwrap();
    assert!(created, "written through a new session");
    assert_eq!(other.open_runs_of("feed").unwrap().len(), 2, "both runs are stored");
    // A read-only store (the dashboard's) stays read-only on its new session.
    let reader = Store::open_read_only(database.url()).unwrap();
    let end_others = "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity
                      WHERE datname = current_database() AND pid <> pg_backend_pid()";
    let ended: i64 = other.conn.query_row(end_others, [], |row| row.get(0)).unwrap();
    assert_eq!(ended, 2, "the writer's and the reader's sessions were ended");
    let read_only: String = reader.conn.query_row("SHOW default_transaction_read_only", [], |row| row.get(0)).unwrap();
    assert_eq!(read_only, "on");
}

both_engines! {
    fn a_runs_failures_are_grouped_by_kind_with_the_latest_message(store) {
        let (run, ids, batch) = submitted_batch(&mut store, 3);
        let errored = |message: &str| Outcome::Errored { error_type: "overloaded_error".into(), message: message.into() };
        let lines = [(ids[0].clone(), errored("first")), (ids[1].clone(), errored("second")), (ids[2].clone(), success("c"))];
        store.ingest_batch_results(batch.id, &lines, at(3)).unwrap();
        let groups = store.run_errors(run.id).unwrap();
        assert_eq!(groups.len(), 1, "{groups:?}");
        assert_eq!((groups[0].error_type.as_str(), groups[0].count), ("overloaded_error", 2));
        // Stored in custom_id order: the second line is the newer row.
        assert_eq!(groups[0].message, "second");
    }
}

both_engines! {
    fn the_notifier_reads_new_events_of_its_kinds_and_the_alerts_it_sent(store) {
        let (run, _) = store.create_run(&feed_run(), at(0)).unwrap();
        let sent = serde_json::json!({ "key": "run_late:feed", "alert": "run_late", "target": "slack", "text": "late" });
        store.record_event(Some(run.id), Some("feed"), "alert_sent", &sent, at(1)).unwrap();
        store.record_event(Some(run.id), Some("feed"), "run_late", &serde_json::json!({}), at(2)).unwrap();
        let found = store.events_after(0, &["run_late", "deadline_missed"], 10).unwrap();
        let kinds: Vec<&str> = found.iter().map(|(_, event)| event.kind.as_str()).collect();
        assert_eq!(kinds, ["run_late"]);
        let alerts = store.sent_alerts_since(at(0)).unwrap();
        assert_eq!(alerts, [("run_late:feed".to_owned(), "slack".to_owned())].into_iter().collect());
        assert!(store.sent_alerts_since(at(5)).unwrap().is_empty());
    }
}
