//! From a job and its items to provider request bodies.
//!
//! The same code renders for `orchestrator render` and for real runs, so
//! what an author previews is what is sent and paid for.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use minijinja::Environment;
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::job::Job;
use crate::sources::Item;
use crate::templates::{self, TemplateText};

/// Why a request could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// A template failed to compile or render.
    #[error("template {name}: {source}")]
    Template {
        /// Template name (file path or `<job>:<field>`).
        name: String,
        /// minijinja's error, with line.
        #[source]
        source: minijinja::Error,
    },
}

/// One run's identity as templates and custom_ids see it.
#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    /// `<job>-<YYYYMMDDTHHMM>` in the job's time zone: unique per run. The
    /// seconds follow the minutes when the instant is not on a whole minute
    /// (`T063015`), and a `B` marks the second pass of a local time that
    /// occurs twice (the repeated hour when clocks go back: `T0200B`).
    pub id: String,
    /// Scheduled date in the job's time zone, `YYYY-MM-DD`.
    pub date: String,
    /// Scheduled instant, RFC 3339 with the job's UTC offset.
    pub scheduled_for: String,
    /// Prefix of every custom_id of the run, without the sequence number.
    #[serde(skip)]
    pub custom_id_prefix: String,
}

impl RunInfo {
    /// The run of `job` scheduled for `scheduled_for`.
    pub fn new(job: &Job, scheduled_for: DateTime<Utc>) -> RunInfo {
        let tz = job.schedule.timezone;
        let local = scheduled_for.with_timezone(&tz);
        let stamp = stamp(tz, scheduled_for);
        let date = local.format("%Y-%m-%d").to_string();
        let many = job.schedule.fires_more_than_once_on_the_day_of(scheduled_for);
        let custom_id_prefix = if many { format!("{}-{stamp}", job.name) } else { format!("{}-{date}", job.name) };
        RunInfo { id: format!("{}-{stamp}", job.name), date, scheduled_for: local.to_rfc3339(), custom_id_prefix }
    }

    /// The same run with `<job>-<YYYYMMDDTHHMM>-<seq>` ids, for a run whose
    /// date-form ids are taken by another run of the same day (a manual run).
    pub fn with_timestamped_ids(mut self) -> RunInfo {
        self.custom_id_prefix = self.id.clone();
        self
    }

    /// The custom_id of the run's `seq`-th request (1-based): `<job>-<YYYY-MM-DD>-<seq>`,
    /// or `<job>-<YYYYMMDDTHHMM>-<seq>` for jobs firing more than once a day.
    pub fn custom_id(&self, seq: usize) -> String {
        format!("{}-{seq:03}", self.custom_id_prefix)
    }
}

/// `YYYYMMDDTHHMM` of `instant` in `tz`, with the seconds when they are
/// not zero, and `B` when the local time occurs twice and this is its second
/// pass (as German time signals called the repeated hour "2B"): every instant
/// gets its own stamp, and stamps of stored runs keep their form.
fn stamp(tz: Tz, instant: DateTime<Utc>) -> String {
    use chrono::{TimeZone, Timelike};
    let local = instant.with_timezone(&tz);
    let mut stamp = local.format("%Y%m%dT%H%M").to_string();
    if local.second() != 0 || instant.timestamp_subsec_nanos() != 0 {
        stamp.push_str(&local.format("%S").to_string());
    }
    if instant.timestamp_subsec_millis() != 0 {
        stamp.push_str(&local.format("%3f").to_string());
    }
    if let chrono::LocalResult::Ambiguous(_, second) = tz.from_local_datetime(&local.naive_local())
        && second == local
    {
        stamp.push('B');
    }
    stamp
}

/// One entry of a batch: the `custom_id` and the Messages API `params`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BatchRequest {
    /// `<job>-<YYYY-MM-DD>-<seq>`.
    pub custom_id: String,
    /// The Messages API body.
    pub params: Value,
}

/// A job's templates, compiled once, and the fixed parts of its requests.
pub struct Renderer<'job> {
    job: &'job Job,
    env: Environment<'static>,
    has_system: bool,
    model_id: String,
    /// The provider whose API the requests are for (another one on failover).
    provider: String,
    /// The context's `vars` and `job`, the same for every request: converted
    /// to template values once, not once per template per request.
    vars: minijinja::Value,
    job_info: minijinja::Value,
}

/// Request parameters that mean the same on every provider, by provider:
/// `(anthropic, openai, gemini)`. Only these survive a failover; the values
/// have the same shape under each name.
const EQUIVALENT_PARAMS: &[(Option<&str>, Option<&str>, Option<&str>)] = &[
    (Some("stop_sequences"), Some("stop"), Some("stopSequences")),
    (Some("top_p"), Some("top_p"), Some("topP")),
    (Some("top_k"), None, Some("topK")),
    (None, Some("seed"), Some("seed")),
    (None, Some("presence_penalty"), Some("presencePenalty")),
    (None, Some("frequency_penalty"), Some("frequencyPenalty")),
];

/// The name `params.{name}` of a `from` job has on provider `to`, if any.
pub fn translated_param(from: &str, to: &str, name: &str) -> Option<&'static str> {
    let pick = |provider: &str, row: &(Option<&'static str>, Option<&'static str>, Option<&'static str>)| match provider
    {
        crate::providers::openai::NAME => row.1,
        crate::providers::gemini::NAME => row.2,
        _ => row.0,
    };
    EQUIVALENT_PARAMS.iter().find(|row| pick(from, row) == Some(name)).and_then(|row| pick(to, row))
}

const SYSTEM: &str = "system";
const PROMPT: &str = "prompt";

impl<'job> Renderer<'job> {
    /// Compiles the job's templates (as loaded when the job was compiled),
    /// for requests to `model` (see [`Job::model_for`]).
    pub fn new(job: &'job Job, model_id: &str) -> Result<Renderer<'job>, RenderError> {
        let mut env = templates::environment();
        let mut add = |key: &'static str, text: &TemplateText| -> Result<(), RenderError> {
            env.add_template_owned(key, text.source.clone())
                .map_err(|source| RenderError::Template { name: text.name.clone(), source })
        };
        if let Some(system) = &job.templates.system {
            add(SYSTEM, system)?;
        }
        add(PROMPT, &job.templates.prompt)?;
        let provider = job.manifest.provider.clone();
        let vars = minijinja::Value::from(minijinja::value::Serde(&job.manifest.vars));
        let job_info =
            minijinja::Value::from(minijinja::value::Serde(json!({ "name": job.name, "tags": job.manifest.tags })));
        Ok(Renderer {
            job,
            env,
            has_system: job.templates.system.is_some(),
            model_id: model_id.to_owned(),
            provider,
            vars,
            job_info,
        })
    }

    /// Like [`Renderer::new`], for `model` on another `provider` (a
    /// failover): the same templates in that API's shape, with the params
    /// that have an equivalent there.
    pub fn for_provider(job: &'job Job, provider: &str, model_id: &str) -> Result<Renderer<'job>, RenderError> {
        let mut renderer = Renderer::new(job, model_id)?;
        renderer.provider = provider.to_owned();
        Ok(renderer)
    }

    /// Renders the request for the `seq`-th item (1-based) of `run`.
    pub fn request(&self, run: &RunInfo, seq: usize, item: &Item) -> Result<BatchRequest, RenderError> {
        let manifest = &self.job.manifest;
        let context = minijinja::context! {
            item => minijinja::Value::from(minijinja::value::Serde(item)),
            vars => self.vars.clone(),
            job => self.job_info.clone(),
            run => minijinja::Value::from(minijinja::value::Serde(run)),
        };
        let system = if self.has_system { Some(self.render(SYSTEM, &context)?) } else { None };
        let prompt = self.render(PROMPT, &context)?;
        let mut params = match self.provider.as_str() {
            crate::providers::openai::NAME => self.chat_completion(system, prompt),
            crate::providers::gemini::NAME => self.generate_content(system, prompt),
            _ => self.message(system, prompt),
        };
        for (name, value) in &manifest.params {
            let name = match self.provider == manifest.provider {
                true => name.as_str(),
                false => match translated_param(&manifest.provider, &self.provider, name) {
                    Some(translated) => translated,
                    None => continue,
                },
            };
            let name = &name.to_owned();
            let inside = self.provider == crate::providers::gemini::NAME
                && crate::validate::GEMINI_GENERATION_CONFIG.contains(&name.as_str());
            match params.get_mut("generationConfig").and_then(Value::as_object_mut) {
                Some(config) if inside => config.insert(name.clone(), value.clone()),
                _ => params.insert(name.clone(), value.clone()),
            };
        }
        if self.provider == crate::providers::anthropic::NAME {
            self.mark_cached_tools(&mut params);
        }
        Ok(BatchRequest { custom_id: run.custom_id(seq), params: Value::Object(params) })
    }

    /// An Anthropic Messages body: `system` apart, with its cache breakpoint.
    fn message(&self, system: Option<String>, prompt: String) -> Map<String, Value> {
        let manifest = &self.job.manifest;
        let mut params = Map::new();
        params.insert("model".into(), json!(self.model_id));
        params.insert("max_tokens".into(), json!(manifest.max_tokens));
        if let Some(temperature) = manifest.temperature {
            params.insert("temperature".into(), json!(temperature));
        }
        if let Some(text) = system {
            params.insert("system".into(), self.system_value(text));
        }
        params.insert("messages".into(), json!([{ "role": "user", "content": prompt }]));
        params
    }

    /// An OpenAI Chat Completions body: the system prompt is the first
    /// message, `max_tokens` is `max_completion_tokens`.
    fn chat_completion(&self, system: Option<String>, prompt: String) -> Map<String, Value> {
        let manifest = &self.job.manifest;
        let mut params = Map::new();
        params.insert("model".into(), json!(self.model_id));
        params.insert("max_completion_tokens".into(), json!(manifest.max_tokens));
        if let Some(temperature) = manifest.temperature {
            params.insert("temperature".into(), json!(temperature));
        }
        let mut messages = Vec::new();
        if let Some(text) = system {
            messages.push(json!({ "role": "system", "content": text }));
        }
        messages.push(json!({ "role": "user", "content": prompt }));
        params.insert("messages".into(), Value::Array(messages));
        params
    }

    /// A Gemini `GenerateContentRequest`, with the model first (it goes in
    /// the URL: the client takes it off); `max_tokens` and `temperature` are
    /// `generationConfig` fields, the system prompt is `systemInstruction`.
    fn generate_content(&self, system: Option<String>, prompt: String) -> Map<String, Value> {
        let manifest = &self.job.manifest;
        let mut params = Map::new();
        params.insert("model".into(), json!(self.model_id));
        params.insert("contents".into(), json!([{ "role": "user", "parts": [{ "text": prompt }] }]));
        if let Some(text) = system {
            params.insert("systemInstruction".into(), json!({ "parts": [{ "text": text }] }));
        }
        let mut config = Map::new();
        config.insert("maxOutputTokens".into(), json!(manifest.max_tokens));
        if let Some(temperature) = manifest.temperature {
            config.insert("temperature".into(), json!(temperature));
        }
        params.insert("generationConfig".into(), Value::Object(config));
        params
    }

    fn render(&self, key: &str, context: &minijinja::Value) -> Result<String, RenderError> {
        let template =
            self.env.get_template(key).map_err(|source| RenderError::Template { name: key.to_owned(), source })?;
        template.render(context).map_err(|source| RenderError::Template { name: self.template_name(key), source })
    }

    fn template_name(&self, key: &str) -> String {
        let templates = &self.job.templates;
        let text = if key == SYSTEM { templates.system.as_ref() } else { Some(&templates.prompt) };
        text.map_or_else(|| format!("{}:{key}", self.job.file), |t| t.name.clone())
    }

    /// A plain string, or a text block with `cache_control` when the job caches its system prompt.
    fn system_value(&self, text: String) -> Value {
        match self.job.manifest.cache.as_ref().and_then(|c| c.system.as_deref()) {
            Some(ttl) => json!([{ "type": "text", "text": text, "cache_control": cache_control(ttl) }]),
            None => Value::String(text),
        }
    }

    fn mark_cached_tools(&self, params: &mut Map<String, Value>) {
        let Some(ttl) = self.job.manifest.cache.as_ref().and_then(|c| c.tools.as_deref()) else {
            return;
        };
        if let Some(Value::Object(last)) =
            params.get_mut("tools").and_then(Value::as_array_mut).and_then(|tools| tools.last_mut())
        {
            last.insert("cache_control".into(), cache_control(ttl));
        }
    }
}

/// The TTL is always written out: the 5-minute default is never used silently.
fn cache_control(ttl: &str) -> Value {
    json!({ "type": "ephemeral", "ttl": ttl })
}

/// Renders a templated path (`out/{{ run.date }}.jsonl`) for a run.
pub fn render_path(job: &Job, run: &RunInfo, text: &str) -> Result<String, RenderError> {
    if !text.contains("{{") && !text.contains("{%") {
        return Ok(text.to_owned());
    }
    let context = json!({ "job": { "name": job.name, "tags": job.manifest.tags }, "run": run });
    templates::render_str(&templates::environment(), text, text, context)
        .map_err(|source| RenderError::Template { name: text.to_owned(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
    }

    fn job(name: &str, cron: &str, zone: &str) -> Job {
        let source = format!(
            "schedule: {{ cron: '{cron}', timezone: {zone} }}\nmodel: claude-haiku-4-5\nmax_tokens: 100\nprompt: {{ inline: hi }}\n"
        );
        crate::validate::test_job(name, &source)
    }

    /// Every instant a cron yields across the DST changes of 2026, with its run id.
    fn ids_through(cron: &str, zone: &str, from: &str, to: &str) -> Vec<(DateTime<Utc>, String)> {
        let job = job("hourly", cron, zone);
        job.schedule
            .due_between(utc(from), utc(to), 10_000)
            .into_iter()
            .map(|at| (at, RunInfo::new(&job, at).custom_id(1)))
            .collect()
    }

    fn assert_distinct_and_valid(ids: &[(DateTime<Utc>, String)]) {
        let pattern =
            |id: &str| id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        let mut seen = std::collections::HashSet::new();
        for (at, id) in ids {
            assert!(pattern(id), "{id} fits the provider's custom_id pattern");
            assert!(seen.insert(id.clone()), "{id} (for {at}) is another instant's id too");
        }
    }

    #[test]
    fn every_instant_of_a_dst_change_gets_its_own_ids() {
        let days = [
            ("Europe/Berlin", "2026-10-24T22:00:00Z", "2026-10-25T23:00:00Z"),
            ("Europe/Berlin", "2026-03-28T23:00:00Z", "2026-03-29T22:00:00Z"),
            ("America/New_York", "2026-11-01T04:00:00Z", "2026-11-02T05:00:00Z"),
            ("America/New_York", "2026-03-08T05:00:00Z", "2026-03-09T04:00:00Z"),
        ];
        for cron in ["0 * * * *", "*/30 * * * *", "15 * * * *"] {
            for (zone, from, to) in days {
                let ids = ids_through(cron, zone, from, to);
                assert_distinct_and_valid(&ids);
                // A day of real time: 25, 23 or 24 hours of firings.
                let hours = (utc(to) - utc(from)).num_hours() as usize;
                let per_hour = if cron.starts_with("*/30") { 2 } else { 1 };
                assert_eq!(ids.len(), hours * per_hour, "{cron} in {zone} from {from}: {ids:?}");
            }
        }
        // Berlin, 2026-10-25: 02:00 CEST (00:00 UTC), then 02:00 CET (01:00 UTC).
        let hourly = ids_through("0 * * * *", "Europe/Berlin", "2026-10-24T23:30:00Z", "2026-10-25T01:30:00Z");
        let ids: Vec<&str> = hourly.iter().map(|(_, id)| id.as_str()).collect();
        assert_eq!(ids, ["hourly-20261025T0200-001", "hourly-20261025T0200B-001"]);
        // A daily 01:30 in New York fires once on the day 01:30 occurs twice.
        let daily = ids_through("30 1 * * *", "America/New_York", "2026-10-31T12:00:00Z", "2026-11-02T12:00:00Z");
        assert_eq!(daily.len(), 2, "{daily:?}");
        assert_distinct_and_valid(&daily);
        assert_eq!(daily[0], (utc("2026-11-01T05:30:00Z"), "hourly-2026-11-01-001".to_owned()));
    }

    #[test]
    fn an_instant_off_the_minute_keeps_its_seconds() {
        let job = job("feed", "0 6 * * *", "UTC");
        assert_eq!(RunInfo::new(&job, utc("2026-11-22T06:00:42Z")).id, "feed-20261122T060042");
        assert_eq!(RunInfo::new(&job, utc("2026-11-22T06:00:00Z")).id, "feed-20261122T0600");
        assert_eq!(RunInfo::new(&job, utc("2026-11-22T06:00:42.250Z")).id, "feed-20261122T060042250");
    }

    #[test]
    fn daily_jobs_get_dated_ids_and_frequent_jobs_timestamped_ids() {
        let fires_twice = |cron: &str, zone: &str, at: &str| {
            job("x", cron, zone).schedule.fires_more_than_once_on_the_day_of(utc(at))
        };
        assert!(!fires_twice("30 6 * * *", "Europe/Berlin", "2026-11-22T05:30:00Z"));
        assert!(fires_twice("0 */6 * * *", "UTC", "2026-11-22T06:00:00Z"));
        assert!(!fires_twice("0 2 * * 1", "UTC", "2026-11-23T02:00:00Z"));
        assert_eq!(
            RunInfo::new(&job("daily", "30 6 * * *", "Europe/Berlin"), utc("2026-11-22T05:30:00Z")).custom_id(7),
            "daily-2026-11-22-007"
        );
    }

    /// A failover renders the same templates in the other API's shape and
    /// keeps only the params that have an equivalent there, under its name.
    #[test]
    fn a_failover_renders_for_the_other_provider_with_translated_params() {
        let source = "schedule: { cron: '0 6 * * *' }\nmodel: claude-haiku-4-5\nmax_tokens: 50\ntemperature: 0.5\n\
                      system: { inline: 'Be brief.' }\nprompt: { inline: 'Label {{ item.text }}' }\n\
                      params: { stop_sequences: ['END'], top_k: 5, thinking: { type: disabled } }\n\
                      failover: [gpt-4o-mini, gemini-2.5-flash]\n";
        let job = crate::validate::test_job("moved", source);
        let info = RunInfo::new(&job, utc("2026-11-22T06:00:00Z"));
        let item: Item = serde_json::from_str(r#"{"text": "a cat"}"#).unwrap();
        let openai = Renderer::for_provider(&job, "openai", "gpt-4o-mini").unwrap().request(&info, 1, &item).unwrap();
        assert_eq!(
            openai.params,
            json!({"model": "gpt-4o-mini", "max_completion_tokens": 50, "temperature": 0.5,
                   "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Label a cat"}],
                   "stop": ["END"]}),
            "top_k and thinking have no OpenAI equivalent"
        );
        let gemini =
            Renderer::for_provider(&job, "gemini", "gemini-2.5-flash").unwrap().request(&info, 1, &item).unwrap();
        assert_eq!(
            gemini.params["generationConfig"],
            json!({"maxOutputTokens": 50, "temperature": 0.5, "stopSequences": ["END"], "topK": 5})
        );
        assert_eq!(gemini.params["systemInstruction"], json!({"parts": [{"text": "Be brief."}]}));
        assert!(gemini.params.get("thinking").is_none());
        let own = Renderer::new(&job, &job.model_id).unwrap().request(&info, 1, &item).unwrap();
        assert_eq!(own.params["top_k"], 5, "the job's own provider gets its params untouched");
        assert_eq!(own.custom_id, openai.custom_id, "the same custom_id on every provider");
    }
}
