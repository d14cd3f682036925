//! Job manifests: their types, where their values stand, and how a jobs
//! directory is read.

mod duration;
mod parse;
mod quotes;
mod spans;
mod types;

pub use duration::{format_duration, parse_duration};
pub use parse::parse_manifest;
pub use spans::{Entry, Pos, SpanIndex, yaml_options};
pub use types::*;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::diagnostics::{Code, Diagnostic};

/// A manifest that parsed, with everything needed to point into it: what
/// `validate` checks and reports on. A manifest without errors is compiled
/// into a [`crate::job::Job`], which is what runs.
#[derive(Debug, Clone)]
pub struct Parsed {
    /// The job's name: the file stem.
    pub name: String,
    /// The file, as it is shown in diagnostics.
    pub file: String,
    /// The file's text.
    pub source: String,
    /// The typed manifest.
    pub manifest: Manifest,
    /// Where each value stands in `source`.
    pub spans: SpanIndex,
}

impl Parsed {
    /// E005 for a field the top-level mapping lacks, at the mapping's start
    /// (as the parser reports the fields serde requires).
    pub fn missing_top_level(&self, field: &str, help: &str) -> Diagnostic {
        let first = self.spans.first_top_level_key();
        Diagnostic::new(Code::MissingField, &self.file, format!("the manifest's top-level mapping has no `{field}`"))
            .at(&self.source, first.line, first.column, 1)
            .help(help)
    }

    /// A diagnostic underlining the value at `path` (or its nearest ancestor).
    pub fn at_value(&self, code: Code, path: &str, message: impl Into<String>) -> Diagnostic {
        let pos = self.spans.value_or_parent(path);
        Diagnostic::new(code, &self.file, message).at(&self.source, pos.line, pos.column, pos.len)
    }

    /// A diagnostic underlining the key at `path` (or its nearest ancestor).
    pub fn at_key(&self, code: Code, path: &str, message: impl Into<String>) -> Diagnostic {
        let pos = self.spans.key_or_parent(path);
        Diagnostic::new(code, &self.file, message).at(&self.source, pos.line, pos.column, pos.len)
    }
}

/// The deadline a tier gets when the manifest sets none.
pub fn default_deadline(tier: Tier) -> Duration {
    match tier {
        Tier::Realtime => Duration::from_secs(60),
        Tier::Soft => Duration::from_secs(3600),
        Tier::Batch => Duration::from_secs(86_400),
    }
}

/// Whether `name` can start every custom_id: `^[a-z0-9][a-z0-9-]{0,39}$`.
pub fn is_valid_job_name(name: &str) -> bool {
    let mut chars = name.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    name.len() <= 40
        && (first.is_ascii_lowercase() || first.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// The manifest files of a jobs directory (`.yaml` and `.yml`), sorted.
pub fn manifest_files(jobs_dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(jobs_dir)? {
        let path = entry?.path();
        let is_manifest =
            path.extension().and_then(|ext| ext.to_str()).is_some_and(|ext| ext == "yaml" || ext == "yml");
        if is_manifest && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_names_fit_custom_ids() {
        assert!(is_valid_job_name("feed-classify"));
        assert!(is_valid_job_name("a"));
        assert!(is_valid_job_name(&"a".repeat(40)));
        assert!(!is_valid_job_name(&"a".repeat(41)));
        assert!(!is_valid_job_name("Feed"));
        assert!(!is_valid_job_name("-feed"));
        assert!(!is_valid_job_name("feed_classify"));
        assert!(!is_valid_job_name(""));
    }
}
