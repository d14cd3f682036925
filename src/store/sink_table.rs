//! The SQLite sink: results upserted into a user's table, keyed by custom_id.

use std::path::Path;

use rusqlite::{Connection, params};

/// One row for the sink table.
#[derive(Debug, Clone)]
pub struct SinkRow<'a> {
    /// Primary key.
    pub custom_id: &'a str,
    /// The model's text.
    pub text: &'a str,
    /// The whole delivered result as JSON.
    pub result: &'a str,
}

/// Upserts `rows` into `table` of the database at `path` in one transaction,
/// creating the table if needed. Upserting twice leaves one row per custom_id.
pub fn upsert(path: &Path, table: &str, rows: &[SinkRow<'_>]) -> rusqlite::Result<()> {
    // The table name was checked by `validate` (E064); quote it anyway.
    let table = format!("\"{}\"", table.replace('"', "\"\""));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::create_dir_all(dir);
    }
    let mut conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    let tx = conn.transaction()?;
    tx.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS {table} (custom_id TEXT PRIMARY KEY, text TEXT NOT NULL, result TEXT NOT NULL)"
    ))?;
    {
        let mut upsert = tx.prepare(&format!(
            "INSERT INTO {table} (custom_id, text, result) VALUES (?1, ?2, ?3)
             ON CONFLICT (custom_id) DO UPDATE SET text = excluded.text, result = excluded.result"
        ))?;
        for row in rows {
            upsert.execute(params![row.custom_id, row.text, row.result])?;
        }
    }
    tx.commit()
}
