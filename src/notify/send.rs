//! Delivery of one alert to one target, retried with doubling waits.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::alert::Alert;
use super::config::Target;

/// How deliveries are tried.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Retries after the first try.
    pub retries: u32,
    /// First wait between tries; it doubles, up to a minute.
    pub backoff: Duration,
    /// Longest wait for one try.
    pub timeout: Duration,
}

/// The outcome of a delivery: how many tries it took, or the last error.
pub type Delivery = Result<u32, (u32, String)>;

/// Delivers `alert` to `target`, retrying failures. Each try holds one of
/// the target's `slots`; the waits between tries hold none.
pub async fn deliver(
    client: &reqwest::Client,
    target: &Target,
    slots: &tokio::sync::Semaphore,
    alert: &Alert,
    policy: Policy,
) -> Delivery {
    let mut wait = policy.backoff;
    let mut tries = 0;
    loop {
        tries += 1;
        let outcome = {
            let Ok(_slot) = slots.acquire().await else { return Err((tries, "shutting down".into())) };
            match target {
                Target::Webhook { url, format, .. } => post(client, url, &alert.body(*format), policy.timeout).await,
                Target::Command { argv, .. } => run(argv, alert, policy.timeout).await,
            }
        };
        match outcome {
            Ok(()) => return Ok(tries),
            Err(error) if tries > policy.retries => return Err((tries, error)),
            Err(error) => {
                tracing::warn!(target = target.label(), alert = %alert.key, tries, %error, "alert not delivered; retrying");
                tokio::time::sleep(wait).await;
                wait = wait.saturating_mul(2).min(Duration::from_secs(60));
            }
        }
    }
}

async fn post(
    client: &reqwest::Client,
    url: &reqwest::Url,
    body: &serde_json::Value,
    timeout: Duration,
) -> Result<(), String> {
    // The URL is a secret: errors are reported without it.
    let response = client
        .post(url.clone())
        .timeout(timeout)
        .json(body)
        .send()
        .await
        .map_err(|e| if e.is_timeout() { "timed out".to_owned() } else { e.without_url().to_string() })?;
    let status = response.status();
    if status.is_success() { Ok(()) } else { Err(format!("HTTP {}", status.as_u16())) }
}

async fn run(argv: &[String], alert: &Alert, timeout: Duration) -> Result<(), String> {
    // The daemon's environment holds the API key and the webhook URLs: the
    // command gets only what it needs to run, and the alert.
    let kept = ["PATH", "HOME", "LANG", "LC_ALL", "TZ"].into_iter().filter_map(|k| Some((k, std::env::var_os(k)?)));
    let mut child = tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        .env_clear()
        .envs(kept)
        .env("ORCHESTRATOR_ALERT_KIND", alert.kind)
        .env("ORCHESTRATOR_ALERT_KEY", &alert.key)
        .env("ORCHESTRATOR_ALERT_TEXT", &alert.text)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", argv[0]))?;
    let body = serde_json::to_vec(alert).expect("an alert serializes");
    let finished = tokio::time::timeout(timeout, async {
        if let Some(mut stdin) = child.stdin.take() {
            // A command that ignores its input may close it early; that is its choice.
            let _ = stdin.write_all(&body).await;
        }
        child.wait().await
    })
    .await;
    match finished {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(format!("{} exited with {status}", argv[0])),
        Ok(Err(e)) => Err(format!("{}: {e}", argv[0])),
        Err(_) => Err(format!("{} timed out", argv[0])),
    }
}
