//! The `validate` scenario: `orchestrator validate` over 1,000 generated
//! manifests with their templates, timed as a user runs it: a fresh
//! process of this same executable, from start to exit.

use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, ensure};

use super::Scratch;
use super::figures::{Metric, Sampled, Target};

/// Manifests in the generated project.
pub const MANIFESTS: usize = 1000;
const METRICS: [Metric; 1] = [Metric { name: "validate wall time, s", target: Some(Target::at_most(1.0)) }];

/// Generates a project of `manifests` jobs once, then times `repeats` runs of `validate` over it.
pub fn run(manifests: usize, repeats: u32) -> anyhow::Result<Sampled> {
    let scratch = Scratch::new("validate")?;
    let project = super::project::write(scratch.path(), manifests)?;
    let exe = std::env::current_exe().context("cannot find the orchestrator executable")?;
    let mut repeats_out = Vec::new();
    for _ in 0..repeats {
        let started = Instant::now();
        let output = Command::new(&exe)
            .arg("validate")
            .arg("--jobs")
            .arg(&project.jobs)
            .arg("--prompts")
            .arg(&project.prompts)
            .stdin(Stdio::null())
            .output()
            .context("cannot start `orchestrator validate`")?;
        let elapsed = started.elapsed().as_secs_f64();
        let stdout = String::from_utf8_lossy(&output.stdout);
        ensure!(output.status.success(), "validate failed ({}): {}", output.status, stdout.trim());
        ensure!(stdout.contains(&format!("{manifests} manifests checked")), "unexpected summary: {}", stdout.trim());
        repeats_out.push(vec![elapsed]);
    }
    let setup = format!("{manifests} generated manifests, each with a system and a prompt template");
    Ok(Sampled::new("validate", setup, &METRICS, &repeats_out))
}
