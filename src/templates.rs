//! Prompt templates: one minijinja environment, strict about undefined names.
//!
//! Templates see exactly four top-level variables: `item`, `vars`, `job`
//! and `run`. Item source and sink paths are templates too, seeing `job` and
//! `run` only.

use std::path::{Component, Path, PathBuf};

use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use serde::Serialize;

use crate::manifest::PromptSource;

/// Variables a prompt template may use.
pub const PROMPT_VARIABLES: &[&str] = &["item", "vars", "job", "run"];
/// Variables a path template (item source, sink) may use.
pub const PATH_VARIABLES: &[&str] = &["job", "run"];
/// Attributes of `job` in templates.
pub const JOB_ATTRIBUTES: &[&str] = &["name", "tags"];
/// Attributes of `run` in templates.
pub const RUN_ATTRIBUTES: &[&str] = &["id", "date", "scheduled_for"];
/// Names minijinja defines globally; using them is not an undefined variable.
const BUILTIN_GLOBALS: &[&str] =
    &["range", "dict", "namespace", "debug", "loop", "self", "super", "varargs", "kwargs", "caller"];

/// The environment every template is compiled and rendered in.
pub fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    // Prompts are plain text sent to a model, never HTML.
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env
}

/// Whether `name` is a minijinja global rather than a template variable.
pub fn is_builtin_global(name: &str) -> bool {
    BUILTIN_GLOBALS.contains(&name)
}

/// A template's text and the name it is compiled under.
#[derive(Debug, Clone)]
pub struct TemplateText {
    /// Name shown in errors: the file path, or `<job>:<field>` for inline text.
    pub name: String,
    /// The template source.
    pub source: String,
    /// The file it came from, if any.
    pub path: Option<PathBuf>,
}

/// Why a template could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TemplateLoadError {
    /// The path is absolute or climbs out of the prompts directory.
    #[error("template path `{0}` leaves the prompts directory")]
    OutsidePrompts(String),
    /// The file could not be read.
    #[error("cannot read template {path}")]
    Read {
        /// The template file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Reads a manifest's template reference: a file under `prompts_dir`, or inline text.
pub fn load(source: &PromptSource, prompts_dir: &Path, inline_name: &str) -> Result<TemplateText, TemplateLoadError> {
    match source {
        PromptSource::Inline { inline } => {
            Ok(TemplateText { name: inline_name.to_owned(), source: inline.clone(), path: None })
        }
        PromptSource::Path(relative) => {
            let path = resolve(prompts_dir, relative)?;
            let text = std::fs::read_to_string(&path)
                .map_err(|source| TemplateLoadError::Read { path: path.clone(), source })?;
            Ok(TemplateText { name: path.display().to_string(), source: text, path: Some(path) })
        }
    }
}

/// `prompts_dir/relative`, refusing absolute paths and `..`.
pub fn resolve(prompts_dir: &Path, relative: &str) -> Result<PathBuf, TemplateLoadError> {
    let candidate = Path::new(relative);
    let escapes =
        candidate.components().any(|c| matches!(c, Component::ParentDir | Component::RootDir | Component::Prefix(_)));
    if escapes || relative.is_empty() {
        return Err(TemplateLoadError::OutsidePrompts(relative.to_owned()));
    }
    Ok(prompts_dir.join(candidate))
}

/// Renders a template string once, with the given context.
pub fn render_str(
    env: &Environment<'_>,
    name: &str,
    source: &str,
    context: impl Serialize,
) -> Result<String, minijinja::Error> {
    env.template_from_named_str(name, source)?.render(minijinja::value::Serde(context))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn undefined_variables_fail_to_render() {
        let env = environment();
        let err = render_str(&env, "t", "hello {{ nobody }}", minijinja::context! {}).unwrap_err();
        assert_eq!(err.kind(), minijinja::ErrorKind::UndefinedError);
        let ok = render_str(
            &env,
            "t",
            "<{{ item.title }}>",
            minijinja::context! { item => minijinja::context! { title => "a&b" } },
        );
        assert_eq!(ok.unwrap(), "<a&b>");
    }

    #[test]
    fn paths_stay_inside_the_prompts_directory() {
        let dir = Path::new("prompts");
        assert_eq!(resolve(dir, "feed/prompt.md.j2").unwrap(), Path::new("prompts/feed/prompt.md.j2"));
        assert!(resolve(dir, "../secrets").is_err());
        assert!(resolve(dir, "/etc/passwd").is_err());
    }
}
