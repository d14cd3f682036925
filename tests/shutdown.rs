//! What README and docs/operating.md promise about stopping `serve`, on the
//! real process: a stop ends every wait (a provider that cannot be reached
//! holds nothing up), sync calls in flight get `shutdown.grace`, and a
//! second signal exits at once with 130.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use orchestrator::sim::SimConfig;

use crate::support::db::count;
use crate::support::process::{signal, wait_exit};
use crate::support::wait_until;

/// A project with a batch job `bulk` and a realtime job `live`, and `config`.
fn project(config: &str, live_items: usize) -> tempfile::TempDir {
    let dir = crate::support::project::empty();
    let job = crate::support::project::write_job;
    job(dir.path(), "bulk", "schedule: { cron: '0 6 * * *' }\ntier: batch\ndeadline: 12h\n", 10, "");
    job(dir.path(), "live", "schedule: { cron: '0 6 * * *' }\ntier: realtime\ndeadline: 1h\n", live_items, "");
    crate::support::project::write_config(dir.path(), config);
    dir
}

fn log_file(dir: &Path) -> Stdio {
    Stdio::from(std::fs::File::create(dir.join("serve.log")).unwrap())
}

fn log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("serve.log")).unwrap_or_default()
}

/// The longest retry wait the log shows so far, milliseconds.
fn longest_retry_wait(dir: &Path) -> u64 {
    log(dir)
        .lines()
        .filter(|line| line.contains("retrying provider call"))
        .filter_map(|line| line.split("wait_ms=").nth(1)?.split_whitespace().next()?.parse().ok())
        .max()
        .unwrap_or(0)
}

/// Waits for the child's exit and says how long after `since` it came.
async fn exit_after(child: Child, since: Instant, within: Duration) -> (Option<i32>, Duration) {
    let (code, _) = wait_exit(child, within).await;
    (code, since.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_ends_the_retry_waits_of_a_provider_that_cannot_be_reached() {
    // A port nothing listens on: every call is refused, and retried with growing waits.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let dir = project("batch: { poll_initial: 1s }\n", 3);
    let daemon = crate::support::process::serve_against(dir.path(), &url, &["--run-now"], log_file(dir.path()));
    // Evidence that a call now sits in a long backoff: at least 8 s to wait.
    wait_until("a retry wait of 8 s or more", Duration::from_secs(90), || longest_retry_wait(dir.path()) >= 8000).await;
    let wait = Duration::from_millis(longest_retry_wait(dir.path()));
    let signalled = Instant::now();
    signal(&daemon, "TERM");
    let (code, took) = exit_after(daemon, signalled, Duration::from_secs(60)).await;
    assert_eq!(code, Some(0), "{}", log(dir.path()));
    // Had the stop waited for the backoff, it would have taken most of `wait`.
    assert!(took < wait / 2, "the stop took {took:?}, the backoff was {wait:?}:\n{}", log(dir.path()));
    assert!(log(dir.path()).contains("stopped cleanly"), "{}", log(dir.path()));
    // The batch run waits for the next start, its requests unspent.
    assert_eq!(count(dir.path(), "SELECT COUNT(*) FROM runs WHERE job = 'bulk' AND state = 'open'"), 1);
    let bulk = "SELECT COUNT(*) FROM requests WHERE custom_id LIKE 'bulk-%' AND state IN ('pending', 'queued')";
    assert_eq!(count(dir.path(), bulk), 10, "{}", log(dir.path()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_calls_in_flight_finish_within_the_grace_and_are_kept() {
    // Each sync call takes 3 s; the grace is a minute.
    let sim = crate::support::simulator(SimConfig { message_latency_ms: 3000, ..SimConfig::default() }).await;
    let dir = project("batch: { poll_initial: 1s }\nshutdown: { grace: 60s }\n", 3);
    let daemon = crate::support::process::serve(dir.path(), &sim, &["--run-now"], log_file(dir.path()));
    let in_flight = || sim.stats().endpoint_calls.get("POST /v1/messages").copied().unwrap_or(0);
    wait_until("three sync calls in flight", Duration::from_secs(30), || in_flight() == 3).await;
    assert_eq!(sim.stats().messages_calls, 0, "none answered yet: they are in flight");
    signal(&daemon, "TERM");
    let (code, _) = wait_exit(daemon, Duration::from_secs(60)).await;
    assert_eq!(code, Some(0), "{}", log(dir.path()));
    assert!(log(dir.path()).contains("stopped cleanly"), "{}", log(dir.path()));
    assert_eq!(sim.stats().messages_calls, 3, "the calls in flight were answered");
    let kept = "SELECT COUNT(*) FROM results r JOIN requests q ON q.custom_id = r.custom_id
                WHERE q.custom_id LIKE 'live-%' AND r.status = 'succeeded'";
    assert_eq!(count(dir.path(), kept), 3, "and their answers were stored, not paid for and lost");
    assert_eq!(in_flight(), 3, "no new call was started after the stop");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once_with_130_while_the_grace_runs() {
    // Sync calls that take ten minutes, and ten minutes of grace: only a second signal ends this quickly.
    let sim = crate::support::simulator(SimConfig { message_latency_ms: 600_000, ..SimConfig::default() }).await;
    let dir = project("batch: { poll_initial: 1s }\nshutdown: { grace: 10m }\n", 2);
    let daemon = crate::support::process::serve(dir.path(), &sim, &["--run-now"], log_file(dir.path()));
    let in_flight = || sim.stats().endpoint_calls.get("POST /v1/messages").copied().unwrap_or(0);
    wait_until("two sync calls in flight", Duration::from_secs(30), || in_flight() == 2).await;
    signal(&daemon, "TERM");
    wait_until("the stop to begin", Duration::from_secs(30), || log(dir.path()).contains("stopping:")).await;
    let signalled = Instant::now();
    signal(&daemon, "TERM");
    let (code, took) = exit_after(daemon, signalled, Duration::from_secs(120)).await;
    assert_eq!(code, Some(130), "{}", log(dir.path()));
    assert!(took < Duration::from_secs(60), "a second signal ends a ten-minute grace at once: {took:?}");
    assert!(log(dir.path()).contains("second stop signal: exiting now"), "{}", log(dir.path()));
    // The abandoned calls used up nothing: the requests wait for the next start.
    let live =
        "SELECT COUNT(*) FROM requests WHERE custom_id LIKE 'live-%' AND state IN ('pending', 'retryable_failed')";
    assert_eq!(count(dir.path(), live), 2, "{}", log(dir.path()));
    sim.shutdown().await;
}
