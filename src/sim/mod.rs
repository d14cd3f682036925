//! The provider simulator: the Anthropic Messages and Message Batches API on
//! loopback, with deterministic answers, a scaled clock and fault injection.
//!
//! The wire format follows `PROVIDERS.md` §1 and §2: the same headers, error
//! bodies, `MessageBatch` objects and results JSONL lines as the real API. What
//! it answers is derived from the prompt and [`SimConfig::seed`], so two runs
//! with the same seed and the same requests give the same results.
//!
//! Timestamps (`created_at`, `expires_at`, `ended_at`, ...) are in simulated
//! time: the wall clock at start-up plus the elapsed real time multiplied by
//! [`SimConfig::time_scale`].

mod batches;
mod create;
mod errors;
mod faults;
mod gate;
mod gemini;
mod hash;
mod messages;
mod openai;
mod params;
mod results;
mod routes;
mod state;
mod stats;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use stats::{ProviderStats, SimStats};

/// Knobs of the simulator; also the arguments of `orchestrator sim`.
#[derive(Debug, Clone, clap::Args)]
pub struct SimConfig {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8787")]
    pub listen: SocketAddr,
    /// Simulated seconds per real second (3600 => a 4 h batch takes 4 s).
    #[arg(long, default_value_t = 1.0)]
    pub time_scale: f64,
    /// Median batch completion time in simulated seconds (log-normal distribution).
    #[arg(long, default_value_t = 3.0)]
    pub batch_median_secs: f64,
    /// 95th percentile of the batch completion time in simulated seconds.
    #[arg(long, default_value_t = 8.0)]
    pub batch_p95_secs: f64,
    /// Share of batch results returned `errored` with a retryable type (`api_error`, `overloaded_error`).
    #[arg(long, default_value_t = 0.0)]
    pub errored_share: f64,
    /// Share of batch results returned `errored` with `invalid_request_error` (permanent).
    #[arg(long, default_value_t = 0.0)]
    pub invalid_share: f64,
    /// Share of batch results returned `expired`.
    #[arg(long, default_value_t = 0.0)]
    pub expired_share: f64,
    /// Chance per API call of a 429 `rate_limit_error` with `retry-after`.
    #[arg(long, default_value_t = 0.0)]
    pub rate_limit_chance: f64,
    /// Chance per API call of a 529 `overloaded_error`.
    #[arg(long, default_value_t = 0.0)]
    pub overloaded_chance: f64,
    /// Chance per API call of a 500 `api_error` with `retry-after`.
    #[arg(long, default_value_t = 0.0)]
    pub server_error_chance: f64,
    /// A rate-limit storm: every API call answers 429 `rate_limit_error`
    /// (with `retry-after`) for the first this many simulated seconds.
    #[arg(long)]
    pub storm_secs: Option<f64>,
    /// The chance-based faults (429, 529, 500) happen only in the first this
    /// many simulated seconds; later calls are answered normally.
    #[arg(long)]
    pub faults_for_secs: Option<f64>,
    /// Seconds sent in `retry-after` on injected 429 and 500 responses.
    #[arg(long, default_value_t = 1)]
    pub retry_after_secs: u64,
    /// Chance per results download that the stream is cut in the middle of a line.
    #[arg(long, default_value_t = 0.0)]
    pub truncate_results_chance: f64,
    /// Batches stay `in_progress` forever (until canceled).
    #[arg(long)]
    pub never_end: bool,
    /// Seed of every simulated choice (answers, outcomes, durations, faults).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Latency of `POST /v1/messages` in real milliseconds.
    #[arg(long, default_value_t = 0)]
    pub message_latency_ms: u64,
    /// Chance that a batch create call fails with a 500 `api_error` without
    /// `retry-after` (on top of the per-call faults): the batch lane down
    /// while Messages works.
    #[arg(long, default_value_t = 0.0)]
    pub batch_create_error_chance: f64,
    /// Chance that a batch create call creates the batch but answers 500, as
    /// when the answer is lost on the way: the client must not create it twice.
    #[arg(long, default_value_t = 0.0)]
    pub create_answer_lost_chance: f64,
    /// Simulated seconds a cancel takes to end the batch (default: a tenth of a real second).
    #[arg(long)]
    pub cancel_secs: Option<f64>,
    /// Length of every answer's text in bytes, still cut at `max_tokens`
    /// (default: from the prompt's hash, mostly 50–600 bytes, one in sixteen 800–3,200).
    #[arg(long)]
    pub reply_bytes: Option<u32>,
    /// The only API key accepted (a 401 `authentication_error` for any
    /// other, as the real API answers); unset: any non-empty key.
    #[arg(long, env = "ORCHESTRATOR_SIM_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// A provider that is down: every call to its API answers its overload
    /// error (Anthropic 529, OpenAI and Gemini 503), to rehearse failover.
    #[arg(long, value_parser = ["anthropic", "openai", "gemini"])]
    pub outage: Option<String>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8787)),
            time_scale: 1.0,
            batch_median_secs: 3.0,
            batch_p95_secs: 8.0,
            errored_share: 0.0,
            invalid_share: 0.0,
            expired_share: 0.0,
            rate_limit_chance: 0.0,
            overloaded_chance: 0.0,
            server_error_chance: 0.0,
            storm_secs: None,
            faults_for_secs: None,
            retry_after_secs: 1,
            truncate_results_chance: 0.0,
            never_end: false,
            seed: 0,
            message_latency_ms: 0,
            batch_create_error_chance: 0.0,
            create_answer_lost_chance: 0.0,
            cancel_secs: None,
            reply_bytes: None,
            api_key: None,
            outage: None,
        }
    }
}

impl SimConfig {
    /// Checks that the knobs make sense: shares and chances in 0..=1 (and each
    /// group summing to at most 1), positive scale and durations.
    pub fn check(&self) -> Result<(), String> {
        let unit = [
            ("errored_share", self.errored_share),
            ("invalid_share", self.invalid_share),
            ("expired_share", self.expired_share),
            ("rate_limit_chance", self.rate_limit_chance),
            ("overloaded_chance", self.overloaded_chance),
            ("server_error_chance", self.server_error_chance),
            ("truncate_results_chance", self.truncate_results_chance),
            ("batch_create_error_chance", self.batch_create_error_chance),
            ("create_answer_lost_chance", self.create_answer_lost_chance),
        ];
        for (name, value) in unit {
            if !(0.0..=1.0).contains(&value) {
                return Err(format!("{name} must be between 0 and 1, got {value}"));
            }
        }
        if self.errored_share + self.invalid_share + self.expired_share > 1.0 {
            return Err("errored_share + invalid_share + expired_share must be at most 1".into());
        }
        if self.rate_limit_chance + self.overloaded_chance + self.server_error_chance > 1.0 {
            return Err("rate_limit_chance + overloaded_chance + server_error_chance must be at most 1".into());
        }
        for (name, value) in [("storm_secs", self.storm_secs), ("faults_for_secs", self.faults_for_secs)] {
            if value.is_some_and(|secs| !(secs.is_finite() && secs >= 0.0)) {
                return Err(format!("{name} must be a number of seconds, got {}", value.unwrap_or_default()));
            }
        }
        if !(self.time_scale.is_finite() && self.time_scale > 0.0) {
            return Err(format!("time_scale must be a positive number, got {}", self.time_scale));
        }
        if !(self.batch_median_secs.is_finite() && self.batch_median_secs > 0.0) {
            return Err(format!("batch_median_secs must be positive, got {}", self.batch_median_secs));
        }
        if !(self.batch_p95_secs.is_finite() && self.batch_p95_secs >= self.batch_median_secs) {
            return Err(format!(
                "batch_p95_secs must be at least batch_median_secs ({}), got {}",
                self.batch_median_secs, self.batch_p95_secs
            ));
        }
        Ok(())
    }
}

/// A running simulator (for tests and `serve --simulate`).
pub struct SimHandle {
    /// The address it listens on (the real port when `listen` had port 0).
    pub addr: SocketAddr,
    sim: Arc<state::Sim>,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

impl SimHandle {
    /// The base URL to give a client, e.g. `http://127.0.0.1:8787` (no trailing slash).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Counters of what the simulator has seen so far (the same as `GET /_sim/stats`).
    pub fn stats(&self) -> SimStats {
        self.sim.stats()
    }

    /// Stops accepting connections, lets open ones finish and waits for the server task.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(());
        match self.task.await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::warn!(error = %err, "simulator stopped with an error"),
            Err(err) => tracing::warn!(error = %err, "simulator task failed"),
        }
    }
}

/// Binds `config.listen` (port 0 allowed) and serves in the background on the current tokio runtime.
pub async fn start(config: SimConfig) -> std::io::Result<SimHandle> {
    start_on(config, None).await
}

/// Like [`start`], with simulated time following `clock` (times the scale)
/// instead of the machine's: tests that move a manual clock move batches too.
pub async fn start_with_clock(config: SimConfig, clock: Arc<dyn crate::clock::Clock>) -> std::io::Result<SimHandle> {
    start_on(config, Some(clock)).await
}

async fn start_on(config: SimConfig, clock: Option<Arc<dyn crate::clock::Clock>>) -> std::io::Result<SimHandle> {
    config.check().map_err(|msg| std::io::Error::new(std::io::ErrorKind::InvalidInput, msg))?;
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    let sim = Arc::new(state::Sim::new(config, addr, clock));
    let app = routes::router(sim.clone());
    let (shutdown, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
    });
    Ok(SimHandle { addr, sim, shutdown, task })
}
