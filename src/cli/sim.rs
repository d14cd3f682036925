//! `orchestrator sim`: the provider simulator in the foreground.

use anyhow::Context;

use crate::sim::{self, SimConfig};

pub(super) fn run(config: &SimConfig) -> anyhow::Result<u8> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("could not start the async runtime")?;
    runtime.block_on(async {
        let handle = sim::start(config.clone())
            .await
            .with_context(|| format!("could not start the simulator on {}", config.listen))?;
        tracing::info!(addr = %handle.addr, base_url = %handle.base_url(), "simulator listening");
        wait_for_signal().await?;
        tracing::info!("simulator stopping");
        handle.shutdown().await;
        Ok(0)
    })
}

/// Waits for Ctrl-C (SIGINT) or SIGTERM.
async fn wait_for_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("could not listen for SIGTERM")?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result.context("could not listen for Ctrl-C")?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await.context("could not listen for Ctrl-C")?;
    Ok(())
}
