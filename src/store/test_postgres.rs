//! A fresh PostgreSQL database per test, on the server whose URL is in
//! `ORCHESTRATOR_TEST_DATABASE_URL` (`bash .ci/postgres start` prints one):
//! the store's behaviour suite runs on both engines.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::Store;

/// The variable holding the test server's URL.
pub(crate) const URL_ENV: &str = "ORCHESTRATOR_TEST_DATABASE_URL";

/// A database created for one test, dropped (with its connections) after it.
pub(crate) struct TestDatabase {
    admin: String,
    name: String,
    url: PathBuf,
}

impl TestDatabase {
    /// Creates one; `None` (and a note) when no server is configured. With
    /// `ORCHESTRATOR_REQUIRE_ALL_TESTS=1` (`.ci/run` sets it) a missing
    /// server fails the test instead: the suite must run on both engines.
    pub(crate) fn create() -> Option<TestDatabase> {
        let Some(admin) = std::env::var(URL_ENV).ok().filter(|url| !url.is_empty()) else {
            let required = std::env::var("ORCHESTRATOR_REQUIRE_ALL_TESTS").is_ok_and(|v| v == "1");
            assert!(!required, "{URL_ENV} is not set and every test is required: the PostgreSQL suite did not run");
            eprintln!("skipped: no PostgreSQL server (run `bash .ci/postgres start` and set {URL_ENV})");
            return None;
        };
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!("store_test_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let mut client = super::postgres_sink::connect(&admin).expect("connect to the test server");
        client.batch_execute(&format!("CREATE DATABASE {name}")).expect("create a test database");
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(base, _)| base);
        let url = PathBuf::from(format!("{base}/{name}"));
        Some(TestDatabase { admin, name, url })
    }

    /// Its URL, as `--state` takes it.
    pub(crate) fn url(&self) -> &Path {
        &self.url
    }

    /// A fresh database and the store opened on it.
    pub(crate) fn with_store() -> Option<(TestDatabase, Store)> {
        let database = TestDatabase::create()?;
        let store = Store::open(database.url()).expect("open the store on PostgreSQL");
        Some((database, store))
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Ok(mut client) = super::postgres_sink::connect(&self.admin) {
            let _ = client.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
        }
    }
}
