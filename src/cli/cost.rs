//! `orchestrator cost`: what was spent, what the sync API would have
//! charged, what batching saved, and the five KPIs.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use chrono::{DateTime, Utc};

use crate::catalog::Catalog;
use crate::cost::report::{CostReport, Kpi, Kpis, Totals, build};
use crate::cost::{Pricer, month_start, price_pending};
use crate::store::{GroupBy, Scope};

/// Arguments of `cost`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// State database.
    #[arg(long, default_value = crate::store::DEFAULT_PATH, env = "ORCHESTRATOR_STATE")]
    pub state: PathBuf,
    /// Start of the window (inclusive): `YYYY-MM-DD` (UTC midnight) or an RFC 3339 time. Default: the 1st of this month.
    #[arg(long, value_parser = parse_instant)]
    pub since: Option<DateTime<Utc>>,
    /// End of the window (exclusive), same forms. Default: now.
    #[arg(long, value_parser = parse_instant)]
    pub until: Option<DateTime<Utc>>,
    /// Only this job.
    #[arg(long)]
    pub job: Option<String>,
    /// One row per job, tag, model, provider, lane or day.
    #[arg(long, value_enum)]
    pub by: Option<By>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Recompute every stored cost with the current catalog's prices first.
    #[arg(long)]
    pub reprice: bool,
    /// Model catalog with the prices; the built-in one when absent.
    #[arg(long, env = "ORCHESTRATOR_CATALOG")]
    pub catalog: Option<PathBuf>,
}

/// Groupings of `cost`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum By {
    /// Per job.
    Job,
    /// Per tag.
    Tag,
    /// Per model.
    Model,
    /// Per provider.
    Provider,
    /// Per lane.
    Lane,
    /// Per UTC day.
    Day,
}

impl By {
    fn group(self) -> GroupBy {
        match self {
            By::Job => GroupBy::Job,
            By::Tag => GroupBy::Tag,
            By::Model => GroupBy::Model,
            By::Provider => GroupBy::Provider,
            By::Lane => GroupBy::Lane,
            By::Day => GroupBy::Day,
        }
    }
}

/// Output formats of `cost`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A table for a terminal.
    Table,
    /// The JSON document (a public contract).
    Json,
    /// One CSV line per row, then the total.
    Csv,
}

pub use crate::clock::parse_instant;

pub(super) fn run(args: &Args) -> anyhow::Result<u8> {
    if !crate::store::state_exists(&args.state) {
        eprintln!("error: no state database at {} (nothing has run yet, or pass --state)", args.state.display());
        return Ok(1);
    }
    let mut store = super::setup::open_beside_daemon(&args.state, false)?;
    let pricer = Pricer::new(Catalog::load(args.catalog.as_deref())?);
    if args.reprice {
        store.clear_result_costs()?;
    }
    price_pending(&mut store, &pricer)?;
    let now = Utc::now();
    let scope = Scope {
        since: Some(args.since.unwrap_or_else(|| month_start(now))),
        until: Some(args.until.unwrap_or(now)),
        job: args.job.clone(),
        tag: None,
    };
    let report = build(&store, &scope, args.by.map(By::group))?;
    let text = match args.format {
        Format::Table => table(&report),
        Format::Json => serde_json::to_string_pretty(&report)? + "\n",
        Format::Csv => csv(&report),
    };
    std::io::stdout().lock().write_all(text.as_bytes()).context("cannot write to standard output")?;
    Ok(0)
}

fn money(usd: f64) -> String {
    format!("${usd:.4}")
}

fn pct(share: Option<f64>) -> String {
    share.map_or_else(|| "-".to_owned(), |s| format!("{:.1}%", s * 100.0))
}

/// The terminal table: one line per row, the total, then the KPIs.
pub(super) fn table(report: &CostReport) -> String {
    let mut out = format!(
        "cost from {} to {}{}\n\n",
        report.window.since.format("%Y-%m-%d %H:%M UTC"),
        report.window.until.format("%Y-%m-%d %H:%M UTC"),
        report.window.job.as_ref().map(|j| format!(", job {j}")).unwrap_or_default()
    );
    let header = format!(
        "{:<28} {:>12} {:>12} {:>12} {:>7} {:>8} {:>8} {:>8} {:>11} {:>12}\n",
        report.by.as_deref().unwrap_or(""),
        "spent",
        "sync-equiv",
        "saved",
        "saved%",
        "requests",
        "batch",
        "sync",
        "cache-read",
        "duplicate"
    );
    out.push_str(&header);
    for row in &report.rows {
        out.push_str(&line(&row.key, &row.totals));
    }
    out.push_str(&line("total", &report.total));
    if report.total.failover_usd > 0.0 {
        out.push_str(&format!(
            "of which sync fallback {}, failover to other providers {}\n",
            money(report.total.fallback_usd),
            money(report.total.failover_usd)
        ));
    }
    out.push('\n');
    out.push_str(&kpi_lines(&report.kpis));
    out
}

fn line(key: &str, t: &Totals) -> String {
    format!(
        "{:<28} {:>12} {:>12} {:>12} {:>7} {:>8} {:>8} {:>8} {:>11} {:>12}\n",
        key,
        money(t.cost_usd),
        money(t.sync_equivalent_usd),
        money(t.savings_usd),
        t.savings_pct.map_or_else(|| "-".to_owned(), |p| format!("{p:.1}%")),
        t.requests,
        t.requests_batch,
        t.requests_sync,
        pct(t.cache_read_share),
        money(t.duplicate_usd)
    )
}

fn kpi_lines(k: &Kpis) -> String {
    let show = |name: &str, kpi: &Kpi, value: String, target: &str| {
        let verdict = match kpi.met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "",
        };
        format!("  {name:<38} {value:>14}  {target:<18} {verdict}\n")
    };
    let secs = |kpi: &Kpi| kpi.value.map_or_else(|| "-".to_owned(), |s| format!("{:.2} h", s / 3600.0));
    let count = |kpi: &Kpi| kpi.value.map_or_else(|| "-".to_owned(), |v| format!("{v:.0}"));
    let mut out = String::from("KPIs\n");
    let share = pct(k.batch_token_share.value);
    out.push_str(&show("1. batch share of eligible tokens", &k.batch_token_share, share, ">= 80%"));
    let saved = money(k.savings_usd.value.unwrap_or(0.0));
    out.push_str(&show("2. saved vs the sync baseline", &k.savings_usd, saved, ""));
    out.push_str(&show("3. batch turnaround p50", &k.turnaround_p50_secs, secs(&k.turnaround_p50_secs), "<= 4 h"));
    out.push_str(&show("   batch turnaround p95", &k.turnaround_p95_secs, secs(&k.turnaround_p95_secs), "<= 12 h"));
    out.push_str(&show("4. batch error rate", &k.batch_error_rate, pct(k.batch_error_rate.value), "<= 1%"));
    let fallbacks = count(&k.fallbacks_fired);
    out.push_str(&show("5. fallbacks fired", &k.fallbacks_fired, fallbacks, "<= 5 per 30 days"));
    out.push_str(&show("   batch submit failures", &k.batch_submit_failures, count(&k.batch_submit_failures), ""));
    out
}

/// CSV: a header, one line per row, then the total (key `total`).
pub(super) fn csv(report: &CostReport) -> String {
    let mut out = String::from(
        "key,cost_usd,sync_equivalent_usd,savings_usd,savings_pct,requests,requests_batch,requests_sync,\
         failed_results,input_tokens,output_tokens,cache_write_tokens,cache_read_tokens,cache_read_share,\
         batch_tokens,sync_tokens,fallback_usd,duplicate_usd,duplicates,failover_usd\n",
    );
    let opt = |v: Option<f64>| v.map(|v| format!("{v:.6}")).unwrap_or_default();
    for (key, t) in report.rows.iter().map(|r| (r.key.as_str(), &r.totals)).chain([("total", &report.total)]) {
        let quoted =
            if key.contains([',', '"']) { format!("\"{}\"", key.replace('"', "\"\"")) } else { key.to_owned() };
        out.push_str(&format!(
            "{quoted},{:.6},{:.6},{:.6},{},{},{},{},{},{},{},{},{},{},{},{},{:.6},{:.6},{},{:.6}\n",
            t.cost_usd,
            t.sync_equivalent_usd,
            t.savings_usd,
            opt(t.savings_pct),
            t.requests,
            t.requests_batch,
            t.requests_sync,
            t.failed_results,
            t.input_tokens,
            t.output_tokens,
            t.cache_write_tokens,
            t.cache_read_tokens,
            opt(t.cache_read_share),
            t.batch_tokens,
            t.sync_tokens,
            t.fallback_usd,
            t.duplicate_usd,
            t.duplicates,
            t.failover_usd
        ));
    }
    out
}
