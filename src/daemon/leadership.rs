//! One process drives a state database at a time: it holds an exclusive
//! lock on `<state>.lock`, which the kernel releases when the process ends,
//! even by `kill -9`. Another `serve --standby` on the same state serves the
//! dashboard, the JSON API and the enqueue endpoint meanwhile, and takes the
//! lock (and the lead) within a fraction of a second of its release. A
//! process that is alive but stuck keeps the lock: the systemd watchdog ends
//! it, and then the standby takes over. The store's `leadership` row says
//! who leads.
//!
//! On PostgreSQL, where the processes may be on several machines, there is
//! no lock file: the row is a lease ([`Lead::claim`]), renewed every
//! [`LEASE_RENEW_EVERY`] and taken over by a follower once it has not been
//! renewed for [`LEASE`]; every write of the leader is fenced by its epoch
//! (`store::sql`).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;

use crate::store::{SharedStore, StoreError};

/// How often a standby tries the lock.
pub const STANDBY_POLL: Duration = Duration::from_millis(250);

/// How long a standby may fail to try the lock before it stops feeding the
/// watchdog (and the service manager restarts it).
pub const STANDBY_GIVE_UP: Duration = Duration::from_secs(60);

/// The lock file of one state database.
#[derive(Debug)]
pub struct StateLock {
    /// The open lock file; replaced when the file at the path is another one.
    file: Mutex<std::fs::File>,
    path: String,
    held: AtomicBool,
}

impl StateLock {
    /// Opens (creating) `<state>.lock`; takes nothing yet.
    pub fn open(state: &Path) -> anyhow::Result<StateLock> {
        if crate::store::database_url(state).is_some() {
            anyhow::bail!("the state lock is a file beside a SQLite state; PostgreSQL state is led through its lease");
        }
        let path = format!("{}.lock", state.display());
        if let Some(dir) = state.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let file = open_lock_file(&path).with_context(|| format!("cannot open the lock file {path}"))?;
        Ok(StateLock { file: Mutex::new(file), path, held: AtomicBool::new(false) })
    }

    /// Takes the lock if it is free (or ours already); `false` while another
    /// process holds it. A waiter whose file was deleted or replaced opens
    /// the one at the path now, which is the one a new process would lock.
    pub fn try_take(&self) -> std::io::Result<bool> {
        if self.held.load(Ordering::Relaxed) {
            return Ok(true);
        }
        let mut file = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        if !same_file(&file, &self.path) {
            *file = open_lock_file(&self.path)?;
        }
        match file.try_lock() {
            Ok(()) => {
                self.held.store(true, Ordering::Relaxed);
                Ok(true)
            }
            Err(std::fs::TryLockError::WouldBlock) => Ok(false),
            Err(std::fs::TryLockError::Error(error)) => Err(error),
        }
    }

    /// Whether the lock is held and the path still names the file it is
    /// held on: a deleted or replaced lock file would let another process
    /// take a lock of its own.
    pub fn still_held(&self) -> bool {
        self.held.load(Ordering::Relaxed)
            && same_file(&self.file.lock().unwrap_or_else(PoisonError::into_inner), &self.path)
    }

    /// The lock file.
    pub fn path(&self) -> &str {
        &self.path
    }
}

/// How often a leader renews its row, beside its work.
pub const RENEW_EVERY: Duration = Duration::from_secs(5);

/// On PostgreSQL: how long a lead lasts without a renewal. A follower
/// takes over this long after the leader's last renewal (a crash, a kill,
/// a cut network, a pause), plus up to [`LEASE_POLL`].
pub const LEASE: Duration = Duration::from_secs(10);

/// On PostgreSQL: how often the leader renews its lease (a few renewals
/// may fail in a row before it runs out).
pub const LEASE_RENEW_EVERY: Duration = Duration::from_secs(2);

/// On PostgreSQL: how often a follower looks whether the lease ran out.
pub const LEASE_POLL: Duration = Duration::from_secs(1);

/// This process's lead, as `serve` and `run` hold it: taken when the
/// state lock is, renewed as work goes on, released on a clean stop.
#[derive(Debug)]
pub struct Lead {
    epoch: i64,
    lock: Option<Arc<StateLock>>,
    every: Duration,
    /// PostgreSQL: the lease, which ends the lead when it cannot be renewed in time.
    lease: Option<Duration>,
}

impl Lead {
    /// Records this process as the leader (the epoch goes up by one); it
    /// holds `lock` (the daemon's; `None` where the caller holds it itself).
    pub async fn take(store: &SharedStore, lock: Option<Arc<StateLock>>, every: Duration) -> Result<Lead, StoreError> {
        let (pid, host) = (std::process::id(), crate::store::leadership::host_name());
        let leader = store.call(move |s| s.take_leadership(pid, &host, Utc::now())).await?;
        Ok(Lead { epoch: leader.epoch, lock, every, lease: None })
    }

    /// On PostgreSQL: takes the lease if it is free or ran out (`None`
    /// while another process holds it); renewed every `every`.
    pub async fn claim(store: &SharedStore, every: Duration, lease: Duration) -> Result<Option<Lead>, StoreError> {
        let (pid, host) = (std::process::id(), crate::store::leadership::host_name());
        let leader = store.call(move |s| s.claim_lease(pid, &host, s.database_now()?, lease)).await?;
        Ok(leader.map(|leader| Lead { epoch: leader.epoch, lock: None, every, lease: Some(lease) }))
    }

    /// The epoch of this lead.
    pub fn epoch(&self) -> i64 {
        self.epoch
    }

    /// Renews the row. An error when another process took over or the lock
    /// file is no longer the one locked (either means the lock was
    /// bypassed: a deleted lock file, a state on a network file system). A
    /// store that fails is logged, not fatal: the lock, not the row,
    /// decides who leads.
    async fn renew(&self, store: &SharedStore) -> Result<(), StoreError> {
        let epoch = self.epoch;
        let superseded =
            async || Ok::<_, StoreError>(StoreError::Superseded { path: crate::store::shown(store.path()), epoch });
        if self.lock.as_ref().is_some_and(|lock| !lock.still_held()) {
            tracing::error!(epoch, "the state lock file was deleted or replaced: stepping down");
            return Err(superseded().await?);
        }
        // A lease's times are all the database's clock's (a file's, this machine's).
        match store.call(move |s| s.renew_leadership(epoch, s.database_now()?)).await {
            Ok(true) => Ok(()),
            Ok(false) | Err(StoreError::Superseded { .. }) => {
                tracing::error!(epoch, "another process took over as leader: stepping down");
                Err(superseded().await?)
            }
            Err(error) if self.lease.is_some() => Err(error),
            Err(error) => {
                tracing::error!(%error, "could not renew the leadership row; trying again at the next step");
                Ok(())
            }
        }
    }

    /// Renews the row every `every` (real time) for as long as it is
    /// polled, beside the work rather than between its steps, so a long
    /// step (a large ingest, a slow download) never looks like a dead
    /// leader. Returns only when the lead was lost.
    /// On PostgreSQL a renewal that fails is tried again at the next turn
    /// until the lease would have run out since the last one that worked:
    /// then another process may lead, and this one steps down.
    pub async fn renew_until_lost(&self, store: &SharedStore) -> StoreError {
        let mut renewed = std::time::Instant::now();
        loop {
            tokio::time::sleep(self.every.max(Duration::from_millis(100))).await;
            match self.renew(store).await {
                Ok(()) => renewed = std::time::Instant::now(),
                Err(error @ StoreError::Superseded { .. }) => return error,
                Err(error) => {
                    let Some(lease) = self.lease else { return error };
                    tracing::error!(%error, epoch = self.epoch, "could not renew the lease; trying again");
                    // Stop before the lease runs out by the database's clock, with a renewal's time to spare.
                    if renewed.elapsed() + self.every >= lease {
                        tracing::error!(
                            epoch = self.epoch,
                            "the lease ran out before it could be renewed: stepping down"
                        );
                        let path = store.path().to_owned();
                        return StoreError::LeaseExpired { path: crate::store::shown(&path), epoch: self.epoch };
                    }
                }
            }
        }
    }

    /// Marks the lead as ended cleanly (so `status` does not take the
    /// leader for stuck); best effort.
    pub async fn release(&self, store: &SharedStore) {
        let epoch = self.epoch;
        if let Err(error) = store.call(move |s| s.release_leadership(epoch, s.database_now()?)).await {
            tracing::warn!(%error, "could not mark the leadership as ended");
        }
    }
}

/// How a standby's wait before it opens the state ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waited {
    /// The lock is ours: open (and migrate) the state and lead.
    Lead,
    /// The leader brought the schema to this build's version: open the
    /// state as a standby of the same version.
    SameVersion,
    /// SIGTERM or SIGINT came first.
    Stopped,
}

/// For a standby of a newer build than the state's schema: waits until
/// the lock is ours (the leader of the older build has stopped), or until
/// the schema is this build's (a leader of the same build that had not yet
/// created or migrated the state when this one started), telling the
/// service manager it is up meanwhile. Nothing is served until then.
/// SIGHUP is ignored here (there is nothing to reload yet); SIGTERM and
/// SIGINT end the wait.
pub async fn wait_to_migrate(lock: &StateLock, state: &Path) -> anyhow::Result<Waited> {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut int, mut hup) =
        (signal(SignalKind::terminate())?, signal(SignalKind::interrupt())?, signal(SignalKind::hangup())?);
    let supported = crate::store::Store::supported_version();
    let found = crate::store::Store::stored_version(state).unwrap_or(0);
    tracing::info!(
        lock = lock.path(),
        "standby: this build reads schema version {supported} and {} is at {found}; another process drives it, \
         so this one waits for it to stop, then migrates and leads (the web starts then)",
        state.display()
    );
    let notifier = super::sdnotify::Notifier::from_env();
    notifier.ready();
    notifier.status(&format!("standby (newer build): waiting to migrate {} from version {found}", state.display()));
    loop {
        match lock.try_take() {
            Ok(true) => return Ok(Waited::Lead),
            Ok(false) => notifier.watchdog(),
            Err(error) => tracing::error!(%error, lock = lock.path(), "cannot try the state lock; trying again"),
        }
        if crate::store::Store::stored_version(state).is_ok_and(|version| version == supported) {
            tracing::info!("the leader brought the state to this build's schema: a standby of the same version now");
            return Ok(Waited::SameVersion);
        }
        tokio::select! {
            _ = term.recv() => return Ok(Waited::Stopped),
            _ = int.recv() => return Ok(Waited::Stopped),
            _ = hup.recv() => tracing::info!("reload ignored: nothing is loaded until this process can open the state"),
            () = tokio::time::sleep(STANDBY_POLL) => {}
        }
    }
}

fn open_lock_file(path: &str) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(path)
}

/// Whether `path` names the file `file` has open.
fn same_file(file: &std::fs::File, path: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(open), Ok(named)) => open.dev() == named.dev() && open.ino() == named.ino(),
        _ => false,
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
        assert!(second.still_held());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_lead_is_renewed_while_a_step_is_still_running_and_lost_once_another_takes_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = SharedStore::new(crate::store::Store::open(&dir.path().join("orchestrator.db")).unwrap());
        let lead = Lead::take(&store, None, Duration::from_millis(100)).await.unwrap();
        let since = store.call(|s| s.leader()).await.unwrap().unwrap().renewed_at;
        let renewed = || async { store.call(|s| s.leader()).await.unwrap().unwrap().renewed_at };
        // A step that takes a long time: the renewals go on beside it.
        let long_step = async {
            while renewed().await <= since {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::select! {
            () = long_step => {}
            lost = lead.renew_until_lost(&store) => panic!("the lead was not lost: {lost}"),
        }
        store.call(|s| s.take_leadership(1, "elsewhere", Utc::now())).await.unwrap();
        let lost = tokio::time::timeout(Duration::from_secs(30), lead.renew_until_lost(&store)).await.unwrap();
        assert!(matches!(lost, StoreError::Superseded { epoch: 1, .. }), "{lost}");
    }

    #[test]
    fn a_deleted_lock_file_is_noticed_by_its_holder_and_reopened_by_a_waiter() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("orchestrator.db");
        let holder = StateLock::open(&state).unwrap();
        let waiter = StateLock::open(&state).unwrap();
        assert!(holder.try_take().unwrap());
        assert!(!waiter.try_take().unwrap());
        std::fs::remove_file(holder.path()).unwrap();
        assert!(!holder.still_held(), "the path no longer names the locked file");
        assert!(waiter.try_take().unwrap(), "the waiter locks the file at the path now");
        assert!(waiter.still_held());
    }
}
