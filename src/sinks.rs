//! Where results go. Each result reaches its sink once per custom_id: files
//! are written through a temporary file and a rename, and a result already
//! present (a crash between writing and recording) is recognised, not written again.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Serialize;

use crate::manifest::Sink;
use crate::outcome::Usage;
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
    /// The item the request was rendered from.
    pub item: serde_json::Value,
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
    } else if let Some(command) = &sink.command {
        ("command", command.clone())
    } else {
        ("none", String::new())
    }
}

/// Delivers `results` to `sink` (paths already rendered). On success every
/// result is in the sink exactly once; the caller then records the deliveries.
pub fn deliver(sink: &Sink, results: &[DeliveredResult]) -> Result<(), SinkError> {
    if results.is_empty() {
        return Ok(());
    }
    if let Some(path) = &sink.jsonl {
        return append_jsonl(Path::new(path), results);
    }
    if let Some(dir) = &sink.dir {
        return write_dir(Path::new(dir), results);
    }
    if let Some(sqlite) = &sink.sqlite {
        return write_sqlite(Path::new(&sqlite.path), &sqlite.table, results);
    }
    if let Some(command) = &sink.command {
        return pipe_command(command, results);
    }
    Ok(())
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> SinkError + '_ {
    move |source| SinkError::Io { path: path.to_owned(), source }
}

/// Appends to a copy of the file and renames it over the original, skipping
/// custom_ids the file already holds.
fn append_jsonl(path: &Path, results: &[DeliveredResult]) -> Result<(), SinkError> {
    ensure_parent(path)?;
    let present = existing_custom_ids(path)?;
    let fresh: Vec<_> = results.iter().filter(|r| !present.contains(&r.custom_id)).collect();
    if fresh.is_empty() {
        return Ok(());
    }
    let temp = temp_path(path);
    if path.exists() {
        std::fs::copy(path, &temp).map_err(io_err(path))?;
    }
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&temp).map_err(io_err(&temp))?;
    let mut buffer = Vec::new();
    for result in fresh {
        serde_json::to_writer(&mut buffer, result).expect("results serialize");
        buffer.push(b'\n');
    }
    file.write_all(&buffer).map_err(io_err(&temp))?;
    file.sync_all().map_err(io_err(&temp))?;
    std::fs::rename(&temp, path).map_err(io_err(path))
}

fn existing_custom_ids(path: &Path) -> Result<HashSet<String>, SinkError> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(HashSet::new()),
        Err(err) => return Err(io_err(path)(err)),
    };
    #[derive(serde::Deserialize)]
    struct Id {
        custom_id: String,
    }
    let mut ids = HashSet::new();
    for line in BufReader::new(file).lines() {
        if let Ok(id) = serde_json::from_str::<Id>(&line.map_err(io_err(path))?) {
            ids.insert(id.custom_id);
        }
    }
    Ok(ids)
}

fn write_dir(dir: &Path, results: &[DeliveredResult]) -> Result<(), SinkError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    for result in results {
        let path = dir.join(format!("{}.json", result.custom_id));
        if path.exists() {
            continue;
        }
        let temp = temp_path(&path);
        let text = serde_json::to_vec_pretty(result).expect("results serialize");
        std::fs::write(&temp, text).map_err(io_err(&temp))?;
        std::fs::rename(&temp, &path).map_err(io_err(&path))?;
    }
    Ok(())
}

fn write_sqlite(path: &Path, table: &str, results: &[DeliveredResult]) -> Result<(), SinkError> {
    let json: Vec<String> = results.iter().map(|r| serde_json::to_string(r).expect("results serialize")).collect();
    let rows: Vec<SinkRow<'_>> =
        results.iter().zip(&json).map(|(r, j)| SinkRow { custom_id: &r.custom_id, text: &r.text, result: j }).collect();
    sink_table::upsert(path, table, &rows).map_err(|source| SinkError::Sqlite { path: path.to_owned(), source })
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
            item: serde_json::json!({ "title": id }),
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
        deliver(&sink, &[result("a"), result("b")]).unwrap();
        deliver(&sink, &[result("b"), result("c")]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let ids: Vec<String> = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["custom_id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert_eq!(std::fs::read_dir(path.parent().unwrap()).unwrap().count(), 1, "no temporary files left");
    }

    #[test]
    fn dir_and_sqlite_sinks_are_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("results");
        let sink = Sink { dir: Some(out.display().to_string()), ..Sink::default() };
        deliver(&sink, &[result("a")]).unwrap();
        deliver(&sink, &[result("a"), result("b")]).unwrap();
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), 2);
        let db = dir.path().join("sink.db");
        let sqlite = Sink {
            sqlite: Some(SqliteSink { path: db.display().to_string(), table: "answers".into() }),
            ..Sink::default()
        };
        deliver(&sqlite, &[result("a"), result("b")]).unwrap();
        deliver(&sqlite, &[result("b")]).unwrap();
        let conn = rusqlite::Connection::open(&db).unwrap();
        let rows: i64 = conn.query_row("SELECT COUNT(*) FROM answers", [], |r| r.get(0)).unwrap();
        assert_eq!(rows, 2);
    }

    #[test]
    fn a_failing_command_is_an_error() {
        let sink = Sink { command: Some("cat > /dev/null; exit 2".into()), ..Sink::default() };
        assert!(deliver(&sink, &[result("a")]).unwrap_err().to_string().contains("exit status: 2"));
        let ok = Sink { command: Some("wc -l > /dev/null".into()), ..Sink::default() };
        deliver(&ok, &[result("a")]).unwrap();
    }
}
