//! OS signals, mapped once onto the daemon's [`Control`](super::Control):
//! SIGTERM and SIGINT stop it (a second one exits at once), SIGHUP asks for
//! a reload.

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Exit status when a second stop signal cuts the graceful stop short.
pub const EXIT_SECOND_SIGNAL: i32 = 130;

/// Listens for the signals in the background until the process ends.
pub fn listen(stop: CancellationToken, reload: tokio::sync::mpsc::UnboundedSender<()>) -> std::io::Result<()> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut hangup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                Some(()) = terminate.recv() => stopping(&stop),
                Some(()) = interrupt.recv() => stopping(&stop),
                Some(()) = hangup.recv() => { let _ = reload.send(()); }
            }
        }
    });
    Ok(())
}

/// The first stop signal starts the graceful stop; the second exits now.
fn stopping(stop: &CancellationToken) {
    if stop.is_cancelled() {
        tracing::warn!("second stop signal: exiting now");
        std::process::exit(EXIT_SECOND_SIGNAL);
    }
    stop.cancel();
}
