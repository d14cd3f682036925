//! Benchmarks: scenarios that drive the daemon's own code paths (the same
//! client, lanes and store) and report figures. They print what they
//! measured; they are not tests and assert nothing about speed.
//!
//! Setup runs in the parent process; each measurement runs in a child
//! process of this same executable, so the child's peak memory is the
//! footprint of the code path under measurement and nothing else.

pub mod all;
pub mod cpu;
pub mod deliver;
pub mod endtoend;
pub mod enqueue;
pub mod fallback;
pub mod figures;
pub mod idle;
pub mod ingest;
pub mod jobs;
pub mod project;
pub mod reference;
pub mod rss;
pub mod schedule;
pub mod simulator;
pub mod submit;
pub mod validate;

use std::path::{Path, PathBuf};

pub use figures::{Figure, Sampled, Target};

/// What every scenario reports: JSON (through `Serialize`) or a table.
pub trait Report: serde::Serialize {
    /// The figures as text for a terminal (medians first).
    fn table(&self) -> String;
    /// The headline figures (medians over the repeats), with their targets.
    fn figures(&self) -> Vec<Figure>;
}

/// `debug` or `release`: figures of the two differ by an order of magnitude.
pub fn build_profile() -> &'static str {
    if cfg!(debug_assertions) { "debug" } else { "release" }
}

/// The median of `values` (the mean of the middle two for an even count).
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    match sorted.len() {
        0 => None,
        n if n % 2 == 1 => Some(sorted[mid]),
        _ => Some((sorted[mid - 1] + sorted[mid]) / 2.0),
    }
}

/// A private directory under the system's temporary directory, removed
/// with everything in it when dropped.
#[derive(Debug)]
pub struct Scratch {
    path: PathBuf,
}

impl Scratch {
    /// Creates `orchestrator-bench-<label>-<pid>-<nanos>` in the temporary directory.
    pub fn new(label: &str) -> std::io::Result<Scratch> {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let name = format!("orchestrator-bench-{label}-{}-{nanos}", std::process::id());
        let path = std::env::temp_dir().join(name);
        let mut builder = std::fs::DirBuilder::new();
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(&path)?;
        Ok(Scratch { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A profiler command line to start measured worker processes under,
/// e.g. `valgrind --tool=callgrind` or `strace -c -f -o /tmp/worker.strace`.
pub const WRAP_ENV: &str = "ORCHESTRATOR_BENCH_WRAP";

/// A command running this executable as a measured worker, under the
/// profiler of [`WRAP_ENV`] if one is set.
pub fn worker_command() -> anyhow::Result<tokio::process::Command> {
    use anyhow::Context as _;
    let exe = std::env::current_exe().context("cannot find the orchestrator executable")?;
    let wrap = std::env::var(WRAP_ENV).unwrap_or_default();
    let mut words = wrap.split_whitespace();
    let mut command = match words.next() {
        Some(program) => {
            let mut command = tokio::process::Command::new(program);
            command.args(words).arg(exe);
            command
        }
        None => tokio::process::Command::new(exe),
    };
    command.stdin(std::process::Stdio::null()).kill_on_drop(true);
    Ok(command)
}

/// The report a measured worker printed as its last line of JSON, or why
/// there is none (its status and what it wrote to standard error).
pub fn worker_report<T: serde::de::DeserializeOwned>(worker: &str, output: &std::process::Output) -> anyhow::Result<T> {
    use anyhow::Context as _;
    let stderr = String::from_utf8_lossy(&output.stderr);
    anyhow::ensure!(output.status.success(), "the {worker} worker failed ({}): {}", output.status, stderr.trim());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default();
    serde_json::from_str(line).with_context(|| format!("unreadable {worker} worker output `{line}`"))
}

/// Set to keep every scratch directory and database, for profiling them afterwards.
pub const KEEP_ENV: &str = "ORCHESTRATOR_BENCH_KEEP";

/// Whether [`KEEP_ENV`] asks to keep what a benchmark wrote.
pub fn keep_files() -> bool {
    std::env::var_os(KEEP_ENV).is_some_and(|v| !v.is_empty())
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if keep_files() {
            eprintln!("bench: kept {}", self.path.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    #[test]
    fn a_worker_report_is_its_last_json_line_or_its_failure() {
        use std::os::unix::process::ExitStatusExt;
        let output = |code: i32, stdout: &str| std::process::Output {
            status: std::process::ExitStatus::from_raw(code << 8),
            stdout: stdout.into(),
            stderr: b"boom\n".to_vec(),
        };
        let report: Vec<u32> = worker_report("x", &output(0, "noise\n[1,2]\n\n")).unwrap();
        assert_eq!(report, [1, 2]);
        let failed = worker_report::<Vec<u32>>("x", &output(3, "[1]")).unwrap_err().to_string();
        assert!(failed.starts_with("the x worker failed") && failed.ends_with("boom"), "{failed}");
        assert!(worker_report::<Vec<u32>>("x", &output(0, "")).is_err());
    }

    #[test]
    fn scratch_is_removed_when_dropped() {
        let scratch = Scratch::new("test").unwrap();
        let path = scratch.path().to_owned();
        std::fs::write(path.join("file"), "x").unwrap();
        drop(scratch);
        assert!(!path.exists());
    }
}
