//! `orchestrator validate` on the example jobs and on the broken corpus.

use crate::support::{broken_dir, code, run, run_in, stdout};

const BROKEN: &[&str] =
    &["validate", "--jobs", "tests/fixtures/broken/jobs", "--prompts", "tests/fixtures/broken/prompts"];

#[test]
fn the_example_jobs_validate_clean() {
    let output = run(&["validate", "--deny-warnings"]);
    let text = stdout(&output);
    assert_eq!(code(&output), 0, "{text}");
    assert!(text.starts_with("ok: ") && text.contains(" 0 errors, 0 warnings"), "{text}");
}

#[test]
fn the_broken_corpus_fails_with_every_problem_shown() {
    let output = run(BROKEN);
    assert_eq!(code(&output), 78);
    insta::assert_snapshot!("broken_human", stdout(&output));
}

#[test]
fn the_broken_corpus_as_json() {
    let mut args = BROKEN.to_vec();
    args.extend(["--format", "json"]);
    let output = run(&args);
    assert_eq!(code(&output), 78);
    let value: serde_json::Value = serde_json::from_str(&stdout(&output)).expect("valid JSON");
    for diagnostic in value.as_array().expect("an array") {
        let keys: Vec<_> = diagnostic.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, ["file", "line", "column", "severity", "code", "message", "help"]);
    }
    insta::assert_json_snapshot!("broken_json", value);
}

/// Each file of the corpus holds one mistake; this is the code it must get,
/// at a line and column (0 for problems of the whole file).
const EXPECTED: &[(&str, &str, usize)] = &[
    ("BadName.yaml", "E007", 0),
    ("beta-wrong-lane.yaml", "E035", 8),
    ("cache-5m-on-batch.yaml", "W041", 9),
    ("cache-ttl-invalid.yaml", "E040", 8),
    ("cron-never-fires.yaml", "E011", 3),
    ("deadline-over-expiry.yaml", "W022", 6),
    ("deadline-tier-mismatch.yaml", "W021", 6),
    ("deadline-unparseable.yaml", "E020", 5),
    ("deadline-zero.yaml", "E020", 5),
    ("duplicate-key.yaml", "E003", 5),
    ("empty-items-command.yaml", "E061", 7),
    ("invalid-cron.yaml", "E010", 3),
    ("gemini-betas.yaml", "E043", 7),
    ("gemini-generation-config.yaml", "E039", 8),
    ("max-tokens-over-limit.yaml", "E033", 5),
    ("max-tokens-zero.yaml", "E033", 4),
    ("missing-field.yaml", "E005", 2),
    ("no-batch-support.yaml", "E032", 4),
    ("openai-anthropic-param.yaml", "E038", 8),
    ("openai-batch-too-big.yaml", "E072", 7),
    ("openai-cache.yaml", "E043", 8),
    ("openai-owned-param.yaml", "E039", 8),
    ("shared-sink-a.yaml", "W063", 6),
    ("shared-sink-b.yaml", "W063", 6),
    ("temperature-out-of-range.yaml", "E037", 5),
    ("template-missing.yaml", "E050", 5),
    ("unknown-field.yaml", "E004", 6),
    ("unknown-model.yaml", "E031", 3),
    ("unknown-param.yaml", "E038", 7),
    ("unknown-provider.yaml", "E030", 3),
    ("unknown-tier.yaml", "E006", 3),
    ("unknown-timezone.yaml", "E012", 4),
    ("wrong-type.yaml", "E006", 4),
    ("yaml-syntax.yaml", "E002", 2),
];

#[test]
fn every_broken_file_gets_its_code_at_its_line() {
    let mut args = BROKEN.to_vec();
    args.extend(["--format", "json"]);
    let diagnostics: Vec<serde_json::Value> = serde_json::from_str(&stdout(&run(&args))).unwrap();
    for (file, expected_code, expected_line) in EXPECTED {
        let path = format!("tests/fixtures/broken/jobs/{file}");
        let found: Vec<_> = diagnostics.iter().filter(|d| d["file"] == path.as_str()).collect();
        assert_eq!(found.len(), 1, "{file}: expected exactly one diagnostic, got {found:#?}");
        assert_eq!(found[0]["code"], *expected_code, "{file}");
        assert_eq!(found[0]["line"], *expected_line, "{file}");
        if *expected_line > 0 {
            assert!(found[0]["column"].as_u64().unwrap() >= 1, "{file}");
        }
    }
    let manifests = std::fs::read_dir(broken_dir().join("jobs")).unwrap().count();
    assert_eq!(manifests, EXPECTED.len() + 3, "every manifest in the corpus is listed here or has a template problem");
}

#[test]
fn template_problems_point_into_the_template_file() {
    let mut args = BROKEN.to_vec();
    args.extend(["--format", "json"]);
    let diagnostics: Vec<serde_json::Value> = serde_json::from_str(&stdout(&run(&args))).unwrap();
    let at =
        |file: &str| diagnostics.iter().find(|d| d["file"] == file).unwrap_or_else(|| panic!("nothing for {file}"));
    let syntax = at("tests/fixtures/broken/prompts/shared/syntax-error.md.j2");
    assert_eq!(
        (syntax["code"].as_str(), syntax["line"].as_u64(), syntax["column"].as_u64()),
        (Some("E051"), Some(3), Some(12))
    );
    let undefined = at("tests/fixtures/broken/prompts/shared/undefined-var.md.j2");
    assert_eq!(
        (undefined["code"].as_str(), undefined["line"].as_u64(), undefined["column"].as_u64()),
        (Some("E052"), Some(2), Some(14))
    );
    let vars = at("tests/fixtures/broken/prompts/shared/undefined-vars-field.md.j2");
    assert_eq!(vars["code"], "E052");
    assert_eq!(vars["help"], "did you mean `audience`?");
}

fn project_with(manifest: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("jobs")).unwrap();
    std::fs::create_dir(dir.path().join("prompts")).unwrap();
    std::fs::write(dir.path().join("jobs/only.yaml"), manifest).unwrap();
    dir
}

#[test]
fn warnings_pass_unless_denied() {
    let dir = project_with(
        "schedule: { cron: '0 6 * * *' }\nmodel: claude-haiku-4-5\nmax_tokens: 100\ndeadline: 30h\nprompt: { inline: hi }\n",
    );
    let output = run_in(dir.path(), &["validate"]);
    assert_eq!(code(&output), 0, "{}", stdout(&output));
    assert!(stdout(&output).contains("warning[W022]"));
    assert_eq!(code(&run_in(dir.path(), &["validate", "--deny-warnings"])), 78);
}

#[test]
fn bad_usage_exits_2() {
    assert_eq!(code(&run(&["validate", "--format", "xml"])), 2);
    assert_eq!(code(&run(&["no-such-command"])), 2);
}

#[test]
fn a_missing_jobs_directory_is_a_config_error() {
    let output = run(&["validate", "--jobs", "no/such/dir"]);
    assert_eq!(code(&output), 78);
    assert!(stdout(&output).contains("no/such/dir: error[E001]: cannot read jobs directory"), "{}", stdout(&output));
}

#[test]
fn a_user_catalog_changes_what_is_known() {
    let dir =
        project_with("schedule: { cron: '0 6 * * *' }\nmodel: house-model\nmax_tokens: 100\nprompt: { inline: hi }\n");
    assert_eq!(code(&run_in(dir.path(), &["validate"])), 78);
    let catalog = "providers:\n  anthropic:\n    batch_discount: 0.5\n    batch_expiry: 24h\n    models:\n      house-model:\n        batch: true\n        max_output_tokens: 1000\n        prices: { input: 1, output: 2, cache_write_5m: 1.25, cache_write_1h: 2, cache_read: 0.1 }\n";
    std::fs::write(dir.path().join("catalog.yaml"), catalog).unwrap();
    let output = run_in(dir.path(), &["validate", "--catalog", "catalog.yaml"]);
    assert_eq!(code(&output), 0, "{}", stdout(&output));
}

#[test]
fn a_realtime_job_with_an_hour_to_spare_gets_a_note_that_never_fails_validation() {
    let dir = project_with(
        "schedule: { cron: '0 6 * * *' }\ntier: realtime\ndeadline: 2h\nmodel: claude-haiku-4-5\nmax_tokens: 100\n\
         prompt: { inline: hi }\n",
    );
    let output = run_in(dir.path(), &["validate", "--deny-warnings"]);
    assert_eq!(code(&output), 0, "{}", stdout(&output));
    let text = stdout(&output);
    assert!(text.contains("jobs/only.yaml:2:7: note[N080]"), "{text}");
    assert!(text.contains("set `tier: soft`"), "{text}");
    assert!(text.contains("0 errors, 0 warnings"), "{text}");
}

/// Moving a job to another provider is a change of `provider:` and `model:`;
/// what the new provider spells differently is named, with its spelling.
#[test]
fn a_job_moved_to_openai_is_told_what_its_api_calls_things() {
    let moved = "schedule: { cron: '0 6 * * *' }\nprovider: openai\nmodel: gpt-4.1-mini\nmax_tokens: 100\n\
                 temperature: 1.5\nprompt: { inline: hi }\n";
    let output = run_in(project_with(moved).path(), &["validate", "--deny-warnings"]);
    assert_eq!(code(&output), 0, "temperature 1.5 is within OpenAI's 0 to 2: {}", stdout(&output));

    let dir = project_with(&format!("{moved}params: {{ stop_sequences: ['\\n'] }}\n"));
    let output = run_in(dir.path(), &["validate", "--format", "json"]);
    assert_eq!(code(&output), 78);
    let diagnostics: Vec<serde_json::Value> = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(diagnostics.len(), 1, "{diagnostics:#?}");
    assert_eq!(diagnostics[0]["code"], "E038");
    assert_eq!(diagnostics[0]["help"], "the Chat Completions API calls it `stop`: write `params.stop`");

    let anthropic = moved.replace("provider: openai\nmodel: gpt-4.1-mini", "model: claude-haiku-4-5");
    let output = run_in(project_with(&anthropic).path(), &["validate", "--format", "json"]);
    let diagnostics: Vec<serde_json::Value> = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(diagnostics.len(), 1, "{diagnostics:#?}");
    assert_eq!(diagnostics[0]["code"], "E037", "Anthropic's range is 0 to 1");
}

#[test]
fn a_job_moved_to_gemini_is_told_what_its_api_calls_things() {
    let moved = "schedule: { cron: '0 6 * * *' }\nprovider: gemini\nmodel: gemini-2.5-flash\nmax_tokens: 100\n\
                 temperature: 1.5\nprompt: { inline: hi }\nparams: { topK: 40 }\n";
    let output = run_in(project_with(moved).path(), &["validate", "--deny-warnings"]);
    assert_eq!(code(&output), 0, "{}", stdout(&output));
    let dir = project_with(&moved.replace("topK: 40", "top_k: 40"));
    let output = run_in(dir.path(), &["validate", "--format", "json"]);
    let diagnostics: Vec<serde_json::Value> = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(diagnostics.len(), 1, "{diagnostics:#?}");
    assert_eq!(diagnostics[0]["code"], "E038");
    assert_eq!(diagnostics[0]["help"], "the Gemini API calls it `topK`: write `params.topK`");
}

/// `failover` names models of other providers; `validate` says which
/// params do not survive the move, and whether the key is there.
#[test]
fn failover_models_are_checked_for_provider_params_and_key() {
    let job = "schedule: { cron: '0 6 * * *' }\ntier: soft\nmodel: claude-haiku-4-5\nmax_tokens: 100\n\
               prompt: { inline: hi }\nparams: { stop_sequences: ['\\n'], top_k: 5 }\nfailover: [gpt-4o-mini, gemini-2.5-flash]\n";
    let dir = project_with(job);
    let validate = |envs: &[(&str, &str)]| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_orchestrator"));
        command.args(["validate", "--format", "json"]).current_dir(dir.path());
        for name in ["OPENAI_API_KEY", "GOOGLE_API_KEY", "GEMINI_API_KEY", "CREDENTIALS_DIRECTORY"] {
            command.env_remove(name);
        }
        let output = command.envs(envs.iter().copied()).output().unwrap();
        assert_eq!(code(&output), 0, "warnings only: {}", stdout(&output));
        let found: Vec<serde_json::Value> = serde_json::from_str(&stdout(&output)).unwrap();
        found
            .iter()
            .map(|d| format!("{} {}", d["code"].as_str().unwrap(), d["message"].as_str().unwrap()))
            .collect::<Vec<_>>()
    };
    let without_keys = validate(&[]);
    let codes: Vec<&str> = without_keys.iter().map(|d| &d[..4]).collect();
    // top_k has no OpenAI equivalent; stop_sequences and top_k both translate to Gemini.
    assert_eq!(codes, ["W045", "W046", "W046"], "{without_keys:#?}");
    assert!(without_keys[0].contains("`params.top_k` has no equivalent on `openai`"), "{without_keys:#?}");
    let with_keys = validate(&[("OPENAI_API_KEY", "sk-x"), ("GEMINI_API_KEY", "g-x")]);
    assert_eq!(with_keys.len(), 1, "only the lost param is left: {with_keys:#?}");

    for (failover, message, help) in [
        ("[gpt-4o-mni]", "unknown failover model `gpt-4o-mni`", "did you mean `gpt-4o-mini`?"),
        ("[sonnet]", "failover model `sonnet` is on the job's own provider `anthropic`", ""),
    ] {
        let dir = project_with(&job.replace("[gpt-4o-mini, gemini-2.5-flash]", failover));
        let output = run_in(dir.path(), &["validate", "--format", "json"]);
        assert_eq!(code(&output), 78);
        let found: Vec<serde_json::Value> = serde_json::from_str(&stdout(&output)).unwrap();
        let error = found.iter().find(|d| d["code"] == "E044").unwrap_or_else(|| panic!("{found:#?}"));
        assert_eq!(error["message"], message);
        assert_eq!(error["line"], 7);
        if !help.is_empty() {
            assert_eq!(error["help"], help);
        }
    }
}

#[test]
fn stages_name_jobs_that_exist_and_never_read_their_own_results() {
    let head = "schedule: { cron: '0 6 * * *' }\nmodel: claude-haiku-4-5\nmax_tokens: 100\nprompt: { inline: hi }\n";
    let dir = project_with(&format!("{head}items: {{ jsonl: items.jsonl }}\n"));
    let stage = |from: &str| format!("{head}items: {{ from: {from}, as: one }}\n");
    std::fs::write(dir.path().join("jobs/digest.yaml"), stage("only")).unwrap();
    let output = run_in(dir.path(), &["validate", "--deny-warnings"]);
    assert_eq!(code(&output), 0, "a stage over an existing job: {}", stdout(&output));

    std::fs::write(dir.path().join("jobs/digest.yaml"), stage("onyl")).unwrap();
    let output = run_in(dir.path(), &["validate", "--format", "json"]);
    assert_eq!(code(&output), 78);
    let diagnostics: Vec<serde_json::Value> = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(diagnostics.len(), 1, "{diagnostics:#?}");
    assert_eq!(diagnostics[0]["code"], "E066");
    assert_eq!(
        (diagnostics[0]["file"].as_str().unwrap(), diagnostics[0]["line"].as_u64()),
        ("jobs/digest.yaml", Some(5))
    );
    assert_eq!(diagnostics[0]["help"], "did you mean `only`?");

    // Two jobs reading each other's results, and one with two sources.
    std::fs::write(dir.path().join("jobs/digest.yaml"), stage("only")).unwrap();
    std::fs::write(dir.path().join("jobs/only.yaml"), format!("{head}items: {{ from: digest }}\n")).unwrap();
    std::fs::write(dir.path().join("jobs/both.yaml"), format!("{head}items: {{ jsonl: a.jsonl, from: only }}\n"))
        .unwrap();
    let output = run_in(dir.path(), &["validate", "--format", "json"]);
    let diagnostics: Vec<serde_json::Value> = serde_json::from_str(&stdout(&output)).unwrap();
    let codes: Vec<(&str, &str)> =
        diagnostics.iter().map(|d| (d["file"].as_str().unwrap(), d["code"].as_str().unwrap())).collect();
    assert_eq!(
        codes,
        [("jobs/both.yaml", "E060"), ("jobs/digest.yaml", "E067"), ("jobs/only.yaml", "E067")],
        "{diagnostics:#?}"
    );
    assert!(diagnostics[1]["message"].as_str().unwrap().ends_with("digest <- only <- digest"), "{diagnostics:#?}");

    // Only a stage may go without a schedule: it fires after its upstream's runs.
    let unscheduled = head.replace("schedule: { cron: '0 6 * * *' }\n", "");
    std::fs::remove_file(dir.path().join("jobs/both.yaml")).unwrap();
    let upstream = format!("{head}deadline: 6h\nitems: {{ jsonl: items.jsonl }}\n");
    std::fs::write(dir.path().join("jobs/only.yaml"), &upstream).unwrap();
    std::fs::write(dir.path().join("jobs/digest.yaml"), format!("{unscheduled}items: {{ from: only }}\n")).unwrap();
    let output = run_in(dir.path(), &["validate", "--deny-warnings"]);
    assert_eq!(code(&output), 0, "a stage without a schedule, 1d after the upstream's 6h: {}", stdout(&output));
    // Its deadline counts from the upstream's instant too: 6h leaves it nothing.
    let short = format!("{unscheduled}deadline: 6h\nitems: {{ from: only }}\n");
    std::fs::write(dir.path().join("jobs/digest.yaml"), short).unwrap();
    let output = run_in(dir.path(), &["validate", "--format", "json"]);
    assert_eq!(code(&output), 0, "a warning");
    let diagnostics: Vec<serde_json::Value> = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(diagnostics.len(), 1, "{diagnostics:#?}");
    assert_eq!((diagnostics[0]["code"].as_str(), diagnostics[0]["line"].as_u64()), (Some("W068"), Some(4)));
    assert_eq!(diagnostics[0]["help"], "give the stage a deadline longer than 6h, leaving it time to run");
    std::fs::write(dir.path().join("jobs/only.yaml"), format!("{unscheduled}items: {{ jsonl: items.jsonl }}\n"))
        .unwrap();
    let output = run_in(dir.path(), &["validate", "--format", "json"]);
    let diagnostics: Vec<serde_json::Value> = serde_json::from_str(&stdout(&output)).unwrap();
    let errors: Vec<_> = diagnostics.iter().filter(|d| d["severity"] == "error").collect();
    assert_eq!(errors.len(), 1, "{diagnostics:#?}");
    assert_eq!((errors[0]["code"].as_str(), errors[0]["file"].as_str()), (Some("E005"), Some("jobs/only.yaml")));
    assert!(errors[0]["help"].as_str().unwrap().contains("`items: { from: JOB }`"), "{diagnostics:#?}");
}

#[test]
fn a_postgres_sink_needs_a_plain_table_name_and_says_when_its_database_url_is_missing() {
    let job = "schedule: { cron: '0 6 * * *' }\nmodel: claude-haiku-4-5\nmax_tokens: 100\nprompt: { inline: hi }\n\
               sink: { postgres: { table: answers } }\n";
    let validate = |manifest: &str, url: Option<&str>| {
        let dir = project_with(manifest);
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_orchestrator"));
        command.args(["validate", "--format", "json"]).current_dir(dir.path());
        command.env_remove("ORCHESTRATOR_DATABASE_URL").env_remove("CREDENTIALS_DIRECTORY");
        if let Some(url) = url {
            command.env("ORCHESTRATOR_DATABASE_URL", url);
        }
        let output = command.output().unwrap();
        let found: Vec<serde_json::Value> = serde_json::from_str(&stdout(&output)).unwrap();
        (code(&output), found)
    };
    let (status, found) = validate(job, Some("postgres://writer@db.internal/results"));
    assert_eq!((status, found.len()), (0, 0), "{found:#?}");
    let (status, found) = validate(job, None);
    assert_eq!(status, 0, "a warning: {found:#?}");
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!((found[0]["code"].as_str(), found[0]["line"].as_i64()), (Some("W074"), Some(5)));
    assert!(found[0]["help"].as_str().unwrap().contains("orchestrator-database-url"), "{found:#?}");
    let (status, found) = validate(&job.replace("table: answers", "table: 'answers; drop'"), Some("postgres://x/y"));
    assert_eq!(status, 78);
    let error = found.iter().find(|d| d["code"] == "E064").unwrap_or_else(|| panic!("{found:#?}"));
    assert_eq!(error["message"], "table name `answers; drop` is not a plain identifier");
    let (status, found) = validate(&job.replace("table: answers", "table: Answers"), Some("postgres://x/y"));
    assert_eq!(status, 78);
    let error = found.iter().find(|d| d["code"] == "E064").unwrap_or_else(|| panic!("{found:#?}"));
    assert_eq!(error["help"], "write `answers`");
}

#[test]
fn a_file_sink_on_a_postgresql_state_is_said_to_stay_on_one_machine() {
    let job = "schedule: { cron: '0 6 * * *' }\nmodel: claude-haiku-4-5\nmax_tokens: 100\nprompt: { inline: hi }\n\
               sink: { jsonl: out/answers.jsonl }\n";
    let validate = |env: &[(&str, &str)]| {
        let dir = project_with(job);
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_orchestrator"));
        command.args(["validate", "--format", "json"]).current_dir(dir.path());
        command
            .env_remove("ORCHESTRATOR_DATABASE_URL")
            .env_remove("ORCHESTRATOR_STATE")
            .env_remove("CREDENTIALS_DIRECTORY");
        command.envs(env.iter().copied());
        let output = command.output().unwrap();
        let found: Vec<serde_json::Value> = serde_json::from_str(&stdout(&output)).unwrap();
        (code(&output), found)
    };
    let url = "postgres://writer:hunter2@db.internal/state";
    for sqlite in [&[][..], &[("ORCHESTRATOR_DATABASE_URL", url)], &[("ORCHESTRATOR_STATE", "state/elsewhere.db")]] {
        let (status, found) = validate(sqlite);
        assert_eq!((status, found.len()), (0, 0), "a SQLite state: the sink is on the one machine: {found:#?}");
    }
    for env in
        [&[("ORCHESTRATOR_STATE", "postgres"), ("ORCHESTRATOR_DATABASE_URL", url)][..], &[("ORCHESTRATOR_STATE", url)]]
    {
        let (status, found) = validate(env);
        assert_eq!((status, found.len()), (0, 1), "a warning: {found:#?}");
        assert_eq!((found[0]["code"].as_str(), found[0]["line"].as_i64()), (Some("W076"), Some(5)));
        let message = found[0]["message"].as_str().unwrap();
        assert!(message.contains("postgres://writer@db.internal/state") && !message.contains("hunter2"), "{message}");
        assert!(found[0]["help"].as_str().unwrap().contains("postgres: { table"), "{found:#?}");
    }
}

#[test]
fn overlap_and_catch_up_on_a_job_off_the_clock_are_said_to_do_nothing() {
    let queue = "enqueue: { max_items: 10, max_wait: 5m }\nmodel: claude-haiku-4-5\nmax_tokens: 100\n\
                 prompt: { inline: hi }\ncatch_up: all\noverlap: skip\n";
    let dir = project_with(queue);
    let output = run_in(dir.path(), &["validate", "--format", "json"]);
    assert_eq!(code(&output), 0, "warnings only: {}", stdout(&output));
    let found: Vec<serde_json::Value> = serde_json::from_str(&stdout(&output)).unwrap();
    let w075: Vec<(i64, &str)> = found
        .iter()
        .filter(|d| d["code"] == "W075")
        .map(|d| (d["line"].as_i64().unwrap(), d["message"].as_str().unwrap()))
        .collect();
    assert_eq!(
        w075,
        [
            (5, "`catch_up` applies at the instants of a `schedule:`, and this job has none"),
            (6, "`overlap` applies at the instants of a `schedule:`, and this job has none"),
        ],
        "{found:#?}"
    );
    let scheduled =
        project_with(&queue.replace("enqueue: { max_items: 10, max_wait: 5m }", "schedule: { cron: '0 6 * * *' }"));
    let output = run_in(scheduled.path(), &["validate", "--format", "json"]);
    assert!(!stdout(&output).contains("W075"), "{}", stdout(&output));
}
