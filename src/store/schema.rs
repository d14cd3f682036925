//! The database schema, as an ordered list of migrations.
//!
//! `PRAGMA user_version` holds how many have been applied. A migration is
//! never edited once released; changes are new entries.

/// Migrations in order; entry `i` moves the schema from version `i` to `i + 1`.
pub(super) const MIGRATIONS: &[&str] = &[V1, V2, V3, V4, V5, V6, V7, V8, V9, V10, V11, V12, V13, V14, V15];

/// Times are integer milliseconds since the Unix epoch (UTC).
const V1: &str = r#"
CREATE TABLE runs (
    id             INTEGER PRIMARY KEY,
    job            TEXT    NOT NULL,
    scheduled_for  INTEGER NOT NULL,
    run_key        TEXT    NOT NULL,
    tier           TEXT    NOT NULL,
    deadline_at    INTEGER NOT NULL,
    state          TEXT    NOT NULL CHECK (state IN ('open', 'completed', 'failed', 'late')),
    reason         TEXT,
    created_at     INTEGER NOT NULL,
    finished_at    INTEGER,
    UNIQUE (job, scheduled_for)
);

CREATE TABLE requests (
    custom_id   TEXT    PRIMARY KEY,
    run_id      INTEGER NOT NULL REFERENCES runs (id),
    seq         INTEGER NOT NULL,
    item        TEXT    NOT NULL,
    params      TEXT    NOT NULL,
    state       TEXT    NOT NULL CHECK (state IN ('pending', 'queued', 'in_flight', 'succeeded',
                                                  'retryable_failed', 'permanent_failed')),
    lane        TEXT,
    attempts    INTEGER NOT NULL DEFAULT 0,
    result_id   INTEGER REFERENCES results (id),
    updated_at  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX requests_by_run_state ON requests (run_id, state);

CREATE TABLE batches (
    id                 INTEGER PRIMARY KEY,
    run_id             INTEGER NOT NULL REFERENCES runs (id),
    provider           TEXT    NOT NULL,
    provider_batch_id  TEXT    UNIQUE,
    state              TEXT    NOT NULL CHECK (state IN ('submitting', 'in_progress', 'canceling',
                                                         'ended', 'abandoned')),
    request_count      INTEGER NOT NULL,
    intent_at          INTEGER NOT NULL,
    submitted_at       INTEGER,
    ended_at           INTEGER,
    results_url        TEXT,
    results_ingested   INTEGER NOT NULL DEFAULT 0,
    polled_at          INTEGER,
    error              TEXT
);
CREATE INDEX batches_by_state ON batches (state);

CREATE TABLE batch_requests (
    batch_id   INTEGER NOT NULL REFERENCES batches (id),
    custom_id  TEXT    NOT NULL REFERENCES requests (custom_id),
    PRIMARY KEY (batch_id, custom_id)
) WITHOUT ROWID;

CREATE TABLE results (
    id                  INTEGER PRIMARY KEY,
    custom_id           TEXT    NOT NULL REFERENCES requests (custom_id),
    lane                TEXT    NOT NULL CHECK (lane IN ('batch', 'sync')),
    batch_id            INTEGER REFERENCES batches (id),
    attempt_id          INTEGER REFERENCES attempts (id),
    status              TEXT    NOT NULL CHECK (status IN ('succeeded', 'errored', 'canceled', 'expired')),
    error_type          TEXT,
    error_message       TEXT,
    message             TEXT,
    stop_reason         TEXT,
    input_tokens        INTEGER NOT NULL DEFAULT 0,
    output_tokens       INTEGER NOT NULL DEFAULT 0,
    cache_write_5m      INTEGER NOT NULL DEFAULT 0,
    cache_write_1h      INTEGER NOT NULL DEFAULT 0,
    cache_read          INTEGER NOT NULL DEFAULT 0,
    duplicate           INTEGER NOT NULL DEFAULT 0,
    received_at         INTEGER NOT NULL,
    UNIQUE (batch_id, custom_id)
);
CREATE INDEX results_by_custom_id ON results (custom_id);

CREATE TABLE attempts (
    id            INTEGER PRIMARY KEY,
    run_id        INTEGER REFERENCES runs (id),
    batch_id      INTEGER REFERENCES batches (id),
    custom_id     TEXT,
    lane          TEXT    NOT NULL,
    operation     TEXT    NOT NULL,
    request_id    TEXT,
    started_at    INTEGER NOT NULL,
    finished_at   INTEGER,
    http_status   INTEGER,
    error_type    TEXT,
    error_message TEXT
);
CREATE INDEX attempts_by_run ON attempts (run_id);

CREATE TABLE events (
    id      INTEGER PRIMARY KEY,
    at      INTEGER NOT NULL,
    run_id  INTEGER REFERENCES runs (id),
    job     TEXT,
    kind    TEXT    NOT NULL,
    detail  TEXT    NOT NULL
);
CREATE INDEX events_by_run ON events (run_id);

CREATE TABLE deliveries (
    custom_id     TEXT    PRIMARY KEY REFERENCES requests (custom_id),
    result_id     INTEGER NOT NULL REFERENCES results (id),
    sink          TEXT    NOT NULL,
    target        TEXT    NOT NULL,
    delivered_at  INTEGER NOT NULL
) WITHOUT ROWID;
"#;

/// The daemon: where the router sent a run, its fallback plan, the model of
/// each sync call (for latency estimates), and each job's schedule cursor.
const V2: &str = r#"
ALTER TABLE runs ADD COLUMN lane TEXT NOT NULL DEFAULT 'batch' CHECK (lane IN ('batch', 'sync'));
ALTER TABLE runs ADD COLUMN fallback_at INTEGER;
ALTER TABLE runs ADD COLUMN fallback_started_at INTEGER;
ALTER TABLE runs ADD COLUMN fallback_reason TEXT;
CREATE INDEX runs_by_state ON runs (state);

ALTER TABLE attempts ADD COLUMN model TEXT;
CREATE INDEX attempts_by_model ON attempts (model, lane, operation);

CREATE TABLE schedules (
    job             TEXT    PRIMARY KEY,
    cursor          INTEGER NOT NULL,
    next_at         INTEGER,
    last_fired_for  INTEGER,
    updated_at      INTEGER NOT NULL
) WITHOUT ROWID;
"#;

/// Money: the model and cost of every result (integer micro-dollars, what
/// was charged and what the synchronous API would have charged), the tags
/// of a run for cost attribution, budget decisions, and the `skipped` run
/// state. SQLite cannot change a CHECK constraint in place, so `runs` is
/// rebuilt (foreign keys are off while migrations run, and checked before
/// the commit).
const V3: &str = r#"
CREATE TABLE runs_v3 (
    id                   INTEGER PRIMARY KEY,
    job                  TEXT    NOT NULL,
    scheduled_for        INTEGER NOT NULL,
    run_key              TEXT    NOT NULL,
    tier                 TEXT    NOT NULL,
    deadline_at          INTEGER NOT NULL,
    state                TEXT    NOT NULL CHECK (state IN ('open', 'completed', 'failed', 'late', 'skipped')),
    reason               TEXT,
    created_at           INTEGER NOT NULL,
    finished_at          INTEGER,
    lane                 TEXT    NOT NULL DEFAULT 'batch' CHECK (lane IN ('batch', 'sync')),
    fallback_at          INTEGER,
    fallback_started_at  INTEGER,
    fallback_reason      TEXT,
    tags                 TEXT    NOT NULL DEFAULT '[]',
    sync_blocked         TEXT,
    UNIQUE (job, scheduled_for)
);
INSERT INTO runs_v3 (id, job, scheduled_for, run_key, tier, deadline_at, state, reason, created_at, finished_at,
                     lane, fallback_at, fallback_started_at, fallback_reason)
    SELECT id, job, scheduled_for, run_key, tier, deadline_at, state, reason, created_at, finished_at,
           lane, fallback_at, fallback_started_at, fallback_reason
    FROM runs;
DROP TABLE runs;
ALTER TABLE runs_v3 RENAME TO runs;
CREATE INDEX runs_by_state ON runs (state);
CREATE INDEX runs_by_job ON runs (job, scheduled_for);

ALTER TABLE results ADD COLUMN model TEXT;
ALTER TABLE results ADD COLUMN cost_micros INTEGER;
ALTER TABLE results ADD COLUMN sync_cost_micros INTEGER;
CREATE INDEX results_unpriced ON results (id) WHERE cost_micros IS NULL;
CREATE INDEX results_by_received ON results (received_at);
"#;

/// Request bodies out of the hot rows. A request's state changes three or
/// four times (queued, in flight, its result); its item and params never
/// do. Inline, a 1 KB prompt made every row overflow its page in this
/// WITHOUT ROWID table (whose cells hold about 1 KB), so each state change
/// rewrote the overflow chain: about 15 page writes per request on submit
/// and on ingest. Now the state rows are about 100 bytes, and the bodies
/// sit in a rowid table, written once. `requests` is rebuilt as in V3.
///
/// The CHECK constraints of `requests` and `results` list their words with
/// `=` and `OR`: SQLite evaluates `x IN (3 or more constants)` through a
/// temporary b-tree built for every row written, which was about a quarter
/// of the instructions of ingesting a result. So `results` is rebuilt too,
/// with one index keyed by custom_id instead of two: results arrive in no
/// particular order, and each such index costs a random page write per result.
const V4: &str = r#"
CREATE TABLE request_bodies (
    custom_id  TEXT  PRIMARY KEY REFERENCES requests (custom_id),
    item       TEXT  NOT NULL,
    params     TEXT  NOT NULL
);
INSERT INTO request_bodies (custom_id, item, params) SELECT custom_id, item, params FROM requests ORDER BY custom_id;

CREATE TABLE requests_v4 (
    custom_id   TEXT    PRIMARY KEY,
    run_id      INTEGER NOT NULL REFERENCES runs (id),
    seq         INTEGER NOT NULL,
    state       TEXT    NOT NULL CHECK (state = 'pending' OR state = 'queued' OR state = 'in_flight'
                                        OR state = 'succeeded' OR state = 'retryable_failed'
                                        OR state = 'permanent_failed'),
    lane        TEXT,
    attempts    INTEGER NOT NULL DEFAULT 0,
    result_id   INTEGER REFERENCES results (id),
    updated_at  INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO requests_v4 (custom_id, run_id, seq, state, lane, attempts, result_id, updated_at)
    SELECT custom_id, run_id, seq, state, lane, attempts, result_id, updated_at FROM requests;
DROP TABLE requests;
ALTER TABLE requests_v4 RENAME TO requests;
CREATE INDEX requests_by_run_state ON requests (run_id, state);

CREATE TABLE results_v4 (
    id                  INTEGER PRIMARY KEY,
    custom_id           TEXT    NOT NULL REFERENCES requests (custom_id),
    lane                TEXT    NOT NULL CHECK (lane = 'batch' OR lane = 'sync'),
    batch_id            INTEGER REFERENCES batches (id),
    attempt_id          INTEGER REFERENCES attempts (id),
    status              TEXT    NOT NULL CHECK (status = 'succeeded' OR status = 'errored' OR status = 'canceled'
                                                OR status = 'expired'),
    error_type          TEXT,
    error_message       TEXT,
    message             TEXT,
    stop_reason         TEXT,
    input_tokens        INTEGER NOT NULL DEFAULT 0,
    output_tokens       INTEGER NOT NULL DEFAULT 0,
    cache_write_5m      INTEGER NOT NULL DEFAULT 0,
    cache_write_1h      INTEGER NOT NULL DEFAULT 0,
    cache_read          INTEGER NOT NULL DEFAULT 0,
    duplicate           INTEGER NOT NULL DEFAULT 0,
    received_at         INTEGER NOT NULL,
    model               TEXT,
    cost_micros         INTEGER,
    sync_cost_micros    INTEGER,
    UNIQUE (custom_id, batch_id)
);
INSERT INTO results_v4 SELECT id, custom_id, lane, batch_id, attempt_id, status, error_type, error_message, message,
                              stop_reason, input_tokens, output_tokens, cache_write_5m, cache_write_1h, cache_read,
                              duplicate, received_at, model, cost_micros, sync_cost_micros
                       FROM results;
DROP TABLE results;
ALTER TABLE results_v4 RENAME TO results;
CREATE INDEX results_unpriced ON results (id) WHERE cost_micros IS NULL;
CREATE INDEX results_by_received ON results (received_at);
"#;

/// A run's requests are stored a chunk per transaction; `prepared_at` says
/// the last chunk is in, so an interrupted preparation is never mistaken for
/// a whole run. Runs from before were stored in one transaction: those with
/// requests, or closed, are prepared. An open run without requests was cut
/// off before its requests were stored and is prepared again.
const V5: &str = r#"
ALTER TABLE runs ADD COLUMN prepared_at INTEGER;
UPDATE runs SET prepared_at = created_at
 WHERE state != 'open' OR EXISTS (SELECT 1 FROM requests WHERE requests.run_id = runs.id);
"#;

/// What the deadline guard needs to see. When a batch was asked to cancel
/// (so its end says nothing of how long batches take; backfilled from the
/// events), when a run first missed its deadline while still open, since
/// when and why its delivery keeps failing, which scheduled instant of a
/// job could not start and why, and how long each JSONL sink file was when
/// its last delivery was recorded (so a delivery reads only what a crash
/// may have left after that point, never the whole file again).
const V6: &str = r#"
ALTER TABLE batches ADD COLUMN cancel_requested_at INTEGER;
UPDATE batches SET cancel_requested_at = (
    SELECT MIN(at) FROM events
     WHERE kind = 'batch_cancel_requested' AND json_extract(detail, '$.batch') = batches.id);

ALTER TABLE runs ADD COLUMN deadline_missed_at INTEGER;
ALTER TABLE runs ADD COLUMN delivery_failing_since INTEGER;
ALTER TABLE runs ADD COLUMN delivery_error TEXT;

ALTER TABLE schedules ADD COLUMN start_failed_for INTEGER;
ALTER TABLE schedules ADD COLUMN start_error TEXT;

CREATE TABLE sink_files (
    target      TEXT    PRIMARY KEY,
    length      INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
) WITHOUT ROWID;
"#;

/// The provider that answered each result (set when it is priced, from the
/// catalog), for `cost --by provider`. Results priced before there was a
/// second provider were Anthropic's.
const V7: &str = r#"
ALTER TABLE results ADD COLUMN provider TEXT;
UPDATE results SET provider = 'anthropic' WHERE cost_micros IS NOT NULL;
"#;

/// Failover: the model on another provider a run's sync lane moved to,
/// and when (its results name their provider and model already).
const V8: &str = r#"
ALTER TABLE runs ADD COLUMN failover_provider TEXT;
ALTER TABLE runs ADD COLUMN failover_model TEXT;
ALTER TABLE runs ADD COLUMN failover_started_at INTEGER;
"#;

/// Shared batches: one provider batch may carry the requests of several
/// runs (jobs that fire together, same provider and model). `batches.run_id`
/// stays the run that opened the batch; `batch_runs` lists every run it
/// carries and how many of its requests, so a run finds its batches by an
/// index and a batch its runs without reading its request list. Batches
/// from before carried one run each.
const V9: &str = r#"
CREATE TABLE batch_runs (
    batch_id       INTEGER NOT NULL REFERENCES batches (id),
    run_id         INTEGER NOT NULL REFERENCES runs (id),
    request_count  INTEGER NOT NULL,
    PRIMARY KEY (batch_id, run_id)
) WITHOUT ROWID;
CREATE INDEX batch_runs_by_run ON batch_runs (run_id, batch_id);
INSERT INTO batch_runs (batch_id, run_id, request_count) SELECT id, run_id, request_count FROM batches;
"#;

/// Delivery rounds read a run's results in sequence order from where the
/// last round stopped; without this index every round passed (and sorted)
/// every succeeded request of the run again: quadratic in the run's size.
/// Requests are stored in sequence order, so the index is appended to.
const V10: &str = r#"
CREATE INDEX requests_by_run_seq ON requests (run_id, seq);
"#;

/// A stage without a schedule reads its upstream's runs in the order they
/// closed; runs closing in the same millisecond are told apart by id, the
/// last one handled kept beside the cursor.
const V11: &str = r#"
ALTER TABLE schedules ADD COLUMN after_run INTEGER;
"#;

/// The queue of a job with `enqueue:`: items posted to the daemon, each
/// committed before the `202`. A flush moves waiting items into a run
/// (`run_id`, `seq`: the request's sequence number there) in the
/// transaction that creates the run. A client's idempotency key is unique
/// per job, so a retried post adds nothing twice.
const V12: &str = r#"
CREATE TABLE queue_items (
    id               INTEGER PRIMARY KEY,
    job              TEXT    NOT NULL,
    idempotency_key  TEXT,
    item             TEXT    NOT NULL,
    enqueued_at      INTEGER NOT NULL,
    deadline_at      INTEGER,
    flush_by         INTEGER,
    sync             INTEGER NOT NULL DEFAULT 0,
    run_id           INTEGER REFERENCES runs (id),
    seq              INTEGER,
    UNIQUE (job, idempotency_key)
);
CREATE INDEX queue_waiting ON queue_items (job, id) WHERE run_id IS NULL;
CREATE INDEX queue_by_run ON queue_items (run_id, seq) WHERE run_id IS NOT NULL;
"#;

/// A stage's run names the upstream run it read (before, only its
/// `stage_input` event did, by run key), so a run shows its upstream and its
/// downstream runs by an index.
const V13: &str = r#"
ALTER TABLE runs ADD COLUMN upstream_run_id INTEGER REFERENCES runs (id);
UPDATE runs SET upstream_run_id = (
    SELECT u.id FROM events e JOIN runs u
        ON u.job = json_extract(e.detail, '$.upstream_job') AND u.run_key = json_extract(e.detail, '$.upstream_run')
     WHERE e.run_id = runs.id AND e.kind = 'stage_input' ORDER BY e.id DESC LIMIT 1);
CREATE INDEX runs_by_upstream ON runs (upstream_run_id) WHERE upstream_run_id IS NOT NULL;
"#;

/// Each request keeps the byte length of its params beside its state. The
/// lane splits a run's waiting requests into batches by bytes, and the
/// fallback planner averages them on every tick: read from the bodies, that
/// was a random page read of `request_bodies` per request, each time.
const V14: &str = r#"
ALTER TABLE requests ADD COLUMN params_len INTEGER NOT NULL DEFAULT 0;
UPDATE requests SET params_len = (SELECT octet_length(b.params) FROM request_bodies b WHERE b.custom_id = requests.custom_id)
 WHERE EXISTS (SELECT 1 FROM request_bodies b WHERE b.custom_id = requests.custom_id);
"#;

/// The process that leads: one row, written on each takeover (the epoch
/// goes up by one), renewed while it leads, and marked when it stops cleanly.
const V15: &str = r#"
CREATE TABLE leadership (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    epoch       INTEGER NOT NULL,
    pid         INTEGER NOT NULL,
    host        TEXT    NOT NULL,
    since       INTEGER NOT NULL,
    renewed_at  INTEGER NOT NULL,
    stopped_at  INTEGER
);
"#;
