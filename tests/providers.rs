//! Each provider's client against the simulator on the paths a run of the
//! example jobs does not take: a Gemini batch too big to send inline goes
//! through the resumable upload and comes back as a responses file.

use std::time::Duration;

use orchestrator::providers::gemini::GeminiClient;
use orchestrator::providers::{ApiKey, BatchInput, BatchPhase};
use orchestrator::sim::SimConfig;

use crate::support::simulator;

/// `count` requests of about `bytes` each, as the renderer stores them.
fn gemini_input(count: usize, bytes: usize) -> BatchInput {
    let text = "word ".repeat(bytes / 5);
    let rows: Vec<(String, String)> = (0..count)
        .map(|i| {
            let params = format!(
                r#"{{"model":"gemini-2.5-flash","contents":[{{"role":"user","parts":[{{"text":"{i} {text}"}}]}}],"generationConfig":{{"maxOutputTokens":8}}}}"#
            );
            (format!("big-2026-12-02-{i:05}"), params)
        })
        .collect();
    BatchInput::in_memory("orchestrator-batch-1", rows, 500)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gemini_batch_over_20_mb_is_uploaded_and_its_results_come_back_as_a_file() {
    let sim = simulator(SimConfig { batch_median_secs: 0.5, batch_p95_secs: 1.0, ..SimConfig::default() }).await;
    let client = GeminiClient::new(&sim.base_url(), ApiKey::new("gemini-test")).unwrap();
    let input = gemini_input(2100, 10_000);
    assert!(input.params_bytes > 20_000_000, "the body would be over the inline limit");
    let created = client.create_batch(&input).await.unwrap();
    let stats = sim.stats();
    let gemini = stats.providers.get("gemini").cloned().unwrap_or_default();
    assert_eq!((gemini.files_uploaded, gemini.batches_created, gemini.requests_received), (1, 1, 2100), "{stats:?}");
    assert_eq!(stats.chunked_bodies, 0, "the upload went out with a Content-Length");
    assert_eq!(stats.endpoint_calls.get("POST /upload/v1beta/files"), Some(&2), "a start and one finalizing upload");
    assert_eq!(created.tag.as_deref(), Some("orchestrator-batch-1"), "the tag is the display name");

    // Polled as the lane polls, until the simulator says it ended (the evidence).
    let started = std::time::Instant::now();
    let ended = loop {
        let seen = client.retrieve_batch(&created.id).await.unwrap();
        if seen.phase == BatchPhase::Ended {
            break seen;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "the batch did not end: {seen:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(ended.request_count, Some(2100));
    let locator = orchestrator::providers::gemini::Locator::parse(ended.results.as_deref().unwrap()).unwrap();
    assert!(locator.file.is_some() && !locator.inline, "a file batch answers with a file: {locator:?}");
    let mut reader = client.results(ended.results.as_deref().unwrap()).await.unwrap();
    let mut keys = std::collections::BTreeSet::new();
    while let Some(line) = reader.next().await.unwrap() {
        let line = line.unwrap();
        assert!(keys.insert(line.custom_id.clone()), "{} came back twice", line.custom_id);
    }
    assert_eq!(keys.len(), 2100, "every request, matched by key");
    sim.shutdown().await;
}
