//! Checks of prompt templates and of templated paths.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use minijinja::Environment;

use crate::diagnostics::{Code, Diagnostic};
use crate::manifest::{Parsed, PromptSource};
use crate::suggest;
use crate::templates::{
    self, JOB_ATTRIBUTES, PATH_VARIABLES, PROMPT_VARIABLES, RUN_ATTRIBUTES, TemplateLoadError, TemplateText,
};

pub(super) fn check(job: &Parsed, prompts_dir: &Path, out: &mut Vec<Diagnostic>) {
    let env = templates::environment();
    let prompts = [("system", job.manifest.system.as_ref()), ("prompt", Some(&job.manifest.prompt))];
    for (field, source) in prompts {
        if let Some(source) = source {
            check_prompt(job, &env, prompts_dir, field, source, out);
        }
    }
    let paths = [
        ("items.jsonl", job.manifest.items.as_ref().and_then(|i| i.jsonl.as_deref())),
        ("items.glob", job.manifest.items.as_ref().and_then(|i| i.glob.as_deref())),
        ("items.command", job.manifest.items.as_ref().and_then(|i| i.command.as_deref())),
        ("sink.jsonl", job.manifest.sink.as_ref().and_then(|s| s.jsonl.as_deref())),
        ("sink.dir", job.manifest.sink.as_ref().and_then(|s| s.dir.as_deref())),
        ("sink.sqlite.path", job.manifest.sink.as_ref().and_then(|s| s.sqlite.as_ref()).map(|s| s.path.as_str())),
    ];
    for (field, text) in paths {
        if let Some(text) = text.filter(|t| t.contains("{{") || t.contains("{%")) {
            check_path_template(job, &env, field, text, out);
        }
    }
}

fn check_prompt(
    job: &Parsed,
    env: &Environment<'_>,
    prompts_dir: &Path,
    field: &str,
    source: &PromptSource,
    out: &mut Vec<Diagnostic>,
) {
    let value_path = match source {
        PromptSource::Inline { .. } => format!("{field}.inline"),
        PromptSource::Path(_) => field.to_owned(),
    };
    let text = match templates::load(source, prompts_dir, &format!("{}:{field}", job.file)) {
        Ok(text) => text,
        Err(TemplateLoadError::OutsidePrompts(path)) => {
            out.push(
                job.at_value(
                    Code::TemplateOutsidePrompts,
                    &value_path,
                    format!("template path `{path}` leaves the prompts directory"),
                )
                .help(format!("write a path relative to {}", prompts_dir.display())),
            );
            return;
        }
        Err(TemplateLoadError::Read { path, source }) => {
            let help = missing_template_help(prompts_dir, &path);
            out.push(
                job.at_value(
                    Code::TemplateMissing,
                    &value_path,
                    format!("cannot read template {}: {source}", path.display()),
                )
                .help(help),
            );
            return;
        }
    };
    let place = Place::new(job, &text, &value_path);
    let template = match env.template_from_named_str(&text.name, &text.source) {
        Ok(template) => template,
        Err(err) => {
            out.push(place.syntax_error(&err));
            return;
        }
    };
    // A stage's items are its upstream's results: their fields are known.
    let item = job.manifest.items.as_ref().filter(|items| items.from.is_some()).map(|items| {
        (crate::sources::stage_item_fields(items.shape.unwrap_or_default()), items.from.as_deref().unwrap_or_default())
    });
    let allowed = Allowed { top: PROMPT_VARIABLES, vars: Some(&job.manifest.vars), item };
    for name in sorted(template.undeclared_variables(true)) {
        if let Some((message, help)) = allowed.problem(&name) {
            out.push(place.at_name(&name, message).maybe_help(help));
        }
    }
}

fn check_path_template(job: &Parsed, env: &Environment<'_>, field: &str, text: &str, out: &mut Vec<Diagnostic>) {
    let template = match env.template_from_named_str(field, text) {
        Ok(template) => template,
        Err(err) => {
            let message = format!("template syntax error in `{field}`: {}", err.detail().unwrap_or("invalid syntax"));
            out.push(
                job.at_value(Code::TemplateSyntax, field, message)
                    .help("paths may use `{{ run.date }}`, `{{ run.id }}` and `{{ job.name }}`"),
            );
            return;
        }
    };
    let allowed = Allowed { top: PATH_VARIABLES, vars: None, item: None };
    for name in sorted(template.undeclared_variables(true)) {
        if let Some((message, help)) = allowed.problem(&name) {
            out.push(
                job.at_value(Code::TemplateUndefinedVariable, field, format!("`{field}` {message}")).maybe_help(help),
            );
        }
    }
}

fn sorted(names: HashSet<String>) -> Vec<String> {
    let mut names: Vec<_> = names.into_iter().collect();
    names.sort();
    names
}

/// Which names a template may use.
struct Allowed<'a> {
    top: &'a [&'a str],
    /// The manifest's `vars`, when `vars` is allowed.
    vars: Option<&'a BTreeMap<String, serde_json::Value>>,
    /// For a stage: the fields its items have, and the upstream job.
    item: Option<(&'a [&'a str], &'a str)>,
}

impl Allowed<'_> {
    /// For a dotted name such as `run.dat`: what is wrong and what to write instead.
    fn problem(&self, dotted: &str) -> Option<(String, Option<String>)> {
        let mut parts = dotted.split('.');
        let top = parts.next().unwrap_or(dotted);
        let attribute = parts.next();
        if templates::is_builtin_global(top) {
            return None;
        }
        if !self.top.contains(&top) {
            let help = suggest::did_you_mean(top, self.top.iter().copied())
                .unwrap_or_else(|| format!("templates here can use: {}", self.top.join(", ")));
            return Some((format!("uses undefined variable `{top}`"), Some(help)));
        }
        let attribute = attribute?;
        let known: Vec<&str> = match top {
            "job" => JOB_ATTRIBUTES.to_vec(),
            "run" => RUN_ATTRIBUTES.to_vec(),
            "vars" => self.vars?.keys().map(String::as_str).collect(),
            "item" => self.item?.0.to_vec(),
            _ => return None,
        };
        if known.contains(&attribute) {
            return None;
        }
        let help = suggest::did_you_mean(attribute, known.iter().copied()).or_else(|| {
            Some(match top {
                "vars" => format!("add `{attribute}` under `vars:` in the manifest"),
                _ => format!("`{top}` has: {}", known.join(", ")),
            })
        });
        let message = match (top, self.item) {
            ("item", Some((_, upstream))) => format!(
                "uses `item.{attribute}`, which a result of `{upstream}` does not have (a stage's item is an upstream result)"
            ),
            _ => format!("uses undefined variable `{top}.{attribute}`"),
        };
        Some((message, help))
    }
}

/// Where a template's problems are reported: in its file, or at the inline
/// value in the manifest.
struct Place<'a> {
    job: &'a Parsed,
    text: &'a TemplateText,
    value_path: &'a str,
}

impl<'a> Place<'a> {
    fn new(job: &'a Parsed, text: &'a TemplateText, value_path: &'a str) -> Place<'a> {
        Place { job, text, value_path }
    }

    fn syntax_error(&self, err: &minijinja::Error) -> Diagnostic {
        let detail = err.detail().unwrap_or("invalid syntax");
        let line = err.line().unwrap_or(1);
        let help = "see the template syntax at https://docs.rs/minijinja/latest/minijinja/syntax/";
        match &self.text.path {
            Some(_) => {
                let (line, column, len) = match err.range() {
                    Some(range) => position(&self.text.source, range.start, range.len()),
                    None => (line, 1, 1),
                };
                Diagnostic::new(Code::TemplateSyntax, &self.text.name, format!("template syntax error: {detail}"))
                    .at(&self.text.source, line, column, len)
                    .help(help)
            }
            None => self
                .job
                .at_value(
                    Code::TemplateSyntax,
                    self.value_path,
                    format!("template syntax error on line {line} of the inline template: {detail}"),
                )
                .help(help),
        }
    }

    fn at_name(&self, dotted: &str, message: String) -> Diagnostic {
        match &self.text.path {
            Some(_) => {
                let (line, column, len) = find_name(&self.text.source, dotted);
                Diagnostic::new(Code::TemplateUndefinedVariable, &self.text.name, format!("template {message}")).at(
                    &self.text.source,
                    line,
                    column,
                    len,
                )
            }
            None => self.job.at_value(
                Code::TemplateUndefinedVariable,
                self.value_path,
                format!("inline template {message}"),
            ),
        }
    }
}

/// Line, column and length (in characters) of a byte range in `source`.
fn position(source: &str, start: usize, len: usize) -> (usize, usize, usize) {
    let start = start.min(source.len());
    let before = &source[..start];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = source[line_start..start].chars().count() + 1;
    let end = (start + len).min(source.len());
    let len = source.get(start..end).map_or(1, |s| s.chars().count());
    (line, column, len)
}

/// Where `dotted` (or its first part) first appears as a whole word.
fn find_name(source: &str, dotted: &str) -> (usize, usize, usize) {
    let is_word = |c: char| c.is_alphanumeric() || c == '_';
    let mut from = 0;
    while let Some(found) = source[from..].find(dotted) {
        let start = from + found;
        let end = start + dotted.len();
        let clear_before = source[..start].chars().next_back().is_none_or(|c| !is_word(c) && c != '.');
        let clear_after = source[end..].chars().next().is_none_or(|c| !is_word(c));
        if clear_before && clear_after {
            return position(source, start, dotted.len());
        }
        from = end;
    }
    (1, 1, 1)
}

fn missing_template_help(prompts_dir: &Path, path: &Path) -> String {
    let siblings = path
        .parent()
        .and_then(|dir| std::fs::read_dir(dir).ok())
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter_map(|e| e.path().strip_prefix(prompts_dir).ok().map(|p| p.display().to_string()))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let wanted =
        path.strip_prefix(prompts_dir).map_or_else(|_| path.display().to_string(), |p| p.display().to_string());
    suggest::did_you_mean(&wanted, siblings.iter().map(String::as_str)).unwrap_or_else(|| {
        format!("create {} or correct the path (relative to {})", path.display(), prompts_dir.display())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_count_lines_and_characters() {
        let source = "one\ntwo {{ x }}\n";
        assert_eq!(position(source, 8, 1), (2, 5, 1));
        assert_eq!(find_name("{{ item.x }} {{ runs }} {{ run.dat }}", "run.dat"), (1, 28, 7));
    }
}
