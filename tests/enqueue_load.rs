//! The enqueue endpoint under load on the real process: 50 clients post
//! 200 items each while the daemon is killed with SIGKILL and started
//! again; clients retry with their idempotency keys. Every item is accepted
//! exactly once and delivered exactly once.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use orchestrator::sim::{SimConfig, SimHandle};
use serde_json::json;

use crate::support::{db, process, project, wait_until};

const TOKEN: &str = "load-test-token";
const CLIENTS: usize = 50;
const ITEMS_PER_CLIENT: usize = 200;
const ITEMS_PER_POST: usize = 20;
/// The daemon is killed once this many items were accepted.
const KILL_AFTER: usize = 3000;

fn start(dir: &Path, sim: &SimHandle, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--config", "orchestrator.yaml"])
        .current_dir(dir)
        .env("ANTHROPIC_BASE_URL", sim.base_url())
        .env("ANTHROPIC_API_KEY", "sk-test-not-a-real-key")
        .env("ORCHESTRATOR_API_TOKEN", TOKEN)
        .env("ORCHESTRATOR_LOG", "info")
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

async fn healthy(base: &str) {
    let client = reqwest::Client::new();
    let start = std::time::Instant::now();
    loop {
        if let Ok(response) = client.get(format!("{base}/healthz")).send().await
            && response.status() == 200
        {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "the daemon did not answer /healthz");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A project with the queue job `triage` (`enqueue`, then `extra` lines)
/// and the daemon configuration `config`, served on a free port (the same
/// one after a restart) against a simulator, answering `/healthz`.
struct Queue {
    sim: SimHandle,
    dir: tempfile::TempDir,
    port: u16,
    base: String,
    daemon: Child,
}

async fn queue_served(enqueue: &str, extra: &str, config: &str) -> Queue {
    let sim = crate::support::simulator(SimConfig::default()).await;
    let dir = project::empty();
    let triage = format!(
        "enqueue: {enqueue}\ntier: soft\ndeadline: 1h\nmodel: claude-haiku-4-5\nmax_tokens: 16\n\
         prompt: {{ inline: 'Triage {{{{ item.subject }}}}' }}\n{extra}"
    );
    std::fs::write(dir.path().join("jobs/triage.yaml"), triage).unwrap();
    project::write_config(dir.path(), config);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let base = format!("http://127.0.0.1:{port}");
    let daemon = start(dir.path(), &sim, port);
    healthy(&base).await;
    Queue { sim, dir, port, base, daemon }
}

/// One client: its items in posts of [`ITEMS_PER_POST`], each retried until
/// accepted (the daemon may be down); the id of each of its keys.
async fn client(base: String, number: usize, accepted: Arc<AtomicUsize>) -> HashMap<String, i64> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    let mut ids = HashMap::new();
    for first in (0..ITEMS_PER_CLIENT).step_by(ITEMS_PER_POST) {
        let keys: Vec<String> = (first..first + ITEMS_PER_POST).map(|n| format!("c{number}-{n}")).collect();
        let body: String = keys
            .iter()
            .map(|key| format!("{}\n", json!({ "item": { "subject": key }, "idempotency_key": key })))
            .collect();
        let start = std::time::Instant::now();
        let answer = loop {
            let sent =
                http.post(format!("{base}/api/v1/jobs/triage/items")).bearer_auth(TOKEN).body(body.clone()).send();
            if let Ok(response) = sent.await
                && response.status() == 202
                && let Ok(answer) = response.json::<serde_json::Value>().await
            {
                break answer;
            }
            assert!(start.elapsed() < Duration::from_secs(120), "client {number} could not post for 2 minutes");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let got: Vec<i64> = answer["ids"].as_array().unwrap().iter().map(|id| id.as_i64().unwrap()).collect();
        assert_eq!(got.len(), ITEMS_PER_POST, "{answer}");
        ids.extend(keys.into_iter().zip(got));
        accepted.fetch_add(ITEMS_PER_POST, Ordering::SeqCst);
    }
    ids
}

/// custom_id → deliveries, of the complete lines of the JSON Lines sink.
fn delivered(file: &Path) -> HashMap<String, usize> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    let mut seen = HashMap::new();
    for line in complete.lines() {
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        *seen.entry(value["custom_id"].as_str().unwrap().to_owned()).or_insert(0) += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_item_posted_by_fifty_clients_across_a_kill_is_accepted_and_delivered_once() {
    let queue = "{ max_items: 1000, max_wait: 2s }";
    let config = "batch: { poll_initial: 1s, poll_max: 2s }\n";
    let Queue { sim, dir, port, base, mut daemon } =
        queue_served(queue, "sink: { jsonl: out/triage.jsonl }\n", config).await;
    let root = dir.path();

    let accepted = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS).map(|n| tokio::spawn(client(base.clone(), n, Arc::clone(&accepted)))).collect();
    let seen = Arc::clone(&accepted);
    wait_until("enough accepted items to kill mid-load", Duration::from_secs(120), || {
        seen.load(Ordering::SeqCst) >= KILL_AFTER
    })
    .await;
    process::signal(&daemon, "KILL");
    daemon.wait().unwrap();
    let at_kill = accepted.load(Ordering::SeqCst);
    assert!(at_kill < CLIENTS * ITEMS_PER_CLIENT, "the kill came mid-load ({at_kill} accepted)");
    daemon = start(root, &sim, port);

    let mut ids: HashMap<String, i64> = HashMap::new();
    for client in clients {
        ids.extend(client.await.unwrap());
    }
    let total = CLIENTS * ITEMS_PER_CLIENT;
    assert_eq!(ids.len(), total);
    let distinct: std::collections::HashSet<i64> = ids.values().copied().collect();
    assert_eq!(distinct.len(), total, "one id per item");
    assert_eq!(db::count(root, "SELECT COUNT(*) FROM queue_items"), total as i64, "nothing stored twice");
    let stored: HashMap<String, i64> = db::ids(root, "SELECT idempotency_key || ' ' || id FROM queue_items")
        .into_iter()
        .map(|row| {
            let (key, id) = row.split_once(' ').unwrap();
            (key.to_owned(), id.parse().unwrap())
        })
        .collect();
    assert_eq!(stored, ids, "every answer named the stored item");

    let sink = root.join("out/triage.jsonl");
    wait_until("every item delivered", Duration::from_secs(300), || delivered(&sink).len() == total).await;
    let deliveries = delivered(&sink);
    assert!(deliveries.values().all(|&n| n == 1), "a result delivered twice");
    assert_eq!(db::count(root, "SELECT COUNT(*) FROM queue_items WHERE run_id IS NULL"), 0);
    process::kill(daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_enqueue_command_posts_json_lines_and_prints_one_id_per_item() {
    use crate::support::{code, stderr, stdout};
    let Queue { sim: _sim, dir, base, daemon, .. } = queue_served("{ max_items: 1000, max_wait: 1h }", "", "").await;
    let root = dir.path();
    let lines = "{\"item\": {\"subject\": \"a\"}, \"idempotency_key\": \"a\"}\n\n{\"item\": {\"subject\": \"b\"}}\n";
    std::fs::write(root.join("items.jsonl"), lines).unwrap();
    let enqueue = |file: &str, token: Option<&str>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_orchestrator"));
        command
            .args(["enqueue", "triage", file, "--url", &base])
            .current_dir(root)
            .env_remove("ORCHESTRATOR_API_TOKEN");
        if let Some(token) = token {
            command.env("ORCHESTRATOR_API_TOKEN", token);
        }
        command.output().unwrap()
    };
    let output = enqueue("items.jsonl", Some(TOKEN));
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let printed: Vec<i64> = stdout(&output).lines().map(|id| id.parse().unwrap()).collect();
    assert_eq!(printed.len(), 2, "{}", stdout(&output));
    assert!(stderr(&output).contains("enqueued 2 items to triage"), "{}", stderr(&output));
    assert_eq!(db::count(root, "SELECT COUNT(*) FROM queue_items"), 2);

    // Line 3 of the file is the request's line 2: the command names the file's.
    std::fs::write(root.join("bad.jsonl"), "{\"item\": {}}\n\n{\"item\": [1]}\n").unwrap();
    let output = enqueue("bad.jsonl", Some(TOKEN));
    assert_eq!(code(&output), 65, "{}", stderr(&output));
    assert!(stderr(&output).contains("line 3: invalid type"), "{}", stderr(&output));
    assert_eq!(code(&enqueue("items.jsonl", None)), 77, "no token");
    assert_eq!(code(&enqueue("items.jsonl", Some("wrong"))), 77, "a wrong token");
    assert_eq!(db::count(root, "SELECT COUNT(*) FROM queue_items"), 2, "nothing of a refused request");
    process::kill(daemon);
}
