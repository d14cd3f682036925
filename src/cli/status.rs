//! `orchestrator status`.

use std::io::Write;

use anyhow::Context;

/// Arguments of `status`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only this job.
    pub job: Option<String>,
    /// State database.
    #[arg(long, default_value = crate::store::DEFAULT_PATH, env = "ORCHESTRATOR_STATE")]
    pub state: std::path::PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

/// Output formats of `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Lines for a terminal.
    Text,
    /// The JSON document `/api/v1/status` serves.
    Json,
}

pub(super) fn run(args: &Args) -> anyhow::Result<u8> {
    if !crate::store::state_exists(&args.state) {
        eprintln!("error: no state database at {} (nothing has run yet, or pass --state)", args.state.display());
        return Ok(1);
    }
    let store = super::setup::open_beside_daemon(&args.state, false)?;
    // No manifests are read here: times of runs are in UTC.
    let report = crate::status::collect(&store, args.job.as_deref(), &Default::default(), chrono::Utc::now())?;
    let text = match args.format {
        Format::Text => crate::status::render_text(&report),
        Format::Json => serde_json::to_string_pretty(&report)? + "\n",
    };
    std::io::stdout().lock().write_all(text.as_bytes()).context("cannot write to standard output")?;
    Ok(0)
}
