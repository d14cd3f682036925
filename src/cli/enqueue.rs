//! `orchestrator enqueue JOB [FILE|-]`: posts JSON Lines of entries to a
//! running daemon's enqueue endpoint and prints the id of each item, one per
//! line, in the order of the input.
//!
//! The input goes in requests of at most [`LINES_PER_POST`] lines, each
//! taken whole or not at all by the daemon; a refused one stops the command
//! with the line number in the input. A request whose answer was lost is
//! sent again only when every entry in it has an `idempotency_key`: the
//! daemon then adds nothing twice.

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

/// Exit status when the daemon refused the input (sysexits `EX_DATAERR`).
pub(super) const EXIT_REFUSED: u8 = 65;
/// Exit status when the daemon could not be reached (sysexits `EX_UNAVAILABLE`).
pub(super) const EXIT_UNREACHABLE: u8 = 69;
/// Exit status when the token is missing or wrong (sysexits `EX_NOPERM`).
pub(super) const EXIT_NO_PERMISSION: u8 = 77;

/// Lines per request: well under the daemon's default body limit for items of a few KB.
const LINES_PER_POST: usize = 1000;
/// Tries of a request whose entries all carry idempotency keys.
const TRIES: u32 = 5;

/// Arguments of `enqueue`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The job (its manifest needs `enqueue:`).
    pub job: String,
    /// JSON Lines of entries `{"item": {...}, "latency_budget"?, "deadline"?, "idempotency_key"?}`; `-` or absent: standard input.
    pub file: Option<PathBuf>,
    /// The daemon's address.
    #[arg(long, default_value = "http://127.0.0.1:8080", env = "ORCHESTRATOR_URL")]
    pub url: String,
}

/// Why a request did not go through.
enum Failure {
    /// The daemon answered with a refusal (status, its message).
    Refused(reqwest::StatusCode, String),
    /// No answer (connection refused, reset, timeout).
    Unreachable(String),
}

pub(super) fn run(args: &Args) -> anyhow::Result<u8> {
    let input = read_input(args.file.as_ref())?;
    let Some(token) = crate::web::token() else {
        eprintln!(
            "error: the enqueue endpoint needs the daemon's bearer token: set {} (or the credential `{}`)",
            crate::web::TOKEN_ENV,
            crate::web::TOKEN_CREDENTIAL
        );
        return Ok(EXIT_NO_PERMISSION);
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(post_all(args, &token, &input))
}

fn read_input(file: Option<&PathBuf>) -> anyhow::Result<String> {
    match file.filter(|path| path.as_os_str() != "-") {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display())),
        None => {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text).context("cannot read standard input")?;
            Ok(text)
        }
    }
}

async fn post_all(args: &Args, token: &str, input: &str) -> anyhow::Result<u8> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?;
    let endpoint = format!("{}/api/v1/jobs/{}/items", args.url.trim_end_matches('/'), args.job);
    let lines: Vec<(usize, &str)> =
        input.lines().enumerate().filter(|(_, line)| !line.trim().is_empty()).map(|(i, l)| (i + 1, l)).collect();
    let mut posted = 0;
    for chunk in lines.chunks(LINES_PER_POST) {
        let body: String = chunk.iter().map(|(_, line)| format!("{line}\n")).collect();
        let retry_safe = chunk.iter().all(|(_, line)| has_key(line));
        match post_chunk(&client, &endpoint, token, body, retry_safe).await {
            Ok(ids) => {
                posted += ids.len();
                for id in ids {
                    println!("{id}");
                }
            }
            Err(failure) => return Ok(report(failure, chunk, posted)),
        }
    }
    eprintln!("enqueued {posted} items to {}", args.job);
    Ok(0)
}

fn has_key(line: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(line)
        .ok()
        .and_then(|entry| entry.get("idempotency_key").map(|key| key.is_string()))
        .unwrap_or(false)
}

async fn post_chunk(
    client: &reqwest::Client,
    endpoint: &str,
    token: &str,
    body: String,
    retry_safe: bool,
) -> Result<Vec<i64>, Failure> {
    let mut wait = Duration::from_millis(200);
    let tries = if retry_safe { TRIES } else { 1 };
    let mut last = String::new();
    for _ in 0..tries {
        let sent = client
            .post(endpoint)
            .bearer_auth(token)
            .header(reqwest::header::CONTENT_TYPE, "application/x-ndjson")
            .body(body.clone())
            .send()
            .await;
        match sent {
            Ok(response) if response.status() == reqwest::StatusCode::ACCEPTED => {
                let answer: serde_json::Value =
                    response.json().await.map_err(|e| Failure::Unreachable(e.to_string()))?;
                let ids = answer["ids"].as_array().map(|ids| ids.iter().filter_map(|id| id.as_i64()).collect());
                return ids.ok_or_else(|| Failure::Unreachable(format!("the daemon answered without ids: {answer}")));
            }
            Ok(response) if !response.status().is_server_error() => {
                let status = response.status();
                let text = response.text().await.unwrap_or_default();
                let message = serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|v| v["error"].as_str().map(str::to_owned))
                    .unwrap_or(text);
                return Err(Failure::Refused(status, message));
            }
            Ok(response) => last = format!("the daemon answered {}", response.status()),
            Err(error) => last = error.to_string(),
        }
        tokio::time::sleep(wait).await;
        wait *= 2;
    }
    Err(Failure::Unreachable(last))
}

fn report(failure: Failure, chunk: &[(usize, &str)], posted: usize) -> u8 {
    let first = chunk.first().map_or(1, |(line, _)| *line);
    let last = chunk.last().map_or(first, |(line, _)| *line);
    eprintln!("{posted} items enqueued before this error (their ids are printed above)");
    match failure {
        Failure::Refused(status, message) => {
            // The daemon numbers the lines of the request; the input's are offset by the chunk's start.
            let message = shift_line(&message, chunk);
            eprintln!("error: the daemon refused lines {first}-{last} ({status}): {message}");
            match status.as_u16() {
                401 | 403 => EXIT_NO_PERMISSION,
                _ => EXIT_REFUSED,
            }
        }
        Failure::Unreachable(reason) => {
            eprintln!("error: no answer from the daemon for lines {first}-{last}: {reason}");
            if !chunk.iter().all(|(_, line)| has_key(line)) {
                eprintln!(
                    "they may or may not be queued: give every entry an `idempotency_key` so a retry adds nothing twice"
                );
            }
            EXIT_UNREACHABLE
        }
    }
}

/// `line N: ...` of a request, as the line of the input it came from.
fn shift_line(message: &str, chunk: &[(usize, &str)]) -> String {
    let Some(rest) = message.strip_prefix("line ") else { return message.to_owned() };
    let Some((number, tail)) = rest.split_once(':') else { return message.to_owned() };
    match number.parse::<usize>().ok().and_then(|n| chunk.get(n.checked_sub(1)?)) {
        Some((line, _)) => format!("line {line}:{tail}"),
        None => message.to_owned(),
    }
}
