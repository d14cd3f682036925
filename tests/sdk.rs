//! Fidelity against code others wrote: the providers' official Python SDKs
//! run against `orchestrator sim` (scripts in tests/sdk/). `.ci/run` installs
//! them; elsewhere a missing SDK skips its test and says so.

use std::process::Command;

use orchestrator::sim::SimConfig;

use crate::support::{root, simulator, skip};

/// Whether `python3` can import `module`.
fn python_has(module: &str) -> bool {
    Command::new("python3").args(["-c", &format!("import {module}")]).output().is_ok_and(|o| o.status.success())
}

/// Runs `tests/sdk/<script>` with `env`; panics with its output unless every check passed.
fn run_script(script: &str, env: &[(&str, String)]) {
    let mut command = Command::new("python3");
    command.arg(root().join("tests/sdk").join(script));
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().expect("python3 runs");
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{script} failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("all checks passed"), "{script} did not finish its checks:\n{stdout}\n{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_anthropic_sdk_works_against_the_simulator() {
    if !python_has("anthropic") {
        return skip("the official `anthropic` SDK is not installed (`pip install anthropic`)");
    }
    let sim = simulator(SimConfig { batch_median_secs: 0.5, batch_p95_secs: 1.0, ..SimConfig::default() }).await;
    let url = sim.base_url();
    tokio::task::spawn_blocking(move || run_script("anthropic_conformance.py", &[("ANTHROPIC_BASE_URL", url)]))
        .await
        .unwrap();
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_openai_sdk_works_against_the_simulator() {
    if !python_has("openai") {
        return skip("the official `openai` SDK is not installed (`pip install openai`)");
    }
    let key = "sk-conformance-only".to_owned();
    let config =
        SimConfig { batch_median_secs: 0.5, batch_p95_secs: 1.0, api_key: Some(key.clone()), ..SimConfig::default() };
    let sim = simulator(config).await;
    let env = [("OPENAI_BASE_URL", format!("{}/v1", sim.base_url())), ("OPENAI_API_KEY", key)];
    tokio::task::spawn_blocking(move || run_script("openai_conformance.py", &env)).await.unwrap();
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_google_genai_sdk_works_against_the_simulator() {
    if !python_has("google.genai") {
        return skip("the official `google-genai` SDK is not installed (`pip install google-genai`)");
    }
    let key = "gemini-conformance-only".to_owned();
    let config =
        SimConfig { batch_median_secs: 0.5, batch_p95_secs: 1.0, api_key: Some(key.clone()), ..SimConfig::default() };
    let sim = simulator(config).await;
    let env = [("GOOGLE_GEMINI_BASE_URL", sim.base_url()), ("GEMINI_API_KEY", key)];
    tokio::task::spawn_blocking(move || run_script("gemini_conformance.py", &env)).await.unwrap();
    sim.shutdown().await;
}
