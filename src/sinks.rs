//! Where results go. Each result reaches its sink once per custom_id, and a
//! failed delivery leaves nothing behind that would block the next one.
//!
//! A JSONL file is appended to in place: a failed append (a full disk) is
//! cut back to where it started, and the file's length is recorded with
//! every round of deliveries, so a later round reads only what a crash may
//! have written after that point (results already there are recognised, not
//! written again) instead of the whole file. A directory gets one file per
//! result, through a temporary file that is removed when the write fails.
//! A SQLite or PostgreSQL table is upserted by custom_id, one transaction a
//! round, so a round written again after a crash leaves one row each.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Serialize;

use crate::manifest::Sink;
use crate::outcome::Usage;
use crate::store::postgres_sink;
use crate::store::sink_table::{self, SinkRow};

/// A result as every sink receives it.
#[derive(Debug, Clone, Serialize)]
pub struct DeliveredResult {
    /// The request's id.
    pub custom_id: String,
    /// The job.
    pub job: String,
    /// The run, `<job>-<YYYYMMDDTHHMM>`.
    pub run: String,
    /// The run's scheduled instant (RFC 3339).
    pub scheduled_for: String,
    /// The item the request was rendered from, as stored (JSON).
    pub item: Box<serde_json::value::RawValue>,
    /// The model's text.
    pub text: String,
    /// Why the model stopped.
    pub stop_reason: Option<String>,
    /// Billed usage.
    pub usage: Usage,
    /// `batch` or `sync`.
    pub lane: String,
    /// Cost in US dollars (filled by cost accounting).
    pub cost_usd: Option<f64>,
    /// What the same usage costs on the synchronous API.
    pub sync_equivalent_usd: Option<f64>,
    /// When the result arrived (RFC 3339).
    pub received_at: String,
    /// When it was delivered (RFC 3339).
    pub delivered_at: String,
}

/// Why a delivery failed. Nothing is recorded as delivered when it does.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// A file operation failed.
    #[error("sink {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The SQLite sink failed.
    #[error("sqlite sink {path}: {source}")]
    Sqlite {
        /// The database.
        path: PathBuf,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// The PostgreSQL sink failed.
    #[error("postgres sink table {table}: {source}")]
    Postgres {
        /// The table.
        table: String,
        /// What failed (never the database URL).
        #[source]
        source: crate::store::postgres_sink::PostgresSinkError,
    },
    /// The sink command failed.
    #[error("sink command `{command}` failed: {reason}")]
    Command {
        /// The command.
        command: String,
        /// Exit status or spawn error, with stderr.
        reason: String,
    },
}

/// The sink kind and target, as recorded with each delivery.
pub fn describe(sink: &Sink) -> (&'static str, String) {
    if let Some(path) = &sink.jsonl {
        ("jsonl", path.clone())
    } else if let Some(dir) = &sink.dir {
        ("dir", dir.clone())
    } else if let Some(sqlite) = &sink.sqlite {
        ("sqlite", format!("{}#{}", sqlite.path, sqlite.table))
    } else if let Some(postgres) = &sink.postgres {
        ("postgres", postgres.table.clone())
    } else if let Some(command) = &sink.command {
        ("command", command.clone())
    } else {
        ("none", String::new())
    }
}

/// Where a sink stood when its last delivery was recorded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkMark {
    /// A JSONL sink's length in bytes (`None`: not known, the whole file is read).
    pub jsonl_len: Option<u64>,
}

/// Delivers `results` to `sink` (paths already rendered), which stood at
/// `mark` when its last round was recorded. On success every result is in
/// the sink exactly once; the caller then records the deliveries with the
/// mark returned.
pub fn deliver(sink: &Sink, results: &[DeliveredResult], mark: SinkMark) -> Result<SinkMark, SinkError> {
    if results.is_empty() {
        return Ok(mark);
    }
    if let Some(path) = &sink.jsonl {
        return append_jsonl(Path::new(path), results, mark.jsonl_len).map(|len| SinkMark { jsonl_len: Some(len) });
    }
    if let Some(dir) = &sink.dir {
        write_dir(Path::new(dir), results)?;
    } else if let Some(sqlite) = &sink.sqlite {
        write_sqlite(Path::new(&sqlite.path), &sqlite.table, results)?;
    } else if let Some(postgres) = &sink.postgres {
        write_postgres(&postgres.table, results)?;
    } else if let Some(command) = &sink.command {
        pipe_command(command, results)?;
    }
    Ok(mark)
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> SinkError + '_ {
    move |source| SinkError::Io { path: path.to_owned(), source }
}

/// Appends the results the file does not hold yet; returns its new length.
/// Only the part after `recorded_len` (the length when the last round was
/// recorded) can hold undelivered-but-written results, so only it is read;
/// an unknown or shrunk length (a new or rotated file) reads it all.
fn append_jsonl(path: &Path, results: &[DeliveredResult], recorded_len: Option<u64>) -> Result<u64, SinkError> {
    use std::io::{Seek, SeekFrom};
    ensure_parent(path)?;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io_err(path))?;
    let len = file.metadata().map_err(io_err(path))?.len();
    let from = recorded_len.filter(|&recorded| recorded <= len).unwrap_or(0);
    let tail = read_tail(&mut file, path, from)?;
    let start = repair_last_line(&file, path, from, &tail)?;
    let mut present = tail.custom_ids.clone();
    present.extend(unterminated_id(&tail));
    let mut buffer = Vec::new();
    if start.needs_newline {
        buffer.push(b'\n');
    }
    for result in results.iter().filter(|r| !present.contains(&r.custom_id)) {
        serde_json::to_writer(&mut buffer, result).expect("results serialize");
        buffer.push(b'\n');
    }
    if buffer.len() <= usize::from(start.needs_newline) {
        return Ok(start.end);
    }
    file.seek(SeekFrom::Start(start.end)).map_err(io_err(path))?;
    let written = file.write_all(&buffer).and_then(|()| file.sync_data());
    if let Err(error) = written {
        // A full disk must not leave half a line (or a copy) behind: cut back.
        let _ = file.set_len(start.end);
        return Err(io_err(path)(error));
    }
    Ok(start.end + buffer.len() as u64)
}

/// What the part of a JSONL file after the recorded length holds.
struct Tail {
    custom_ids: HashSet<String>,
    /// Offset (from the start of the file) just after the last newline, if any.
    last_newline_end: Option<u64>,
    /// The bytes after the last newline (a line without its end).
    unterminated: Vec<u8>,
}

fn read_tail(file: &mut std::fs::File, path: &Path, from: u64) -> Result<Tail, SinkError> {
    use std::io::{Read, Seek, SeekFrom};
    #[derive(serde::Deserialize)]
    struct Id {
        custom_id: String,
    }
    file.seek(SeekFrom::Start(from)).map_err(io_err(path))?;
    let mut reader = BufReader::new(file.take(u64::MAX));
    let (mut custom_ids, mut offset, mut last_newline_end) = (HashSet::new(), from, None);
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = reader.read_until(b'\n', &mut line).map_err(io_err(path))?;
        if read == 0 {
            return Ok(Tail { custom_ids, last_newline_end, unterminated: Vec::new() });
        }
        offset += read as u64;
        if line.last() != Some(&b'\n') {
            return Ok(Tail { custom_ids, last_newline_end, unterminated: line });
        }
        last_newline_end = Some(offset);
        if let Ok(id) = serde_json::from_slice::<Id>(&line) {
            custom_ids.insert(id.custom_id);
        }
    }
}

/// Where appending starts, and whether a newline must come first.
struct Start {
    end: u64,
    needs_newline: bool,
}

/// A last line without its newline is either the start of one of our
/// results cut short by a crash (removed: it is written again whole) or
/// someone else's last line (kept, and ended with a newline).
fn repair_last_line(file: &std::fs::File, path: &Path, from: u64, tail: &Tail) -> Result<Start, SinkError> {
    let line_start = tail.last_newline_end.unwrap_or(from);
    let end = line_start + tail.unterminated.len() as u64;
    if tail.unterminated.is_empty() {
        return Ok(Start { end, needs_newline: false });
    }
    let whole = serde_json::from_slice::<serde::de::IgnoredAny>(&tail.unterminated).is_ok();
    let ours = tail.unterminated.starts_with(b"{\"custom_id\":");
    if ours && !whole {
        file.set_len(line_start).map_err(io_err(path))?;
        return Ok(Start { end: line_start, needs_newline: false });
    }
    Ok(Start { end, needs_newline: true })
}

/// The custom_id of a whole result line that lost only its newline (it is
/// kept, and must not be written again).
fn unterminated_id(tail: &Tail) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Id {
        custom_id: String,
    }
    serde_json::from_slice::<Id>(&tail.unterminated).ok().map(|id| id.custom_id)
}

fn write_dir(dir: &Path, results: &[DeliveredResult]) -> Result<(), SinkError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    for result in results {
        let path = dir.join(format!("{}.json", result.custom_id));
        if holds(&path, &result.custom_id) {
            continue;
        }
        let temp = temp_path(&path);
        let text = serde_json::to_vec_pretty(result).expect("results serialize");
        let written = write_synced(&temp, &text).and_then(|()| std::fs::rename(&temp, &path).map_err(io_err(&path)));
        if written.is_err() {
            // A full disk must not keep the half-written copy.
            let _ = std::fs::remove_file(&temp);
        }
        written?;
    }
    // The renames are durable before the deliveries are recorded.
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))
}

/// Whether `path` already holds a whole result for `custom_id` (a file cut
/// short by a power loss does not count: it is written again).
fn holds(path: &Path, custom_id: &str) -> bool {
    #[derive(serde::Deserialize)]
    struct Id {
        custom_id: String,
    }
    let read = std::fs::read(path).ok().and_then(|bytes| serde_json::from_slice::<Id>(&bytes).ok());
    read.is_some_and(|id| id.custom_id == custom_id)
}

/// Writes `bytes` to `path` and waits until they are on the disk.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), SinkError> {
    let mut file = std::fs::File::create(path).map_err(io_err(path))?;
    file.write_all(bytes).and_then(|()| file.sync_all()).map_err(io_err(path))
}

fn write_sqlite(path: &Path, table: &str, results: &[DeliveredResult]) -> Result<(), SinkError> {
    let json = as_json(results);
    let rows = table_rows(results, &json);
    sink_table::upsert(path, table, &rows).map_err(|source| SinkError::Sqlite { path: path.to_owned(), source })
}

fn write_postgres(table: &str, results: &[DeliveredResult]) -> Result<(), SinkError> {
    let json = as_json(results);
    let rows = table_rows(results, &json);
    postgres_sink::upsert(table, &rows).map_err(|source| SinkError::Postgres { table: table.to_owned(), source })
}

/// Each result as the JSON a table sink stores.
fn as_json(results: &[DeliveredResult]) -> Vec<String> {
    results.iter().map(|r| serde_json::to_string(r).expect("results serialize")).collect()
}

/// A table sink's rows: the key, the text and the whole result (`json`, in the same order).
fn table_rows<'a>(results: &'a [DeliveredResult], json: &'a [String]) -> Vec<SinkRow<'a>> {
    results.iter().zip(json).map(|(r, j)| SinkRow { custom_id: &r.custom_id, text: &r.text, result: j }).collect()
}

/// Runs the command once with every result as a JSON line on stdin. The
/// command must treat custom_id as a key: after a crash it may see a result again.
fn pipe_command(command: &str, results: &[DeliveredResult]) -> Result<(), SinkError> {
    let failed = |reason: String| SinkError::Command { command: command.to_owned(), reason };
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(e.to_string()))?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let mut buffer = Vec::new();
    for result in results {
        serde_json::to_writer(&mut buffer, result).expect("results serialize");
        buffer.push(b'\n');
    }
    let written = stdin.write_all(&buffer);
    drop(stdin);
    let output = child.wait_with_output().map_err(|e| failed(e.to_string()))?;
    if !output.status.success() {
        return Err(failed(format!("{}: {}", output.status, String::from_utf8_lossy(&output.stderr).trim())));
    }
    written.map_err(|e| failed(e.to_string()))
}

fn ensure_parent(path: &Path) -> Result<(), SinkError> {
    match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => std::fs::create_dir_all(dir).map_err(io_err(dir)),
        None => Ok(()),
    }
}

fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::SqliteSink;

    fn result(id: &str) -> DeliveredResult {
        DeliveredResult {
            custom_id: id.to_owned(),
            job: "feed".into(),
            run: "feed-20261122T0630".into(),
            scheduled_for: "2026-11-22T06:30:00+01:00".into(),
            item: serde_json::value::to_raw_value(&serde_json::json!({ "title": id })).unwrap(),
            text: format!("answer {id}"),
            stop_reason: Some("end_turn".into()),
            usage: Usage::default(),
            lane: "batch".into(),
            cost_usd: None,
            sync_equivalent_usd: None,
            received_at: "2026-11-22T06:31:00Z".into(),
            delivered_at: "2026-11-22T06:31:01Z".into(),
        }
    }

    #[test]
    fn jsonl_delivers_each_custom_id_once_even_when_repeated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out/results.jsonl");
        let sink = Sink { jsonl: Some(path.display().to_string()), ..Sink::default() };
        // Without a recorded mark (a crash before the round was recorded) the whole file is read.
        deliver(&sink, &[result("a"), result("b")], SinkMark::default()).unwrap();
        let mark = deliver(&sink, &[result("b"), result("c")], SinkMark::default()).unwrap();
        assert_eq!(mark.jsonl_len, Some(std::fs::metadata(&path).unwrap().len()));
        deliver(&sink, &[result("a"), result("c")], SinkMark::default()).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let ids: Vec<String> = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["custom_id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert_eq!(std::fs::read_dir(path.parent().unwrap()).unwrap().count(), 1, "no temporary files left");
    }

    fn ids_in(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["custom_id"].as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn jsonl_reads_only_what_follows_the_recorded_length() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.jsonl");
        let sink = Sink { jsonl: Some(path.display().to_string()), ..Sink::default() };
        let mark = deliver(&sink, &[result("a")], SinkMark::default()).unwrap();
        // Written, then a crash before the round was recorded: the old mark stands.
        deliver(&sink, &[result("b")], mark).unwrap();
        deliver(&sink, &[result("b"), result("c")], mark).unwrap();
        assert_eq!(ids_in(&path), ["a", "b", "c"], "b is found after the mark, not written twice");
        // What lies before the mark was recorded as delivered: it is not read again.
        let end = SinkMark { jsonl_len: Some(std::fs::metadata(&path).unwrap().len()) };
        deliver(&sink, &[result("d")], end).unwrap();
        assert_eq!(ids_in(&path), ["a", "b", "c", "d"]);
    }

    #[test]
    fn jsonl_cuts_a_result_line_a_crash_left_half_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.jsonl");
        let sink = Sink { jsonl: Some(path.display().to_string()), ..Sink::default() };
        let mark = deliver(&sink, &[result("a")], SinkMark::default()).unwrap();
        let mut file = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"{\"custom_id\":\"b\",\"job\":\"fe").unwrap();
        deliver(&sink, &[result("b")], mark).unwrap();
        assert_eq!(ids_in(&path), ["a", "b"]);
        // One of our whole lines that lost only its newline is kept, not written twice.
        std::fs::write(&path, serde_json::to_string(&result("a")).unwrap()).unwrap();
        deliver(&sink, &[result("a"), result("b")], SinkMark::default()).unwrap();
        assert_eq!(ids_in(&path), ["a", "b"]);
        // Someone else's last line without a newline is kept and ended.
        std::fs::write(&path, "{\"note\":\"by hand\"}").unwrap();
        deliver(&sink, &[result("c")], SinkMark::default()).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("{\"note\":\"by hand\"}\n{\"custom_id\":\"c\""), "{text}");
    }

    #[test]
    fn dir_and_sqlite_sinks_are_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("results");
        let sink = Sink { dir: Some(out.display().to_string()), ..Sink::default() };
        deliver(&sink, &[result("a")], SinkMark::default()).unwrap();
        deliver(&sink, &[result("a"), result("b")], SinkMark::default()).unwrap();
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), 2);
        // A file a power loss cut short is written again whole.
        std::fs::write(out.join("a.json"), "{\"custom_id\": \"a\", \"te").unwrap();
        deliver(&sink, &[result("a")], SinkMark::default()).unwrap();
        assert!(holds(&out.join("a.json"), "a"));
        let db = dir.path().join("sink.db");
        let sqlite = Sink {
            sqlite: Some(SqliteSink { path: db.display().to_string(), table: "answers".into() }),
            ..Sink::default()
        };
        deliver(&sqlite, &[result("a"), result("b")], SinkMark::default()).unwrap();
        deliver(&sqlite, &[result("b")], SinkMark::default()).unwrap();
        let conn = rusqlite::Connection::open(&db).unwrap();
        let rows: i64 = conn.query_row("SELECT COUNT(*) FROM answers", [], |r| r.get(0)).unwrap();
        assert_eq!(rows, 2);
    }

    #[test]
    fn a_failing_command_is_an_error() {
        let sink = Sink { command: Some("cat > /dev/null; exit 2".into()), ..Sink::default() };
        assert!(
            deliver(&sink, &[result("a")], SinkMark::default()).unwrap_err().to_string().contains("exit status: 2")
        );
        let ok = Sink { command: Some("wc -l > /dev/null".into()), ..Sink::default() };
        deliver(&ok, &[result("a")], SinkMark::default()).unwrap();
    }
}
