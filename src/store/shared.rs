//! The store behind a mutex, used from async code on the blocking pool.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::{Store, StoreError};

/// A cloneable handle; every call runs on tokio's blocking pool, so SQLite
/// never blocks an async worker and no lock is held across an `.await`.
#[derive(Clone, Debug)]
pub struct SharedStore {
    inner: Arc<Mutex<Store>>,
    path: PathBuf,
}

impl SharedStore {
    /// Wraps an open store.
    pub fn new(store: Store) -> SharedStore {
        let path = store.path().to_owned();
        SharedStore { inner: Arc::new(Mutex::new(store)), path }
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` with the store on the calling thread, which must be one of
    /// the blocking pool's (a `spawn_blocking` task): it waits for the lock.
    pub fn blocking_call<T>(&self, f: impl FnOnce(&mut Store) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let mut store = self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut store)
    }

    /// Runs `f` with the store on the blocking pool.
    pub async fn call<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Store) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let mut store = inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            f(&mut store)
        })
        .await
        .expect("a store call panicked")
    }
}
