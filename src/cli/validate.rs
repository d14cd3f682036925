//! `orchestrator validate`.

use std::io::Write;

use anyhow::Context;

use super::{EXIT_CONFIG, OutputFormat, ProjectArgs};
use crate::catalog::Catalog;
use crate::validate::Report;

/// Arguments of `validate`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where the project is.
    #[command(flatten)]
    pub project: ProjectArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Human)]
    pub format: OutputFormat,
    /// Fail (exit 78) on warnings too.
    #[arg(long)]
    pub deny_warnings: bool,
}

pub(super) fn run(args: &Args) -> anyhow::Result<u8> {
    let catalog = Catalog::load(args.project.catalog.as_deref())?;
    let report = args.project.validate(&catalog, chrono::Utc::now());
    let mut stdout = std::io::stdout().lock();
    match args.format {
        OutputFormat::Human => stdout.write_all(human(&report).as_bytes()),
        OutputFormat::Json => writeln!(stdout, "{}", serde_json::to_string_pretty(&report.diagnostics)?),
    }
    .context("cannot write to standard output")?;
    Ok(if report.passes(args.deny_warnings) { 0 } else { EXIT_CONFIG })
}

/// The human report: one block per problem, then a summary line.
pub(super) fn human(report: &Report) -> String {
    let mut out = String::new();
    for diagnostic in &report.diagnostics {
        out.push_str(&diagnostic.render_human());
        out.push('\n');
    }
    let (errors, warnings) = report.counts();
    let plural = |n: usize, word: &str| if n == 1 { format!("{n} {word}") } else { format!("{n} {word}s") };
    out.push_str(&format!(
        "{}: {} checked, {}, {}\n",
        if errors == 0 { "ok" } else { "failed" },
        plural(report.files, "manifest"),
        plural(errors, "error"),
        plural(warnings, "warning"),
    ));
    out
}
