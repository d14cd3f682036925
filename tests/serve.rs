//! `orchestrator serve` as a real process against the simulator: SIGTERM and
//! SIGKILL mid-run then restart lose nothing and duplicate nothing; catch-up
//! after downtime; status; refusing to start on bad manifests.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use orchestrator::sim::{SimConfig, SimHandle};
use rusqlite::Connection;
use serde_json::Value;

use crate::support::db::count;
use crate::support::process::{signal, wait_exit};
use crate::support::{simulator, simulator_on, wait_until};

const ITEMS: usize = 40;

/// A project with one job `bulk` (`head` gives schedule, tier, deadline).
fn project(head: &str) -> tempfile::TempDir {
    let dir = crate::support::project::empty();
    crate::support::project::write_job(dir.path(), "bulk", head, ITEMS, "");
    crate::support::project::write_config(
        dir.path(),
        "batch: { poll_initial: 1s }\nfallback: { assumed_sync_latency: 1s }\n",
    );
    dir
}

fn serve(dir: &Path, sim: &SimHandle, extra: &[&str]) -> Child {
    crate::support::process::serve(dir, sim, extra, Stdio::piped())
}

/// Waits (real time) until `sql` counts at least `at_least`.
async fn wait_for(dir: &Path, sql: &str, at_least: i64, within: Duration) {
    wait_until(&format!("`{sql}` >= {at_least}"), within, || count(dir, sql) >= at_least).await;
}

fn delivered(dir: &Path) -> HashMap<String, usize> {
    crate::support::db::delivered(&dir.join("out/bulk.jsonl"))
}

fn assert_complete_once(dir: &Path, sim: &SimHandle) {
    assert_eq!(count(dir, "SELECT COUNT(*) FROM runs WHERE state = 'completed'"), 1);
    let delivered = delivered(dir);
    assert_eq!(delivered.len(), ITEMS, "every item reached the sink");
    assert!(delivered.values().all(|&n| n == 1), "nothing was delivered twice");
    assert_eq!(sim.stats().custom_ids_submitted_more_than_once, 0, "no request was in two batches");
    assert!(sim.stats().batches_created >= 1);
    assert_eq!(sim.stats().chunked_bodies, 0, "every create body went out with a Content-Length");
}

const COMPLETED: &str = "SELECT COUNT(*) FROM runs WHERE state = 'completed'";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_run_then_restart_completes_with_nothing_lost_or_duplicated() {
    // The simulator's time stands still: the batch is at the provider when SIGTERM lands.
    let clock = orchestrator::clock::ManualClock::new(chrono::Utc::now());
    let sim =
        simulator_on(SimConfig { batch_median_secs: 3.0, batch_p95_secs: 3.5, ..SimConfig::default() }, &clock).await;
    let dir = project("schedule: { cron: '0 6 * * *' }\ntier: batch\ndeadline: 2h\n");
    let first = serve(dir.path(), &sim, &["--run-now"]);
    wait_for(
        dir.path(),
        "SELECT COUNT(*) FROM batches WHERE provider_batch_id IS NOT NULL",
        1,
        Duration::from_secs(30),
    )
    .await;
    signal(&first, "TERM");
    let (code, stderr) = wait_exit(first, Duration::from_secs(15)).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("stopping") && stderr.contains("stopped cleanly"), "{stderr}");
    assert_eq!(
        count(dir.path(), "SELECT COUNT(*) FROM runs WHERE state = 'open'"),
        1,
        "the run waits for the next start"
    );
    assert_eq!(
        count(dir.path(), "SELECT COUNT(*) FROM batches WHERE state = 'in_progress'"),
        1,
        "its batch is still at the provider"
    );
    // Time moves on at the provider; the next start picks the batch up where it was.
    clock.advance(Duration::from_secs(60));
    let second = serve(dir.path(), &sim, &[]);
    wait_for(dir.path(), COMPLETED, 1, Duration::from_secs(30)).await;
    signal(&second, "TERM");
    wait_exit(second, Duration::from_secs(15)).await;
    assert_complete_once(dir.path(), &sim);
    assert_eq!(sim.stats().batches_created, 1, "the batch was resumed, not submitted again");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_fallback_then_the_daemon_completes_with_nothing_lost_or_duplicated() {
    // `run` falls back about 5 s in (its batch never ends; the sync lane, one call at a time,
    // is planned at 1 s per call, 40 s for 40 requests, under a 50 s deadline) and is killed
    // as its first sync result is stored.
    let sim = simulator(SimConfig { never_end: true, ..SimConfig::default() }).await;
    let dir = project("schedule: { cron: '0 6 * * *' }\ntier: soft\ndeadline: 1h\n");
    crate::support::project::write_config(
        dir.path(),
        "batch: { poll_initial: 1s }\nsync: { concurrency: 1 }\n\
         fallback: { assumed_sync_latency: 1s, assumed_batch_turnaround: 2s }\n",
    );
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let crashed = Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .args(["run", "bulk", "--scheduled-for", &now, "--deadline", "50s", "--config", "orchestrator.yaml"])
        .current_dir(dir.path())
        .env("ANTHROPIC_BASE_URL", sim.base_url())
        .env("ANTHROPIC_API_KEY", "sk-test-not-a-real-key")
        .env("ORCHESTRATOR_FAILPOINT", "mid_sync_fallback")
        .output()
        .unwrap();
    assert_eq!(crashed.status.code(), None, "killed: {}", String::from_utf8_lossy(&crashed.stderr));
    assert_eq!(
        count(dir.path(), "SELECT COUNT(*) FROM runs WHERE fallback_started_at IS NOT NULL AND state = 'open'"),
        1
    );
    let before = count(dir.path(), "SELECT COUNT(*) FROM requests WHERE state = 'succeeded'");
    assert_eq!(before, 1, "killed in the middle of the fallback, after its first result");
    // The daemon resumes the open run (no --run-now: nothing new fires).
    let daemon = serve(dir.path(), &sim, &[]);
    wait_for(dir.path(), COMPLETED, 1, Duration::from_secs(60)).await;
    signal(&daemon, "TERM");
    wait_exit(daemon, Duration::from_secs(15)).await;
    assert_complete_once(dir.path(), &sim);
    assert_eq!(sim.stats().batches_created, 1, "the fallback never submits the batch again");
    assert_eq!(
        count(
            dir.path(),
            "SELECT COUNT(*) FROM results WHERE lane = 'sync' AND duplicate = 0 AND status = 'succeeded'"
        ),
        ITEMS as i64
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_after_downtime_follows_the_policy() {
    // Hourly; the daemon "was down" from 02:59 to 06:30 of yesterday on a
    // rehearsal clock, so 03:00, 04:00, 05:00 and 06:00 were missed, whatever
    // the machine's time. Yesterday keeps the events inside status's window.
    let dir = project("schedule: { cron: '0 * * * *' }\ntier: soft\ndeadline: 2h\ncatch_up: latest\n");
    let day = (chrono::Utc::now() - chrono::Duration::days(1)).date_naive();
    let at = |hour: u32, minute: u32| day.and_hms_opt(hour, minute, 0).unwrap().and_utc();
    {
        let mut store = orchestrator::store::Store::open(&dir.path().join("state/orchestrator.db")).unwrap();
        let cursor = at(2, 59);
        store.save_schedule(&orchestrator::store::ScheduleRow::new("bulk", cursor), cursor).unwrap();
    }
    let clock_start = at(6, 30).to_rfc3339();
    let daemon = Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config", "orchestrator.yaml", "--simulate"])
        .args(["--clock-start", clock_start.as_str()])
        .current_dir(dir.path())
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(dir.path(), COMPLETED, 1, Duration::from_secs(60)).await;
    signal(&daemon, "TERM");
    let (code, stderr) = wait_exit(daemon, Duration::from_secs(15)).await;
    assert_eq!(code, Some(0), "{stderr}");
    let fired = crate::support::db::ids(dir.path(), "SELECT run_key FROM runs");
    assert_eq!(fired, [format!("bulk-{}T0600", day.format("%Y%m%d"))], "only the latest missed hour ran");
    let skipped = crate::support::db::ids(
        dir.path(),
        "SELECT json_extract(detail, '$.scheduled_for') || ' ' || json_extract(detail, '$.reason') FROM events
         WHERE kind = 'run_skipped' ORDER BY id",
    );
    let expected: Vec<String> = (3..6).map(|hour| format!("{} not_latest", at(hour, 0).to_rfc3339())).collect();
    assert_eq!(skipped, expected, "the older missed hours are recorded");
    let status = Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .args(["status", "--format", "json"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&status.stdout).unwrap();
    let kinds: Vec<&str> = report["recent"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "run_skipped").count(),
        3,
        "status shows the skipped instants: {kinds:?}"
    );
    assert_eq!(report["schedules"][0]["job"], "bulk");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_bad_manifests_and_a_missing_key() {
    let dir = project("schedule: { cron: '0 6 * * *' }\ntier: batch\ndeadline: 2h\n");
    let run = |envs: &[(&str, &str)]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_orchestrator"));
        command.args(["serve", "--listen", "127.0.0.1:0"]).current_dir(dir.path()).env_remove("ANTHROPIC_API_KEY");
        command.env_remove("CREDENTIALS_DIRECTORY");
        for (key, value) in envs {
            command.env(key, value);
        }
        command.output().unwrap()
    };
    let no_key = run(&[]);
    assert_eq!(no_key.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&no_key.stderr).contains("ANTHROPIC_API_KEY"));
    std::fs::write(dir.path().join("jobs/broken.yaml"), "schedule: { cron: '61 * * * *' }\n").unwrap();
    let broken = run(&[("ANTHROPIC_API_KEY", "sk-test")]);
    assert_eq!(broken.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&broken.stderr);
    assert!(stderr.contains("broken.yaml:1:"), "{stderr}");
}

/// A job's provider needs its key: without it `serve` refuses to start
/// naming the job and the variable; the key may come from a systemd
/// credential instead of the environment, as the official SDK's does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openai_job_needs_the_openai_key_from_the_environment_or_a_credential() {
    let dir = project("schedule: { cron: '0 6 * * *' }\ntier: batch\ndeadline: 2h\n");
    let manifest = dir.path().join("jobs/bulk.yaml");
    let text = crate::support::api::Api::OpenAi.rewrite(&std::fs::read_to_string(&manifest).unwrap());
    std::fs::write(&manifest, text).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_orchestrator"));
    command.args(["serve", "--listen", "127.0.0.1:0"]).current_dir(dir.path());
    command.env("ANTHROPIC_API_KEY", "sk-ant-test").env_remove("OPENAI_API_KEY").env_remove("CREDENTIALS_DIRECTORY");
    let refused = command.output().unwrap();
    assert_eq!(refused.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("OPENAI_API_KEY") && stderr.contains("job `bulk` uses provider `openai`"), "{stderr}");
    assert!(!stderr.contains("ANTHROPIC_API_KEY"), "a provider no job uses needs no key: {stderr}");

    // The key from $CREDENTIALS_DIRECTORY/openai-api-key; the simulator accepts only it.
    let key = "sk-openai-from-a-credential";
    let sim = simulator(SimConfig { api_key: Some(key.into()), ..SimConfig::default() }).await;
    let credentials = tempfile::tempdir().unwrap();
    std::fs::write(credentials.path().join("openai-api-key"), format!("{key}\n")).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_orchestrator"));
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    command.args(["run", "bulk", "--poll-interval", "1s", "--scheduled-for", &now, "--deadline", "12h"]);
    command.current_dir(dir.path()).env_remove("OPENAI_API_KEY").env_remove("ANTHROPIC_API_KEY");
    command.env("OPENAI_BASE_URL", format!("{}/v1", sim.base_url())).env("CREDENTIALS_DIRECTORY", credentials.path());
    let output = tokio::task::spawn_blocking(move || command.output().unwrap()).await.unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(delivered(dir.path()).len(), ITEMS);
    let openai = sim.stats().providers.get("openai").cloned().unwrap_or_default();
    assert_eq!((openai.batches_created, openai.files_uploaded), (1, 1), "one input file, one batch");
    assert_eq!(sim.stats().chunked_bodies, 0, "the upload went out with a Content-Length");
    sim.shutdown().await;
}

/// As the official SDK reads them: `GOOGLE_API_KEY` before `GEMINI_API_KEY`,
/// and neither set is a refusal that names both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gemini_job_takes_google_api_key_before_gemini_api_key() {
    let dir = project("schedule: { cron: '0 6 * * *' }\ntier: batch\ndeadline: 2h\n");
    let manifest = dir.path().join("jobs/bulk.yaml");
    let text = crate::support::api::Api::Gemini.rewrite(&std::fs::read_to_string(&manifest).unwrap());
    std::fs::write(&manifest, text).unwrap();
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let run = |envs: &[(&str, &str)], base: &str| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_orchestrator"));
        command.args(["run", "bulk", "--poll-interval", "1s", "--scheduled-for", &now, "--deadline", "12h"]);
        command.current_dir(dir.path()).env("GOOGLE_GEMINI_BASE_URL", base);
        for name in ["GOOGLE_API_KEY", "GEMINI_API_KEY", "CREDENTIALS_DIRECTORY", "ANTHROPIC_API_KEY"] {
            command.env_remove(name);
        }
        command.envs(envs.iter().copied());
        command
    };
    let refused = run(&[], "http://127.0.0.1:9").output().unwrap();
    assert_eq!(refused.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("GOOGLE_API_KEY (or GEMINI_API_KEY)") && stderr.contains("gemini-api-key"), "{stderr}");

    let sim = simulator(SimConfig { api_key: Some("the-google-key".into()), ..SimConfig::default() }).await;
    let mut command = run(&[("GOOGLE_API_KEY", "the-google-key"), ("GEMINI_API_KEY", "a-stale-key")], &sim.base_url());
    let output = tokio::task::spawn_blocking(move || command.output().unwrap()).await.unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(delivered(dir.path()).len(), ITEMS);
    let gemini = sim.stats().providers.get("gemini").cloned().unwrap_or_default();
    assert_eq!(gemini.batches_created, 1, "the run's batch went to Gemini with the Google key");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_valid_manifests_and_keeps_the_old_set_on_errors() {
    let sim = simulator(SimConfig::default()).await;
    let dir = project("schedule: { cron: '0 6 * * *' }\ntier: batch\ndeadline: 2h\n");
    let schedules_of = |job: &str| format!("SELECT COUNT(*) FROM schedules WHERE job = '{job}'");
    let log = dir.path().join("serve.log");
    let mut daemon =
        crate::support::process::serve(dir.path(), &sim, &[], Stdio::from(std::fs::File::create(&log).unwrap()));
    let logged = |text: &str| std::fs::read_to_string(&log).unwrap_or_default().matches(text).count();
    // The first loop turn stores the schedule; by then the signal handlers are installed.
    wait_for(dir.path(), &schedules_of("bulk"), 1, Duration::from_secs(20)).await;
    let manifest = std::fs::read_to_string(dir.path().join("jobs/bulk.yaml")).unwrap();
    std::fs::write(dir.path().join("jobs/second.yaml"), manifest.replace("out/bulk.jsonl", "out/second.jsonl"))
        .unwrap();
    std::fs::write(dir.path().join("jobs/broken.yaml"), "schedule: { cron: '61 * * * *' }\n").unwrap();
    signal(&daemon, "HUP");
    // Evidence that this reload was handled (and refused) before the next signal is sent.
    wait_until("the refused reload", Duration::from_secs(20), || logged("reload refused") == 1).await;
    assert!(daemon.try_wait().unwrap().is_none(), "a refused reload does not stop the daemon");
    assert!(logged("broken.yaml:1:") >= 1, "the refusal says why");
    assert_eq!(count(dir.path(), &schedules_of("second")), 0, "nothing of a refused set is used");
    std::fs::remove_file(dir.path().join("jobs/broken.yaml")).unwrap();
    signal(&daemon, "HUP");
    wait_until("the reload", Duration::from_secs(20), || logged("manifests reloaded") == 1).await;
    wait_for(dir.path(), &schedules_of("second"), 1, Duration::from_secs(20)).await;
    signal(&daemon, "TERM");
    let (code, _) = wait_exit(daemon, Duration::from_secs(15)).await;
    assert_eq!(code, Some(0), "{}", std::fs::read_to_string(&log).unwrap());
    assert_eq!((logged("reload refused"), logged("manifests reloaded")), (1, 1), "each signal handled once");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_on_the_same_state_is_refused_until_the_first_exits() {
    let sim = simulator(SimConfig { never_end: true, ..SimConfig::default() }).await;
    let dir = project("schedule: { cron: '0 6 * * *' }\ntier: batch\ndeadline: 12h\n");
    let daemon = serve(dir.path(), &sim, &["--run-now"]);
    wait_for(
        dir.path(),
        "SELECT COUNT(*) FROM batches WHERE provider_batch_id IS NOT NULL",
        1,
        Duration::from_secs(30),
    )
    .await;
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_orchestrator"))
            .args(args)
            .current_dir(dir.path())
            .env("ANTHROPIC_BASE_URL", sim.base_url())
            .env("ANTHROPIC_API_KEY", "sk-test-not-a-real-key")
            .output()
            .unwrap()
    };
    let second = run(&["run", "bulk", "--scheduled-for", "2026-11-22T06:00:00Z"]);
    assert_eq!(second.status.code(), Some(75), "{}", String::from_utf8_lossy(&second.stderr));
    assert!(String::from_utf8_lossy(&second.stderr).contains("another orchestrator process"));
    let report = run(&["status", "--format", "json"]);
    assert!(report.status.success(), "status still reads while the daemon runs");
    assert_eq!(sim.stats().batches_created, 1, "the refused process submitted nothing");
    signal(&daemon, "KILL");
    wait_exit(daemon, Duration::from_secs(5)).await;
    let third = run(&["run", "bulk", "--scheduled-for", "2026-01-01T00:00:00Z", "--deadline", "1s"]);
    // Long past its deadline: it runs (the lock died with the killed daemon), and ends late.
    assert_eq!(third.status.code(), Some(5), "{}", String::from_utf8_lossy(&third.stderr));
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_as_a_process_runs_both_passes_of_the_repeated_hour() {
    let dir = project("schedule: { cron: '0 * * * *', timezone: Europe/Berlin }\ntier: realtime\ndeadline: 10m\n");
    // A rehearsal of 2026-10-25 in Berlin: from 01:58 CEST, ten minutes per real second.
    let daemon = Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config", "orchestrator.yaml", "--simulate"])
        .args(["--clock-start", "2026-10-24T23:58:00Z", "--clock-scale", "600"])
        .current_dir(dir.path())
        .env_remove("NOTIFY_SOCKET")
        .env_remove("ANTHROPIC_API_KEY")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // 02:00 CEST, 02:00 CET, 03:00 CET: three runs, each completed with its own ids.
    let first_three = "SELECT COUNT(*) FROM runs WHERE state = 'completed' AND scheduled_for <= 1792893600000";
    wait_for(dir.path(), first_three, 3, Duration::from_secs(60)).await;
    signal(&daemon, "TERM");
    let (code, stderr) = wait_exit(daemon, Duration::from_secs(15)).await;
    assert_eq!(code, Some(0), "{stderr}");
    let keys = {
        let db = Connection::open(dir.path().join("state/orchestrator.db")).unwrap();
        let mut statement = db.prepare("SELECT run_key FROM runs ORDER BY scheduled_for LIMIT 3").unwrap();
        statement.query_map([], |row| row.get::<_, String>(0)).unwrap().map(Result::unwrap).collect::<Vec<_>>()
    };
    assert_eq!(keys, ["bulk-20261025T0200", "bulk-20261025T0200B", "bulk-20261025T0300"]);
    let delivered = delivered(dir.path());
    for key in &keys {
        let n = delivered.keys().filter(|id| id.starts_with(&format!("{key}-"))).count();
        assert_eq!(n, ITEMS, "{key}: every item delivered under the run's own ids");
    }
    assert!(delivered.values().all(|&n| n == 1));
    assert_eq!(count(dir.path(), "SELECT COUNT(*) FROM events WHERE kind IN ('run_failed', 'run_start_failed')"), 0);
}
