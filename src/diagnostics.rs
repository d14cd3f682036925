//! Problems found in manifests and templates, and how they are shown.
//!
//! Every problem carries a stable code (`E010`), a location, a lower-case
//! message and, where we can say what to write instead, a `help`.

use std::fmt::Write as _;

use serde::Serialize;

/// How bad a problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Advice: the job is fine, but could be cheaper; never fails validation.
    Note,
    /// Will misbehave or cost more than it should; the job still runs.
    Warning,
    /// The job cannot run as written.
    Error,
}

macro_rules! codes {
    ($($variant:ident = $code:literal, $severity:ident, $summary:literal;)*) => {
        /// Every diagnostic code, with its default severity and a summary.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
        pub enum Code {
            $(#[doc = $summary] $variant,)*
        }

        impl Code {
            /// All codes, in order.
            pub const ALL: &'static [Code] = &[$(Code::$variant,)*];

            /// The code as printed, e.g. `E010`.
            pub fn as_str(self) -> &'static str {
                match self { $(Code::$variant => $code,)* }
            }

            /// Severity the code is reported with.
            pub fn severity(self) -> Severity {
                match self { $(Code::$variant => Severity::$severity,)* }
            }

            /// One-line summary of what the code means.
            pub fn summary(self) -> &'static str {
                match self { $(Code::$variant => $summary,)* }
            }
        }
    };
}

codes! {
    Unreadable = "E001", Error, "the file cannot be read";
    YamlSyntax = "E002", Error, "YAML syntax error";
    DuplicateKey = "E003", Error, "a key appears twice in one mapping";
    UnknownField = "E004", Error, "a field the manifest format does not have";
    MissingField = "E005", Error, "a required field is missing";
    InvalidValue = "E006", Error, "a value of the wrong type or not among the allowed values";
    InvalidJobName = "E007", Error, "the file name cannot form a valid custom_id";
    DuplicateJob = "E008", Error, "two files define the same job";
    InvalidCron = "E010", Error, "the cron expression cannot be parsed";
    CronNeverFires = "E011", Error, "the cron expression never fires";
    UnknownTimezone = "E012", Error, "not an IANA time zone";
    InvalidDeadline = "E020", Error, "the deadline is not a positive duration";
    DeadlineTierMismatch = "W021", Warning, "the tier cannot meet the deadline";
    DeadlineOverBatchExpiry = "W022", Warning, "the deadline is longer than the provider keeps a batch";
    DeadlineOverCadence = "W023", Warning, "the deadline is longer than the time between firings";
    UnknownProvider = "E030", Error, "the provider is not in the model catalog";
    UnknownModel = "E031", Error, "the model is not in the catalog for this provider";
    NoBatchSupport = "E032", Error, "the tier routes to the batch lane but the model has no batch support";
    MaxTokensOutOfRange = "E033", Error, "max_tokens is below 1 or above the model's limit for the lane";
    MaxTokensOverSyncLimit = "W034", Warning, "max_tokens is above the sync limit, so the fallback cannot carry these requests";
    BetaNotAllowed = "E035", Error, "the beta is not allowed in the lane the tier routes to";
    UnknownBeta = "W036", Warning, "the beta is not in the catalog";
    TemperatureOutOfRange = "E037", Error, "temperature is outside what the provider accepts (0 to 1, or 0 to 2 on OpenAI and Gemini)";
    UnknownParam = "E038", Error, "params has a name the provider's API does not know";
    ParamNotAllowed = "E039", Error, "params sets something the manifest or the batch lane owns";
    InvalidCacheTtl = "E040", Error, "a cache TTL other than 5m or 1h";
    ShortCacheOnBatch = "W041", Warning, "a 5m cache TTL on a batch-lane job";
    CacheWithoutTarget = "E042", Error, "a cache breakpoint on a block the job does not have";
    NotForProvider = "E043", Error, "a field that means nothing for the job's provider";
    UnknownFailover = "E044", Error, "a failover model that is not on another provider in the catalog";
    ParamLostInFailover = "W045", Warning, "a params entry the failover model's API has no equivalent for";
    FailoverKeyMissing = "W046", Warning, "a failover model's provider has no key where validate runs";
    TemplateMissing = "E050", Error, "the template file does not exist";
    TemplateSyntax = "E051", Error, "the template has a syntax error";
    TemplateUndefinedVariable = "E052", Error, "the template uses a variable that is not defined";
    TemplateOutsidePrompts = "E053", Error, "the template path leaves the prompts directory";
    ItemsSourceCount = "E060", Error, "items needs exactly one of jsonl, glob, command, from";
    EmptyItemsCommand = "E061", Error, "items.command is empty";
    SinkTargetCount = "E062", Error, "sink needs exactly one of jsonl, dir, sqlite, postgres, command";
    SharedSinkPath = "W063", Warning, "two jobs write the same sink path";
    InvalidSinkTable = "E064", Error, "a sqlite or postgres sink table name is not a plain identifier";
    EmptySinkValue = "E065", Error, "a sink path or command is empty";
    UnknownUpstream = "E066", Error, "items.from names no job in jobs/";
    StageCycle = "E067", Error, "stages read each other's results in a cycle";
    StageDeadlineBeforeUpstream = "W068", Warning, "a stage without a schedule has a deadline no later than its upstream's";
    EnqueueWithItems = "E069", Error, "a job with enqueue also names items";
    InvalidRetry = "E070", Error, "retry.max_attempts is below 1";
    InvalidBudget = "E071", Error, "budget.monthly_usd is not a positive amount";
    InvalidBatchSize = "E072", Error, "max_batch_requests is outside 1 to the provider's limit per batch";
    InvalidEnqueue = "E073", Error, "enqueue.max_items is 0 or enqueue.max_wait is not a positive duration";
    SinkDatabaseUrlMissing = "W074", Warning, "the postgres sink has no database URL where validate runs";
    PolicyWithoutSchedule = "W075", Warning, "overlap or catch_up on a job without a schedule, where they do nothing";
    LocalSinkMultiNode = "W076", Warning, "a file sink on a state that several machines lead in turn";
    BatchEligible = "N080", Note, "a realtime job whose deadline allows the batch lane at half price";
}

/// One problem at one place.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Diagnostic {
    /// File as given on the command line (`jobs/feed.yaml`).
    pub file: String,
    /// 1-based line; 0 when the problem concerns the whole file.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// `error` or `warning`.
    pub severity: Severity,
    /// Stable code, e.g. `E010`.
    #[serde(serialize_with = "serialize_code")]
    pub code: Code,
    /// What is wrong.
    pub message: String,
    /// What to write instead, when we know.
    pub help: Option<String>,
    /// Characters to underline from `column`.
    #[serde(skip)]
    pub len: usize,
    /// The source line, for the human format.
    #[serde(skip)]
    pub source_line: Option<String>,
}

fn serialize_code<S: serde::Serializer>(code: &Code, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(code.as_str())
}

impl Diagnostic {
    /// A diagnostic with the code's default severity.
    pub fn new(code: Code, file: impl Into<String>, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            file: file.into(),
            line: 0,
            column: 0,
            severity: code.severity(),
            code,
            message: message.into(),
            help: None,
            len: 1,
            source_line: None,
        }
    }

    /// Places the diagnostic at `line:column`, underlining `len` characters
    /// of `source`'s line.
    pub fn at(mut self, source: &str, line: usize, column: usize, len: usize) -> Diagnostic {
        self.line = line;
        self.column = column;
        self.len = len.max(1);
        self.source_line = yaml_lines(source).nth(line.saturating_sub(1)).map(str::to_owned);
        self
    }

    /// Adds what to do about it.
    pub fn help(mut self, help: impl Into<String>) -> Diagnostic {
        self.help = Some(help.into());
        self
    }

    /// Adds a help only when there is one.
    pub fn maybe_help(mut self, help: Option<String>) -> Diagnostic {
        self.help = help;
        self
    }

    /// Renders the human format: a header, the line with a caret, a help.
    pub fn render_human(&self) -> String {
        let mut out = String::new();
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Note => "note",
        };
        let place =
            if self.line == 0 { self.file.clone() } else { format!("{}:{}:{}", self.file, self.line, self.column) };
        let _ = writeln!(out, "{place}: {severity}[{}]: {}", self.code.as_str(), self.message);
        if let Some(text) = &self.source_line {
            let gutter = self.line.to_string();
            let pad = " ".repeat(gutter.len());
            let shown = text.replace('\t', " ");
            let available = shown.chars().count().saturating_sub(self.column - 1).max(1);
            let carets = "^".repeat(self.len.min(available));
            let _ = writeln!(out, "{gutter} | {shown}");
            let _ = writeln!(out, "{pad} | {}{carets}", " ".repeat(self.column.saturating_sub(1)));
        }
        if let Some(help) = &self.help {
            let _ = writeln!(out, "help: {help}");
        }
        out
    }
}

/// Lines as YAML counts them: `\r\n`, `\n` and a lone `\r` all end a line
/// (`str::lines` ignores a lone `\r`, which would shift line numbers).
fn yaml_lines(source: &str) -> impl Iterator<Item = &str> {
    source.split('\n').flat_map(|line| line.strip_suffix('\r').unwrap_or(line).split('\r'))
}

/// Sorts diagnostics by file, then position, then code, so output is stable.
pub fn sort(diagnostics: &mut [Diagnostic]) {
    diagnostics.sort_by(|a, b| (&a.file, a.line, a.column, a.code).cmp(&(&b.file, b.line, b.column, b.code)));
}

/// Sorts and drops exact repeats (a shared template can fail the same way
/// for several jobs).
pub fn sort_dedup(diagnostics: &mut Vec<Diagnostic>) {
    sort(diagnostics);
    diagnostics.dedup();
}

/// Counts errors and warnings.
pub fn count(diagnostics: &[Diagnostic]) -> (usize, usize) {
    let count = |severity| diagnostics.iter().filter(|d| d.severity == severity).count();
    (count(Severity::Error), count(Severity::Warning))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_format_points_at_the_token() {
        let source = "model: x\nschedule:\n  cron: \"61 * * * *\"\n";
        let rendered = Diagnostic::new(Code::InvalidCron, "jobs/a.yaml", "bad cron")
            .at(source, 3, 9, 12)
            .help("write five fields")
            .render_human();
        assert_eq!(
            rendered,
            "jobs/a.yaml:3:9: error[E010]: bad cron\n\
             3 |   cron: \"61 * * * *\"\n  |         ^^^^^^^^^^^^\nhelp: write five fields\n"
        );
    }

    #[test]
    fn a_lone_carriage_return_ends_a_line_as_in_yaml() {
        let source = "a: 1\rb: 2\r\nc: 3\n";
        let lines: Vec<&str> = yaml_lines(source).collect();
        assert_eq!(lines, ["a: 1", "b: 2", "c: 3", ""]);
        let at_third = Diagnostic::new(Code::InvalidValue, "f", "m").at(source, 3, 1, 1);
        assert_eq!(at_third.source_line.as_deref(), Some("c: 3"));
    }

    #[test]
    fn codes_are_unique_and_prefixed_by_severity() {
        let mut seen = std::collections::HashSet::new();
        for code in Code::ALL {
            assert!(seen.insert(code.as_str()), "{} twice", code.as_str());
            let prefix = match code.severity() {
                Severity::Error => 'E',
                Severity::Warning => 'W',
                Severity::Note => 'N',
            };
            assert!(code.as_str().starts_with(prefix), "{}", code.as_str());
        }
    }
}
