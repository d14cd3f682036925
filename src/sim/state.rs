//! The simulator's shared state: configuration, the scaled clock, batches,
//! the prompt cache and the counters, behind one mutex that is never held
//! across an `.await`.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use chrono::{DateTime, SecondsFormat, Utc};

use super::SimConfig;
use super::batches::Batch;
use super::hash::{self, Key};
use super::params::CachePlan;
use super::stats::SimStats;

/// Everything the handlers share.
pub(crate) struct Sim {
    pub config: SimConfig,
    /// The bound address (used for `results_url` when a request has no `Host`).
    pub addr: SocketAddr,
    pub clock: Clock,
    /// Differs per start, so batch ids never repeat across simulator restarts.
    pub nonce: u64,
    requests: AtomicU64,
    state: Mutex<State>,
}

/// The mutable part of [`Sim`].
#[derive(Default)]
pub(crate) struct State {
    /// Batches by creation sequence number (oldest first).
    pub batches: BTreeMap<u64, Batch>,
    pub next_seq: u64,
    pub cache: PromptCache,
    pub stats: SimStats,
    /// In how many created batches each `custom_id` appeared.
    pub submitted: HashMap<Box<str>, u32>,
    /// `POST /v1/messages` calls answered so far (for message ids).
    pub messages: u64,
    /// The OpenAI side: files and batches.
    pub openai: super::openai::State,
    /// The Gemini side: files, uploads and batches.
    pub gemini: super::gemini::State,
}

impl Sim {
    pub(crate) fn new(config: SimConfig, addr: SocketAddr, injected: Option<Arc<dyn crate::clock::Clock>>) -> Sim {
        let epoch = injected.as_ref().map_or_else(Utc::now, |c| c.now());
        let source = match injected {
            Some(clock) => Source::Injected(clock),
            None => Source::Real(Instant::now()),
        };
        let clock = Clock { source, epoch, scale: config.time_scale };
        let nanos = clock.epoch.timestamp_nanos_opt().unwrap_or_default() as u64;
        let nonce = Key::new(nanos, "nonce").num(u64::from(std::process::id())).finish();
        Sim { config, addr, clock, nonce, requests: AtomicU64::new(0), state: Mutex::new(State::default()) }
    }

    /// The next request number: faults are rolled from the seed and this.
    pub(crate) fn next_request(&self) -> u64 {
        self.requests.fetch_add(1, Ordering::Relaxed)
    }

    /// The `request-id` of request number `n`.
    pub(crate) fn request_id(&self, n: u64) -> String {
        hash::id("req_", Key::new(self.nonce, "request").num(n).finish(), n)
    }

    /// Locks the state (a panic elsewhere does not poison it for good).
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A copy of the counters.
    pub(crate) fn stats(&self) -> SimStats {
        self.lock().stats.clone()
    }
}

/// Simulated time: seconds since start-up, times the scale.
pub(crate) struct Clock {
    source: Source,
    epoch: DateTime<Utc>,
    scale: f64,
}

/// Where elapsed time comes from: the machine, or the caller's clock (tests
/// that move a `ManualClock` move the simulator with it).
enum Source {
    Real(Instant),
    Injected(Arc<dyn crate::clock::Clock>),
}

impl Clock {
    /// Simulated seconds since start-up.
    pub(crate) fn now(&self) -> f64 {
        let elapsed = match &self.source {
            Source::Real(started) => started.elapsed().as_secs_f64(),
            Source::Injected(clock) => (clock.now() - self.epoch).num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6,
        };
        elapsed * self.scale
    }

    /// Real seconds that `sim_secs` simulated seconds take.
    pub(crate) fn real_secs(&self, sim_secs: f64) -> f64 {
        sim_secs / self.scale
    }

    /// Unix seconds of simulated instant `sim_secs` (OpenAI's timestamps).
    pub(crate) fn unix(&self, sim_secs: f64) -> i64 {
        self.epoch.timestamp() + sim_secs.floor().clamp(0.0, 1e15) as i64
    }

    /// The RFC 3339 timestamp (microseconds, `Z`) of simulated instant `sim_secs`.
    pub(crate) fn timestamp(&self, sim_secs: f64) -> String {
        self.timestamp_plus(sim_secs, chrono::Duration::zero())
    }

    /// The timestamp of simulated instant `sim_secs`, plus an exact `offset`.
    pub(crate) fn timestamp_plus(&self, sim_secs: f64, offset: chrono::Duration) -> String {
        let micros = (sim_secs * 1e6).round().clamp(0.0, 1e17) as i64;
        (self.epoch + chrono::Duration::microseconds(micros) + offset).to_rfc3339_opts(SecondsFormat::Micros, true)
    }
}

/// The simulated prompt cache: prefix hash -> simulated expiry.
#[derive(Default)]
pub(crate) struct PromptCache(HashMap<u64, f64>);

const CACHE_PURGE_AT: usize = 100_000;

impl PromptCache {
    /// Whether `plan`'s prefix is cached at `now` (a read); writes or refreshes the entry either way.
    pub(crate) fn hit(&mut self, plan: &CachePlan, now: f64) -> bool {
        if self.0.len() >= CACHE_PURGE_AT {
            self.0.retain(|_, expiry| *expiry > now);
        }
        let expiry = now + plan.ttl_secs();
        match self.0.get_mut(&plan.prefix_hash) {
            Some(until) if *until > now => {
                *until = until.max(expiry);
                true
            }
            _ => {
                self.0.insert(plan.prefix_hash, expiry);
                false
            }
        }
    }
}
