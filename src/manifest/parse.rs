//! From text to a typed manifest, with every failure as a coded diagnostic.

use super::{Manifest, SpanIndex, yaml_options};
use crate::diagnostics::{Code, Diagnostic};
use crate::suggest;

/// Parses a manifest in two phases: YAML syntax (building the span index),
/// then the typed structure. Returns the one diagnostic that stopped it.
pub fn parse_manifest(file: &str, source: &str) -> Result<(Manifest, SpanIndex), Box<Diagnostic>> {
    if source.trim().lines().all(|line| line.trim().is_empty() || line.trim_start().starts_with('#')) {
        return Err(Box::new(
            Diagnostic::new(Code::MissingField, file, "the manifest is empty")
                .help("a job needs at least `schedule`, `model`, `max_tokens` and `prompt`"),
        ));
    }
    let spans = SpanIndex::parse(source).map_err(|err| Box::new(syntax_error(file, source, &err)))?;
    let manifest = serde_saphyr::from_str_with_options::<Manifest>(source, yaml_options())
        .map_err(|err| Box::new(structure_error(file, source, &spans, &err)))?;
    Ok((manifest, spans))
}

fn located(code: Code, file: &str, source: &str, err: &serde_saphyr::Error, message: String) -> Diagnostic {
    let diagnostic = Diagnostic::new(code, file, message);
    match err.location() {
        Some(location) => {
            let pos = super::Pos::from_location(&location);
            diagnostic.at(source, pos.line.max(1), pos.column.max(1), pos.len)
        }
        None => diagnostic,
    }
}

/// serde-saphyr's message without its ` at line L, column C` suffix.
fn bare_message(err: &serde_saphyr::Error) -> String {
    let text = err.without_snippet().to_string();
    match text.rfind(" at line ") {
        Some(cut) => text[..cut].to_owned(),
        None => text,
    }
}

fn syntax_error(file: &str, source: &str, err: &serde_saphyr::Error) -> Diagnostic {
    let message = bare_message(err);
    if let Some(rest) = message.strip_prefix("duplicate mapping key: ") {
        let key = rest.split(',').next().unwrap_or(rest).trim();
        return located(Code::DuplicateKey, file, source, err, format!("duplicate key `{key}`"))
            .help(format!("keep one `{key}` entry in this mapping and remove the other"));
    }
    let open_quote = err.location().and_then(|location| {
        super::quotes::open_quote_before(source, location.line() as usize, location.column() as usize)
    });
    if let Some((line, column)) = open_quote {
        return Diagnostic::new(
            Code::YamlSyntax,
            file,
            format!("invalid YAML: the quote opened here is never closed ({message})"),
        )
        .at(source, line, column, 1)
        .help("close the quote on the same line, or write multi-line text as a block scalar (`key: |`)");
    }
    located(Code::YamlSyntax, file, source, err, format!("invalid YAML: {message}"))
        .help("check indentation (spaces, not tabs), quotes and colons around this point")
}

fn structure_error(file: &str, source: &str, spans: &SpanIndex, err: &serde_saphyr::Error) -> Diagnostic {
    let message = bare_message(err);
    if let Some((field, expected)) = unknown_field(&message) {
        let help = suggest::did_you_mean(&field, expected.iter().map(String::as_str))
            .unwrap_or_else(|| format!("allowed here: {}", expected.join(", ")));
        return located(Code::UnknownField, file, source, err, format!("unknown field `{field}`")).help(help);
    }
    if let Some(field) = between(&message, "missing field `", "`") {
        return missing_field(file, source, spans, err, &field);
    }
    let path = err.location().and_then(|location| spans.path_at(location.line() as usize, location.column() as usize));
    let subject = path.as_deref().map(|p| format!(" for `{p}`")).unwrap_or_default();
    if let Some(value) = between(&message, "unknown variant `", "`") {
        let expected = expected_list(&message);
        let help = suggest::did_you_mean(&value, expected.iter().map(String::as_str))
            .unwrap_or_else(|| format!("write one of: {}", expected.join(", ")));
        return located(Code::InvalidValue, file, source, err, format!("invalid value `{value}`{subject}")).help(help);
    }
    if message.contains("untagged enum PromptSource") {
        return located(Code::InvalidValue, file, source, err, format!("invalid template reference{subject}"))
            .help("write a template path under prompts/ (`feed/prompt.md.j2`) or `{ inline: \"...\" }`");
    }
    let written = err.location().and_then(|location| token_at(source, super::Pos::from_location(&location)));
    let value = written.map(|text| format!(" `{text}`")).unwrap_or_default();
    let expected = expected_in_words(&message).unwrap_or(&message);
    located(Code::InvalidValue, file, source, err, format!("invalid value{value}{subject}: {expected}"))
        .maybe_help(path.as_deref().and_then(type_help))
}

/// serde's name of the type it wanted, as a user would say it.
fn expected_in_words(message: &str) -> Option<&'static str> {
    let kind = message.strip_prefix("invalid ")?;
    Some(match kind {
        "i8" | "i16" | "i32" | "i64" | "i128" | "u8" | "u16" | "u32" | "u64" | "u128" | "isize" | "usize" => {
            "expected a whole number"
        }
        "floating point" | "f32" | "f64" => "expected a number",
        "bool" | "boolean" => "expected `true` or `false`",
        _ => return None,
    })
}

/// The text of the token at `pos`, when it is on one line and short enough to echo.
fn token_at(source: &str, pos: super::Pos) -> Option<&str> {
    let line = source.lines().nth(pos.line.checked_sub(1)?)?;
    let start = line.char_indices().nth(pos.column.checked_sub(1)?)?.0;
    let end = line[start..].char_indices().nth(pos.len).map_or(line.len(), |(at, _)| start + at);
    let token = line[start..end].trim();
    (!token.is_empty() && pos.len > 0 && token.chars().count() <= 40).then_some(token)
}

/// serde reports a missing field where the mapping ended (its last key);
/// the diagnostic points at the mapping that lacks it instead: the key that
/// holds it, or the document's first key for a top-level field.
fn missing_field(file: &str, source: &str, spans: &SpanIndex, err: &serde_saphyr::Error, field: &str) -> Diagnostic {
    let at = err.location().map(|location| (location.line() as usize, location.column() as usize));
    let found = at.and_then(|(line, column)| Some((spans.path_at(line, column)?, line, column)));
    // At a key: the mapping that holds it. At a value (`schedule: {}`): that value.
    let holder = found.as_ref().map(|(path, line, column)| {
        let value = spans.get(path).map(|entry| entry.value);
        if value.is_some_and(|pos| (pos.line, pos.column) == (*line, *column)) {
            path.as_str()
        } else {
            path.rsplit_once('.').map_or("", |(parent, _)| parent)
        }
    });
    let diagnostic =
        match holder {
            Some("") => {
                let first = spans.first_top_level_key();
                // One caret where the mapping starts: no key there is at fault.
                Diagnostic::new(Code::MissingField, file, format!("the manifest's top-level mapping has no `{field}`"))
                    .at(source, first.line, first.column, 1)
            }
            Some(parent) => {
                let key = spans.key_or_parent(parent);
                Diagnostic::new(Code::MissingField, file, format!("`{parent}` has no `{field}`"))
                    .at(source, key.line, key.column, key.len)
            }
            None => located(Code::MissingField, file, source, err, format!("missing field `{field}`")),
        };
    diagnostic.help(missing_field_help(field))
}

/// `unknown field `x`, expected one of a, b` → (x, [a, b]).
fn unknown_field(message: &str) -> Option<(String, Vec<String>)> {
    let field = between(message, "unknown field `", "`")?;
    Some((field, expected_list(message)))
}

fn expected_list(message: &str) -> Vec<String> {
    let list = message
        .split_once("expected one of ")
        .or_else(|| message.split_once("expected "))
        .map(|(_, rest)| rest)
        .unwrap_or("");
    list.split(',').map(|name| name.trim().trim_matches('`').to_owned()).filter(|name| !name.is_empty()).collect()
}

fn between(text: &str, start: &str, end: &str) -> Option<String> {
    let from = text.find(start)? + start.len();
    let to = text[from..].find(end)? + from;
    Some(text[from..to].to_owned())
}

fn missing_field_help(field: &str) -> String {
    let example = match field {
        "schedule" => "schedule: { cron: \"30 6 * * *\", timezone: UTC }",
        "cron" => "cron: \"30 6 * * *\"",
        "model" => "model: claude-haiku-4-5",
        "max_tokens" => "max_tokens: 1024",
        "prompt" => "prompt: my-job/prompt.md.j2",
        "path" => "path: out/results.db",
        "table" => "table: results",
        "monthly_usd" => "monthly_usd: 50",
        _ => return format!("add `{field}`"),
    };
    format!("add `{example}`")
}

fn type_help(path: &str) -> Option<String> {
    let leaf = path.rsplit('.').next().unwrap_or(path);
    let example = match leaf {
        "max_tokens" => "a whole number such as `1024`",
        "temperature" => "a number such as `0.2` (0 to 1, or 0 to 2 on OpenAI and Gemini)",
        "max_attempts" | "max_batch_requests" => "a whole number such as `3`",
        "monthly_usd" => "an amount in dollars such as `25`",
        "betas" | "tags" => "a list of strings such as `[a, b]`",
        "vars" | "params" => "a mapping of names to values",
        "schedule" => "a mapping with `cron` and `timezone`",
        "items" => "one of `{ jsonl: PATH }`, `{ glob: PATTERN }`, `{ command: CMD }`",
        "sink" => "one of `{ jsonl: PATH }`, `{ dir: PATH }`, `{ sqlite: { path, table } }`, `{ command: CMD }`",
        _ => return None,
    };
    Some(format!("`{leaf}` takes {example}"))
}
