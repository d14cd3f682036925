//! `run`'s progress line on a terminal, kept on its own line below the log.
//!
//! Log lines go through [`LogWriter`]: while a progress line is shown, each
//! log line is written with the line cleared and drawn again after it, so a
//! log line never overwrites the progress and the progress never swallows a
//! log line. Off a terminal there is no progress line and the writer is
//! plain standard error.

use std::io::Write;
use std::sync::{Mutex, MutexGuard};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The progress line shown now, if any.
static LINE: Mutex<Option<ProgressBar>> = Mutex::new(None);

fn line() -> MutexGuard<'static, Option<ProgressBar>> {
    LINE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The progress line for the life of a `run`; cleared when dropped.
pub(super) struct Progress(ProgressBar);

impl Progress {
    /// Shows an empty progress line on standard error.
    pub(super) fn start() -> Progress {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        bar.set_style(ProgressStyle::with_template("{spinner} {wide_msg}").expect("the template is valid"));
        bar.enable_steady_tick(std::time::Duration::from_millis(250));
        *line() = Some(bar.clone());
        Progress(bar)
    }

    /// Replaces what the line says.
    pub(super) fn say(&self, text: String) {
        self.0.set_message(text);
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        line().take();
        self.0.finish_and_clear();
    }
}

/// Standard error for log lines, drawn around the progress line.
#[derive(Debug, Default)]
pub(super) struct LogWriter {
    buffer: Vec<u8>,
}

impl Write for LogWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogWriter {
    /// One event is one buffered write: it reaches the terminal whole.
    fn drop(&mut self) {
        let text = std::mem::take(&mut self.buffer);
        let write = || {
            let _ = std::io::stderr().write_all(&text);
        };
        match line().as_ref() {
            Some(bar) => bar.suspend(write),
            None => write(),
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for MakeLogWriter {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> LogWriter {
        LogWriter::default()
    }
}

/// Makes a [`LogWriter`] per log event.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct MakeLogWriter;
