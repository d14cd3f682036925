//! Who drives the state database. The process holding the state lock (see
//! `daemon::leadership`) records itself here when it takes over and renews
//! the row on every step, so `status`, the JSON API and the dashboard of
//! every process (a standby's too) say who leads, since when, and whether
//! it still renews, or that it stopped. Each takeover raises the epoch: a
//! leader that finds another epoch in the row has been replaced and must
//! stop writing.

use std::sync::atomic::{AtomicI64, Ordering};

use super::sql::{OptionalExtension, params};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{Store, StoreError, database, from_millis, to_millis};

/// The process that leads, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Leader {
    /// Raised by one on every takeover.
    pub epoch: i64,
    /// The leader's process id.
    pub pid: u32,
    /// The leader's host name.
    pub host: String,
    /// When it took over.
    pub since: DateTime<Utc>,
    /// When it last said it still leads.
    pub renewed_at: DateTime<Utc>,
    /// When it stopped leading cleanly (`None` while it leads, or after a crash).
    pub stopped_at: Option<DateTime<Utc>>,
}

/// The epoch this process leads with (0: it does not lead).
static LEADING_EPOCH: AtomicI64 = AtomicI64::new(0);

impl Leader {
    /// Whether the row names the process asking: the epoch it took (a pid
    /// alone could be another process's after a reboot).
    pub fn is_this_process(&self) -> bool {
        self.epoch == LEADING_EPOCH.load(Ordering::Relaxed) && self.pid == std::process::id()
    }
}

/// This machine's name, as the leadership row shows it.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

impl Store {
    /// Records that the process `pid` on `host` leads from `now` on, with
    /// the next epoch; returns the row as written.
    /// A lead taken from a leader that did not stop cleanly (it crashed,
    /// was killed, or its machine died) is a `leader_took_over` event: the
    /// alerts say so, and `status` lists it.
    pub fn take_leadership(&mut self, pid: u32, host: &str, now: DateTime<Utc>) -> Result<Leader, StoreError> {
        self.take_leadership_unless(pid, host, now, |_| false).map(|taken| taken.expect("taken unconditionally"))
    }

    /// On PostgreSQL, where any number of processes may wait to lead: takes
    /// the lead when nobody holds it, the leader stopped cleanly, or it has
    /// not renewed for `lease` before `now` (the daemon passes the
    /// database's clock, [`Store::database_now`], so that the machines'
    /// clocks do not matter); `None` while a leader holds it.
    /// From then on every transaction of this process is fenced with the
    /// new epoch.
    pub fn claim_lease(
        &mut self,
        pid: u32,
        host: &str,
        now: DateTime<Utc>,
        lease: Duration,
    ) -> Result<Option<Leader>, StoreError> {
        let lease = chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX);
        let taken = self.take_leadership_unless(pid, host, now, |leader| {
            leader.stopped_at.is_none() && leader.renewed_at + lease > now
        })?;
        let ours = taken.as_ref().filter(|leader| leader.pid == std::process::id());
        if let (Some(leader), Some(url)) = (ours, super::database_url(&self.path)) {
            super::sql::set_fence(url, Some(leader.epoch));
        }
        Ok(taken)
    }

    /// The database's clock (PostgreSQL), or this machine's (SQLite: one machine).
    pub fn database_now(&self) -> Result<DateTime<Utc>, StoreError> {
        match self.conn.dialect() {
            super::sql::Dialect::Sqlite => Ok(Utc::now()),
            super::sql::Dialect::Postgres => self
                .conn
                .query_row("SELECT (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT", [], |row| row.get(0))
                .map(from_millis)
                .map_err(|e| self.err(e)),
        }
    }

    fn take_leadership_unless(
        &mut self,
        pid: u32,
        host: &str,
        now: DateTime<Utc>,
        held: impl FnOnce(&Leader) -> bool,
    ) -> Result<Option<Leader>, StoreError> {
        // Not fenced: the process may have led before with an older epoch.
        let tx = self.conn.unfenced_transaction().map_err(|e| database(&self.path, e))?;
        let previous = leader_in(&tx).map_err(|e| database(&self.path, e))?;
        if previous.as_ref().is_some_and(held) {
            return Ok(None);
        }
        let at = to_millis(now);
        tx.execute(
            "INSERT INTO leadership (id, epoch, pid, host, since, renewed_at) VALUES (1, 1, ?1, ?2, ?3, ?3)
             ON CONFLICT (id) DO UPDATE SET epoch = leadership.epoch + 1, pid = excluded.pid, host = excluded.host,
                 since = excluded.since, renewed_at = excluded.renewed_at, stopped_at = NULL",
            params![pid, host, at],
        )
        .map_err(|e| database(&self.path, e))?;
        let leader = leader_in(&tx)
            .map_err(|e| database(&self.path, e))?
            .ok_or_else(|| database(&self.path, super::sql::Error::QueryReturnedNoRows))?;
        if let Some(previous) = previous.filter(|previous| previous.stopped_at.is_none()) {
            let detail = serde_json::json!({
                "epoch": leader.epoch, "pid": pid, "host": host,
                "previous": { "epoch": previous.epoch, "pid": previous.pid, "host": previous.host,
                              "renewed_at": previous.renewed_at.to_rfc3339() },
            });
            super::events::insert(&tx, None, None, "leader_took_over", &detail, now)
                .map_err(|e| database(&self.path, e))?;
        }
        tx.commit().map_err(|e| database(&self.path, e))?;
        if pid == std::process::id() {
            LEADING_EPOCH.store(leader.epoch, Ordering::Relaxed);
        }
        Ok(Some(leader))
    }

    /// Marks the leader of `epoch` as stopped cleanly at `now` (nothing when
    /// another process leads by then).
    pub fn release_leadership(&self, epoch: i64, now: DateTime<Utc>) -> Result<(), StoreError> {
        self.conn
            .execute(
                "UPDATE leadership SET stopped_at = ?2 WHERE id = 1 AND epoch = ?1",
                params![epoch, to_millis(now)],
            )
            .map(drop)
            .map_err(|e| self.err(e))?;
        if let Some(url) = super::database_url(&self.path) {
            super::sql::set_fence(url, None);
        }
        Ok(())
    }

    /// Says that the leader of `epoch` still leads at `now`; `false` when
    /// another process has taken over since (nothing is written then).
    pub fn renew_leadership(&self, epoch: i64, now: DateTime<Utc>) -> Result<bool, StoreError> {
        let changed = self
            .conn
            .execute(
                "UPDATE leadership SET renewed_at = ?2 WHERE id = 1 AND epoch = ?1",
                params![epoch, to_millis(now)],
            )
            .map_err(|e| self.err(e))?;
        Ok(changed == 1)
    }

    /// The leader as recorded, if any process ever led this database.
    pub fn leader(&self) -> Result<Option<Leader>, StoreError> {
        leader_in(&self.conn).map_err(|e| self.err(e))
    }
}

fn leader_in(conn: &super::sql::Connection) -> super::sql::Result<Option<Leader>> {
    conn.query_row("SELECT epoch, pid, host, since, renewed_at, stopped_at FROM leadership WHERE id = 1", [], |row| {
        Ok(Leader {
            epoch: row.get(0)?,
            pid: row.get(1)?,
            host: row.get(2)?,
            since: from_millis(row.get(3)?),
            renewed_at: from_millis(row.get(4)?),
            stopped_at: row.get::<_, Option<i64>>(5)?.map(from_millis),
        })
    })
    .optional()
}
