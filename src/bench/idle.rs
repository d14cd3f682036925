//! The `idle` scenario: `orchestrator serve --simulate` with the example
//! jobs, a real child process, from start until it tells the supervisor it
//! is ready (`READY=1` on `NOTIFY_SOCKET`, as systemd sees it), then idle;
//! its CPU time and memory read from `/proc/<pid>`.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};

use super::Scratch;
use super::figures::{Metric, Sampled, Target};

/// How long the daemon idles per repeat by default.
pub const IDLE_SECS: u64 = 60;
/// `USER_HZ`: the unit of `utime` and `stime` in `/proc/<pid>/stat`, 100 on every Linux architecture.
const TICKS_PER_SEC: f64 = 100.0;
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const METRICS: [Metric; 4] = [
    Metric { name: "start to ready, ms", target: Some(Target::at_most(300.0)) },
    Metric { name: "idle CPU, % of one core", target: Some(Target::at_most(1.0)) },
    Metric { name: "RSS after idling, MiB", target: Some(Target::at_most(30.0)) },
    Metric { name: "peak RSS, MiB", target: Some(Target::at_most(30.0)) },
];

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The jobs directory to serve.
    pub jobs: PathBuf,
    /// Its prompts directory.
    pub prompts: PathBuf,
    /// Seconds of idling measured per repeat.
    pub idle_secs: u64,
    /// Repeats, each a fresh daemon on a fresh state database.
    pub repeats: u32,
}

/// Starts, measures and stops the daemon `options.repeats` times.
pub fn run(options: &Options) -> anyhow::Result<Sampled> {
    ensure!(options.jobs.is_dir(), "no jobs directory at {} (run from the repository root)", options.jobs.display());
    let mut repeats_out = Vec::new();
    for _ in 0..options.repeats {
        repeats_out.push(measure(options)?);
    }
    let jobs = crate::manifest::manifest_files(&options.jobs).map_or(0, |f| f.len());
    let setup =
        format!("`serve --simulate` with the {jobs} jobs of {}, idle {} s", options.jobs.display(), options.idle_secs);
    Ok(Sampled::new("idle", setup, &METRICS, &repeats_out))
}

/// One daemon: start to ready, then CPU and memory over the idle period.
fn measure(options: &Options) -> anyhow::Result<Vec<f64>> {
    let scratch = Scratch::new("idle")?;
    let socket_path = scratch.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).context("cannot bind the notify socket")?;
    socket.set_read_timeout(Some(READY_TIMEOUT))?;
    let started = Instant::now();
    let mut daemon = Daemon(spawn(options, scratch.path(), &socket_path)?);
    wait_ready(&socket, &mut daemon.0)?;
    let ready_ms = started.elapsed().as_secs_f64() * 1000.0;
    let pid = daemon.0.id();
    let (cpu_before, idle_from) = (cpu_secs(pid)?, Instant::now());
    std::thread::sleep(Duration::from_secs(options.idle_secs));
    let cpu = cpu_secs(pid)? - cpu_before;
    let cpu_percent = cpu / idle_from.elapsed().as_secs_f64() * 100.0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).context("cannot read the daemon's status")?;
    let mib = |key| status_kb(&status, key).map_or(f64::NAN, |kb| kb as f64 / 1024.0);
    let (rss, peak) = (mib("VmRSS:"), mib("VmHWM:"));
    if let Some(exit) = daemon.0.try_wait()? {
        bail!("the daemon exited while idle ({exit})");
    }
    Ok(vec![ready_ms, cpu_percent, rss, peak])
}

fn spawn(options: &Options, dir: &Path, socket: &Path) -> anyhow::Result<Child> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let exe = std::env::current_exe().context("cannot find the orchestrator executable")?;
    Command::new(exe)
        .args(["serve", "--simulate", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--jobs")
        .arg(&options.jobs)
        .arg("--prompts")
        .arg(&options.prompts)
        .arg("--state")
        .arg(dir.join("state.db"))
        .env("NOTIFY_SOCKET", socket)
        .env("ORCHESTRATOR_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .context("cannot start `orchestrator serve`")
}

fn wait_ready(socket: &UnixDatagram, child: &mut Child) -> anyhow::Result<()> {
    let mut buf = [0_u8; 4096];
    loop {
        let n = socket.recv(&mut buf).context("the daemon did not report ready")?;
        if String::from_utf8_lossy(&buf[..n]).lines().any(|l| l == "READY=1") {
            return Ok(());
        }
        if let Some(exit) = child.try_wait()? {
            bail!("the daemon exited before it was ready ({exit})");
        }
    }
}

/// User plus system CPU seconds of every thread of `pid` so far.
pub(super) fn cpu_secs(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).context("cannot read the daemon's CPU time")?;
    parse_cpu_ticks(&stat).map(|ticks| ticks as f64 / TICKS_PER_SEC).context("unreadable /proc/<pid>/stat")
}

/// `utime + stime` of a `/proc/<pid>/stat` line (fields 14 and 15; the name may contain spaces).
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 1..)?.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// A `kB` value of `/proc/<pid>/status`, e.g. `VmRSS:`.
pub(super) fn status_kb(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find_map(|line| line.strip_prefix(key))?;
    line.trim().strip_suffix("kB")?.trim().parse().ok()
}

/// `orchestrator serve ARGS` over the generated project in `root` with the
/// state database `db`, against the provider (simulator) at `base_url`,
/// quiet, outside systemd: what the `jobs` and `enqueue` scenarios run.
pub(super) fn serve_project(root: &Path, db: &Path, base_url: &str, args: &[&str]) -> anyhow::Result<Command> {
    let exe = std::env::current_exe().context("cannot find the orchestrator executable")?;
    let mut command = Command::new(exe);
    command
        .arg("serve")
        .args(args)
        .arg("--jobs")
        .arg(root.join("jobs"))
        .arg("--prompts")
        .arg(root.join("prompts"))
        .arg("--state")
        .arg(db)
        .env("ANTHROPIC_BASE_URL", base_url)
        .env("ANTHROPIC_API_KEY", "sk-bench-not-a-real-key")
        .env("ORCHESTRATOR_LOG", "warn")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    Ok(command)
}

/// The daemon, stopped on drop the way systemd stops it (SIGTERM), killed if it lingers.
pub(super) struct Daemon(pub(super) Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        let until = Instant::now() + Duration::from_secs(15);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_ticks_and_status_values() {
        let stat = "42 (orche strator) S 1 42 42 0 -1 4194560 100 0 0 0 250 37 0 0 20 0 9 0 100 0 0";
        assert_eq!(parse_cpu_ticks(stat), Some(287));
        assert_eq!(parse_cpu_ticks("garbage"), None);
        assert_eq!(status_kb("VmRSS:\t  2048 kB\nVmHWM:\t 4096 kB\n", "VmHWM:"), Some(4096));
    }
}
