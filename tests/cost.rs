//! Money end to end: weeks of the example jobs on a simulated clock, then
//! `orchestrator cost` (the real binary) against what the store holds.

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use orchestrator::daemon::Daemon;
use orchestrator::daemon::sdnotify::Notifier;
use orchestrator::sim::SimConfig;
use serde_json::Value;

use crate::support::harness::{Harness, harness_for};
use crate::support::{root, stdout};

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// The repository's example project in a temporary directory, with the
/// manifests' relative item and sink paths pointed into it (the test
/// process's working directory is the repository). `thin` replaces the
/// every-10- and every-15-minute realtime crons with 4-hourly ones, so a
/// month stays quick; everything else is as shipped.
pub fn example_project(thin: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path();
    copy_tree(&root().join("prompts"), &base.join("prompts"));
    copy_tree(&root().join("jobs/data"), &base.join("jobs/data"));
    for entry in std::fs::read_dir(root().join("jobs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let mut text = std::fs::read_to_string(&path).unwrap();
        text = text.replace("jobs/data/", &format!("{}/jobs/data/", base.display()));
        text = text.replace(" out/", &format!(" {}/out/", base.display()));
        text = text.replace("\"out/", &format!("\"{}/out/", base.display()));
        if thin {
            text = text.replace("\"*/10 * * * *\"", "\"5 */4 * * *\"").replace("\"*/15 * * * *\"", "\"20 */4 * * *\"");
        }
        std::fs::write(base.join("jobs").join(path.file_name().unwrap()), text).unwrap();
    }
    dir
}

/// Runs the daemon as `serve` does until the clock reaches `end`.
async fn serve_until(h: &Harness, end: DateTime<Utc>) {
    let daemon = Daemon::new(h.engine.clone(), Notifier::disabled()).with_max_sleep(Duration::from_secs(3600));
    crate::support::harness::serve_until(h, &daemon, end, 240).await;
}

fn cost_json(h: &Harness, extra: &[&str]) -> Value {
    let db = h.dir.path().join("state/orchestrator.db");
    let mut args = vec!["cost", "--state", db.to_str().unwrap(), "--format", "json"];
    args.extend_from_slice(extra);
    let output = crate::support::run(&args);
    assert!(output.status.success(), "{}", crate::support::stderr(&output));
    serde_json::from_str(&stdout(&output)).unwrap()
}

/// List prices per million tokens of the models the example jobs use:
/// (input, output, 5-minute write, 1-hour write, read), written out by hand.
fn list_prices(model: &str) -> [f64; 5] {
    match model {
        "claude-haiku-4-5" => [1.0, 5.0, 1.25, 2.0, 0.1],
        "claude-sonnet-4-6" => [3.0, 15.0, 3.75, 6.0, 0.3],
        "claude-opus-4-6" => [5.0, 25.0, 6.25, 10.0, 0.5],
        // OpenAI writes no cache: its cached input tokens are reads.
        "gpt-4.1-mini" => [0.4, 1.6, f64::NAN, f64::NAN, 0.1],
        "gemini-2.5-flash-lite" => [0.1, 0.4, f64::NAN, f64::NAN, 0.025],
        other => panic!("the test has no hand-written prices for {other}"),
    }
}

fn close(a: f64, b: f64, tolerance: f64) -> bool {
    (a - b).abs() <= tolerance
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_month_of_the_example_jobs_costs_what_the_store_says_and_saves_the_difference() {
    let sim = SimConfig { time_scale: 600.0, ..SimConfig::default() };
    let h = harness_for(example_project(true), "feed-classify", sim, at("2026-11-01T00:00:00Z")).await;
    serve_until(&h, at("2026-12-01T00:00:00Z")).await;
    h.settle_batches().await;
    let report = cost_json(&h, &["--since", "2026-11-01", "--until", "2026-12-02", "--by", "job"]);

    // The report's totals are the sums of the stored results.
    let db = h.db();
    let (cost, sync, results): (i64, i64, i64) = db
        .query_row("SELECT SUM(cost_micros), SUM(sync_cost_micros), COUNT(*) FROM results", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    assert!(results > 1000, "a month of runs stored {results} results");
    let total = &report["total"];
    assert!(close(total["cost_usd"].as_f64().unwrap(), cost as f64 / 1e6, 1e-9), "{total}");
    assert!(close(total["sync_equivalent_usd"].as_f64().unwrap(), sync as f64 / 1e6, 1e-9), "{total}");
    let savings = total["savings_usd"].as_f64().unwrap();
    assert!(close(savings, (sync - cost) as f64 / 1e6, 1e-9), "savings = sync-equivalent − actual: {total}");
    let succeeded = h.count("SELECT COUNT(*) FROM results WHERE status = 'succeeded'");
    assert_eq!(total["requests"].as_i64().unwrap(), succeeded);

    // And the stored costs are the hand-computed price of the stored usage.
    let mut statement = db
        .prepare(
            "SELECT model, lane, input_tokens, output_tokens, cache_write_5m, cache_write_1h, cache_read, duplicate
             FROM results WHERE status = 'succeeded'",
        )
        .unwrap();
    let (mut expected_cost, mut expected_sync) = (0.0, 0.0);
    for row in statement
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                [r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?],
                r.get::<_, bool>(7)?,
            ))
        })
        .unwrap()
    {
        let (model, lane, tokens, duplicate): (String, String, [f64; 5], bool) = row.unwrap();
        let list: f64 =
            list_prices(&model).iter().zip(tokens).filter(|(_, n)| *n > 0.0).map(|(price, n)| price * n / 1e6).sum();
        expected_cost += if lane == "batch" { list / 2.0 } else { list };
        expected_sync += if duplicate { 0.0 } else { list };
    }
    let rounding = succeeded as f64 * 0.5e-6;
    assert!(close(total["cost_usd"].as_f64().unwrap(), expected_cost, rounding), "{expected_cost} vs {total}");
    assert!(close(total["sync_equivalent_usd"].as_f64().unwrap(), expected_sync, rounding), "{expected_sync}");

    // Rows by job add up to the total; realtime jobs save nothing, batch-tier jobs about half.
    let rows = report["rows"].as_array().unwrap();
    let sum: f64 = rows.iter().map(|r| r["cost_usd"].as_f64().unwrap()).sum();
    assert!(close(sum, total["cost_usd"].as_f64().unwrap(), 1e-6));
    let row = |job: &str| rows.iter().find(|r| r["key"] == job).unwrap_or_else(|| panic!("no row for {job}"));
    assert_eq!(row("heartbeat")["savings_usd"].as_f64().unwrap(), 0.0);
    let audit = row("code-audit");
    let pct = audit["savings_pct"].as_f64().unwrap();
    assert!((49.0..=50.5).contains(&pct), "code-audit saved {pct}%");
    assert!(audit["kpis"]["batch_token_share"]["value"].as_f64().unwrap() > 0.99);
    assert_eq!(report["kpis"]["batch_error_rate"]["value"].as_f64().unwrap(), 0.0);
    let share = report["kpis"]["batch_token_share"]["value"].as_f64().unwrap();
    assert!(share > 0.8, "eligible tokens went through the batch lane: {share}");

    // The table and CSV formats carry the same total.
    let state = h.dir.path().join("state/orchestrator.db");
    let window = ["--since", "2026-11-01", "--until", "2026-12-02"];
    let csv =
        crate::support::run(&[&["cost", "--state", state.to_str().unwrap(), "--format", "csv"][..], &window].concat());
    let last = stdout(&csv).lines().last().unwrap().to_owned();
    assert!(last.starts_with(&format!("total,{:.6},", cost as f64 / 1e6)), "{last}");

    // By lane, the rows split the requests; by tag, a run counts under each of its tags.
    let by_lane = cost_json(&h, &["--since", "2026-11-01", "--until", "2026-12-02", "--by", "lane"]);
    let lanes: Vec<&str> = by_lane["rows"].as_array().unwrap().iter().map(|r| r["key"].as_str().unwrap()).collect();
    assert_eq!(lanes, ["batch", "sync"]);
    let lane_requests: i64 = by_lane["rows"].as_array().unwrap().iter().map(|r| r["requests"].as_i64().unwrap()).sum();
    assert_eq!(lane_requests, succeeded);
    let by_tag = cost_json(&h, &["--since", "2026-11-01", "--until", "2026-12-02", "--by", "tag"]);
    let security = by_tag["rows"].as_array().unwrap().iter().find(|r| r["key"] == "security").unwrap();
    assert_eq!(security["cost_usd"], audit["cost_usd"], "code-audit is the only job tagged security");

    // By provider: OpenAI is feed-summaries alone, Gemini feed-topics, each at half price in its batch lane.
    let by_provider = cost_json(&h, &["--since", "2026-11-01", "--until", "2026-12-02", "--by", "provider"]);
    let providers = by_provider["rows"].as_array().unwrap();
    let keys: Vec<&str> = providers.iter().map(|r| r["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["anthropic", "gemini", "openai"]);
    for (provider, job) in [(&providers[2], "feed-summaries"), (&providers[1], "feed-topics")] {
        assert_eq!(provider["cost_usd"], row(job)["cost_usd"], "{job} is its provider's only job");
        assert!(provider["cost_usd"].as_f64().unwrap() > 0.0 && provider["requests"].as_i64().unwrap() > 0);
        let pct = provider["savings_pct"].as_f64().unwrap();
        assert!((49.0..=50.5).contains(&pct), "{job}'s batch lane saved {pct}%");
    }
    let sum: f64 = providers.iter().map(|r| r["cost_usd"].as_f64().unwrap()).sum();
    assert!(close(sum, total["cost_usd"].as_f64().unwrap(), 1e-6), "providers add up to the total");

    // New prices apply to history with --reprice: haiku at twice its list price.
    let doubled = h.dir.path().join("doubled.yaml");
    let catalog = std::fs::read_to_string(root().join("catalog/models.yaml")).unwrap().replace(
        "prices: { input: 1, output: 5, cache_write_5m: 1.25, cache_write_1h: 2, cache_read: 0.1 }",
        "prices: { input: 2, output: 10, cache_write_5m: 2.5, cache_write_1h: 4, cache_read: 0.2 }",
    );
    std::fs::write(&doubled, catalog).unwrap();
    let haiku = |report: &Value| {
        let rows = report["rows"].as_array().unwrap();
        let row = rows.iter().find(|r| r["key"] == "claude-haiku-4-5").expect("a haiku row");
        (row["cost_usd"].as_f64().unwrap(), row["requests"].as_f64().unwrap())
    };
    let by_model = ["--since", "2026-11-01", "--until", "2026-12-02", "--by", "model"];
    let (before, haiku_requests) = haiku(&cost_json(&h, &by_model));
    let repriced = cost_json(&h, &[&by_model[..], &["--reprice", "--catalog", doubled.to_str().unwrap()]].concat());
    let (after, _) = haiku(&repriced);
    assert!(before > 0.0 && close(after, 2.0 * before, haiku_requests * 1e-6), "{before} → {after}");
    h.sim.shutdown().await;
}
