//! Running the real binary from the repository root.

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
