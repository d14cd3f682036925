//! `orchestrator schema`.

use crate::manifest::Manifest;

/// The JSON Schema of job manifests, as committed in `schemas/job.schema.json`.
pub(super) fn job_schema() -> String {
    let schema = schemars::schema_for!(Manifest);
    let mut text = serde_json::to_string_pretty(&schema).expect("a schema serializes");
    text.push('\n');
    text
}

pub(super) fn run() -> anyhow::Result<u8> {
    print!("{}", job_schema());
    Ok(0)
}
