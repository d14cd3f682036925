//! `validate`: every check on every manifest, collected before anything is printed.
//!
//! Phases per file: read, YAML syntax, typed structure, semantics
//! (schedule, model, templates, items and sinks). Then checks across files.
//! A file that fails an early phase skips the later ones; other files are
//! still checked, so one bad file never hides another.

mod io;
mod model;
mod schedule;
mod templates;

pub use model::{ANTHROPIC, GEMINI, GEMINI_GENERATION_CONFIG, OPENAI, ProviderRules, rules};

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, Utc};

use crate::catalog::Catalog;
use crate::diagnostics::{self, Code, Diagnostic, Severity};
use crate::job::Job;
use crate::manifest::{self, Parsed};

mod compile;

#[cfg(test)]
pub(crate) use compile::test_job;

/// What `validate` is given.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// Directory of manifests.
    pub jobs_dir: &'a Path,
    /// Directory that template paths are relative to.
    pub prompts_dir: &'a Path,
    /// Models, lanes and prices.
    pub catalog: &'a Catalog,
    /// The instant "never fires" and cadences are computed from.
    pub now: DateTime<Utc>,
}

/// Everything `validate` found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Problems, sorted by file and position.
    pub diagnostics: Vec<Diagnostic>,
    /// Manifests that parsed (with or without semantic problems).
    pub parsed: Vec<Parsed>,
    /// The manifests without errors, compiled: what `run` and `serve` run.
    pub jobs: Vec<Job>,
    /// Number of manifest files looked at.
    pub files: usize,
    /// The errors found in each parsed manifest and the templates it uses, by job name.
    errors: BTreeMap<String, Vec<Diagnostic>>,
}

impl Report {
    /// Number of errors and of warnings.
    pub fn counts(&self) -> (usize, usize) {
        diagnostics::count(&self.diagnostics)
    }

    /// Whether the set can be run: no errors, and no warnings when they are denied.
    pub fn passes(&self, deny_warnings: bool) -> bool {
        let (errors, warnings) = self.counts();
        errors == 0 && (!deny_warnings || warnings == 0)
    }

    /// The errors in the manifest of the job called `name` (and in the
    /// templates it uses), if any.
    pub fn errors_of(&self, name: &str) -> &[Diagnostic] {
        self.errors.get(name).map_or(&[], Vec::as_slice)
    }

    /// The compiled job called `name`: its manifest had no errors.
    pub fn job(&self, name: &str) -> Option<&Job> {
        self.jobs.iter().find(|job| job.name == name)
    }

    /// The manifest of the job called `name`, if it parsed (errors or not).
    pub fn parsed(&self, name: &str) -> Option<&Parsed> {
        self.parsed.iter().find(|parsed| parsed.name == name)
    }
}

/// Validates every manifest in `inputs.jobs_dir`.
pub fn validate_dir(inputs: Inputs<'_>) -> Report {
    let mut report = Report::default();
    let files = match manifest::manifest_files(inputs.jobs_dir) {
        Ok(files) => files,
        Err(err) => {
            let dir = inputs.jobs_dir.display().to_string();
            report.diagnostics.push(
                Diagnostic::new(Code::Unreadable, &dir, format!("cannot read jobs directory: {err}"))
                    .help("run from the project directory or pass `--jobs DIR`"),
            );
            return report;
        }
    };
    report.files = files.len();
    for path in &files {
        let file = path.display().to_string();
        match std::fs::read(path) {
            Ok(bytes) => validate_file(&file, &bytes, inputs, &mut report),
            Err(err) => {
                report.diagnostics.push(Diagnostic::new(Code::Unreadable, &file, format!("cannot read file: {err}")))
            }
        }
    }
    let checked = report.diagnostics.len();
    check_duplicate_names(&report.parsed, &mut report.diagnostics);
    io::check_shared_sinks(&report.parsed, &mut report.diagnostics);
    io::check_stages(&report.parsed, &mut report.diagnostics);
    for diagnostic in report.diagnostics[checked..].iter().filter(|d| d.severity == Severity::Error) {
        if let Some(parsed) = report.parsed.iter().find(|p| p.file == diagnostic.file) {
            report.errors.entry(parsed.name.clone()).or_default().push(diagnostic.clone());
        }
    }
    diagnostics::sort_dedup(&mut report.diagnostics);
    report.jobs = report
        .parsed
        .iter()
        .filter(|parsed| report.errors.get(&parsed.name).is_none_or(Vec::is_empty))
        .filter_map(|parsed| compile::compile(parsed, inputs.prompts_dir, inputs.catalog))
        .collect();
    report
}

/// Validates one manifest's bytes; `file` is its path, whose stem is the job name.
pub fn validate_file(file: &str, bytes: &[u8], inputs: Inputs<'_>, report: &mut Report) {
    let before = report.diagnostics.len();
    let name = job_name(file);
    if !manifest::is_valid_job_name(&name) {
        report.diagnostics.push(
            Diagnostic::new(Code::InvalidJobName, file, format!("job name `{name}` cannot form a custom_id")).help(
                format!(
                    "rename the file to match `^[a-z0-9][a-z0-9-]{{0,39}}$`, e.g. `{}.yaml`",
                    suggest_job_name(&name)
                ),
            ),
        );
    }
    let source = match std::str::from_utf8(bytes) {
        Ok(source) => source,
        Err(err) => {
            report.diagnostics.push(
                Diagnostic::new(Code::Unreadable, file, format!("the file is not UTF-8 text: {err}"))
                    .help("save the manifest as UTF-8"),
            );
            return;
        }
    };
    let (manifest, spans) = match manifest::parse_manifest(file, source) {
        Ok(parsed) => parsed,
        Err(diagnostic) => {
            report.diagnostics.push(*diagnostic);
            return;
        }
    };
    let parsed = Parsed { name, file: file.to_owned(), source: source.to_owned(), manifest, spans };
    schedule::check(&parsed, inputs.catalog, inputs.now, &mut report.diagnostics);
    model::check(&parsed, inputs.catalog, &mut report.diagnostics);
    templates::check(&parsed, inputs.prompts_dir, &mut report.diagnostics);
    io::check(&parsed, &mut report.diagnostics);
    let errors = report.diagnostics[before..].iter().filter(|d| d.severity == Severity::Error).cloned().collect();
    report.errors.insert(parsed.name.clone(), errors);
    report.parsed.push(parsed);
}

fn job_name(file: &str) -> String {
    Path::new(file).file_stem().map(|stem| stem.to_string_lossy().into_owned()).unwrap_or_default()
}

/// A valid name close to `name`, for the help text.
fn suggest_job_name(name: &str) -> String {
    let mut out: String =
        name.to_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    out = out.trim_matches('-').to_owned();
    out.truncate(40);
    if out.is_empty() { "my-job".to_owned() } else { out }
}

fn check_duplicate_names(jobs: &[Parsed], out: &mut Vec<Diagnostic>) {
    let mut by_name: BTreeMap<&str, Vec<&Parsed>> = BTreeMap::new();
    for job in jobs {
        by_name.entry(&job.name).or_default().push(job);
    }
    for (name, same) in by_name.into_iter().filter(|(_, same)| same.len() > 1) {
        for job in &same[1..] {
            out.push(
                Diagnostic::new(
                    Code::DuplicateJob,
                    &job.file,
                    format!("job `{name}` is also defined in {}", same[0].file),
                )
                .help("a job's name is its file stem: rename or remove one of the files"),
            );
        }
    }
}
