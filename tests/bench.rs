//! `orchestrator bench deliver` on the real binary: the scenario stores a
//! run's results without delivering them (its setup kills the run at its
//! first delivery), then hands them to every sink kind. It exits non-zero
//! unless each sink received every result, so a passing run proves the
//! setup and each measurement did what the figures claim.

use crate::support::{code, run, stderr, stdout};

#[test]
fn bench_deliver_hands_every_stored_result_to_every_sink_kind() {
    // Four rounds of at most 2,000: enough to compare later rounds with earlier ones.
    let output = run(&["bench", "deliver", "--count", "6500", "--repeat", "1", "--format", "json"]);
    assert_eq!(code(&output), 0, "bench deliver failed:\n{}", stderr(&output));
    let report: serde_json::Value = serde_json::from_str(&stdout(&output)).expect("one JSON object");
    assert_eq!(report["scenario"], "deliver", "{report}");
    let repeat = report["per_repeat"][0].as_object().expect("one repeat");
    for rate in ["JSON Lines, results/s", "dir, results/s", "sqlite, results/s"] {
        let value = repeat[rate].as_f64().unwrap_or_default();
        assert!(value > 0.0, "{rate}: {value} in {report}");
    }
    let later = &repeat["later half of the rounds vs the earlier, % slower"];
    assert!(later.is_f64(), "the rounds were timed from the worker's log: {report}");
    let figures = report["figures"].as_array().expect("figures");
    let targeted: Vec<&str> =
        figures.iter().filter(|f| !f["target"].is_null()).filter_map(|f| f["name"].as_str()).collect();
    assert_eq!(
        targeted,
        ["JSON Lines, results/s", "later half of the rounds vs the earlier, % slower"],
        "issue 18's two delivery targets are reported against their bounds"
    );
}
