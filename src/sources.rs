//! Where a run's items come from: a JSON Lines file, a glob, or a command.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;

use serde_json::{Map, Value};

use crate::manifest::{ItemSource, StageShape};
use crate::store::UpstreamResult;

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
    /// A stage's items come from another job's results in the state
    /// database, which this reader has no access to.
    #[error("the items are the results of job `{job}`: they are read from the state database when a run starts")]
    Stage {
        /// The upstream job.
        job: String,
    },
    /// A stage's upstream job has no completed run to read.
    #[error("job `{job}` has no completed run yet: a stage reads the results of its newest completed run")]
    NoUpstreamRun {
        /// The upstream job.
        job: String,
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

/// Reads the items of a run whole. `paths` are already rendered (`{{ run.date }}` filled in).
/// No source means one empty item.
pub fn read_items(source: Option<&ItemSource>) -> Result<Items, SourceError> {
    collect(ItemStream::open(source)?)
}

/// The fields of a stage's item (`items.from`, `as: each`): what its
/// templates can read as `item.<field>` (`validate` checks them).
pub const STAGE_ITEM_FIELDS: &[&str] = &["custom_id", "text", "item", "usage", "run"];
/// The fields of a stage's one item (`as: one`); each of `results` has [`STAGE_ITEM_FIELDS`].
pub const STAGE_DIGEST_FIELDS: &[&str] = &["results", "run"];

/// The fields a stage's item of `shape` has.
pub fn stage_item_fields(shape: StageShape) -> &'static [&'static str] {
    match shape {
        StageShape::Each => STAGE_ITEM_FIELDS,
        StageShape::One => STAGE_DIGEST_FIELDS,
    }
}

/// A stage's items from the results its upstream run `run` delivered: one
/// per result (`custom_id`, `text`, `item`, `usage`), or with
/// [`StageShape::One`] all of them as one item (`results`, and the `run`).
pub fn stage_items(run: &str, results: &[UpstreamResult], shape: StageShape) -> Vec<Item> {
    let each = results.iter().map(|result| {
        let mut item = Item::new();
        item.insert("custom_id".into(), Value::String(result.custom_id.clone()));
        item.insert("text".into(), Value::String(crate::outcome::message_text_of(&result.message)));
        item.insert("item".into(), serde_json::from_str(&result.item).unwrap_or_default());
        item.insert("usage".into(), serde_json::to_value(result.usage).unwrap_or_default());
        item.insert("run".into(), Value::String(run.to_owned()));
        item
    });
    match shape {
        StageShape::Each => each.collect(),
        StageShape::One => {
            let mut item = Item::new();
            item.insert("results".into(), Value::Array(each.map(Value::Object).collect()));
            item.insert("run".into(), Value::String(run.to_owned()));
            vec![item]
        }
    }
}

/// Parses JSON Lines: blank lines are ignored, every other line must be an object.
#[cfg(test)]
fn parse_jsonl(
    reader: impl BufRead + Send + 'static,
    origin: &str,
    skip_malformed: bool,
) -> Result<Items, SourceError> {
    collect(ItemStream::lines(Box::new(reader), origin, skip_malformed))
}

fn collect(mut stream: ItemStream) -> Result<Items, SourceError> {
    let items = stream.by_ref().collect::<Result<Vec<_>, _>>()?;
    Ok(Items { items, skipped: stream.finish()? })
}

/// A run's items one at a time, so a run of any size is never held whole.
///
/// Malformed lines are not yielded; [`ItemStream::finish`] reports them at
/// the end (as an error unless `skip_malformed`), together with a failed
/// items command. Only after `finish` succeeds is the input known to be complete.
pub struct ItemStream {
    kind: Kind,
    skip_malformed: bool,
    skipped: Vec<(usize, String)>,
    command: Option<RunningCommand>,
}

enum Kind {
    Single(Option<Item>),
    Listed(std::vec::IntoIter<Item>),
    Lines { reader: Box<dyn BufRead + Send>, origin: String, number: usize, done: bool },
    Files(std::vec::IntoIter<PathBuf>),
}

/// The items command while its output is read.
struct RunningCommand {
    line: String,
    child: Child,
    stderr: Option<JoinHandle<String>>,
}

impl ItemStream {
    /// Opens the source. No source means one empty item.
    pub fn open(source: Option<&ItemSource>) -> Result<ItemStream, SourceError> {
        let Some(source) = source else {
            return Ok(ItemStream::new(Kind::Single(Some(Item::new())), false));
        };
        if let Some(path) = &source.jsonl {
            let file = std::fs::File::open(path).map_err(|err| SourceError::Read { path: path.into(), source: err })?;
            return Ok(ItemStream::lines(Box::new(BufReader::new(file)), path, source.skip_malformed));
        }
        if let Some(pattern) = &source.glob {
            return Ok(ItemStream::new(Kind::Files(glob_files(pattern)?.into_iter()), false));
        }
        if let Some(command) = &source.command {
            return spawn_command(command, source.skip_malformed);
        }
        if let Some(job) = &source.from {
            return Err(SourceError::Stage { job: job.clone() });
        }
        Ok(ItemStream::new(Kind::Single(None), false))
    }

    /// Items already read (a stage's, from its upstream run's results).
    pub fn listed(items: Vec<Item>) -> ItemStream {
        ItemStream::new(Kind::Listed(items.into_iter()), false)
    }

    fn lines(reader: Box<dyn BufRead + Send>, origin: &str, skip_malformed: bool) -> ItemStream {
        ItemStream::new(Kind::Lines { reader, origin: origin.to_owned(), number: 0, done: false }, skip_malformed)
    }

    fn new(kind: Kind, skip_malformed: bool) -> ItemStream {
        ItemStream { kind, skip_malformed, skipped: Vec::new(), command: None }
    }

    /// Ends the stream: waits for the items command and checks how it
    /// exited, then refuses malformed lines unless told to skip them.
    /// Returns the skipped lines (line number and reason).
    pub fn finish(mut self) -> Result<Vec<(usize, String)>, SourceError> {
        if let Some(command) = self.command.take() {
            command.wait()?;
        }
        let skipped = std::mem::take(&mut self.skipped);
        if !skipped.is_empty() && !self.skip_malformed {
            let origin = match &self.kind {
                Kind::Lines { origin, .. } => origin.clone(),
                _ => String::new(),
            };
            return Err(SourceError::Malformed { origin, lines: skipped });
        }
        Ok(skipped)
    }

    fn next_line_item(&mut self) -> Option<Result<Item, SourceError>> {
        let Kind::Lines { reader, origin, number, done } = &mut self.kind else { return None };
        let mut line = String::new();
        while !*done {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) => *done = true,
                Ok(_) => {
                    *number += 1;
                    if line.trim().is_empty() {
                        continue;
                    }
                    match serde_json::from_str::<Value>(&line) {
                        Ok(Value::Object(object)) => return Some(Ok(object)),
                        Ok(other) => {
                            self.skipped.push((*number, format!("expected a JSON object, found {}", kind(&other))))
                        }
                        Err(err) => self.skipped.push((*number, err.to_string())),
                    }
                }
                Err(err) => {
                    *done = true;
                    return Some(Err(SourceError::Read { path: origin.as_str().into(), source: err }));
                }
            }
        }
        None
    }
}

impl Iterator for ItemStream {
    type Item = Result<Item, SourceError>;

    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.kind {
            Kind::Single(item) => item.take().map(Ok),
            Kind::Listed(items) => items.next().map(Ok),
            Kind::Files(paths) => paths.next().map(|path| file_item(&path)),
            Kind::Lines { .. } => self.next_line_item(),
        }
    }
}

impl Drop for ItemStream {
    /// A stream dropped before its end (a render error) stops its command.
    fn drop(&mut self) {
        if let Some(mut command) = self.command.take() {
            let _ = command.child.kill();
            let _ = command.child.wait();
        }
    }
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

/// The files matching `pattern`, sorted: each is one item.
fn glob_files(pattern: &str) -> Result<Vec<PathBuf>, SourceError> {
    let paths = glob::glob(pattern)
        .map_err(|err| SourceError::Pattern { pattern: pattern.to_owned(), reason: err.to_string() })?;
    let mut files: Vec<PathBuf> = paths.filter_map(Result::ok).filter(|p| p.is_file()).collect();
    files.sort();
    Ok(files)
}

fn file_item(path: &Path) -> Result<Item, SourceError> {
    let content = std::fs::read_to_string(path).map_err(|source| SourceError::Read { path: path.into(), source })?;
    let mut item = Item::new();
    item.insert("path".into(), Value::String(path.display().to_string()));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    item.insert("name".into(), Value::String(name));
    item.insert("content".into(), Value::String(content));
    Ok(item)
}

fn spawn_command(command: &str, skip_malformed: bool) -> Result<ItemStream, SourceError> {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| SourceError::Spawn { command: command.to_owned(), source })?;
    // Drain stderr on a thread so a chatty command cannot block on a full pipe.
    let mut stderr_pipe = child.stderr.take().expect("stderr is piped");
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr_pipe.read_to_string(&mut text);
        text
    });
    let stdout = child.stdout.take().expect("stdout is piped");
    let origin = format!("output of `{command}`");
    let mut stream = ItemStream::lines(Box::new(BufReader::new(stdout)), &origin, skip_malformed);
    stream.command = Some(RunningCommand { line: command.to_owned(), child, stderr: Some(stderr) });
    Ok(stream)
}

impl RunningCommand {
    /// Waits for the command; a failed command fails the whole read.
    fn wait(mut self) -> Result<(), SourceError> {
        let status = self.child.wait().map_err(|source| SourceError::Spawn { command: self.line.clone(), source })?;
        let stderr = self.stderr.take().and_then(|thread| thread.join().ok()).unwrap_or_default();
        if !status.success() {
            return Err(SourceError::Failed { command: self.line, status, stderr: stderr.trim().to_owned() });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fields_validate_allows_a_stage_are_the_fields_its_items_have() {
        let result = UpstreamResult {
            custom_id: "up-001".into(),
            item: "{\"title\": \"t\"}".into(),
            message: "{\"content\": [{\"type\": \"text\", \"text\": \"hi\"}]}".into(),
            usage: crate::outcome::Usage::default(),
        };
        for shape in [StageShape::Each, StageShape::One] {
            let items = stage_items("up-20261122T0600", std::slice::from_ref(&result), shape);
            let mut keys: Vec<&str> = items[0].keys().map(String::as_str).collect();
            let mut fields = stage_item_fields(shape).to_vec();
            keys.sort_unstable();
            fields.sort_unstable();
            assert_eq!(keys, fields, "{shape:?}");
        }
    }

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
    fn a_stream_reads_as_it_goes_and_stops_its_command_when_dropped() {
        let source = ItemSource { command: Some("printf '{\"n\":1}\\n'; exec sleep 600".into()), ..Default::default() };
        let (sender, received) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut stream = ItemStream::open(Some(&source)).unwrap();
            let first = stream.next().unwrap().unwrap();
            let pid = stream.command.as_ref().unwrap().child.id();
            drop(stream);
            sender.send((first, pid)).unwrap();
        });
        let (first, pid) = received
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("the first item arrives while the command still runs");
        assert_eq!(first["n"], 1);
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "the dropped stream killed and reaped its command");
    }

    #[test]
    fn finish_refuses_malformed_lines_after_the_good_ones_were_streamed() {
        let mut stream = ItemStream::lines(Box::new("{\"a\":1}\nnope\n{\"a\":2}\n".as_bytes()), "x.jsonl", false);
        assert_eq!(stream.by_ref().filter_map(Result::ok).count(), 2);
        let err = stream.finish().unwrap_err().to_string();
        assert!(err.starts_with("x.jsonl: 1 malformed line(s), first at line 2"), "{err}");
    }

    #[test]
    fn a_glob_gives_one_item_per_file_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b.txt"), "second").unwrap();
        std::fs::write(dir.path().join("a.txt"), "first").unwrap();
        std::fs::create_dir(dir.path().join("c.txt")).unwrap();
        let pattern = format!("{}/*.txt", dir.path().display());
        let items = read_items(Some(&ItemSource { glob: Some(pattern), ..Default::default() })).unwrap().items;
        let names: Vec<_> =
            items.iter().map(|i| (i["name"].as_str().unwrap(), i["content"].as_str().unwrap())).collect();
        assert_eq!(names, [("a.txt", "first"), ("b.txt", "second")], "files only, sorted, with their content");
        assert!(items[0]["path"].as_str().unwrap().ends_with("/a.txt"));
    }

    #[test]
    fn no_source_is_one_empty_item() {
        let items = read_items(None).unwrap();
        assert_eq!(items.items, vec![Item::new()]);
    }
}
