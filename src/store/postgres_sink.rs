//! The PostgreSQL sink: results upserted into a user's table, keyed by
//! custom_id, in the database at `ORCHESTRATOR_DATABASE_URL` (or the systemd
//! credential `orchestrator-database-url`). One connection and one
//! transaction per delivery round: a round is in the table whole or not at
//! all, and a round written again after a crash (before its deliveries were
//! recorded) leaves one row per custom_id.
//!
//! TLS follows the URL's `sslmode` (`prefer` by default: TLS when the
//! server offers it, verified against the system's roots). The URL holds a
//! password: it is never logged, and errors name the table, not the URL.

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::Duration;

use super::sink_table::SinkRow;

/// The environment variable holding the database URL.
pub const URL_ENV: &str = "ORCHESTRATOR_DATABASE_URL";

/// Its file name in `$CREDENTIALS_DIRECTORY`.
pub const URL_CREDENTIAL: &str = "orchestrator-database-url";

/// How long connecting may take before the round fails (and is retried).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The database URL from the environment or the credential, if set.
pub fn database_url() -> Option<String> {
    crate::secrets::read(URL_ENV, URL_CREDENTIAL)
}

/// Why a round did not reach the table.
#[derive(Debug, thiserror::Error)]
pub enum PostgresSinkError {
    /// No URL is configured.
    #[error("no database URL: set {URL_ENV} (or the systemd credential `{URL_CREDENTIAL}`)")]
    NoUrl,
    /// The URL does not parse.
    #[error("the database URL in {URL_ENV} does not parse ({0}); write e.g. postgres://user@host:5432/dbname")]
    BadUrl(String),
    /// The TLS set-up failed.
    #[error("cannot set up TLS for the database connection: {0}")]
    Tls(String),
    /// PostgreSQL (or the connection to it) failed: the server's message,
    /// or the connection's error with its causes.
    #[error("{0}")]
    Postgres(String),
}

impl From<postgres::Error> for PostgresSinkError {
    fn from(error: postgres::Error) -> PostgresSinkError {
        PostgresSinkError::Postgres(super::sql::postgres_text(&error))
    }
}

/// Upserts `rows` into `table` in one transaction, creating the table if
/// needed. The last row of a custom_id that appears twice wins.
pub fn upsert(table: &str, rows: &[SinkRow<'_>]) -> Result<(), PostgresSinkError> {
    let url = database_url().ok_or(PostgresSinkError::NoUrl)?;
    upsert_at(&url, table, rows)
}

/// [`upsert`] into the database at `url`.
pub fn upsert_at(url: &str, table: &str, rows: &[SinkRow<'_>]) -> Result<(), PostgresSinkError> {
    let mut client = connect(url)?;
    // The table name was checked by `validate` (E064); quote it anyway.
    let table = format!("\"{}\"", table.replace('"', "\"\""));
    let mut tx = client.transaction()?;
    tx.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {table} (custom_id TEXT PRIMARY KEY, text TEXT NOT NULL, result JSONB NOT NULL)"
    ))?;
    let (ids, texts, results) = columns(rows);
    tx.execute(
        &format!(
            "INSERT INTO {table} (custom_id, text, result)
             SELECT c, t, r::jsonb FROM unnest($1::text[], $2::text[], $3::text[]) AS u (c, t, r)
             ON CONFLICT (custom_id) DO UPDATE SET text = excluded.text, result = excluded.result"
        ),
        &[&ids, &texts, &results],
    )?;
    tx.commit()?;
    Ok(())
}

/// A connection to the database at `url`, with TLS as its `sslmode` says.
/// TCP keepalives notice a peer that vanished (a machine that died, a
/// network cut) within about 20 s instead of the kernel's two hours.
pub(crate) fn connect(url: &str) -> Result<postgres::Client, PostgresSinkError> {
    let mut config: postgres::Config =
        url.parse().map_err(|e: postgres::Error| PostgresSinkError::BadUrl(e.to_string()))?;
    config.connect_timeout(CONNECT_TIMEOUT);
    config.application_name("orchestrator");
    config.keepalives(true).keepalives_idle(Duration::from_secs(5)).keepalives_interval(Duration::from_secs(5));
    config.keepalives_retries(3).tcp_user_timeout(Duration::from_secs(20));
    Ok(config.connect(tls()?)?)
}

/// The rows as three columns, one entry per custom_id (its last row):
/// one statement may not update a row twice.
fn columns<'a>(rows: &[SinkRow<'a>]) -> (Vec<&'a str>, Vec<Cow<'a, str>>, Vec<Cow<'a, str>>) {
    let last: HashMap<&str, usize> = rows.iter().enumerate().map(|(i, row)| (row.custom_id, i)).collect();
    let kept = rows.iter().enumerate().filter(|(i, row)| last[row.custom_id] == *i).map(|(_, row)| row);
    let mut columns = (Vec::new(), Vec::new(), Vec::new());
    for row in kept {
        columns.0.push(row.custom_id);
        columns.1.push(without_nul(row.text));
        columns.2.push(json_without_nul(row.result));
    }
    columns
}

/// PostgreSQL's `text` cannot hold U+0000, which a model's text or an item
/// may: it becomes U+FFFD, so that one result never blocks the rest.
fn without_nul(text: &str) -> Cow<'_, str> {
    match text.contains('\0') {
        true => Cow::Owned(text.replace('\0', "\u{FFFD}")),
        false => Cow::Borrowed(text),
    }
}

/// The same for `jsonb`, which refuses the escape `\u0000` in any string.
fn json_without_nul(json: &str) -> Cow<'_, str> {
    if !json.contains("\\u0000") {
        return Cow::Borrowed(json);
    }
    fn clean(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::String(text) => *text = without_nul(text).into_owned(),
            serde_json::Value::Array(items) => items.iter_mut().for_each(clean),
            serde_json::Value::Object(fields) => fields.values_mut().for_each(clean),
            _ => {}
        }
    }
    match serde_json::from_str::<serde_json::Value>(json) {
        Ok(mut value) => {
            clean(&mut value);
            Cow::Owned(value.to_string())
        }
        Err(_) => Cow::Borrowed(json),
    }
}

/// The TLS connector: the system's roots, and aws-lc-rs named explicitly
/// (the process-wide default would panic if another crate ever enabled a
/// second crypto provider).
fn tls() -> Result<tokio_postgres_rustls::MakeRustlsConnect, PostgresSinkError> {
    use rustls_platform_verifier::BuilderVerifierExt;
    let tls = |e: rustls::Error| PostgresSinkError::Tls(e.to_string());
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(tls)?
        .with_platform_verifier()
        .map_err(tls)?
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row<'a>(custom_id: &'a str, text: &'a str) -> SinkRow<'a> {
        SinkRow { custom_id, text, result: "{}" }
    }

    #[test]
    fn a_custom_id_repeated_in_a_round_is_written_once_with_its_last_row() {
        let (ids, texts, _) = columns(&[row("a", "1"), row("b", "2"), row("a", "3")]);
        assert_eq!(ids, ["b", "a"]);
        assert_eq!(texts, ["2", "3"]);
    }

    #[test]
    fn a_nul_in_the_text_or_the_json_becomes_a_replacement_character() {
        let json = serde_json::json!({ "text": "a\u{0}b", "item": { "note": ["x\u{0}"] } }).to_string();
        let rows = [SinkRow { custom_id: "a", text: "a\u{0}b", result: &json }];
        let (_, texts, results) = columns(&rows);
        assert_eq!(texts, ["a\u{FFFD}b"]);
        let cleaned: serde_json::Value = serde_json::from_str(&results[0]).unwrap();
        assert_eq!(cleaned, serde_json::json!({ "text": "a\u{FFFD}b", "item": { "note": ["x\u{FFFD}"] } }));
        assert!(matches!(json_without_nul(r#"{"a":"plain"}"#), Cow::Borrowed(_)), "untouched without one");
    }

    #[test]
    fn a_failed_connection_never_shows_the_password() {
        let url = "postgres://writer:hunter2-secret@127.0.0.1:9/results?connect_timeout=2";
        let error = upsert_at(url, "answers", &[row("a", "1")]).unwrap_err();
        let text = format!("{error} {error:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(matches!(error, PostgresSinkError::Postgres(_)), "{text}");
    }

    #[test]
    fn a_url_that_does_not_parse_is_said_so_without_echoing_it() {
        let error = upsert_at("postgres://writer:hunter2@host:notaport/db", "answers", &[]).unwrap_err();
        assert!(matches!(error, PostgresSinkError::BadUrl(_)), "{error}");
        assert!(!error.to_string().contains("hunter2"), "{error}");
    }
}
