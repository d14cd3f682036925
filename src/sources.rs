//! Where a run's items come from: a JSON Lines file, a glob, or a command.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::{Map, Value};

use crate::manifest::ItemSource;

/// One unit of input: a JSON object.
pub type Item = Map<String, Value>;

/// Why items could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Lines that are not JSON objects; the run is not started with partial input.
    #[error("{origin}: {} malformed line(s), first at line {}: {}", .lines.len(), .lines[0].0, .lines[0].1)]
    Malformed {
        /// File or command the lines came from.
        origin: String,
        /// Line number and reason for each malformed line.
        lines: Vec<(usize, String)>,
    },
    /// The glob pattern is invalid.
    #[error("invalid glob pattern `{pattern}`: {reason}")]
    Pattern {
        /// The pattern.
        pattern: String,
        /// Why it is invalid.
        reason: String,
    },
    /// The command could not be started.
    #[error("cannot run items command `{command}`")]
    Spawn {
        /// The command line.
        command: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The command exited unsuccessfully.
    #[error("items command `{command}` failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it wrote to standard error (trimmed).
        stderr: String,
    },
}

/// Items read, with the lines that were skipped (only with `skip_malformed`).
#[derive(Debug, Clone, Default)]
pub struct Items {
    /// The items, in source order.
    pub items: Vec<Item>,
    /// Skipped lines: line number and reason.
    pub skipped: Vec<(usize, String)>,
}

/// Reads the items of a run. `paths` are already rendered (`{{ run.date }}` filled in).
/// No source means one empty item.
pub fn read_items(source: Option<&ItemSource>) -> Result<Items, SourceError> {
    let Some(source) = source else {
        return Ok(Items { items: vec![Item::new()], skipped: Vec::new() });
    };
    if let Some(path) = &source.jsonl {
        let file = std::fs::File::open(path).map_err(|err| SourceError::Read { path: path.into(), source: err })?;
        return parse_jsonl(BufReader::new(file), path, source.skip_malformed);
    }
    if let Some(pattern) = &source.glob {
        return read_glob(pattern);
    }
    if let Some(command) = &source.command {
        return run_command(command, source.skip_malformed);
    }
    Ok(Items::default())
}

/// Parses JSON Lines: blank lines are ignored, every other line must be an object.
pub fn parse_jsonl(reader: impl BufRead, origin: &str, skip_malformed: bool) -> Result<Items, SourceError> {
    let mut items = Items::default();
    for (index, line) in reader.lines().enumerate() {
        let number = index + 1;
        let line = line.map_err(|err| SourceError::Read { path: origin.into(), source: err })?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(&line) {
            Ok(Value::Object(object)) => items.items.push(object),
            Ok(other) => items.skipped.push((number, format!("expected a JSON object, found {}", kind(&other)))),
            Err(err) => items.skipped.push((number, err.to_string())),
        }
    }
    if !items.skipped.is_empty() && !skip_malformed {
        return Err(SourceError::Malformed { origin: origin.to_owned(), lines: items.skipped });
    }
    Ok(items)
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn read_glob(pattern: &str) -> Result<Items, SourceError> {
    let paths = glob::glob(pattern)
        .map_err(|err| SourceError::Pattern { pattern: pattern.to_owned(), reason: err.to_string() })?;
    let mut items = Items::default();
    let mut files: Vec<PathBuf> = paths.filter_map(Result::ok).filter(|p| p.is_file()).collect();
    files.sort();
    for path in files {
        let content =
            std::fs::read_to_string(&path).map_err(|source| SourceError::Read { path: path.clone(), source })?;
        let mut item = Item::new();
        item.insert("path".into(), Value::String(path.display().to_string()));
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        item.insert("name".into(), Value::String(name));
        item.insert("content".into(), Value::String(content));
        items.items.push(item);
    }
    Ok(items)
}

fn run_command(command: &str, skip_malformed: bool) -> Result<Items, SourceError> {
    let spawn_error = |source| SourceError::Spawn { command: command.to_owned(), source };
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_error)?;
    // Drain stderr on a thread so a chatty command cannot block on a full pipe.
    let mut stderr_pipe = child.stderr.take().expect("stderr is piped");
    let stderr_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr_pipe.read_to_string(&mut text);
        text
    });
    let stdout = child.stdout.take().expect("stdout is piped");
    let parsed = parse_jsonl(BufReader::new(stdout), &format!("output of `{command}`"), skip_malformed);
    let status = child.wait().map_err(spawn_error)?;
    let stderr = stderr_reader.join().unwrap_or_default();
    if !status.success() {
        return Err(SourceError::Failed { command: command.to_owned(), status, stderr: stderr.trim().to_owned() });
    }
    parsed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_refuses_partial_input_unless_told() {
        let text = "{\"a\": 1}\n\nnot json\n[1]\n{\"a\": 2}\n";
        let err = parse_jsonl(text.as_bytes(), "items.jsonl", false).unwrap_err();
        match &err {
            SourceError::Malformed { lines, .. } => {
                assert_eq!(lines.iter().map(|(n, _)| *n).collect::<Vec<_>>(), vec![3, 4]);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(err.to_string().starts_with("items.jsonl: 2 malformed line(s), first at line 3"));
        let items = parse_jsonl(text.as_bytes(), "items.jsonl", true).unwrap();
        assert_eq!(items.items.len(), 2);
        assert_eq!(items.skipped.len(), 2);
    }

    #[test]
    fn commands_produce_items_and_failures_show_stderr() {
        let source = ItemSource { command: Some("printf '{\"n\":1}\\n{\"n\":2}\\n'".into()), ..Default::default() };
        assert_eq!(read_items(Some(&source)).unwrap().items.len(), 2);
        let failing = ItemSource { command: Some("echo boom >&2; exit 3".into()), ..Default::default() };
        let err = read_items(Some(&failing)).unwrap_err().to_string();
        assert!(err.contains("boom") && err.contains('3'), "{err}");
    }

    #[test]
    fn no_source_is_one_empty_item() {
        let items = read_items(None).unwrap();
        assert_eq!(items.items, vec![Item::new()]);
    }
}
