//! `orchestrator estimate` on the example jobs and on a project with history and hints.

use serde_json::Value;

use crate::support::{code, root, run, run_in, stdout};

fn json(output: &std::process::Output) -> Value {
    assert_eq!(code(output), 0, "{}", crate::support::stderr(output));
    serde_json::from_str(&stdout(output)).unwrap()
}

#[test]
fn the_example_jobs_project_sync_only_against_routed_at_five_times_the_volume() {
    let state = tempfile::tempdir().unwrap();
    let db = state.path().join("none.db");
    let estimate = json(&run(&["estimate", "--state", db.to_str().unwrap(), "--volume", "5", "--format", "json"]));
    let rows = estimate["rows"].as_array().unwrap();
    let jobs = std::fs::read_dir(root().join("jobs"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "yaml"));
    assert_eq!(rows.len(), jobs.count(), "one row per example job");
    let row = |name: &str| rows.iter().find(|r| r["job"] == name).unwrap();
    // Realtime jobs cost the same either way; batch-tier jobs cost half routed.
    let heartbeat = row("heartbeat");
    assert_eq!(heartbeat["sync_only_usd"], heartbeat["routed_usd"]);
    assert_eq!(heartbeat["runs_per_month"], 4320, "every 10 minutes for 30 days");
    let audit = row("code-audit");
    let (sync, routed) = (audit["sync_only_usd"].as_f64().unwrap(), audit["routed_usd"].as_f64().unwrap());
    assert!(sync > 0.0 && (routed - sync / 2.0).abs() < 1e-3, "{audit}");
    assert_eq!(audit["items_source"], "items", "the items the next run would read");
    let total = estimate["totals"]["sync_only_usd"].as_f64().unwrap();
    let sum: f64 = rows.iter().map(|r| r["sync_only_usd"].as_f64().unwrap()).sum();
    assert!((total - sum).abs() < 1e-9);
    let at_five = estimate["totals_at_volume"]["savings_usd"].as_f64().unwrap();
    assert!((at_five - 5.0 * estimate["totals"]["savings_usd"].as_f64().unwrap()).abs() < 1e-9);
    let table = stdout(&run(&["estimate", "--state", db.to_str().unwrap(), "--volume", "5"]));
    assert!(table.contains("total per month") && table.contains("at 5x volume"), "{table}");
}

#[test]
fn hints_advice_and_batch_model_shape_the_projection() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("jobs")).unwrap();
    std::fs::create_dir_all(dir.path().join("prompts")).unwrap();
    // 1 run a day x 100 items x (1,000 in + 200 out) on haiku ($1/$5): $0.002 a request, $6 a month on sync.
    let hints = "estimate: { items_per_run: 100, input_tokens: 1000, output_tokens: 200 }\n";
    let base = "schedule: { cron: '0 6 * * *' }\nmodel: claude-haiku-4-5\nmax_tokens: 300\nprompt: { inline: hi }\n";
    std::fs::write(dir.path().join("jobs/slow-realtime.yaml"), format!("{base}tier: realtime\ndeadline: 3h\n{hints}"))
        .unwrap();
    std::fs::write(
        dir.path().join("jobs/ideas.yaml"),
        format!("{base}tier: batch\nbatch_model: claude-sonnet-4-6\n{hints}"),
    )
    .unwrap();
    let estimate = json(&run_in(dir.path(), &["estimate", "--format", "json"]));
    let rows = estimate["rows"].as_array().unwrap();
    let row = |name: &str| rows.iter().find(|r| r["job"] == name).unwrap();
    let slow = row("slow-realtime");
    assert_eq!(slow["tokens_source"], "hints");
    assert!((slow["sync_only_usd"].as_f64().unwrap() - 6.0).abs() < 1e-6, "{slow}");
    // Sonnet ($3/$15) at half price: 100 x 30 x (0.0015 + 0.0015) = $9 routed, against $6 sync-only on haiku.
    let ideas = row("ideas");
    assert_eq!(ideas["model"], "claude-sonnet-4-6");
    assert!((ideas["routed_usd"].as_f64().unwrap() - 9.0).abs() < 1e-6, "{ideas}");
    let advice = estimate["advice"].as_array().unwrap();
    assert_eq!(advice.len(), 1, "{advice:?}");
    assert_eq!(advice[0]["job"], "slow-realtime");
    assert!((advice[0]["savings_usd"].as_f64().unwrap() - 3.0).abs() < 1e-6);
}
