//! Checks of provider, model, output limits, betas, sampling, params and cache.

use crate::catalog::{Catalog, Model, Provider};
use crate::diagnostics::{Code, Diagnostic};
use crate::manifest::{Lane, Parsed};
use crate::suggest;

/// Messages API parameters `params` may pass through.
pub const PASS_THROUGH_PARAMS: &[&str] = &[
    "thinking",
    "stop_sequences",
    "top_p",
    "top_k",
    "tools",
    "tool_choice",
    "metadata",
    "service_tier",
    "container",
    "inference_geo",
    "output_config",
];

/// Parameters the manifest or the orchestrator sets, with what to do instead.
const OWNED_PARAMS: &[(&str, &str)] = &[
    ("model", "set `model:` at the top level of the manifest"),
    ("max_tokens", "set `max_tokens:` at the top level of the manifest"),
    ("temperature", "set `temperature:` at the top level of the manifest"),
    ("system", "set `system:` at the top level of the manifest"),
    ("messages", "write the message in the `prompt:` template"),
    ("cache_control", "use the manifest's `cache:` section"),
    ("stream", "remove it: the batch lane does not allow streaming and results are collected whole"),
];

pub(super) fn check(job: &Parsed, catalog: &Catalog, out: &mut Vec<Diagnostic>) {
    check_temperature(job, out);
    check_params(job, out);
    check_cache(job, out);
    let manifest = &job.manifest;
    let Some(provider) = catalog.providers.get(&manifest.provider) else {
        let help = suggest::did_you_mean(&manifest.provider, catalog.providers.keys().map(String::as_str))
            .unwrap_or_else(|| {
                format!("known providers: {}", catalog.providers.keys().cloned().collect::<Vec<_>>().join(", "))
            });
        out.push(
            job.at_value(Code::UnknownProvider, "provider", format!("unknown provider `{}`", manifest.provider))
                .help(help),
        );
        return;
    };
    let Some((model_id, model)) = catalog.model(&manifest.provider, &manifest.model) else {
        let help = suggest::did_you_mean(&manifest.model, catalog.model_names(&manifest.provider))
            .unwrap_or_else(|| "see catalog/models.yaml for the models and aliases".to_owned());
        out.push(
            job.at_value(
                Code::UnknownModel,
                "model",
                format!("unknown model `{}` for provider `{}`", manifest.model, manifest.provider),
            )
            .help(help),
        );
        check_betas(job, provider, out);
        return;
    };
    let lane = manifest.tier.lane();
    if lane == Lane::Batch && !model.batch {
        out.push(
            job.at_value(
                Code::NoBatchSupport,
                "model",
                format!(
                    "model `{model_id}` has no batch support, but tier `{}` routes to the batch lane",
                    manifest.tier.as_str()
                ),
            )
            .help("use a model with batch support, or `tier: realtime`"),
        );
    }
    check_max_tokens(job, provider, model_id, model, out);
    check_betas(job, provider, out);
    check_batch_model(job, catalog, out);
}

/// `batch_model` must be a known model the batch API accepts.
fn check_batch_model(job: &Parsed, catalog: &Catalog, out: &mut Vec<Diagnostic>) {
    let manifest = &job.manifest;
    let Some(name) = manifest.batch_model.as_deref() else {
        return;
    };
    match catalog.model(&manifest.provider, name) {
        None => {
            let help = suggest::did_you_mean(name, catalog.model_names(&manifest.provider))
                .unwrap_or_else(|| "see catalog/models.yaml for the models and aliases".to_owned());
            out.push(
                job.at_value(
                    Code::UnknownModel,
                    "batch_model",
                    format!("unknown batch_model `{name}` for provider `{}`", manifest.provider),
                )
                .help(help),
            );
        }
        Some((id, model)) if !model.batch => out.push(
            job.at_value(Code::NoBatchSupport, "batch_model", format!("batch_model `{id}` has no batch support"))
                .help("pick a model with batch support, or remove `batch_model`"),
        ),
        Some(_) => {}
    }
}

fn check_max_tokens(job: &Parsed, provider: &Provider, model_id: &str, model: &Model, out: &mut Vec<Diagnostic>) {
    let manifest = &job.manifest;
    let lane = manifest.tier.lane();
    let limit = provider.max_output_tokens(model_id, model, lane, &manifest.betas);
    if manifest.max_tokens < 1 || manifest.max_tokens > i64::from(limit) {
        out.push(
            job.at_value(
                Code::MaxTokensOutOfRange,
                "max_tokens",
                format!(
                    "max_tokens {} is outside 1..={limit} for `{model_id}` in the {} lane",
                    manifest.max_tokens,
                    lane.as_str()
                ),
            )
            .help(format!("write a value from 1 to {limit}")),
        );
        return;
    }
    let sync_limit = provider.max_output_tokens(model_id, model, Lane::Sync, &manifest.betas);
    if lane == Lane::Batch && manifest.max_tokens > i64::from(sync_limit) {
        out.push(
            job.at_value(Code::MaxTokensOverSyncLimit, "max_tokens", format!("max_tokens {} is above the sync lane's limit of {sync_limit}: a fallback cannot re-run these requests", manifest.max_tokens))
                .help("allow for late batches: give the job a deadline well inside the batch expiry, or lower max_tokens"),
        );
    }
}

fn check_betas(job: &Parsed, provider: &Provider, out: &mut Vec<Diagnostic>) {
    let lane = job.manifest.tier.lane();
    for (i, name) in job.manifest.betas.iter().enumerate() {
        let path = format!("betas.{i}");
        match provider.betas.get(name) {
            None => {
                let help = suggest::did_you_mean(name, provider.betas.keys().map(String::as_str))
                    .unwrap_or_else(|| "it is sent as given; add it to the catalog to have it checked".to_owned());
                out.push(
                    job.at_value(Code::UnknownBeta, &path, format!("beta `{name}` is not in the catalog")).help(help),
                );
            }
            Some(beta) if !beta.lanes.contains(&lane) => {
                let allowed: Vec<_> = beta.lanes.iter().map(|lane| lane.as_str()).collect();
                out.push(
                    job.at_value(
                        Code::BetaNotAllowed,
                        &path,
                        format!(
                            "beta `{name}` is not allowed in the {} lane that tier `{}` routes to",
                            lane.as_str(),
                            job.manifest.tier.as_str()
                        ),
                    )
                    .help(format!("it is allowed in: {}; change the tier or remove the beta", allowed.join(", "))),
                );
            }
            Some(_) => {}
        }
    }
}

fn check_temperature(job: &Parsed, out: &mut Vec<Diagnostic>) {
    if let Some(temperature) = job.manifest.temperature.filter(|t| !(0.0..=1.0).contains(t)) {
        out.push(
            job.at_value(
                Code::TemperatureOutOfRange,
                "temperature",
                format!("temperature {temperature} is outside 0 to 1"),
            )
            .help("write a number from 0 to 1, e.g. `0.2`"),
        );
    }
}

fn check_params(job: &Parsed, out: &mut Vec<Diagnostic>) {
    for name in job.manifest.params.keys() {
        let path = format!("params.{name}");
        if let Some((_, help)) = OWNED_PARAMS.iter().find(|(owned, _)| owned == name) {
            out.push(
                job.at_key(Code::ParamNotAllowed, &path, format!("`params.{name}` is not allowed here")).help(*help),
            );
        } else if !PASS_THROUGH_PARAMS.contains(&name.as_str()) {
            let help = suggest::did_you_mean(name, PASS_THROUGH_PARAMS.iter().copied())
                .unwrap_or_else(|| format!("known parameters: {}", PASS_THROUGH_PARAMS.join(", ")));
            out.push(
                job.at_key(Code::UnknownParam, &path, format!("unknown Messages API parameter `{name}`")).help(help),
            );
        }
    }
}

fn check_cache(job: &Parsed, out: &mut Vec<Diagnostic>) {
    let Some(cache) = &job.manifest.cache else {
        return;
    };
    let targets = [
        ("system", cache.system.as_deref(), job.manifest.system.is_some()),
        ("tools", cache.tools.as_deref(), job.manifest.params.contains_key("tools")),
    ];
    for (block, ttl, present) in targets {
        let Some(ttl) = ttl else { continue };
        let path = format!("cache.{block}");
        match ttl {
            "1h" => {}
            "5m" if job.manifest.tier.lane() == Lane::Batch => out.push(
                job.at_value(
                    Code::ShortCacheOnBatch,
                    &path,
                    "a 5m cache expires long before a batch runs, so every request pays for the cache write",
                )
                .help("use `1h` on batch-lane jobs"),
            ),
            "5m" => {}
            other => out.push(
                job.at_value(Code::InvalidCacheTtl, &path, format!("invalid cache TTL `{other}`"))
                    .help("write `5m` or `1h`"),
            ),
        }
        if !present {
            let what = if block == "system" { "`system:` prompt" } else { "`params.tools`" };
            out.push(
                job.at_key(
                    Code::CacheWithoutTarget,
                    &path,
                    format!("`cache.{block}` is set but the job has no {what}"),
                )
                .help(format!("add a {what} or remove `cache.{block}`")),
            );
        }
    }
}
