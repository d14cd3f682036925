//! `validate` never panics, whatever the bytes; a manifest changed field by
//! field (wrong types, out-of-range numbers, unknown names, missing keys) is
//! reported inside the file, on the changed line, and exits 78 exactly when
//! an error is reported.

use proptest::prelude::*;

use orchestrator::catalog::Catalog;
use orchestrator::validate::{Inputs, Report, validate_file};

fn check(bytes: &[u8]) -> Report {
    let catalog = Catalog::builtin();
    let prompts = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("prompts");
    let inputs = Inputs { jobs_dir: &prompts, prompts_dir: &prompts, catalog: &catalog, now: chrono::Utc::now() };
    let mut report = Report::default();
    validate_file("jobs/prop.yaml", bytes, inputs, &mut report);
    report
}

const VALID: &str = "schedule:\n  cron: \"30 6 * * *\"\n  timezone: Europe/Berlin\ntier: soft\ndeadline: 45m\nmodel: claude-haiku-4-5\nmax_tokens: 512\nsystem: { inline: \"Be brief.\" }\nprompt: { inline: \"Hi {{ item.name }} {{ run.date }}\" }\nbetas: [a]\ncache: { system: 1h }\nsink: { jsonl: \"out/{{ run.date }}.jsonl\" }\n";

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let report = check(&bytes);
        for diagnostic in &report.diagnostics {
            diagnostic.render_human();
        }
    }

    #[test]
    fn yaml_like_text_never_panics(text in "[a-z_:{}\\[\\]\"'#|>&*!%@ \n\t0-9.-]{0,300}") {
        check(text.as_bytes());
    }

    #[test]
    fn a_valid_manifest_with_one_byte_changed_never_panics(index in 0..VALID.len(), byte in any::<u8>()) {
        let mut bytes = VALID.as_bytes().to_vec();
        bytes[index] = byte;
        let report = check(&bytes);
        for diagnostic in &report.diagnostics {
            prop_assert!(diagnostic.line == 0 || diagnostic.source_line.is_some() || diagnostic.file != "jobs/prop.yaml");
        }
    }
}

#[test]
fn the_base_manifest_of_the_properties_is_valid() {
    let report = check(VALID.as_bytes());
    let problems: Vec<_> = report.diagnostics.iter().filter(|d| d.code.as_str() != "W036").collect();
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn a_carriage_return_inside_a_manifest_keeps_its_snippet() {
    // Found by `a_valid_manifest_with_one_byte_changed_never_panics`: YAML
    // counts a lone CR as a line break, `str::lines` did not.
    let mut bytes = VALID.as_bytes().to_vec();
    bytes[170] = b'\r';
    for diagnostic in &check(&bytes).diagnostics {
        assert!(diagnostic.line == 0 || diagnostic.source_line.is_some(), "{diagnostic:?}");
    }
}

/// A valid manifest, one key per line, so a mutation of a field touches
/// exactly one line and the diagnostic can be checked against it.
const FIELDS: &[(&str, &str)] = &[
    ("schedule", ""),
    ("schedule.cron", "\"30 6 * * *\""),
    ("schedule.timezone", "Europe/Berlin"),
    ("tier", "soft"),
    ("deadline", "45m"),
    ("provider", "anthropic"),
    ("model", "claude-haiku-4-5"),
    ("max_tokens", "512"),
    ("temperature", "0.2"),
    ("system", "{ inline: \"Be brief.\" }"),
    ("prompt", "{ inline: \"Hi {{ item.name }} {{ run.date }}\" }"),
    ("retry", ""),
    ("retry.max_attempts", "3"),
    ("cache", ""),
    ("cache.system", "1h"),
    ("items", "{ jsonl: data/items.jsonl }"),
    ("sink", "{ jsonl: \"out/{{ run.date }}.jsonl\" }"),
];

/// One change to one field of [`FIELDS`].
#[derive(Debug, Clone)]
enum Mutation {
    /// The field's value becomes `value`, and an error with `code` is due.
    Value { path: &'static str, value: &'static str, code: &'static str },
    /// The field's key is misspelt: an unknown field (E004).
    Key { path: &'static str, typo: String },
    /// The field is removed (with what it holds); `code` is the error due, if
    /// any, reported on the line of `at` (default: the mapping that lost it).
    Missing { path: &'static str, code: Option<&'static str>, at: Option<&'static str> },
}

/// Wrong types, out-of-range numbers and unknown names, field by field.
const VALUES: &[(&str, &str, &str)] = &[
    ("schedule", "5", "E006"),
    ("schedule.cron", "[1, 2]", "E006"),
    ("schedule.cron", "\"61 * * * *\"", "E010"),
    ("schedule.cron", "\"0 0 31 2 *\"", "E011"),
    ("schedule.timezone", "Mars/Olympus", "E012"),
    ("schedule.timezone", "{ a: 1 }", "E006"),
    ("tier", "bulk", "E006"),
    ("tier", "[soft]", "E006"),
    ("deadline", "0s", "E020"),
    ("deadline", "2 hours", "E020"),
    ("deadline", "{ h: 2 }", "E006"),
    ("provider", "antropic", "E030"),
    ("model", "claude-sonet-4-6", "E031"),
    ("model", "claude-haiku-3", "E032"),
    ("model", "{ name: x }", "E006"),
    ("max_tokens", "lots", "E006"),
    ("max_tokens", "1.5", "E006"),
    ("max_tokens", "true", "E006"),
    ("max_tokens", "0", "E033"),
    ("max_tokens", "200000", "E033"),
    ("max_tokens", "-4", "E033"),
    ("temperature", "warm", "E006"),
    ("temperature", "1.5", "E037"),
    ("temperature", "-0.5", "E037"),
    ("prompt", "[a, b]", "E006"),
    ("retry", "many", "E006"),
    ("retry.max_attempts", "0", "E070"),
    ("retry.max_attempts", "lots", "E006"),
    ("cache", "5", "E006"),
    ("cache.system", "10m", "E040"),
    ("items", "5", "E006"),
    ("items", "{ jsonl: a.jsonl, glob: \"*.json\" }", "E060"),
    ("sink", "7", "E006"),
];

/// Removals: required fields name the error due, optional ones none; a
/// field others depend on names where the dependant's error is.
const REMOVALS: &[(&str, Option<&str>, Option<&str>)] = &[
    ("schedule", Some("E005"), None),
    ("schedule.cron", Some("E005"), None),
    ("schedule.timezone", None, None),
    ("tier", None, None),
    ("model", Some("E005"), None),
    ("max_tokens", Some("E005"), None),
    ("prompt", Some("E005"), None),
    ("temperature", None, None),
    ("system", Some("E042"), Some("cache.system")),
    ("cache", None, None),
    ("retry", None, None),
];

fn mutation() -> impl Strategy<Value = Mutation> {
    let value = proptest::sample::select(VALUES).prop_map(|(path, value, code)| Mutation::Value { path, value, code });
    let missing = proptest::sample::select(REMOVALS).prop_map(|(path, code, at)| Mutation::Missing { path, code, at });
    let keys: Vec<&str> = FIELDS.iter().map(|(path, _)| *path).collect();
    let key =
        (proptest::sample::select(keys), any::<proptest::sample::Index>(), "[qxz]").prop_map(|(path, at, letter)| {
            let name = path.rsplit('.').next().unwrap();
            let at = at.index(name.len() + 1);
            Mutation::Key { path, typo: format!("{}{letter}{}", &name[..at], &name[at..]) }
        });
    prop_oneof![value, missing, key]
}

/// The manifest with `mutation` applied, and the 1-based line a diagnostic
/// about it must point at (for a removal: the mapping that lost the field).
fn mutated(mutation: &Mutation) -> (String, usize) {
    let mut text = String::new();
    let mut line_of = std::collections::HashMap::new();
    let mut lines = 0;
    for (path, value) in FIELDS {
        let inside = |p: &str| path.starts_with(&format!("{p}."));
        // A removal takes what the field holds with it; so does a new value of a mapping.
        let gone = match mutation {
            Mutation::Missing { path: p, .. } => p == path || inside(p),
            Mutation::Value { path: p, .. } => inside(p),
            Mutation::Key { .. } => false,
        };
        if gone {
            continue;
        }
        let (depth, name) = (path.matches('.').count(), path.rsplit('.').next().unwrap());
        let name = match mutation {
            Mutation::Key { path: p, typo } if p == path => typo.as_str(),
            _ => name,
        };
        let value = match mutation {
            Mutation::Value { path: p, value, .. } if p == path => value,
            _ => value,
        };
        let written = format!("{}{name}:{}{value}", "  ".repeat(depth), if value.is_empty() { "" } else { " " });
        text.push_str(written.trim_end());
        text.push('\n');
        lines += 1;
        line_of.insert(*path, lines);
    }
    let expected = match mutation {
        Mutation::Value { path, .. } | Mutation::Key { path, .. } => line_of[path],
        Mutation::Missing { at: Some(at), .. } => line_of[at],
        Mutation::Missing { path, .. } => match path.rsplit_once('.') {
            Some((parent, _)) => line_of[parent],
            None => 1,
        },
    };
    (text, expected)
}

fn due(mutation: &Mutation) -> Option<&'static str> {
    match mutation {
        Mutation::Value { code, .. } => Some(code),
        Mutation::Key { .. } => Some("E004"),
        Mutation::Missing { code, .. } => *code,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn a_mutated_field_is_reported_inside_the_file_on_its_own_line(mutation in mutation()) {
        let (text, line) = mutated(&mutation);
        let report = check(text.as_bytes());
        let errors: Vec<_> = report
            .diagnostics
            .iter()
            .filter(|d| d.severity == orchestrator::diagnostics::Severity::Error)
            .collect();
        let lines = text.lines().count();
        for error in &errors {
            prop_assert!((1..=lines).contains(&error.line), "outside the file: {error:?}\n{text}");
            prop_assert_eq!(error.source_line.as_deref(), text.lines().nth(error.line - 1), "{:?}", error);
            prop_assert!(error.column >= 1 && error.column <= text.lines().nth(error.line - 1).unwrap().chars().count() + 1);
            prop_assert_eq!(error.line, line, "not on the mutated field's line: {:?}\n{}", error, text);
        }
        match due(&mutation) {
            Some(code) => prop_assert!(
                errors.iter().any(|e| e.code.as_str() == code),
                "expected {code}, got {errors:#?}\n{text}"
            ),
            None => prop_assert!(errors.is_empty(), "an optional field's removal is no error: {errors:#?}\n{text}"),
        }
    }
}

proptest! {
    // Each case runs the real binary: fewer of them.
    #![proptest_config(ProptestConfig::with_cases(40))]

    #[test]
    fn validate_exits_78_exactly_when_it_reports_an_error(mutation in mutation()) {
        let (text, _) = mutated(&mutation);
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("jobs")).unwrap();
        std::fs::create_dir_all(dir.path().join("prompts")).unwrap();
        std::fs::write(dir.path().join("jobs/prop.yaml"), &text).unwrap();
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_orchestrator"))
            .args(["validate", "--format", "json"])
            .current_dir(dir.path())
            .output()
            .unwrap();
        let diagnostics: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
        let errors = diagnostics.iter().filter(|d| d["severity"] == "error").count();
        prop_assert_eq!(output.status.code() == Some(78), errors > 0, "{:?} {:#?}", output.status, diagnostics);
        prop_assert_eq!(output.status.code() == Some(0), errors == 0);
    }
}
