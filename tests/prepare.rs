//! Runs bigger than one chunk: items streamed into the store a chunk at a
//! time, nothing of a run sent before all of it is stored, and the sync lane
//! fed a window at a time.

use orchestrator::sim::SimConfig;
use orchestrator::store::{NewRequest, NewRun};

use crate::support::harness::{harness, t0};

/// More items than one chunk of preparation, so a run takes several transactions.
const ITEMS: usize = 4500;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_cut_off_while_preparing_is_prepared_again_before_anything_is_sent() {
    let h = harness("batch", "12h", ITEMS, SimConfig::default()).await;
    // What a crash after the first chunk leaves: the run, some of its
    // requests (stale ones here), and no mark that it is prepared.
    let deadline_at = t0() + chrono::Duration::hours(12);
    h.engine
        .store()
        .call(move |s| {
            let new = NewRun {
                job: "bulk",
                scheduled_for: t0(),
                run_key: "bulk-20261122T0600",
                tier: "batch",
                deadline_at,
                lane: "batch",
                tags: &[],
            };
            let (run, _) = s.create_run(&new, t0())?;
            let stale: Vec<NewRequest> = (1..=2000)
                .map(|seq| NewRequest {
                    custom_id: format!("bulk-2026-11-22-{seq:03}"),
                    seq,
                    item: "{}".into(),
                    params: "{\"stale\":true}".into(),
                })
                .collect();
            s.insert_requests(run.id, &stale, t0())
        })
        .await
        .unwrap();
    // The daemon's tick finds the run before the scheduler fires it again.
    h.settle_batches().await;
    let (_, outcome) = h.run().await;
    assert_eq!(outcome.state.as_str(), "completed", "{outcome:?}");
    assert_eq!(h.count("SELECT COUNT(*) FROM requests"), ITEMS as i64);
    assert_eq!(h.count("SELECT COUNT(*) FROM request_bodies WHERE params LIKE '%stale%'"), 0, "stale bodies are gone");
    assert_eq!(h.count("SELECT COUNT(*) FROM runs WHERE prepared_at IS NULL"), 0);
    let stats = h.sim.stats();
    assert_eq!((stats.batches_created, stats.custom_ids_submitted_more_than_once), (1, 0));
    assert_eq!(h.count("SELECT request_count FROM batches"), ITEMS as i64, "one batch with every item");
    h.assert_delivered_once(ITEMS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_fails_after_some_chunks_fails_the_run_with_nothing_stored_or_sent() {
    let h = harness("batch", "12h", ITEMS, SimConfig::default()).await;
    let items = h.dir.path().join("items.jsonl");
    let mut text = std::fs::read_to_string(&items).unwrap();
    text.push_str("{\"id\": \"cut off\n");
    std::fs::write(&items, text).unwrap();
    let deadline_at = t0() + chrono::Duration::hours(12);
    let error = h.engine.start_run(&h.job, t0(), deadline_at).await.unwrap_err().to_string();
    assert!(error.contains(&format!("malformed line(s), first at line {}", ITEMS + 1)), "{error}");
    assert_eq!(h.ids("SELECT state || ': ' || reason FROM runs"), vec![format!("failed: {error}")]);
    assert_eq!(h.count("SELECT COUNT(*) FROM requests"), 0, "no request of a partial input is kept");
    assert_eq!(h.count("SELECT COUNT(*) FROM request_bodies"), 0);
    h.settle_batches().await;
    assert_eq!(h.sim.stats().batches_created, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_run_larger_than_one_window_is_sent_whole_and_once() {
    // The sync lane is fed 2,000 requests at a time; the second window
    // goes out only once the first has drained.
    const SYNC_ITEMS: usize = 2500;
    let h = harness("realtime", "1h", SYNC_ITEMS, SimConfig::default()).await;
    let (_, outcome) = h.run().await;
    assert_eq!(outcome.state.as_str(), "completed", "{outcome:?}");
    h.assert_delivered_once(SYNC_ITEMS);
    let calls = h.count(crate::support::harness::Harness::SYNC_CALLS);
    assert_eq!(calls, SYNC_ITEMS as i64, "each item sent once, window after window");
    assert_eq!(h.sim.stats().batches_created, 0);
}
