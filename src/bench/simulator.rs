//! The provider simulator as a child process, so that its memory and CPU
//! stay out of the figures of the process being measured.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How long the simulator may take to answer its first request.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `orchestrator sim` child; killed when dropped, on error paths too.
#[derive(Debug)]
pub struct SimProcess {
    child: Child,
    base_url: String,
}

impl SimProcess {
    /// Starts `orchestrator sim` (this same executable) on a free loopback
    /// port with the extra `flags`, and waits until `GET /_sim/stats` answers.
    pub async fn start(flags: &[&str]) -> anyhow::Result<SimProcess> {
        let port = free_port()?;
        let exe = std::env::current_exe().context("cannot find the orchestrator executable")?;
        let child = Command::new(exe)
            .args(["sim", "--listen", &format!("127.0.0.1:{port}")])
            .args(flags)
            // Its request logs would drown the figures; problems still show.
            .env("ORCHESTRATOR_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("cannot start the simulator")?;
        let mut sim = SimProcess { child, base_url: format!("http://127.0.0.1:{port}") };
        sim.wait_ready().await?;
        Ok(sim)
    }

    /// The base URL to give a client (no trailing slash).
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let http = reqwest::Client::new();
        let url = format!("{}/_sim/stats", self.base_url);
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("the simulator exited before answering ({status})");
            }
            if http.get(&url).send().await.is_ok_and(|r| r.status().is_success()) {
                return Ok(());
            }
            if started.elapsed() > READY_TIMEOUT {
                bail!("the simulator did not answer at {url} within {READY_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for SimProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port that was free a moment ago. Another process could take it
/// before the simulator binds it; the simulator then fails to start and says so.
fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free loopback port")?;
    Ok(listener.local_addr()?.port())
}
