//! Delivery of one alert to one target, retried with doubling waits.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::alert::Alert;
use super::config::Target;

/// How deliveries are tried.
#[derive(Debug, Clone, Copy)]
pub(super) struct Policy {
    /// Retries after the first try.
    pub retries: u32,
    /// First wait between tries; it doubles, up to a minute.
    pub backoff: Duration,
    /// Longest wait for one try.
    pub timeout: Duration,
}

/// The outcome of a delivery: how many tries it took, or the last error.
pub(super) type Delivery = Result<u32, (u32, String)>;

/// Longest time one delivery waits out a receiver's backpressure (429 or
/// 503 with `Retry-After`) on top of its retries.
const MAX_PUSHED_BACK: Duration = Duration::from_secs(300);

/// Why one try failed.
enum Failed {
    /// The receiver asked us to come back later (429, 503): not a failure of the alert.
    PushedBack(String, Duration),
    /// Anything else: uses up one of the retries.
    Error(String),
}

/// Delivers `alert` to `target`, retrying failures. Each try holds one of
/// the target's `slots`; the waits between tries hold none.
pub(super) async fn deliver(
    client: &reqwest::Client,
    target: &Target,
    slots: &tokio::sync::Semaphore,
    alert: &Alert,
    policy: Policy,
) -> Delivery {
    let mut wait = policy.backoff;
    let (mut tries, mut failed, mut pushed_back) = (0, 0, Duration::ZERO);
    loop {
        tries += 1;
        let outcome = {
            let Ok(_slot) = slots.acquire().await else { return Err((tries, "shutting down".into())) };
            match target {
                Target::Webhook { url, format, .. } => post(client, url, &alert.body(*format), policy.timeout).await,
                Target::Command { argv, .. } => run(argv, alert, policy.timeout).await.map_err(Failed::Error),
            }
        };
        let pause = match outcome {
            Ok(()) => return Ok(tries),
            Err(Failed::PushedBack(error, asked)) if pushed_back + asked <= MAX_PUSHED_BACK => {
                pushed_back += asked;
                tracing::info!(target = target.label(), alert = %alert.key, %error, wait_ms = asked.as_millis() as u64, "the receiver pushes back; waiting as asked");
                asked
            }
            Err(Failed::PushedBack(error, _) | Failed::Error(error)) if failed >= policy.retries => {
                return Err((tries, error));
            }
            Err(Failed::PushedBack(error, _) | Failed::Error(error)) => {
                failed += 1;
                tracing::warn!(target = target.label(), alert = %alert.key, tries, %error, "alert not delivered; retrying");
                let pause = wait;
                wait = wait.saturating_mul(2).min(Duration::from_secs(60));
                pause
            }
        };
        tokio::time::sleep(pause).await;
    }
}

async fn post(
    client: &reqwest::Client,
    url: &reqwest::Url,
    body: &serde_json::Value,
    timeout: Duration,
) -> Result<(), Failed> {
    // The URL is a secret: errors are reported without it.
    let response = client.post(url.clone()).timeout(timeout).json(body).send().await.map_err(|e| {
        Failed::Error(if e.is_timeout() { "timed out".to_owned() } else { e.without_url().to_string() })
    })?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let error = format!("HTTP {}", status.as_u16());
    // Slack and most chat webhooks answer 429 with Retry-After (seconds) when messages come too fast.
    let asked = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    match (status.as_u16(), asked) {
        (429 | 503, Some(asked)) => Err(Failed::PushedBack(error, asked.max(Duration::from_millis(100)))),
        (429, None) => Err(Failed::PushedBack(error, Duration::from_secs(1))),
        _ => Err(Failed::Error(error)),
    }
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::http::{HeaderMap, HeaderValue, StatusCode};

    use super::*;
    use crate::notify::config::BodyFormat;

    /// A webhook answering `status` (with `Retry-After: 1` when asked) to its first `refuse` posts, then 200.
    async fn receiver(refuse: usize, status: u16, retry_after: bool) -> (reqwest::Url, Arc<AtomicUsize>) {
        let seen = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&seen);
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move || {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                async move {
                    let mut headers = HeaderMap::new();
                    if retry_after {
                        headers.insert("retry-after", HeaderValue::from_static("1"));
                    }
                    let status = if n < refuse { StatusCode::from_u16(status).unwrap() } else { StatusCode::OK };
                    (status, headers)
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap()).parse().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, seen)
    }

    fn alert() -> Alert {
        Alert {
            key: "run_late:x".into(),
            kind: "run_late",
            severity: "critical",
            at: chrono::Utc::now(),
            job: None,
            run_id: None,
            run_key: None,
            text: "late".into(),
            detail: serde_json::json!({}),
        }
    }

    #[tokio::test]
    async fn a_receiver_that_pushes_back_is_waited_for_without_using_up_retries() {
        let (url, seen) = receiver(3, 429, true).await;
        let target = Target::Webhook { label: "test".into(), url, format: BodyFormat::Json };
        let policy = Policy { retries: 1, backoff: Duration::from_millis(10), timeout: Duration::from_secs(5) };
        let slots = tokio::sync::Semaphore::new(1);
        let delivered = deliver(&reqwest::Client::new(), &target, &slots, &alert(), policy).await;
        assert_eq!(delivered, Ok(4), "three 429s waited out, then delivered");
        assert_eq!(seen.load(Ordering::SeqCst), 4);
        // A failure of its own (500) uses the retries up.
        let (url, seen) = receiver(10, 500, false).await;
        let target = Target::Webhook { label: "test".into(), url, format: BodyFormat::Json };
        let failed = deliver(&reqwest::Client::new(), &target, &slots, &alert(), policy).await;
        assert_eq!(failed, Err((2, "HTTP 500".to_owned())));
        assert_eq!(seen.load(Ordering::SeqCst), 2);
    }
}
