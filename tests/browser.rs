//! The dashboard in real headless Chromium: the pages render, the KPI strip
//! and the tables show what the store holds, and a screenshot is taken
//! (`ORCHESTRATOR_UPDATE_SCREENSHOT=1` writes it to `docs/dashboard.png`).
//!
//! `.ci/run` installs Debian's `chromium`. Elsewhere the test fails with
//! what to install, unless `ORCHESTRATOR_SKIP_BROWSER_TESTS=1` says to skip.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::root;
use crate::web::{Served, today_and_month_millis};

fn chromium() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

struct Browser {
    binary: PathBuf,
    profile: tempfile::TempDir,
}

impl Browser {
    /// Chromium, or `None` (the test is skipped, and says so) where it is not installed.
    fn find() -> Option<Browser> {
        let Some(binary) = chromium() else {
            crate::support::skip(
                "the browser test needs Chromium: `apt-get install -y chromium` (or set CHROMIUM=/path/to/chrome)",
            );
            return None;
        };
        Some(Browser { binary, profile: tempfile::tempdir().unwrap() })
    }

    /// Runs Chromium headless; a hung browser is killed after a minute instead of blocking the suite.
    fn run(&self, args: &[&str]) -> String {
        let mut child = Command::new(&self.binary)
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run"])
            .arg(format!("--user-data-dir={}", self.profile.path().display()))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromium starts");
        let mut stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut stdout, &mut text).map(|_| text)
        });
        let start = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if start.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                panic!("chromium did not finish within a minute: {args:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(status.success(), "chromium failed with {status}: {args:?}");
        reader.join().unwrap().unwrap()
    }

    /// The page's DOM after Chromium parsed and rendered it.
    fn dom(&self, url: &str) -> String {
        self.run(&["--dump-dom", url])
    }

    fn screenshot(&self, url: &str, path: &Path) {
        self.run(&["--window-size=1400,1200", &format!("--screenshot={}", path.display()), url]);
    }
}

/// The text of the element with `id` (tags stripped).
fn text_of(dom: &str, id: &str) -> String {
    let start = dom.find(&format!("id=\"{id}\"")).unwrap_or_else(|| panic!("no element #{id}"));
    let end = start + dom[start..].find("</div>").unwrap();
    let mut text = String::new();
    let mut in_tag = false;
    for c in dom[start..end].chars().skip_while(|&c| c != '>').skip(1) {
        match c {
            '<' => {
                in_tag = true;
                text.push(' ');
            }
            '>' => in_tag = false,
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_renders_in_chromium_with_the_stored_figures() {
    let Some(browser) = Browser::find() else { return };
    let served = Served::examples(&[]).await;
    let runs = served.count("SELECT COUNT(*) FROM runs");
    let today = today_and_month_millis(served.clock_start).0;
    let completed =
        served.count(&format!("SELECT COUNT(*) FROM runs WHERE state = 'completed' AND finished_at >= {today}"));

    let dom = browser.dom(&format!("{}/batches", served.base));
    assert_eq!(text_of(&dom, "kpi-open-runs"), "Open runs 0");
    assert_eq!(text_of(&dom, "kpi-completed-today"), format!("Completed today {completed}"));
    assert_eq!(text_of(&dom, "kpi-errored-today"), "Errored requests today 0");
    assert!(text_of(&dom, "kpi-batch-share").starts_with("Batch share of eligible tokens 100.0% target ≥ 80% met"));
    assert_eq!(dom.matches("<tr data-run-id=").count() as i64, runs, "one table row per run");
    for key in
        served.db().prepare("SELECT run_key FROM runs").unwrap().query_map([], |r| r.get::<_, String>(0)).unwrap()
    {
        assert!(dom.contains(&key.unwrap()));
    }
    assert!(dom.contains("<title id=\"chart-title\">Spend and savings per job, this month</title>"));

    let jobs = browser.dom(&format!("{}/jobs", served.base));
    assert_eq!(jobs.matches("<tr data-job=").count(), 11, "one row per job");
    let summaries = jobs.split(r#"<tr data-job="feed-summaries""#).nth(1).unwrap().split("</tr>").next().unwrap();
    assert!(summaries.contains("openai</span><br>gpt-4.1-mini"), "the provider is shown: {summaries}");

    let (id, provider_id): (i64, String) = served
        .db()
        .query_row(
            "SELECT run_id, provider_batch_id FROM batches WHERE provider_batch_id IS NOT NULL LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let run = browser.dom(&format!("{}/runs/{id}", served.base));
    assert!(run.contains(&provider_id), "the run page shows its batch");
    assert_eq!(text_of(&run, "run-state"), "completed");

    let shot = tempfile::tempdir().unwrap();
    let png = shot.path().join("batches.png");
    browser.screenshot(&format!("{}/batches", served.base), &png);
    let bytes = std::fs::read(&png).expect("chromium wrote the screenshot");
    assert!(bytes.starts_with(b"\x89PNG") && bytes.len() > 10_000, "a real screenshot");
    if std::env::var("ORCHESTRATOR_UPDATE_SCREENSHOT").is_ok_and(|v| v == "1") {
        std::fs::copy(&png, root().join("docs/dashboard.png")).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_run_shows_its_eta_and_planned_fallback_in_chromium() {
    let Some(browser) = Browser::find() else { return };
    let held = crate::web::HeldOpen::start().await;
    let (submitted, turnaround, fallback_at, _) = held.stored();
    let minute = |at: chrono::DateTime<chrono::Utc>| at.format("%Y-%m-%d %H:%M UTC").to_string();

    // Chromium runs on its own thread: the page is served while it waits.
    let url = format!("{}/batches", held.base);
    let dom = tokio::task::spawn_blocking(move || (browser.dom(&url), browser)).await.unwrap();
    let (dom, browser) = dom;
    assert_eq!(text_of(&dom, "kpi-open-runs"), "Open runs 1");
    let row = &dom[dom.find(&format!("data-run-id=\"{}\"", held.run_id)).expect("the held run's row")..];
    let row = &row[..row.find("</tr>").unwrap()];
    assert!(
        row.contains(&format!(
            "≈ <time datetime=\"{}\">{}</time>",
            (submitted + turnaround).to_rfc3339(),
            minute(submitted + turnaround)
        )),
        "{row}"
    );
    assert!(row.contains("(turnaround p50)"), "{row}");
    assert!(row.contains(&minute(fallback_at)), "the planned fallback: {row}");

    let url = format!("{}/runs/{}", held.base, held.run_id);
    let run = tokio::task::spawn_blocking(move || browser.dom(&url)).await.unwrap();
    assert_eq!(text_of(&run, "run-state"), "open");
    assert!(
        run.contains(&format!(
            "planned <time datetime=\"{}\">{}</time>",
            fallback_at.to_rfc3339(),
            minute(fallback_at)
        )),
        "{run}"
    );
    held.h.sim.shutdown().await;
}
