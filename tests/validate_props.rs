//! `validate` never panics, whatever the bytes.

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
