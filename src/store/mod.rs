//! The state: the source of truth for runs, requests, batches, results,
//! attempts, events and deliveries, in a SQLite file or a PostgreSQL
//! database (`--state postgres://…`). The only module that writes SQL,
//! once for both engines, through [`sql`].
//!
//! Every step that has a side effect at a provider is preceded by a commit
//! of the intent and followed by a commit of what came back, so a crash at
//! any point can be repaired on the next start. Both clients are blocking:
//! async callers go through `tokio::task::spawn_blocking` ([`SharedStore`]).

mod alerts;
mod attempts;
mod batches;
mod costs;
mod dashboard;
mod events;
pub mod leadership;
pub mod postgres_sink;
mod queue;
mod report;
mod requests;
mod results;
mod runs;
mod schedules;
mod schema;
mod schema_postgres;
pub mod shared;
pub mod sink_table;
pub mod sql;
mod stages;
mod sync;

pub use alerts::FailedCreate;
pub use attempts::NewAttempt;
pub use batches::{BatchPart, BatchRow, BatchState, PayloadSize};
pub use costs::{AnswerPrice, AnswerPricer, AverageUsage, ResultCost, UnpricedResult};
pub use dashboard::{
    BatchListing, CarriedRun, ErrorGroup, Labelled, MetricFigures, RunFilter, RunSummary, TokenEfficiency,
};
pub use events::EventRow;
pub use leadership::Leader;
pub use queue::{NewQueueItem, QueueItemResult, QueueItemView, QueueSummary, QueueTake};
pub use report::{GroupBy, KpiFigures, Scope, SpendRow};
pub use requests::{NewRequest, RequestState, TokenAverages, Waiting};
pub use results::{DeliverableResult, IncomingResult, ResultCounts};
pub use runs::{NewRun, RunRow, RunState};
pub use schedules::ScheduleRow;
pub use shared::SharedStore;
pub use stages::{LinkedRun, UpstreamResult};
pub use sync::{SyncSettle, SyncWork};

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use rusqlite::{OpenFlags, OptionalExtension};

use sql::Connection;

/// Default database file, relative to the working directory.
pub const DEFAULT_PATH: &str = "state/orchestrator.db";

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed.
    #[error("state database {path}: {source}")]
    Database {
        /// The database file (or URL, without its password).
        path: PathBuf,
        /// The engine's error.
        #[source]
        source: sql::Error,
    },
    /// The database or its directory could not be created.
    #[error("cannot create state database {path}")]
    Create {
        /// The database file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The database was written by a newer orchestrator.
    #[error(
        "state database {path} has schema version {found}, newer than this orchestrator understands ({supported}); \
         upgrade orchestrator, or point --state at another file. The database was not modified."
    )]
    TooNew {
        /// The database file.
        path: PathBuf,
        /// Version found in the file.
        found: usize,
        /// Newest version this build knows.
        supported: usize,
    },
    /// The PostgreSQL server could not be reached or refused the login.
    #[error("state database {path}: cannot connect: {reason}")]
    Connect {
        /// The URL, without its password.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The database is at an older schema version than this build's, and
    /// this process may not migrate it (another process drives it).
    #[error(
        "state database {path} has schema version {found} and this build reads version {supported}; another \
         process (of an older orchestrator) drives it, and only the process holding its lock may migrate it: use \
         that version's orchestrator, or stop that process first"
    )]
    OtherVersion {
        /// The database file.
        path: PathBuf,
        /// Version found in the file.
        found: usize,
        /// The version this build reads.
        supported: usize,
    },
    /// The leader could not renew its lease before it ran out: another
    /// process may lead by now.
    #[error(
        "state database {path}: the lease of epoch {epoch} ran out before it could be renewed; stepping down \
         so that nothing is done twice"
    )]
    LeaseExpired {
        /// The database (its URL without the password).
        path: PathBuf,
        /// The epoch this process led with.
        epoch: i64,
    },
    /// Another process recorded itself as the leader of this database.
    #[error(
        "state database {path}: another process took over as leader (epoch {epoch} is no longer ours); \
         stepping down so that nothing is done twice"
    )]
    Superseded {
        /// The database file.
        path: PathBuf,
        /// The epoch this process led with.
        epoch: i64,
    },
}

/// Settings of every connection. The page size only takes on a new, empty
/// database (before WAL is on): 8 KiB pages hold five 1.5 KB results where
/// 4 KiB pages held two and wasted a quarter of the file. A checkpoint every
/// 4,000 pages (32 MiB of log) instead of 1,000 copies an index page that
/// several transactions rewrote once instead of once per transaction.
const PRAGMAS: &str = "PRAGMA page_size = 8192; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;
                       PRAGMA foreign_keys = ON; PRAGMA wal_autocheckpoint = 4000;";

/// An open state database.
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (creating if needed, mode 0600) and migrates the database at `path`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        if let Some(url) = database_url(path) {
            return sql::off_the_runtime(|| Store::open_postgres(path, url));
        }
        create_private(path)?;
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = rusqlite::Connection::open_with_flags(path, flags).map_err(|source| sqlite(path, source))?;
        // Several connections write (the engine's, the ingest writer's): a
        // deferred transaction that reads and then writes would fail at once
        // with SQLITE_BUSY_SNAPSHOT if another one committed in between, and
        // the busy timeout does not cover that. Every transaction of
        // `sql::Connection` is an immediate one: it takes the write lock
        // first and waits for it instead.
        let mut store = Store { conn: Connection::sqlite(conn), path: path.to_owned() };
        store.configure()?;
        store.migrate()?;
        Ok(store)
    }

    /// The database file, or the PostgreSQL URL (with its password: it
    /// opens further connections; errors show [`shown`] of it).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Which engine holds the state.
    pub fn dialect(&self) -> sql::Dialect {
        self.conn.dialect()
    }

    /// Connects to the PostgreSQL database at `url` and creates or
    /// migrates its schema.
    fn open_postgres(path: &Path, url: &str) -> Result<Store, StoreError> {
        let mut store = Store { conn: connect_postgres(path, url)?, path: path.to_owned() };
        store.migrate_postgres()?;
        Ok(store)
    }

    /// Creates the schema on an empty PostgreSQL database, or applies the
    /// migrations it lacks, in one transaction under the writers' lock (two
    /// processes starting at once create it once).
    fn migrate_postgres(&mut self) -> Result<(), StoreError> {
        let path = self.path.clone();
        let e = |source| database(&path, source);
        let tx = self.conn.transaction().map_err(e)?;
        let found = postgres_version(&tx).map_err(e)?;
        let supported = Store::supported_version();
        if found > supported {
            return Err(StoreError::TooNew { path: shown(&path), found, supported });
        }
        if found == 0 {
            tx.execute_batch(schema_postgres::BASELINE).map_err(e)?;
            tx.execute(
                "INSERT INTO orchestrator_schema (id, version) VALUES (1, ?1)",
                [schema_postgres::BASELINE_VERSION],
            )
            .map_err(e)?;
        }
        let from = found.max(schema_postgres::BASELINE_VERSION);
        for (step, migration) in
            schema_postgres::MIGRATIONS.iter().enumerate().skip(from - schema_postgres::BASELINE_VERSION)
        {
            tx.execute_batch(migration).map_err(e)?;
            let version = schema_postgres::BASELINE_VERSION + step + 1;
            tx.execute("UPDATE orchestrator_schema SET version = ?1", [version]).map_err(e)?;
        }
        tx.commit().map_err(e)
    }

    /// Opens the database at `path` for reading only (the dashboard, the
    /// alert detector): SQLite refuses any write through this connection.
    /// It must be at this build's schema version already: a reader never
    /// migrates (another process may be driving it).
    pub fn open_read_only(path: &Path) -> Result<Store, StoreError> {
        sql::off_the_runtime(|| Store::open_read_only_here(path))
    }

    fn open_read_only_here(path: &Path) -> Result<Store, StoreError> {
        let store = Store::open_current(path)?;
        let read_only = match store.conn.dialect() {
            sql::Dialect::Sqlite => "PRAGMA query_only = 1;",
            sql::Dialect::Postgres => "SET default_transaction_read_only = on;",
        };
        store.conn.set_session(read_only).map_err(|e| store.err(e))?;
        Ok(store)
    }

    fn configure(&self) -> Result<(), StoreError> {
        let conn = self.sqlite_conn();
        conn.busy_timeout(Duration::from_secs(10)).map_err(|e| sqlite(&self.path, e))?;
        conn.execute_batch(PRAGMAS).map_err(|e| sqlite(&self.path, e))
    }

    /// The SQLite connection underneath (PRAGMAs, migrations).
    fn sqlite_conn(&self) -> &rusqlite::Connection {
        self.conn.as_sqlite().expect("a SQLite store")
    }

    /// Migrates the open database to this build's schema if it is older
    /// (a process that has just taken the state lock, which another
    /// version's process may have held); refuses a newer one.
    pub fn migrate_to_current(&mut self) -> Result<(), StoreError> {
        self.migrate()
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        if self.conn.dialect() == sql::Dialect::Postgres {
            return self.migrate_postgres();
        }
        let found = self.schema_version()?;
        let supported = schema::MIGRATIONS.len();
        if found > supported {
            return Err(StoreError::TooNew { path: self.path.clone(), found, supported });
        }
        if found == supported {
            return Ok(());
        }
        // A migration may rebuild a table others refer to; the pragma is a
        // no-op inside a transaction, so it is switched here and every
        // migration checks the references before it commits.
        self.conn.execute_batch("PRAGMA foreign_keys = OFF;").map_err(|e| self.err(e))?;
        let migrated = self.apply_migrations(found);
        self.conn.execute_batch("PRAGMA foreign_keys = ON;").map_err(|e| self.err(e))?;
        migrated
    }

    fn apply_migrations(&mut self, found: usize) -> Result<(), StoreError> {
        for (version, sql) in schema::MIGRATIONS.iter().enumerate().skip(found) {
            let tx = self.sqlite_conn().unchecked_transaction().map_err(|e| sqlite(&self.path, e))?;
            tx.execute_batch(sql).map_err(|e| sqlite(&self.path, e))?;
            let broken: Option<String> = tx
                .query_row("SELECT \"table\" FROM pragma_foreign_key_check LIMIT 1", [], |row| row.get(0))
                .optional()
                .map_err(|e| sqlite(&self.path, e))?;
            if let Some(table) = broken {
                let error = rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY),
                    Some(format!("migration to version {} broke a reference from table {table}", version + 1)),
                );
                return Err(sqlite(&self.path, error));
            }
            tx.pragma_update(None, "user_version", version + 1).map_err(|e| sqlite(&self.path, e))?;
            tx.commit().map_err(|e| sqlite(&self.path, e))?;
        }
        Ok(())
    }

    /// The schema version of the database at `path` (0 when there is none
    /// yet), read without creating, migrating or writing anything.
    pub fn stored_version(path: &Path) -> Result<usize, StoreError> {
        if let Some(url) = database_url(path) {
            return sql::off_the_runtime(|| {
                postgres_version(&connect_postgres(path, url)?).map_err(|e| database(path, e))
            });
        }
        if !path.exists() {
            return Ok(0);
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = rusqlite::Connection::open_with_flags(path, flags).map_err(|source| sqlite(path, source))?;
        conn.query_row("PRAGMA user_version", [], |row| row.get(0)).map_err(|source| sqlite(path, source))
    }

    /// Opens the database at `path`, which must be at this build's schema
    /// version already: nothing is migrated (another process may drive it).
    pub fn open_current(path: &Path) -> Result<Store, StoreError> {
        let (found, supported) = (Store::stored_version(path)?, Store::supported_version());
        if found != supported {
            return Err(match found > supported {
                true => StoreError::TooNew { path: shown(path), found, supported },
                false => StoreError::OtherVersion { path: shown(path), found, supported },
            });
        }
        Store::open(path)
    }

    /// The newest schema version this build knows (and migrates to).
    pub fn supported_version() -> usize {
        schema::MIGRATIONS.len()
    }

    /// The schema version of the open database.
    pub fn schema_version(&self) -> Result<usize, StoreError> {
        if self.conn.dialect() == sql::Dialect::Postgres {
            return postgres_version(&self.conn).map_err(|e| self.err(e));
        }
        self.sqlite_conn().query_row("PRAGMA user_version", [], |row| row.get(0)).map_err(|e| sqlite(&self.path, e))
    }

    fn err(&self, source: sql::Error) -> StoreError {
        database(&self.path, source)
    }
}

fn database(path: &Path, source: sql::Error) -> StoreError {
    match source {
        // A fenced write: this process no longer leads.
        sql::Error::Fenced { ours, .. } => StoreError::Superseded { path: shown(path), epoch: ours },
        source => StoreError::Database { path: shown(path), source },
    }
}

/// A connection to the PostgreSQL state at `url` (`path` as given).
fn connect_postgres(path: &Path, url: &str) -> Result<Connection, StoreError> {
    Connection::postgres(url, connect_state).map_err(|reason| StoreError::Connect { path: shown(path), reason })
}

/// A session for the state: one that stays idle inside a transaction
/// (its process stopped, or paused) is ended by the server after 10 s, so
/// it cannot hold the writers' lock, and with it every other process, for
/// longer; no statement runs for more than 5 minutes.
fn connect_state(url: &str) -> Result<postgres::Client, String> {
    let mut client = postgres_sink::connect(url).map_err(|e| e.to_string())?;
    client
        .batch_execute(
            "SET idle_in_transaction_session_timeout = '10s'; SET statement_timeout = '5min'; SET TIME ZONE 'UTC';",
        )
        .map_err(|e| sql::Error::from(e).to_string())?;
    Ok(client)
}

/// The schema version a PostgreSQL database is at (0: no schema yet).
fn postgres_version(conn: &Connection) -> sql::Result<usize> {
    let exists: bool = conn.query_row("SELECT to_regclass('orchestrator_schema') IS NOT NULL", [], |row| row.get(0))?;
    match exists {
        true => conn.query_row("SELECT version FROM orchestrator_schema", [], |row| row.get(0)),
        false => Ok(0),
    }
}

/// The URL when `path` names a PostgreSQL database.
pub fn database_url(path: &Path) -> Option<&str> {
    path.to_str().filter(|text| ["postgres://", "postgresql://"].iter().any(|scheme| text.starts_with(scheme)))
}

/// Whether `--state` is the word `postgres`: the database at
/// `ORCHESTRATOR_DATABASE_URL` (or its credential).
pub fn names_the_database_url(path: &Path) -> bool {
    path.to_str().is_some_and(|text| text.eq_ignore_ascii_case("postgres") || text.eq_ignore_ascii_case("postgresql"))
}

/// Whether there is state to read at `path`: a file that exists, or a
/// database URL (connecting tells the rest).
pub fn state_exists(path: &Path) -> bool {
    database_url(path).is_some() || path.exists()
}

/// `path` as errors and logs show it: a URL loses its password.
pub fn shown(path: &Path) -> PathBuf {
    let Some(url) = database_url(path) else { return path.to_owned() };
    let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
    match rest.split_once('@') {
        Some((user, host)) => {
            let user = user.split(':').next().unwrap_or_default();
            PathBuf::from(format!("{scheme}://{user}@{host}"))
        }
        None => path.to_owned(),
    }
}

fn sqlite(path: &Path, source: rusqlite::Error) -> StoreError {
    database(path, sql::Error::Sqlite(source))
}

/// Creates the file with mode 0600 before SQLite does, so it is never
/// readable by others, not even for a moment.
fn create_private(path: &Path) -> Result<(), StoreError> {
    let create_err = |source| StoreError::Create { path: path.to_owned(), source };
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(create_err)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path).map(drop).map_err(create_err)
}

/// Milliseconds since the epoch, as stored.
pub(crate) fn to_millis(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis()
}

/// The instant a stored millisecond value stands for.
pub(crate) fn from_millis(millis: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(millis).single().unwrap_or(DateTime::<Utc>::MIN_UTC)
}

#[cfg(test)]
pub(crate) mod test_postgres;
#[cfg(test)]
mod tests;
