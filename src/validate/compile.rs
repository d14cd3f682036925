//! The last phase: a manifest without errors becomes a [`Job`], once.
//!
//! Everything here was checked by the phases before (with diagnostics that
//! point into the file); a value that still does not compile means the
//! checks and the compiler disagree, which is a bug, not a user error: the
//! job is then left out, and a test keeps every example job compiling.

use std::path::Path;

use crate::catalog::Catalog;
use crate::job::{Job, QueuePolicy, Templates};
use crate::manifest::{Parsed, default_deadline, parse_duration};
use crate::schedule::Schedule;
use crate::templates;

/// The compiled job of `parsed`, or `None` when a part does not compile
/// (logged: `validate` reported no error for it).
pub(super) fn compile(parsed: &Parsed, prompts_dir: &Path, catalog: &Catalog) -> Option<Job> {
    let compiled = try_compile(parsed, prompts_dir, catalog);
    if let Err(reason) = &compiled {
        tracing::error!(job = %parsed.name, %reason, "a job without reported errors did not compile; it is left out");
    }
    compiled.ok()
}

fn try_compile(parsed: &Parsed, prompts_dir: &Path, catalog: &Catalog) -> Result<Job, String> {
    let manifest = &parsed.manifest;
    let schedule = match (&manifest.schedule, manifest.items.as_ref().and_then(|items| items.from.as_deref())) {
        (Some(schedule), _) => Schedule::parse(&schedule.cron, &schedule.timezone)?,
        (None, Some(upstream)) => Schedule::after(upstream),
        (None, None) if manifest.enqueue.is_some() => Schedule::on_demand(),
        (None, None) => return Err("no schedule, no upstream job to fire after, and no queue".to_owned()),
    };
    let queue = manifest
        .enqueue
        .as_ref()
        .map(|rules| {
            let max_wait = parse_duration(&rules.max_wait)?;
            Ok::<_, String>(QueuePolicy { max_items: rules.max_items.max(1) as usize, max_wait })
        })
        .transpose()?;
    let deadline = match manifest.deadline.as_deref() {
        Some(text) => parse_duration(text)?,
        None => default_deadline(manifest.tier),
    };
    let resolve = |name: &str| {
        catalog
            .model(&manifest.provider, name)
            .map(|(id, _)| id.to_owned())
            .ok_or_else(|| format!("model `{name}` of provider `{}` is not in the catalog", manifest.provider))
    };
    let model_id = resolve(&manifest.model)?;
    let batch_model_id = manifest.batch_model.as_deref().map(resolve).transpose()?;
    let failover = manifest
        .failover
        .iter()
        .map(|name| match catalog.model_elsewhere(name, &manifest.provider) {
            Ok(Some((provider, id))) => Ok((provider.to_owned(), id.to_owned())),
            _ => Err(format!("failover model `{name}` is not on exactly one other provider")),
        })
        .collect::<Result<Vec<_>, String>>()?;
    let load = |field: &str, source| {
        templates::load(source, prompts_dir, &format!("{}:{field}", parsed.file)).map_err(|e| e.to_string())
    };
    let system = manifest.system.as_ref().map(|source| load("system", source)).transpose()?;
    let prompt = load("prompt", &manifest.prompt)?;
    Ok(Job {
        name: parsed.name.clone(),
        file: parsed.file.clone(),
        manifest: manifest.clone(),
        schedule,
        deadline,
        model_id,
        batch_model_id,
        failover,
        templates: Templates { system, prompt },
        queue,
    })
}

/// The compiled job of a manifest given as text (inline templates, the
/// built-in catalog), for unit tests elsewhere.
#[cfg(test)]
pub(crate) fn test_job(name: &str, source: &str) -> Job {
    let file = format!("jobs/{name}.yaml");
    let (manifest, spans) = crate::manifest::parse_manifest(&file, source).expect("the test manifest parses");
    let parsed = Parsed { name: name.to_owned(), file, source: source.to_owned(), manifest, spans };
    try_compile(&parsed, Path::new("prompts"), &Catalog::builtin()).expect("the test manifest compiles")
}
