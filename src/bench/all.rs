//! `bench all`: every scenario with its default size, one table of medians
//! against the targets of issue 7, and one JSON document with everything.

use std::fmt::Write as _;
use std::path::PathBuf;

use serde::Serialize;

use super::figures::figures_table;
use super::{
    Figure, Report, Target, build_profile, deliver, endtoend, enqueue, fallback, idle, ingest, jobs, reference,
    schedule, submit, validate,
};

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Repeats of every scenario.
    pub repeats: u32,
    /// Idle seconds per repeat of `idle`.
    pub idle_secs: u64,
    /// The example project `idle` serves.
    pub jobs: PathBuf,
    /// Its prompts.
    pub prompts: PathBuf,
}

/// Results of 1,000 results, to compare the peak RSS with.
const SMALL_INGEST: u64 = 1000;
/// How far apart the peak RSS of a 1,000- and a 100,000-result ingest may be, in percent.
const RSS_SPREAD_PERCENT: f64 = 10.0;

/// Every scenario's report and the headline figures.
#[derive(Debug, Serialize)]
pub struct AllReport {
    /// Where and how it ran.
    pub machine: Machine,
    /// `debug` or `release`.
    pub build: &'static str,
    /// When the run ended (RFC 3339).
    pub finished_at: String,
    /// Repeats per scenario.
    pub repeats: u32,
    /// Medians against targets, scenario by scenario.
    pub figures: Vec<Figure>,
    /// The full report of each scenario.
    pub scenarios: Vec<serde_json::Value>,
}

/// The machine, for comparing runs over time.
#[derive(Debug, Serialize)]
pub struct Machine {
    /// Logical CPUs.
    pub cpus: usize,
    /// `model name` of `/proc/cpuinfo`.
    pub cpu_model: Option<String>,
    /// Physical memory, MiB.
    pub memory_mib: Option<u64>,
    /// Kernel release.
    pub kernel: Option<String>,
}

impl Machine {
    /// This machine, as far as `/proc` says.
    pub fn detect() -> Machine {
        let read = |path| std::fs::read_to_string(path).ok();
        let field = |text: Option<String>, key: &str| {
            text.and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix(key).map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_owned()))
            })
        };
        Machine {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model: field(read("/proc/cpuinfo"), "model name"),
            memory_mib: field(read("/proc/meminfo"), "MemTotal")
                .and_then(|v| v.trim_end_matches("kB").trim().parse::<u64>().ok())
                .map(|kb| kb / 1024),
            kernel: read("/proc/sys/kernel/osrelease").map(|k| k.trim().to_owned()),
        }
    }
}

/// Runs every scenario in turn; a scenario that fails stops the run.
pub async fn run(options: &Options) -> anyhow::Result<AllReport> {
    let repeats = options.repeats;
    let mut all = Collected::default();
    // First: the ratio against the SDK script is the headline row.
    eprintln!("bench: reference ({} items, the SDK script and ours)", endtoend::ITEMS);
    all.add(&reference::run(endtoend::ITEMS, repeats).await?)?;
    eprintln!("bench: ingest ({} results)", ingest::MAX_RESULTS);
    let big = ingest::run(ingest::Options { results: ingest::MAX_RESULTS, repeats }).await?;
    eprintln!("bench: ingest ({SMALL_INGEST} results)");
    let small = ingest::run(ingest::Options { results: SMALL_INGEST, repeats }).await?;
    all.add(&big)?;
    all.figures.insert(2, rss_spread(&big, &small));
    all.scenarios.push(small.json()?);
    eprintln!("bench: submit");
    all.add(&submit::run(submit::REQUESTS, repeats).await?)?;
    eprintln!("bench: run ({} items end to end)", endtoend::ITEMS);
    all.add(&endtoend::run(endtoend::ITEMS, repeats).await?)?;
    eprintln!("bench: deliver ({} results to each sink kind)", deliver::RESULTS);
    all.add(&deliver::run(deliver::RESULTS, repeats).await?)?;
    for jobs in [jobs::JOBS, jobs::MANY_JOBS] {
        eprintln!("bench: jobs ({jobs} jobs of {} items firing at once)", jobs::ITEMS);
        all.add(&jobs::run(jobs, jobs::ITEMS, repeats).await?)?;
    }
    eprintln!("bench: enqueue ({} items posted)", enqueue::ITEMS);
    all.add(&enqueue::run(enqueue::ITEMS, repeats).await?)?;
    eprintln!("bench: fallback");
    all.add(&fallback::run(fallback::REQUESTS, repeats).await?)?;
    eprintln!("bench: validate");
    all.add(&validate::run(validate::MANIFESTS, repeats)?)?;
    eprintln!("bench: schedule");
    all.add(&schedule::run(schedule::JOBS, repeats)?)?;
    eprintln!("bench: idle ({} s per repeat)", options.idle_secs);
    let idle = idle::Options {
        jobs: options.jobs.clone(),
        prompts: options.prompts.clone(),
        idle_secs: options.idle_secs,
        repeats,
    };
    all.add(&idle::run(&idle)?)?;
    let finished_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let (figures, scenarios) = (all.figures, all.scenarios);
    Ok(AllReport { machine: Machine::detect(), build: build_profile(), finished_at, repeats, figures, scenarios })
}

#[derive(Default)]
struct Collected {
    figures: Vec<Figure>,
    scenarios: Vec<serde_json::Value>,
}

impl Collected {
    fn add(&mut self, report: &dyn ErasedReport) -> anyhow::Result<()> {
        self.figures.extend(report.figures());
        self.scenarios.push(report.json()?);
        Ok(())
    }
}

/// How far apart the peak RSS of the large and the small ingest are.
fn rss_spread(big: &ingest::IngestReport, small: &ingest::IngestReport) -> Figure {
    let spread =
        big.peak_rss_kb_median.zip(small.peak_rss_kb_median).map(|(b, s)| (b as f64 / s as f64 - 1.0).abs() * 100.0);
    let name = "peak RSS 100k vs 1k results, % apart";
    Figure::new("ingest", name, spread, Some(Target::at_most(RSS_SPREAD_PERCENT)))
}

/// [`Report`] without its `Serialize` generic, so reports of any type fit one list.
trait ErasedReport {
    fn figures(&self) -> Vec<Figure>;
    fn json(&self) -> serde_json::Result<serde_json::Value>;
}

impl<R: Report> ErasedReport for R {
    fn figures(&self) -> Vec<Figure> {
        Report::figures(self)
    }

    fn json(&self) -> serde_json::Result<serde_json::Value> {
        serde_json::to_value(self)
    }
}

impl Report for AllReport {
    fn table(&self) -> String {
        let m = &self.machine;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "orchestrator bench all: {} build, {} repeat(s) per scenario, medians; {} CPU(s) ({}), {} MiB, Linux {}\n",
            self.build,
            self.repeats,
            m.cpus,
            m.cpu_model.as_deref().unwrap_or("unknown CPU"),
            m.memory_mib.map_or_else(|| "?".to_owned(), |v| v.to_string()),
            m.kernel.as_deref().unwrap_or("?")
        );
        out.push_str(&figures_table(&self.figures));
        out
    }

    fn figures(&self) -> Vec<Figure> {
        self.figures.clone()
    }
}
