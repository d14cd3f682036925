//! `orchestrator serve` as a child process: started against a simulator,
//! signalled, and waited for.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use orchestrator::sim::SimHandle;

/// `orchestrator serve --listen 127.0.0.1:0 --config orchestrator.yaml ARGS`
/// in `dir`, against `sim` (its URL and a test key), outside systemd, with
/// its standard error going to `stderr`.
pub fn serve(dir: &Path, sim: &SimHandle, args: &[&str], stderr: Stdio) -> Child {
    serve_against(dir, &sim.base_url(), args, stderr)
}

/// `serve` in `dir` against the provider at `base_url` (which need not answer).
pub fn serve_against(dir: &Path, base_url: &str, args: &[&str], stderr: Stdio) -> Child {
    serve_command(dir, base_url, args).stderr(stderr).spawn().unwrap()
}

/// The command `serve_against` runs, for a test to add to (its environment)
/// before spawning; standard error is inherited unless the test sets it.
pub fn serve_command(dir: &Path, base_url: &str, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_orchestrator"));
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--config", "orchestrator.yaml"])
        .args(args)
        .current_dir(dir)
        .env("ANTHROPIC_BASE_URL", base_url)
        .env("ANTHROPIC_API_KEY", "sk-test-not-a-real-key")
        // The notifier logs each scan at debug: tests wait for that evidence.
        .env(
            "ORCHESTRATOR_LOG",
            std::env::var("TEST_SERVE_LOG").unwrap_or_else(|_| "info,orchestrator::notify=debug".into()),
        )
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::null());
    command
}

/// Sends signal `name` (`TERM`, `HUP`, `KILL`, ...) to `child`.
pub fn signal(child: &Child, name: &str) {
    let status = Command::new("kill").args([&format!("-{name}"), &child.id().to_string()]).status().unwrap();
    assert!(status.success(), "kill -{name} failed");
}

/// Waits (real time) for `child` to exit; its exit code (`None` for a
/// signal) and its standard error, when it was piped.
pub async fn wait_exit(mut child: Child, within: Duration) -> (Option<i32>, String) {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            if let Some(pipe) = child.stderr.as_mut() {
                std::io::Read::read_to_string(pipe, &mut stderr).unwrap();
            }
            return (status.code(), stderr);
        }
        assert!(start.elapsed() < within, "the daemon did not exit within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Kills `child` and reaps it.
pub fn kill(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}
