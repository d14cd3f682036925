//! What the integration tests share: the real binary run from the
//! repository root, projects written into temporary directories
//! ([`project`]), `serve` as a child process ([`process`]), the state
//! database read back ([`db`]), and an engine on a manual clock with the
//! simulator following it ([`harness`]).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root (where `jobs/` and `prompts/` are).
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The broken-manifest corpus.
pub fn broken_dir() -> PathBuf {
    root().join("tests/fixtures/broken")
}

/// Runs `orchestrator ARGS` in `dir`.
pub fn run_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .args(args)
        .current_dir(dir)
        .env_remove("ORCHESTRATOR_JOBS")
        .env_remove("ORCHESTRATOR_PROMPTS")
        .env_remove("ORCHESTRATOR_CATALOG")
        .output()
        .expect("the orchestrator binary runs")
}

/// Runs `orchestrator ARGS` in the repository root.
pub fn run(args: &[&str]) -> Output {
    run_in(root(), args)
}

/// Standard output as text.
pub fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).expect("stdout is UTF-8")
}

/// Standard error as text.
pub fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).expect("stderr is UTF-8")
}

/// The exit code.
pub fn code(output: &Output) -> i32 {
    output.status.code().expect("exited normally")
}

/// Runs `orchestrator bench ingest` with `results` results, one repeat, and
/// returns its JSON figures; panics with its standard error if it failed.
pub fn bench_ingest(results: u64) -> serde_json::Value {
    let output = run(&["bench", "ingest", "--results", &results.to_string(), "--repeat", "1", "--format", "json"]);
    assert_eq!(code(&output), 0, "bench ingest --results {results} failed:\n{}", stderr(&output));
    serde_json::from_str(&stdout(&output)).expect("bench ingest prints one JSON object")
}

pub mod api;
pub mod db;
pub mod harness;
pub mod process;
pub mod project;

/// Waits (real time) until `done` holds, looking every 50 ms; fails the test
/// after `within`, naming `what` it waited for.
pub async fn wait_until(what: &str, within: std::time::Duration, mut done: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !done() {
        assert!(start.elapsed() < within, "timed out after {within:?} waiting for {what}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The simulator on a free loopback port whose time stands still until the
/// test moves `clock` (`ManualClock::advance`): a batch cannot end before
/// the test says so, however slow the machine.
pub async fn simulator_on(
    config: orchestrator::sim::SimConfig,
    clock: &orchestrator::clock::ManualClock,
) -> orchestrator::sim::SimHandle {
    let config = orchestrator::sim::SimConfig { listen: "127.0.0.1:0".parse().unwrap(), ..config };
    let shared: std::sync::Arc<dyn orchestrator::clock::Clock> = std::sync::Arc::new(clock.clone());
    orchestrator::sim::start_with_clock(config, shared).await.expect("the simulator starts")
}

/// The simulator on a free loopback port, with `config`'s knobs.
pub async fn simulator(config: orchestrator::sim::SimConfig) -> orchestrator::sim::SimHandle {
    let config = orchestrator::sim::SimConfig { listen: "127.0.0.1:0".parse().unwrap(), ..config };
    orchestrator::sim::start(config).await.expect("the simulator starts")
}

/// Reports a test that cannot run on this machine: prints `SKIPPED: <why>`
/// and lets it pass, unless `ORCHESTRATOR_REQUIRE_ALL_TESTS=1` (set by
/// `.ci/run`), where it fails instead, so CI never passes a test that did not run.
pub fn skip(why: &str) {
    let required = std::env::var("ORCHESTRATOR_REQUIRE_ALL_TESTS").is_ok_and(|v| v == "1");
    assert!(!required, "this test cannot run here, and ORCHESTRATOR_REQUIRE_ALL_TESTS=1 requires every test: {why}");
    eprintln!("SKIPPED: {why}");
}
