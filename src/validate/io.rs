//! Checks of items, sink, retry, budget and batch size, one job at a time,
//! and of sinks shared between jobs.

use std::collections::BTreeMap;

use crate::diagnostics::{Code, Diagnostic};
use crate::manifest::{Parsed, Sink};

pub(super) fn check(job: &Parsed, out: &mut Vec<Diagnostic>) {
    check_items(job, out);
    check_sink(job, out);
    let manifest = &job.manifest;
    if manifest.retry.max_attempts < 1 {
        out.push(
            job.at_value(
                Code::InvalidRetry,
                "retry.max_attempts",
                format!("retry.max_attempts {} is below 1", manifest.retry.max_attempts),
            )
            .help("write 1 for no retries, or e.g. `3`"),
        );
    }
    if let Some(amount) = manifest.budget.and_then(|b| b.monthly_usd).filter(|usd| !(usd.is_finite() && *usd > 0.0)) {
        out.push(
            job.at_value(
                Code::InvalidBudget,
                "budget.monthly_usd",
                format!("budget.monthly_usd {amount} is not a positive amount"),
            )
            .help("write an amount in dollars such as `25`, or remove `budget`"),
        );
    }
    // The provider's own limit (an unknown provider is reported elsewhere).
    let most = crate::providers::batch_limits(&manifest.provider).map_or(u32::MAX, |l| l.max_requests as u32);
    if let Some(size) = manifest.max_batch_requests.filter(|n| *n == 0 || *n > most) {
        out.push(
            job.at_value(
                Code::InvalidBatchSize,
                "max_batch_requests",
                format!(
                    "max_batch_requests {size} is outside 1..={most}, what `{}` allows per batch",
                    manifest.provider
                ),
            )
            .help(format!("write a number from 1 to {most}")),
        );
    }
}

fn check_items(job: &Parsed, out: &mut Vec<Diagnostic>) {
    let Some(items) = &job.manifest.items else {
        return;
    };
    let set = [&items.jsonl, &items.glob, &items.command, &items.from].iter().filter(|v| v.is_some()).count();
    if set != 1 {
        out.push(
            job.at_key(Code::ItemsSourceCount, "items", format!("items has {set} sources; it needs exactly one"))
                .help("write one of `{ jsonl: PATH }`, `{ glob: PATTERN }`, `{ command: CMD }`, `{ from: JOB }`"),
        );
    }
    if items.shape.is_some() && items.from.is_none() {
        out.push(
            job.at_key(Code::InvalidValue, "items.as", "items.as says how a stage takes another job's results")
                .help("add `from: JOB` to read that job's results, or remove `as`"),
        );
    }
    if items.command.as_deref().is_some_and(|cmd| cmd.trim().is_empty()) {
        out.push(
            job.at_value(Code::EmptyItemsCommand, "items.command", "items.command is empty")
                .help("write a command whose output is JSON Lines, e.g. `cat data/items.jsonl`"),
        );
    }
    for (field, value) in [("jsonl", &items.jsonl), ("glob", &items.glob)] {
        if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
            out.push(
                job.at_value(Code::EmptySinkValue, &format!("items.{field}"), format!("items.{field} is empty"))
                    .help("write a path relative to the working directory"),
            );
        }
    }
}

fn check_sink(job: &Parsed, out: &mut Vec<Diagnostic>) {
    let Some(sink) = &job.manifest.sink else {
        return;
    };
    let targets = [
        sink.jsonl.is_some(),
        sink.dir.is_some(),
        sink.sqlite.is_some(),
        sink.postgres.is_some(),
        sink.command.is_some(),
    ];
    let set = targets.iter().filter(|t| **t).count();
    if set != 1 {
        out.push(
            job.at_key(Code::SinkTargetCount, "sink", format!("sink has {set} targets; it needs exactly one")).help(
                "write one of `{ jsonl: PATH }`, `{ dir: PATH }`, `{ sqlite: { path, table } }`, `{ postgres: { table } }`, `{ command: CMD }`",
            ),
        );
    }
    let texts = [
        ("sink.jsonl", sink.jsonl.as_deref()),
        ("sink.dir", sink.dir.as_deref()),
        ("sink.command", sink.command.as_deref()),
        ("sink.sqlite.path", sink.sqlite.as_ref().map(|s| s.path.as_str())),
    ];
    for (path, value) in texts {
        if value.is_some_and(|v| v.trim().is_empty()) {
            out.push(
                job.at_value(Code::EmptySinkValue, path, format!("`{path}` is empty"))
                    .help("write a path relative to the working directory, or a command"),
            );
        }
    }
    let tables = [
        ("sink.sqlite.table", sink.sqlite.as_ref().map(|s| s.table.as_str())),
        ("sink.postgres.table", sink.postgres.as_ref().map(|s| s.table.as_str())),
    ];
    for (path, table) in tables {
        if let Some(table) = table.filter(|table| !is_identifier(table)) {
            out.push(
                job.at_value(Code::InvalidSinkTable, path, format!("table name `{table}` is not a plain identifier"))
                    .help("use letters, digits and underscores, starting with a letter, e.g. `results`"),
            );
        }
    }
    // Quoted, `Results` would be a table apart from the `results` a user's unquoted SQL names.
    if let Some(table) = sink
        .postgres
        .as_ref()
        .map(|s| &s.table)
        .filter(|t| is_identifier(t) && t.chars().any(|c| c.is_ascii_uppercase()))
    {
        out.push(
            job.at_value(
                Code::InvalidSinkTable,
                "sink.postgres.table",
                format!("table name `{table}` has capitals, which PostgreSQL folds away in unquoted names"),
            )
            .help(format!("write `{}`", table.to_ascii_lowercase())),
        );
    }
    check_sink_moves_with_the_leader(job, sink, out);
    if sink.postgres.is_some() && crate::store::postgres_sink::database_url().is_none() {
        out.push(
            job.at_key(
                Code::SinkDatabaseUrlMissing,
                "sink.postgres",
                format!(
                    "the postgres sink writes to the database at {}, which is not set here",
                    crate::store::postgres_sink::URL_ENV
                ),
            )
            .help(format!(
                "set {} (e.g. postgres://writer@db.internal:5432/results) where the daemon runs, or pass the systemd \
                 credential `{}`; until then every delivery fails and is retried",
                crate::store::postgres_sink::URL_ENV,
                crate::store::postgres_sink::URL_CREDENTIAL
            )),
        );
    }
}

/// W076: on a PostgreSQL state another machine may lead next, and a file
/// sink writes to the disk of whichever machine leads.
fn check_sink_moves_with_the_leader(job: &Parsed, sink: &crate::manifest::Sink, out: &mut Vec<Diagnostic>) {
    if let Some(state) = multi_node_state() {
        let files = [("sink.jsonl", sink.jsonl.is_some()), ("sink.dir", sink.dir.is_some())];
        for (key, _) in files.iter().filter(|(_, used)| *used) {
            out.push(
                job.at_key(
                    Code::LocalSinkMultiNode,
                    key,
                    format!(
                        "the state is the PostgreSQL database {state}, which another machine's `serve` may lead \
                         next; `{key}` writes to the disk of whichever machine leads, so results split between them"
                    ),
                )
                .help(
                    "write to the shared database with `sink: { postgres: { table: results } }`, hand each result \
                     to a `command` sink, or keep the path on storage every machine mounts",
                ),
            );
        }
    }
}

/// The PostgreSQL state (without its password) where validate runs, if
/// `ORCHESTRATOR_STATE` names one: a URL, or `postgres` (the database at
/// `ORCHESTRATOR_DATABASE_URL`).
fn multi_node_state() -> Option<String> {
    let state = std::path::PathBuf::from(std::env::var_os("ORCHESTRATOR_STATE")?);
    let url = match crate::store::names_the_database_url(&state) {
        true => crate::store::postgres_sink::database_url()?,
        false => crate::store::database_url(&state)?.to_owned(),
    };
    Some(crate::store::shown(std::path::Path::new(&url)).display().to_string())
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Checks the stages between jobs: every `items.from` names a job, and no
/// job reads, through other stages, its own results.
pub(super) fn check_stages(jobs: &[Parsed], out: &mut Vec<Diagnostic>) {
    let upstream_of = |job: &Parsed| job.manifest.items.as_ref().and_then(|items| items.from.clone());
    let edges: BTreeMap<&str, String> =
        jobs.iter().filter_map(|job| upstream_of(job).map(|from| (job.name.as_str(), from))).collect();
    for job in jobs {
        let Some(from) = edges.get(job.name.as_str()) else { continue };
        if !jobs.iter().any(|other| other.name == *from) {
            let names = jobs.iter().map(|other| other.name.as_str()).filter(|name| *name != job.name);
            let help = crate::suggest::did_you_mean(from, names)
                .unwrap_or_else(|| "name a job of jobs/ (its file name without .yaml)".to_owned());
            out.push(
                job.at_value(
                    Code::UnknownUpstream,
                    "items.from",
                    format!("items.from names `{from}`, no job in jobs/"),
                )
                .help(help),
            );
            continue;
        }
        if let Some(upstream) = jobs.iter().find(|other| other.name == *from) {
            check_stage_deadline(job, upstream, out);
        }
        if let Some(path) = cycle_from(&job.name, &edges) {
            out.push(
                job.at_value(
                    Code::StageCycle,
                    "items.from",
                    format!("job `{}` reads its own results: {}", job.name, path.join(" <- ")),
                )
                .help("a stage reads an earlier job's results; break the cycle by giving one job its own items"),
            );
        }
    }
}

/// A stage without a schedule counts its deadline from its upstream's
/// instant, as the upstream does: unless it ends later, an upstream that
/// takes its whole window leaves the stage none.
fn check_stage_deadline(stage: &Parsed, upstream: &Parsed, out: &mut Vec<Diagnostic>) {
    if stage.manifest.schedule.is_some() {
        return;
    }
    let deadline = |job: &Parsed| match job.manifest.deadline.as_deref() {
        Some(text) => crate::manifest::parse_duration(text).ok(),
        None => Some(crate::manifest::default_deadline(job.manifest.tier)),
    };
    let (Some(own), Some(theirs)) = (deadline(stage), deadline(upstream)) else { return };
    if own <= theirs {
        let (own_text, theirs_text) = (crate::manifest::format_duration(own), crate::manifest::format_duration(theirs));
        out.push(
            stage
                .at_value(
                    Code::StageDeadlineBeforeUpstream,
                    if stage.manifest.deadline.is_some() { "deadline" } else { "items.from" },
                    format!(
                        "the deadline {own_text} ends no later than `{}`'s {theirs_text}: both count from its run's instant",
                        upstream.name
                    ),
                )
                .help(format!("give the stage a deadline longer than {theirs_text}, leaving it time to run")),
        );
    }
}

/// The path back to `start` when following `items.from` from it leads there.
fn cycle_from(start: &str, edges: &BTreeMap<&str, String>) -> Option<Vec<String>> {
    let mut path = vec![start.to_owned()];
    let mut at = start;
    while let Some(next) = edges.get(at) {
        path.push(next.clone());
        if next == start {
            return Some(path);
        }
        if path.len() > edges.len() + 1 {
            return None;
        }
        at = next.as_str();
    }
    None
}

/// What a sink writes to, as a comparable key and the path of the value to underline.
fn sink_target(sink: &Sink) -> Option<(String, &'static str)> {
    if let Some(path) = &sink.jsonl {
        return Some((format!("file {path}"), "sink.jsonl"));
    }
    if let Some(path) = &sink.dir {
        return Some((format!("directory {path}"), "sink.dir"));
    }
    if let Some(postgres) = &sink.postgres {
        return Some((format!("postgres table {}", postgres.table), "sink.postgres.table"));
    }
    sink.sqlite.as_ref().map(|s| (format!("table {} in {}", s.table, s.path), "sink.sqlite.path"))
}

/// Warns once per job when two or more jobs write the same sink target.
pub(super) fn check_shared_sinks(jobs: &[Parsed], out: &mut Vec<Diagnostic>) {
    let mut writers: BTreeMap<String, Vec<(&Parsed, &'static str)>> = BTreeMap::new();
    for job in jobs {
        if let Some((target, path)) = job.manifest.sink.as_ref().and_then(sink_target) {
            writers.entry(target).or_default().push((job, path));
        }
    }
    for (target, jobs) in writers.into_iter().filter(|(_, jobs)| jobs.len() > 1) {
        for (job, path) in &jobs {
            let others: Vec<_> = jobs
                .iter()
                .filter(|(other, _)| other.name != job.name)
                .map(|(other, _)| format!("`{}`", other.name))
                .collect();
            out.push(
                job.at_value(
                    Code::SharedSinkPath,
                    path,
                    format!("job `{}` writes the same {target} as {}", job.name, others.join(", ")),
                )
                .help("give each job its own sink path, e.g. `out/<job>/...`"),
            );
        }
    }
}
