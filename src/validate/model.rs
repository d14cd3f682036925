//! Checks of provider, model, output limits, betas, sampling, params and cache.

use crate::catalog::{Catalog, Model, Provider};
use crate::diagnostics::{Code, Diagnostic};
use crate::manifest::{Lane, Parsed};
use crate::suggest;

/// What a provider's API lets `params` carry, and which manifest fields mean something for it.
#[derive(Debug, Clone, Copy)]
pub struct ProviderRules {
    /// The API the requests go to, for messages.
    pub api: &'static str,
    /// Parameters `params` may pass through.
    pub params: &'static [&'static str],
    /// Parameters the manifest or the orchestrator sets, with what to do instead.
    pub owned: &'static [(&'static str, &'static str)],
    /// Whether `cache:` breakpoints mean something.
    pub cache: bool,
    /// Whether `betas:` mean something.
    pub betas: bool,
    /// The highest `temperature` the API accepts (the lowest is 0).
    pub max_temperature: f64,
    /// Other providers' names for parameters this API spells differently,
    /// with this API's name: a job moved between providers gets told.
    pub renamed: &'static [(&'static str, &'static str)],
}

/// Anthropic Messages API.
pub const ANTHROPIC: ProviderRules = ProviderRules {
    api: "Messages API",
    params: &[
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
    ],
    owned: &[
        ("model", "set `model:` at the top level of the manifest"),
        ("max_tokens", "set `max_tokens:` at the top level of the manifest"),
        ("temperature", "set `temperature:` at the top level of the manifest"),
        ("system", "set `system:` at the top level of the manifest"),
        ("messages", "write the message in the `prompt:` template"),
        ("cache_control", "use the manifest's `cache:` section"),
        ("stream", "remove it: the batch lane does not allow streaming and results are collected whole"),
    ],
    cache: true,
    betas: true,
    max_temperature: 1.0,
    renamed: &[("stop", "stop_sequences"), ("reasoning_effort", "thinking"), ("response_format", "output_config")],
};

/// OpenAI Chat Completions API.
pub const OPENAI: ProviderRules = ProviderRules {
    api: "Chat Completions API",
    params: &[
        "response_format",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "seed",
        "top_p",
        "stop",
        "reasoning_effort",
        "verbosity",
        "metadata",
        "frequency_penalty",
        "presence_penalty",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "user",
        "service_tier",
    ],
    owned: &[
        ("model", "set `model:` at the top level of the manifest"),
        ("max_completion_tokens", "set `max_tokens:` at the top level (it is sent as `max_completion_tokens`)"),
        ("max_tokens", "set `max_tokens:` at the top level (it is sent as `max_completion_tokens`)"),
        ("temperature", "set `temperature:` at the top level of the manifest"),
        ("messages", "write the message in the `prompt:` template and the system message in `system:`"),
        ("n", "remove it: each request gets one answer"),
        ("stream", "remove it: the batch lane does not allow streaming and results are collected whole"),
    ],
    cache: false,
    betas: false,
    max_temperature: 2.0,
    renamed: &[("stop_sequences", "stop"), ("thinking", "reasoning_effort"), ("output_config", "response_format")],
};

/// Gemini `generateContent`: `generationConfig` fields in `params` go into
/// `generationConfig`, the others (`safetySettings`, `tools`, `toolConfig`)
/// beside it.
pub const GEMINI: ProviderRules = ProviderRules {
    api: "Gemini API",
    params: &[
        "responseMimeType",
        "responseSchema",
        "responseJsonSchema",
        "topP",
        "topK",
        "stopSequences",
        "thinkingConfig",
        "candidateCount",
        "presencePenalty",
        "frequencyPenalty",
        "seed",
        "safetySettings",
        "tools",
        "toolConfig",
        "labels",
    ],
    owned: &[
        ("model", "set `model:` at the top level of the manifest"),
        ("maxOutputTokens", "set `max_tokens:` at the top level (it is sent as `generationConfig.maxOutputTokens`)"),
        ("max_tokens", "set `max_tokens:` at the top level (it is sent as `generationConfig.maxOutputTokens`)"),
        ("temperature", "set `temperature:` at the top level of the manifest"),
        ("contents", "write the message in the `prompt:` template"),
        ("systemInstruction", "write the system prompt in `system:`"),
        ("generationConfig", "write its fields (`topP`, `responseMimeType`, ...) directly under `params:`"),
        ("cachedContent", "remove it: cached contents are not managed by orchestrator"),
    ],
    cache: false,
    betas: false,
    max_temperature: 2.0,
    renamed: &[
        ("stop_sequences", "stopSequences"),
        ("stop", "stopSequences"),
        ("top_p", "topP"),
        ("top_k", "topK"),
        ("thinking", "thinkingConfig"),
        ("reasoning_effort", "thinkingConfig"),
        ("response_format", "responseMimeType"),
        ("tool_choice", "toolConfig"),
    ],
};

/// The `params` names Gemini takes inside `generationConfig`.
pub const GEMINI_GENERATION_CONFIG: &[&str] = &[
    "responseMimeType",
    "responseSchema",
    "responseJsonSchema",
    "topP",
    "topK",
    "stopSequences",
    "thinkingConfig",
    "candidateCount",
    "presencePenalty",
    "frequencyPenalty",
    "seed",
];

/// The rules of provider `name`, if it is one we speak.
pub fn rules(name: &str) -> Option<ProviderRules> {
    match name {
        crate::providers::anthropic::NAME => Some(ANTHROPIC),
        crate::providers::openai::NAME => Some(OPENAI),
        crate::providers::gemini::NAME => Some(GEMINI),
        _ => None,
    }
}

pub(super) fn check(job: &Parsed, catalog: &Catalog, out: &mut Vec<Diagnostic>) {
    if let Some(rules) = rules(&job.manifest.provider) {
        check_temperature(job, rules, out);
        check_params(job, rules, out);
        check_fields_for_provider(job, rules, out);
        if rules.cache {
            check_cache(job, out);
        }
    }
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
    check_failover(job, catalog, out);
}

/// Each `failover` model is on another provider, and the job's params
/// translate to its API (those that do not are dropped on failover).
fn check_failover(job: &Parsed, catalog: &Catalog, out: &mut Vec<Diagnostic>) {
    let manifest = &job.manifest;
    for (i, name) in manifest.failover.iter().enumerate() {
        let path = format!("failover.{i}");
        let target = match catalog.model_elsewhere(name, &manifest.provider) {
            Ok(Some((provider, _))) => provider,
            Ok(None) => {
                let message = match catalog.model(&manifest.provider, name) {
                    Some(_) => format!("failover model `{name}` is on the job's own provider `{}`", manifest.provider),
                    None => format!("unknown failover model `{name}`"),
                };
                let names: Vec<&str> = catalog
                    .providers
                    .keys()
                    .filter(|p| **p != manifest.provider)
                    .flat_map(|p| catalog.model_names(p))
                    .collect();
                let help = suggest::did_you_mean(name, names.iter().copied()).unwrap_or_else(|| {
                    "name a model of another provider, e.g. `gpt-4o-mini` or `gemini-2.5-flash`".into()
                });
                out.push(job.at_value(Code::UnknownFailover, &path, message).help(help));
                continue;
            }
            Err(providers) => {
                out.push(
                    job.at_value(
                        Code::UnknownFailover,
                        &path,
                        format!("failover model `{name}` is on several providers"),
                    )
                    .help(format!("it is on {}: use a model id only one provider has", providers.join(", "))),
                );
                continue;
            }
        };
        if !crate::providers::key_configured(target) {
            let (envs, credential) = crate::providers::key_sources(target).unwrap_or((&[], ""));
            out.push(
                job.at_value(
                    Code::FailoverKeyMissing,
                    &path,
                    format!("no key for `{target}` here: failover to `{name}` cannot happen while it is missing"),
                )
                .help(format!(
                    "set {} or the credential `{credential}` where serve runs (serve --simulate needs none)",
                    envs.join(" or ")
                )),
            );
        }
        for param in manifest.params.keys() {
            if crate::render::translated_param(&manifest.provider, target, param).is_none() {
                out.push(
                    job.at_key(
                        Code::ParamLostInFailover,
                        &format!("params.{param}"),
                        format!("`params.{param}` has no equivalent on `{target}`: failover to `{name}` sends the request without it"),
                    )
                    .help(format!("remove `{name}` from `failover`, or accept that its answers are made without `{param}`")),
                );
            }
        }
    }
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
    if rules(&job.manifest.provider).is_some_and(|rules| !rules.betas) {
        return;
    }
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

fn check_temperature(job: &Parsed, rules: ProviderRules, out: &mut Vec<Diagnostic>) {
    let max = rules.max_temperature;
    if let Some(temperature) = job.manifest.temperature.filter(|t| !(0.0..=max).contains(t)) {
        out.push(
            job.at_value(
                Code::TemperatureOutOfRange,
                "temperature",
                format!("temperature {temperature} is outside 0 to {max} (the {})", rules.api),
            )
            .help(format!("write a number from 0 to {max}, e.g. `0.2`")),
        );
    }
}

fn check_params(job: &Parsed, rules: ProviderRules, out: &mut Vec<Diagnostic>) {
    for name in job.manifest.params.keys() {
        let path = format!("params.{name}");
        if let Some((_, help)) = rules.owned.iter().find(|(owned, _)| owned == name) {
            out.push(
                job.at_key(Code::ParamNotAllowed, &path, format!("`params.{name}` is not allowed here")).help(*help),
            );
        } else if !rules.params.contains(&name.as_str()) {
            let renamed = rules.renamed.iter().find(|(other, _)| other == name);
            let help = renamed
                .map(|(_, ours)| format!("the {} calls it `{ours}`: write `params.{ours}`", rules.api))
                .or_else(|| suggest::did_you_mean(name, rules.params.iter().copied()))
                .unwrap_or_else(|| format!("known parameters: {}", rules.params.join(", ")));
            out.push(
                job.at_key(Code::UnknownParam, &path, format!("unknown {} parameter `{name}`", rules.api)).help(help),
            );
        }
    }
}

/// `cache:` and `betas:` are Anthropic's: for a provider without them they
/// would be silently dropped, so they are errors that say what to do.
fn check_fields_for_provider(job: &Parsed, rules: ProviderRules, out: &mut Vec<Diagnostic>) {
    let provider = &job.manifest.provider;
    if !rules.cache && job.manifest.cache.is_some() {
        out.push(
            job.at_key(Code::NotForProvider, "cache", format!("`cache:` means nothing for provider `{provider}`"))
                .help(format!("remove `cache:`: `{provider}` caches repeated prompt prefixes on its own, and bills cached input at its lower rate")),
        );
    }
    if !rules.betas && !job.manifest.betas.is_empty() {
        out.push(
            job.at_key(Code::NotForProvider, "betas", format!("`betas:` means nothing for provider `{provider}`"))
                .help("remove `betas:` (they are Anthropic beta headers)"),
        );
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
