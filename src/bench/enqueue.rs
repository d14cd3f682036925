//! The `enqueue` scenario: clients posting items to `serve` (a real child
//! process, against the simulator, a child process too). 50 clients post
//! 100 items per request, each with an idempotency key, as fast as the
//! daemon answers; the queue job flushes every 1,000 items into a run
//! meanwhile, as it would in production. Measured: accepted items per
//! second, the latency of a `202` (median and 99th percentile), and the
//! daemon's CPU per 10,000 items accepted.

use std::path::Path;
use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};

use super::Scratch;
use super::figures::{Metric, Sampled};
use super::idle::Daemon;
use super::simulator::SimProcess;

/// Items posted per repeat unless told otherwise.
pub const ITEMS: u64 = 50_000;
/// Clients posting at once.
const CLIENTS: u64 = 50;
/// Items per request.
const ITEMS_PER_POST: u64 = 100;
const TOKEN: &str = "bench-enqueue-token";

const METRICS: [Metric; 4] = [
    Metric { name: "items accepted/s", target: None },
    Metric { name: "202 latency p50, ms", target: None },
    Metric { name: "202 latency p99, ms", target: None },
    Metric { name: "daemon CPU per 10,000 items, s", target: None },
];

/// Posts `items` items `repeats` times, each to a fresh daemon on a fresh state database.
pub async fn run(items: u64, repeats: u32) -> anyhow::Result<Sampled> {
    let items = items.div_ceil(ITEMS_PER_POST) * ITEMS_PER_POST;
    let scratch = Scratch::new("enqueue")?;
    write_project(scratch.path())?;
    let sim = SimProcess::start(&[]).await?;
    let mut repeats_out = Vec::new();
    for _ in 0..repeats {
        repeats_out.push(measure(scratch.path(), sim.base_url(), items).await?);
    }
    let setup = format!(
        "{CLIENTS} clients posting {items} items ({ITEMS_PER_POST} per request, JSON Lines, idempotency keys) to \
         `serve`, the queue flushing every 1,000 items into a batch-tier run meanwhile"
    );
    Ok(Sampled::new("enqueue", setup, &METRICS, &repeats_out))
}

fn write_project(root: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(root.join("jobs"))?;
    std::fs::create_dir_all(root.join("prompts"))?;
    let manifest = format!(
        "enqueue: {{ max_items: 1000, max_wait: 1m }}\ntier: batch\ndeadline: 24h\nmodel: claude-haiku-4-5\n\
         max_tokens: 64\nprompt: {{ inline: 'Triage this ticket: {{{{ item.subject }}}}' }}\nsink: {{ jsonl: \"{}\" }}\n",
        root.join("out/queue.jsonl").display()
    );
    std::fs::write(root.join("jobs/queue.yaml"), manifest)?;
    Ok(())
}

/// One daemon from a fresh state database: every item posted once.
async fn measure(root: &Path, base_url: &str, items: u64) -> anyhow::Result<Vec<f64>> {
    let _ = std::fs::remove_dir_all(root.join("state"));
    let _ = std::fs::remove_dir_all(root.join("out"));
    std::fs::create_dir_all(root.join("state"))?;
    let db = root.join("state").join("orchestrator.db");
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let url = format!("http://127.0.0.1:{port}");
    let mut daemon = Daemon(spawn(root, &db, base_url, port)?);
    wait_healthy(&url, &mut daemon).await?;
    let pid = daemon.0.id();
    let cpu_before = super::idle::cpu_secs(pid)?;
    let started = Instant::now();
    let latencies = post_all(&url, items).await?;
    let wall = started.elapsed().as_secs_f64();
    let cpu = super::idle::cpu_secs(pid)? - cpu_before;
    drop(daemon);
    let stored = stored_items(&db)?;
    ensure!(stored == items, "{stored} of {items} posted items stored");
    let percentile = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
    Ok(vec![items as f64 / wall, percentile(0.5), percentile(0.99), cpu / (items as f64 / 10_000.0)])
}

fn spawn(root: &Path, db: &Path, base_url: &str, port: u16) -> anyhow::Result<Child> {
    let listen = format!("127.0.0.1:{port}");
    let mut serve = super::idle::serve_project(root, db, base_url, &["--listen", &listen])?;
    serve.env(crate::web::TOKEN_ENV, TOKEN).spawn().context("cannot start `orchestrator serve`")
}

async fn wait_healthy(url: &str, daemon: &mut Daemon) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let started = Instant::now();
    loop {
        if client.get(format!("{url}/healthz")).send().await.is_ok_and(|r| r.status().is_success()) {
            return Ok(());
        }
        if let Some(exit) = daemon.0.try_wait()? {
            bail!("the daemon exited before it answered ({exit})");
        }
        if started.elapsed() > Duration::from_secs(30) {
            bail!("the daemon did not answer /healthz within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every client's posts; the latency of each `202`, in milliseconds, sorted.
async fn post_all(url: &str, items: u64) -> anyhow::Result<Vec<f64>> {
    let client = reqwest::Client::builder().pool_max_idle_per_host(CLIENTS as usize).build()?;
    let endpoint = Arc::<str>::from(format!("{url}/api/v1/jobs/queue/items"));
    let posts = items / ITEMS_PER_POST;
    let mut tasks = Vec::new();
    for lane in 0..CLIENTS {
        let (client, endpoint) = (client.clone(), Arc::clone(&endpoint));
        let mine: Vec<u64> = (lane..posts).step_by(CLIENTS as usize).collect();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(mine.len());
            for post in mine {
                let body = body(post);
                let sent = Instant::now();
                let response = client.post(&*endpoint).bearer_auth(TOKEN).body(body).send().await?;
                ensure!(
                    response.status() == reqwest::StatusCode::ACCEPTED,
                    "the daemon answered {}",
                    response.status()
                );
                response.bytes().await?;
                latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.context("a client panicked")??);
    }
    all.sort_by(f64::total_cmp);
    Ok(all)
}

/// Request `post`'s JSON Lines: items of about 200 bytes, each with its key.
fn body(post: u64) -> String {
    (post * ITEMS_PER_POST..(post + 1) * ITEMS_PER_POST)
        .map(|n| {
            format!(
                "{{\"item\":{{\"subject\":\"ticket {n}: the export to CSV stops at 10,000 rows since the last update\",\
                 \"customer\":\"c-{}\"}},\"idempotency_key\":\"k-{n}\"}}\n",
                n % 977
            )
        })
        .collect()
}

fn stored_items(db: &Path) -> anyhow::Result<u64> {
    let conn = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    Ok(conn.query_row("SELECT COUNT(*) FROM queue_items", [], |row| row.get::<_, i64>(0))? as u64)
}
