//! One process drives a state database at a time: it holds an exclusive
//! lock on `<state>.lock`, which the kernel releases when the process ends,
//! even by `kill -9`. Another `serve --standby` on the same state serves the
//! dashboard, the JSON API and the enqueue endpoint meanwhile, and takes the
//! lock (and the lead) within a fraction of a second of its release. A
//! process that is alive but stuck keeps the lock: the systemd watchdog ends
//! it, and then the standby takes over. The store's `leadership` row says
//! who leads.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;

/// How often a standby tries the lock.
pub const STANDBY_POLL: Duration = Duration::from_millis(250);

/// The lock file of one state database.
#[derive(Debug)]
pub struct StateLock {
    file: std::fs::File,
    path: String,
}

impl StateLock {
    /// Opens (creating) `<state>.lock`; takes nothing yet.
    pub fn open(state: &Path) -> anyhow::Result<StateLock> {
        let path = format!("{}.lock", state.display());
        if let Some(dir) = state.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open the lock file {path}"))?;
        Ok(StateLock { file, path })
    }

    /// Takes the lock if it is free (or ours already); `false` while another process holds it.
    pub fn try_take(&self) -> std::io::Result<bool> {
        match self.file.try_lock() {
            Ok(()) => Ok(true),
            Err(std::fs::TryLockError::WouldBlock) => Ok(false),
            Err(std::fs::TryLockError::Error(error)) => Err(error),
        }
    }

    /// The lock file.
    pub fn path(&self) -> &str {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_is_held_by_one_opener_at_a_time_and_freed_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("orchestrator.db");
        let first = StateLock::open(&state).unwrap();
        let second = StateLock::open(&state).unwrap();
        assert!(first.try_take().unwrap());
        assert!(first.try_take().unwrap(), "taking it again is a no-op for its holder");
        assert!(!second.try_take().unwrap(), "the other opener waits");
        drop(first);
        assert!(second.try_take().unwrap(), "released with its holder");
    }
}
