//! What `run` and `serve` share: the store, the provider (real or the
//! built-in simulator), the lanes and the engine.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;

use super::{EXIT_BUSY, EXIT_CONFIG};
use crate::clock::Clock;
use crate::daemon::leadership::{StateLock, Waited};
use crate::engine::{Engine, EngineSettings};
use crate::job::Job;
use crate::lanes::{BatchLane, SyncLane};
use crate::providers::anthropic::AnthropicClient;
use crate::providers::gemini::GeminiClient;
use crate::providers::openai::OpenAiClient;
use crate::providers::{Client, Providers};
use crate::sim::{SimConfig, SimHandle};
use crate::store::{SharedStore, Store};

/// A clock for a rehearsal against the simulator: `run` and `serve` with
/// `--simulate` may start their clock at another instant and run it faster,
/// so a night of schedule or a long deadline plays out in seconds. Never
/// against a real provider: its batches and rate limits run on real time.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct Rehearsal {
    /// With `--simulate`: the clock starts at this instant (RFC 3339)
    /// instead of now, to rehearse a schedule (a DST night, a deadline).
    #[arg(long, requires = "simulate")]
    pub clock_start: Option<chrono::DateTime<chrono::Utc>>,
    /// With `--simulate`: clock seconds per real second (600 runs an hour in
    /// six seconds); the simulator follows the same clock.
    #[arg(long, requires = "simulate", value_parser = positive_scale)]
    pub clock_scale: Option<f64>,
}

impl Rehearsal {
    /// The real clock, or the rehearsal's.
    pub fn clock(&self) -> Arc<dyn Clock> {
        match (self.clock_start, self.clock_scale) {
            (None, None) => Arc::new(crate::clock::SystemClock),
            (start, scale) => {
                let (start, scale) = (start.unwrap_or_else(chrono::Utc::now), scale.unwrap_or(1.0));
                tracing::warn!(%start, scale, "rehearsal: the clock starts at {start} and runs {scale} times real time");
                Arc::new(crate::clock::ScaledClock::new(start, scale))
            }
        }
    }
}

fn positive_scale(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(scale) if scale.is_finite() && scale > 0.0 => Ok(scale),
        _ => Err(format!("`{text}` is not a positive number (write e.g. `60` or `600`)")),
    }
}

/// A ready engine, and the simulator behind it when there is one.
pub(super) struct Backend {
    pub engine: Arc<Engine>,
    pub simulator: Option<SimHandle>,
    /// The providers the process has clients for.
    pub providers: Vec<&'static str>,
    /// The state database's lock: held while the process drives the state
    /// (released on exit, even by `kill -9`); a standby waits for it.
    /// `None` on PostgreSQL, where the lead is a lease in the database.
    pub lock: Option<Arc<StateLock>>,
}

impl Backend {
    /// Stops the simulator, if any.
    pub(super) async fn shutdown(self) {
        if let Some(sim) = self.simulator {
            sim.shutdown().await;
        }
    }
}

/// The providers a process knows how to reach.
const PROVIDERS: [&str; 3] = crate::providers::NAMES;

/// The names of providers some job uses that `known` lacks, each once.
pub(super) fn missing_providers(jobs: &[Job], known: &[&str]) -> Vec<String> {
    let mut missing: Vec<String> =
        jobs.iter().map(|job| job.manifest.provider.clone()).filter(|p| !known.contains(&p.as_str())).collect();
    missing.sort();
    missing.dedup();
    missing
}

/// Opens the store and connects the providers: every one to the simulator
/// with `simulate`, else each provider some job uses with its key from the
/// environment (and any other whose key is there, for jobs a reload adds).
/// A used provider without a key is an operator error: it is printed and
/// becomes `Err(EXIT_CONFIG)`. When another process holds the state lock,
/// a `standby` backend waits for it (the daemon takes it); any other
/// becomes `Err(EXIT_BUSY)`.
pub(super) async fn backend(
    state: &Path,
    clock: Arc<dyn Clock>,
    settings: EngineSettings,
    jobs: Vec<Job>,
    simulate: bool,
    standby: bool,
) -> anyhow::Result<Result<Backend, u8>> {
    if crate::store::database_url(state).is_some() {
        // PostgreSQL: every process may wait for the lease; the schema is
        // created or migrated under the database's own lock.
        let store = SharedStore::new(Store::open(state)?);
        return connect_engine(store, clock, settings, jobs, simulate, None).await;
    }
    // The lock first: a process that may not drive the state must not migrate it under the one that does.
    let lock = Arc::new(StateLock::open(state)?);
    let held = lock.try_take().with_context(|| format!("cannot lock {}", lock.path()))?;
    if !held && !standby {
        eprintln!(
            "error: another orchestrator process (serve or run) is driving {}; two would submit the same \
             requests twice. Stop it, use another --state, or start `serve --standby` to take over when it stops.",
            state.display()
        );
        return Ok(Err(EXIT_BUSY));
    }
    if !held && Store::stored_version(state)? < Store::supported_version() {
        // A newer build as a standby could neither read the older tables nor
        // migrate them under the leader: it waits for the lock first.
        if crate::daemon::leadership::wait_to_migrate(&lock, state).await? == Waited::Stopped {
            tracing::info!("stopped before this process could open the state");
            return Ok(Err(0));
        }
    }
    let store = SharedStore::new(Store::open(state)?);
    connect_engine(store, clock, settings, jobs, simulate, Some(lock)).await
}

/// The providers (or the simulator), the lanes and the engine over `store`.
async fn connect_engine(
    store: SharedStore,
    clock: Arc<dyn Clock>,
    mut settings: EngineSettings,
    jobs: Vec<Job>,
    simulate: bool,
    lock: Option<Arc<StateLock>>,
) -> anyhow::Result<Result<Backend, u8>> {
    // The simulator keeps the engine's time: a rehearsal clock moves its batches too.
    let simulator = match simulate {
        true => Some(
            crate::sim::start_with_clock(simulator_config(), Arc::clone(&clock))
                .await
                .context("cannot start the simulator")?,
        ),
        false => None,
    };
    let providers = match &simulator {
        Some(sim) => {
            // The simulator answers in milliseconds and ends a small batch in
            // seconds (its p95 is 8 s): plan with that, not with a real provider's figures.
            settings.assumed_sync_latency.get_or_insert(std::time::Duration::from_secs(1));
            settings.assumed_batch_turnaround.get_or_insert(std::time::Duration::from_secs(10));
            Providers::simulated(&sim.base_url(), "simulated")?
        }
        None => match real_clients(&jobs) {
            Ok(clients) => Providers::new(clients),
            Err(err) => {
                eprintln!("error: {err} (or pass --simulate to use the built-in simulator)");
                return Ok(Err(EXIT_CONFIG));
            }
        },
    };
    let names = providers.iter().map(Client::provider).collect();
    let batch = BatchLane::with_pacing(providers.clone(), store.clone(), Arc::clone(&clock), &settings.batch_pacing);
    let sync = SyncLane::new(providers, store.clone(), Arc::clone(&clock), settings.sync);
    let engine = Arc::new(Engine::new(store, batch, sync, clock, settings, jobs));
    Ok(Ok(Backend { engine, simulator, providers: names, lock }))
}

/// Opens the state for a command that reads beside a running daemon
/// (`status`, `cost`, `estimate`, `render`) at this build's schema version:
/// an older one is migrated only while no other process drives it (the
/// lock is taken for the migration), and refused otherwise.
pub(super) fn open_beside_daemon(state: &Path, read_only: bool) -> anyhow::Result<Store> {
    // PostgreSQL migrates under the writers' lock; a file needs the state lock.
    if crate::store::database_url(state).is_none() && Store::stored_version(state)? != Store::supported_version() {
        let lock = StateLock::open(state)?;
        if lock.try_take().with_context(|| format!("cannot lock {}", lock.path()))? {
            drop(Store::open(state)?);
        }
    }
    // At this build's version now, or refused: another process drives an older one.
    Ok(match read_only {
        true => Store::open_read_only(state)?,
        false => Store::open_current(state)?,
    })
}

/// A client for each provider whose key is configured; an error for the
/// first provider some job uses whose key is not.
fn real_clients(jobs: &[Job]) -> Result<Vec<Client>, String> {
    let mut clients = Vec::new();
    for name in PROVIDERS {
        let client = match name {
            crate::providers::openai::NAME => OpenAiClient::from_environment().map(Client::OpenAi),
            crate::providers::gemini::NAME => GeminiClient::from_environment().map(Client::Gemini),
            _ => AnthropicClient::from_environment().map(Client::Anthropic),
        };
        match (client, jobs.iter().find(|job| job.manifest.provider == name)) {
            (Ok(client), _) => clients.push(client),
            (Err(error), Some(job)) => return Err(format!("{error}; job `{}` uses provider `{name}`", job.name)),
            (Err(_), None) => {}
        }
    }
    Ok(clients)
}

/// The simulator `--simulate` starts: any free loopback port, default knobs
/// (a small batch ends within seconds).
fn simulator_config() -> SimConfig {
    SimConfig { listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)), ..SimConfig::default() }
}
