//! Alerts from a real `serve` process to a webhook receiver on loopback:
//! each alert arrives once (also across a restart), a 500 is retried, a
//! command target gets the same alerts, and a receiver that never answers
//! does not hold up a run.

use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use orchestrator::sim::{SimConfig, SimHandle};
use serde_json::Value;

use crate::support::db::count;
use crate::support::process::kill;
use crate::support::wait_until;

/// What the receiver does with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Answers 500 to the first `fail_first` requests, then 200.
    Answer,
    /// Reads the body, then never answers.
    Hang,
}

#[derive(Clone)]
struct Receiver {
    /// Every body received, with the status it was answered with (0 for none).
    bodies: Arc<Mutex<Vec<(u16, Value)>>>,
    fail_first: Arc<AtomicUsize>,
    mode: Mode,
}

impl Receiver {
    async fn start(mode: Mode, fail_first: usize) -> (Receiver, String) {
        let receiver = Receiver { bodies: Arc::default(), fail_first: Arc::new(AtomicUsize::new(fail_first)), mode };
        let app = axum::Router::new().route("/hook", post(hook)).with_state(receiver.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (receiver, url)
    }

    fn received(&self) -> Vec<(u16, Value)> {
        self.bodies.lock().unwrap().clone()
    }

    /// Keys of the alerts answered 200, with how often each was.
    fn delivered(&self) -> std::collections::BTreeMap<String, usize> {
        let mut keys = std::collections::BTreeMap::new();
        for (_, body) in self.received().iter().filter(|(status, _)| *status == 200) {
            *keys.entry(body["alert"]["key"].as_str().unwrap().to_owned()).or_insert(0) += 1;
        }
        keys
    }
}

async fn hook(State(receiver): State<Receiver>, axum::Json(body): axum::Json<Value>) -> StatusCode {
    if receiver.mode == Mode::Hang {
        receiver.bodies.lock().unwrap().push((0, body));
        return std::future::pending::<StatusCode>().await;
    }
    // Decided and recorded under one lock, so the order of `bodies` is the order of the answers.
    let mut bodies = receiver.bodies.lock().unwrap();
    let fail = receiver.fail_first.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
    let status = if fail { 500 } else { 200 };
    bodies.push((status, body));
    StatusCode::from_u16(status).unwrap()
}

fn job(dir: &Path, name: &str, head: &str, items: usize) {
    crate::support::project::write_job(dir, name, &format!("schedule: {{ cron: '0 6 * * *' }}\n{head}"), items, "");
}

fn project(config: &str) -> tempfile::TempDir {
    let dir = crate::support::project::empty();
    crate::support::project::write_config(dir.path(), config);
    dir
}

/// Starts `serve` (with `--run-now` when `fire`); its log goes to `log`.
fn serve(dir: &Path, sim: &SimHandle, fire: bool, log: &str) -> Child {
    let log = std::fs::File::create(dir.join(log)).unwrap();
    crate::support::process::serve(dir, sim, if fire { &["--run-now"][..] } else { &[] }, Stdio::from(log))
}

/// The notifier's scans that summed the day and month, in order: (alerts
/// found, deliveries started), from its debug log lines.
fn totals_scans(log: &str) -> Vec<(usize, usize)> {
    let field = |line: &str, name: &str| -> usize {
        let start = line.find(&format!("{name}=")).unwrap() + name.len() + 1;
        line[start..].split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
    };
    log.lines()
        .filter(|line| line.contains("alert scan") && line.contains("totals=true"))
        .map(|line| (field(line, "found"), field(line, "started")))
        .collect()
}

const SENT: &str = "SELECT COUNT(*) FROM events WHERE kind = 'alert_sent'";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_alert_arrives_once_a_500_is_retried_and_a_restart_sends_nothing_again() {
    let (receiver, url) = Receiver::start(Mode::Answer, 1).await;
    // A third of batch answers are permanent errors: surely more than 2 errored requests today.
    let sim = orchestrator::sim::start(SimConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        batch_median_secs: 1.0,
        batch_p95_secs: 1.5,
        invalid_share: 0.34,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let dir = project(&format!(
        "batch: {{ poll_initial: 1s }}\nnotify:\n  webhooks: [{{ url: '{url}' }}]\n\
         \x20 command: [sh, -c, 'set -C; cat > \"alerts/$ORCHESTRATOR_ALERT_KEY.json\"']\n\
         \x20 events: {{ errored_per_day: 2 }}\n  retries: 3\n  retry_backoff: 1s\n  check_every: 1s\n"
    ));
    std::fs::create_dir(dir.path().join("alerts")).unwrap();
    job(dir.path(), "bulk", "tier: batch\ndeadline: 2h\n", 30);
    // A budget far below one request: crossed at submission (`alert` lets it run), then spent past.
    job(dir.path(), "capped", "tier: batch\ndeadline: 2h\nbudget: { monthly_usd: 0.000001, on_budget: alert }\n", 3);
    let daemon = serve(dir.path(), &sim, true, "first.log");
    let expected = ["errored_requests:", "budget_exceeded:submit:capped-", "budget_near:job:capped:"];
    wait_until("the expected alerts", Duration::from_secs(60), || {
        let delivered = receiver.delivered();
        expected.iter().all(|prefix| delivered.keys().any(|k| k.starts_with(prefix)))
            && count(dir.path(), "SELECT COUNT(*) FROM runs WHERE state = 'open'") == 0
    })
    .await;
    // Two more scans that sum the day and month find the same conditions
    // again; nothing may be sent twice.
    let first_log = || std::fs::read_to_string(dir.path().join("first.log")).unwrap_or_default();
    let seen = totals_scans(&first_log()).len();
    wait_until("two more full scans", Duration::from_secs(60), || totals_scans(&first_log()).len() >= seen + 2).await;
    let rescans = totals_scans(&first_log())[seen..].to_vec();
    // The day's errors and the budget's share are found again (the event behind
    // budget_exceeded is read once).
    assert!(
        rescans.iter().all(|(found, started)| *found >= 2 && *started == 0),
        "found again, started none: {rescans:?}"
    );
    let delivered = receiver.delivered();
    assert!(delivered.values().all(|&n| n == 1), "an alert arrived twice: {delivered:?}");
    let first = receiver.received()[0].clone();
    assert_eq!(first.0, 500, "the first delivery was refused");
    assert_eq!(receiver.received().iter().filter(|(status, _)| *status == 500).count(), 1);
    let retried = &first.1["alert"]["key"];
    assert_eq!(delivered.get(retried.as_str().unwrap()), Some(&1), "the refused alert was retried and arrived");
    assert_eq!(
        count(dir.path(), &format!("{SENT} AND json_extract(detail, '$.tries') = 2")),
        1,
        "the retried alert took two tries"
    );
    let webhook_sent = count(dir.path(), &format!("{SENT} AND json_extract(detail, '$.target') LIKE 'webhook%'"));
    assert_eq!(webhook_sent as usize, delivered.len(), "every alert sent is recorded as an event");
    // The command refuses to overwrite (`set -C`): a second delivery of a key would fail and show.
    let mut by_command = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(dir.path().join("alerts")).unwrap() {
        let alert: Value = serde_json::from_slice(&std::fs::read(entry.unwrap().path()).unwrap()).unwrap();
        by_command.insert(alert["key"].as_str().unwrap().to_owned(), 1);
    }
    assert_eq!(by_command, delivered, "the command got the same alerts, each once");
    let command_sent = count(dir.path(), &format!("{SENT} AND json_extract(detail, '$.target') LIKE 'command%'"));
    assert_eq!(command_sent as usize, delivered.len(), "one recorded delivery per alert to the command");
    assert_eq!(count(dir.path(), "SELECT COUNT(*) FROM events WHERE kind = 'alert_failed'"), 0);

    kill(daemon);
    let before = receiver.received().len();
    // Without --run-now: no new run, so every condition found now was found before.
    let again = serve(dir.path(), &sim, false, "second.log");
    let log = || std::fs::read_to_string(dir.path().join("second.log")).unwrap_or_default();
    // Its first scan runs at once and sums the day and month too; wait for two.
    wait_until("two full scans after the restart", Duration::from_secs(60), || totals_scans(&log()).len() >= 2).await;
    // The one new condition is the kill itself: the restarted process took the
    // lead from one that never stopped cleanly. One alert, to each of the two targets.
    wait_until("the takeover alert", Duration::from_secs(60), || receiver.received().len() > before).await;
    kill(again);
    // A new notifier reads the last day's events again (budget_exceeded too)
    // in its first scan; none of it is sent again.
    let scans = totals_scans(&log());
    assert!(scans[0].0 >= 3 && scans.iter().all(|(found, _)| *found >= 2), "{scans:?}");
    assert_eq!(scans.iter().map(|(_, started)| started).sum::<usize>(), 2, "only the takeover started: {scans:?}");
    let new: Vec<String> = receiver.received()[before..]
        .iter()
        .map(|(_, body)| body["alert"]["key"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(new, ["leader_took_over:2"], "a restart sends nothing already sent");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_never_answers_does_not_hold_up_a_run() {
    let (receiver, url) = Receiver::start(Mode::Hang, 0).await;
    // The batch lane is down: every create fails, the fallback fires and the sync lane finishes the run.
    let sim = orchestrator::sim::start(SimConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        batch_create_error_chance: 1.0,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let dir = project(&format!(
        "batch: {{ poll_initial: 1s }}\nnotify:\n  webhooks: [{{ url: '{url}', format: slack }}]\n\
         \x20 events: {{ fallback: true }}\n  timeout: 10m\n  check_every: 1s\n"
    ));
    job(dir.path(), "bulk", "tier: soft\ndeadline: 1h\n", 10);
    let daemon = serve(dir.path(), &sim, true, "serve.log");
    wait_until("the run to complete", Duration::from_secs(60), || {
        count(dir.path(), "SELECT COUNT(*) FROM runs WHERE state = 'completed'") == 1
    })
    .await;
    wait_until("the alerts to reach the receiver", Duration::from_secs(30), || receiver.received().len() >= 2).await;
    let texts: Vec<String> =
        receiver.received().iter().map(|(_, body)| body["text"].as_str().unwrap().to_owned()).collect();
    assert!(texts.iter().any(|t| t.contains("the sync fallback fired")), "{texts:?}");
    assert!(texts.iter().any(|t| t.contains("creating the batch for bulk-")), "{texts:?}");
    assert!(receiver.received().iter().all(|(_, body)| body.get("alert").is_none()), "format: slack sends only text");
    assert_eq!(
        count(dir.path(), "SELECT COUNT(*) FROM events WHERE kind IN ('alert_sent', 'alert_failed')"),
        0,
        "no delivery has finished, yet the run completed"
    );
    kill(daemon);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undeliverable_alert_fails_once_after_its_last_retry_and_a_command_sees_no_secrets() {
    // The receiver refuses everything; the batch lane is down, so the fallback fires and alerts.
    let (receiver, url) = Receiver::start(Mode::Answer, usize::MAX).await;
    let sim = orchestrator::sim::start(SimConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        batch_create_error_chance: 1.0,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let dir = project(&format!(
        "batch: {{ poll_initial: 1s }}\nnotify:\n  webhooks: [{{ url: '{url}' }}]\n\
         \x20 command: [sh, -c, 'env > \"alerts/$ORCHESTRATOR_ALERT_KEY.env\"']\n\
         \x20 events: {{ fallback: true }}\n  retries: 2\n  retry_backoff: 1s\n  check_every: 1s\n"
    ));
    std::fs::create_dir(dir.path().join("alerts")).unwrap();
    job(dir.path(), "bulk", "tier: soft\ndeadline: 1h\n", 5);
    let daemon = serve(dir.path(), &sim, true, "serve.log");
    let failed = "SELECT COUNT(*) FROM events WHERE kind = 'alert_failed'";
    let log = || std::fs::read_to_string(dir.path().join("serve.log")).unwrap_or_default();
    wait_until("the run and a failed alert", Duration::from_secs(90), || {
        count(dir.path(), "SELECT COUNT(*) FROM runs WHERE state = 'completed'") == 1 && count(dir.path(), failed) >= 1
    })
    .await;
    // Every alert found so far has had its deliveries started; wait until each ended.
    let keys = || {
        receiver
            .received()
            .iter()
            .map(|(_, body)| body["alert"]["key"].as_str().unwrap().to_owned())
            .collect::<std::collections::BTreeSet<_>>()
    };
    wait_until("every delivery to end", Duration::from_secs(60), || count(dir.path(), failed) as usize == keys().len())
        .await;
    let seen = totals_scans(&log()).len();
    wait_until("two more full scans", Duration::from_secs(60), || totals_scans(&log()).len() >= seen + 2).await;
    kill(daemon);

    let keys = keys();
    assert!(keys.iter().any(|key| key.starts_with("fallback_fired:")), "the fallback alerted: {keys:?}");
    for key in &keys {
        let tries = receiver.received().iter().filter(|(_, body)| body["alert"]["key"] == key.as_str()).count();
        assert_eq!(tries, 3, "{key}: the first try and two retries, then no more");
    }
    assert!(receiver.received().iter().all(|(status, _)| *status == 500));
    let webhook_failed = count(
        dir.path(),
        &format!(
            "{failed} AND json_extract(detail, '$.target') LIKE 'webhook%' AND json_extract(detail, '$.tries') = 3"
        ),
    );
    assert_eq!(webhook_failed as usize, keys.len(), "one alert_failed per alert, after its third try");
    assert_eq!(count(dir.path(), &format!("{SENT} AND json_extract(detail, '$.target') LIKE 'webhook%'")), 0);

    // The command ran once per alert, with the alert but without the daemon's secrets.
    let envs: Vec<String> = std::fs::read_dir(dir.path().join("alerts"))
        .unwrap()
        .map(|entry| std::fs::read_to_string(entry.unwrap().path()).unwrap())
        .collect();
    assert_eq!(envs.len(), keys.len(), "one command run per alert");
    for env in &envs {
        assert!(env.contains("ORCHESTRATOR_ALERT_KEY="), "{env}");
        assert!(env.lines().any(|line| line.starts_with("PATH=")), "{env}");
        assert!(!env.contains("ANTHROPIC"), "no provider key or URL reaches the command: {env}");
        assert!(!env.contains("ORCHESTRATOR_LOG"), "nothing else of the daemon's environment either: {env}");
        assert!(!env.contains("sk-test"), "{env}");
    }
    sim.shutdown().await;
}
