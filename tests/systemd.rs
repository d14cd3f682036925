//! `serve` as systemd runs it, on the real process: the notify protocol as
//! the service manager sees it on a real `NOTIFY_SOCKET` (READY=1 only after
//! the resume, WATCHDOG=1 pings, STOPPING=1), and secrets from systemd
//! credentials (`LoadCredential=`): the provider key and the dashboard token.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use orchestrator::sim::SimConfig;

use crate::support::db::count;
use crate::support::process::{signal, wait_exit};
use crate::support::wait_until;

/// One datagram the "service manager" received, and what the store held then.
#[derive(Debug)]
struct Received {
    lines: Vec<String>,
    runs_then: i64,
}

/// Listens on `socket` like systemd; each datagram is sent on with the
/// number of runs the store holds the moment it arrived.
fn service_manager(socket: UnixDatagram, dir: &Path) -> mpsc::Receiver<Received> {
    let (tx, rx) = mpsc::channel();
    let dir = dir.to_owned();
    std::thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        while let Ok(n) = socket.recv(&mut buffer) {
            let text = String::from_utf8_lossy(&buffer[..n]).into_owned();
            let runs_then = count(&dir, "SELECT COUNT(*) FROM runs");
            if tx.send(Received { lines: text.lines().map(str::to_owned).collect(), runs_then }).is_err() {
                return;
            }
        }
    });
    rx
}

/// Receives until a datagram holding `line` arrives; returns it and all before it.
fn until_line(rx: &mpsc::Receiver<Received>, line: &str, seen: &mut Vec<Received>) -> Received {
    loop {
        let received = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| panic!("no {line}: {seen:#?}"));
        if received.lines.iter().any(|l| l == line) {
            return received;
        }
        seen.push(received);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_manager_sees_ready_after_the_resume_then_watchdog_pings_then_stopping() {
    // The daemon was down from 02:59 to 06:30 of a rehearsal clock: catch_up: all
    // starts four runs (03:00 to 06:00) during the resume, before it is ready.
    let dir = crate::support::project::empty();
    let head = "schedule: { cron: '0 * * * *' }\ntier: batch\ndeadline: 12h\ncatch_up: all\n";
    crate::support::project::write_job(dir.path(), "bulk", head, 5, "");
    crate::support::project::write_config(dir.path(), "batch: { poll_initial: 1s }\n");
    let day = (chrono::Utc::now() - chrono::Duration::days(1)).date_naive();
    let at = |hour: u32, minute: u32| day.and_hms_opt(hour, minute, 0).unwrap().and_utc();
    {
        let mut store = orchestrator::store::Store::open(&dir.path().join("state/orchestrator.db")).unwrap();
        store.save_schedule(&orchestrator::store::ScheduleRow::new("bulk", at(2, 59)), at(2, 59)).unwrap();
    }
    let socket_path = dir.path().join("notify.sock");
    let rx = service_manager(UnixDatagram::bind(&socket_path).unwrap(), dir.path());
    let daemon = Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .args(["serve", "--simulate", "--listen", "127.0.0.1:0", "--config", "orchestrator.yaml"])
        .args(["--clock-start", &at(6, 30).to_rfc3339()])
        .current_dir(dir.path())
        .env("NOTIFY_SOCKET", &socket_path)
        // A two-second watchdog: the daemon pings at least every second.
        .env("WATCHDOG_USEC", "2000000")
        .env_remove("WATCHDOG_PID")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let mut before = Vec::new();
    let ready = until_line(&rx, "READY=1", &mut before);
    assert_eq!(ready.runs_then, 4, "READY=1 came after the resume had started every missed run");
    assert!(
        before.iter().all(|r| r.lines.iter().all(|l| !l.starts_with("WATCHDOG=") && !l.starts_with("STOPPING="))),
        "nothing but status before READY=1: {before:#?}"
    );
    let mut between = Vec::new();
    until_line(&rx, "WATCHDOG=1", &mut between);
    until_line(&rx, "WATCHDOG=1", &mut between);
    assert!(between.iter().all(|r| !r.lines.iter().any(|l| l == "READY=1")), "READY=1 once: {between:#?}");
    let statuses: Vec<&String> = between.iter().flat_map(|r| &r.lines).filter(|l| l.starts_with("STATUS=")).collect();
    assert!(statuses.iter().all(|s| s.contains("1 jobs")), "{statuses:?}");

    signal(&daemon, "TERM");
    let mut after = Vec::new();
    until_line(&rx, "STOPPING=1", &mut after);
    let (code, stderr) = wait_exit(daemon, Duration::from_secs(30)).await;
    assert_eq!(code, Some(0), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_the_dashboard_token_come_from_systemd_credentials_and_stay_out_of_the_log() {
    const KEY: &str = "sk-ant-from-a-credential-0123456789";
    const TOKEN: &str = "dashboard-token-from-a-credential";
    // The simulator accepts only this key, as the real API accepts only yours.
    let sim = crate::support::simulator(SimConfig { api_key: Some(KEY.into()), ..SimConfig::default() }).await;
    let dir = crate::support::project::empty();
    crate::support::project::write_job(
        dir.path(),
        "live",
        "schedule: { cron: '0 6 * * *' }\ntier: realtime\ndeadline: 1h\n",
        3,
        "",
    );
    crate::support::project::write_config(dir.path(), "batch: { poll_initial: 1s }\n");
    let credentials = tempfile::tempdir().unwrap();
    std::fs::write(credentials.path().join("anthropic-api-key"), format!("{KEY}\n")).unwrap();
    std::fs::write(credentials.path().join("orchestrator-api-token"), format!("{TOKEN}\n")).unwrap();
    let log = dir.path().join("serve.log");
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .args(["serve", "--run-now", "--listen", "127.0.0.1:0", "--config", "orchestrator.yaml"])
        .current_dir(dir.path())
        .env("ANTHROPIC_BASE_URL", sim.base_url())
        .env("CREDENTIALS_DIRECTORY", credentials.path())
        .env_remove("ANTHROPIC_API_KEY")
        .env_remove("ORCHESTRATOR_API_TOKEN")
        .env_remove("NOTIFY_SOCKET")
        .env("ORCHESTRATOR_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until("the run to complete", Duration::from_secs(60), || {
        count(dir.path(), "SELECT COUNT(*) FROM runs WHERE state = 'completed'") == 1
    })
    .await;
    assert_eq!(sim.stats().messages_calls, 3, "the provider accepted the credential's key");
    let address = text()
        .lines()
        .find_map(|line| Some(line[line.find("listen=")? + 7..].split_whitespace().next()?.to_owned()))
        .expect("the daemon logged its address");
    let api = format!("http://{address}/api/v1/runs");
    let client = reqwest::Client::new();
    assert_eq!(client.get(&api).send().await.unwrap().status(), 401, "the credential's token is required");
    let wrong = client.get(&api).bearer_auth("not-the-token").send().await.unwrap();
    assert_eq!(wrong.status(), 401);
    let right = client.get(&api).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(right.status(), 200, "the trailing newline of the credential file is not part of the token");
    signal(&daemon, "TERM");
    assert!(daemon.wait().unwrap().success());
    let logged = text();
    assert!(!logged.contains(KEY) && !logged.contains(TOKEN), "no secret in a debug log:\n{logged}");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_is_ready_and_pings_the_watchdog_while_it_waits_then_says_it_leads() {
    let sim = crate::support::simulator(SimConfig::default()).await;
    let dir = crate::support::project::empty();
    crate::support::project::write_job(dir.path(), "bulk", "schedule: { cron: '0 6 1 1 *' }\ndeadline: 12h\n", 1, "");
    crate::support::project::write_config(dir.path(), "batch: { poll_initial: 1s }\n");
    let leader = crate::support::process::serve(dir.path(), &sim, &[], Stdio::null());
    wait_until("the leader's row", Duration::from_secs(30), || {
        count(dir.path(), "SELECT COUNT(*) FROM leadership WHERE epoch = 1") == 1
    })
    .await;
    let socket_path = dir.path().join("notify.sock");
    let rx = service_manager(UnixDatagram::bind(&socket_path).unwrap(), dir.path());
    let standby = crate::support::process::serve_command(dir.path(), &sim.base_url(), &["--standby"])
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "2000000")
        .env_remove("WATCHDOG_PID")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let mut before = Vec::new();
    let ready = until_line(&rx, "READY=1", &mut before);
    let waiting: Vec<&String> = ready.lines.iter().chain(before.iter().flat_map(|r| &r.lines)).collect();
    let mut seen = Vec::new();
    // Pings while it waits, so a watchdog does not restart a healthy standby.
    until_line(&rx, "WATCHDOG=1", &mut seen);
    until_line(&rx, "WATCHDOG=1", &mut seen);
    let statuses: Vec<&String> =
        seen.iter().flat_map(|r| &r.lines).chain(waiting).filter(|l| l.starts_with("STATUS=")).collect();
    assert!(statuses.iter().any(|s| s.starts_with("STATUS=standby:")), "{statuses:?}");
    assert!(statuses.iter().all(|s| !s.contains("leading")), "it does not lead yet: {statuses:?}");

    signal(&leader, "KILL");
    wait_exit(leader, Duration::from_secs(10)).await;
    let mut taking_over = Vec::new();
    until_line(&rx, "STATUS=leading (epoch 2); resuming", &mut taking_over);
    signal(&standby, "TERM");
    until_line(&rx, "STOPPING=1", &mut taking_over);
    let (code, _) = wait_exit(standby, Duration::from_secs(30)).await;
    assert_eq!(code, Some(0));
    sim.shutdown().await;
}
