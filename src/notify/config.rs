//! The `notify:` section of the daemon configuration.
//!
//! ```yaml
//! notify:
//!   webhooks:
//!     - url_env: SLACK_WEBHOOK_URL   # or `url:`, or `url_credential:` (systemd); the URL is a secret
//!       format: slack                # `slack` ({"text"}) or `json` (text plus the alert, default)
//!   command: [/usr/local/bin/page-oncall, --team, ops]   # the alert as JSON on stdin
//!   events:
//!     run_late: true
//!     run_failed: true         # also a run that could not start at all
//!     delivery_failing: true   # a run's sink failing for 5 minutes
//!     errored_per_day: 5       # more than this many errored requests in a UTC day
//!     budget: true             # a budget crossed, or about to be (budget_warn_at of it spent)
//!     budget_warn_at: 0.9
//!     fallback: false          # opt-in: every sync fallback that fires
//!     failover: true           # a run's requests moved to another provider
//!     batch_submit_failing: true
//!     takeover: true           # a process took the lead from one that never stopped cleanly
//!   retries: 5                 # after the first try, with doubling waits from retry_backoff
//!   retry_backoff: 2s
//!   timeout: 10s
//!   digest:                    # optional: yesterday's runs, spend and savings, once a day
//!     at: "08:00"
//!     timezone: Europe/Berlin
//! ```

use std::time::Duration;

use chrono::NaiveTime;
use chrono_tz::Tz;
use serde::Deserialize;

use crate::manifest::parse_duration;

/// The section as written.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    /// Webhooks that receive every alert.
    pub webhooks: Vec<WebhookConfig>,
    /// A command run for every alert (program and arguments; no shell).
    pub command: Option<Vec<String>>,
    /// Which events alert.
    pub events: EventRules,
    /// Retries after the first try.
    pub retries: Option<u32>,
    /// First wait between tries, e.g. `2s`; it doubles.
    pub retry_backoff: Option<String>,
    /// Longest wait for one try, e.g. `10s`.
    pub timeout: Option<String>,
    /// How often to look for new events, e.g. `10s`.
    pub check_every: Option<String>,
    /// The daily digest.
    pub digest: Option<DigestConfig>,
}

/// One webhook.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// The URL (prefer `url_env`: webhook URLs carry their own secret).
    pub url: Option<String>,
    /// The environment variable holding the URL.
    pub url_env: Option<String>,
    /// The systemd credential (a file in `$CREDENTIALS_DIRECTORY`) holding the URL.
    pub url_credential: Option<String>,
    /// The body's shape.
    pub format: BodyFormat,
}

/// The shape of a webhook's JSON body.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BodyFormat {
    /// `{"text": ...}`, what Slack and most chat webhooks take.
    Slack,
    /// `{"text": ..., "alert": {...}}`: Slack-compatible, with every field for machines.
    #[default]
    Json,
}

/// Which events alert.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventRules {
    /// A run that missed its deadline.
    pub run_late: bool,
    /// A run that failed, or whose run could not start at all.
    pub run_failed: bool,
    /// A run whose delivery has been failing for [`DELIVERY_FAILING_AFTER`].
    pub delivery_failing: bool,
    /// Alert when a UTC day has more errored requests than this (null: never).
    pub errored_per_day: Option<u64>,
    /// Budgets crossed or about to be.
    pub budget: bool,
    /// The share of a budget spent that counts as "about to cross".
    pub budget_warn_at: f64,
    /// Every sync fallback that fires (opt-in: the fallback is normal operation).
    pub fallback: bool,
    /// A run failing over to another provider (its own provider is down).
    pub failover: bool,
    /// Batch create calls failing.
    pub batch_submit_failing: bool,
    /// A process took the lead of the state from one that did not stop
    /// cleanly (a crash, `kill -9`, a dead machine; a restart after one too).
    pub takeover: bool,
}

impl Default for EventRules {
    fn default() -> Self {
        EventRules {
            run_late: true,
            run_failed: true,
            delivery_failing: true,
            errored_per_day: Some(5),
            budget: true,
            budget_warn_at: 0.9,
            fallback: false,
            failover: true,
            batch_submit_failing: true,
            takeover: true,
        }
    }
}

/// How long a run's delivery must have been failing before it alerts: a
/// sink that hiccups once is retried quietly.
pub const DELIVERY_FAILING_AFTER: std::time::Duration = std::time::Duration::from_secs(300);

/// When the daily digest goes out.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DigestConfig {
    /// Local time, `HH:MM`.
    pub at: String,
    /// IANA time zone of `at` and of "yesterday" (default UTC).
    #[serde(default = "utc")]
    pub timezone: String,
}

fn utc() -> String {
    "UTC".into()
}

/// Where alerts go, resolved (URLs read from the environment).
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// A webhook.
    Webhook {
        /// Shown in logs and events: `webhook[i]:host`, never the URL's path or query.
        label: String,
        /// The URL (a secret).
        url: reqwest::Url,
        /// Body shape.
        format: BodyFormat,
    },
    /// A command.
    Command {
        /// `command:<program>`.
        label: String,
        /// Program and arguments.
        argv: Vec<String>,
    },
}

impl Target {
    /// How the target is named in logs and events.
    pub fn label(&self) -> &str {
        match self {
            Target::Webhook { label, .. } | Target::Command { label, .. } => label,
        }
    }
}

/// The section, checked and resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct NotifySettings {
    /// Where alerts go.
    pub targets: Vec<Target>,
    /// Which events alert.
    pub rules: EventRules,
    /// Retries after the first try.
    pub retries: u32,
    /// First wait between tries.
    pub retry_backoff: Duration,
    /// Longest wait for one try.
    pub timeout: Duration,
    /// How often to look for new events.
    pub check_every: Duration,
    /// The digest's local time and zone.
    pub digest: Option<(NaiveTime, Tz)>,
}

impl NotifyConfig {
    /// Checks the section and reads webhook URLs from the environment.
    pub fn resolve(&self) -> Result<NotifySettings, String> {
        let mut targets = Vec::new();
        for (i, hook) in self.webhooks.iter().enumerate() {
            targets.push(webhook(i, hook)?);
        }
        if let Some(argv) = &self.command {
            let program = argv
                .first()
                .filter(|p| !p.is_empty())
                .ok_or("notify.command: name a program, e.g. `[/usr/local/bin/page-oncall]`")?;
            targets.push(Target::Command { label: format!("command:{program}"), argv: argv.clone() });
        }
        if targets.is_empty() {
            return Err("notify: add `webhooks:` or `command:` (or remove the section)".into());
        }
        if !(0.0..=1.0).contains(&self.events.budget_warn_at) {
            return Err("notify.events.budget_warn_at: write a share between 0 and 1, e.g. 0.9".into());
        }
        Ok(NotifySettings {
            targets,
            rules: self.events.clone(),
            retries: self.retries.unwrap_or(5),
            retry_backoff: duration("notify.retry_backoff", &self.retry_backoff, DurationRule::new(2, 1, 60))?,
            timeout: duration("notify.timeout", &self.timeout, DurationRule::new(10, 1, 600))?,
            check_every: duration("notify.check_every", &self.check_every, DurationRule::new(10, 1, 600))?,
            digest: self.digest.as_ref().map(digest).transpose()?,
        })
    }
}

/// A duration's default and bounds, in seconds.
struct DurationRule {
    default: u64,
    min: u64,
    max: u64,
}

impl DurationRule {
    fn new(default: u64, min: u64, max: u64) -> DurationRule {
        DurationRule { default, min, max }
    }
}

fn duration(name: &str, value: &Option<String>, rule: DurationRule) -> Result<Duration, String> {
    let Some(text) = value else { return Ok(Duration::from_secs(rule.default)) };
    let parsed = parse_duration(text).map_err(|e| format!("{name}: {e} (write e.g. `2s`, `1m`)"))?;
    let (min, max) = (Duration::from_secs(rule.min), Duration::from_secs(rule.max));
    if parsed < min || parsed > max {
        return Err(format!("{name}: `{text}` is out of range: write between {}s and {}s", rule.min, rule.max));
    }
    Ok(parsed)
}

fn webhook(i: usize, hook: &WebhookConfig) -> Result<Target, String> {
    let name = format!("notify.webhooks[{i}]");
    let text = match (&hook.url, &hook.url_env, &hook.url_credential) {
        (Some(url), None, None) => url.clone(),
        (None, Some(var), None) => {
            std::env::var(var).map_err(|_| format!("{name}.url_env: the environment variable {var} is not set"))?
        }
        (None, None, Some(credential)) => crate::secrets::read_credential(credential).ok_or_else(|| {
            format!("{name}.url_credential: no credential `{credential}` in $CREDENTIALS_DIRECTORY (LoadCredential=)")
        })?,
        _ => return Err(format!("{name}: write exactly one of `url`, `url_env` and `url_credential`")),
    };
    let url = reqwest::Url::parse(text.trim()).map_err(|e| format!("{name}: not a URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{name}: the URL must start with https:// or http://"));
    }
    // The label keys deduplication, so it must not change when webhooks are
    // reordered, and must not reveal the URL's secret path: host plus a hash.
    let label = format!("webhook:{}#{:08x}", url.host_str().unwrap_or("?"), fnv1a(url.as_str()) as u32);
    Ok(Target::Webhook { label, url, format: hook.format })
}

/// FNV-1a: a stable hash (std's `DefaultHasher` may change between releases).
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3))
}

fn digest(config: &DigestConfig) -> Result<(NaiveTime, Tz), String> {
    let at = NaiveTime::parse_from_str(&config.at, "%H:%M")
        .map_err(|_| format!("notify.digest.at: `{}` is not a time: write e.g. \"08:00\"", config.at))?;
    let zone = config.timezone.parse::<Tz>().map_err(|_| {
        format!("notify.digest.timezone: `{}` is not an IANA time zone, e.g. Europe/Berlin", config.timezone)
    })?;
    Ok((at, zone))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<NotifySettings, String> {
        serde_saphyr::from_str::<NotifyConfig>(text).map_err(|e| e.to_string())?.resolve()
    }

    #[test]
    fn defaults_alert_on_what_matters_and_keep_the_fallback_opt_in() {
        let settings = parse("webhooks: [{url: 'https://hooks.example.com/T0/B0/secret'}]").unwrap();
        let label = settings.targets[0].label();
        assert!(label.starts_with("webhook:hooks.example.com#"), "{label}");
        assert!(!label.contains("secret"), "the label never shows the secret path");
        let two =
            parse("webhooks: [{url: 'https://a.example/x'}, {url: 'https://hooks.example.com/T0/B0/secret'}]").unwrap();
        assert_eq!(two.targets[1].label(), label, "the label does not depend on the webhook's position");
        assert_eq!(settings.rules.errored_per_day, Some(5));
        assert!(settings.rules.run_late && settings.rules.budget && !settings.rules.fallback);
        assert_eq!(settings.retries, 5);
    }

    #[test]
    fn mistakes_say_what_to_write() {
        assert!(parse("events: {fallback: true}").unwrap_err().contains("add `webhooks:` or `command:`"));
        assert!(parse("webhooks: [{url_env: ORCH_TEST_SURELY_UNSET}]").unwrap_err().contains("is not set"));
        assert!(parse("webhooks: [{url: 'ftp://x'}]").unwrap_err().contains("https://"));
        assert!(parse("command: [page]\ndigest: {at: '8am'}").unwrap_err().contains("\"08:00\""));
        assert!(parse("command: [page]\nretry_backoff: soon").unwrap_err().contains("notify.retry_backoff"));
        assert!(parse("command: [page]\ncheck_every: 0s").unwrap_err().contains("between 1s and 600s"));
        assert!(parse("command: [page]\ntimeout: 100000h").unwrap_err().contains("out of range"));
        assert!(parse("command: ['']").unwrap_err().contains("name a program"));
    }

    #[test]
    fn a_digest_has_a_time_and_zone() {
        let settings = parse("command: [page]\ndigest: {at: '07:30', timezone: Europe/Berlin}").unwrap();
        assert_eq!(settings.digest, Some((NaiveTime::from_hms_opt(7, 30, 0).unwrap(), chrono_tz::Europe::Berlin)));
    }
}
