//! The `jobs` scenario: many batch-tier jobs firing at the same instant.
//! `orchestrator serve --run-now` (a real child process, the daemon's
//! default configuration) serves N generated jobs of M items each against
//! the simulator (a child process too, its batches ending in 3 to 8 s);
//! measured: the time from the first run's firing to the last delivery,
//! the provider calls by kind (they should grow with batches, not with
//! runs), and the daemon's CPU and peak RSS.

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};

use super::Scratch;
use super::figures::{Metric, Sampled, Target};
use super::idle::Daemon;
use super::simulator::SimProcess;

/// Jobs of the default scenario, and of the large one `bench all` runs too.
pub const JOBS: u64 = 500;
/// Jobs of the large scenario.
pub const MANY_JOBS: u64 = 5000;
/// Items per job.
pub const ITEMS: u64 = 20;
/// Longest wait for every run to close before the scenario gives up.
const GIVE_UP: Duration = Duration::from_secs(30 * 60);

/// The figures, with the targets of issue 20 for `jobs` jobs.
fn metrics(jobs: u64) -> [Metric; 8] {
    let delivered_within = match jobs {
        JOBS => Some(Target::at_most(30.0)),
        MANY_JOBS => Some(Target::at_most(180.0)),
        _ => None,
    };
    [
        Metric { name: "firing to last delivery, s", target: delivered_within },
        Metric { name: "batches created", target: None },
        Metric { name: "batch creates", target: None },
        Metric { name: "batch polls", target: None },
        Metric { name: "results downloads", target: None },
        // Calls that grow with batches, not with runs: a tenth of a call per run at most.
        Metric { name: "batch-endpoint calls per run", target: Some(Target::at_most(0.1)) },
        Metric { name: "daemon CPU (user + sys), s", target: None },
        Metric { name: "daemon peak RSS, MiB", target: Some(Target::at_most(128.0)) },
    ]
}

/// Serves `jobs` jobs of `items` items `repeats` times, each from a fresh state database.
pub async fn run(jobs: u64, items: u64, repeats: u32) -> anyhow::Result<Sampled> {
    ensure!(jobs >= 1 && items >= 1, "jobs and items must be at least 1");
    let scratch = Scratch::new("jobs")?;
    write_project(scratch.path(), jobs, items)?;
    let mut repeats_out = Vec::new();
    for _ in 0..repeats {
        // A fresh simulator each time: its stats and queues start empty.
        let sim = SimProcess::start(&[]).await?;
        repeats_out.push(measure(scratch.path(), sim.base_url(), jobs, items).await?);
    }
    let setup = format!(
        "`serve --run-now` with {jobs} batch-tier jobs of {items} items (Claude Haiku, 64 tokens, JSONL sinks), \
         all firing at once, the daemon's default configuration, the simulator's batches ending in 3 to 8 s"
    );
    let name = if jobs == MANY_JOBS { "jobs-5000" } else { "jobs" };
    Ok(Sampled::new(name, setup, &metrics(jobs), &repeats_out))
}

/// `jobs/job-00001.yaml`... over one items file, each with its own sink.
fn write_project(root: &Path, jobs: u64, items: u64) -> anyhow::Result<()> {
    std::fs::create_dir_all(root.join("jobs"))?;
    std::fs::create_dir_all(root.join("prompts"))?;
    let items_path = root.join("items.jsonl");
    let lines: String =
        (1..=items).map(|n| format!("{{\"id\":{n},\"text\":\"headline number {n} of today's feed\"}}\n")).collect();
    std::fs::write(&items_path, lines)?;
    for n in 1..=jobs {
        let name = format!("job-{n:05}");
        let manifest = format!(
            "schedule: {{ cron: '0 3 * * *' }}\ntier: batch\ndeadline: 24h\nmodel: claude-haiku-4-5\nmax_tokens: 64\n\
             prompt: {{ inline: 'Classify: {{{{ item.text }}}}' }}\nitems: {{ jsonl: \"{items}\" }}\n\
             sink: {{ jsonl: \"{sink}\" }}\n",
            items = items_path.display(),
            sink = root.join("out").join(format!("{name}.jsonl")).display(),
        );
        std::fs::write(root.join("jobs").join(format!("{name}.yaml")), manifest)?;
    }
    Ok(())
}

/// One daemon from a fresh state database until every run closed.
async fn measure(root: &Path, base_url: &str, jobs: u64, items: u64) -> anyhow::Result<Vec<f64>> {
    let _ = std::fs::remove_dir_all(root.join("state"));
    let _ = std::fs::remove_dir_all(root.join("out"));
    std::fs::create_dir_all(root.join("state"))?;
    let db = root.join("state").join("orchestrator.db");
    let mut daemon = Daemon(spawn(root, &db, base_url)?);
    let pid = daemon.0.id();
    wait_closed(&db, jobs, &mut daemon).await?;
    let cpu = super::idle::cpu_secs(pid)?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).context("cannot read the daemon's status")?;
    let peak_mib = super::idle::status_kb(&status, "VmHWM:").map_or(f64::NAN, |kb| kb as f64 / 1024.0);
    drop(daemon);
    let figures = Figures::read(&db)?;
    ensure!(figures.completed == jobs, "{} of {jobs} runs completed", figures.completed);
    ensure!(figures.delivered == jobs * items, "{} of {} results delivered", figures.delivered, jobs * items);
    let calls = figures.creates + figures.polls + figures.downloads + figures.other_calls;
    Ok(vec![
        figures.firing_to_last_delivery_secs,
        figures.batches as f64,
        figures.creates as f64,
        figures.polls as f64,
        figures.downloads as f64,
        calls as f64 / jobs as f64,
        cpu,
        peak_mib,
    ])
}

fn spawn(root: &Path, db: &Path, base_url: &str) -> anyhow::Result<Child> {
    let mut serve = super::idle::serve_project(root, db, base_url, &["--run-now", "--listen", "127.0.0.1:0"])?;
    serve.spawn().context("cannot start `orchestrator serve`")
}

/// Waits until every one of the `jobs` runs is closed, reading the state
/// database the daemon writes (WAL lets a reader in beside it).
async fn wait_closed(db: &Path, jobs: u64, daemon: &mut Daemon) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        if closed_runs(db).is_some_and(|closed| closed >= jobs) {
            return Ok(());
        }
        if started.elapsed() > GIVE_UP {
            bail!("the runs did not close within {GIVE_UP:?}");
        }
        if let Some(exit) = daemon.0.try_wait()? {
            bail!("the daemon exited before every run closed ({exit})");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Closed runs so far; `None` before the daemon created its tables.
fn closed_runs(db: &Path) -> Option<u64> {
    let conn = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).ok()?;
    conn.busy_timeout(Duration::from_secs(1)).ok()?;
    conn.query_row("SELECT COUNT(*) FROM runs WHERE state != 'open'", [], |row| row.get(0)).ok()
}

/// What the state database says the daemon did.
struct Figures {
    firing_to_last_delivery_secs: f64,
    completed: u64,
    delivered: u64,
    batches: u64,
    creates: u64,
    polls: u64,
    downloads: u64,
    other_calls: u64,
}

impl Figures {
    fn read(db: &Path) -> anyhow::Result<Figures> {
        let conn = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        let number = |sql: &str| -> anyhow::Result<i64> {
            conn.query_row(sql, [], |row| row.get::<_, Option<i64>>(0))
                .map(Option::unwrap_or_default)
                .with_context(|| format!("cannot read `{sql}`"))
        };
        let calls = |operation: &str| {
            number(&format!("SELECT COUNT(*) FROM attempts WHERE lane = 'batch' AND operation = '{operation}'"))
                .map(|n| n as u64)
        };
        let (creates, polls, downloads) = (calls("create_batch")?, calls("retrieve_batch")?, calls("results")?);
        let all_calls = number("SELECT COUNT(*) FROM attempts WHERE lane = 'batch'")? as u64;
        let span_ms = number("SELECT MAX(delivered_at) - (SELECT MIN(created_at) FROM runs) FROM deliveries")?;
        Ok(Figures {
            firing_to_last_delivery_secs: span_ms as f64 / 1000.0,
            completed: number("SELECT COUNT(*) FROM runs WHERE state = 'completed'")? as u64,
            delivered: number("SELECT COUNT(*) FROM deliveries")? as u64,
            batches: number("SELECT COUNT(*) FROM batches WHERE provider_batch_id IS NOT NULL")? as u64,
            creates,
            polls,
            downloads,
            other_calls: all_calls - creates - polls - downloads,
        })
    }
}
