//! The state database and the sinks of a project, read back.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rusqlite::Connection;
use serde_json::Value;

/// The project's state database (`state/orchestrator.db`).
pub fn database(dir: &Path) -> PathBuf {
    dir.join("state/orchestrator.db")
}

/// The first column of the first row of `sql`; -1 while the database cannot
/// be read (a daemon still creating it).
pub fn count(dir: &Path, sql: &str) -> i64 {
    Connection::open(database(dir)).and_then(|db| db.query_row(sql, [], |row| row.get(0))).unwrap_or(-1)
}

/// The first column of every row of `sql`, as text.
pub fn ids(dir: &Path, sql: &str) -> Vec<String> {
    let db = Connection::open(database(dir)).unwrap();
    let mut statement = db.prepare(sql).unwrap();
    statement.query_map([], |row| row.get(0)).unwrap().map(Result::unwrap).collect()
}

/// custom_id → how many times the JSON Lines sink `file` holds it.
pub fn delivered(file: &Path) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for line in std::fs::read_to_string(file).unwrap_or_default().lines() {
        let value: Value = serde_json::from_str(line).unwrap();
        *seen.entry(value["custom_id"].as_str().unwrap().to_owned()).or_insert(0) += 1;
    }
    seen
}
